"""Coupled channel groups on Torch-Pruning's dependency graph.

A *channel group* is a set of channels that must be removed together: the output channels of a root
conv/linear layer plus everything coupled to them (the BN after it, convs added to it by a residual
shortcut, the input slices of every consumer, through concat, split and depthwise convs).
Torch-Pruning's ``DependencyGraph`` finds the coupling; this module gives methods a stable view of it:

- :func:`channel_groups` / :class:`ChannelGraph` list the groups, each named after its root layer;
  the layers of ``ignored_layers`` keep their outputs (``None``: :func:`sweep.engine.skip.skipped_layers`),
  and a group Torch-Pruning cannot map safely (its index mapping fails, e.g. through a channel
  shuffle) is left out and recorded in :attr:`ChannelGraph.skipped` as ``(root layer name, reason)``;
- :meth:`ChannelGroup.weights` and :meth:`ChannelGroup.score` give per-channel tensors and criteria
  (one score per channel, one group per gate);
- :meth:`ChannelGraph.prune` removes chosen channels of many groups in one go on the live model, and
  :meth:`ChannelGraph.pruned_copy` does the same on a deep copy (what a target search evaluates).

All indices are *root-layer* indices, valid for the model as it was when the groups were listed: the
pruning operations of all chosen groups are merged per (layer, dimension) before any is applied, so a
consumer of a concat (whose input slices belong to several groups) is edited once, with every index in
its unpruned coordinates.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from .criteria import make_importance
from .skip import resolve_layers, skipped_layers
from .trace import first_line, trace

__all__ = ["ChannelGraph", "ChannelGroup", "GroupMember", "channel_groups", "out_in_channels", "prune_groups",
           "resolve_layers"]


@dataclass(frozen=True)
class GroupMember:
    """One layer touched by a group: ``kind`` is ``"out"`` (its outputs go) or ``"in"`` (its inputs go).

    ``idxs[i]`` is this layer's channel that goes with root channel ``root_idxs[i]`` (a consumer of a
    concat sees the root's channels at an offset).
    """

    name: str
    module: nn.Module
    kind: str
    idxs: tuple
    root_idxs: tuple


class ChannelGroup:
    """A coupled channel group, named after its root layer (the conv/linear whose outputs define it).

    ``size`` counts the prunable units: the root's output channels, divided by the channel grouping of
    a grouped conv in the group (whose chunks must stay equal; unit ``u`` is channel ``u`` of every
    chunk). ``prune(idxs)`` removes units on the live model.
    """

    def __init__(self, graph: "ChannelGraph", root: nn.Module, items, ch_groups: int):
        self.graph = graph
        self.root = root
        self.name = graph.name_of(root)
        self._items = items
        self.ch_groups = ch_groups

    def __repr__(self) -> str:
        return f"ChannelGroup({self.name!r}, {type(self.root).__name__}, size={self.size}, members={len(self._items)})"

    @property
    def channels(self) -> int:
        return int(self.graph.DG.get_out_channels(self.root))

    @property
    def size(self) -> int:
        return self.channels // self.ch_groups

    @property
    def members(self) -> list[GroupMember]:
        """The model layers of the group (graph-internal ops such as concat are left out)."""
        DG, out = self.graph.DG, []
        for item in self._items:
            mod = item.dep.target.module
            if not isinstance(mod, nn.Module) or mod not in self.graph._names:
                continue
            kind = "out" if DG.is_out_channel_pruning_fn(item.dep.handler) else "in"
            out.append(GroupMember(self.graph.name_of(mod), mod, kind, tuple(item.idxs), tuple(item.root_idxs)))
        return out

    @property
    def layers(self) -> list[nn.Module]:
        seen, out = set(), []
        for m in self.members:
            if id(m.module) not in seen:
                seen.add(id(m.module))
                out.append(m.module)
        return out

    def weights(self) -> torch.Tensor:
        """The root layer's weights, one row per output channel: shape ``(channels, -1)``, detached."""
        w = self.root.weight.detach()
        if isinstance(self.root, nn.modules.conv._ConvTransposeNd):
            w = w.transpose(0, 1)  # transposed convs store (in, out/groups, ...)
        return w.reshape(w.shape[0], -1)

    def score(self, importance: Any = "l2") -> torch.Tensor | None:
        """One score per unit (higher = keep), or None where the criterion does not apply (no BN for
        ``bn_scale``). ``importance``: a name of :data:`sweep.engine.criteria.IMPORTANCES` or a
        ``tp.importance`` object."""
        imp = make_importance(importance) if isinstance(importance, str) else importance
        with torch.no_grad():
            s = imp(self._items_group)
        if s is None:
            return None
        s = s.detach().float().cpu()
        if self.ch_groups > 1:  # chunks of a grouped conv are pruned in step: average over them
            s = s.view(self.ch_groups, -1).mean(0)
        return s

    def root_indices(self, units: Sequence[int]) -> list[int]:
        """Unit indices -> root channel indices (repeated over the chunks of a grouped conv)."""
        units = sorted({int(u) for u in units})
        size = self.size
        bad = [u for u in units if not 0 <= u < size]
        if bad:
            raise ValueError(f"channel indices of group {self.name!r} must be in [0, {size}), but got {bad[:5]}")
        if len(units) >= size:
            raise ValueError(f"pruning must leave at least one channel of group {self.name!r}, "
                             f"but got all {size} of them")
        return [u + c * size for c in range(self.ch_groups) for u in units]

    def prune(self, idxs: Sequence[int]) -> None:
        """Remove units ``idxs`` of this group from the live model."""
        self.graph.prune({self: idxs})

    @property
    def _items_group(self):
        from torch_pruning.dependency.group import Group

        g = Group()
        g._group = list(self._items)
        g._DG = self.graph.DG
        return g


