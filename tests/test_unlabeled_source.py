"""Unlabeled data as users have it (``dataset.unlabeled``): a flat folder of images or a .npy array becomes the
training (device) split of a label-free sweep, with or without a labelled set beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweep.config import parse_config
from sweep.data import load_dataset, make_loader
from sweep.data.base import labels_of
from sweep.errors import ConfigError, DataError

DIGITS = {"name": "digits", "train_subset": 300, "val_subset": 80, "test_subset": 80}


# ------------------------------------------------------------------------------------ sources on disk


def png_folder(root, n=6, size=(8, 8), mode="L", sizes=None, seed=0):
    """``n`` PNGs (``size`` = width x height, or one per image in ``sizes``) in a flat folder ``root/imgs``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "imgs"
    folder.mkdir()
    for i in range(n):
        w, h = sizes[i] if sizes else size
        shape = (h, w) if mode == "L" else (h, w, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"img{i:02d}.png")
    return folder


def npy_file(root, array, name="x.npy"):
    path = root / name
    np.save(path, array)
    return path


def _grey_png(tmp_path):
    return png_folder(tmp_path, n=7), 7


def _rgb_png_larger(tmp_path):  # RGB, 12x10: converted to one channel, scaled and centre-cropped to 8x8
    return png_folder(tmp_path, n=6, size=(12, 10), mode="RGB"), 6


def _npy_nhw_float(tmp_path):
    return npy_file(tmp_path, np.random.default_rng(1).random((20, 8, 8)).astype(np.float32)), 20


def _npy_nchw_uint8(tmp_path):
    return npy_file(tmp_path, np.random.default_rng(2).integers(0, 256, (15, 1, 8, 8), dtype=np.uint8)), 15


SOURCES = {"png_grey": _grey_png, "png_rgb_12x10": _rgb_png_larger, "npy_nhw_float32": _npy_nhw_float,
           "npy_nchw_uint8": _npy_nchw_uint8}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_a_source_beside_digits_is_the_unlabeled_training_split(tmp_path, kind):
    path, n = SOURCES[kind](tmp_path)
    s = load_dataset("digits", {**{k: v for k, v in DIGITS.items() if k != "name"}, "unlabeled": str(path)},
                     seed=3, stratify=False)
    # the device data: inputs only, the dataset's shape, split into train + agreement val (all of it, once)
    assert len(s.train.tensors) == 1 and len(s.agreement_val.tensors) == 1
    assert labels_of(s.train) is None and labels_of(s.agreement_val) is None
    assert s.train.tensors[0].shape[1:] == s.agreement_val.tensors[0].shape[1:] == (1, 8, 8) == s.input_shape
    assert s.train.tensors[0].dtype == torch.float32
    assert len(s.train) + len(s.agreement_val) == n and len(s.agreement_val) == round(0.2 * n)  # digits val_fraction
    assert all(len(b) == 1 for b in make_loader(s.train, 4, shuffle=True))
    # the labelled set: the teacher's training data and the reported val / test, as without the source
    plain = load_dataset("digits", {k: v for k, v in DIGITS.items() if k != "name"}, seed=3, stratify=False)
    assert torch.equal(s.teacher_train.tensors[1], plain.train.tensors[1]) and len(s.teacher_train) == 300
    assert torch.equal(s.val.tensors[0], plain.val.tensors[0]) and torch.equal(s.test.tensors[1], plain.test.tensors[1])
    assert s.labelled and s.unlabeled_source == str(path) and s.num_classes == 10


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_unlabeled_data_alone_has_no_labels_anywhere(tmp_path, kind):
    path, n = SOURCES[kind](tmp_path)
    s = load_dataset("unlabeled", {"unlabeled": str(path), "num_classes": 4, "val_fraction": 0.25}, seed=0,
                     stratify=False)
    c = 3 if kind == "png_rgb_12x10" else 1  # alone, an image folder keeps its own kind and size
    hw = (10, 12) if kind == "png_rgb_12x10" else (8, 8)
    assert s.input_shape == (c, *hw) and s.num_classes == 4
    assert not s.labelled and s.test is None and s.teacher_train is None
    assert len(s.train.tensors) == len(s.val.tensors) == 1
    assert len(s.train) + len(s.val) == n and len(s.val) == max(1, round(0.25 * n))
    # standardised per channel with the training part's own statistics
    x = s.train.tensors[0]
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1) < 1e-3


