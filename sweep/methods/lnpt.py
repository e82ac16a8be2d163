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
- **Criterion** (``criterion``; one score per channel of every coupled channel group, from
  ``cal_batches`` unlabeled batches). ``d_c(x) = Σ_space a_c(x)·∂L/∂a_c(x)`` is the first-order change of
  a loss L when channel c is removed (a_c → 0), for one sample x; ``a_c`` are the output activations of
  the group's root conv/linear layer, plus those of any other conv/linear whose outputs are coupled to
  it (a residual shortcut), so that ``d_g(x) = Σ_{c∈g} d_c(x)`` is the change when the coupled channel
  ``g`` goes everywhere at once. The student is scored in eval mode, so the samples of a batch are
  independent and one backward of the batch *sum* gives every per-sample gradient. Both criteria are
  computed from the layers' feature maps a_c (as the abstract says); they differ in the loss whose
  change they measure.

  ``teacher_fisher`` (default; **our reconstruction**, teacher-guided as the paper's key idea asks:
  Xiao et al., arXiv 2403.12690, prune with a teacher's guidance and no labels). Score of g = the
  expected increase of the distillation loss KL(p_T ‖ p_S) when g is removed, to second order. Where
  the student is the teacher (``init: teacher``) the first-order term vanishes and the Hessian of the KL
  with respect to the student's logits z is the softmax Fisher F = diag(p_T) − p_T p_Tᵀ, so
  ΔKL ≈ ½·δzᵀFδz with δz the change of the logits. The Fisher-information identity
  E_{y~p_T}[∇_z(−log p(y|z)) ∇_z(−log p(y|z))ᵀ] = F gives an unbiased estimate from one pseudo-label per
  input: draw y ~ Categorical(p_T(x)) from the **teacher's** softmax (T = 1, a seeded generator of its
  own, from ``ctx.seed``), take L = Σ_x −log p_S(y_x|x), and E_y[d_g(x)²] = δzᵀFδz = 2·E[ΔKL]; so the
  score is Σ_x d_g(x)²/2, per-*sample* squares (the squared-gradient "Fisher" importance of Molchanov
  et al., "Importance Estimation for Neural Network Pruning", CVPR 2019, on the teacher's Fisher). Only
  unlabeled inputs are read: the labels are the teacher's samples. Where the student is not the
  teacher (``init: random``) the same estimator is used on the student's logits, unchanged: with
  ∇ = p_S − p_T the KL's gradient in z, E_y[d_g²]/2 = ½·δzᵀFδz + ½·(∇ᵀδz)², the teacher-Fisher
  curvature plus Molchanov's squared first-order Taylor term of the KL, still teacher-guided (an
  importance, not the KL change itself).

  ``feature_taylor`` (the earlier criterion): |Σ_x d_g(x)| on the penultimate feature loss,
  L = ‖φ_T(x) − φ_S(x)‖² (the learning gap; ``info["criterion"] = "feature_gap"``) for a student that
  differs from its teacher; where the student *is* the teacher, L ≡ 0 and so is every gradient, and the
  student's own penultimate feature energy L = ½‖φ_S(x)‖² is used instead (``"feature_energy"``; the
  teacher plays no part there).
- **Normalisation.** Each group's scores are divided by the group's mean score (Torch-Pruning's
  ``"mean"`` normaliser), so that one global ranking compares channels by their importance *relative
  to their layer*, independently of the layer's activation scale and of its width (an L2-norm
  normaliser would shrink per-channel scores of wide layers by √width and prune them harder).
- **One shot to one global target**: the lowest-ranked channels of all prunable groups go until the
  global ``ratio`` of prunable channels is removed (the plan whose removed fraction is closest to it),
  or until the kept MACs hit ``macs_fraction`` (within 3 %, searched on fresh copies), never more than
  ``max_layer_ratio`` of a group, with the engine's width-aware rounding: the engine's solver on these
  scores (:func:`sweep.engine.channels.solve_for_target`, ``round_to="auto"``, ``match_ratio=True``).
  The layers of ``ctx.ignored_layers`` (the trial's final list; unset:
  :func:`sweep.engine.skip.skipped_layers`) keep their channels.
