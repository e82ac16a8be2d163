"""``index.html`` and ``summary.md``, and :func:`build_report`, which writes the whole report folder.

Conventions: ``index.html`` opens from disk, runs no script and loads nothing from the network (text from
the table is HTML-escaped; every figure is a PNG beside it); its tables carry ids (``summary``, ``front``,
``budget-explorer``, ``methods``, ``failed``) so that they can be found by a reader or a test.  The report is
rendered into a temporary folder beside the target and moved into place only once every file exists, so a
failure leaves no half-written report.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from .colours import method_styles
from .interactive import INTERACTIVE_FILE, write_interactive
from .parallel import PARALLEL_FILE, plot_parallel
from .plots import (
    BLOCKS_TITLE,
    COST_WORDS,
    HV_FILE,
    PLOT_FILES,
    DetailPlot,
    is_trial_plot,
    plot_hypervolume,
    plot_projection,
    safe_name,
    write_block_plots,
    write_detail_plots,
)
from .read import read_trials, selected_trial_id
from .rows import focus_row, front_rows, knob_columns
from .tables import (
    APART_NOTE,
    BUDGET_NOTE,
    FAILED_HEADERS,
    METHOD_HEADERS,
    apart_cells,
    apart_headers,
    budget_explorer,
    budget_headers,
    failed_cells,
    front_cells,
    front_headers,
    method_comparison,
    summary,
    summary_items,
)
from .teacher import LABEL as TEACHER_LABEL
from .teacher import Teacher, speedup_note, teacher_mark, teacher_of
from .widths import WIDTHS_PREFIX, baseline_channels, plot_widths, trial_widths

CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { white-space: pre-wrap; margin: 0; }
"""
METHODS_NOTE = (
    "Quality is validation accuracy (agreement with the teacher in a label-free sweep); the last quality "
    "column compares methods at the same cost: the best trial at or under half the baseline's MACs."
)
PARALLEL_NOTE = (
    "One line per ok trial, coloured by method: from the method and its knobs on the left to the objectives on "
    "the right (a knob that a trial's method does not have sits at n/a). The baseline is the gold line."
)
WIDTHS_NOTE = (
    "Output channels of every conv and linear layer: the dense baseline's as grey outlines, the trial's filled "
    "in its method's colour; layers of removed residual blocks are marked removed."
)
BLOCKS_NOTE = (
    "Importance \u0394 of each block, as the trial stored it: removed blocks in red, kept removable ones in "
    "blue, non-removable ones grey; the dashed line is the removal threshold \u03c4 where the trial stored one."
)


def _title(s: dict[str, Any]) -> str:
    return f"Sweep report: {s['name']}" if s["name"] else "Sweep report"


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int] = frozenset(),
                table_id: str = "") -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{e(c)}</td>' if i in numeric else f"<td>{e(c)}</td>"
                         for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )  # fmt: skip
    ident = f' id="{e(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _images(plots: Sequence[DetailPlot]) -> list[str]:
    e = html.escape
    return [f'<p><img src="{e(p.file)}" alt="{e(p.alt)}"></p>' for p in plots]


class Page(NamedTuple):
    """What ``index.html`` shows besides the summary ``s``; tables are (headers, cells) or cells."""

    front: tuple[Sequence[str], list[list[str]]]
    failed: list[list[str]]
    interactive: bool
    detail_plots: Sequence[DetailPlot] = ()
    block_plots: Sequence[DetailPlot] = ()
    methods_rows: Sequence[Sequence[str]] = ()
    budget: tuple[Sequence[str], Sequence[Sequence[str]]] = ((), ())
    parallel: str = ""  # the parallel-coordinates PNG's file name, "" when not drawn
    widths: DetailPlot | None = None
    apart: tuple[Sequence[str], list[list[str]]] = ((), [])  # stopped-early and infeasible trials
    teacher: Teacher | None = None  # an MBN teacher: a reference point on the plots, speed-up in the front


def _head(s: dict[str, Any]) -> list[str]:
    e = html.escape
    return ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(_title(s))}</title><style>{CSS}</style></head><body>", f"<h1>{e(_title(s))}</h1>"]


def _plots(s: dict[str, Any], p: Page) -> list[str]:
    e = html.escape
    quality = s["quality"]
    parts = ["<h2>Plots</h2>"]
    if p.interactive:
        parts.append(f'<p><a href="{INTERACTIVE_FILE}">Interactive page: hover for knobs, filter the parallel '
                     f"coordinates by dragging along an axis</a></p>")
    parts += [f'<p><img src="{e(name)}" alt="{e(_alt(quality, cost, p.teacher))}"></p>'
              for cost, name in PLOT_FILES.items()]
    parts.append(f'<p><img src="{HV_FILE}" alt="hypervolume"></p>')
    if p.parallel:
        parts += ["<h2>Knobs to objectives</h2>", f"<p>{e(PARALLEL_NOTE)}</p>",
                  f'<p><img src="{e(p.parallel)}" alt="parallel coordinates from knobs to objectives"></p>']
    return parts


