"""Channel (width) pruning to a target, on Torch-Pruning's dependency graph.

Torch-Pruning finds the coupled channel groups (residual adds, concatenations, depthwise convs) and
does the surgery (:mod:`sweep.engine.groups`); this module decides *how many* channels each group
keeps, so that one entry point, :func:`prune_to_target`, reaches a channel ratio, a MACs, params or
latency fraction:

- **Ranking.** Each group's channels are scored once (Torch-Pruning's group importance, normalised
  per group); a global ratio ``r`` removes the ``r`` lowest-ranked channels of all prunable channels
  (or ``r`` of every group with ``global_pruning=False``), never more than ``max_layer_ratio`` of a
  group and never its last channel.
- **Rounding, per group.** Torch-Pruning's ``round_to`` is one global multiple, which forces narrow
  layers (16 channels) onto a grid as coarse as wide ones. Here the kept count of each group is
  rounded on its own: ``round_to="auto"`` rounds groups at least :data:`ROUND_MIN_WIDTH` channels wide
  to the nearest multiple of :data:`ROUND_WIDE` and leaves narrower groups at any count; an integer
  rounds every group; ``None``/1 does not round.
- **Targets.** The plan is monotone in ``r``, so the MACs / params / latency fraction is a monotone step
  function of ``r``: a bracketing search (false position with bisection safeguards) evaluates each
  candidate on a fresh deep copy with the real counters (:func:`sweep.measure.count_macs`,
  ``count_params``, ``measure_latency``) and keeps the closest. Stepping the pruner until the target is
  passed overshoots (Torch-Pruning's own loop with ``round_to=8`` turned a 2x MACs target into 2.58x on
  DenseNet-121); this lands within ``tolerance`` wherever channel granularity allows.
- **Latency-aware ranking** (opt-in, ``importance="l2_latency"`` / ``"l1_latency"``): the magnitude
  scores are divided by each group's measured latency cost per channel (a per-layer lookup table timed
  on this machine, :mod:`sweep.engine.latency`, after NetAdapt and HALP), so that channels whose
  removal buys more latency per unit of importance go first. Any target works with it, a
  ``latency_fraction`` best (the ratio is the knapsack rule for a latency budget); with
  ``global_pruning=False`` every group loses the same share and the costs change nothing.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

IMPORTANCES = ("l2", "l1", "bn_scale", "random")
# Latency-aware variants: the magnitude criterion weighted by measured latency (sweep.engine.latency).
LATENCY_IMPORTANCES = ("l2_latency", "l1_latency")
LATENCY_SUFFIX = "_latency"
TARGETS = ("ratio", "macs_fraction", "params_fraction", "latency_fraction")

# Kept channel counts of wide layers are multiples of 8: vectorised CPU kernels work on 8 fp32 lanes
# (AVX2) and blocked memory layouts (oneDNN nChw8c/16c), and NVIDIA's performance guide asks for
# multiples of 8 for fp16 tensor cores, so odd widths waste the remainder of a vector. Layers narrower
# than 32 channels are left unrounded: a step of 8 would be 25-50 % of their width.
ROUND_WIDE = 8
ROUND_MIN_WIDTH = 32
AUTO = "auto"

# The latency search measures each candidate with fewer repeats than a final measurement.
SEARCH_LATENCY = {"warmup": 5, "repeats": 20}
# Nets with at most this many prunable groups get a local search after the ratio search (see below).
REFINE_MAX_GROUPS = 64
REFINE_PAIRS_MAX_GROUPS = 12  # ... and exchanges between two groups (quadratic in groups)


def make_importance(name: str):
    import torch_pruning as tp

    if name in LATENCY_IMPORTANCES:  # the value part of a latency-aware criterion
        name = name[: -len(LATENCY_SUFFIX)]
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "random":
        return tp.importance.RandomImportance()
    raise ValueError(f"importance must be one of {IMPORTANCES + LATENCY_IMPORTANCES}, but got {name!r}")


def default_ignored_layers(model) -> list:
    """Layers whose outputs are never pruned: the classifier head (the last Linear: its outputs are
    the classes), plus whatever the model declares through ``pruning_ignored_layers()``."""
    import torch.nn as nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    extra = list(model.pruning_ignored_layers()) if hasattr(model, "pruning_ignored_layers") else []
    return linears[-1:] + extra


def rounding_unit(channels: int, round_to: int | str | None) -> int:
    """The multiple a group of ``channels`` keeps: see the module docstring for ``round_to``."""
    if round_to in (AUTO, 0):
        return ROUND_WIDE if channels >= ROUND_MIN_WIDTH else 1
    if round_to is None:
        return 1
    return max(1, int(round_to))


# ------------------------------------------------------------------------------------ the plan
class ChannelPlan:
    """How many (and which) channels each prunable group loses at a global ratio ``r``.

    Scores are computed once; :meth:`kept` is then cheap, and monotone: a larger ``r`` never keeps
    more channels in any group. Grouped-conv groups are not rounded (their chunks set the grid).
    With a latency-aware ``importance`` (:data:`LATENCY_IMPORTANCES`) the scores of each group are
    divided by its relative measured latency cost (``self.latency``: one
    :class:`~sweep.engine.latency.GroupLatency` per group), timed with ``latency_lut`` (a
    :class:`~sweep.engine.latency.LatencyLUT`; default: at the example batch, current threads).
    """

    def __init__(self, graph, *, importance: Any = "l2", global_pruning: bool = True,
                 round_to: int | str | None = AUTO, max_layer_ratio: float = 0.9, latency_lut: Any = None):
        import torch

        self.graph = graph
        self.global_pruning = global_pruning
        self.groups, scores = [], []
        for g in graph.groups:
            if g.size < 2:
                continue
            s = g.score(importance)
            if s is None:  # e.g. bn_scale on a group without BN: the criterion cannot rank it
                continue
            self.groups.append(g)
            scores.append(s)
        self.sizes = [g.size for g in self.groups]
        self.total = sum(self.sizes)
        self.units, self.min_keep = [], []
        for g, size in zip(self.groups, self.sizes):
            unit = rounding_unit(g.channels, round_to) if g.ch_groups == 1 else 1
            unit = min(unit, size)
            floor_keep = max(1, math.ceil(size * (1 - max_layer_ratio) - 1e-9))
            # the floor itself sits on the grid (a wide group keeps at least one multiple of 8)
            floor_keep = min(size, math.ceil(floor_keep / unit) * unit)
            self.units.append(unit)
            self.min_keep.append(floor_keep)
        self.latency = None
        if isinstance(importance, str) and importance in LATENCY_IMPORTANCES:
            from .latency import group_latencies, latency_weighted_scores

            self.latency = group_latencies(graph, self.groups, self.units, lut=latency_lut)
            scores = latency_weighted_scores(scores, self.latency)
        self.local_order = [torch.argsort(s, stable=True) for s in scores]
        if self.total:
            cat = torch.cat(scores)
            gid = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(self.sizes)])
            self._gid_sorted = gid[torch.argsort(cat, stable=True)]

    def kept(self, r: float) -> list[int]:
        """Channels (units) kept per group at ratio ``r``."""
        import torch

        if r <= 0 or not self.total:
            return list(self.sizes)
        if self.global_pruning:
            n = self.total - int(self.total * (1 - r) + 1e-9)
            removed = torch.bincount(self._gid_sorted[:n], minlength=len(self.sizes)).tolist()
        else:
            removed = [size - int(size * (1 - r) + 1e-9) for size in self.sizes]
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

    def steps(self, kept: Sequence[int]) -> list[tuple[int, int | None, int | None]]:
        """Per group ``(i, one unit less, one unit more)`` on the group's grid (None where off limits)."""
        out = []
        for i, (keep, size, unit, floor_keep) in enumerate(zip(kept, self.sizes, self.units, self.min_keep)):
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


