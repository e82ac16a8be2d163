"""One way to build a method's :class:`~sweep.methods.base.PruneContext`, for ``sweep run`` and ``sweep prune``.

Conventions:

* ``labels`` is the one switch that says whether training labels exist; the context carries it as
  ``ctx.labels_available`` and methods read that, never the length of a batch.
* With labels, ``ctx.train_loader`` / ``ctx.val_loader`` yield ``(x, y)``; without, they yield
  ``(x,)`` only, fine-tuning is distillation from the teacher and ``ctx.evaluate`` is the top-1
  agreement with the teacher.  ``ctx.unlabeled_loader`` / ``ctx.unlabeled_val_loader`` (items
  ``(x,)``) always exist, so label-free methods need no fallback.
* ``ctx.ignored_layers`` is the final list of layers no method prunes (the engine's
  :func:`sweep.engine.skip.skipped_layers`); methods use it as given.
* A method's own metric histories are logged under ``<method>/``, apart from the runner's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..errors import ConfigError
from .base import PruneContext


@dataclass(frozen=True)
class Loaders:
    """The data a method may read: ``train`` / ``val`` carry labels only when the sweep has them."""

    train: Iterable
    val: Iterable
    train_inputs: Iterable  # the training inputs, items (x,), shuffled apart from ``train``
    val_inputs: Iterable  # the validation inputs, items (x,)


def make_loaders(train_ds, val_ds, *, labels: bool, batch_size: int, seed: int, val_loader=None) -> Loaders:
    """Loaders over a training and a validation dataset; labels are stripped when ``labels`` is False.

    ``val_loader`` reuses an existing labelled validation loader (the runner measures on it too)."""
    from ..data import make_loader, strip_labels

    val = val_loader if val_loader is not None else make_loader(val_ds, 256, shuffle=False)
    val_inputs = make_loader(strip_labels(val_ds), 256, shuffle=False)
    return Loaders(
        train=make_loader(train_ds if labels else strip_labels(train_ds), batch_size, shuffle=True, seed=seed),
        val=val if labels else val_inputs,
        train_inputs=make_loader(strip_labels(train_ds), batch_size, shuffle=True, seed=seed + 1),
        val_inputs=val_inputs,
    )


def build_context(loaders: Loaders | None, *, method: str, labels: bool, teacher, finetune_config, device: str,
                  seed: int, num_classes: int, ignored_layers: list,
                  log_metric: Callable[[str, float, int], None] | None = None, no_data: str = "",
                  latency: dict | None = None) -> PruneContext:
    """The context of one pruning run.

    ``finetune_config`` holds ``epochs``, ``lr``, ``momentum``, ``weight_decay``, ``optimizer`` and
    ``temperature`` (a :class:`sweep.config.TrainConfig`).  ``latency`` says how the run times latency
    (``runtime``, ``threads``), for methods that measure it while pruning.  Without ``loaders`` (``sweep prune`` with
    no dataset) training and evaluation raise a ConfigError that ends with ``no_data``.
    """
    log = log_metric or (lambda k, v, s=0: None)
    ft = finetune_config

    def finetune(m, epochs: int | None = None, step_offset: int = 0, lr: float | None = None,
                 on_epoch: Callable[[int, float], None] | None = None, *, momentum: float | None = None,
                 weight_decay: float | None = None, optimizer: str | None = None, nesterov: bool | None = None,
                 keep_best: Callable[[Any], float] | None = None, checkpoint=None) -> list:
        """The run's fine-tuning: cross-entropy on labels, or distillation from the teacher without.
        ``on_epoch(epoch, loss)`` (0-based) runs after each epoch's loss is logged (e.g. a rung's report).
        ``lr``, ``momentum``, ``weight_decay``, ``optimizer``, ``nesterov``: None = the sweep's settings
        (a method's own recipe overrides them); ``keep_best(model) -> quality``: restore the weights of the
        best epoch at the end (:func:`sweep.train.fit`; ties keep the earlier epoch); ``checkpoint`` (a
        :class:`sweep.train.EpochCheckpoint`): the state kept after each epoch, and training goes on from it."""
        from ..train import distill, train

        _need(loaders, method, no_data)

        def after_epoch(e: int, loss: float) -> None:
            log("train_loss", loss, step_offset + e)
            if on_epoch is not None:
                on_epoch(e, loss)

        kw = dict(epochs=ft.epochs if epochs is None else epochs, lr=lr or ft.lr,
                  momentum=ft.momentum if momentum is None else momentum,
                  weight_decay=ft.weight_decay if weight_decay is None else weight_decay,
                  optimizer=optimizer or ft.optimizer, device=device, on_epoch=after_epoch, nesterov=nesterov,
                  keep_best=keep_best, checkpoint=checkpoint)
        if not labels:
            return distill(m, teacher, loaders.train, temperature=ft.temperature, **kw)
        return train(m, loaders.train, **kw)

    def evaluate(m) -> float:
        """Validation quality for choices inside a method: accuracy, or agreement with the teacher."""
        from ..measure import accuracy, agreement

        _need(loaders, method, no_data)
        if not labels:
            return agreement(m.to(device), teacher.to(device), loaders.val_inputs, device)
        return accuracy(m.to(device), loaders.val, device)

    return PruneContext(
        train_loader=loaders.train if loaders else [], val_loader=loaders.val if loaders else [], device=device,
        seed=seed, num_classes=num_classes, finetune=finetune, evaluate=evaluate,
        log_metric=lambda k, v, step=0: log(f"{method}/{k}", v, step), ignored_layers=list(ignored_layers),
        labels_available=labels, teacher=teacher, unlabeled_loader=loaders.train_inputs if loaders else [],
        unlabeled_val_loader=loaders.val_inputs if loaders else [], finetune_config=ft, latency=dict(latency or {}))


def _need(loaders: Any, method: str, no_data: str) -> None:
    if loaders is None:
        raise ConfigError(f"method {method} trains or evaluates while pruning, so it needs data, but none was "
                          f"given{' (' + no_data + ')' if no_data else ''}")


def calibration_batches(ctx: PruneContext, n: int, what: str) -> list:
    """The inputs of the first ``n`` unlabeled training batches (``ctx.unlabeled_loader``), e.g. for a
    layer re-fit; a :class:`~sweep.errors.TrialFailure` naming ``what`` needs them when there are none."""
    from ..errors import TrialFailure

    out = []
    for batch in ctx.unlabeled_loader:
        out.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
        if len(out) >= n:
            break
    if not out:
        raise TrialFailure(f"{what} needs unlabeled training inputs, but the unlabeled loader is empty")
    return out
