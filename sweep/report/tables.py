"""The report's tables: summary, Pareto front, methods compared, and the CLI's plain-text front.

Conventions:

* Quality is the sweep's quality column (``meta["quality"]``: ``accuracy``, or ``agreement`` in a
  label-free sweep); "best" always means best quality.  Front tables of a label-free sweep show
  accuracy next to agreement, for reference only.
* The summary's "best" is the best ``ok`` trial (the baseline has its own line); the hypervolume is
  the one of :mod:`sweep.pareto` over every ``ok`` row, the baseline included.
* Cells are strings; a missing number shows as ``-``.
* A sweep with an MBN teacher (:mod:`sweep.report.teacher`) adds the teacher's figures to the summary and a
  ``speed-up vs teacher`` column to its front tables (HTML, Markdown and the CLI's plain text); other
  sweeps' tables are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sweep import pareto
from sweep.constraints import budget_words

from .rows import (
    apart_rows,
    best_row,
    front_rows,
    info,
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
from .teacher import SPEEDUP_HEADER, Teacher, speedup_cell, summary_text, teacher_of

RATIO_HEADERS = ("params ratio", "MACs ratio", "latency ratio")
NOISE_HEADERS = ("noise-aware front", "same structure as")
METHOD_HEADERS = ("method", "trials", "ok", "failed", "on front", "best quality", "best at <= 1/2 MACs",
                  "MACs of best")  # fmt: skip
FAILED_HEADERS = ("trial", "status", "method", "knobs", "error")
NO_LABELLED_SET = ("no labelled set was given (dataset.unlabeled alone): accuracy is unknown; the front and the best "
                   "are by agreement with the teacher alone")
APART_NOTE = ("Never on the Pareto front: a trial stopped early by successive halving shows the quality at the rung "
              "it stopped at, after the fine-tune epochs it got; an infeasible one broke a hard budget of "
              "search.constraints right after pruning and was not fine-tuned (its quality is the pruned network's).")


def apart_headers(quality: str) -> list[str]:
    return ["trial", "status", "method", "knobs", f"{quality} when stopped", "fine-tune epochs", "params ratio",
            "MACs ratio", "reason"]


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
        "stopped_early": int((all_trials["status"] == "stopped_early").sum()),
        "infeasible": int((all_trials["status"] == "infeasible").sum()),
        "methods": sorted(str(m) for m in all_trials["method"].dropna().unique()),
        "baseline": {
            "accuracy": fmt_quality(baseline.get("accuracy")),
            "test_accuracy": fmt_quality(base_test),
            "params": fmt_count(baseline.get("params")),
            "macs": fmt_count(baseline.get("macs")),
            # the table's row: re-measured alone with the trials at the sweep's end, as the front table shows it
            "latency_ms": (fmt_ms(base_rows["latency_ms"].iloc[0], base_rows["latency_iqr_ms"].iloc[0])
                           if len(base_rows) and np.isfinite(num(base_rows["latency_ms"].iloc[0]))
                           else fmt_ms(baseline.get("latency_ms"))),
        },
        "best": None if best is None else (str(best["trial_id"]), str(best["method"]), fmt_quality(best[quality])),
        "front_size": len(front),
        "hypervolume": pareto.sweep_hypervolume(hv_values, objectives, baseline),
        "noise": front_noise(df, front, objectives),
        "latency_runtime": latency_runtimes(df),
        "teacher": _teacher_summary(df),
        "reference": _reference_summary(df, quality),
        # the `unlabeled` dataset is device data alone: no accuracy anywhere, quality is agreement
        "labelled": meta.get("dataset") != "unlabeled",
        "budgets": dict(meta.get("constraints") or {}),  # search.constraints; tables written before lack it
    }


def _reference_summary(df: pd.DataFrame, quality: str) -> str | None:
    """The summary's "Dense + fine-tuning" line: the dense model fine-tuned like a trial, nothing removed
    (``trial.dense_reference``), and how many ok trials reach its quality; None when the sweep has none."""
    base = df[is_baseline(df)]
    ref = info(base.iloc[0]).get("summary", {}).get("reference") if len(base) else None
    if not isinstance(ref, dict) or num(ref.get(quality)) != num(ref.get(quality)):  # absent or NaN
        return None
    ok = trials(df)
    ok = ok[is_ok(ok)]
    reach = int((ok[quality].astype(float) >= float(ref[quality])).sum()) if len(ok) else 0
    test = f" (test accuracy {fmt_quality(ref.get('test_accuracy'))})" if quality == "accuracy" else ""
    return (f"{quality} {fmt_quality(ref[quality])}{test}: the dense model after the trials' fine-tuning "
            f"({int(num(ref.get('epochs')))} epoch(s)), nothing removed -- what training alone gives; "
            f"{reach} of {len(ok)} ok trial(s) reach it")


def _teacher_summary(df: pd.DataFrame) -> str | None:
    """The summary's "MBN teacher" line (None without an MBN teacher), with the dense student's speed-up."""
    teacher = teacher_of(df)
    if teacher is None:
        return None
    base = df[is_baseline(df) & is_ok(df)]
    return summary_text(teacher, speedup_cell(teacher, base.iloc[0]) if len(base) else "-")


def front_noise(df: pd.DataFrame, front: pd.DataFrame, objectives: Sequence[str]) -> dict[str, int]:
    """How far noise decides the front: front points with another front point within latency noise
    (IQR bands overlap, :func:`sweep.pareto.within_noise`), the size of the noise-aware front
    (``front_flags(..., robust=True)``) and the ok rows that duplicate an earlier row's structure."""
    records = front.to_dict("records")
    within = sum(n > 0 for n in pareto.noise_neighbours(records)) if "latency_ms" in objectives else 0
    ok = df[is_ok(df)].to_dict("records")
    return {"within": int(within), "robust": int(sum(pareto.front_flags(ok, objectives, robust=True))),
            "duplicates": int(sum(d is not None for d in pareto.duplicate_of(ok)))}


