"""Channel (width) pruning to a target, on Torch-Pruning's dependency graph.

Torch-Pruning finds the coupled channel groups (residual adds, concatenations, depthwise convs) and
does the surgery (:mod:`sweep.engine.groups`); this module decides *how many* channels each group
keeps, so that one solver, :func:`solve_for_target`, reaches a channel ratio, a MACs, params or
latency fraction with the engine's criteria (:mod:`sweep.engine.criteria`) or with a method's own
precomputed scores; :func:`prune_to_target` traces, solves and prunes in one call:

- **Ranking.** Each group's channels are scored once (Torch-Pruning's group importance, normalised
  per group, or the scores a method passes); a global ratio ``r`` removes the ``r`` lowest-ranked
  channels of all prunable channels (or ``r`` of every group with ``global_pruning=False``), never
  more than ``max_layer_ratio`` of a group and never its last channel.
- **Rounding, per group.** Torch-Pruning's ``round_to`` is one global multiple, which forces narrow
  layers (16 channels) onto a grid as coarse as wide ones. Here the kept count of each group is
  rounded on its own: ``round_to="auto"`` rounds a group to the nearest multiple of the widest unit of
  (:func:`round_wide`, 8) that is at most a quarter of its width (the CPU's vector width in fp32 lanes:
  16 with AVX-512, else 8) and leaves groups narrower than :data:`ROUND_MIN_WIDTH` at any count; an
  integer rounds every group; ``None``/1 does not round.
- **Targets.** The plan is monotone in ``r``, so the MACs / params / latency fraction is a monotone step
  function of ``r``: a bracketing search (false position with bisection safeguards) evaluates each
  candidate on a fresh deep copy with the real counters (:func:`sweep.measure.count_macs`,
  ``count_params``, ``measure_latency``) and keeps the closest. Stepping the pruner until the target is
  passed overshoots (Torch-Pruning's own loop with ``round_to=8`` turned a 2x MACs target into 2.58x on
  DenseNet-121); this lands within ``tolerance`` wherever channel granularity allows. A ``ratio`` is
  either cut as given (``r = ratio``) or, with ``match_ratio``, searched like the other targets for
  the plan whose removed fraction is closest to it (rounding and the per-group cap can keep a plain
  cut short of it).
- **Latency-aware ranking** (opt-in, ``importance="l2_latency"`` / ``"l1_latency"``): the magnitude
  scores are divided by each group's measured latency cost (a per-layer lookup table timed on this
  machine, on the latency runtime and batch, :mod:`sweep.engine.latency`, after NetAdapt and HALP):
  per channel for a latency target or a ratio, per MAC for a MACs target (the MACs to remove are fixed
  there, so the channels that buy the most time per MAC go first). With ``global_pruning=False`` every
  group loses the same share and the costs change nothing.
- **Per-stage ratios** (``stage_ratios=(r_0, ..., r_{S-1})``): one ratio per depth stage instead of one
  global ratio, because which layers are cut matters more than how many (Liu et al., "Rethinking the
  value of network pruning", ICLR 2019: the pruned architecture carries the value; EagleEye, ECCV 2020,
  searches per-layer ratios for the same reason). The prunable groups, in depth order along the traced
  graph (:meth:`sweep.engine.groups.ChannelGraph.depth_order`), fall into ``S`` contiguous bins: group
  ``k`` of ``n`` goes to stage ``floor((2k + 1) S / 2n)``, the stage whose share of the depth holds the
  group's centre (:func:`stage_of`). With ``n >= S`` every stage gets ``floor(n/S)`` or ``ceil(n/S)``
  groups; with fewer groups than stages some stages hold none and their ratios change nothing (recorded
  in ``info["empty_stages"]``). Each stage then loses ``r_i`` of its channels, ranked inside the stage
  (or ``r_i`` of each of its groups with ``global_pruning=False``), under the same rounding and per-group
  cap. With a MACs / params / latency target the ratios are relative weights: stage ``i`` loses
  ``min(1, s r_i)`` and the one scale ``s`` is searched as the global ratio is (the search runs on
  ``r`` in [0, 1] with ``s = r / (1 - r)``, so ``r = 1/2`` is the ratios as given); the local search
  after it may move single groups by one unit, never a group of a stage whose ratio is 0 (kept whole).
  Our design on top of those papers: neither prescribes these bins or this scaling.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .criteria import IMPORTANCES, LATENCY_IMPORTANCES

if TYPE_CHECKING:  # torch and the graph load on first use: importing the targets stays fast
    from .groups import ChannelGraph

TARGETS = ("ratio", "macs_fraction", "params_fraction", "latency_fraction")
STAGES = "stage_ratios"  # a target of its own (the ratios cut as given), or weights for a measured target
TOLERANCE = 0.03  # relative: a MACs / params / latency target is met within 3 % where granularity allows

# Kept channel counts of wide layers are multiples of the CPU's vector width in fp32 lanes
# (:func:`round_wide`): vectorised kernels and blocked memory layouts work on whole vectors, so odd widths
# waste the remainder of one. ONNX Runtime's NCHWc convolutions (MLAS) block channels by 16 on AVX-512
# and by 8 on AVX2, and fall back to a plain convolution for any other count: on this project's 2-core
# AVX-512 machine a 3x3 conv pair 64 -> c -> 64 at 16x16 took as long at c = 56 as at 64 and at c = 40 as
# at 48, at batch 1 and 16 (``bench/latency_efficiency.py`` measures the effect per model). oneDNN's
# blocked layouts (nChw8c / nChw16c) follow the same widths, and NVIDIA's performance guide asks for
# multiples of 8 on fp16 tensor cores, which 16 also satisfies. One step of the grid is at most a quarter
# of a group's width: a group gets the widest unit of (vector width, 8) that is at most a quarter of its
# channels (16 from 64 channels, 8 from 32), and groups narrower than 32 channels are left unrounded.
ROUND_WIDE_AVX2 = 8
ROUND_WIDE_AVX512 = 16
ROUND_MIN_WIDTH = 4 * ROUND_WIDE_AVX2  # the narrowest group that is rounded
AUTO = "auto"

# The latency search measures each candidate with fewer repeats than a final measurement.
SEARCH_LATENCY = {"warmup": 5, "repeats": 20}
# Nets with at most this many prunable groups get a local search after the ratio search (see below).
REFINE_MAX_GROUPS = 64
REFINE_PAIRS_MAX_GROUPS = 12  # ... and exchanges between two groups (quadratic in groups)
# Search steps on the global ratio for ``match_ratio`` (each step is a plan, no model copy: cheap).
MATCH_RATIO_STEPS = 40


@functools.lru_cache(maxsize=1)
def round_wide() -> int:
    """The multiple ``round_to="auto"`` rounds wide groups to: this CPU's vector width in fp32 lanes, 16
    where torch dispatches AVX-512 kernels (the CPU has AVX-512F, which is also when ONNX Runtime blocks
    channels by 16), else 8. Resolved where the pruning runs (``info["round_unit"]`` records it); an
    integer ``round_to`` gives one grid on every machine."""
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    return ROUND_WIDE_AVX512 if "AVX512" in capability else ROUND_WIDE_AVX2


@dataclass(frozen=True)
class AutoGrid:
    """``round_to="auto"`` with at most ``lanes`` as the unit (the solver's finer grids, see
    :func:`solve_for_target`)."""

    lanes: int


def rounding_unit(channels: int, round_to: int | str | AutoGrid | None) -> int:
    """The multiple a group of ``channels`` keeps: see the module docstring for ``round_to``."""
    if round_to in (AUTO, 0):
        round_to = AutoGrid(round_wide())
    if isinstance(round_to, AutoGrid):
        for unit in (round_to.lanes, ROUND_WIDE_AVX2):
            if channels >= 4 * unit:  # one step at most a quarter of the width
                return unit
        return 1
    if round_to is None:
        return 1
    return max(1, int(round_to))


def fallback_grids(round_to: int | str | None) -> list:
    """The grids a measured target is tried on, in turn, until one lands within tolerance: with
    ``round_to="auto"`` the CPU's vector width, then 8 where that is wider, then none (a grid too coarse for
    the net cannot meet a 4x MACs cut of 64-channel groups on a grid of 16); any other ``round_to`` alone."""
    if round_to not in (AUTO, 0):
        return [round_to]
    lanes = round_wide()
    return [AutoGrid(lanes)] + [AutoGrid(u) for u in (ROUND_WIDE_AVX2,) if u < lanes] + [None]


def _given_score(group, scores: Mapping[str, Any]):
    """A method's precomputed scores of ``group`` (one per unit) as a float CPU tensor, or None."""
    import torch

    s = scores.get(group.name)
    if s is None:
        return None
    s = torch.as_tensor(s).detach().float().cpu().flatten()
    if s.numel() != group.size:
        raise ValueError(f"scores of group {group.name!r} must hold one value per unit ({group.size}), "
                         f"but got {s.numel()}")
    return s


