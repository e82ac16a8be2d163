"""Tests of sweep.data: splits, options, the IDX / ImageFolder readers and the batch loader."""

from __future__ import annotations

import gzip
import struct
import time

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from sweep.data import DATASETS, DataSplits, dataset_names, load_dataset, make_loader
from sweep.data.base import stratified_order, stratified_split
from sweep.errors import ConfigError, DataError, RegistryError

SPLITS = ("train", "val", "test")


def tensors(splits: DataSplits, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    return getattr(splits, part).tensors


# ------------------------------------------------------------------------------ registry


def test_dataset_names_sorted_and_unknown_name_lists_them():
    names = dataset_names()
    assert names == sorted(names)
    assert {"digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic"} <= set(names)
    assert "digits" in DATASETS
    with pytest.raises(RegistryError, match=r"unknown dataset 'mnist' \(cfg.yaml\).*digits.*synthetic"):
        load_dataset("mnist", {}, where="cfg.yaml")


# ------------------------------------------------------------------------- digits, synthetic


def test_digits_shapes_dtypes_and_normalisation():
    s = load_dataset("digits", {})
    assert s.name == "digits" and s.num_classes == 10 and s.input_shape == (1, 8, 8)
    # 20% test of 1,797, then 20% of the rest as val.
    assert (len(s.train), len(s.val), len(s.test)) == (1150, 288, 359)
    for part in SPLITS:
        x, y = tensors(s, part)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and set(y.tolist()) == set(range(10))
    x, _ = tensors(s, "train")
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    assert s.example_input(3).shape == (3, 1, 8, 8)


def test_digits_splits_partition_the_dataset():
    """Train, val and test together are exactly the 1,797 images, each used once."""
    from sklearn.datasets import load_digits

    s = load_dataset("digits", {}, seed=5)
    xs = torch.cat([tensors(s, p)[0] for p in SPLITS]).numpy().reshape(-1, 64)
    ys = torch.cat([tensors(s, p)[1] for p in SPLITS]).numpy()
    # Normalisation is one increasing affine map for all splits, so the rank of a value among the
    # 17 distinct levels recovers the raw pixel value 0..16.
    levels = np.unique(xs)
    assert len(levels) == 17
    raw = np.searchsorted(levels, xs)
    got = sorted(zip(map(bytes, raw.astype(np.uint8)), ys.tolist()))
    bunch = load_digits()
    want = sorted(zip(map(bytes, bunch.data.astype(np.uint8)), bunch.target.tolist()))
    assert got == want


def test_same_seed_same_splits_other_seed_other_splits():
    a, b, c = (load_dataset("digits", {}, seed=k) for k in (0, 0, 1))
    for part in SPLITS:
        assert all(torch.equal(u, v) for u, v in zip(tensors(a, part), tensors(b, part)))
    assert not torch.equal(tensors(a, "test")[0], tensors(c, "test")[0])
    assert not torch.equal(tensors(a, "val")[1], tensors(c, "val")[1])


def test_stratified_split_indices_disjoint_deterministic_and_stratified():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    rest, held = stratified_split(labels, 0.2, np.random.default_rng(0))
    assert len(np.intersect1d(rest, held)) == 0
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(200))
    assert np.bincount(labels[held]).tolist() == [20, 10, 6, 4]
    again, _ = stratified_split(labels, 0.2, np.random.default_rng(0))
    other, _ = stratified_split(labels, 0.2, np.random.default_rng(1))
    assert np.array_equal(rest, again) and not np.array_equal(rest, other)
    # Every prefix of the order keeps the proportions to within one item per class.
    order = stratified_order(labels, np.random.default_rng(3))
    for n in (10, 37, 120):
        counts = np.bincount(labels[order[:n]], minlength=4)
        assert np.all(np.abs(counts - n * np.array([0.5, 0.25, 0.15, 0.1])) <= 1.0)


