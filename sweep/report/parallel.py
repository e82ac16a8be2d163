"""Parallel coordinates from knobs to objectives: one line per ``ok`` row, coloured by method.

Conventions:

* Axes, left to right: the method, every knob column that some drawn row sets (``knob.<method>.<name>``,
  shown as ``<method>.<name>``), then the sweep's quality and the costs (``latency_ms``, ``params``,
  ``macs``) that the rows carry.  Knobs on the left, objectives on the right: a line reads as "these
  settings gave these figures".
* A knob is conditional on its method, so most rows lack most knobs: a missing value sits at an "n/a" tick
  just below the axis' range rather than being dropped (a dropped line would hide the trial).
* Text and boolean knobs are categorical axes (categories in sorted order); numbers are linear axes.
* The baseline is drawn too (gold, every knob n/a): the point every line is measured against.
* One :class:`Axis` list feeds both the PNG (matplotlib, for ``index.html``) and the plotly figure (for
  ``interactive.html``), so the two pictures always agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from sweep.results.schema import KNOB_PREFIX

from .colours import BASELINE, BASELINE_COLOUR, colour_of
from .rows import is_ok, knob_columns, missing
from .tables import fmt_count

PARALLEL_FILE = "parallel_coordinates.png"
COSTS = ("latency_ms", "params", "macs")
NA = "n/a"


class Axis(NamedTuple):
    """One vertical axis: each row's position on it, and the ticks that label positions."""

    label: str
    values: np.ndarray  # float position per row, always finite
    tickvals: list[float]
    ticktext: list[str]


def _categorical(label: str, column: pd.Series, order: list[str] | None = None) -> Axis:
    text = [None if missing(v) else str(v) for v in column]
    categories = order or sorted({t for t in text if t is not None})
    pos = {c: float(i) for i, c in enumerate(categories)}
    values = np.array([pos.get(t, -1.0) if t is not None else -1.0 for t in text])
    ticks = [*([-1.0] if (values < 0).any() else []), *pos.values()]
    return Axis(label, values, ticks, [*([NA] if (values < 0).any() else []), *categories])


def _numeric(label: str, column: pd.Series, fmt: Any) -> Axis:
    raw = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    lo, hi = float(np.nanmin(raw)), float(np.nanmax(raw))
    ticks = sorted(set(np.linspace(lo, hi, 5).tolist())) if hi > lo else [lo]
    text = [fmt(t) for t in ticks]
    absent = ~np.isfinite(raw)
    if absent.any():
        # "n/a" sits one sixth of the range below it (or 1 below a single value)
        na = lo - ((hi - lo) / 6 if hi > lo else 1.0)
        raw = np.where(absent, na, raw)
        ticks, text = [na, *ticks], [NA, *text]
    return Axis(label, raw, ticks, text)


def _is_number_column(column: pd.Series) -> bool:
    present = column.dropna()
    return bool(len(present)) and all(isinstance(v, (int, float, np.integer, np.floating))
                                      and not isinstance(v, (bool, np.bool_)) for v in present)  # fmt: skip


def _knob_label(column: str) -> str:
    return column[len(KNOB_PREFIX):]


def _fmt_number(x: float) -> str:
    return f"{x:.3g}"


