"""Multi-objective asynchronous successive halving (MO-ASHA) over fine-tune epochs: the decisions only.

A pruned candidate's costs (params, MACs, latency) are fixed once it is pruned; only its quality changes
while it fine-tunes.  So a trial reports, at each *rung* (a number of fine-tune epochs), its quality there
together with its costs, and this module says whether it goes on fine-tuning or stops.  It knows nothing of
Ray: the driver's Tune scheduler feeds it reports and turns its answers into CONTINUE / STOP.

The rule, on a report of trial ``t`` at rung ``r``:

1. record ``t``'s objective vector at ``r`` (quality at ``r`` and the cost objectives of the sweep);
2. with ``n`` trials recorded at ``r`` so far (``t`` included) and ``n < η``: continue — too few to judge;
3. else keep the best ``k = ⌊n / η⌋`` of them and continue only if ``t`` is among them.  "Best" is
   non-dominated sorting (fronts filled in order), and inside the front that does not fit whole, larger
   crowding distance first; then better quality, then earlier arrival.

Where each part comes from:

* Rungs at ``min_epochs · η^k`` and the top ``⌊n/η⌋`` of a rung: ASHA, Li et al., "A System for Massively
  Parallel Hyperparameter Tuning", MLSys 2020, Algorithm 2 (asynchronous SHA: rung ``k`` at ``r·η^(s+k)``
  resources, promotable = ``top_k(rung, ⌊|rung|/η⌋)``).  Deciding *on arrival* against the results recorded
  so far (a stop rule rather than ASHA's promotion queue) is how a Tune scheduler must act, since it sees
  one report at a time; Ray Tune's ``AsyncHyperBandScheduler`` makes the same translation.  Letting a
  trial through while the rung holds fewer than ``η`` results is our choice: ``⌊n/η⌋ = 0`` would stop
  everything at the start of a sweep, and ASHA itself promotes nobody from such a rung (it starts new
  trials instead), which a stop rule can only mirror by waiting, i.e. continuing.
* Replacing the scalar ranking by non-dominated sorting: MO-ASHA, Schmucker, Donini, Zafar, Salinas &
  Archambeau, "Multi-objective Asynchronous Successive Halving", arXiv 2106.12639 (2021), which extends
  Schmucker, Donini, Perrone & Archambeau, "Multi-objective multi-fidelity hyperparameter optimization
  with application to fairness" (NeurIPS 2020 Meta-Learning workshop).  **Reconstruction**: the papers'
  text was not at hand; the rule follows their published description and the reference implementation
  (Syne Tune's ``MOASHA``: a trial stops when its rank among the rung's results, itself included, falls
  outside the top ``1/η``).  Section numbers are therefore not given.
* Crowding distance inside the cut front: NSGA-II, Deb, Pratap, Agarwal & Meyarivan, IEEE TEVC 6(2) 2002,
  Sec. III-B (per objective, normalised by the front's range; boundary points infinite).  The MO-ASHA
  paper weighs in-front selections such as this one against the ε-net of Salinas et al. (NAS workshop,
  ICLR 2021, Syne Tune's default); we take crowding distance, which needs no extra parameter.
* Ties left by crowding (e.g. the two boundary points of a front, both infinite) go to the better quality
  — Syne Tune's ``NonDominatedPriority(dim=0)`` likewise prefers one objective inside a front — and then
  to the earlier arrival, so the same reports always give the same decisions.

Trials already past a rung are never stopped retroactively when later arrivals outrank them (as in ASHA).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError
from .pareto import DIRECTIONS, non_dominated_sort, to_minimisation

SCHEDULERS = ("fifo", "mo_asha")
SCHEDULER_KEYS = ("type", "reduction_factor", "min_epochs", "rung0")

# The reduction factor η.  Ray Tune's ASHA defaults to 4; Hyperband (Li et al., JMLR 2018) recommends
# η = 3 or 4, and Syne Tune's MOASHA defaults to 3.  We take 3 because fine-tune budgets here are short
# (a few epochs): over a 10-epoch fine-tune, η = 3 with min_epochs 1 judges at 1, 3 and 9 epochs, η = 4
# only at 1 and 4.
DEFAULT_REDUCTION_FACTOR = 3
DEFAULT_MIN_EPOCHS = 1

CONTINUE = "continue"
STOP = "stop"


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class MOASHASettings:
    """``search.scheduler: {type: mo_asha, ...}``.  ``max_epochs`` is the full fine-tune (``finetune.epochs``);
    ``rung0`` adds a rung before any fine-tuning (quality after adaptive BN, see
    :mod:`sweep.engine.adaptive_bn`).  Validates itself; ``where`` only names the YAML place in errors."""

    reduction_factor: int = DEFAULT_REDUCTION_FACTOR
    min_epochs: int = DEFAULT_MIN_EPOCHS
    max_epochs: int | None = None
    rung0: bool = False
    where: str = field(default="search.scheduler", compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_int("reduction_factor", self.reduction_factor, 2, self.where)
        _check_int("min_epochs", self.min_epochs, 1, self.where)
        if not isinstance(self.rung0, bool):
            raise ConfigError(f"rung0 must be true or false, but got rung0={self.rung0!r} ({self.where}.rung0)")
        if self.max_epochs is not None:
            if isinstance(self.max_epochs, bool) or not isinstance(self.max_epochs, int):
                raise ConfigError(f"max_epochs (finetune.epochs) must be an integer, but got "
                                  f"max_epochs={self.max_epochs!r} ({self.where})")
            if self.max_epochs < self.min_epochs:
                raise ConfigError(f"the full fine-tune must last at least min_epochs={self.min_epochs} epochs for "
                                  f"successive halving to have a rung, but got finetune.epochs={self.max_epochs} "
                                  f"({self.where}.min_epochs)")

    def rungs(self) -> tuple[int, ...]:
        """Fine-tune epochs at which a trial is judged, ascending: ``0`` (with ``rung0``), then
        ``min_epochs · η^k`` below ``max_epochs`` (a trial that reaches ``max_epochs`` is done, so no rung
        sits there).  Without ``max_epochs`` the schedule is unbounded; this lists it up to ``min_epochs·η^6``."""
        out = [0] if self.rung0 else []
        limit = self.max_epochs if self.max_epochs is not None else self.min_epochs * self.reduction_factor ** 7
        r = self.min_epochs
        while r < limit:
            out.append(r)
            r *= self.reduction_factor
        return tuple(out)


def _check_int(key: str, v: Any, lo: int, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{key} must be an integer >= {lo}, but got {key}={v!r} ({where}.{key})")
    if v < lo:
        raise ConfigError(f"{key} must be an integer >= {lo}, but got {key}={v!r} ({where}.{key})")


def parse_scheduler(data: Any, where: str = "search.scheduler", *, max_epochs: int | None = None
                    ) -> MOASHASettings | None:
    """The YAML ``search.scheduler`` value -> settings, or None for no early stopping.

    ``None``, ``fifo`` or ``{type: fifo}`` give None (every trial fine-tunes fully); ``mo_asha`` or
    ``{type: mo_asha, reduction_factor: 3, min_epochs: 1, rung0: true}`` give :class:`MOASHASettings`.
    ``max_epochs`` is the sweep's ``finetune.epochs``.  ``where`` names the place (``file: search.scheduler``)."""
    if data is None:
        return None
    if isinstance(data, str):
        data = {"type": data}
    if not isinstance(data, Mapping):
        raise ConfigError(f"scheduler must be a mapping or one of {', '.join(SCHEDULERS)}, but got "
                          f"{type(data).__name__} {data!r} ({where})")
    unknown = [k for k in data if k not in SCHEDULER_KEYS]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; allowed keys: {', '.join(SCHEDULER_KEYS)}")
    kind = data.get("type", "fifo")
    if kind not in SCHEDULERS:
        raise ConfigError(f"type must be one of {', '.join(SCHEDULERS)}, but got type={kind!r} ({where}.type)")
    if kind == "fifo":
        extra = [k for k in data if k != "type"]
        if extra:
            raise ConfigError(f"{extra[0]} is a setting of type mo_asha, but got type=fifo ({where}.{extra[0]})")
        return None
    return MOASHASettings(
        reduction_factor=_default(data, "reduction_factor", DEFAULT_REDUCTION_FACTOR),
        min_epochs=_default(data, "min_epochs", DEFAULT_MIN_EPOCHS),
        max_epochs=max_epochs,
        rung0=_default(data, "rung0", False),
        where=where,
    )


