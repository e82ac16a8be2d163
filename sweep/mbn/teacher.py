"""MBN as the teacher of a label-free sweep (``baseline: {teacher: {mbn: {...}}}`` with ``labels: none``).

Compressive MBN (Zhang, arXiv 1503.06452) treats MBN + its k-means application as a black box and trains a
network from the raw inputs to the application's output. In a sweep:

1. the teacher is fitted once per sweep on the unlabeled training inputs (the device data: nothing else is
   read; with ``fit_points``, on a seeded subset of them, and then labels all of them) and saved as
   ``<sweep>/baseline/teacher_mbn.pt`` (plain tensors, :meth:`MBN.save`); a folder that already holds it
   (a resumed sweep whose baseline training had failed) reuses it instead of refitting;
2. the dense model of the space (``num_classes`` = the teacher's clusters) is trained on the teacher's
   cluster indices of the training inputs (cross-entropy, the space's ``baseline`` epochs and lr): the
   dense student, which the trials then prune;
3. the baseline row measures the student against the teacher: ``agreement`` = top-1 agreement with MBN's
   clusters on the unlabeled validation inputs; ``accuracy`` / ``test_accuracy`` = clustering accuracy of
   the student's clusters against the labels (Hungarian matching; labels read for the figures only). The
   summary also holds the teacher's own figures (its clustering accuracy and NMI, its k schedule, fit time)
   and its per-sample prediction latency, timed the same way as the student's (torch runtime, same device,
   threads and batch), and the student's speed-up over it.  The baseline row of ``trials.parquet`` carries
   the same summary in its ``info`` JSON (``info["summary"]["teacher"]``): the report reads the teacher's
   figures from there (:mod:`sweep.report.teacher`).

:class:`MBNTeacher` is MBN as a ``torch.nn.Module`` whose outputs are ``HARD_LOGIT`` × one-hot of the
predicted cluster: the project's agreement (argmax) and distillation (softmax at a temperature) accept it
like a network teacher; at the default temperature 4 its softened target puts > 99 % on the cluster
(up to 200 clusters).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import TrialFailure
from .metrics import clustering_accuracy, nmi
from .model import MBN

TEACHER_FILE = "baseline/teacher_mbn.pt"
HARD_LOGIT = 40.0  # one-hot scale: softmax at T <= 4 keeps > 99 % on the cluster for up to 200 clusters (e^10 / 199)


class MBNTeacher(torch.nn.Module):
    """MBN + k-means as a module: ``forward(x)`` = ``HARD_LOGIT`` × one-hot of the predicted cluster.

    MBN is deterministic and slow (a nearest-centroid search per layer), and a trial asks it about the same
    validation batches at every rung and again at the end: predictions are remembered per batch, keyed by
    the batch's bytes (at most ``MEMO_BATCHES`` batches; a memo hit costs one hash of the batch).  A teacher
    whose *latency* is timed must predict at every call: ``memo=False``."""

    MEMO_BATCHES = 512

    def __init__(self, mbn: MBN, memo: bool = True):
        super().__init__()
        self.mbn = mbn
        self.clusters = int(mbn.centers.shape[0])
        self.memo = memo
        self._memo: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.memo:
            return self._one_hot(self.mbn.predict(x), x.device)
        key = _batch_key(x)
        idx = self._memo.get(key)
        if idx is None:
            idx = self.mbn.predict(x)
            if len(self._memo) < self.MEMO_BATCHES:
                self._memo[key] = idx
        return self._one_hot(idx, x.device)

    def _one_hot(self, idx: torch.Tensor, device) -> torch.Tensor:
        return torch.nn.functional.one_hot(idx.to(device), self.clusters).to(torch.float32) * HARD_LOGIT

    def _apply(self, fn, recurse=True):
        # .to(device) / .cpu() move the MBN's tensors, which are not parameters or buffers
        probe = fn(torch.empty(0))
        self.mbn.to(probe.device)
        self._memo = {}
        return super()._apply(fn, recurse)


def _batch_key(x: torch.Tensor) -> tuple:
    """A batch's identity by content: shape, dtype and a 128-bit hash of its bytes."""
    import hashlib

    data = x.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"", digest_size=16)
    return tuple(data.shape), str(data.dtype), digest.hexdigest()


def teacher_path(folder) -> Path:
    return Path(folder.path) / TEACHER_FILE