def stage_of(k: int, n: int, stages: int) -> int:
    """The stage of the ``k``-th of ``n`` groups in depth order, among ``stages`` (module docstring):
    the bin of ``[0, stages)`` that holds the group's centre ``(k + 1/2) stages / n``, in integers."""
    return (2 * k + 1) * stages // (2 * n)


def stage_assignment(graph, groups: Sequence, stages: int) -> dict:
    """``{group name: stage}`` of ``groups`` (of ``graph``) split into ``stages`` depth bins."""
    ordered = graph.depth_order(groups)
    return {g.name: stage_of(k, len(ordered), stages) for k, g in enumerate(ordered)}


def check_stage_ratios(stage_ratios: Any) -> tuple:
    """``stage_ratios`` as a tuple of floats, or a one-line ConfigError (engine callers; the knob
    validates the same with the knob's location)."""
    from ..errors import ConfigError

    try:
        out = tuple(float(w) for w in stage_ratios)
    except (TypeError, ValueError):
        out = ()
    if not out or isinstance(stage_ratios, (str, bytes)):
        raise ConfigError(f"stage_ratios must be a non-empty list of numbers in [0, 1) (one per stage), "
                          f"but got stage_ratios={stage_ratios!r}")
    for i, w in enumerate(out):
        if not 0 <= w < 1:  # also rejects NaN
            raise ConfigError(f"stage_ratio_{i} must be in [0, 1), but got stage_ratio_{i}={w!r}")
    return out