def latency_runtimes(df: pd.DataFrame) -> str:
    """The runtime(s) the ok rows' latencies were timed on, with threads, batch and device
    (e.g. ``onnxruntime 1.20.1, 1 thread(s), batch 1, cpu``); tables from before the runtime was
    recorded read as eager torch."""
    ok = df[is_ok(df)]
    if ok.empty:
        return "-"
    parts = []
    for _, r in ok.iterrows():
        runtime = text(r.get("latency_runtime")) or "torch (not recorded)"
        threads, batch = num(r.get("threads")), num(r.get("latency_batch"))
        part = ", ".join([runtime, *([f"{threads:.0f} thread(s)"] if np.isfinite(threads) else []),
                          *([f"batch {batch:.0f}"] if np.isfinite(batch) else []),
                          *([text(r.get("device"))] if text(r.get("device")) else [])])
        if part not in parts:
            parts.append(part)
    return "; ".join(parts)


def summary_items(s: dict[str, Any]) -> list[tuple[str, str]]:
    b = s["baseline"]
    best = "-" if s["best"] is None else f"{s['best'][2]} ({s['best'][0]}, {s['best'][1]})"
    baseline = (f"accuracy {b['accuracy']} (test {b['test_accuracy']}), params {b['params']}, "
                f"MACs {b['macs']}, latency {b['latency_ms']} ms")
    return [
        ("Objectives", ", ".join(s["objectives"])),
        ("Trials", f"{s['total']} total: {s['ok']} ok, {s['failed']} failed, {s['stopped']} stopped"
                   + "".join(f", {s.get(k, 0)} {k.replace('_', ' ')}" for k in ("stopped_early", "infeasible")
                             if s.get(k))),
        ("Methods", ", ".join(s["methods"]) or "-"),
        ("Baseline" if not s.get("teacher") else "Baseline (dense student)", baseline),
        *([("MBN teacher", s["teacher"])] if s.get("teacher") else []),
        *([("Dense + fine-tuning", s["reference"])] if s.get("reference") else []),
        (f"Best {s['quality']}", best),
        ("Front size", str(s["front_size"])),
        ("Latency timed on", s["latency_runtime"]),
        ("Front within noise", f"{s['noise']['within']} of {s['front_size']} front points have another front "
                               f"point within latency noise (IQR bands overlap); the noise-aware front has "
                               f"{s['noise']['robust']} point(s); {s['noise']['duplicates']} ok row(s) duplicate "
                               f"an earlier row's structure"),
        ("Final hypervolume", f"{s['hypervolume']:.4f}"),
        *([("Budgets (search.constraints)", _budgets_line(s))] if s.get("budgets") else []),
        *([] if s.get("labelled", True) else [("Labels", NO_LABELLED_SET)]),
    ]