def _alt(quality: str, cost: str, teacher: Teacher | None) -> str:
    """A projection's alt text; with an MBN teacher it says how the teacher is drawn."""
    alt = f"{quality} vs {COST_WORDS[cost]}"
    mark = teacher_mark(teacher, quality, cost)
    if mark is None:
        return alt
    return alt + (f", with the {TEACHER_LABEL} point" if mark.kind == "point" else f", with the {TEACHER_LABEL} "
                  f"as a line at {quality} 1")


def _front(s: dict[str, Any], p: Page) -> list[str]:
    headers, cells = p.front
    parts = [f"<h2>Pareto front ({s['front_size']} trials)</h2>"]
    if cells:
        parts.append(_html_table(headers, cells, numeric=set(range(3, len(headers))), table_id="front"))
        if p.teacher is not None:
            parts.append(f"<p>{html.escape(speedup_note(p.teacher))}</p>")
    else:
        parts.append("<p>The front is empty: no ok trials.</p>")
    headers, cells = p.budget
    if cells:
        parts += ["<h2>Budget explorer</h2>", f"<p>{html.escape(BUDGET_NOTE)}</p>",
                  _html_table(headers, cells, numeric={1, 2, 5, 6, 7}, table_id="budget-explorer")]
    return parts


def _details(p: Page) -> list[str]:
    e = html.escape
    parts = []
    if p.widths is not None:
        parts += [f"<h2>{e(p.widths.alt)}</h2>", f"<p>{e(WIDTHS_NOTE)}</p>", *_images([p.widths])]
    if p.methods_rows:
        parts += ["<h2>Methods compared</h2>", f"<p>{METHODS_NOTE}</p>",
                  _html_table(METHOD_HEADERS, p.methods_rows, numeric=set(range(1, len(METHOD_HEADERS))),
                              table_id="methods")]  # fmt: skip
    if p.detail_plots:
        parts += ["<h2>Method details of front trials</h2>", *_images(p.detail_plots)]
    if p.block_plots:
        parts += [f"<h2>{BLOCKS_TITLE}</h2>", f"<p>{e(BLOCKS_NOTE)}</p>", *_images(p.block_plots)]
    return parts


def _apart(p: Page) -> list[str]:
    headers, cells = p.apart
    if not cells:
        return []
    return [f"<h2>Stopped early and infeasible trials ({len(cells)})</h2>", f"<p>{html.escape(APART_NOTE)}</p>",
            _html_table(headers, cells, numeric={4, 5, 6, 7}, table_id="apart")]


def index_html(s: dict[str, Any], p: Page) -> str:
    """The report's page: summary, plots, front, budget explorer, the singled-out trial's widths, methods,
    method details, failed trials."""
    parts = [*_head(s), "<h2>Summary</h2>", _html_table(["", ""], summary_items(s), table_id="summary"),
             *_plots(s, p), *_front(s, p), *_details(p), *_apart(p),
             f"<h2>Failed and stopped trials ({len(p.failed)})</h2>",
             _html_table(FAILED_HEADERS, p.failed, table_id="failed") if p.failed else "<p>None.</p>",
             "</body></html>"]  # fmt: skip
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_md(s: dict[str, Any], front: tuple[Sequence[str], list[list[str]]],
               teacher: Teacher | None = None) -> str:
    """The report's summary and front table as Markdown; ``front`` is (headers, cells); an MBN ``teacher``
    adds the speed-up note under the table."""
    headers, cells = front
    lines = [f"# {_title(s)}", ""]
    lines += [f"- **{k}:** {_md_cell(v)}" for k, v in summary_items(s)]
    lines += ["", f"## Pareto front ({s['front_size']} trials)", ""]
    if cells:
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(headers))) + "|")
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in cells]
        if teacher is not None:
            lines += ["", _md_cell(speedup_note(teacher))]
    else:
        lines.append("The front is empty: no ok trials.")
    lines += ["", "Plots and the failed-trial table are in `index.html`.", ""]
    return "\n".join(lines)


