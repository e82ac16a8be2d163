"""One trial, with no Ray in sight: baseline -> prune -> fine-tune -> measure -> one result row.

Also the baseline itself (trained once per sweep, or loaded from a checkpoint).  Both return a
:class:`~sweep.results.schema.TrialRecord`, the only place rows are built.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .config import SweepConfig
from .errors import ConfigError, TrialFailure
from .folder import CONFIG_FILE, SweepFolder
from .measure import threads_kept
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
    accuracy: float | None  # None: no labelled set (unlabeled data alone)
    test_accuracy: float | None
    params: int
    macs: int
    latency: dict = field(default_factory=dict)
    agreement: float = 1.0
    nmi: float | None = None  # clustering sweeps (an unsupervised teacher) with a labelled set only
    test_nmi: float | None = None


# ------------------------------------------------------------------------------- data + models
@lru_cache(maxsize=4)
def _splits(name: str, options_json: str, seed: int, stratify: bool = True):
    from .data import load_dataset

    return load_dataset(name, json.loads(options_json), seed=seed, where="dataset", stratify=stratify)


def _splits_key(cfg: SweepConfig) -> tuple:
    return cfg.dataset.name, json.dumps(cfg.dataset.options, sort_keys=True), cfg.seed, not cfg.label_free


# splits this process was handed rather than loaded (:func:`use_shipped_splits`), by ``_splits_key``
_SHIPPED: dict[tuple, object] = {}


def load_splits(cfg: SweepConfig):
    """The sweep's data, cached per process (Ray workers reuse it across trials), or the splits the
    driver shipped to this process (:func:`use_shipped_splits`).

    In a label-free sweep every split and subset is drawn without reading a label (no stratification),
    so labels never decide which items the device side sees."""
    key = _splits_key(cfg)
    if key in _SHIPPED:
        return _SHIPPED[key]
    from .data.base import DATASETS

    DATASETS.get(cfg.dataset.name, f"{cfg.source}: dataset.name")  # an unknown name says where it came from
    return _splits(*key)


def use_shipped_splits(cfg: SweepConfig, fetch) -> None:
    """Make ``fetch()`` (the driver's own splits of ``cfg``, e.g. from Ray's object store) what
    :func:`load_splits` returns in this process; fetched once per process, so a reused worker pays for
    its data once and a worker node needs neither the dataset files nor the libraries that read them."""
    key = _splits_key(cfg)
    if key not in _SHIPPED:
        _SHIPPED.clear()  # one sweep's data per worker process
        _SHIPPED[key] = fetch()


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
    train_ds = splits.train
    # an unlabeled source (dataset.unlabeled): the teacher learns from the labelled set beside it
    teacher_ds = splits.teacher_train if splits.teacher_train is not None else splits.train
    if cfg.baseline.cloud_fraction is not None:
        teacher_ds, train_ds = cloud_device_split(splits.train, cfg.baseline.cloud_fraction, cfg.seed)
    # agreement is measured on the source's own validation inputs when it has them
    agree_ds = splits.agreement_val if splits.agreement_val is not None else splits.val
    # no labelled set (unlabeled data alone): no accuracy to measure
    val = make_loader(splits.val, 256, shuffle=False) if splits.labelled else None
    return TrialData(
        method=make_loaders(train_ds, agree_ds, labels=not cfg.label_free, batch_size=bs, seed=seed,
                            val_loader=val if agree_ds is splits.val else None),
        val=val, test=make_loader(splits.test, 256, shuffle=False) if splits.labelled else None,
        teacher_train=make_loader(teacher_ds, bs, shuffle=True, seed=seed))


def measure_costs(cfg: SweepConfig, model, splits, threads: int, beside: tuple | None = None) -> dict:
    """What a pruned network costs -- params, MACs, latency (the runtime's dict) -- fixed once pruning is done.

    ``beside``: ``(dense network, the baseline's latency in ms, a key of the dense network's weights)``.  The
    latency is then timed beside the dense network (:func:`sweep.measure.compare_latency`, their runs
    interleaved; the dense network's runner kept in this process under that key, so that each trial does not
    export and load it again: :func:`sweep.measure.kept_runner`) and put on the baseline's scale:
    the ratio of the two medians times the baseline's latency, the spread scaled alike (``beside_baseline``
    in the dict).  A trial times its network while other trials share the machine, whose speed may also have
    changed since the baseline was timed (2x on a shared 2-core machine).  Judged on the figure timed alone, a
    hard ``max_latency_ms`` would call networks that keep it infeasible (never fine-tuned), and a rung's cut
    would rank candidates by the moment they were timed.  Timed beside the dense network, both are slowed
    alike.  A dense timing of 0 (no clock resolution) leaves the figure as timed."""
    from .measure import compare_latency, count_macs, count_params, kept_runner, measure_latency

    cpu_model = model.to("cpu").eval()
    timing = dict(batch=cfg.measure.latency_batch, warmup=cfg.measure.warmup, repeats=cfg.measure.repeats,
                  threads=threads, device=cfg.measure.device, runtime=cfg.measure.runtime)
    if beside is not None:
        dense, base_ms, dense_key = beside
        dense_runner = kept_runner(dense_key, dense, splits.input_shape,
                                   **{k: timing[k] for k in ("batch", "threads", "device", "runtime")})
        dense_lat, pruned = compare_latency([dense_runner, cpu_model.to(cfg.measure.device)], splits.input_shape,
                                            **timing)
        lat = pruned.to_dict()
        if dense_lat.median_ms > 0:
            lat = {**pruned.scaled(base_ms / dense_lat.median_ms).to_dict(),
                   "beside_baseline": pruned.median_ms / dense_lat.median_ms}
    else:
        lat = measure_latency(cpu_model.to(cfg.measure.device), splits.input_shape, **timing).to_dict()
    cpu_model = cpu_model.to("cpu")
    return {"params": count_params(cpu_model), "macs": count_macs(cpu_model, splits.example_input(1)),
            "latency": lat}


def latency_judged_beside_baseline(cfg: SweepConfig, base: dict) -> bool:
    """Whether a trial times its network beside the dense one (:func:`measure_costs`): where its latency decides
    something while the sweep runs -- a hard ``max_latency_ms`` budget, or latency among the objectives (what
    the sampler is told and learns from, successive halving's cut at each rung, the live hypervolume) -- and
    the baseline has a latency to put it on the scale of.  Timed alone, the same 40 trials of ``bench/scale.py``'s
    space read 0.26-0.39x the baseline in one run and 0.53-1.21x in the next on a shared 2-core machine (its speed
    changes between the baseline's timing and the trials'): the sampler would learn the machine's mood."""
    limits = cfg.search.constraints
    judged = (limits is not None and limits.max_latency_ms is not None) or "latency_ms" in cfg.search.objectives
    return bool(judged and base.get("latency_ms"))


def cost_figures(costs: dict) -> dict:
    """The cost objectives by column name (what search.constraints and the sampler compare)."""
    return {"params": costs["params"], "macs": costs["macs"], "latency_ms": costs["latency"]["median_ms"]}


def sweep_quality(cfg: SweepConfig, model, data: TrialData, judge) -> float:
    """The sweep's quality objective on the validation split: accuracy, or agreement with the sweep's
    teacher (``judge``) in a label-free sweep -- the same figure at every rung as at the end."""
    from .measure import accuracy, agreement

    device = cfg.measure.device
    if cfg.label_free:
        return agreement(model.to(device).eval(), judge.to(device), data.method.val_inputs, device)
    return accuracy(model.to(device).eval(), data.val, device)


def measure_all(cfg: SweepConfig, model, splits, data: TrialData, threads: int, teacher=None,
                costs: dict | None = None, quality: float | None = None) -> Figures:
    """Accuracy (labels read here only, for reporting), agreement with the teacher, params, MACs, latency
    (``costs`` when already measured: pruning fixed them).  ``quality``: the sweep's quality objective
    (:func:`sweep_quality`, with ``teacher`` as its judge) already measured on this very network -- nothing
    trained it since --, taken as it is rather than measured again."""
    from .measure import accuracy, agreement, count_macs, count_params, measure_latency

    device = cfg.measure.device
    model = model.to(device).eval()
    scores = {}  # accuracy, test_accuracy (+ nmi, test_nmi for clusters); None: no labelled set
    for split, loader in (("", data.val), ("test_", data.test)):
        if cfg.baseline.teacher is not None:  # outputs are cluster indices: matched to the labels (Hungarian)
            from .mbn.teacher import cluster_scores

            acc, nmi = cluster_scores(model, loader, device) if loader is not None else (None, None)
            scores[f"{split}accuracy"], scores[f"{split}nmi"] = acc, nmi
        elif split == "" and quality is not None and not cfg.label_free:  # sweep_quality: this accuracy
            scores["accuracy"] = quality
        else:
            scores[f"{split}accuracy"] = accuracy(model, loader, device) if loader is not None else None
    if teacher is None:
        agree = 1.0
    elif quality is not None and cfg.label_free:  # sweep_quality: agreement with this teacher on these inputs
        agree = quality
    else:
        agree = agreement(model, teacher.to(device), data.method.val_inputs, device)
    if costs is not None:
        return Figures(**scores, params=costs["params"], macs=costs["macs"], latency=costs["latency"],
                       agreement=agree)
    cpu_model = model.to("cpu")
    macs = count_macs(cpu_model, splits.example_input(1))
    params = count_params(cpu_model)
    # on the deployment runtime (measure.runtime): onnxruntime exports the model to ONNX once, here
    lat = measure_latency(model.to(device), splits.input_shape, batch=cfg.measure.latency_batch,
                          warmup=cfg.measure.warmup, repeats=cfg.measure.repeats, threads=threads,
                          device=device, runtime=cfg.measure.runtime)
    return Figures(**scores, params=params, macs=macs, latency=lat.to_dict(), agreement=agree)


_SKIPPED: dict = {}  # (architecture_key, keep_layers) -> names of the skipped layers, in this process


def skipped_layers(cfg: SweepConfig, model, example) -> list:
    """Layers no method prunes: the engine's rule plus the YAML's ``model.keep_layers``. Every trial asks
    this of the same dense network, so the names are found (one trace) once per architecture and process."""
    from .engine.skip import skipped_layers as engine_skipped
    from .measure import architecture_key

    key = (architecture_key(model, example), tuple(map(str, cfg.model.keep_layers or ())))
    if key not in _SKIPPED:
        names = {id(m): n for n, m in model.named_modules()}
        found = engine_skipped(model, example, cfg.model.keep_layers, what=f"{cfg.source}: model.keep_layers")
        if not all(id(m) in names for m in found):  # a layer outside the module tree: not remembered by name
            return found
        _SKIPPED[key] = tuple(names[id(m)] for m in found)
    return [model.get_submodule(n) for n in _SKIPPED[key]]


def trial_threads(cfg: SweepConfig) -> int:
    """Torch threads inside a trial: the explicit setting, else the trial's whole-CPU share."""
    return cfg.measure.threads or max(1, int(cfg.search.cpus_per_trial))


# ------------------------------------------------------------------------------- baseline
def prepare_baseline(cfg: SweepConfig, folder: SweepFolder, log=print) -> TrialRecord:
    """Train (or load) the dense model once, measure it, save it in ``<sweep>/baseline/``; its record.
    The caller's torch thread count is left as it was."""
    with threads_kept():
        return _prepare_baseline(cfg, folder, log)


def _prepare_baseline(cfg: SweepConfig, folder: SweepFolder, log) -> TrialRecord:
    if cfg.baseline.teacher is not None:  # an unsupervised teacher (MBN): fitted here, the dense model learns it
        from .mbn.teacher import prepare_mbn_baseline

        return prepare_mbn_baseline(cfg, folder, log)
    import torch

    from .models import build_model
    from .train import EpochCheckpoint, train

    started = time.time()
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)
    c, h, _ = splits.input_shape
    ckpt = cfg.baseline.path or cfg.model.checkpoint
    model = build_model(cfg.model.name, num_classes=splits.num_classes, in_channels=c, input_size=h,
                        checkpoint=ckpt, where=f"{cfg.source}: model")
    data = trial_data(cfg, splits, cfg.seed)
    b, epochs, resumable = cfg.baseline.train, 0, None
    if cfg.baseline.path is None and b.epochs > 0:
        epochs = b.epochs
        what = (f"the teacher on a labelled cloud split ({cfg.baseline.cloud_fraction:.0%} of the training data, "
                f"kept apart from the unlabeled device data)" if cfg.baseline.cloud_fraction else
                f"the teacher on the labelled {cfg.dataset.name} training split (the device data is "
                f"{splits.unlabeled_source})" if splits.unlabeled_source else "the dense baseline")
        resumable = EpochCheckpoint(folder.baseline_training_path, baseline_training_key(cfg))
        done = resumable.epochs_done()
        if resumable.why:
            log(f"note: {resumable.why}; the baseline trains from the start")
        log(f"training {what}: {cfg.model.name} on {cfg.dataset.name}, {b.epochs} epochs"
            + (f" (going on after epoch {done}, where an interrupted run left it)" if done else ""))
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    # nothing is written before the model is trained and measured: a failure leaves no baseline behind
    try:
        if epochs:
            train(model, data.teacher_train, epochs=b.epochs, lr=b.lr, momentum=b.momentum,
                  weight_decay=b.weight_decay, optimizer=b.optimizer, device=cfg.measure.device,
                  checkpoint=resumable)
        fig = measure_all(cfg, model, splits, data, trial_threads(cfg))
    except TrialFailure as e:
        if resumable is not None:  # a diverged training is not worth going on from
            resumable.clear()
        raise _baseline_failure(cfg, folder, str(e), trained=bool(epochs)) from None
    reference = _logged_reference(cfg, model, splits, data, log, judge=model if cfg.label_free else None)
    summary = {"accuracy": fig.accuracy, "test_accuracy": fig.test_accuracy, "agreement": 1.0, "params": fig.params,
               "macs": fig.macs, "latency_ms": fig.latency["median_ms"], "latency": fig.latency,
               "model": cfg.model.name, "dataset": cfg.dataset.name, "epochs": epochs,
               "input_shape": list(splits.input_shape), "num_classes": splits.num_classes,
               **({"reference": reference} if reference else {})}
    return baseline_written(cfg, folder, model, summary, fig, epochs, started, resumable)


