"""Depth surgery: find residual blocks and remove whole blocks physically.

Engine code shared by every method that prunes depth (SR-init, complexity-aware training's block
gates).  Block removal is *physical*: the block's module is deleted from its ``nn.Sequential`` stage,
so the returned network has fewer modules, parameters and MACs, and the surviving blocks keep their
trained weights.  It composes with :func:`sweep.engine.channels.prune_channels` in either order.

What counts as a residual block
-------------------------------
A **residual block** is a direct child of an ``nn.Sequential`` (a *stage*) that computes
``output = shortcut(input) + residual_branch(input)``.  A forward pass cannot prove that algebra, so a
child is *declared* a residual block by one of, in this order of precedence:

1. an attribute ``residual_block`` (``True``/``False``) on the module or its class — the explicit
   opt-in / opt-out for user models;
2. its type: torchvision's ``BasicBlock`` / ``Bottleneck`` / ``InvertedResidual`` (MobileNet-V2) and sweep's
   CIFAR ``BasicBlock``;
3. its class name containing ``"Block"`` or ``"Bottleneck"``.

When a block contains other blocks, only the outermost one counts.  Blocks are numbered 0-based in
forward order over **all** residual blocks, removable or not, so the numbering matches the SR-init
paper's (CIFAR ResNet-56: 27 blocks; torchvision ResNet-50: 16 Bottlenecks).

A residual block is **removable** when its shortcut is the identity:

- its input and output shapes are equal (seen by forward hooks on the example input; this is what
  generalises to user models), and
- no attribute says otherwise: ``downsample`` (torchvision) must be ``None``, ``shortcut`` (sweep,
  many CIFAR codebases) must be absent, ``None`` or ``nn.Identity`` — a shape-preserving projection
  shortcut is not the identity, and dropping the block would drop it too — and ``use_res_connect``
  (torchvision's MobileNet-V2: a block without it adds nothing to its input) must be true where present; and
- it is not the first residual block of its stage — the SR-init authors always keep it (it changes
  width/stride; in sweep's CIFAR ResNets ``layer1[0]`` has an identity shortcut and is still kept);
- it runs once per forward pass, and the user did not ``keep`` it.

Without example inputs (``remove_blocks(model, [..])``) the scan is static: blocks in module
registration order, identity decided from the ``downsample``/``shortcut`` attributes of the known
types; a generic block with neither attribute needs ``example_inputs`` to be judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..errors import ConfigError

BLOCK_NAME_HINTS = ("Block", "Bottleneck")


@dataclass(frozen=True)
class BlockRef:
    """One residual block: where it is, whether it can go, and why not."""

    index: int  # 0-based over all residual blocks in forward order
    name: str  # dotted module name, e.g. "layer2.3"
    stage: str  # dotted name of the nn.Sequential that holds it
    position: int  # index of the block among the stage's children
    cls: str  # class name
    removable: bool
    reason: str = ""  # why not removable ("" when removable)
    in_shape: tuple | None = None
    out_shape: tuple | None = None


# ----------------------------------------------------------------------------- recognising blocks
def _known_block_types() -> tuple[type, ...]:
    from ..models.cifar_resnet import BasicBlock as SweepBasicBlock

    types: list[type] = [SweepBasicBlock]
    try:
        from torchvision.models.mobilenetv2 import InvertedResidual
        from torchvision.models.resnet import BasicBlock, Bottleneck

        types += [BasicBlock, Bottleneck, InvertedResidual]
    except ImportError:  # torchvision is a dependency, but the engine does not need it
        pass
    return tuple(types)


def is_residual_block(module) -> bool:
    """The declaration rule of the module docstring (attribute, known type, class name)."""
    flag = getattr(module, "residual_block", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(module, _known_block_types()):
        return True
    name = type(module).__name__
    return any(h in name for h in BLOCK_NAME_HINTS)


def _static_identity(module) -> bool | None:
    """True/False when the block's attributes tell whether its shortcut is the identity, else None."""
    import torch.nn as nn

    known = False
    if hasattr(module, "use_res_connect"):
        known = True
        if not module.use_res_connect:
            return False
    if hasattr(module, "downsample"):
        known = True
        if module.downsample is not None:
            return False
    if hasattr(module, "shortcut"):
        known = True
        sc = module.shortcut
        if sc is not None and not isinstance(sc, nn.Identity):
            return False
    return True if known else None