def test_val_split_and_subsets_keep_class_proportions():
    s = load_dataset("digits", {"train_subset": 100, "val_subset": 50, "test_subset": 30})
    assert (len(s.train), len(s.val), len(s.test)) == (100, 50, 30)
    assert isinstance(s.train, TensorDataset)  # subsets keep the fast loader path
    counts = np.bincount(tensors(s, "train")[1].numpy(), minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11
    full = load_dataset("digits", {})
    props = [np.bincount(tensors(full, p)[1].numpy(), minlength=10) / len(getattr(full, p)) for p in SPLITS]
    assert np.abs(props[0] - props[1]).max() < 0.01 and np.abs(props[0] - props[2]).max() < 0.01
    # A subset larger than the split keeps everything.
    assert len(load_dataset("digits", {"train_subset": 10**6}).train) == len(full.train)


def test_synthetic_shapes_determinism_and_learnable():
    opts = {"num_classes": 3, "input_shape": [2, 12, 10], "n_train": 90, "n_val": 30, "n_test": 33}
    s = load_dataset("synthetic", opts, seed=7)
    assert s.num_classes == 3 and s.input_shape == (2, 12, 10)
    assert (len(s.train), len(s.val), len(s.test)) == (90, 30, 33)
    x, y = tensors(s, "train")
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (90, 2, 12, 10)
    assert np.bincount(y.numpy()).tolist() == [30, 30, 30]
    assert torch.equal(x, tensors(load_dataset("synthetic", opts, seed=7), "train")[0])
    assert not torch.equal(x, tensors(load_dataset("synthetic", opts, seed=8), "train")[0])
    # The classes carry signal: nearest class mean (from train) classifies val well above chance.
    means = torch.stack([x[y == k].mean(0) for k in range(3)]).flatten(1)
    xv, yv = tensors(s, "val")
    pred = torch.cdist(xv.flatten(1), means).argmin(1)
    assert (pred == yv).float().mean().item() > 0.9


# ------------------------------------------------------------------------------- options


def test_unknown_option_names_key_accepted_keys_and_where():
    with pytest.raises(ConfigError) as e:
        load_dataset("digits", {"val_fraction": 0.1, "batchsize": 3}, where="spaces/a.yaml: dataset.options")
    msg = str(e.value)
    assert "'batchsize'" in msg and "val_fraction" in msg and "train_subset" in msg
    assert "spaces/a.yaml: dataset.options" in msg


def test_out_of_range_and_wrong_type_options():
    with pytest.raises(ConfigError) as e:
        load_dataset("digits", {"val_fraction": 1.5}, where="w")
    assert str(e.value) == "val_fraction must be in (0, 1), but got val_fraction=1.5 (w)"
    with pytest.raises(ConfigError, match=r"train_subset must be an integer, but got train_subset=True"):
        load_dataset("digits", {"train_subset": True})
    with pytest.raises(ConfigError, match=r"train_subset must be >= 1, but got train_subset=0"):
        load_dataset("digits", {"train_subset": 0})
    with pytest.raises(ConfigError, match=r"input_shape must be a list of 3 positive integers"):
        load_dataset("synthetic", {"input_shape": [3, 16]})
    with pytest.raises(ConfigError, match=r"options must be a mapping"):
        load_dataset("digits", [("val_fraction", 0.1)])


# ------------------------------------------------------------------------- fashion-mnist


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_fake_fashion(folder, n_train=20, n_test=10, gz=True):
    """Images filled with 10 * label + 5, so every pixel says which label it belongs to."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        x = np.broadcast_to((10 * y + 5)[:, None, None], (n, 28, 28))
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            name = f"{prefix}-{kind}-ubyte"
            data = _idx_bytes(np.ascontiguousarray(arr))
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)


@pytest.mark.parametrize("layout", ["debian-gz", "torchvision-raw"])
def test_fashion_mnist_from_idx_files(tmp_path, layout):
    if layout == "debian-gz":
        _write_fake_fashion(tmp_path)
    else:
        _write_fake_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    s = load_dataset("fashion-mnist", {"root": str(tmp_path), "val_fraction": 0.25}, seed=0)
    assert s.num_classes == 10 and s.input_shape == (1, 28, 28)
    assert (len(s.train), len(s.val), len(s.test)) == (15, 5, 10)
    xs = torch.cat([tensors(s, p)[0] for p in SPLITS])
    ys = torch.cat([tensors(s, p)[1] for p in SPLITS])
    assert xs.dtype == torch.float32 and ys.dtype == torch.int64
    # Images still match their labels after splitting and normalising (an increasing map).
    per_image = xs.mean(dim=(1, 2, 3))
    order = torch.argsort(per_image)
    assert torch.equal(ys[order], torch.sort(ys).values)
    assert abs(tensors(s, "train")[0].mean().item()) < 1e-4


def test_fashion_mnist_missing_root_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", {"root": str(tmp_path / "nowhere")}, where="cfg")
    msg = str(e.value)
    assert "dataset-fashion-mnist" in msg and "set download: true" in msg
    assert str(tmp_path / "nowhere") in msg and "(cfg)" in msg


@pytest.fixture
def fashion_mirror(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 serving small Fashion-MNIST-format files, made torchvision's only mirror
    (with their MD5s); yields the folder it serves.  The server is shut down at the end."""
    import functools
    import hashlib
    import http.server
    import threading

    import torchvision

    served = tmp_path / "mirror"
    _write_fake_fashion(served, n_train=40, n_test=20)
    resources = [(f.name, hashlib.md5(f.read_bytes()).hexdigest())
                 for f in sorted(served.iterdir())]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)
    try:
        yield served, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_fashion_mnist_download_fetches_the_files_once_into_the_cache(fashion_mirror, tmp_path, monkeypatch):
    """``download: true`` with the default root missing: the files come from the mirror (MD5 checked) into the
    user's cache, whole, and a second load reads them there without the network."""
    import sweep.data.sources as sources

    _, server = fashion_mirror
    cache = tmp_path / "cache"
    monkeypatch.setattr(sources, "DEFAULT_DOWNLOAD_ROOT", str(cache))
    monkeypatch.setattr(sources, "FASHION_MNIST_ROOT", str(tmp_path / "no-debian-package"))
    opts = {"root": str(tmp_path / "no-debian-package"), "download": True, "val_fraction": 0.25}
    s = load_dataset("fashion-mnist", opts, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 10, 20) and s.input_shape == (1, 28, 28)
    assert sources._find_fashion_files(str(cache)) is not None
    assert [p.name for p in cache.iterdir()] == ["FashionMNIST"]  # nothing half-way left beside it
    server.shutdown()  # the network is gone: the cached files serve
    again = load_dataset("fashion-mnist", opts, seed=0)
    assert torch.equal(tensors(again, "test")[0], tensors(s, "test")[0])


