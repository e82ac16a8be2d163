"""The report's tables: summary, Pareto front, methods compared, and the CLI's plain-text front.

Conventions:

* Quality is the sweep's quality column (``meta["quality"]``: ``accuracy``, or ``agreement`` in a
  label-free sweep); "best" always means best quality.  Front tables of a label-free sweep show
  accuracy next to agreement, for reference only.
* The summary's "best" is the best ``ok`` trial (the baseline has its own line); the hypervolume is
  the one of :mod:`sweep.pareto` over every ``ok`` row, the baseline included.
* Cells are strings; a missing number shows as ``-``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sweep import pareto

from .rows import (
    best_row,
    front_rows,
    is_baseline,
    is_ok,
    knob_columns,
    knobs_text,
    num,
    objective_values,
    ok_rows_in_order,
    text,
    trials,
)

RATIO_HEADERS = ("params ratio", "MACs ratio", "latency ratio")
METHOD_HEADERS = ("method", "trials", "ok", "failed", "on front", "best quality", "best at <= 1/2 MACs",
                  "MACs of best")  # fmt: skip
FAILED_HEADERS = ("trial", "status", "method", "knobs", "error")


# --------------------------------------------------------------------------- cells


def fmt_count(value: Any) -> str:
    x = num(value)
    if np.isnan(x):
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.0f}"


def fmt_quality(value: Any) -> str:
    x = num(value)
    return "-" if np.isnan(x) else f"{x:.4f}"


def fmt_ms(value: Any, iqr: Any = None) -> str:
    x, spread = num(value), num(iqr)
    if np.isnan(x):
        return "-"
    return f"{x:.3g}" if np.isnan(spread) else f"{x:.3g} ± {spread:.2g}"


def fmt_ratio(row: pd.Series, name: str, ratio_column: str, baseline: dict[str, Any]) -> str:
    ratio = num(row.get(ratio_column))
    if np.isnan(ratio):
        # Ratio not stored: derive it from the baseline figures in the metadata.
        base = num(baseline.get(name))
        ratio = num(row.get(name)) / base if base > 0 else float("nan")
    return "-" if np.isnan(ratio) else f"{ratio:.3f}"


def quality_columns(quality: str) -> list[str]:
    """The quality columns a front table shows: the sweep's quality, then accuracy for reference."""
    return [quality] if quality == "accuracy" else [quality, "accuracy"]


# --------------------------------------------------------------------------- summary


def summary(df: pd.DataFrame, meta: dict[str, Any], front: pd.DataFrame) -> dict[str, Any]:
    """The figures of the report's summary, formatted."""
    objectives, baseline, quality = meta["objectives"], meta["baseline"], meta["quality"]
    all_trials = trials(df)
    base_rows = df[is_baseline(df)]
    base_test = baseline.get("test_accuracy")
    if base_test is None and len(base_rows):
        base_test = base_rows["test_accuracy"].iloc[0]
    best = best_row(all_trials[is_ok(all_trials)], quality)
    hv_values = objective_values(ok_rows_in_order(df), objectives)
    return {
        "name": str(meta.get("name", "")),
        "objectives": list(objectives),
        "quality": quality,
        "total": len(all_trials),
        "ok": int((all_trials["status"] == "ok").sum()),
        "failed": int((all_trials["status"] == "failed").sum()),
        "stopped": int((all_trials["status"] == "stopped").sum()),
        "methods": sorted(str(m) for m in all_trials["method"].dropna().unique()),
        "baseline": {
            "accuracy": fmt_quality(baseline.get("accuracy")),
            "test_accuracy": fmt_quality(base_test),
            "params": fmt_count(baseline.get("params")),
            "macs": fmt_count(baseline.get("macs")),
            "latency_ms": fmt_ms(baseline.get("latency_ms")),
        },
        "best": None if best is None else (str(best["trial_id"]), str(best["method"]), fmt_quality(best[quality])),
        "front_size": len(front),
        "hypervolume": pareto.sweep_hypervolume(hv_values, objectives, baseline),
    }