def _odds(r: float) -> float:
    """The stage scale of search position ``r`` in [0, 1]: ``r / (1 - r)``, infinite at 1."""
    return math.inf if r >= 1 else r / (1 - r)


# ------------------------------------------------------------------------------------ the plan
class ChannelPlan:
    """How many (and which) channels each prunable group loses at a global ratio ``r``.

    Scores are computed once, by ``importance`` (a name of :data:`sweep.engine.criteria.IMPORTANCES` or
    a ``tp.importance`` object), or given: ``scores`` maps group names to one score per unit (length
    ``group.size``, higher = keep; ``importance`` is then unused), and groups without an entry are not
    pruned. :meth:`kept` is then
    cheap, and monotone: a larger ``r`` never keeps more channels in any group. Grouped-conv groups are
    not rounded (their chunks set the grid).
    With a latency-aware ``importance`` (:data:`LATENCY_IMPORTANCES`) the scores of each group are
    divided by its relative measured latency cost (``self.latency``: one
    :class:`~sweep.engine.latency.GroupLatency` per group), timed with ``latency_lut`` (a
    :class:`~sweep.engine.latency.LatencyLUT`; default: at the example batch, current threads).
    """

    def __init__(self, graph, *, importance: Any = "l2", scores: Mapping[str, Any] | None = None,
                 global_pruning: bool = True, round_to: int | str | None = AUTO, max_layer_ratio: float = 0.9,
                 latency_lut: Any = None, stage_ratios: Sequence[float] | None = None, latency_per: str = "unit"):
        import torch

        self.graph = graph
        self.global_pruning = global_pruning
        self.groups, ranked = [], []
        for g in graph.groups:
            if g.size < 2:
                continue
            s = g.score(importance) if scores is None else _given_score(g, scores)
            if s is None:  # e.g. bn_scale on a group without BN: the criterion cannot rank it
                continue
            self.groups.append(g)
            ranked.append(s)
        self.sizes = [g.size for g in self.groups]
        self.total = sum(self.sizes)
        self.round_unit = rounding_unit(1 << 30, round_to)  # the grid of the widest groups
        self.units, self.min_keep = [], []
        for g, size in zip(self.groups, self.sizes):
            unit = rounding_unit(g.channels, round_to) if g.ch_groups == 1 else 1
            unit = min(unit, size)
            floor_keep = max(1, math.ceil(size * (1 - max_layer_ratio) - 1e-9))
            # the floor itself sits on the grid (a wide group keeps at least one whole unit)
            floor_keep = min(size, math.ceil(floor_keep / unit) * unit)
            self.units.append(unit)
            self.min_keep.append(floor_keep)
        self.latency = None
        if scores is None and isinstance(importance, str) and importance in LATENCY_IMPORTANCES:
            from .latency import group_latencies, latency_weighted_scores

            self.latency = group_latencies(graph, self.groups, self.units, lut=latency_lut)
            ranked = latency_weighted_scores(ranked, self.latency, per=latency_per)
        self.local_order = [torch.argsort(s, stable=True) for s in ranked]
        # Bins of groups that share one removed fraction: every group (a global ratio), or one bin per
        # depth stage (per-stage ratios). The channels of a bin are ranked together.
        self.stage_ratios = None if stage_ratios is None else check_stage_ratios(stage_ratios)
        if self.stage_ratios is None:
            self.stage_of = None
            self.bins = [list(range(len(self.groups)))]
        else:
            by_name = stage_assignment(graph, self.groups, len(self.stage_ratios)) if self.groups else {}
            self.stage_of = {g.name: by_name[g.name] for g in self.groups}  # in plan order
            self.bins = [[i for i, g in enumerate(self.groups) if by_name[g.name] == b]
                         for b in range(len(self.stage_ratios))]
        self._gid_sorted = []
        for members in self.bins:
            if not members:
                self._gid_sorted.append(None)
                continue
            cat = torch.cat([ranked[i] for i in members])
            gid = torch.cat([torch.full((self.sizes[i],), i, dtype=torch.long) for i in members])
            self._gid_sorted.append(gid[torch.argsort(cat, stable=True)])

    def fractions(self, r: float) -> list[float]:
        """The fraction each bin loses at search position ``r``: ``r`` itself for a global ratio, or
        ``min(1, s r_i)`` per stage with ``s = r / (1 - r)`` (see the module docstring)."""
        if self.stage_ratios is None:
            return [r]
        s = _odds(r)
        return [min(1.0, s * w) if w > 0 else 0.0 for w in self.stage_ratios]

    def kept(self, r: float) -> list[int]:
        """Channels (units) kept per group at ratio ``r`` (per-stage plans: search position ``r``)."""
        if r <= 0 or not self.total:
            return list(self.sizes)
        return self.kept_at(self.fractions(r))

    def kept_at(self, fractions: Sequence[float]) -> list[int]:
        """Channels (units) kept per group when bin ``b`` loses ``fractions[b]`` of its channels."""
        import torch

        removed = [0] * len(self.sizes)
        for members, order, f in zip(self.bins, self._gid_sorted, fractions):
            if f <= 0 or not members:
                continue
            if self.global_pruning:
                total = sum(self.sizes[i] for i in members)
                n = total - int(total * (1 - f) + 1e-9)
                counts = torch.bincount(order[:n], minlength=len(self.sizes)).tolist()
                for i in members:
                    removed[i] = counts[i]
            else:
                for i in members:
                    removed[i] = self.sizes[i] - int(self.sizes[i] * (1 - f) + 1e-9)
        out = []
        for size, rem, unit, floor_keep in zip(self.sizes, removed, self.units, self.min_keep):
            keep = size - rem
            if unit > 1 and keep < size:
                keep = max(unit, unit * math.floor(keep / unit + 0.5))  # nearest multiple, ties up
            out.append(min(size, max(keep, floor_keep)))
        return out

    def selection(self, kept: Sequence[int]) -> dict:
        """``{group: unit indices to remove}`` for kept counts (lowest scores go first)."""
        sel = {}
        for g, order, size, keep in zip(self.groups, self.local_order, self.sizes, kept):
            if keep < size:
                sel[g] = order[: size - keep].tolist()
        return sel

    def removed_fraction(self, kept: Sequence[int]) -> float:
        return 1.0 - sum(kept) / self.total if self.total else 0.0

    def stage_removed(self, kept: Sequence[int]) -> list[float | None]:
        """Per stage, the fraction of its channels that ``kept`` removes (None: a stage with no group)."""
        out: list[float | None] = []
        for members in self.bins:
            total = sum(self.sizes[i] for i in members)
            out.append(1.0 - sum(kept[i] for i in members) / total if total else None)
        return out

    def steps(self, kept: Sequence[int]) -> list[tuple[int, int | None, int | None]]:
        """Per group ``(i, one unit less, one unit more)`` on the group's grid (None where off limits)."""
        out = []
        frozen = set()  # a stage whose ratio is 0 is kept whole: the refinement moves no group of it
        if self.stage_ratios is not None:
            frozen = {i for b, w in zip(self.bins, self.stage_ratios) if w == 0 for i in b}
        for i, (keep, size, unit, floor_keep) in enumerate(zip(kept, self.sizes, self.units, self.min_keep)):
            if i in frozen:
                continue
            # the grid of a group: multiples of its unit from its floor, plus its full (maybe off-grid) width
            down = (size // unit) * unit if keep == size and size % unit else keep - unit
            up = min(keep + unit, size)
            out.append((i, down if down >= floor_keep else None, up if up > keep else None))
        return out

    def neighbours(self, kept: Sequence[int], pairs: bool = False) -> list[tuple[int, ...]]:
        """Plans one unit away in one group; with ``pairs`` also one up in a group and one down in another."""
        kept, out = tuple(kept), []
        steps = self.steps(kept)
        for i, down, up in steps:
            for new in (down, up):
                if new is not None:
                    out.append(kept[:i] + (new,) + kept[i + 1:])
        if pairs:
            for i, _, up in steps:
                for j, down, _ in steps:
                    if i != j and up is not None and down is not None:
                        k = list(kept)
                        k[i], k[j] = up, down
                        out.append(tuple(k))
        return out


# ------------------------------------------------------------------------------------ the solver
def check_target(target: str, value: float, *, max_layer_ratio: float = 0.9, importance: Any = "l2") -> None:
    """Raise a one-line ConfigError unless ``target`` = ``value`` is a target the solver can aim at."""
    from ..errors import ConfigError

    if target == STAGES:
        check_stage_ratios(value)
    elif target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS + (STAGES,))}, but got target={target!r}")
    elif target == "ratio" and not 0 <= value < 1:
        raise ConfigError(f"ratio must be in [0, 1), but got ratio={value!r}")
    elif target != "ratio" and not 0 < value <= 1:
        raise ConfigError(f"{target} must be in (0, 1], but got {target}={value!r}")
    if not 0 < max_layer_ratio < 1:
        raise ConfigError(f"max_layer_ratio must be in (0, 1), but got max_layer_ratio={max_layer_ratio!r}")
    if isinstance(importance, str) and importance not in IMPORTANCES + LATENCY_IMPORTANCES:
        raise ConfigError(f"importance must be one of {IMPORTANCES + LATENCY_IMPORTANCES}, "
                          f"but got importance={importance!r}")


