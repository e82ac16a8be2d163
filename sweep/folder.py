"""The sweep folder, ``runs/<name>/``: its layout, and every read and write of what lies in it.

Layout (the README's "Where things go" table)::

    sweep.yaml            the search space the sweep runs (what ``resume`` reloads)
    state.json            tracking URI, MLflow experiment and parent run id; the driver's heartbeat
    .lock                 the writer's lock (flock) and who holds it: pid, host, command
    trials.parquet        the source of truth (:mod:`sweep.results.store`)
    trials.journal/       finished trials not yet folded into trials.parquet (same module)
    baseline/model.pt     the trained dense model; baseline/summary.json its figures
    models/<trial>.pt     each trial's pruned model
    progress/<name>.pt    a running trial's fine-tune state after its latest epoch (sweep.trial.progress_name):
                          a trial cut short goes on from there when it runs again; removed once it has its row
    mlflow.db, mlartifacts/   the embedded MLflow store (default tracking URI) and its artefacts
    ray/                  Ray Tune's working folder (resume reads the table, not this)
    selected/             what ``sweep select`` chose

Conventions: every JSON file is written atomically (temporary file + rename); saved models are
whole-module pickles, so they are loaded only from inside the folder that wrote them; the report goes
to ``reports/<name>/`` outside the folder (:func:`report_dir`).  ``select``, ``report`` and ``cli``
reach a sweep through this module, never through the Ray driver. It imports the standard library alone at its
top (the model inbox's process writes the trials' progress through it, without pyarrow or torch). One process
writes a sweep folder at a time: ``sweep run`` / ``resume`` / ``select`` hold :meth:`SweepFolder.lock` while
they write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SweepDirError

if TYPE_CHECKING:
    from .results.store import TrialStore

CONFIG_FILE = "sweep.yaml"
STATE_FILE = "state.json"
BASELINE_MODEL = "baseline/model.pt"
BASELINE_SUMMARY = "baseline/summary.json"
# the dense baseline's training state after its latest epoch, while it trains (sweep.train.EpochCheckpoint):
# a sweep killed while the baseline trains goes on from there; removed once the baseline is written
BASELINE_TRAINING = "baseline/training.pt"
MODELS_DIR = "models"
PROGRESS_DIR = "progress"
RAY_DIR = "ray"
SELECTED_DIR = "selected"
SELECTION_FILE = "selection.json"  # what `sweep select` decided, in its output folder
MLFLOW_DB = "mlflow.db"
EMBEDDED_KEY = "embedded_store"  # state.json: the sweep tracks to its folder's own store (SweepFolder.tracking_uri)
ARTIFACTS_DIR = "mlartifacts"
LOCK_FILE = ".lock"
# state.json's writers in this process, one at a time (a heartbeat's read and rewrite is one step)
_STATE_WRITE = threading.RLock()
HEARTBEAT_EVERY_S = 30.0  # the driver rewrites state.json's heartbeat at least this often while trials run
# ... and, when a trial starts or ends, within this long (not at once: trials may start and end many times a
# second, and each rewrite of state.json costs the driver milliseconds)
HEARTBEAT_MIN_S = 1.0
REPORTS_ROOT = Path("reports")


def report_dir(name: str, root: Path | str | None = None, where: str = "the sweep's name") -> Path:
    """Where the report of sweep ``name`` goes: ``reports/<name>`` (or ``<root>/<name>``).

    ``name`` may come from a folder someone else sent (the table's metadata): it must be a plain name, so
    the report never lands outside ``root``."""
    from .config import NAME_RE

    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise SweepDirError(f"sweep name must match {NAME_RE.pattern} (a plain folder name), but got "
                            f"name={name!r} ({where}); pass --out to choose the report folder")
    return Path(REPORTS_ROOT if root is None else root) / name


def output_folder(path: Path | str, flag: str, *, empty: bool = False, reuse: str | None = None) -> Path:
    """A folder a command writes its output into (``flag``: the option it came from), checked before any work:
    it must not be a file, and with ``empty`` it must be new or empty -- or, with ``reuse``, hold that file,
    the mark of an earlier output of the same command, which the command may move aside.  A folder of the
    user's own is never moved nor written into.  Returned absolute (``--out .`` names the current folder)."""
    out = Path(path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise SweepDirError(f"{flag} must be a folder, but got {flag}={path}, which is a file; choose another {flag}")
    if empty and out.is_dir() and any(out.iterdir()) and not (reuse and (out / reuse).is_file()):
        earlier = f" or an earlier output of this command (holding {reuse})" if reuse else ""
        raise SweepDirError(f"{flag} must be a new or empty folder{earlier}, but got {flag}={path}, which holds "
                            f"other files; choose another {flag}")
    return out


# what a ``sqlite:///`` URI cannot carry in a path: SQLAlchemy reads '?' as the start of a query (the store
# would silently be made elsewhere: a folder ``b?x`` puts it in a file ``b`` beside it) and unquotes a '%'
# followed by two hex digits (``a%20b`` names ``a b``, and MLflow retries the missing file for minutes); a lone
# '%' (``run 50%``) is kept as it is
_URI_UNSAFE = re.compile(r"\?|%[0-9A-Fa-f]{2}")
_URI_UNSAFE_SAID = "'?' or a '%' followed by two hex digits"


def uri_unsafe(path: Path | str) -> list[str]:
    """What in ``path`` a ``sqlite:///`` URI would read otherwise (see ``_URI_UNSAFE``), quoted, in order."""
    return [repr(s) for s in dict.fromkeys(_URI_UNSAFE.findall(str(path)))]


def check_embedded_store_path(folder: Path, flag: str) -> None:
    """``folder`` (absolute) can hold the embedded MLflow store, or a :class:`SweepDirError` says why not."""
    bad = uri_unsafe(folder)
    if bad:
        raise _unnameable_store(f"{flag} must be", "to hold the", f"{flag}={folder}", bad,
                                f"choose another {flag} or log to a tracking server with --tracking-uri")


def _unnameable_store(subject: str, purpose: str, got: str, bad: list[str], way_out: str) -> SweepDirError:
    """The one error for a path the embedded store's sqlite URI cannot name (see ``_URI_UNSAFE``)."""
    return SweepDirError(f"{subject} a path without {_URI_UNSAFE_SAID} {purpose} embedded MLflow store (its sqlite "
                         f"URI cannot name such a path), but got {got}, which has {' and '.join(bad)}; {way_out}")


@contextmanager
def written_whole(out: Path):
    """A private scratch folder beside ``out`` to write an output into; once the block ends it becomes ``out``
    at once (an earlier output there is kept beside it, :func:`moved_aside`), and if the block fails it is
    removed, so no half-written output is ever seen.  Never a fixed name: a folder we did not create is
    never removed.  ``out`` should have passed :func:`output_folder`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would become the output's own mode
        yield tmp
        if out.exists() and any(out.iterdir()):  # no finished result is lost
            out.rename(moved_aside(out))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: made above
        raise


def moved_aside(path: Path) -> Path:
    """A free name beside ``path`` to keep an earlier output under (``<name>-<unix time>``, then ``-2``, ...)."""
    stamp = f"{path.name}-{int(time.time())}"
    aside, n = path.with_name(stamp), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{stamp}-{n}")
    return aside


@dataclass(frozen=True)
class SweepFolder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).resolve())

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def ray_dir(self) -> Path:
        return self.path / RAY_DIR

    @property
    def selected_dir(self) -> Path:
        return self.path / SELECTED_DIR

    @property
    def artifacts_dir(self) -> Path:
        return self.path / ARTIFACTS_DIR

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def default_tracking_uri(self) -> str:
        """The embedded MLflow store: sqlite in the folder (absolute, so it works from any cwd)."""
        return f"sqlite:///{self.path / MLFLOW_DB}"

    def tracking_uri(self, state: dict | None = None, hint: str = "") -> str:
        """The MLflow tracking store of this folder's sweep: the one named in ``state.json`` (``state``, read
        when not given), except that a sweep on the embedded store keeps the store in *this* folder.

        ``state.json`` holds the URI absolute; a folder moved or copied (to another machine, a backup, a new
        name) would otherwise write its runs into the store where it used to be -- the original's, for a copy.
        The embedded store is recognised by ``embedded_store`` in the state, or, in a state written before
        that key, by a recorded sqlite file named ``mlflow.db`` while this folder holds its own.  A folder whose
        path that store's URI cannot name is a :class:`SweepDirError` (``hint``: the caller's way out, appended)."""
        state = self.state() if state is None else state
        uri = state.get("tracking_uri")
        legacy = (bool(uri) and EMBEDDED_KEY not in state and uri.startswith("sqlite:///")
                  and Path(uri.removeprefix("sqlite:///")).name == MLFLOW_DB and (self.path / MLFLOW_DB).is_file())
        if uri and not state.get(EMBEDDED_KEY) and not legacy:
            return uri
        bad = uri_unsafe(self.path)
        if bad:  # moved or copied there: ``sweep run`` refuses to make a sweep at such a path
            raise _unnameable_store("the sweep folder must be", "to use its", str(self.path), bad,
                                    f"move or rename the folder{hint}")
        return self.default_tracking_uri

    @property
    def store(self) -> "TrialStore":
        from .results.store import TrialStore  # here, not at the top: the model inbox imports this module alone

        return TrialStore(self.path)

    @staticmethod
    def model_rel(trial_id: str) -> str:
        """A trial's saved model, relative to the folder (what the ``model_path`` column holds)."""
        return f"{MODELS_DIR}/{trial_id}.pt"

    def is_sweep(self) -> bool:
        return self.config_path.is_file()

    def has_baseline(self) -> bool:
        return (self.path / BASELINE_MODEL).is_file() and (self.path / BASELINE_SUMMARY).is_file()

    # ------------------------------------------------------------------ create / load
    def create(self, cfg) -> None:
        """Make the folder for a new sweep and write ``sweep.yaml``; refuse a folder in use."""
        import yaml

        if self.path.exists() and any(p.name != LOCK_FILE for p in self.path.iterdir()):
            if self.is_sweep():
                raise SweepDirError(f"sweep folder already exists: {self.path}; continue it with "
                                    f"`sweep resume {self.path}` or choose another --name/--out")
            raise SweepDirError(f"output folder is not empty and not a sweep folder: {self.path}")
        self.path.mkdir(parents=True, exist_ok=True)
        raw = dict(cfg.raw)
        raw["name"] = cfg.name
        if cfg.baseline.path:  # resolved, so that the copy works from anywhere
            b = raw.get("baseline")
            raw["baseline"] = {**(b if isinstance(b, dict) else {}), "path": cfg.baseline.path}
        _write_atomic(self.config_path, yaml.safe_dump(raw, sort_keys=False))

    def config(self):
        """The sweep's configuration, from ``sweep.yaml``."""
        from .config import load_config
        from .errors import ConfigError

        if not self.is_sweep():
            raise SweepDirError(f"not a sweep folder (no {CONFIG_FILE}): {self.path}")
        try:
            return load_config(self.config_path)
        except ConfigError as e:
            raise SweepDirError(f"{e}; {CONFIG_FILE} is the search space this sweep runs (`sweep run` wrote it): "
                                f"restore it, or fix what is named") from None

    def state(self) -> dict:
        """``state.json`` ({} when absent); an unreadable one is a one-line :class:`SweepDirError`."""
        if not self.state_path.is_file():
            return {}
        state = _read_json(self.state_path, f"{STATE_FILE} (MLflow tracking URI, experiment, parent run)", _STATE_HINT)
        if not isinstance(state, dict):
            raise SweepDirError(f"{STATE_FILE} must hold a JSON object, but got {type(state).__name__} "
                                f"({self.state_path}); {_STATE_HINT}")
        return state

    def write_state(self, state: dict) -> None:
        with _STATE_WRITE:
            _write_atomic(self.state_path, json.dumps(state, indent=2, default=str))

    def write_heartbeat(self, running, **fields) -> None:
        """The driver is alive: ``state.json``'s ``heartbeat`` (epoch seconds) and the trials running now
        (``running``: trial ids), plus any ``fields`` (e.g. ``outcome`` when the driver ends).  Read and
        rewritten as one step among this process's writers (the heartbeat may come from a thread of its own)."""
        with _STATE_WRITE:
            state = self.state()
            state.update(heartbeat=time.time(), running=sorted(running), driver_pid=os.getpid(), **fields)
            self.write_state(state)

    # ------------------------------------------------------------------ the writer's lock
    def lock(self, command: str, *, new: bool = False) -> "FolderLock":
        """The exclusive writer's lock of this folder, as a context manager (see :class:`FolderLock`).

        ``new``: the folder may not exist yet or be empty (``sweep run``); otherwise it must be a sweep.
        Nothing is created in a folder that is not a sweep folder."""
        if new:
            if self.path.exists() and not self.is_sweep() and any(p.name != LOCK_FILE for p in self.path.iterdir()):
                raise SweepDirError(f"output folder is not empty and not a sweep folder: {self.path}")
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.is_sweep():
            raise SweepDirError(f"not a sweep folder (no {CONFIG_FILE}): {self.path}")
        return FolderLock(self.lock_path, command)

    def lock_holder(self) -> dict | None:
        """Who holds (or last held, if it died without releasing) the lock: pid, host, command, since."""
        return read_lock_holder(self.lock_path)

    # ------------------------------------------------------------------ baseline
    def baseline(self) -> dict:
        """The dense baseline's figures (``baseline/summary.json``).

        Both baseline files are checked here, before anything starts from them: an unreadable summary
        or a truncated ``baseline/model.pt`` is a one-line :class:`SweepDirError` naming the file."""
        p = self.path / BASELINE_SUMMARY
        if not p.is_file():
            raise SweepDirError(f"not a sweep folder (no {BASELINE_SUMMARY}): {self.path}")
        summary = _read_json(p, f"{BASELINE_SUMMARY} (the dense baseline's figures)", _BASELINE_HINT)
        # accuracy figures are null when no labelled set was given (dataset.unlabeled alone)
        missing = [k for k in BASELINE_FIGURES if not isinstance(summary, dict) or not (
            _is_number(summary.get(k)) or (k in NULLABLE_FIGURES and k in summary and summary[k] is None))]
        if missing:
            got = (f"{missing[0]}={summary.get(missing[0])!r}" if isinstance(summary, dict)
                   else f"a JSON {type(summary).__name__}")
            raise SweepDirError(f"{BASELINE_SUMMARY} must hold the baseline's figures "
                                f"({', '.join(BASELINE_FIGURES)}) as numbers, but got {got} ({p}); "
                                f"{_BASELINE_HINT}")
        self._check_model_file(BASELINE_MODEL)
        return summary

    def write_baseline(self, model, summary: dict) -> str:
        """Save the dense model and its figures; return the model's path relative to the folder."""
        rel = self.save_model(model, BASELINE_MODEL)
        _write_atomic(self.path / BASELINE_SUMMARY, json.dumps(summary, indent=2))
        return rel

    @property
    def baseline_training_path(self) -> Path:
        return self.path / BASELINE_TRAINING

    def load_baseline_model(self):
        return self.load_model(BASELINE_MODEL)

    def baseline_key(self) -> str:
        """A key that changes whenever the dense model saved here does (its file's identity, size and time of
        writing): what a process keeps that model's timing runner under (:func:`sweep.measure.kept_runner`)."""
        st = (self.path / BASELINE_MODEL).stat()
        return f"{self.path.resolve() / BASELINE_MODEL}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"

    # ------------------------------------------------------------------ trials' fine-tune progress
    @property
    def progress_dir(self) -> Path:
        return self.path / PROGRESS_DIR

    def progress_slot(self, name: str):
        """Where the trial configuration ``name`` (:func:`sweep.trial.progress_name`) keeps its fine-tune state
        (a :class:`sweep.durable.FileSlot`)."""
        return progress_slot(self.progress_dir, name)

    def progress_names(self) -> list[str]:
        """The configurations that have a saved fine-tune state now."""
        if not self.progress_dir.is_dir():
            return []
        return sorted(p.stem for p in self.progress_dir.glob("*.pt"))

    # ------------------------------------------------------------------ models
    def save_model(self, model, rel: str) -> str:
        """Whole-module save inside the folder (pruned shapes differ from any builder's), atomically."""
        return self.write_model_bytes(rel, model_bytes(model))

    def write_model_bytes(self, rel: str, data: bytes) -> str:
        """Write a model saved by :func:`model_bytes` (e.g. sent by a trial on another node) at ``rel``,
        atomically and durably (the row that names it is written after)."""
        from .durable import durable_write

        path = (self.path / rel).resolve()
        if self.path.resolve() not in path.parents:
            raise SweepDirError(f"model path must lie inside the sweep folder {self.path}, but got {rel!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        durable_write(path, data)
        return rel

    def read_model_bytes(self, rel: str) -> bytes:
        """The bytes of a saved model, checked to be a whole torch archive (to ship to Ray workers)."""
        path = (self.path / rel).resolve()
        if self.path.resolve() not in path.parents:
            raise SweepDirError(f"model path must lie inside the sweep folder {self.path}, but got {rel!r}")
        self._check_model_file(rel)
        return path.read_bytes()

    def load_model(self, rel: str):
        """Load a model saved by :meth:`save_model`; refuses paths outside the folder (they are pickles)."""
        import torch

        path = (self.path / rel).resolve()
        if self.path not in path.parents:
            raise SweepDirError(f"model path must lie inside the sweep folder {self.path}, but got {rel!r}")
        if not path.is_file():
            raise SweepDirError(f"saved model not found: {path}")
        self._check_model_file(rel)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated, overwritten, or pickled from code that is gone
            raise SweepDirError(_unreadable_model(rel, path, e)) from None

    def _check_model_file(self, rel: str) -> None:
        """A cheap check that a saved model is a whole torch archive (a truncated one has no zip directory)."""
        import zipfile

        path = (self.path / rel).resolve()
        if not path.is_file():
            raise SweepDirError(f"saved model not found: {path}")
        try:
            with zipfile.ZipFile(path) as z:
                if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist()):
                    raise zipfile.BadZipFile("no data.pkl in the archive")
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise SweepDirError(_unreadable_model(rel, path, e)) from None

    # ------------------------------------------------------------------ results
    def results(self) -> tuple[list, dict]:
        """The sweep's records and metadata; a folder without ``trials.parquet`` is not a sweep."""
        store = self.store
        if not store.exists():
            raise SweepDirError(f"not a sweep folder (no trials.parquet): {self.path}")
        return store.records()


