"""Pareto fronts and hypervolume, in pure numpy.

Conventions:

* Every function below the ``DIRECTIONS`` helpers works on a **minimisation** array ``F`` of shape
  ``(n, d)``: row ``i`` is one point, smaller is better in every column.  Use
  :func:`to_minimisation` (or :func:`normalise`) to get there from raw objective values.
* ``a`` dominates ``b`` when ``a <= b`` in every column and ``a < b`` in at least one.  Exact
  duplicates do not dominate each other, so both stay on the front.
* Rows containing NaN are treated as missing: they are never on the front and dominate nothing.
* The sweep's hypervolume lives in a normalised space (see :func:`normalise`): accuracy is divided
  by the baseline's accuracy (maximised, reference 0) and each cost by the baseline's cost
  (minimised, reference :data:`COST_REFERENCE` = 1.1, i.e. 10 % worse than the dense model).
"""

from __future__ import annotations

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

# Normalised reference point: a cost 10 % worse than the baseline's, and zero accuracy.
COST_REFERENCE = 1.1
ACCURACY_REFERENCE = 0.0

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


def _domination_matrix(F: np.ndarray) -> np.ndarray:
    """``D[i, j]`` is true when point ``i`` dominates point ``j`` (NaN rows take no part)."""
    n = len(F)
    valid = ~np.isnan(F).any(axis=1)
    D = np.zeros((n, n), dtype=bool)
    for start in range(0, n, _CHUNK):
        block = F[start : start + _CHUNK, None, :]  # (b, 1, d) against (1, n, d)
        le = (block <= F[None, :, :]).all(axis=2)
        lt = (block < F[None, :, :]).any(axis=2)
        D[start : start + _CHUNK] = le & lt
    D &= valid[:, None] & valid[None, :]
    return D


def non_dominated_mask(F: np.ndarray) -> np.ndarray:
    """Boolean mask of the points of ``F`` (minimisation) that no other point dominates."""
    F = _as_points(F)
    if len(F) == 0:
        return np.zeros(0, dtype=bool)
    valid = ~np.isnan(F).any(axis=1)
    return valid & ~_domination_matrix(F).any(axis=0)


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


def front_flags(rows: Sequence[Mapping], objectives: Sequence[str]) -> list[bool]:
    """The one Pareto front of a sweep: for each row, whether it is on the front of ``objectives``.

    ``rows`` are mappings of column names to values (trial records or table rows).  Only rows with
    ``status == "ok"`` and a finite value for every objective take part; the others are never on the
    front.  Directions come from :data:`DIRECTIONS`.  The dense baseline row takes part like any trial.
    """
    objectives = list(objectives)
    for name in objectives:
        if name not in DIRECTIONS:
            raise ValueError(f"objective must be one of {sorted(DIRECTIONS)}, but got {name!r}")
    flags = [False] * len(rows)
    cand = [i for i, r in enumerate(rows) if r.get("status") == "ok" and all(_finite(r.get(o)) for o in objectives)]
    if cand:
        F = np.array([[float(rows[i][o]) for o in objectives] for i in cand], dtype=float)
        mask = non_dominated_mask(to_minimisation(F, [DIRECTIONS[o] for o in objectives]))
        for i, on in zip(cand, mask):
            flags[i] = bool(on)
    return flags


def _finite(value) -> bool:
    try:
        return value is not None and bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False
