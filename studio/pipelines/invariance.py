"""Make a model's output for one image independent of the batch it is computed in.

On CPU, MKL computes GEMMs with fewer than ~16 rows on a different code path than larger ones, so
a timestep-embedding linear gives last-bit-different results for batch 1 and batch 16 (measured:
Linear(256, 64) differs for 1..10 rows). Attention, convolutions, norms and larger GEMMs are
already row-invariant. Padding every small linear input to `MIN_ROWS` rows puts all batch sizes
on the same path, so image i is bit-identical whatever the batch size: the cost is a few padded
rows in the embedding MLPs.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

MIN_ROWS = 32


def _pad_small_inputs(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook: recompute a linear on < `MIN_ROWS` rows with zero rows padded in (tiny GEMMs)."""
    x = args[0]
    rows = x.numel() // x.shape[-1] if x.numel() else 0
    if rows == 0 or rows >= MIN_ROWS:
        return None
    flat = x.reshape(rows, x.shape[-1])
    padded = torch.cat([flat, flat.new_zeros(MIN_ROWS - rows, flat.shape[-1])])
    out = nn.functional.linear(padded, module.weight, module.bias)[:rows]
    return out.reshape(*x.shape[:-1], out.shape[-1])


@contextmanager
def batch_invariant(model: nn.Module) -> Iterator[None]:
    """Within this context, every `nn.Linear` of ``model`` pads inputs of < `MIN_ROWS` rows."""
    handles = [m.register_forward_hook(_pad_small_inputs) for m in model.modules() if type(m) is nn.Linear]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