class ChannelGraph:
    """The dependency graph of ``model`` and its prunable channel groups.

    Groups that contain a layer of ``ignored_layers`` (modules or names; their outputs are kept) are left
    out, as in Torch-Pruning. ``ignored_layers=None``: :func:`sweep.engine.skip.skipped_layers` (the
    output layers and the model's declared layers); a given list is final. ``keep_layers`` (names or
    modules) are kept in either case. Groups that cannot be mapped safely are left out and listed in
    ``skipped`` (see the module docstring).
    """

    def __init__(self, model: nn.Module, example_inputs, ignored_layers: Iterable[Any] | None = None,
                 root_module_types: Sequence[type] | None = None, *, keep_layers: Iterable[Any] = ()):
        import torch_pruning as tp

        self.model = model
        self.example_inputs = example_inputs
        self.root_module_types = tuple(root_module_types or (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR))
        keep = resolve_layers(model, keep_layers, "keep_layers")
        listed = None if ignored_layers is None else resolve_layers(model, ignored_layers)
        traced = trace(model, example_inputs)
        self.DG, self.broken = traced.DG, traced.broken
        if listed is None:
            listed = skipped_layers(model, example_inputs, traced=traced)
        ignored = []
        for layer in listed + keep:
            ignored.extend(layer.modules())  # a container ignores everything inside it, as in Torch-Pruning
        self.ignored = ignored
        self._names = {m: n for n, m in model.named_modules()}
        self.groups: list[ChannelGroup] = []
        self.skipped: list[tuple[str, str]] = []  # (root layer name, why its group is left out)
        self._unmappable: dict[int, str] = {}  # id(root) -> why Torch-Pruning cannot build its group
        self._collect()

    # ------------------------------------------------------------------ listing
    def name_of(self, module) -> str:
        return self._names.get(module, getattr(module, "name", type(module).__name__))

    def _collect(self) -> None:
        old = {id(g.root): g for g in self.groups}
        groups = []
        self.skipped = []
        for root, g in self._tp_groups():
            items = list(g.items)
            if id(root) in old:  # refresh in place: a method holding the group sees the new size
                grp = old[id(root)]
                grp._items, grp.ch_groups = items, self._channel_grouping(items)
            else:
                grp = ChannelGroup(self, root, items, self._channel_grouping(items))
            groups.append(grp)
        self.groups = groups
        self._by_name = {g.name: g for g in groups}

    def _tp_groups(self):
        """``(root layer, Torch-Pruning group)`` of every prunable group, as ``DG.get_all_groups`` lists
        them, but built one at a time: a group whose index mapping raises, or whose channels pass a node
        whose index mapping failed at tracing, is left out and recorded in ``self.skipped``."""
        DG = self.DG
        ignored = {id(m) for m in list(self.ignored) + list(DG.IGNORED_LAYERS_IN_TRACING)}
        visited: set[int] = set()
        for m in list(DG.module2node):
            if id(m) in ignored or id(m) in visited or not isinstance(m, self.root_module_types):
                continue
            pruner = DG.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None:
                continue
            if id(m) not in self._unmappable:
                try:
                    group = DG.get_pruning_group(m, pruner.prune_out_channels,
                                                 list(range(pruner.get_out_channels(m))))
                except Exception as e:  # Torch-Pruning cannot follow this layer's channels through the graph
                    # (structural: remembered, so that refreshing after a prune does not pay for it again)
                    self._unmappable[id(m)] = f"its channel index mapping fails: {first_line(e)}"
            if id(m) in self._unmappable:
                self.skipped.append((self.name_of(m), self._unmappable[id(m)]))
                continue
            outs = [dep.target.module for dep, _ in group if DG.is_out_channel_pruning_fn(dep.handler)]
            visited.update(id(o) for o in outs)
            if any(id(o) in ignored for o in outs):
                continue
            broken = next((dep.target for dep, _ in group if dep.target in self.broken), None)
            if broken is not None:
                self.skipped.append((self.name_of(m), f"its channels pass {broken.name}, whose index mapping "
                                                      f"fails: {self.broken[broken]}"))
                continue
            yield m, group

    def _channel_grouping(self, items) -> int:
        """Chunks that must stay equal: the ``groups`` of a grouped (not depthwise) conv in the group."""
        DG, n = self.DG, 1
        for item in items:
            m = item.dep.target.module
            if not isinstance(m, nn.Module):
                continue
            if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels:
                continue  # depthwise: channels stay one-to-one with its input
            pruner = DG.get_pruner_of_module(m)
            if pruner is None:
                continue
            if DG.is_out_channel_pruning_fn(item.dep.handler):
                n = max(n, int(pruner.get_out_channel_groups(m)))
            else:
                n = max(n, int(pruner.get_in_channel_groups(m)))
        return n

    def group(self, name: str) -> ChannelGroup:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no prunable channel group rooted at {name!r}; groups: "
                           f"{', '.join(list(self._by_name)[:8])}...") from None

    def depth_order(self, groups: Iterable[ChannelGroup] | None = None) -> list[ChannelGroup]:
        """``groups`` (default: all) sorted by where their channels appear along the traced graph.

        A group's depth is that of the shallowest layer whose output channels it holds (a residual
        stream group is as deep as the first layer writing the stream): the longest path, counted in
        graph nodes, from a model input to that layer. Parallel branches at one depth (the inputs of a
        concat) are ordered by that layer's position in ``model.named_modules()``, then by group name,
        so the order depends on the model alone, not on how Torch-Pruning happens to list its groups.
        """
        depth = self._node_depths()
        position = {m: i for i, m in enumerate(self._names)}

        def key(g: ChannelGroup):
            outs = [m.module for m in g.members if m.kind == "out"] or [g.root]
            return min((depth.get(id(self.DG.module2node.get(m)), 0), position.get(m, len(position)), g.name)
                       for m in outs)

        return sorted(self.groups if groups is None else groups, key=key)

    def _node_depths(self) -> dict[int, int]:
        """``{id(graph node): longest path from an input, in nodes}`` (Kahn's order: no recursion, so
        that nets hundreds of layers deep do not hit Python's recursion limit)."""
        nodes = list(self.DG.module2node.values())
        outputs = {id(n): list({id(o): o for o in n.outputs}.values()) for n in nodes}
        pending = {id(n): len({id(i) for i in n.inputs}) for n in nodes}
        depth = dict.fromkeys(pending, 0)
        ready = [n for n in nodes if pending[id(n)] == 0]
        while ready:
            n = ready.pop()
            for o in outputs[id(n)]:
                if id(o) not in pending:  # a node outside module2node: not a layer, no depth of its own
                    continue
                depth[id(o)] = max(depth[id(o)], depth[id(n)] + 1)
                pending[id(o)] -= 1
                if pending[id(o)] == 0:
                    ready.append(o)
        return depth

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    # ------------------------------------------------------------------ pruning
    def _pairs(self, selection) -> list[tuple[ChannelGroup, list[int]]]:
        items = selection.items() if isinstance(selection, Mapping) else selection
        out = []
        for g, idxs in items:
            grp = self.group(g) if isinstance(g, str) else g
            if grp.graph is not self:
                raise ValueError(f"group {grp.name!r} belongs to another graph")
            if len(idxs):
                out.append((grp, grp.root_indices(idxs)))
        return out

    def operations(self, selection) -> list[tuple[Any, Any, list[int]]]:
        """The merged pruning operations ``(graph node, handler, indices)`` of a selection
        ``{group or name: unit indices}``; indices are in the current (unpruned) coordinates."""
        merged: dict = {}
        for grp, root_idxs in self._pairs(selection):
            chosen = set(root_idxs)
            items = grp._items
            if any(r is None for item in items for r in (item.root_idxs or [None])):
                # an index mapping without root indices (attention heads): ask the graph instead
                items = self.DG.get_pruning_group(grp.root, items[0].dep.handler, root_idxs).items
                chosen = None
            for item in items:
                idxs = list(item.idxs) if chosen is None else \
                    [i for i, r in zip(item.idxs, item.root_idxs) if r in chosen]
                if not idxs:
                    continue
                key = (id(item.dep.target), item.dep.handler)
                if key not in merged:
                    merged[key] = (item.dep.target, item.dep.handler, set())
                merged[key][2].update(int(i) for i in idxs)
        return [(node, handler, sorted(idxs)) for node, handler, idxs in merged.values()]

    def kept_channels(self, selection) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """``{layer name: (kept output channels, kept input channels)}`` of every conv / linear layer a
        selection touches, in the current (unpruned) coordinates: which of a layer's channels survive
        :meth:`prune`, so that the pruned layer can be compared with the same layer of the unpruned model.
        Input channels are counted as the layer counts them (``in_channels`` / ``in_features``)."""
        removed: dict[str, dict[str, set[int]]] = {}
        for node, handler, idxs in self.operations(selection):
            mod = node.module
            if not isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)) or mod not in self._names:
                continue
            kind = "out" if self.DG.is_out_channel_pruning_fn(handler) else "in"
            removed.setdefault(self._names[mod], {}).setdefault(kind, set()).update(idxs)
        modules = dict(self.model.named_modules())
        out = {}
        for name, gone in removed.items():
            mod = modules[name]
            n_out, n_in = out_in_channels(mod)
            out[name] = (tuple(c for c in range(n_out) if c not in gone.get("out", ())),
                         tuple(c for c in range(n_in) if c not in gone.get("in", ())))
        return out

    def prune(self, selection) -> None:
        """Remove the selected channels from the live model (``{group or name: unit indices}``, or pairs)."""
        ops = self.operations(selection)
        self._apply(ops, self.model, live=True)
        self._collect()

    def pruned_copy(self, selection) -> nn.Module:
        """A deep copy of the model with the selection removed; the live model and graph are untouched."""
        ops = self.operations(selection)
        model = copy.deepcopy(self.model)
        self._apply(ops, model, live=False)
        return model

    def _apply(self, ops, model: nn.Module, live: bool) -> None:
        by_name = None if live else dict(model.named_modules())
        with torch.no_grad():
            for node, handler, idxs in ops:
                mod = node.module
                handler.__self__.pruning_dim = node.pruning_dim  # as tp's Dependency.__call__ does
                if isinstance(mod, nn.Parameter):
                    self._prune_parameter(model, node, handler, idxs, live)
                elif isinstance(mod, nn.Module) and mod in self._names:
                    handler(mod if live else by_name[self._names[mod]], idxs)
                elif live:
                    # a graph-internal op (concat, split, slice, output): keeps the graph's bookkeeping
                    # of slice sizes in step with the model, for later index mappings
                    handler(mod, idxs)

    def _prune_parameter(self, model, node, handler, idxs, live: bool) -> None:
        old = node.module
        name = self.DG._param_to_name[old]
        *path, leaf = name.split(".")
        parent = model
        for p in path:
            parent = getattr(parent, p)
        new = handler(getattr(parent, leaf), idxs)
        setattr(parent, leaf, new)
        if live:  # keep the graph pointing at the new parameter, as tp's Group.prune does
            self.DG._param_to_name.pop(old)
            self.DG._param_to_name[new] = name
            self.DG.module2node[new] = self.DG.module2node.pop(old)
            self.DG.module2node[new].module = new


