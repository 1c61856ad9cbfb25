"""Make a model's output for one image independent of the batch it is computed in.

On CPU, MKL computes GEMMs with fewer than ~16 rows on a different code path than larger ones, so
a timestep-embedding linear gives last-bit-different results for batch 1 and batch 16 (measured:
Linear(256, 64) differs for 1..10 rows). Attention, convolutions, norms and larger GEMMs are
already row-invariant. Padding every small linear input to `MIN_ROWS` rows puts all batch sizes
on the same path, so image i is bit-identical whatever the batch size: the cost is a few padded
rows in the embedding MLPs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import nn

MIN_ROWS = 32


def _pad_small_inputs(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook: recompute a linear on < `MIN_ROWS` rows with zero rows padded in (tiny GEMMs).

    A plugin may have rewritten the module's output with a diffusers hook (RAS scatters the active
    token rows of the output projection back into the full grid). The recomputation sees only the
    module's input, so it replaces the output only where that output still is the module's linear
    map of the input; a rewritten output is returned as the hook made it.
    """
    x = args[0]
    rows = x.numel() // x.shape[-1] if x.numel() else 0
    if rows == 0 or rows >= MIN_ROWS:
        return None
    flat = x.reshape(rows, x.shape[-1])
    padded = torch.cat([flat, flat.new_zeros(MIN_ROWS - rows, flat.shape[-1])])
    out = nn.functional.linear(padded, module.weight, module.bias)[:rows]
    out = out.reshape(*x.shape[:-1], out.shape[-1])
    if _rewritten_by_a_hook(module, output, out):
        return None
    return out


def _rewritten_by_a_hook(module: nn.Module, output: torch.Tensor, linear: torch.Tensor) -> bool:
    """True if a diffusers hook on ``module`` returned something other than its linear map."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or not registry.hooks:
        return False
    if not isinstance(output, torch.Tensor) or output.shape != linear.shape:
        return True
    return not torch.allclose(output, linear, rtol=1e-4, atol=1e-5)


@contextmanager
def batch_invariant(model: nn.Module) -> Iterator[None]:
    """Within this context, every `nn.Linear` of ``model`` pads inputs of < `MIN_ROWS` rows."""
    handles = [m.register_forward_hook(_pad_small_inputs) for m in model.modules() if type(m) is nn.Linear]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class FixedBatchModel:
    """Calls a diffusers model on chunks of exactly ``size`` rows (zero rows padded in).

    Padding small linears is not enough for convolution nets: oneDNN's 3x3 convolution gives
    last-bit-different rows for batch 1 and batch 16 even on one thread (measured on a score UNet's
    first conv), and chaotic samplers (Langevin, predictor-corrector) amplify that into visible
    differences. With every call the same shape, row i's output cannot depend on the batch.
    """

    def __init__(self, model: nn.Module, size: int = 8):
        self.model = model
        self.size = size

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, **kwargs: object) -> SimpleNamespace:
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        outputs = []
        for start in range(0, x.shape[0], self.size):
            rows, times = x[start : start + self.size], timesteps[start : start + self.size]
            pad = self.size - rows.shape[0]
            if pad:
                rows = torch.cat([rows, rows.new_zeros((pad, *rows.shape[1:]))])
                times = torch.cat([times, times[-1:].expand(pad)])
            outputs.append(self.model(rows, times, **kwargs).sample[: self.size - pad])
        return SimpleNamespace(sample=torch.cat(outputs))
