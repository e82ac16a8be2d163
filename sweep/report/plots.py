"""The report's PNG figures: quality-vs-cost projections, hypervolume history, and per-trial detail
figures of front trials (the interactive page is :mod:`sweep.report.interactive`).

Conventions:

* A method has the same colour (and marker) in every figure: :func:`sweep.report.colours.method_styles`.
* The y axis of every quality figure is the sweep's quality column (``meta["quality"]``): validation
  ``accuracy``, or ``agreement`` with the teacher in a label-free sweep.  File names stay
  ``accuracy_vs_<cost>.png`` whatever the quality, so links to a report keep working.
* A projection's staircase is the front of its own 2-D view, ``front_flags(rows, [quality, cost])``;
  the sweep's front (all objectives) is ringed.
* Detail figures come from conventions in a front trial's ``info`` JSON (see :mod:`sweep.report`),
  never from its method's name.
* Each plotting function returns the data it drew, so tests check behaviour rather than pixels.
* A sweep with an MBN teacher shows it on every projection (:func:`sweep.report.teacher.teacher_mark`): a
  point at (its latency, agreement 1) on the latency axis, a dashed line at agreement 1 on params and MACs.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from sweep import pareto
from sweep.constraints import budget_words

from .colours import BASELINE_COLOUR, BUDGET_COLOUR, colour_of
from .colours import method_styles as method_styles  # re-exported: callers took it from here before
from .rows import (
    info,
    is_baseline,
    is_ok,
    knob_columns,
    knobs_text,
    num,
    objective_values,
    ok_rows_in_order,
)
from .teacher import COLOUR as TEACHER_COLOUR
from .teacher import LABEL as TEACHER_LABEL
from .teacher import Teacher, hover_text, teacher_mark
from .widths import WIDTHS_PREFIX

COST_WORDS = {"latency_ms": "latency", "params": "params", "macs": "macs"}
PLOT_FILES = {cost: f"accuracy_vs_{word}.png" for cost, word in COST_WORDS.items()}
HV_FILE = "hypervolume.png"
AXIS_LABELS = {"latency_ms": "latency (ms)", "params": "parameters", "macs": "MACs"}
QUALITY_LABELS = {"accuracy": "validation accuracy", "agreement": "agreement with the teacher (validation)"}
BLOCKS_TITLE = "Per-block importance"


class DetailPlot(NamedTuple):
    """A per-trial figure written into the report folder."""

    trial_id: str
    file: str
    alt: str


def _new_axes(figsize: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    return fig, fig.add_subplot()


def _save(fig: Any, path: Path, left: float, bottom: float, top: float, right: float = 0.97) -> None:
    # Fixed margins: tight_layout costs an extra draw per figure.
    fig.subplots_adjust(left=left, right=right, bottom=bottom, top=top)
    fig.savefig(path, format="png")


LEGEND_WRAP = 28  # characters per line of a legend label beside the axes


def legend_beside(ax: Any, fontsize: int = 8) -> Any:
    """The axes' legend outside them, to the right: a scatter's legend placed inside (even ``loc="best"``)
    can cover a point, and every point of a projection is a trial someone may look for."""
    import textwrap

    handles, labels = ax.get_legend_handles_labels()
    # long labels wrapped, so the legend fits in the figure's right margin (_save's right=0.74 at 9.5 in)
    labels = [textwrap.fill(label, LEGEND_WRAP) for label in labels]
    return ax.legend(handles, labels, fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                     borderaxespad=0.0)


def is_log_scale(x: np.ndarray) -> bool:
    """Whether positive values ``x`` span more than a factor of 10 (drawn on a log axis then)."""
    x = x[np.isfinite(x) & (x > 0)]
    return bool(len(x) and x.max() / x.min() > 10)


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


# per-trial plot files (``<prefix><trial id>.png``): which trials get one changes from render to render
TRIAL_PLOT_PREFIXES = ("trajectory_", "layers_", "blocks_", WIDTHS_PREFIX)


def safe_name(prefix: str, trial_id: str) -> str:
    if prefix not in TRIAL_PLOT_PREFIXES:
        raise ValueError(f"prefix must be one of {TRIAL_PLOT_PREFIXES}, but got prefix={prefix!r}")
    return prefix + re.sub(r"[^A-Za-z0-9_.-]", "_", trial_id) + ".png"


def is_trial_plot(name: str) -> bool:
    """Whether a file name is a per-trial plot of a report (see :data:`TRIAL_PLOT_PREFIXES`)."""
    return name.endswith(".png") and name.startswith(TRIAL_PLOT_PREFIXES)


# --------------------------------------------------------------------------- quality vs cost


def latency_half_spread(rows: pd.DataFrame) -> np.ndarray:
    """Half the latency IQR of each row (0 where none was recorded): the error bar of a latency."""
    iqr = rows["latency_iqr_ms"].to_numpy(dtype=float) if "latency_iqr_ms" in rows else np.zeros(len(rows))
    return np.where(np.isfinite(iqr), iqr / 2, 0.0)


def projection_points(df: pd.DataFrame, quality: str, cost: str) -> pd.DataFrame:
    """``ok`` rows (baseline included) with a finite ``quality`` and ``cost``."""
    ok = df[is_ok(df)]
    finite = np.isfinite(ok[quality].to_numpy(dtype=float)) & np.isfinite(ok[cost].to_numpy(dtype=float))
    return ok[finite]


def staircase_rows(points: pd.DataFrame, quality: str, cost: str) -> pd.DataFrame:
    """The front of the 2-D view (max ``quality``, min ``cost``), by rising cost: its attainment staircase."""
    on = np.array(pareto.front_flags(points.to_dict("records"), [quality, cost]), dtype=bool)
    return points[on].sort_values([cost, quality], ascending=[True, False], kind="stable",
                                  key=lambda col: col.astype(float))  # fmt: skip


# how the rows that never enter the front are drawn: grey, apart from every method's colours
APART_STYLE = {"stopped_early": ("x", "stopped early (quality at its rung)"),
               "infeasible": ("1", "infeasible (over a budget, not fine-tuned)")}


def _plot_apart(ax, df: pd.DataFrame, quality: str, cost: str) -> None:
    for status, (marker, label) in APART_STYLE.items():
        rows = df[df["status"] == status]
        y, x = rows[quality].to_numpy(dtype=float), rows[cost].to_numpy(dtype=float)
        keep = np.isfinite(x) & np.isfinite(y)
        if keep.any():
            ax.scatter(x[keep], y[keep], marker=marker, s=28, color="grey", alpha=0.6, label=label)


def _plot_teacher(ax, teacher: Teacher | None, quality: str, cost: str) -> None:
    mark = teacher_mark(teacher, quality, cost)
    if mark is None:
        return
    if mark.kind == "line":
        ax.axhline(mark.y, color=TEACHER_COLOUR, linestyle="--", linewidth=1, label=mark.label)
        return
    ax.scatter([mark.x], [mark.y], marker="D", s=90, color=TEACHER_COLOUR, edgecolors="white", zorder=6,
               label=mark.label)
    if np.isfinite(teacher.iqr_ms):  # its latency's IQR, as the trials' error bars
        ax.errorbar([mark.x], [mark.y], xerr=[teacher.iqr_ms / 2], fmt="none", ecolor=TEACHER_COLOUR, elinewidth=0.8,
                    capsize=2, alpha=0.6)
    # the teacher is the slowest point by far: label it below-left to stay inside
    ax.annotate(TEACHER_LABEL, (mark.x, mark.y), textcoords="offset points", xytext=(-10, -14), ha="right",
                fontsize=9, bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})


def budget_lines(budgets: dict | None, cost: str) -> list[tuple[str, float, str]]:
    """The hard budgets (search.constraints, budget -> limit) on a view of quality against ``cost``, as
    ``(axis, limit, label)``: ``max_<cost>`` across the x axis (``"x"``: a vertical line), ``min_quality``
    across the y axis; the others bound figures this view does not show."""
    return [("x" if key == f"max_{cost}" else "y", float(limit), f"budget: {budget_words({key: limit})}")
            for key, limit in (budgets or {}).items() if key in (f"max_{cost}", "min_quality")]


def _plot_budgets(ax, budgets: dict | None, cost: str) -> None:
    for axis, limit, label in budget_lines(budgets, cost):
        (ax.axvline if axis == "x" else ax.axhline)(limit, color=BUDGET_COLOUR, linestyle=":", linewidth=1.5,
                                                    label=label)


def plot_projection(
    df: pd.DataFrame, quality: str, cost: str, front_ids: set[str], styles: dict, path: Path,
    teacher: Teacher | None = None, budgets: dict | None = None,
) -> pd.DataFrame:
    """Write ``quality`` against ``cost``: trials per method, the view's staircase, the sweep's front
    ringed, the baseline starred, an MBN ``teacher`` as a reference, the hard ``budgets`` (search.constraints,
    budget -> limit) of these axes as dotted lines; return the staircase rows."""
    fig, ax = _new_axes((9.5, 5))
    points = projection_points(df, quality, cost)
    y = points[quality].to_numpy(dtype=float)
    x = points[cost].to_numpy(dtype=float)
    base = is_baseline(points).to_numpy()
    stairs = staircase_rows(points, quality, cost)
    if len(points) == 0:
        _no_data(ax, f"no ok trials with {quality} and {cost}")
    # latency is a median of noisy timings: its IQR is drawn as a horizontal error bar (± IQR/2, the
    # band the noise-aware front compares, sweep.pareto.NOISE)
    xerr = latency_half_spread(points) if cost == "latency_ms" else None
    for method, (colour, marker) in styles.items():
        sel = ~base & (points["method"] == method).to_numpy()
        if sel.any():
            ax.scatter(x[sel], y[sel], color=colour, marker=marker, s=30, alpha=0.8, label=method)
            if xerr is not None:
                ax.errorbar(x[sel], y[sel], xerr=xerr[sel], fmt="none", ecolor=colour, elinewidth=0.8,
                            capsize=2, alpha=0.6)
    _plot_apart(ax, df, quality, cost)
    if len(points):
        ax.step(stairs[cost].to_numpy(dtype=float), stairs[quality].to_numpy(dtype=float), where="post",
                color="black", lw=1, label="front (this view)")
        ringed = points["trial_id"].isin(front_ids).to_numpy()
        if ringed.any():
            ax.scatter(x[ringed], y[ringed], s=130, facecolors="none", edgecolors="crimson",
                       linewidths=1.3, label="sweep front")  # fmt: skip
        if base.any():
            bx, by = x[base][0], y[base][0]
            ax.scatter([bx], [by], marker="*", s=260, color=BASELINE_COLOUR, edgecolors="black", zorder=5,
                       label="baseline")
            # The baseline is usually the top-right point: label it below-left to stay inside.
            ax.annotate("baseline", (bx, by), textcoords="offset points", xytext=(-10, -14), ha="right", fontsize=9,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
        mark = teacher_mark(teacher, quality, cost)
        _plot_teacher(ax, teacher, quality, cost)
        _plot_budgets(ax, budgets, cost)
        if is_log_scale(np.append(x, mark.x) if mark is not None and mark.kind == "point" else x):
            ax.set_xscale("log")
        if cost != "latency_ms":
            from matplotlib.ticker import EngFormatter

            ax.xaxis.set_major_formatter(EngFormatter())  # 200k, 1M rather than an offset "1e6"
        legend_beside(ax)
    ax.set_xlabel(AXIS_LABELS[cost])
    ax.set_ylabel(QUALITY_LABELS[quality])
    ax.set_title(f"{quality} vs {AXIS_LABELS[cost]}")
    ax.grid(True, alpha=0.3)
    _save(fig, path, left=0.09, bottom=0.12, top=0.92, right=0.74)
    return stairs


def plot_hypervolume(df: pd.DataFrame, meta: dict[str, Any], path: Path) -> np.ndarray:
    """Write the sweep's hypervolume after each ``ok`` row (baseline first, then trials by end time);
    return that history."""
    fig, ax = _new_axes((7.5, 4))
    objectives = meta["objectives"]
    values = objective_values(ok_rows_in_order(df), objectives)
    history = pareto.hypervolume_history(values, objectives, meta["baseline"])
    if len(history):
        ax.step(np.arange(1, len(history) + 1), history, where="post", marker=".", color="tab:blue")
    else:
        _no_data(ax, "no ok trials")
    ax.set_xlabel("ok rows completed (baseline first, then trials by end time)")
    ax.set_ylabel("hypervolume (normalised)")
    ax.set_title(f"hypervolume of {', '.join(objectives)}")
    ax.grid(True, alpha=0.3)
    _save(fig, path, left=0.11, bottom=0.14, top=0.9)
    return history


# --------------------------------------------------------------------------- interactive scatter data


def interactive_traces(df: pd.DataFrame, quality: str, styles: dict,
                       teacher: Teacher | None = None) -> list[dict[str, Any]]:
    """One trace per method, then the baseline, then an MBN ``teacher`` (named :data:`TEACHER_LABEL`, when
    :func:`teacher_mark` places it): ``name``, ``colour``, latency ``x``, ``quality`` ``y``, ``hover`` texts
    and ``xerr``, the latency error bars (± IQR/2)."""
    knob_cols = knob_columns(df)
    points = projection_points(df, quality, "latency_ms")
    base = is_baseline(points)
    traces = []
    for name, rows in [*((m, points[~base & (points["method"] == m)]) for m in styles), ("baseline", points[base])]:
        if rows.empty:
            continue
        hover = [
            "<br>".join(html.escape(s) for s in (str(r["trial_id"]), str(r["method"]), knobs_text(r, knob_cols)) if s)
            for _, r in rows.iterrows()
        ]
        traces.append({"name": name, "colour": colour_of(name, styles), "x": rows["latency_ms"].to_numpy(dtype=float),
                       "y": rows[quality].to_numpy(dtype=float), "hover": hover,
                       "xerr": latency_half_spread(rows)})  # fmt: skip
    mark = teacher_mark(teacher, quality, "latency_ms")
    if mark is not None:
        iqr = teacher.iqr_ms if np.isfinite(teacher.iqr_ms) else 0.0
        hover = "<br>".join(html.escape(line) for line in hover_text(teacher).split("\n"))
        traces.append({"name": TEACHER_LABEL, "colour": TEACHER_COLOUR, "x": np.array([mark.x]),
                       "y": np.array([mark.y]), "hover": [hover], "xerr": np.array([iqr / 2])})
    return traces



# --------------------------------------------------------------------------- details of front trials


def _plot_trajectory(traj: list[dict], title: str, path: Path) -> bool:
    """Every numeric series of ``traj`` relative to its first non-zero value; False when nothing to draw."""
    steps = [num(p.get("step", i)) for i, p in enumerate(traj)]
    keys = sorted({k for p in traj for k, v in p.items() if k != "step" and isinstance(v, (int, float))
                   and not isinstance(v, bool)})  # fmt: skip
    if len(traj) < 2 or not keys:
        return False
    fig, ax = _new_axes((7, 4))
    for k in keys:
        y = np.array([num(p.get(k)) for p in traj], dtype=float)
        first = next((v for v in y if np.isfinite(v) and v != 0), None)
        if first is None:
            continue
        ax.plot(steps, y / first, marker="o", markersize=3, label=f"{k} (÷ {first:.4g})")
    ax.set_xlabel("step (iteration or epoch)")
    ax.set_ylabel("relative to the first value")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _save(fig, path, left=0.1, bottom=0.12, top=0.9, right=0.98)
    return True


def _plot_layer_ratios(ratios: dict, title: str, colour: str, path: Path) -> bool:
    """Kept fraction per layer as horizontal bars; False when no ratio is a number."""
    items = [(str(k), num(v)) for k, v in ratios.items() if np.isfinite(num(v))]
    if not items:
        return False
    fig, ax = _new_axes((7, max(2.5, 0.22 * len(items) + 1.2)))
    y = np.arange(len(items))
    ax.barh(y, [v for _, v in items], color=colour)
    ax.set_yticks(y)
    ax.set_yticklabels([k for k, _ in items], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("fraction of channels kept")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    _save(fig, path, left=0.3, bottom=0.1, top=0.92)
    return True


def _plot_blocks(blocks: list[dict], tau: float | None, title: str, path: Path,
                 ylabel: str = "importance \u0394") -> None:
    """Bars of Δ per block: removed blocks in red, kept removable ones in blue, non-removable grey."""
    from matplotlib.patches import Patch

    fig, ax = _new_axes((max(6.0, 0.28 * len(blocks) + 2), 4))
    x = np.arange(len(blocks))
    delta = np.array([num(b.get("delta")) for b in blocks], dtype=float)
    colours = [
        "tab:red" if b.get("removed") else ("tab:blue" if b.get("removable") else "lightgrey") for b in blocks
    ]
    ax.bar(x, np.nan_to_num(delta), color=colours, edgecolor="black", linewidth=0.4)
    handles = [Patch(color="tab:red", label="removed"), Patch(color="tab:blue", label="kept (removable)"),
               Patch(color="lightgrey", label="not removable")]  # fmt: skip
    if tau is not None:
        handles.append(ax.axhline(tau, color="black", linestyle="--", linewidth=1, label=f"\u03c4 = {tau:g}"))
    ax.set_xticks(x)
    ax.set_xticklabels([str(b.get("index", i)) for i, b in enumerate(blocks)], fontsize=7)
    for label, colour in zip(ax.get_xticklabels(), colours):  # a removed block with Δ = 0 has no bar to see
        label.set_color("tab:red" if colour == "tab:red" else "black")
    ax.set_xlabel("block (forward order)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.grid(True, axis="y", alpha=0.3)
    _save(fig, path, left=0.1, bottom=0.13, top=0.9, right=0.98)


def write_detail_plots(front: pd.DataFrame, out: Path, styles: dict | None = None) -> list[DetailPlot]:
    """Trajectory (``info["trajectory"]``) and per-layer (``info["layer_ratios"]``, bars in the method's
    colour) figures of front rows."""
    written = []
    for _, row in front.iterrows():
        details = info(row)
        trial_id, method = str(row["trial_id"]), str(row["method"])
        alt = f"{method} details of trial {trial_id}"
        traj = details.get("trajectory")
        if isinstance(traj, list) and all(isinstance(p, dict) for p in traj):
            name = safe_name("trajectory_", trial_id)
            if _plot_trajectory(traj, f"{method} trajectory, trial {trial_id}", out / name):
                written.append(DetailPlot(trial_id, name, alt))
        ratios = details.get("layer_ratios")
        if isinstance(ratios, dict) and ratios:
            name = safe_name("layers_", trial_id)
            if _plot_layer_ratios(ratios, f"{method} kept channels per layer, trial {trial_id}",
                                 colour_of(method, styles or {}), out / name):
                written.append(DetailPlot(trial_id, name, alt))
    return written


def write_block_plots(front: pd.DataFrame, out: Path) -> list[DetailPlot]:
    """``blocks_<trial_id>.png`` for each front row whose ``info["blocks"]`` is a list of objects."""
    written = []
    for _, row in front.iterrows():
        details = info(row)
        blocks = details.get("blocks")
        if not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict) for b in blocks):
            continue
        tau = num(details.get("tau"))
        trial_id = str(row["trial_id"])
        title = f"{details.get('blocks_title') or BLOCKS_TITLE}, trial {trial_id}"
        name = safe_name("blocks_", trial_id)
        _plot_blocks(blocks, None if np.isnan(tau) else tau, title, out / name,
                     ylabel=str(details.get("blocks_ylabel") or "importance \u0394"))
        written.append(DetailPlot(trial_id, name, title))
    return written