def _budgets_line(s: dict[str, Any]) -> str:
    """The summary's budgets line: the hard budgets and what they cost the sweep's candidates."""
    n = s.get("infeasible", 0)
    return (f"{budget_words(s['budgets'])}: {n} candidate(s) broke a cost budget right after pruning and were not "
            f"fine-tuned (infeasible); drawn dotted on the plots of their axes")


# --------------------------------------------------------------------------- front and methods


def front_headers(quality: str, teacher: Teacher | None = None) -> list[str]:
    """The front table's headers; with an MBN ``teacher``, the clusters' NMI (validation) after the test
    accuracy and ``speed-up vs teacher`` after the ratios."""
    return ["trial", "method", "knobs", *quality_columns(quality), "test_accuracy",
            *(["NMI"] if teacher is not None else []), "params", "MACs", "latency_ms", *RATIO_HEADERS,
            *([SPEEDUP_HEADER] if teacher is not None else []), *NOISE_HEADERS]


def noise_marks(df: pd.DataFrame, objectives: Sequence[str]) -> tuple[set[str], dict[str, str]]:
    """(trial ids on the noise-aware front, trial id -> the earlier ok row of the same structure) among the
    ok rows of ``df``: computed, so tables that predate those columns get them too."""
    ok = df[is_ok(df)].to_dict("records")
    robust = {r["trial_id"] for r, on in zip(ok, pareto.front_flags(ok, objectives, robust=True)) if on}
    dups = {r["trial_id"]: d for r, d in zip(ok, pareto.duplicate_of(ok)) if d is not None}
    return robust, dups


