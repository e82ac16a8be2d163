"""The MBN teacher of a compressive-MBN sweep, as the report reads it: a reference point, not a candidate.

Conventions:

* **Where its figures live.** ``prepare_mbn_baseline`` (:mod:`sweep.mbn.teacher`) stores the teacher's
  figures in the baseline's summary (``baseline/summary.json``, key ``teacher``), and the baseline row of
  ``trials.parquet`` carries the same summary in its ``info`` JSON (``info["summary"]["teacher"]``). The
  report reads the latter, so it still needs nothing but the table.  Figures: ``latency`` (the runtime's
  dict: ``median_ms``, ``iqr_ms``, ``batch``, ``threads``, ``device``, ``runtime``), ``val_`` / ``test_``
  ``cluster_accuracy`` and ``nmi`` (Hungarian matching against the labels; evaluation only),
  ``train_points``, ``fit_s`` (``reused``: read from the saved teacher instead), ``ks`` and ``settings``.
* **Only MBN sweeps change.** :func:`teacher_of` is None unless the baseline row names an ``mbn`` teacher
  with a positive, finite latency; every report without one is exactly as before.
* **Quality and costs.** The sweep's quality is agreement with this teacher, so the teacher's agreement is
  1 by definition.  Its cost on the latency axis is its measured prediction latency (timed on the same
  device, threads and batch as the students).  MBN is not a network: its parameter and MAC counts are not
  defined on the students' terms (it keeps training points as centroids and searches them), so on the
  params and MACs projections it is a horizontal reference line at agreement 1, not a point
  (:func:`teacher_mark`).
* **Speed-up.** ``speed-up vs teacher`` = the teacher's per-sample latency ÷ the row's per-sample latency
  (each ``latency_ms`` ÷ its batch), e.g. ``812x``.  A row timed under other conditions than the teacher
  (runtime, threads, batch or device) gets a ``*``: the ratio is then not like for like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd

from ..measure import fmt_speedup
from .rows import info, is_baseline, num, text

LABEL = "MBN teacher"
COLOUR = "#222222"  # near-black: apart from every method's colour and from the baseline's gold
SPEEDUP_HEADER = "speed-up vs teacher"
MISMATCH = "*"


@dataclass(frozen=True)
class Teacher:
    """The figures of a sweep's MBN teacher (see the module docstring); NaN where not recorded."""

    latency_ms: float  # median time of one call at ``batch``
    iqr_ms: float
    batch: int
    threads: float
    device: str
    runtime: str
    val_cluster_accuracy: float
    test_cluster_accuracy: float
    val_nmi: float
    test_nmi: float
    train_points: float
    fit_s: float
    ks: tuple[int, ...] = ()
    V: float = float("nan")
    reused: bool = False  # read from the sweep folder's saved teacher, not fitted by this baseline

    @property
    def per_sample_ms(self) -> float:
        return self.latency_ms / self.batch

    @property
    def quality(self) -> float:
        """The teacher's agreement with itself."""
        return 1.0

    def conditions(self) -> str:
        """Where its latency was timed, as the summary's "Latency timed on" writes it."""
        parts = [self.runtime or "torch", *([f"{self.threads:.0f} thread(s)"] if math.isfinite(self.threads) else []),
                 f"batch {self.batch}", *([self.device] if self.device else [])]
        return ", ".join(parts)


def teacher_of(df: pd.DataFrame) -> Teacher | None:
    """The MBN teacher the baseline row records, or None (no baseline row, no ``mbn`` teacher, or no usable
    latency)."""
    if "info" not in df.columns or "trial_id" not in df.columns:
        return None
    base = df[is_baseline(df)]
    if base.empty:
        return None
    summary = info(base.iloc[0]).get("summary")
    t = summary.get("teacher") if isinstance(summary, dict) else None
    if not isinstance(t, dict) or t.get("kind") != "mbn":
        return None
    lat = t.get("latency") if isinstance(t.get("latency"), dict) else {}
    median = num(lat.get("median_ms", t.get("latency_ms")))
    batch = num(lat.get("batch", 1))
    if not (math.isfinite(median) and median > 0 and math.isfinite(batch) and batch >= 1):
        return None
    settings = t.get("settings") if isinstance(t.get("settings"), dict) else {}
    ks = t.get("ks") if isinstance(t.get("ks"), list) else []
    return Teacher(
        latency_ms=median, iqr_ms=num(lat.get("iqr_ms")), batch=int(batch), threads=num(lat.get("threads")),
        device=text(lat.get("device")), runtime=text(lat.get("runtime")),
        val_cluster_accuracy=num(t.get("val_cluster_accuracy")),
        test_cluster_accuracy=num(t.get("test_cluster_accuracy")),
        val_nmi=num(t.get("val_nmi")), test_nmi=num(t.get("test_nmi")), train_points=num(t.get("train_points")),
        fit_s=num(t.get("fit_s")), ks=tuple(int(k) for k in ks if isinstance(k, (int, float))),
        V=num(settings.get("V")), reused=t.get("reused") is True,
    )


# --------------------------------------------------------------------------- speed-up


