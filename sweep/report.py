"""Static sweep report built from ``trials.parquet`` alone.

:func:`build_report` writes PNG plots, ``index.html`` (opens from disk, no external URLs),
``interactive.html`` (plotly inlined, when plotly is installed) and ``summary.md``.
:func:`front_table` renders the Pareto front as plain text for the CLI.

Conventions: "trials" are the rows other than the baseline row (``trial_id == "baseline"``); the
front is the rows flagged ``on_front`` (computed from the objectives when that column is empty);
the hypervolume is the one of :mod:`sweep.pareto` over ``ok`` trials, baseline excluded.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweep import pareto
from sweep.errors import SweepDirError
from sweep.results.schema import BASELINE_ID, COLUMN_NAMES, KNOB_PREFIX

PARQUET_NAME = "trials.parquet"
COSTS = ("latency_ms", "params", "macs")
PLOT_FILES = {
    "latency_ms": "accuracy_vs_latency.png",
    "params": "accuracy_vs_params.png",
    "macs": "accuracy_vs_macs.png",
}
HV_FILE = "hypervolume.png"
AXIS_LABELS = {"latency_ms": "latency (ms)", "params": "parameters", "macs": "MACs"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")


# --------------------------------------------------------------------------- reading


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _read_trials(sweep_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The trials table and its ``sweep`` metadata; :class:`SweepDirError` when unusable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(sweep_dir) / PARQUET_NAME
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise SweepDirError(
            f"sweep folder must hold a readable {PARQUET_NAME}, but reading it failed: "
            f"{_one_line(exc)} ({path})"
        ) from None
    raw = (table.schema.metadata or {}).get(b"sweep")
    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise SweepDirError(
            f"{PARQUET_NAME} must carry 'sweep' JSON schema metadata, but it is missing or malformed ({path})"
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
    df = table.to_pandas()
    # Older or hand-made files may lack columns; missing ones read as null.
    for name in COLUMN_NAMES:
        if name not in df.columns:
            df[name] = None
    return df, meta


# --------------------------------------------------------------------------- row helpers


def _is_baseline(df: pd.DataFrame) -> pd.Series:
    return df["trial_id"] == BASELINE_ID


def _ok(df: pd.DataFrame) -> pd.Series:
    return df["status"] == "ok"


def _knob_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(KNOB_PREFIX)]


def _knobs(row: pd.Series, knob_columns: Sequence[str]) -> str:
    """``name=value`` for the row's non-null knobs; the method prefix is dropped when it matches."""
    parts = []
    prefix = f"{KNOB_PREFIX}{row.get('method')}."
    for column in knob_columns:
        value = row.get(column)
        if _missing(value):
            continue
        name = column[len(prefix) :] if column.startswith(prefix) else column[len(KNOB_PREFIX) :]
        parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


def _front_rows(df: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """``ok`` rows on the sweep's front, best accuracy first."""
    ok = df[_ok(df)]
    flags = ok["on_front"] if "on_front" in ok.columns else pd.Series(dtype=object)
    if len(ok) and flags.notna().any():
        front = ok[flags.eq(True)]
    elif len(ok):
        # No stored flags: recompute from the objectives so the report is still useful.
        values = ok[list(objectives)].to_numpy(dtype=float)
        F = pareto.to_minimisation(values, [pareto.DIRECTIONS[o] for o in objectives])
        front = ok[pareto.non_dominated_mask(F)]
    else:
        front = ok
    return front.sort_values(["accuracy", "trial_id"], ascending=[False, True], kind="stable")


def _ordered_ok_trials(df: pd.DataFrame) -> pd.DataFrame:
    trials = df[_ok(df) & ~_is_baseline(df)]
    return trials.sort_values("ended_at", kind="stable", na_position="last")


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-like values are present, whatever they hold
        return False


def _text(value: Any) -> str:
    return "" if _missing(value) else str(value)


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out


def _fmt_count(value: Any) -> str:
    x = _num(value)
    if np.isnan(x):
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.0f}"


def _fmt_acc(value: Any) -> str:
    x = _num(value)
    return "-" if np.isnan(x) else f"{x:.4f}"


