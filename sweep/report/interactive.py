"""``interactive.html``: the report's plotly figures on one page that works offline.

Conventions:

* plotly.js is inlined once, in the page's head (about 5 MB), so the page opens from disk with no network;
  each figure is a ``<div>`` plus the ``Plotly.newPlot`` call plotly writes for it.
* Figures, in order: quality vs latency (error bars ± IQR/2, hover shows the knobs), parallel coordinates
  (:mod:`sweep.report.parallel`), and the per-layer widths of the selected or best trial
  (:mod:`sweep.report.widths`) when they are known; the budget explorer table follows the figures.
* Colours are the methods' colours of :mod:`sweep.report.colours`, the same as in the PNGs.
* A sweep with an MBN teacher shows it on the scatter as a trace of its own, ``MBN teacher`` (a dark
  diamond at its latency and agreement 1; :mod:`sweep.report.teacher`).
* The sweep's hard budgets of the scatter's axes (``max_latency_ms``, ``min_quality``) are dotted lines, as on
  the PNGs.
* Text from the table is HTML-escaped (plotly renders hover text as HTML).
* Without plotly installed nothing is written and :func:`write_interactive` returns False.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .colours import BASELINE, BASELINE_COLOUR, BUDGET_COLOUR, colour_of
from .parallel import parallel_figure
from .plots import QUALITY_LABELS, budget_lines, interactive_traces, is_log_scale
from .teacher import COLOUR as TEACHER_COLOUR
from .teacher import LABEL as TEACHER_LABEL
from .teacher import Teacher
from .widths import Widths

INTERACTIVE_FILE = "interactive.html"
FIGURE_HEIGHT = "520px"  # plotly's divs size to their parent, which has no height in a flowing page
CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; }
.plot { margin: 1em 0 2em; }
"""


def _marker(name: str, colour: str) -> dict:
    if name == BASELINE:
        return {"symbol": "star", "size": 16, "color": BASELINE_COLOUR, "line": {"width": 1, "color": "black"}}
    if name == TEACHER_LABEL:
        return {"symbol": "diamond", "size": 13, "color": TEACHER_COLOUR, "line": {"width": 1, "color": "white"}}
    return {"size": 9, "color": colour}


def scatter_figure(df: pd.DataFrame, quality: str, styles: dict, teacher: Teacher | None = None,
                   budgets: dict | None = None) -> Any:
    """``quality`` vs latency, one coloured trace per method, the baseline a gold star, an MBN ``teacher`` a
    dark diamond, the sweep's ``max_latency_ms`` and ``min_quality`` budgets (search.constraints) as dotted
    lines."""
    import plotly.graph_objects as go

    traces = interactive_traces(df, quality, styles, teacher)
    fig = go.Figure()
    for t in traces:
        fig.add_trace(go.Scatter(
            x=t["x"], y=t["y"], mode="markers", name=t["name"], hovertext=t["hover"],
            error_x={"type": "data", "array": t["xerr"], "visible": True, "thickness": 1, "width": 2,
                     "color": t["colour"]},
            hovertemplate=f"%{{hovertext}}<br>latency %{{x:.3g}} ms<br>{quality} %{{y:.4f}}<extra></extra>",
            marker=_marker(t["name"], t["colour"]),
        ))  # fmt: skip
    latencies = np.concatenate([t["x"] for t in traces]) if traces else np.zeros(0)
    fig.update_layout(title=f"{quality} vs latency", xaxis_title="latency (ms)", yaxis_title=QUALITY_LABELS[quality],
                      xaxis_type="log" if is_log_scale(latencies) else "linear", template="plotly_white")  # fmt: skip
    for axis, limit, label in budget_lines(budgets, "latency_ms"):
        (fig.add_vline if axis == "x" else fig.add_hline)(limit, line_dash="dot", line_color=BUDGET_COLOUR,
                                                          annotation_text=html.escape(label))
    return fig


def widths_figure(w: Widths, styles: dict) -> Any:
    """Per-layer widths as grouped horizontal bars: the baseline's (grey) and the trial's (its method's colour)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if w.before:
        fig.add_trace(go.Bar(y=w.layers, x=[w.before.get(k, 0) for k in w.layers], orientation="h",
                             name="baseline", marker={"color": "#cccccc"}))  # fmt: skip
    fig.add_trace(go.Bar(y=w.layers, x=[w.after.get(k, 0) for k in w.layers], orientation="h",
                         name=f"trial {w.trial_id} ({w.method})", marker={"color": colour_of(w.method, styles)},
                         text=["removed" if k in w.removed else "" for k in w.layers], textposition="outside"))
    fig.update_layout(title=f"per-layer widths, trial {w.trial_id}", barmode="group", template="plotly_white",
                      xaxis_title="output channels (conv) / features (linear)",
                      yaxis={"autorange": "reversed"}, height=max(400, 22 * len(w.layers) + 160))  # fmt: skip
    return fig


def _figure_div(fig: Any, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, default_height=FIGURE_HEIGHT,
                       config={"displaylogo": False})  # fmt: skip


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def interactive_html(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """The page: plotly.js inlined once, then each (heading, body HTML) section."""
    from plotly.offline import get_plotlyjs

    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)}</title><style>{CSS}</style>",
             # MathJax is not shipped: plotly must not look for it on the network
             "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>",
             f"<script>{get_plotlyjs()}</script>", "</head><body>", f"<h1>{e(title)}</h1>",
             '<p><a href="index.html">Static report (tables, PNG figures)</a></p>']  # fmt: skip
    for heading, body in sections:
        parts += [f"<h2>{e(heading)}</h2>", f'<div class="plot">{body}</div>']
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_interactive(df: pd.DataFrame, quality: str, styles: dict, path: Path, title: str = "Sweep report",
                      budget: tuple[Sequence[str], Sequence[Sequence[str]]] = ((), ()),
                      widths: Widths | None = None, widths_heading: str = "",
                      teacher: Teacher | None = None, budgets: dict | None = None) -> bool:  # fmt: skip
    """Write ``interactive.html`` (see the module docstring; ``budgets``: search.constraints, budget -> limit);
    False (nothing written) without plotly."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        return False
    sections = [(f"{quality} vs latency", _figure_div(scatter_figure(df, quality, styles, teacher, budgets),
                                                                 "scatter"))]
    parallel = parallel_figure(df, quality, styles)
    if parallel is not None:
        sections.append(("Knobs to objectives (parallel coordinates)", _figure_div(parallel, "parallel")))
    headers, rows = budget
    if rows:
        sections.append(("Budget explorer", _table(headers, rows, "budget-explorer")))
    if widths is not None:
        sections.append((widths_heading or f"Per-layer widths, trial {widths.trial_id}",
                         _figure_div(widths_figure(widths, styles), "widths")))  # fmt: skip
    path.write_text(interactive_html(f"{title} (interactive)", sections), encoding="utf-8")
    return True
