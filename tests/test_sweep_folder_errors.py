"""Broken inputs that used to end in a traceback: a diverging baseline, and a sweep folder whose files are
corrupt. Each is one line ``sweep: error: ...`` naming the file (or setting) and what to do, exit code 2,
and nothing of the sweep is overwritten.

The sweep folder is built once per module without Ray (baseline + one trial run in-process, records
written by the store); each test corrupts its own copy. No test starts Ray: `resume` finds every trial
finished (``search.trials: 1``) and fails before or in the re-measurement.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import yaml

from sweep.cli import main
from sweep.config import load_config
from sweep.folder import SweepFolder, sweep_meta
from sweep.results.schema import with_front
from sweep.trial import TrialSpec, prepare_baseline, run_trial

SPACE = {
    "name": "broken",
    "model": {"name": "small_cnn"},
    "dataset": {"name": "synthetic", "num_classes": 3, "input_shape": [1, 8, 8], "n_train": 96,
                "n_val": 48, "n_test": 48},
    "baseline": {"epochs": 3, "lr": 0.05},
    "finetune": {"epochs": 0, "lr": 0.01},
    "search": {"trials": 1, "objectives": ["accuracy", "latency_ms", "params"]},
    "measure": {"repeats": 3, "warmup": 1, "remeasure": "all"},
    "methods": {"magnitude": {"ratio": {"low": 0.2, "high": 0.9}}},
}


def assert_one_line_error(capsys, expected: str | None = None, *needles: str) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sweep: error: ")
    if expected is not None:
        assert lines[0] == f"sweep: error: {expected}"
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file of the folder and its content hash (what a failed command must leave as it was), but the
    folder's lock file, which `select` and `resume` take (and leave, empty) before they read anything.
    ``trials.parquet`` counts by its rows less their MLflow run ids: a resume gives the finished trials an
    earlier driver had not mirrored their MLflow run, and records its id."""
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _digest(p: Path) -> str:
    if p.name == "trials.parquet":
        import json

        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception:  # a corrupted table: its bytes
            pass
        else:
            rows = sorted(({k: v for k, v in r.items() if k != "mlflow_run_id"} for r in rows),
                          key=lambda r: str(r.get("trial_id")))
            return hashlib.sha256(json.dumps(rows, default=str, sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(p.read_bytes()).hexdigest()


def assert_kept_on_resume(before: dict, after: dict, rewritten: tuple[str, ...] = ("state.json",)) -> None:
    """`resume` takes the folder's lock and opens MLflow before it reads the rest of the folder (the driver's
    order): it rewrites state.json and may add its lock file and MLflow artefacts; every other file is left
    exactly as it was, and nothing new claims a baseline, a model, a row or a selection."""
    assert {k: v for k, v in after.items() if k in before and k not in rewritten} == \
        {k: v for k, v in before.items() if k not in rewritten}
    new = sorted(set(after) - set(before))
    assert not [k for k in new if k.startswith(("baseline/", "models/", "selected", "trials", "journal"))], new


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("built")
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    cfg = load_config(space)
    d = root / "sweep"
    folder = SweepFolder(d)
    folder.create(cfg)
    base = prepare_baseline(cfg, folder, log=lambda m: None)
    trial = run_trial(cfg, TrialSpec(str(d), "t1", "magnitude", {"ratio": 0.9}, seed=1), trial_number=0)
    assert trial.status == "ok", trial.error
    assert trial.accuracy < base.accuracy  # so that the baseline is what an unlimited `select` chooses
    folder.store.write(with_front([base, trial], cfg.search.objectives), sweep_meta(cfg, folder.baseline()))
    # MLflow logs to one store outside the folders (like --tracking-uri): created once, by the first resume
    (d / "state.json").write_text('{"tracking_uri": "sqlite:///%s", "experiment": "broken"}' % (root / "mlflow.db"))
    return d


@pytest.fixture
def sweep_dir(built, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # default outputs (reports/) would show up here
    d = tmp_path / "s"
    shutil.copytree(built, d)
    return d


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def select_argv(d: Path, *limits: str) -> list[str]:
    return ["select", str(d), *limits, "--no-export", "--no-register"]


def resume_argv(d: Path) -> list[str]:
    return ["resume", str(d), "--reports", str(d.parent / "reports")]


# ----------------------------------------------------------------------------- the folder itself is fine
def test_the_built_folder_is_a_working_sweep(sweep_dir, capsys):
    assert main(select_argv(sweep_dir, "--max-params", "10000000")) == 0
    assert "chosen: trial baseline" in capsys.readouterr().out
    assert (sweep_dir / "selected" / "selection.json").is_file()


# ----------------------------------------------------------------------------- trials.parquet
@pytest.mark.parametrize("command", ["report", "select", "resume"])
def test_truncated_trials_parquet(sweep_dir, capsys, command):
    p = sweep_dir / "trials.parquet"
    truncate(p)
    before = fingerprint(sweep_dir)
    argv = {"report": ["report", str(sweep_dir)], "select": select_argv(sweep_dir, "--max-params", "10000000"),
            "resume": resume_argv(sweep_dir)}[command]
    assert main(argv) == 2
    line = assert_one_line_error(capsys, None, "sweep: error: sweep folder must hold a readable trials.parquet, "
                                 "but reading it failed: ", f"({p}); restore it from a copy of the sweep folder: "
                                 "the rows cannot be rebuilt from elsewhere")
    assert line.endswith("the rows cannot be rebuilt from elsewhere")
    after = fingerprint(sweep_dir)
    if command == "resume":
        assert_kept_on_resume(before, after)
    else:
        assert after == before
    assert not (sweep_dir.parent / "reports").exists()


# ----------------------------------------------------------------------------- saved models
def test_truncated_trial_model_on_select(sweep_dir, capsys):
    p = sweep_dir / "models" / "t1.pt"
    truncate(p)
    before = fingerprint(sweep_dir)
    # a params limit below the baseline's leaves only t1
    base_params = SweepFolder(sweep_dir).baseline()["params"]
    assert main(select_argv(sweep_dir, "--max-params", str(base_params - 1))) == 2
    assert_one_line_error(
        capsys, "saved model models/t1.pt must be a readable torch file, but it is not (BadZipFile: "
        "File is not a zip file) "
        f"({p}); restore it from a copy of the sweep folder (one trial's model cannot be re-created alone); "
        "an unreadable model is never skipped silently")
    assert fingerprint(sweep_dir) == before  # no selected/
    assert not (sweep_dir / "selected").exists()


def test_truncated_trial_model_on_resume(sweep_dir, capsys):
    p = sweep_dir / "models" / "t1.pt"
    truncate(p)
    before = fingerprint(sweep_dir)
    assert main(resume_argv(sweep_dir)) == 2  # found when its latency is re-measured alone
    assert_one_line_error(capsys, None, "saved model models/t1.pt must be a readable torch file", f"({p})",
                          "an unreadable model is never skipped silently")
    assert_kept_on_resume(before, fingerprint(sweep_dir))


BASELINE_HINT = ("the dense baseline every trial starts from cannot be rebuilt in place: restore baseline/ "
                 "from a copy of the sweep folder, or run the sweep again into a new folder")


def test_truncated_baseline_model_on_select(sweep_dir, capsys):
    p = sweep_dir / "baseline" / "model.pt"
    truncate(p)
    before = fingerprint(sweep_dir)
    assert main(select_argv(sweep_dir, "--max-params", "10000000")) == 2  # the baseline is the best point
    assert_one_line_error(
        capsys, "saved model baseline/model.pt must be a readable torch file, but it is not (BadZipFile: "
        "File is not a zip file) "
        f"({p}); {BASELINE_HINT}")
    assert fingerprint(sweep_dir) == before


def test_truncated_baseline_model_on_resume(sweep_dir, capsys):
    p = sweep_dir / "baseline" / "model.pt"
    truncate(p)
    before = fingerprint(sweep_dir)
    assert main(resume_argv(sweep_dir)) == 2
    assert_one_line_error(
        capsys, "saved model baseline/model.pt must be a readable torch file, but it is not (BadZipFile: "
        f"File is not a zip file) ({p}); {BASELINE_HINT}")
    assert_kept_on_resume(before, fingerprint(sweep_dir))  # no trial ran from it: no new rows, models, reports
    assert not (sweep_dir.parent / "reports").exists()


def test_a_trial_never_starts_from_a_truncated_baseline(sweep_dir):
    """Trials read the baseline's figures first: a truncated baseline model is named there."""
    from sweep.errors import SweepDirError

    truncate(sweep_dir / "baseline" / "model.pt")
    with pytest.raises(SweepDirError, match="saved model baseline/model.pt must be a readable torch file"):
        SweepFolder(sweep_dir).baseline()


# ----------------------------------------------------------------------------- JSON and YAML files
@pytest.mark.parametrize("content, reason", [
    ("{not json", "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ("\u00ff\u00fe", None),
])
def test_garbage_baseline_summary_on_resume(sweep_dir, capsys, content, reason):
    p = sweep_dir / "baseline" / "summary.json"
    p.write_bytes(content.encode("latin-1"))
    before = fingerprint(sweep_dir)
    assert main(resume_argv(sweep_dir)) == 2
    if reason is None:
        assert_one_line_error(capsys, None, "baseline/summary.json (the dense baseline's figures) must be readable "
                              "JSON, but reading it failed: UnicodeDecodeError", f"({p}); {BASELINE_HINT}")
    else:
        assert_one_line_error(capsys, f"baseline/summary.json (the dense baseline's figures) must be readable JSON, "
                              f"but reading it failed: {reason} ({p}); {BASELINE_HINT}")
    assert_kept_on_resume(before, fingerprint(sweep_dir))


def test_baseline_summary_without_figures(sweep_dir, capsys):
    p = sweep_dir / "baseline" / "summary.json"
    p.write_text('{"accuracy": 0.5, "test_accuracy": 0.5, "params": "many"}')
    assert main(resume_argv(sweep_dir)) == 2
    assert_one_line_error(capsys, "baseline/summary.json must hold the baseline's figures (accuracy, "
                          f"test_accuracy, params, macs, latency_ms) as numbers, but got params='many' ({p}); "
                          f"{BASELINE_HINT}")


STATE_HINT = ("it only records where the sweep logs to MLflow: restore it, or delete it (`sweep resume` then "
              "logs to a new MLflow parent run)")


@pytest.mark.parametrize("command", ["select", "resume"])
def test_garbage_state_json(sweep_dir, capsys, command):
    p = sweep_dir / "state.json"
    p.write_text("tracking_uri: nope")
    before = fingerprint(sweep_dir)
    argv = select_argv(sweep_dir, "--max-params", "10000000") if command == "select" else resume_argv(sweep_dir)
    assert main(argv) == 2
    assert_one_line_error(capsys, "state.json (MLflow tracking URI, experiment, parent run) must be readable JSON, "
                          "but reading it failed: JSONDecodeError: Expecting value: line 1 column 1 (char 0) "
                          f"({p}); {STATE_HINT}")
    if command == "resume":
        assert_kept_on_resume(before, fingerprint(sweep_dir), rewritten=())  # state.json as it was
    else:
        assert fingerprint(sweep_dir) == before


def test_state_json_that_is_not_an_object(sweep_dir, capsys):
    p = sweep_dir / "state.json"
    p.write_text("[1, 2]")
    assert main(resume_argv(sweep_dir)) == 2
    assert_one_line_error(capsys, f"state.json must hold a JSON object, but got list ({p}); {STATE_HINT}")


@pytest.mark.parametrize("command", ["select", "resume"])
def test_garbage_sweep_yaml(sweep_dir, capsys, command):
    p = sweep_dir / "sweep.yaml"
    p.write_bytes(b"name: broken\nmodel: [unclosed\n\x00")
    before = fingerprint(sweep_dir)
    argv = select_argv(sweep_dir, "--max-params", "10000000") if command == "select" else resume_argv(sweep_dir)
    assert main(argv) == 2
    assert_one_line_error(capsys, None, f"malformed YAML in {p}",
                          "; sweep.yaml is the search space this sweep runs (`sweep run` wrote it): restore it, "
                          "or fix what is named")
    if command == "resume":
        assert_kept_on_resume(before, fingerprint(sweep_dir), rewritten=())
    else:
        assert fingerprint(sweep_dir) == before


def test_sweep_yaml_with_a_duplicate_key(sweep_dir, capsys):
    p = sweep_dir / "sweep.yaml"
    assert p.read_text().startswith("name: broken\n")
    p.write_text(p.read_text() + "name: other\n")
    n = len(p.read_text().splitlines())
    assert main(resume_argv(sweep_dir)) == 2
    assert_one_line_error(capsys, f"keys must be unique in each YAML mapping, but got key 'name' twice, at lines "
                          f"1 and {n} ({p}); sweep.yaml is the search space this sweep runs (`sweep run` wrote it): "
                          "restore it, or fix what is named")


# ----------------------------------------------------------------------------- a diverging baseline
def test_diverging_baseline_is_one_line_and_leaves_no_baseline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    text = yaml.safe_dump({**SPACE, "baseline": {"epochs": 2, "lr": 1.0}}, sort_keys=False)
    space.write_text(text.replace("lr: 1.0", "lr: 1e12", 1))
    out = tmp_path / "out"
    assert main(["run", str(space), "--out", str(out)]) == 2
    line = assert_one_line_error(
        capsys, None, f"sweep: error: baseline training must converge, but it diverged at baseline.lr=1e12 ({space}: "
        "baseline.lr): non-finite ", f"; try a smaller baseline.lr (the sweep folder {out} holds no baseline yet: "
        "fix baseline.lr in its sweep.yaml and `sweep resume` it, or remove it and run again)")
    assert re.search(r"\): non-finite (loss nan|loss inf|weights after) in epoch \d+; try", line), line
    folder = SweepFolder(out)
    assert not (out / "baseline").exists() and not folder.has_baseline()
    assert not (out / "trials.parquet").exists() and not (out / "models").exists()
    assert not (tmp_path / "reports").exists()
    import ray

    assert not ray.is_initialized()  # shut down on the way out, and no Ray call started a new one after


def test_a_checkpoint_with_non_finite_outputs_is_named(tmp_path):
    import torch

    from sweep.errors import ConfigError
    from sweep.models import build_model

    model = build_model("small_cnn", num_classes=3, in_channels=1, input_size=8)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    ckpt = tmp_path / "nan.pt"
    torch.save(state, ckpt)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "baseline": str(ckpt)}, sort_keys=False))
    cfg = load_config(space)
    with pytest.raises(ConfigError) as ei:
        prepare_baseline(cfg, SweepFolder(tmp_path / "out"), log=lambda m: None)
    msg = str(ei.value)
    assert msg.startswith(f"the baseline model must give finite outputs, but baseline.path={str(ckpt)!r} gives "
                          "the network outputs non-finite values (")
    assert msg.endswith(f"({space}: baseline.path); check the checkpoint")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- a folder from someone else
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "..", "a/b"])
def test_a_name_in_the_table_never_puts_the_report_outside_reports(sweep_dir, tmp_path, capsys, name):
    folder = SweepFolder(sweep_dir)
    records, meta = folder.store.records()
    folder.store.write(records, {**meta, "name": name})
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["report", str(sweep_dir)]) == 2
    assert_one_line_error(capsys, None, "sweep name must match", f"name={name!r}",
                          f"(the name in {sweep_dir}'s trials.parquet)", "pass --out")
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert main(["report", str(sweep_dir), "--out", str(tmp_path / "mine")]) == 0  # the way out it names
    assert (tmp_path / "mine" / "index.html").is_file()