def baseline_written(cfg: SweepConfig, folder: SweepFolder, model, summary: dict, fig: Figures, epochs: int,
                     started: float, resumable=None) -> TrialRecord:
    """Write the dense baseline (its model and ``summary``, the figures of ``baseline/summary.json``), let go
    of its resumable training, and return its row: the one place a baseline's record is built (a classifier's
    here, an MBN-taught student's in :mod:`sweep.mbn.teacher`).  ``summary`` gives the quality figures (and
    ``nmi`` / ``test_nmi`` when present) and agreement, ``fig`` the costs."""
    rel = folder.write_baseline(model.to("cpu"), summary)
    if resumable is not None:
        resumable.clear()
    ended = time.time()
    return TrialRecord(
        sweep=cfg.name, trial_id=BASELINE_ID, status="ok", method="baseline",
        accuracy=summary["accuracy"], test_accuracy=summary["test_accuracy"], agreement=summary["agreement"],
        nmi=summary.get("nmi"), test_nmi=summary.get("test_nmi"),
        baseline_accuracy=summary["accuracy"], baseline_test_accuracy=summary["test_accuracy"],
        params=fig.params, macs=fig.macs, **_latency_fields(fig.latency),
        params_ratio=1.0, macs_ratio=1.0, latency_ratio=1.0,
        model_path=rel, seed=cfg.seed, finetune_epochs=epochs, wall_s=ended - started,
        started_at=started, ended_at=ended, info=json.dumps({"summary": summary}, default=str))


