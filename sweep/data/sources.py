"""The registered datasets. Each builder gets checked options, the seed, ``where`` and ``stratify``
(false in label-free sweeps: every split is then carved by a permutation that reads no label)."""

from __future__ import annotations

import copy
import gzip
import os
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import (
    COMMON_OPTIONS,
    DATASETS,
    DatasetSpec,
    DataSplits,
    Opt,
    fraction,
    positive_int,
    rng_for,
    split_indices,
    take,
    tensor_splits,
)

# Purpose tags for rng_for: every random choice draws from its own stream.
TAG_TEST, TAG_VAL, TAG_SYNTH = 1, 2, 4

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Documented per-channel constants of the CIFAR training sets.
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
DEFAULT_DOWNLOAD_ROOT = "~/.cache/sweep/datasets"


def _loc(where: str) -> str:
    return f" ({where})" if where else ""


def _register(name: str, options: dict[str, Opt], doc: str, drop: tuple[str, ...] = ()):
    def deco(fn):
        merged = {k: v for k, v in {**COMMON_OPTIONS, **options}.items() if k not in drop}
        DATASETS.add(name, DatasetSpec(build=fn, options=merged, doc=doc))
        return fn

    return deco


def _carve_val(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int, stratify: bool):
    train_idx, val_idx = split_indices(y, val_fraction, rng_for(seed, TAG_VAL), stratify)
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


# -------------------------------------------------------------------------------------- digits


@_register(
    "digits",
    {"val_fraction": fraction(0.2), "test_fraction": fraction(0.2)},
    "sklearn's 1,797 8x8 digits; seeded stratified test and val splits",
)
def _digits(opts: dict[str, Any], seed: int, where: str, stratify: bool = True) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # N, 1, 8, 8 in [0, 1]
    y = bunch.target.astype(np.int64)
    rest, test = split_indices(y, opts["test_fraction"], rng_for(seed, TAG_TEST), stratify)
    (xt, yt), (xv, yv) = _carve_val(x[rest], y[rest], opts["val_fraction"], seed, stratify)
    return tensor_splits(
        "digits", {"train": xt, "val": xv, "test": x[test]}, {"train": yt, "val": yv, "test": y[test]}, 10
    )


# ------------------------------------------------------------------------------- fashion-mnist

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (gzipped when the name ends in ``.gz``) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"IDX file must be readable, but got {path}: {e}") from None
    # Header: two zero bytes, a type code, the number of dims, then one big-endian int32 per dim.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"IDX file must start with a valid magic number, but got {raw[:4]!r} in {path}")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 0
    offset = 4 + 4 * ndim
    if len(raw) - offset != count * dtype.itemsize:
        raise DataError(
            f"IDX file must hold {count * dtype.itemsize} data bytes for shape {dims}, "
            f"but got {len(raw) - offset} in {path}"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)


_FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _find_fashion_files(root: str) -> dict[str, str] | None:
    """The four IDX files under root (Debian layout) or a torchvision root, gzipped or not."""
    for d in (root, os.path.join(root, "FashionMNIST", "raw"), os.path.join(root, "raw")):
        found = {}
        for key, stem in _FMNIST_FILES.items():
            for name in (stem + ".gz", stem):
                if os.path.isfile(os.path.join(d, name)):
                    found[key] = os.path.join(d, name)
                    break
        if len(found) == len(_FMNIST_FILES):
            return found
    return None


def fashion_download_root(root: str) -> str:
    """Where ``download: true`` puts Fashion-MNIST when ``root`` lacks it: ``root`` itself, or the user's cache
    (:data:`DEFAULT_DOWNLOAD_ROOT`) for the default root, Debian's system folder, which is not the user's to
    write."""
    return os.path.expanduser(DEFAULT_DOWNLOAD_ROOT) if root == FASHION_MNIST_ROOT else root