@dataclass
class Solution:
    """The plan that meets a target: ``kept`` units per group of ``plan``, cut at global ratio ``ratio``.

    ``figures`` (``macs``, ``params``, and ``latency_ms`` for a latency target) describe the model
    pruned by :attr:`selection`, ``baseline`` the model as given; both are measured on copies, before
    the live model is pruned.
    """

    plan: ChannelPlan
    kept: tuple
    ratio: float
    target: str
    value: float
    tolerance: float
    figures: dict | None  # None until :meth:`measured` (``defer_figures``)
    baseline: dict
    evaluations: int | None = None  # pruned copies the search measured (None where it needed none)
    extra: dict = field(default_factory=dict)  # latency details for ``info``

    def measured(self, pruned, example_inputs) -> Solution:
        """Fill deferred :attr:`figures` from ``pruned``, the model this solution's selection was applied to."""
        if self.figures is None:
            from ..measure import count_macs, count_params

            self.figures = {"macs": count_macs(pruned, example_inputs), "params": count_params(pruned)}
        return self

    @property
    def selection(self) -> dict:
        """``{group: unit indices to remove}``, in the graph's current (unpruned) coordinates."""
        return self.plan.selection(self.kept)

    @property
    def achieved(self) -> dict:
        out = {"ratio": self.plan.removed_fraction(self.kept),
               "macs_fraction": self.figures["macs"] / self.baseline["macs"],
               "params_fraction": self.figures["params"] / self.baseline["params"]}
        if "latency_ms" in self.figures:
            out["latency_fraction"] = self.figures["latency_ms"] / self.baseline["latency_ms"]
        return out

    @property
    def error(self) -> float:
        """Relative distance of a measured target from its value (0 for a ratio or per-stage ratios, met by
        construction)."""
        if self.target in ("ratio", STAGES):
            return 0.0
        got = self.achieved[self.target]
        return abs(got - self.value) / self.value if self.value else abs(got)

    @property
    def within_tolerance(self) -> bool:
        """A ratio (or per-stage ratios) is met by construction; a measured target within ``tolerance``
        (relative)."""
        return self.error <= self.tolerance

    def info(self) -> dict:
        """JSON-able record: target and achieved side by side (also flat: ``target_macs_fraction``,
        ``achieved_macs_fraction``, ...), MACs and params before/after, groups found and pruned."""
        achieved = self.achieved
        staged = self.plan.stage_ratios is not None
        value = list(self.value) if self.target == STAGES else self.value
        # with stages, r is a search position, not a cut: the channel ratio is what was removed
        channel_ratio = achieved["ratio"] if staged else float(self.ratio)
        info = {"target": {self.target: value}, "prunable_groups": len(self.plan.groups), **self.extra,
                "achieved": achieved, "channel_ratio": channel_ratio, "within_tolerance": self.within_tolerance,
                "tolerance": self.tolerance, "macs": [self.baseline["macs"], self.figures["macs"]],
                "params": [self.baseline["params"], self.figures["params"]],
                "groups_pruned": len(self.selection), f"target_{self.target}": value,
                "round_unit": self.plan.round_unit}
        if staged:
            removed = self.plan.stage_removed(self.kept)
            info.update({
                "stage_ratios": list(self.plan.stage_ratios),
                "stage_scale": _odds(self.ratio) if self.ratio < 1 else None,  # None: every stage at its cap
                "stage_of": dict(self.plan.stage_of), "stage_groups": [len(b) for b in self.plan.bins],
                "empty_stages": [i for i, b in enumerate(self.plan.bins) if not b],
                "achieved_stage_ratios": removed})
        if self.evaluations is not None:
            info["evaluations"] = self.evaluations
        if "latency_ms" in self.figures:
            info["latency_ms"] = self.figures["latency_ms"]
        info.update({f"achieved_{k}": v for k, v in achieved.items()})
        return info