def test_scaling_uint8_is_divided_by_255_and_mapped_with_the_datasets_normalisation(tmp_path):
    raw = np.random.default_rng(5).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    a = load_dataset("digits", {"unlabeled": str(npy_file(tmp_path, raw, "u8.npy"))}, seed=1, stratify=False)
    f = load_dataset("digits", {"unlabeled": str(npy_file(tmp_path, raw.astype(np.float32) / 255, "f.npy"))},
                     seed=1, stratify=False)
    assert torch.allclose(a.train.tensors[0], f.train.tensors[0], atol=1e-6)
    (mean,), (std,) = a.input_norm
    # a black image is the digits' raw 0, so it lands where the labelled inputs' 0 lands
    zeros = load_dataset("digits", {"unlabeled": str(npy_file(tmp_path, np.zeros((4, 8, 8), np.uint8), "z.npy"))},
                         seed=1, stratify=False)
    assert torch.allclose(zeros.train.tensors[0], torch.full((1,), -mean / std))
    assert float(a.val.tensors[0].min()) == pytest.approx(-mean / std, abs=1e-5)  # labelled digits: same map


def test_the_device_validation_carve_is_seeded_and_reads_no_label(tmp_path, monkeypatch):
    import sklearn.datasets
    from sklearn.utils import Bunch

    path = npy_file(tmp_path, np.random.default_rng(0).random((40, 8, 8)).astype(np.float32))
    a, b, c = (load_dataset("digits", {"unlabeled": str(path)}, seed=k, stratify=False) for k in (0, 0, 1))
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.agreement_val.tensors[0], c.agreement_val.tensors[0])
    real = sklearn.datasets.load_digits()
    garbage = np.random.default_rng(9).integers(0, 10, len(real.target))
    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda *a, **k: Bunch(images=real.images, target=garbage))
    d = load_dataset("digits", {"unlabeled": str(path)}, seed=0, stratify=False)
    assert torch.equal(d.train.tensors[0], a.train.tensors[0])
    assert torch.equal(d.agreement_val.tensors[0], a.agreement_val.tensors[0])


# ------------------------------------------------------------------------------------------- bad input


def _missing(tmp_path):
    return str(tmp_path / "nowhere"), {}, "unlabeled must be an existing folder of images or a .npy file"


def _no_images(tmp_path):
    (tmp_path / "flat" / "cats").mkdir(parents=True)
    (tmp_path / "flat" / "notes.txt").write_text("x")
    return str(tmp_path / "flat"), {}, "must hold image files .* but got none in .*flat; it holds folders \\(cats\\)"


def _wrong_dims(tmp_path):
    return str(npy_file(tmp_path, np.zeros((5, 64), np.float32))), {}, r"2 dimension\(s\), shape \(5, 64\)"


def _five_dims(tmp_path):
    return str(npy_file(tmp_path, np.zeros((2, 1, 1, 8, 8), np.float32))), {}, r"5 dimension\(s\)"


def _empty(tmp_path):
    return str(npy_file(tmp_path, np.zeros((0, 8, 8), np.float32))), {}, r"must not be empty, but got shape \(0, 8, 8\)"


def _one_input(tmp_path):
    return str(npy_file(tmp_path, np.zeros((1, 8, 8), np.float32))), {}, "at least 2 inputs .* but got 1"


def _sizes_differ(tmp_path):
    folder = png_folder(tmp_path, n=3, sizes=[(8, 8), (8, 8), (9, 8)])
    return str(folder), {}, "same size, but got img02.png at 9x8 while img00.png is 8x8 .*set image_size"