def _downloaded_fashion(root: str, where: str) -> dict[str, str]:
    """Download Fashion-MNIST into ``root`` with torchvision (its mirrors, each file's MD5 checked), then find
    its files there.  The files land in a fresh folder inside ``root`` and are moved into place whole, so an
    interrupted download leaves nothing a later run would take for the data."""
    import shutil
    import tempfile

    import torchvision

    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".fashion-mnist-", dir=root)
    try:
        try:
            torchvision.datasets.FashionMNIST(tmp, train=False, download=True)  # fetches all four files
        except Exception as e:  # URLError / OSError (no network), RuntimeError (every mirror failed, bad MD5)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise DataError(
                f"fashion-mnist must download into {root}, but got {type(e).__name__}: {first[:300]}{_loc(where)}; "
                f"check the network, or get the files with `apt-get install dataset-fashion-mnist` (into "
                f"{FASHION_MNIST_ROOT}) or copy them into {root}") from None
        target = os.path.join(root, "FashionMNIST")
        try:
            os.replace(os.path.join(tmp, "FashionMNIST"), target)
        except OSError:  # another process put them there first: theirs are as good
            if _find_fashion_files(root) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = _find_fashion_files(root)
    if files is None:  # torchvision's layout changed: say so rather than fail further on
        raise DataError(f"fashion-mnist files must be in {root}/FashionMNIST/raw after the download, but got "
                        f"none there{_loc(where)}")
    return files


@_register(
    "fashion-mnist",
    {"root": Opt("path", FASHION_MNIST_ROOT), "download": Opt("bool", False)},
    "Fashion-MNIST 1x28x28, 10 classes, from IDX files (Debian dataset-fashion-mnist or torchvision root; "
    f"download: true fetches them once, into {DEFAULT_DOWNLOAD_ROOT} for the default root)",
)
def _fashion_mnist(opts: dict[str, Any], seed: int, where: str, stratify: bool = True) -> DataSplits:
    root = opts["root"]
    files = _find_fashion_files(root)
    if files is None and opts["download"]:
        root = fashion_download_root(root)
        files = _find_fashion_files(root) or _downloaded_fashion(root, where)
    if files is None:
        raise DataError(
            f"fashion-mnist root must hold {', '.join(s + '[.gz]' for s in _FMNIST_FILES.values())}, "
            f"but got none (or not all) in {root}, {root}/FashionMNIST/raw or {root}/raw{_loc(where)}; "
            f"set download: true (fetches them once, into {fashion_download_root(root)}), or get them with "
            f"`apt-get install dataset-fashion-mnist` (installs into {FASHION_MNIST_ROOT})"
        )
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        xs, ys = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys):
            raise DataError(
                f"fashion-mnist {split} files must hold N images and N labels, but got shapes "
                f"{xs.shape} and {ys.shape} in {root}{_loc(where)}"
            )
    x = arrays["train_x"].astype(np.float32)[:, None] / 255.0
    y = arrays["train_y"].astype(np.int64)
    (xt, yt), (xv, yv) = _carve_val(x, y, opts["val_fraction"], seed, stratify)
    x_test = arrays["test_x"].astype(np.float32)[:, None] / 255.0
    y_test = arrays["test_y"].astype(np.int64)
    return tensor_splits(
        "fashion-mnist", {"train": xt, "val": xv, "test": x_test}, {"train": yt, "val": yv, "test": y_test}, 10
    )


# ------------------------------------------------------------------------------------- cifar


