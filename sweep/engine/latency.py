"""Latency-aware channel ranking: a per-layer latency lookup table measured on this machine.

At batch 1 on a CPU a layer's time is far from proportional to its MACs: small feature maps are bound
by weight traffic and per-call overheads, depthwise convs and BN by memory, wide convs at high
resolution by arithmetic. A criterion that ranks channels by magnitude alone (and a search that only
counts MACs) therefore leaves speed on the table. This module prices every prunable channel group in
measured milliseconds, so that :class:`sweep.engine.channels.ChannelPlan` can remove first the
channels whose removal buys the most latency per unit of importance.

What we follow, and where we simplify (a reconstruction, not either paper's code):

- **A per-layer latency lookup table**, measured on the target device, indexed by the layer's shape and
  channel counts: NetAdapt (Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation for
  Mobile Applications", ECCV 2018, §3: empirical measurements through layer-wise look-up tables) and
  HALP (Shen et al., "Structural Pruning via Latency-Saliency Knapsack", NeurIPS 2022, §3: a latency
  lookup table over each layer's input/output channel counts). The total is the sum over layers (both
  papers make this assumption; it ignores fusion and cache effects between layers).
- **Value per cost.** HALP §3 ranks neurons for a latency budget as a knapsack (importance is the
  value, the latency a neuron adds is its cost); the greedy solution of a knapsack takes items in order
  of value / cost. We keep Torch-Pruning's magnitude importance (normalised per group) as the value and
  divide it by the group's measured cost per channel, relative to the mean cost over groups
  (``score / cost ** alpha``; ``alpha = 1`` is the knapsack ratio, 0 is plain magnitude). HALP prices
  the j-th neuron of a layer by the table's step T(j) - T(j - 1) and solves an augmented knapsack; we
  use one cost per group, the least-squares slope of the group's summed layer latencies over the widths
  it is likely to be cut to (:data:`PROBE_FRACTIONS`), because single steps are below the timer's
  noise on a shared CPU. Rounding to the runtime's channel blocks (:func:`sweep.engine.channels.round_wide`:
  16 on AVX-512, 8 on AVX2) captures the steps.

A *group* touches several layers: its root conv's outputs, the BN after it, the inputs of every
consumer (through residual adds and concatenations; a consumer of a concat loses only its slice) and
depthwise convs (inputs, outputs and groups together). Each member layer is rebuilt on its own at the
reduced width (weights set to a constant, so no random state is consumed) and timed on the input
shape it sees in the model (recorded with forward hooks). Conv, Linear and BatchNorm layers are
timed; other members (LayerNorm, custom modules) and parameter-free ops between layers (activations,
adds, concatenations) are not in the table, as in both papers.

**On the deployment runtime.** The table is timed on the runtime the sweep measures latency on
(``runtime``: ``onnxruntime`` by default on a CPU, see :mod:`sweep.measure`), so channels are cut where
that runtime gains time: each entry is its layer exported alone to ONNX and run in its own session (the
export and the session are made once per entry, before the timed rounds). ONNX Runtime folds a
BatchNorm into the convolution before it and Inductor fuses it into the neighbouring kernels, so
BatchNorm layers are priced only on eager ``torch``, where each is a separate kernel. A per-call
overhead of the runtime adds the same constant to every entry and leaves the fitted slopes unchanged.

Cheap: a table entry is keyed by the rebuilt layer's shape (plus batch, threads and runtime) and kept for the
process, so groups of equal width in a block share entries (DenseNet's growth-rate groups) and later
calls reuse them; all entries still missing are timed together, in interleaved rounds (every entry
once per round, the median over rounds), so that drift on a shared machine spreads over all of them.
Given the measured table the ranking is deterministic.

Which cost to divide by depends on the target (our design; HALP prices for a latency budget only):
value / latency per unit is the knapsack ratio for a *latency* budget (``latency_fraction``, and a
plain ``ratio``); there it reaches the budget removing fewer channels than plain magnitude (with the
table's sum as the clock, 2x latency on ResNet-18 at 64x64 removed 15 % of channels instead of 35 %).
A *MACs* budget fixes the MACs to remove, so the latency saved is largest where each removed MAC buys
the most time: at ``macs_fraction`` the cost is latency per MAC of the unit (``per="mac"``), which cuts
first the layers that are slow per MAC on the runtime (weight-bound late layers at batch 1, memory-bound
ones, widths off the runtime's channel blocks) and spares those that are compute-bound. In
``bench/latency_efficiency.py`` (6 models, 2x and 4x fewer MACs, ONNX Runtime, 2 threads) the median
speed-up efficiency rose from 0.65 (batch 1) and 0.62 (batch 16) with the per-unit cost and a grid of 8
to 0.86-0.91 and 0.79-0.86 with the per-MAC cost and a grid of 16 (AVX-512). On untrained nets the
normalised magnitudes of a group are nearly flat, so the costs decide how much each group loses and
many groups go down to ``max_layer_ratio``: on a trained net the magnitudes weigh against it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

__all__ = ["GroupLatency", "LatencyLUT", "LayerShape", "group_latencies", "latency_weighted_scores",
           "layer_input_shapes"]

# Widths (fractions of a group's units) the cost slope is fitted over: a 2x-4x MACs cut removes
# about 30-50 % of the channels, so the slope is taken over the upper half of each group's width.
PROBE_FRACTIONS = (0.75, 0.5)
# Table timing: each entry gets ``warmup`` + ``repeats`` forwards per round, ``rounds`` rounds interleaved
# over all entries, median of the round medians. Few repeats, many entries: the slope fit averages more.
LUT_TIMING = {"warmup": 2, "repeats": 5, "rounds": 3}
# A group whose fitted slope is not positive (noise, or a member type the table does not time) costs
# this fraction of the median positive cost, so that every sensitivity is positive and finite.
COST_FLOOR = 0.05
# The exponent of the relative cost in ``score / cost ** alpha`` (HALP's value / cost ratio: 1).
ALPHA = 1.0

_TIMED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


@dataclass(frozen=True)
class LayerShape:
    """One table entry: a layer type, its constructor arguments and its input shape (no batch)."""

    cls: type
    kwargs: tuple  # sorted (name, value) pairs
    input_shape: tuple

    def build(self) -> nn.Module:
        m = nn.utils.skip_init(self.cls, **dict(self.kwargs))
        with torch.no_grad():  # constant weights: no RNG, no denormals from uninitialised memory
            for p in m.parameters():
                p.fill_(0.01)
            for name, b in m.named_buffers():
                if b.is_floating_point():
                    b.fill_(1.0 if name == "running_var" else 0.0)
        return m.eval()

    @property
    def macs(self) -> int:
        """MACs per sample (a rough size, used by stand-in clocks in tests and for ordering)."""
        kw = dict(self.kwargs)
        if issubclass(self.cls, nn.modules.conv._ConvNd):
            spatial = math.prod(self.input_shape[1:])
            k = math.prod(kw["kernel_size"])
            return kw["in_channels"] // kw["groups"] * kw["out_channels"] * k * spatial
        if issubclass(self.cls, nn.Linear):
            return kw["in_features"] * kw["out_features"] * math.prod(self.input_shape[:-1] or (1,))
        return math.prod(self.input_shape)


_CACHE: dict = {}  # (LayerShape, batch, threads, runtime) -> ms, shared by every LatencyLUT with the real clock


class LatencyLUT:
    """Per-layer latency lookup table (ms per forward at ``batch``, ``threads``, on ``runtime``), filled on
    demand. ``runtime`` is a name of :data:`sweep.measure.RUNTIMES` (None: the CPU default,
    :func:`sweep.measure.default_runtime`).

    ``clock(shape, batch) -> ms`` replaces the measurement (deterministic stand-ins in tests); with the
    real clock entries are cached for the process (:data:`_CACHE`), keyed by shape, batch, threads and runtime.
    """

    def __init__(self, *, batch: int = 1, threads: int | None = None, clock: Callable | None = None,
                 warmup: int = LUT_TIMING["warmup"], repeats: int = LUT_TIMING["repeats"],
                 rounds: int = LUT_TIMING["rounds"], runtime: str | None = None):
        from ..measure import resolve_runtime

        self.batch = int(batch)
        self.threads = int(threads) if threads else torch.get_num_threads()
        self.clock = clock
        self.runtime = resolve_runtime(runtime, "cpu")
        self.warmup, self.repeats, self.rounds = int(warmup), int(repeats), max(1, int(rounds))
        self._table = _CACHE if clock is None else {}
        self.measured = 0  # entries this instance timed

    @property
    def timed_types(self) -> tuple:
        """The layer types the table prices on its runtime (BatchNorm only where it is a kernel of its own)."""
        return _TIMED if self.runtime == "torch" else _TIMED[:2]

    def _key(self, shape: LayerShape):
        return (shape, self.batch, self.threads, self.runtime)

    def fill(self, shapes: Iterable[LayerShape]) -> None:
        """Time every shape not yet in the table: all of them once per round, median over rounds."""
        todo = list(dict.fromkeys(s for s in shapes if self._key(s) not in self._table))
        if not todo:
            return
        if self.clock is not None:
            for s in todo:
                self._table[self._key(s)] = float(self.clock(s, self.batch))
            self.measured += len(todo)
            return
        from ..measure import make_runner, threads_kept, time_runs

        runs: dict = {s: [] for s in todo}
        # the timing inputs are random: leave the caller's RNG be (and its thread count)
        with threads_kept():
            torch.set_num_threads(self.threads)
            with torch.random.fork_rng(devices=[]):
                # one runner per entry (an ONNX export and session on onnxruntime), made before the rounds
                runners = {s: make_runner(s.build(), s.input_shape, batch=self.batch, threads=self.threads,
                                          runtime=self.runtime, check=False,
                                          onnx_model=onnx_layer(s, self.batch) if self.runtime == "onnxruntime"
                                          else None) for s in todo}
                for _ in range(self.rounds):
                    for s in todo:
                        runs[s].append(statistics.median(time_runs(runners[s], warmup=self.warmup,
                                                                   repeats=self.repeats)))
        for s, ms in runs.items():
            self._table[self._key(s)] = statistics.median(ms)
        self.measured += len(todo)

    def __getitem__(self, shape: LayerShape) -> float:
        key = self._key(shape)
        if key not in self._table:
            self.fill([shape])
        return self._table[key]

    def __contains__(self, shape: LayerShape) -> bool:
        return self._key(shape) in self._table


def onnx_layer(shape: LayerShape, batch: int) -> bytes | None:
    """The ONNX model of one Conv or Linear table entry, written directly (constant weights, as
    :meth:`LayerShape.build`): a large table (DenseNet-121 has thousands of entries) would otherwise
    spend most of its time in ``torch.onnx.export`` (a 256->128 1x1 conv: 2 ms written here against 28 ms
    exported, on a loaded 2-core machine). None for other layers (exported by torch then)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..measure import ONNX_OPSET

    kw = dict(shape.kwargs)
    x_shape = [batch, *shape.input_shape]
    inits, attrs = [], {}
    if shape.cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        k = list(kw["kernel_size"])
        w = np.full([kw["out_channels"], kw["in_channels"] // kw["groups"], *k], 0.01, dtype=np.float32)
        inits.append(numpy_helper.from_array(w, "w"))
        inputs = ["x", "w"]
        if kw["bias"]:
            inits.append(numpy_helper.from_array(np.full([kw["out_channels"]], 0.01, dtype=np.float32), "b"))
            inputs.append("b")
        padding, dil = kw["padding"], list(kw["dilation"])
        if padding == "same":  # PyTorch puts the odd element of the total padding at the end, as here
            total = [d * (n - 1) for d, n in zip(dil, k)]
            attrs["pads"] = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            attrs["pads"] = [0] * (2 * len(k)) if padding == "valid" else list(padding) * 2
        attrs.update(kernel_shape=k, strides=list(kw["stride"]), dilations=dil, group=kw["groups"])
        node = helper.make_node("Conv", inputs, ["y"], **attrs)
    elif shape.cls is nn.Linear:
        w = np.full([kw["in_features"], kw["out_features"]], 0.01, dtype=np.float32)  # x @ w: MatMul's layout
        inits.append(numpy_helper.from_array(w, "w"))
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if not kw["bias"] else "xw"])]
        if kw["bias"]:
            inits.append(numpy_helper.from_array(np.full([kw["out_features"]], 0.01, dtype=np.float32), "b"))
            nodes.append(helper.make_node("Add", ["xw", "b"], ["y"]))
        node = nodes
    else:
        return None
    nodes = node if isinstance(node, list) else [node]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = min(model.ir_version, 8)  # what onnxruntime >= 1.14 reads
    return onnx.shape_inference.infer_shapes(model).SerializeToString()


