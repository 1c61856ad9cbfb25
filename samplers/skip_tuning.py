"""Skip-Tuning: scale a UNet's encoder-to-decoder skips by a depth-linear factor rho.

With K+1 skips in bottom-index order (0 = deepest, K = the ``conv_in`` output), skip i enters
its decoder block as ``rho_i * skip_i`` with ``rho_i = rho_bottom + (rho_top - rho_bottom) * i / K``.
Scaling the skips down gives the decoder's nonlinear path more weight, which the paper finds
helps few-step ODE sampling of a pretrained UNet (Ma et al., "The Surprising Effectiveness of
Skip-Tuning in Diffusion Sampling", ICML 2024). No training, nothing else changes, and the skip
tensors are scaled out of place (they may be cached by encoder propagation). Most of a uniform
scale is normalised away by the decoder resnets' GroupNorm (a group of skip channels only cancels
it) and acts through their 1x1 shortcut: tune rho on a metric, not by feel.

Hooks (diffusers `HookRegistry`):

- `SKIP_HOOK` on every up block (`pre_forward`): replaces the skip tuple, passed positionally by
  `UNet2DModel` (``args[1]``) and by keyword by `UNet2DConditionModel`
  (``res_hidden_states_tuple``), with scaled copies; the NCSN++ ``skip_sample`` image path of
  Skip* blocks is a different thing and is left alone;
- with a timestep window only: `ROOT_HOOK` on the UNet and `TIME_HOOK` on its ``time_proj``
  record the per-row timesteps of each forward, so rows outside the window keep rho = 1 (this
  also holds for encoder propagation's batched decodes, whose rows belong to different steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from samplers.base import HookSet, has_hook
from samplers.unet import UNetPluginHandle, resolve_unet_target, skip_layout
from studio.errors import ConfigError

SKIP_HOOK = "skip_tuning_skips"
ROOT_HOOK = "skip_tuning_root"
TIME_HOOK = "skip_tuning_time"
GRANULARITIES = ("skip", "level")


@dataclass
class SkipTuningConfig:
    """Settings of Skip-Tuning; the defaults (rho 1, 1) are neutral.

    Each setting's meaning and trade-off is its field's ``help`` (shown as help by the app).
    """

    rho_top: float = field(
        default=1.0, metadata={"help": ("factor on the outermost skip (the ``conv_in`` output).")}
    )
    rho_bottom: float = field(
        default=1.0,
        metadata={
            "help": (
                "factor on the deepest skip. Values below 1 (0.7-0.95) strengthen the decoder's nonlinear path; the "
                "best pair depends on the model, sampler and step count."
            )
        },
    )
    granularity: str = field(
        default="skip",
        metadata={
            "help": (
                '``"skip"`` interpolates over every skip tensor; ``"level"`` over up blocks (all skips one up block '
                "consumes share a factor; bottom = ``up_blocks[0]``)."
            )
        },
    )
    sigma_window: tuple[float, ...] | None = field(
        default=None,
        metadata={
            "help": (
                "``(lo, hi)`` in the scheduler's timestep units: scale only where ``lo <= t <= hi`` (rho = 1 "
                "elsewhere); None scales at every step."
            )
        },
    )

    def __post_init__(self) -> None:
        for name in ("rho_top", "rho_bottom"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"skip_tuning: {name} must be a number >= 0, got {value!r}")
            setattr(self, name, float(value))
        if self.granularity not in GRANULARITIES:
            raise ConfigError(
                f"skip_tuning: granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if self.sigma_window is not None:
            window = tuple(float(v) for v in self.sigma_window)
            if len(window) != 2 or window[0] > window[1]:
                raise ConfigError(
                    f"skip_tuning: sigma_window must be two timesteps lo/hi with lo <= hi, got {self.sigma_window!r}"
                )
            self.sigma_window = window


def skip_factors(unet: nn.Module, config: SkipTuningConfig) -> dict[tuple[int, int], float]:
    """rho for every skip ``(up block j, tuple position p)`` of ``unet`` (the paper's depth-linear rule)."""
    layout = skip_layout(unet)
    span = config.rho_top - config.rho_bottom
    if config.granularity == "level":
        last = len(unet.up_blocks) - 1
        return {(j, p): config.rho_bottom + span * (j / last if last else 1.0) for j, p in layout}
    last = len(layout) - 1
    return {(j, p): config.rho_bottom + span * (i / last if last else 1.0) for i, (j, p) in enumerate(layout)}


class SkipTuningController:
    """Run-time state: the current forward's timesteps (window only) and what was scaled."""

    def __init__(self, config: SkipTuningConfig, factors: dict[tuple[int, int], float]):
        self.config = config
        self.factors = factors
        self.timesteps: torch.Tensor | None = None
        self._counts = {"decoder_calls": 0, "skips_scaled": 0, "skips_unchanged": 0}

    # loop tap (Skip-Tuning needs no loop position; these keep the handle protocol uniform)
    def begin(self, num_steps: int | None) -> None:
        self.reset()

    def before_step(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output

    def after_step(self, model_output: torch.Tensor) -> None:
        return None

    def reset(self) -> None:
        self.timesteps = None
        self._counts = dict.fromkeys(self._counts, 0)

    def stats(self) -> dict[str, Any]:
        return dict(self._counts)

    def record_timesteps(self, timesteps: torch.Tensor) -> None:
        """Keep the first ``time_proj`` input of a forward (later ones embed class labels)."""
        if self.timesteps is None:
            self.timesteps = timesteps

    def _row_mask(self, rows: int) -> torch.Tensor | None:
        """Per-row bool "inside the window" for a skip batch of ``rows``, or None = all rows."""
        if self.config.sigma_window is None:
            return None
        if self.timesteps is None:
            raise ConfigError("skip_tuning: no timestep seen in this forward (time_proj was not called)")
        t = self.timesteps.reshape(-1).float()
        if t.numel() == 1:
            t = t.expand(rows)
        elif t.numel() != rows:
            raise ConfigError(f"skip_tuning: {t.numel()} timesteps for a skip batch of {rows} rows")
        lo, hi = self.config.sigma_window
        return (t >= lo) & (t <= hi)

    def scale(self, block_index: int, skips: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The skip tuple of up block ``block_index`` with each entry scaled out of place."""
        self._counts["decoder_calls"] += int(block_index == 0)
        inside = self._row_mask(skips[0].shape[0]) if skips else None
        if inside is not None and not bool(inside.any()):
            self._counts["skips_unchanged"] += len(skips)
            return skips
        scaled = []
        for position, skip in enumerate(skips):
            rho = self.factors[(block_index, position)]
            if rho == 1.0:
                scaled.append(skip)
                self._counts["skips_unchanged"] += 1
                continue
            if inside is None:
                factor: Any = rho
            else:
                factor = torch.where(inside, rho, 1.0).to(skip.dtype).view(-1, *([1] * (skip.ndim - 1)))
            scaled.append(skip * factor)
            self._counts["skips_scaled"] += 1
        return tuple(scaled)


class _SkipHook(ModelHook):
    """Scales the skip tuple an up block receives (``args[1]`` or ``res_hidden_states_tuple``)."""

    def __init__(self, controller: SkipTuningController, block_index: int, expected: int):
        super().__init__()
        self.controller = controller
        self.block_index = block_index
        self.expected = expected

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict[str, Any]]:
        keyword = "res_hidden_states_tuple" in kwargs
        skips = kwargs["res_hidden_states_tuple"] if keyword else args[1]
        if len(skips) != self.expected:
            raise ConfigError(
                f"skip_tuning: up block {self.block_index} got {len(skips)} skips, expected {self.expected}"
            )
        scaled = self.controller.scale(self.block_index, tuple(skips))
        if keyword:
            return args, {**kwargs, "res_hidden_states_tuple": scaled}
        return (args[0], scaled, *args[2:]), kwargs


class _RootHook(ModelHook):
    """Starts a forward: forget the previous forward's timesteps."""

    def __init__(self, controller: SkipTuningController):
        super().__init__()
        self.controller = controller

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict[str, Any]]:
        self.controller.timesteps = None
        return args, kwargs


class _TimeHook(ModelHook):
    """Reads the per-row timesteps at ``time_proj`` (already broadcast to the batch)."""

    def __init__(self, controller: SkipTuningController):
        super().__init__()
        self.controller = controller

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict[str, Any]]:
        self.controller.record_timesteps(args[0] if args else next(iter(kwargs.values())))
        return args, kwargs


def apply_skip_tuning(target: Any, config: SkipTuningConfig | None = None) -> UNetPluginHandle:
    """Apply Skip-Tuning to a pipeline, a UNet, or a ``(unet, scheduler)`` pair.

    Supported models: `UNet2DModel`, `UNet2DConditionModel`. Raises `UnsupportedTargetError` for
    others (DiT has no long skips) and `ConfigError` if Skip-Tuning is already applied.
    """
    config = config or SkipTuningConfig()
    found = resolve_unet_target("skip_tuning", target)
    unet = found.model
    if has_hook(unet.up_blocks[0], SKIP_HOOK):
        raise ConfigError(f"skip_tuning is already applied to this {type(unet).__name__}; remove it first")
    controller = SkipTuningController(config, skip_factors(unet, config))
    hooks = HookSet(unet)
    for index, block in enumerate(unet.up_blocks):
        hooks.add(block, _SkipHook(controller, index, len(block.resnets)), SKIP_HOOK)
    if config.sigma_window is not None:
        hooks.add(unet, _RootHook(controller), ROOT_HOOK)
        hooks.add(unet.time_proj, _TimeHook(controller), TIME_HOOK)
    return UNetPluginHandle("skip_tuning", config, found, hooks, controller, [])
