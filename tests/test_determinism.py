"""The determinism guarantees README states, tested exactly as stated.

- Same machine, same thread count, same shapes: bit-identical (seeded per image).
- Loaded from disk vs in memory: bit-identical on one machine (`own_aligned_memory`).
- Another CPU or thread count: agreement to float32 rounding only (oneDNN picks kernels per CPU).
"""

import torch
from torch import nn

from studio.runtime import CPU_ALIGNMENT, own_aligned_memory


def test_misaligned_parameters_are_copied_to_aligned_memory_with_the_same_values():
    storage = torch.arange(65, dtype=torch.float32)
    layer = nn.Linear(8, 8)
    with torch.no_grad():
        layer.weight.data = storage[1:65].view(
            8, 8
        )  # 4 bytes past an aligned start, like a safetensors slice
    assert layer.weight.data_ptr() % CPU_ALIGNMENT
    before = layer.weight.detach().clone()
    copied = own_aligned_memory(layer)
    assert copied == 1 and layer.weight.data_ptr() % CPU_ALIGNMENT == 0
    assert torch.equal(layer.weight, before) and isinstance(layer.weight, nn.Parameter)
    assert own_aligned_memory(layer) == 0  # idempotent