def front_cells(front: pd.DataFrame, meta: dict[str, Any], knob_cols: Sequence[str],
                df: pd.DataFrame | None = None, teacher: Teacher | None = None) -> list[list[str]]:
    """One row of :func:`front_headers` cells per front row; ``df`` (the whole table) decides the
    noise-aware front and the duplicates (computed, so tables that predate those columns show them too);
    ``teacher`` adds the speed-up over the MBN teacher."""
    baseline = meta["baseline"]
    robust, dups = noise_marks(front if df is None else df, meta["objectives"])
    return [
        [
            str(row["trial_id"]),
            str(row["method"]),
            knobs_text(row, knob_cols),
            *(fmt_quality(row[q]) for q in quality_columns(meta["quality"])),
            fmt_quality(row["test_accuracy"]),
            *([fmt_quality(row.get("nmi"))] if teacher is not None else []),
            fmt_count(row["params"]),
            fmt_count(row["macs"]),
            fmt_ms(row["latency_ms"], row["latency_iqr_ms"]),
            fmt_ratio(row, "params", "params_ratio", baseline),
            fmt_ratio(row, "macs", "macs_ratio", baseline),
            fmt_ratio(row, "latency_ms", "latency_ratio", baseline),
            *([speedup_cell(teacher, row)] if teacher is not None else []),
            "yes" if row["trial_id"] in robust else "no",
            dups.get(row["trial_id"], "-"),
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


def apart_cells(df: pd.DataFrame, meta: dict[str, Any], knob_cols: Sequence[str]) -> list[list[str]]:
    """One row of :func:`apart_headers` cells per stopped-early or infeasible trial."""
    quality, baseline = meta["quality"], meta["baseline"]
    return [
        [str(r["trial_id"]), str(r["status"]), str(r["method"]), knobs_text(r, knob_cols) or "-",
         fmt_quality(r.get(quality)), _epochs(r.get("finetune_epochs")),
         fmt_ratio(r, "params", "params_ratio", baseline), fmt_ratio(r, "macs", "macs_ratio", baseline),
         text(r.get("error")) or "-"]
        for _, r in apart_rows(df).iterrows()
    ]


def _epochs(value: Any) -> str:
    x = num(value)
    return "-" if np.isnan(x) else f"{x:g}"


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
    first; pass the sweep's quality (``"agreement"`` in a label-free sweep).  A sweep with an MBN teacher
    (its baseline row records one) gets the ``speed-up vs teacher`` column.  The last two columns say
    whether a point is also on the noise-aware front (``no``: on the strict front only because another
    point's latency is within its noise) and which earlier trial has the same structure."""
    front = front_rows(df, objectives, quality)
    if front.empty:
        return "no trials on the Pareto front"
    knob_cols = knob_columns(df)
    qualities = quality_columns(quality)
    teacher = teacher_of(df)
    robust, dups = noise_marks(df, objectives)
    headers = ["trial", "method", "knobs", *qualities, "latency_ms", "params", "MACs",
               *([SPEEDUP_HEADER] if teacher is not None else []), "noise-aware", "same structure as"]
    rows = [
        [
            str(row["trial_id"]),
            str(row["method"]),
            knobs_text(row, knob_cols) or "-",
            *(fmt_quality(row.get(q)) for q in qualities),
            fmt_ms(row["latency_ms"], row.get("latency_iqr_ms")),
            fmt_count(row["params"]),
            fmt_count(row["macs"]),
            *([speedup_cell(teacher, row)] if teacher is not None else []),
            "yes" if row["trial_id"] in robust else "no",
            dups.get(row["trial_id"], "-"),
        ]
        for _, row in front.iterrows()
    ]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    numeric = set(range(3, len(headers) - 2))  # right-align numbers so digits line up

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# --------------------------------------------------------------------------- budget explorer


BUDGET_WORDS = {"latency_ms": "latency (ms)", "params": "params", "macs": "MACs"}
BUDGET_NOTE = (
    "Each budget is a cost that a front point reaches: the row gives the best quality of any ok trial (or the "
    "baseline) that costs at most that much, and which trial it is. Read it as: \"if I can afford this, what "
    "do I get?\""
)


def budget_headers(quality: str) -> list[str]:
    return ["budget on", "at most", f"best {quality}", "trial", "method", "latency_ms", "params", "MACs"]


def budget_costs(objectives: Sequence[str]) -> list[str]:
    """The costs the explorer budgets: latency and params always, MACs when the sweep optimised it."""
    return ["latency_ms", "params", *(["macs"] if "macs" in objectives else [])]


def best_within(ok: pd.DataFrame, quality: str, cost: str, budget: float) -> pd.Series | None:
    """The best-``quality`` row of ``ok`` costing at most ``budget``; ties go to the cheaper, then by trial id."""
    inside = ok[ok[cost].astype(float) <= budget]
    if inside.empty:
        return None
    order = inside.assign(_q=inside[quality].astype(float), _c=inside[cost].astype(float))
    return order.sort_values(["_q", "_c", "trial_id"], ascending=[False, True, True], kind="stable").iloc[0]


def budget_explorer(df: pd.DataFrame, front: pd.DataFrame, meta: dict[str, Any]) -> list[list[str]]:
    """One row of :func:`budget_headers` cells per (cost, budget): every distinct cost of a front point, by
    rising budget, with the best quality within it."""
    quality = meta["quality"]
    rows = []
    for cost in budget_costs(meta["objectives"]):
        values = pd.to_numeric(df[cost], errors="coerce")
        ok = df[is_ok(df) & values.notna() & pd.to_numeric(df[quality], errors="coerce").notna()]
        budgets = sorted({float(v) for v in pd.to_numeric(front[cost], errors="coerce") if np.isfinite(v)})
        for budget in budgets:
            best = best_within(ok, quality, cost, budget)
            if best is None:
                continue
            rows.append([BUDGET_WORDS[cost], fmt_ms(budget) if cost == "latency_ms" else fmt_count(budget),
                         fmt_quality(best[quality]), str(best["trial_id"]), str(best["method"]),
                         fmt_ms(best["latency_ms"]), fmt_count(best["params"]), fmt_count(best["macs"])])  # fmt: skip
    return rows