def baseline_training_key(cfg: SweepConfig) -> str:
    """What the dense baseline's training depends on (seed, label mode, model, data, baseline settings,
    device), as a digest: an epoch checkpoint is resumed only under the same key."""
    import hashlib
    from dataclasses import asdict

    what = {"seed": cfg.seed, "labels": cfg.labels, "model": asdict(cfg.model), "dataset": asdict(cfg.dataset),
            "baseline": asdict(cfg.baseline), "device": cfg.measure.device}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def progress_name(cfg: SweepConfig, method: str, knobs: dict, seed: int, base: dict) -> str:
    """The name a trial's fine-tune state is kept under while it trains (``progress/<name>.pt`` in the sweep
    folder, :meth:`~sweep.folder.SweepFolder.progress_slot`): a digest of what decides that training -- the
    baseline's settings (:func:`baseline_training_key`) and figures, the method, its knobs and the trial's seed,
    the fine-tune settings and rung 0's BatchNorm re-estimate.  The same trial run again (Ray Tune's retry after a
    lost node, or ``sweep resume``'s re-run of a trial cut short, which gets its number and so its seed back)
    finds it, whatever its trial id."""
    import hashlib
    from dataclasses import asdict

    sched = cfg.search.scheduler
    what = {"baseline": baseline_training_key(cfg), "figures": [base.get("accuracy"), base.get("params")],
            "method": method, "knobs": knobs, "seed": int(seed),
            "finetune": {k: v for k, v in asdict(cfg.finetune).items() if not k.startswith("checkpoint")},
            "rung0": bool(sched is not None and sched.rung0)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=repr).encode()).hexdigest()[:32]


