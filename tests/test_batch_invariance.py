"""`batch_invariant`: small linears give the same rows at any batch size, and hooks keep their effect."""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from studio.pipelines.invariance import MIN_ROWS, batch_invariant


class _DoubleOutput(ModelHook):
    def post_forward(self, module: nn.Module, output: torch.Tensor) -> torch.Tensor:
        return torch.cat([output, output], dim=1)


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(64, 48)


def test_rows_do_not_depend_on_the_batch():
    layer = _linear()
    x = torch.randn(MIN_ROWS * 2, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), batch_invariant(layer):
        one = layer(x[:1])
        few = layer(x[:5])
        many = layer(x)
    assert torch.equal(one[0], many[0]) and torch.equal(few, many[:5])


def test_a_diffusers_hook_on_the_linear_keeps_its_output():
    """A hook that rewrites the linear's output (a plugin's token scatter, a cached value) must not be
    undone by the padding, which recomputes the linear from its input."""
    layer = _linear()
    HookRegistry.check_if_exists_or_initialize(layer).register_hook(_DoubleOutput(), "double")
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        hooked = layer(x)
        with batch_invariant(layer):
            padded = layer(x)
    assert hooked.shape == padded.shape == (2, 6, 48)
    assert torch.allclose(padded, hooked, atol=1e-6)