- **Layer-wise reconstruction** (``reconstruct``, default on; **ours**, the teacher's guidance applied
  before the first training step): where the student starts from the teacher, every layer that lost input
  channels is re-fitted in closed form so that its outputs on ``recon_batches`` unlabeled batches match the
  teacher's outputs of the same layer at the kept channels (least squares, the reconstruction step of He et
  al., ICCV 2017, §3.1 and ThiNet, Luo et al., ICCV 2017, §3.3, with the teacher as the target; see
  :mod:`sweep.engine.reconstruct`). ``info["layer_reconstruction"]`` lists the layers, their relative
  error before and after, and the forward passes it cost. With ``init: random`` it is not applied.
- **Label-free retraining** for ``epochs`` epochs on ``ctx.unlabeled_loader`` only:
  ``feature_weight``·mean‖φ_T − φ_S‖²/d (MSE over the d feature dimensions, so the weight does not
  depend on width) + ``kd_weight``·T²·KL(teacher ‖ student) at ``temperature`` T (Hinton et al. 2015,
  §2). Where the head's input channels were pruned, the teacher's features are compared on the kept
  channels only.
- **Learning gap** = mean ‖φ_T(x) − φ_S(x)‖₂ over the held-out unlabeled split
  (``ctx.unlabeled_val_loader``), logged with the top-1 agreement with the teacher (as
  :func:`sweep.measure.agreement` defines it, computed in the same pass): step 0 right after pruning,
  step e after retraining epoch e. Where the validation split has labels (``ctx.labels_available``:
  ``ctx.val_loader`` then yields ``(x, y)``; without, it yields ``(x,)`` and there is no accuracy to
  report), the top-1 validation accuracy is logged at the same steps, ``info["val_accuracy"]`` one
  entry per ``info["learning_gap"]`` entry, so that the gap can be read against accuracy.