def _non_finite(tmp_path):
    x = np.zeros((6, 8, 8), np.float32)
    x[4, 2, 2], x[5, 0, 0] = np.nan, np.inf
    return str(npy_file(tmp_path, x)), {}, r"finite values, but got 2 NaN or infinite value\(s\), the first in input 4"


def _int_dtype(tmp_path):
    return str(npy_file(tmp_path, np.zeros((4, 8, 8), np.int64))), {}, "float or uint8, but got dtype int64"


def _channels_last(tmp_path):
    return str(npy_file(tmp_path, np.zeros((4, 8, 8, 3), np.uint8))), {}, "channels-first .* np.moveaxis"


def _other_file(tmp_path):
    (tmp_path / "x.csv").write_text("1,2")
    return str(tmp_path / "x.csv"), {}, "a folder of images or a .npy file, but got the file"


def _unreadable_image(tmp_path):
    folder = png_folder(tmp_path, n=2)
    (folder / "broken.png").write_bytes(b"not a png")
    return str(folder), {}, "readable image files, but got .* for .*broken.png"


BAD = {f.__name__[1:]: f for f in (_missing, _no_images, _wrong_dims, _five_dims, _empty, _one_input, _sizes_differ,
                                   _non_finite, _int_dtype, _channels_last, _other_file, _unreadable_image)}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sources_are_one_line_data_errors_naming_the_value(tmp_path, case):
    path, extra, match = BAD[case](tmp_path)
    with pytest.raises(DataError, match=match) as ei:
        load_dataset("unlabeled", {"unlabeled": path, "num_classes": 3, **extra}, stratify=False, where="dataset")
    msg = str(ei.value)
    assert "\n" not in msg and msg.endswith(("(dataset)", "resize them all", "moveaxis(x, -1, 1)"))
    assert path.rsplit("/", 1)[-1] in msg or "img02.png" in msg


@pytest.mark.parametrize("array, match", [
    (np.zeros((4, 3, 8, 8), np.float32), r"shape \(1, 8, 8\) like digits inputs .* but got \(3, 8, 8\)"),
    (np.zeros((4, 16, 16), np.uint8), r"but got \(1, 16, 16\)"),
    (np.full((4, 8, 8), 16.0, np.float32), r"values in \[0, 1\] .* but got values in \[16, 16\]"),
])
def test_an_array_beside_a_labelled_set_must_match_its_inputs(tmp_path, array, match):
    with pytest.raises(DataError, match=match):
        load_dataset("digits", {"unlabeled": str(npy_file(tmp_path, array))}, stratify=False)


def test_image_size_resizes_differently_sized_images_when_alone(tmp_path):
    folder = png_folder(tmp_path, n=3, sizes=[(8, 8), (16, 12), (9, 8)], mode="RGB")
    s = load_dataset("unlabeled", {"unlabeled": str(folder), "num_classes": 2, "image_size": 6, "channels": 1},
                     stratify=False)
    assert s.input_shape == (1, 6, 6) and len(s.train) + len(s.val) == 3


def test_a_supervised_sweep_cannot_load_unlabeled_data(tmp_path):
    path = npy_file(tmp_path, np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ConfigError, match=r"label-free sweeps only \(labels: none\), but got unlabeled="):
        load_dataset("digits", {"unlabeled": str(path)}, where="--dataset")


# ---------------------------------------------------------------------------------------------- config

SPACE = {"name": "dev", "labels": "none", "model": {"name": "small_cnn"},
         "search": {"objectives": ["agreement", "params"]}, "measure": {"repeats": 3, "warmup": 1},
         "methods": {"magnitude": {"ratio": 0.4}}}


