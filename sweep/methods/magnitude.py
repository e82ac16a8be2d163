"""``magnitude``: group magnitude channel pruning to a channel ratio, or a MACs / params / latency target.

The baseline method of every sweep: each coupled channel group is scored by the norm of its weights
(summed over the group, Torch-Pruning's ``GroupMagnitudeImportance``), and the lowest-scoring channels
are removed across the whole network until the ratio or the target is reached
(:func:`sweep.engine.channels.prune_to_target`: the target is hit within 3 % where channel granularity
allows; the latency target is measured on this machine while pruning).

``stage_ratios`` replaces the one global ratio by one ratio per depth stage (the engine's depth bins of
the prunable groups; Liu et al., ICLR 2019, and EagleEye, ECCV 2020, on why which layers are cut matters
more than how many). Alone, each stage loses its ratio; with a MACs / params / latency fraction the
ratios are the stages' relative weights and one scale is searched to meet the target. A space searches
it as ``stage_ratios: {stages: 4, low: 0.0, high: 0.8}``, which samples ``stage_ratio_0`` ... ``_3``.

``depth: true`` (with ``macs_fraction``) lets the cut take whole residual blocks as well as channels: plans
that take 0, 1/4 ... all of the MACs cut as blocks (lowest BatchNorm scale first) are timed side by side on
the sweep's latency runtime, batch and threads, and the fastest is kept
(:mod:`sweep.engine.depth_width`); ``info["depth"]`` records every plan. On a net without removable blocks
it is the plain channel cut.

``reconstruct: true`` (ours, off by default so that plain magnitude pruning stays the sweeps' reference):
after the cut and before fine-tuning, every conv / linear layer is re-fitted in closed form so that its
outputs on ``recon_batches`` unlabeled training batches match the unpruned network's outputs of the same
layer at the kept channels (:func:`sweep.engine.reconstruct.refit_after_surgery`; He et al., ICCV 2017,
§3.1 / ThiNet, ICCV 2017, §3.3, with the unpruned network as the target). Channel cuts only: with ``depth:
true`` it is recorded as not applied.
"""

from __future__ import annotations

import copy

from ..engine.channels import TARGETS
from ..engine.criteria import IMPORTANCES, LATENCY_IMPORTANCES
from .base import Knob, MethodConfig, PruneContext, PruneResult, register_method


@register_method(
    "magnitude",
    requires={"depth": ("macs_fraction",)},  # blocks and channels are mixed to meet a MACs target
    summary="global magnitude (L2/L1/BN-scale) channel pruning to a channel ratio or a MACs/params/latency target",
    exclusive=[TARGETS, ("ratio", "stage_ratios")],
    needs_labels=False,  # weight magnitudes: no data at all; the runner fine-tunes
    knobs=[
        Knob("ratio", "float", 0.5, low=0.0, high=1.0, low_open=True, high_open=True,
             flag=True,
             help="fraction of prunable channels removed (global ranking)"),
        Knob("macs_fraction", "float", None, low=0.0, high=1.0, low_open=True, optional=True,
             flag=True,
             help="instead of ratio: MACs kept as a fraction of the baseline's (hit within 3 %)"),
        Knob("params_fraction", "float", None, low=0.0, high=1.0, low_open=True, optional=True,
             flag=True,
             help="instead of ratio: parameters kept as a fraction of the baseline's (hit within 3 %)"),
        Knob("latency_fraction", "float", None, low=0.0, high=1.0, low_open=True, optional=True,
             flag=True,
             help="instead of ratio: latency kept as a fraction of the baseline's, measured on this machine"),
        Knob("stage_ratios", "stages", None, low=0.0, high=1.0, high_open=True, optional=True,
             member="stage_ratio",
             help="instead of ratio: one ratio per depth stage (stage_ratio_0, ...); with a macs/params/latency "
                  "fraction, the stages' relative weights, scaled to meet it"),
        Knob("importance", "categorical", "l2", choices=IMPORTANCES + LATENCY_IMPORTANCES,
             help="channel group criterion; *_latency divides by the group's measured latency cost per channel"),
        Knob("global_pruning", "bool", True, help="one ranking across layers (else the same ratio per layer)"),
        Knob("round_to", "int", None, low=1, high=64, optional=True,
             help="keep channel counts a multiple of this; unset = 8 on layers >= 32 channels, none below"),
        Knob("max_layer_ratio", "float", 0.9, low=0.0, high=1.0, low_open=True, high_open=True,
             help="no layer loses more than this fraction of its channels"),
        Knob("depth", "bool", False,
             help="with macs_fraction: also remove whole residual blocks where the latency runtime measures "
                  "that it pays"),
        Knob("reconstruct", "bool", False,
             help="after pruning, re-fit every conv / linear layer to the unpruned network's outputs of the "
                  "same layer on unlabeled inputs (least squares), before fine-tuning; channel cuts only"),
        Knob("recon_batches", "int", 4, low=1, high=200,
             help="unlabeled training batches the layer-wise reconstruction is fitted on"),
    ],
)
def prune(model, example_inputs, cfg: MethodConfig, ctx: PruneContext) -> PruneResult:
    from ..engine.channels import AUTO, channel_counts, prune_to_target
    from ..engine.depth import module_names
    from ..engine.reconstruct import refit_after_surgery
    from .context import calibration_batches

    target = {k: cfg[k] for k in TARGETS[1:] if cfg[k] is not None}
    if not target and cfg.stage_ratios is None:
        target = {"ratio": cfg.ratio}
    kw = dict(stage_ratios=cfg.stage_ratios, importance=cfg.importance, global_pruning=cfg.global_pruning,
              round_to=AUTO if cfg.round_to is None else cfg.round_to,
              ignored_layers=ctx.ignored_layers or None,  # unset: the engine's skipped_layers
              max_layer_ratio=cfg.max_layer_ratio, latency_kw=ctx.latency or None)
    teacher = copy.deepcopy(model) if cfg.reconstruct and not cfg.depth else None  # the unpruned network
    names = module_names(model)
    kept: dict = {}
    if cfg.depth:
        from ..engine.depth_width import prune_depth_and_width

        model, info = prune_depth_and_width(model, example_inputs, macs_fraction=cfg.macs_fraction, **kw)
    else:
        model, info = prune_to_target(model, example_inputs, **target, **kw, kept=kept)
    info.setdefault("channels", channel_counts(model))  # depth: keyed by the input's names already
    if teacher is not None:
        batches = calibration_batches(ctx, cfg.recon_batches, "magnitude reconstruct=true")
        info["layer_reconstruction"] = refit_after_surgery(model, teacher, names, kept, batches, seed=ctx.seed,
                                                           device=ctx.device).info()
    elif cfg.reconstruct:  # the depth plans are pruned copies, whose layers this one cannot match by object
        info["layer_reconstruction"] = {"applied": False, "why": "depth: true (the re-fit runs on channel cuts)"}
    return PruneResult(model=model, info=info)