def test_fashion_mnist_download_failure_is_one_data_error_and_leaves_nothing(fashion_mirror, tmp_path,
                                                                           monkeypatch):
    import torchvision

    served, _ = fashion_mirror
    bad = [(name, "0" * 32) for name, _ in torchvision.datasets.FashionMNIST.resources]  # MD5s that cannot match
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", bad)
    root = tmp_path / "mine"
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", {"root": str(root), "download": True}, where="space.yaml: dataset")
    msg = str(e.value)
    assert msg.startswith(f"fashion-mnist must download into {root}, but got RuntimeError")
    assert "(space.yaml: dataset)" in msg and "check the network" in msg and "\n" not in msg
    assert list(root.iterdir()) == []  # no partial download a later run would take for the data


def test_fashion_mnist_corrupt_idx_is_a_data_error(tmp_path):
    _write_fake_fashion(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x63abc"))
    with pytest.raises(DataError, match="data bytes"):
        load_dataset("fashion-mnist", {"root": str(tmp_path)})


# ------------------------------------------------------------------------------ cifar


def test_cifar_without_root_or_files_explains_download(tmp_path):
    with pytest.raises(DataError, match=r"root .*download: true"):
        load_dataset("cifar10", {})
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", {"root": str(tmp_path)}, where="cfg")
    assert "download: true" in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(ConfigError, match="download must be true or false"):
        load_dataset("cifar10", {"root": str(tmp_path), "download": "yes"})


# ---------------------------------------------------------------------------- imagefolder


def _write_pngs(folder, classes=("cat", "dog"), per_class=5):
    from PIL import Image

    for k, cls in enumerate(classes):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            # Class k is a flat grey of a class-specific level, so a label can be read off its pixels.
            Image.new("RGB", (12, 10), (60 + 120 * k,) * 3).save(folder / cls / f"{i}.png")


def test_imagefolder_flat_layout_is_split_stratified(tmp_path):
    _write_pngs(tmp_path, per_class=10)
    opts = {"path": str(tmp_path), "image_size": 8, "val_fraction": 0.25, "test_fraction": 0.2}
    s = load_dataset("imagefolder", opts, seed=0)
    assert s.num_classes == 2 and s.input_shape == (3, 8, 8)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 4, 4)
    idx = [set(getattr(s, p).indices) for p in SPLITS]
    assert not (idx[0] & idx[1] or idx[0] & idx[2] or idx[1] & idx[2])
    assert load_dataset("imagefolder", opts, seed=0).val.indices == s.val.indices
    x, y = s.train[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    xb, yb = next(iter(make_loader(s.test, 4, shuffle=False)))
    assert xb.shape == (4, 3, 8, 8) and yb.dtype == torch.int64
    assert sorted(yb.tolist()) == [0, 0, 1, 1]
    # Dark class 0 stays below bright class 1 after ImageNet normalisation.
    assert (xb[yb == 0].mean() < xb[yb == 1].mean()).item()


def test_imagefolder_uses_given_train_val_test(tmp_path):
    for part, n in (("train", 4), ("val", 2), ("test", 3)):
        _write_pngs(tmp_path / part, per_class=n)
    s = load_dataset("imagefolder", {"path": str(tmp_path), "image_size": 6})
    assert (len(s.train), len(s.val), len(s.test)) == (8, 4, 6)
    assert s.input_shape == (3, 6, 6)


def test_imagefolder_missing_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="path"):
        load_dataset("imagefolder", {})
    with pytest.raises(DataError, match="existing folder"):
        load_dataset("imagefolder", {"path": str(tmp_path / "nope")})