def keeps_progress(cfg: SweepConfig) -> bool:
    """Whether the sweep's trials keep their fine-tune state (``finetune.checkpoint``, and epochs to keep)."""
    return bool(cfg.finetune.checkpoint) and cfg.finetune.epochs > 0


RUNG_QUALITY = "rung_quality"  # beside a trial's fine-tune state: the rungs it reached (rung_quality_json)


def trial_progress(cfg: SweepConfig, spec: TrialSpec, folder, base: dict, number: int | None = None):
    """Where this trial keeps its fine-tune state after an epoch (every ``finetune.checkpoint_every_s``
    seconds at most): a :class:`~sweep.train.EpochCheckpoint` (None with ``finetune.checkpoint: false`` or no
    fine-tune epochs).  Beside the state it keeps the trial's
    configuration (``method``, ``knobs`` as JSON, ``number``): a sweep resumed after its driver was killed runs
    such a trial again first (:func:`saved_trials`)."""
    from .train import EpochCheckpoint

    if not keeps_progress(cfg):
        return None
    name = progress_name(cfg, spec.method, spec.knobs, spec.seed, base)
    sched = cfg.search.scheduler
    # with promotion a trial stopped at a rung may go on from it later: its state is saved there, before the report
    at = [r for r in sched.rungs() if r > 0] if sched is not None and sched.promote else ()
    return EpochCheckpoint(folder.progress_slot(name), name, extra={
        "method": spec.method, "knobs": json.dumps(spec.knobs, sort_keys=True, default=repr),
        "number": -1 if number is None else int(number)}, every_s=cfg.finetune.checkpoint_every_s, at=at)