def test_select_never_removes_a_folder_it_did_not_create(sweep_dir, capsys):
    theirs = sweep_dir / "selected.tmp"  # a neighbour with the name a temporary folder could have
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    assert main(select_argv(sweep_dir, "--max-params", "10000000")) == 0
    assert (theirs / "notes.txt").read_text() == "keep me"
    assert (sweep_dir / "selected" / "selection.json").is_file()
    assert not [p for p in sweep_dir.iterdir() if p.name.startswith(".selected.")]  # ours is gone


# ----------------------------------------------------------------------------- where outputs go
def test_select_never_moves_nor_writes_into_a_folder_of_the_users_own(sweep_dir, tmp_path, capsys, monkeypatch):
    """`select --out` onto a folder holding the user's files (or the current folder, `--out .`) is refused
    before anything is measured; an earlier selection there is kept beside the new one."""
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "code.py").write_text("x = 1\n")
    monkeypatch.chdir(mine)
    for out in (str(mine), "."):
        assert main(select_argv(sweep_dir, "--max-params", "10000000", "--out", out)) == 2
        assert_one_line_error(capsys, f"--out must be a new or empty folder or an earlier output of this command "
                                      f"(holding selection.json), but got --out={out}, which holds other files; "
                                      f"choose another --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "s"]  # nothing moved aside, nothing new
    assert [p.name for p in mine.iterdir()] == ["code.py"]
    sel = tmp_path / "sel"
    for _ in range(2):  # the second one keeps the first beside it
        assert main(select_argv(sweep_dir, "--max-params", "10000000", "--out", str(sel))) == 0
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("sel-")]
    assert len(kept) == 1 and (kept[0] / "selection.json").is_file() and (sel / "selection.json").is_file()