def sweep_meta(cfg, baseline: dict) -> dict:
    """The metadata stored with ``trials.parquet``: what the report and ``select`` need besides rows.

    ``quality`` names the quality column (``accuracy``, or ``agreement`` in label-free sweeps): the one
    place later readers take it from."""
    figures: dict[str, Any] = {k: baseline.get(k, 1.0) for k in
                               ("accuracy", "test_accuracy", "agreement", "params", "macs", "latency_ms")}
    limits = cfg.search.constraints
    return {"name": cfg.name, "objectives": list(cfg.search.objectives), "baseline": figures,
            "labels": cfg.labels, "quality": cfg.quality, "model": cfg.model.name, "dataset": cfg.dataset.name,
            "methods": [m.name for m in cfg.methods], "trials": cfg.search.trials,
            # search.constraints (budget -> limit; {} without): the report draws them
            "constraints": dict(limits.items()) if limits else {}}


BASELINE_FIGURES = ("accuracy", "test_accuracy", "params", "macs", "latency_ms")
NULLABLE_FIGURES = ("accuracy", "test_accuracy")  # null: no labelled set (dataset.unlabeled alone)
_BASELINE_HINT = ("the dense baseline every trial starts from cannot be rebuilt in place: restore baseline/ "
                  "from a copy of the sweep folder, or run the sweep again into a new folder")
