"""A real local Ray sweep on digits, end to end: Parquet, MLflow runs, report, select, resume; the ways a
sweep stops early (Ctrl-C, SIGTERM, the time budget) and how each closes the books.

Marked ``integration``; kept small (a few trials of a tiny CNN) so that it runs in CI in about a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SPACE = """
name: {name}
model: {{name: small_cnn}}
dataset: {{name: digits}}
baseline: {{epochs: 4, lr: 0.05}}
finetune: {{epochs: {ft}, lr: 0.01, checkpoint_every_s: 0}}
search: {{trials: {trials}, concurrency: 2, sampler: random, objectives: [accuracy, latency_ms, params]{extra}}}
measure: {{repeats: 10, warmup: 2}}
methods:
  magnitude:
    ratio: {{low: 0.2, high: 0.8}}
"""


def _write_space(tmp_path: Path, name: str, trials: int, ft: int = 1, extra: str = "") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(SPACE.format(name=name, trials=trials, ft=ft, extra=extra))
    return p


def _one_at_a_time(space: Path) -> Path:
    """The space, one trial at a time and without the latency objective: with a seeded random sampler the same
    trials stop at every run (latency timed on a loaded machine would decide who stops)."""
    space.write_text(space.read_text().replace("concurrency: 2", "concurrency: 1").replace(
        "objectives: [accuracy, latency_ms, params]", "objectives: [accuracy, params]"))
    return space


def _runs(sweep_dir: Path, name: str):
    """(parent run, trial runs) of a sweep's embedded MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1
    return parents[0], [r for r in runs if r.data.tags.get("sweep.role") == "trial"]


def _no_ray_left() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:
        pass


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    _no_ray_left()  # each sweep here starts its own embedded Ray, whatever an earlier test left running
    yield
    _no_ray_left()


