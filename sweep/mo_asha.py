"""Multi-objective asynchronous successive halving (MO-ASHA) over fine-tune epochs: the decisions only.

A pruned candidate's costs (params, MACs, latency) are fixed once it is pruned; only its quality changes
while it fine-tunes.  So a trial reports, at each *rung* (a number of fine-tune epochs), its quality there
together with its costs, and this module says whether it goes on fine-tuning or stops.  It knows nothing of
Ray: the driver's Tune scheduler feeds it reports and turns its answers into CONTINUE / STOP.

The rule, on a report of trial ``t`` at rung ``r``:

1. record ``t``'s objective vector at ``r`` (quality at ``r`` and the cost objectives of the sweep);
2. with ``n`` trials recorded at ``r`` so far (``t`` included), keep the best ``k = ⌊n / η⌋ + 1`` of them
   and continue only if ``t`` is among them -- i.e. if at most ``n / η`` of the rung's results rank ahead of
   it.  So the first result at a rung continues, the second only if it ranks first, and in the long run
   about ``1/η`` of a rung's arrivals go on.  ``keep: asha`` keeps ``k = max(1, ⌊n / η⌋)`` instead (fewer while
   ``n`` is small), and ``keep: promotable`` keeps ``k = ⌊n / η⌋`` (none of a rung's first ``η - 1``
   arrivals goes on: ASHA's count, meant with ``promote``).  A report with a missing or non-finite value stops at once.
3. "Best" is non-dominated sorting (fronts filled in order); inside the front that does not fit whole, the points
   that add most to the hypervolume (``selection: hypervolume``, the default: the point adding least is
   dropped, one at a time, and the rest re-weighed) or the larger crowding distances (``selection:
   crowding``); then better quality, then earlier arrival.

Where each part comes from:

* Rungs at ``min_epochs · η^k`` and the top ``1/η`` of a rung: ASHA, Li et al., "A System for Massively
  Parallel Hyperparameter Tuning", MLSys 2020, Algorithm 2 (asynchronous SHA: rung ``k`` at ``r·η^(s+k)``
  resources, promotable = ``top_k(rung, ⌊|rung|/η⌋)``).  Deciding *on arrival* against the results recorded
  so far (a stop rule rather than ASHA's promotion queue) is how a Tune scheduler must act, since it sees
  one report at a time; Ray Tune's ``AsyncHyperBandScheduler`` makes the same translation.
* ``k = ⌊n/η⌋ + 1``, judged from the second result on: the stop rule of the MO-ASHA reference
  implementation, Syne Tune's ``MOASHA`` (its ``Bracket.on_result``: the first result at a rung continues;
  a later one stops when the number of the rung's results ranked ahead of it, divided by their number
  (itself included), exceeds ``1/η``).  A stop rule cannot do what ASHA's queue does -- promote nobody
  from a rung yet, and promote a trial later once the rung has grown -- so it errs one way or the other
  at small ``n``.  Two other counts were measured with ``bench/search_efficiency.py --quick`` (bench/README.md):
  letting every result through while ``n < η`` and keeping ``⌊n/η⌋`` after (this module's first rule)
  fine-tuned the sweep's first ``η - 1`` trials (TPE's random start-up ones) to the end whatever they
  were, while later ones found the few kept slots held by them; ``max(1, ⌊n/η⌋)`` stopped so much that in
  one seed of three the sweep spent fewer fine-tune epochs than TPE and ended below TPE's hypervolume.  That
  second count is ``keep: asha`` (ASHA's promotable ``⌊|rung|/η⌋``, at least the best one): in a sweep budgeted in
  fine-tune epochs (``search.epoch_budget``) rather than in trials, a stricter count screens more candidates for
  the same epochs (bench/README.md, "ASHA's promotable count").
* Replacing the scalar ranking by non-dominated sorting: MO-ASHA, Schmucker, Donini, Zafar, Salinas &
  Archambeau, "Multi-objective Asynchronous Successive Halving", arXiv 2106.12639 (2021), which extends
  Schmucker, Donini, Perrone & Archambeau, "Multi-objective multi-fidelity hyperparameter optimization
  with application to fairness" (NeurIPS 2020 Meta-Learning workshop).  **Reconstruction**: the papers'
  text was not at hand; the rule follows their published description and the reference implementation
  (Syne Tune's ``MOASHA``, non-dominated sorting with an in-front order).  Section numbers are therefore
  not given.  The papers weigh in-front selections (NSGA-II's crowding distance against the ε-net of
  Salinas et al., NAS workshop, ICLR 2021, Syne Tune's default); the two below are the issue's.
* Hypervolume contribution inside the cut front: SMS-EMOA, Beume, Naujoks & Emmerich, "SMS-EMOA:
  Multiobjective selection based on dominated hypervolume", EJOR 181(3), 2007 (non-dominated sorting, then
  in the worst front the point of least exclusive hypervolume contribution goes, one at a time).  It is the
  default because the sweep is judged by its hypervolume: with two objectives both ends of a front have
  infinite crowding distance, so crowding handed every small cut (``k`` of 1 or 2) to the more accurate end
  -- often a trial already past the rung -- and stopped the cheap candidates that the sweep's hypervolume
  gains most from (seen in ``bench/search_efficiency.py``).  The reference point is the sweep's own
  (:func:`reference_from_baseline`: quality 0, costs 1.1x the dense baseline's, as
  :func:`sweep.pareto.reference_point`), so the scheduler keeps what the sweep's figure of merit values (pushed
  out in an objective where a rung's value lies beyond it, :func:`reference_beyond`: a latency timed beside other
  trials can); where no baseline is given, the rung's worst recorded values pushed out by a tenth of their range
  (a common choice; Ishibuchi, Imada, Setoguchi & Nojima, "How to specify a reference point in hypervolume calculation
  for fair performance comparison", Evolutionary Computation 26(3), 2018, discuss it).
* Crowding distance inside the cut front (``selection: crowding``): NSGA-II, Deb, Pratap, Agarwal &
  Meyarivan, IEEE TEVC 6(2) 2002, Sec. III-B (per objective, normalised by the front's range; boundary
  points infinite).
* Ties left by either (e.g. duplicates, or the two infinite ends of a front under crowding) go to the
  better quality -- Syne Tune's ``NonDominatedPriority(dim=0)`` likewise prefers one objective inside a
  front -- and then to the earlier arrival, so the same reports always give the same decisions.

Trials already past a rung are never stopped retroactively when later arrivals outrank them (as in ASHA).

**Rung 0 by dominance** (``rung0_keeps_front: true``, default false).  Adaptive BN ranks candidates of one
cost well -- EagleEye (Li, Wu, Su, Wang & Lin, ECCV 2020, Sec. 3) ranks candidates pruned to one FLOPs target
by it -- but across costs it underrates the most heavily pruned ones, which fine-tuning lifts the most (bench/README.md,
"Promotions at the end": a stage pruned hard scores 0.39-0.64 at rung 0, the same corner 0.82 after nine
epochs).  The cut inside a front compares candidates of different costs by their rung-0 quality (hypervolume
contribution or crowding), which is where that bias decides; dominance compares a candidate only with one that
is both cheaper and better even before fine-tuning.  With this setting a trial on rung 0's first front goes on
whatever the cut, so rung 0 stops only dominated trials (beyond the top ``k``, as before).  **Reconstruction**:
this rule is ours, not the papers'.

**Brackets** (``brackets: B``, default 1).  Successive halving judges every candidate first at its lowest rung,
so a candidate that the lowest rung underrates never gets the epochs that would show its worth -- and rung 0,
judged before any fine-tuning, underrates the most heavily pruned networks (bench/README.md, "Promotions at the
end": a stage pruned hard scores 0.39-0.64 there, where the same corner of the space reaches 0.82 after nine
epochs).  Hyperband (Li, Jamieson, DeSalvo, Rostamizadeh & Talwalkar, JMLR 18(185), 2018, Sec. 3) hedges against
such a misleading low fidelity by running brackets of successive halving that each start at a higher budget; the
least aggressive one is plain full-budget evaluation.  Here bracket ``b`` is judged only from the ``b``-th rung on
(:meth:`MOASHASettings.bracket_rungs`), each bracket's rungs hold only its own trials, and the trials are spread
over the brackets in Hyperband's proportions (:meth:`MOASHASettings.bracket_weights`), by trial number
(:meth:`MOASHASettings.bracket_of`).  Ray Tune's ``AsyncHyperBandScheduler`` (``brackets``) runs ASHA's brackets
the same way, asynchronously.

**Promotion at the end** (``promote: true``).  A stop on arrival cannot be taken back by the rule above, though
the rung that judged it may later hold many more results, among which the stopped trial ranks in the top
``⌊n/η⌋`` -- the trials ASHA's queue would have promoted.  With ``promote``, once the sweep has no new candidate
left, :meth:`MOASHA.promotions` names them and the driver runs them again from the rung where they stopped
(their fine-tune state is saved there), judged at the rungs above like any other trial; promoted trials that
reach a higher rung can make others promotable there, so the driver asks again until none is left.  A rung from
which no trial went on carries its best one up even below η results, so at least one candidate gets the full
fine-tune.  This is
ASHA's promotion (Li et al. 2020, Algorithm 2) deferred to the end of the candidates rather than interleaved
with new ones: Ray Tune's searcher cannot hand out a stopped trial's continuation in place of a new
configuration.  **Reconstruction**: the deferral is this module's choice, not the paper's.  ``promote_every: M``
brings it closer to ASHA's interleaving: the driver asks Tune for ``M`` new candidates at a time and runs the
promotions between (the promoted trials go first, beside the next ``M``), so a stop that the grown rung takes
back is not left to the sweep's end; each round waits for its last trial, which costs wall time, not epochs.
A resumed sweep replays its earlier runs' rung results (:meth:`MOASHA.record`), their stops marked ``stopped``
so that they are promotable too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError
from .pareto import DIRECTIONS, hypervolume, non_dominated_sort, reference_point, to_minimisation

SCHEDULERS = ("fifo", "mo_asha")
SCHEDULER_KEYS = ("type", "reduction_factor", "min_epochs", "rung0", "rung0_reduction_factor", "rung0_keeps_front",
                  "selection", "keep", "promote", "promote_every", "brackets")
# how the front that does not fit whole into a rung's top k is cut (module docstring)
SELECTIONS = ("hypervolume", "crowding")

# The reduction factor η.  Ray Tune's ASHA defaults to 4; Hyperband (Li et al., JMLR 2018) recommends
# η = 3 or 4, and Syne Tune's MOASHA defaults to 3.  We take 3 because fine-tune budgets here are short
# (a few epochs): over a 10-epoch fine-tune, η = 3 with min_epochs 1 judges at 1, 3 and 9 epochs, η = 4
# only at 1 and 4.
DEFAULT_REDUCTION_FACTOR = 3
DEFAULT_MIN_EPOCHS = 1
DEFAULT_SELECTION = "hypervolume"
# how many of a rung's n results go on (module docstring, rule 2): ``syne_tune`` keeps ⌊n/η⌋ + 1 (Syne Tune's
# MOASHA), ``asha`` keeps max(1, ⌊n/η⌋) (ASHA's promotable count, Li et al. 2020, Algorithm 2, at least the best),
# ``promotable`` keeps ⌊n/η⌋ itself (none while n < η: ASHA's queue promotes nobody from such a rung yet; with
# ``promote`` the stopped ones go on at the end if the grown rung ranks them in its top, as ASHA's queue would)
KEEPS = {"syne_tune": lambda n, eta: n // eta + 1, "asha": lambda n, eta: max(1, n // eta),
         "promotable": lambda n, eta: n // eta}
DEFAULT_KEEP = "syne_tune"
# the fallback reference point (no baseline given): the rung's worst values, pushed out by this share of
# their range (module docstring)
REFERENCE_MARGIN = 0.1

CONTINUE = "continue"
STOP = "stop"
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # φ - 1: the step of MOASHASettings.bracket_of's low-discrepancy sequence


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class MOASHASettings:
    """``search.scheduler: {type: mo_asha, ...}``.  ``max_epochs`` is the full fine-tune (``finetune.epochs``);
    ``rung0`` adds a rung before any fine-tuning (quality after adaptive BN, see
    :mod:`sweep.engine.adaptive_bn`), where ``rung0_reduction_factor`` (default: ``reduction_factor``) takes
    the place of η -- a rung-0 result costs no fine-tune epoch, so a sweep may screen more candidates there
    and keep fewer of them; ``rung0_keeps_front`` lets every trial on rung 0's first front go on (rung 0 stops
    only dominated trials: module docstring, "Rung 0 by dominance"); ``selection`` cuts the front that does not
    fit whole into a rung's top (``hypervolume`` contribution or ``crowding`` distance); ``promote`` lets trials
    stopped at a rung go on from it once no new candidate is left and the grown rung ranks them in its top
    (:meth:`MOASHA.promotions`), and ``promote_every`` (with ``promote``) runs those promotions after every that
    many new candidates too, not only at the end;
    ``brackets`` (default 1) spreads the trials over Hyperband's brackets, each judged from a later rung on
    (:meth:`bracket_rungs`, :meth:`bracket_of`).  Validates itself; ``where`` only names the YAML place in errors."""

    reduction_factor: int = DEFAULT_REDUCTION_FACTOR
    min_epochs: int = DEFAULT_MIN_EPOCHS
    max_epochs: int | None = None
    rung0: bool = False
    selection: str = DEFAULT_SELECTION
    rung0_reduction_factor: int | None = None
    rung0_keeps_front: bool = False
    keep: str = DEFAULT_KEEP
    promote: bool = False
    promote_every: int | None = None
    brackets: int = 1
    where: str = field(default="search.scheduler", compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_int("reduction_factor", self.reduction_factor, 2, self.where)
        _check_int("min_epochs", self.min_epochs, 1, self.where)
        for key in ("rung0", "rung0_keeps_front", "promote"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, but got {key}={getattr(self, key)!r} "
                                  f"({self.where}.{key})")
        if self.rung0_reduction_factor is not None:
            _check_int("rung0_reduction_factor", self.rung0_reduction_factor, 2, self.where)
        for key in ("rung0_reduction_factor", "rung0_keeps_front"):
            if getattr(self, key) not in (None, False) and not self.rung0:
                raise ConfigError(f"{key} applies to rung 0, which needs rung0: true, but got "
                                  f"rung0={self.rung0!r} ({self.where}.{key})")
        if self.keep not in KEEPS:
            raise ConfigError(f"keep must be one of {', '.join(KEEPS)}, but got keep={self.keep!r} ({self.where}.keep)")
        if self.keep == "promotable" and not self.promote:
            # without promotions a rung's first η - 1 arrivals would never go on: a sweep of fewer than η
            # candidates would fine-tune none to the end
            raise ConfigError(f"keep: promotable stops a rung's first arrivals until promotions let them go on, so it "
                              f"must come with promote: true, but got promote={self.promote!r} ({self.where}.keep)")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection must be one of {', '.join(SELECTIONS)}, but got selection={self.selection!r} "
                              f"({self.where}.selection)")
        _check_int("brackets", self.brackets, 1, self.where)
        if self.promote_every is not None:
            _check_int("promote_every", self.promote_every, 1, self.where)
            if not self.promote:
                raise ConfigError(f"promote_every sets how often promotions run, which needs promote: true, but got "
                                  f"promote={self.promote!r} ({self.where}.promote_every)")
        if self.max_epochs is not None:
            if isinstance(self.max_epochs, bool) or not isinstance(self.max_epochs, int):
                raise ConfigError(f"max_epochs (finetune.epochs) must be an integer, but got "
                                  f"max_epochs={self.max_epochs!r} ({self.where})")
            if self.max_epochs < self.min_epochs:
                raise ConfigError(f"the full fine-tune must last at least min_epochs={self.min_epochs} epochs for "
                                  f"successive halving to have a rung, but got finetune.epochs={self.max_epochs} "
                                  f"({self.where}.min_epochs)")
            most = len(self.rungs()) + 1
            if self.brackets > most:
                raise ConfigError(f"brackets must be at most {most} (one per rung, {list(self.rungs())}, and one "
                                  f"judged at none), but got brackets={self.brackets} ({self.where}.brackets)")

    def eta(self, rung: int) -> int:
        """η at ``rung`` (epochs): ``rung0_reduction_factor`` at rung 0 where set, else ``reduction_factor``."""
        if rung == 0 and self.rung0_reduction_factor is not None:
            return self.rung0_reduction_factor
        return self.reduction_factor

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

    def bracket_rungs(self, bracket: int) -> tuple[int, ...]:
        """The rungs a trial of ``bracket`` is judged at: bracket 0 at every rung, bracket ``b`` from the
        ``b``-th rung on (Hyperband's bracket ``s_max - b``: its first judgement after more epochs), the last
        of ``len(rungs) + 1`` brackets at none (its trials fine-tune fully)."""
        return self.rungs()[bracket:]

    def bracket_weights(self) -> tuple[float, ...]:
        """The share of trials in each bracket (bracket 0 first): Hyperband's allocation, bracket ``s`` of
        ``s_max + 1`` starting ``⌈(s_max + 1) / (s + 1) · η^s⌉`` configurations (Li, Jamieson, DeSalvo,
        Rostamizadeh & Talwalkar, "Hyperband", JMLR 18(185), 2018, Algorithm 1, ``n``), ``s = s_max`` the most
        aggressive, η the ``reduction_factor``.  Brackets of 2: 3 : 2; of 4: 27 : 12 : 6 : 4."""
        top = self.brackets - 1
        n = [math.ceil(self.brackets / (s + 1) * self.reduction_factor ** s) for s in range(top, -1, -1)]
        return tuple(v / sum(n) for v in n)

    def bracket_of(self, number: int | None) -> int:
        """The bracket of trial ``number`` (its number in the sweep; None: bracket 0): the same trial is in the
        same bracket in every run of the sweep (a re-run, a promotion, a resumed sweep's replay), and the
        brackets' shares hold from the first trials on -- the golden-ratio sequence ``frac((number + 1/2)·φ)``
        placed on the cumulative :meth:`bracket_weights` (a low-discrepancy sequence; **reconstruction**:
        Hyperband runs its brackets one after another, Ray Tune's ``AsyncHyperBandScheduler`` draws each trial's
        at random; this deterministic spread is ours)."""
        if self.brackets == 1 or number is None or number < 0:
            return 0
        u = ((int(number) + 0.5) * GOLDEN) % 1.0
        acc = 0.0
        for b, w in enumerate(self.bracket_weights()):
            acc += w
            if u < acc:
                return b
        return self.brackets - 1


def _check_int(key: str, v: Any, lo: int, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{key} must be an integer >= {lo}, but got {key}={v!r} ({where}.{key})")
    if v < lo:
        raise ConfigError(f"{key} must be an integer >= {lo}, but got {key}={v!r} ({where}.{key})")


def parse_scheduler(data: Any, where: str = "search.scheduler", *, max_epochs: int | None = None
                    ) -> MOASHASettings | None:
    """The YAML ``search.scheduler`` value -> settings, or None for no early stopping.

    ``None``, ``fifo`` or ``{type: fifo}`` give None (every trial fine-tunes fully); ``mo_asha`` or
    ``{type: mo_asha, reduction_factor: 3, min_epochs: 1, rung0: true, rung0_reduction_factor: 9,
    rung0_keeps_front: true, selection: hypervolume, brackets: 2}`` give
    :class:`MOASHASettings`.
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
        rung0_reduction_factor=data.get("rung0_reduction_factor"),
        rung0_keeps_front=_default(data, "rung0_keeps_front", False),
        selection=_default(data, "selection", DEFAULT_SELECTION),
        keep=_default(data, "keep", DEFAULT_KEEP),
        promote=_default(data, "promote", False),
        promote_every=data.get("promote_every"),
        brackets=_default(data, "brackets", 1),
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


def hv_contributions(F: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Exclusive hypervolume contribution of each row of ``F`` (minimisation) against the reference point
    ``ref``: the volume lost when that row alone is removed.  Rows with NaN, or not strictly better than
    ``ref`` everywhere, add nothing (0); exact duplicates each add nothing (the other one keeps the volume)."""
    F = np.asarray(F, dtype=float)
    total = hypervolume(F, ref)
    out = np.zeros(len(F))
    for i in range(len(F)):
        out[i] = max(0.0, total - hypervolume(np.delete(F, i, axis=0), ref))
    return out


def fallback_reference(F: np.ndarray) -> np.ndarray:
    """A reference point (minimisation) for rows ``F`` when the sweep's is not known: per column the worst
    finite value pushed out by :data:`REFERENCE_MARGIN` of the column's range (of its magnitude, or 1, when
    the range is zero), so every finite row lies strictly inside."""
    F = np.asarray(F, dtype=float)
    finite = F[~np.isnan(F).any(axis=1)] if len(F) else F
    if len(finite) == 0:
        return np.ones(F.shape[1] if F.ndim == 2 else 0)
    hi, lo = finite.max(axis=0), finite.min(axis=0)
    span = hi - lo
    span = np.where(span > 0, span, np.where(np.abs(hi) > 0, np.abs(hi), 1.0))
    return hi + REFERENCE_MARGIN * span


def select_top(F: np.ndarray, k: int, quality: np.ndarray | None = None, *, selection: str = "crowding",
               ref: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` best rows of ``F`` (minimisation, rows in arrival order), in selection order.

    Fronts of :func:`sweep.pareto.non_dominated_sort` are taken whole while they fit; the front that does
    not fit is cut by ``selection``: ``crowding`` (larger crowding distance first) or ``hypervolume`` (the
    member of least exclusive hypervolume contribution against ``ref`` -- default :func:`fallback_reference`
    of ``F`` -- is dropped, contributions re-computed, until the rest fit); then by ``quality``
    (minimisation: smaller first, e.g. the negated accuracy), then by arrival (smaller index first).  Rows
    with NaN rank last."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, but got selection={selection!r}")
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
        elif selection == "hypervolume":
            chosen.extend(_cut_by_hypervolume(F, members, k - len(chosen), q,
                                              fallback_reference(F) if ref is None else np.asarray(ref, float)))
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


def _cut_by_hypervolume(F: np.ndarray, members: np.ndarray, slots: int, q: np.ndarray, ref: np.ndarray) -> list[int]:
    """``slots`` of ``members`` (one front): drop the least exclusive contributor (ties: worse quality, then
    later arrival) until the rest fit (SMS-EMOA's reduction); the survivors by contribution, quality, arrival."""
    keep = [int(m) for m in members]
    while True:
        contrib = hv_contributions(F[keep], ref)
        idx = np.asarray(keep)
        # best first: larger contribution, then smaller q (better quality), then earlier arrival
        order = np.lexsort((idx, q[idx], -contrib))
        if len(keep) <= slots:
            return idx[order].tolist()
        keep.remove(int(idx[order[-1]]))


def reference_beyond(F: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``ref`` (minimisation), pushed out in each objective where some finite row of ``F`` lies beyond it,
    to that column's :func:`fallback_reference`: a point beyond the reference point adds no hypervolume, whatever
    it trades, so a cut among such points would fall to the quality tie-break alone.  Pruning never raises
    params or MACs above the dense baseline's, but a latency timed while other trials share the machine can lie
    beyond 1.1x the baseline's (timed alone before the trials).  Where every row lies inside, ``ref`` as it is."""
    F = np.asarray(F, dtype=float)
    finite = F[~np.isnan(F).any(axis=1)] if len(F) else F
    if len(finite) == 0:
        return ref
    out = np.asarray(ref, dtype=float).copy()
    beyond = (finite > out).any(axis=0)  # strictly: a quality of exactly 0 sits on its reference, adding nothing
    if beyond.any():
        out[beyond] = np.maximum(out[beyond], fallback_reference(finite)[beyond])
    return out


def reference_from_baseline(objectives: Sequence[str], baseline: Mapping[str, float] | None) -> dict[str, float] | None:
    """The sweep's hypervolume reference point in the objectives' own units (:func:`sweep.pareto.reference_point`
    scaled back by the dense baseline's figures: quality 0, each cost 1.1x the baseline's); None when the
    baseline lacks a positive figure for some objective."""
    if not baseline:
        return None
    try:
        ref = reference_point(list(objectives), baseline)
    except ValueError:
        return None
    # minimisation space: a maximised objective's coordinate is negated
    return {o: float((-r if DIRECTIONS[o] == "max" else r) * float(baseline[o])) for o, r in zip(objectives, ref)}


# --------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Decision:
    """What :meth:`MOASHA.report` decided.  ``rung`` is None when the report was not judged (between
    rungs, at the full fine-tune, or a rung this trial already passed)."""

    action: str  # CONTINUE or STOP
    rung: int | None = None
    reached: int = 0  # trials recorded at the rung, this one included
    kept: int = 0  # how many of them the rung keeps (⌊reached / η⌋ + 1, η of that rung)
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
    non-finite value stops the trial (and ranks it last at that rung for later arrivals).

    ``reference`` (objective -> value, the objectives' own units) is the hypervolume reference point of
    ``selection: hypervolume``, normally the sweep's (:func:`reference_from_baseline`); it may be set later
    (the driver knows the baseline's figures only once it is trained).  None: :func:`fallback_reference`."""

    def __init__(self, settings: MOASHASettings, objectives: Sequence[str],
                 reference: Mapping[str, float] | None = None):
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
        # (bracket, rung) -> {trial_id: objective vector (minimisation)}; dicts keep arrival order.  Each
        # bracket's rungs are judged on their own (Hyperband's brackets share no rung)
        self._recorded: dict[tuple[int, int], dict[str, np.ndarray]] = {
            (b, r): {} for b in range(settings.brackets) for r in settings.bracket_rungs(b)}
        self._bracket: dict[str, int] = {}  # trial id -> its bracket (settings.bracket_of its number)
        # trial id -> the rung it was stopped at, by this object's own decisions or a replayed stop marked
        # ``stopped`` (:meth:`record`): the trials :meth:`promotions` may let go on
        self._stopped_at: dict[str, int] = {}
        self._ref: np.ndarray | None = None
        self.reference = reference

    @property
    def reference(self) -> dict[str, float] | None:
        """The hypervolume reference point (objective -> value), None for the rung's own fallback."""
        return None if self._ref is None else dict(zip(self.objectives, self._raw(self._ref)))

    @reference.setter
    def reference(self, values: Mapping[str, float] | None) -> None:
        if values is None:
            self._ref = None
            return
        row = self._vector(values)
        if np.isnan(row).any():
            raise ValueError(f"reference must give a finite value for every objective ({', '.join(self.objectives)}),"
                             f" but got {dict(values)!r}")
        self._ref = row

    @property
    def rungs(self) -> tuple[int, ...]:
        return self._rungs

    def recorded(self, rung: int, bracket: int = 0) -> dict[str, dict[str, float]]:
        """The values recorded at ``rung`` (epochs) of ``bracket``, per trial id, in arrival order (original
        directions)."""
        return {tid: dict(zip(self.objectives, self._raw(v)))
                for tid, v in self._recorded.get((bracket, rung), {}).items()}

    def bracket(self, trial_id: str, number: int | None = None) -> int:
        """The bracket of ``trial_id``: where it was seen first, else that of its trial ``number``
        (:meth:`MOASHASettings.bracket_of`), which it keeps from then on."""
        if trial_id not in self._bracket:
            self._bracket[trial_id] = self.settings.bracket_of(number)
        return self._bracket[trial_id]

    def rung_for(self, trial_id: str, epoch: int, number: int | None = None) -> int | None:
        """The rung a report after ``epoch`` fine-tune epochs is judged at: the highest rung of the trial's
        bracket ``<= epoch``, provided the trial has recorded neither it nor a higher one; else None.  Reports
        come after every epoch, so normally ``epoch`` is the rung itself; a skipped epoch is judged at the rung
        it passed."""
        if self.settings.max_epochs is not None and epoch >= self.settings.max_epochs:
            return None  # the full fine-tune is done: nothing left to save
        b = self.bracket(trial_id, number)
        rungs = self.settings.bracket_rungs(b)
        below = [r for r in rungs if r <= epoch]
        if not below:
            return None
        rung = below[-1]
        if any(trial_id in self._recorded[(b, r)] for r in rungs if r >= rung):
            return None
        return rung

    def report(self, trial_id: str, epoch: int, values: Mapping[str, float], number: int | None = None) -> Decision:
        """Record a trial's report after ``epoch`` fine-tune epochs (0: before any) and decide; ``number``
        (the trial's number in the sweep) places it in its bracket the first time it is seen."""
        rung = self.rung_for(trial_id, int(epoch), number)
        if rung is None:
            return Decision(CONTINUE)
        self._recorded[(self._bracket[trial_id], rung)][trial_id] = self._vector(values)
        return self._judge(rung, trial_id)

    def record(self, trial_id: str, rung: int, values: Mapping[str, float], *, stopped: bool = False,
               number: int | None = None) -> None:
        """Put a past result at ``rung`` without deciding (a resumed sweep replays its finished trials'
        rung qualities so that new trials are judged against them).  ``stopped``: the trial was stopped there
        (an earlier run's ``stopped_early`` row), and :meth:`promotions` may let it go on.  A rung outside the
        bracket of trial ``number`` is not one it was judged at: nothing is put."""
        if rung not in self._rungs:
            raise ValueError(f"rung must be one of {list(self._rungs)}, but got rung={rung!r}")
        b = self.bracket(trial_id, number)
        if (b, rung) not in self._recorded:
            return
        self._recorded[(b, rung)][trial_id] = self._vector(values)
        if stopped:
            self._stopped_at[trial_id] = rung

    def _judge(self, rung: int, trial_id: str) -> Decision:
        b = self._bracket[trial_id]
        recorded = self._recorded[(b, rung)]
        ids = list(recorded)
        n, eta = len(ids), self.settings.eta(rung)
        what = "rung 0 (before fine-tuning)" if rung == 0 else f"rung {rung} ({_epochs(rung)})"
        if self.settings.brackets > 1:
            what += f" of bracket {b}"
        k = KEEPS[self.settings.keep](n, eta)
        F = np.stack([recorded[t] for t in ids])
        me = ids.index(trial_id)
        fronts = non_dominated_sort(F)
        front = int(fronts[me]) + 1
        if np.isnan(F[me]).any():
            return Decision(STOP, rung, n, k, front, f"{what}: a missing or non-finite objective value "
                            f"({', '.join(self.objectives)}); stopped "
                            f"{'before fine-tuning' if rung == 0 else 'after ' + _epochs(rung)}")
        top = self._top(F, k)
        if me in set(top.tolist()):
            return Decision(CONTINUE, rung, n, k, front, f"{what}: in the top {k} of {n} (front {front}), continues")
        if rung == 0 and front == 1 and self.settings.rung0_keeps_front:
            return Decision(CONTINUE, rung, n, k, front, f"{what}: outside the top {k} of {n} but on the rung's first "
                            f"front (no trial there is both cheaper and better; rung0_keeps_front), continues")
        self._stopped_at[trial_id] = rung
        return Decision(STOP, rung, n, k, front,
                        f"{what}: outside the top {k} of {n} trials by non-dominated sorting of "
                        f"({', '.join(self.objectives)}) (front {front}, then {self.settings.selection}); stopped "
                        f"{'before fine-tuning' if rung == 0 else 'after ' + _epochs(rung)}")

    def promotions(self, at_end: bool = True) -> list[tuple[str, int]]:
        """``(trial id, rung)`` of the trials stopped at a rung that the rung, as it stands now, ranks in its top
        ``⌊n / η⌋`` -- ASHA's promotable set (Li et al., MLSys 2020, Algorithm 2, ``get_job``: the top
        ``⌊|rung|/η⌋`` of a rung not yet promoted) --, best first within a rung, the highest rung first (as
        ASHA looks for a promotion from the top rung down).  The stop rule decides on arrival against the few
        results a rung holds then (module docstring); this is the correction once the rungs have grown: the
        driver runs these trials again from where they stopped when no new candidate is left
        (``search.scheduler.promote``).  Each is returned once (it is no longer counted as stopped); a trial
        with a missing value is never promoted; results put by :meth:`record` (a resumed sweep's replay) are
        ranked with but promoted only where marked ``stopped`` there.  With brackets, each bracket's rungs
        promote on their own.

        At the end (``at_end``; not between rounds of ``promote_every``, where new candidates still grow the
        rungs), a rung from which no trial has gone on promotes its best stopped one even where ``⌊n / η⌋`` is 0:
        the sweep has no new candidate to grow the rung with, and successive halving carries at least one survivor
        to the full budget (Hyperband sizes its brackets so that the last rung holds at least one, Li et al., JMLR 2018,
        Algorithm 1).  Under ``keep: promotable`` a rung's first arrivals all stop, so without this a small
        sweep would fine-tune no candidate to the end."""
        out: list[tuple[str, int]] = []
        for b, rung in sorted(self._recorded, key=lambda br: (-br[1], br[0])):
            recorded = self._recorded[(b, rung)]
            ids = list(recorded)
            if not any(self._stopped_at.get(t) == rung for t in ids):
                continue
            F = np.stack([recorded[t] for t in ids])
            k = len(ids) // self.settings.eta(rung)
            went_on = any(self._stopped_at.get(t) != rung and not np.isnan(F[i]).any() for i, t in enumerate(ids))
            if not k and not went_on and at_end:
                k = 1
            for i in self._top(F, k).tolist():
                if self._stopped_at.get(ids[i]) == rung and not np.isnan(F[i]).any():
                    out.append((ids[i], rung))
                    del self._stopped_at[ids[i]]
        return out

    def _top(self, F: np.ndarray, k: int) -> np.ndarray:
        ref = None if self._ref is None else reference_beyond(F, self._ref)
        return select_top(F, k, F[:, self.objectives.index(self.quality)], selection=self.settings.selection,
                          ref=ref)

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
