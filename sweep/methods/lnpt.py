"""``lnpt``: label-free network pruning and training guided by a teacher's penultimate features.

Xiao, Li, Tang & Nie, "LNPT: Label-free Network Pruning and Training", arXiv 2403.12690 (2024).

**This is a RECONSTRUCTION.** Only the paper's abstract was read (its body and code were not).
Known from the abstract: a mature network (the teacher, "in the cloud")
guides pruning and training of a smaller network on a device that has only unlabeled data; a
*learning gap* measured on the **penultimate-layer feature maps** tracks generalisation better than
weight-norm distances; the pruning criterion is computed from feature maps; pruning is done **in one
shot to a single global ratio** (per-layer ratios emerge from the global ranking); training uses the
teacher's online guidance and no labels.

Reconstructed here (our design, not the paper's text):

- **Student.** The same architecture as the teacher, initialised from the teacher (``init: teacher``,
  prune-after-training) or randomly re-initialised with a seeded generator (``init: random``, the
  paper's prune-before-training setting: Kaiming-normal conv/linear weights, zero biases, BatchNorm
  γ=1, β=0 and reset running statistics).
- **Penultimate features** φ(x) = the input of the classifier head (the last ``nn.Linear``: the first of
  ``ctx.ignored_layers`` when it is a Linear of the model), captured by a forward pre-hook, flattened.
- **Criterion** (one score per channel of every coupled channel group, from ``cal_batches`` unlabeled
  batches): the first-order (Taylor) estimate of how much removing the channel changes the feature
  loss, |Σ_x Σ_{c∈g} a_c(x)·∂L/∂a_c(x)|, with L = ‖φ_T(x) − φ_S(x)‖² (the learning gap). ``a_c`` are
  the output activations of the group's root conv/linear layer, plus those of any other conv/linear
  whose outputs are coupled to it (a residual shortcut), summed per channel over space and samples.
  Where the student *is* the teacher (``init: teacher``), L ≡ 0 and so is every gradient: there the
  penultimate feature energy L = ½‖φ_S(x)‖² is used instead (``info["criterion"]`` says which).
- **Normalisation.** Each group's scores are divided by the group's mean score (Torch-Pruning's
  ``"mean"`` normaliser), so that one global ranking compares channels by their importance *relative
  to their layer*, independently of the layer's activation scale and of its width (an L2-norm
  normaliser would shrink per-channel scores of wide layers by √width and prune them harder).
- **One shot to one global target**: the lowest-ranked channels of all prunable groups go until the
  global ``ratio`` of prunable channels is removed, or until the kept MACs hit ``macs_fraction``
  (within 3 %, found by searching the global threshold on fresh copies, as
  :func:`sweep.engine.channels.prune_to_target` does), never more than ``max_layer_ratio`` of a group,
  with the engine's width-aware rounding (:class:`sweep.engine.channels.ChannelPlan`, ``round_to="auto"``).
- **Label-free retraining** for ``epochs`` epochs on ``ctx.unlabeled_loader`` only:
  ``feature_weight``·mean‖φ_T − φ_S‖²/d (MSE over the d feature dimensions, so the weight does not
  depend on width) + ``kd_weight``·T²·KL(teacher ‖ student) at ``temperature`` T (Hinton et al. 2015,
  §2). Where the head's input channels were pruned, the teacher's features are compared on the kept
  channels only.
- **Learning gap** = mean ‖φ_T(x) − φ_S(x)‖₂ over the held-out unlabeled split
  (``ctx.unlabeled_val_loader``), logged with the top-1 agreement with the teacher (as
  :func:`sweep.measure.agreement` defines it, computed in the same pass): step 0 right after pruning,
  step e after retraining epoch e.

Label-freeness is enforced by the data path: every loader is read as ``batch[0]`` only; when a context
carries no ``unlabeled_loader`` (a supervised context) the train / val loaders are wrapped so that only
their inputs are ever reached. Labels are read only to *report* ``val_accuracy``, and only when
``ctx.labels_available`` and the validation batches carry them.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator

from ..errors import ConfigError, TrialFailure
from .base import Knob, MethodConfig, PruneContext, PruneResult, register_method

MACS_TOLERANCE = 0.03  # the macs_fraction target is met within 3 % (relative), as prune_to_target's default
_RATIO_SEARCH_STEPS = 40  # bisection steps on the global threshold for a channel ratio (no copies: cheap)
_MACS_SEARCH_STEPS = 16  # ... for a MACs target (one deep copy + MAC count per step)
_REFINE_MAX_GROUPS = 64  # single-group moves after the MACs search, on nets with at most this many groups
_REFINE_PAIRS_MAX_GROUPS = 12  # ... and two-group exchanges, on nets with at most this many groups
_DEFAULT_FT = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "optimizer": "sgd"}


def _check(cfg: MethodConfig, where: str) -> None:
    if cfg.epochs > 0 and cfg.feature_weight == 0 and cfg.kd_weight == 0:
        raise ConfigError(f"feature_weight and kd_weight must not both be 0 when epochs > 0 (retraining needs a "
                          f"loss), but got feature_weight=0, kd_weight=0, epochs={cfg.epochs} ({where})")


@register_method(
    "lnpt",
    summary="LNPT (Xiao et al. 2024, reconstruction): label-free one-shot global pruning by a Taylor "
            "criterion on the teacher's penultimate features, then feature + KD retraining without labels",
    needs_labels=False,
    check=_check,
    exclusive=[("ratio", "macs_fraction")],
    knobs=[
        Knob("ratio", "float", 0.5, low=0.0, high=1.0, low_open=True, high_open=True,
             help="fraction of prunable channels removed (one global ranking across layers)"),
        Knob("macs_fraction", "float", None, low=0.0, high=1.0, low_open=True, high_open=True, optional=True,
             help="instead of ratio: MACs kept as a fraction of the dense model's (hit within 3 %)"),
        Knob("init", "categorical", "teacher", choices=("teacher", "random"),
             help="student initialised from the teacher, or randomly (prune before training, as the paper)"),
        Knob("feature_weight", "float", 1.0, low=0.0, high=100.0,
             help="weight of the penultimate feature alignment (MSE to the teacher's features)"),
        Knob("kd_weight", "float", 1.0, low=0.0, high=100.0,
             help="weight of T^2 * KL(teacher || student) on softened logits"),
        Knob("temperature", "float", 4.0, low=0.0, high=20.0, low_open=True,
             help="distillation temperature T"),
        Knob("epochs", "int", 3, low=0, high=50, help="label-free retraining epochs after pruning"),
        Knob("cal_batches", "int", 8, low=1, high=200, help="unlabeled batches the criterion is computed on"),
        Knob("max_layer_ratio", "float", 0.9, low=0.0, high=1.0, low_open=True, high_open=True,
             help="no group loses more than this fraction of its channels"),
    ],
)
def prune(model, example_inputs, cfg: MethodConfig, ctx: PruneContext) -> PruneResult:
    import copy

    import torch

    from ..engine.channels import AUTO, ChannelPlan, channel_counts, default_ignored_layers
    from ..engine.groups import ChannelGraph
    from ..measure import count_macs, count_params

    device = ctx.device
    teacher = ctx.teacher
    if teacher is None:  # a context without a teacher (e.g. the contract suite): the dense model given
        teacher = copy.deepcopy(model)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    train_inputs = ctx.unlabeled_loader if ctx.unlabeled_loader is not None else InputsOnly(ctx.train_loader)
    val_inputs = ctx.unlabeled_val_loader if ctx.unlabeled_val_loader is not None else InputsOnly(ctx.val_loader)

    head = find_head(model, ctx.ignored_layers)
    head_name = _name_of(model, head)
    t_head = dict(teacher.named_modules()).get(head_name)
    if not isinstance(t_head, torch.nn.Linear):
        t_head = find_head(teacher, ())

    with torch.random.fork_rng(devices=[]):  # deterministic under ctx.seed, whatever the caller's RNG state
        torch.manual_seed(ctx.seed)
        model.to("cpu")  # graph tracing, MAC counts and surgery on the CPU (example_inputs live there)
        macs0, params0 = count_macs(model, example_inputs), count_params(model)
        if cfg.init == "random":
            reinit(model, ctx.seed)
        ignored = default_ignored_layers(model) + list(ctx.ignored_layers or [])
        graph = ChannelGraph(model, example_inputs, ignored_layers=ignored)

        # --- criterion: Taylor scores on the penultimate features, one tensor per coupled group
        criterion = "feature_energy" if cfg.init == "teacher" else "feature_gap"
        model.to(device)
        raw = feature_taylor_scores(model, teacher, graph.groups, head, t_head,
                                    _take(train_inputs, cfg.cal_batches), criterion=criterion, device=device)
        scores = {name: normalise(s) for name, s in raw.items()}

        # --- one global ranking, one global target
        plan = ChannelPlan(graph, importance=_Fixed(graph, scores), global_pruning=True, round_to=AUTO,
                           max_layer_ratio=cfg.max_layer_ratio)
        before = {g.name: g.channels for g in plan.groups}
        model.to("cpu")
        if cfg.macs_fraction is not None:
            r, kept, _ = _macs_search(plan, graph, example_inputs, cfg.macs_fraction, macs0)
            target = {"macs_fraction": cfg.macs_fraction}
        else:
            r, kept = _ratio_search(plan, cfg.ratio)
            target = {"ratio": cfg.ratio}
        sel = plan.selection(kept)
        keep_feat = head_input_kept(plan.groups, sel, head)
        graph.prune(sel)
        macs1, params1 = count_macs(model, example_inputs), count_params(model)
        modules = dict(model.named_modules())
        layer_ratios = {name: _out_channels(modules[name]) / c for name, c in before.items()}
        model.to(device)

        # --- label-free retraining, the learning gap logged per epoch
        log = retrain(model, teacher, head, t_head, keep_feat, train_inputs, val_inputs, cfg, ctx)

    achieved = {"ratio": plan.removed_fraction(kept), "macs_fraction": macs1 / macs0,
                "params_fraction": params1 / params0}
    info = {
        "reconstruction": "Xiao et al. 2024 (arXiv 2403.12690), abstract only; see sweep/methods/lnpt.py",
        "init": cfg.init, "criterion": criterion, "normalisation": "mean", "cal_batches": cfg.cal_batches,
        "target": target, "achieved": achieved, "channel_ratio": float(r),
        **{f"achieved_{k}": v for k, v in achieved.items()},
        "within_tolerance": ("ratio" in target or
                             abs(achieved["macs_fraction"] - cfg.macs_fraction) <= MACS_TOLERANCE * cfg.macs_fraction),
        "layer_ratios": layer_ratios, "prunable_groups": len(plan.groups),
        "group_score_mean": {n: float(s.mean()) for n, s in raw.items()},
        "head": head_name,
        "penultimate_features": {"teacher": int(t_head.in_features), "student": int(head.in_features)},
        "macs": [macs0, macs1], "params": [params0, params1],
        "channels": channel_counts(model),
        "feature_weight": cfg.feature_weight, "kd_weight": cfg.kd_weight, "temperature": cfg.temperature,
        **log,
    }
    return PruneResult(model=model, info=info, finetuned=True)


# ----------------------------------------------------------------------------------- data, label-free
class InputsOnly:
    """A view of a loader that yields ``(batch[0],)``: the targets are never indexed."""

    def __init__(self, loader: Iterable):
        self.loader = loader

    def __iter__(self) -> Iterator[tuple]:
        for batch in self.loader:
            yield (batch[0],)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def _take(loader: Iterable, n: int) -> list:
    out = []
    for batch in loader:
        out.append(batch[0])
        if len(out) >= n:
            break
    if not out:
        raise TrialFailure("lnpt needs unlabeled training inputs, but the unlabeled loader is empty")
    return out


# ----------------------------------------------------------------------------------- model helpers
def find_head(model, ignored_layers: Iterable[Any] = ()):
    """The classifier head: the first ignored layer when it is a Linear of ``model``, else the last Linear."""
    from torch import nn

    present = {id(m) for m in model.modules()}
    first = next(iter(ignored_layers or ()), None)
    if isinstance(first, nn.Linear) and id(first) in present:
        return first
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TrialFailure(f"lnpt compares penultimate features at the input of a linear classifier head, but "
                           f"model {type(model).__name__} has no nn.Linear")
    return linears[-1]


def _name_of(model, module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    return ""


def _out_channels(m) -> int:
    from torch import nn

    if isinstance(m, nn.Linear):
        return int(m.out_features)
    return int(m.out_channels)


def reinit(model, seed: int) -> None:
    """Random re-initialisation in place (seeded, device-independent): see :mod:`sweep.engine.reinit`."""
    from ..engine.reinit import reinit_

    reinit_(model, int(seed) * 7919 + 17)


class Penultimate:
    """``model(x) -> (logits, features)``: the head's input captured by a forward pre-hook, flattened."""

    def __init__(self, model, head):
        self.model = model
        self.feat = None
        self._h = head.register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs):
        self.feat = inputs[0]

    def __call__(self, x):
        logits = self.model(x)
        return logits, self.feat.flatten(1)

    def close(self) -> None:
        self._h.remove()