# ------------------------------------------------------------------------------------ layer shapes
def layer_input_shapes(model: nn.Module, example_inputs, modules: Iterable[nn.Module]) -> dict:
    """``{module: input shape without batch}`` of ``modules`` on one eval forward (first call of each)."""
    wanted = {id(m) for m in modules}
    shapes: dict = {}
    hooks = []

    def hook(mod, args):
        if id(mod) not in shapes and args and isinstance(args[0], torch.Tensor):
            shapes[id(mod)] = tuple(args[0].shape[1:])

    for m in model.modules():
        if id(m) in wanted:
            hooks.append(m.register_forward_pre_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs) if isinstance(example_inputs, (tuple, list)) else model(example_inputs)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return {m: shapes[id(m)] for m in modules if id(m) in shapes}


def _depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.modules.conv._ConvNd) and 1 < mod.groups == mod.in_channels == mod.out_channels


def _shape_at(mod: nn.Module, input_shape: tuple, kind: str, removed: int) -> LayerShape | None:
    """The table entry of ``mod`` with ``removed`` of its output (``kind="out"``) or input channels gone."""
    if isinstance(mod, nn.modules.conv._ConvNd):
        cin, cout, groups = mod.in_channels, mod.out_channels, mod.groups
        if _depthwise(mod):  # depthwise: inputs, outputs and groups go together
            cin = cout = groups = cin - removed
        elif kind == "out":
            cout -= removed - removed % groups  # a grouped conv keeps equal chunks
        else:
            cin -= removed - removed % groups
        if min(cin, cout, groups) < 1 or cin % groups or cout % groups:
            return None
        padding = mod.padding if isinstance(mod.padding, str) else tuple(mod.padding)
        kw = {"in_channels": cin, "out_channels": cout, "kernel_size": tuple(mod.kernel_size),
              "stride": tuple(mod.stride), "padding": padding,
              "dilation": tuple(mod.dilation), "groups": groups, "bias": mod.bias is not None}
        return LayerShape(type(mod), tuple(sorted(kw.items())), (cin,) + tuple(input_shape[1:]))
    if isinstance(mod, nn.Linear):
        fin, fout = mod.in_features, mod.out_features
        fout, fin = (fout - removed, fin) if kind == "out" else (fout, fin - removed)
        if min(fin, fout) < 1:
            return None
        kw = {"in_features": fin, "out_features": fout, "bias": mod.bias is not None}
        return LayerShape(nn.Linear, tuple(sorted(kw.items())), tuple(input_shape[:-1]) + (fin,))
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        c = mod.num_features - removed
        if c < 1:
            return None
        kw = {"num_features": c, "affine": mod.affine, "track_running_stats": mod.track_running_stats}
        return LayerShape(type(mod), tuple(sorted(kw.items())), (c,) + tuple(input_shape[1:]))
    return None


