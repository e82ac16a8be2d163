"""Depth and width together: how much of a MACs cut to take as whole residual blocks, decided by the
latency the deployment runtime measures.

Channel pruning alone cannot make every net faster in proportion to its MACs: a runtime that blocks
channels by its vector width (ONNX Runtime's NCHWc kernels: 16 on AVX-512) gains nothing from a
16-channel stage cut to 8, so on a CIFAR ResNet-56 (stages of 16, 32 and 64 channels) the other stages
must go much further and half the MACs buy only ~1.2x latency at batch 16. Removing whole blocks
removes whole kernels and their fixed costs. Which mix pays is a property of the net, the runtime and
the batch, so it is measured, not assumed.

Convention (ours, not from a paper): at a MACs target ``f`` (fraction kept), a plan of depth share ``s``
removes the lowest-scored removable residual blocks (:mod:`sweep.engine.depth`) while they take at
most ``s`` of the MACs to remove (``(1 - f)`` of the model's), then the engine's channel solver
(:func:`sweep.engine.channels.prune_to_target`, with the caller's importance, rounding and latency
table) removes channels down to ``f``. The shares :data:`DEPTH_SHARES` are built on copies and timed
side by side, interleaved (:func:`sweep.measure.compare_latency`), on the runtime, batch and threads of
``latency_kw``; the fastest plan wins, but a plan with blocks removed must beat the channel-only plan
(share 0) by more than :data:`MIN_GAIN`, so that timing noise never trades width for depth. A net without
removable blocks gets the channel-only plan and no timing.

Block order (ours): blocks are ranked as the latency-aware channel criterion ranks channels at a MACs
target, by score per latency per MAC (:func:`block_order`). The score is the mean absolute scale
(``|γ|``) of the last BatchNorm inside the block, i.e. of the last layer of its residual branch (a
removable block's shortcut is the identity, so the block's last BatchNorm is the branch's): the size of
what the block adds to its input, read from the weights alone like the channel magnitudes; a block
without BatchNorm is scored by the mean absolute weight of its last conv or linear layer. The latency
per MAC is the block's own forward timed alone on the runtime at its input shape (blocks of equal type,
shapes and input are timed once), so that, at equal scores, the blocks the runtime runs least
efficiently go first: on a CIFAR ResNet-56 at batch 16 on ONNX Runtime, removing the 16-channel stage's
blocks first gave 1.07 speed-up efficiency where the 64-channel stage's gave 0.93. Ties go to the deeper
block first.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

# depth shares of the MACs cut tried at a MACs target: channel-only, a quarter ... all by blocks
DEPTH_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
# a plan with blocks removed replaces the channel-only one only when it is this much faster (relative)
MIN_GAIN = 0.03
# side-by-side timing of the candidate plans (sweep.measure.compare_latency)
PLAN_TIMING = {"warmup": 5, "repeats": 60, "rounds": 6}
# one removable block timed alone (sweep.measure.measure_latency), for the block order
BLOCK_TIMING = {"warmup": 5, "repeats": 30}


def block_score(block) -> float:
    """The module docstring's block score: mean ``|γ|`` of the block's last BatchNorm (else mean absolute
    weight of its last conv / linear layer; 0.0 when it has neither)."""
    import torch.nn as nn

    mods = list(block.modules())
    bns = [m for m in mods if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if bns:
        return float(bns[-1].weight.detach().abs().mean())
    layers = [m for m in mods if isinstance(m, (nn.Conv2d, nn.Linear))]
    return float(layers[-1].weight.detach().abs().mean()) if layers else 0.0


def block_ms_per_mac(model, refs, example_inputs, latency_kw: dict | None = None) -> dict:
    """``{block index: ms per MAC}`` of every removable block of ``refs``, each timed alone at its traced
    input shape on ``latency_kw``'s runtime, batch and threads (blocks of equal type, parameter shapes and
    input shape are timed once)."""
    import torch

    from ..measure import count_macs, measure_latency

    kw = dict(latency_kw or {})
    batch = int(kw.get("batch") or example_inputs.shape[0])
    modules = dict(model.named_modules())
    same: dict[tuple, list] = {}  # kind of block -> the refs of that kind
    for r in refs:
        if r.removable and r.in_shape is not None:
            block = modules[r.name]
            sig = (type(block).__name__, tuple(r.in_shape[1:]), tuple(tuple(p.shape) for p in block.parameters()))
            same.setdefault(sig, []).append(r)
    out: dict[int, float] = {}
    with torch.random.fork_rng(devices=[]):
        for (_, shape, _), kind in same.items():
            block = modules[kind[0].name]
            macs = count_macs(block, torch.zeros(1, *shape, dtype=example_inputs.dtype,
                                                 device=example_inputs.device))
            # a copy: timing moves a module to the timing device, and this one belongs to the caller's model
            ms = measure_latency(copy.deepcopy(block), shape, batch=batch, threads=kw.get("threads"),
                                 runtime=kw.get("runtime"), **BLOCK_TIMING).median_ms
            for r in kind:
                out[r.index] = ms / max(macs * batch, 1)
    return out


def block_ranks(model, refs, ms_per_mac: dict | None = None) -> dict[int, float]:
    """``{block index: rank score}`` of the removable blocks of ``refs``: :func:`block_score` divided by the
    block's latency per MAC relative to the mean over the blocks (``ms_per_mac`` from
    :func:`block_ms_per_mac`; without it, the score alone). Lowest goes first."""
    modules = dict(model.named_modules())
    cost = ms_per_mac or {}
    mean = sum(cost.values()) / len(cost) if cost else 1.0
    out = {}
    for r in refs:
        if r.removable:
            per = cost.get(r.index, mean) / mean if mean > 0 else 1.0
            out[r.index] = block_score(modules[r.name]) / per if per > 0 else float("inf")
    return out


def block_order(model, refs, ms_per_mac: dict | None = None) -> list[int]:
    """Indices of the removable blocks of ``refs``, lowest :func:`block_ranks` first; ties: deeper first."""
    return _lowest_first(block_ranks(model, refs, ms_per_mac))


def _lowest_first(ranks: dict[int, float]) -> list[int]:
    return sorted(ranks, key=lambda i: (ranks[i], -i))


def fastest_plan(candidates: Sequence[dict], min_gain: float = MIN_GAIN) -> dict:
    """The plan to keep among ``candidates`` (dicts with ``blocks`` and ``latency_ms``; the first is the
    channel-only plan): the fastest, unless it removes blocks and is not faster than the first by more
    than ``min_gain`` (relative). A single candidate is kept untimed."""
    first = candidates[0]
    if len(candidates) == 1:
        return first
    best = min(candidates, key=lambda c: c["latency_ms"])
    if best["blocks"] and best["latency_ms"] > first["latency_ms"] * (1 - min_gain):
        return first
    return best


def prune_depth_and_width(model, example_inputs, *, macs_fraction: float, latency_kw: dict | None = None,
                          shares: Sequence[float] = DEPTH_SHARES, ignored_layers: Sequence | None = None,
                          **channel_kw: Any):
    """A pruned copy of ``model`` at ``macs_fraction`` of its MACs, cut by the fastest mix of block and
    channel removal (see the module docstring): ``(pruned, info)``; ``model`` is left as it was.

    ``channel_kw`` go to :func:`sweep.engine.channels.prune_to_target` (importance, rounding, ...);
    ``latency_kw`` (``runtime``, ``batch``, ``threads``) says where plans are timed, as for the channel
    solver's latency table. ``info`` is the chosen plan's channel record (its ``achieved`` figures are of
    the whole cut, against the model as given), plus ``depth``: the block scores, every candidate
    (share, blocks removed, MACs fraction, latency) and the chosen share; ``channels`` (widths keyed by
    the layer names of the model as given: a stage's remaining blocks are renumbered), ``removed`` and
    ``blocks`` (every residual block, as SR-init records them).
    """
    import torch

    from ..errors import ConfigError
    from ..measure import compare_latency, count_macs, count_params
    from .channels import TOLERANCE, channel_counts, check_target, prune_to_target
    from .depth import blocks_towards, module_names, removable_blocks, remove_blocks

    check_target("macs_fraction", macs_fraction)
    if not shares or any(not 0 <= s <= 1 for s in shares):
        raise ConfigError(f"depth shares must be in [0, 1], but got shares={list(shares)!r}")
    shares = sorted(set(float(s) for s in shares) | {0.0})
    macs0, params0 = count_macs(model, example_inputs), count_params(model)
    target = macs_fraction * macs0
    refs = removable_blocks(model, example_inputs)
    per_mac = block_ms_per_mac(model, refs, example_inputs, latency_kw) if any(r.removable for r in refs) else {}
    ranks = block_ranks(model, refs, per_mac)
    order = _lowest_first(ranks)
    names = {r.index: r.name for r in refs}
    modules = dict(model.named_modules())

    candidates: list[dict] = []
    seen: set[tuple] = set()
    for share in shares if order else [0.0]:
        depth_target = macs0 - share * (macs0 - target)
        taken, _ = blocks_towards(model, example_inputs, refs, order, depth_target, TOLERANCE) if share else ([], [])
        key = tuple(sorted(taken))
        if key in seen:
            continue
        seen.add(key)
        cand = copy.deepcopy(model)
        before = module_names(cand)  # the copy's modules by their names in the model as given
        ignored = _ignored_in(cand, model, ignored_layers)  # by name before remove_blocks renumbers a stage
        remove_blocks(cand, key, example_inputs)
        if ignored is not None:
            present = {id(m) for m in cand.modules()}
            ignored = [m for m in ignored if id(m) in present]
        macs1 = count_macs(cand, example_inputs)
        info: dict = {}
        if macs1 > target * (1 + TOLERANCE):
            cand, info = prune_to_target(cand, example_inputs, macs_fraction=target / macs1,
                                         latency_kw=latency_kw, ignored_layers=ignored, **channel_kw)
        candidates.append({"share": share, "blocks": list(key), "model": cand, "info": info, "names": before,
                           "macs_fraction": count_macs(cand, example_inputs) / macs0})

    if len(candidates) > 1:
        kw = dict(latency_kw or {})
        x0 = example_inputs
        with torch.random.fork_rng(devices=[]):
            lats = compare_latency([c["model"] for c in candidates], tuple(x0.shape[1:]),
                                   batch=int(kw.get("batch") or x0.shape[0]), threads=kw.get("threads"),
                                   runtime=kw.get("runtime"), **PLAN_TIMING)
        for c, lat in zip(candidates, lats):
            c["latency_ms"] = lat.median_ms
            c["latency_iqr_ms"] = lat.iqr_ms
    chosen = fastest_plan(candidates)

    pruned = chosen["model"].to(example_inputs.device)  # timing ran the plans on the CPU
    macs, params = count_macs(pruned, example_inputs), count_params(pruned)
    info = dict(chosen["info"])
    achieved = {**info.get("achieved", {}), "macs_fraction": macs / macs0, "params_fraction": params / params0}
    info.update({
        "achieved": achieved, "achieved_macs_fraction": achieved["macs_fraction"],
        "achieved_params_fraction": achieved["params_fraction"], "macs": [macs0, macs], "params": [params0, params],
        "target_macs_fraction": macs_fraction,
        # widths by the input model's layer names, and the blocks removed, as the report reads them
        "channels": channel_counts(pruned, chosen["names"]), "removed": list(chosen["blocks"]),
        "blocks": [{"index": r.index, "name": r.name, "removable": r.removable, "removed": r.index in chosen["blocks"],
                    "delta": ranks.get(r.index)} for r in refs],
        "blocks_title": "Block rank: BN |\u03b3| / latency per MAC",
        "blocks_ylabel": "rank score",
        "within_tolerance": abs(achieved["macs_fraction"] - macs_fraction) <= macs_fraction * TOLERANCE,
        "depth": {"block_scores": {names[i]: block_score(modules[names[i]]) for i in order},
                  "block_ms_per_mmac": {names[i]: per_mac[i] * 1e6 for i in order if i in per_mac},
                  "candidates": [{k: c.get(k) for k in ("share", "macs_fraction", "latency_ms", "latency_iqr_ms")}
                                 | {"blocks": [names[i] for i in c["blocks"]]} for c in candidates],
                  "share": chosen["share"], "blocks_removed": [names[i] for i in chosen["blocks"]],
                  "min_gain": MIN_GAIN}})
    return pruned, info


def _ignored_in(cand, model, ignored_layers: Sequence | None) -> list | None:
    """``ignored_layers`` (modules of ``model`` or names) as the modules of its fresh copy ``cand``; None
    stays None (the channel solver's own default)."""
    from .depth import module_names

    if ignored_layers is None:
        return None
    name_of = module_names(model)
    in_cand = dict(cand.named_modules())
    wanted = (m if isinstance(m, str) else name_of.get(id(m)) for m in ignored_layers)
    return [in_cand[n] for n in wanted if n is not None and n in in_cand]