# ----------------------------------------------------------------------------------- the criterion
def feature_taylor_scores(student, teacher, groups, head, t_head, batches: list, *, criterion: str,
                          device: str = "cpu") -> dict:
    """One score tensor per channel group (length ``group.size``): |Σ_x Σ_{c∈g} a_c(x)·∂L/∂a_c(x)|.

    ``criterion="feature_gap"``: L = ‖φ_T(x) − φ_S(x)‖²; ``"feature_energy"``: L = ½‖φ_S(x)‖² (for a
    student equal to its teacher, where the gap and its gradient vanish). ``a_c`` are the outputs of
    the conv/linear layers whose output channels make up the group (its root, and layers coupled to it).
    The student is scored in eval mode (BN statistics are not touched).
    """
    import torch
    from torch import nn

    if criterion not in ("feature_gap", "feature_energy"):
        raise ValueError(f"criterion must be feature_gap or feature_energy, but got {criterion!r}")
    producers: dict[int, nn.Module] = {}
    plan = []  # (group, [(module id, member idxs, root idxs)])
    for g in groups:
        parts = []
        for mem in g.members:
            if (mem.kind == "out" and isinstance(mem.module, (nn.modules.conv._ConvNd, nn.Linear))
                    and None not in mem.root_idxs):
                producers[id(mem.module)] = mem.module
                parts.append((id(mem.module), list(mem.idxs), list(mem.root_idxs)))
        plan.append((g, parts))

    store: dict[int, list] = {k: [] for k in producers}

    def hook(module, inputs, out):
        store[id(module)].append(out)
        return out.clone()  # what follows (an in-place ReLU) edits the clone; ``out`` keeps a_c and its grad

    handles = [m.register_forward_hook(hook) for m in producers.values()]
    s_feat = Penultimate(student, head)
    t_feat = Penultimate(teacher, t_head) if criterion == "feature_gap" else None
    acc = {id(m): None for m in producers.values()}
    was = student.training
    student.eval()
    try:
        for x in batches:
            x = x.to(device)
            for v in store.values():
                v.clear()
            with torch.enable_grad():
                _, phi_s = s_feat(x)
                if t_feat is not None:
                    with torch.no_grad():
                        _, phi_t = t_feat(x)
                    loss = (phi_t - phi_s).pow(2).sum()
                else:
                    loss = 0.5 * phi_s.pow(2).sum()
                keys = [k for k, outs in store.items() for _ in outs]
                outs = [o for k in store for o in store[k]]
                grads = torch.autograd.grad(loss, outs, allow_unused=True) if outs else []
            for k, a, gr in zip(keys, outs, grads):
                if gr is None:
                    continue
                dim = a.dim() - 1 if isinstance(producers[k], nn.Linear) else 1
                other = [d for d in range(a.dim()) if d != dim]
                c = (a.detach() * gr).sum(dim=other).double().cpu()
                acc[k] = c if acc[k] is None else acc[k] + c
    finally:
        for h in handles:
            h.remove()
        s_feat.close()
        if t_feat is not None:
            t_feat.close()
        student.train(was)

    out = {}
    for g, parts in plan:
        total = torch.zeros(g.channels, dtype=torch.float64)
        for k, idxs, root_idxs in parts:
            if acc[k] is not None:
                total.index_add_(0, torch.tensor(root_idxs, dtype=torch.long),
                                 acc[k][torch.tensor(idxs, dtype=torch.long)])
        s = total.abs()
        if g.ch_groups > 1:  # chunks of a grouped conv are pruned in step: one score per unit
            s = s.view(g.ch_groups, -1).sum(0)
        out[g.name] = s.float()
    return out


