"""Label-free data: views of a dataset without its labels, and unlabeled sources given by the user.

A label-free trial only ever receives :func:`strip_labels` views, whose items are ``(x,)``: code that
tries to read a target gets an unpacking error instead of a silently used label.  Data that never had
labels (``dataset.unlabeled``: a flat folder of images or a .npy array) is read by :func:`read_unlabeled`
and becomes the training split of a label-free sweep (:func:`with_unlabeled`, :func:`unlabeled_only`).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import DataError


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


# ----------------------------------------------------------------------------- unlabeled sources
#
# ``dataset.unlabeled: <path>`` (label-free sweeps only) names the user's own device data: a flat folder of
# image files or a .npy array of inputs. It becomes the training split every trial sees (items ``(x,)``);
# the validation inputs agreement is measured on are carved from it by a seeded permutation. A labelled
# dataset named beside it (``name: digits``, ``imagefolder`` with class folders) is used only to train a dense
# teacher and to report accuracy (:func:`with_unlabeled`); without one (:func:`unlabeled_only`) there are no
# labels anywhere and accuracy is unknown.

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
ARRAY_SUFFIXES = (".npy",)
# PIL modes read as one channel (alpha dropped); every other mode is read as RGB
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
_MODES = {1: "L", 3: "RGB"}
# rng_for purpose tag of the device validation carve (sources.TAG_* use 1, 2, 4; subsets 11-13)
TAG_DEVICE_VAL = 5


def _loc(where: str) -> str:
    return f" ({where})" if where else ""


def fit_image(image, size: tuple[int, int]):
    """Scale a PIL image so that it covers ``size`` (H, W), bilinear, then centre-crop to it: for a square
    size this is the shorter side scaled to it, as ``imagefolder`` does (torchvision ``Resize`` + ``CenterCrop``)."""
    from PIL import Image

    h, w = size
    w0, h0 = image.size
    ratio = max(h / h0, w / w0)
    nw, nh = max(w, int(w0 * ratio)), max(h, int(h0 * ratio))
    if (nw, nh) != (w0, h0):
        image = image.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - w) / 2.0)), int(round((nh - h) / 2.0))
    return image.crop((left, top, left + w, top + h))


def _read_images(folder: str, channels: int | None, size: tuple[int, int] | None, what: str,
                 where: str) -> np.ndarray:
    from PIL import Image

    entries = sorted(os.listdir(folder))
    names = [n for n in entries if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)
             and os.path.isfile(os.path.join(folder, n))]
    if not names:
        subdirs = [n for n in entries if os.path.isdir(os.path.join(folder, n))]
        hint = (f"; it holds folders ({', '.join(subdirs[:3])}{', ...' if len(subdirs) > 3 else ''}), but an unlabeled "
                f"folder is flat: a labelled set of <class>/ folders is imagefolder's path" if subdirs else "")
        raise DataError(f"unlabeled folder must hold image files ({', '.join(IMAGE_SUFFIXES)}) directly inside "
                        f"it, but got none in {folder}{hint}{_loc(where)}")
    if channels is not None and channels not in _MODES:
        raise DataError(f"unlabeled images can be read as 1 (greyscale) or 3 (RGB) channels, but {what} have "
                        f"{channels}; give a .npy array of inputs instead ({folder}){_loc(where)}")
    mode = _MODES.get(channels) if channels is not None else None
    out, first = [], None
    for name in names:
        path = os.path.join(folder, name)
        try:
            with Image.open(path) as im:
                if mode is None:  # no target: the first image decides, greyscale or RGB
                    mode = "L" if im.mode in _GREY_MODES else "RGB"
                im = im.convert(mode)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"unlabeled images must be readable image files, but got {type(e).__name__}: {e} "
                            f"for {path}{_loc(where)}") from None
        if size is not None:
            im = fit_image(im, size)
        elif first is None:
            first = (name, im.size)
        elif im.size != first[1]:
            raise DataError(f"unlabeled images must all have the same size, but got {name} at "
                            f"{im.size[0]}x{im.size[1]} while {first[0]} is {first[1][0]}x{first[1][1]} (width x "
                            f"height) in {folder}{_loc(where)}; set image_size to resize them all")
        a = np.asarray(im, dtype=np.uint8)
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32) / 255.0


def _read_array(path: str, channels: int | None, size: tuple[int, int] | None, what: str,
                where: str) -> tuple[np.ndarray, bool]:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"unlabeled array must be a readable .npy file (numpy.save), but got "
                        f"{type(e).__name__}: {e} in {path}{_loc(where)}") from None
    if not isinstance(a, np.ndarray) or not (a.dtype == np.uint8 or np.issubdtype(a.dtype, np.floating)):
        raise DataError(f"unlabeled array must be float or uint8, but got dtype {getattr(a, 'dtype', type(a))} "
                        f"in {path}{_loc(where)}")
    if a.ndim not in (3, 4):
        raise DataError(f"unlabeled array must have shape (N, C, H, W) or (N, H, W), but got {a.ndim} "
                        f"dimension(s), shape {a.shape}, in {path}{_loc(where)}")
    if a.size == 0:
        raise DataError(f"unlabeled array must not be empty, but got shape {a.shape} in {path}{_loc(where)}")
    if a.ndim == 4 and a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
        raise DataError(f"unlabeled array must be channels-first (N, C, H, W), but got shape {a.shape}, which "
                        f"looks channels-last, in {path}{_loc(where)}; save np.moveaxis(x, -1, 1)")
    scaled = a.dtype == np.uint8
    x = a.astype(np.float32) / np.float32(255.0) if scaled else a.astype(np.float32)
    if a.ndim == 3:
        x = x[:, None]
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise DataError(f"unlabeled array must hold finite values, but got {int(bad.sum())} NaN or infinite "
                        f"value(s), the first in input {first}, in {path}{_loc(where)}")
    c, h, w = x.shape[1:]
    if (channels is not None and c != channels) or (size is not None and (h, w) != tuple(size)):
        want = f"({channels if channels is not None else 'C'}, " + (f"{size[0]}, {size[1]})" if size else "H, W)")
        raise DataError(f"unlabeled array must hold inputs of shape {want} like {what} (arrays are not resized "
                        f"or converted; image folders are), but got {(c, h, w)} from shape {a.shape} in "
                        f"{path}{_loc(where)}")
    return x, scaled


def read_unlabeled(path: str, *, channels: int | None = None, size: tuple[int, int] | None = None,
                   what: str = "the inputs", where: str = "") -> tuple[np.ndarray, str]:
    """The inputs of an unlabeled source as an (N, C, H, W) float32 array on the raw scale, and its kind.

    * a folder: every image file directly inside it (:data:`IMAGE_SUFFIXES`, sorted by name; sub-folders
      and hidden files ignored), read with PIL, converted to ``channels`` (1: ``L``, 3: ``RGB``, alpha
      dropped; None: the first image's kind) and, when ``size`` (H, W) is given, scaled to cover it
      (bilinear) and centre-cropped (:func:`fit_image`); without ``size`` every image must have the
      first one's size. Pixels are divided by 255 (kind ``"images"``);
    * a ``.npy`` file: an (N, C, H, W) or (N, H, W) float or uint8 array; uint8 is divided by 255 (kind
      ``"uint8 array"``), float is taken as given (kind ``"float array"``); it must already have
      ``channels`` and ``size`` (arrays are not converted) and hold only finite values.

    Every problem is a one-line :class:`~sweep.errors.DataError` naming the value and ``where``."""
    if not isinstance(path, str) or not os.path.exists(path):
        raise DataError(f"unlabeled must be an existing folder of images or a .npy file, but got "
                        f"unlabeled={path!r}{_loc(where)}")
    if os.path.isdir(path):
        return _read_images(path, channels, size, what, where), "images"
    if not path.lower().endswith(ARRAY_SUFFIXES):
        raise DataError(f"unlabeled must be a folder of images or a .npy file, but got the file "
                        f"unlabeled={path!r}{_loc(where)}")
    x, scaled = _read_array(path, channels, size, what, where)
    return x, "uint8 array" if scaled else "float array"


def _carve(n: int, val_fraction: float, seed: int, path: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of the source by a seeded permutation (no label exists to read)."""
    from .base import random_split, rng_for

    if n < 2:
        raise DataError(f"unlabeled data must hold at least 2 inputs (one to train on, one to validate), but "
                        f"got {n} in {path}{_loc(where)}")
    return random_split(n, val_fraction, rng_for(seed, TAG_DEVICE_VAL))


def with_unlabeled(splits, path: str, *, val_fraction: float, seed: int, where: str = ""):
    """``splits`` (a labelled dataset) with the unlabeled source at ``path`` as its training data.

    The source is read to the dataset's channels and size (:func:`read_unlabeled`) and put on its scale
    (``splits.input_norm``; a float array must then lie in [0, 1], the raw scale of every image dataset
    here). ``val_fraction`` of it, drawn by a seeded permutation, becomes ``agreement_val``; the rest is
    ``train``. The labelled training split becomes ``teacher_train``; ``val`` and ``test`` stay, for
    reporting accuracy only."""
    from dataclasses import replace

    from .base import apply_norm, channel_stats

    c, h, w = splits.input_shape
    what = f"{splits.name} inputs (C, H, W) = {(c, h, w)}"
    x, kind = read_unlabeled(path, channels=c, size=(h, w), what=what, where=where)
    if kind == "float array" and splits.input_norm is not None:
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise DataError(f"unlabeled float array must hold values in [0, 1] (the raw scale {splits.name} "
                            f"normalises; uint8 arrays are divided by 255), but got values in [{lo:.4g}, {hi:.4g}] "
                            f"in {path}{_loc(where)}")
    tr, va = _carve(len(x), val_fraction, seed, path, where)
    norm = splits.input_norm or channel_stats(x[tr])
    return replace(splits, train=TensorDataset(apply_norm(x[tr], norm)),
                   agreement_val=TensorDataset(apply_norm(x[va], norm)), teacher_train=splits.train,
                   unlabeled_source=path)


def unlabeled_only(path: str, *, val_fraction: float, seed: int, num_classes: int | None,
                   channels: int | None = None, image_size: int | None = None, where: str = ""):
    """Splits with no labelled set: the source's inputs (:func:`read_unlabeled`; images resized to
    ``image_size`` when given), standardised per channel with the training part's mean and std, split by a
    seeded permutation into ``train`` and ``val`` (items ``(x,)``); ``test`` is None, ``labelled`` False.
    ``num_classes`` is the teacher's number of outputs (the model of ``baseline.path``, or MBN's clusters)."""
    from .base import DataSplits, apply_norm, channel_stats

    if num_classes is None:
        raise DataError(f"unlabeled data alone needs num_classes, the number of outputs of the teacher (the "
                        f"model of baseline.path; an MBN teacher's clusters), but got none{_loc(where)}")
    size = (image_size, image_size) if image_size is not None else None
    x, _ = read_unlabeled(path, channels=channels, size=size, what="channels / image_size", where=where)
    tr, va = _carve(len(x), val_fraction, seed, path, where)
    norm = channel_stats(x[tr])
    return DataSplits("unlabeled", TensorDataset(apply_norm(x[tr], norm)), TensorDataset(apply_norm(x[va], norm)),
                      None, int(num_classes), tuple(int(s) for s in x.shape[1:]), input_norm=norm, labelled=False,
                      unlabeled_source=path)
