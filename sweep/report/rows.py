"""Rows and cells of the trials table, as the report selects and reads them.

Conventions:

* The baseline row is the one with ``trial_id == "baseline"``; "trials" are the other rows.  The
  baseline is a candidate like any trial: it may be on the front and counts in the hypervolume.
* The sweep's front is the rows :func:`sweep.pareto.front_flags` puts on the front of the sweep's
  objectives, computed from the figures (one front function; the stored ``on_front`` column is the same
  function's cache, and a running sweep's newest rows do not carry it yet).
* A missing cell is None or NaN; :func:`num` reads any cell as a float (NaN when it is not a number).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sweep import pareto
from sweep.results.schema import BASELINE_ID, KNOB_PREFIX


def is_baseline(df: pd.DataFrame) -> pd.Series:
    return df["trial_id"] == BASELINE_ID


def is_ok(df: pd.DataFrame) -> pd.Series:
    return df["status"] == "ok"


# rows with figures that never enter the front: cut short by successive halving (quality at their rung) or
# over a hard budget right after pruning (quality before fine-tuning); the report shows them apart
APART = ("stopped_early", "infeasible")


def apart_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The trials of :data:`APART` statuses, in the order they ended."""
    rows = df[df["status"].isin(APART)]
    return rows.sort_values("ended_at", kind="stable", na_position="last") if "ended_at" in rows else rows


def trials(df: pd.DataFrame) -> pd.DataFrame:
    """Every row but the baseline's."""
    return df[~is_baseline(df)]


def ok_rows_in_order(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the hypervolume counts (``ok``, not a trial that removed nothing:
    :func:`sweep.pareto.counts_toward_front`) in the order it grows: the baseline first, then trials by end
    time."""
    ok = df[pareto.counts_toward_front(df.to_dict("records"))] if len(df) else df
    done = ok[~is_baseline(ok)].sort_values("ended_at", kind="stable", na_position="last")
    return pd.concat([ok[is_baseline(ok)], done])


def objective_values(rows: pd.DataFrame, objectives: Sequence[str]) -> dict[str, np.ndarray]:
    """Each objective's column of ``rows`` as floats (the input of the :mod:`sweep.pareto` volumes)."""
    return {o: rows[o].to_numpy(dtype=float) for o in objectives}


def front_rows(df: pd.DataFrame, objectives: Sequence[str], quality: str) -> pd.DataFrame:
    """``ok`` rows on the sweep's front, best ``quality`` first."""
    on = pd.Series(pareto.front_flags(df.to_dict("records"), objectives), index=df.index, dtype=bool)
    return df[on].sort_values([quality, "trial_id"], ascending=[False, True], kind="stable",
                              key=lambda col: col.astype(float) if col.name == quality else col)


def best_row(rows: pd.DataFrame, quality: str) -> pd.Series | None:
    """The row of ``rows`` with the highest ``quality`` (None when no row has one)."""
    values = rows[quality].astype(float)
    return rows.loc[values.idxmax()] if values.notna().any() else None


def knob_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(KNOB_PREFIX)]


def knobs_text(row: pd.Series, knob_columns: Sequence[str]) -> str:
    """``name=value`` for the row's non-null knobs; the method prefix is dropped when it matches."""
    parts = []
    prefix = f"{KNOB_PREFIX}{row.get('method')}."
    for column in knob_columns:
        value = row.get(column)
        if missing(value):
            continue
        name = column[len(prefix) :] if column.startswith(prefix) else column[len(KNOB_PREFIX) :]
        parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


def info(row: pd.Series) -> dict:
    """The row's ``info`` JSON object ({} when absent or not an object)."""
    try:
        value = json.loads(text(row.get("info")) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-like values are present, whatever they hold
        return False


def text(value: Any) -> str:
    return "" if missing(value) else str(value)


def num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def focus_row(df: pd.DataFrame, selected_id: str | None, quality: str) -> tuple[pd.Series | None, str]:
    """The trial the report singles out, and why: the ``ok`` trial ``sweep select`` chose (``"selected"``),
    else the best-``quality`` ``ok`` trial (``"best"``); the baseline is never singled out."""
    ok = trials(df)[is_ok(trials(df))]
    chosen = ok[ok["trial_id"] == selected_id] if selected_id else ok.iloc[0:0]
    if len(chosen):
        return chosen.iloc[0], "selected"
    return best_row(ok, quality), "best"
