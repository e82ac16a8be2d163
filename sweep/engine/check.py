"""Prunability check: can this model lose channels and still run? Asked once, before a sweep starts.

Torch-Pruning traces the model and couples channels through the ops it recognises; a forward pass that
hard-codes a channel count (``x.view(n, 64, -1)``), or an op whose channel mapping the tracer cannot
see, only fails *after* surgery. :func:`check_prunable` therefore prunes a deep copy by one channel of
every prunable group, runs it, and compares the output shape; on failure it narrows the failing groups
down by bisection and raises :class:`PrunabilityError` naming the layer whose pruning breaks the model,
where the forward pass fails, and the underlying error, on one line.

Convention: whatever fails inside the engine (tracing, grouping, surgery, the pruned forward) ends
here as one :class:`PrunabilityError` line, never as a traceback; a group Torch-Pruning cannot map
safely (its channel index mapping fails, e.g. through a channel shuffle) is not an error: it is left
out of pruning, and the summary lists it under ``skipped`` as ``(layer name, reason)``.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

from ..errors import ConfigError
from .trace import first_line


class PrunabilityError(ConfigError):
    """The model cannot be channel-pruned as traced (the message names the layer that breaks)."""


class _Tracker:
    """Forward hooks that remember which module was running, and the last layer that finished."""

    def __init__(self, model):
        self.names = {m: n for n, m in model.named_modules()}
        self.stack: list = []
        self.last_done = None
        self.failed_in = None
        self.finished = False  # the outermost forward returned
        self._root = model
        self._handles = []
        for m in model.modules():
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))

    def _pre(self, module, args):
        self.stack.append(module)

    def _post(self, module, args, out):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
        if not any(True for _ in module.children()):
            self.last_done = module
        if module is self._root:
            self.finished = True

    def mark_failure(self):
        self.failed_in = self.stack[-1] if self.stack else None

    def close(self):
        for h in self._handles:
            h.remove()

    def describe(self, module) -> str:
        if module is None:
            return "?"
        name = self.names.get(module, "?")
        return f"'{name or '<model>'}' ({type(module).__name__})"

    def where(self) -> str:
        """Where the forward failed: inside a layer, or in a module's own forward after a layer."""
        inner = self.failed_in
        if inner is not None and not any(True for _ in inner.children()):
            return f"in layer {self.describe(inner)}"
        return f"in the forward of {self.describe(inner)} after layer {self.describe(self.last_done)}"


def _run(model, example_inputs):
    import torch

    model.eval()
    with torch.no_grad():
        if isinstance(example_inputs, dict):
            return model(**example_inputs)
        if isinstance(example_inputs, (tuple, list)):
            return model(*example_inputs)
        return model(example_inputs)


def _shape(out):
    import torch

    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return tuple(_shape(o) for o in out)
    if isinstance(out, dict):
        return tuple(sorted((k, _shape(v)) for k, v in out.items()))
    return type(out).__name__


def _try_forward(model, example_inputs, expected) -> str | None:
    """None when the model runs and keeps the output shape; else a description of the failure."""
    tracker = _Tracker(model)
    try:
        out = _run(model, example_inputs)
    except Exception as e:  # any error of the pruned model is the finding itself
        tracker.mark_failure()
        return f"the forward pass fails {tracker.where()}: {first_line(e)}"
    finally:
        tracker.close()
    got = _shape(out)
    if got != expected:
        return (f"the output shape changes from {expected} to {got} (last layer run: "
                f"{tracker.describe(tracker.last_done)})")
    return None