def _default(data: Mapping, key: str, default: Any) -> Any:
    v = data.get(key)
    return default if v is None else v


# --------------------------------------------------------------------------- ranking
def crowding_distance(F: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance (Deb et al. 2002, Sec. III-B) of the points of one front ``F`` (n, d),
    any orientation: per objective, the gap between a point's two neighbours divided by the front's range;
    the extreme points of each objective get infinity; an objective with zero range adds nothing (Deb et al.
    leave that case open; this keeps exact duplicates equal).  One or two points: infinite."""
    F = np.asarray(F, dtype=float)
    n, d = F.shape
    dist = np.zeros(n, dtype=float)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(d):
        order = np.argsort(F[:, j], kind="stable")
        col = F[order, j]
        span = col[-1] - col[0]
        if span > 0:  # equal values everywhere: no boundary either, so duplicates stay alike
            dist[order[0]] = dist[order[-1]] = np.inf
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def select_top(F: np.ndarray, k: int, quality: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` best rows of ``F`` (minimisation, rows in arrival order), in selection order.

    Fronts of :func:`sweep.pareto.non_dominated_sort` are taken whole while they fit; the front that does
    not fit is cut by crowding distance (larger first), then by ``quality`` (minimisation: smaller first,
    e.g. the negated accuracy), then by arrival (smaller index first).  Rows with NaN rank last."""
    F = np.asarray(F, dtype=float)
    n = len(F)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=int)
    ranks = non_dominated_sort(F)
    q = np.zeros(n) if quality is None else np.where(np.isnan(quality), np.inf, np.asarray(quality, dtype=float))
    chosen: list[int] = []
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        if len(chosen) + len(members) <= k:
            chosen.extend(members.tolist())
        else:
            finite = ~np.isnan(F[members]).any(axis=1)
            crowd = np.zeros(len(members))
            if finite.all():
                crowd = crowding_distance(F[members])
            # lexsort: the last key is the primary one
            order = np.lexsort((members, q[members], -crowd))
            chosen.extend(members[order][: k - len(chosen)].tolist())
        if len(chosen) >= k:
            break
    return np.asarray(chosen, dtype=int)


