"""What may not be pruned: the one rule every method and entry point of the engine follows.

:func:`skipped_layers` returns the final list of layers whose output channels are kept:

1. the **output layers**: every conv/linear layer whose output channels reach a model output without
   passing through another conv/linear (found on the traced dependency graph, walking back from the
   output nodes through pooling, flatten, BN, activations, adds, concats, ...). Pruning one of them
   changes the output shape, so it is never pruned whatever its type: the last ``nn.Linear`` of an
   ordinary classifier, the final 1x1 conv of SqueezeNet's conv classifier (``classifier.1``);
2. the layers the model declares through a ``pruning_ignored_layers()`` method;
3. ``keep``: the user's layers (module names, e.g. the YAML's ``model.keep_layers``, or modules).

Convention of the engine's entry points (:class:`~sweep.engine.groups.ChannelGraph`,
:func:`~sweep.engine.groups.channel_groups`, :func:`~sweep.engine.channels.prune_to_target`,
:func:`~sweep.engine.check.check_prunable`): ``ignored_layers=None`` means "compute
:func:`skipped_layers`"; a given list is final (it is used as it is: nothing is added to it but the
entry point's ``keep_layers``). A trial computes the list once and hands it to its method in
``PruneContext.ignored_layers``.
"""

from __future__ import annotations

from typing import Any, Iterable

from torch import nn


def resolve_layers(model: nn.Module, layers: Iterable[Any] | None, what: str = "ignored_layers") -> list[nn.Module]:
    """Modules given as modules or as module names (``"layer1.0.conv1"``) -> modules of ``model``."""
    from ..errors import ConfigError

    by_name = dict(model.named_modules())
    out = []
    for layer in layers or ():
        if isinstance(layer, str):
            if layer not in by_name:
                some = ", ".join(n for n in list(by_name)[1:6])
                raise ConfigError(f"{what} must name layers of the model, but got {layer!r} (e.g. {some})")
            out.append(by_name[layer])
        elif isinstance(layer, nn.Module):
            out.append(layer)
        else:
            raise ConfigError(f"{what} must hold modules or module names, but got {layer!r}")
    return out


def output_layers(model: nn.Module, traced) -> list[nn.Module]:
    """The conv/linear layers whose output channels reach an output of ``model`` (rule 1 of the module
    docstring), in ``model.named_modules()`` order; ``traced``: a :class:`sweep.engine.trace.TracedGraph`."""
    import torch_pruning as tp

    layer_types = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
    found: set[int] = set()
    seen: set[int] = set()
    stack = list(traced.outputs)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, layer_types):
            found.add(id(node.module))  # its outputs are the channels that reach the output: stop here
        else:
            stack.extend(node.inputs)
    return [m for m in model.modules() if id(m) in found]


def declared_layers(model: nn.Module) -> list[nn.Module]:
    """The layers ``model`` declares through ``pruning_ignored_layers()`` (rule 2)."""
    return list(model.pruning_ignored_layers()) if hasattr(model, "pruning_ignored_layers") else []


def skipped_layers(model: nn.Module, example_inputs, keep: Iterable[Any] = (), *, what: str = "keep_layers",
                   traced=None) -> list[nn.Module]:
    """The final list of layers that keep their output channels: output layers, declared layers, then
    ``keep`` (module names or modules; ``what`` names the setting in the error for an unknown name).
    ``traced`` reuses a :class:`sweep.engine.trace.TracedGraph` of ``model`` instead of tracing again."""
    kept = resolve_layers(model, keep, what)  # a bad name fails before the (slower) trace
    if traced is None:
        from .trace import trace

        traced = trace(model, example_inputs)
    out: list[nn.Module] = []
    for m in output_layers(model, traced) + declared_layers(model) + kept:
        if not any(m is o for o in out):
            out.append(m)
    return out
