"""The MLflow mirror against a temporary sqlite store: parent + nested children, stale runs, a tracker
that never raises."""

from __future__ import annotations

import logging

import pytest

EXPERIMENT = "sweep-test"


@pytest.fixture(scope="module", autouse=True)
def _quiet_mlflow():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
        mp.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        mp.setenv("GIT_PYTHON_REFRESH", "quiet")
        yield


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def uri(store_dir):
    return f"sqlite:///{store_dir}/mlflow.db"


@pytest.fixture(scope="module")
def sink(uri, store_dir):
    """One sqlite store for the module (creating it runs MLflow's migrations, which take seconds)."""
    from sweep.results.mlflow_sink import MlflowSink

    return MlflowSink(uri, EXPERIMENT, artifact_dir=store_dir / "artifacts")


def status(sink, run_id: str) -> str:
    return sink.client.get_run(run_id).info.status


def test_parent_and_children(sink):
    from sweep.results.mlflow_sink import PARENT_TAG

    parent = sink.start_parent("demo", {"trials": 12, "sampler": "tpe", "skip": None}, tags={"sweep.name": "demo"})
    c1 = sink.start_child(parent, "magnitude-t1", {"method": "magnitude", "ratio": 0.3})
    c2 = sink.start_child(parent, "magnitude-t2", {"method": "magnitude", "ratio": 0.7}, tags={"extra": "x"})

    p = sink.client.get_run(parent)
    assert p.data.params == {"trials": "12", "sampler": "tpe"}  # None is not logged
    assert p.data.tags["sweep.role"] == "parent" and p.data.tags["sweep.name"] == "demo"
    assert PARENT_TAG not in p.data.tags
    for cid, ratio in ((c1, "0.3"), (c2, "0.7")):
        r = sink.client.get_run(cid)
        assert r.data.tags[PARENT_TAG] == parent
        assert r.data.tags["sweep.role"] == "trial"
        assert r.data.params == {"method": "magnitude", "ratio": ratio}
        assert r.info.experiment_id == sink.experiment_id
    assert sink.client.get_run(c2).data.tags["extra"] == "x"

    found = sink.children(parent)
    assert sorted(r.info.run_id for r in found) == sorted([c1, c2])
    # another sweep's children are not mixed in
    other = sink.start_parent("other", {})
    sink.start_child(other, "t", {})
    assert sorted(r.info.run_id for r in sink.children(parent)) == sorted([c1, c2])


def test_metric_history_with_steps(sink):
    parent = sink.start_parent("hist", {})
    child = sink.start_child(parent, "t", {})
    for step, loss in enumerate([2.0, 1.5, 1.0]):
        sink.log_metrics(child, {"train_loss": loss}, step=step)
    sink.log_metrics(child, {"accuracy": 0.9, "params": 1200, "bad": float("nan"), "flag": True, "text": "x"})
    hist = sink.client.get_metric_history(child, "train_loss")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    metrics = sink.client.get_run(child).data.metrics
    assert metrics["accuracy"] == 0.9 and metrics["params"] == 1200.0
    assert "bad" not in metrics and "flag" not in metrics and "text" not in metrics


def test_long_params_are_truncated_and_many_are_batched(sink):
    parent = sink.start_parent("params", {f"p{i}": i for i in range(150)})
    run = sink.client.get_run(parent)
    assert len(run.data.params) == 150
    sink.set_tags(parent, {"error": "e" * 7000})
    assert len(sink.client.get_run(parent).data.tags["error"]) == 6000


def test_close_stale_children(sink):
    parent = sink.start_parent("stale", {})
    running = [sink.start_child(parent, f"r{i}", {}) for i in range(2)]
    done = sink.start_child(parent, "done", {})
    sink.end(done, "FINISHED")
    failed = sink.start_child(parent, "failed", {})
    sink.end(failed, "FAILED")
    assert all(status(sink, r) == "RUNNING" for r in running)

    assert sink.close_stale_children(parent) == 2
    assert all(status(sink, r) == "KILLED" for r in running)
    assert status(sink, done) == "FINISHED"
    assert status(sink, failed) == "FAILED"
    assert sink.close_stale_children(parent) == 0  # idempotent
    # the parent itself is not a child
    assert status(sink, parent) == "RUNNING"
    sink.end(parent)
    sink.reopen(parent)
    assert status(sink, parent) == "RUNNING"


def test_existing_experiment_is_reused(sink, uri):
    from sweep.results.mlflow_sink import MlflowSink

    again = MlflowSink(uri, EXPERIMENT)
    assert again.experiment_id == sink.experiment_id


def test_trial_tracker_logs_to_a_child(sink, uri):
    from sweep.results.mlflow_sink import PARENT_TAG, TrialTracker

    parent = sink.start_parent("tracked", {})
    tr = TrialTracker.start(uri, EXPERIMENT, parent, "magnitude-t9", {"method": "magnitude", "ratio": 0.5})
    assert tr.sink is not None and tr.run_id is not None
    tr.log_metric("train_loss", 1.0, 0)
    tr.log_metric("train_loss", 0.5, 1)
    tr.log_metrics({"accuracy": 0.7})
    tr.set_tags({"note": "hi"})
    tr.end("FINISHED")
    run = sink.client.get_run(tr.run_id)
    assert run.data.tags[PARENT_TAG] == parent and run.data.tags["note"] == "hi"
    assert run.data.params == {"method": "magnitude", "ratio": "0.5"}
    assert run.data.metrics["accuracy"] == 0.7
    assert len(sink.client.get_metric_history(tr.run_id, "train_loss")) == 2
    assert run.info.status == "FINISHED"
    assert [r.info.run_id for r in sink.children(parent)] == [tr.run_id]


def test_trial_tracker_survives_logging_errors(sink, caplog):
    from sweep.results.mlflow_sink import TrialTracker

    tr = TrialTracker(sink, "0" * 32)  # a run id that does not exist
    with caplog.at_level(logging.WARNING, logger="sweep.results.mlflow_sink"):
        tr.log_metric("x", 1.0, 0)
        tr.set_tags({"a": "b"})
        tr.end("FINISHED")
    assert sum("MLflow logging failed" in r.getMessage() for r in caplog.records) == 3


@pytest.mark.parametrize("kind", ["sqlite-under-a-file", "path-under-a-file"])
def test_trial_tracker_never_raises_on_a_broken_uri(tmp_path, caplog, kind):
    from sweep.results.mlflow_sink import TrialTracker

    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker}/sub/mlflow.db" if kind == "sqlite-under-a-file" else str(blocker / "sub" / "mlruns")
    with caplog.at_level(logging.WARNING, logger="sweep.results.mlflow_sink"):
        tr = TrialTracker.start(uri, EXPERIMENT, "0" * 32, "t", {"a": 1})
        assert tr.sink is None and tr.run_id is None
        # every call is a silent no-op: nothing raised, nothing more logged
        n = len(caplog.records)
        tr.log_metric("x", 1.0, 0)
        tr.log_metrics({"x": 1.0}, 2)
        tr.set_tags({"a": "b"})
        tr.end("FAILED")
        assert len(caplog.records) == n
    assert any("MLflow child run not created" in r.getMessage() for r in caplog.records)
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing was written anywhere
