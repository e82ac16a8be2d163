"""Shared test settings: one torch thread (tests measure behaviour, not speed, and two threads on a
busy 2-core machine make small forwards orders of magnitude slower), and the MLflow mirror process at the
driver's priority: at its default, the lowest, other work on a shared machine can hold it off for tens of
seconds, and tests wait for it (their own flushes, each sweep's end); tests/test_mlflow_sink.py checks the
default itself; the cache of a new MLflow store's tables in a folder of the test session's own.

Run order, for the README's test command (``pytest-xdist``, two processes, whole files per process in the
order collected): the files with ``integration`` tests (real Ray sweeps, a minute or more each) come first, so
each process starts on one of those and the short unit-test files fill in after; files in their collected
order would leave the longest for last, with one process idle.  ``serial`` tests (they judge how Ray's
processes start, which a second test process on the same cores disturbs) are left out of that run and run
after it on their own."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("SWEEP_MIRROR_NICENESS", "0")  # sweep.results.mirror_process.NICENESS_ENV
if "SWEEP_CACHE_DIR" not in os.environ:  # sweep.results.mlflow_sink.CACHE_ENV: not the user's cache folder
    os.environ["SWEEP_CACHE_DIR"] = tempfile.mkdtemp(prefix="sweep-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SWEEP_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Files with ``integration`` tests first (stable otherwise), the longest of them first."""
    heavy: dict[str, int] = {}
    for item in items:
        if item.get_closest_marker("integration") is not None:
            heavy[item.path.name] = heavy.get(item.path.name, 0) + 1
    order = {name: i for i, name in enumerate(sorted(heavy, key=lambda n: -HEAVIEST.get(n, 0)))}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))


# rough seconds of each file's integration tests on 2 cores (only their order matters)
HEAVIEST = {"test_integration.py": 350, "test_cluster.py": 190, "test_warm_workers.py": 90,
            "test_mlflow_server.py": 50, "test_mbn.py": 30}


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def epochs_trained(monkeypatch):
    """The 0-based epochs every :func:`sweep.train.fit` call trains from now on, in order (a resumed training
    trains only those after its saved state)."""
    import sweep.train

    epochs: list[int] = []
    real_fit = sweep.train.fit

    def counting_fit(*a, **kw):
        on_epoch = kw.get("on_epoch")
        kw["on_epoch"] = lambda e, loss: (epochs.append(e), on_epoch and on_epoch(e, loss))
        return real_fit(*a, **kw)

    monkeypatch.setattr(sweep.train, "fit", counting_fit)
    return epochs