def _row_batch(row: Any) -> float:
    b = num(row.get("latency_batch"))
    return b if math.isfinite(b) and b >= 1 else float("nan")


def speedup(teacher: Teacher, row: Any) -> float:
    """Teacher's per-sample latency ÷ the row's (NaN when the row has no latency); a row without a recorded
    batch is read at the teacher's batch."""
    lat = num(row.get("latency_ms"))
    if not (math.isfinite(lat) and lat > 0):
        return float("nan")
    batch = _row_batch(row)
    per_sample = lat / (batch if math.isfinite(batch) else teacher.batch)
    return teacher.per_sample_ms / per_sample


def same_conditions(teacher: Teacher, row: Any) -> bool:
    """Whether the row's latency was timed like the teacher's: runtime, threads, batch and device (a figure
    the row does not record is not held against it)."""
    runtime, device = text(row.get("latency_runtime")), text(row.get("device"))
    threads, batch = num(row.get("threads")), _row_batch(row)
    return ((not runtime or not teacher.runtime or runtime == teacher.runtime)
            and (not device or not teacher.device or device == teacher.device)
            and (not math.isfinite(threads) or not math.isfinite(teacher.threads) or threads == teacher.threads)
            and (not math.isfinite(batch) or batch == teacher.batch))


def speedup_cell(teacher: Teacher, row: Any) -> str:
    """The front table's cell: :func:`fmt_speedup`, with :data:`MISMATCH` when not timed like the teacher."""
    cell = fmt_speedup(speedup(teacher, row))
    return cell + MISMATCH if cell != "-" and not same_conditions(teacher, row) else cell


def speedup_note(teacher: Teacher) -> str:
    return (f"{SPEEDUP_HEADER}: the MBN teacher's per-sample prediction latency ({teacher.per_sample_ms:.3g} ms; "
            f"{teacher.conditions()}) divided by the row's per-sample latency; {MISMATCH} marks a row timed under "
            f"other conditions (runtime, threads, batch or device) than the teacher.")


# --------------------------------------------------------------------------- on the projections


class Mark(NamedTuple):
    """How a projection shows the teacher: a ``point`` at (x, y), or a horizontal ``line`` at y."""

    kind: str
    x: float
    y: float
    label: str


def teacher_mark(teacher: Teacher | None, quality: str, cost: str) -> Mark | None:
    """The teacher on the ``quality`` vs ``cost`` projection: a point at (its latency, agreement 1) on the
    latency axis, a line at agreement 1 on params and MACs (not defined for MBN); None without a teacher or
    when the quality is not agreement (the teacher's own quality is only defined as agreement)."""
    if teacher is None or quality != "agreement":
        return None
    if cost == "latency_ms":
        return Mark("point", teacher.latency_ms, teacher.quality, LABEL)
    word = {"params": "parameters", "macs": "MACs"}.get(cost, cost)
    return Mark("line", float("nan"), teacher.quality, f"{LABEL} (agreement 1; {word} not defined for MBN)")


# --------------------------------------------------------------------------- summary


def _pair(val: float, test: float) -> str:
    parts = [f"{v:.4f} ({name})" for v, name in ((val, "val"), (test, "test")) if math.isfinite(v)]
    return ", ".join(parts) or "-"


def hover_text(teacher: Teacher) -> str:
    """The interactive scatter's hover text of the teacher (plain text; the caller escapes it)."""
    accuracy = _pair(teacher.val_cluster_accuracy, teacher.test_cluster_accuracy)
    return "\n".join([LABEL, f"clustering accuracy {accuracy}", f"NMI {_pair(teacher.val_nmi, teacher.test_nmi)}",
                      teacher.conditions()])


def summary_text(teacher: Teacher, student_speedup: str = "-") -> str:
    """The summary's "MBN teacher" line: latency and where it was timed, clustering accuracy, NMI, the fit;
    ``student_speedup`` is the dense student's :func:`speedup_cell`."""
    iqr = f" ± {teacher.iqr_ms:.2g}" if math.isfinite(teacher.iqr_ms) else ""
    parts = [f"per-sample prediction latency {teacher.per_sample_ms:.3g} ms (median {teacher.latency_ms:.3g}{iqr} ms "
             f"per call; {teacher.conditions()})",
             f"clustering accuracy {_pair(teacher.val_cluster_accuracy, teacher.test_cluster_accuracy)}",
             f"NMI {_pair(teacher.val_nmi, teacher.test_nmi)}", "agreement 1 (the reference)"]
    fit = []
    if math.isfinite(teacher.V):
        fit.append(f"V={teacher.V:.0f}")
    if teacher.ks:
        fit.append("k " + "/".join(str(k) for k in teacher.ks))
    if math.isfinite(teacher.train_points):
        where = f"fitted on {teacher.train_points:.0f} unlabeled training inputs"
        took = (" (read from the saved teacher)" if teacher.reused
                else f" in {teacher.fit_s:.1f} s" if math.isfinite(teacher.fit_s) else "")
        parts.append(where + took + (f" ({', '.join(fit)})" if fit else ""))
    if student_speedup != "-":
        parts.append(f"the dense student is {student_speedup} faster")
    return "; ".join(parts)
