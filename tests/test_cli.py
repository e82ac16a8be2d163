"""The command line: one-line errors with exit code 2, --debug tracebacks, `sweep methods`.

No test here starts Ray: every `run` fails in the config or the preflight, before any process starts.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from servers import free_port

from sweep.cli import main
from sweep.errors import ConfigError, SweepDirError
from sweep.methods import METHODS

GOOD = """\
name: clitest
model:
  name: small_cnn
dataset:
  name: digits
methods:
  magnitude:
    ratio: {low: 0.1, high: 0.9}
"""


@pytest.fixture(scope="module", autouse=True)
def _warm_up():
    """Pay the one-off imports (torch, scikit-learn's digits) outside the timed tests."""
    import sklearn.datasets

    import sweep.data  # noqa: F401
    import sweep.driver  # noqa: F401  (imports no Ray at module level)
    import sweep.models  # noqa: F401
    import sweep.trial  # noqa: F401

    sklearn.datasets.load_digits()


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """Run in an empty folder, so that default outputs (runs/, reports/) would be visible."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(folder: Path, text: str, name: str = "space.yaml") -> Path:
    p = folder / name
    p.write_text(textwrap.dedent(text))
    return p


def assert_one_line_error(capsys, *needles: str) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sweep: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ----------------------------------------------------------------------------- methods
def test_methods_lists_every_method_with_knobs_and_ranges(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.startswith("magnitude: ") for line in lines)
    for name, spec in METHODS.items():
        assert any(line.startswith(f"{name}") and spec.summary in line for line in lines)
        for k in spec.knobs:
            knob_lines = [line for line in lines if line.split()[:1] == [k.name]]
            assert knob_lines, k.name
            assert any(k.kind in line and k.range_text() in line for line in knob_lines), (k.name, knob_lines)
    start = next(i for i, line in enumerate(lines) if line.startswith("magnitude: "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    lines = lines[start + 1:end]  # magnitude's own knob lines
    ratio = next(line for line in lines if line.split()[:1] == ["ratio"])
    assert "float" in ratio and "(0, 1)" in ratio and "default 0.5" in ratio
    mf = next(line for line in lines if line.split()[:1] == ["macs_fraction"])
    assert "(0, 1]" in mf and "unset" in mf
    rt = next(line for line in lines if line.split()[:1] == ["round_to"])
    assert "int" in rt and "[1, 64]" in rt
    imp = next(line for line in lines if line.split()[:1] == ["importance"])
    assert "{l2, l1, bn_scale, random, l2_latency, l1_latency}" in imp


def test_a_listing_whose_reader_has_gone_stops_quietly_with_141():
    """`sweep methods | head -1`: once the pipe is closed the listing ends there (exit 141) instead of going on
    on stderr, as a running sweep's log does."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        p = subprocess.run([sys.executable, "-m", "sweep.cli", "methods"], stdout=write, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(write)
    assert p.returncode == 141
    assert p.stderr == ""


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as ei:
        main([])
    assert ei.value.code == 2


# ----------------------------------------------------------------------------- run: config errors
def test_run_unknown_key(cwd, capsys):
    space = write(cwd, GOOD + "bogus: 1\n")
    out_dir = cwd / "out"
    assert main(["run", str(space), "--out", str(out_dir)]) == 2
    assert_one_line_error(capsys, "'bogus'", str(space))
    assert not out_dir.exists()
    assert listing(cwd) == ["space.yaml"]


def test_run_missing_yaml(cwd, capsys):
    assert main(["run", "nope.yaml", "--out", "out"]) == 2
    assert_one_line_error(capsys, "search space file not found", "nope.yaml")
    assert listing(cwd) == []


def test_run_non_utf8_space_names_the_file_and_the_byte(cwd, capsys):
    space = cwd / "space.yaml"
    space.write_bytes(GOOD.encode().replace(b"name: clitest", b"name: clitest # \xe9t\xe9", 1))
    assert main(["run", str(space), "--out", str(cwd / "out")]) == 2
    assert_one_line_error(capsys, f"sweep: error: search space file must be UTF-8 text, but got byte 0xe9 at byte "
                          f"offset 16 (line 1) ({space}); save it as UTF-8")
    assert listing(cwd) == ["space.yaml"]


def test_run_duplicate_key_names_the_key_the_lines_and_the_file(cwd, capsys):
    space = write(cwd, GOOD.replace("name: digits", "name: digits\n  name: synthetic"))
    assert main(["run", str(space), "--out", str(cwd / "out")]) == 2
    assert_one_line_error(capsys, "sweep: error: keys must be unique in each YAML mapping, but got key 'name' twice, "
                          f"at lines 5 and 6 ({space})")
    assert listing(cwd) == ["space.yaml"]


def test_run_unknown_dataset_lists_valid_names(cwd, capsys):
    from sweep.data import dataset_names

    space = write(cwd, GOOD.replace("name: digits", "name: digitz"))
    assert main(["run", str(space), "--out", str(cwd / "out")]) == 2
    line = assert_one_line_error(capsys, "'digitz'", "valid names")
    for name in dataset_names():
        assert name in line
    assert listing(cwd) == ["space.yaml"]


def test_run_unknown_model(cwd, capsys):
    space = write(cwd, GOOD.replace("name: small_cnn", "name: small_cnm"))
    assert main(["run", str(space), "--out", str(cwd / "out")]) == 2
    assert_one_line_error(capsys, "'small_cnm'", "small_cnn")
    assert listing(cwd) == ["space.yaml"]


def test_run_bad_knob_follows_template(cwd, capsys):
    space = write(cwd, GOOD.replace("ratio: {low: 0.1, high: 0.9}", "ratio: 1.5"))
    assert main(["run", str(space)]) == 2  # default --out: runs/<name> in the cwd
    assert_one_line_error(capsys, "ratio must be in (0, 1), but got ratio=1.5",
                          f"({space}: methods.magnitude.ratio)")
    assert listing(cwd) == ["space.yaml"]  # no runs/ nor reports/


def test_run_bad_name_flag(cwd, capsys):
    space = write(cwd, GOOD)
    assert main(["run", str(space), "--name", "a b"]) == 2
    assert_one_line_error(capsys, "--name")
    assert listing(cwd) == ["space.yaml"]


@pytest.mark.parametrize("flag", ["--trials", "--concurrency"])
@pytest.mark.parametrize("value, said", [("0", "must be > 0"), ("-2", "must be > 0"),
                                         ("many", "must be a finite number"), ("2.5", "must be a whole number > 0"),
                                         ("0.5", "must be a whole number > 0")])
def test_run_override_must_be_positive(cwd, capsys, flag, value, said):
    space = write(cwd, GOOD)
    with pytest.raises(SystemExit) as ei:
        main(["run", str(space), flag, value])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {said}" in err and repr(value) in err
    assert listing(cwd) == ["space.yaml"]


# ----------------------------------------------------------------------------- not a sweep folder
@pytest.mark.parametrize("command", [["report"], ["select", "--max-params", "1000"], ["resume"]])
def test_commands_on_a_non_sweep_folder(cwd, capsys, command):
    folder = cwd / "plain"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    argv = [command[0], str(folder), *command[1:]]
    assert main(argv) == 2
    assert_one_line_error(capsys, "not a sweep folder", str(folder.name))
    assert listing(cwd) == ["plain", "plain/notes.txt"]  # nothing created: no selected/, no reports/


def test_report_on_a_missing_folder(cwd, capsys):
    assert main(["report", str(cwd / "missing")]) == 2
    assert_one_line_error(capsys, "not a sweep folder")
    assert listing(cwd) == []


def test_report_on_a_corrupt_trials_file(cwd, capsys):
    folder = cwd / "broken"
    folder.mkdir()
    (folder / "trials.parquet").write_bytes(b"garbage")
    assert main(["report", str(folder)]) == 2
    assert_one_line_error(capsys, "must hold a readable trials.parquet, but reading it failed", "broken")


# ----------------------------------------------------------------------------- --debug, argparse
def test_debug_reraises(cwd, capsys):
    with pytest.raises(SweepDirError, match="not a sweep folder"):
        main(["--debug", "report", str(cwd)])
    space = write(cwd, GOOD + "bogus: 1\n")
    with pytest.raises(ConfigError, match="'bogus'"):
        main(["--debug", "run", str(space)])
    assert "sweep: error:" not in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--max-params", "-5"), ("--max-params", "0"),
                                         ("--max-latency-ms", "-1.5"), ("--max-macs", "x"),
                                         ("--max-macs", "nan")])
