"""Teacher-guided layer-wise reconstruction: re-fit a pruned network's layers so that, on unlabeled inputs,
each one's outputs match the unpruned network's (the teacher's) outputs of the same layer.

Removing a layer's input channels changes what it computes; its remaining weights were fitted to inputs that
no longer all exist.  Before any training step, the weights that best make up for the loss can be solved for
in closed form: for layer l with input patches X (from the pruned network, every earlier layer already
re-fitted) and the teacher's outputs Y of the same layer at the kept output channels, minimise
``‖Y − X Wᵀ‖² + λ‖W − W₀‖²`` over W (ridge regression towards the pruned weights W₀).  That is the least-
squares reconstruction step of channel pruning (He, Zhang & Sun, "Channel Pruning for Accelerating Very Deep
Neural Networks", ICCV 2017, §3.1, Eq. 1-2; Luo, Wu & Lin, "ThiNet", ICCV 2017, §3.3, "minimize the
reconstruction error"), there with the *pruned* network's own outputs before pruning as the target.

**Our choices (a reconstruction of that step, not a copy of either paper):**

* the target is the teacher's output of the same layer (its pre-activation, before any BatchNorm), restricted
  to the channels the pruned layer keeps, so that the following BatchNorm's statistics stay valid;
* layers are re-fitted in the execution order, each from the pruned network's *current* inputs (inside one
  forward pass, each layer just before it runs), so that a layer also makes up for what the layers before
  it could not (He et al. do the same, §3.1);
* by default only the layers that lost input channels are re-fitted (the others compute what they computed);
  ``layers="all"`` re-fits every conv / linear layer with a counterpart in the teacher;
* ``RIDGE = 1e-3`` (ours): λ = RIDGE × the mean diagonal of XᵀX, towards W₀, so that directions the
  calibration inputs do not excite keep their pruned weights instead of growing without bound;
* ``ROWS = 16384`` (ours): of a layer's N × H × W output positions at most this many, drawn with a seeded
  generator, enter its normal equations (solved in float64); only those rows of the teacher's outputs are
  kept between the two passes (float32), at most ``MAX_HELD_BYTES`` (1 GiB) for all layers together: where
  ROWS rows of every re-fitted layer would take more, every layer gets fewer (``rows_per_layer``; ResNet-20:
  9 layers, 10 MB; a ResNet-50 with every layer re-fitted: about 10,000 rows each, still twice the widest
  layer's unknowns);
* a layer with a bias gets a column of ones; grouped / depthwise convs, transposed convs and layers whose
  normal equations would exceed ``MAX_UNKNOWNS`` unknowns per output are left as they are and listed;
* a re-fit that would not lower the layer's reconstruction error on the calibration rows is not applied, nor
  one of a layer that already matches (relative error at most ``MATCHED``, rounding).

Label-free: only the inputs of the batches are read (a tensor, or the first item of a tuple / list).  The
teacher and the pruned network share layer names (channel pruning keeps them), or ``student_names`` maps
them (a network whose blocks were removed: its stages are renumbered, and the removed blocks' layers have no
counterpart and are listed as skipped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

RIDGE = 1e-3
ROWS = 16384
MAX_HELD_BYTES = 1 << 30
# a relative error at or below this is rounding: the layer already computes the teacher's outputs (e.g. the
# layers before the first removed block) and is left as it is
MATCHED = 1e-9
MAX_UNKNOWNS = 4609  # 512 input channels x 3 x 3 + a bias: the widest layer of a VGG / ResNet-34


@dataclass
class ReconstructionResult:
    layers: list[str] = field(default_factory=list)  # re-fitted, in execution order
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it was left as it was
    error_before: dict[str, float] = field(default_factory=dict)  # relative squared error, pruned weights
    error_after: dict[str, float] = field(default_factory=dict)  # the same with the re-fitted weights
    inputs: int = 0  # calibration inputs
    rows: int = 0  # sampled output positions per layer
    forwards: float = 0.0  # forward passes of one calibration input, teacher and pruned network together

    def info(self) -> dict:
        return {"layers": list(self.layers), "skipped": dict(self.skipped),
                "error_before": {k: round(v, 6) for k, v in self.error_before.items()},
                "error_after": {k: round(v, 6) for k, v in self.error_after.items()},
                "inputs": self.inputs, "rows": self.rows, "forward_passes": round(self.forwards, 1)}


def reconstruct_layers(student, teacher, kept: Mapping[str, tuple[Sequence[int], Sequence[int]]],
                       batches: Iterable, *, layers: str = "pruned_inputs", ridge: float = RIDGE,
                       rows: int = ROWS, seed: int = 0, device: str = "cpu",
                       student_names: Mapping[str, str] | None = None) -> ReconstructionResult:
    """Re-fit ``student``'s layers in place towards ``teacher`` on ``batches`` (unlabeled inputs).

    ``kept``: ``{layer name: (kept output channels, kept input channels)}`` in the teacher's coordinates,
    as :meth:`sweep.engine.groups.ChannelGraph.kept_channels` gives them before pruning; a layer not in it
    kept all its channels.  ``layers``: ``"pruned_inputs"`` (default) or ``"all"`` (see the module
    docstring).  Both networks are put in eval mode; the student's weights change, nothing else does.

    Cost: one forward pass of the teacher and one of the student over the batches, joined into one batch
    (the layers are re-fitted inside the student's pass, each before it runs, so that later layers see the
    re-fitted ones); memory is that of one forward pass over all of them.

    ``student_names``: ``{teacher layer name: student layer name}`` for networks whose names differ (one
    whose blocks were removed has its stages renumbered); given, it is the whole map: a teacher layer missing
    from it has no counterpart (its block is gone) and is skipped.  None: the same names.  Results are keyed
    by the teacher's names.
    """
    import torch
    from torch import nn

    from .groups import out_in_channels

    if layers not in ("pruned_inputs", "all"):
        raise ValueError(f"layers must be 'pruned_inputs' or 'all', but got layers={layers!r} (reconstruct_layers)")
    xs = [_input_of(b) for b in batches]
    result = ReconstructionResult(inputs=sum(len(x) for x in xs))
    if not xs:
        return result
    x = torch.cat(xs).to(device)
    teacher.to(device).eval()
    student.to(device).eval()
    t_mods, s_by_name = dict(teacher.named_modules()), dict(student.named_modules())
    counterpart = {t: t for t in t_mods} if student_names is None else student_names
    s_mods = {t: s_by_name.get(counterpart.get(t, "\0")) for t in t_mods}  # teacher name -> student layer or None
    order = _execution_order(teacher, x[:1], (nn.Conv2d, nn.Conv1d, nn.Linear))
    targets = []
    for name in order:
        t_mod, s_mod = t_mods[name], s_mods.get(name)
        out_kept, in_kept = _kept(kept, name, t_mod)
        why = _unsupported(t_mod, s_mod)
        if why is None and layers == "pruned_inputs" and len(in_kept) == out_in_channels(t_mod)[1]:
            continue  # its inputs are the teacher's: nothing to make up for
        if why is None and tuple(s_mod.weight.shape[:2]) != (len(out_kept), len(in_kept)):
            why = (f"its weight is {tuple(s_mod.weight.shape[:2])} (out, in), not the kept "
                   f"{(len(out_kept), len(in_kept))}")
        if why is None and _flat_weight(s_mod).shape[1] > MAX_UNKNOWNS:
            why = f"{_flat_weight(s_mod).shape[1]} unknowns per output channel (more than {MAX_UNKNOWNS})"
        if why is not None:
            result.skipped[name] = why
        else:
            targets.append(name)
    if not targets:
        return result
    rows = rows_per_layer([len(_kept(kept, n, t_mods[n])[0]) for n in targets], rows, MAX_HELD_BYTES)
    result.rows = rows

    # the teacher's outputs at the kept channels, on a seeded sample of output positions per layer
    picks: dict[str, Any] = {}
    wanted: dict[str, Any] = {}

    def teacher_hook(name):
        def hook(_m, _inputs, output):
            if name in wanted:
                return
            Y = _out_rows(t_mods[name], output)[:, list(_kept(kept, name, t_mods[name])[0])]
            gen = torch.Generator().manual_seed(seed * 1_000_003 + order.index(name))
            picks[name] = torch.randperm(len(Y), generator=gen)[:rows].sort().values.to(Y.device)
            wanted[name] = Y[picks[name]].float()
        return hook

    def student_hook(name):
        def hook(mod, inputs):
            if name in result.error_before or name in result.skipped:
                return
            X = _in_rows(mod, inputs[0], picks[name])
            if mod.bias is not None:
                X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype, device=X.device)], 1)
            X, Y = X.double(), wanted[name].double()
            A, B, yy = X.T @ X, X.T @ Y, (Y * Y).sum()
            W0 = _flat_weight(mod).double()
            scale = float(A.diagonal().mean())
            lam = ridge * scale if scale > 0 else 1.0  # inputs all zero: the ridge alone keeps W₀
            W = torch.linalg.solve(A + lam * torch.eye(A.shape[0], dtype=A.dtype, device=A.device), B + lam * W0.T).T
            before, after = _rel_error(W0, A, B, yy), _rel_error(W, A, B, yy)
            result.error_before[name], result.error_after[name] = before, after
            if before <= MATCHED:
                result.skipped[name] = f"it already computes the teacher's outputs (relative error {before:.2g})"
                return
            if not after < before:
                result.skipped[name] = f"the re-fit would not lower its error ({after:.4g} >= {before:.4g})"
                return
            _set_flat_weight(mod, W.to(mod.weight.dtype))
            result.layers.append(name)
        return hook

    _forward_with(teacher, x, [t_mods[n].register_forward_hook(teacher_hook(n)) for n in targets])
    _forward_with(student, x, [s_mods[n].register_forward_pre_hook(student_hook(n)) for n in targets])
    result.forwards = 2.0 * result.inputs
    return result


def rows_per_layer(out_channels: Sequence[int], rows: int = ROWS, max_bytes: int = MAX_HELD_BYTES) -> int:
    """Sampled rows per layer: ``rows``, or fewer where the teacher's rows of every re-fitted layer (of
    ``out_channels`` kept outputs each, float32) would exceed ``max_bytes`` together."""
    per_row = 4 * max(1, sum(out_channels))
    return max(1, min(int(rows), max_bytes // per_row))


def _forward_with(model, x, hooks: list) -> None:
    """One forward pass of ``model`` on ``x`` without gradients; the ``hooks`` are removed afterwards."""
    import torch

    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()


def _input_of(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _execution_order(model, x, types: tuple) -> list[str]:
    """Names of ``model``'s layers of ``types`` in the order one forward pass runs them (first call)."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, types)}
    order: list[str] = []
    _forward_with(model, x, [m.register_forward_pre_hook(
        lambda m, _i: order.append(names[m]) if names[m] not in order else None) for m in names])
    return order


