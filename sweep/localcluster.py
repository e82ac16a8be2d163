"""A real multi-node Ray cluster on one machine: ``ray start`` nodes with the head's address on 127.0.0.1.

Each node is started with ``--node-ip-address=127.0.0.1``, but Ray's ``ray start`` turns a loopback address
into the machine's reachable one (``ray._private.services.resolve_ip_for_localhost``), and its gRPC servers
listen on every interface whatever the node's address (seen with ``ss -ltn`` under Ray 2.60): on a machine
others can reach, the nodes' ports are reachable too, and token authentication (below) is what keeps other
processes out.  Drivers connect through ``127.0.0.1:<port>``.

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

With ``warm=True`` (an experiment, not a recommendation: see ``bench/README.md``, ``scale.py``) nodes start
with ``RAY_enable_worker_prestart=1`` and ``RAY_preload_python_modules=sweep.warm``: each node starts one
idle worker per CPU that imports what a trial needs (:mod:`sweep.warm`) and marks itself ready in
``<temp dir>/warm``; :meth:`LocalCluster.warm_workers` counts those marks.  Such nodes also start with the
raylet's idle-worker killer off (``RAY_kill_idle_workers_interval_ms=0``, :data:`sweep.warm.KEEP_IDLE_ENV`)
and Ray's first-job prestart off (``RAY_prestart_worker_first_driver=0``): otherwise the warm worker was
killed as the driver's job reserved the node's CPUs and a fresh process imported everything again before
the trial could start (3 probes of 4 with the prestart off; with both off the trials ran in the warm worker
in 4 of 4).  Sweeps on such nodes were measured running fewer trials at a time (before the killer was off).
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

from .warm import KEEP_IDLE_ENV, PRELOAD_ENV, READY_ENV, marks

# what a node's processes must not write: Ray's usage reporting and the dashboard
_START = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]


def unanswered(host: str, port: int, timeout: float) -> str | None:
    """Why nothing accepts a TCP connection at ``host:port`` within ``timeout`` seconds (the name does not
    resolve, the connection is refused, no answer), or None when something does: a server named on the
    command line (a Ray head, an MLflow server) is probed before a client library would retry it for minutes."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except (OSError, ValueError) as e:
        return getattr(e, "strerror", None) or str(e) or type(e).__name__
    return None


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


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_node(group: int) -> list[int]:
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


class LocalCluster:
    """A head node and worker nodes on 127.0.0.1; remembers the process group of every node."""

    def __init__(self, *, head_cpus: int = 1, object_store_mb: int = 150, ray_bin: str | None = None,
                 warm: bool = False):
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
        self.warm_dir = os.path.join(self.tmp, "warm") if warm else None
        self.node_env = {}  # for nodes only
        if self.warm_dir:
            os.makedirs(self.warm_dir)
            self.node_env = {"RAY_enable_worker_prestart": "1", "RAY_prestart_worker_first_driver": "0",
                             KEEP_IDLE_ENV: "0", PRELOAD_ENV: "sweep.warm", READY_ENV: self.warm_dir}

    def _start(self, args: list[str], cpus: int, role: str, private: tuple = ()) -> int:
        cmd = [self.ray, "start", *args, *_START, f"--num-cpus={cpus}", f"--object-store-memory={self.store}"]
        if private:
            mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex_quote(str(p))}" for p in private)
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   f"{mounts} && exec {' '.join(shlex_quote(c) for c in cmd)}"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**self.env, **self.node_env}, start_new_session=True)
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

    def warm_workers(self, want: int, timeout: float = 120.0) -> int:
        """Wait until ``want`` of the nodes' idle workers have imported what a trial needs (or ``timeout``
        passed); returns how many have.  0 at once for a cluster started with ``warm=False``."""
        if not self.warm_dir:
            return 0
        deadline = time.time() + timeout
        while True:
            _, n = marks(self.warm_dir)
            if n >= want or time.time() >= deadline:
                return n
            time.sleep(0.2)

    kill_node = staticmethod(kill_node)  # one node switched off (the module function)

    def stop(self) -> str:
        """SIGTERM to every recorded process group, SIGKILL after 10 s; then leftovers by pid (ours: they
        carry this cluster's private temp folder).  Returns what it did, in words."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for g in self.groups:
                if group_alive(g):
                    try:
                        os.killpg(g, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.time() + 10
            while time.time() < deadline and any(group_alive(g) for g in self.groups):
                time.sleep(0.5)
            if not any(group_alive(g) for g in self.groups):
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


def main(argv=None) -> int:
    """``python -m sweep.localcluster``: start a head and worker nodes here, print how to use and break
    them, and stop them all on Ctrl-C; or ``--kill GROUP``: switch one worker node off."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sweep.localcluster", description=main.__doc__)
    ap.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--head-cpus", type=int, default=0, help="CPUs of the head (default 0: trials run on workers)")
    ap.add_argument("--warm", action="store_true", help="nodes with warm workers (an experiment: see "
                    "bench/README.md, scale.py)")
    ap.add_argument("--kill", type=int, metavar="GROUP", help="kill the worker node of this process group")
    args = ap.parse_args(argv)
    if args.kill is not None:
        pids = kill_node(args.kill)
        print(f"killed {len(pids)} process(es) of the node with process group {args.kill}")
        return 0 if pids else 1
    c = LocalCluster(head_cpus=args.head_cpus, warm=args.warm)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    try:
        c.start_head()
        workers = [c.add_worker(cpus=args.cpus_per_worker) for _ in range(args.workers)]
        alive = c.alive_nodes(1 + args.workers)
        cpus = args.head_cpus + args.workers * args.cpus_per_worker
        warm = c.warm_workers(cpus) if c.warm_dir else None
        token = Path(c.tmp) / "auth_token"
        token.touch(mode=0o600)
        token.write_text(c.auth["RAY_AUTH_TOKEN"])
        print(f"Ray cluster at {c.address}: {alive} node(s) alive (head with {args.head_cpus} CPU(s), "
              f"{args.workers} worker(s) with {args.cpus_per_worker} each), token authentication on"
              + (f"; {warm} of {cpus} warm worker process(es) ready" if warm is not None else "") + ".\n"
              f"In another shell:\n"
              f"  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token}\n"
              f"  sweep run search_spaces/quickstart.yaml --address {c.address}")
        for i, g in enumerate(workers, 1):
            print(f"  worker {i}: switch it off with `python -m sweep.localcluster --kill {g}`")
        print("Ctrl-C stops every node of this cluster (and nothing else).", flush=True)
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print(c.stop())
    return 0


if __name__ == "__main__":
    sys.exit(main())
