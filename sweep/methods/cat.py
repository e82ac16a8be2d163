"""``cat``: complexity-aware training — a RECONSTRUCTION of Guenter & Sideris, "Complexity-aware
training of deep neural networks for optimal structure discovery", arXiv 2411.09127 (2024; v2 2025).

Only the abstract is known (with the abstracts of the same authors' arXiv 2205.04650, unit pruning,
and 2406.04549, layer pruning); the paper's body was NOT read.  Everything below is our
design ("ours" where it is not in an abstract); each piece names what it rests on:

- **Bernoulli gates on units and layers** (abstract: "units/filters and layers are multiplied by
  Bernoulli random variables" whose variational parameters are learned with the weights): one
  probability θ_u per unit of each coupled channel group (Torch-Pruning's dependency graph, so coupled
  channels share a gate; ours) and one φ_b per identity-shortcut residual block (abstract:
  layer pruning relies on residual connections).  One Bernoulli draw per structure per mini-batch;
  the gradient for θ is the straight-through estimate ∂L/∂θ := ∂L/∂z at the sample (ours).
  Where the gates act, exactly: :mod:`sweep.methods.cat_gates`.
- **Projected stochastic gradient** (abstract): after each step θ, φ are clipped to [0, 1].
- **Expected complexity** (abstract: "expected computational and parameter complexity"):
  C = γ·E[MACs]/MACs₀ + (1−γ)·E[params]/params₀, exact and multilinear in the gates
  (E[MACs_k] = φ_block(k)·k_h·k_w·H_k·W_k/groups_k·E[c_in,k]·E[c_out,k]; ours).
- **Three knobs** (abstract: exactly three user parameters): λ the accuracy/complexity trade-off,
  β the balance of layer vs unit pruning, γ the balance of FLOPs vs parameters.
- **Regularisation strengths set automatically** (abstract; ours: λ × each structure's
  marginal share of C): the penalty is R = Σ_u w_u θ_u + Σ_b w_b φ_b with
  w_u = 2(1−β)·λ·∂C/∂θ_u and w_b = 2β·λ·∂C/∂φ_b, recomputed every ``REFRESH_STEPS`` steps, at every
  epoch and after every removal, so a structure's pressure falls as its neighbours shrink.  β = 0.5
  weighs both kinds as C itself does; β = 0 puts no pressure on blocks (no block gates, no block
  removal); β = 1 only on blocks (no channel gates).  A kind of structure under no pressure is not
  gated at all: λ = 0 is plain training of the weights and removes nothing.
- **Flattening** (abstract: a "flattening" hyper-prior makes the optimal parameters exactly 0 or 1):
  R is linear in every θ and the expected task loss is multilinear in the gates, so the objective's
  minima sit at the corners.  Honest caveat: the straight-through estimate is not the exact gradient
  — at z = 1 it sees only the local slope (≈ 0 for a trained net), so a useful unit resists only
  through its z = 0 samples, and under the STE a gate settles near θ ≈ 1 − w/Δ (Δ its first-order
  usefulness) instead of at a corner.  Hence the explicit rounding: after ``1 − settle`` of the steps
  every gate is set to 0 or 1 (θ ≥ 0.5 → 1: a unit goes when its pressure exceeds about half its
  usefulness), the structures at 0 are removed, the network is rebuilt without hooks, and the last
  ``settle`` fraction of the steps trains that deterministic network (the gated training leaves the
  weights and BatchNorm statistics adapted to random masks; measured on ResNet-20 / Fashion-MNIST,
  rounding at the very end cost ~10 points of accuracy with almost nothing removed).  ``settle: 0``
  rounds after the last step.
- **Structures at 0 are permanently inactive, saving compute during training** (abstract): a
  structure whose probability stays under ``threshold`` ε for ``patience`` consecutive steps is
  removed *physically during training* (channels via ``ChannelGraph.prune``, blocks via
  ``remove_blocks``); graph, gates and hooks are rebuilt after each removal.
- **Premature-pruning safeguards** (ours: the paper's v2 derives pruning conditions against
  it; we use simple ones): the ε + patience window above; no removal during the first ``warmup``
  fraction of steps; a group never loses its last unit where no shortcut carries the signal — inside
  a gated residual branch "every unit off" removes that block instead.
- **From scratch or from the baseline**: the paper trains from scratch (``start: scratch``
  re-initialises every weight, seeded); ``start: baseline`` trains the sweep's trained model with
  gates.  ``init_prob`` defaults to 1.0 from the baseline (the trained network intact), 0.9 from
  scratch.

Step sizes (our choice): the weights are trained by :func:`sweep.train.fit` with the sweep's fine-tune
optimiser settings (lr, momentum, weight decay, SGD or Adam; cosine schedule over all steps, settle phase
included; a removal keeps the optimiser state of the parameters it leaves untouched).  The gates take
projected SGD steps θ ← Π[0,1](θ − gate_lr·v), v an exponential moving average (0.9, unit gain) of
(∂L/∂z + w)/κ, with κ the mean marginal cost ∂C/∂θ of that kind of structure in the full network (a
constant unit conversion, computed once): ``gate_lr`` is then the probability a structure of average
cost loses per step under λ = 1 pressure with no resistance from the task loss, whatever the size of
the network, while λ keeps its meaning (loss units per unit of normalised cost).  Measured on a
trained ResNet-20 / Fashion-MNIST (2 epochs, batch 128, 126 steps): λ = 0.3 / 1 / 3 / 10 kept 91 /
47 / 17 / 2 % of the params at 85 / 81 / 67 / 61 % accuracy (baseline 86 %); gate_lr 0.05 instead
of the default 0.02 gave the same network at λ = 1 with twice the removal events (noisier gates).

The trajectory (expected cost, live structures, loss per epoch) is logged through ``ctx.log_metric``
and stored in ``info["trajectory"]``.  The method trains with labels (cross-entropy on
``ctx.train_loader``), and returns the trained, rebuilt network (``finetuned=True``).
"""