def normalise(s):
    """Scores divided by the group's mean (see the module docstring); a group of zero scores stays 0."""
    m = float(s.mean())
    return s / m if m > 0 and math.isfinite(m) else s * 0.0


class _Fixed:
    """A Torch-Pruning-style importance that returns the precomputed scores of a group (by its root),
    one per root channel (repeated over the chunks of a grouped conv, which the plan averages back)."""

    def __init__(self, graph, scores: dict):
        self.by_root = {}
        for g in graph.groups:
            if g.name in scores:
                s = scores[g.name]
                self.by_root[id(g.root)] = s.repeat(g.ch_groups) if g.ch_groups > 1 else s

    def __call__(self, tp_group):
        return self.by_root.get(id(tp_group[0].dep.target.module))


# ----------------------------------------------------------------------------------- the global target
def _ratio_search(plan, ratio: float):
    """The global threshold whose plan removes the fraction of prunable channels closest to ``ratio``
    (rounding and the per-group cap can keep a plain cut at ``ratio`` short of it): ``(r, kept)``."""
    best = (abs(plan.removed_fraction(plan.kept(ratio)) - ratio), ratio, tuple(plan.kept(ratio)))
    lo, hi = 0.0, 1.0
    for _ in range(_RATIO_SEARCH_STEPS):
        r = (lo + hi) / 2
        kept = tuple(plan.kept(r))
        f = plan.removed_fraction(kept)
        err = abs(f - ratio)
        if err < best[0] - 1e-12 or (abs(err - best[0]) <= 1e-12 and r < best[1]):
            best = (err, r, kept)
        if f < ratio:
            lo = r
        else:
            hi = r
    return best[1], best[2]


