"""``iterative``: iterative sensitivity-driven filter pruning for concatenation-based CNNs.

Pavlitska, Bagge, Peccia, Mammadov & Zöllner, "Iterative Filter Pruning for Concatenation-based CNN
Architectures", IJCNN 2024, arXiv 2405.03715.

Known from the authors' public code (a patch to YOLOv7):

- a connectivity graph of the conv layers maps every pruning decision through concatenations (a
  producer's removed filters are removed from every consumer's input slice);
- filter criterion: smallest L2 norm by default (alternatives L1, BN γ, ...);
- per iteration, a **sensitivity analysis**: each conv layer i alone is pruned at each rate
  r ∈ {0.25, 0.5, 0.75}, with no fine-tuning, and the quality, params and FLOPs are recorded;
- **scores** ΔP(i,r) = P_total − P(i,r), ΔF(i,r) = F_total − F(i,r),
  score_P = ΔP · acc(i,r)^α_P, score_F = ΔF · acc(i,r)^α_F, α_P = α_F = 20 at the start, lowered
  across iterations (20 → 14 for YOLOv7, 10 → 6 for YOLOv7-tiny);
- per layer the best rate; the top ~6 layers by params score and ~5 by FLOPs score; the union is
  pruned at once, then fine-tuned; repeat (14 iterations for YOLOv7).

Our design (a reconstruction where the paper's body could not be read; not the authors' code):

- The unit is a **coupled channel group** of Torch-Pruning's dependency graph
  (:class:`sweep.engine.groups.ChannelGraph`), which plays the role of the authors' connectivity
  graph: one group = one root conv/linear's filters plus every coupled BN and consumer slice
  (concat, split, residual adds). The layers of ``ctx.ignored_layers`` (the trial's final list: output
  layers, declared and kept layers; unset: :func:`sweep.engine.skip.skipped_layers`) are never pruned.
- The filter criterion is Torch-Pruning's *group* criterion (``l2``/``l1`` norms summed over the
  group's coupled layers, or BN γ), as in ``magnitude``; groups the criterion cannot rank (BN γ
  without a BN) are not analysed.
- Rate r removes ⌊r · width⌋ channels of the group's *current* width, capped so that no group ever
  loses more than ``max_layer_ratio`` of its width at the start of the trial; rates that collapse to
  the same count on narrow groups are analysed once.
- Quality is measured on a validation **subset** (``val_samples``): top-1 accuracy on
  ``ctx.val_loader`` where ``ctx.labels_available``, else top-1 agreement with ``ctx.teacher`` on
  ``ctx.unlabeled_val_loader`` — the same quantity ``ctx.evaluate`` measures on the whole split.
  Without a teacher and labels, the input model stands in as the teacher. The subset is read once
  per iteration and every candidate is evaluated on the same cached batches; params are counted on
  each candidate, MACs once per group (at its largest rate) where they fall linearly with the
  channels removed, which holds unless a layer of the group loses inputs and outputs at once (then
  every rate is counted); the tests check this against exact counts, SPPCSPC's 4-slice concat included.
- The default α_decay = 2 (20 → 16 over 3 iterations) is ours: the paper lowered α by 6 over 14
  iterations (YOLOv7) and by 4 for YOLOv7-tiny; a sweep runs few iterations per trial.
- Scores are compared as ``log ΔP + α log acc`` (no underflow at large α); a candidate with
  quality 0 scores 0 and is never chosen. Top-n replaces the authors' "threshold max/frac, adjusted
  until the count fits" (the same set up to ties; ties go to the graph's group order). One α serves
  both scores; α_k = max(1, α − (k − 1) · alpha_decay) in iteration k. A group chosen by both scores
  with different best rates is pruned at the milder rate.
- Fine-tuning (``epochs_per_iter`` per iteration) goes through ``ctx.finetune`` (the sweep's
  settings, distillation in label-free sweeps); the method returns ``finetuned=True`` so the runner
  does not fine-tune again. Params, MACs, latency (batch 1, few repeats) and ``ctx.evaluate``
  quality are logged per iteration (``iter_params``, ``iter_macs``, ``iter_latency_ms``,
  ``iter_quality``) and stored as ``info["trajectory"]`` (step 0 = the input model).

A MACs target and one training budget (ours, so that methods can be compared at matched compression
and equal training):

- ``macs_fraction`` (optional): the iteration stops once the model keeps that fraction of the input
  model's MACs, within :data:`~sweep.engine.channels.TOLERANCE` (3 %). In the iteration whose chosen
  removals would take the MACs more than the tolerance below the target, every chosen group's removed
  count is scaled by one factor s ∈ (0, 1] (⌊s · n⌋ channels, lowest criterion first), and s is found by
  bisection on the MACs of pruned deep copies (:meth:`~sweep.engine.groups.ChannelGraph.pruned_copy`,
  :func:`sweep.measure.count_macs`): the plan within the tolerance, else the closest one (channel
  granularity may allow none within it; a closest plan still above the band leaves the target to the
  next iteration). ``iteration_details`` record ``scale`` and each group's ``planned`` and ``removed``
  counts; ``info["target_reached_at"]`` is the iteration after which the MACs were at most the target
  plus the tolerance (0: the input model already). ``info["target_reached"]`` says whether the final
  MACs are within the tolerance; where every iteration ends above the target it is False and
  ``info["target_note"]`` says where it ended: a missed target is reported, never passed over.
- **The training budget is always ``iterations × epochs_per_iter`` epochs** (``info["epochs"]``): when
  the iteration stops early (the target reached, or every group at its ``max_layer_ratio`` floor), the
  epochs of the iterations not run are spent in one final fine-tune — merged with the fine-tune of the
  iteration that reached the target (one cosine schedule), or after the last iteration that ran
  (its trajectory point: ``pruned_groups`` empty, ``alpha`` None). ``info["iterations_done"]`` counts
  the iterations run.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass

from ..engine.channels import TOLERANCE
from ..errors import TrialFailure
from .base import Knob, MethodConfig, PruneContext, PruneResult, register_method

# Pavlitska et al. 2024 (authors' code): each layer is pruned at these rates in the sensitivity analysis.
RATES = (0.25, 0.5, 0.75)
# Pavlitska et al. 2024: α_P = α_F = 20 at the start of YOLOv7 pruning ...
PAPER_ALPHA_START = 20.0
# ... lowered across iterations: (start, end) for YOLOv7 over 14 iterations, and for YOLOv7-tiny.
PAPER_ALPHA_SCHEDULE = {"yolov7": (20.0, 14.0), "yolov7-tiny": (10.0, 6.0)}
PAPER_ITERATIONS_YOLOV7 = 14  # Pavlitska et al. 2024: 36.9 M -> 4.6 M params after 14 iterations
# Pavlitska et al. 2024: keep the top ~6 layers by params score and the top ~5 by FLOPs score.
PAPER_N_PARAMS = 6
PAPER_N_MACS = 5
# Pavlitska et al. 2024 (authors' code): smallest L2 filter norm by default; L1 and BN γ among the options.
CRITERIA = ("l2", "l1", "bn_scale")
# Our choice: per-iteration latency is a trajectory point, not the trial's figure (the runner
# measures that with the sweep's settings), so few repeats.
ITER_LATENCY = {"warmup": 3, "repeats": 10}
EVAL_CHUNK = 256  # samples per forward when scoring candidates on the cached subset
SCALE_STEPS = 20  # bisection steps on the scale of the removals of the iteration that crosses a MACs target


@register_method(
    "iterative",
    needs_labels=False,  # quality through labels where the sweep has them, else teacher agreement
    summary="iterative filter pruning for concat CNNs (Pavlitska et al. 2024): per-group sensitivity at "
            "rates 0.25/0.5/0.75, scores dP*acc^alpha and dMACs*acc^alpha, prune the top groups, "
            "fine-tune, repeat",
    knobs=[
        Knob("iterations", "int", 3, low=1, high=20,
             help="prune + fine-tune rounds inside the trial (paper: 14 for YOLOv7)"),
        Knob("alpha", "float", PAPER_ALPHA_START, low=1.0, high=50.0,
             help="accuracy exponent of both scores in the first iteration (paper: 20 YOLOv7, 10 tiny)"),
        Knob("alpha_decay", "float", 2.0, low=0.0, high=10.0,
             help="alpha decreases by this much per iteration, not below 1 (paper: 20 -> 14, 10 -> 6)"),
        Knob("n_params", "int", PAPER_N_PARAMS, low=0, high=20,
             help="groups chosen per iteration by the params score (paper: ~6)"),
        Knob("n_macs", "int", PAPER_N_MACS, low=0, high=20,
             help="groups chosen per iteration by the MACs score (paper: ~5); the union is pruned"),
        Knob("criterion", "categorical", "l2", choices=CRITERIA,
             help="which channels of a group go first: smallest L2 / L1 norm or BN scale"),
        Knob("epochs_per_iter", "int", 1, low=0, high=20, help="fine-tune epochs after each pruning step"),
        Knob("val_samples", "int", 512, low=32, high=100_000,
             help="validation samples the sensitivity analysis evaluates each candidate on"),
        Knob("max_layer_ratio", "float", 0.9, low=0.0, high=1.0, low_open=True, high_open=True,
             help="no group ever loses more than this fraction of its channels at the trial's start"),
        Knob("macs_fraction", "float", None, low=0.0, high=1.0, low_open=True, optional=True, flag=True,
             help="stop once MACs reach this fraction of the input's (within 3 %); the epochs left go to one "
                  "final fine-tune"),
    ],
)
def prune(model, example_inputs, cfg: MethodConfig, ctx: PruneContext) -> PruneResult:
    from ..engine.groups import ChannelGraph
    from ..measure import count_macs, count_params

    home = example_inputs.device
    name = type(model).__name__
    ignored = ctx.ignored_layers or None  # unset: the engine's skipped_layers, on every rebuild

    graph = ChannelGraph(model, example_inputs, ignored_layers=ignored)
    if not len(graph):
        raise TrialFailure(
            f"iterative needs prunable channel groups (conv/linear layers outside the output layers "
            f"and the ignored layers), but model {name} has none")
    floors = {g.name: _floor(g.size, cfg.max_layer_ratio) for g in graph}
    plan = _plan(graph, cfg.criterion, floors, cfg.max_layer_ratio)
    if not plan:
        raise TrialFailure(
            f"iterative found nothing to prune in model {name}: {len(graph)} channel groups, none with "
            f"a channel to spare under max_layer_ratio={cfg.max_layer_ratio} that criterion "
            f"{cfg.criterion!r} can rank")

    params0, macs0 = count_params(model), count_macs(model, example_inputs)
    target = None if cfg.macs_fraction is None else cfg.macs_fraction * macs0
    budget = cfg.iterations * cfg.epochs_per_iter
    teacher = ctx.teacher
    if teacher is None and not ctx.labels_available:  # unlabeled and no teacher: the input model
        teacher = copy.deepcopy(model).eval()
    trajectory = [_point(model, example_inputs, ctx, 0, [], None, params0, macs0)]
    details: list[dict] = []
    epochs = 0
    stopped = None
    used_samples = 0
    reached_at = 0 if target is not None and macs0 <= target * (1 + TOLERANCE) else None
    if reached_at == 0:
        stopped = "before iteration 1: the input model is within the MACs target"
    for k in range(1, cfg.iterations + 1):
        if reached_at is not None:
            break
        alpha = max(1.0, cfg.alpha - cfg.alpha_decay * (k - 1))
        if k > 1:
            graph = ChannelGraph(model, example_inputs, ignored_layers=ignored)
            plan = _plan(graph, cfg.criterion, floors, cfg.max_layer_ratio)
            if not plan:
                stopped = f"iteration {k}: every group is at its max_layer_ratio floor"
                break
        pruned: list[str] = []
        detail = {"step": k, "alpha": alpha, "candidates": 0, "selected": [], "sensitivity": {}}
        if cfg.n_params or cfg.n_macs:
            data = _eval_data(ctx, cfg.val_samples, teacher)
            used_samples = sum(int(t.numel()) for _, t in data)
            cands, base_q = _sensitivity(graph, plan, data, example_inputs, ctx.device, home)
            chosen = choose(cands, alpha, cfg.n_params, cfg.n_macs)
            orders = {g.name: order for g, order, _ in plan}
            counts = {c.group: c.removed for c, _ in chosen}
            if chosen and target is not None:
                counts, scale = scale_to_target(graph, orders, counts, target, example_inputs)
                detail["scale"] = scale
            pruned = [g for g, n in counts.items() if n > 0]
            if pruned:
                graph.prune({g: orders[g][: counts[g]].tolist() for g in pruned})
            detail.update(
                base_quality=base_q, candidates=len(cands),
                selected=[{"group": c.group, "rate": c.rate, "removed": counts[c.group], "planned": c.removed,
                           "width": c.width, "quality": c.quality, "by": by} for c, by in chosen],
                sensitivity=_table(cands))
        if target is not None and count_macs(model, example_inputs) <= target * (1 + TOLERANCE):
            reached_at = k
            if k < cfg.iterations:
                stopped = f"iteration {k}: the MACs target is reached"
        # the iteration that reaches the target also spends the epochs of the iterations not run
        ft_epochs = budget - epochs if reached_at is not None else cfg.epochs_per_iter
        if ft_epochs > 0:
            _finetune(ctx, model, ft_epochs, epochs)
            epochs += ft_epochs
            model.to(home)
        detail["finetune_epochs"] = ft_epochs
        details.append(detail)
        trajectory.append(_point(model, example_inputs, ctx, k, pruned, alpha))
    if budget > epochs:  # stopped before the last iteration: one final fine-tune with the epochs left
        rest = budget - epochs
        _finetune(ctx, model, rest, epochs)
        epochs += rest
        model.to(home)
        trajectory.append(_point(model, example_inputs, ctx, len(trajectory), [], None))
    model.to(home).eval()

    info = {
        "iterations": cfg.iterations, "iterations_done": len(details), "stopped_early": stopped,
        "alpha": cfg.alpha, "alpha_decay": cfg.alpha_decay, "n_params": cfg.n_params,
        "n_macs": cfg.n_macs, "criterion": cfg.criterion, "epochs_per_iter": cfg.epochs_per_iter,
        "max_layer_ratio": cfg.max_layer_ratio, "rates": list(RATES), "val_samples": cfg.val_samples,
        "val_samples_used": used_samples, "prunable_groups": len(floors),
        "params_before": params0, "params_after": trajectory[-1]["params"],
        "macs_before": macs0, "macs_after": trajectory[-1]["macs"],
        "epochs": epochs, "trajectory": trajectory, "iteration_details": details,
        "macs_fraction": cfg.macs_fraction,
    }
    if target is not None:
        achieved = trajectory[-1]["macs"] / macs0
        reached = abs(achieved - cfg.macs_fraction) <= cfg.macs_fraction * TOLERANCE
        info.update(target_macs=target, tolerance=TOLERANCE, achieved_macs_fraction=achieved,
                    target_reached=reached, target_reached_at=reached_at)
        if not reached:
            where = ("below it: channel granularity allowed no closer plan" if achieved < cfg.macs_fraction
                     else f"above it after {len(details)} of {cfg.iterations} iterations")
            info["target_note"] = (f"MACs target {cfg.macs_fraction:.4g} of the input's missed: ended at "
                                   f"{achieved:.4g}, {where}")
    return PruneResult(model=model, info=info, finetuned=True)


def scale_to_target(graph, orders: dict, counts: dict, target: float, example_inputs,
                    tolerance: float = TOLERANCE, steps: int = SCALE_STEPS) -> tuple[dict, float]:
    """The removals ``counts`` (``{group: channels}``, the lowest of ``orders[group]`` first) scaled so
    that the model's MACs land on ``target`` (absolute) within ``tolerance``: ``(counts, scale)``.

    Unchanged (scale 1) when they do not take the MACs more than ``tolerance`` below ``target``. Else
    every count becomes ⌊s · n⌋ for one s ∈ (0, 1], found by bisection on the MACs of pruned copies
    (more removed, fewer MACs: monotone in s); the first plan within the tolerance is taken, else the
    closest one with something removed."""
    from ..measure import count_macs

    cache: dict = {}

    def at(s: float):
        scaled = {g: int(s * n + 1e-9) for g, n in counts.items()}
        key = tuple(sorted(scaled.items()))
        if key not in cache:
            sel = {g: orders[g][:n].tolist() for g, n in scaled.items() if n > 0}
            cache[key] = count_macs(graph.pruned_copy(sel), example_inputs) if sel else None
        return scaled, cache[key]

    full = at(1.0)[1]
    if full is None or full >= target * (1 - tolerance):
        return dict(counts), 1.0

    def err(macs: float) -> float:
        return abs(macs - target) / target

    best = (err(full), 1.0, dict(counts))
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        scaled, macs = at(mid)
        if macs is None:  # nothing removed yet at this scale: more
            lo = mid
            continue
        if err(macs) < best[0]:
            best = (err(macs), mid, scaled)
        if err(macs) <= tolerance:
            break
        if macs > target:
            lo = mid
        else:
            hi = mid
    return best[2], best[1]


# ------------------------------------------------------------------------------------ scoring
@dataclass(frozen=True)
class Candidate:
    """One sensitivity-analysis point: group ``group`` alone pruned at ``rate`` (``removed`` channels)."""

    group: str
    order: int  # position of the group in the graph (ties go to the earlier group)
    rate: float
    removed: int
    width: int
    quality: float
    params: int
    macs: int
    d_params: int
    d_macs: int


def log_score(delta: float, quality: float, alpha: float) -> float:
    """log(Δ · quality^α) (Pavlitska et al. 2024's score, in log space); -inf where the score is 0."""
    if delta <= 0 or quality <= 0:
        return -math.inf
    return math.log(delta) + alpha * math.log(quality)


def choose(cands, alpha: float, n_params: int, n_macs: int) -> list[tuple[Candidate, list[str]]]:
    """Best rate per group for each score, the top ``n_params`` groups by the params score and the
    top ``n_macs`` by the MACs score; returns the union as ``[(candidate, ["params"|"macs", ...])]``
    in group order. A group chosen by both scores at different rates keeps the milder rate."""
    picks: dict[str, tuple[Candidate, list[str]]] = {}
    for key, n in (("params", n_params), ("macs", n_macs)):
        if n <= 0:
            continue
        best: dict[str, tuple[float, Candidate]] = {}
        for c in cands:
            s = log_score(c.d_params if key == "params" else c.d_macs, c.quality, alpha)
            if s == -math.inf:
                continue
            if c.group not in best or s > best[c.group][0]:  # ties keep the milder (earlier) rate
                best[c.group] = (s, c)
        ranked = sorted(best.values(), key=lambda sc: (-sc[0], sc[1].order))[:n]
        for _, c in ranked:
            if c.group in picks:
                old, by = picks[c.group]
                picks[c.group] = (old if old.removed <= c.removed else c, by + [key])
            else:
                picks[c.group] = (c, [key])
    return sorted(picks.values(), key=lambda cb: cb[0].order)


# ------------------------------------------------------------------------------------ analysis
def _floor(width: int, max_layer_ratio: float) -> int:
    return max(1, math.ceil(width * (1 - max_layer_ratio) - 1e-9))


def _plan(graph, criterion: str, floors: dict, max_layer_ratio: float):
    """``[(group, removal order, [(rate, channels removed), ...])]`` for every group with channels to
    spare; lowest-criterion channels first; rates that give the same count are analysed once."""
    import torch

    out = []
    for g in graph:
        size = g.size
        spare = size - floors.get(g.name, _floor(size, max_layer_ratio))
        if size < 2 or spare < 1:
            continue
        s = g.score(criterion)
        if s is None:
            continue
        steps, seen = [], set()
        for r in RATES:
            n = min(int(r * size + 1e-9), spare)
            if n >= 1 and n not in seen:
                seen.add(n)
                steps.append((r, n))
        if steps:
            out.append((g, torch.argsort(s, stable=True), steps))
    return out


def _eval_data(ctx: PruneContext, n_samples: int, teacher) -> list:
    """The first ``n_samples`` validation inputs with their targets, in chunks: the labels where
    ``ctx.labels_available``, else the teacher's top-1 (what ``ctx.evaluate`` compares against)."""
    import torch

    labelled = ctx.labels_available
    xs, ys, have = [], [], 0
    for batch in ctx.val_loader if labelled else ctx.unlabeled_val_loader:
        x = batch[0]
        take = min(int(x.shape[0]), n_samples - have)
        xs.append(x[:take])
        if labelled:
            ys.append(batch[1][:take])
        have += take
        if have >= n_samples:
            break
    if not have:
        raise TrialFailure("iterative needs validation batches, but the validation loader is empty")
    x_all = torch.cat(xs).to(ctx.device)
    if labelled:
        t_all = torch.cat(ys).to(ctx.device)
    else:
        teacher = teacher.to(ctx.device).eval()
        with torch.inference_mode():
            t_all = torch.cat([teacher(c).argmax(1) for c in x_all.split(EVAL_CHUNK)])
    return list(zip(x_all.split(EVAL_CHUNK), t_all.split(EVAL_CHUNK)))


def _quality(model, data) -> float:
    import torch

    model.eval()
    right = total = 0
    with torch.inference_mode():
        for x, t in data:
            right += int((model(x).argmax(1) == t).sum())
            total += int(t.numel())
    return right / total


def _sensitivity(graph, plan, data, example_inputs, device: str, home):
    """Every (group, rate) candidate pruned alone on a copy, not fine-tuned: quality on the cached
    subset, params and MACs. Returns ``(candidates, quality of the unpruned model)``.

    Every candidate is evaluated on the same cached batches. MACs are counted on the copy at the
    group's largest rate; at its smaller rates they follow from that count where the group's MACs fall
    linearly with the channels removed (see :func:`_linear_macs`), else they are counted too.
    """
    from ..measure import count_macs, count_params

    model = graph.model
    p_total, f_total = count_params(model), count_macs(model, example_inputs)
    base_q = _quality(model.to(device), data)
    model.to(home)
    cands = []
    for order, (g, removal, steps) in enumerate(plan):
        linear = _linear_macs(g)
        per_channel = None  # exact MACs saved per channel removed, once known
        for r, n in sorted(steps, key=lambda s: -s[1]):  # largest count first
            cand = graph.pruned_copy({g: removal[:n].tolist()})
            p = count_params(cand)
            if per_channel is not None:
                f = f_total - per_channel * n
            else:
                f = count_macs(cand, example_inputs)
                if linear and (f_total - f) % n == 0:
                    per_channel = (f_total - f) // n
            q = _quality(cand.to(device), data)
            del cand
            cands.append(Candidate(group=g.name, order=order, rate=r, removed=n, width=g.size, quality=q,
                                   params=p, macs=f, d_params=p_total - p, d_macs=f_total - f))
    cands.sort(key=lambda c: (c.order, c.removed))
    return cands, base_q


def _linear_macs(group) -> bool:
    """Whether the model's MACs fall by the same amount for each channel this group loses.

    True when no layer of the group loses both input and output channels (a conv's MACs are
    out x in x k x H x W: linear when one factor shrinks; BN, activations and pools are linear in
    their channels), except depthwise convs (one filter per channel: linear as well)."""
    from torch import nn

    kinds: dict = {}
    for m in group.members:
        kinds.setdefault(id(m.module), (m.module, set()))[1].add(m.kind)
    for module, ks in kinds.values():
        depthwise = isinstance(module, nn.modules.conv._ConvNd) and \
            module.groups == module.in_channels == module.out_channels
        if len(ks) > 1 and not depthwise:
            return False
    return True


def _table(cands) -> dict:
    """Sensitivity per group: ``[rate, removed, quality, Δparams, ΔMACs]`` rows (JSON-able)."""
    out: dict = {}
    for c in cands:
        out.setdefault(c.group, []).append([c.rate, c.removed, c.quality, c.d_params, c.d_macs])
    return out


# ------------------------------------------------------------------------------------ per iteration
def _finetune(ctx: PruneContext, model, epochs: int, offset: int) -> None:
    """``ctx.finetune`` with ``step_offset`` (one loss history across iterations) where it takes one."""
    try:
        params = inspect.signature(ctx.finetune).parameters
        takes_offset = "step_offset" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes_offset = False
    if takes_offset:
        ctx.finetune(model, epochs=epochs, step_offset=offset)
    else:
        ctx.finetune(model, epochs=epochs)


def _point(model, example_inputs, ctx: PruneContext, step: int, pruned: list, alpha,
           params: int | None = None, macs: int | None = None) -> dict:
    """Params, MACs, latency (batch 1) and ``ctx.evaluate`` quality of the live model, logged at ``step``."""
    import torch

    from ..measure import count_macs, count_params, measure_latency

    home = example_inputs.device
    params = count_params(model) if params is None else params
    macs = count_macs(model, example_inputs) if macs is None else macs
    with torch.random.fork_rng(devices=[]):  # the random latency input must not shift training RNG
        lat = measure_latency(model, tuple(example_inputs.shape[1:]), batch=1, threads=torch.get_num_threads(),
                              device=ctx.device, **ITER_LATENCY).median_ms
    quality = float(ctx.evaluate(model))
    model.to(home)
    for key, value in (("iter_params", params), ("iter_macs", macs), ("iter_latency_ms", lat),
                       ("iter_quality", quality)):
        ctx.log_metric(key, float(value), step)
    return {"step": step, "params": int(params), "macs": int(macs), "latency_ms": float(lat),
            "quality": quality, "pruned_groups": list(pruned), "alpha": alpha}