def _fmt_ms(value: Any, iqr: Any = None) -> str:
    x, spread = _num(value), _num(iqr)
    if np.isnan(x):
        return "-"
    return f"{x:.3g}" if np.isnan(spread) else f"{x:.3g} ± {spread:.2g}"


def _fmt_ratio(row: pd.Series, name: str, ratio_column: str, baseline: dict[str, Any]) -> str:
    ratio = _num(row.get(ratio_column))
    if np.isnan(ratio):
        # Ratio not stored: derive it from the baseline figures in the metadata.
        base = _num(baseline.get(name))
        ratio = _num(row.get(name)) / base if base > 0 else float("nan")
    return "-" if np.isnan(ratio) else f"{ratio:.3f}"


# --------------------------------------------------------------------------- summary


def _summary(df: pd.DataFrame, meta: dict[str, Any], front: pd.DataFrame) -> dict[str, Any]:
    objectives = meta["objectives"]
    baseline = meta["baseline"]
    trials = df[~_is_baseline(df)]
    ok_trials = _ordered_ok_trials(df)
    base_rows = df[_is_baseline(df)]
    base_test = baseline.get("test_accuracy")
    if base_test is None and len(base_rows):
        base_test = base_rows["test_accuracy"].iloc[0]
    best = None
    if len(ok_trials) and ok_trials["accuracy"].notna().any():
        best = ok_trials.loc[ok_trials["accuracy"].idxmax()]
    rows_values = {o: ok_trials[o].to_numpy(dtype=float) for o in objectives}
    return {
        "name": str(meta.get("name", "")),
        "objectives": list(objectives),
        "total": len(trials),
        "ok": int((trials["status"] == "ok").sum()),
        "failed": int((trials["status"] == "failed").sum()),
        "stopped": int((trials["status"] == "stopped").sum()),
        "methods": sorted(str(m) for m in trials["method"].dropna().unique()),
        "baseline": {
            "accuracy": _fmt_acc(baseline.get("accuracy")),
            "test_accuracy": _fmt_acc(base_test),
            "params": _fmt_count(baseline.get("params")),
            "macs": _fmt_count(baseline.get("macs")),
            "latency_ms": _fmt_ms(baseline.get("latency_ms")),
        },
        "best": None if best is None else (str(best["trial_id"]), str(best["method"]), _fmt_acc(best["accuracy"])),
        "front_size": len(front),
        "hypervolume": pareto.sweep_hypervolume(rows_values, objectives, baseline) if len(ok_trials) else 0.0,
    }


def _summary_items(s: dict[str, Any]) -> list[tuple[str, str]]:
    b = s["baseline"]
    best = "-" if s["best"] is None else f"{s['best'][2]} ({s['best'][0]}, {s['best'][1]})"
    return [
        ("Objectives", ", ".join(s["objectives"])),
        ("Trials", f"{s['total']} total: {s['ok']} ok, {s['failed']} failed, {s['stopped']} stopped"),
        ("Methods", ", ".join(s["methods"]) or "-"),
        (
            "Baseline",
            f"accuracy {b['accuracy']} (test {b['test_accuracy']}), params {b['params']}, "
            f"MACs {b['macs']}, latency {b['latency_ms']} ms",
        ),
        ("Best accuracy", best),
        ("Front size", str(s["front_size"])),
        ("Final hypervolume", f"{s['hypervolume']:.4f}"),
    ]


FRONT_HEADERS = (
    "trial", "method", "knobs", "accuracy", "test_accuracy", "params", "MACs", "latency_ms",
    "params ratio", "MACs ratio", "latency ratio",
)  # fmt: skip


def _front_cells(front: pd.DataFrame, baseline: dict[str, Any], knob_columns: Sequence[str]) -> list[list[str]]:
    return [
        [
            str(row["trial_id"]),
            str(row["method"]),
            _knobs(row, knob_columns),
            _fmt_acc(row["accuracy"]),
            _fmt_acc(row["test_accuracy"]),
            _fmt_count(row["params"]),
            _fmt_count(row["macs"]),
            _fmt_ms(row["latency_ms"], row["latency_iqr_ms"]),
            _fmt_ratio(row, "params", "params_ratio", baseline),
            _fmt_ratio(row, "macs", "macs_ratio", baseline),
            _fmt_ratio(row, "latency_ms", "latency_ratio", baseline),
        ]
        for _, row in front.iterrows()
    ]