Label-freeness is enforced by the data path: criterion (whose only labels are the teacher's samples),
reconstruction, retraining and learning gap read only ``ctx.unlabeled_loader`` and ``ctx.unlabeled_val_loader`` (items
``(x,)``, in every context, supervised or not). Labels are read only to *report* ``val_accuracy``
(from ``ctx.val_loader``), and only when ``ctx.labels_available``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from ..errors import ConfigError, TrialFailure
from .base import Knob, MethodConfig, PruneContext, PruneResult, register_method
from .context import calibration_batches


def _check(cfg: MethodConfig, where: str) -> None:
    if cfg.epochs > 0 and cfg.feature_weight == 0 and cfg.kd_weight == 0:
        raise ConfigError(f"feature_weight and kd_weight must not both be 0 when epochs > 0 (retraining needs a "
                          f"loss), but got feature_weight=0, kd_weight=0, epochs={cfg.epochs} ({where})")


@register_method(
    "lnpt",
    summary="LNPT (Xiao et al. 2024, reconstruction): label-free one-shot global pruning by the expected "
            "distillation-loss increase (teacher Fisher), then feature + KD retraining without labels",
    needs_labels=False,
    check=_check,
    exclusive=[("ratio", "macs_fraction"), ("ratio", "stage_ratios")],
    knobs=[
        Knob("ratio", "float", 0.5, low=0.0, high=1.0, low_open=True, high_open=True,
             flag=True,
             help="fraction of prunable channels removed (one global ranking across layers)"),
        Knob("macs_fraction", "float", None, low=0.0, high=1.0, low_open=True, high_open=True, optional=True,
             flag=True,
             help="instead of ratio: MACs kept as a fraction of the dense model's (hit within 3 %)"),
        Knob("stage_ratios", "stages", None, low=0.0, high=1.0, high_open=True, optional=True,
             member="stage_ratio",
             help="instead of ratio: one ratio per depth stage (stage_ratio_0, ...), cut by the label-free "
                  "scores within each stage; with macs_fraction, the stages' relative weights, scaled to meet it"),
        Knob("init", "categorical", "teacher", choices=("teacher", "random"),
             help="student initialised from the teacher, or randomly (prune before training, as the paper)"),
        Knob("criterion", "categorical", "teacher_fisher", choices=("teacher_fisher", "feature_taylor"),
             help="channel score: expected KL(teacher || student) increase, or Taylor on penultimate features"),
        Knob("feature_weight", "float", 1.0, low=0.0, high=100.0,
             help="weight of the penultimate feature alignment (MSE to the teacher's features)"),
        Knob("kd_weight", "float", 1.0, low=0.0, high=100.0,
             help="weight of T^2 * KL(teacher || student) on softened logits"),
        Knob("temperature", "float", 4.0, low=0.0, high=20.0, low_open=True,
             help="distillation temperature T"),
        Knob("epochs", "int", 3, low=0, high=50, help="label-free retraining epochs after pruning"),
        Knob("cal_batches", "int", 8, low=1, high=200, help="unlabeled batches the criterion is computed on"),
        Knob("reconstruct", "bool", True,
             help="after pruning, re-fit the layers that lost inputs to the teacher's outputs (least squares)"),
        Knob("recon_batches", "int", 4, low=1, high=200,
             help="unlabeled batches the layer-wise reconstruction is fitted on"),
        Knob("max_layer_ratio", "float", 0.9, low=0.0, high=1.0, low_open=True, high_open=True,
             help="no group loses more than this fraction of its channels"),
    ],
)
def prune(model, example_inputs, cfg: MethodConfig, ctx: PruneContext) -> PruneResult:
    import copy

    import torch

    from ..engine.channels import AUTO, channel_counts, solve_for_target
    from ..engine.groups import ChannelGraph

    device = ctx.device
    teacher = ctx.teacher
    if teacher is None:  # a context without a teacher (e.g. the contract suite): the dense model given
        teacher = copy.deepcopy(model)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    train_inputs, val_inputs = ctx.unlabeled_loader, ctx.unlabeled_val_loader

    head = find_head(model, ctx.ignored_layers)
    head_name = _name_of(model, head)
    t_head = dict(teacher.named_modules()).get(head_name)
    if not isinstance(t_head, torch.nn.Linear):
        t_head = find_head(teacher, ())

    with torch.random.fork_rng(devices=[]):  # deterministic under ctx.seed, whatever the caller's RNG state
        torch.manual_seed(ctx.seed)
        model.to("cpu")  # graph tracing, MAC counts and surgery on the CPU (example_inputs live there)
        if cfg.init == "random":
            reinit(model, ctx.seed)
        # the context's final list of layers kept (unset: the engine's skipped_layers)
        graph = ChannelGraph(model, example_inputs, ignored_layers=ctx.ignored_layers or None)

        # --- criterion: one score tensor per coupled group, from unlabeled inputs only
        model.to(device)
        batches = calibration_batches(ctx, cfg.cal_batches, "lnpt")
        if cfg.criterion == "teacher_fisher":
            criterion = "teacher_fisher"
            raw = teacher_fisher_scores(model, teacher, graph.groups, batches, seed=ctx.seed, device=device)
        else:
            criterion = "feature_energy" if cfg.init == "teacher" else "feature_gap"
            raw = feature_taylor_scores(model, teacher, graph.groups, head, t_head, batches, criterion=criterion,
                                        device=device)
        scores = {name: normalise(s) for name, s in raw.items()}

        # --- one global ranking, one global target: the engine's solver on these scores
        model.to("cpu")
        kind, value = _target(cfg)
        sol = solve_for_target(graph, target=kind, value=value, scores=scores, global_pruning=True, round_to=AUTO,
                               max_layer_ratio=cfg.max_layer_ratio, match_ratio=True,
                               stage_ratios=cfg.stage_ratios if kind == "macs_fraction" else None)
        before = {g.name: g.channels for g in sol.plan.groups}
        sel = sol.selection
        keep_feat = head_input_kept(sol.plan.groups, sel, head)
        kept = graph.kept_channels(sel)
        graph.prune(sel)
        modules = dict(model.named_modules())
        layer_ratios = {name: _out_channels(modules[name]) / c for name, c in before.items()}
        model.to(device)

        # --- teacher-guided layer-wise reconstruction (closed form, unlabeled inputs)
        recon = _reconstruct(model, teacher, kept, cfg, ctx)

        # --- label-free retraining, the learning gap logged per epoch
        log = retrain(model, teacher, head, t_head, keep_feat, train_inputs, val_inputs, cfg, ctx)

    info = {
        "reconstruction": "Xiao et al. 2024 (arXiv 2403.12690), abstract only; see sweep/methods/lnpt.py",
        "init": cfg.init, "criterion": criterion, "normalisation": "mean", "cal_batches": cfg.cal_batches,
        **sol.info(),  # target and achieved (also flat), channel_ratio, within_tolerance, MACs and params
        "layer_ratios": layer_ratios,
        "group_score_mean": {n: float(s.mean()) for n, s in raw.items()},
        "head": head_name,
        "penultimate_features": {"teacher": int(t_head.in_features), "student": int(head.in_features)},
        "channels": channel_counts(model),
        "feature_weight": cfg.feature_weight, "kd_weight": cfg.kd_weight, "temperature": cfg.temperature,
        "layer_reconstruction": recon,
        **log,
    }
    return PruneResult(model=model, info=info, finetuned=True)


def _reconstruct(model, teacher, kept: dict, cfg: MethodConfig, ctx: PruneContext) -> dict:
    """Re-fit the pruned layers to the teacher's outputs (:mod:`sweep.engine.reconstruct`) where the student
    starts from the teacher; ``{"applied": False, "why": ...}`` where it does not."""
    from ..engine.reconstruct import reconstruct_layers

    if not cfg.reconstruct:
        return {"applied": False, "why": "reconstruct: false"}
    if cfg.init != "teacher":
        return {"applied": False, "why": f"init: {cfg.init} (the student's layers are not the teacher's)"}
    batches = calibration_batches(ctx, cfg.recon_batches, "lnpt")
    res = reconstruct_layers(model, teacher, kept, batches, seed=ctx.seed,
                             device=ctx.device)
    return {"applied": True, **res.info()}


# ----------------------------------------------------------------------------------- data, label-free
def _target(cfg: MethodConfig) -> tuple[str, Any]:
    """The engine target of a configuration: a MACs fraction (the stage ratios, when given, as its weights),
    the stage ratios alone (each depth stage cut by its own ratio), or the global ratio."""
    from ..engine.channels import STAGES

    if cfg.macs_fraction is not None:
        return "macs_fraction", cfg.macs_fraction
    if cfg.stage_ratios is not None:
        return STAGES, cfg.stage_ratios
    return "ratio", cfg.ratio


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
    student equal to its teacher, where the gap and its gradient vanish). The chunks of a grouped conv
    (pruned in step) add their per-channel scores.
    """
    import torch

    if criterion not in ("feature_gap", "feature_energy"):
        raise ValueError(f"criterion must be feature_gap or feature_energy, but got criterion={criterion!r} "
                         f"(feature_taylor_scores)")
    s_feat = Penultimate(student, head)
    t_feat = Penultimate(teacher, t_head) if criterion == "feature_gap" else None

    def loss_of(x):
        _, phi_s = s_feat(x)
        if t_feat is None:
            return 0.5 * phi_s.pow(2).sum()
        with torch.no_grad():
            _, phi_t = t_feat(x)
        return (phi_t - phi_s).pow(2).sum()

    try:
        first, _ = taylor_moments(student, groups, batches, loss_of, device=device)
    finally:
        s_feat.close()
        if t_feat is not None:
            t_feat.close()
    out = {}
    for g in groups:
        s = first[g.name].abs()
        if g.ch_groups > 1:  # chunks of a grouped conv are pruned in step: one score per unit
            s = s.view(g.ch_groups, -1).sum(0)
        out[g.name] = s.float()
    return out


def teacher_fisher_scores(student, teacher, groups, batches: list, *, seed: int, device: str = "cpu") -> dict:
    """One score tensor per channel group (length ``group.size``): Σ_x d_g(x)²/2, the expected increase
    of KL(p_T ‖ p_S) when unit g is removed, to second order (see the module docstring).

    ``d_g(x) = Σ_{c∈g} Σ_space a_c(x)·∂/∂a_c(x) [−log p_S(y_x|x)]`` with one pseudo-label per input,
    y_x ~ Categorical(p_T(x)) drawn from the teacher's softmax by a generator seeded from ``seed`` (on the
    CPU, so the draw does not depend on the device). ``batches`` are input tensors: no label is read.
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(int(seed) * 7919 + 31)  # a stream apart from the student's reinit

    def loss_of(x):
        with torch.no_grad():
            t_logits = teacher(x)
        _check_logits(t_logits, "teacher", teacher)
        p_t = F.softmax(t_logits.double(), dim=1).cpu()
        y = torch.multinomial(p_t, 1, generator=gen).squeeze(1).to(x.device)
        s_logits = student(x)
        _check_logits(s_logits, "student", student)
        return F.cross_entropy(s_logits, y, reduction="sum")  # a sum: per-sample gradients in eval mode

    _, second = taylor_moments(student, groups, batches, loss_of, device=device)
    return {name: (s / 2).float() for name, s in second.items()}


