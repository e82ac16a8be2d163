"""``sweep prune``: one-shot pruning of one model with one method, no sweep.

Builds (or loads) the model, prunes it with any registered method, optionally fine-tunes it on a
dataset, measures before and after on this machine, and writes the pruned model plus a truthful
``summary.json``.  Everything is written to a temporary folder first and moved into place at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .folder import output_folder, written_whole


@dataclass
class PruneJob:
    model: str
    out: Path
    method: str = "magnitude"
    knobs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    num_classes: int | None = None
    input_shape: tuple[int, int, int] | None = None
    dataset: str | None = None
    dataset_options: dict = field(default_factory=dict)
    target_macs: int | None = None  # absolute; becomes the method's macs_fraction knob
    target_params: int | None = None  # absolute; becomes the method's params_fraction knob
    finetune_epochs: int = 0
    lr: float = 0.01
    batch_size: int = 64
    latency_batch: int = 1
    threads: int | None = None
    repeats: int = 50
    runtime: str | None = None  # latency runtime (sweep.measure.RUNTIMES); None: the device's default
    device: str = "cpu"
    seed: int = 0


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(x) for x in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise ConfigError(f"input shape must be C,H,W with positive integers, but got --input-shape={text!r}")
    return dims  # type: ignore[return-value]


def run_prune(job: PruneJob, log=print) -> dict:
    import copy

    import torch

    from .config import TrainConfig
    from .engine.check import check_prunable
    from .engine.skip import skipped_layers
    from .measure import accuracy, compare_latency, count_macs, count_params, speed_words
    from .methods import get_method
    from .methods.context import build_context, make_loaders
    from .models import build_model

    out = output_folder(job.out, "--out", empty=True)
    spec = get_method(job.method, where="--method")
    # the knobs as given are checked before the model is built or the data read (either may take long); the
    # absolute targets join them once the model's MACs and params are counted
    spec.make_config(dict(job.knobs), where=f"--method {job.method}")
    torch.manual_seed(job.seed)
    splits = None
    if job.dataset:
        from .data import load_dataset

        splits = load_dataset(job.dataset, job.dataset_options, seed=job.seed, where="--dataset")
        shape = tuple(splits.input_shape)
        if job.input_shape and tuple(job.input_shape) != shape:
            raise ConfigError(f"input shape must match the dataset's {shape}, but got "
                              f"--input-shape={','.join(map(str, job.input_shape))}")
        num_classes = splits.num_classes if job.num_classes is None else job.num_classes
        if num_classes != splits.num_classes:
            raise ConfigError(f"num classes must match the dataset's {splits.num_classes}, but got "
                              f"--num-classes={job.num_classes}")
    else:
        if job.input_shape is None:
            raise ConfigError("an input shape is needed without a dataset: give --input-shape C,H,W")
        shape = tuple(job.input_shape)
        num_classes = job.num_classes or 1000
    model = build_model(job.model, num_classes=num_classes, in_channels=shape[0], input_size=shape[1],
                        checkpoint=job.checkpoint, where="--model").eval()
    example = torch.randn(1, *shape)
    with torch.no_grad():
        out_before = model(example)
    threads = job.threads or torch.get_num_threads()

    loaders = test = None
    if splits is not None:
        from .data import make_loader

        loaders = make_loaders(splits.train, splits.val, labels=True, batch_size=job.batch_size, seed=job.seed)
        test = make_loader(splits.test, 256, shuffle=False)
    params0, macs0 = count_params(model), count_macs(model, example)
    original = copy.deepcopy(model).eval()  # its latency is measured side by side with the pruned model
    acc0 = accuracy(model, test, job.device) if test else None
    log(f"{job.model}: {params0:,} params, {macs0:,} MACs"
        + (f", test accuracy {acc0:.4f}" if acc0 is not None else ""))
    if job.checkpoint is None:  # a criterion on initial weights ranks nothing a trained model would
        log("note: no --checkpoint: the model keeps the weights its builder gives it (random unless the builder "
            "loads some), so which channels go and the accuracies say little of a trained model; give its "
            "state dict with --checkpoint")

    knobs = dict(job.knobs) | _absolute_targets(job, spec, macs0, params0)
    mcfg = spec.make_config(knobs, where=f"--method {job.method}")
    skipped = check_prunable(model, example)["skipped"]  # a model that cannot be pruned fails in one line here
    t0 = time.time()
    ctx = build_context(loaders, method=job.method, labels=True, teacher=copy.deepcopy(model).eval(),
                        finetune_config=TrainConfig(epochs=job.finetune_epochs, lr=job.lr,
                                                    batch_size=job.batch_size),
                        device=job.device, seed=job.seed, num_classes=num_classes,
                        ignored_layers=skipped_layers(model, example), no_data="give --dataset",
                        latency={"runtime": job.runtime, "threads": job.threads})
    result = spec.prune(model, example, mcfg, ctx)
    pruned, info = result.model, dict(result.info or {})
    if loaders and job.finetune_epochs > 0 and not result.finetuned:
        log(f"fine-tuning {job.finetune_epochs} epoch(s) on {job.dataset}")
        ctx.finetune(pruned)
    prune_s = time.time() - t0
    pruned.eval()
    with torch.no_grad():
        out_after = pruned(example)
    if out_after.shape != out_before.shape:  # the engine keeps output layers: this is a method's defect
        raise ConfigError(f"pruning must keep the output shape {tuple(out_before.shape)}, but method "
                          f"{job.method} changed it to {tuple(out_after.shape)}")
    params1, macs1 = count_params(pruned), count_macs(pruned, example)
    # before/after latencies interleaved in one measurement: the speed-up is not an artefact of load
    # changing between the two
    # on the deployment runtime (job.runtime, default onnxruntime on a CPU), as `sweep run` times trials
    lat0, lat1 = compare_latency([original, pruned], shape, batch=job.latency_batch, warmup=10,
                                 repeats=job.repeats, threads=threads, device=job.device, runtime=job.runtime)
    acc1 = accuracy(pruned, test, job.device) if test else None
    summary = {
        "model": job.model, "method": job.method, "knobs": knobs, "checkpoint": job.checkpoint,
        "input_shape": list(shape), "output_shape": list(out_after.shape),
        "params_before": params0, "params_after": params1, "params_ratio": params1 / params0,
        "macs_before": macs0, "macs_after": macs1, "macs_ratio": macs1 / macs0,
        "latency_ms_before": lat0.median_ms, "latency_ms_after": lat1.median_ms,
        "latency_iqr_ms_before": lat0.iqr_ms, "latency_iqr_ms_after": lat1.iqr_ms,
        "latency_speedup": lat0.median_ms / lat1.median_ms,
        "latency_batch": job.latency_batch, "latency_repeats": lat1.repeats, "threads": lat1.threads,
        "latency_runtime": lat1.runtime,
        "latency_protocol": "before and after measured interleaved in 5 rounds after warm-up, median",
        "device": job.device, "prune_seconds": prune_s, "finetune_epochs": job.finetune_epochs if loaders else 0,
        "target_macs": job.target_macs, "target_params": job.target_params, "info": info,
        "skipped_groups": skipped,
    }
    if loaders:
        summary.update(dataset=job.dataset, accuracy_before=acc0, accuracy_after=acc1, accuracy_split="test")
    missed = _targets_missed(job, macs1, params1)
    summary["targets_missed"] = missed
    with written_whole(out) as tmp:  # `out` is new or empty (output_folder)
        torch.save(pruned, tmp / "model.pt")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log(f"latency {lat0.median_ms:.3f} -> {lat1.median_ms:.3f} ms (batch {job.latency_batch}, {lat1.threads} "
        f"thread(s), {job.device}, {lat1.runtime}, measured interleaved)")
    log(f"pruned: {params1:,} params ({params1 / params0:.1%}), {macs1:,} MACs ({macs1 / macs0:.1%}), "
        f"{lat1.median_ms:.3f} ms ({speed_words(lat0.median_ms / lat1.median_ms)})"
        + (f", test accuracy {acc1:.4f}" if acc1 is not None else ""))
    for line in missed:
        log(f"warning: {line}")
    log(f"wrote {out / 'model.pt'} and {out / 'summary.json'}")
    return summary


def _targets_missed(job: PruneJob, macs: int, params: int) -> list[str]:
    """A line per ``--target-macs`` / ``--target-params`` the pruned model misses by more than the engine's
    tolerance (the method could not go that far on this model)."""
    from .engine.channels import TOLERANCE

    out = []
    for flag, target, got, what in (("--target-macs", job.target_macs, macs, "MACs"),
                                    ("--target-params", job.target_params, params, "params")):
        if target and abs(got - target) > TOLERANCE * target:
            out.append(f"the target was not reached: {got:,} {what} against {flag} {target:,} ({got / target:.3g}x, "
                       f"tolerance {TOLERANCE:.0%}); {job.method} cannot prune this model that far")
    return out


def _absolute_targets(job: PruneJob, spec, macs0: int, params0: int) -> dict:
    """``--target-macs`` / ``--target-params`` as the method's ``macs_fraction`` / ``params_fraction`` knob."""
    out = {}
    for flag, value, total, knob in (("--target-macs", job.target_macs, macs0, "macs_fraction"),
                                     ("--target-params", job.target_params, params0, "params_fraction")):
        if value is None:
            continue
        spec.knob(knob, where=f"{flag}: method {spec.name}")  # unknown knob: names the method's valid ones
        if value >= total:
            raise ConfigError(f"{flag[2:].replace('-', ' ')} must be below the model's {total:,}, but got "
                              f"{flag}={value:,}")
        out[knob] = value / total
    return out
