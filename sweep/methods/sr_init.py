"""``sr_init``: layer (residual-block) pruning by stochastic re-initialisation.

Tang, Lu & Xuan, "SR-init: An Interpretable Layer Pruning Method", ICASSP 2023, arXiv 2303.07677.

Known from the authors' public code: the scored unit is one whole
residual block.  For each block b the trained model's block b is replaced by a randomly initialised
copy — Kaiming-normal conv/linear weights, BatchNorm γ=1, β=0, running mean 0, running var 1, a fixed
seed — and top-1 accuracy A_b is measured in eval mode with no training; the importance is
Δ_b = A_0 − A_b.  Blocks with Δ_b ≤ τ are removed physically (the first block of every stage is always
kept), the surviving blocks keep their weights, and the shallower net is fine-tuned.  The authors'
thresholds, as accuracy fractions: τ = 0.60 (ResNet-56 / CIFAR-10), 0.6185 (ResNet-56 / CIFAR-100),
0.50 (ResNet-50 / ImageNet).  Their fine-tuning (``recipe="authors"``, :data:`AUTHORS_RECIPE`): plain
SGD, momentum 0.9, lr 0.01, weight decay 5e-3, batch 256, a cosine schedule, and the checkpoint of the
epoch with the best validation top-1 kept (a later epoch must be strictly better).

Our design (not the paper's): Δ_b is measured on the **validation** split (``ctx.evaluate``; the
authors used the test set), optionally averaged over ``seeds`` re-initialisations; every block whose
shortcut is the identity can be removed (:mod:`sweep.engine.depth`), not only ResNet blocks;
``max_removed`` caps the removals (lowest Δ first) and ``channel_ratio`` adds a width-pruning step
after the depth surgery, so one trial can prune depth then width.  Blocks that cannot be removed are
still scored, so the per-block bar chart of the report is complete.

``macs_fraction`` (ours): the pruned model keeps that fraction of the input model's MACs, within
:data:`~sweep.engine.channels.TOLERANCE` (3 %) where channel granularity allows, so that SR-init can be
compared with other methods at matched compression.  The blocks the rule chose (Δ_b ≤ τ, at most
``max_removed``; or ``remove_blocks`` in the order given) are removed in ascending Δ order while the MACs
are above the target, and a block whose removal would take them more than the tolerance below it stops
the removals (it and every later block stay: the removed set is always a prefix of the Δ order).  If
the blocks alone leave the MACs more than the tolerance above the target, the engine's magnitude solver
(:func:`sweep.engine.channels.prune_to_target`, L2 group norms, the engine's rounding) removes channels
down to the remaining fraction.  ``info`` records the order tried, the blocks removed and held back,
the MACs after the blocks (``macs_after_depth``) and after the channels (``macs_after``), the solver's
record (``channel_step``) and whether the target was met (``target_reached``).

``reconstruct`` (ours, on by default): after the surgery and before any fine-tuning, every conv / linear
layer of the pruned network is re-fitted in closed form so that its outputs on ``recon_batches`` unlabeled
training batches match the unpruned network's outputs of the same layer (at the kept channels): the
least-squares reconstruction of He et al., ICCV 2017, §3.1 / ThiNet, ICCV 2017, §3.3, with the network
before the surgery as the target (:mod:`sweep.engine.reconstruct`, ``layers="all"``: removing a block changes
the inputs of every later layer, not only their widths).  Layers are matched through the names they had
before the blocks were removed; ``info["layer_reconstruction"]`` lists the re-fitted layers and their
relative errors before and after.  Label-free (only inputs are read).  Measured with
``bench/methods_matched.py`` (ResNet-20 on Fashion-MNIST, 3 seeds, 2 epochs of fine-tuning): test accuracy
0.897 -> 0.916 at 2x fewer MACs and 0.863 -> 0.896 at 4x, against magnitude pruning's 0.913 and 0.887.

``recipe="authors"`` fine-tunes inside :func:`prune` (the runner then does not): the authors'
hyper-parameters for the sweep's fine-tune epochs (``ctx.finetune_config.epochs``) through the one
training loop (``ctx.finetune`` with ``keep_best=ctx.evaluate``), keeping the weights of the epoch with
the best validation quality (ties keep the earlier epoch).  Where the sweep differs from their code
(ours): the sweep's loader and batch size, a cosine decay per step to 0 (theirs: per epoch, with a 1e-5
floor), quality by ``ctx.evaluate`` on the validation split (theirs: the test set), and distillation
from the teacher instead of cross-entropy in label-free sweeps.  ``recipe="sweep"`` (default) leaves
fine-tuning to the runner, with the sweep's settings.
"""

from __future__ import annotations

import copy
import inspect
import math

from ..errors import TrialFailure
from .base import Knob, MethodConfig, PruneContext, PruneResult, register_method