from __future__ import annotations

import math

from ..errors import ConfigError, TrialFailure
from .base import Knob, MethodConfig, PruneContext, PruneResult, register_method

STARTS = ("baseline", "scratch")
DEFAULT_INIT = {"baseline": 1.0, "scratch": 0.9}  # ours: intact baseline, or near-1 from scratch
HARD = 0.5  # final rounding: θ ≥ 0.5 -> 1 (kept), else 0 (removed)
REFRESH_STEPS = 25  # the per-structure strengths are recomputed at least this often (and every epoch)
# Gate steps follow an exponential moving average of the gate gradients (unit gain, so gate_lr keeps its
# meaning): the straight-through gradient of one unit is noisy (measured on a trained ResNet-20 /
# Fashion-MNIST, batch 128: a per-step std of 2-15x the mean marginal cost κ; at z = 1 it sums to 0
# over a layer's units, BatchNorm making the loss invariant to scaling all of a layer's inputs), and
# against the projection at θ = 1 that noise alone would act as a downward pressure.
GATE_MOMENTUM = 0.9


def _check(cfg: MethodConfig, where: str) -> None:
    init = _init_prob(cfg)
    if init <= cfg.threshold:
        raise ConfigError(f"init_prob must be > threshold (else every structure starts below the removal "
                          f"threshold), but got init_prob={init!r}, threshold={cfg.threshold!r} ({where})")


def _init_prob(cfg) -> float:
    return DEFAULT_INIT[cfg.start] if cfg.init_prob is None else float(cfg.init_prob)