def saved_trials(folder: SweepFolder) -> list[tuple[str, int, str, dict]]:
    """``(name, number, method, knobs)`` of every trial with a saved fine-tune state in ``folder`` (number -1: a
    trial run without one; unreadable states are left out: a re-run would not use them either)."""
    from .train import EpochCheckpoint

    out = []
    for name in folder.progress_names():
        state = EpochCheckpoint(folder.progress_slot(name), name).load()
        try:
            out.append((name, int(state["number"]), str(state["method"]), json.loads(state["knobs"])))
        except (TypeError, KeyError, ValueError):  # None (unreadable), or a state without its configuration
            continue
    return out


def _cleared(progress, keep: bool = False) -> None:
    """The trial ended (it has its row): its saved fine-tune state is of no more use (``keep``: the caller removes
    it once the row is durable)."""
    if progress is None or keep:
        return
    try:
        progress.clear()
    except Exception:  # the inbox went with its node: the driver clears what is left at the sweep's end
        pass


def _logged_reference(cfg: SweepConfig, model, splits, data: TrialData, log, judge=None) -> dict | None:
    """:func:`dense_reference`, said in one line; a reference that fails to train is left out, said why."""
    if not cfg.baseline.reference or cfg.finetune.epochs <= 0:
        return None
    log(f"reference: the dense model fine-tuned {cfg.finetune.epochs} epoch(s) like a trial, nothing removed")
    try:
        ref = dense_reference(cfg, model, splits, data, judge)
    except TrialFailure as e:
        log(f"reference: left out ({e})")
        return None
    if ref is not None:
        q = cfg.quality
        log(f"reference: {q} {ref[q]:.4f}" if ref.get(q) is not None else "reference: no labelled set")
    return ref


def dense_reference(cfg: SweepConfig, model, splits, data: TrialData, judge=None) -> dict | None:
    """The dense network given the trials' fine-tuning budget (``finetune.*``: the same epochs and recipe,
    ``ctx.finetune``; nothing removed): its quality is the reference a pruned trial is read against -- a
    trial above the baseline but not above this was trained longer, not pruned better.  ``judge``: the
    sweep's teacher for agreement (label-free sweeps).  None unless ``baseline.reference: true``, and without
    fine-tuning or training data."""
    import torch

    if not cfg.baseline.reference or cfg.finetune.epochs <= 0 or data.method is None:
        return None
    started = time.time()
    with threads_kept():
        torch.set_num_threads(trial_threads(cfg))  # as a trial runs: on 2 busy cores, more threads cost 6x here
        return _fine_tuned_dense(cfg, model, splits, data, judge, started)


