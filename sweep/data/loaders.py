"""Batch iteration: a tensor-slicing fast path for in-memory data, DataLoader for the rest."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import ConfigError


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) so neighbouring seeds do not give shifted epoch orders.
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, epoch]).generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


class EpochLoader:
    """Re-iterable batches of ``(x, y)``; every ``for`` is one epoch with its own seeded order.

    The order of epoch ``e`` depends only on ``(seed, e)``; :meth:`set_epoch` lets a resumed run
    continue the sequence.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int, drop_last: bool):
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        # Per-sample collate costs ~10 µs/item, far more than a small CNN step on 8x8 images,
        # so in-memory tensors are sliced directly.
        self.fast = isinstance(dataset, TensorDataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        g = _epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        return self._tensor_batches(g) if self.fast else self._loader_batches(g)

    def _tensor_batches(self, g: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        tensors = self.dataset.tensors  # type: ignore[attr-defined]
        n = len(self.dataset)
        stop = n - n % self.batch_size if self.drop_last else n
        if self.shuffle:
            perm = torch.randperm(n, generator=g)
            for i in range(0, stop, self.batch_size):
                idx = perm[i : i + self.batch_size]
                yield tuple(t.index_select(0, idx) for t in tensors)
        else:
            for i in range(0, stop, self.batch_size):
                yield tuple(t[i : i + self.batch_size] for t in tensors)

    def _loader_batches(self, g: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            num_workers=0,
            generator=g,
        )
        for batch in loader:
            if len(batch) == 1:  # a label-free view: inputs only
                yield (batch[0],)
            else:
                x, y = batch
                yield x, y.to(torch.int64)


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> EpochLoader:
    """Batches of ``(x float32 NCHW, y int64)`` over ``dataset``; see :class:`EpochLoader`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, but got batch_size={batch_size!r}")
    return EpochLoader(dataset, batch_size, bool(shuffle), int(seed), bool(drop_last))
