"""A real multi-node Ray cluster on one machine: ``ray start`` nodes bound to 127.0.0.1.

For the cluster tests, the scale benchmark, and anyone who wants to try ``sweep run --address`` before
a real cluster.  Every node is one ``ray start`` in its own session, so the daemons it leaves behind
share one process group whose id is that ``ray start``'s pid; :meth:`LocalCluster.stop` signals exactly
those groups (then, by pid, any leftover process carrying the cluster's private temp folder) -- never
``ray stop``, which would stop every Ray on the machine.  Token authentication is on, with a fresh random
token: :attr:`LocalCluster.env` holds it (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``) for every node and
for drivers that connect; a process without it is refused.

``private`` worker nodes start inside their own mount namespace (``unshare -m``, root only) with an empty
tmpfs over each of the given folders: a process of such a node that opens a file there finds nothing, as
a node without the driver's disk would.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# what a node's processes must not write: Ray's usage reporting and the dashboard
_START = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_with(text: str) -> list[int]:
    """Processes whose command line contains ``text``."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and text in cmdline(int(p))]


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat(pid: int) -> tuple[int, int]:
    """(parent pid, process group) of ``pid``; (-1, -1) once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        return -1, -1


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class LocalCluster:
    """A head node and worker nodes on 127.0.0.1; remembers the process group of every node."""

    def __init__(self, *, head_cpus: int = 1, object_store_mb: int = 150, ray_bin: str | None = None):
        self.store = object_store_mb * 2**20
        self.head_cpus = head_cpus
        self.ray = ray_bin or str(Path(sys.executable).parent / "ray")
        self.tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: unix socket paths are limited
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.groups: list[int] = []
        self.nodes: list[dict] = []  # per node: group, role, cpus, private folders
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env = {**os.environ, **self.auth}  # for nodes and drivers: never printed

    def _start(self, args: list[str], cpus: int, role: str, private: tuple = ()) -> int:
        cmd = [self.ray, "start", *args, *_START, f"--num-cpus={cpus}", f"--object-store-memory={self.store}"]
        if private:
            mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex_quote(str(p))}" for p in private)
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   f"{mounts} && exec {' '.join(shlex_quote(c) for c in cmd)}"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                             start_new_session=True)
        self.groups.append(p.pid)  # its session and process group: every daemon it starts inherits it
        self.nodes.append({"group": p.pid, "role": role, "cpus": cpus, "private": [str(x) for x in private]})
        out, _ = p.communicate(timeout=180)
        if p.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {p.returncode}:\n{out[-3000:]}")
        return p.pid

    def start_head(self) -> int:
        return self._start(["--head", f"--port={self.port}", f"--temp-dir={self.tmp}", "--include-dashboard=false"],
                           self.head_cpus, "head")

    def add_worker(self, cpus: int = 1, private: tuple = ()) -> int:
        """Start one worker node; returns its process group (what :meth:`kill_node` takes)."""
        return self._start([f"--address={self.address}"], cpus, "worker", tuple(private))

    def alive_nodes(self, want: int, timeout: float = 120.0) -> int:
        """Wait until ``ray.nodes()`` shows ``want`` nodes alive (asked by a short-lived driver process)."""
        code = ("import ray,logging;ray.init(address=%r,logging_level=logging.ERROR,log_to_driver=False);"
                "print(sum(1 for n in ray.nodes() if n['Alive']))" % self.address)
        deadline = time.time() + timeout
        n = 0
        while time.time() < deadline:
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env)
            lines = p.stdout.strip().splitlines()
            n = int(lines[-1]) if p.returncode == 0 and lines and lines[-1].isdigit() else 0
            if n >= want:
                return n
            time.sleep(2)
        return n

    def kill_node(self, group: int) -> list[int]:
        """SIGKILL every process of one node -- the daemons of its ``ray start`` (process group ``group``) and
        the worker processes its raylet started (they have groups of their own) -- as a machine that is
        switched off.  Returns the pids killed."""
        daemons = [p for p in _all_pids() if _stat(p)[1] == group]
        workers = [p for p in _all_pids() if _stat(p)[0] in daemons]
        for p in daemons + workers:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return daemons + workers

    def stop(self) -> str:
        """SIGTERM to every recorded process group, SIGKILL after 10 s; then leftovers by pid (ours: they
        carry this cluster's private temp folder).  Returns what it did, in words."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for g in self.groups:
                if _group_alive(g):
                    try:
                        os.killpg(g, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.time() + 10
            while time.time() < deadline and any(_group_alive(g) for g in self.groups):
                time.sleep(0.5)
            if not any(_group_alive(g) for g in self.groups):
                break
        left = [p for p in pids_with(self.tmp) if p != os.getpid()]
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
        groups = ",".join(map(str, self.groups))
        return (f"stopped process groups {groups}" + (f"; killed {len(left)} leftover process(es) carrying "
                                                      f"{self.tmp}: {left}" if left else "; no leftovers"))


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