# Thresholds of Tang et al. 2023 (authors' code / paper), accuracy as a fraction.
PAPER_TAU = {"resnet56-cifar10": 0.60, "resnet56-cifar100": 0.6185, "resnet50-imagenet": 0.50}
_EPS = 1e-9  # Δ ≤ τ compared with a tolerance: accuracies are ratios of counts

# Fine-tuning of Tang et al. 2023, from the authors' public code (SRinit/args.py defaults: lr 0.01,
# momentum 0.9, weight_decay 0.005, batch_size 256; SRinit/train.py: torch.optim.SGD without Nesterov,
# a cosine schedule, the checkpoint of the best validation top-1 kept). Batch 256 is theirs too; the
# sweep's loader is kept.
AUTHORS_RECIPE = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-3, "nesterov": False}
AUTHORS_BATCH_SIZE = 256  # recorded in info only
RECIPES = ("sweep", "authors")


def _preflight(model, example_inputs, space: dict) -> None:
    """Before a sweep: SR-init needs at least one removable residual block, and a ``remove_blocks`` the space
    fixes must name removable blocks of this model (else every trial of it would fail)."""
    from ..engine.depth import blocks_to_remove, removable_blocks
    from ..errors import ConfigError

    refs = removable_blocks(model, example_inputs)
    if not refs:
        raise ConfigError(f"method sr_init needs residual blocks with an identity shortcut, but model "
                          f"{type(model).__name__} has none; see sweep/engine/depth.py for the rule")
    blocks = (space.get("remove_blocks") or {}).get("fixed")  # a list knob is fixed, never searched
    if blocks is not None:
        try:
            blocks_to_remove(refs, blocks)
        except ConfigError as e:
            raise ConfigError(f"{e} (remove_blocks={list(blocks)})") from None


@register_method(
    "sr_init",
    preflight=_preflight,
    exclusive=[("macs_fraction", "channel_ratio")],
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
                  "scoring them: tau and seeds are not used, no data is read; with macs_fraction, in this "
                  "order until the target"),
        Knob("macs_fraction", "float", None, low=0.0, high=1.0, low_open=True, optional=True, flag=True,
             help="MACs kept as a fraction of the input's (within 3 %): blocks by delta, then channels"),
        Knob("recipe", "categorical", "sweep", choices=RECIPES,
             help="fine-tuning: the sweep's (by the runner) or the authors' (SGD lr 0.01, wd 5e-3, best epoch)"),
        Knob("reconstruct", "bool", True,
             help="after the surgery, re-fit every conv / linear layer to the unpruned network's outputs of "
                  "the same layer on unlabeled inputs (least squares), before fine-tuning"),
        Knob("recon_batches", "int", 4, low=1, high=200,
             help="unlabeled training batches the layer-wise reconstruction is fitted on"),
    ],
)
def prune(model, example_inputs, cfg: MethodConfig, ctx: PruneContext) -> PruneResult:
    from ..engine.channels import TOLERANCE, channel_counts, prune_channels, prune_to_target
    from ..engine.depth import blocks_towards, module_names, removable_blocks, remove_blocks, stage_depths
    from ..measure import count_macs, count_params

    refs = removable_blocks(model, example_inputs)
    if not any(r.removable for r in refs):
        found = (f"{len(refs)} residual blocks, none removable ({refs[0].reason}, ...)" if refs
                 else "no residual blocks")
        raise TrialFailure(
            f"sr_init needs residual blocks with an identity shortcut inside nn.Sequential stages, but "
            f"model {type(model).__name__} has {found}; see sweep/engine/depth.py for the rule")
    if cfg.recipe == "authors":
        _check_recipe_context(ctx)

    params0, macs0 = count_params(model), count_macs(model, example_inputs)
    depths0 = stage_depths(model)
    if cfg.remove_blocks is not None:  # the user chose the blocks: nothing to score
        acc0, deltas, accs = math.nan, {r.index: math.nan for r in refs}, {r.index: [] for r in refs}
        order = list(dict.fromkeys(cfg.remove_blocks))  # the order given (a target may stop it early)
    else:
        acc0, deltas, accs = _score_blocks(model, refs, cfg, ctx)
        chosen = sorted((r for r in refs if r.removable and deltas[r.index] <= cfg.tau + _EPS),
                        key=lambda r: (deltas[r.index], r.index))
        if cfg.max_removed is not None:
            chosen = chosen[: cfg.max_removed]
        order = [r.index for r in chosen]
    target = None if cfg.macs_fraction is None else cfg.macs_fraction * macs0
    trail: list[dict] = []
    if target is None:
        taken = order
    else:
        taken, trail = blocks_towards(model, example_inputs, refs, order, target, TOLERANCE)
    removed = sorted(taken)
    names = module_names(model)  # widths are recorded by these names: remove_blocks renumbers a stage
    teacher = copy.deepcopy(model) if cfg.reconstruct else None  # the unpruned network, for the re-fit
    remove_blocks(model, removed, example_inputs)
    params1, macs1 = count_params(model), count_macs(model, example_inputs)
    depths1 = stage_depths(model)

    present = {id(m) for m in model.modules()}
    # the context's final list, less the layers of removed blocks (unset: the engine's skipped_layers)
    ignored = [m for m in ctx.ignored_layers or () if id(m) in present] or None
    channel_step = None
    kept: dict = {}  # the channel step's kept channels, by the names after the depth surgery
    if target is not None and macs1 > target * (1 + TOLERANCE):
        _, solved = prune_to_target(model, example_inputs, macs_fraction=target / macs1,
                                    ignored_layers=ignored, kept=kept)
        channel_step = {k: solved[k] for k in ("target", "achieved", "within_tolerance", "channel_ratio",
                                               "groups_pruned", "prunable_groups", "round_to")}
    elif cfg.channel_ratio > 0:
        prune_channels(model, example_inputs, ratio=cfg.channel_ratio, ignored_layers=ignored, kept=kept)
    macs2 = count_macs(model, example_inputs) if (channel_step or cfg.channel_ratio > 0) else macs1

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
        "macs_before": macs0, "macs_after_depth": macs1, "macs_after": macs2,
        "channels": channel_counts(model, names), "recipe": cfg.recipe, "macs_fraction": cfg.macs_fraction,
    }
    if target is not None:
        achieved = macs2 / macs0
        info.update({
            "target_macs": target, "tolerance": TOLERANCE, "blocks_order": order,
            "blocks_held_back": [b for b in order if b not in taken], "blocks_trail": trail,
            "macs_fraction_after_depth": macs1 / macs0, "achieved_macs_fraction": achieved,
            "target_reached": abs(achieved - cfg.macs_fraction) <= cfg.macs_fraction * TOLERANCE,
            "channel_step": channel_step})
    if teacher is not None:
        info["layer_reconstruction"] = _reconstruct(model, teacher, names, kept, cfg, ctx)
    if cfg.recipe == "authors":
        info.update(_authors_finetune(model, ctx, example_inputs.device))
        return PruneResult(model=model, info=info, finetuned=True)
    return PruneResult(model=model, info=info, finetuned=False)


