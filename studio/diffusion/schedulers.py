"""Pick a diffusers scheduler by a short name (or its class name), keeping the trained schedule."""

from __future__ import annotations

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


def make_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """Build scheduler ``name`` from another scheduler's config (same betas, same training T).

    Pipelines hand diffusers schedulers the ε (or v) half of the model output only, so a learned
    variance type in ``base_config`` (an ADM training scheduler's ``learned_range``) becomes
    ``fixed_small``: left as it is, `DDPMScheduler.step` finds no variance half and fails on None.
    Raises `ConfigError` naming the choices for an unknown name.
    """
    class_name = SCHEDULER_ALIASES.get(name.lower(), name)
    cls = getattr(diffusers, class_name, None)
    if cls is None or not class_name.endswith("Scheduler"):
        raise ConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(scheduler_names())} "
                          "or a diffusers scheduler class name")
    config = dict(base_config)
    if config.get("variance_type") in LEARNED_VARIANCES:
        config["variance_type"] = "fixed_small"
    return cls.from_config(config)


def scheduler_name(scheduler: Any) -> str:
    """The short name of a scheduler instance, or its class name if it has none."""
    class_name = type(scheduler).__name__
    for alias, target in SCHEDULER_ALIASES.items():
        if target == class_name:
            return alias
    return class_name
