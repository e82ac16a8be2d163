"""The trial record: one frozen type whose fields *are* the columns of ``trials.parquet``.

Conventions:

* One record per trial plus one for the dense baseline (``trial_id == "baseline"``, ``method ==
  "baseline"``).  Records are built by the trial runner and the baseline (and, for trials that never
  reported, by the driver through :meth:`TrialRecord.unfinished`); they are validated once, when built,
  and serialised only by :mod:`sweep.results.store`.
* Each field's ``metadata`` holds its Arrow type and its meaning; :data:`COLUMNS` (and the README's
  schema table, checked by a test) is derived from the fields, in field order.
* Knobs are a family of dynamic columns: ``knob.<method>.<knob>``, one per knob of every method in the
  sweep (null where a row's method lacks it).  A record holds its own method's knobs in ``knobs``
  (name -> value; unset knobs are left out).
* Timestamps are timezone-aware UTC datetimes (floats are taken as epoch seconds).
* The table's schema metadata holds ``sweep`` -> JSON with the sweep name, objectives, quality column
  and baseline figures, so that the report and ``sweep select`` work from the Parquet file alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any, Mapping

import pyarrow as pa

KNOB_PREFIX = "knob."
BASELINE_ID = "baseline"
STATUSES = ("ok", "failed", "stopped", "stopped_early", "infeasible")
# done for good: never run again by `sweep resume`, told to the sampler (`stopped` trials run again)
FINISHED = ("ok", "failed", "stopped_early", "infeasible")


def epochs_spent(records) -> int:
    """Fine-tune epochs the finished trials among ``records`` spent (``search.epoch_budget`` counts them):
    ``stopped_early`` rows the epochs they got, ``infeasible`` ones none; ``stopped`` rows, run again, not."""
    return sum(int(r.finetune_epochs or 0) for r in records if not r.is_baseline and r.status in FINISHED)


def _col(typ: pa.DataType, doc: str, default: Any = None):
    return field(default=default, metadata={"arrow": typ, "doc": doc})


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    sweep: str = _col(pa.string(), "sweep name", "")
    trial_id: str = _col(pa.string(), "Ray Tune trial id, or `baseline` for the dense model", "")
    trial_number: int | None = _col(pa.int64(), "index of the trial in sampling order (0-based; null for the baseline)")
    status: str = _col(pa.string(), "`ok`; `failed`; `stopped` (cut short by the driver, run again by `resume`); "
                                    "`stopped_early` (stopped by successive halving at a rung, with its quality "
                                    "there); `infeasible` (broke a hard budget of search.constraints after pruning, "
                                    "not fine-tuned)", "failed")
    error: str = _col(pa.string(), "why a trial failed or stopped (empty when ok)", "")
    method: str | None = _col(pa.string(), "pruning method (`baseline` for the dense model)")
    accuracy: float | None = _col(pa.float64(), "top-1 accuracy on the validation split (the quality objective "
                                                "of supervised sweeps)")
    test_accuracy: float | None = _col(pa.float64(), "top-1 accuracy on the test split (reported, never used to "
                                                     "choose)")
    agreement: float | None = _col(pa.float64(), "top-1 agreement with the dense baseline (teacher) on the "
                                                 "validation inputs (the quality objective of label-free sweeps; "
                                                 "reads no label)")
    nmi: float | None = _col(pa.float64(), "normalised mutual information of the predicted clusters with the labels "
                                           "on the validation split (sweeps with an unsupervised teacher: labels read "
                                           "for this figure only; null elsewhere or without a labelled set)")
    test_nmi: float | None = _col(pa.float64(), "the same NMI on the test split")
    baseline_accuracy: float | None = _col(pa.float64(), "validation accuracy of the dense baseline")
    baseline_test_accuracy: float | None = _col(pa.float64(), "test accuracy of the dense baseline")
    params: int | None = _col(pa.int64(), "parameter count")
    macs: int | None = _col(pa.int64(), "multiply-accumulates of one forward pass at batch 1")
    latency_ms: float | None = _col(pa.float64(), "median forward latency in milliseconds")
    latency_iqr_ms: float | None = _col(pa.float64(), "latency spread: inter-quartile range in milliseconds")
    latency_batch: int | None = _col(pa.int64(), "batch size of the latency measurement")
    latency_repeats: int | None = _col(pa.int64(), "timed repeats (after warm-up)")
    threads: int | None = _col(pa.int64(), "intra-op threads of the latency runtime during the measurement")
    device: str | None = _col(pa.string(), "device of the latency measurement (`cpu`, `cuda:0 (NVIDIA H200)`)")
    latency_runtime: str | None = _col(pa.string(), "runtime and version the latency was timed on (`onnxruntime "
                                                    "1.20.1`, `torch 2.5.1`, `torch_compile 2.5.1 (inductor)`; "
                                                    "null in tables written before it was recorded: eager torch)")
    latency_alone: bool | None = _col(pa.bool_(), "true when latency was re-measured with no other trial running")
    params_ratio: float | None = _col(pa.float64(), "params / baseline params")
    macs_ratio: float | None = _col(pa.float64(), "MACs / baseline MACs")
    latency_ratio: float | None = _col(pa.float64(), "latency / baseline latency")
    on_front: bool | None = _col(pa.bool_(), "on the Pareto front of the sweep's objectives (ok rows only; the "
                                             "dense baseline included)")
    on_front_robust: bool | None = _col(pa.bool_(), "on the noise-aware front: latencies whose IQR bands (median "
                                                    "± IQR/2) overlap count as equal (ok rows only)")
    duplicate_of: str | None = _col(pa.string(), "trial id of the first ok row with the same structure (params, "
                                                 "MACs and recorded widths / removed blocks); `baseline` for a "
                                                 "trial that removed nothing (never on the front: the dense "
                                                 "network trained longer); null for the first")
    model_path: str | None = _col(pa.string(), "saved model, relative to the sweep folder")
    mlflow_run_id: str | None = _col(pa.string(), "MLflow run id (nested child run; the parent's for the baseline)")
    node_id: str | None = _col(pa.string(), "Ray node id of the node the trial ran on")
    host: str | None = _col(pa.string(), "host name and IP address of the node the trial ran on")
    retried: int | None = _col(pa.int64(), "times the trial ran again after its worker died (node lost, killed "
                                           "for memory; search.retries)")
    seed: int | None = _col(pa.int64(), "random seed of the trial")
    finetune_epochs: int | None = _col(pa.int64(), "fine-tuning epochs after pruning")
    rung_quality: str | None = _col(pa.string(), "successive halving: the quality the trial had at each rung it "
                                                 "reached (also those passed before it went on from a saved state), "
                                                 "as JSON {fine-tune epochs: value} (what a resumed sweep's scheduler "
                                                 "replays); null without search.scheduler")
    wall_s: float | None = _col(pa.float64(), "wall-clock seconds of the trial")
    started_at: datetime | None = _col(pa.timestamp("us", tz="UTC"), "start time")
    ended_at: datetime | None = _col(pa.timestamp("us", tz="UTC"), "end time")
    info: str | None = _col(pa.string(), "method-specific details as JSON (e.g. per-layer ratios, trajectories)")
    knobs: dict = field(default_factory=dict, metadata={"family": True})

    def __post_init__(self) -> None:
        for f in fields(self):
            if "arrow" in f.metadata:
                object.__setattr__(self, f.name, _coerce(f.name, f.metadata["arrow"], getattr(self, f.name)))
        object.__setattr__(self, "knobs", {str(k): v for k, v in dict(self.knobs or {}).items() if v is not None})
        if not self.trial_id:
            raise ValueError(f"trial_id must be a non-empty string, but got trial_id={self.trial_id!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, but got status={self.status!r} "
                             f"(trial {self.trial_id})")
        if self.status == "ok":
            missing = [n for n in ("params", "macs", "latency_ms") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"an ok record must carry {', '.join(missing)}, but got None (trial {self.trial_id})")

    # -------------------------------------------------------------------- access
    @property
    def is_baseline(self) -> bool:
        return self.trial_id == BASELINE_ID

    def get(self, name: str, default: Any = None) -> Any:
        """Column value by name (``knob.<method>.<knob>`` included), as a table row would give it."""
        if name.startswith(KNOB_PREFIX):
            method, _, knob = name[len(KNOB_PREFIX):].partition(".")
            return self.knobs.get(knob, default) if method == self.method else default
        value = getattr(self, name, default) if name in COLUMN_TYPES else default
        return default if value is None else value

    def __getitem__(self, name: str) -> Any:
        """``record["accuracy"]``: the table view of one row (KeyError for a name that is no column)."""
        if name not in COLUMN_TYPES and not name.startswith(KNOB_PREFIX):
            raise KeyError(name)
        return self.get(name)

    def info_dict(self) -> dict:
        """``info`` parsed (an empty dict when absent or not a JSON object)."""
        try:
            out = json.loads(self.info or "{}")
        except ValueError:
            return {}
        return out if isinstance(out, dict) else {}

    def replace(self, **changes) -> "TrialRecord":
        return replace(self, **changes)

    # -------------------------------------------------------------------- serialised forms
    def to_row(self) -> dict:
        """Column name -> value, knob columns included (what the store writes)."""
        row = {name: getattr(self, name) for name in COLUMN_NAMES}
        row.update({knob_column(self.method or "", k): v for k, v in self.knobs.items()})
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "TrialRecord":
        """A record from a table row; columns an older file lacks read as null."""
        method = row.get("method")
        prefix = f"{KNOB_PREFIX}{method}."
        knobs = {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and v is not None}
        return cls(**{name: row.get(name) for name in COLUMN_NAMES}, knobs=knobs)

    def to_json(self) -> str:
        """One JSON object (timestamps as epoch seconds): how a record travels from a worker."""
        row = {name: getattr(self, name) for name in COLUMN_NAMES}
        for name in ("started_at", "ended_at"):
            row[name] = None if row[name] is None else row[name].timestamp()
        return json.dumps({**row, "knobs": self.knobs})

    @classmethod
    def from_json(cls, text: str) -> "TrialRecord":
        return cls(**json.loads(text))

    @classmethod
    def unfinished(cls, sweep: str, trial_id: str, status: str, error: str, method: str | None = None,
                   ended_at: float | None = None) -> "TrialRecord":
        """The record of a trial that never reported a result (interrupted, or its worker crashed)."""
        return cls(sweep=sweep, trial_id=trial_id, status=status, error=error, method=method, ended_at=ended_at)


def _coerce(name: str, typ: pa.DataType, value: Any) -> Any:
    """``value`` as the Python type of column ``name`` (None stays None); a clear error otherwise."""
    if value is None:
        return None
    try:
        if pa.types.is_timestamp(typ):
            if isinstance(value, datetime):
                return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        if pa.types.is_boolean(typ):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if pa.types.is_integer(typ):
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if pa.types.is_floating(typ):
            if isinstance(value, bool):
                raise TypeError
            out = float(value)
            return out if not math.isnan(out) else None
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be {typ}, but got {name}={value!r}") from None


# name, type, meaning -- derived from the record (the README's schema table is checked against it)
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    (f.name, f.metadata["arrow"], f.metadata["doc"]) for f in fields(TrialRecord) if "arrow" in f.metadata
]
COLUMN_NAMES = [c[0] for c in COLUMNS]
COLUMN_TYPES = {c[0]: c[1] for c in COLUMNS}


def knob_column(method: str, knob: str) -> str:
    return f"{KNOB_PREFIX}{method}.{knob}"


def with_front(records: list[TrialRecord], objectives) -> list[TrialRecord]:
    """The records with ``on_front`` and ``on_front_robust`` set by the one front function
    (:func:`sweep.pareto.front_flags`, strict and noise-aware) and ``duplicate_of`` marked."""
    from ..pareto import duplicate_of, front_flags

    rows = [r.to_row() for r in records]  # the table view: info as stored, knobs as columns
    strict, robust = front_flags(records, objectives), front_flags(records, objectives, robust=True)
    return [r.replace(on_front=s, on_front_robust=b, duplicate_of=d)
            for r, s, b, d in zip(records, strict, robust, duplicate_of(rows))]