def _check_logits(logits, who: str, model) -> None:
    from ..measure import check_finite

    if logits.dim() != 2:
        raise TrialFailure(f"lnpt's teacher_fisher criterion must see logits of shape (batch, classes), but got "
                           f"shape={tuple(logits.shape)} ({who} {type(model).__name__})")
    check_finite(logits, f"lnpt's teacher_fisher criterion, {who}")


def taylor_moments(student, groups, batches: list, loss_of, *, device: str = "cpu") -> tuple[dict, dict]:
    """Per group, the first and second moments over samples of the per-sample Taylor terms of a loss.

    ``loss_of(x)`` runs the student on the input batch ``x`` and returns a scalar loss that is a sum over
    the samples. For sample x and root channel r of a group, ``t_r(x) = Σ_{members} Σ_space
    a(x)·∂loss/∂a(x)`` over the channels coupled to r (the outputs of the conv/linear layers that make up
    the group: its root, and layers coupled to it), and ``u(x)`` adds the chunks of a grouped conv (one
    pruning unit). Returns ``(first, second)``: ``first[name] = Σ_x t(x)`` (length ``group.channels``) and
    ``second[name] = Σ_x u(x)²`` (length ``group.size``), float64 on the CPU. The student is run in eval
    mode (BN statistics are not touched), so the samples of a batch are independent.
    """
    import torch
    from torch import nn

    producers: dict[int, nn.Module] = {}
    plan = []  # (group, [(module id, member idxs, root idxs)])
    for g in groups:
        parts = []
        for mem in g.members:
            if (mem.kind == "out" and isinstance(mem.module, (nn.modules.conv._ConvNd, nn.Linear))
                    and None not in mem.root_idxs):
                producers[id(mem.module)] = mem.module
                parts.append((id(mem.module), torch.tensor(list(mem.idxs), dtype=torch.long),
                              torch.tensor(list(mem.root_idxs), dtype=torch.long)))
        plan.append((g, parts))

    store: dict[int, list] = {k: [] for k in producers}

    def hook(module, inputs, out):
        store[id(module)].append(out)
        return out.clone()  # what follows (an in-place ReLU) edits the clone; ``out`` keeps a_c and its grad

    first = {g.name: torch.zeros(g.channels, dtype=torch.float64) for g in groups}
    second = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    handles = [m.register_forward_hook(hook) for m in producers.values()]
    was = student.training
    student.eval()
    try:
        for x in batches:
            x = x.to(device)
            for v in store.values():
                v.clear()
            with torch.enable_grad():
                loss = loss_of(x)
                keys = [k for k, outs in store.items() for _ in outs]
                outs = [o for k in store for o in store[k]]
                grads = torch.autograd.grad(loss, outs, allow_unused=True) if outs else []
            per_sample: dict[int, Any] = {}  # module id -> (N, out channels): Σ_space a·grad, per sample
            for k, a, gr in zip(keys, outs, grads):
                if gr is None:
                    continue
                prod = (a.detach() * gr).double()
                if isinstance(producers[k], nn.Linear):  # (N, ..., C): channels last
                    d = prod.reshape(prod.shape[0], -1, prod.shape[-1]).sum(1)
                else:  # (N, C, ...): channels second
                    d = prod.reshape(prod.shape[0], prod.shape[1], -1).sum(2)
                d = d.cpu()
                per_sample[k] = d if k not in per_sample else per_sample[k] + d
            n = x.shape[0]
            for g, parts in plan:
                t = torch.zeros(n, g.channels, dtype=torch.float64)
                for k, idxs, root_idxs in parts:
                    if k in per_sample:
                        t.index_add_(1, root_idxs, per_sample[k].index_select(1, idxs))
                first[g.name] += t.sum(0)
                u = t.view(n, g.ch_groups, -1).sum(1) if g.ch_groups > 1 else t
                second[g.name] += u.pow(2).sum(0)
    finally:
        for h in handles:
            h.remove()
        student.train(was)
    return first, second