def solve_for_target(graph: ChannelGraph, *, target: str, value: float, importance: Any = "l2",
                     scores: Mapping[str, Any] | None = None, global_pruning: bool = True,
                     round_to: int | str | None = AUTO, max_layer_ratio: float = 0.9, tolerance: float = TOLERANCE,
                     max_iter: int = 16, match_ratio: bool = False, latency_kw: dict | None = None,
                     latency_lut: Any = None, stage_ratios: Sequence[float] | None = None,
                     defer_figures: bool = False) -> Solution:
    """The plan of ``graph``'s groups that meets one target (``target`` in :data:`TARGETS`, = ``value``).

    With ``round_to="auto"`` the wide groups' grid is :func:`round_wide`; where no plan on it meets a
    measured target within ``tolerance`` (the grid is too coarse for the net: a 4x MACs cut of a
    CIFAR ResNet whose widest groups are 64 channels, on a grid of 16), the grid is halved until one does
    (down to 8, then unrounded), and the closest plan is kept if none does. See :func:`_solve_on_grid`.
    ``info["round_unit"]`` is the unit of the widest groups on the grid used.
    ``defer_figures``: where the target is met by construction (a ratio cut as given, per-stage ratios
    alone), leave :attr:`Solution.figures` None instead of measuring a pruned copy: the caller measures
    the model it prunes (:meth:`Solution.measured`), one copy and one MACs count fewer.
    """
    grids = fallback_grids(round_to) if target in TARGETS[1:] else [round_to]
    best = None
    for grid in grids:
        sol = _solve_on_grid(graph, target=target, value=value, importance=importance, scores=scores,
                             global_pruning=global_pruning, round_to=grid, max_layer_ratio=max_layer_ratio,
                             tolerance=tolerance, max_iter=max_iter, match_ratio=match_ratio, latency_kw=latency_kw,
                             latency_lut=latency_lut, stage_ratios=stage_ratios, defer_figures=defer_figures)
        if sol.within_tolerance:
            return sol
        if best is None or sol.error < best.error:
            best = sol
    return best


