"""A sweep tracked by a real MLflow server: ``clusters/mlflow-server.sh`` on 127.0.0.1 with PostgreSQL
behind it, artefacts proxied by the server and basic authentication on.

The sweep runs in its own process over http, as a user the admin created (not the admin), with the
credentials in its environment only; its parent and child runs and an artefact are then read back from the
server, and clients with a wrong password or none are refused.  Marked ``mlflow_server`` and
``integration``.  Needs PostgreSQL's binaries and MLflow's PostgreSQL driver and auth extra, which
``.ci/run`` installs; elsewhere the test skips, saying what to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import MlflowServer, missing_for_mlflow_server

pytestmark = [pytest.mark.mlflow_server, pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:starlette.middleware.wsgi is deprecated")]

SPACE = """
name: remote
seed: 0
model: {name: small_cnn}
dataset: {name: digits}
baseline: {epochs: 2, lr: 0.05}
finetune: {epochs: 1, lr: 0.01}
search: {trials: 3, concurrency: 2, sampler: random, objectives: [accuracy, latency_ms, params]}
measure: {repeats: 5, warmup: 1, remeasure: front}
methods:
  magnitude:
    ratio: {low: 0.2, high: 0.8}
"""

SWEEPER, SWEEPER_PASSWORD = "sweeper", "a-long-sweeper-password"


@pytest.fixture(scope="module")
def server():
    why = missing_for_mlflow_server()
    if why:
        if os.environ.get("CI"):  # .ci/run installs all of it: a gap there is a failure, not a skip
            pytest.fail(f"the MLflow server test cannot run in CI: {why}")
        pytest.skip(why)
    with MlflowServer(workers=1) as s:
        yield s


def _client(url: str, username: str, password: str):
    """An MlflowClient with these credentials (MLflow reads them from the environment at each request)."""
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = username, password
    return MlflowClient(tracking_uri=url)


@pytest.fixture
def credentials(monkeypatch):
    """Lets a test set MLflow's credential variables in this process; they are unset afterwards."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    yield
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(k, None)


def test_sweep_against_mlflow_server_on_postgres(server, tmp_path, credentials):
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    # the admin creates the user that sweeps: a plain user, who gets MANAGE on what it creates
    _client(server.url, server.username, server.password)
    get_app_client("basic-auth", tracking_uri=server.url).create_user(SWEEPER, SWEEPER_PASSWORD)

    space = tmp_path / "remote.yaml"
    space.write_text(SPACE)
    sweep_dir = tmp_path / "runs" / "remote"
    env = server.client_env(SWEEPER, SWEEPER_PASSWORD)
    env.pop("MLFLOW_TRACKING_URI")  # the URI comes from --tracking-uri, as a user would give it
    env.pop("RAY_ADDRESS", None)  # the embedded local Ray, whatever this shell points at
    env["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    t0 = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from sweep.cli import main; sys.exit(main(sys.argv[1:]))",
         "run", str(space), "--out", str(sweep_dir), "--reports", str(tmp_path / "reports"),
         "--tracking-uri", server.url],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    sweep_s = time.monotonic() - t0
    assert run.returncode == 0, f"sweep failed ({sweep_s:.0f} s):\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    assert "warning: MLflow" not in run.stdout + run.stderr  # every write to the server went through
    assert not (sweep_dir / "mlflow.db").exists()  # tracked by the server, not the embedded store

    df = pd.read_parquet(sweep_dir / "trials.parquet")
    trials = df[df["trial_id"] != "baseline"]
    assert len(trials) == 3 and set(trials["status"]) == {"ok"}

    # read back from the server, as the user that ran the sweep
    client = _client(server.url, SWEEPER, SWEEPER_PASSWORD)
    exp = client.get_experiment_by_name("remote")
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_id == df.loc[df["trial_id"] == "baseline", "mlflow_run_id"].iloc[0]
    assert {c.data.tags["sweep.trial_id"] for c in children} == set(trials["trial_id"])
    assert {c.info.run_id for c in children} == set(trials["mlflow_run_id"])
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"accuracy", "test_accuracy", "latency_ms", "params", "macs"} <= set(c.data.metrics)
        row = trials[trials["trial_id"] == c.data.tags["sweep.trial_id"]].iloc[0]
        assert c.data.metrics["accuracy"] == pytest.approx(row["accuracy"])
        assert c.data.metrics["params"] == row["params"]
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "hypervolume")] == [1, 2, 3]

    # an artefact of the parent, downloaded through the server, is the front the sweep computed; on the
    # server's side it sits in the artefact folder behind the proxy
    got = Path(client.download_artifacts(parent.info.run_id, "front/front.csv", str(tmp_path)))
    front = pd.read_csv(got)
    assert set(front["trial_id"]) == set(df.loc[df["on_front"], "trial_id"])
    assert list((server.data / "artifacts").rglob("front/front.csv"))

    # verified credentials are cached per server worker (the default TTL), so requests skip the password
    # hash; a wrong password right after the right one is still refused below
    assert "auth_cache_ttl_seconds = 60" in (server.data / "basic_auth.ini").read_text()

    # refused: a wrong password, and no credentials at all
    with pytest.raises(MlflowException, match="401"):
        _client(server.url, SWEEPER, "not-the-password-at-all").search_runs([exp.experiment_id])
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(k)
    from mlflow.tracking import MlflowClient

    with pytest.raises(MlflowException, match="401"):
        MlflowClient(tracking_uri=server.url).get_experiment(exp.experiment_id)

    # no password ever reaches the script's or the server's output
    log = server.log()
    assert "mlflow-server: ready:" in log
    for secret in (server.password, SWEEPER_PASSWORD, *(p.read_text().strip() for p in
                                                      (server.data / "secrets").iterdir() if p.name != "pgpass")):
        assert secret not in log and secret not in run.stdout + run.stderr
