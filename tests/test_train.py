"""``sweep.train``: the one training loop (:func:`fit`), its optimiser and schedule, its divergence
checks, the surgery hook (``on_step`` -> True), best-epoch weights (``keep_best``) and the two trainers
built on it (``train``, ``distill``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sweep import train as tr
from sweep.config import TrainConfig
from sweep.errors import TrialFailure
from sweep.train import DEFAULT_HP, cross_entropy, distill, fit, hyper, make_optimizer, retarget, total_steps, train


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def batches(n: int = 4, bs: int = 5, labels: bool = True) -> list:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randn(bs, 8, generator=g)
        out.append((x, torch.randint(0, 3, (bs,), generator=g)) if labels else (x,))
    return out


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_train_is_the_plain_loop(optimizer):
    """``train`` = cross-entropy, SGD (Nesterov) or Adam, cosine over every step: bit for bit."""
    data = batches()
    ours, ref = net(), net()
    losses = train(ours, data, epochs=3, lr=0.05, weight_decay=1e-4, optimizer=optimizer)
    params = list(ref.parameters())
    opt = (torch.optim.Adam(params, lr=0.05, weight_decay=1e-4) if optimizer == "adam" else
           torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=True))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3 * len(data))
    ref_losses = []
    for _ in range(3):
        total = 0.0
        for x, y in data:
            loss = F.cross_entropy(ref(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
        ref_losses.append(total / sum(len(y) for _, y in data))
    assert same_weights(ours, ref)
    assert losses == pytest.approx(ref_losses, rel=1e-12)
    assert not ours.training  # left in eval mode


def test_cosine_schedule_spans_every_step():
    p = nn.Parameter(torch.zeros(1))
    opt, sched = make_optimizer([p], hyper(lr=0.1), total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * k / 10)) for k in range(10)], abs=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert total_steps(batches(4), 3) == 12 and total_steps(iter(batches(4)), 3) == 3  # no len: 1 an epoch


def test_hyper_reads_a_config_with_defaults():
    assert hyper() == dict(DEFAULT_HP)
    hp = hyper(TrainConfig(epochs=1, lr=0.2, optimizer="adam"), momentum=0.5)
    assert hp == {"lr": 0.2, "momentum": 0.5, "weight_decay": 5e-4, "optimizer": "adam"}
    with pytest.raises(ValueError, match="optimizer must be sgd or adam, but got optimizer='lion'"):
        make_optimizer([nn.Parameter(torch.zeros(1))], hyper(optimizer="lion"), total_steps=1)


# ----------------------------------------------------------------------------- divergence
def test_non_finite_loss_fails_before_any_step():
    model, before = net(), net()

    def nan_loss(m, batch):
        return m(batch[0]).sum() * float("nan"), len(batch[0])

    with pytest.raises(TrialFailure, match=r"diverged: non-finite loss nan in epoch 1"):
        fit(model, batches(), nan_loss, epochs=2, hp=hyper())
    assert same_weights(model, before)


def test_non_finite_weights_after_an_epoch_fail():
    model = net()

    def poison(step: int) -> bool:  # the weights blow up after the last (finite) loss of the epoch
        with torch.no_grad():
            model[3].weight[0, 0] = float("inf")
        return False

    with pytest.raises(TrialFailure, match="diverged: non-finite weights after epoch 1"):
        fit(model, batches(1), cross_entropy(), epochs=2, hp=hyper(), on_step=poison)


# ----------------------------------------------------------------------------- hooks
def test_on_epoch_sees_train_mode_and_epochs_from_zero():
    model, seen = net(), []
    losses = fit(model, batches(), cross_entropy(), epochs=3, hp=hyper(),
                 on_epoch=lambda e, loss: seen.append((e, loss, model.training)))
    assert seen == [(e, losses[e], True) for e in range(3)]
    assert fit(model, batches(), cross_entropy(), epochs=0, hp=hyper()) == []


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_rebuilding_without_a_change_is_invisible(optimizer):
    """on_step -> True re-targets the optimiser: momentum / Adam moments and the schedule carry over,
    so doing it at every step with nothing changed gives the very same weights."""
    a, b = net(), net()
    steps = []
    fit(a, batches(), cross_entropy(), epochs=2, hp=hyper(lr=0.05, optimizer=optimizer))
    fit(b, batches(), cross_entropy(), epochs=2, hp=hyper(lr=0.05, optimizer=optimizer),
        on_step=lambda s: steps.append(s) or True)
    assert steps == list(range(1, 9))
    assert same_weights(a, b)


def test_surgery_trains_the_new_parameters_and_drops_the_old():
    model = net()
    old = {}

    def surgery(step: int) -> bool:
        if step != 2:
            return False
        old["w"] = model[3].weight
        model[3].weight = nn.Parameter(old["w"].detach().clone())  # what a pruning surgery does
        old["at_swap"] = old["w"].detach().clone()
        return True

    fit(model, batches(), cross_entropy(), epochs=2, hp=hyper(lr=0.1), on_step=surgery)
    assert torch.equal(old["w"], old["at_swap"])  # no longer stepped
    assert not torch.equal(model[3].weight, old["at_swap"])  # its replacement is


def test_retarget_keeps_state_of_survivors_and_the_lr():
    keep, gone = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt, sched = make_optimizer([keep, gone], hyper(lr=0.1), total_steps=10)
    for _ in range(3):
        (keep.sum() + gone.sum()).backward()
        opt.step()
        sched.step()
    lr, buf = opt.param_groups[0]["lr"], opt.state[keep]["momentum_buffer"]
    new = nn.Parameter(torch.ones(2))
    retarget(opt, [keep, new])
    assert opt.param_groups[0]["params"] == [keep, new]
    assert opt.state[keep]["momentum_buffer"] is buf and gone not in opt.state and new not in opt.state
    assert opt.param_groups[0]["lr"] == lr
    opt.step()
    sched.step()  # the schedule goes on from step 3 to step 4
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * 4 / 10)), abs=1e-12)


# ----------------------------------------------------------------------------- distillation
def test_distill_reads_inputs_only_and_moves_toward_the_teacher():
    teacher, student = net(1).eval(), net(2)
    data = batches(labels=False)  # (x,) items: no label to read
    x = torch.cat([b[0] for b in data])

    def gap():
        with torch.no_grad():
            return float(F.mse_loss(student(x).softmax(1), teacher(x).softmax(1)))

    g0 = gap()
    losses = distill(student, teacher, data, epochs=5, lr=0.1, temperature=2.0)
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert gap() < g0
    with pytest.raises(ValueError, match="features.*must be given when feature_weight > 0"):
        distill(student, teacher, data, epochs=1, lr=0.1, feature_weight=1.0)


# ----------------------------------------------------------------------------- best-epoch weights
NAN = float("nan")


@pytest.mark.parametrize("qualities, best", [
    ([0.2, 0.9, 0.5], 1),
    ([0.5, 0.5, 0.4], 0),  # ties keep the earlier epoch
    ([0.1, 0.2, 0.3], 2),  # the last epoch: the weights as trained
    ([NAN, 0.1, 0.1], 1),  # a non-finite quality never counts
])
@pytest.mark.parametrize("trainer", ["fit", "train", "distill"])
def test_keep_best_restores_the_best_epoch(qualities, best, trainer):
    model, seen, snaps = net(), [], []

    def quality(m):
        assert m is model
        snaps.append({k: v.clone() for k, v in m.state_dict().items()})
        return qualities[len(snaps) - 1]

    kw = dict(epochs=3, keep_best=quality, on_epoch=lambda e, loss: seen.append((e, len(snaps), model.training)))
    if trainer == "fit":
        fit(model, batches(), cross_entropy(), hp=hyper(lr=0.1), **kw)
    elif trainer == "train":
        train(model, batches(), lr=0.1, **kw)
    else:
        distill(model, net(1).eval(), batches(labels=False), lr=0.1, **kw)
    assert seen == [(0, 0, True), (1, 1, True), (2, 2, True)]  # quality after on_epoch, in train mode
    assert len(snaps) == 3 and tr.best_epoch(qualities) == best
    state = model.state_dict()
    assert all(torch.equal(state[k], snaps[best][k]) for k in state)
    assert best == 2 or not all(torch.equal(state[k], snaps[2][k]) for k in state)
    assert not model.training


def test_best_epoch_rule():
    assert tr.best_epoch([]) is None and tr.best_epoch([NAN, float("inf")]) is None
    assert tr.best_epoch([0.3, NAN, 0.3, 0.4, 0.4]) == 3


def test_without_a_finite_quality_the_last_weights_stay():
    a, b = net(), net()
    fit(a, batches(), cross_entropy(), epochs=2, hp=hyper(lr=0.1), keep_best=lambda m: NAN)
    fit(b, batches(), cross_entropy(), epochs=2, hp=hyper(lr=0.1))
    assert same_weights(a, b)


def test_keep_best_with_a_later_surgery_raises():
    model = net()

    def surgery(step: int) -> bool:
        if step == 6:  # in epoch 2, after the best epoch 1
            model[3].weight = nn.Parameter(model[3].weight.detach()[:, :5].clone())
            model[1] = nn.Linear(8, 5)
            return True
        return False

    scores = iter([1.0, 0.5])
    with pytest.raises(ValueError, match="keep_best must not be combined with a surgery after the best epoch, but "
                                         "got the best epoch 1 and a surgery in epoch 2"):
        fit(model, batches(), cross_entropy(), epochs=2, hp=hyper(), on_step=surgery, keep_best=lambda m: next(scores))


@pytest.mark.parametrize("nesterov, momentum, want", [(None, 0.9, True), (False, 0.9, False), (True, 0.0, False)])
def test_nesterov_override(nesterov, momentum, want):
    opt, _ = make_optimizer([nn.Parameter(torch.zeros(1))], hyper(momentum=momentum, nesterov=nesterov),
                            total_steps=1)
    assert opt.param_groups[0]["nesterov"] is want


def test_context_finetune_overrides_the_sweep_settings(monkeypatch):
    """``ctx.finetune``: the sweep's settings unless a method overrides them; keep_best passed through."""
    import nets

    from sweep.methods.context import build_context

    built = []

    def recording(params, hp, *, total_steps):
        built.append(dict(hp))
        return make_optimizer(params, hp, total_steps=total_steps)

    monkeypatch.setattr(tr, "make_optimizer", recording)
    model = nets.PlainCNN()
    finetune = build_context(nets.synthetic_loaders(), method="x", labels=True, teacher=None,
                             finetune_config=TrainConfig(epochs=1, lr=0.05, weight_decay=1e-4), device="cpu",
                             seed=0, num_classes=nets.NUM_CLASSES, ignored_layers=[]).finetune
    finetune(model)
    calls = []
    finetune(model, epochs=2, lr=0.01, momentum=0.8, weight_decay=5e-3, nesterov=False,
             keep_best=lambda m: calls.append(1) or 0.5)
    assert built[0] == {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "optimizer": "sgd", "nesterov": None}
    assert built[1] == {"lr": 0.01, "momentum": 0.8, "weight_decay": 5e-3, "optimizer": "sgd", "nesterov": False}
    assert calls == [1, 1]


