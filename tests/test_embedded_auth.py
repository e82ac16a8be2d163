"""The embedded Ray takes jobs only from the sweep's own processes: token authentication with a fresh token,
also when the caller imported ray before the sweep started it; a Ray the caller started is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A child process: maybe `import ray` first, then the sweep's embedded Ray; a grandchild without the token
# (every RAY_AUTH_* variable removed) tries to run a task on it, then one with the sweep's environment does.
CHILD = r"""
import os, subprocess, sys
from pathlib import Path
if sys.argv[1] == "first":
    import ray  # noqa: F401
from sweep.driver import _ray_init, _ray_shutdown
notes = []
started = _ray_init(None, Path(sys.argv[2]), cpus=1, log=notes.append)
import ray
gcs = ray.get_runtime_context().gcs_address
code = (f"import ray; ray.init(address='{gcs}', logging_level='ERROR'); "
        "print('RAN', ray.get(ray.remote(lambda: 1).remote()))")
def runs(env):
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and "RAN 1" in r.stdout
stranger = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
print("MODE", os.environ.get("RAY_AUTH_MODE"), "STRANGER", runs(stranger), "OWN", runs(dict(os.environ)),
      "NOTES", len(notes), flush=True)
_ray_shutdown(started, print)
"""


@pytest.mark.parametrize("imported", ["first", "not"])
def test_the_embedded_ray_lets_in_only_the_sweeps_processes_even_when_ray_was_imported_first(tmp_path, imported):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token of the user's
    res = subprocess.run([sys.executable, "-c", CHILD, imported, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("MODE")]
    assert res.returncode == 0 and line, res.stdout[-2000:] + res.stderr[-3000:]
    assert line[0] == "MODE token STRANGER False OWN True NOTES 0"