def _fine_tuned_dense(cfg: SweepConfig, model, splits, data: TrialData, judge, started: float) -> dict:
    import copy

    import torch

    torch.manual_seed(cfg.seed)
    reference = copy.deepcopy(model).to("cpu")
    teacher = copy.deepcopy(model).to("cpu").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    ctx = build_context(data.method, method="baseline", labels=not cfg.label_free, teacher=teacher,
                        finetune_config=cfg.finetune, device=cfg.measure.device, seed=cfg.seed,
                        num_classes=splits.num_classes, ignored_layers=[])
    ctx.finetune(reference)
    fig = measure_all(cfg, reference, splits, data, trial_threads(cfg), teacher=judge,
                      costs={"params": 0, "macs": 0, "latency": {}})  # costs: the baseline's own
    return {"epochs": cfg.finetune.epochs, "accuracy": fig.accuracy, "test_accuracy": fig.test_accuracy,
            "agreement": fig.agreement, "nmi": fig.nmi, "test_nmi": fig.test_nmi, "wall_s": time.time() - started}


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
            "latency_runtime": lat.get("runtime") or None, "latency_alone": False}


# ------------------------------------------------------------------------------- one trial
def run_trial(cfg: SweepConfig, spec: TrialSpec, log_metric=None, trial_number: int | None = None,
              io=None, report_rung=None, keep_progress: bool = False) -> TrialRecord:
    """Run one trial and return its record. Never raises for trial-level failures: they are states.

    ``log_metric(key, value, step)`` receives the trajectory the method logs (the driver's trainable
    buffers it and sends it with the record; the driver writes it to MLflow).  ``io`` gives the baseline
    and keeps the pruned model: ``baseline()`` (the summary), ``load_baseline_model()``, ``baseline_key()``,
    ``model_rel(trial_id)``, ``save_model(model, rel)`` and ``progress_slot(name)`` (where the fine-tune state is
    kept after each epoch: :func:`trial_progress`), as :class:`~sweep.folder.SweepFolder` has them (the default:
    the folder ``spec.sweep_dir``).  A Ray worker gets them from the driver instead, so it
    needs no access to the sweep folder.

    With ``search.scheduler`` (successive halving), ``report_rung(epochs, record)`` receives, at each rung,
    the record the trial would have if it stopped there (status ``stopped_early``); the scheduler stops
    it by not returning.  With ``search.constraints``, a pruned network that breaks a hard budget is not
    fine-tuned: its record is ``infeasible``, naming what it broke.

    The trial's saved fine-tune state is removed when it ends, unless ``keep_progress``: then the caller removes
    it once the record is durable (the driver's recorder does), so that a driver killed in between still has
    the state to go on from."""
    import torch

    started = time.time()
    folder = io if io is not None else SweepFolder(Path(spec.sweep_dir))
    base = folder.baseline()
    progress = trial_progress(cfg, spec, folder, base, trial_number)
    common = dict(sweep=cfg.name, trial_id=spec.trial_id, trial_number=trial_number, method=spec.method,
                  seed=spec.seed, knobs=spec.knobs, baseline_accuracy=base["accuracy"],
                  baseline_test_accuracy=base["test_accuracy"], started_at=started)
    log_metric = log_metric or (lambda k, v, s=0: None)

    def costed(status: str, costs: dict, epochs: int, **kw) -> TrialRecord:
        ended = time.time()
        return TrialRecord(
            **common, status=status, params=costs["params"], macs=costs["macs"], **_latency_fields(costs["latency"]),
            params_ratio=costs["params"] / base["params"], macs_ratio=costs["macs"] / base["macs"],
            latency_ratio=costs["latency"]["median_ms"] / base["latency_ms"], finetune_epochs=epochs,
            ended_at=ended, wall_s=ended - started, **kw)

    # the quality at each rung the trial reached (rung_quality), this run's and, where it went on from a saved
    # fine-tune state, those the state kept: saved with the state, so a run that goes on from it has them all
    reached: dict[int, float] = {}

    def rung(epochs: int, quality: float, costs: dict | None, report: bool = True) -> None:
        if quality is not None and math.isfinite(quality):
            reached[epochs] = float(quality)
            if progress is not None:
                progress.extra[RUNG_QUALITY] = rung_quality_json(reached)
        if report and report_rung is not None:
            report_rung(epochs, costed("stopped_early", costs, epochs, rung_quality=rung_quality_json(reached),
                                       **{cfg.quality: quality}))

    try:
        with threads_kept():  # a trial sets its own threads; a caller running it in-process keeps its own
            out = _prune_and_measure(cfg, spec, folder, log_metric, rung, progress)
        _cleared(progress, keep_progress)
        if out.status == "infeasible":
            return costed("infeasible", out.costs, 0, error=out.reason, info=json.dumps(out.info, default=str),
                          **{cfg.quality: out.quality})
        fig = out.fig
        return costed("ok", {"params": fig.params, "macs": fig.macs, "latency": fig.latency}, out.epochs,
                      accuracy=fig.accuracy, test_accuracy=fig.test_accuracy, agreement=fig.agreement,
                      nmi=fig.nmi, test_nmi=fig.test_nmi, model_path=out.rel,
                      rung_quality=rung_quality_json(reached), info=json.dumps(out.info, default=str))
    except TrialFailure as e:
        error = str(e)
    except torch.OutOfMemoryError as e:  # type: ignore[attr-defined]
        error = f"out of memory: {str(e).splitlines()[0]}"
    except MemoryError:
        error = "out of memory (host)"
    except Exception as e:  # any other error of this trial's configuration: recorded, sweep goes on
        tb = traceback.format_exc(limit=-3)
        error = f"{type(e).__name__}: {e}\n{tb}"[:4000]
    _cleared(progress, keep_progress)
    ended = time.time()
    return TrialRecord(**common, status="failed", error=error, finetune_epochs=cfg.finetune.epochs,
                       ended_at=ended, wall_s=ended - started)