def test_config_resolves_the_path_against_the_yaml_and_names_unlabeled_data_alone(tmp_path):
    npy_file(tmp_path, np.zeros((4, 8, 8), np.float32))
    cfg = parse_config({**SPACE, "dataset": {"name": "digits", "unlabeled": "x.npy"}}, source=str(tmp_path / "s.yaml"))
    assert cfg.dataset.options["unlabeled"] == str(tmp_path / "x.npy") and cfg.labelled_data
    assert cfg.raw["dataset"]["unlabeled"] == str(tmp_path / "x.npy")  # what the sweep folder keeps
    alone = parse_config({**SPACE, "dataset": {"unlabeled": "x.npy"},
                          "baseline": {"teacher": {"mbn": {"clusters": 5}}}}, source=str(tmp_path / "s.yaml"))
    assert alone.dataset.name == "unlabeled" and not alone.labelled_data
    assert alone.dataset.options["num_classes"] == 5  # the MBN teacher's clusters


@pytest.mark.parametrize("change, match", [
    ({"labels": "supervised", "search": {"objectives": ["accuracy", "params"]}},
     r"label-free: set labels: none, but got labels=supervised with unlabeled='x.npy' \(.*s.yaml: dataset.unlabeled\)"),
    ({"dataset": {"name": "digits", "unlabeled": "missing.npy"}},
     r"existing folder of images or a .npy file, but got unlabeled='missing.npy', which is neither \S*/missing.npy "
     r"nor \S*/missing.npy \(.*s.yaml: dataset.unlabeled\)"),
    ({"dataset": {"name": "digits", "unlabeled": 3}}, r"but got unlabeled=3"),
    ({"dataset": {"unlabeled": "x.npy"}}, r"alone .* needs a teacher .* but got none \(.*s.yaml: baseline\)"),
    ({"dataset": {"unlabeled": "x.npy"}, "baseline": {"cloud_fraction": 0.3}},
     r"needs a teacher .* but got only cloud_fraction"),
    ({"baseline": {"cloud_fraction": 0.3}}, r"leave cloud_fraction out, but got cloud_fraction=0.3"),
    ({"dataset": {"unlabeled": "x.npy"}, "baseline": {"path": "model.pt"}},
     r"needs num_classes, the number of outputs of the model in baseline.path, but got none"),
    ({"dataset": {"unlabeled": "x.npy", "num_classes": 3}, "baseline": {"teacher": {"mbn": {"clusters": 5}}}},
     r"num_classes must equal the MBN teacher's clusters \(5\), but got num_classes=3"),
])
def test_config_errors_name_the_value_and_the_key(tmp_path, change, match):
    npy_file(tmp_path, np.zeros((4, 8, 8), np.float32))
    torch.save({}, tmp_path / "model.pt")
    raw = {**SPACE, "dataset": {"name": "digits", "unlabeled": "x.npy"}, **change}
    with pytest.raises(ConfigError, match=match) as ei:
        parse_config(raw, source=str(tmp_path / "s.yaml"))
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("case", ["missing", "no_images", "non_finite", "supervised"])
def test_cli_run_exits_2_with_one_line(tmp_path, monkeypatch, capsys, case):
    import yaml

    from sweep.cli import main

    monkeypatch.chdir(tmp_path)
    source = {"missing": "gone.npy", "no_images": "empty", "non_finite": "nan.npy", "supervised": "ok.npy"}[case]
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "nan.npy", np.full((5, 8, 8), np.nan, np.float32))
    np.save(tmp_path / "ok.npy", np.zeros((5, 8, 8), np.float32))
    space = {**SPACE, "dataset": {"name": "digits", "unlabeled": source}}
    if case == "supervised":
        space = {**space, "labels": "supervised", "search": {"objectives": ["accuracy", "params"]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    assert main(["run", "s.yaml", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweep: error: ") and "\n" not in err and source in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ the label-free trial path


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """A small CNN trained on labelled digits elsewhere (two epochs), saved as a state dict."""
    from sweep.models import build_model
    from sweep.train import train

    torch.manual_seed(0)
    s = load_dataset("digits", {})
    model = build_model("small_cnn", num_classes=10, in_channels=1, input_size=8)
    train(model, make_loader(s.train, 64, shuffle=True), epochs=2, lr=0.05)
    path = tmp_path_factory.mktemp("teacher") / "digits_cnn.pt"
    torch.save(model.state_dict(), path)
    return path


def _device_inputs(root, kind: str):
    """Device data the users have: unseen digits (the last 300 of scikit-learn's), as PNGs or a .npy array."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = (load_digits().images[-300:] * (255 / 16)).round().astype(np.uint8)
    if kind == "npy":
        return npy_file(root, images, "device.npy"), 300
    folder = root / "device"
    folder.mkdir()
    for i, im in enumerate(images[:120]):
        Image.fromarray(im, "L").save(folder / f"{i:03d}.png")
    return folder, 120


@pytest.mark.parametrize("kind", ["png", "npy"])
@pytest.mark.parametrize("method, knobs", [("magnitude", {"ratio": 0.5}),
                                           ("lnpt", {"ratio": 0.5, "epochs": 1, "cal_batches": 2})])
def test_a_label_free_method_prunes_on_the_unlabeled_split_alone(tmp_path, digits_teacher, kind, method, knobs):
    """No labelled set at all: load_splits + trial_data + a label-free method's prune never need a label."""
    from sweep.methods import get_method
    from sweep.methods.context import build_context
    from sweep.models import build_model
    from sweep.trial import _splits, load_splits, skipped_layers, trial_data

    path, n = _device_inputs(tmp_path, kind)
    cfg = parse_config({**SPACE, "dataset": {"unlabeled": str(path), "num_classes": 10},
                        "baseline": {"path": str(digits_teacher)}, "finetune": {"epochs": 1, "lr": 0.01},
                        "methods": {method: knobs}}, source=str(tmp_path / "s.yaml"))
    _splits.cache_clear()
    try:
        splits = load_splits(cfg)
    finally:
        _splits.cache_clear()
    assert not splits.labelled and splits.test is None and len(splits.train) + len(splits.val) == n
    data = trial_data(cfg, splits, seed=1)
    assert {len(b) for b in data.method.train} == {len(b) for b in data.method.val_inputs} == {1}
    assert sum(len(b[0]) for b in data.method.train) == len(splits.train)
    teacher = build_model("small_cnn", num_classes=10, in_channels=1, input_size=8, checkpoint=str(digits_teacher))
    model = build_model("small_cnn", num_classes=10, in_channels=1, input_size=8, checkpoint=str(digits_teacher))
    example = splits.example_input(1)
    spec = get_method(method)
    ctx = build_context(data.method, method=method, labels=False, teacher=teacher.eval(),
                        finetune_config=cfg.finetune, device="cpu", seed=1, num_classes=splits.num_classes,
                        ignored_layers=skipped_layers(cfg, model, example))
    before = sum(p.numel() for p in model.parameters())
    result = spec.prune(model, example, spec.make_config(knobs, where="test"), ctx)
    pruned = result.model
    assert sum(p.numel() for p in pruned.parameters()) < before
    assert pruned(example).shape == (1, 10)
    agreement = ctx.evaluate(pruned)  # label-free quality: agreement with the teacher on the carved inputs
    assert 0.0 <= agreement <= 1.0


class _Recorder:
    """A label-free probe method that records what its loaders hold, then prunes by magnitude."""

    seen: dict = {}

    @staticmethod
    def prune(model, example_inputs, cfg, ctx):
        from sweep.engine.channels import prune_channels
        from sweep.methods import PruneResult

        _Recorder.seen = {"items": {len(b) for b in ctx.train_loader},
                          "train": sum(len(b[0]) for b in ctx.train_loader),
                          "val": sum(len(b[0]) for b in ctx.unlabeled_val_loader), "labels": ctx.labels_available}
        return PruneResult(prune_channels(model, example_inputs, ratio=cfg.ratio, ignored_layers=ctx.ignored_layers))


@pytest.fixture
def recorder(monkeypatch):
    from sweep.methods import METHODS, Knob, MethodSpec

    spec = MethodSpec("unlabeled_probe", _Recorder.prune,
                      (Knob("ratio", "float", 0.3, low=0, high=1, low_open=True, high_open=True),), needs_labels=False)
    monkeypatch.setitem(METHODS._entries, "unlabeled_probe", spec)
    return spec


def test_a_trial_trains_on_the_device_data_and_reports_accuracy_on_the_labelled_set(tmp_path, digits_teacher,
                                                                                      recorder):
    """Digits named beside a .npy of device inputs, teacher given: the whole trial runs; the method sees only
    the unlabeled device data, accuracy comes from the labelled digits val / test."""
    from sweep.folder import SweepFolder
    from sweep.trial import TrialSpec, _splits, load_splits, prepare_baseline, run_trial

    path, n = _device_inputs(tmp_path, "npy")
    cfg = parse_config({**SPACE, "dataset": {**DIGITS, "unlabeled": str(path)},
                        "baseline": {"path": str(digits_teacher)}, "finetune": {"epochs": 1, "lr": 0.01},
                        "methods": {"unlabeled_probe": {"ratio": 0.4}}}, source=str(tmp_path / "s.yaml"))
    _splits.cache_clear()
    try:
        splits = load_splits(cfg)
        base = prepare_baseline(cfg, SweepFolder(tmp_path / "sweep"), log=lambda m: None)
        rec = run_trial(cfg, TrialSpec(str(tmp_path / "sweep"), "t1", "unlabeled_probe", {"ratio": 0.4}, seed=3))
    finally:
        _splits.cache_clear()
    assert base["status"] == "ok" and base["accuracy"] > 0.5  # the teacher, on labelled digits val
    assert rec["status"] == "ok", rec["error"]
    seen = _Recorder.seen
    assert (seen["items"], seen["train"], seen["labels"]) == ({1}, len(splits.train), False)
    assert len(splits.train) == n - round(0.2 * n)  # the device data, not the 300 labelled digits
    assert 0.0 <= rec["accuracy"] <= 1.0 and 0.0 <= rec["test_accuracy"] <= 1.0 and 0.0 <= rec["agreement"] <= 1.0
    assert rec["params"] < base["params"]


# ------------------------------------------------------------------------------- select without labels


def test_select_chooses_on_agreement_and_says_accuracy_is_unknown():
    from sweep.results.schema import TrialRecord
    from sweep.select import NO_LABELS_NOTE, Budget, _markdown, choose

    rows = [TrialRecord(trial_id=t, status="ok", method="magnitude", accuracy=None, test_accuracy=None, agreement=a,
                        latency_ms=lat, params=p, macs=10 * p) for t, a, lat, p in
            (("baseline", 1.0, 2.0, 1000), ("a", 0.93, 1.0, 400), ("b", 0.97, 1.5, 600))]
    assert [r.trial_id for r in choose(rows, Budget(max_latency_ms=1.6), "agreement")] == ["b", "a"]
    assert [r.trial_id for r in choose(rows, Budget(min_accuracy=0.95, max_params=700), "agreement")] == ["b"]
    chosen = {k: v for k, v in rows[2].to_row().items() if v is not None}
    md = _markdown({"sweep": "dev", "quality": "agreement", "budget": {}, "chosen": chosen, "note": NO_LABELS_NOTE,
                    "latency_remeasured": {"batch": 1, "threads": 1, "device": "cpu", "runtime": "torch"},
                    "rejected_front_points": [{"trial_id": "a", "method": "magnitude", "accuracy": None,
                                               "latency_ms": 1.0, "params": 400, "why": "lower agreement"}]})
    assert "validation accuracy n/a, test accuracy n/a" in md and "agreement with the teacher 0.9700" in md
    assert f"Note: {NO_LABELS_NOTE}." in md and "| a | magnitude | n/a | 1.000 |" in md


# ------------------------------------------------------------------ whole sweeps (baseline, trials, select)
CASES = {
    # labelled digits beside the device data; the teacher is given, or trained on the labelled digits
    "digits+npy, teacher given": ("npy", {**DIGITS}, "path"),
    "digits+png, teacher trained on digits": ("png", {**DIGITS}, {"epochs": 2, "lr": 0.05}),
    # no labelled set at all
    "npy alone, teacher given": ("npy", {"num_classes": 10}, "path"),
    "png alone, MBN teacher": ("png", {}, {"teacher": {"mbn": {"V": 8, "clusters": 6}}, "epochs": 3}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_label_free_sweep_on_unlabeled_data_runs_end_to_end(tmp_path, digits_teacher, recorder, case):
    from sweep.folder import SweepFolder, sweep_meta
    from sweep.results.schema import with_front
    from sweep.select import NO_LABELS_NOTE, Budget, select
    from sweep.trial import TrialSpec, _splits, load_splits, prepare_baseline, run_trial

    kind, dataset, baseline = CASES[case]
    path, n = _device_inputs(tmp_path, kind)
    baseline = {"path": str(digits_teacher)} if baseline == "path" else baseline
    cfg = parse_config({**SPACE, "dataset": {**dataset, "unlabeled": str(path)}, "baseline": baseline,
                        "finetune": {"epochs": 1, "lr": 0.01}, "methods": {"unlabeled_probe": {"ratio": 0.4}}},
                       source=str(tmp_path / "s.yaml"))
    labelled = "alone" not in case
    folder = SweepFolder(tmp_path / "sweep")
    folder.create(cfg)
    logs = []
    _splits.cache_clear()
    try:
        splits = load_splits(cfg)
        base = prepare_baseline(cfg, folder, log=logs.append)
        recs = [run_trial(cfg, TrialSpec(str(folder.path), f"t{i}", "unlabeled_probe", {"ratio": r}, seed=i))
                for i, r in enumerate((0.3, 0.6))]
        assert base["status"] == "ok" and all(r["status"] == "ok" for r in recs), [r["error"] for r in recs]
        # the method saw the device data only, as inputs; agreement is on the inputs carved from it
        agree_val = splits.agreement_val if labelled else splits.val
        assert _Recorder.seen == {"items": {1}, "train": len(splits.train), "val": len(agree_val), "labels": False}
        assert len(splits.train) + len(agree_val) == n
        for r in (base, *recs):
            assert 0.0 <= r["agreement"] <= 1.0
            if labelled:  # reported on the labelled digits val / test
                assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["test_accuracy"] <= 1.0
            else:  # no labelled set: unknown, never made up
                assert r["accuracy"] is None and r["test_accuracy"] is None
        folder.store.write(with_front([base, *recs], cfg.search.objectives), sweep_meta(cfg, folder.baseline()))
        said = []
        d = select(folder.path, Budget(max_params=base["params"] - 1), export=False, register=False,
                   log=said.append)
    finally:
        _splits.cache_clear()
    assert d["quality"] == "agreement" and d["chosen"]["trial_id"] in ("t0", "t1")
    assert (d.get("note") == NO_LABELS_NOTE) == (not labelled)
    assert (f"note: {NO_LABELS_NOTE}" in said) == (not labelled)
    md = (folder.selected_dir / "selection.md").read_text()
    assert ("validation accuracy n/a" in md) == (not labelled)


def test_the_shipped_example_space_parses_once_its_array_is_made(tmp_path, monkeypatch):
    """search_spaces/unlabeled_digits.yaml: unlabeled data alone with an MBN teacher, its array made as its
    header says (in the working directory)."""
    from pathlib import Path

    from sklearn.datasets import load_digits

    from sweep.config import load_config

    monkeypatch.chdir(tmp_path)
    np.save("device_digits.npy", (load_digits().images * 255 / 16).round().astype("uint8"))
    cfg = load_config(Path(__file__).parent.parent / "search_spaces" / "unlabeled_digits.yaml")
    assert cfg.label_free and cfg.quality == "agreement" and not cfg.labelled_data
    assert cfg.dataset.name == "unlabeled" and cfg.dataset.options["unlabeled"] == str(tmp_path / "device_digits.npy")
    assert cfg.dataset.options["num_classes"] == cfg.baseline.teacher.clusters == 10
    s = load_dataset(cfg.dataset.name, cfg.dataset.options, seed=cfg.seed, stratify=False)
    assert s.input_shape == (1, 8, 8) and len(s.train) + len(s.val) == 1797 and not s.labelled
