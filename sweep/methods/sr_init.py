"""``sr_init``: layer (residual-block) pruning by stochastic re-initialisation.

Tang, Lu & Xuan, "SR-init: An Interpretable Layer Pruning Method", ICASSP 2023, arXiv 2303.07677.

Known from the authors' public code: the scored unit is one whole
residual block.  For each block b the trained model's block b is replaced by a randomly initialised
copy — Kaiming-normal conv/linear weights, BatchNorm γ=1, β=0, running mean 0, running var 1, a fixed
seed — and top-1 accuracy A_b is measured in eval mode with no training; the importance is
Δ_b = A_0 − A_b.  Blocks with Δ_b ≤ τ are removed physically (the first block of every stage is always
kept), the surviving blocks keep their weights, and the shallower net is fine-tuned (here by the trial
runner, after :func:`prune` returns).  The authors' thresholds, as accuracy fractions: τ = 0.60
(ResNet-56 / CIFAR-10), 0.6185 (ResNet-56 / CIFAR-100), 0.50 (ResNet-50 / ImageNet).

Our design (not the paper's): Δ_b is measured on the **validation** split (``ctx.evaluate``; the
authors used the test set), optionally averaged over ``seeds`` re-initialisations; every block whose
shortcut is the identity can be removed (:mod:`sweep.engine.depth`), not only ResNet blocks;
``max_removed`` caps the removals (lowest Δ first) and ``channel_ratio`` adds a width-pruning step
after the depth surgery, so one trial can prune depth then width.  Blocks that cannot be removed are
still scored, so the per-block bar chart of the report is complete.
"""

from __future__ import annotations

import math

from ..errors import TrialFailure
from .base import Knob, MethodConfig, PruneContext, PruneResult, register_method

# Thresholds of Tang et al. 2023 (authors' code / paper), accuracy as a fraction.
PAPER_TAU = {"resnet56-cifar10": 0.60, "resnet56-cifar100": 0.6185, "resnet50-imagenet": 0.50}
_EPS = 1e-9  # Δ ≤ τ compared with a tolerance: accuracies are ratios of counts


def _preflight(model, example_inputs) -> None:
    """Before a sweep: SR-init needs at least one removable residual block."""
    from ..engine.depth import removable_blocks
    from ..errors import ConfigError

    if not removable_blocks(model, example_inputs):
        raise ConfigError(f"method sr_init needs residual blocks with an identity shortcut, but model "
                          f"{type(model).__name__} has none; see sweep/engine/depth.py for the rule")