def rung_quality_json(reached: dict[int, float]) -> str | None:
    """A trial's ``rung_quality`` column: ``{"<epochs>": quality}`` in rung order, or None (no rung reported)."""
    return json.dumps({str(e): q for e, q in sorted(reached.items())}) if reached else None


def rung_qualities(rec: TrialRecord) -> dict[int, float]:
    """A row's ``rung_quality`` back as {epochs: quality}; {} where it holds none or cannot be read (a table
    edited by hand: the scheduler then replays less, and says nothing)."""
    return _rung_quality_read(rec.rung_quality)


def _rung_quality_read(text) -> dict[int, float]:
    """:func:`rung_quality_json` read back; {} for None or what cannot be read."""
    try:
        data = json.loads(text) if text else {}
        return {int(e): float(q) for e, q in data.items() if q is not None and math.isfinite(float(q))}
    except (ValueError, TypeError, AttributeError):
        return {}


def _rungs_passed(cfg: SweepConfig, progress, done: int, model, quality) -> dict[int, float]:
    """The rungs at or below ``done`` epochs (a run going on from the state saved after them) and the quality the
    trial had at each: those the state kept (saved beside it by the trial's rung reports), and the rung at
    ``done`` itself measured again on the saved network where the state was saved before that rung's report
    (a rung of ``search.scheduler.promote``: :func:`trial_progress`).  ``quality(model)``: the sweep's quality."""
    sched = cfg.search.scheduler
    if sched is None or not done:
        return {}
    state = progress.load() or {}
    passed = {e: q for e, q in _rung_quality_read(state.get(RUNG_QUALITY)).items() if e <= done}
    if done in sched.rungs() and done not in passed and "model" in state:
        model.load_state_dict(state["model"])  # the state fine-tuning goes on from: loaded again there
        passed[done] = float(quality(model))
    return passed


@dataclass
class _Outcome:
    status: str  # ok or infeasible
    fig: Figures | None = None
    info: dict | None = None
    rel: str | None = None
    epochs: int = 0
    costs: dict | None = None
    quality: float | None = None
    reason: str = ""


# inputs whose batch statistics re-estimate BatchNorm before rung 0: "a few hundred" (EagleEye, Li et al.,
# ECCV 2020, Sec. 3.2, re-estimates on a small subset of the training data; the number is ours)
ADAPTIVE_BN_INPUTS = 512