def _solve_on_grid(graph: ChannelGraph, *, target: str, value: float, importance: Any = "l2",
                   scores: Mapping[str, Any] | None = None, global_pruning: bool = True,
                   round_to: int | str | None = AUTO, max_layer_ratio: float = 0.9, tolerance: float = TOLERANCE,
                   max_iter: int = 16, match_ratio: bool = False, latency_kw: dict | None = None,
                   latency_lut: Any = None, stage_ratios: Sequence[float] | None = None,
                   defer_figures: bool = False) -> Solution:
    """:func:`solve_for_target` on one rounding grid, ``round_to``.

    Channels are ranked by ``importance`` or by a method's precomputed ``scores`` (``{group name: one
    score per unit}``, see :class:`ChannelPlan`). A ``ratio`` is cut as given, or with ``match_ratio``
    searched for the plan whose removed fraction is closest to it; a MACs / params / latency fraction
    is searched on pruned copies and met within ``tolerance`` where channel granularity allows (see the
    module docstring). ``target=STAGES`` (``"stage_ratios"``) with ``value=(r_0, ..., r_{S-1})`` cuts
    each depth stage by its ratio; ``stage_ratios`` with a MACs / params / latency target makes them
    the weights of that search. Nothing is pruned: apply :attr:`Solution.selection` with
    ``graph.prune`` or ``graph.pruned_copy``.
    """
    from ..errors import ConfigError
    from ..measure import count_macs, count_params

    check_target(target, value, max_layer_ratio=max_layer_ratio, importance=importance)
    if target == STAGES:
        stage_ratios = value = check_stage_ratios(value)
    elif stage_ratios is not None:
        if target == "ratio":
            raise ConfigError(f"give ratio or stage_ratios, not both, but got ratio={value!r}, "
                              f"stage_ratios={stage_ratios!r}")
        stage_ratios = check_stage_ratios(stage_ratios)
        if not any(stage_ratios):  # all weights 0: no scale reaches any target
            raise ConfigError(f"stage_ratios must hold a positive ratio to scale towards {target}={value!r}, "
                              f"but got stage_ratios={stage_ratios!r}")
    model, example_inputs = graph.model, graph.example_inputs
    if latency_lut is None and scores is None and importance in LATENCY_IMPORTANCES:
        from .latency import LatencyLUT

        x0 = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
        # the table on the runtime and batch latency is measured at (latency_kw["runtime"], ["batch"];
        # by default the CPU's default runtime and the example's batch)
        kw = latency_kw or {}
        latency_lut = LatencyLUT(batch=int(kw.get("batch") or x0.shape[0]), threads=kw.get("threads"),
                                 runtime=kw.get("runtime"))
    # a MACs budget fixes the MACs to remove: latency per removed MAC is then the cost that matters
    plan = ChannelPlan(graph, importance=importance, scores=scores, global_pruning=global_pruning,
                       round_to=round_to, max_layer_ratio=max_layer_ratio, latency_lut=latency_lut,
                       stage_ratios=stage_ratios, latency_per="mac" if target == "macs_fraction" else "unit")
    baseline = {"macs": count_macs(model, example_inputs), "params": count_params(model)}
    extra: dict = {}
    if plan.latency is not None:
        extra["latency_ms_per_channel"] = {c.name: c.per_unit_ms for c in plan.latency}

    cache: dict = {}  # plan (kept counts) -> figures of its pruned copy

    def figures(kept: tuple) -> dict:
        if kept not in cache:
            cand = graph.pruned_copy(plan.selection(kept))
            fig = {"macs": count_macs(cand, example_inputs), "params": count_params(cand)}
            if target == "latency_fraction":
                fig["latency_ms"] = _latency(cand, example_inputs, latency_kw)
            cache[kept] = fig
        return cache[kept]

    full = tuple(plan.sizes)
    evaluations = None
    if target == STAGES:  # the ratios as given: scale 1, search position 1/2
        r, kept = 0.5, tuple(plan.kept_at(plan.fractions(0.5)))
    elif target == "ratio" and not match_ratio:
        r, kept = value, tuple(plan.kept(value))
    elif target == "ratio":  # the kept share of prunable channels falls with r as a measured fraction does
        r, kept = _search(plan, lambda k: 1.0 - plan.removed_fraction(k), 1.0 - value, 0.0, MATCH_RATIO_STEPS)
    else:
        cache[full] = dict(baseline)
        if target == "latency_fraction":
            baseline["latency_ms"] = cache[full]["latency_ms"] = _latency(model, example_inputs, latency_kw)
            extra["baseline_latency_ms"] = baseline["latency_ms"]
        metric = {"macs_fraction": "macs", "params_fraction": "params", "latency_fraction": "latency_ms"}[target]

        def fraction(k: tuple) -> float:
            return figures(k)[metric] / cache[full][metric]

        r, kept = _search(plan, fraction, value, tolerance, max_iter)
        # Along r the plans are nested (each step removes the next-ranked channel, or 8 of a wide group);
        # in a net of few groups one step can jump over the target. Moving single groups by one unit
        # around the best plan then reaches combinations the ranking alone does not. Skipped for latency
        # (each measurement is slow and noisy) and for many groups (where r's steps are fine already).
        if (target != "latency_fraction" and len(plan.groups) <= REFINE_MAX_GROUPS
                and abs(fraction(kept) - value) > value * tolerance / 2):
            kept = _refine(plan, fraction, value, kept, tolerance / 4)
        evaluations = len(cache) - 1
    if not plan.selection(kept):
        fig = dict(baseline)
    elif defer_figures and evaluations is None:  # cut as given: nothing was measured on the way
        fig = None
    else:
        fig = figures(kept)
    return Solution(plan=plan, kept=kept, ratio=r, target=target, value=value, tolerance=tolerance, figures=fig,
                    baseline=baseline, evaluations=evaluations, extra=extra)