@pytest.mark.parametrize("command", ["run", "report", "select", "prune"])
def test_an_output_folder_that_is_a_file_is_one_line(sweep_dir, tmp_path, capsys, command):
    f = tmp_path / "notes.txt"
    f.write_text("mine\n")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    argv = {"run": ["run", str(space), "--out", str(f)],
            "report": ["report", str(sweep_dir), "--out", str(f)],
            "select": select_argv(sweep_dir, "--max-params", "10000000", "--out", str(f)),
            "prune": ["prune", "--model", "small_cnn", "--input-shape", "1,8,8", "--num-classes", "3", "--ratio", "0.5",
                      "--out", str(f)]}[command]
    assert main(argv) == 2
    assert_one_line_error(capsys, f"--out must be a folder, but got --out={f}, which is a file; choose another --out")
    assert f.read_text() == "mine\n"


@pytest.mark.parametrize("name, bad", [("exp?1", "'?'"), ("exp%201", "'%20'"),
                                       ("a?b%2c%2C", "'?' and '%2c' and '%2C'")])
def test_a_sweep_folder_the_embedded_store_cannot_be_named_in_is_one_line_and_nothing_written(tmp_path, capsys,
                                                                                               name, bad):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    out = tmp_path / name
    assert main(["run", str(space), "--out", str(out)]) == 2
    assert_one_line_error(capsys, f"--out must be a path without '?' or a '%' followed by two hex digits to hold "
                                  f"the embedded MLflow store (its sqlite URI cannot name such a path), but got "
                                  f"--out={out}, which has {bad}; choose another --out or log to a tracking server "
                                  f"with --tracking-uri")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


