"""Datasets as explicit, seeded train / val / test splits, and the batch loader.

``load_dataset(name, options, seed=..., where=...)`` checks ``options`` (unknown keys and bad values
raise :class:`~sweep.errors.ConfigError`), builds the splits and applies the common
``train_subset`` / ``val_subset`` / ``test_subset`` options. Splits and subsets are stratified by class,
except with ``stratify=False`` (label-free sweeps), where they are seeded permutations that read no
label, so labels never decide which items the device side sees. In-memory datasets (digits,
fashion-mnist, synthetic) come as ``TensorDataset``s that :func:`make_loader` slices directly.

Label-free sweeps may bring data that never had labels: the option ``unlabeled`` (any dataset) names a
flat folder of images or a .npy array that becomes the training split (:mod:`sweep.data.unlabeled`); the
dataset ``unlabeled`` is such a source with no labelled set at all.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import ConfigError
from . import sources as _sources  # noqa: F401  (registers the datasets)
from .base import DATASETS, DatasetSpec, DataSplits, parse_options, rng_for, subset
from .loaders import EpochLoader, make_loader
from .sources import read_idx
from .unlabeled import Unlabeled, cloud_device_split, read_unlabeled, strip_labels, unlabeled_only, with_unlabeled

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
    "read_unlabeled",
    "strip_labels",
    "unlabeled_only",
    "with_unlabeled",
]

# Subset streams are independent of the split streams (see sources.TAG_*).
_TAG_SUBSET = {"train": 11, "val": 12, "test": 13}


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.names()


def load_dataset(name: str, options: dict[str, Any] | None, *, seed: int = 0, where: str = "",
                 stratify: bool = True) -> DataSplits:
    """Build the splits of dataset ``name``; the same seed gives identical splits.

    ``stratify=False`` (label-free sweeps) draws every split and subset without reading a label. Only
    then may ``options`` name ``unlabeled`` (the user's unlabeled device data): the splits are built and
    subset as without it, then the source becomes the training split (:func:`with_unlabeled`; the dataset
    ``unlabeled`` is the source alone, with no labelled set)."""
    spec = DATASETS.get(name, where)
    opts = parse_options(name, options, spec.options, where)
    source = opts.get("unlabeled")
    if source is not None and stratify:
        raise ConfigError(f"unlabeled data has no labels, so it is for label-free sweeps only (labels: none), but "
                          f"got unlabeled={source!r} in a supervised one{f' ({where})' if where else ''}")
    splits = spec.build(opts, int(seed), where, bool(stratify))
    parts = {
        s: subset(ds, opts.get(f"{s}_subset"), rng_for(seed, _TAG_SUBSET[s]), stratify=stratify)
        for s in ("train", "val", "test") if (ds := getattr(splits, s)) is not None
    }
    splits = replace(splits, **parts)
    if source is not None and splits.unlabeled_source is None:
        splits = with_unlabeled(splits, source, val_fraction=opts.get("val_fraction") or 0.1, seed=int(seed),
                                where=where)
    return splits