# --------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Decision:
    """What :meth:`MOASHA.report` decided.  ``rung`` is None when the report was not judged (between
    rungs, at the full fine-tune, or a rung this trial already passed)."""

    action: str  # CONTINUE or STOP
    rung: int | None = None
    reached: int = 0  # trials recorded at the rung, this one included
    kept: int = 0  # how many of them the rung keeps (⌊reached / η⌋; 0 while reached < η)
    front: int | None = None  # this trial's non-dominated front at the rung (1 = first)
    reason: str = ""

    @property
    def stop(self) -> bool:
        return self.action == STOP


class MOASHA:
    """The rung records of one sweep and the continue / stop rule (module docstring).

    ``objectives`` are the sweep's objective names (``search.objectives``, e.g. ``accuracy``, ``latency_ms``,
    ``params``); their directions come from :data:`sweep.pareto.DIRECTIONS`.  Each report gives a value for
    every objective: the quality measured at that rung and the trial's (fixed) costs.  A missing or
    non-finite value makes the trial rank last at that rung."""

    def __init__(self, settings: MOASHASettings, objectives: Sequence[str]):
        objectives = list(objectives)
        for name in objectives:
            if name not in DIRECTIONS:
                raise ConfigError(f"objectives must be among {', '.join(DIRECTIONS)}, but got {name!r} "
                                  f"({settings.where})")
        if not objectives:
            raise ConfigError(f"objectives must not be empty, but got objectives=[] ({settings.where})")
        self.settings = settings
        self.objectives = objectives
        self.directions = [DIRECTIONS[o] for o in objectives]
        # the objective fine-tuning changes (the first maximised one): the tie break after crowding
        self.quality = next((o for o in objectives if DIRECTIONS[o] == "max"), objectives[0])
        self._rungs = settings.rungs()
        # rung -> {trial_id: objective vector (minimisation)}; dicts keep arrival order
        self._recorded: dict[int, dict[str, np.ndarray]] = {r: {} for r in self._rungs}

    @property
    def rungs(self) -> tuple[int, ...]:
        return self._rungs

    def recorded(self, rung: int) -> dict[str, dict[str, float]]:
        """The values recorded at ``rung`` (epochs), per trial id, in arrival order (original directions)."""
        return {tid: dict(zip(self.objectives, self._raw(v))) for tid, v in self._recorded.get(rung, {}).items()}

    def rung_for(self, trial_id: str, epoch: int) -> int | None:
        """The rung a report after ``epoch`` fine-tune epochs is judged at: the highest rung ``<= epoch``,
        provided the trial has recorded neither it nor a higher one; else None.  Reports come after every
        epoch, so normally ``epoch`` is the rung itself; a skipped epoch is judged at the rung it passed."""
        if self.settings.max_epochs is not None and epoch >= self.settings.max_epochs:
            return None  # the full fine-tune is done: nothing left to save
        below = [r for r in self._rungs if r <= epoch]
        if not below:
            return None
        rung = below[-1]
        if any(trial_id in self._recorded[r] for r in self._rungs if r >= rung):
            return None
        return rung

    def report(self, trial_id: str, epoch: int, values: Mapping[str, float]) -> Decision:
        """Record a trial's report after ``epoch`` fine-tune epochs (0: before any) and decide."""
        rung = self.rung_for(trial_id, int(epoch))
        if rung is None:
            return Decision(CONTINUE)
        recorded = self._recorded[rung]
        recorded[trial_id] = self._vector(values)
        return self._judge(rung, trial_id)

    def record(self, trial_id: str, rung: int, values: Mapping[str, float]) -> None:
        """Put a past result at ``rung`` without deciding (a resumed sweep replays its finished trials'
        rung qualities so that new trials are judged against them)."""
        if rung not in self._recorded:
            raise ValueError(f"rung must be one of {list(self._rungs)}, but got rung={rung!r}")
        self._recorded[rung][trial_id] = self._vector(values)

    def _judge(self, rung: int, trial_id: str) -> Decision:
        recorded = self._recorded[rung]
        ids = list(recorded)
        n, eta = len(ids), self.settings.reduction_factor
        what = "rung 0 (before fine-tuning)" if rung == 0 else f"rung {rung} ({_epochs(rung)})"
        if n < eta:
            return Decision(CONTINUE, rung, n, 0, None,
                            f"{what}: {n} of {eta} results needed to judge, continues")
        k = n // eta
        F = np.stack([recorded[t] for t in ids])
        me = ids.index(trial_id)
        fronts = non_dominated_sort(F)
        front = int(fronts[me]) + 1
        top = select_top(F, k, F[:, self.objectives.index(self.quality)])
        if me in set(top.tolist()):
            return Decision(CONTINUE, rung, n, k, front, f"{what}: in the top {k} of {n} (front {front}), continues")
        return Decision(STOP, rung, n, k, front,
                        f"{what}: outside the top {k} of {n} trials by non-dominated sorting of "
                        f"({', '.join(self.objectives)}) (front {front}); stopped "
                        f"{'before fine-tuning' if rung == 0 else 'after ' + _epochs(rung)}")

    def _vector(self, values: Mapping[str, float]) -> np.ndarray:
        raw = [_float(values.get(o)) for o in self.objectives]
        row = to_minimisation(np.array([raw], dtype=float), self.directions)[0]
        if np.isnan(row).any():
            row[:] = np.nan  # a NaN anywhere: pareto's sort puts the whole row last
        return row

    def _raw(self, v: np.ndarray) -> list[float]:
        return [float(-x if d == "max" else x) for x, d in zip(v, self.directions)]


def _epochs(n: int) -> str:
    return f"{n} fine-tune epoch{'' if n == 1 else 's'}"


def _float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan
