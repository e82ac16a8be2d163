"""MBN (sweep/mbn): codes, k schedule, prediction vs a plain-loop reference, determinism, settings errors,
save/load without pickle, metrics, and that it beats k-means on raw digits."""

import numpy as np
import pytest
import torch

from sweep.errors import ConfigError, DataError
from sweep.mbn import MBN, MBNConfig, agreement, clustering_accuracy, k_schedule, nmi


def _blobs(n=60, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(3, d))
    return (centres[rng.integers(0, 3, n)] + rng.normal(0, 1, size=(n, d))).astype(np.float32)


TINY = dict(V=5, k1=16, delta=0.5, clusters=3, seed=3)


@pytest.fixture(scope="module")
def tiny():
    x = _blobs()
    return x, MBN(MBNConfig(**TINY)).fit(x)


@pytest.fixture(scope="module")
def digits():  # the whole set (1,797 points, 8x8)
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target


# ------------------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("k1, delta, clusters, floor, expected", [
    (898, 0.5, 10, 1.5, [898, 449, 224, 112, 56, 28]),  # digits: 1,797 points, k1 = n/2
    (100, 0.7, 4, 1.5, [100, 70, 49, 34, 23, 16, 11, 7]),
    (40, 0.5, 10, 1.5, [40, 20]),
    (10, 0.5, 10, 1.5, [10]),  # k1 under the floor: the bottom layer alone
    (64, 0.5, 2, 1.0, [64, 32, 16, 8, 4, 2]),  # the floor never goes below k = 2
])
def test_k_schedule(k1, delta, clusters, floor, expected):
    ks = k_schedule(k1, delta, clusters, floor)
    assert ks == expected
    assert all(b == int(a * delta) for a, b in zip(ks, ks[1:]))


@pytest.mark.parametrize("settings", [dict(TINY), dict(TINY, delta=0.7, k1=30, feature_ratio=1.0)])
def test_layers_follow_the_schedule_and_codes_have_v_ones(settings):
    x = _blobs()
    mbn = MBN(MBNConfig(**settings)).fit(x)
    assert mbn.ks == k_schedule(settings["k1"], settings["delta"], settings["clusters"])
    assert len(mbn.train_codes_) == len(mbn.ks) >= 2
    for codes, k in zip(mbn.train_codes_, mbn.ks):
        assert codes.shape == (len(x), settings["V"])
        onehot = torch.zeros(len(x), settings["V"], k)
        onehot.scatter_(2, codes[:, :, None], 1.0)
        assert torch.equal(onehot.sum(2), torch.ones(len(x), settings["V"]))  # one per clustering
        assert torch.equal(onehot.flatten(1).sum(1), torch.full((len(x),), float(settings["V"])))


def test_predicting_the_training_points_reproduces_the_fit(tiny):
    x, mbn = tiny
    for fitted, again in zip(mbn.train_codes_, mbn.codes(x)):
        assert torch.equal(fitted, again)
    assert torch.equal(mbn.predict(x), mbn.train_labels_)
    # a few points at a time: the batching does not change any code
    pieces = torch.cat([mbn.predict(x[i:i + 7]) for i in range(0, len(x), 7)])
    assert torch.equal(pieces, mbn.train_labels_)
    assert set(mbn.train_labels_.tolist()) <= set(range(TINY["clusters"]))
    assert mbn.transform(x).shape == (len(x), TINY["clusters"])


def test_fit_and_predict_are_deterministic_under_a_seed(tiny):
    x, first = tiny
    second = MBN(MBNConfig(**TINY)).fit(x)
    for a, b in zip(first.train_codes_, second.train_codes_):
        assert torch.equal(a, b)
    assert torch.equal(first.train_labels_, second.train_labels_)
    new = _blobs(25, seed=9)
    assert torch.equal(first.predict(new), second.predict(new))
    other = MBN(MBNConfig(**{**TINY, "seed": 4})).fit(x)
    assert not all(torch.equal(a, b) for a, b in zip(first.train_codes_, other.train_codes_))


