"""Datasets as explicit, seeded train / val / test splits, and the batch loader.

``load_dataset(name, options, seed=..., where=...)`` checks ``options`` (unknown keys and bad values
raise :class:`~sweep.errors.ConfigError`), builds the splits and applies the common
``train_subset`` / ``val_subset`` / ``test_subset`` options. Splits and subsets are stratified by class,
except with ``stratify=False`` (label-free sweeps), where they are seeded permutations that read no
label, so labels never decide which items the device side sees. In-memory datasets (digits,
fashion-mnist, synthetic) come as ``TensorDataset``s that :func:`make_loader` slices directly.
"""

from __future__ import annotations

from typing import Any

from . import sources as _sources  # noqa: F401  (registers the datasets)
from .base import DATASETS, DatasetSpec, DataSplits, parse_options, rng_for, subset
from .loaders import EpochLoader, make_loader
from .sources import read_idx
from .unlabeled import Unlabeled, cloud_device_split, strip_labels

__all__ = [
    "DATASETS",
    "DataSplits",
    "DatasetSpec",
    "EpochLoader",
    "dataset_names",
    "load_dataset",
    "make_loader",
    "read_idx",
    "Unlabeled",
    "cloud_device_split",
    "strip_labels",
]

# Subset streams are independent of the split streams (see sources.TAG_*).
_TAG_SUBSET = {"train": 11, "val": 12, "test": 13}


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.names()


def load_dataset(name: str, options: dict[str, Any] | None, *, seed: int = 0, where: str = "",
                 stratify: bool = True) -> DataSplits:
    """Build the splits of dataset ``name``; the same seed gives identical splits.

    ``stratify=False`` (label-free sweeps) draws every split and subset without reading a label."""
    spec = DATASETS.get(name, where)
    opts = parse_options(name, options, spec.options, where)
    splits = spec.build(opts, int(seed), where, bool(stratify))
    parts = {
        s: subset(getattr(splits, s), opts.get(f"{s}_subset"), rng_for(seed, _TAG_SUBSET[s]), stratify=stratify)
        for s in ("train", "val", "test")
    }
    return DataSplits(splits.name, parts["train"], parts["val"], parts["test"], splits.num_classes, splits.input_shape)
