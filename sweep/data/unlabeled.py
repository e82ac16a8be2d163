"""Label-free views of a dataset: the data path, not convention, keeps labels away.

A label-free trial only ever receives :func:`strip_labels` views, whose items are ``(x,)``: code that
tries to read a target gets an unpacking error instead of a silently used label.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset


class Unlabeled(Dataset):
    """A dataset whose items are ``(x,)`` — the wrapped dataset's targets are unreachable through it."""

    def __init__(self, dataset: Dataset):
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset)  # type: ignore[arg-type]

    def __getitem__(self, i):
        return (self._dataset[i][0],)


def strip_labels(dataset: Dataset) -> Dataset:
    """The inputs of ``dataset`` without targets (a one-tensor TensorDataset where possible: fast path)."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(dataset.tensors[0])
    return Unlabeled(dataset)


def cloud_device_split(dataset: Dataset, cloud_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split a training set into a labelled "cloud" part (trains the teacher) and the device part.

    The split is a seeded random permutation that reads no label, so the device part is the same
    whatever its labels are.
    """
    n = len(dataset)  # type: ignore[arg-type]
    perm = np.random.default_rng([int(seed), 0xC10D]).permutation(n)
    k = max(1, min(n - 1, int(round(cloud_fraction * n))))
    cloud, device = np.sort(perm[:k]), np.sort(perm[k:])
    if isinstance(dataset, TensorDataset):
        return (TensorDataset(*(t[torch.from_numpy(cloud)] for t in dataset.tensors)),
                TensorDataset(*(t[torch.from_numpy(device)] for t in dataset.tensors)))
    return Subset(dataset, cloud.tolist()), Subset(dataset, device.tolist())