def test_select_negative_budget_is_an_argparse_error(cwd, capsys, flag, value):
    with pytest.raises(SystemExit) as ei:
        main(["select", str(cwd), flag, value])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and ("must be > 0" in err or "must be a finite number" in err)
    assert listing(cwd) == []


@pytest.mark.parametrize("flag, value", [("--max-params", "inf"), ("--max-latency-ms", "nan")])
def test_select_non_finite_budget_is_an_argparse_error(cwd, capsys, flag, value):
    with pytest.raises(SystemExit) as ei:
        main(["select", str(cwd), flag, value])
    assert ei.value.code == 2
    assert flag in capsys.readouterr().err


UNPRUNABLE = """\
import torch
from torch import nn


class Weird(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv(x))))
        return self.fc(x.view(x.shape[0], 16 * 8 * 8))  # hard-coded width: breaks after pruning conv2


def build(num_classes, in_channels):
    return Weird(num_classes, in_channels)
"""


def test_run_unprunable_architecture_fails_before_the_sweep_naming_the_layer(cwd, capsys, monkeypatch):
    (cwd / "weirdnet.py").write_text(UNPRUNABLE)
    monkeypatch.syspath_prepend(str(cwd))
    space = write(cwd, GOOD.replace("small_cnn", '"weirdnet:build"'))
    assert main(["run", str(space)]) == 2
    msg = assert_one_line_error(capsys, "'conv2'", "model.keep_layers")
    assert "Conv2d" in msg
    assert not (cwd / "runs").exists()
    # keeping that layer makes the same architecture acceptable to the preflight
    from sweep.cli import _preflight
    from sweep.config import load_config

    kept = write(cwd, GOOD.replace("small_cnn", '"weirdnet:build"\n  keep_layers: [conv2]'), "kept.yaml")
    _preflight(load_config(kept))


