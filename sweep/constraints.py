"""Hard budgets of a sweep (``search.constraints``): parsed, checked against a trial's figures, told to Optuna.

```yaml
search:
  constraints: {max_latency_ms: 0.5, max_params: 200000, max_macs: 5.0e6, min_quality: 0.9}
```

A candidate whose *costs* break a budget right after pruning is not fine-tuned: it becomes an ``infeasible``
row with the broken budgets in words (:meth:`Constraints.broken_costs`).  ``min_quality`` bounds the sweep's
quality (``accuracy``, or ``agreement`` in a label-free sweep), known only after fine-tuning, so it never
stops a candidate early; it counts in :meth:`Constraints.broken` and in what the sampler is told.

The sampler learns the feasible region from each finished trial's constraint values, set on its Optuna trial
by :func:`tell_constraints` (``Trial.set_constraint``, one value per budget, ``<= 0`` when kept), which
Optuna's TPE, NSGA-II, NSGA-III and GP samplers read from the trials themselves (Optuna 5: the samplers'
``constraints_func`` argument is deprecated for it).  :meth:`Constraints.violations` gives one value per budget,
relative to the budget (``(value - limit) / |limit|`` for a maximum), so that the violations of different
budgets add up on one scale: Optuna's constrained TPE and NSGA-II rank infeasible trials by their summed
violation (Optuna docs, ``TPESampler`` / ``NSGAIISampler``, constrained optimisation).  ``sweep select``
measures the distance to its budget the same way (:meth:`Constraints.excess`).

A broken budget is worded as the figure's column, its value, the comparison and the limit, with the budget's
name: ``params 12,000 > max_params 10,000``; ``sweep select``'s budgets (:class:`sweep.select.Budget`) are these
same budgets, worded without the name (its flags say which).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

# budget -> (figure it bounds, comparison); "quality" stands for the sweep's quality column
LIMITS: dict[str, tuple[str, str]] = {
    "max_latency_ms": ("latency_ms", "<="),
    "max_params": ("params", "<="),
    "max_macs": ("macs", "<="),
    "min_quality": ("quality", ">="),
}
COST_LIMITS = ("max_latency_ms", "max_params", "max_macs")  # known right after pruning

# Optuna rejects NaN constraint values; an unknown figure is reported as this (a million times the
# budget): certainly infeasible, and still finite, so summed violations stay ordered.
UNKNOWN_VIOLATION = 1.0e6


@dataclass(frozen=True)
class Constraints:
    """The budgets of ``search.constraints``; unset ones are None.  Falsy when none is set."""

    max_latency_ms: float | None = None
    max_params: float | None = None
    max_macs: float | None = None
    min_quality: float | None = None
    where: str = field(default="search.constraints", compare=False, repr=False)

    def __post_init__(self) -> None:
        for key in LIMITS:
            v = getattr(self, key)
            if v is not None:
                _check(key, v, self.where)

    def items(self) -> list[tuple[str, float]]:
        """``(budget, limit)`` of the budgets set, in :data:`LIMITS` order (the order of :meth:`violations`)."""
        return [(k, v) for k, v in asdict(self).items() if k in LIMITS and v is not None]

    def __bool__(self) -> bool:
        return bool(self.items())

    def broken(self, figures: Mapping[str, Any], quality: str = "accuracy", *, named: bool = True) -> list[str]:
        """Every budget ``figures`` break, in words (``params 12,000 > max_params 10,000``); ``figures`` maps
        column names to values (a dict, a trial record).  A missing or NaN figure breaks its budget
        (``latency_ms unknown (max_latency_ms 2)``).  ``quality`` names the column ``min_quality`` bounds.
        ``named=False`` leaves out the budgets' names (``params 12,000 > 10,000``, ``latency_ms unknown``)."""
        return self._broken(figures, quality, [k for k, _ in self.items()], named)

    def broken_costs(self, figures: Mapping[str, Any]) -> list[str]:
        """The cost budgets (params, MACs, latency) ``figures`` break: what makes a pruned candidate
        ``infeasible`` before fine-tuning.  ``min_quality`` is not checked (quality is not known yet)."""
        return self._broken(figures, "accuracy", [k for k, _ in self.items() if k in COST_LIMITS], True)

    def violations(self, figures: Mapping[str, Any], quality: str = "accuracy") -> list[float]:
        """One value per budget set (:meth:`items` order), as Optuna's constraint values: ``<= 0`` when
        satisfied, else how far over relative to the budget; an unknown figure gives
        :data:`UNKNOWN_VIOLATION`."""
        out = []
        for key, limit in self.items():
            v = _value(figures, _column(key, quality))
            if v is None:
                out.append(UNKNOWN_VIOLATION)
            elif LIMITS[key][1] == "<=":
                out.append((v - limit) / abs(limit))
            else:
                out.append((limit - v) / abs(limit))
        return out

    def budget_kwargs(self) -> dict[str, float]:
        """The same budgets as ``sweep select`` options: keyword arguments of :class:`sweep.select.Budget`
        (``min_quality`` is its ``min_accuracy``, which bounds the sweep's quality column)."""
        return {("min_accuracy" if k == "min_quality" else k): v for k, v in self.items()}

    def excess(self, figures: Mapping[str, Any], quality: str = "accuracy") -> float:
        """How far outside the budgets ``figures`` lie: the sum of the positive :meth:`violations` (0 inside),
        infinite when a bounded figure is unknown (never inside a budget)."""
        values = self.violations(figures, quality)
        return math.inf if UNKNOWN_VIOLATION in values else sum(max(0.0, v) for v in values)

    def _broken(self, figures: Mapping[str, Any], quality: str, keys: list[str], named: bool) -> list[str]:
        out = []
        for key in keys:
            limit = getattr(self, key)
            col, op = _column(key, quality), LIMITS[key][1]
            v = _value(figures, col)
            bound = f"{key} {fmt_limit(limit)}" if named else fmt_limit(limit)
            if v is None:
                out.append(f"{col} unknown ({bound})" if named else f"{col} unknown")
            elif op == "<=" and v > limit:
                out.append(f"{col} {fmt_limit(v)} > {bound}")
            elif op == ">=" and v < limit:
                out.append(f"{col} {fmt_limit(v)} < {bound}")
        return out