# ------------------------------------------------------------------------------------ entry points
def prune_to_target(model, example_inputs, *, ratio: float | None = None, macs_fraction: float | None = None,
                    params_fraction: float | None = None, latency_fraction: float | None = None,
                    importance: Any = "l2", global_pruning: bool = True, round_to: int | str | None = AUTO,
                    ignored_layers: Sequence = (), keep_layers: Sequence[str] = (),
                    max_layer_ratio: float = 0.9, tolerance: float = 0.03, max_iter: int = 16,
                    latency_kw: dict | None = None, inplace: bool = True, latency_lut: Any = None):
    """Prune ``model`` to exactly one target and return ``(model, info)``.

    Targets: ``ratio`` (fraction of prunable channels removed), or the fraction of the model's current
    MACs, params or latency (measured here, on this machine) that the pruned model keeps.
    ``ignored_layers`` (modules or names) and ``keep_layers`` (names) keep their output channels, as do
    the classifier head and the layers the model declares. ``round_to``: ``"auto"`` (or 0) = multiples
    of 8 on groups >= 32 channels, none below; an int = that multiple everywhere; ``None``/1 = none.
    ``info`` holds ``target`` and ``achieved`` side by side (also flat: ``target_macs_fraction``,
    ``achieved_macs_fraction``, ...). With ``inplace=False`` the input model is left untouched.
    ``importance="l2_latency"`` (or ``"l1_latency"``) ranks by magnitude per measured latency cost
    (see the module docstring); ``latency_lut`` (a :class:`sweep.engine.latency.LatencyLUT`) sets how
    the table is timed (default: the example batch, ``latency_kw["threads"]`` or the current threads),
    and ``info["latency_ms_per_channel"]`` holds each group's cost.
    """
    from ..errors import ConfigError
    from ..measure import count_macs, count_params
    from .groups import ChannelGraph, resolve_layers

    given = {k: v for k, v in zip(TARGETS, (ratio, macs_fraction, params_fraction, latency_fraction))
             if v is not None}
    if len(given) != 1:
        raise ConfigError(f"give exactly one of {', '.join(TARGETS)}, but got "
                          f"{', '.join(f'{k}={v}' for k, v in given.items()) or 'none'}")
    (kind, value), = given.items()
    if kind == "ratio" and not 0 <= value < 1:
        raise ConfigError(f"ratio must be in [0, 1), but got ratio={value!r}")
    if kind != "ratio" and not 0 < value <= 1:
        raise ConfigError(f"{kind} must be in (0, 1], but got {kind}={value!r}")
    if not 0 < max_layer_ratio < 1:
        raise ConfigError(f"max_layer_ratio must be in (0, 1), but got max_layer_ratio={max_layer_ratio!r}")
    if importance not in IMPORTANCES + LATENCY_IMPORTANCES and isinstance(importance, str):
        raise ConfigError(f"importance must be one of {IMPORTANCES + LATENCY_IMPORTANCES}, "
                          f"but got importance={importance!r}")

    ignored = (default_ignored_layers(model) + resolve_layers(model, ignored_layers)
               + resolve_layers(model, keep_layers, "keep_layers"))
    graph = ChannelGraph(model, example_inputs, ignored_layers=ignored)
    if latency_lut is None and importance in LATENCY_IMPORTANCES:
        from .latency import LatencyLUT

        x0 = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
        latency_lut = LatencyLUT(batch=int(x0.shape[0]), threads=(latency_kw or {}).get("threads"))
    plan = ChannelPlan(graph, importance=importance, global_pruning=global_pruning, round_to=round_to,
                       max_layer_ratio=max_layer_ratio, latency_lut=latency_lut)
    macs0, params0 = count_macs(model, example_inputs), count_params(model)

    cache: dict = {}  # plan (kept counts) -> figures of its pruned copy

    def figures(kept: tuple) -> dict:
        if kept not in cache:
            cand = graph.pruned_copy(plan.selection(kept))
            fig = {"macs": count_macs(cand, example_inputs), "params": count_params(cand)}
            if kind == "latency_fraction":
                fig["latency_ms"] = _latency(cand, example_inputs, latency_kw)
            cache[kept] = fig
        return cache[kept]

    info: dict = {"target": {kind: value}, "importance": importance if isinstance(importance, str) else
                  type(importance).__name__, "global_pruning": global_pruning,
                  "round_to": AUTO if round_to in (AUTO, 0) else (round_to or 1),
                  "max_layer_ratio": max_layer_ratio, "prunable_groups": len(plan.groups)}
    if plan.latency is not None:
        info["latency_ms_per_channel"] = {c.name: c.per_unit_ms for c in plan.latency}
    full = tuple(plan.sizes)
    if kind == "ratio":
        r, kept = value, tuple(plan.kept(value))
    else:
        cache[full] = {"macs": macs0, "params": params0}
        if kind == "latency_fraction":
            cache[full]["latency_ms"] = _latency(model, example_inputs, latency_kw)
            info["baseline_latency_ms"] = cache[full]["latency_ms"]
        metric = {"macs_fraction": "macs", "params_fraction": "params", "latency_fraction": "latency_ms"}[kind]

        def fraction(k: tuple) -> float:
            return figures(k)[metric] / cache[full][metric]

        r, kept = _search(plan, fraction, value, tolerance, max_iter)
        # Along r the plans are nested (each step removes the next-ranked channel, or 8 of a wide group);
        # in a net of few groups one step can jump over the target. Moving single groups by one unit
        # around the best plan then reaches combinations the ranking alone does not. Skipped for latency
        # (each measurement is slow and noisy) and for many groups (where r's steps are fine already).
        if (kind != "latency_fraction" and len(plan.groups) <= REFINE_MAX_GROUPS
                and abs(fraction(kept) - value) > value * tolerance / 2):
            kept = _refine(plan, fraction, value, kept, tolerance / 4)
        info["evaluations"] = len(cache) - 1

    sel = plan.selection(kept)
    fig = figures(kept) if sel else {"macs": macs0, "params": params0, **(
        {"latency_ms": info["baseline_latency_ms"]} if kind == "latency_fraction" else {})}
    if inplace:
        graph.prune(sel)
        out = model
    else:
        out = graph.pruned_copy(sel)

    achieved = {"ratio": plan.removed_fraction(kept), "macs_fraction": fig["macs"] / macs0,
                "params_fraction": fig["params"] / params0}
    if kind == "latency_fraction":
        achieved["latency_fraction"] = fig["latency_ms"] / info["baseline_latency_ms"]
        info["latency_ms"] = fig["latency_ms"]
    err = abs(achieved[kind] - value) / value if value else abs(achieved[kind])
    info.update({
        "achieved": achieved, "channel_ratio": float(r),
        "within_tolerance": kind == "ratio" or err <= tolerance, "tolerance": tolerance,
        "macs": [macs0, fig["macs"]], "params": [params0, fig["params"]],
        "groups_pruned": len(sel),
    })
    info[f"target_{kind}"] = value
    for k, v in achieved.items():
        info[f"achieved_{k}"] = v
    return out, info