# ------------------------------------------------------------------------------------ group costs
@dataclass(frozen=True)
class GroupLatency:
    """A group's latency sensitivity: summed member-layer latency (ms) at probe widths (units kept),
    the fitted cost of one unit, ``per_unit_ms`` (> 0; ``floored`` if the fit was not positive), and the
    MACs one unit carries, ``per_unit_macs``."""

    name: str
    widths: tuple
    ms: tuple
    per_unit_ms: float
    floored: bool = False
    per_unit_macs: float = 0.0  # MACs per sample one unit removed saves (the member layers' slope)

    @property
    def ms_per_mac(self) -> float:
        """Latency one removed MAC buys (0 where the group's layers carry no MACs)."""
        return self.per_unit_ms / self.per_unit_macs if self.per_unit_macs > 0 else 0.0


def probe_widths(size: int, unit: int, fractions: Sequence[float] = PROBE_FRACTIONS) -> tuple:
    """The full width, then on-grid widths at ``fractions`` of it (distinct, >= one unit, < size)."""
    out = [size]
    for f in fractions:
        w = max(unit, int(size * f / unit) * unit) if unit > 1 else max(1, int(round(size * f)))
        if w < size and w not in out:
            out.append(w)
    return tuple(out)


def group_latencies(graph, groups: Sequence, units: Sequence[int] | None = None, *,
                    lut: LatencyLUT | None = None, fractions: Sequence[float] = PROBE_FRACTIONS) -> list[GroupLatency]:
    """One :class:`GroupLatency` per group of ``graph`` (a :class:`~sweep.engine.groups.ChannelGraph`).

    ``units`` are the groups' rounding units (the probe widths sit on their grid); ``lut`` defaults to a
    table at the example input's batch and the current thread count.
    """
    x = graph.example_inputs
    first = x[0] if isinstance(x, (tuple, list)) else x
    lut = lut or LatencyLUT(batch=int(first.shape[0]))
    units = list(units) if units is not None else [1] * len(groups)
    timed = lut.timed_types

    members = []  # per group: [(module, kind, channels of it in the group)]
    for g in groups:
        merged: dict = {}
        for m in g.members:
            if isinstance(m.module, timed):
                mod = m.module
                if _depthwise(mod):  # one layer, whichever side the graph lists it on
                    merged.setdefault(id(mod), (mod, "out", len(m.idxs)))
                    continue
                key = (id(mod), m.kind)
                _, kind, n = merged.get(key, (mod, m.kind, 0))
                merged[key] = (mod, kind, n + len(m.idxs))
        members.append(list(merged.values()))
    in_shapes = layer_input_shapes(graph.model, x, {mod for ms in members for mod, _, _ in ms})

    plans = []  # per group: (widths, [[shapes at each width]])
    for g, unit, ms in zip(groups, units, members):
        size = g.size
        widths = probe_widths(size, max(1, min(unit, size)), fractions)
        per_member = []  # a member is priced at every probe width or at none (no step from a gap)
        for mod, kind, n in ms:
            if mod in in_shapes:
                row = [_shape_at(mod, in_shapes[mod], kind, int(round(n * (size - w) / size))) for w in widths]
                if all(s is not None for s in row):
                    per_member.append(row)
        plans.append((widths, [[row[k] for row in per_member] for k in range(len(widths))]))
    lut.fill(s for _, at in plans for shapes in at for s in shapes)

    out = []
    for g, (widths, at) in zip(groups, plans):
        ms = tuple(sum(lut[s] for s in shapes) for shapes in at)
        macs = tuple(float(sum(s.macs for s in shapes if not _is_bn(s))) for shapes in at)
        out.append(GroupLatency(g.name, widths, ms, _slope(widths, ms), per_unit_macs=max(0.0, _slope(widths, macs))))
    positive = [r.per_unit_ms for r in out if r.per_unit_ms > 0]
    floor = COST_FLOOR * statistics.median(positive) if positive else 1e-6
    return [r if r.per_unit_ms >= floor else
            GroupLatency(r.name, r.widths, r.ms, floor, floored=True, per_unit_macs=r.per_unit_macs) for r in out]