_STATE_HINT = ("it only records where the sweep logs to MLflow: restore it, or delete it (`sweep resume` then "
               "logs to a new MLflow parent run)")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "no details"
    return f"{type(e).__name__}: {text[:200]}"


def _read_json(path: Path, what: str, hint: str):
    """Parse one JSON file of the folder; an unreadable one is a one-line error naming it and what to do."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SweepDirError(f"{what} must be readable JSON, but reading it failed: {_reason(e)} ({path}); "
                            f"{hint}") from None


def _unreadable_model(rel: str, path: Path, e: BaseException) -> str:
    if rel == BASELINE_MODEL:
        hint = _BASELINE_HINT
    else:
        hint = ("restore it from a copy of the sweep folder (one trial's model cannot be re-created alone); "
                "an unreadable model is never skipped silently")
    return f"saved model {rel} must be a readable torch file, but it is not ({_reason(e)}) ({path}); {hint}"


class FolderLock:
    """One writer per sweep folder: an exclusive ``fcntl.flock`` on ``<folder>/.lock``.

    The file records the holder (pid, host, command, since) so that a second writer's error can name
    it.  The kernel releases a ``flock`` when its process dies, so a lock that can be acquired is not
    held: a stale one (its holder was killed) is simply taken over, and ``previous`` keeps what it
    recorded.  A clean release empties the file.  (On NFS, ``flock`` is as reliable as the server's lock
    manager.)"""

    def __init__(self, path: Path, command: str):
        self.path, self.command = Path(path), command
        self.fd: int | None = None
        self.previous: dict | None = None
        self.holder: dict | None = None

    def acquire(self) -> "FolderLock":
        import fcntl
        import socket
        import sys

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SweepDirError(_in_use(self.path, read_lock_holder(self.path))) from None
        except OSError as e:
            os.close(fd)
            raise SweepDirError(f"sweep folder lock must be lockable, but flock failed: {e} ({self.path})") from None
        self.previous = read_lock_holder(self.path)
        self.holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                       "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": list(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        import fcntl

        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)  # released cleanly: nobody holds it
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_lock_holder(path: Path) -> dict | None:
    """The holder a lock file records (None when empty or unreadable: nobody, or a holder mid-write)."""
    try:
        holder = json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _in_use(lock_path: Path, holder: dict | None) -> str:
    if holder is None:
        return (f"sweep folder must have one writer at a time, but another process holds it (it has not "
                f"recorded its pid yet) ({lock_path}); wait for it to end")
    pid = holder["pid"]
    return (f"sweep folder must have one writer at a time, but pid {pid} on {holder.get('host', '?')} holds it "
            f"(`{holder.get('command', '?')}` since {holder.get('since', '?')}) ({lock_path}); wait for it to "
            f"end, or stop it first (`kill {pid}`: a stopped sweep continues with `sweep resume`)")


def progress_slot(folder: str | Path, name: str):
    """The file ``<folder>/<name>.pt`` as a :class:`sweep.durable.FileSlot`; ``name`` is a digest, never a path."""
    from .durable import FileSlot

    if not name or not name.isalnum():
        raise SweepDirError(f"a progress name must be letters and digits, but got {name!r}")
    return FileSlot(Path(folder) / f"{name}.pt")


def model_bytes(model) -> bytes:
    """A whole module as ``torch.save`` writes it (what :meth:`SweepFolder.load_model` reads)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


def load_model_bytes(data: bytes):
    """The inverse of :func:`model_bytes`: only for bytes this sweep wrote (they are pickles)."""
    import io

    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