def _out_rows(module, out):
    """A layer's output as rows: one per output position (batch x spatial), the channels as columns."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return out.reshape(-1, out.shape[-1])
    if out.dim() == 3:  # Conv1d: N, C, L
        return out.transpose(1, 2).reshape(-1, out.shape[1])
    return out.flatten(2).transpose(1, 2).reshape(-1, out.shape[1])


def _in_rows(module, inp, picks, chunk: int = 64):
    """The rows of ``picks`` (indices into batch x output positions) of the input patches a layer's output
    is computed from, laid out as its weight is (im2col); unfolded ``chunk`` inputs at a time so that the
    whole batch's patches are never held at once."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    if isinstance(module, nn.Linear):
        return inp.reshape(-1, inp.shape[-1])[picks]
    if isinstance(module, nn.Conv1d):
        inp = inp.unsqueeze(-1)
        kernel, dilation, padding, stride = ((module.kernel_size[0], 1), (module.dilation[0], 1),
                                             (module.padding[0], 0), (module.stride[0], 1))
    else:
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
    out = []
    per_input = None
    for start in range(0, len(inp), chunk):
        cols = F.unfold(inp[start:start + chunk], kernel, dilation=dilation, padding=padding, stride=stride)
        per_input = cols.shape[2]
        lo, hi = start * per_input, (start + len(cols)) * per_input
        here = picks[(picks >= lo) & (picks < hi)] - lo
        out.append(cols.transpose(1, 2).reshape(-1, cols.shape[1])[here])
    return torch.cat(out)