def _reconstruct(model, teacher, names: dict, kept: dict, cfg: MethodConfig, ctx: PruneContext) -> dict:
    """Re-fit every conv / linear layer of the pruned ``model`` to the same layer of ``teacher`` (the network
    before the surgery) on ``recon_batches`` unlabeled training batches (:mod:`sweep.engine.reconstruct`,
    ``layers="all"``: removing a block changes the inputs of every later layer, not only their widths).
    ``names``: ``{id(module): name in the teacher}``, taken before the blocks were removed."""
    from ..engine.reconstruct import refit_after_surgery
    from .context import calibration_batches

    batches = calibration_batches(ctx, cfg.recon_batches, "sr_init reconstruct=true")
    return refit_after_surgery(model, teacher, names, kept, batches, seed=ctx.seed, device=ctx.device).info()


_RECIPE_KWARGS = ("epochs", "keep_best", *AUTHORS_RECIPE)


def _check_recipe_context(ctx: PruneContext) -> None:
    """Before any work: recipe "authors" needs the sweep's epochs and a ``ctx.finetune`` that takes the
    recipe's overrides and ``keep_best`` (what :func:`sweep.methods.context.build_context` gives)."""
    if getattr(ctx.finetune_config, "epochs", None) is None:
        raise TrialFailure("sr_init recipe='authors' must know the sweep's fine-tune epochs, but got "
                           "ctx.finetune_config=None (build the context with build_context)")
    try:
        params = inspect.signature(ctx.finetune).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    missing = [k for k in _RECIPE_KWARGS if k not in params]
    if missing:
        raise TrialFailure(f"sr_init recipe='authors' must have a ctx.finetune that takes {', '.join(_RECIPE_KWARGS)}, "
                           f"but got one without {', '.join(missing)} (build the context with build_context)")


def _authors_finetune(model, ctx: PruneContext, home) -> dict:
    """Fine-tune with :data:`AUTHORS_RECIPE` for the sweep's epochs, keeping the best epoch's weights
    (``ctx.evaluate``; ties keep the earlier epoch). Returns the ``info`` entries."""
    from ..train import best_epoch

    epochs = int(ctx.finetune_config.epochs)
    qualities: list[float] = []

    def quality(m) -> float:
        q = float(ctx.evaluate(m))
        ctx.log_metric("finetune_quality", q, len(qualities))
        qualities.append(q)
        return q

    if epochs > 0:
        ctx.finetune(model, epochs=epochs, keep_best=quality, **AUTHORS_RECIPE)
    model.to(home).eval()
    best = best_epoch(qualities)
    return {"epochs": epochs, "recipe_hp": {**AUTHORS_RECIPE, "schedule": "cosine",
                                            "paper_batch_size": AUTHORS_BATCH_SIZE},
            "epoch_quality": [_finite(q) for q in qualities],
            "best_epoch": None if best is None else best + 1,  # 1-based: the epoch whose weights were kept
            "best_quality": None if best is None else qualities[best]}


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