@register_method(
    "sr_init",
    preflight=_preflight,
    needs_labels=False,  # scores through ctx.evaluate: agreement with the teacher in label-free sweeps
    summary="SR-init layer pruning (Tang et al. 2023): remove residual blocks whose random "
            "re-initialisation costs at most tau validation accuracy",
    knobs=[
        Knob("tau", "float", PAPER_TAU["resnet56-cifar10"], low=0.0, high=1.0, flag=True,
             help="remove blocks with accuracy drop <= tau (fraction); paper: 0.60 ResNet-56/CIFAR-10, "
                  "0.6185 ResNet-56/CIFAR-100, 0.50 ResNet-50/ImageNet"),
        Knob("seeds", "int", 1, low=1, high=10, help="random re-initialisations averaged per block"),
        Knob("max_removed", "int", None, low=1, optional=True,
             help="remove at most this many blocks (lowest accuracy drop first)"),
        Knob("channel_ratio", "float", 0.0, low=0.0, high=1.0, high_open=True,
             help="after the depth surgery, prune this fraction of channels (magnitude L2); 0 = depth only"),
        Knob("remove_blocks", "ints", None, optional=True, flag=True,
             help="remove exactly these residual blocks (0-based over all blocks, e.g. 1,8,17) instead of "
                  "scoring them: tau and seeds are not used, no data is read"),
    ],
)
def prune(model, example_inputs, cfg: MethodConfig, ctx: PruneContext) -> PruneResult:
    from ..engine.channels import prune_channels
    from ..engine.depth import removable_blocks, remove_blocks, stage_depths
    from ..measure import count_macs, count_params

    refs = removable_blocks(model, example_inputs)
    if not any(r.removable for r in refs):
        found = (f"{len(refs)} residual blocks, none removable ({refs[0].reason}, ...)" if refs
                 else "no residual blocks")
        raise TrialFailure(
            f"sr_init needs residual blocks with an identity shortcut inside nn.Sequential stages, but "
            f"model {type(model).__name__} has {found}; see sweep/engine/depth.py for the rule")

    params0, macs0 = count_params(model), count_macs(model, example_inputs)
    depths0 = stage_depths(model)
    if cfg.remove_blocks is not None:  # the user chose the blocks: nothing to score
        acc0, deltas, accs = math.nan, {r.index: math.nan for r in refs}, {r.index: [] for r in refs}
        removed = sorted(cfg.remove_blocks)
    else:
        acc0, deltas, accs = _score_blocks(model, refs, cfg, ctx)
        chosen = sorted((r for r in refs if r.removable and deltas[r.index] <= cfg.tau + _EPS),
                        key=lambda r: (deltas[r.index], r.index))
        if cfg.max_removed is not None:
            chosen = chosen[: cfg.max_removed]
        removed = sorted(r.index for r in chosen)
    remove_blocks(model, removed, example_inputs)
    params1, macs1 = count_params(model), count_macs(model, example_inputs)
    depths1 = stage_depths(model)

    if cfg.channel_ratio > 0:
        present = {id(m) for m in model.modules()}
        # the context's final list, less the layers of removed blocks (unset: the engine's skipped_layers)
        ignored = [m for m in ctx.ignored_layers or () if id(m) in present] or None
        prune_channels(model, example_inputs, ratio=cfg.channel_ratio, ignored_layers=ignored)

    blocks = [{"index": r.index, "name": r.name, "stage": r.stage, "removable": r.removable,
               "reason": r.reason, "delta": _finite(deltas[r.index]),
               "accuracy": [_finite(a) for a in accs[r.index]], "removed": r.index in removed}
              for r in refs]
    info = {
        "tau": cfg.tau, "seeds": cfg.seeds, "max_removed": cfg.max_removed,
        "blocks_title": "SR-init block importance (accuracy drop when the block is re-initialised)",
        "channel_ratio": cfg.channel_ratio, "base_accuracy": _finite(acc0),
        "blocks": blocks, "removed": removed,
        "stage_depths_before": depths0, "stage_depths_after": depths1,
        "params_before": params0, "params_after_depth": params1, "params_after": count_params(model),
        "macs_before": macs0, "macs_after_depth": macs1,
    }
    if cfg.channel_ratio > 0:
        info["macs_after"] = count_macs(model, example_inputs)
    else:
        info["macs_after"] = macs1
    return PruneResult(model=model, info=info, finetuned=False)


def _score_blocks(model, refs, cfg: MethodConfig, ctx: PruneContext):
    """(A_0, {block: Δ_b}, {block: [A_b per seed]}): each block re-initialised in turn, then restored."""
    was_training = model.training
    acc0 = float(ctx.evaluate(model))
    modules = dict(model.named_modules())
    deltas: dict[int, float] = {}
    accs: dict[int, list[float]] = {}
    for r in refs:
        block = modules[r.name]
        saved = {k: v.detach().clone() for k, v in block.state_dict().items()}
        accs[r.index] = []
        try:
            for s in range(cfg.seeds):
                reinit_block(block, _seed(ctx.seed, r.index, s))
                a = float(ctx.evaluate(model))
                accs[r.index].append(a)
                ctx.log_metric(f"accuracy_block_{r.index}", a, s)
        finally:
            block.load_state_dict(saved)
        deltas[r.index] = acc0 - sum(accs[r.index]) / len(accs[r.index])
        ctx.log_metric("delta", deltas[r.index], r.index)
    model.train(was_training)
    return acc0, deltas, accs


def _seed(seed: int, block: int, rep: int) -> int:
    """One seed per (trial seed, block, repetition), independent of which other blocks exist."""
    return (int(seed) * 1_000_003 + block * 10_007 + rep) % (2**63 - 1)


def _finite(x: float):
    return x if math.isfinite(x) else None


def reinit_block(block, seed: int) -> None:
    """Re-initialise ``block`` in place as SR-init does (seeded, device-independent): Kaiming-normal
    conv/linear weights, zero biases, BatchNorm γ=1, β=0, mean 0, var 1 (:mod:`sweep.engine.reinit`)."""
    from ..engine.reinit import reinit_

    reinit_(block, seed)