def _is_bn(shape: LayerShape) -> bool:
    return issubclass(shape.cls, nn.modules.batchnorm._BatchNorm)


def _slope(widths: Sequence[int], ms: Sequence[float]) -> float:
    """Least-squares ms saved per unit removed (x = units removed, y = latency)."""
    if len(widths) < 2:
        return 0.0
    xs = [widths[0] - w for w in widths]
    mx, my = statistics.fmean(xs), statistics.fmean(ms)
    var = sum((a - mx) ** 2 for a in xs)
    return -sum((a - mx) * (b - my) for a, b in zip(xs, ms)) / var if var else 0.0


def latency_weighted_scores(scores: Sequence[torch.Tensor], costs: Sequence[GroupLatency],
                            alpha: float = ALPHA, per: str = "unit") -> list[torch.Tensor]:
    """``score / (cost / mean cost) ** alpha`` per group: the order inside a group is unchanged; across
    groups, channels that are cheap to keep rank higher.

    ``per="unit"``: the cost is the latency one unit adds (the knapsack ratio for a latency budget).
    ``per="mac"``: the latency one removed MAC buys (``ms_per_mac``), the ratio for a *MACs* budget: the
    MACs to remove are fixed, so the latency saved is largest where each removed MAC saves the most time
    (layers that are slow per MAC: weight- or memory-bound, off the runtime's channel blocks). A group
    without MACs (nothing to buy) gets the mean cost."""
    if len(scores) != len(costs):
        raise ValueError(f"need one latency cost per group, but got {len(costs)} costs for {len(scores)} groups")
    if per not in ("unit", "mac"):
        raise ValueError(f"per must be 'unit' or 'mac', but got per={per!r}")
    if not costs:
        return list(scores)
    if per == "unit":
        cost = [c.per_unit_ms for c in costs]
    else:
        known = [c.ms_per_mac for c in costs if c.ms_per_mac > 0]
        fill = statistics.fmean(known) if known else 1.0
        cost = [c.ms_per_mac if c.ms_per_mac > 0 else fill for c in costs]
    mean = statistics.fmean(cost)
    return [s / (c / mean) ** alpha for s, c in zip(scores, cost)]