# ----------------------------------------------------------------------------- epoch checkpoints
class _Killed(Exception):
    """Stands for the process dying after an epoch's checkpoint was written."""


@pytest.mark.parametrize("best", [False, True], ids=["last", "keep_best"])
@pytest.mark.parametrize("killed_after", [1, 3, 4])
def test_training_killed_after_an_epoch_goes_on_from_its_checkpoint_to_the_same_weights(tmp_path, best, killed_after):
    """A fresh network and loader with the checkpoint of an interrupted run end bit for bit where an
    uninterrupted run ends: weights, epoch losses, best epoch; the loader's shuffling and torch's RNG go on
    where they were.  Killed after the last epoch, nothing is trained again."""
    from sweep.data.loaders import make_loader
    from sweep.train import EpochCheckpoint

    g = torch.Generator().manual_seed(3)
    ds = torch.utils.data.TensorDataset(torch.randn(40, 8, generator=g), torch.randint(0, 3, (40,), generator=g))
    qualities = iter([0.1, 0.5, 0.3, 0.5] * 2)

    def quality(model):
        return next(qualities)

    def run(checkpoint=None, kill_at=None):
        torch.manual_seed(7)
        model, loader = net(), make_loader(ds, 8, shuffle=True, seed=5)
        seen = []

        def on_epoch(epoch, loss):
            seen.append(epoch)
            if kill_at is not None and epoch == kill_at:
                raise _Killed

        losses = fit(model, loader, cross_entropy(), epochs=4, hp=hyper(lr=0.05), on_epoch=on_epoch,
                     keep_best=quality if best else None, checkpoint=checkpoint)
        return model, losses, seen

    whole, whole_losses, _ = run()
    qualities = iter([0.1, 0.5, 0.3, 0.5] * 2)
    ck = EpochCheckpoint(tmp_path / "training.pt", key="k")
    if killed_after < 4:  # on_epoch of epoch `killed_after` (0-based) runs before that epoch's checkpoint
        with pytest.raises(_Killed):
            run(ck, kill_at=killed_after)
    else:  # every epoch done, killed before the caller saved the result
        run(ck)
    done = ck.epochs_done()
    assert done == killed_after
    qualities = iter([0.1, 0.5, 0.3, 0.5][done:])
    resumed, losses, seen = run(ck)
    assert same_weights(resumed, whole)
    assert losses == whole_losses
    assert seen == list(range(done, 4))  # only the epochs left were trained


