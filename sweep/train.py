"""Training and fine-tuning: one epoch loop, :func:`fit`, shared by every trainer in the package.

Conventions:

- A **loss function** ``loss_fn(model, batch) -> (loss, n)`` maps one batch of the loader to a scalar
  loss tensor and the number of samples it averages over (``n`` weighs the per-epoch mean).  It moves
  the batch to the device itself and reads only what it needs: label-free losses read ``batch[0]``.
- **Optimiser settings** ``hp``: a mapping with ``lr``, ``momentum``, ``weight_decay`` and ``optimizer``
  (``"sgd"``: SGD, with Nesterov momentum when momentum > 0 unless ``hp["nesterov"]`` is False;
  ``"adam"``: Adam); :func:`hyper` reads them from a config object.  The learning rate follows one
  cosine schedule from ``lr`` to 0 over every step of all epochs (``CosineAnnealingLR``, stepped after
  every batch).
- **Best-epoch weights** (``keep_best=quality``, optional): ``quality(model)`` is evaluated after every
  epoch and the weights of the best epoch are restored at the end; ties keep the **earlier** epoch (a
  later epoch must be strictly better, as in the SR-init authors' code: ``is_best = acc1 > best_acc1``),
  and a non-finite quality never counts as best (:func:`best_epoch`).
- **Divergence is a trial failure**, never a model full of NaNs: a non-finite loss raises
  :class:`TrialFailure` ("diverged: ...") at once, and so do non-finite weights at the end of an epoch.
- **Epoch checkpoints** (``checkpoint=EpochCheckpoint(path, key)``, optional): after every epoch (or, with
  ``every_s``, after the first epoch that ends that long after the last save) the whole
  training state (weights, optimiser and schedule, the epoch losses and best-epoch bookkeeping, torch's RNG and
  the loader's epoch) is written durably; a later call with a checkpoint of the same ``key`` goes on after its
  last epoch instead of starting over, and ends with the weights an uninterrupted run would have had.  For a
  network whose shapes stay fixed (no ``on_step`` surgery).
- No method-specific branches here: a method brings its loss function and, where it changes the
  network while training (``cat``), an ``on_step`` hook.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import TrialFailure

# the sweep's fine-tune defaults (sweep.config.TrainConfig), for contexts that carry no settings
DEFAULT_HP: Mapping[str, Any] = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "optimizer": "sgd"}

LossFn = Callable[[Any, Any], "tuple[Any, int]"]


def hyper(source: Any = None, **overrides) -> dict:
    """Optimiser settings (see the module docstring) read as attributes of ``source`` (e.g. a
    ``TrainConfig``; a missing attribute or a None source takes :data:`DEFAULT_HP`), then ``overrides``."""
    hp = {k: getattr(source, k, v) for k, v in DEFAULT_HP.items()}
    hp.update(overrides)
    return hp


def best_epoch(qualities: Iterable[float]) -> int | None:
    """The 0-based epoch whose weights ``keep_best`` restores: the first maximum of ``qualities`` (ties
    keep the earlier epoch); non-finite qualities never count; None when none is finite."""
    best, at = -math.inf, None
    for e, q in enumerate(qualities):
        if math.isfinite(q) and (at is None or q > best):
            best, at = q, e
    return at


class EpochCheckpoint:
    """Where :func:`fit` keeps its state after each epoch (module docstring): a file at ``where`` (a path), or any
    slot of bytes with ``read()``, ``write(data)``, ``remove()`` and ``stamp()`` as :class:`sweep.durable.FileSlot`
    has them (a trial on another node keeps its state in the driver's folder through the model inbox).  ``key``
    names the training it belongs to (its settings), so that a checkpoint of other settings is never resumed
    from; ``extra`` (plain values) is saved beside the state and read back with it (:meth:`load`).

    Written durably (all or nothing, fsynced) and read back with ``torch.load(weights_only=True)``: tensors,
    numbers and lists only, never arbitrary objects.  Bytes that cannot be read, or belong to another ``key``, are
    not used (:attr:`why` says why) and training starts over."""

    def __init__(self, where, key: str, extra: dict | None = None, every_s: float = 0.0, at=()):
        import time

        from .durable import FileSlot

        self.slot = where if hasattr(where, "write") else FileSlot(where)
        self.key, self.extra, self.every_s = str(key), dict(extra or {}), float(every_s)
        self.at = frozenset(int(e) for e in at)  # epochs (counted from 1) after which the state is always saved
        self.why: str | None = None
        self._read: tuple | None = None  # (the slot's stamp, what load returned): read once, not twice
        self._saved_at = time.monotonic()

    def due(self, epochs: int | None = None) -> bool:
        """Whether the state is saved after the epoch that just ended (``epochs`` done so far): once ``every_s``
        seconds have passed since this object was made or last saved (0: after every epoch), and always after
        the epochs in ``at``.  Saving costs a write of the network and its optimiser; an interrupted training
        loses at most about ``every_s`` seconds of it."""
        import time

        return epochs in self.at or time.monotonic() - self._saved_at >= self.every_s

    @property
    def path(self) -> Path | None:
        """The file, where the state lies in one on this machine."""
        return getattr(self.slot, "path", None)

    def load(self) -> dict | None:
        """The saved state, or None (none saved, or not usable: :attr:`why`)."""
        import torch

        stamp = self.slot.stamp()
        if stamp is None:
            return None
        if self._read is not None and self._read[0] == stamp:
            return self._read[1]
        data = self.slot.read()
        state = None
        if data is not None:
            try:
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as e:
                self.why = f"{self.slot} could not be read ({type(e).__name__})"
            if state is not None and (not isinstance(state, dict) or state.get("key") != self.key):
                self.why = f"{self.slot} was written for other settings"
                state = None
        self._read = (stamp, state)
        return state

    def epochs_done(self, model=None) -> int:
        """How many epochs the saved state has (0: none usable; with ``model``, also none whose network has
        other shapes than ``model``'s, which is then not used at all: :attr:`why`)."""
        state = self.load()
        if state and model is not None and not same_shapes(model.state_dict(), state["model"]):
            self.why, state = f"{self.slot} holds a network of other shapes", None
            self._read = (self._read[0], None) if self._read else None
        return int(state["epoch"]) if state else 0

    def save(self, state: dict) -> None:
        import time

        import torch

        buf = io.BytesIO()
        torch.save({**state, **self.extra, "key": self.key}, buf)
        self.slot.write(buf.getvalue())
        self._read = None
        self._saved_at = time.monotonic()

    def clear(self) -> None:
        """Remove the saved state (and its folder, if nothing else is in it)."""
        self.slot.remove()
        self._read = None


def fit(model, loader: Iterable, loss_fn: LossFn, *, epochs: int, hp: Mapping[str, Any], device: str = "cpu",
        on_epoch: Callable[[int, float], None] | None = None,
        on_step: Callable[[int], bool] | None = None,
        keep_best: Callable[[Any], float] | None = None,
        checkpoint: EpochCheckpoint | None = None) -> list[float]:
    """Train ``model`` in place for ``epochs`` epochs on ``loss_fn``; return the mean loss of each epoch.

    ``on_epoch(epoch, mean_loss)`` runs after each epoch (``epoch`` counts from 0), the model in train
    mode.  ``on_step(step)`` runs after each optimiser step (``step`` counts from 1, over all epochs);
    returning True says the hook changed the model's parameters (a surgery): the optimiser then follows
    the model's current trainable parameters, keeping the state (momentum, Adam moments) of those it
    already had and the position of the learning-rate schedule (:func:`retarget`).  The model is left in
    eval mode.

    ``keep_best(model) -> quality`` (optional) is called after each epoch's ``on_epoch``; at the end the
    weights (the whole state dict, BatchNorm statistics included) of the epoch :func:`best_epoch` picks
    are restored.  A surgery (``on_step`` -> True) after that epoch changes the shapes: restoring then
    raises a ValueError.

    ``checkpoint`` (an :class:`EpochCheckpoint`): the state is saved after an epoch when it is due
    (:meth:`EpochCheckpoint.due`: after every epoch, or every ``every_s`` seconds, and after the epochs in its
    ``at``, where ``on_epoch`` then runs after the save and after ``keep_best``), and training goes on after the
    last saved epoch (``on_epoch`` and ``keep_best`` run for the epochs trained in this call only).
    """
    import torch

    if epochs <= 0:
        return []
    if checkpoint is not None and on_step is not None:
        raise ValueError("checkpoint needs a network whose shapes stay fixed, but got an on_step hook (fit)")
    model.to(device)
    opt, sched = make_optimizer(trainable(model), hp, total_steps=total_steps(loader, epochs))
    losses: list[float] = []
    qualities: list[float] = []
    best_state, last_surgery = None, 0  # last_surgery: the epoch (1-based) of the latest surgery
    step = start = 0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None and not same_shapes(model.state_dict(), saved["model"]):
        # e.g. a pruning whose choice depends on timings pruned otherwise this time: training starts over
        checkpoint.why, saved = f"{checkpoint.slot} holds a network of other shapes", None
    if saved is not None:
        start, step = min(int(saved["epoch"]), epochs), int(saved["step"])
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["schedule"])
        losses, qualities = [float(v) for v in saved["losses"]], [float(v) for v in saved["qualities"]]
        if saved.get("best") is not None:
            best_state = (int(saved["best_epoch"]), saved["best"])
        torch.set_rng_state(saved["rng"])
        if saved.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(int(saved["loader_epoch"]))
    for epoch in range(start, epochs):
        model.train()
        total, n = 0.0, 0
        for batch in loader:
            loss, size = loss_fn(model, batch)
            lv = loss.item()
            if not math.isfinite(lv):
                raise TrialFailure(f"diverged: non-finite loss {lv} in epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += lv * size
            n += size
            step += 1
            if on_step is not None and on_step(step):
                retarget(opt, trainable(model))
                last_surgery = epoch + 1
        # the last step of an epoch can blow the weights up after its (finite) loss was computed
        if not all(bool(torch.isfinite(p).all()) for p in opt.param_groups[0]["params"]):
            raise TrialFailure(f"diverged: non-finite weights after epoch {epoch + 1}")
        losses.append(total / max(n, 1))
        # after an epoch in ``checkpoint.at`` the state is saved before ``on_epoch``, whose report there may end
        # the training for good (a rung where the scheduler stops the trial: it can go on from this state)
        held = checkpoint is not None and epoch + 1 in checkpoint.at
        if on_epoch is not None and not held:
            on_epoch(epoch, losses[-1])
        if keep_best is not None:
            qualities.append(float(keep_best(model)))
            model.train()
            if best_epoch(qualities) == epoch:
                best_state = (epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if checkpoint is not None and checkpoint.due(epoch + 1):
            state = {"epoch": epoch + 1, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "schedule": sched.state_dict(), "losses": losses, "qualities": qualities,
                     "best_epoch": best_state[0] if best_state else -1, "best": best_state[1] if best_state else None,
                     "rng": torch.get_rng_state(), "loader_epoch": int(getattr(loader, "epoch", epoch + 1))}
            if torch.cuda.is_available() and str(device).startswith("cuda"):
                state["cuda_rng"] = torch.cuda.get_rng_state_all()
            try:
                checkpoint.save(state)
            except Exception as e:  # the disk is full, the inbox is gone: the training goes on without it
                checkpoint.why = f"{checkpoint.slot} could not be saved ({type(e).__name__}: {e})"
        if on_epoch is not None and held:
            on_epoch(epoch, losses[-1])
    if best_state is not None and best_state[0] != epochs - 1:
        if last_surgery > best_state[0] + 1:
            raise ValueError(f"keep_best must not be combined with a surgery after the best epoch, but got the "
                             f"best epoch {best_state[0] + 1} and a surgery in epoch {last_surgery} (fit)")
        model.load_state_dict(best_state[1])
    model.eval()
    return losses


def same_shapes(state: Mapping, other: Mapping) -> bool:
    """Whether two state dicts have the same entries with the same shapes (one loads into the other's network
    whole; ``load_state_dict`` would copy the entries that fit before it complains of the others)."""
    return state.keys() == other.keys() and all(tuple(state[k].shape) == tuple(other[k].shape) for k in state)


def trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def total_steps(loader: Iterable, epochs: int) -> int:
    """Optimiser steps in ``epochs`` epochs (a loader without a length counts as one step an epoch)."""
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        n = 0
    return epochs * max(1, n)


def make_optimizer(params: list, hp: Mapping[str, Any], *, total_steps: int):
    """(optimiser, schedule): SGD (Nesterov when momentum > 0, unless ``hp["nesterov"]`` is False) or Adam
    over ``params``, one parameter group, with a cosine schedule from ``hp["lr"]`` to 0 over
    ``total_steps`` steps."""
    import torch

    lr, momentum, wd, name = hp["lr"], hp["momentum"], hp["weight_decay"], hp["optimizer"]
    nesterov = hp.get("nesterov")
    if name == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=wd)
    elif name == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd,
                              nesterov=momentum > 0 if nesterov is None else bool(nesterov) and momentum > 0)
    else:
        raise ValueError(f"optimizer must be sgd or adam, but got optimizer={name!r} (make_optimizer)")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return opt, sched


def retarget(opt, params: list) -> None:
    """Point ``opt`` (one parameter group, from :func:`make_optimizer`) at ``params``, the model's
    parameters after a surgery: the per-parameter state of those it had is kept, that of parameters
    gone (or replaced by the surgery) dropped, and new ones start fresh.  The group's learning rate is
    untouched, so the schedule attached to ``opt`` goes on where it was."""
    if len(opt.param_groups) != 1:
        raise ValueError(f"retarget needs an optimiser with one parameter group, but got "
                         f"{len(opt.param_groups)} groups (make_optimizer builds one)")
    kept = {p: opt.state[p] for p in params if p in opt.state}
    opt.param_groups[0]["params"] = list(params)
    opt.state.clear()
    opt.state.update(kept)


# ------------------------------------------------------------------------------------------- losses
def cross_entropy(device: str = "cpu") -> LossFn:
    """Supervised loss: cross-entropy on ``(x, y)`` batches."""
    import torch.nn.functional as F

    def loss_fn(model, batch):
        x, y = batch
        x, y = x.to(device), y.to(device)
        return F.cross_entropy(model(x), y), len(y)

    return loss_fn


def soft_kl(s_logits, t_logits, temperature: float):
    """KL(teacher ‖ student) between the softened outputs at ``temperature``, mean over the batch.
    Not scaled: callers multiply by T² so that the gradients keep their size whatever T (Hinton,
    Vinyals & Dean 2015, "Distilling the knowledge in a neural network", §2)."""
    import torch.nn.functional as F

    t = temperature
    return F.kl_div(F.log_softmax(s_logits / t, dim=1), F.softmax(t_logits / t, dim=1), reduction="batchmean")


def distillation(teacher, *, temperature: float, feature_weight: float = 0.0, features=None,
                 device: str = "cpu") -> LossFn:
    """Label-free loss: T²·KL(teacher ‖ student) at ``temperature`` (Hinton et al. 2015, §2) plus, with
    ``feature_weight`` > 0, ``feature_weight``·MSE between penultimate features given by
    ``features(model, x) -> (logits, penultimate)``.  Reads ``batch[0]`` only."""
    import torch
    import torch.nn.functional as F

    if feature_weight > 0 and features is None:
        raise ValueError(f"features(model, x) must be given when feature_weight > 0, but got features=None, "
                         f"feature_weight={feature_weight} (distillation)")
    t = temperature

    def loss_fn(student, batch):
        x = batch[0].to(device)
        with torch.no_grad():
            if feature_weight > 0:
                t_logits, t_feat = features(teacher, x)
            else:
                t_logits = teacher(x)
        if feature_weight > 0:
            s_logits, s_feat = features(student, x)
        else:
            s_logits = student(x)
        loss = soft_kl(s_logits, t_logits, t) * (t * t)
        if feature_weight > 0:
            loss = loss + feature_weight * F.mse_loss(s_feat, t_feat)
        return loss, len(x)

    return loss_fn


# ------------------------------------------------------------------------------------------- trainers
def train(model, loader: Iterable, *, epochs: int, lr: float, momentum: float = 0.9,
          weight_decay: float = 5e-4, optimizer: str = "sgd", device: str = "cpu",
          on_epoch: Callable[[int, float], None] | None = None, nesterov: bool | None = None,
          keep_best: Callable[[Any], float] | None = None, checkpoint: EpochCheckpoint | None = None) -> list[float]:
    """Train ``model`` in place with cross-entropy; return the mean loss of each epoch (see :func:`fit`
    for ``keep_best`` and ``checkpoint``; ``nesterov=None``: Nesterov when momentum > 0)."""
    hp = hyper(lr=lr, momentum=momentum, weight_decay=weight_decay, optimizer=optimizer, nesterov=nesterov)
    return fit(model, loader, cross_entropy(device), epochs=epochs, hp=hp, device=device, on_epoch=on_epoch,
               keep_best=keep_best, checkpoint=checkpoint)


def distill(student, teacher, loader: Iterable, *, epochs: int, lr: float, temperature: float = 4.0,
            momentum: float = 0.9, weight_decay: float = 5e-4, optimizer: str = "sgd", device: str = "cpu",
            feature_weight: float = 0.0, features=None,
            on_epoch: Callable[[int, float], None] | None = None, nesterov: bool | None = None,
            keep_best: Callable[[Any], float] | None = None, checkpoint: EpochCheckpoint | None = None) -> list[float]:
    """Label-free training of ``student`` on the :func:`distillation` loss from ``teacher``.

    Batches are read as ``batch[0]`` only: the loader may (and in label-free sweeps does) carry no labels.
    ``nesterov``, ``keep_best`` and ``checkpoint`` as for :func:`train`.
    """
    if epochs <= 0:
        return []
    teacher.to(device).eval()
    loss_fn = distillation(teacher, temperature=temperature, feature_weight=feature_weight, features=features,
                           device=device)
    hp = hyper(lr=lr, momentum=momentum, weight_decay=weight_decay, optimizer=optimizer, nesterov=nesterov)
    return fit(student, loader, loss_fn, epochs=epochs, hp=hp, device=device, on_epoch=on_epoch,
               keep_best=keep_best, checkpoint=checkpoint)
