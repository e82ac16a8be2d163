"""Tracing a model into Torch-Pruning's dependency graph: the one place the engine builds it.

Conventions:

- the model is traced in eval mode with gradients on (Torch-Pruning traces through autograd), so the
  tracing forward never updates BatchNorm running statistics;
- the graph remembers the nodes that produce the model's outputs (:attr:`TracedGraph.outputs`), from
  which :mod:`sweep.engine.skip` finds the layers that must keep their output channels;
- an op whose channel index mapping Torch-Pruning cannot compute (a channel shuffle's reshape makes
  it divide by zero) does not fail the trace: on such a model the mapping is computed node by node,
  at tracing and whenever the graph builds a group, and the failing nodes are recorded in
  :attr:`TracedGraph.broken` (node -> one-line reason), so that the groups whose channels pass
  through them can be left out (:class:`sweep.engine.groups.ChannelGraph`). Models whose mapping
  succeeds are traced by Torch-Pruning's own code, untouched.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# Torch-Pruning's index-mapping updates, by op type (torch_pruning.dependency.index_mapping.update_index_mapping)
_INDEX_MAPPINGS = {"CONCAT": "update_concat_index_mapping", "SPLIT": "update_split_index_mapping",
                   "RESHAPE": "update_reshape_index_mapping", "UNBIND": "update_unbind_index_mapping",
                   "EXPAND": "update_expand_index_mapping", "SLICE": "update_slice_index_mapping"}


@dataclass
class TracedGraph:
    """Torch-Pruning's ``DependencyGraph`` of a model, its output nodes and the nodes it could not map."""

    DG: Any
    outputs: list = field(default_factory=list)  # graph nodes whose tensors are the model's outputs
    broken: dict = field(default_factory=dict)  # graph node -> why its channel index mapping failed


def first_line(e: BaseException) -> str:
    """``"TypeName: first line of the message"``: how the engine quotes an error on one line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextmanager
def eval_mode(model):
    """Context: the model in eval mode, its train/eval flag restored on exit."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def trace(model, example_inputs) -> TracedGraph:
    """Trace ``model`` on ``example_inputs`` (see the module docstring)."""
    import torch
    import torch_pruning as tp

    returned: list = []

    def keep_outputs(out):
        returned.append(out)
        return out

    broken: dict = {}
    with eval_mode(model), torch.enable_grad():
        try:
            DG = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                       output_transform=keep_outputs, verbose=False)
        except Exception as e:
            if not _raised_in_index_mapping(e):
                raise
            # only an index mapping failed: build again, mapping node by node and recording failures
            returned.clear()
            with _index_mapping_node_by_node(broken):
                DG = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                           output_transform=keep_outputs, verbose=False)
            _map_node_by_node_in_groups(DG, broken)
    return TracedGraph(DG, _output_nodes(DG, returned), broken)


def _map_node_by_node_in_groups(DG, broken: dict) -> None:
    """``DG.get_pruning_group`` updates every index mapping again before it builds a group: on this
    graph it does so node by node too (the failing nodes stay recorded in ``broken``)."""
    build_group = DG.get_pruning_group

    def get_pruning_group(*args, **kwargs):
        with _index_mapping_node_by_node(broken):
            return build_group(*args, **kwargs)

    DG.get_pruning_group = get_pruning_group


def _raised_in_index_mapping(e: BaseException) -> bool:
    import traceback

    from torch_pruning.dependency import index_mapping

    code = index_mapping.update_index_mapping.__code__
    return any(frame.f_code is code for frame, _ in traceback.walk_tb(e.__traceback__))


_PATCH_LOCK = threading.RLock()


@contextmanager
def _index_mapping_node_by_node(broken: dict):
    """Context: Torch-Pruning's graph builder maps indices node by node, recording failures in ``broken``.

    ``DependencyGraph.build_dependency`` calls ``index_mapping.update_index_mapping`` through the name
    ``index_mapping`` of its own module; that one name is pointed at a stand-in for the duration (under
    a lock), the ``index_mapping`` module itself is left as it is.
    """
    import types

    from torch_pruning.dependency import graph as tp_graph

    with _PATCH_LOCK:
        real = tp_graph.index_mapping
        tp_graph.index_mapping = types.SimpleNamespace(
            update_index_mapping=lambda DG: broken.update(_map_indices_node_by_node(DG)))
        try:
            yield
        finally:
            tp_graph.index_mapping = real


def _map_indices_node_by_node(DG) -> dict:
    """Torch-Pruning's ``update_index_mapping``, one node at a time: ``{node: reason}`` of the failures."""
    from torch_pruning.dependency import index_mapping

    broken = {}
    for node in list(DG.module2node.values()):
        name = _INDEX_MAPPINGS.get(getattr(node.type, "name", ""))
        update = getattr(index_mapping, name, None) if name else None
        if update is None:
            continue
        try:
            update(DG, node)
        except Exception as e:
            broken[node] = first_line(e)
    return broken


def _output_nodes(DG, returned: list) -> list:
    """Nodes whose tensors the model returns: those holding an output's autograd function, and the
    graph's sinks (tracing starts from the outputs, so a node nothing consumes is one)."""
    from torch_pruning.utils import flatten_as_list

    by_fn = {node.grad_fn: node for node in DG.module2node.values() if node.grad_fn is not None}
    out: list = []
    for o in (t for r in returned for t in flatten_as_list(r)):
        node = by_fn.get(getattr(o, "grad_fn", None))
        if node is not None and node not in out:
            out.append(node)
    out += [n for n in DG.module2node.values() if not n.outputs and n not in out]
    return out