def test_run_depth_method_on_a_net_without_blocks_fails_before_the_sweep(cwd, capsys):
    space = write(cwd, GOOD.replace("magnitude:\n    ratio: {low: 0.1, high: 0.9}", "sr_init:\n    tau: 0.3"))
    assert main(["run", str(space)]) == 2
    assert_one_line_error(capsys, "sr_init", "SmallCNN")
    assert not (cwd / "runs").exists()


def test_prune_writes_a_truthful_summary(cwd, capsys):
    import json

    import torch

    out = cwd / "pruned"
    assert main(["prune", "--model", "small_cnn", "--dataset", "digits", "--ratio", "0.5", "--threads", "1",
                 "--repeats", "6", "--out", str(out)]) == 0
    assert "note: no --checkpoint: the model keeps the weights its builder gives it" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    for key in ("method", "params_before", "params_after", "macs_before", "macs_after", "latency_ms_before",
                "latency_ms_after", "latency_batch", "threads", "device", "output_shape", "accuracy_before",
                "accuracy_after"):
        assert key in s, key
    assert s["method"] == "magnitude" and s["output_shape"] == [1, 10]
    assert s["params_after"] < s["params_before"] and s["macs_after"] < s["macs_before"]
    model = torch.load(out / "model.pt", weights_only=False)
    assert sum(p.numel() for p in model.parameters()) == s["params_after"]
    assert main(["prune", "--model", "small_cnn", "--dataset", "digits", "--ratio", "0.5",
                 "--out", str(out)]) == 2  # never overwrites a finished result
    assert_one_line_error(capsys, f"--out must be a new or empty folder, but got --out={out}, which holds "
                          "other files; choose another --out")


