"""Pick a diffusers scheduler by a short name (or its class name), keeping the trained schedule."""

from __future__ import annotations

import inspect
import math
from typing import Any

import diffusers

from studio.errors import ConfigError

SCHEDULER_ALIASES: dict[str, str] = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "dpm": "DPMSolverSinglestepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "deis": "DEISMultistepScheduler",
}


def scheduler_names() -> list[str]:
    """The short names `make_scheduler` accepts (any diffusers scheduler class name works too)."""
    return sorted(SCHEDULER_ALIASES)


#: variance types that read a second, learned half of the model output
LEARNED_VARIANCES = ("learned", "learned_range")

#: lambda = log(alpha / sigma) below which DPM-Solver takes no step on a cosine schedule. The cosine
#: schedule's last betas are capped at 0.999, so alpha at t = T-1 is ~5e-5 and the data prediction
#: x0 = (x - sigma * eps) / alpha multiplies the model's eps error by ~2e4: a single-step solver that
#: starts there turns most seeds into noise fields. -5.1 is the value diffusers documents for this
#: schedule (alpha_bar ~ 4e-5 at the clip), dropping only the last few of the 1,000 training steps.
COSINE_LAMBDA_MIN = -5.1

#: the σ-ladder options of diffusers' discrete (Karras-style) schedulers; a config setting any of them
#: has chosen its own ladder
SIGMA_LADDERS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def make_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """Build scheduler ``name`` from another scheduler's config (same betas, same training T).

    Pipelines hand diffusers schedulers the ε (or v) half of the model output only, so a learned
    variance type in ``base_config`` (an ADM training scheduler's ``learned_range``) becomes
    ``fixed_small``: left as it is, `DDPMScheduler.step` finds no variance half and fails on None.
    DPM-Solvers on a cosine (``squaredcos_cap_v2``) schedule get ``lambda_min_clipped`` =
    `COSINE_LAMBDA_MIN` unless the config sets one, and a ``clip_sample`` config (x0 clipped to
    [-r, r] by DDPM/DDIM, as guided-diffusion's ``clip_denoised``) becomes ``thresholding`` at r
    for the solvers that have no ``clip_sample`` (DPM-Solver(++), DEIS, UniPC), so every scheduler
    keeps the data range the model was trained on. Heun on a ``trailing`` schedule (which starts at
    t = T − 1) samples on a geometric σ ladder (``use_exponential_sigmas``) unless the config picks a
    ladder. Raises `ConfigError` naming the choices for an unknown name.
    """
    class_name = SCHEDULER_ALIASES.get(name.lower(), name)
    cls = getattr(diffusers, class_name, None)
    if cls is None or not class_name.endswith("Scheduler"):
        raise ConfigError(
            f"unknown scheduler {name!r}; choose one of {', '.join(scheduler_names())} "
            "or a diffusers scheduler class name"
        )
    config = dict(base_config)
    if config.get("variance_type") in LEARNED_VARIANCES:
        config["variance_type"] = "fixed_small"
    accepted = inspect.signature(cls.__init__).parameters
    if (
        config.get("beta_schedule") == "squaredcos_cap_v2"
        and "lambda_min_clipped" in accepted
        and config.get("lambda_min_clipped", -math.inf) == -math.inf
    ):
        _override(config, lambda_min_clipped=COSINE_LAMBDA_MIN)
    if (
        class_name == "HeunDiscreteScheduler"
        and config.get("timestep_spacing") == "trailing"
        and not any(config.get(option) for option in SIGMA_LADDERS)
    ):
        # Heun's trapezoid adds (σ' − σ)/(2σ')·(x̂0 − x̂0') to an Euler step, so a step from σ ~ 2e4
        # (t = T − 1 of a cosine schedule) to σ' ~ 6 multiplies the change of x̂0 by ~1,700 and
        # every image becomes noise; a geometric ladder keeps σ/σ' the same at every step.
        _override(config, use_exponential_sigmas=True)
    if config.get("clip_sample") and "clip_sample" not in accepted and "thresholding" in accepted:
        # the model declares x0 in [-r, r]; the solvers' form of that clip is thresholding at r
        _override(config, thresholding=True, sample_max_value=config.get("clip_sample_range", 1.0))
    return cls.from_config(config)


def _override(config: dict[str, Any], **values: Any) -> None:
    """Set ``values`` in a scheduler config so that ``from_config`` keeps them.

    A config made in memory lists the arguments its creator left at their defaults under
    ``_use_default_values``, and ``from_config`` drops those keys; the overridden ones leave that list.
    """
    config.update(values)
    if "_use_default_values" in config:
        config["_use_default_values"] = [key for key in config["_use_default_values"] if key not in values]


def scheduler_name(scheduler: Any) -> str:
    """The short name of a scheduler instance, or its class name if it has none."""
    class_name = type(scheduler).__name__
    for alias, target in SCHEDULER_ALIASES.items():
        if target == class_name:
            return alias
    return class_name