def _cifar(name: str, opts: dict[str, Any], seed: int, where: str, stratify: bool) -> DataSplits:
    import torchvision
    from torchvision import transforms as T

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    if opts["root"] is None and not opts["download"]:
        raise DataError(
            f"{name} needs option root (the folder holding {cls.base_folder}/) or download: true, "
            f"but got neither{_loc(where)}"
        )
    root = opts["root"] or os.path.expanduser(DEFAULT_DOWNLOAD_ROOT)
    mean, std = CIFAR_STATS[name]
    plain = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    augmented = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), plain])
    try:
        train_full = cls(root, train=True, transform=plain, download=opts["download"])
        test = cls(root, train=False, transform=plain, download=opts["download"])
    except Exception as e:  # torchvision raises RuntimeError (missing) or URLError/OSError (no network)
        hint = (
            "check the network, or download elsewhere and copy the folder"
            if opts["download"]
            else f"set download: true, or put the extracted {cls.base_folder}/ (from {cls.url}) into {root}"
        )
        raise DataError(f"{name} must be readable from {root}, but got {type(e).__name__}: {e}{_loc(where)}; "
                        f"{hint}") from None
    labels = np.asarray(train_full.targets)
    train_idx, val_idx = split_indices(labels, opts["val_fraction"], rng_for(seed, TAG_VAL), stratify)
    # Val is carved from the training files but must not see augmentation: a shallow copy shares
    # the decoded arrays and differs only in its transform.
    train_aug = copy.copy(train_full)
    if opts["augment"]:
        train_aug.transform = augmented
    return DataSplits(
        name=name,
        train=take(train_aug, train_idx),
        val=take(train_full, val_idx),
        test=test,
        num_classes=len(train_full.classes),
        input_shape=(3, 32, 32),
        input_norm=(mean, std),
    )


_CIFAR_OPTIONS = {
    "root": Opt("path", None),
    "download": Opt("bool", False),
    "augment": Opt("bool", True),
}


@_register("cifar10", _CIFAR_OPTIONS, "torchvision CIFAR-10; augment = random crop 32 pad 4 + h-flip (train only)")
def _cifar10(opts: dict[str, Any], seed: int, where: str, stratify: bool = True) -> DataSplits:
    return _cifar("cifar10", opts, seed, where, stratify)


@_register("cifar100", _CIFAR_OPTIONS, "torchvision CIFAR-100; augment = random crop 32 pad 4 + h-flip (train only)")
def _cifar100(opts: dict[str, Any], seed: int, where: str, stratify: bool = True) -> DataSplits:
    return _cifar("cifar100", opts, seed, where, stratify)


# ------------------------------------------------------------------------------- imagefolder


@_register(
    "imagefolder",
    {
        "path": Opt("path", None),
        "image_size": Opt("int", 224, lambda v: v >= 1, ">= 1"),
        "test_fraction": fraction(0.2),
    },
    "torchvision ImageFolder layout; path/{train,val,test} used when present",
)
def _imagefolder(opts: dict[str, Any], seed: int, where: str, stratify: bool = True) -> DataSplits:
    """Splits, by what exists under ``path``:

    * ``train/`` + ``val/`` + ``test/``: used as they are;
    * ``train/`` + ``test/``: val carved from train (``val_fraction``);
    * ``train/`` + ``val/`` (ImageNet style): the given val is the held-out test split and val is
      carved from train, so that choosing never looks at the reported split;
    * class folders directly under ``path``: test (``test_fraction``) and val carved, stratified
      (label-blind with ``stratify=False``).
    """
    from torchvision import datasets
    from torchvision import transforms as T

    path = opts["path"]
    if path is None:
        raise DataError(f"imagefolder needs option path (a folder of <class>/ image folders), but got "
                        f"none{_loc(where)}")
    if not os.path.isdir(path):
        raise DataError(f"imagefolder path must be an existing folder, but got path={path!r}{_loc(where)}")
    size = opts["image_size"]
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def folder(p: str):
        try:
            return datasets.ImageFolder(p, transform=tf)
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"imagefolder {p} must hold <class>/<image> files, but got: {e}{_loc(where)}") from None

    sub = {s: os.path.join(path, s) for s in ("train", "val", "test")}
    has = {s: os.path.isdir(p) for s, p in sub.items()}
    if has["train"] and (has["val"] or has["test"]):
        train = folder(sub["train"])
        classes = len(train.classes)
        given = {s: folder(sub[s]) for s in ("val", "test") if has[s]}
        for s, ds in given.items():
            if ds.classes != train.classes:
                raise DataError(
                    f"imagefolder {sub[s]} must have the same class folders as {sub['train']}, "
                    f"but got {ds.classes} vs {train.classes}{_loc(where)}"
                )
        test = given.get("test", given.get("val"))
        if has["val"] and has["test"]:
            val = given["val"]
        else:
            tr_idx, val_idx = split_indices(np.asarray(train.targets), opts["val_fraction"], rng_for(seed, TAG_VAL),
                                            stratify)
            train, val = take(train, tr_idx), take(train, val_idx)
    else:
        full = folder(path)
        labels = np.asarray(full.targets)
        rest, test_idx = split_indices(labels, opts["test_fraction"], rng_for(seed, TAG_TEST), stratify)
        tr, va = split_indices(labels[rest], opts["val_fraction"], rng_for(seed, TAG_VAL), stratify)
        train, val, test = take(full, rest[tr]), take(full, rest[va]), take(full, test_idx)
        classes = len(full.classes)
    return DataSplits("imagefolder", train, val, test, classes, (3, size, size),
                      input_norm=(IMAGENET_MEAN, IMAGENET_STD))