def _latency(model, example_inputs, latency_kw: dict | None) -> float:
    from ..measure import measure_latency

    kw = {**SEARCH_LATENCY, **(latency_kw or {})}
    x = example_inputs
    return measure_latency(model, tuple(x.shape[1:]), batch=int(x.shape[0]), **kw).median_ms


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
                   global_pruning: bool = True, ignored_layers: Sequence = (), round_to: int | str | None = None,
                   max_layer_ratio: float = 0.9):
    """Remove ``ratio`` of the prunable channels in place and return the model.

    ``max_layer_ratio`` stops global pruning from emptying a layer (a zero-width layer breaks the net).
    ``round_to=None`` does not round (see :func:`prune_to_target` for ``"auto"``).
    """
    if ratio <= 0:
        return model
    model, _ = prune_to_target(model, example_inputs, ratio=ratio, importance=importance,
                               global_pruning=global_pruning, ignored_layers=ignored_layers,
                               round_to=round_to, max_layer_ratio=max_layer_ratio)
    return model


def prune_to_macs(model, example_inputs, *, macs_fraction: float, tolerance: float = 0.02,
                  max_iter: int = 16, **kw):
    """Prune a copy so that MACs land at ``macs_fraction`` of the model's current MACs.

    Returns ``(pruned_copy, info)`` with target and achieved fractions side by side; ``model`` itself
    is left as it is. ``kw`` as for :func:`prune_to_target` (``round_to`` defaults to no rounding).
    """
    kw.setdefault("round_to", None)
    return prune_to_target(model, example_inputs, macs_fraction=macs_fraction, tolerance=tolerance,
                           max_iter=max_iter, inplace=False, **kw)


def channel_counts(model) -> dict:
    """Output channels / features of every conv and linear layer (recorded with a trial)."""
    import torch.nn as nn

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out