# --------------------------------------------------------------------------- plain text


def front_table(df: pd.DataFrame, objectives: Sequence[str]) -> str:
    """The sweep's Pareto front as a fixed-width plain-text table (printed by the CLI).

    A label-free sweep (``agreement`` among the objectives) shows the agreement it chose on first."""
    front = _front_rows(df, objectives)
    if front.empty:
        return "no trials on the Pareto front"
    knob_columns = _knob_columns(df)
    quality = ["agreement", "accuracy"] if "agreement" in objectives else ["accuracy"]
    headers = ["trial", "method", "knobs", *quality, "latency_ms", "params", "MACs"]
    rows = [
        [
            str(row["trial_id"]),
            str(row["method"]),
            _knobs(row, knob_columns) or "-",
            *(_fmt_acc(row.get(q)) for q in quality),
            _fmt_ms(row["latency_ms"], row.get("latency_iqr_ms")),
            _fmt_count(row["params"]),
            _fmt_count(row["macs"]),
        ]
        for _, row in front.iterrows()
    ]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    numeric = set(range(3, len(headers)))  # right-align numbers so digits line up

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# --------------------------------------------------------------------------- plots


def _method_styles(methods: Sequence[str]) -> dict[str, tuple[Any, str]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: (cmap(i % 10), MARKERS[i % len(MARKERS)]) for i, m in enumerate(methods)}


def _maybe_log(ax: Any, x: np.ndarray) -> None:
    x = x[np.isfinite(x) & (x > 0)]
    if len(x) and x.max() / x.min() > 10:
        ax.set_xscale("log")


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _plot_projection(df: pd.DataFrame, cost: str, front_ids: set[str], styles: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5), dpi=100)
    ax = fig.add_subplot()
    ok = df[_ok(df)]
    acc = ok["accuracy"].to_numpy(dtype=float)
    x = ok[cost].to_numpy(dtype=float)
    keep = np.isfinite(acc) & np.isfinite(x)
    ok, acc, x = ok[keep], acc[keep], x[keep]
    is_base = (ok["trial_id"] == BASELINE_ID).to_numpy()
    if len(ok) == 0:
        _no_data(ax, f"no ok trials with accuracy and {cost}")
    for method, (colour, marker) in styles.items():
        sel = ~is_base & (ok["method"] == method).to_numpy()
        if sel.any():
            ax.scatter(x[sel], acc[sel], color=colour, marker=marker, s=30, alpha=0.8, label=method)
    if len(ok):
        # Front of this 2-D view (max accuracy, min cost), drawn as its attainment staircase.
        F = pareto.to_minimisation(np.column_stack([acc, x]), ["max", "min"])
        on = pareto.non_dominated_mask(F)
        order = np.lexsort((-acc[on], x[on]))
        ax.step(x[on][order], acc[on][order], where="post", color="black", lw=1, label="front (this view)")
        ringed = ok["trial_id"].isin(front_ids).to_numpy()
        if ringed.any():
            ax.scatter(x[ringed], acc[ringed], s=130, facecolors="none", edgecolors="crimson",
                       linewidths=1.3, label="sweep front")  # fmt: skip
        if is_base.any():
            bx, by = x[is_base][0], acc[is_base][0]
            ax.scatter([bx], [by], marker="*", s=260, color="gold", edgecolors="black", zorder=5, label="baseline")
            # The baseline is usually the top-right point: label it below-left to stay inside.
            ax.annotate("baseline", (bx, by), textcoords="offset points", xytext=(-10, -14), ha="right", fontsize=9,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
        _maybe_log(ax, x)
        if cost != "latency_ms":
            from matplotlib.ticker import EngFormatter

            ax.xaxis.set_major_formatter(EngFormatter())  # 200k, 1M rather than an offset "1e6"
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(AXIS_LABELS[cost])
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"accuracy vs {AXIS_LABELS[cost]}")
    ax.grid(True, alpha=0.3)
    # Fixed margins: tight_layout costs an extra draw per figure.
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.92)
    fig.savefig(path, format="png")