def check_prunable(model, example_inputs, ignored_layers: Iterable[Any] | None = None, *,
                   keep_layers: Iterable[Any] = ()) -> dict:
    """Raise :class:`PrunabilityError` unless a copy of ``model`` pruned by one channel of every prunable
    group still runs on ``example_inputs`` with the same output shape; the model itself is untouched.

    ``ignored_layers`` (modules or names of ``model``) keep their channels, as in pruning: ``None`` =
    :func:`sweep.engine.skip.skipped_layers`, a given list is final; ``keep_layers`` are kept in either
    case (a name that is not a layer is a ConfigError, not a PrunabilityError). Returns a summary: ``groups``
    found, ``checked`` (those of at least 2 channels), ``skipped``: ``[(layer name, reason)]`` of the
    groups left out because they cannot be pruned safely (the CLI warns about them).
    """
    from .groups import ChannelGraph
    from .skip import resolve_layers

    names = {m: n for n, m in model.named_modules()}  # the layers are named on the copy that is checked
    listed = None if ignored_layers is None else \
        [names[m] for m in resolve_layers(model, ignored_layers) if m in names]
    keep = [names[m] for m in resolve_layers(model, keep_layers, "keep_layers") if m in names]
    try:
        work = copy.deepcopy(model).eval()
        expected = _shape(_run(work, example_inputs))
    except Exception as e:
        raise PrunabilityError(f"model must run on its example inputs before pruning, but it raised "
                               f"{first_line(e)}") from e

    tracker = _Tracker(work)
    try:
        graph = ChannelGraph(work, example_inputs, ignored_layers=listed, keep_layers=keep)
    except Exception as e:
        tracker.mark_failure()
        raise PrunabilityError(f"model must be traceable by Torch-Pruning, but {_trace_failure(tracker, e)}: "
                               f"{first_line(e)}") from e
    finally:
        tracker.close()
    summary = {"groups": len(graph.groups), "skipped": list(graph.skipped)}
    groups = [g for g in graph.groups if g.size >= 2]

    def failure(subset) -> str | None:
        try:
            cand = graph.pruned_copy({g: [g.size - 1] for g in subset})
        except Exception as e:  # the surgery itself failed (an unsupported layer type)
            return f"the channel surgery fails: {first_line(e)}"
        return _try_forward(cand, example_inputs, expected)

    problem = failure(groups)
    if problem is None:
        return {**summary, "checked": len(groups)}
    who = _culprits(groups, failure, problem)
    raise PrunabilityError(f"model must stay runnable after channel pruning, but {who}; "
                           f"keep that layer with ignored_layers/keep_layers or remove the hard-coded shape")


def _trace_failure(tracker: _Tracker, e: BaseException) -> str:
    """Where tracing failed: in the forward pass (the layer running), or in Torch-Pruning's analysis of
    the traced graph after it (the layer its code was handling, where the traceback shows one)."""
    if tracker.finished:
        layer = _layer_in_traceback(e, tracker.names)
        return "its dependency analysis fails" + (f" at layer {tracker.describe(layer)}" if layer else "")
    return f"tracing fails {tracker.where()}"


def _layer_in_traceback(e: BaseException, names: dict):
    """The innermost layer of the model that a frame of ``e``'s traceback was handling, or None."""
    import traceback

    for frame, _ in reversed(list(traceback.walk_tb(e.__traceback__))):
        for value in frame.f_locals.values():
            try:
                value = getattr(value, "module", value)  # a graph node carries its module
                if value in names:
                    return value
            except Exception:  # an unhashable local, or one whose attributes raise: not a layer
                continue
    return None


def _culprits(groups, failure, problem: str) -> str:
    """Narrow down to one group whose pruning alone breaks the model (log2(groups) forward passes):
    ``"pruning layer 'x' (Conv2d) breaks it: <problem>"``."""
    culprits = groups
    while len(culprits) > 1:
        half = len(culprits) // 2
        for part in (culprits[:half], culprits[half:]):
            p = failure(part)
            if p is not None:
                culprits, problem = part, p
                break
        else:
            break  # only a combination of groups fails: report them together
    if len(culprits) == 1:
        g = culprits[0]
        who = f"pruning layer '{g.name}' ({type(g.root).__name__})"
    else:
        who = "pruning layers " + ", ".join(f"'{g.name}' ({type(g.root).__name__})" for g in culprits[:4])
        who += "..." if len(culprits) > 4 else ""
    return f"{who} breaks it: {problem}"