def test_sweep_end_to_end(tmp_path, monkeypatch, capsys):
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from sweep.cli import main

    monkeypatch.chdir(tmp_path)
    space = _write_space(tmp_path, "itest", trials=3)
    # the embedded Ray's temp folder lands in a folder of this test's own (short: Ray's unix socket paths),
    # where nothing else on the machine puts one
    own_tmp, shared_tmp = Path(tempfile.mkdtemp(prefix="swe", dir="/tmp")), tempfile.tempdir
    # torch's compile cache takes its folder from the temp folder the first time it is needed and keeps it: not
    # this one, which goes at the end of the run (the export in `select` below would make it again)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    tempfile.tempdir = str(own_tmp)
    try:
        assert main(["run", str(space)]) == 0
        # the embedded Ray's session folder went with it
        assert list(own_tmp.glob("sweep-ray-*")) == []
    finally:
        tempfile.tempdir = shared_tmp
        shutil.rmtree(own_tmp, ignore_errors=True)
    out = capsys.readouterr().out
    assert "Pareto front" in out and "[  3/3]" in out
    running = [int(m) for m in re.findall(r"\] running (\d+) ·", out)]
    assert running and max(running) <= 2  # never more in flight than the concurrency (2)

    sweep_dir = tmp_path / "runs" / "itest"
    df = pd.read_parquet(sweep_dir / "trials.parquet")
    assert len(df) == 4 and df["trial_id"].is_unique
    assert set(df["status"]) == {"ok"}
    trials = df[df["trial_id"] != "baseline"]
    assert trials["knob.magnitude.ratio"].between(0.2, 0.8).all()
    assert (trials["params"] < df.loc[df["trial_id"] == "baseline", "params"].iloc[0]).all()
    assert df["on_front"].any()
    assert df.loc[df["status"] == "ok", "latency_alone"].all()  # every ok trial re-measured alone (default)
    # ratios against the baseline's re-measured figure: the baseline's own is 1
    base_lat = df.loc[df["trial_id"] == "baseline", "latency_ms"].iloc[0]
    assert df["latency_ratio"].to_numpy() == pytest.approx((df["latency_ms"] / base_lat).to_numpy())
    assert df.loc[df["trial_id"] == "baseline", "latency_ratio"].iloc[0] == 1.0
    # the sweep's hypervolume divides by that same figure (the metadata's baseline)
    from sweep.results.store import TrialStore

    assert TrialStore(sweep_dir).records()[1]["baseline"]["latency_ms"] == base_lat
    for p in trials["model_path"]:
        assert (sweep_dir / p).is_file()

    # MLflow: one parent, one nested child per trial holding knobs and metrics
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("itest")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    pid = parents[0].info.run_id
    assert all(c.data.tags["mlflow.parentRunId"] == pid for c in children)
    # the parent's final figures: the hypervolume the report shows, and the baseline latency it divides by
    from sweep.pareto import records_hypervolume

    records, meta = TrialStore(sweep_dir).records()
    final = parents[0].data.metrics
    assert final["final_baseline_latency_ms"] == pytest.approx(base_lat)
    assert final["final_hypervolume"] == pytest.approx(records_hypervolume(records, meta["objectives"],
                                                                           meta["baseline"]))
    assert all("magnitude.ratio" in c.data.params or "ratio" in c.data.params for c in children)
    assert all("accuracy" in c.data.metrics and "latency_ms" in c.data.metrics for c in children)
    assert set(trials["mlflow_run_id"]) == {c.info.run_id for c in children}
    # MLflow shows the latency the table holds: re-measured alone, and tagged so
    table_lat = dict(zip(trials["mlflow_run_id"], trials["latency_ms"]))
    assert all(c.data.metrics["latency_ms"] == pytest.approx(table_lat[c.info.run_id]) for c in children)
    assert all(c.data.tags["sweep.latency"] == "re-measured alone" for c in children)
    hv = client.get_metric_history(pid, "hypervolume")
    assert len(hv) == 3 and [m.step for m in hv] == [1, 2, 3]
    arts = {a.path for a in client.list_artifacts(pid, "front")}
    assert {"front/front.csv", "front/front.parquet"} <= arts
    assert parents[0].info.status == "FINISHED"

    report = tmp_path / "reports" / "itest"
    for f in ("index.html", "accuracy_vs_latency.png", "accuracy_vs_params.png", "accuracy_vs_macs.png",
              "hypervolume.png", "summary.md"):
        assert (report / f).stat().st_size > 0

    # select: inside a params budget, exported, loads and runs
    limit = int(trials["params"].max())
    assert main(["select", str(sweep_dir), "--max-params", str(limit)]) == 0
    sel = json.loads((sweep_dir / "selected" / "selection.json").read_text())
    assert sel["chosen"]["params"] <= limit
    inside = df[(df["status"] == "ok") & (df["params"] <= limit)]
    assert sel["chosen"]["accuracy"] == inside["accuracy"].max()
    import torch

    ep = torch.export.load(str(sweep_dir / "selected" / "model.pt2"))
    x = torch.randn(1, 1, 8, 8)
    y = ep.module()(x)
    assert y.shape == (1, 10)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(sweep_dir / "selected" / "model.onnx"))
    # the graph the latency was timed on: measure.export_onnx's names and fixed shape
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["output"]
    assert sess.get_inputs()[0].shape == [1, 1, 8, 8]
    y2 = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert abs(y2 - y.detach().numpy()).max() < 1e-4
    assert sel["registry"].get("alias") == "selected"
    mv = client.get_model_version_by_alias("itest-selected", "selected")
    assert int(mv.version) >= 1
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)  # as select left it
    pins = Path(mlflow.pyfunc.get_model_dependencies("models:/itest-selected@selected")).read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in pins and any(p.startswith("mlflow") for p in pins)

    # an impossible budget: exit 2, one line naming the closest trial
    capsys.readouterr()
    assert main(["select", str(sweep_dir), "--max-params", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "closest: trial" in err[0]

    # inside the budget by the sweep's latencies, outside once re-measured (a busier machine): one line naming
    # the trial that came closest at its re-measured latency, nothing written
    import dataclasses

    import sweep.measure

    real, real_many = sweep.measure.measure_latency, sweep.measure.compare_latency
    def slow(*a, **k):
        return dataclasses.replace(real(*a, **k), median_ms=1000.0 + 0.001 * len(a[0].state_dict()))

    def slow_many(models, *a, **k):  # several candidates are re-measured side by side
        return [dataclasses.replace(lat, median_ms=1000.0 + 0.001 * len(m.state_dict()))
                for m, lat in zip(models, real_many(models, *a, **k))]

    monkeypatch.setattr(sweep.measure, "measure_latency", slow)
    monkeypatch.setattr(sweep.measure, "compare_latency", slow_many)
    before = (sweep_dir / "selected" / "selection.json").read_bytes()
    capsys.readouterr()
    budget = repr(float(df.loc[df["status"] == "ok", "latency_ms"].median()))
    assert main(["select", str(sweep_dir), "--max-latency-ms", budget, "--no-register"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "once its latency is re-measured alone" in err[0], err
    inside = ((df["status"] == "ok") & (df["latency_ms"] <= float(budget))).sum()  # the baseline's row too
    assert inside >= 1 and f"({inside} tried)" in err[0], err
    assert "ms re-measured alone (" in err[0] and "ms in the sweep)" in err[0] and "latency 1000.0" in err[0], err
    assert f"breaks latency_ms 1000 > {float(budget):.4g}" in err[0], err
    assert (sweep_dir / "selected" / "selection.json").read_bytes() == before
    monkeypatch.setattr(sweep.measure, "measure_latency", real)
    monkeypatch.setattr(sweep.measure, "compare_latency", real_many)

    # the report regenerates from Parquet alone
    (report / "index.html").unlink()
    assert main(["report", str(sweep_dir)]) == 0
    assert (report / "index.html").is_file()

    # a copy of the folder (a backup, rsync to another machine) selects into its own MLflow store and
    # artifacts; the original's store keeps what it had
    copy = tmp_path / "elsewhere" / "itest copy"
    shutil.copytree(sweep_dir, copy)
    versions = len(client.search_model_versions("name = 'itest-selected'"))
    assert main(["select", str(copy), "--max-params", str(limit)]) == 0
    assert len(client.search_model_versions("name = 'itest-selected'")) == versions
    mine = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    mv = mine.get_model_version_by_alias("itest-selected", "selected")
    assert int(mv.version) == versions + 1
    assert mine.get_model_version_download_uri("itest-selected", mv.version).startswith((copy / "mlartifacts").as_uri())


def _stop_mid_sweep(cmd: list[str], cwd: Path, sweep_dir: Path, sig: int, finished_before: int) -> tuple[int, str]:
    """Run ``sweep <cmd>`` until one more trial than ``finished_before`` has finished while another one runs
    (the heartbeat says so), then send ``sig``; the exit code and output."""
    env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "sweep.cli", *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if (_finished_so_far(sweep_dir) > finished_before
                    and json.loads((sweep_dir / "state.json").read_text() or "{}").get("running")):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"`sweep {cmd[0]}` never had a new finished trial and a running one")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out


def _books_closed_after_stop(sweep_dir: Path, code: int, out: str, want: int, reason: str,
                             earlier: tuple[str, ...] = ()) -> set[str]:
    """What a Ctrl-C or SIGTERM must leave: its exit code, the line saying how to go on, the trials that were
    running as `stopped` rows with the reason and their MLflow runs KILLED, the parent run KILLED; returns
    the finished trials' ids.  ``earlier``: reasons of an earlier stop that may remain on trials this run had
    not started again yet (on a loaded machine a re-run may still wait for its worker when the signal comes)."""
    import pandas as pd

    assert code == want, out
    assert f"continue with `sweep resume {sweep_dir.resolve()}`" in out
    table = pd.read_parquet(sweep_dir / "trials.parquet")
    stopped = table[table["status"] == "stopped"]
    assert len(stopped) >= 1 and reason in set(stopped["error"]) and set(stopped["error"]) <= {reason, *earlier}
    parent, children = _runs(sweep_dir, "itresume")
    assert parent.info.status == "KILLED" and parent.data.tags["sweep.ended"] == reason
    assert not [r for r in children if r.info.status == "RUNNING"]
    by_trial = {r.data.tags["sweep.trial_id"]: r for r in children}
    assert all(by_trial[t].info.status == "KILLED" and by_trial[t].data.tags["sweep.stopped"] == why
               for t, why in zip(stopped["trial_id"], stopped["error"]) if t in by_trial)
    return set(table.loc[table["status"] == "ok", "trial_id"]) - {"baseline"}


def test_ctrl_c_then_sigterm_then_resume_loses_and_duplicates_nothing(tmp_path):
    """Ctrl-C mid-sweep, `sweep resume`, SIGTERM (a cluster scheduler's stop) mid-resume, the folder moved,
    `sweep resume`: each stop closes the books; in the end every trial once, none lost or run again, no run left
    RUNNING, and every run of the moved folder's MLflow store keeps its artefacts in the folder."""
    import pandas as pd

    trials = 5  # 2 at a time: a finished trial and a running one in the run and in the first resume
    space = _write_space(tmp_path, "itresume", trials=trials, ft=30)
    sweep_dir = tmp_path / "runs" / "itresume"
    parquet = sweep_dir / "trials.parquet"

    code, out = _stop_mid_sweep(["run", str(space)], tmp_path, sweep_dir, signal.SIGINT, 0)
    finished = _books_closed_after_stop(sweep_dir, code, out, 130, "interrupted (Ctrl-C)")
    assert 1 <= len(finished) < trials
    code, out = _stop_mid_sweep(["resume", str(sweep_dir)], tmp_path, sweep_dir, signal.SIGTERM, len(finished))
    later = _books_closed_after_stop(sweep_dir, code, out, 143, "terminated (SIGTERM)", ("interrupted (Ctrl-C)",))
    assert finished < later and len(later) < trials
    before = pd.read_parquet(parquet)
    old_place, sweep_dir = sweep_dir, tmp_path / "moved 50%" / "itresume"
    sweep_dir.parent.mkdir()
    shutil.move(old_place, sweep_dir)
    parquet = sweep_dir / "trials.parquet"

    env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"}
    res = subprocess.run([sys.executable, "-m", "sweep.cli", "resume", str(sweep_dir)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    after = pd.read_parquet(parquet)
    assert after["trial_id"].is_unique
    assert (after["status"] == "ok").sum() == trials + 1  # and the baseline; no stopped row left
    assert later <= set(after["trial_id"])
    kept = after.set_index("trial_id").loc[sorted(later)]
    old = before.set_index("trial_id").loc[sorted(later)]
    assert (kept["ended_at"] == old["ended_at"]).all()  # finished trials were not run again
    assert sorted(after["trial_number"].dropna().astype(int)) == list(range(trials))
    assert not (sweep_dir / "progress").exists()  # each cut trial went on from its state, then it was removed

    parent, children = _runs(sweep_dir, "itresume")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.ended"] == "finished"
    assert not [r for r in children if r.info.status == "RUNNING"]
    current = [r for r in children if r.data.tags.get("sweep.superseded") != "true"]
    assert len(current) == trials and all(r.info.status == "FINISHED" for r in current)
    assert all(r.info.artifact_uri.startswith((sweep_dir / "mlartifacts").as_uri() + "/") for r in [parent, *children])
    assert not old_place.exists()  # nothing written where it used to be


def test_time_budget_ends_the_sweep_normally_with_the_trials_it_has(tmp_path, monkeypatch, capsys):
    """Trials far longer than the budget: cut when it runs out, recorded as stopped, runs KILLED; the sweep
    still re-measures, reports and finishes its parent run; exit code 0."""
    import pandas as pd

    from sweep.cli import main
    from sweep.status import status_lines

    monkeypatch.chdir(tmp_path)
    space = _write_space(tmp_path, "itbudget", trials=4, ft=5000, extra=", time_budget_s: 30")
    t0 = time.time()
    assert main(["run", str(space)]) == 0
    assert time.time() - t0 < 180
    sweep_dir = tmp_path / "runs" / "itbudget"
    out = capsys.readouterr().out
    df = pd.read_parquet(sweep_dir / "trials.parquet")
    trials = df[df["trial_id"] != "baseline"]  # those running when the budget ran out (concurrency 2)
    assert f"time budget of 30 s ran out: stopping the {len(trials)} running trial(s)" in out
    assert (f"time budget of 30 s ran out: 0 of 4 trials finished; to run the rest, raise the budget in "
            f"{sweep_dir / 'sweep.yaml'} and `sweep resume {sweep_dir}`") in out
    assert 1 <= len(trials) <= 2 and set(trials["status"]) == {"stopped"}
    assert set(trials["error"]) == {"time budget of 30 s ran out"}
    assert set(trials["trial_number"].astype(int)) <= {0, 1}
    parent, children = _runs(sweep_dir, "itbudget")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.ended"] == "time budget of 30 s ran out"
    assert {r.info.status for r in children} == {"KILLED"}
    assert (tmp_path / "reports" / "itbudget" / "index.html").is_file()
    facts = dict(line.split(": ", 1) for line in status_lines(sweep_dir))
    assert facts["remaining"] == "4 of 4 trials" and facts["running"] == "0"
    assert facts["last run ended"] == "time budget of 30 s ran out"


def test_epoch_budget_starts_no_trial_once_spent_and_resume_says_so(tmp_path, monkeypatch, capsys):
    """search.epoch_budget: one trial at a time, 2 fine-tune epochs each, a budget of 3: the second trial
    brings the finished trials' epochs to 4, so no third starts, and the sweep ends normally (re-measured,
    reported, exit 0) with 2 of 6 trials; `sweep resume` runs none and says which budget to raise."""
    import pandas as pd

    from sweep.cli import main
    from sweep.status import status_lines

    monkeypatch.chdir(tmp_path)
    space = _write_space(tmp_path, "itepochs", trials=6, ft=2, extra=", epoch_budget: 3")
    space.write_text(space.read_text().replace("concurrency: 2", "concurrency: 1"))
    assert main(["run", str(space)]) == 0
    sweep_dir = tmp_path / "runs" / "itepochs"
    out = capsys.readouterr().out
    reason = "epoch budget of 3 fine-tune epochs spent"
    assert f"{reason} (4 by the finished trials): no trial starts any more; the 0 running finish" in out
    assert (f"{reason}: 2 of 6 trials finished; to run the rest, raise the budget in {sweep_dir / 'sweep.yaml'} "
            f"and `sweep resume {sweep_dir}`") in out
    trials = pd.read_parquet(sweep_dir / "trials.parquet").query("trial_id != 'baseline'")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"} and set(trials["finetune_epochs"]) == {2}
    parent, children = _runs(sweep_dir, "itepochs")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.ended"] == reason
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert (tmp_path / "reports" / "itepochs" / "index.html").is_file()
    facts = dict(line.split(": ", 1) for line in status_lines(sweep_dir))
    assert facts["remaining"] == "4 of 6 trials" and facts["last run ended"] == reason
    assert facts["fine-tune epochs"] == "4 spent of search.epoch_budget=3"

    assert main(["resume", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert (f"{reason}: earlier runs of this sweep spent 4 fine-tune epochs on trials; to run the 4 trial(s) "
            f"left, raise search.epoch_budget in {sweep_dir / 'sweep.yaml'} and resume") in out
    assert len(pd.read_parquet(sweep_dir / "trials.parquet")) == 3  # the baseline and the same 2 trials


def _finished_so_far(sweep_dir: Path) -> int:
    """Finished trials of a running sweep: trials.parquet and the journal it folds in every few seconds."""
    try:
        return len(_finished_trials(sweep_dir))
    except Exception:  # not written yet, or a part being renamed into place right now
        return 0


def _kill_sweep(proc: subprocess.Popen, tmp_root: Path) -> None:
    """SIGKILL the driver's process group, then every Ray process of this test's embedded cluster (found by
    its private temp folder), by pid: what a lost machine does to a sweep, and nothing else is touched."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    deadline = time.time() + 30
    while time.time() < deadline:
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if str(tmp_root).encode() in (p / "cmdline").read_bytes():
                        pids.append(int(p.name))
                except OSError:
                    continue
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def _finished_trials(sweep_dir: Path) -> list:
    from sweep.results.store import TrialStore

    if not (sweep_dir / "trials.parquet").is_file():
        return []
    return [r for r in TrialStore(sweep_dir).records()[0] if not r.is_baseline and r.status in ("ok", "failed")]


def test_sigkill_twice_then_resume_gives_exactly_the_trials_asked(tmp_path):
    """The driver and its Ray processes SIGKILLed mid-trial, resumed, killed again, resumed: exactly
    `trials` finished rows, no seed, trial number or configuration twice, no MLflow run left RUNNING."""
    trials = 5
    space = _write_space(tmp_path, "itkill", trials=trials, ft=25)
    sweep_dir = tmp_path / "runs" / "itkill"
    # the embedded Ray's temp folder lands here (TMPDIR), so its processes are known to be ours; short,
    # because Ray's unix socket paths must stay under ~107 characters
    ray_tmp = Path(tempfile.mkdtemp(prefix="swk", dir="/tmp"))
    env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING", "TMPDIR": str(ray_tmp)}
    try:
        for i, cmd in enumerate((["run", str(space)], ["resume", str(sweep_dir)])):
            before = len(_finished_trials(sweep_dir))
            with open(tmp_path / f"out{i}.txt", "w") as out:
                proc = subprocess.Popen([sys.executable, "-m", "sweep.cli", *cmd], cwd=tmp_path, env=env,
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deadline = time.time() + 300
                while (time.time() < deadline and proc.poll() is None
                       and len(_finished_trials(sweep_dir)) < before + 1):
                    time.sleep(0.3)
                assert len(_finished_trials(sweep_dir)) >= before + 1, (tmp_path / f"out{i}.txt").read_text()
            finally:
                _kill_sweep(proc, ray_tmp)
        res = subprocess.run([sys.executable, "-m", "sweep.cli", "resume", str(sweep_dir)], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert res.returncode == 0, res.stdout + res.stderr
    done = _finished_trials(sweep_dir)
    assert len(done) == trials
    from sweep.results.store import TrialStore

    records = TrialStore(sweep_dir).records()[0]
    assert not [r for r in records if r.status == "stopped"]
    assert len({r.seed for r in done}) == trials and len({r.trial_number for r in done}) == trials
    assert len({(r.method, tuple(sorted(r.knobs.items()))) for r in done}) == trials
    assert f"[  {trials + 1}/" not in res.stdout  # the progress never shows more done than asked
    # the trials killed mid-fine-tune ran again first, with their numbers and seeds, from their saved epochs;
    # once every trial has its row, no saved state is left
    assert not (sweep_dir / "progress").exists()
    parent, children = _runs(sweep_dir, "itkill")
    assert parent.info.status == "FINISHED"
    assert not [r for r in children if r.info.status == "RUNNING"]


def test_successive_halving_and_budgets_steer_a_real_sweep(tmp_path, monkeypatch, capsys):
    """search.scheduler (multi-objective successive halving, rung 0 after adaptive BN) and search.constraints on
    a real Ray sweep: candidates over the params budget are `infeasible` and never fine-tuned; some are
    `stopped_early` at a rung with the quality they had there; only full `ok` trials reach the front.  One
    trial at a time, a seeded random sampler and no latency objective: the same trials stop at every run."""
    import pandas as pd

    from sweep.cli import main
    from sweep.folder import SweepFolder

    # eta 3: a rung keeps floor(n/3) + 1 of its n arrivals, so from the second arrival on a trial must rank
    # near the top to go on; 10 trials leave enough feasible ones for a stop at every run
    extra = (", scheduler: {type: mo_asha, reduction_factor: 3, min_epochs: 1, rung0: true}, "
             "constraints: {max_params: 20000}")
    space = _one_at_a_time(_write_space(tmp_path, "ithalving", trials=10, ft=4, extra=extra))
    monkeypatch.chdir(tmp_path)
    import sweep.driver as driver

    searchers = []  # the live searcher, to read what Optuna was told

    def keep(base, budgets, make=driver._sweep_search, **kw):
        cls = make(base, budgets, **kw)

        class Kept(cls):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                searchers.append(self)
        return Kept

    monkeypatch.setattr(driver, "_sweep_search", keep)
    assert main(["run", str(space), "--reports", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    df = pd.read_parquet(tmp_path / "runs" / "ithalving" / "trials.parquet")
    trials = df[df["trial_id"] != "baseline"]
    assert len(trials) == 10 and set(trials["status"]) <= {"ok", "stopped_early", "infeasible"}

    infeasible = trials[trials["status"] == "infeasible"]
    assert len(infeasible) >= 1 and (infeasible["params"] > 20000).all()
    assert (infeasible["finetune_epochs"] == 0).all() and infeasible["model_path"].isna().all()
    assert infeasible["error"].str.startswith("infeasible: params ").all()
    feasible = trials[trials["status"] != "infeasible"]
    assert (feasible["params"] <= 20000).all()

    early = trials[trials["status"] == "stopped_early"]
    assert len(early) >= 1 and early["error"].str.startswith("rung ").all(), out
    assert set(early["finetune_epochs"]) <= {0, 1, 3} and early["accuracy"].notna().all()
    assert not early["on_front"].any() and not infeasible["on_front"].any()
    ok = trials[trials["status"] == "ok"]
    assert len(ok) >= 1 and (ok["finetune_epochs"] == 4).all()
    # each row holds the quality it reported at every rung it reached (what a resumed sweep replays): an ok
    # trial rungs 0, 1 and 3; a stopped one those up to its own, its quality there the last
    assert all(list(json.loads(q)) == ["0", "1", "3"] for q in ok["rung_quality"])
    for _, r in early.iterrows():
        reached = json.loads(r["rung_quality"])
        assert list(reached) == [str(e) for e in (0, 1, 3) if e <= r["finetune_epochs"]]
        assert reached[str(r["finetune_epochs"])] == r["accuracy"]
    assert infeasible["rung_quality"].isna().all()
    assert "stopped_early: rung" in out and "infeasible: params" in out and "infeasible: infeasible" not in out
    # Optuna was told the stopped ones as PRUNED (no values), the others with their figures
    states = [t.state.name for t in searchers[0]._ot_study.trials]
    assert states.count("PRUNED") == len(early) and states.count("COMPLETE") == len(ok) + len(infeasible)
    # ... and every trial's budget as a constraint of its own, over it (> 0) exactly for the infeasible ones
    told = [t.constraints for t in searchers[0]._ot_study.trials]
    assert all(set(c) == {"max_params"} for c in told) and sum(c["max_params"] > 0 for c in told) == len(infeasible)
    assert (f"sweep ithalving: {len(ok)} ok, 0 failed, {len(early)} stopped early, {len(infeasible)} infeasible "
            "trial(s) in ") in out
    status = "\n".join(__import__("sweep.status", fromlist=["x"]).status_lines(SweepFolder(tmp_path / "runs" /
                                                                                           "ithalving").path))
    assert f"{len(early)} stopped early" in status and f"{len(infeasible)} infeasible" in status
    assert (f"budgets: max_params 20,000 (search.constraints; {len(infeasible)} candidate(s) over them, not "
            "fine-tuned)") in status
    # the budget travels with the results: the report names it, and `sweep select` keeps to it beside its flags
    import pyarrow.parquet as pq

    assert json.loads(pq.read_schema(tmp_path / "runs" / "ithalving" / "trials.parquet").metadata[b"sweep"])[
        "constraints"] == {"max_params": 20000}
    summary = (tmp_path / "reports" / "ithalving" / "summary.md").read_text()
    assert f"max_params 20,000: {len(infeasible)} candidate(s) broke a cost budget" in summary
    assert "(the sweep's search.constraints apply too)" in out
    assert main(["select", str(tmp_path / "runs" / "ithalving"), "--min-accuracy", "0.01", "--no-export",
                 "--no-register"]) == 0
    chosen = capsys.readouterr().out
    assert "budget: max-params 20,000 (search.constraints), min-accuracy 0.01 (flag); " in chosen
    picked = chosen.split("chosen: trial ")[1].split(" ")[0]
    assert picked in set(ok["trial_id"]) and int(ok.set_index("trial_id").loc[picked, "params"]) <= 20000


@pytest.mark.parametrize("settings,rounds", [("keep: asha, promote: true", False),
                                             ("keep: promotable, promote: true, promote_every: 4", True)])
def test_trials_stopped_early_are_promoted_once_the_rungs_have_grown(tmp_path, monkeypatch, capsys, settings, rounds):
    """search.scheduler.promote on a real Ray sweep: once every candidate has run (or, with promote_every, after
    each round of that many), the trials stopped at a rung that the grown rung ranks in its top ⌊n/η⌋ run again
    from there with their numbers and seeds, and their rows replace the stopped ones: as many rows as trials, no
    number or seed twice, no MLflow run left RUNNING, no fine-tune state left.  One trial at a time and a seeded
    random sampler: the same trials stop at every run."""
    import pandas as pd

    from sweep.cli import main

    extra = f", scheduler: {{type: mo_asha, reduction_factor: 3, min_epochs: 1, rung0: true, {settings}}}"
    space = _one_at_a_time(_write_space(tmp_path, "itpromote", trials=10, ft=4, extra=extra))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(space), "--reports", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    promoted = [line for line in out.splitlines() if "promotion: " in line]
    assert promoted, out
    numbers = [int(n) for line in promoted for n in line.split("(trials ")[1].split(")")[0].split(", ")]
    sweep_dir = tmp_path / "runs" / "itpromote"
    trials = pd.read_parquet(sweep_dir / "trials.parquet").query("trial_id != 'baseline'")
    assert len(trials) == 10 and trials["trial_number"].is_unique and trials["seed"].is_unique
    assert set(trials["status"]) <= {"ok", "stopped_early"} and (trials["status"] == "ok").any()
    again = trials.set_index("trial_number").loc[numbers]
    assert not again["error"].fillna("").str.startswith("promoted").any()  # each ended again, ok or at a later rung
    assert (again["status"] == "ok").any() or (again["finetune_epochs"] >= 1).all()
    last_new = trials.loc[trials["trial_number"] == trials["trial_number"].max(), "started_at"].iloc[0]
    # in rounds, a promoted trial ran again before the last new candidate started; at the end, all after it
    assert (again["started_at"].min() < last_new) == rounds, (again["started_at"].min(), last_new)
    assert not (sweep_dir / "progress").exists()
    parent, children = _runs(sweep_dir, "itpromote")
    assert parent.info.status == "FINISHED" and not [r for r in children if r.info.status == "RUNNING"]
    superseded = [r for r in children if r.data.tags.get("sweep.superseded")]
    assert len(superseded) == len(numbers)  # the stopped runs of the promoted trials, kept and marked


def test_a_resumed_sweep_promotes_the_stops_of_an_earlier_run(tmp_path, monkeypatch, capsys):
    """A sweep run without promote stops trials for good; resumed with promote and one more candidate, its
    scheduler replays every rung result the earlier rows hold (rung_quality) and promotes the earlier run's
    stops that the grown rungs rank in their top: they run again with their numbers and seeds (from the start:
    no state was kept for them), and the table still holds one row per trial."""
    import pandas as pd
    import yaml

    from sweep.cli import main

    extra = ", scheduler: {type: mo_asha, reduction_factor: 3, min_epochs: 1, rung0: true, keep: asha}"
    space = _one_at_a_time(_write_space(tmp_path, "itrepromote", trials=8, ft=4, extra=extra))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(space), "--reports", str(tmp_path / "reports")]) == 0
    sweep_dir = tmp_path / "runs" / "itrepromote"
    first = pd.read_parquet(sweep_dir / "trials.parquet").query("trial_id != 'baseline'")
    assert "promotion: " not in capsys.readouterr().out and (first["status"] == "stopped_early").any()
    yaml_path = sweep_dir / "sweep.yaml"
    settings = yaml.safe_load(yaml_path.read_text())
    settings["search"]["trials"] = 9
    settings["search"]["scheduler"]["promote"] = True
    yaml_path.write_text(yaml.safe_dump(settings))
    assert main(["resume", str(sweep_dir), "--reports", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    promoted = [line for line in out.splitlines() if "promotion: " in line]
    numbers = [int(n) for line in promoted for n in line.split("(trials ")[1].split(")")[0].split(", ")]
    earlier = set(first.loc[first["status"] == "stopped_early", "trial_number"].astype(int))
    assert numbers and set(numbers) & earlier, out
    trials = pd.read_parquet(sweep_dir / "trials.parquet").query("trial_id != 'baseline'")
    assert len(trials) == 9 and trials["trial_number"].is_unique and trials["seed"].is_unique
    again = trials.set_index("trial_number").loc[numbers]
    assert not again["error"].fillna("").str.startswith("promoted").any()
    assert (again["seed"] == first.set_index("trial_number")["seed"].reindex(numbers)).dropna().all()
    parent, children = _runs(sweep_dir, "itrepromote")
    assert not [r for r in children if r.info.status == "RUNNING"]