def _plot_hypervolume(df: pd.DataFrame, meta: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4), dpi=100)
    ax = fig.add_subplot()
    trials = _ordered_ok_trials(df)
    objectives = meta["objectives"]
    if len(trials):
        rows_values = {o: trials[o].to_numpy(dtype=float) for o in objectives}
        history = pareto.hypervolume_history(rows_values, objectives, meta["baseline"])
        ax.step(np.arange(1, len(history) + 1), history, where="post", marker=".", color="tab:blue")
    else:
        _no_data(ax, "no ok trials")
    ax.set_xlabel("ok trials completed (by end time)")
    ax.set_ylabel("hypervolume (normalised)")
    ax.set_title(f"hypervolume of {', '.join(objectives)}")
    ax.grid(True, alpha=0.3)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.14, top=0.9)
    fig.savefig(path, format="png")


def _write_interactive(df: pd.DataFrame, styles: dict, path: Path) -> bool:
    """Accuracy vs latency with hover details; False (nothing written) without plotly."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        return False
    knob_columns = _knob_columns(df)
    ok = df[_ok(df) & df["accuracy"].notna() & df["latency_ms"].notna()]
    fig = go.Figure()
    for method in [*styles, BASELINE_ID]:
        rows = ok[ok["method"] == method] if method != BASELINE_ID else ok[_is_baseline(ok)]
        if method != BASELINE_ID:
            rows = rows[~_is_baseline(rows)]
        if rows.empty:
            continue
        # Plotly renders hover text as HTML, so escape what came from the table.
        hover = [
            "<br>".join(html.escape(s) for s in (str(r["trial_id"]), str(r["method"]), _knobs(r, knob_columns)) if s)
            for _, r in rows.iterrows()
        ]
        fig.add_trace(
            go.Scatter(
                x=rows["latency_ms"].to_numpy(dtype=float),
                y=rows["accuracy"].to_numpy(dtype=float),
                mode="markers",
                name=method,
                hovertext=hover,
                hovertemplate="%{hovertext}<br>latency %{x:.3g} ms<br>accuracy %{y:.4f}<extra></extra>",
                marker={"symbol": "star", "size": 16} if method == BASELINE_ID else {"size": 9},
            )
        )
    lat = ok["latency_ms"].to_numpy(dtype=float)
    lat = lat[lat > 0]
    log = len(lat) > 0 and lat.max() / lat.min() > 10
    fig.update_layout(
        title="accuracy vs latency",
        xaxis_title="latency (ms)",
        yaxis_title="validation accuracy",
        xaxis_type="log" if log else "linear",
        template="plotly_white",
    )
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return True


# --------------------------------------------------------------------------- SR-init block importance

SR_INIT_HEADING = "SR-init block importance"


def _sr_init_blocks(row: pd.Series) -> tuple[list[dict], float | None]:
    """The per-block importances and tau an ``sr_init`` row stored in its ``info`` JSON ([] if none)."""
    try:
        info = json.loads(_text(row.get("info")) or "{}")
    except ValueError:
        return [], None
    blocks = info.get("blocks") if isinstance(info, dict) else None
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        return [], None
    tau = _num(info.get("tau"))
    return blocks, (None if np.isnan(tau) else tau)


def _plot_sr_init(blocks: list[dict], tau: float | None, trial_id: str, path: Path) -> None:
    """Bars of Δ_b per block: removed blocks in red, kept removable ones in blue, non-removable grey."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(max(6.0, 0.28 * len(blocks) + 2), 4), dpi=100)
    ax = fig.add_subplot()
    x = np.arange(len(blocks))
    delta = np.array([_num(b.get("delta")) for b in blocks], dtype=float)
    colours = [
        "tab:red" if b.get("removed") else ("tab:blue" if b.get("removable") else "lightgrey") for b in blocks
    ]
    ax.bar(x, np.nan_to_num(delta), color=colours, edgecolor="black", linewidth=0.4)
    handles = [Patch(color="tab:red", label="removed"), Patch(color="tab:blue", label="kept (removable)"),
               Patch(color="lightgrey", label="not removable")]
    if tau is not None:
        handles.append(ax.axhline(tau, color="black", linestyle="--", linewidth=1, label=f"\u03c4 = {tau:g}"))
    ax.set_xticks(x)
    ax.set_xticklabels([str(b.get("index", i)) for i, b in enumerate(blocks)], fontsize=7)
    for label, colour in zip(ax.get_xticklabels(), colours):  # a removed block with Δ = 0 has no bar to see
        label.set_color("tab:red" if colour == "tab:red" else "black")
    ax.set_xlabel("residual block (forward order)")
    ax.set_ylabel("accuracy drop \u0394 = A\u2080 \u2212 A_b")
    ax.set_title(f"SR-init block importance, trial {trial_id}")
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.grid(True, axis="y", alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.13, top=0.9)
    fig.savefig(path, format="png")