# ------------------------------------------------------------------------------------------ reference
def _reference_codes(x_train, x_new, cfg: MBNConfig, ks):
    """MBN's layers written as plain loops, straight from the definitions (float64, first index on ties)."""
    rng = np.random.default_rng(cfg.seed)
    n, d = x_train.shape
    train, new = x_train.astype(np.float64), x_new.astype(np.float64)
    out_train, out_new = [], []
    for i, k in enumerate(ks):
        width = d if i == 0 else cfg.V
        s = max(1, min(width, round(cfg.feature_ratio * width)))
        draws = []
        for _ in range(cfg.V):
            cents = rng.choice(n, size=k, replace=False)
            draws.append((cents, np.sort(rng.choice(width, size=s, replace=False))))

        def encode(points, i=i, draws=draws, train=train):
            codes = np.zeros((len(points), cfg.V), dtype=np.int64)
            for p in range(len(points)):
                for v, (cents, sub) in enumerate(draws):
                    best, best_m = None, -1
                    for m, c in enumerate(cents):
                        if i == 0:  # Euclidean on the feature subset: smaller is nearer
                            score = -float(((points[p, sub] - train[c, sub]) ** 2).sum())
                        else:  # shared ones on the clustering subset: more is nearer
                            score = float(sum(points[p, j] == train[c, j] for j in sub))
                        if best is None or score > best:
                            best, best_m = score, m
                    codes[p, v] = best_m
            return codes

        train, new = encode(train), encode(new)
        out_train.append(train)
        out_new.append(new)
    return out_train, out_new


def _pixels(n, seed):
    """Digit-like inputs (multiples of 1/16): distances tie exactly, so tie-breaking is exercised too."""
    return (np.random.default_rng(seed).integers(0, 3, size=(n, 8)) / 16.0).astype(np.float32)


@pytest.mark.parametrize("case", ["blobs", "blobs-all-features", "pixels-with-ties"])
def test_vectorised_prediction_equals_a_plain_loop(case, tiny):
    if case == "blobs":
        x, mbn = tiny
        new = _blobs(12, seed=5)
    elif case == "blobs-all-features":
        x, new = _blobs(40, seed=1), _blobs(12, seed=6)
        mbn = MBN(MBNConfig(V=4, k1=20, delta=0.7, feature_ratio=1.0, clusters=3, seed=1)).fit(x)
    else:
        x, new = _pixels(50, 2), _pixels(12, 3)
        mbn = MBN(MBNConfig(V=6, k1=24, delta=0.5, feature_ratio=0.4, clusters=3, seed=2)).fit(x)
    assert len(mbn.ks) >= 2
    ref_train, ref_new = _reference_codes(x, new, mbn.config, mbn.ks)
    for layer, (fitted, ref) in enumerate(zip(mbn.train_codes_, ref_train)):
        assert np.array_equal(fitted.numpy(), ref), f"layer {layer}: fitted codes differ from the reference"
    for layer, (pred, ref) in enumerate(zip(mbn.codes(new), ref_new)):
        assert np.array_equal(pred.numpy(), ref), f"layer {layer}: predicted codes differ from the reference"
    # top: the embedding bag equals the dense one-hot times the PCA components
    top = mbn.codes(new)[-1]
    onehot = torch.zeros(len(new), mbn.config.V * mbn.ks[-1])
    onehot.scatter_(1, top + torch.arange(mbn.config.V) * mbn.ks[-1], 1.0)
    assert torch.allclose(mbn.transform(new), onehot @ mbn.pca_weight - mbn.pca_bias, atol=1e-5)
    nearest = torch.cdist(mbn.transform(new), mbn.centers).argmin(1)
    assert torch.equal(mbn.predict(new), nearest)


