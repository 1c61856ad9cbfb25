"""What the UNet plugins (Skip-Tuning, encoder propagation) share: the target and the skip layout.

The transformer plugins find their model through `samplers.base.resolve_target`; UNet plugins
need a diffusers `UNet2DModel` or `UNet2DConditionModel` instead (they hook its up blocks),
found in a pipeline's ``unet``, a ``(unet, scheduler)`` pair, or given directly. Anything else
(a DiT transformer, a GAN) raises `UnsupportedTargetError` naming the plugin and the class.
"""

from __future__ import annotations

from typing import Any

from diffusers import DiffusionPipeline, UNet2DConditionModel, UNet2DModel
from torch import nn

from samplers.base import PluginHandle, Target, UnsupportedTargetError, refuse_loopless_pipeline

UNET_CLASSES: tuple[type, ...] = (UNet2DModel, UNet2DConditionModel)
_SUPPORTED = ", ".join(c.__name__ for c in UNET_CLASSES)


def _as_unet(plugin: str, obj: Any) -> nn.Module:
    if not isinstance(obj, UNET_CLASSES):
        raise UnsupportedTargetError(
            f"{plugin} cannot be applied to {type(obj).__name__}: it needs a UNet with encoder-decoder "
            f"skips ({_SUPPORTED}), in a pipeline, a (unet, scheduler) pair, or alone"
        )
    return obj


def resolve_unet_target(plugin: str, target: Any) -> Target:
    """Find the UNet (and the scheduler) in a pipeline, a UNet, or a ``(unet, scheduler)`` pair."""
    if isinstance(target, tuple) and len(target) == 2:
        return Target(_as_unet(plugin, target[0]), None, scheduler=target[1])
    if isinstance(target, DiffusionPipeline):
        refuse_loopless_pipeline(plugin, target)
        unet = getattr(target, "unet", None)
        if not isinstance(unet, UNET_CLASSES):
            inner = unet if unet is not None else getattr(target, "transformer", None)
            what = type(inner).__name__ if inner is not None else "no unet"
            raise UnsupportedTargetError(
                f"{plugin} cannot be applied to {type(target).__name__} ({what}): it needs a pipeline "
                f"whose unet is a {_SUPPORTED}"
            )
        found = Target(unet, None, pipeline=target)
        found.scheduler = None if found.studio_pipeline is not None else target.scheduler
        return found
    return Target(_as_unet(plugin, target), None)


def skip_layout(unet: nn.Module) -> list[tuple[int, int]]:
    """``(up block j, position p in its skip tuple)`` for every UNet skip, in bottom-index order.

    Up block j consumes its tuple from the end (resnet 0 gets the last element), so bottom index
    0 is ``(0, n_0 - 1)``, the deepest skip, and the last entry is ``(J - 1, 0)``, the ``conv_in``
    output.
    """
    return [(j, p) for j, block in enumerate(unet.up_blocks) for p in reversed(range(len(block.resnets)))]


class UNetPluginHandle(PluginHandle):
    """A `PluginHandle` whose controller also wants the scheduler object of each generation
    (its timesteps and order), not only the number of steps."""

    def bind_scheduler(self, scheduler: Any) -> None:
        use = getattr(self.controller, "use_scheduler", None)
        if use is not None:
            use(scheduler)
        super().bind_scheduler(scheduler)