def _prune_and_measure(cfg: SweepConfig, spec: TrialSpec, folder, log_metric, rung, progress=None) -> _Outcome:
    """Prune, (fine-tune,) measure.  ``progress``: the trial's fine-tune state (:func:`trial_progress`); where it
    holds epochs, fine-tuning goes on after them, and the rungs already passed are not reported again (their
    qualities are kept: :func:`_rungs_passed`)."""
    import torch

    from .mbn.teacher import load_teacher
    from .methods import get_method

    method = get_method(spec.method)
    mcfg = method.make_config(spec.knobs, where=f"trial {spec.trial_id}: {spec.method}")
    threads = trial_threads(cfg)
    torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    splits = load_splits(cfg)
    data = trial_data(cfg, splits, spec.seed)
    model = folder.load_baseline_model().to("cpu").eval()
    teacher = folder.load_baseline_model().to("cpu").eval()  # a copy of its own: loading is cheaper than deepcopy
    for p in teacher.parameters():
        p.requires_grad_(False)
    example = splits.example_input(1)
    ctx = build_context(data.method, method=spec.method, labels=not cfg.label_free, teacher=teacher,
                        finetune_config=cfg.finetune, device=cfg.measure.device, seed=spec.seed,
                        num_classes=splits.num_classes, ignored_layers=skipped_layers(cfg, model, example),
                        log_metric=log_metric, latency={"runtime": cfg.measure.runtime, "threads": threads,
                                                               "batch": cfg.measure.latency_batch})
    result = method.prune(model, example, mcfg, ctx)
    model = result.model
    # agreement is with the sweep's teacher: an MBN when the space names one, else the dense baseline
    # (which stays ctx.teacher: LNPT needs a network's features)
    judge = load_teacher(folder, cfg.measure.device) or teacher
    sched, limits = cfg.search.scheduler, cfg.search.constraints
    tuned_by_method = bool(result.finetuned)
    # pruning fixed the costs: measured now when a budget or the scheduler needs them, or the latency is timed
    # beside the dense network (the architecture is fixed: fine-tuning changes no cost), and reused at the end
    base = folder.baseline()
    beside = (teacher, base["latency_ms"], folder.baseline_key()) if latency_judged_beside_baseline(cfg, base) else None
    costs = measure_costs(cfg, model, splits, threads, beside) if (sched is not None or limits or beside) else None
    if sched is not None and sched.rung0 and not tuned_by_method:
        from .engine.adaptive_bn import adaptive_bn

        adaptive_bn(model, data.method.train_inputs, max_inputs=ADAPTIVE_BN_INPUTS, device=cfg.measure.device)
    pruned_quality = sweep_quality(cfg, model, data, judge)
    log_metric("pruned_quality", pruned_quality, 0)
    broken = limits.broken_costs(cost_figures(costs)) if limits else []
    if broken:  # a hard budget is broken: fine-tuning would change nothing of it
        return _Outcome("infeasible", info=result.info, costs=costs, quality=pruned_quality,
                        reason="infeasible: " + "; ".join(broken))
    done = progress.epochs_done(model) if progress is not None and not tuned_by_method else 0
    if sched is not None and sched.rung0 and not tuned_by_method and not done:
        rung(0, pruned_quality, costs)
    for e, q in _rungs_passed(cfg, progress, done, model, lambda m: sweep_quality(cfg, m, data, judge)).items():
        rung(e, q, costs, report=False)  # passed in an earlier run: kept in the row, not judged again
    for e, loss in enumerate(progress.load()["losses"][:done] if done else []):
        log_metric("train_loss", float(loss), e)  # the epochs an earlier run trained: the trajectory is whole
    epochs = 0
    quality = pruned_quality  # the quality of the network as it is now (None: trained since it was measured)
    if not tuned_by_method and cfg.finetune.epochs > 0:
        on_epoch = None
        quality = None  # rungs sit below the last epoch (mo_asha.SchedulerSettings.rungs): measured again
        if sched is not None:
            rungs = set(sched.rungs())

            def on_epoch(e: int, loss: float) -> None:  # e: 0-based epoch just finished
                if e + 1 in rungs:
                    rung(e + 1, sweep_quality(cfg, model, data, judge), costs)

        ctx.finetune(model, on_epoch=on_epoch, checkpoint=progress)
        epochs = cfg.finetune.epochs
    elif tuned_by_method:
        epochs = int(result.info.get("epochs", 0)) if isinstance(result.info, dict) else 0
    fig = measure_all(cfg, model, splits, data, threads, teacher=judge, costs=costs, quality=quality)
    rel = folder.save_model(model.to("cpu"), folder.model_rel(spec.trial_id))
    info = result.info
    if done:  # said in the row: its first epochs ran in an earlier run of this configuration
        info = {**(info if isinstance(info, dict) else {"method": info}), "resumed_at_epoch": done}
    return _Outcome("ok", fig=fig, info=info, rel=rel, epochs=epochs)
