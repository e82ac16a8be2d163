"""The sweep folder, ``runs/<name>/``: its layout, and every read and write of what lies in it.

Layout (the README's "Where things go" table)::

    sweep.yaml            the search space the sweep runs (what ``resume`` reloads)
    state.json            tracking URI, MLflow experiment and parent run id
    trials.parquet        the source of truth (:mod:`sweep.results.store`)
    baseline/model.pt     the trained dense model; baseline/summary.json its figures
    models/<trial>.pt     each trial's pruned model
    mlflow.db, mlartifacts/   the embedded MLflow store (default tracking URI) and its artefacts
    ray/                  Ray Tune's experiment state
    selected/             what ``sweep select`` chose

Conventions: every JSON file is written atomically (temporary file + rename); saved models are
whole-module pickles, so they are loaded only from inside the folder that wrote them; the report goes
to ``reports/<name>/`` outside the folder (:func:`report_dir`).  ``select``, ``report`` and ``cli``
reach a sweep through this module, never through the Ray driver.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SweepDirError
from .results.store import TrialStore

CONFIG_FILE = "sweep.yaml"
STATE_FILE = "state.json"
BASELINE_MODEL = "baseline/model.pt"
BASELINE_SUMMARY = "baseline/summary.json"
MODELS_DIR = "models"
RAY_DIR = "ray"
SELECTED_DIR = "selected"
MLFLOW_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
REPORTS_ROOT = Path("reports")


def report_dir(name: str, root: Path | str | None = None) -> Path:
    """Where the report of sweep ``name`` goes: ``reports/<name>`` (or ``<root>/<name>``)."""
    return Path(REPORTS_ROOT if root is None else root) / name


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
    def default_tracking_uri(self) -> str:
        """The embedded MLflow store: sqlite in the folder (absolute, so it works from any cwd)."""
        return f"sqlite:///{self.path / MLFLOW_DB}"

    @property
    def store(self) -> TrialStore:
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

        if self.path.exists() and any(self.path.iterdir()):
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

        if not self.is_sweep():
            raise SweepDirError(f"not a sweep folder (no {CONFIG_FILE}): {self.path}")
        return load_config(self.config_path)

    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}

    def write_state(self, state: dict) -> None:
        _write_atomic(self.state_path, json.dumps(state, indent=2, default=str))

    # ------------------------------------------------------------------ baseline
    def baseline(self) -> dict:
        """The dense baseline's figures (``baseline/summary.json``)."""
        p = self.path / BASELINE_SUMMARY
        if not p.is_file():
            raise SweepDirError(f"not a sweep folder (no {BASELINE_SUMMARY}): {self.path}")
        return json.loads(p.read_text())

    def write_baseline(self, model, summary: dict) -> str:
        """Save the dense model and its figures; return the model's path relative to the folder."""
        rel = self.save_model(model, BASELINE_MODEL)
        _write_atomic(self.path / BASELINE_SUMMARY, json.dumps(summary, indent=2))
        return rel

    def load_baseline_model(self):
        return self.load_model(BASELINE_MODEL)

    # ------------------------------------------------------------------ models
    def save_model(self, model, rel: str) -> str:
        """Whole-module save inside the folder (pruned shapes differ from any builder's), atomically."""
        import torch

        path = self.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model, tmp)
        os.replace(tmp, path)
        return rel

    def load_model(self, rel: str):
        """Load a model saved by :meth:`save_model`; refuses paths outside the folder (they are pickles)."""
        import torch

        path = (self.path / rel).resolve()
        if self.path not in path.parents:
            raise SweepDirError(f"model path must lie inside the sweep folder {self.path}, but got {rel!r}")
        if not path.is_file():
            raise SweepDirError(f"saved model not found: {path}")
        return torch.load(path, map_location="cpu", weights_only=False)

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
    return {"name": cfg.name, "objectives": list(cfg.search.objectives), "baseline": figures,
            "labels": cfg.labels, "quality": cfg.quality, "model": cfg.model.name, "dataset": cfg.dataset.name,
            "methods": [m.name for m in cfg.methods], "trials": cfg.search.trials}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
