"""One trial, with no Ray in sight: baseline -> prune -> fine-tune -> measure -> one result row.

Also the baseline itself (trained once per sweep, or loaded from a checkpoint).  Both return a
:class:`~sweep.results.schema.TrialRecord`, the only place rows are built.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .config import SweepConfig
from .errors import ConfigError, TrialFailure
from .folder import CONFIG_FILE, SweepFolder
from .methods.context import Loaders, build_context, make_loaders
from .results.schema import BASELINE_ID, TrialRecord


@dataclass(frozen=True)
class TrialSpec:
    sweep_dir: str
    trial_id: str
    method: str
    knobs: dict
    seed: int


@dataclass
class Figures:
    accuracy: float
    test_accuracy: float
    params: int
    macs: int
    latency: dict = field(default_factory=dict)
    agreement: float = 1.0


# ------------------------------------------------------------------------------- data + models
@lru_cache(maxsize=4)
def _splits(name: str, options_json: str, seed: int, stratify: bool = True):
    from .data import load_dataset

    return load_dataset(name, json.loads(options_json), seed=seed, where="dataset", stratify=stratify)


def load_splits(cfg: SweepConfig):
    """The sweep's data, cached per process (Ray workers reuse it across trials).

    In a label-free sweep every split and subset is drawn without reading a label (no stratification),
    so labels never decide which items the device side sees."""
    return _splits(cfg.dataset.name, json.dumps(cfg.dataset.options, sort_keys=True), cfg.seed,
                   not cfg.label_free)


@dataclass
class TrialData:
    """The loaders of one trial: what its method may read (``method``, labels stripped in a label-free
    sweep), and what only the runner reads: labelled ``val`` / ``test`` for reporting accuracy, and the
    labelled data the baseline is trained on (``teacher_train``: the cloud split when label-free)."""

    method: Loaders
    val: object
    test: object
    teacher_train: object


def trial_data(cfg: SweepConfig, splits, seed: int) -> TrialData:
    from .data import cloud_device_split, make_loader

    bs = cfg.finetune.batch_size
    train_ds = teacher_ds = splits.train
    if cfg.baseline.cloud_fraction is not None:
        teacher_ds, train_ds = cloud_device_split(splits.train, cfg.baseline.cloud_fraction, cfg.seed)
    val = make_loader(splits.val, 256, shuffle=False)
    return TrialData(
        method=make_loaders(train_ds, splits.val, labels=not cfg.label_free, batch_size=bs, seed=seed,
                            val_loader=val),
        val=val, test=make_loader(splits.test, 256, shuffle=False),
        teacher_train=make_loader(teacher_ds, bs, shuffle=True, seed=seed))


def measure_all(cfg: SweepConfig, model, splits, data: TrialData, threads: int, teacher=None) -> Figures:
    """Accuracy (labels read here only, for reporting), agreement with the teacher, params, MACs, latency."""
    from .measure import accuracy, agreement, count_macs, count_params, measure_latency

    device = cfg.measure.device
    model = model.to(device).eval()
    acc = accuracy(model, data.val, device)
    test_acc = accuracy(model, data.test, device)
    agree = 1.0 if teacher is None else agreement(model, teacher.to(device), data.method.val_inputs, device)
    cpu_model = model.to("cpu")
    macs = count_macs(cpu_model, splits.example_input(1))
    params = count_params(cpu_model)
    lat = measure_latency(model.to(device), splits.input_shape, batch=cfg.measure.latency_batch,
                          warmup=cfg.measure.warmup, repeats=cfg.measure.repeats, threads=threads,
                          device=device)
    return Figures(accuracy=acc, test_accuracy=test_acc, params=params, macs=macs, latency=lat.to_dict(),
                   agreement=agree)


def skipped_layers(cfg: SweepConfig, model, example) -> list:
    """Layers no method prunes: the engine's rule plus the YAML's ``model.keep_layers``."""
    from .engine.skip import skipped_layers as engine_skipped

    return engine_skipped(model, example, cfg.model.keep_layers, what=f"{cfg.source}: model.keep_layers")


def trial_threads(cfg: SweepConfig) -> int:
    """Torch threads inside a trial: the explicit setting, else the trial's whole-CPU share."""
    return cfg.measure.threads or max(1, int(cfg.search.cpus_per_trial))


