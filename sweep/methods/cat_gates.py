"""Gates, expected cost and live surgery for ``cat`` (complexity-aware training).

A RECONSTRUCTION of Guenter & Sideris, "Complexity-aware training ...", arXiv 2411.09127: the paper's
body was not read; what follows is our reconstruction; see
:mod:`sweep.methods.cat` for the method and the citations of each piece.

:class:`GatedNet` wraps a live model with

- one probability θ_u ∈ [0, 1] per *unit* of every coupled channel group of
  :class:`sweep.engine.groups.ChannelGraph` (coupled channels share one gate), and one probability
  φ_b ∈ [0, 1] per identity-shortcut residual block of :func:`sweep.engine.depth.removable_blocks`;
- forward hooks that apply gate values z (Bernoulli samples with a straight-through gradient in
  training, hard 0/1 values at the end);
- the expected cost E[MACs], E[params], multilinear in the gates and exact for the layer shapes;
- physical removal of channels and blocks during training, with the gate state carried across the
  surgery, and the final removal that returns a plain smaller ``nn.Module``.

Where the gates act (chosen so that a gate at 0 is *exactly* the removed structure):

- **Channels** are masked at the *inputs of their consumers*: every conv / linear layer that reads a
  channel of group g (the ``in`` members of the group, with Torch-Pruning's index mapping through
  concat, flatten and residual adds) multiplies that input channel by z_u.  Physical removal of unit u
  does precisely this — the channel disappears from every consumer's input — so the gated network
  with z ∈ {0, 1} and the rebuilt one give the same outputs, in eval *and* in training mode (the
  removed channel's own BatchNorm statistics never reach a consumer).  Masking the root conv's output
  instead would be wrong before a BatchNorm (BN adds β to a zero channel), and masking one BN output
  misses the other producers of a residual-coupled group (stem + every block's last BN).
  A group whose channels reach a layer that is neither conv nor linear (e.g. a LayerNorm) is not
  gated (listed in ``ungated``).
- **Blocks** are gated on their output: a forward hook replaces the block output y by
  ``x + z·(y − x)`` (x = the block input).  With z ∈ {0, 1} this is exact whatever happens after the
  add: z = 1 gives y, z = 0 gives x, i.e. the block removed (its shortcut is the identity).  For
  sweep's CIFAR ``BasicBlock`` (``relu(bn2(conv2(·)) + x)``) and torchvision's ``BasicBlock`` /
  ``Bottleneck`` (``relu(bn2/bn3(...) + x)``) this is therefore preferred to scaling ``bn2`` / ``bn3``:
  ``relu(x + 0·F(x)) = relu(x)`` equals x only where x ≥ 0.  The straight-through gradient is
  ⟨∂L/∂y_out, y − x⟩, the first-order effect of removing the block.  Every identity-shortcut block is
  gated, the first of a stage too (``removable_blocks(..., keep_first_of_stage=False)``: SR-init keeps
  those by convention; removing a block here only needs its shortcut to be the identity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

CONV = nn.modules.conv._ConvNd
BN = nn.modules.batchnorm._BatchNorm
LINEAR = nn.Linear
OWN_GRID = object()  # GatedNet.units_on: the net's own round_to (None there means no rounding)


@dataclass
class GroupGate:
    """The gates of one channel group: units ``offset .. offset + size`` of the flat θ vector."""

    group: Any  # sweep.engine.groups.ChannelGroup
    offset: int
    size: int
    block: int  # index of the gated block that holds every layer of the group, else -1
    outs: list  # [(module, idxs LongTensor, units LongTensor)] for the out members (conv/linear/BN)
    ins: list  # [(module, idxs, units)] for the in members (conv/linear consumers)
    width0: int = 0  # the group's units in the input network: what its rounding grid is taken from


@dataclass
class LayerCost:
    """One parameterised leaf module, as the cost model sees it."""

    module: nn.Module
    kind: str  # "conv" | "linear" | "norm" | "other"
    block: int  # gated block holding it, or -1
    k: int = 1  # kernel elements (k_h * k_w)
    hw: int = 1  # output positions per sample (H_k * W_k; 1 for a plain linear)
    groups: int = 1
    in_map: torch.Tensor | None = None  # flat θ index per input channel, -1 = not gated (always 1)
    out_map: torch.Tensor | None = None
    bias: bool = False
    const: int = 0  # parameters of a module the gates do not touch
    fan: int = 0  # input channels per group of a grouped conv


@dataclass
class GateState:
    """Gate values carried across a surgery, keyed by module identity (names change when blocks go)."""

    channels: dict = field(default_factory=dict)  # id(out module) -> (θ, low-count, velocity) per out channel
    blocks: dict = field(default_factory=dict)  # id(block) -> (φ, low-count, velocity)


def _in_dim(module) -> int:
    return 1 if isinstance(module, CONV) else -1


class GatedNet:
    """A live model with channel and block gates attached (see the module docstring)."""

    def __init__(self, model: nn.Module, example_inputs, ignored_layers, *, channel_gates: bool,
                 block_gates: bool, init: float, device: str = "cpu", norm: tuple | None = None,
                 round_to: int | str | None = None):
        self.model = model
        # the grid kept channel counts go on (:meth:`units_on`): ``round_to`` as for the engine's solver
        self.round_to = round_to
        self._width0: dict[int, tuple] = {}  # id(out module) -> (module, its group's units when first gated)
        self.example_inputs = example_inputs
        self._ignored = list(ignored_layers)
        self.channel_gates = channel_gates
        self.block_gates = block_gates
        self.init = float(init)
        self.device = device
        self._handles: list = []
        self._z: torch.Tensor | None = None  # gate values applied by the hooks (None: hooks are no-ops)
        self._zb: torch.Tensor | None = None
        self._grad = False  # z carries a straight-through gradient (training)
        self._build(None)
        if norm is None:
            with torch.no_grad():
                m, p = self.expected(torch.ones_like(self.theta), torch.ones_like(self.phi))
            norm = (float(m), float(p))
        self.macs0, self.params0 = norm  # the cost of the full network: normalises C

    # ------------------------------------------------------------------ building
    def _present(self, mods) -> list:
        present = {id(m) for m in self.model.modules()}
        return [m for m in mods if id(m) in present]

    def _build(self, state: GateState | None) -> None:
        from ..engine.depth import removable_blocks
        from ..engine.groups import ChannelGraph

        self.detach()
        model = self.model
        mods = dict(model.named_modules())
        # -- block gates: every residual block with an identity shortcut (the first of a stage too)
        self.blocks: list[nn.Module] = []
        if self.block_gates:
            refs = removable_blocks(model, self.example_inputs, keep_first_of_stage=False)
            self.blocks = [mods[r.name] for r in refs if r.removable]
        inside: dict[int, int] = {}
        for i, b in enumerate(self.blocks):
            for m in b.modules():
                inside[id(m)] = i
        phi = torch.full((len(self.blocks),), self.init)
        lowb = torch.zeros(len(self.blocks), dtype=torch.long)
        velb = torch.zeros(len(self.blocks))
        if state is not None:
            for i, b in enumerate(self.blocks):
                if id(b) in state.blocks:
                    phi[i], lowb[i], velb[i] = state.blocks[id(b)]
        # -- channel gates: one per unit of each coupled group
        # the given layers still in the model; none given: the engine's skipped_layers
        self.graph = ChannelGraph(model, self.example_inputs, self._present(self._ignored) or None) \
            if self.channel_gates else None
        self.groups: list[GroupGate] = []
        self.ungated: list[tuple[str, str]] = []
        thetas, lows, vels, offset = [], [], [], 0
        for g in (self.graph.groups if self.graph is not None else []):
            size = g.size
            outs, ins, seen, bad = [], [], set(), []
            for mem in g.members:
                key = (id(mem.module), mem.kind)
                if key in seen:
                    continue
                seen.add(key)
                idxs = torch.as_tensor(mem.idxs, dtype=torch.long)
                units = torch.as_tensor(mem.root_idxs, dtype=torch.long) % size
                if mem.kind == "in":
                    if isinstance(mem.module, (CONV, LINEAR)):
                        ins.append((mem.module, idxs, units))
                    else:
                        bad.append(mem.name)
                elif isinstance(mem.module, (CONV, LINEAR, BN)):
                    outs.append((mem.module, idxs, units))
            if bad or not ins:
                self.ungated.append((g.name, f"channels read by {bad[0]}" if bad else "no conv/linear reads it"))
                continue
            blocks_of = {inside.get(id(m), -1) for m in g.layers}
            block = blocks_of.pop() if len(blocks_of) == 1 else -1
            theta = torch.full((size,), self.init)
            low = torch.zeros(size, dtype=torch.long)
            vel = torch.zeros(size)
            if state is not None:
                for mod, idxs, units in outs:
                    if id(mod) in state.channels:
                        t, lo, v = state.channels[id(mod)]
                        theta[units], low[units], vel[units] = t[idxs], lo[idxs], v[idxs]
                        break
            self.groups.append(GroupGate(g, offset, size, block, outs, ins, self._first_width(outs, size)))
            thetas.append(theta)
            lows.append(low)
            vels.append(vel)
            offset += size
        self.theta = (torch.cat(thetas) if thetas else torch.zeros(0)).to(self.device).requires_grad_(True)
        self.low = torch.cat(lows) if lows else torch.zeros(0, dtype=torch.long)
        self.vel = (torch.cat(vels) if vels else torch.zeros(0)).to(self.device)  # gate gradient EMA
        self.phi = phi.to(self.device).requires_grad_(True)
        self.lowb = lowb
        self.velb = velb.to(self.device)
        self._build_cost(inside)
        self._attach()

    def _first_width(self, outs: list, size: int) -> int:
        """The group's units when the network was first gated (the modules that write it are kept across
        surgeries); ``size`` for a group seen the first time."""
        for mod, _, _ in outs:
            if id(mod) in self._width0:
                return self._width0[id(mod)][1]
        for mod, _, _ in outs:
            self._width0[id(mod)] = (mod, size)  # the module itself is held, so that its id is never reused
        return size

    def _build_cost(self, inside: dict) -> None:
        """Layer records for the expected cost; output positions H·W traced once on the example input."""
        hw: dict[int, int] = {}

        def hook(mod, args, out):
            if isinstance(out, torch.Tensor) and id(mod) not in hw:
                ch = out.shape[1] if isinstance(mod, CONV) else out.shape[-1]
                hw[id(mod)] = max(1, out.numel() // max(1, out.shape[0] * ch))

        leaves = [m for m in self.model.modules() if any(True for _ in m.parameters(recurse=False))]
        handles = [m.register_forward_hook(hook) for m in leaves if isinstance(m, (CONV, LINEAR))]
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                ex = self.example_inputs
                self.model(*ex) if isinstance(ex, (tuple, list)) else self.model(ex)
        finally:
            for h in handles:
                h.remove()
            self.model.train(was)
        maps: dict[tuple[int, str], torch.Tensor] = {}
        for gg in self.groups:
            for mod, idxs, units in gg.ins:
                n = mod.in_channels if isinstance(mod, CONV) else mod.in_features
                maps.setdefault((id(mod), "in"), torch.full((n,), -1, dtype=torch.long))[idxs] = gg.offset + units
            for mod, idxs, units in gg.outs:
                n = mod.out_channels if isinstance(mod, CONV) else \
                    mod.out_features if isinstance(mod, LINEAR) else mod.num_features
                maps.setdefault((id(mod), "out"), torch.full((n,), -1, dtype=torch.long))[idxs] = gg.offset + units
        layers = []
        for m in leaves:
            blk = inside.get(id(m), -1)
            if isinstance(m, (CONV, LINEAR)):
                conv = isinstance(m, CONV)
                cin = m.in_channels if conv else m.in_features
                cout = m.out_channels if conv else m.out_features
                k = int(torch.tensor(m.weight.shape[2:]).prod()) if conv else 1
                groups = m.groups if conv else 1
                if id(m) not in hw:  # not reached by the forward: count its parameters only
                    layers.append(LayerCost(m, "other", blk, const=sum(p.numel() for p in m.parameters(recurse=False))))
                    continue
                layers.append(LayerCost(
                    m, "conv" if conv else "linear", blk, k=k, hw=hw[id(m)], groups=groups,
                    in_map=maps.get((id(m), "in"), torch.full((cin,), -1, dtype=torch.long)),
                    out_map=maps.get((id(m), "out"), torch.full((cout,), -1, dtype=torch.long)),
                    bias=m.bias is not None, fan=cin // groups))
            elif isinstance(m, BN) and m.affine:
                layers.append(LayerCost(m, "norm", blk, out_map=maps.get(
                    (id(m), "out"), torch.full((m.num_features,), -1, dtype=torch.long))))
            else:
                layers.append(LayerCost(m, "other", blk, const=sum(p.numel() for p in m.parameters(recurse=False))))
        for r in layers:
            if r.in_map is not None:
                r.in_map = r.in_map.to(self.device)
            if r.out_map is not None:
                r.out_map = r.out_map.to(self.device)
        self.layers = layers

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        consumers: dict[int, list] = {}
        for gg in self.groups:
            for mod, idxs, units in gg.ins:
                consumers.setdefault(id(mod), [mod, [], []])
                consumers[id(mod)][1].append(idxs)
                consumers[id(mod)][2].append(gg.offset + units)
        for mod, pos_list, gidx_list in consumers.values():
            pos = torch.cat(pos_list).to(self.device)
            gidx = torch.cat(gidx_list).to(self.device)
            self._handles.append(mod.register_forward_pre_hook(self._mask_hook(pos, gidx, _in_dim(mod))))
        for i, b in enumerate(self.blocks):
            self._handles.append(b.register_forward_hook(self._block_hook(i)))

    def _mask_hook(self, pos: torch.Tensor, gidx: torch.Tensor, dim: int):
        gated = self

        def hook(mod, args):
            z = gated._z
            if z is None or not args:
                return None
            zz = z[gidx]
            if not gated._grad and bool((zz == 1).all()):
                return None
            x = args[0]
            c = x.shape[dim]
            mask = x.new_ones(c).index_put((pos,), zz.to(x.dtype))
            if dim == 1:
                mask = mask.view(1, c, *([1] * (x.dim() - 2)))
            return (x * mask, *args[1:])

        return hook

    def _block_hook(self, i: int):
        gated = self

        def hook(mod, args, out):
            zb = gated._zb
            if zb is None or not args:
                return None
            x, z = args[0], zb[i]
            if not gated._grad:
                if bool(z == 1):
                    return out
                if bool(z == 0):
                    return x
            return x + z * (out - x)

        return hook

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ gate values
    def sample(self, gen: torch.Generator) -> None:
        """z ~ Bernoulli(θ), one draw per structure for this mini-batch, with the straight-through
        gradient ∂L/∂θ := ∂L/∂z (the forward value is exactly z: θ − θ.detach() is 0)."""
        with torch.no_grad():
            z = (torch.rand(self.theta.shape, generator=gen) < self.theta.detach().cpu()).float()
            zb = (torch.rand(self.phi.shape, generator=gen) < self.phi.detach().cpu()).float()
        self._z = z.to(self.device) + (self.theta - self.theta.detach())
        self._zb = zb.to(self.device) + (self.phi - self.phi.detach())
        self._grad = True

    def set_gates(self, z: torch.Tensor, zb: torch.Tensor) -> None:
        """Fixed gate values, no gradient (the deterministic network)."""
        self._z = z.detach().to(self.device).float()
        self._zb = zb.detach().to(self.device).float()
        self._grad = False

    def clear_gates(self) -> None:
        self._z = self._zb = None
        self._grad = False

    # ------------------------------------------------------------------ expected cost
    def expected(self, theta: torch.Tensor | None = None, phi: torch.Tensor | None = None):
        """(E[MACs], E[params]) under independent gates with probabilities θ, φ (absolute counts).

        E[MACs_k] = φ_block(k) · k_h·k_w·H_k·W_k / groups_k · E[c_in,k] · E[c_out,k] with E[c] = Σ θ over
        the layer's channels (ungated channels count 1); a grouped conv keeps its fan-in per group.
        E[params_k] is the same without H·W, plus bias and BatchNorm terms (2 per channel).
        """
        theta = self.theta if theta is None else theta
        phi = self.phi if phi is None else phi
        one = theta.new_ones(1)
        t = torch.cat([theta, one])  # index -1 -> 1 (ungated)
        p = torch.cat([phi, phi.new_ones(1)])
        macs = params = theta.new_zeros(())
        for r in self.layers:
            f = p[r.block]
            if r.kind in ("conv", "linear"):
                cout = t[r.out_map].sum()
                per_pos = r.k * cout * (r.fan if r.groups > 1 else t[r.in_map].sum())
                macs = macs + f * per_pos * r.hw
                params = params + f * (per_pos + (cout if r.bias else 0))
            elif r.kind == "norm":
                params = params + f * 2 * t[r.out_map].sum()
            else:
                params = params + f * r.const
        return macs, params

    def cost(self, gamma: float, theta=None, phi=None) -> torch.Tensor:
        """C = γ·E[MACs]/MACs₀ + (1−γ)·E[params]/params₀ (1 for the full network)."""
        m, p = self.expected(theta, phi)
        return gamma * m / self.macs0 + (1 - gamma) * p / self.params0

    def marginal_costs(self, gamma: float, full: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """∂C/∂θ_u and ∂C/∂φ_b at the current gates (each structure's marginal share of C), or with
        ``full`` at every gate 1 (the largest they can be: C is multilinear with non-negative
        coefficients, so a marginal cost only falls as other gates fall)."""
        theta = (torch.ones_like(self.theta) if full else self.theta).detach().clone().requires_grad_(True)
        phi = (torch.ones_like(self.phi) if full else self.phi).detach().clone().requires_grad_(True)
        c = self.cost(gamma, theta, phi)
        if theta.numel() + phi.numel() == 0:
            return theta.detach(), phi.detach()
        gt, gp = torch.autograd.grad(c, [theta, phi], allow_unused=True)
        gt = torch.zeros_like(theta) if gt is None else gt
        gp = torch.zeros_like(phi) if gp is None else gp
        return gt.detach(), gp.detach()

    # ------------------------------------------------------------------ counts
    def live_channels(self, eps: float) -> int:
        """Output channels of conv/linear layers that are present and whose gates (own and block's) are ≥ ε."""
        with torch.no_grad():
            t = torch.cat([self.theta.detach(), self.theta.new_ones(1)])
            p = torch.cat([self.phi.detach(), self.phi.new_ones(1)])
            n = 0
            for r in self.layers:
                if r.kind in ("conv", "linear") and bool(p[r.block] >= eps):
                    n += int((t[r.out_map] >= eps).sum())
        return n

    def undecided(self, eps: float) -> int:
        """Gates (channel and block) not within ``eps`` of 0 or 1."""
        with torch.no_grad():
            t = torch.cat([self.theta.detach().flatten(), self.phi.detach().flatten()])
            return int(((t > eps) & (t < 1 - eps)).sum())

    def live_blocks(self, eps: float) -> int:
        """Residual blocks present whose gate (if gated) is ≥ ε."""
        from ..engine.depth import block_names

        return len(block_names(self.model)) - int((self.phi.detach().cpu() < eps).sum())

    # ------------------------------------------------------------------ decisions and surgery
    @property
    def ignored_layers(self) -> list:
        """The layers this net was told to leave ungated (as given; those no longer in the model included)."""
        return list(self._ignored)

    def units_on(self, round_to: Any = OWN_GRID) -> list[int]:
        """Per group, the multiple its kept count keeps on the grid ``round_to`` (the engine's
        :func:`~sweep.engine.channels.rounding_unit` of the group's width in the input network; a grouped
        conv's chunks are not rounded), at most that width; by default on this net's own grid."""
        from ..engine.channels import rounding_unit

        grid = self.round_to if round_to is OWN_GRID else round_to
        return [min(gg.width0, rounding_unit(gg.width0, grid)) if gg.group.ch_groups == 1 else 1
                for gg in self.groups]

    def unit_order(self, gi: int) -> torch.Tensor:
        """Group ``gi``'s units, the most worth keeping first: highest θ, ties (committed gates sit at exactly
        0 or 1) broken by the larger weight magnitude (Torch-Pruning's group L2 score)."""
        gg = self.groups[gi]
        theta = self.theta.detach().cpu()[gg.offset:gg.offset + gg.size].double()
        score = gg.group.score("l2")
        if score is None or score.numel() != gg.size:
            score = torch.zeros(gg.size)
        by_score = torch.argsort(score.detach().cpu().double(), descending=True, stable=True)
        return by_score[torch.argsort(theta[by_score], descending=True, stable=True)]  # stable: θ, then score

    def decide(self, off: torch.Tensor, off_blocks: torch.Tensor, grid: str | None = None,
               units_on: list | None = None) -> tuple[dict, list]:
        """Which units and blocks go, given per-structure "off" flags, with the safeguards:
        a group never loses every unit — unless it lies inside a gated residual block, which then goes
        (its shortcut carries the signal) — else its most probable unit stays.

        ``grid`` puts each remaining group's kept count on its grid (``units_on``, default
        :meth:`units_on`: multiples of the unit, at least one unit, at most the group's present units):
        ``"up"`` rounds it up, keeping the most worth keeping of the units flagged off
        (:meth:`unit_order`; removals during training, which may defer a removal but never make one the
        flags did not ask for), ``"nearest"`` to the nearest multiple (the final decision), dropping the
        least worth keeping of the units kept or keeping the best of those flagged off."""
        off = off.clone().bool()
        off_blocks = off_blocks.clone().bool()
        theta = self.theta.detach().cpu()
        per_unit = (units_on if units_on is not None else self.units_on()) if grid else [1] * len(self.groups)
        for gg in self.groups:
            if gg.block >= 0 and bool(off[gg.offset:gg.offset + gg.size].all()):
                off_blocks[gg.block] = True
        units: dict[int, list[int]] = {}
        for i, gg in enumerate(self.groups):
            if gg.block >= 0 and bool(off_blocks[gg.block]):
                continue  # goes with its block
            o = off[gg.offset:gg.offset + gg.size].clone()
            if bool(o.all()):
                o[int(theta[gg.offset:gg.offset + gg.size].argmax())] = False
            if per_unit[i] > 1:
                o = self.on_grid(i, o, per_unit[i], grid)
            if bool(o.any()):
                units[i] = [int(u) for u in o.nonzero().flatten()]
        blocks = [int(b) for b in off_blocks.nonzero().flatten()]
        return units, blocks

    def on_grid(self, gi: int, off: torch.Tensor, unit: int, how: str) -> torch.Tensor:
        """``off`` (group ``gi``'s flags) with the kept count on the grid of ``unit`` (see :meth:`decide`)."""
        size = self.groups[gi].size
        kept = size - int(off.sum())
        steps = math.ceil(kept / unit) if how == "up" else math.floor(kept / unit + 0.5)
        want = min(size, max(unit, steps * unit))
        if want == kept:
            return off
        off = off.clone()
        order = [int(u) for u in self.unit_order(gi)]
        if want > kept:  # keep the best of the units flagged off
            for u in [u for u in order if bool(off[u])][:want - kept]:
                off[u] = False
        else:  # drop the least worth keeping of the units kept
            for u in [u for u in order if not bool(off[u])][want - kept:]:
                off[u] = True
        return off

    def remove(self, units: dict, blocks: list, rebuild: bool = True) -> None:
        """Remove ``units`` ({group index: unit indices}) and ``blocks`` (block gate indices) from the
        live model; with ``rebuild`` the graph, gates and hooks are rebuilt and the gate values of
        the surviving structures carried over."""
        from ..engine.depth import remove_blocks

        state = self._state()
        self.detach()
        gone = {id(m) for i in blocks for m in self.blocks[i].modules()}
        selection = {}
        for gi, us in units.items():
            gg = self.groups[gi]
            if all(id(m) in gone for m in gg.group.layers):
                continue
            selection[gg.group] = us
            dropped = torch.zeros(gg.size, dtype=torch.bool)
            dropped[torch.as_tensor(us, dtype=torch.long)] = True
            for mod, idxs, u in gg.outs:
                if id(mod) in state.channels:
                    keep = torch.ones(state.channels[id(mod)][0].numel(), dtype=torch.bool)
                    keep[idxs[dropped[u]]] = False
                    state.channels[id(mod)] = tuple(v[keep] for v in state.channels[id(mod)])
        if selection:
            self.graph.prune(selection)
        if blocks:
            names = {m: n for n, m in self.model.named_modules()}
            remove_blocks(self.model, [names[self.blocks[i]] for i in blocks], self.example_inputs,
                          keep_first_of_stage=False)
        if rebuild:
            self._build(state)
        else:
            self.clear_gates()

    def _state(self) -> GateState:
        st = GateState()
        theta, vel = self.theta.detach().cpu(), self.vel.cpu()
        for gg in self.groups:
            for mod, idxs, units in gg.outs:
                n = mod.out_channels if isinstance(mod, CONV) else \
                    mod.out_features if isinstance(mod, LINEAR) else mod.num_features
                t, lo, v = torch.ones(n), torch.zeros(n, dtype=torch.long), torch.zeros(n)
                t[idxs] = theta[gg.offset + units]
                lo[idxs] = self.low[gg.offset + units]
                v[idxs] = vel[gg.offset + units]
                st.channels[id(mod)] = (t, lo, v)
        phi, velb = self.phi.detach().cpu(), self.velb.cpu()
        for i, b in enumerate(self.blocks):
            st.blocks[id(b)] = (float(phi[i]), int(self.lowb[i]), float(velb[i]))
        return st