@register_method(
    "cat",
    needs_labels=True,  # trains the weights with cross-entropy on labelled batches
    check=_check,
    summary="complexity-aware training (Guenter & Sideris 2024, reconstructed): Bernoulli gates on channels "
            "and residual blocks trained with the weights against lam x expected MACs/params cost",
    knobs=[
        Knob("lam", "float", 1.0, low=0.0, high=100.0,
             help="lambda: accuracy vs complexity trade-off (loss units per unit of normalised cost); 0 = no pruning"),
        Knob("beta", "float", 0.5, low=0.0, high=1.0,
             help="layer vs unit pruning: 0 = channels only (no block removed), 1 = blocks only"),
        Knob("gamma", "float", 0.5, low=0.0, high=1.0,
             help="FLOPs vs params: 1 = expected MACs only, 0 = expected params only"),
        Knob("epochs", "int", 3, low=1, high=100,
             help="training epochs (gated, the last `settle` fraction without gates); replaces the fine-tuning"),
        Knob("start", "categorical", "baseline", choices=STARTS,
             help="train the trained baseline with gates, or re-initialise the weights first (as the paper)"),
        Knob("gate_lr", "float", 0.02, low=0.0, high=10.0, low_open=True,
             help="gate step: probability lost per step by an average structure under lam=1 pressure"),
        Knob("init_prob", "float", None, low=0.0, high=1.0, low_open=True, optional=True,
             help="initial gate probability; unset = 1.0 from the baseline, 0.9 from scratch"),
        Knob("threshold", "float", 0.05, low=0.0, high=0.5, low_open=True, high_open=True,
             help="epsilon: a structure below it for `patience` steps is removed during training"),
        Knob("patience", "int", 20, low=1, high=100000, help="steps below threshold before removal"),
        Knob("warmup", "float", 0.1, low=0.0, high=0.9, help="fraction of the steps with no removal"),
        Knob("settle", "float", 0.2, low=0.0, high=0.9,
             help="last fraction of the steps: gates rounded, network rebuilt and trained without gates"),
    ],
)
def prune(model, example_inputs, cfg: MethodConfig, ctx: PruneContext) -> PruneResult:
    from ..engine.channels import channel_counts
    from ..measure import count_macs, count_params

    params0, macs0 = count_params(model), count_macs(model, example_inputs)
    model, run = train_cat(model, example_inputs, cfg, ctx)
    model.eval()
    present = {id(m) for m in model.modules()}
    final_structure = {
        "channels": channel_counts(model),
        "blocks_kept": [n for m, n in run["all_blocks"] if id(m) in present],
        "blocks_removed": [n for m, n in run["all_blocks"] if id(m) not in present],
    }
    layer_ratios = {}
    for name, (outs, n0) in run["groups0"].items():
        live = [m for m in outs if id(m) in present]
        layer_ratios[name] = (_out_channels(live[0]) / n0 if live else 0.0) if n0 else 0.0
    info = {
        "reconstruction": "Guenter & Sideris, arXiv 2411.09127 (abstract only); reconstruction",
        "lam": cfg.lam, "beta": cfg.beta, "gamma": cfg.gamma, "start": cfg.start,
        "init_prob": _init_prob(cfg), "gate_lr": cfg.gate_lr, "threshold": cfg.threshold,
        "patience": cfg.patience, "warmup": cfg.warmup, "settle": cfg.settle,
        "epochs": cfg.epochs, "steps": run["steps"], "warmup_steps": run["warmup_steps"],
        "rounded_at_step": run["rounded_at"],
        "channel_gates": run["channel_gates"], "block_gates": run["block_gates"],
        "gated_units_initial": run["units0"], "gated_blocks_initial": run["blocks0"],
        "ungated_groups": [list(x) for x in run["ungated"]],
        "removals_during_training": run["events"],
        "final_removed": run["final_removed"],
        "train_loss": run["losses"],
        "trajectory": run["trajectory"],
        "final_structure": final_structure,
        "layer_ratios": layer_ratios,
        "params_before": params0, "macs_before": macs0,
        "params_after": count_params(model), "macs_after": count_macs(model, example_inputs),
    }
    return PruneResult(model=model, info=info, finetuned=True)


def _out_channels(m) -> int:
    from .cat_gates import CONV, LINEAR

    return m.out_channels if isinstance(m, CONV) else m.out_features if isinstance(m, LINEAR) else m.num_features


