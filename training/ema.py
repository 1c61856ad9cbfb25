"""Exponential moving average of a network's weights, buffers included.

diffusers' `EMAModel` averages parameters only; GAN generators also need their BatchNorm running
statistics averaged (as BigGAN-PyTorch), so this small class keeps a full shadow copy of the module:
float parameters and buffers are lerped, integer buffers copied. Decay warms up as
``min(decay, (1 + n) / (10 + n))`` over the n updates since ``start_step``; before ``start_step``
the shadow simply copies the weights (BigGAN's ``ema_start``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """A shadow copy of ``model`` that tracks its weights with a warmed-up decay."""

    def __init__(self, model: nn.Module, decay: float = 0.999, start_step: int = 0, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.start_step = start_step
        self.warmup = warmup
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0  # updates since start_step

    def current_decay(self, step: int) -> float:
        """Decay used for the update at optimizer step ``step`` (0 before ``start_step``)."""
        if step < self.start_step:
            return 0.0
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """``shadow <- d * shadow + (1 - d) * model`` for params and float buffers; copy the rest."""
        decay = self.current_decay(step)
        if step >= self.start_step:
            self.num_updates += 1
        source = dict(model.state_dict(keep_vars=False))
        for name, target in self.shadow.state_dict(keep_vars=False).items():
            value = source[name].detach()
            if target.dtype.is_floating_point:
                target.lerp_(value.to(target.dtype), 1.0 - decay)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.num_updates = int(state["num_updates"])