# ---------------------------------------------------------------------------------- loader


def _ids_dataset(n=23):
    return TensorDataset(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n))


@pytest.mark.parametrize("wrap", [False, True], ids=["tensor-fast-path", "dataloader"])
def test_loader_covers_each_example_once_and_reshuffles(wrap):
    ds = _ids_dataset()
    if wrap:  # a Subset is not a TensorDataset, so this takes the DataLoader path
        ds = Subset(ds, list(range(23)))
    loader = make_loader(ds, 5, shuffle=True, seed=3)
    assert loader.fast is (not wrap) and len(loader) == 5
    epochs = []
    for _ in range(3):
        batches = list(loader)
        assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
        ids = torch.cat([y for _, y in batches])
        assert sorted(ids.tolist()) == list(range(23))
        assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
        assert all(torch.equal(x.view(-1).long(), y) for x, y in batches)  # x and y stay paired
        epochs.append(ids.tolist())
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    # The order depends only on (seed, epoch): a fresh loader replays it.
    replay = [y.tolist() for _, y in make_loader(ds, 5, shuffle=True, seed=3)]
    assert replay == [epochs[0][i : i + 5] for i in range(0, 23, 5)]
    assert torch.cat([y for _, y in make_loader(ds, 5, shuffle=True, seed=4)]).tolist() != epochs[0]