def finalise(gated) -> tuple[dict, list]:
    """Round every gate (θ ≥ 0.5 -> 1), apply the safeguards, set the hooks to these 0/1 values and
    return what goes: ({group index: units}, [block gate indices]).  The gated network, in eval mode,
    now computes what the rebuilt one will."""
    import torch

    off = gated.theta.detach().cpu() < HARD
    off_b = gated.phi.detach().cpu() < HARD
    units, blocks = gated.decide(off, off_b)
    z = torch.ones(gated.theta.numel())
    for gi, us in units.items():
        z[gated.groups[gi].offset + torch.as_tensor(us, dtype=torch.long)] = 0.0
    zb = torch.ones(gated.phi.numel())
    zb[torch.as_tensor(blocks, dtype=torch.long)] = 0.0
    gated.set_gates(z, zb)
    return units, blocks


def train_cat(model, example_inputs, cfg: MethodConfig, ctx: PruneContext, on_final=None):
    """Train weights and gates jointly, removing structures on the way; round the gates after
    ``1 − settle`` of the steps, rebuild the network without the structures at 0 and train it plainly
    for the remaining steps.  ``on_final(gated, units, blocks)`` is called with the gates set to their
    final 0/1 values, just before the rebuild (tests compare the two networks there).
    Returns the rebuilt model (hooks removed) and a record of the run."""
    import torch

    from ..engine.depth import block_names
    from ..engine.reinit import reset_parameters_
    from ..engine.skip import resolve_layers, skipped_layers
    from ..train import cross_entropy, fit, hyper, total_steps
    from .cat_gates import CONV, LINEAR, GatedNet

    if not ctx.labels_available:
        raise TrialFailure("cat trains with labels (cross-entropy), but the training batches carry "
                           "none: it cannot run in a label-free sweep")
    device = ctx.device
    if cfg.start == "scratch":  # PyTorch's default initialisation, under a seed derived from the trial's
        reset_parameters_(model, (int(ctx.seed) * 7919 + 17) % (2**63 - 1))
    model.to(device)
    # the context's final list (modules or names); unset: the engine's skipped_layers
    ignored = resolve_layers(model, ctx.ignored_layers) or skipped_layers(model, example_inputs)
    channel_pressure = cfg.lam * 2 * (1 - cfg.beta)
    block_pressure = cfg.lam * 2 * cfg.beta
    gated = GatedNet(model, example_inputs, ignored, channel_gates=channel_pressure > 0,
                     block_gates=block_pressure > 0, init=_init_prob(cfg), device=device)
    mods = dict(model.named_modules())
    all_blocks = [(mods[n], n) for n in block_names(model)]
    names0 = {id(m): n for m, n in all_blocks}
    groups0 = {gg.group.name: ([m for m, _, _ in gg.outs if isinstance(m, (CONV, LINEAR))]
                               or [gg.outs[0][0]], gg.group.channels) for gg in gated.groups}
    # κ: mean marginal cost of each kind in the full network (a fixed unit conversion, see docstring)
    d_theta, d_phi = gated.marginal_costs(cfg.gamma)
    kappa_c = float(d_theta.mean()) if d_theta.numel() and float(d_theta.mean()) > 0 else 1.0
    kappa_b = float(d_phi.mean()) if d_phi.numel() and float(d_phi.mean()) > 0 else 1.0

    total = total_steps(ctx.train_loader, cfg.epochs)  # also the length of fit's cosine schedule
    warmup_steps = int(math.floor(cfg.warmup * total))
    round_at = max(1, total - int(math.floor(cfg.settle * total)))
    gen = torch.Generator().manual_seed((int(ctx.seed) * 1_000_003 + 4242) % (2**63 - 1))
    ce = cross_entropy(device)
    run = {"steps": 0, "warmup_steps": warmup_steps, "rounded_at": None, "events": [], "losses": [],
           "trajectory": [], "all_blocks": all_blocks, "groups0": groups0, "final_removed": None,
           "channel_gates": gated.channel_gates, "block_gates": gated.block_gates,
           "units0": int(gated.theta.numel()), "blocks0": int(gated.phi.numel()), "ungated": list(gated.ungated)}
    state = {"gated": gated, "w": (None, None), "step": 0}

    def refresh():
        dt, dp = state["gated"].marginal_costs(cfg.gamma)
        state["w"] = (channel_pressure * dt, block_pressure * dp)

    def round_now(step: int):
        g = state["gated"]
        units, blocks = finalise(g)
        names = [names0[id(g.blocks[i])] for i in blocks]
        if on_final is not None:
            was = model.training
            on_final(g, units, blocks)
            model.train(was)
        g.remove(units, blocks, rebuild=False)
        # the plain network: the same cost model with no gates, normalised by the full network's cost
        state["gated"] = GatedNet(model, example_inputs, [], channel_gates=False, block_gates=False, init=1.0,
                                  device=device, norm=(g.macs0, g.params0))
        run["rounded_at"] = step
        run["final_removed"] = {"units": sum(len(v) for v in units.values()), "blocks": names}

    def snapshot(step: int, loss: float | None) -> dict:
        g = state["gated"]
        with torch.no_grad():
            m, p = g.expected()
        point = {"step": step, "expected_macs": float(m) / g.macs0, "expected_params": float(p) / g.params0,
                 "live_channels": g.live_channels(cfg.threshold), "live_blocks": g.live_blocks(cfg.threshold)}
        for k in ("expected_macs", "expected_params", "live_channels", "live_blocks"):
            ctx.log_metric(k, point[k], step)
        if loss is not None:
            point["train_loss"] = loss
            ctx.log_metric("train_loss", loss, step)
        return point

    def loss_fn(m, batch):
        g = state["gated"]
        if run["rounded_at"] is None:
            g.sample(gen)
        g.theta.grad = g.phi.grad = None  # this batch's gate gradients, read by gate_step
        return ce(m, batch)

    def gate_step(step: int) -> bool:
        """After the weights' step: the gates' step, then rounding or removals; True when the network's
        parameters changed (fit then points its optimiser at the survivors)."""
        state["step"] = step
        if run["rounded_at"] is not None:
            return False
        g = state["gated"]
        w_c, w_b = state["w"]
        with torch.no_grad():  # projected SGD on the gates; the penalty is linear in each gate
            for t, v, w, kappa in ((g.theta, g.vel, w_c, kappa_c), (g.phi, g.velb, w_b, kappa_b)):
                if t.numel():
                    grad = (t.grad if t.grad is not None else torch.zeros_like(t)) + w
                    v.mul_(GATE_MOMENTUM).add_(grad / kappa, alpha=1 - GATE_MOMENTUM)
                    t.sub_(cfg.gate_lr * v).clamp_(0.0, 1.0)
                    t.grad = None
            g.low = torch.where(g.theta.detach().cpu() < cfg.threshold, g.low + 1, 0)
            g.lowb = torch.where(g.phi.detach().cpu() < cfg.threshold, g.lowb + 1, 0)
        g.clear_gates()
        if step >= round_at:
            round_now(step)
            return True
        if step >= warmup_steps:
            units, blocks = g.decide(g.low >= cfg.patience, g.lowb >= cfg.patience)
            if units or blocks:
                names = [names0[id(g.blocks[i])] for i in blocks]
                g.remove(units, blocks)  # physical removal during training; gates carried over
                model.train()
                run["events"].append({"step": step, "units": sum(len(v) for v in units.values()),
                                      "blocks": names})
                refresh()
                return True
        if step % REFRESH_STEPS == 0:
            refresh()
        return False

    def after_epoch(epoch: int, loss: float) -> None:
        if state["step"] == 0:
            raise TrialFailure("cat needs training batches, but the training loader is empty")
        run["losses"].append(loss)
        run["trajectory"].append(snapshot(epoch + 1, loss))
        if run["rounded_at"] is None:
            refresh()

    run["trajectory"].append(snapshot(0, None))
    refresh()
    fit(model, ctx.train_loader, loss_fn, epochs=cfg.epochs, hp=hyper(ctx.finetune_config), device=device,
        on_epoch=after_epoch, on_step=gate_step)
    if run["rounded_at"] is None:
        round_now(state["step"])
    run["steps"] = state["step"]
    model.eval()
    return model, run