def _unsupported(t_mod, s_mod) -> str | None:
    from torch import nn

    if s_mod is None:
        return "no layer of that name in the pruned network"
    if type(s_mod) is not type(t_mod):
        return f"a {type(s_mod).__name__} in the pruned network, a {type(t_mod).__name__} in the teacher"
    if isinstance(s_mod, nn.modules.conv._ConvNd):
        if s_mod.groups != 1:
            return f"a grouped conv (groups={s_mod.groups})"
        if isinstance(s_mod.padding, str) or s_mod.padding_mode != "zeros":
            return f"padding {s_mod.padding!r} / {s_mod.padding_mode!r} (only explicit zero padding is unfolded)"
    return None


def _kept(kept: Mapping, name: str, t_mod) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from .groups import out_in_channels

    if name in kept:
        out, inp = kept[name]
        return tuple(out), tuple(inp)
    n_out, n_in = out_in_channels(t_mod)
    return tuple(range(n_out)), tuple(range(n_in))


def _flat_weight(mod):
    """The weight as rows of unknowns (one row per output channel), the bias as a last column."""
    import torch

    w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
    if mod.bias is not None:
        w = torch.cat([w, mod.bias.detach().reshape(-1, 1)], 1)
    return w


def _set_flat_weight(mod, w) -> None:
    import torch

    with torch.no_grad():
        if mod.bias is not None:
            mod.bias.copy_(w[:, -1])
            w = w[:, :-1]
        mod.weight.copy_(w.reshape(mod.weight.shape))


