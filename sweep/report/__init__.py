"""Static sweep report, built from ``trials.parquet`` alone.

:func:`build_report` writes PNG plots, ``index.html`` (opens from disk, no external URLs, no script),
``interactive.html`` (plotly inlined, when plotly is installed: :mod:`sweep.report.interactive`) and
``summary.md``.
:func:`front_table` renders the Pareto front as plain text for the CLI.

Conventions:

* **Baseline.** The dense baseline row (``trial_id == "baseline"``) is a candidate like any trial: it
  can be on the front (``sweep select`` may choose it) and the hypervolume includes it; the hypervolume
  history starts with it, then adds trials by end time.  "Trials" in counts and per-method tables are
  the other rows.
* **One front.** The front is the ``ok`` rows flagged ``on_front`` in the table, or, when no row carries
  a flag, :func:`sweep.pareto.front_flags` over the sweep's objectives.  A projection's staircase is
  ``front_flags`` over ``[quality, cost]``.
* **One quality.** The table's metadata names it (``quality``: ``accuracy``, or ``agreement`` with the
  teacher in a label-free sweep; ``accuracy`` when absent).  It is read once and is the y axis, hover
  value and "best" of every figure and table; front tables of label-free sweeps show accuracy beside it.
* **One colour per method** in every figure, PNG or plotly (:mod:`sweep.report.colours`).
* **Budget explorer.** For each latency and params budget (MACs too when it is an objective) that a front
  point reaches: the best quality of any ``ok`` row within it, and its trial (:func:`tables.budget_explorer`).
* **Knobs to objectives** are parallel coordinates (:mod:`sweep.report.parallel`).
* **Per-layer widths** of the trial ``sweep select`` chose (``selected/selection.json``), else of the best
  trial, against the baseline's (:mod:`sweep.report.widths` states the ``info`` conventions).
* **MBN teacher.** A compressive-MBN sweep (its baseline row records an ``mbn`` teacher) shows the teacher
  as a reference, never a candidate: a point at (its latency, agreement 1) on the latency projections and
  the interactive scatter, a line at agreement 1 on params and MACs, its figures in the summary, and a
  ``speed-up vs teacher`` column in the front tables (:mod:`sweep.report.teacher`).  Other reports are
  unchanged.
* **Method details** come from a front trial's ``info`` JSON, whatever its method:

  - ``"trajectory"``: ``[{"step": i, <series>: value, ...}, ...]`` (per iteration or epoch), drawn as
    ``trajectory_<trial>.png``;
  - ``"layer_ratios"``: ``{layer or group name: kept fraction}``, drawn as ``layers_<trial>.png``;
  - ``"blocks"``: ``[{"index": i, "delta": importance, "removable": bool, "removed": bool}, ...]`` with
    optional ``"tau"`` (removal threshold) and ``"blocks_title"`` (figure title), drawn as
    ``blocks_<trial>.png`` in the "Per-block importance" section.
"""

from .page import build_report
from .tables import front_table

__all__ = ["build_report", "front_table"]