def _macs_search(plan, graph, example_inputs, target: float, macs0: int):
    """Bisection on the global threshold, each candidate measured on a fresh pruned copy; then single-group
    moves of one unit while they bring the MACs closer (small nets, where one step jumps far)."""
    from ..measure import count_macs

    cache: dict = {}

    def frac(kept: tuple) -> float:
        if kept not in cache:
            sel = plan.selection(kept)
            cache[kept] = count_macs(graph.pruned_copy(sel), example_inputs) / macs0 if sel else 1.0
        return cache[kept]

    def err(kept: tuple) -> float:
        return abs(frac(kept) - target) / target

    best = (err(tuple(plan.sizes)), 0.0, tuple(plan.sizes))
    lo, hi = 0.0, 1.0
    for _ in range(_MACS_SEARCH_STEPS):
        r = (lo + hi) / 2
        kept = tuple(plan.kept(r))
        e = err(kept)
        if e < best[0]:
            best = (e, r, kept)
        if e <= MACS_TOLERANCE / 4:
            break
        if frac(kept) > target:
            lo = r
        else:
            hi = r
    e, r, kept = best
    if e > MACS_TOLERANCE / 2 and len(plan.groups) <= _REFINE_MAX_GROUPS:
        for _ in range(6):
            e2, k2 = e, kept
            # exchanges between two groups only where single moves do not help (quadratic in groups)
            for pairs in (False, True) if len(plan.groups) <= _REFINE_PAIRS_MAX_GROUPS else (False,):
                cands = [(err(k), k) for k in plan.neighbours(kept, pairs=pairs)]
                e2, k2 = min([(e, kept)] + cands, key=lambda t: t[0])
                if e2 < e:
                    break
            if e2 >= e:
                break
            e, kept = e2, k2
    return r, kept, frac(kept)