@pytest.mark.parametrize("flags, expected", [
    (["--macs-fraction", "1.5"], "macs_fraction must be in (0, 1], but got macs_fraction=1.5 (--method magnitude"),
    (["--knob", "bogus=1"], "'bogus'"),
])
def test_prune_checks_its_knobs_before_building_the_model_or_reading_data(cwd, capsys, monkeypatch, flags, expected):
    import sweep.data
    import sweep.models

    def never(*a, **k):
        raise AssertionError("built or read before the knobs were checked")

    monkeypatch.setattr(sweep.models, "build_model", never)
    monkeypatch.setattr(sweep.data, "load_dataset", never)
    assert main(["prune", "--model", "small_cnn", "--dataset", "digits", *flags, "--out", str(cwd / "p")]) == 2
    assert_one_line_error(capsys, expected)
    assert not (cwd / "p").exists()


def test_prune_starts_from_the_checkpoint_given(cwd, capsys):
    """With --checkpoint the model pruned is the one saved (its weights decide which channels go), and no note
    about initial weights is printed."""
    import json

    import torch

    from sweep.models import build_model

    model = build_model("small_cnn", num_classes=10, in_channels=1, input_size=8)
    with torch.no_grad():  # weights no builder gives: the two first channels far stronger than the others
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        first.weight.mul_(0.01)[:2].mul_(1e4)
    torch.save(model.state_dict(), cwd / "trained.pt")
    out = cwd / "pruned"
    assert main(["prune", "--model", "small_cnn", "--dataset", "digits", "--ratio", "0.5", "--threads", "1",
                 "--repeats", "6", "--checkpoint", str(cwd / "trained.pt"), "--out", str(out)]) == 0
    assert "note: no --checkpoint" not in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["checkpoint"] == str(cwd / "trained.pt")
    pruned = torch.load(out / "model.pt", weights_only=False)
    kept = next(m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)).weight
    assert kept.shape[0] < first.weight.shape[0]
    strong = first.weight[:2]
    assert any(torch.allclose(kept[i], strong[0]) for i in range(kept.shape[0]))  # magnitude kept the strong ones
    assert any(torch.allclose(kept[i], strong[1]) for i in range(kept.shape[0]))


@pytest.mark.parametrize("key, value", [("cpus_per_trial", "1e12"), ("gpus_per_trial", "1e6")])
def test_run_with_a_trial_no_node_can_hold_fails_before_anything_runs(cwd, capsys, key, value):
    space = write(cwd, GOOD + f"search:\n  {key}: {value}\n")
    assert main(["run", str(space)]) == 2
    assert_one_line_error(capsys, f"search.{key} must fit on one Ray node", f"{key}={float(value):g}",
                          f"search.{key}); lower it there")
    assert not (cwd / "runs" / "clitest" / "sweep.yaml").exists()  # nothing of a sweep was written


@pytest.mark.parametrize("value", ["low", "20", "-1"])
def test_a_bad_mirror_niceness_in_the_environment_fails_before_anything_is_written(cwd, capsys, monkeypatch,
                                                                                      value):
    monkeypatch.setenv("SWEEP_MIRROR_NICENESS", value)
    space = write(cwd, GOOD)
    assert main(["run", str(space)]) == 2
    assert_one_line_error(capsys, f"SWEEP_MIRROR_NICENESS must be a whole number from 0 to 19, but got "
                                  f"SWEEP_MIRROR_NICENESS={value!r} (environment)")
    assert not (cwd / "runs" / "clitest" / "trials.parquet").exists()


