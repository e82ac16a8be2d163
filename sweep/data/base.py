"""Shared pieces of the data layer: the splits record, the dataset registry, option checking and
seeded splitting: stratified by class in supervised sweeps, label-blind (a seeded permutation) in
label-free ones, so that no label decides which items the device side sees."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import ConfigError
from ..registry import Registry


@dataclass(frozen=True)
class DataSplits:
    """Disjoint train / val / test splits of one dataset plus what a model needs to be built.

    The fields after ``input_shape`` have defaults that describe an ordinary labelled dataset. An
    unlabeled source (``dataset.unlabeled`` in a label-free sweep, :mod:`sweep.data.unlabeled`) sets them:

    * ``train`` is then the unlabeled device data (items ``(x,)``), what every trial trains on;
    * ``agreement_val``: the inputs (items ``(x,)``) agreement with the teacher is measured on, carved from
      the source without reading a label; None: the inputs of ``val``;
    * ``teacher_train``: the labelled data a dense teacher is trained on; None: ``train``;
    * ``labelled``: whether ``val`` / ``test`` carry labels. False when no labelled set was given: ``val`` is
      then the unlabeled validation inputs, ``test`` is None and accuracy cannot be measured;
    * ``input_norm``: the per-channel ``(mean, std)`` the dataset maps its raw inputs with (``(x - mean) / std``;
      raw inputs are on the [0, 1] scale for every image dataset here), so that other inputs can be put on
      the same scale; None when unknown;
    * ``unlabeled_source``: the path of the unlabeled source, for messages and records.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    input_shape: tuple[int, int, int]  # C, H, W
    input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    agreement_val: Dataset | None = None
    teacher_train: Dataset | None = None
    labelled: bool = True
    unlabeled_source: str | None = None

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A zero batch of the right shape (for tracing, MAC counting, latency timing)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"batch must be an integer >= 1, but got batch={batch!r}")
        return torch.zeros((batch, *self.input_shape), dtype=torch.float32)


# ----------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Opt:
    """One accepted option: its type, default and (optional) range check.

    ``kind`` is one of ``int``, ``float``, ``bool``, ``str``, ``path``, ``shape``; ``check`` returns
    True for valid values and ``rule`` says the constraint in words (``"in (0, 1)"``).
    """

    kind: str
    default: Any = None
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    nullable: bool = field(default=True)


_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "path": "a path string",
    "shape": "a list of 3 positive integers [C, H, W]",
}


def _coerce(kind: str, value: Any) -> tuple[bool, Any]:
    # bool is a subclass of int in Python; YAML `true` must not pass as 1.
    if kind == "int":
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "str":
        return isinstance(value, str), value
    if kind == "path":
        ok = isinstance(value, (str, os.PathLike))
        return ok, os.path.expanduser(os.fspath(value)) if ok else value
    if kind == "shape":
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        )
        return ok, tuple(value) if ok else value
    raise AssertionError(f"unknown option kind {kind}")  # a bug in a spec, not user input


def parse_options(dataset: str, options: Any, spec: dict[str, Opt], where: str = "") -> dict[str, Any]:
    """Check ``options`` against ``spec``; return every accepted key with defaults filled in."""
    loc = f" ({where})" if where else ""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"{dataset} options must be a mapping, but got {options!r}{loc}")
    accepted = ", ".join(sorted(spec))
    out: dict[str, Any] = {}
    for key in options:
        if key not in spec:
            raise ConfigError(
                f"{dataset} options must be among [{accepted}], but got unknown key {key!r}{loc}"
            )
    for key, opt in spec.items():
        if key not in options or (options[key] is None and opt.nullable):
            out[key] = opt.default
            continue
        value = options[key]
        ok, value = _coerce(opt.kind, value)
        if not ok:
            raise ConfigError(f"{key} must be {_KIND_WORDS[opt.kind]}, but got {key}={options[key]!r}{loc}")
        if opt.check is not None and not opt.check(value):
            raise ConfigError(f"{key} must be {opt.rule}, but got {key}={options[key]!r}{loc}")
        out[key] = value
    return out


def fraction(default: float) -> Opt:
    return Opt("float", default, lambda v: 0.0 < v < 1.0, "in (0, 1)")


def positive_int(default: int | None) -> Opt:
    return Opt("int", default, lambda v: v >= 1, ">= 1")


COMMON_OPTIONS: dict[str, Opt] = {
    "val_fraction": fraction(0.1),
    # Subsets keep the first N of a seeded order, stratified unless label-free (N larger than the split keeps all).
    "train_subset": positive_int(None),
    "val_subset": positive_int(None),
    "test_subset": positive_int(None),
    # label-free sweeps: the user's unlabeled device data (a flat image folder or a .npy array), the training
    # split of every trial (sweep.data.unlabeled); the dataset's own labelled splits then train the teacher
    # and report accuracy only
    "unlabeled": Opt("path", None),
}