def budget_words(budgets: Mapping[str, float]) -> str:
    """Budgets (name -> limit, as :meth:`Constraints.items` gives them) in words: ``max_params 150,000,
    min_quality 0.9``; ``-`` for none."""
    return ", ".join(f"{k} {fmt_limit(v)}" for k, v in budgets.items()) or "-"


def parse_constraints(data: Any, where: str = "search.constraints") -> Constraints:
    """``search.constraints`` -> :class:`Constraints` (empty for None or ``{}``).  Unknown budget names and
    values out of range are one-line ConfigErrors: ``max_params must be a number > 0, but got
    max_params=-5 (x.yaml: search.constraints.max_params)``."""
    if data is None:
        return Constraints(where=where)
    if not isinstance(data, Mapping):
        raise ConfigError(f"constraints must be a mapping of budgets ({', '.join(LIMITS)}), but got "
                          f"{type(data).__name__} {data!r} ({where})")
    unknown = [k for k in data if k not in LIMITS]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; allowed keys: {', '.join(LIMITS)}")
    values = {k: _number(k, v, where) for k, v in data.items() if v is not None}
    return Constraints(**values, where=where)


def budget_names(constraints: Constraints | None) -> tuple[str, ...]:
    """The names of the budgets set, in :meth:`Constraints.items` order (the order of their values); none for
    None."""
    return tuple(k for k, _ in constraints.items()) if constraints else ()


def tell_constraints(trial, budgets: Sequence[str], values: Sequence[float] | None) -> None:
    """Puts a finished trial's constraint values (:meth:`Constraints.violations`, one per budget named in
    ``budgets``, same order) on its Optuna trial -- a live ``optuna.Trial`` or a ``FrozenTrial`` for a resumed
    study -- through ``set_constraint``, keyed by budget name.  Values that are missing, too few or not finite
    count as :data:`UNKNOWN_VIOLATION`: a trial the sweep cannot place counts as breaking every budget."""
    values = list(values or [])
    for i, name in enumerate(budgets):
        v = float(values[i]) if i < len(values) else math.nan
        trial.set_constraint(name, v if math.isfinite(v) else UNKNOWN_VIOLATION)


# ------------------------------------------------------------------------------- helpers
def _check(key: str, v: Any, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{key} must be a finite number, but got {key}={v!r} ({where}.{key})")
    if key == "min_quality":
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1] (a fraction, as accuracy and agreement are), but got "
                              f"{key}={v!r} ({where}.{key})")
    elif v <= 0:
        raise ConfigError(f"{key} must be a number > 0, but got {key}={v!r} ({where}.{key})")


def _number(key: str, v: Any, where: str) -> float:
    if isinstance(v, str):
        try:  # YAML 1.1 reads "5e6" (no dot) as a string
            v = float(v.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key} must be a finite number, but got {key}={v!r} ({where}.{key})") from None
    _check(key, v, where)
    return v


def _column(key: str, quality: str) -> str:
    col = LIMITS[key][0]
    return quality if col == "quality" else col


def _value(figures: Mapping[str, Any], col: str) -> float | None:
    v = figures.get(col)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_limit(v) -> str:
    """A budget's limit or a figure compared with one, as every budget message writes it (here and in ``sweep
    select``): thousands separators for large whole numbers, else 4 significant digits."""
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
        return f"{int(v):,}"
    return f"{v:.4g}"