# ------------------------------------------------------------------------------------ entry points
def prune_to_target(model, example_inputs, *, ratio: float | None = None, macs_fraction: float | None = None,
                    params_fraction: float | None = None, latency_fraction: float | None = None,
                    importance: Any = "l2", global_pruning: bool = True, round_to: int | str | None = AUTO,
                    ignored_layers: Sequence | None = None, keep_layers: Sequence = (),
                    max_layer_ratio: float = 0.9, tolerance: float = TOLERANCE, max_iter: int = 16,
                    latency_kw: dict | None = None, inplace: bool = True, latency_lut: Any = None,
                    stage_ratios: Sequence[float] | None = None, kept: dict | None = None):
    """Prune ``model`` to exactly one target and return ``(model, info)``.

    Targets: ``ratio`` (fraction of prunable channels removed), or the fraction of the model's current
    MACs, params or latency (measured here, on this machine) that the pruned model keeps.
    ``stage_ratios`` (one ratio per depth stage, see the module docstring) replaces ``ratio``: alone,
    each stage loses its ratio; with a MACs / params / latency fraction, they are the relative weights
    of the stages and one scale is searched to meet it (``info`` adds ``stage_of``, ``stage_groups``,
    ``empty_stages``, ``stage_scale`` and ``achieved_stage_ratios``).
    ``ignored_layers`` (modules or names) keep their output channels: ``None`` =
    :func:`sweep.engine.skip.skipped_layers` (the output layers and the layers the model declares), a
    given list is final; ``keep_layers`` (names or modules) are kept in either case. ``round_to``:
    ``"auto"`` (or 0) = multiples of :func:`round_wide` (16 on AVX-512 CPUs, else 8) on groups >= 64
    channels, of 8 on groups >= 32, none below, on a finer grid where that one cannot meet a MACs /
    params / latency target (``info["round_unit"]`` says which grid); an int = that multiple everywhere;
    ``None``/1 = none.
    ``info`` holds ``target`` and ``achieved`` side by side (see :meth:`Solution.info`). With
    ``inplace=False`` the input model is left untouched.
    ``importance="l2_latency"`` (or ``"l1_latency"``) ranks by magnitude per measured latency cost
    (see the module docstring); ``latency_lut`` (a :class:`sweep.engine.latency.LatencyLUT`) sets how
    the table is timed (default: ``latency_kw["batch"]`` or the example batch, ``latency_kw["threads"]`` or
    the current threads, ``latency_kw["runtime"]``),
    and ``info["latency_ms_per_channel"]`` holds each group's cost.
    ``kept`` (a dict) is filled with the kept output / input channels of every conv / linear layer the
    pruning touches, in the input model's coordinates (:meth:`~sweep.engine.groups.ChannelGraph.kept_channels`),
    e.g. for :mod:`sweep.engine.reconstruct`.
    """
    from ..errors import ConfigError
    from .groups import ChannelGraph

    given = {k: v for k, v in zip(TARGETS, (ratio, macs_fraction, params_fraction, latency_fraction))
             if v is not None}
    if stage_ratios is not None:
        stage_ratios = check_stage_ratios(stage_ratios)
        if "ratio" in given or len(given) > 1:
            raise ConfigError(f"give stage_ratios alone or with one of {', '.join(TARGETS[1:])}, but got "
                              f"{', '.join(f'{k}={v}' for k, v in given.items())}")
        if not given:
            given = {STAGES: stage_ratios}
    if len(given) != 1:
        raise ConfigError(f"give exactly one of {', '.join(TARGETS)}, but got "
                          f"{', '.join(f'{k}={v}' for k, v in given.items()) or 'none'}")
    (kind, value), = given.items()
    check_target(kind, value, max_layer_ratio=max_layer_ratio, importance=importance)  # before the trace
    graph = ChannelGraph(model, example_inputs, ignored_layers=ignored_layers, keep_layers=keep_layers)
    sol = solve_for_target(graph, target=kind, value=value, importance=importance, global_pruning=global_pruning,
                           round_to=round_to, max_layer_ratio=max_layer_ratio, tolerance=tolerance,
                           max_iter=max_iter, latency_kw=latency_kw, latency_lut=latency_lut,
                           stage_ratios=stage_ratios, defer_figures=True)
    if kept is not None:
        kept.update(graph.kept_channels(sol.selection))  # in the input model's coordinates: before pruning
    if inplace:
        graph.prune(sol.selection)
        out = model
    else:
        out = graph.pruned_copy(sol.selection)
    info = {"importance": importance if isinstance(importance, str) else type(importance).__name__,
            "global_pruning": global_pruning, "round_to": AUTO if round_to in (AUTO, 0) else (round_to or 1),
            "max_layer_ratio": max_layer_ratio, **sol.measured(out, graph.example_inputs).info()}
    return out, info


