"""Shared test settings: one torch thread (tests measure behaviour, not speed, and two threads on a
busy 2-core machine make small forwards orders of magnitude slower), and the MLflow mirror process at the
driver's priority: at its default, the lowest, other work on a shared machine can hold it off for tens of
seconds, and tests wait for it (their own flushes, each sweep's end); tests/test_mlflow_sink.py checks the
default itself."""

import os

import pytest

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("SWEEP_MIRROR_NICENESS", "0")  # sweep.results.mirror_process.NICENESS_ENV


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