def parallel_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows drawn: ``ok`` rows, trials first and the baseline last (drawn on top)."""
    ok = df[is_ok(df)]
    return pd.concat([ok[ok["method"] != BASELINE], ok[ok["method"] == BASELINE]])


def parallel_axes(rows: pd.DataFrame, quality: str, styles: dict) -> list[Axis]:
    """The axes of the module docstring, over ``rows`` (see :func:`parallel_rows`)."""
    if rows.empty:
        return []
    order = [m for m in styles if (rows["method"] == m).any()]
    order += sorted({str(m) for m in rows["method"]} - set(order))
    axes = [_categorical("method", rows["method"], order)]
    for column in knob_columns(rows):
        if rows[column].isna().all():
            continue
        label = _knob_label(column)
        axes.append(_numeric(label, rows[column], _fmt_number) if _is_number_column(rows[column])
                    else _categorical(label, rows[column]))  # fmt: skip
    for name in (quality, *COSTS):
        if name in rows and np.isfinite(pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float)).any():
            axes.append(_numeric(name, rows[name], _fmt_number if name in (quality, "latency_ms") else fmt_count))
    return axes


def line_colours(rows: pd.DataFrame, styles: dict) -> list[str]:
    return [colour_of(str(m), styles) for m in rows["method"]]


# --------------------------------------------------------------------------- PNG


def plot_parallel(df: pd.DataFrame, quality: str, styles: dict, path: Path) -> list[Axis]:
    """Write the parallel-coordinates PNG; return its axes."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = parallel_rows(df)
    axes = parallel_axes(rows, quality, styles)
    fig = Figure(figsize=(max(7.5, 1.3 * len(axes) + 1), 5), dpi=100)
    ax = fig.add_subplot()
    if len(axes) < 2:
        ax.text(0.5, 0.5, "no ok trials to draw", ha="center", va="center", transform=ax.transAxes, color="grey")
    else:
        _draw_lines(ax, axes, line_colours(rows, styles))
        handles = [Line2D([], [], color=colour_of(m, styles), lw=2, label=m)
                   for m in dict.fromkeys(str(m) for m in rows["method"])]  # fmt: skip
        ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=len(handles),
                  frameon=False)  # fmt: skip
    ax.set_title(f"knobs to objectives, one line per ok trial ({quality}: higher is better; costs: lower)", pad=30)
    fig.subplots_adjust(left=0.06, right=0.94, bottom=0.14, top=0.84)
    fig.savefig(path, format="png")
    return axes


def _draw_lines(ax: Any, axes: list[Axis], colours: list[str]) -> None:
    """Each axis scaled to [0, 1] between its lowest and highest tick; one polyline per row."""
    x = np.arange(len(axes))
    scaled = []
    for a in axes:
        lo, hi = min(a.tickvals), max(a.tickvals)
        scaled.append((a.values - lo) / (hi - lo) if hi > lo else np.full(len(a.values), 0.5))
    ys = np.stack(scaled, axis=1)
    for y, colour in zip(ys, colours):
        ax.plot(x, y, color=colour, alpha=0.75, lw=2.5 if colour == BASELINE_COLOUR else 1.4)
    for i, a in enumerate(axes):
        lo, hi = min(a.tickvals), max(a.tickvals)
        ax.axvline(i, color="black", lw=0.8)
        for t, label in zip(a.tickvals, a.ticktext):
            pos = (t - lo) / (hi - lo) if hi > lo else 0.5
            ax.text(i + 0.03, pos, label, fontsize=6, va="center", ha="left",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_xticks(x)
    ax.set_xticklabels([a.label for a in axes], fontsize=7, rotation=15)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    for side in ("left", "right", "bottom", "top"):
        ax.spines[side].set_visible(False)


# --------------------------------------------------------------------------- plotly


def parallel_figure(df: pd.DataFrame, quality: str, styles: dict) -> Any:
    """The same axes as a plotly ``Parcoords`` figure (brushing an axis filters the lines); None when
    there is nothing to draw."""
    import plotly.graph_objects as go

    rows = parallel_rows(df)
    axes = parallel_axes(rows, quality, styles)
    if len(axes) < 2:
        return None
    colours = list(dict.fromkeys(line_colours(rows, styles)))
    code = {c: i for i, c in enumerate(colours)}
    n = len(colours)
    # A stepped colour scale: code i owns the band [i/n, (i+1)/n], so each line gets its method's exact colour.
    scale = [[b, c] for i, c in enumerate(colours) for b in (i / n, (i + 1) / n)]
    dims = [{"label": a.label, "values": a.values, "tickvals": a.tickvals, "ticktext": a.ticktext,
             "range": [min(a.tickvals), max(a.tickvals)]} for a in axes]  # fmt: skip
    fig = go.Figure(go.Parcoords(
        line={"color": [code[c] for c in line_colours(rows, styles)], "colorscale": scale, "cmin": -0.5,
              "cmax": n - 0.5},
        dimensions=dims,
    ))  # fmt: skip
    fig.update_layout(title="knobs to objectives (drag along an axis to filter)", template="plotly_white",
                      margin={"l": 60, "r": 60, "t": 90, "b": 40})  # fmt: skip
    return fig