def _write_sr_init_plots(front: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
    """``sr_init_<trial_id>.png`` for each front row of method ``sr_init``; (trial_id, file name) pairs."""
    import re

    written = []
    for _, row in front[front["method"] == "sr_init"].iterrows():
        blocks, tau = _sr_init_blocks(row)
        if not blocks:
            continue
        trial_id = str(row["trial_id"])
        name = "sr_init_" + re.sub(r"[^A-Za-z0-9_.-]", "_", trial_id) + ".png"
        _plot_sr_init(blocks, tau, trial_id, out / name)
        written.append((trial_id, name))
    return written


# --------------------------------------------------------------------------- generic method details
# Methods record details in their ``info`` JSON under two conventional keys, drawn for front trials:
#   "trajectory":   [{"step": i, <series>: value, ...}, ...]  (per iteration / epoch)
#   "layer_ratios": {layer or group name: kept fraction}


def _info(row: pd.Series) -> dict:
    try:
        info = json.loads(_text(row.get("info")) or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _safe_name(prefix: str, trial_id: str) -> str:
    import re

    return prefix + re.sub(r"[^A-Za-z0-9_.-]", "_", trial_id) + ".png"


def _plot_trajectory(traj: list[dict], title: str, path: Path) -> bool:
    from matplotlib.figure import Figure

    steps = [_num(p.get("step", i)) for i, p in enumerate(traj)]
    keys = sorted({k for p in traj for k, v in p.items() if k != "step" and isinstance(v, (int, float))
                   and not isinstance(v, bool)})
    if len(traj) < 2 or not keys:
        return False
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    for k in keys:
        y = np.array([_num(p.get(k)) for p in traj], dtype=float)
        first = next((v for v in y if np.isfinite(v) and v != 0), None)
        if first is None:
            continue
        ax.plot(steps, y / first, marker="o", markersize=3, label=f"{k} (÷ {first:.4g})")
    ax.set_xlabel("step (iteration or epoch)")
    ax.set_ylabel("relative to the first value")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.12, top=0.9)
    fig.savefig(path, format="png")
    return True


def _plot_layer_ratios(ratios: dict, title: str, path: Path) -> bool:
    from matplotlib.figure import Figure

    items = [(str(k), _num(v)) for k, v in ratios.items() if np.isfinite(_num(v))]
    if not items:
        return False
    fig = Figure(figsize=(7, max(2.5, 0.22 * len(items) + 1.2)), dpi=100)
    ax = fig.add_subplot()
    y = np.arange(len(items))
    ax.barh(y, [v for _, v in items], color="tab:blue")
    ax.set_yticks(y)
    ax.set_yticklabels([k for k, _ in items], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("fraction of channels kept")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    fig.subplots_adjust(left=0.3, right=0.97, bottom=0.1, top=0.92)
    fig.savefig(path, format="png")
    return True


def _write_detail_plots(front: pd.DataFrame, out: Path) -> list[tuple[str, str, str]]:
    """Trajectory and per-layer plots of front trials; (trial_id, method, file name) triples."""
    written = []
    for _, row in front.iterrows():
        info = _info(row)
        trial_id, method = str(row["trial_id"]), str(row["method"])
        traj = info.get("trajectory")
        if isinstance(traj, list) and all(isinstance(p, dict) for p in traj):
            name = _safe_name("trajectory_", trial_id)
            if _plot_trajectory(traj, f"{method} trajectory, trial {trial_id}", out / name):
                written.append((trial_id, method, name))
        ratios = info.get("layer_ratios")
        if isinstance(ratios, dict) and ratios:
            name = _safe_name("layers_", trial_id)
            if _plot_layer_ratios(ratios, f"{method} kept channels per layer, trial {trial_id}", out / name):
                written.append((trial_id, method, name))
    return written


def _method_comparison(df: pd.DataFrame, meta: dict[str, Any]) -> list[list[str]]:
    """One row per method: trials, ok, failed, front members, best quality, and the best quality among
    trials at or under half the baseline's MACs (a like-for-like point of comparison)."""
    quality = "agreement" if "agreement" in meta.get("objectives", []) else "accuracy"
    trials = df[~_is_baseline(df)]
    base_macs = _num(meta.get("baseline", {}).get("macs"))
    rows = []
    for method in sorted(trials["method"].dropna().unique()):
        t = trials[trials["method"] == method]
        ok = t[t["status"] == "ok"]
        half = ok[ok["macs"].astype(float) <= 0.5 * base_macs] if np.isfinite(base_macs) else ok.iloc[0:0]
        best = ok.loc[ok[quality].astype(float).idxmax()] if len(ok) else None
        rows.append([
            method, str(len(t)), str(len(ok)), str(int((t["status"] == "failed").sum())),
            str(int(ok["on_front"].fillna(False).astype(bool).sum())) if "on_front" in ok else "0",
            _fmt_acc(best[quality]) if best is not None else "-",
            _fmt_acc(half[quality].astype(float).max()) if len(half) else "-",
            _fmt_ratio(best, "macs", "macs_ratio", meta.get("baseline", {})) if best is not None else "-",
        ])
    return rows


METHOD_HEADERS = ["method", "trials", "ok", "failed", "on front", "best quality", "best at <= 1/2 MACs",
                  "MACs of best"]


# --------------------------------------------------------------------------- documents


CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { white-space: pre-wrap; margin: 0; }
"""


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int] = frozenset()) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{e(c)}</td>' if i in numeric else f"<td>{e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _index_html(
    s: dict[str, Any], front_cells: list[list[str]], failed: pd.DataFrame, knob_columns: Sequence[str], interactive: bool,
    sr_init_plots: Sequence[tuple[str, str]] = (), detail_plots: Sequence[tuple[str, str, str]] = (),
    methods_rows: Sequence[Sequence[str]] = (),
) -> str:
    e = html.escape
    title = f"Sweep report: {s['name']}" if s["name"] else "Sweep report"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<h2>Summary</h2>",
        _html_table(["", ""], _summary_items(s)),
        "<h2>Plots</h2>",
    ]
    for name in (*PLOT_FILES.values(), HV_FILE):
        parts.append(f'<p><img src="{e(name)}" alt="{e(name[:-4].replace("_", " "))}"></p>')
    if interactive:
        parts.append('<p><a href="interactive.html">Interactive accuracy vs latency plot</a></p>')
    parts.append(f"<h2>Pareto front ({s['front_size']} trials)</h2>")
    if front_cells:
        parts.append(_html_table(FRONT_HEADERS, front_cells, numeric=set(range(3, 11))))
    else:
        parts.append("<p>The front is empty: no ok trials.</p>")
    if methods_rows:
        parts.append("<h2>Methods compared</h2>")
        parts.append("<p>Quality is validation accuracy (agreement with the teacher in a label-free sweep); "
                     "the last quality column compares methods at the same cost: the best trial at or under "
                     "half the baseline's MACs.</p>")
        parts.append(_html_table(METHOD_HEADERS, methods_rows, numeric=set(range(1, 8))))
    if detail_plots:
        parts.append("<h2>Method details of front trials</h2>")
        for trial_id, method, name in detail_plots:
            parts.append(f'<p><img src="{e(name)}" alt="{e(method)} details of trial {e(trial_id)}"></p>')
    if sr_init_plots:
        parts.append(f"<h2>{SR_INIT_HEADING}</h2>")
        parts.append("<p>Accuracy drop when each residual block is re-initialised at random (SR-init); blocks "
                     "at or under the threshold \u03c4 were removed.</p>")
        for trial_id, name in sr_init_plots:
            parts.append(f'<p><img src="{e(name)}" alt="SR-init block importance of trial {e(trial_id)}"></p>')
    parts.append(f"<h2>Failed and stopped trials ({len(failed)})</h2>")
    if len(failed):
        rows = [
            [str(r["trial_id"]), str(r["status"]), str(r["method"]), _knobs(r, knob_columns), _text(r["error"])]
            for _, r in failed.iterrows()
        ]
        parts.append(_html_table(["trial", "status", "method", "knobs", "error"], rows))
    else:
        parts.append("<p>None.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _summary_md(s: dict[str, Any], front_cells: list[list[str]]) -> str:
    title = f"Sweep report: {s['name']}" if s["name"] else "Sweep report"
    lines = [f"# {title}", ""]
    lines += [f"- **{k}:** {_md_cell(v)}" for k, v in _summary_items(s)]
    lines += ["", f"## Pareto front ({s['front_size']} trials)", ""]
    if front_cells:
        lines.append("| " + " | ".join(FRONT_HEADERS) + " |")
        lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(FRONT_HEADERS))) + "|")
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in front_cells]
    else:
        lines.append("The front is empty: no ok trials.")
    lines += ["", "Plots and the failed-trial table are in `index.html`.", ""]
    return "\n".join(lines)


def _render(sweep_dir: Path, tmp: Path) -> list[str]:
    """Write every report file into ``tmp``; return their names."""
    df, meta = _read_trials(sweep_dir)
    objectives = meta["objectives"]
    front = _front_rows(df, objectives)
    summary = _summary(df, meta, front)
    knob_columns = _knob_columns(df)
    front_cells = _front_cells(front, meta["baseline"], knob_columns)
    trials = df[~_is_baseline(df)]
    failed = trials[trials["status"].isin(["failed", "stopped"])]
    styles = _method_styles(summary["methods"])

    names = []
    for cost, name in PLOT_FILES.items():
        _plot_projection(df, cost, set(front["trial_id"]), styles, tmp / name)
        names.append(name)
    _plot_hypervolume(df, meta, tmp / HV_FILE)
    names.append(HV_FILE)
    interactive = _write_interactive(df, styles, tmp / "interactive.html")
    if interactive:
        names.append("interactive.html")
    sr_init_plots = _write_sr_init_plots(front, tmp)
    names += [name for _, name in sr_init_plots]
    detail_plots = _write_detail_plots(front, tmp)
    names += [name for _, _, name in detail_plots]
    methods_rows = _method_comparison(df, meta)
    (tmp / "index.html").write_text(
        _index_html(summary, front_cells, failed, knob_columns, interactive, sr_init_plots, detail_plots,
                    methods_rows), encoding="utf-8")
    (tmp / "summary.md").write_text(_summary_md(summary, front_cells), encoding="utf-8")
    names += ["index.html", "summary.md"]
    return names


def build_report(sweep_dir: Path, out_dir: Path) -> list[Path]:
    """Write the report of ``sweep_dir/trials.parquet`` into ``out_dir``; return the written paths.

    Files are rendered into a temporary folder beside ``out_dir`` and moved into place only once
    all of them exist, so a failure leaves no half-written report.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        names = _render(Path(sweep_dir), tmp)
        if not out_dir.exists():
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a report folder should be readable
            tmp.rename(out_dir)  # the whole report appears at once
        else:
            # Keep unrelated files already in out_dir; replace ours one by one (each atomic).
            for name in names:
                os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out_dir / name for name in names]