# ------------------------------------------------------------------------------------------ bad settings
@pytest.mark.parametrize("key, value, constraint", [
    ("V", 0, "V must be an integer >= 1"),
    ("V", 2.5, "V must be an integer >= 1"),
    ("delta", 0, "delta must be a number in (0, 1)"),
    ("delta", 1.0, "delta must be a number in (0, 1)"),
    ("delta", 1.5, "delta must be a number in (0, 1)"),
    ("feature_ratio", 0.0, "feature_ratio must be a number in (0, 1]"),
    ("feature_ratio", 1.2, "feature_ratio must be a number in (0, 1]"),
    ("clusters", 1, "clusters must be an integer >= 2"),
    ("k1", 1, "k1 must be an integer >= 2"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(key, value, constraint):
    with pytest.raises(ConfigError) as e:
        MBNConfig.from_mapping({key: value}, where="space.yaml: baseline.teacher.mbn")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(constraint)
    assert f"but got {key}={value!r} (space.yaml: baseline.teacher.mbn.{key})" in msg


@pytest.mark.parametrize("key, value, constraint", [
    ("k1", 61, "k1 must be at most the number of training points (60)"),
    ("clusters", 61, "clusters must be at most the number of training points (60)"),
])
def test_settings_larger_than_the_training_set_are_errors(key, value, constraint):
    with pytest.raises(ConfigError) as e:
        MBN(MBNConfig(**{**TINY, key: value})).fit(_blobs())
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(constraint)
    assert f"but got {key}={value} (mbn.{key})" in msg


def test_unknown_setting_names_the_allowed_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'layers' in mbn; allowed keys: V, k1, delta"):
        MBNConfig.from_mapping({"layers": 3})


def test_bad_inputs_are_errors(tiny):
    x, mbn = tiny
    with pytest.raises(DataError, match="must be finite"):
        MBN(MBNConfig(**TINY)).fit(np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x))
    with pytest.raises(DataError, match="must have 6 features"):
        mbn.predict(np.zeros((2, 5), dtype=np.float32))


# ------------------------------------------------------------------------------------------ save / load
def test_save_load_round_trip_without_pickle(tiny, tmp_path):
    x, mbn = tiny
    path = tmp_path / "mbn.pt"
    mbn.save(path)
    raw = torch.load(path, weights_only=True)  # plain tensors and numbers only
    assert raw["format"] == "sweep-mbn" and raw["config"]["V"] == TINY["V"]
    back = MBN.load(path)
    new = _blobs(30, seed=7)
    assert back.ks == mbn.ks
    assert torch.equal(back.predict(x), mbn.train_labels_)
    assert torch.equal(back.predict(new), mbn.predict(new))
    for a, b in zip(back.codes(new), mbn.codes(new)):
        assert torch.equal(a, b)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(DataError, match="must be a saved MBN"):
        MBN.load(tmp_path / "bad.pt")
    partial = mbn.state_dict()
    del partial["centers"]
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(DataError, match="must hold every part of a fitted MBN, but got KeyError"):
        MBN.load(tmp_path / "partial.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prediction_equals_cpu(tiny):
    x, mbn = tiny
    new = _blobs(30, seed=8)
    on_gpu = MBN.from_state(mbn.state_dict(), device="cuda")
    assert torch.equal(on_gpu.predict(new).cpu(), mbn.predict(new))
    fitted = MBN(MBNConfig(**TINY), device="cuda").fit(x)
    for a, b in zip(fitted.train_codes_, mbn.train_codes_):
        assert torch.equal(a.cpu(), b)


# ------------------------------------------------------------------------------------------ metrics
def test_metrics():
    truth = np.array([0, 0, 1, 1, 2, 2])
    assert clustering_accuracy(truth, np.array([2, 2, 0, 0, 1, 1])) == 1.0  # a relabelling is perfect
    assert clustering_accuracy(truth, np.array([0, 0, 0, 1, 2, 2])) == pytest.approx(5 / 6)
    assert clustering_accuracy(truth, np.zeros(6, dtype=int)) == pytest.approx(2 / 6)  # fewer clusters
    assert nmi(truth, np.array([1, 1, 2, 2, 0, 0])) == pytest.approx(1.0)
    assert agreement(truth, np.array([0, 0, 1, 2, 2, 2])) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="one length"):
        clustering_accuracy(truth, truth[:3])


def test_mbn_beats_kmeans_on_raw_digits(digits):
    from sklearn.cluster import KMeans

    x, y = digits
    # all 1,797 digits at V = 100: METHODS.md §5 measured 0.936 against 0.771 for raw k-means (a few seconds);
    # smaller subsets or V leave a margin that depends on the seed
    mbn = MBN(MBNConfig(V=100, clusters=10, seed=0)).fit(x)
    raw = KMeans(n_clusters=10, n_init=10, random_state=0).fit(x.reshape(len(x), -1)).labels_
    mbn_acc, raw_acc = clustering_accuracy(y, mbn.train_labels_), clustering_accuracy(y, raw)
    assert mbn_acc > raw_acc + 0.1, (mbn_acc, raw_acc)
    assert nmi(y, mbn.train_labels_) > nmi(y, raw)


# ------------------------------------------------------------------------------------------ as a sweep's teacher
def _teacher_space(**over):
    raw = {
        "name": "mbn_tiny", "seed": 0, "labels": "none", "model": {"name": "small_cnn"},
        "dataset": {"name": "synthetic", "num_classes": 4, "input_shape": [1, 8, 8], "n_train": 160, "n_val": 40,
                    "n_test": 40},
        "baseline": {"teacher": {"mbn": {"V": 8, "clusters": 4}}, "epochs": 2, "lr": 0.05},
        "search": {"trials": 2, "objectives": ["agreement", "latency_ms"]},
        "measure": {"repeats": 3, "warmup": 1, "runtime": "torch"},
        "methods": {"magnitude": {"ratio": {"low": 0.2, "high": 0.6}}},
    }
    for key, value in over.items():
        raw[key] = value
    return raw


def test_space_with_an_mbn_teacher_parses_and_bad_ones_are_one_line_errors():
    from sweep.config import parse_config

    cfg = parse_config(_teacher_space(seed=7), source="s.yaml")
    assert cfg.baseline.teacher == MBNConfig(V=8, clusters=4, seed=7)  # the sweep's seed unless it has its own
    supervised = _teacher_space(labels="supervised", search={"objectives": ["accuracy", "latency_ms"]})
    with pytest.raises(ConfigError, match=r"must be label-free: set labels: none.*\(s.yaml: baseline.teacher.mbn\)"):
        parse_config(supervised, source="s.yaml")
    with pytest.raises(ConfigError, match=r"but got V=0 \(s.yaml: baseline.teacher.mbn.V\)"):
        parse_config(_teacher_space(baseline={"teacher": {"mbn": {"V": 0}}}), source="s.yaml")
    with pytest.raises(ConfigError, match=r"one key, mbn, but got teacher=\{'kmeans': \{\}\}"):
        parse_config(_teacher_space(baseline={"teacher": {"kmeans": {}}}), source="s.yaml")
    with pytest.raises(ConfigError, match=r"must be the only teacher, but got baseline.cloud_fraction=0.3"):
        parse_config(_teacher_space(baseline={"teacher": {"mbn": {}}, "cloud_fraction": 0.3}), source="s.yaml")


def _baseline_run(tmp_path, name, garbage_labels, monkeypatch, **mbn):
    import dataclasses

    import sweep.trial as trial
    from sweep.config import parse_config
    from sweep.folder import SweepFolder
    from sweep.mbn.teacher import load_teacher, teacher_path

    space = _teacher_space()
    space["baseline"]["teacher"]["mbn"].update(mbn)
    cfg = parse_config(space, source="s.yaml")
    splits = trial.load_splits(cfg)
    if garbage_labels:  # every label replaced: nothing on the teacher or student path may change
        def scramble(ds, seed):
            x, y = ds.tensors
            return torch.utils.data.TensorDataset(x, torch.randint(0, 4, y.shape, generator=torch.Generator()
                                                                   .manual_seed(seed)))
        splits = dataclasses.replace(splits, train=scramble(splits.train, 1), val=scramble(splits.val, 2),
                                     test=scramble(splits.test, 3))
    monkeypatch.setattr(trial, "load_splits", lambda c: splits)
    folder = SweepFolder(tmp_path / name)
    folder.create(cfg)
    record = trial.prepare_baseline(cfg, folder, log=lambda s: None)
    return folder, record, torch.load(teacher_path(folder), weights_only=True), load_teacher(folder)


def test_mbn_teacher_baseline_reads_no_label(tmp_path, monkeypatch):
    folder, rec, teacher, loaded = _baseline_run(tmp_path, "a", False, monkeypatch)
    summary = folder.baseline()
    assert rec.status == "ok" and 0.0 <= rec.agreement <= 1.0 and rec.agreement == summary["agreement"]
    assert summary["teacher"]["kind"] == "mbn" and summary["speedup_vs_teacher"] > 0
    assert summary["num_classes"] == 4 and loaded.clusters == 4
    x = torch.rand(5, 1, 8, 8)
    assert loaded(x).shape == (5, 4) and torch.equal(loaded(x).argmax(1), loaded.mbn.predict(x))
    from sweep.mbn.teacher import load_teacher

    shipped = load_teacher(type("RemoteIO", (), {"teacher_state": lambda self: teacher})())  # no folder access
    assert torch.equal(shipped(x), loaded(x))
    other, _, teacher_b, _ = _baseline_run(tmp_path, "b", True, monkeypatch)
    assert teacher.keys() == teacher_b.keys()
    for key in ("pca_weight", "pca_bias", "centers"):
        assert torch.equal(teacher[key], teacher_b[key])
    for la, lb in zip(teacher["layers"], teacher_b["layers"]):
        assert all(torch.equal(la[k], lb[k]) if torch.is_tensor(la[k]) else la[k] == lb[k] for k in la)
    student_a = folder.load_baseline_model().state_dict()
    student_b = other.load_baseline_model().state_dict()
    assert all(torch.equal(student_a[k], student_b[k]) for k in student_a)


def test_mbn_teacher_fitted_on_fit_points_labels_every_training_input(tmp_path, monkeypatch):
    """``fit_points``: MBN is fitted on a seeded subset (k1 = half of it) and labels all training inputs,
    which the student learns from; more fit points than inputs is a one-line error naming the key."""
    folder, rec, state, loaded = _baseline_run(tmp_path, "sub", False, monkeypatch, fit_points=100)
    teacher = folder.baseline()["teacher"]
    assert rec.status == "ok" and teacher["fit_points"] == 100 and teacher["train_points"] == 160
    assert loaded.mbn.ks[0] == 50  # k1 = half the fit set, not half the 160 training inputs
    with pytest.raises(ConfigError, match=r"fit_points must be at most the number of training inputs \(160\), but "
                                          r"got fit_points=161 \(s.yaml: baseline.teacher.mbn.fit_points\)"):
        _baseline_run(tmp_path, "too_many", False, monkeypatch, fit_points=161)
    with pytest.raises(ConfigError, match=r"fit_points must be an integer >= 4, but got fit_points=3"):
        MBNConfig(fit_points=3)


# ------------------------------------------------------------------------------------------ a whole sweep
E2E_SPACE = """
name: mbn_e2e
seed: 0
labels: none
model: {name: small_cnn}
dataset: {name: digits}
baseline:
  teacher: {mbn: {V: 20, clusters: 10}}
  epochs: 4
  lr: 0.05
finetune: {epochs: 1, lr: 0.01}
search: {trials: 2, concurrency: 2, sampler: random, objectives: [agreement, latency_ms, params]}
measure: {repeats: 10, warmup: 2, runtime: torch}
methods:
  magnitude:
    ratio: {low: 0.2, high: 0.6}
"""


@pytest.mark.integration
def test_digits_sweep_with_an_mbn_teacher_end_to_end(tmp_path, monkeypatch, capsys):
    """`sweep run` on digits with an MBN teacher (a real local Ray sweep, about a minute on 2 cores): the
    teacher's figures reach the table, the report shows the teacher's point, its figures and the speed-up
    column, and `sweep select --min-accuracy` bounds agreement."""
    import json

    import pandas as pd

    from sweep.cli import main
    from sweep.measure import speed_words
    from sweep.report.teacher import fmt_speedup

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mbn_e2e.yaml").write_text(E2E_SPACE)
    try:
        assert main(["run", "mbn_e2e.yaml"]) == 0
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    printed = capsys.readouterr().out
    assert "speed-up vs teacher" in printed  # the CLI's front table too
    assert "| --min-agreement A" in printed  # the bound named as this sweep measures quality

    sweep_dir = tmp_path / "runs" / "mbn_e2e"
    df = pd.read_parquet(sweep_dir / "trials.parquet")
    assert len(df) == 3 and set(df["status"]) == {"ok"}
    base = df[df["trial_id"] == "baseline"].iloc[0]
    teacher = json.loads(base["info"])["summary"]["teacher"]
    assert teacher["kind"] == "mbn" and teacher["latency"]["batch"] == base["latency_batch"] == 1
    assert teacher["latency"]["threads"] == base["threads"] and teacher["latency"]["device"] == base["device"]
    assert 0 < teacher["val_cluster_accuracy"] <= 1 and 0 <= teacher["val_nmi"] <= 1 and teacher["latency_ms"] > 0
    assert df["agreement"].between(0, 1).all() and df["accuracy"].between(0, 1).all()
    # every row (baseline and trials) has its clusters' NMI against the labels, validation and test
    assert df["nmi"].between(0, 1).all() and df["test_nmi"].between(0, 1).all()
    assert base["nmi"] == pytest.approx(json.loads(base["info"])["summary"]["nmi"])

    report = tmp_path / "reports" / "mbn_e2e"
    summary = (report / "summary.md").read_text(encoding="utf-8")
    assert f"**MBN teacher:** per-sample prediction latency {teacher['latency_ms']:.3g} ms" in summary
    assert f"clustering accuracy {teacher['val_cluster_accuracy']:.4f} (val)" in summary
    assert f"NMI {teacher['val_nmi']:.4f} (val)" in summary
    header, _rule, *lines = [line for line in summary.splitlines() if line.startswith("|")]
    col = [c.strip() for c in header.split("|")].index("speed-up vs teacher")
    cells = {line.split("|")[1].strip(): line.split("|")[col].strip() for line in lines}
    nmi_col = [c.strip() for c in header.split("|")].index("NMI")
    assert {line.split("|")[1].strip(): line.split("|")[nmi_col].strip() for line in lines}["baseline"] == \
        f"{base['nmi']:.4f}"
    assert cells["baseline"] == fmt_speedup(teacher["latency_ms"] / base["latency_ms"])  # same conditions: no *
    index = (report / "index.html").read_text(encoding="utf-8")
    assert 'alt="agreement vs latency, with the MBN teacher point"' in index and "<td>MBN teacher</td>" in index
    assert "MBN teacher" in (report / "interactive.html").read_text(encoding="utf-8")

    # --min-accuracy bounds agreement in this label-free sweep: met by the best trial, broken above it
    best = df["agreement"].max()
    assert main(["select", str(sweep_dir), "--min-accuracy", f"{best - 1e-6:.6f}", "--no-export",
                 "--no-register"]) == 0
    selection = json.loads((sweep_dir / "selected" / "selection.json").read_text())
    assert selection["chosen"]["agreement"] == pytest.approx(best)
    # the chosen student, timed again as the teacher was, against the teacher's per-sample latency
    vs = selection["vs_teacher"]
    assert vs["kind"] == "mbn" and vs["teacher_latency"] == teacher["latency"]
    assert {k: vs["student_latency"][k] for k in ("batch", "threads", "device", "runtime")} == \
        {k: teacher["latency"][k] for k in ("batch", "threads", "device", "runtime")}
    assert vs["speedup"] == pytest.approx(teacher["latency"]["median_ms"] / vs["student_latency"]["median_ms"])
    # (faster or not is the benchmark's to show, bench/mbn.py: here two timings minutes apart on a busy machine)
    words = speed_words(vs["speedup"])
    assert f"chosen: {words} per sample than the MBN teacher" in capsys.readouterr().out
    assert f"{words} per sample" in (sweep_dir / "selected" / "selection.md").read_text()
    assert main(["select", str(sweep_dir), "--min-agreement", f"{min(best + 0.01, 1.0):.6f}", "--no-export",
                 "--no-register"]) == 2  # the other spelling of the same bound
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "agreement" in err[0]


def test_shipped_mbn_spaces_parse_label_free_with_an_mbn_teacher():
    from pathlib import Path

    from sweep.config import load_config

    root = Path(__file__).parent.parent / "search_spaces"
    for name, dataset in (("mbn_digits", "digits"), ("mbn_fashion_mnist", "fashion-mnist")):
        cfg = load_config(root / f"{name}.yaml")
        assert cfg.name == name and cfg.dataset.name == dataset and cfg.label_free and cfg.quality == "agreement"
        assert isinstance(cfg.baseline.teacher, MBNConfig) and cfg.baseline.teacher.clusters == 10
        assert cfg.measure.runtime == "torch"  # MBN is timed on torch: the speed-up compares like with like
        assert {m.name for m in cfg.methods} == {"magnitude", "lnpt"}
    fashion = load_config(root / "mbn_fashion_mnist.yaml")
    assert fashion.baseline.teacher.fit_points == 3000  # what MBN is fitted on: sized for 2 cores
    assert fashion.dataset.options["train_subset"] == 20000 and fashion.model.name == "mlp"  # MBN labels them all


def test_teacher_module_remembers_batches_by_content_and_matches_mbn(tiny, monkeypatch):
    """MBNTeacher asks MBN once per distinct batch (a trial's rungs re-read the same validation batches): a
    repeated batch is a memo hit, a different batch of the same shape is not, and outputs equal MBN's."""
    from sweep.mbn.teacher import HARD_LOGIT, MBNTeacher

    x, mbn = tiny
    teacher = MBNTeacher(mbn)
    calls = []
    real = mbn.predict
    monkeypatch.setattr(mbn, "predict", lambda b: calls.append(len(b)) or real(b))
    a, b = torch.as_tensor(x[:20], dtype=torch.float32), torch.as_tensor(x[20:40], dtype=torch.float32)
    first = teacher(a)
    assert torch.equal(first.argmax(1), real(a)) and float(first.max()) == HARD_LOGIT
    assert torch.equal(teacher(a.clone()), first) and calls == [20]  # same bytes: no second prediction
    assert torch.equal(teacher(b).argmax(1), real(b)) and calls == [20, 20]  # same shape, other points
    teacher.to("cpu")  # moving the module forgets the memo
    teacher(a)
    assert calls == [20, 20, 20]
    timed = MBNTeacher(mbn, memo=False)  # the one whose latency is measured: it predicts at every call
    timed(a), timed(a)
    assert calls == [20, 20, 20, 20, 20]
