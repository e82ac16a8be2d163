"""The sweep's table as the report reads it: through :class:`sweep.results.store.TrialStore`.

Conventions:

* The table's ``sweep`` metadata must name known objectives (:data:`sweep.pareto.DIRECTIONS`) and give
  the baseline's positive value of each; its ``quality`` (``"accuracy"`` or ``"agreement"``) is
  ``"accuracy"`` when absent (tables written before label-free sweeps).  :func:`read_trials` returns the
  metadata with ``quality`` always set, so the rest of the report reads it from there and nowhere else.
* Columns the file lacks (older or hand-made tables) read as null; numeric and time columns get numeric
  and time dtypes even when every cell is null.
* Every problem is one line of :class:`SweepDirError` that names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sweep import pareto
from sweep.errors import SweepDirError
from sweep.results.schema import COLUMN_NAMES, COLUMN_TYPES
from sweep.results.store import FILENAME, TrialStore

QUALITIES = ("accuracy", "agreement")


def read_trials(sweep_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The trials table of ``sweep_dir`` and its validated ``sweep`` metadata."""
    store = TrialStore(sweep_dir)
    if not store.exists():
        raise SweepDirError(f"sweep folder must hold a readable {FILENAME}, but there is no such file ({store.path})")
    try:
        rows, meta = store.read()  # a corrupt file raises the store's one-line SweepDirError
    except ValueError:  # the metadata is not JSON: reported as malformed below
        rows, meta = [], None
    meta = _checked_meta(meta, store.path)
    return _typed_frame(rows), meta


def _checked_meta(meta: Any, path: Path) -> dict[str, Any]:
    """``meta`` with ``quality`` set; :class:`SweepDirError` when it cannot describe a sweep."""
    if not isinstance(meta, dict) or not meta:
        raise SweepDirError(
            f"{FILENAME} must carry 'sweep' JSON schema metadata, but it is missing or malformed ({path})"
        )
    objectives = meta.get("objectives")
    baseline = meta.get("baseline")
    if (
        not isinstance(objectives, list)
        or not objectives
        or any(o not in pareto.DIRECTIONS for o in objectives)
        or not isinstance(baseline, dict)
    ):
        raise SweepDirError(
            f"'sweep' metadata must name known objectives and a baseline, but got "
            f"objectives={objectives!r} ({path})"
        )
    for name in objectives:
        value = baseline.get(name)
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
            raise SweepDirError(
                f"baseline {name} must be a positive number, but got {value!r} ({path}: metadata sweep.baseline)"
            )
    quality = meta.get("quality", "accuracy")
    if quality not in QUALITIES:
        raise SweepDirError(
            f"'sweep' metadata quality must be one of {list(QUALITIES)}, but got quality={quality!r} ({path})"
        )
    return {**meta, "quality": quality}


def _typed_frame(rows: list[dict]) -> pd.DataFrame:
    """``rows`` as a DataFrame holding every schema column, numbers as floats and times as UTC times."""
    df = pd.DataFrame.from_records(rows)
    for name in COLUMN_NAMES:
        if name not in df.columns:
            df[name] = None
        typ = COLUMN_TYPES[name]
        if pa.types.is_integer(typ) or pa.types.is_floating(typ):
            df[name] = pd.to_numeric(df[name], errors="coerce")
        elif pa.types.is_timestamp(typ):
            df[name] = pd.to_datetime(df[name], utc=True)
    return df


def selected_trial_id(sweep_dir: Path) -> str | None:
    """The trial ``sweep select`` chose (``selected/selection.json``: ``chosen.trial_id``), or None when
    nothing was selected or the file cannot be read (the report then draws the best trial instead)."""
    import json

    from sweep.folder import SELECTED_DIR, SELECTION_FILE

    try:
        decision = json.loads((Path(sweep_dir) / SELECTED_DIR / SELECTION_FILE).read_text(encoding="utf-8"))
        trial_id = decision["chosen"]["trial_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return trial_id if isinstance(trial_id, str) else None