def normalise(s):
    """Scores divided by the group's mean (see the module docstring); a group of zero scores stays 0."""
    m = float(s.mean())
    return s / m if m > 0 and math.isfinite(m) else s * 0.0


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
    """Label-free retraining (feature alignment + KD) with the sweep's fine-tune optimiser settings
    (:func:`sweep.train.fit`); returns the per-epoch logs for ``info``."""
    import torch
    import torch.nn.functional as F

    from ..measure import check_finite
    from ..train import fit, hyper, soft_kl

    device = ctx.device
    keep = None if keep_feat is None else torch.tensor(keep_feat, dtype=torch.long, device=device)
    s_pen, t_pen = Penultimate(model, head), Penultimate(teacher, t_head)

    def teacher_out(x):
        with torch.no_grad():
            logits, f = t_pen(x)
        return logits, (f if keep is None else f.index_select(1, keep))

    report_acc = ctx.labels_available

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
                check_finite(s_logits, "lnpt's learning gap")
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
            log["val_accuracy"].append(point["val_accuracy"])
        log["trajectory"].append(point)
        log["learning_gap"].append(gap)
        log["agreement"].append(agree)

    t = cfg.temperature

    def loss_fn(_model, batch):  # s_pen runs the model and keeps its penultimate features
        x = batch[0].to(device)  # inputs only: the loader carries no labels
        t_logits, t_f = teacher_out(x)
        s_logits, s_f = s_pen(x)
        loss = s_logits.new_zeros(())
        if cfg.feature_weight > 0:
            loss = loss + cfg.feature_weight * F.mse_loss(s_f, t_f)
        if cfg.kd_weight > 0:  # T² as in Hinton et al. 2015, §2
            loss = loss + cfg.kd_weight * t * t * soft_kl(s_logits, t_logits, t)
        return loss, x.shape[0]

    def after_epoch(epoch: int, loss: float) -> None:  # epoch e (from 0) is logged as step e + 1
        log["train_loss"].append(loss)
        ctx.log_metric("train_loss", loss, epoch + 1)
        evaluate(epoch + 1, log)

    log: dict = {"epochs": cfg.epochs, "learning_gap": [], "agreement": [], "train_loss": [], "trajectory": []}
    if report_acc:  # one point per learning-gap point (step 0, then each epoch); absent without labels
        log["val_accuracy"] = []
    try:
        evaluate(0, log)
        fit(model, train_inputs, loss_fn, epochs=cfg.epochs, hp=hyper(ctx.finetune_config), device=device,
            on_epoch=after_epoch)
    finally:
        s_pen.close()
        t_pen.close()
        model.eval()
    return log