def _candidates(model) -> list[tuple[str, str, int, Any]]:
    """(name, stage name, position, module) of every outermost declared block inside a Sequential."""
    import torch.nn as nn

    out: list[tuple[str, str, int, Any]] = []
    taken: list[str] = []  # names of blocks found so far: their descendants are not blocks
    for stage_name, stage in model.named_modules():
        if not isinstance(stage, nn.Sequential):
            continue
        if any(stage_name == t or stage_name.startswith(t + ".") for t in taken):
            continue
        for pos, (child_name, child) in enumerate(stage.named_children()):
            if is_residual_block(child):
                name = f"{stage_name}.{child_name}" if stage_name else child_name
                out.append((name, stage_name, pos, child))
                taken.append(name)
    return out


def _trace(model, example_inputs, modules: Sequence) -> dict[int, dict]:
    """Run one eval-mode forward pass; per module id: call order, call count, in/out shapes."""
    import torch

    seen: dict[int, dict] = {}
    counter = [0]

    def hook(mod, args, output):
        rec = seen.setdefault(id(mod), {"calls": 0})
        rec["calls"] += 1
        if rec["calls"] == 1:
            # post-hook order is completion order; blocks of one Sequential never nest, so it is forward order
            rec["order"] = counter[0]
            counter[0] += 1
            x = args[0] if args else None
            rec["in"] = tuple(x.shape) if isinstance(x, torch.Tensor) else None
            rec["out"] = tuple(output.shape) if isinstance(output, torch.Tensor) else None

    handles = [m.register_forward_hook(hook) for m in modules]
    was_training = model.training
    model.eval()  # never touch BatchNorm running statistics while looking
    try:
        with torch.no_grad():
            if isinstance(example_inputs, (tuple, list)):
                model(*example_inputs)
            elif isinstance(example_inputs, dict):
                model(**example_inputs)
            else:
                model(example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def _keep_sets(keep: Iterable) -> tuple[set[int], set[str]]:
    idx: set[int] = set()
    names: set[str] = set()
    for k in keep or ():
        if isinstance(k, bool):
            raise ConfigError(f"keep must hold block indices or module names, but got {k!r}")
        if isinstance(k, int):
            idx.add(k)
        elif isinstance(k, str):
            names.add(k)
        else:
            raise ConfigError(f"keep must hold block indices or module names, but got {k!r}")
    return idx, names


def removable_blocks(model, example_inputs=None, keep: Iterable = (), *,
                     keep_first_of_stage: bool = True) -> list[BlockRef]:
    """Every residual block of ``model`` in forward order, each flagged removable or not (with why).

    Despite the name, the list holds **all** residual blocks, so that ``index`` matches the paper's
    numbering; filter on ``.removable`` for the candidates.  ``keep``: block indices or module names
    the user wants kept.  ``example_inputs=None`` scans statically (see the module docstring).
    """
    cands = _candidates(model)
    keep_idx, keep_names = _keep_sets(keep)
    traced = example_inputs is not None
    if traced:
        seen = _trace(model, example_inputs, [c[3] for c in cands])
        cands = [c for c in cands if id(c[3]) in seen]  # blocks the forward never reaches are not listed
        cands.sort(key=lambda c: seen[id(c[3])]["order"])
    first_in_stage: dict[str, str] = {}
    for name, stage, _, _ in cands:
        first_in_stage.setdefault(stage, name)
    refs: list[BlockRef] = []
    for i, (name, stage, pos, mod) in enumerate(cands):
        in_shape = out_shape = None
        reasons = []
        static = _static_identity(mod)
        if traced:
            rec = seen[id(mod)]
            in_shape, out_shape = rec["in"], rec["out"]
            if rec["calls"] > 1:
                reasons.append(f"runs {rec['calls']} times per forward pass")
            if in_shape is None or out_shape is None or in_shape != out_shape:
                reasons.append(f"input shape {in_shape} differs from output shape {out_shape}")
            elif static is False:
                reasons.append("shortcut is not the identity")
        elif static is False:
            reasons.append("shortcut is not the identity")
        elif static is None:
            reasons.append("identity shortcut unknown without example_inputs")
        if keep_first_of_stage and first_in_stage[stage] == name:
            reasons.insert(0, "first block of its stage")
        if i in keep_idx or name in keep_names:
            reasons.append("kept by the user")
        refs.append(BlockRef(index=i, name=name, stage=stage, position=pos, cls=type(mod).__name__,
                             removable=not reasons, reason="; ".join(reasons),
                             in_shape=in_shape, out_shape=out_shape))
    return refs


def block_names(model) -> list[str]:
    """Dotted names of the residual blocks (static scan, registration order)."""
    return [c[0] for c in _candidates(model)]


def stage_depths(model) -> list[int]:
    """Number of residual blocks in each stage (``nn.Sequential`` holding blocks), in order."""
    depths: dict[str, int] = {}
    for _, stage, _, _ in _candidates(model):
        depths[stage] = depths.get(stage, 0) + 1
    return list(depths.values())


# ----------------------------------------------------------------------------- surgery
def _resolve(refs: list[BlockRef], which: Iterable) -> list[BlockRef]:
    by_name = {r.name: r for r in refs}
    out: dict[int, BlockRef] = {}
    for w in which:
        if isinstance(w, BlockRef):
            w = w.index
        if isinstance(w, bool) or not isinstance(w, (int, str)):
            raise ConfigError(f"blocks to remove must be indices or module names, but got {w!r}")
        if isinstance(w, str):
            if w not in by_name:
                raise ConfigError(f"block to remove must name a residual block, but got {w!r}; "
                                  f"blocks: {', '.join(by_name) or '(none)'}")
            ref = by_name[w]
        else:
            if not 0 <= w < len(refs):
                raise ConfigError(f"block index must be in [0, {len(refs) - 1}], but got {w} "
                                  f"({len(refs)} residual blocks)")
            ref = refs[w]
        out[ref.index] = ref
    return [out[i] for i in sorted(out)]


def blocks_to_remove(refs: list[BlockRef], which: Iterable) -> list[BlockRef]:
    """The blocks of ``refs`` that ``which`` names (indices, module names or :class:`BlockRef`), in index order,
    each removable; a :class:`ConfigError` naming the first that is not (or does not exist)."""
    chosen = _resolve(refs, which)
    bad = [r for r in chosen if not r.removable]
    if bad:
        r = bad[0]
        raise ConfigError(f"block to remove must be removable, but block {r.index} ({r.name}, {r.cls}) is not: "
                          f"{r.reason}; removable blocks: {[x.index for x in refs if x.removable]}")
    return chosen


def remove_blocks(model, indices: Iterable, example_inputs=None, *, keep: Iterable = (),
                  keep_first_of_stage: bool = True):
    """Delete the residual blocks ``indices`` (indices, module names or :class:`BlockRef`) in place.

    Returns the model.  Raises :class:`ConfigError` naming the block when one of them is not
    removable (nothing is changed then).  Stage numbering is compacted (``layer1.0, layer1.2`` ->
    ``layer1.0, layer1.1``), so the state dict matches a freshly built shallower net; stages whose
    children have non-numeric names keep them.
    """
    indices = list(indices)
    if not indices:
        return model
    refs = removable_blocks(model, example_inputs, keep, keep_first_of_stage=keep_first_of_stage)
    chosen = blocks_to_remove(refs, indices)
    modules = dict(model.named_modules())
    by_stage: dict[str, list[BlockRef]] = {}
    for r in chosen:
        by_stage.setdefault(r.stage, []).append(r)
    for stage_name, rs in by_stage.items():
        _drop_children(modules[stage_name], {r.name.rsplit(".", 1)[-1] for r in rs})
    return model


def module_names(model) -> dict[int, str]:
    """``{id(module): dotted name}`` of every module. Taken before :func:`remove_blocks` (which renumbers a
    stage's children), it still names each surviving module as the input model did."""
    return {id(m): n for n, m in model.named_modules()}


def blocks_towards(model, example_inputs, refs, order: list, target: float, tolerance: float):
    """The prefix of ``order`` removed under a MACs target: blocks go one by one while the MACs are above
    ``target``; a block whose removal would take them below ``target · (1 − tolerance)`` stops it.
    Returns ``(taken, trail)``; each trail entry is ``{"block", "macs", "removed"}``, the MACs with the
    prefix so far and that block removed. A block's MACs are counted on the block alone at its traced
    input shape: removing a shape-preserving block removes exactly its own operations."""
    import torch

    from ..measure import count_macs

    modules = dict(model.named_modules())
    by_index = {r.index: r for r in refs}
    taken: list[int] = []
    trail: list[dict] = []
    macs = count_macs(model, example_inputs)
    for b in order:
        if macs <= target:
            break
        r = by_index.get(b)
        if r is None or not r.removable or r.in_shape is None:  # remove_blocks names what is wrong
            taken.append(b)
            continue
        x = torch.zeros(r.in_shape, dtype=example_inputs.dtype, device=example_inputs.device)
        after = macs - count_macs(modules[r.name], x)
        ok = after >= target * (1 - tolerance)
        trail.append({"block": b, "macs": after, "removed": ok})
        if not ok:
            break
        taken.append(b)
        macs = after
    return taken, trail


def _drop_children(stage, keys: set[str]) -> None:
    """Remove children ``keys`` from an nn.Sequential in place (keeps the object and its subclass)."""
    from collections import OrderedDict

    old = list(stage._modules.items())
    numeric = [k for k, _ in old] == [str(i) for i in range(len(old))]
    kept = [(k, m) for k, m in old if k not in keys]
    if numeric:
        kept = [(str(i), m) for i, (_, m) in enumerate(kept)]
    stage._modules = OrderedDict(kept)