def head_input_kept(groups, sel: dict, head) -> list[int] | None:
    """Indices of the head's input features that survive ``sel`` (None: all of them)."""
    removed: set[int] = set()
    for g, units in sel.items():
        roots = set(g.root_indices(units))
        for mem in g.members:
            if mem.module is head and mem.kind == "in":
                removed.update(int(i) for i, r in zip(mem.idxs, mem.root_idxs) if r in roots)
    if not removed:
        return None
    return [i for i in range(int(head.in_features)) if i not in removed]


# ----------------------------------------------------------------------------------- retraining
def retrain(model, teacher, head, t_head, keep_feat, train_inputs, val_inputs, cfg: MethodConfig,
            ctx: PruneContext) -> dict:
    """Label-free retraining (feature alignment + KD); returns the per-epoch logs for ``info``."""
    import torch
    import torch.nn.functional as F

    device = ctx.device
    ft = ctx.finetune_config
    hp = {k: getattr(ft, k, v) if ft is not None else v for k, v in _DEFAULT_FT.items()}
    keep = None if keep_feat is None else torch.tensor(keep_feat, dtype=torch.long, device=device)
    s_pen, t_pen = Penultimate(model, head), Penultimate(teacher, t_head)

    def teacher_out(x):
        with torch.no_grad():
            logits, f = t_pen(x)
        return logits, (f if keep is None else f.index_select(1, keep))

    report_acc = bool(ctx.labels_available) and _has_labels(ctx.val_loader)

    def evaluate(step: int, log: dict) -> None:
        # One pass for both figures: the learning gap, and top-1 agreement exactly as
        # sweep.measure.agreement defines it (tests/test_lnpt.py checks they match) without a second
        # pair of forwards over the split.
        model.eval()
        gap, same, n = 0.0, 0, 0
        with torch.no_grad():
            for batch in val_inputs:
                x = batch[0].to(device)
                s_logits, f_s = s_pen(x)
                t_logits, f_t = teacher_out(x)
                gap += float((f_t - f_s).norm(dim=1).sum())
                same += int((s_logits.argmax(1) == t_logits.argmax(1)).sum())
                n += x.shape[0]
        if n == 0:
            raise TrialFailure("lnpt needs held-out unlabeled inputs for the learning gap, but the split is empty")
        gap /= n
        agree = same / n
        point = {"step": step, "learning_gap": gap, "agreement": agree}
        ctx.log_metric("learning_gap", gap, step)
        ctx.log_metric("agreement", agree, step)
        if report_acc:  # reporting only: nothing above depends on it
            from ..measure import accuracy

            point["val_accuracy"] = accuracy(model, ctx.val_loader, device)
            ctx.log_metric("val_accuracy", point["val_accuracy"], step)
        log["trajectory"].append(point)
        log["learning_gap"].append(gap)
        log["agreement"].append(agree)

    log: dict = {"epochs": cfg.epochs, "learning_gap": [], "agreement": [], "train_loss": [], "trajectory": []}
    try:
        evaluate(0, log)
        if cfg.epochs > 0:
            params = [p for p in model.parameters() if p.requires_grad]
            if hp["optimizer"] == "adam":
                opt = torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
            else:
                opt = torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"],
                                      weight_decay=hp["weight_decay"], nesterov=hp["momentum"] > 0)
            steps = max(1, _len(train_inputs))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
            t = cfg.temperature
            for epoch in range(1, cfg.epochs + 1):
                model.train()
                total, n = 0.0, 0
                for batch in train_inputs:
                    x = batch[0].to(device)  # inputs only: the loader carries no labels
                    t_logits, t_f = teacher_out(x)
                    s_logits, s_f = s_pen(x)
                    loss = s_logits.new_zeros(())
                    if cfg.feature_weight > 0:
                        loss = loss + cfg.feature_weight * F.mse_loss(s_f, t_f)
                    if cfg.kd_weight > 0:
                        kl = F.kl_div(F.log_softmax(s_logits / t, dim=1), F.softmax(t_logits / t, dim=1),
                                      reduction="batchmean")
                        loss = loss + cfg.kd_weight * t * t * kl
                    lv = float(loss.item())
                    if not math.isfinite(lv):
                        raise TrialFailure(f"diverged: non-finite lnpt loss {lv} in epoch {epoch}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += lv * x.shape[0]
                    n += x.shape[0]
                if not all(bool(torch.isfinite(p).all()) for p in params):
                    raise TrialFailure(f"diverged: non-finite weights after lnpt epoch {epoch}")
                log["train_loss"].append(total / max(n, 1))
                ctx.log_metric("train_loss", log["train_loss"][-1], epoch)
                evaluate(epoch, log)
    finally:
        s_pen.close()
        t_pen.close()
        model.eval()
    return log


def _has_labels(loader) -> bool:
    if loader is None:
        return False
    for batch in loader:
        return isinstance(batch, (tuple, list)) and len(batch) >= 2
    return False


def _len(loader) -> int:
    try:
        return len(loader)
    except TypeError:
        return 0