@pytest.mark.parametrize("name, bad", [("b?x", "'?'"), ("d%20e", "'%20'")])
@pytest.mark.parametrize("command", ["resume", "select"])
def test_a_sweep_folder_moved_where_its_store_cannot_be_named_is_one_line_and_nothing_written(
        sweep_dir, tmp_path, capsys, name, bad, command):
    """A folder on the embedded store, moved to a path its sqlite URI cannot name: `resume` and `select` say so
    before they start anything; SQLAlchemy would otherwise have made a store elsewhere (``b?x`` -> a file ``b``
    beside it) or MLflow retried a missing one for minutes."""
    moved = tmp_path / name
    sweep_dir.rename(moved)
    (moved / "state.json").write_text('{"tracking_uri": "sqlite:////gone/mlflow.db", "experiment": "broken", '
                                      '"embedded_store": true}')
    before, around = fingerprint(moved), sorted(p.name for p in tmp_path.iterdir())
    argv = resume_argv(moved) if command == "resume" else ["select", str(moved), "--max-params", "10000000"]
    assert main(argv) == 2
    way_out = ", or select with --no-register" if command == "select" else ""
    assert_one_line_error(capsys, f"the sweep folder must be a path without '?' or a '%' followed by two hex digits "
                                  f"to use its embedded MLflow store (its sqlite URI cannot name such a path), but "
                                  f"got {moved}, which has {bad}; move or rename the folder{way_out}")
    assert fingerprint(moved) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == around