def out_in_channels(mod: nn.Module) -> tuple[int, int]:
    """(output channels, input channels) of a conv or linear layer, as Torch-Pruning counts them."""
    if isinstance(mod, nn.Linear):
        return mod.out_features, mod.in_features
    return mod.out_channels, mod.in_channels


def channel_groups(model: nn.Module, example_inputs, ignored_layers: Iterable[Any] | None = None,
                   *, graph: bool = False):
    """The prunable coupled channel groups of ``model`` (list of :class:`ChannelGroup`).

    ``ignored_layers`` (modules or names) keep their output channels: ``None`` =
    :func:`sweep.engine.skip.skipped_layers` (the output layers and the layers the model declares), a
    given list is final. Each group's ``prune(idxs)`` edits the live model; to prune several groups in
    one go use :func:`prune_groups`. With ``graph=True`` the :class:`ChannelGraph` itself is returned.
    """
    g = ChannelGraph(model, example_inputs, ignored_layers=ignored_layers)
    return g if graph else list(g.groups)


def prune_groups(pairs: Mapping[ChannelGroup, Sequence[int]] | Iterable[tuple[ChannelGroup, Sequence[int]]]) -> None:
    """Prune several (group, unit indices) pairs of one graph in one go, on the live model."""
    items = list(pairs.items() if isinstance(pairs, Mapping) else pairs)
    if not items:
        return
    graphs = {id(g.graph): g.graph for g, _ in items}
    if len(graphs) != 1:
        raise ValueError("prune_groups needs groups of one graph (one channel_groups call)")
    next(iter(graphs.values())).prune(items)