def summary_items(s: dict[str, Any]) -> list[tuple[str, str]]:
    b = s["baseline"]
    best = "-" if s["best"] is None else f"{s['best'][2]} ({s['best'][0]}, {s['best'][1]})"
    baseline = (f"accuracy {b['accuracy']} (test {b['test_accuracy']}), params {b['params']}, "
                f"MACs {b['macs']}, latency {b['latency_ms']} ms")
    return [
        ("Objectives", ", ".join(s["objectives"])),
        ("Trials", f"{s['total']} total: {s['ok']} ok, {s['failed']} failed, {s['stopped']} stopped"),
        ("Methods", ", ".join(s["methods"]) or "-"),
        ("Baseline", baseline),
        (f"Best {s['quality']}", best),
        ("Front size", str(s["front_size"])),
        ("Final hypervolume", f"{s['hypervolume']:.4f}"),
    ]


# --------------------------------------------------------------------------- front and methods


def front_headers(quality: str) -> list[str]:
    return ["trial", "method", "knobs", *quality_columns(quality), "test_accuracy", "params", "MACs", "latency_ms",
            *RATIO_HEADERS]  # fmt: skip


def front_cells(front: pd.DataFrame, meta: dict[str, Any], knob_cols: Sequence[str]) -> list[list[str]]:
    """One row of :func:`front_headers` cells per front row."""
    baseline = meta["baseline"]
    return [
        [
            str(row["trial_id"]),
            str(row["method"]),
            knobs_text(row, knob_cols),
            *(fmt_quality(row[q]) for q in quality_columns(meta["quality"])),
            fmt_quality(row["test_accuracy"]),
            fmt_count(row["params"]),
            fmt_count(row["macs"]),
            fmt_ms(row["latency_ms"], row["latency_iqr_ms"]),
            fmt_ratio(row, "params", "params_ratio", baseline),
            fmt_ratio(row, "macs", "macs_ratio", baseline),
            fmt_ratio(row, "latency_ms", "latency_ratio", baseline),
        ]
        for _, row in front.iterrows()
    ]


def method_comparison(df: pd.DataFrame, meta: dict[str, Any], front_ids: set[str]) -> list[list[str]]:
    """One row of :data:`METHOD_HEADERS` cells per method: trials, ok, failed, front members, best quality,
    and the best quality among trials at or under half the baseline's MACs (a like-for-like comparison)."""
    quality, baseline = meta["quality"], meta["baseline"]
    base_macs = num(baseline.get("macs"))
    all_trials = trials(df)
    rows = []
    for method in sorted(all_trials["method"].dropna().unique()):
        t = all_trials[all_trials["method"] == method]
        ok = t[is_ok(t)]
        half = ok[ok["macs"].astype(float) <= 0.5 * base_macs] if np.isfinite(base_macs) else ok.iloc[0:0]
        best = best_row(ok, quality)
        rows.append([
            method, str(len(t)), str(len(ok)), str(int((t["status"] == "failed").sum())),
            str(int(ok["trial_id"].isin(front_ids).sum())),
            "-" if best is None else fmt_quality(best[quality]),
            fmt_quality(half[quality].astype(float).max()),
            "-" if best is None else fmt_ratio(best, "macs", "macs_ratio", baseline),
        ])
    return rows


def failed_cells(df: pd.DataFrame, knob_cols: Sequence[str]) -> list[list[str]]:
    """One row of :data:`FAILED_HEADERS` cells per failed or stopped trial."""
    all_trials = trials(df)
    failed = all_trials[all_trials["status"].isin(["failed", "stopped"])]
    return [
        [str(r["trial_id"]), str(r["status"]), str(r["method"]), knobs_text(r, knob_cols), text(r["error"])]
        for _, r in failed.iterrows()
    ]


# --------------------------------------------------------------------------- plain text


def front_table(df: pd.DataFrame, objectives: Sequence[str], quality: str = "accuracy") -> str:
    """The sweep's Pareto front as a fixed-width plain-text table (printed by the CLI), best ``quality``
    first; pass the sweep's quality (``"agreement"`` in a label-free sweep)."""
    front = front_rows(df, objectives, quality)
    if front.empty:
        return "no trials on the Pareto front"
    knob_cols = knob_columns(df)
    qualities = quality_columns(quality)
    headers = ["trial", "method", "knobs", *qualities, "latency_ms", "params", "MACs"]
    rows = [
        [
            str(row["trial_id"]),
            str(row["method"]),
            knobs_text(row, knob_cols) or "-",
            *(fmt_quality(row.get(q)) for q in qualities),
            fmt_ms(row["latency_ms"], row.get("latency_iqr_ms")),
            fmt_count(row["params"]),
            fmt_count(row["macs"]),
        ]
        for _, row in front.iterrows()
    ]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    numeric = set(range(3, len(headers)))  # right-align numbers so digits line up

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
