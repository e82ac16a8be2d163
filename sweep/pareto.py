"""Pareto fronts and hypervolume, in pure numpy.

Conventions:

* Every function below the ``DIRECTIONS`` helpers works on a **minimisation** array ``F`` of shape
  ``(n, d)``: row ``i`` is one point, smaller is better in every column.  Use
  :func:`to_minimisation` (or :func:`normalise`) to get there from raw objective values.
* ``a`` dominates ``b`` when ``a <= b`` in every column and ``a < b`` in at least one.  Exact
  duplicates do not dominate each other, so both stay on the front.
* Rows containing NaN are treated as missing: they are never on the front and dominate nothing.
* **Noise.** A measured objective carries its spread (:data:`NOISE`: latency and its inter-quartile
  range). Under the *robust* dominance test (``noise=`` below, ``front_flags(..., robust=True)``) two
  values are ordered only when their intervals ``value ± spread / 2`` do not overlap; overlapping ones
  count as equal. With zero spread it is the strict test. Transitivity is lost, but with one noisy
  objective no cycle can form (the exact objectives cannot get worse along a cycle, so every step must
  be faster beyond the noise, and latency cannot fall all the way round), so a finite set keeps at
  least one point; should more noisy objectives ever leave none, :func:`front_flags` keeps the strict
  front instead.
* The sweep's hypervolume lives in a normalised space (see :func:`normalise`): accuracy is divided
  by the baseline's accuracy (maximised, reference 0) and each cost by the baseline's cost
  (minimised, reference :data:`COST_REFERENCE` = 1.1, i.e. 10 % worse than the dense model).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

DIRECTIONS: dict[str, str] = {
    "accuracy": "max",
    "agreement": "max",  # label-free sweeps: top-1 agreement with the teacher on unlabeled validation data
    "test_accuracy": "max",
    "latency_ms": "min",
    "params": "min",
    "macs": "min",
}

# Objective -> the column holding its spread (full width; half of it on each side of the value).
# The IQR of single timings is a conservative noise band: it is wider than the uncertainty of the
# median itself (a box-plot notch, McGill, Tukey & Larsen 1978, is about 1.57 IQR / sqrt(n) wide),
# so two latencies are told apart only when the middle halves of their timings do not overlap.
NOISE: dict[str, str] = {"latency_ms": "latency_iqr_ms"}

# Normalised reference point: a cost 10 % worse than the baseline's, and zero accuracy.
COST_REFERENCE = 1.1
ACCURACY_REFERENCE = 0.0

# The dense baseline's trial id (sweep.results.schema.BASELINE_ID; this module imports nothing of the results).
BASELINE_ID = "baseline"

# Rows per block when building the n x n domination matrix, to bound memory for large n.
_CHUNK = 512


def to_minimisation(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Return a float copy of ``values`` (n, d) with every ``"max"`` column negated."""
    F = np.array(values, dtype=float, copy=True)
    if F.ndim != 2 or F.shape[1] != len(directions):
        raise ValueError(f"values must have shape (n, {len(directions)}), but got {F.shape}")
    for j, direction in enumerate(directions):
        if direction == "max":
            F[:, j] = -F[:, j]
        elif direction != "min":
            raise ValueError(f"direction must be 'min' or 'max', but got {direction!r}")
    return F


def _as_points(F: np.ndarray) -> np.ndarray:
    F = np.asarray(F, dtype=float)
    if F.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n, d), but got shape {F.shape}")
    return F


def _noise(F: np.ndarray, noise: np.ndarray | None) -> np.ndarray | None:
    """Half-widths of the noise band per value (n, d), >= 0 and finite; None for the strict test."""
    if noise is None:
        return None
    H = np.asarray(noise, dtype=float)
    if H.shape != F.shape:
        raise ValueError(f"noise must have the points' shape {F.shape}, but got {H.shape}")
    return np.where(np.isfinite(H), np.abs(H), 0.0)


