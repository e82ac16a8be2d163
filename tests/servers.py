"""Servers that tests start on 127.0.0.1: the MLflow tracking server of ``clusters/mlflow-server.sh``
(PostgreSQL behind it, basic authentication, proxied artefacts).

Every process is started in a new session, so its process group holds exactly what the test started (the
script, PostgreSQL, the MLflow server and its workers); stopping signals the script by its pid, lets it
shut down in order, and only then kills whatever of that one group is left.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from glob import glob
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "clusters" / "mlflow-server.sh"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the kernel's choice; another process could still take
    it before our server binds it: :meth:`MlflowServer.start` retries on that)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> str | None:
    """The folder of PostgreSQL's server binaries, found as the script finds it; None if absent."""
    initdb = shutil.which("initdb")
    if initdb:
        return str(Path(os.path.realpath(initdb)).parent)
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    return str(Path(found[-1]).parent) if found else None


def missing_for_mlflow_server() -> str | None:
    """Why the MLflow + PostgreSQL server cannot start here, or None when it can."""
    if postgres_bin() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    lacking = [m for m in ("psycopg2", "flask_wtf") if importlib.util.find_spec(m) is None]
    if lacking:
        return f"{', '.join(lacking)} missing (pip install 'mlflow[auth]' psycopg2-binary)"
    if shutil.which("bash") is None:
        return "bash is not installed"
    return None


class ServerError(RuntimeError):
    pass


class MlflowServer:
    """``clusters/mlflow-server.sh`` in a private temporary folder (a short path under /tmp, traversable by
    PostgreSQL's unprivileged user when the tests run as root), on free ports.  ``url``, ``username``,
    ``password`` and ``data`` (the script's --data folder) are set once :meth:`start` returns."""

    def __init__(self, workers: int = 1, ready_timeout_s: float = 150.0):
        self.workers = workers
        self.ready_timeout_s = ready_timeout_s
        self.username = "admin"
        self.password = secrets.token_urlsafe(18)  # a fresh admin password per server, never printed
        self.root = Path(tempfile.mkdtemp(prefix="mlfs", dir="/tmp"))
        os.chmod(self.root, 0o711)  # PostgreSQL's user passes through it to its own data folder
        self.data = self.root / "srv"
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    # ------------------------------------------------------------------ start / stop
    def start(self, tries: int = 3) -> MlflowServer:
        """Start the script and wait until the server answers; a start lost to a port taken in between
        (PostgreSQL's or MLflow's) is tried again on new ports."""
        for attempt in range(tries):
            port, pg_port = free_port(), free_port()
            if self._start_once(port, pg_port):
                self.url = f"http://127.0.0.1:{port}"
                return self
            log = self.log()
            self.stop()
            if attempt + 1 < tries and re.search(r"address already in use|could not bind|could not create any",
                                                 log, re.I):
                continue
            raise ServerError(f"the MLflow server did not start; its log ends with:\n{log[-4000:]}")
        raise AssertionError("unreachable")

    def _start_once(self, port: int, pg_port: int) -> bool:
        env = {**os.environ, "MLFLOW_AUTH_ADMIN_USERNAME": self.username,
               "MLFLOW_AUTH_ADMIN_PASSWORD": self.password,
               # the script's Python first on PATH: the one that has mlflow and the drivers
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(k, None)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                ["bash", str(SCRIPT), "--data", str(self.data), "--port", str(port), "--pg-port", str(pg_port),
                 "--workers", str(self.workers), "--python", sys.executable],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            # the script logs this line after its own /health probe succeeded
            if "mlflow-server: ready:" in self.log():
                return _answers(f"http://127.0.0.1:{port}/health")
            time.sleep(0.3)
        return False

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM to the script (it stops the MLflow server, then PostgreSQL's fast shutdown), then SIGKILL
        to what is left of the process group it leads, if anything is."""
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        if _group_members(p.pid):  # the group is the script's own (start_new_session), so nothing else
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if p.poll() is None:
            p.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MlflowServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ reading
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client_env(self, username: str | None = None, password: str | None = None) -> dict:
        """The environment of a process that talks to this server as ``username`` (default: the admin)."""
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.url,
               "MLFLOW_TRACKING_USERNAME": username or self.username,
               "MLFLOW_TRACKING_PASSWORD": password or self.password}
        return env


def _group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group ``pgid`` (read from /proc)."""
    pids = []
    for stat in glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.split("/")[2]))
    return pids


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False
