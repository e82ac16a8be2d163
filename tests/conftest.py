"""Shared test settings: one torch thread (tests measure behaviour, not speed, and two threads on a
busy 2-core machine make small forwards orders of magnitude slower)."""

import os

import pytest

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
