"""An endless, resumable stream of training batches.

Epoch e visits the dataset in the order of a permutation seeded by ``seed + e``; each process takes
its own slice of every global batch. The position (epoch, batch) is the whole state, so a resumed
run continues with exactly the batches an uninterrupted run would have seen, without replaying
the epoch and without consuming the global RNG (as a DataLoader iterator would on creation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate


class BatchStream:
    """Yields collated batches of ``batch_size`` items for process ``rank`` of ``world_size``."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        global_batch = batch_size * world_size
        if len(dataset) < global_batch:
            raise ValueError(
                f"dataset has {len(dataset)} images, fewer than one global batch of {global_batch}"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.batch_index = 0

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // (self.batch_size * self.world_size)

    def _order(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.dataset), generator=generator)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self._order()
        while True:
            if self.batch_index >= self.batches_per_epoch:
                self.epoch, self.batch_index = self.epoch + 1, 0
                order = self._order()
            start = (self.batch_index * self.world_size + self.rank) * self.batch_size
            indices = order[start : start + self.batch_size].tolist()
            self.batch_index += 1
            yield default_collate([self.dataset[i] for i in indices])

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_index": self.batch_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])