def _latency(model, example_inputs, latency_kw: dict | None) -> float:
    from ..measure import measure_latency

    kw = {**SEARCH_LATENCY, **(latency_kw or {})}
    x = example_inputs
    kw["batch"] = int(kw.get("batch") or x.shape[0])
    return measure_latency(model, tuple(x.shape[1:]), **kw).median_ms


def _search(plan: ChannelPlan, fraction, target: float, tolerance: float, max_iter: int):
    """The ratio ``r`` in [0, 1] whose plan's ``fraction`` (non-increasing in r, 1 at r=0) is closest
    to ``target``: ``(r, kept counts)``.

    False position (Illinois variant) inside a shrinking bracket, every other step a bisection, so that
    it converges on steep and on flat stretches alike; stops within a quarter of ``tolerance``.
    """
    aim = tolerance / 4
    full = tuple(plan.sizes)
    if target >= 1.0 or not plan.total:
        return 0.0, full
    lo, f_lo = 0.0, 1.0
    hi = 1.0
    k_hi = tuple(plan.kept(hi))
    f_hi = fraction(k_hi)
    best = (abs(f_hi - target) / target, hi, k_hi)
    if f_hi >= target:  # even the thinnest plan keeps more than the target: the closest there is
        return hi, k_hi
    side = 0
    for i in range(max_iter):
        width = hi - lo
        if width < 1e-7:
            break
        if i % 2 == 0 and f_lo != f_hi:
            r = lo + (f_lo - target) * width / (f_lo - f_hi)
            r = min(max(r, lo + 0.02 * width), hi - 0.02 * width)
        else:
            r = lo + width / 2
        kept = tuple(plan.kept(r))
        f = fraction(kept)
        err = abs(f - target) / target
        if err < best[0]:
            best = (err, r, kept)
        if err <= aim:
            break
        if f > target:
            lo, f_lo = r, f
            if side == -1:  # Illinois: the same end stayed twice, halve its weight
                f_hi = target + (f_hi - target) / 2
            side = -1
        else:
            hi, f_hi = r, f
            if side == 1:
                f_lo = target + (f_lo - target) / 2
            side = 1
    return best[1], best[2]


def _refine(plan: ChannelPlan, fraction, target: float, kept: tuple, aim: float, rounds: int = 6) -> tuple:
    """Greedy moves of one group by one unit while they bring ``fraction`` closer to ``target``."""
    err = abs(fraction(kept) - target) / target
    for _ in range(rounds):
        if err <= aim:
            break
        new_err, new = err, kept
        for pairs in (False, True):  # exchanges between two groups only where single moves do not help
            if pairs and len(plan.groups) > REFINE_PAIRS_MAX_GROUPS:
                break
            scored = [(abs(fraction(k) - target) / target, k) for k in plan.neighbours(kept, pairs=pairs)]
            if scored:
                new_err, new = min([(new_err, new)] + scored, key=lambda t: t[0])
            if new_err < err:
                break
        if new_err >= err:
            break
        err, kept = new_err, new
    return kept


def prune_channels(model, example_inputs, *, ratio: float, importance: str = "l2",
                   global_pruning: bool = True, ignored_layers: Sequence | None = None, keep_layers: Sequence = (),
                   round_to: int | str | None = None, max_layer_ratio: float = 0.9, kept: dict | None = None):
    """Remove ``ratio`` of the prunable channels in place and return the model.

    ``max_layer_ratio`` stops global pruning from emptying a layer (a zero-width layer breaks the net).
    ``round_to=None`` does not round; ``ignored_layers`` / ``keep_layers`` / ``kept`` as for
    :func:`prune_to_target`.
    """
    if ratio <= 0:
        return model
    model, _ = prune_to_target(model, example_inputs, ratio=ratio, importance=importance,
                               global_pruning=global_pruning, ignored_layers=ignored_layers,
                               keep_layers=keep_layers, round_to=round_to, max_layer_ratio=max_layer_ratio,
                               kept=kept)
    return model


def channel_counts(model, names: dict | None = None) -> dict:
    """Output channels / features of every conv and linear layer (recorded with a trial). ``names``
    (:func:`sweep.engine.depth.module_names`, taken before blocks were removed) keys them by the names the
    layers had in the input model, so that they line up with the baseline's after a stage was renumbered."""
    import torch.nn as nn

    out = {}
    for name, m in model.named_modules():
        key = names.get(id(m), name) if names else name
        if isinstance(m, nn.Conv2d):
            out[key] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[key] = m.out_features
    return out