@pytest.mark.parametrize("path, bad", [("/data/run 50%", []), ("/data/100%/x", []), ("/a%zz", []),
                                       ("/a?b?c", ["'?'"]), ("/x%41%41y", ["'%41'"]), ("/q%3f?", ["'%3f'", "'?'"])])
def test_what_a_sqlite_uri_cannot_name_in_a_path(path, bad):
    from sweep.folder import check_embedded_store_path, uri_unsafe

    assert uri_unsafe(path) == bad
    if not bad:
        check_embedded_store_path(Path(path), "--out")  # a lone '%' is kept as it is: no error


@pytest.mark.parametrize("state, own_db, want", [
    ({}, False, "own"),
    ({"tracking_uri": "sqlite:////old/place/mlflow.db", "embedded_store": True}, True, "own"),
    ({"tracking_uri": "sqlite:////old/place/mlflow.db"}, True, "own"),  # a state from before embedded_store
    ({"tracking_uri": "sqlite:////shared/mlflow.db"}, False, "recorded"),  # a store the user named
    ({"tracking_uri": "sqlite:////shared/mlflow.db", "embedded_store": False}, True, "recorded"),
    ({"tracking_uri": "postgresql://u@127.0.0.1:5432/mlflow"}, True, "recorded"),
    ({"tracking_uri": "http://127.0.0.1:5000", "embedded_store": False}, False, "recorded"),
])
def test_the_sweeps_tracking_store_is_its_own_folders_wherever_the_folder_now_is(tmp_path, state, own_db, want):
    """state.json records the tracking URI absolute; a sweep on the embedded store keeps to the store in the
    folder it is in now (moved or copied), one the user named stays that one."""
    from sweep.folder import SweepFolder

    folder = SweepFolder(tmp_path / "moved")
    folder.path.mkdir()
    if own_db:
        (folder.path / "mlflow.db").write_bytes(b"")
    expected = folder.default_tracking_uri if want == "own" else state["tracking_uri"]
    assert folder.tracking_uri(state) == expected
    folder.write_state(state)
    assert folder.tracking_uri() == expected