def test_loader_drop_last_and_no_shuffle():
    ds = _ids_dataset()
    loader = make_loader(ds, 5, shuffle=True, drop_last=True)
    assert len(loader) == 4
    sizes = [len(y) for _, y in loader]
    assert sizes == [5, 5, 5, 5]
    plain = torch.cat([y for _, y in make_loader(ds, 5, shuffle=False)]).tolist()
    assert plain == list(range(23))
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
        make_loader(ds, 0, shuffle=False)


def test_digits_epoch_is_fast():
    s = load_dataset("digits", {})
    loader = make_loader(s.train, 64, shuffle=True)
    assert loader.fast
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        n = sum(len(y) for _, y in loader)
        best = min(best, time.perf_counter() - t)
    assert n == len(s.train)
    assert best < 0.05, f"a digits epoch took {best * 1e3:.1f} ms"


# ------------------------------------------------------------------ label-free splits and subsets
# Indices computed by the code before label-free splitting existed (same seeds): supervised sweeps
# must keep drawing exactly these.
def test_supervised_subsets_and_splits_are_unchanged():
    from sweep.data.base import rng_for, split_indices, subset

    labels = np.arange(40) % 4
    ds = TensorDataset(torch.arange(40).float()[:, None], torch.as_tensor(labels))
    assert subset(ds, 10, rng_for(0, 11)).tensors[0][:, 0].long().tolist() == [2, 3, 4, 11, 21, 22, 26, 29, 35, 36]

    opts = {"num_classes": 3, "input_shape": [1, 4, 4], "n_train": 60}
    full = load_dataset("synthetic", opts, seed=3).train.tensors[0].flatten(1)
    sub = load_dataset("synthetic", {**opts, "train_subset": 12}, seed=3).train.tensors[0].flatten(1)
    assert [int((full == r).all(1).nonzero()[0]) for r in sub] == [7, 8, 9, 13, 14, 17, 23, 28, 31, 36, 38, 39]

    from sklearn.datasets import load_digits

    y = load_digits().target
    rest, test = split_indices(y, 0.2, rng_for(0, 1))
    tr, va = split_indices(y[rest], 0.2, rng_for(0, 2))
    assert test[:10].tolist() == [1, 8, 19, 31, 33, 44, 47, 49, 56, 58]
    assert rest[va][:10].tolist() == [3, 9, 18, 28, 32, 35, 38, 40, 41, 51]
    assert rest[tr][:10].tolist() == [0, 2, 4, 5, 6, 7, 10, 11, 12, 13]

    s = load_dataset("digits", {}, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (1150, 288, 359)
    assert s.train.tensors[1][:20].tolist() == [0, 2, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5]
    assert s.val.tensors[1][:20].tolist() == [3, 9, 8, 8, 5, 5, 8, 8, 4, 2, 7, 8, 2, 3, 3, 6, 5, 1, 3, 1]
    assert s.test.tensors[1][:20].tolist() == [1, 8, 9, 9, 5, 7, 1, 0, 1, 6, 3, 0, 2, 0, 1, 7, 3, 0, 6, 9]
    subx = load_dataset("digits", {"train_subset": 50}, seed=0).train.tensors[0].flatten(1)
    fx = s.train.tensors[0].flatten(1)
    pos = [int((fx == r).all(1).nonzero()[0][0]) for r in subx]
    assert pos[:15] == [11, 20, 29, 70, 126, 134, 140, 194, 195, 247, 249, 252, 269, 272, 292]


def _random_labels(y: np.ndarray, seed: int = 99) -> np.ndarray:
    bad = np.random.default_rng(seed).integers(0, int(y.max()) + 1, size=len(y))
    assert (bad != y).mean() > 0.5
    return bad


def test_label_free_subset_reads_no_label():
    from sweep.data.base import rng_for, subset

    x = torch.arange(200).float()[:, None]
    y = torch.as_tensor(np.arange(200) % 5)
    true = subset(TensorDataset(x, y), 30, rng_for(4, 11), stratify=False)
    shuffled = y[torch.randperm(200, generator=torch.Generator().manual_seed(1))]
    for bad in (torch.as_tensor(_random_labels(y.numpy())), shuffled):
        garbage = subset(TensorDataset(x, bad), 30, rng_for(4, 11), stratify=False)
        assert torch.equal(garbage.tensors[0], true.tensors[0])
    # a Subset (non-tensor datasets) takes the same label-blind path
    wrapped = subset(Subset(TensorDataset(x, y), list(range(200))), 30, rng_for(4, 11), stratify=False)
    assert torch.equal(torch.stack([wrapped[i][0] for i in range(30)]), true.tensors[0])


@pytest.fixture
def garbage_digits(monkeypatch):
    """A function that makes scikit-learn's digits come with random targets (same images) from then on."""
    import sklearn.datasets
    from sklearn.utils import Bunch

    real = sklearn.datasets.load_digits()
    fake = Bunch(images=real.images.copy(), target=_random_labels(real.target))

    def use_garbage():
        monkeypatch.setattr(sklearn.datasets, "load_digits", lambda *a, **k: fake)

    return use_garbage


def test_label_free_digits_splits_and_subsets_choose_the_same_images_whatever_the_labels(garbage_digits):
    opts = {"train_subset": 300, "val_subset": 100, "test_subset": 90}
    true = load_dataset("digits", opts, seed=2, stratify=False)
    true_sup = load_dataset("digits", opts, seed=2)
    garbage_digits()
    dirty = load_dataset("digits", opts, seed=2, stratify=False)
    for part in SPLITS:
        assert torch.equal(tensors(dirty, part)[0], tensors(true, part)[0]), part
        assert not torch.equal(tensors(dirty, part)[1], tensors(true, part)[1]), part  # the labels did change
    # the stratified (supervised) path does read the labels: garbage ones choose other images
    dirty_sup = load_dataset("digits", opts, seed=2)
    assert not torch.equal(tensors(dirty_sup, "train")[0], tensors(true_sup, "train")[0])


def test_label_free_imagefolder_split_reads_no_label(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (tmp_path / c).mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    opts = {"path": str(tmp_path), "image_size": 6}
    a = load_dataset("imagefolder", opts, seed=1, stratify=False)
    b = load_dataset("imagefolder", opts, seed=1)
    assert sorted(a.train.indices + a.val.indices + a.test.indices) == list(range(24))
    assert (a.train.indices, a.val.indices) != (b.train.indices, b.val.indices)


def test_the_trial_data_of_a_label_free_sweep_is_drawn_label_blind(garbage_digits):
    from sweep.config import parse_config
    from sweep.data import cloud_device_split
    from sweep.trial import _splits, load_splits

    space = {"name": "lf", "model": {"name": "small_cnn"}, "dataset": {"name": "digits", "train_subset": 400},
             "methods": {"magnitude": {"ratio": 0.5}}}
    sup = parse_config(space, source="s.yaml")
    lf = parse_config({**space, "labels": "none", "baseline": {"cloud_fraction": 0.3},
                       "search": {"objectives": ["agreement", "params"]}}, source="s.yaml")
    _splits.cache_clear()
    try:
        assert torch.equal(tensors(load_splits(sup), "train")[0],
                           tensors(load_dataset("digits", {"train_subset": 400}, seed=0), "train")[0])
        clean = load_splits(lf)
        assert torch.equal(tensors(clean, "train")[0],
                           tensors(load_dataset("digits", {"train_subset": 400}, seed=0, stratify=False), "train")[0])
        _splits.cache_clear()
        garbage_digits()
        dirty = load_splits(lf)
        assert dirty is not clean
        for part in SPLITS:
            assert torch.equal(tensors(dirty, part)[0], tensors(clean, part)[0]), part
        # the device part of the cloud/device split is the same images too
        dev_clean = cloud_device_split(clean.train, 0.3, lf.seed)[1]
        dev_dirty = cloud_device_split(dirty.train, 0.3, lf.seed)[1]
        assert torch.equal(dev_clean.tensors[0], dev_dirty.tensors[0])
    finally:
        _splits.cache_clear()