# ---------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its own options (merged over the common ones) and its builder.

    The builder is called as ``build(opts, seed, where, stratify)``; with ``stratify=False`` every split
    it carves is drawn without reading a label (:func:`split_indices`)."""

    build: Callable[[dict[str, Any], int, str, bool], DataSplits]
    options: dict[str, Opt]
    doc: str = ""


DATASETS: Registry[DatasetSpec] = Registry("dataset")


# --------------------------------------------------------------------------------- splitting


def rng_for(seed: int, *tags: int) -> np.random.Generator:
    """An independent generator per (seed, purpose) so carving val does not shift the subsets."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *tags]))


def stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation whose every prefix keeps the class proportions (to within one item).

    Each item of class ``c`` gets the key ``(rank + u) / count_c`` with its rank in a shuffled
    order of its class and ``u ~ U(0, 1)``; sorting by key interleaves the classes evenly.
    """
    labels = np.asarray(labels)
    keys = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        ranks = rng.permutation(len(idx))
        keys[idx] = (ranks + rng.random(len(idx))) / len(idx)
    return np.argsort(keys, kind="stable")


def stratified_split(labels: np.ndarray, fraction_: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out) with ``held_out`` about ``fraction_`` of each class."""
    order = stratified_order(labels, rng)
    n_out = int(round(fraction_ * len(order)))
    n_out = min(max(n_out, 1), len(order) - 1) if len(order) > 1 else 0
    return np.sort(order[n_out:]), np.sort(order[:n_out])


def random_split(n: int, fraction_: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (rest, held_out) by a seeded permutation that reads no label."""
    order = rng.permutation(n)
    n_out = int(round(fraction_ * n))
    n_out = min(max(n_out, 1), n - 1) if n > 1 else 0
    return np.sort(order[n_out:]), np.sort(order[:n_out])


def split_indices(labels: np.ndarray, fraction_: float, rng: np.random.Generator,
                  stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held_out): :func:`stratified_split` on ``labels``, or with ``stratify=False`` a
    :func:`random_split` that uses only their count (label-free sweeps)."""
    if stratify:
        return stratified_split(labels, fraction_, rng)
    return random_split(len(labels), fraction_, rng)


def labels_of(ds: Dataset) -> np.ndarray | None:
    """Class labels of a dataset without loading its inputs (None when unknown)."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].numpy() if len(ds.tensors) > 1 else None  # inputs only: no labels
    if isinstance(ds, Subset):
        inner = labels_of(ds.dataset)
        return None if inner is None else inner[np.asarray(ds.indices)]
    targets = getattr(ds, "targets", None)
    return None if targets is None else np.asarray(targets)


def take(ds: Dataset, indices: np.ndarray) -> Dataset:
    """Restrict a dataset to ``indices``; tensor datasets stay tensor datasets (fast loader path)."""
    if isinstance(ds, TensorDataset):
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return TensorDataset(*(t[idx] for t in ds.tensors))
    return Subset(ds, [int(i) for i in indices])


def subset(ds: Dataset, n: int | None, rng: np.random.Generator, stratify: bool = True) -> Dataset:
    """The first ``n`` items of a seeded order of ``ds``: stratified when labels are known and
    ``stratify`` is true, else a permutation that reads no label (label-free sweeps)."""
    if n is None or n >= len(ds):
        return ds
    labels = labels_of(ds) if stratify else None
    order = stratified_order(labels, rng) if labels is not None else rng.permutation(len(ds))
    return take(ds, np.sort(order[:n]))


def channel_stats(x_train: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of an (N, C, H, W) array; a constant channel gets std 1 (stays finite)."""
    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x_train.std(axis=(0, 2, 3), dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def apply_norm(x: np.ndarray, norm: tuple[tuple[float, ...], tuple[float, ...]]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of an (N, C, H, W) array, as float32 tensor."""
    mean = np.asarray(norm[0], dtype=np.float64)[None, :, None, None]
    std = np.asarray(norm[1], dtype=np.float64)[None, :, None, None]
    return torch.from_numpy(((x - mean) / std).astype(np.float32))


def normalised_tensors(
    x_train: np.ndarray, *others: np.ndarray
) -> tuple[torch.Tensor, ...]:
    """Per-channel standardisation (N, C, H, W) with mean/std from the training array only."""
    norm = channel_stats(x_train)
    return tuple(apply_norm(a, norm) for a in (x_train, *others))


def tensor_splits(
    name: str,
    x: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    num_classes: int,
) -> DataSplits:
    """Build a ``DataSplits`` of ``TensorDataset``s from raw (N, C, H, W) arrays, train-normalised."""
    norm = channel_stats(x["train"])
    xt, xv, xs = (apply_norm(x[s], norm) for s in ("train", "val", "test"))

    def ds(xx: torch.Tensor, yy: np.ndarray) -> TensorDataset:
        return TensorDataset(xx.contiguous(), torch.as_tensor(np.asarray(yy), dtype=torch.int64))

    return DataSplits(
        name=name,
        train=ds(xt, y["train"]),
        val=ds(xv, y["val"]),
        test=ds(xs, y["test"]),
        num_classes=int(num_classes),
        input_shape=tuple(int(s) for s in x["train"].shape[1:]),  # type: ignore[arg-type]
        input_norm=norm,
    )