def teacher_state(folder) -> dict | None:
    """The saved teacher as plain tensors and numbers (what a driver ships to workers that cannot read the
    sweep folder), or None when the sweep has no MBN teacher."""
    path = teacher_path(folder)
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def load_teacher(io, device: str = "cpu") -> MBNTeacher | None:
    """The sweep's MBN teacher, or None when the sweep has none (its baseline is then the teacher).

    ``io`` is the sweep folder, or any object with ``teacher_state()`` (:func:`teacher_state`'s result,
    e.g. received through Ray's object store)."""
    getter = getattr(io, "teacher_state", None)
    state = getter() if callable(getter) else teacher_state(io)
    return None if state is None else MBNTeacher(MBN.from_state(state, device=device, where=TEACHER_FILE)).eval()


def fit_inputs(x_train: torch.Tensor, cfg) -> torch.Tensor:
    """The training inputs MBN is fitted on: all of them, or ``cfg.fit_points`` of them drawn by a
    permutation seeded with the teacher's seed (no label is read), in their original order."""
    from ..errors import ConfigError

    n = len(x_train)
    if cfg.fit_points is None or cfg.fit_points == n:
        return x_train
    if cfg.fit_points > n:
        raise ConfigError(f"fit_points must be at most the number of training inputs ({n}), but got "
                          f"fit_points={cfg.fit_points} ({cfg.loc('fit_points')})")
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[:cfg.fit_points]
    return x_train[pick.sort().values]


def inputs_of(dataset) -> torch.Tensor:
    """All inputs of a dataset as one tensor, through its label-free view (items ``(x,)``)."""
    from torch.utils.data import TensorDataset

    from ..data import strip_labels

    view = strip_labels(dataset)
    if isinstance(view, TensorDataset):
        return view.tensors[0]
    return torch.stack([view[i][0] for i in range(len(view))])