# --------------------------------------------------------------------------------- synthetic


@_register(
    "synthetic",
    {
        "num_classes": Opt("int", 4, lambda v: v >= 2, ">= 2"),
        "input_shape": Opt("shape", (3, 16, 16)),
        "n_train": positive_int(256),
        "n_val": positive_int(64),
        "n_test": positive_int(64),
        "noise": Opt("float", 1.0, lambda v: v >= 0, ">= 0"),
    },
    "class mean patterns + gaussian noise; learnable by a small CNN, deterministic under the seed",
    drop=("val_fraction",),  # the val split is drawn on its own (n_val), so a fraction would be ignored
)
def _synthetic(opts: dict[str, Any], seed: int, where: str, stratify: bool = True) -> DataSplits:
    # each split is drawn on its own: no split of one pool, so nothing to stratify
    c, h, w = opts["input_shape"]
    k = opts["num_classes"]
    rng = rng_for(seed, TAG_SYNTH)
    # Smooth class patterns (4x4 random grids upsampled) give spatial structure a conv can use.
    coarse = torch.from_numpy(rng.standard_normal((k, c, 4, 4)).astype(np.float32))
    patterns = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).numpy()
    patterns /= patterns.std(axis=(1, 2, 3), keepdims=True) + 1e-8

    def draw(n: int):
        y = rng.permutation(np.arange(n) % k).astype(np.int64)  # balanced classes
        x = patterns[y] + opts["noise"] * rng.standard_normal((n, c, h, w)).astype(np.float32)
        return x.astype(np.float32), y

    parts = {s: draw(opts[f"n_{s}"]) for s in ("train", "val", "test")}
    return tensor_splits("synthetic", {s: p[0] for s, p in parts.items()}, {s: p[1] for s, p in parts.items()}, k)


# --------------------------------------------------------------------------------- unlabeled


@_register(
    "unlabeled",
    {
        "num_classes": Opt("int", None, lambda v: v >= 2, ">= 2"),
        "channels": Opt("int", None, lambda v: v >= 1, ">= 1"),
        "image_size": Opt("int", None, lambda v: v >= 1, ">= 1"),
    },
    "no labelled set: only dataset.unlabeled (a flat image folder or a .npy array), label-free sweeps only; "
    "accuracy is unknown",
    drop=("test_subset",),  # there is no test split
)
def _unlabeled(opts: dict[str, Any], seed: int, where: str, stratify: bool = True) -> DataSplits:
    from .unlabeled import unlabeled_only

    if opts["unlabeled"] is None:
        raise DataError(f"dataset unlabeled needs option unlabeled (a flat folder of images or a .npy file), but "
                        f"got none{_loc(where)}")
    return unlabeled_only(opts["unlabeled"], val_fraction=opts["val_fraction"], seed=seed,
                          num_classes=opts["num_classes"], channels=opts["channels"], image_size=opts["image_size"],
                          where=where)