def test_a_checkpoint_of_other_settings_or_unreadable_is_not_resumed_from(tmp_path):
    from sweep.train import EpochCheckpoint

    data = batches()
    train(net(), data, epochs=2, lr=0.05, checkpoint=EpochCheckpoint(tmp_path / "c.pt", key="a"))
    other = EpochCheckpoint(tmp_path / "c.pt", key="b")
    assert other.epochs_done() == 0 and "other settings" in other.why
    fresh, ref = net(), net()
    train(fresh, data, epochs=2, lr=0.05, checkpoint=other)
    train(ref, data, epochs=2, lr=0.05)
    assert same_weights(fresh, ref)  # trained from the start (and the checkpoint is now b's)
    assert EpochCheckpoint(tmp_path / "c.pt", key="b").epochs_done() == 2
    (tmp_path / "c.pt").write_bytes(b"not a checkpoint")
    broken = EpochCheckpoint(tmp_path / "c.pt", key="b")
    assert broken.load() is None and "could not be read" in broken.why


def test_a_checkpoint_refuses_a_surgery_hook(tmp_path):
    from sweep.train import EpochCheckpoint

    with pytest.raises(ValueError, match="shapes stay fixed"):
        fit(net(), batches(), cross_entropy(), epochs=1, hp=hyper(), on_step=lambda s: False,
            checkpoint=EpochCheckpoint(tmp_path / "c.pt", key="k"))
