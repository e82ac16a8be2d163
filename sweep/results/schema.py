"""The columns of ``trials.parquet`` (one row per trial plus one for the baseline).

Knob columns are dynamic: one column ``knob.<method>.<knob>`` per knob of every method in the
sweep's space (null where a row's method does not have that knob).  The table's schema metadata
holds ``sweep`` -> JSON with the sweep name, its objectives and the baseline's figures, so that the
report and ``sweep select`` work from the Parquet file alone.
"""

from __future__ import annotations

import pyarrow as pa

KNOB_PREFIX = "knob."
BASELINE_ID = "baseline"
STATUSES = ("ok", "failed", "stopped")

# name, type, meaning (the README's schema table is generated from this list)
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("sweep", pa.string(), "sweep name"),
    ("trial_id", pa.string(), "Ray Tune trial id, or `baseline` for the dense model"),
    ("trial_number", pa.int64(), "index of the trial in sampling order (0-based; null for the baseline)"),
    ("status", pa.string(), "`ok`, `failed` or `stopped`"),
    ("error", pa.string(), "why a trial failed or stopped (empty when ok)"),
    ("method", pa.string(), "pruning method (`baseline` for the dense model)"),
    ("accuracy", pa.float64(), "top-1 accuracy on the validation split (what the search and selection use)"),
    ("test_accuracy", pa.float64(), "top-1 accuracy on the test split (reported, never used to choose)"),
    ("agreement", pa.float64(), "top-1 agreement with the dense baseline (teacher) on the validation inputs "
                                "(the quality objective of label-free sweeps; reads no label)"),
    ("baseline_accuracy", pa.float64(), "validation accuracy of the dense baseline"),
    ("baseline_test_accuracy", pa.float64(), "test accuracy of the dense baseline"),
    ("params", pa.int64(), "parameter count"),
    ("macs", pa.int64(), "multiply-accumulates of one forward pass at batch 1"),
    ("latency_ms", pa.float64(), "median forward latency in milliseconds"),
    ("latency_iqr_ms", pa.float64(), "latency spread: inter-quartile range in milliseconds"),
    ("latency_batch", pa.int64(), "batch size of the latency measurement"),
    ("latency_repeats", pa.int64(), "timed repeats (after warm-up)"),
    ("threads", pa.int64(), "torch intra-op threads during the latency measurement"),
    ("device", pa.string(), "device of the latency measurement (`cpu`, `cuda:0`)"),
    ("latency_alone", pa.bool_(), "true when latency was re-measured with no other trial running"),
    ("params_ratio", pa.float64(), "params / baseline params"),
    ("macs_ratio", pa.float64(), "MACs / baseline MACs"),
    ("latency_ratio", pa.float64(), "latency / baseline latency"),
    ("on_front", pa.bool_(), "on the Pareto front of the sweep's objectives (ok rows only)"),
    ("model_path", pa.string(), "saved model, relative to the sweep folder"),
    ("mlflow_run_id", pa.string(), "MLflow run id (nested child run; the parent's for the baseline)"),
    ("seed", pa.int64(), "random seed of the trial"),
    ("finetune_epochs", pa.int64(), "fine-tuning epochs after pruning"),
    ("wall_s", pa.float64(), "wall-clock seconds of the trial"),
    ("started_at", pa.timestamp("us", tz="UTC"), "start time"),
    ("ended_at", pa.timestamp("us", tz="UTC"), "end time"),
    ("info", pa.string(), "method-specific details as JSON (e.g. per-layer ratios, trajectories)"),
]

COLUMN_NAMES = [c[0] for c in COLUMNS]
COLUMN_TYPES = {c[0]: c[1] for c in COLUMNS}


def knob_column(method: str, knob: str) -> str:
    return f"{KNOB_PREFIX}{method}.{knob}"