# ------------------------------------------------------------------------------- baseline
def prepare_baseline(cfg: SweepConfig, folder: SweepFolder, log=print) -> TrialRecord:
    """Train (or load) the dense model once, measure it, save it in ``<sweep>/baseline/``; its record."""
    import torch

    from .models import build_model
    from .train import train

    started = time.time()
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)
    c, h, _ = splits.input_shape
    ckpt = cfg.baseline.path or cfg.model.checkpoint
    model = build_model(cfg.model.name, num_classes=splits.num_classes, in_channels=c, input_size=h,
                        checkpoint=ckpt, where=f"{cfg.source}: model")
    data = trial_data(cfg, splits, cfg.seed)
    b, epochs = cfg.baseline.train, 0
    if cfg.baseline.path is None and b.epochs > 0:
        epochs = b.epochs
        what = (f"the teacher on a labelled cloud split ({cfg.baseline.cloud_fraction:.0%} of the training data, "
                f"kept apart from the unlabeled device data)" if cfg.baseline.cloud_fraction else "the dense baseline")
        log(f"training {what}: {cfg.model.name} on {cfg.dataset.name}, {b.epochs} epochs")
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    # nothing is written before the model is trained and measured: a failure leaves no baseline behind
    try:
        if epochs:
            train(model, data.teacher_train, epochs=b.epochs, lr=b.lr, momentum=b.momentum,
                  weight_decay=b.weight_decay, optimizer=b.optimizer, device=cfg.measure.device)
        fig = measure_all(cfg, model, splits, data, trial_threads(cfg))
    except TrialFailure as e:
        raise _baseline_failure(cfg, folder, str(e), trained=bool(epochs)) from None
    summary = {"accuracy": fig.accuracy, "test_accuracy": fig.test_accuracy, "agreement": 1.0, "params": fig.params,
               "macs": fig.macs, "latency_ms": fig.latency["median_ms"], "latency": fig.latency,
               "model": cfg.model.name, "dataset": cfg.dataset.name, "epochs": epochs,
               "input_shape": list(splits.input_shape), "num_classes": splits.num_classes}
    rel = folder.write_baseline(model.to("cpu"), summary)
    ended = time.time()
    return TrialRecord(
        sweep=cfg.name, trial_id=BASELINE_ID, status="ok", method="baseline",
        accuracy=fig.accuracy, test_accuracy=fig.test_accuracy, agreement=1.0,
        baseline_accuracy=fig.accuracy, baseline_test_accuracy=fig.test_accuracy,
        params=fig.params, macs=fig.macs, **_latency_fields(fig.latency),
        params_ratio=1.0, macs_ratio=1.0, latency_ratio=1.0,
        model_path=rel, seed=cfg.seed, finetune_epochs=epochs, wall_s=ended - started,
        started_at=started, ended_at=ended, info=json.dumps({"summary": summary}))


def _baseline_failure(cfg: SweepConfig, folder: SweepFolder, error: str, trained: bool) -> ConfigError:
    """The one-line error of a baseline that diverged in training (or a given model with non-finite outputs)."""
    detail = error.removeprefix("diverged: ")
    if not trained:
        key = "baseline.path" if cfg.baseline.path else "model.checkpoint" if cfg.model.checkpoint else "model.name"
        value = cfg.baseline.path or cfg.model.checkpoint or cfg.model.name
        hint = "; check the checkpoint" if key != "model.name" else ""
        return ConfigError(f"the baseline model must give finite outputs, but {key}={value!r} gives {detail} "
                           f"({cfg.source}: {key}){hint}")
    raw = cfg.raw.get("baseline")
    given = raw.get("lr") if isinstance(raw, dict) else None
    lr = given if isinstance(given, str) else f"{cfg.baseline.train.lr:g}"
    where = f"{cfg.source}: baseline.lr" + ("" if given is not None else ", the default")
    return ConfigError(f"baseline training must converge, but it diverged at baseline.lr={lr} ({where}): {detail}; "
                       f"try a smaller baseline.lr (the sweep folder {folder.path} holds no baseline yet: fix "
                       f"baseline.lr in its {CONFIG_FILE} and `sweep resume` it, or remove it and run again)")