def _domination_matrix(F: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """``D[i, j]`` is true when point ``i`` dominates point ``j`` (NaN rows take no part).

    With ``noise`` (half-widths, see :func:`_noise`), ``i`` dominates ``j`` when it is worse beyond the
    noise in no column and better beyond it in at least one (``F_i + h_i < F_j - h_j``)."""
    n = len(F)
    valid = ~np.isnan(F).any(axis=1)
    H = _noise(F, noise)
    lo, hi = (F, F) if H is None else (F - H, F + H)
    D = np.zeros((n, n), dtype=bool)
    for start in range(0, n, _CHUNK):
        stop = start + _CHUNK
        # (b, 1, d) against (1, n, d); with zero noise: a <= b everywhere and a < b somewhere
        not_worse = (lo[start:stop, None, :] <= hi[None, :, :]).all(axis=2)
        better = (hi[start:stop, None, :] < lo[None, :, :]).any(axis=2)
        D[start:stop] = not_worse & better
    D &= valid[:, None] & valid[None, :]
    return D


def non_dominated_mask(F: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the points of ``F`` (minimisation) that no other point dominates; with ``noise``
    (half-widths of each value's noise band, shape of ``F``) under the robust test."""
    F = _as_points(F)
    if len(F) == 0:
        return np.zeros(0, dtype=bool)
    valid = ~np.isnan(F).any(axis=1)
    return valid & ~_domination_matrix(F, noise).any(axis=0)


def non_dominated_sort(F: np.ndarray) -> np.ndarray:
    """Front rank of every point of ``F`` (minimisation): 0 for the front, 1 for the next, ...

    Fast non-dominated sort (Deb et al. 2002) on the full domination matrix.  NaN rows get the
    rank after the last real front.
    """
    F = _as_points(F)
    n = len(F)
    ranks = np.full(n, -1, dtype=int)
    if n == 0:
        return ranks
    valid = ~np.isnan(F).any(axis=1)
    D = _domination_matrix(F)
    counts = D.sum(axis=0)  # how many points dominate each point
    current = np.flatnonzero(valid & (counts == 0))
    rank = 0
    while current.size:
        ranks[current] = rank
        # Removing this front lowers the count of everything it dominated.
        counts = counts - D[current].sum(axis=0)
        counts[ranks >= 0] = -1
        current = np.flatnonzero(valid & (counts == 0))
        rank += 1
    ranks[~valid] = rank
    return ranks


def _hv2d(F: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by 2-D points that are all strictly inside the reference box."""
    order = np.lexsort((F[:, 1], F[:, 0]))
    x = F[order, 0]
    y = np.minimum.accumulate(F[order, 1])  # best y reached up to each x
    widths = np.diff(np.append(x, ref[0]))
    return float(np.sum(widths * (ref[1] - y)))


def _hv(F: np.ndarray, ref: np.ndarray) -> float:
    """HSO: slice along the last axis; each slab's volume is depth x (d-1)-D hypervolume."""
    n, d = F.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(ref[0] - F[:, 0].min())
    if d == 2:
        return _hv2d(F, ref)
    F = F[np.argsort(F[:, -1], kind="stable")]
    bounds = np.append(F[1:, -1], ref[-1])
    depths = bounds - F[:, -1]
    total = 0.0
    for i in np.flatnonzero(depths > 0):
        prefix = F[: i + 1, :-1]
        if d > 3 and i > 0:
            # Dominated points add nothing; dropping them keeps deeper recursions small.
            prefix = prefix[non_dominated_mask(prefix)]
        total += depths[i] * _hv(prefix, ref[:-1])
    return total


def hypervolume(F: np.ndarray, ref: Sequence[float] | np.ndarray) -> float:
    """Exact volume dominated by ``F`` (minimisation) and bounded by the reference point ``ref``.

    Points that are not strictly better than ``ref`` in every coordinate, and NaN rows, add
    nothing.  Recursive slicing (HSO) with a vectorised 2-D base case; any ``d >= 1``.
    """
    F = _as_points(F)
    ref = np.asarray(ref, dtype=float)
    if ref.ndim != 1 or (len(F) and F.shape[1] != ref.shape[0]):
        raise ValueError(f"reference point must have {F.shape[1]} coordinates, but got {ref.shape}")
    if len(F) == 0:
        return 0.0
    inside = ~np.isnan(F).any(axis=1) & (F < ref).all(axis=1)
    F = np.unique(F[inside], axis=0)
    if len(F) == 0:
        return 0.0
    if F.shape[1] > 2:
        F = F[non_dominated_mask(F)]
    return _hv(F, ref)


def _baseline_value(name: str, baseline: Mapping[str, float]) -> float:
    value = baseline.get(name)
    if value is None or not np.isfinite(value) or value <= 0:
        raise ValueError(f"baseline {name} must be a positive number, but got {value!r}")
    return float(value)


def reference_point(objectives: Sequence[str], baseline: Mapping[str, float]) -> np.ndarray:
    """Reference point in the normalised minimisation space of :func:`normalise`.

    ``ACCURACY_REFERENCE`` (0) for maximised objectives, ``COST_REFERENCE`` (1.1) for costs.
    ``baseline`` is taken so that callers pass the same arguments as to :func:`normalise`; the
    reference is relative to it by construction.
    """
    ref = []
    for name in objectives:
        direction = DIRECTIONS.get(name)
        if direction is None:
            raise ValueError(f"objective must be one of {sorted(DIRECTIONS)}, but got {name!r}")
        _baseline_value(name, baseline)
        ref.append(0.0 - ACCURACY_REFERENCE if direction == "max" else COST_REFERENCE)
    return np.array(ref, dtype=float)


def normalise(
    rows_values: Mapping[str, np.ndarray], objectives: Sequence[str], baseline: Mapping[str, float]
) -> np.ndarray:
    """Stack ``rows_values[name]`` for each objective into a normalised minimisation array.

    Each column is divided by the baseline's value for that objective; maximised columns are then
    negated, so the dense baseline itself sits at ``(-1, 1, 1, ...)``.
    """
    n = len(next(iter(rows_values.values()))) if rows_values else 0
    F = np.empty((n, len(objectives)), dtype=float)
    for j, name in enumerate(objectives):
        if name not in DIRECTIONS:
            raise ValueError(f"objective must be one of {sorted(DIRECTIONS)}, but got {name!r}")
        column = np.asarray(rows_values[name], dtype=float)
        F[:, j] = column / _baseline_value(name, baseline)
    return to_minimisation(F, [DIRECTIONS[name] for name in objectives])


def sweep_hypervolume(
    rows_values: Mapping[str, np.ndarray], objectives: Sequence[str], baseline: Mapping[str, float]
) -> float:
    """Hypervolume of the given rows in the sweep's normalised space (NaN rows ignored)."""
    F = normalise(rows_values, objectives, baseline)
    return hypervolume(F, reference_point(objectives, baseline))


def records_hypervolume(records: Sequence[Mapping], objectives: Sequence[str], baseline: Mapping[str, float]) -> float:
    """The sweep's hypervolume over the rows that count (:func:`counts_toward_front`: ``ok``, the dense
    baseline included, trials that removed nothing left out); ``records`` are trial records or row
    mappings.  The driver's progress, MLflow and the benchmarks all take it from here."""
    rows = [r for r, counted in zip(records, counts_toward_front(records)) if counted]
    if not rows:
        return 0.0
    values = {o: np.array([float(r.get(o, math.nan)) for r in rows], dtype=float) for o in objectives}
    return float(sweep_hypervolume(values, list(objectives), baseline))


def hypervolume_history(
    rows_values: Mapping[str, np.ndarray],
    objectives: Sequence[str],
    baseline: Mapping[str, float],
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Sweep hypervolume after each row, in completion order; one value per row.

    Pass only ``ok`` rows.  Rows are taken in the given order, or sorted (stably) by ``order``
    (e.g. ``ended_at`` as int64) when given.  A NaN row, or one dominated by the rows before it,
    leaves the value unchanged, so the result never decreases.
    """
    F = normalise(rows_values, objectives, baseline)
    ref = reference_point(objectives, baseline)
    if order is not None:
        F = F[np.argsort(np.asarray(order), kind="stable")]
    history = np.zeros(len(F), dtype=float)
    front = np.empty((0, F.shape[1]), dtype=float)
    current = 0.0
    for i, point in enumerate(F):
        useful = not np.isnan(point).any() and bool((point < ref).all())
        # Only a point no front member weakly dominates can grow the volume.
        if useful and not (front <= point).all(axis=1).any():
            front = np.vstack([front, point])
            front = front[non_dominated_mask(front)]
            current = hypervolume(front, ref)
        history[i] = current
    return history


def front_flags(rows: Sequence[Mapping], objectives: Sequence[str], *, robust: bool = False) -> list[bool]:
    """The one Pareto front of a sweep: for each row, whether it is on the front of ``objectives``.

    ``rows`` are mappings of column names to values (trial records or table rows).  Only rows with
    ``status == "ok"`` and a finite value for every objective take part; the others are never on the
    front.  Directions come from :data:`DIRECTIONS`.  The dense baseline row takes part like any trial; a
    trial that removed nothing (:func:`removed_nothing`) does not: it is the dense network trained longer,
    not a pruned candidate, and the baseline stands for its structure.
    ``robust=True`` uses the noise-aware test (module docstring): an objective in :data:`NOISE` is
    compared with its row's spread (a missing spread counts as none), so a point is off the robust
    front only when another beats it beyond the measured noise.
    """
    objectives = list(objectives)
    for name in objectives:
        if name not in DIRECTIONS:
            raise ValueError(f"objective must be one of {sorted(DIRECTIONS)}, but got {name!r}")
    flags = [False] * len(rows)
    counted = counts_toward_front(rows)
    cand = [i for i, r in enumerate(rows) if counted[i] and all(_finite(r.get(o)) for o in objectives)]
    if cand:
        F = np.array([[float(rows[i][o]) for o in objectives] for i in cand], dtype=float)
        H = None
        if robust:
            H = np.array([[_half_spread(rows[i], o) for o in objectives] for i in cand], dtype=float)
        M = to_minimisation(F, [DIRECTIONS[o] for o in objectives])
        mask = non_dominated_mask(M, H)
        if not mask.any():  # only possible with several noisy objectives (module docstring)
            mask = non_dominated_mask(M)
        for i, on in zip(cand, mask):
            flags[i] = bool(on)
    return flags


def _half_spread(row: Mapping, objective: str) -> float:
    column = NOISE.get(objective)
    value = row.get(column) if column else None
    return float(value) / 2 if _finite(value) else 0.0


def within_noise(a: Mapping, b: Mapping, objective: str = "latency_ms") -> bool:
    """Whether rows ``a`` and ``b`` are not told apart on ``objective``: their noise bands (value ±
    spread / 2, :data:`NOISE`) overlap.  Objectives without a spread are within noise only when equal."""
    if not (_finite(a.get(objective)) and _finite(b.get(objective))):
        return False
    gap = abs(float(a.get(objective)) - float(b.get(objective)))
    return gap <= _half_spread(a, objective) + _half_spread(b, objective)


def noise_neighbours(rows: Sequence[Mapping], objective: str = "latency_ms") -> list[int]:
    """For each row, how many other rows of ``rows`` are :func:`within_noise` of it on ``objective``
    (e.g. over the front's rows: the front points that noise alone orders)."""
    return [sum(within_noise(a, b, objective) for j, b in enumerate(rows) if j != i) for i, a in enumerate(rows)]


def structure_key(row: Mapping) -> tuple | None:
    """What makes two candidates the same network: params, MACs and, where the trial recorded them, its
    per-layer widths (``info["channels"]``) and removed blocks (``info["removed"]``).  None when params
    or MACs are missing."""
    params, macs = row.get("params"), row.get("macs")
    if not (_finite(params) and _finite(macs)):
        return None
    info = row.get("info")
    if isinstance(info, str):
        try:
            info = json.loads(info or "{}")
        except ValueError:
            info = {}
    info = info if isinstance(info, Mapping) else {}
    extra = tuple(json.dumps(info.get(k), sort_keys=True, default=str) for k in ("channels", "removed")
                  if info.get(k) is not None)
    return (int(params), int(macs), *extra)


def counts_toward_front(rows: Sequence[Mapping]) -> list[bool]:
    """For each row, whether it takes part in the front and the hypervolume: ``ok`` and not a trial that
    removed nothing (:func:`removed_nothing`: the dense network trained longer, which the baseline stands
    for).  Every front and every hypervolume of a sweep (driver, report, benchmarks) counts these rows."""
    dense = removed_nothing(rows)
    return [r.get("status") == "ok" and not d for r, d in zip(rows, dense)]


def removed_nothing(rows: Sequence[Mapping]) -> list[bool]:
    """For each row, whether it is an ``ok`` trial (not the dense baseline) whose network has exactly the
    baseline row's params and MACs: pruning removed nothing, so any quality it gained over the baseline is
    training, not pruning.  All False when ``rows`` hold no baseline row."""
    base = next((r for r in rows if r.get("trial_id") == BASELINE_ID), None)
    if base is None or not (_finite(base.get("params")) and _finite(base.get("macs"))):
        return [False] * len(rows)
    same = (int(base["params"]), int(base["macs"]))
    return [r.get("trial_id") != BASELINE_ID and r.get("status") == "ok" and _finite(r.get("params"))
            and _finite(r.get("macs")) and (int(r["params"]), int(r["macs"])) == same for r in rows]


def duplicate_of(rows: Sequence[Mapping]) -> list[str | None]:
    """For each ``ok`` row, the ``trial_id`` of the first earlier ``ok`` row with the same
    :func:`structure_key` (a structurally identical network), or ``"baseline"`` for a trial that
    removed nothing (:func:`removed_nothing`); None for the first of each structure and for other rows.
    Such candidates differ only by training noise and latency noise."""
    first: dict = {}
    out: list[str | None] = []
    dense = removed_nothing(rows)
    for i, r in enumerate(rows):
        if dense[i]:
            out.append(BASELINE_ID)
            continue
        key = structure_key(r) if r.get("status") == "ok" else None
        if key is None:
            out.append(None)
            continue
        if key in first:
            out.append(first[key])
        else:
            first[key] = r.get("trial_id")
            out.append(None)
    return out


def _finite(value) -> bool:
    try:
        return value is not None and bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False