def _rel_error(W, A, B, yy) -> float:
    """‖Y − XWᵀ‖² / ‖Y‖² from the normal equations (A = XᵀX, B = XᵀY, yy = ‖Y‖²)."""
    err = yy - 2 * (W.T * B).sum() + (W @ A * W).sum()
    return float(err / yy) if float(yy) > 0 else 0.0


def refit_after_surgery(model, teacher, names: Mapping[int, str], kept: Mapping[str, tuple], batches: Iterable, *,
                        layers: str = "all", seed: int = 0, device: str = "cpu") -> ReconstructionResult:
    """:func:`reconstruct_layers` for a network pruned in place (blocks removed, channels removed, or both)
    against ``teacher``, a copy of it taken before the surgery.

    ``names``: ``{id(module): name}`` of the network before the surgery (:func:`sweep.engine.depth.module_names`:
    removing blocks renumbers a stage, module objects survive); ``kept``: the channel step's kept channels
    (:func:`sweep.engine.channels.prune_to_target`'s ``kept``), keyed by the names the layers have now
    (channel pruning renames nothing).  ``layers="all"`` by default: a removed block or a thinner layer
    upstream changes the inputs of every later layer, not only their widths; layers that still compute the
    teacher's outputs are left as they are."""
    teacher_name = {n: names[id(m)] for n, m in model.named_modules() if id(m) in names}
    return reconstruct_layers(model, teacher, {teacher_name.get(n, n): v for n, v in kept.items()}, batches,
                              layers=layers, seed=seed, device=device,
                              student_names={t: n for n, t in teacher_name.items()})