def _latency_fields(lat: dict) -> dict:
    return {"latency_ms": lat["median_ms"], "latency_iqr_ms": lat["iqr_ms"], "latency_batch": lat["batch"],
            "latency_repeats": lat["repeats"], "threads": lat["threads"], "device": lat["device"],
            "latency_alone": False}


# ------------------------------------------------------------------------------- one trial
def run_trial(cfg: SweepConfig, spec: TrialSpec, log_metric=None, trial_number: int | None = None,
              io=None) -> TrialRecord:
    """Run one trial and return its record. Never raises for trial-level failures: they are states.

    ``log_metric(key, value, step)`` receives the trajectory the method logs (the driver's trainable
    buffers it and sends it with the record; the driver writes it to MLflow).  ``io`` gives the baseline
    and keeps the pruned model: ``baseline()`` (the summary), ``load_baseline_model()``,
    ``model_rel(trial_id)`` and ``save_model(model, rel)``, as :class:`~sweep.folder.SweepFolder` has them
    (the default: the folder ``spec.sweep_dir``).  A Ray worker gets them from the driver instead, so it
    needs no access to the sweep folder."""
    import torch

    started = time.time()
    folder = io if io is not None else SweepFolder(Path(spec.sweep_dir))
    base = folder.baseline()
    common = dict(sweep=cfg.name, trial_id=spec.trial_id, trial_number=trial_number, method=spec.method,
                  seed=spec.seed, knobs=spec.knobs, baseline_accuracy=base["accuracy"],
                  baseline_test_accuracy=base["test_accuracy"], started_at=started)
    log_metric = log_metric or (lambda k, v, s=0: None)
    try:
        fig, info, rel, epochs = _prune_and_measure(cfg, spec, folder, log_metric)
        ended = time.time()
        return TrialRecord(
            **common, status="ok", accuracy=fig.accuracy, test_accuracy=fig.test_accuracy,
            agreement=fig.agreement, params=fig.params, macs=fig.macs, **_latency_fields(fig.latency),
            params_ratio=fig.params / base["params"], macs_ratio=fig.macs / base["macs"],
            latency_ratio=fig.latency["median_ms"] / base["latency_ms"], model_path=rel,
            info=json.dumps(info, default=str), finetune_epochs=epochs, ended_at=ended, wall_s=ended - started)
    except TrialFailure as e:
        error = str(e)
    except torch.OutOfMemoryError as e:  # type: ignore[attr-defined]
        error = f"out of memory: {str(e).splitlines()[0]}"
    except MemoryError:
        error = "out of memory (host)"
    except Exception as e:  # any other error of this trial's configuration: recorded, sweep goes on
        tb = traceback.format_exc(limit=-3)
        error = f"{type(e).__name__}: {e}\n{tb}"[:4000]
    ended = time.time()
    return TrialRecord(**common, status="failed", error=error, finetune_epochs=cfg.finetune.epochs,
                       ended_at=ended, wall_s=ended - started)


def _prune_and_measure(cfg: SweepConfig, spec: TrialSpec, folder, log_metric):
    import copy

    import torch

    from .methods import get_method

    method = get_method(spec.method)
    mcfg = method.make_config(spec.knobs, where=f"trial {spec.trial_id}: {spec.method}")
    threads = trial_threads(cfg)
    torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    splits = load_splits(cfg)
    data = trial_data(cfg, splits, spec.seed)
    model = folder.load_baseline_model().to("cpu").eval()
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    example = splits.example_input(1)
    ctx = build_context(data.method, method=spec.method, labels=not cfg.label_free, teacher=teacher,
                        finetune_config=cfg.finetune, device=cfg.measure.device, seed=spec.seed,
                        num_classes=splits.num_classes, ignored_layers=skipped_layers(cfg, model, example),
                        log_metric=log_metric)
    result = method.prune(model, example, mcfg, ctx)
    model = result.model
    log_metric("pruned_quality", ctx.evaluate(model), 0)
    epochs = 0
    if not result.finetuned and cfg.finetune.epochs > 0:
        ctx.finetune(model)
        epochs = cfg.finetune.epochs
    elif result.finetuned:
        epochs = int(result.info.get("epochs", 0)) if isinstance(result.info, dict) else 0
    fig = measure_all(cfg, model, splits, data, threads, teacher=teacher)
    rel = folder.save_model(model.to("cpu"), folder.model_rel(spec.trial_id))
    return fig, result.info, rel, epochs