def test_a_password_in_the_tracking_uri_is_refused_and_never_shown(cwd, capsys):
    space = write(cwd, GOOD)
    assert main(["run", str(space), "--tracking-uri", "http://ann:s3cret@mlflow.example:5000"]) == 2
    err = assert_one_line_error(capsys, "--tracking-uri must not hold a password, but got "
                                "http://ann:***@mlflow.example:5000 (--tracking-uri); give the credentials in "
                                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
    assert "s3cret" not in err
    assert not (cwd / "runs").exists()


@pytest.mark.parametrize("fit_s, trial_s, n, c, wall", [
    (15.5, 18.3, 12, 2, (15.5 - 18.3 / 2) / 12),  # the quickstart: 2 at a time
    (10.0, 10.0, 5, 1, 0.0),                       # one at a time, nothing between trials
    (10.0, 0.0, 0, 2, math.nan),                   # no trial ran
])
def test_the_overhead_sweep_run_prints_is_the_benchmarks_wall_figure_and_a_slots_share(fit_s, trial_s, n, c, wall):
    from sweep.driver import SweepOutcome, overhead_per_trial

    got = SweepOutcome(Path("."), None, [], False, 0.0, fit_s=fit_s, trial_s=trial_s, trials_run=n,
                       concurrency=c).overhead()
    assert got == overhead_per_trial(fit_s, trial_s, n, c)
    if math.isnan(wall):
        assert all(math.isnan(x) for x in got)
    else:
        assert got == pytest.approx((wall, wall * c))


@pytest.mark.parametrize("text, n, want", [
    ("short reason", 140, "short reason"),
    ("first line\nsecond line", 140, "first line"),
    ("rung 0 (before fine-tuning): outside the top 9 of 26 trials (front 2, then hypervolume)", 60,
     "rung 0 (before fine-tuning): outside the top 9 of 26 trials …"),   # at a word
    ("rung 0 (before fine-tuning): outside the top 9 of 26 trials (front 2, then hypervolume)", 72,
     "rung 0 (before fine-tuning): outside the top 9 of 26 trials (front 2 …"),  # no dangling comma
    ("x" * 300, 100, "x" * 100 + " …"),                                  # no word boundary: cut where it must
    ("", 10, ""),
])
def test_a_progress_line_clips_a_reason_at_a_word(text, n, want):
    from sweep.driver import clipped

    assert clipped(text, n) == want


@pytest.mark.parametrize("command", ["run", "resume"])
@pytest.mark.parametrize("address, needles", [
    ("127.0.0.1:{port}", ["--address must be a running Ray cluster's head, but nothing answers at 127.0.0.1:{port} "
                          "(Connection refused) (--address=127.0.0.1:{port}); start the head"]),
    ("127.0.0.1:six", ["--address must be a Ray head's host:port (e.g. 127.0.0.1:6379), ray://host:port or auto, "
                       "but got --address='127.0.0.1:six' (--address)"]),
])
def test_a_ray_address_nothing_answers_at_is_one_line_before_anything_is_written(cwd, capsys, command, address,
                                                                                  needles):
    """`ray.init` would retry such an address for ever (with Ctrl-C held while Ray starts)."""
    port = free_port()
    address = address.format(port=port)
    space = write(cwd, GOOD)
    argv = ["run", str(space), "--address", address] if command == "run" else None
    if command == "resume":  # a sweep folder with nothing finished yet
        from sweep.config import load_config
        from sweep.folder import SweepFolder

        SweepFolder(cwd / "runs" / "clitest").create(load_config(space))
        argv = ["resume", str(cwd / "runs" / "clitest"), "--address", address]
    before = listing(cwd)
    assert main(argv) == 2
    assert_one_line_error(capsys, *(n.format(port=port) for n in needles))
    assert listing(cwd) == before  # not even the folder's lock


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_a_device_this_machine_lacks_is_one_line_before_anything_is_written(cwd, capsys):
    """`measure.device: cuda` without a GPU trained the baseline, then failed with a traceback."""
    space = write(cwd, GOOD + "measure:\n  device: cuda\n")
    assert main(["run", str(space)]) == 2
    assert_one_line_error(capsys, "device must be one this machine has (0 CUDA device(s)), but got "
                                  f"device='cuda' ({space}: measure.device); use cpu here")
    assert listing(cwd) == ["space.yaml"]


@pytest.mark.parametrize("uri, needles", [
    ("bogus://x", ["the sweep's MLflow tracking store must open, but got ", "(tracking URI bogus://x); check the URI "
                   "and that its server is up"]),
    ("http://127.0.0.1:{port}", ["--tracking-uri must be an MLflow server that answers, but nothing answers at "
                                 "http://127.0.0.1:{port} (Connection refused) (--tracking-uri); start the server"]),
])
def test_a_tracking_uri_that_cannot_be_opened_stops_a_new_sweep_before_its_folder_is_written(cwd, capsys, uri,
                                                                                              needles):
    """Before, the sweep folder was left with its sweep.yaml (a second `run` then refused it as an existing
    sweep, and `resume` fell back to the embedded store), a server that did not answer was retried for
    minutes, and the error told the user to move an embedded store that was never made aside."""
    port = free_port()
    space = write(cwd, GOOD)
    assert main(["run", str(space), "--tracking-uri", uri.format(port=port)]) == 2
    line = assert_one_line_error(capsys, *(n.format(port=port) for n in needles))
    assert "mlflow.db" not in line
    assert not (cwd / "runs" / "clitest" / "sweep.yaml").exists()


def test_remove_blocks_this_model_lacks_is_one_line_before_anything_is_written(cwd, capsys):
    """Before, the baseline trained and then every trial failed (the sweep ended 0 ok, exit 0)."""
    space = write(cwd, """\
        name: clitest
        model:
          name: cifar_resnet20
        dataset:
          name: digits
        methods:
          sr_init:
            remove_blocks: [1, 99]
        """)
    assert main(["run", str(space)]) == 2
    assert_one_line_error(capsys, "block index must be in [0, 8], but got 99 (9 residual blocks) "
                                  f"(remove_blocks=[1, 99]) ({space}: methods.sr_init)")
    assert listing(cwd) == ["space.yaml"]


def test_prune_says_when_its_target_is_missed_and_refuses_finetuning_without_data(cwd, capsys):
    import json

    out = cwd / "p"
    assert main(["prune", "--model", "cifar_resnet20", "--input-shape", "1,8,8", "--num-classes", "10",
                 "--target-macs", "100", "--threads", "1", "--repeats", "6", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    warned = [line for line in text.splitlines() if line.startswith("warning: the target was not reached: ")]
    assert len(warned) == 1 and "against --target-macs 100 (" in warned[0], text
    assert json.loads((out / "summary.json").read_text())["targets_missed"] == [warned[0][len("warning: "):]]
    assert not [p for p in cwd.iterdir() if p.name.endswith(".tmp")]  # its scratch folder is gone
    assert main(["prune", "--model", "small_cnn", "--input-shape", "1,8,8", "--num-classes", "3",
                 "--finetune-epochs", "2", "--out", str(cwd / "q")]) == 2
    assert_one_line_error(capsys, "--finetune-epochs must come with --dataset (the data to fine-tune on), but got "
                                  "--finetune-epochs=2 without it (--finetune-epochs)")
    assert not (cwd / "q").exists()


@pytest.mark.parametrize("yaml_text, expected", [
    (GOOD.replace("name: clitest\n", "name: clitest\nseed: abc\n"),
     "seed must be an integer, but got seed='abc' ({space}: seed)"),
    (GOOD.replace("name: digits", "name: nope"), "unknown dataset 'nope' ({space}: dataset.name); valid names: "),
])
def test_top_level_and_dataset_errors_name_the_file_and_key(cwd, capsys, yaml_text, expected):
    space = write(cwd, yaml_text)
    assert main(["run", str(space)]) == 2
    assert_one_line_error(capsys, expected.format(space=space))


def test_a_sweep_whose_every_candidate_broke_its_budget_names_the_closest():
    """No ``ok`` trial and some ``infeasible``: one note naming the candidate nearest the budget (relative
    excess summed over the budgets) and what it broke."""
    import yaml

    from sweep.cli import _none_kept_budget
    from sweep.config import parse_config
    from sweep.results.schema import TrialRecord

    cfg = parse_config({**yaml.safe_load(GOOD),
                        "search": {"constraints": {"max_params": 50_000, "max_macs": 1_000_000}}},
                       source="space.yaml")
    rows = [TrialRecord(trial_id=t, status="infeasible", method="magnitude", params=p, macs=m,
                        error=f"infeasible: params {p:,} > max_params 50,000")
            for t, p, m in (("far", 200_000, 900_000), ("near", 60_000, 1_100_000), ("farther", 90_000, 3_000_000))]
    line = _none_kept_budget(cfg, rows)
    assert line == ("note: no trial kept search.constraints (max_params 50,000, max_macs 1,000,000); the closest, "
                    "trial near (magnitude), broke params 60,000 > max_params 50,000; macs 1,100,000 > max_macs "
                    "1,000,000: loosen them in space.yaml for the next sweep")
