"""``magnitude``: Torch-Pruning group magnitude importance to one global channel ratio or a MACs target.

The baseline method of every sweep: each coupled channel group is scored by the norm of its weights
(summed over the group, Torch-Pruning's ``GroupMagnitudeImportance``), and the lowest-scoring groups
are removed across the whole network until the ratio (or the MACs target) is reached.
"""

from __future__ import annotations

from ..engine.channels import IMPORTANCES
from .base import Knob, MethodConfig, PruneContext, PruneResult, register_method


@register_method(
    "magnitude",
    summary="global magnitude (L2/L1/BN-scale) channel pruning to a channel ratio or a MACs target",
    exclusive=[("ratio", "macs_fraction")],
    knobs=[
        Knob("ratio", "float", 0.5, low=0.0, high=1.0, low_open=True, high_open=True,
             help="fraction of prunable channels removed (global ranking)"),
        Knob("macs_fraction", "float", None, low=0.0, high=1.0, low_open=True, optional=True,
             help="instead of ratio: MACs kept as a fraction of the baseline's (hit within 2 %)"),
        Knob("importance", "categorical", "l2", choices=IMPORTANCES, help="channel group criterion"),
        Knob("global_pruning", "bool", True, help="one ranking across layers (else the same ratio per layer)"),
        Knob("round_to", "int", 1, low=1, high=64, help="keep channel counts a multiple of this"),
        Knob("max_layer_ratio", "float", 0.9, low=0.0, high=1.0, low_open=True, high_open=True,
             help="no layer loses more than this fraction of its channels"),
    ],
)
def prune(model, example_inputs, cfg: MethodConfig, ctx: PruneContext) -> PruneResult:
    from ..engine.channels import channel_counts, prune_channels, prune_to_macs

    kw = dict(importance=cfg.importance, global_pruning=cfg.global_pruning,
              ignored_layers=ctx.ignored_layers, round_to=cfg.round_to if cfg.round_to > 1 else None,
              max_layer_ratio=cfg.max_layer_ratio)
    if cfg.macs_fraction is not None:
        model, info = prune_to_macs(model, example_inputs, macs_fraction=cfg.macs_fraction, **kw)
    else:
        model = prune_channels(model, example_inputs, ratio=cfg.ratio, **kw)
        info = {"channel_ratio": cfg.ratio}
    info["channels"] = channel_counts(model)
    return PruneResult(model=model, info=info)