def predict_loader(model, loader, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax predictions, labels) over a labelled loader: for the clustering figures only."""
    model.eval()
    preds, labels = [], []
    with torch.inference_mode():
        for x, y in loader:
            preds.append(model(x.to(device)).argmax(1).cpu())
            labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def cluster_accuracy(model, loader, device: str = "cpu") -> float:
    """Clustering accuracy of a model whose outputs are clusters (Hungarian matching to the loader's labels)."""
    return cluster_scores(model, loader, device)[0]


def cluster_scores(model, loader, device: str = "cpu") -> tuple[float, float]:
    """(clustering accuracy, NMI) of a model whose outputs are clusters, against the loader's labels (one pass)."""
    pred, labels = predict_loader(model, loader, device)
    return clustering_accuracy(labels, pred), nmi(labels, pred)


def prepare_mbn_baseline(cfg, folder, log: Callable[[str], None] = print):
    """Fit (or load) the MBN teacher, train and measure the dense student; the baseline's record."""
    import os

    from ..data import make_loader
    from ..measure import measure_latency, speed_words
    from ..models import build_model
    from ..train import EpochCheckpoint, train
    from ..trial import (
        _baseline_failure,
        _logged_reference,
        baseline_training_key,
        baseline_written,
        load_splits,
        measure_all,
        trial_data,
        trial_threads,
    )

    started = time.time()
    tcfg = cfg.baseline.teacher
    device = cfg.measure.device
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)
    x_train = inputs_of(splits.train)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    path = teacher_path(folder)
    t0 = time.time()
    reused = path.is_file()
    if reused:
        mbn = MBN.load(path, device=device)
        log(f"teacher: MBN read from {path}")
        targets = mbn.predict(x_train).cpu()
        fit_s = time.time() - t0  # reading and labelling
    else:
        x_fit = fit_inputs(x_train, tcfg)
        log(f"fitting the teacher: MBN (V={tcfg.V}, delta={tcfg.delta}, feature ratio {tcfg.feature_ratio}, "
            f"{tcfg.clusters} clusters) on {len(x_fit)} of {len(x_train)} unlabeled training inputs")
        mbn = MBN(tcfg, device=device).fit(x_fit, log=log)
        fit_s = time.time() - t0  # fitting alone
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        mbn.save(tmp)
        os.replace(tmp, path)
        if len(x_fit) == len(x_train):
            targets = mbn.train_labels_.cpu()
        else:  # MBN labels every training input for the student, the fitted ones as fitted
            t1 = time.time()
            targets = mbn.predict(x_train).cpu()
            log(f"teacher: MBN labelled the {len(x_train)} training inputs in {time.time() - t1:.1f} s")
    teacher = MBNTeacher(mbn).eval()

    c, h, _ = splits.input_shape
    model = build_model(cfg.model.name, num_classes=tcfg.clusters, in_channels=c, input_size=h,
                        checkpoint=cfg.model.checkpoint, where=f"{cfg.source}: model")
    data = trial_data(cfg, splits, cfg.seed)
    b = cfg.baseline.train
    # the student's training data: the training inputs and the teacher's clusters, nothing else
    loader = make_loader(torch.utils.data.TensorDataset(x_train, targets), b.batch_size, shuffle=True, seed=cfg.seed)
    # the teacher is saved above, so a resumed sweep reads it; the student's epochs are checkpointed too
    resumable = EpochCheckpoint(folder.baseline_training_path, baseline_training_key(cfg)) if b.epochs else None
    done = resumable.epochs_done() if resumable is not None else 0
    if resumable is not None and resumable.why:
        log(f"note: {resumable.why}; the dense student trains from the start")
    log(f"training the dense student on the teacher's clusters: {cfg.model.name}, {b.epochs} epochs"
        + (f" (going on after epoch {done}, where an interrupted run left it)" if done else ""))
    try:
        if b.epochs:
            train(model, loader, epochs=b.epochs, lr=b.lr, momentum=b.momentum, weight_decay=b.weight_decay,
                  optimizer=b.optimizer, device=device, checkpoint=resumable)
        threads = trial_threads(cfg)
        fig = measure_all(cfg, model, splits, data, threads, teacher=teacher)
    except TrialFailure as e:
        if resumable is not None:  # a diverged training is not worth going on from
            resumable.clear()
        raise _baseline_failure(cfg, folder, str(e), trained=bool(b.epochs)) from None

    # clustering figures (labels of val / test read here only) for the student and the teacher
    model = model.to(device).eval()
    figures = {}
    for split, loader_ in (("val", data.val), ("test", data.test)):
        if loader_ is None:  # no labelled set (unlabeled data alone): no clustering figures
            figures[split] = dict.fromkeys(("student_acc", "student_nmi", "teacher_acc", "teacher_nmi"))
            continue
        student_pred, y = predict_loader(model, loader_, device)
        teacher_pred, _ = predict_loader(teacher, loader_, device)
        figures[split] = {"student_acc": clustering_accuracy(y, student_pred), "student_nmi": nmi(y, student_pred),
                          "teacher_acc": clustering_accuracy(y, teacher_pred), "teacher_nmi": nmi(y, teacher_pred)}
    # per-sample prediction latency of teacher and student on the same runtime, device, threads and batch
    lat_kw = dict(batch=cfg.measure.latency_batch, warmup=cfg.measure.warmup, repeats=cfg.measure.repeats,
                  threads=threads, device=device, runtime="torch")
    t_lat = measure_latency(MBNTeacher(mbn, memo=False).eval(), splits.input_shape, **lat_kw)  # predicts every call
    s_lat = measure_latency(model, splits.input_shape, **lat_kw)
    speedup = t_lat.median_ms / s_lat.median_ms
    acc = ("n/a (no labelled set)" if figures["val"]["teacher_acc"] is None else
           f"{figures['val']['teacher_acc']:.3f} vs {figures['val']['student_acc']:.3f}")
    log(f"teacher vs dense student: clustering accuracy (val) {acc}, agreement {fig.agreement:.3f}, latency "
        f"{t_lat.median_ms:.3f} ms vs "
        f"{s_lat.median_ms:.3f} ms (torch, batch {cfg.measure.latency_batch}): {speed_words(speedup)}")

    reference = _logged_reference(cfg, model, splits, data, log, judge=teacher)
    teacher_info = {"kind": "mbn", "path": TEACHER_FILE, "settings": tcfg.settings(), "ks": mbn.ks,
                    "fit_s": fit_s, "reused": reused, "train_points": len(x_train),
                    "fit_points": tcfg.fit_points or len(x_train),
                    "val_cluster_accuracy": figures["val"]["teacher_acc"], "val_nmi": figures["val"]["teacher_nmi"],
                    "test_cluster_accuracy": figures["test"]["teacher_acc"],
                    "test_nmi": figures["test"]["teacher_nmi"], "latency": t_lat.to_dict(),
                    "latency_ms": t_lat.median_ms}
    summary = {"accuracy": figures["val"]["student_acc"], "test_accuracy": figures["test"]["student_acc"],
               "accuracy_kind": "clustering accuracy (Hungarian matching of the student's clusters to the labels)",
               "nmi": figures["val"]["student_nmi"], "test_nmi": figures["test"]["student_nmi"],
               "agreement": fig.agreement, "params": fig.params, "macs": fig.macs,
               "latency_ms": fig.latency["median_ms"], "latency": fig.latency, "latency_torch": s_lat.to_dict(),
               "speedup_vs_teacher": speedup, "teacher": teacher_info,
               "model": cfg.model.name, "dataset": cfg.dataset.name, "epochs": b.epochs,
               "input_shape": list(splits.input_shape), "num_classes": tcfg.clusters,
               **({"reference": reference} if reference else {})}
    return baseline_written(cfg, folder, model, summary, fig, b.epochs, started, resumable)