def _widths_plot(df: pd.DataFrame, sweep_dir: Path, quality: str, styles: dict, tmp: Path) -> tuple:
    """(DetailPlot, Widths) of the selected trial, else the best one; (None, None) when its widths are unknown."""
    row, why = focus_row(df, selected_trial_id(sweep_dir), quality)
    widths = None if row is None else trial_widths(row, baseline_channels(df))
    if widths is None:
        return None, None
    title = f"Per-layer widths of the {why} trial, {widths.trial_id} ({widths.method})"
    name = safe_name(WIDTHS_PREFIX, widths.trial_id)
    plot_widths(widths, title, styles, tmp / name)
    return DetailPlot(widths.trial_id, name, title), widths


def _render(sweep_dir: Path, tmp: Path) -> list[str]:
    """Write every report file into ``tmp``; return their names."""
    df, meta = read_trials(sweep_dir)
    quality = meta["quality"]
    front = front_rows(df, meta["objectives"], quality)
    front_ids = set(front["trial_id"])
    s = summary(df, meta, front)
    knob_cols = knob_columns(df)
    teacher = teacher_of(df)  # an MBN teacher: None for every other sweep, whose report is unchanged
    front_table = (front_headers(quality, teacher), front_cells(front, meta, knob_cols, df, teacher))
    budget = (budget_headers(quality), budget_explorer(df, front, meta))
    styles = method_styles(s["methods"])

    names = []
    for cost, name in PLOT_FILES.items():
        plot_projection(df, quality, cost, front_ids, styles, tmp / name, teacher, meta.get("constraints"))
        names.append(name)
    plot_hypervolume(df, meta, tmp / HV_FILE)
    plot_parallel(df, quality, styles, tmp / PARALLEL_FILE)
    names += [HV_FILE, PARALLEL_FILE]
    widths_plot, widths = _widths_plot(df, sweep_dir, quality, styles, tmp)
    interactive = write_interactive(df, quality, styles, tmp / INTERACTIVE_FILE, _title(s), budget, widths,
                                    widths_plot.alt if widths_plot else "", teacher,
                                    meta.get("constraints"))  # fmt: skip
    block_plots = write_block_plots(front, tmp)
    detail_plots = write_detail_plots(front, tmp, styles)
    names += [p.file for p in (*block_plots, *detail_plots, *([widths_plot] if widths_plot else []))]
    names += [INTERACTIVE_FILE] if interactive else []
    page = Page(front_table, failed_cells(df, knob_cols), interactive, detail_plots, block_plots,
                method_comparison(df, meta, front_ids), budget, PARALLEL_FILE, widths_plot,
                (apart_headers(quality), apart_cells(df, meta, knob_cols)), teacher)
    (tmp / "index.html").write_text(index_html(s, page), encoding="utf-8")
    (tmp / "summary.md").write_text(summary_md(s, front_table, teacher), encoding="utf-8")
    return [*names, "index.html", "summary.md"]


# in a report folder: the sweep folder it was drawn from (resolved), so that a report of another sweep of the
# same name is not replaced without a word
SOURCE_FILE = ".sweep-folder"


def build_report(sweep_dir: Path, out_dir: Path, log=None) -> list[Path]:
    """Write the report of ``sweep_dir/trials.parquet`` into ``out_dir``; return the written paths.

    Files are rendered into a temporary folder beside ``out_dir`` and moved into place only once
    all of them exist, so a failure leaves no half-written report.  ``log`` (if given) hears of a report
    of another sweep folder that this one replaces (two sweeps of one name share ``reports/<name>``).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    source = str(Path(sweep_dir).resolve())
    other = _drawn_from(out_dir)
    if log is not None and other not in (None, source) and Path(other).is_dir():
        log(f"note: {out_dir} held the report of {other}; it now holds this sweep's (`sweep report {other} "
            f"--out DIR` draws that one again)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        names = _render(Path(sweep_dir), tmp)
        (tmp / SOURCE_FILE).write_text(source + "\n", encoding="utf-8")
        names.append(SOURCE_FILE)
        if not out_dir.exists():
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a report folder should be readable
            tmp.rename(out_dir)  # the whole report appears at once
        else:
            # Keep unrelated files already in out_dir; replace ours one by one (each atomic), then drop the
            # per-trial plots of an earlier render that this one no longer draws (they would look current).
            for name in names:
                os.replace(tmp / name, out_dir / name)
            for stale in sorted(set(os.listdir(out_dir)) - set(names)):
                if is_trial_plot(stale) and (out_dir / stale).is_file():
                    (out_dir / stale).unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out_dir / name for name in names if name != SOURCE_FILE]


def _drawn_from(out_dir: Path) -> str | None:
    """The sweep folder the report in ``out_dir`` was drawn from, or None (no report, or one from before)."""
    try:
        return (out_dir / SOURCE_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
