"""Speed-up efficiency of structured pruners at matched MACs reductions, measured side by side.

For each model (freshly built, untrained, seeded) and each MACs target (fraction of the dense MACs
kept), four pruners prune their own deep copy of the same model:

  a  auto      sweep's prune_to_target(macs_fraction=t), round_to="auto" (the CPU's vector width: x16 on
               AVX-512 from 64 channels, x8 from 32, none below)
  b  noround   the same, round_to=None
  c  latency   the same as (a), importance="l2_latency" (per-layer latency table, sweep.engine.latency)
  d  depth     the same as (c), and whole residual blocks may go too: plans taking 0, 1/4 ... all of the
               MACs cut as blocks are timed on --runtime and the fastest kept (sweep.engine.depth_width;
               magnitude's depth: true); on nets without removable blocks it is (c)
  e  tp        plain Torch-Pruning: MetaPruner(GroupMagnitudeImportance(p=2), global_pruning=True,
               pruning_ratio=1.0, max_pruning_ratio=0.9, iterative_steps=--tp-steps, round_to=8,
               ignored_layers=[head]) stepped until count_macs <= t * dense MACs (the step-until-target
               loop of Torch-Pruning's benchmarks/main.py, progressive_pruning)

Then every variant of a model (dense + all pruned ones) is timed on each runtime of --runtimes (eager
torch and ONNX Runtime, side by side; sweep.measure.make_runner: an ONNX export and one session per
variant, batch and runtime) at each batch size, interleaved: round after round every variant runs one
block (1 warm-up + --block timed forwards), the order rotating by one each round, until each has >=
--repeats timed forwards; a variant's latency is the median of its block medians. Ratios divide by the
dense model of the same runtime and run, so machine-wide drift cancels. speed-up efficiency = (dense
latency / pruned latency) / (dense MACs / pruned MACs): 1.0 means latency fell as much as MACs did.
--runtime is the deployment runtime: the one the latency pruner's per-layer table is timed on and the
one the last line reports.

    python bench/latency_efficiency.py --quick
    python bench/latency_efficiency.py --threads 2 --batches 1,16 --targets 0.5,0.25 --runtime onnxruntime
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import os
import platform
import statistics
import sys
import time

import torch

# name -> (in_channels, input_size, family). CIFAR-style nets at 32x32; torchvision nets at 64x64 (their
# ImageNet stems downsample 4x early, so 64x64 still leaves 2x2 maps at the end); yolo7_cls at 1x28x28,
# the Fashion-MNIST size its docstring is written for.
MODELS = {
    "vgg16_bn": (3, 32, "plain"),
    "cifar_resnet56": (3, 32, "residual"),
    "torchvision:resnet18": (3, 64, "residual"),
    "yolo7_cls": (1, 28, "concat"),
    "torchvision:densenet121": (3, 64, "concat"),
    "torchvision:googlenet": (3, 64, "concat"),
    "torchvision:mobilenet_v2": (3, 64, "depthwise"),
}
DEFAULT_MODELS = tuple(MODELS)  # all seven: the goal is stated over them
QUICK_MODELS = ("vgg16_bn", "yolo7_cls")
PRUNERS = ("auto", "noround", "latency", "depth", "tp")
RUNTIMES = ("torch", "onnxruntime")
SHORT = {"torch": "pt", "onnxruntime": "ort"}  # column prefixes
NUM_CLASSES = 10


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(name: str, seed: int):
    from sweep.models import build_model

    c, size, _ = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(name, num_classes=NUM_CLASSES, in_channels=c, input_size=size).eval()
    return model, torch.zeros(1, c, size, size)


def prune(kind: str, model, x, target: float, tp_steps: int, threads: int, runtime: str = "torch"):
    """``model`` pruned to ``target`` MACs fraction with pruner ``kind`` (in place, except ``depth``: a copy)."""
    from sweep.engine.channels import prune_to_target
    from sweep.engine.skip import skipped_layers
    from sweep.measure import count_macs

    if kind == "auto":
        prune_to_target(model, x, macs_fraction=target, round_to="auto")
    elif kind == "noround":
        prune_to_target(model, x, macs_fraction=target, round_to=None)
    elif kind.startswith("depth"):
        from sweep.engine.depth_width import prune_depth_and_width

        model, _ = prune_depth_and_width(
            model, x, macs_fraction=target, round_to="auto", importance="l2_latency",
            latency_kw={"threads": threads, "runtime": runtime, "batch": table_batch(kind)})
    elif kind.startswith("latency"):
        prune_to_target(model, x, macs_fraction=target, round_to="auto", importance="l2_latency",
                        latency_kw={"threads": threads, "runtime": runtime, "batch": table_batch(kind)})
    elif kind == "tp":
        import torch_pruning as tp

        base = count_macs(model, x)
        pruner = tp.pruner.MetaPruner(
            model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True,
            pruning_ratio=1.0, max_pruning_ratio=0.9, iterative_steps=tp_steps, round_to=8,
            ignored_layers=skipped_layers(model, x))
        while count_macs(model, x) > target * base and pruner.current_step < tp_steps:
            pruner.step()
    else:
        raise ValueError(f"pruner must be one of {PRUNERS}, but got {kind!r}")
    return model.eval()


def table_batch(pruner: str) -> int:
    """The batch a latency pruner's table (and ``depth``'s plans) is timed at: ``latency`` 1, ``latency_b16`` 16."""
    return int(pruner.split("_b")[1]) if "_b" in pruner else 1


def with_table_batches(pruners: list[str], batches: list[int]) -> list[str]:
    """``pruners`` with one ``latency_bN`` after ``latency`` for every batch N > 1 timed: a user who
    deploys at batch N sets ``measure.latency_batch: N`` and the table is timed at N."""
    out = []
    for p in pruners:
        out.append(p)
        if p in ("latency", "depth"):
            out += [f"{p}_b{b}" for b in batches if b != 1]
    return out


def interleaved_latency(models: list, shape: tuple, batch: int, repeats: int, block: int,
                        threads: int, runtime: str = "torch") -> list[float]:
    """Median-of-block-medians latency (ms) of each model on ``runtime``, blocks interleaved with a
    rotating order. Each model is made ready once (exported and loaded on onnxruntime) before timing."""
    from sweep.measure import make_runner, time_runs

    runners = [make_runner(m, shape, batch=batch, threads=threads, runtime=runtime) for m in models]
    for r in runners:  # warm every variant once before the timed rounds
        time_runs(r, warmup=3, repeats=2)
    rounds = -(-repeats // block)
    meds: list[list[float]] = [[] for _ in models]
    n = len(models)
    for r in range(rounds):
        for j in range(n):
            i = (r + j) % n
            meds[i].append(statistics.median(time_runs(runners[i], warmup=1, repeats=block)))
    return [statistics.median(v) for v in meds]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--targets", default="0.5,0.25", help="MACs fractions kept (0.5 = 2x, 0.25 = 4x)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=30, help="timed forwards per variant and batch (>= 30)")
    ap.add_argument("--block", type=int, default=5, help="timed forwards per interleaved block")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (pruning and timing)")
    ap.add_argument("--pruners", default=",".join(PRUNERS))
    ap.add_argument("--tp-steps", type=int, default=100, help="Torch-Pruning iterative_steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runtime", default="onnxruntime", choices=RUNTIMES,
                    help="deployment runtime: the latency pruner's table is timed on it, the last line reports it")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES),
                    help="runtimes timed side by side (comma list; --runtime is added when missing)")
    ap.add_argument("--ours", default="depth", choices=PRUNERS,
                    help="the pruner the last line reports as ours (default: the latency-aware one that may "
                         "also remove blocks, magnitude's importance: l2_latency with depth: true)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {', '.join(QUICK_MODELS)}, target 0.5, batch 1")
    args = ap.parse_args(argv)
    if args.block < 2:
        ap.error(f"block must be >= 2 (measure_latency needs two timings), but got block={args.block}")
    if args.quick:
        args.models, args.targets, args.batches = ",".join(QUICK_MODELS), "0.5", "1"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        ap.error(f"models must be among {', '.join(MODELS)}, but got {', '.join(bad)}")
    targets = [float(t) for t in args.targets.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    pruners = [p.strip() for p in args.pruners.split(",")]
    if any(p not in PRUNERS for p in pruners):
        ap.error(f"pruners must be among {', '.join(PRUNERS)}, but got {args.pruners}")
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if any(r not in RUNTIMES for r in runtimes):
        ap.error(f"runtimes must be among {', '.join(RUNTIMES)}, but got {args.runtimes}")
    runtimes = list(dict.fromkeys([*runtimes, args.runtime]))
    pruners = with_table_batches(pruners, batches)

    from importlib.metadata import version

    from sweep.measure import runtime_label

    torch.set_num_threads(args.threads)
    t_start = time.time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# latency_efficiency  {_dt.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}"
          f"  torch-pruning {version('torch-pruning')}  python {platform.python_version()}")
    print(f"# CPU: {cpu_name()} ({os.cpu_count()} logical cores), threads={args.threads}, "
          f"load avg at start {load:.2f}; latency: median of block medians, >= {args.repeats} timed "
          f"forwards per variant in blocks of {args.block}, variants interleaved; tp iterative_steps={args.tp_steps}")
    print("# inputs: " + ", ".join(f"{m} {MODELS[m][0]}x{MODELS[m][1]}x{MODELS[m][1]}" for m in models))
    print("# runtimes: " + ", ".join(f"{SHORT[r]} = {runtime_label(r)}" for r in runtimes)
          + f" ({args.threads} intra-op threads; onnxruntime: 1 inter-op thread, sequential); "
          f"the latency pruner's table is timed on {args.runtime} at batch 1 (latency_bN: at batch N)")
    cols = [(r, b) for b in batches for r in runtimes]
    lat_cols = "".join(f" {SHORT[r] + ' ms b' + str(b):>11} {SHORT[r] + ' eff b' + str(b):>11}" for r, b in cols)
    head = f"{'model':<26}{'target':>7} {'pruner':<11}{'MACs':>7}{'params':>7}{lat_cols} {'prune s':>8}"
    print(head)
    print("-" * len(head))
    sys.stdout.flush()

    from sweep.measure import count_macs, count_params

    summary: dict = {}  # pruner -> [(|achieved MACs fraction - target|, latency ratio at the first batch)]
    effs: dict = {}  # (pruner, runtime, batch, target) -> [speed-up efficiency of each model]
    for name in models:
        dense, x = build(name, args.seed)
        macs0, params0 = count_macs(dense, x), count_params(dense)
        variants = []  # (target, pruner, model, macs fraction, params fraction, seconds)
        for t in targets:
            for p in pruners:
                m = copy.deepcopy(dense)
                t0 = time.perf_counter()
                try:
                    m = prune(p, m, x, t, args.tp_steps, args.threads, args.runtime)
                except Exception as e:  # a pruner that fails on a model is a row, not a crash
                    print(f"{name:<26}{t:>7.3f} {p:<11} failed: {type(e).__name__}: {e}")
                    continue
                dt = time.perf_counter() - t0
                variants.append((t, p, m, count_macs(m, x) / macs0, count_params(m) / params0, dt))
        lat = {}
        for r, b in cols:
            try:
                lat[r, b] = interleaved_latency([dense] + [v[2] for v in variants], tuple(x.shape[1:]), b,
                                                args.repeats, args.block, args.threads, r)
            except Exception as e:  # a runtime that cannot run a model is a note, not a crash
                print(f"{name:<26} {r} at batch {b} failed: {type(e).__name__}: {str(e)[:200]}")
                lat[r, b] = [float("nan")] * (len(variants) + 1)
        dense_cols = "".join(f" {lat[r, b][0]:>11.3f} {1:>11.2f}" for r, b in cols)
        print(f"{name:<26}{1:>7.3f} {'dense':<11}{1:>7.3f}{1:>7.3f}{dense_cols} {0:>8.1f}")
        for k, (t, p, _, mf, pf, dt) in enumerate(variants, start=1):
            row = ""
            for r, b in cols:
                eff = mf / (lat[r, b][k] / lat[r, b][0])
                row += f" {lat[r, b][k]:>11.3f} {eff:>11.2f}"
                effs.setdefault((p, r, b, t), []).append(eff)
            print(f"{name:<26}{t:>7.3f} {p:<11}{mf:>7.3f}{pf:>7.3f}{row} {dt:>8.1f}")
            first = (args.runtime, batches[0])
            summary.setdefault(p, []).append((abs(mf - t), lat[first][k] / lat[first][0]))
        sys.stdout.flush()
    print(f"# total {time.time() - t_start:.0f} s; load avg at end {os.getloadavg()[0]:.2f}")
    for r in runtimes:
        for t in targets:
            print(f"# median efficiency on {r} at target {t} ({len(models)} models): " + "  ".join(
                f"{p}_b{b}={_median(effs.get((p, r, b, t), [])):.3f}" for p in pruners for b in batches))
    print(summary_line(summary, batches[0]) + f" (runtime={args.runtime})")
    print(f"# last line: the median over the {len(models)} models at the first target, {targets[0]} of the dense "
          f"MACs (the goal: 7 models, a 2x MACs cut)")
    print(efficiency_line(effs, args.runtime, args.ours, targets[0]))
    return 0


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # NaN: a runtime that could not run the model
    return statistics.median(values) if values else float("nan")


def efficiency_line(effs: dict, runtime: str, ours: str, target: float) -> str:
    """The last line: median speed-up efficiency over every model at MACs fraction ``target``, at batch 1 and
    16, of our pruner and of plain Torch-Pruning, on the deployment runtime (nan where that batch or pruner
    was not run)."""
    def pruner_at(p: str, b: int) -> str:  # ours at batch b: pruned with its table timed at b, where it ran
        return f"{p}_b{b}" if b != 1 and (f"{p}_b{b}", runtime, b, target) in effs else p

    parts = [f"{who}_b{b}={_median(effs.get((pruner_at(p, b), runtime, b, target), [])):.3f}"
             for who, p in (("ours", ours), ("tp", "tp")) for b in (1, 16)]
    return f"efficiency: runtime={runtime} " + " ".join(parts)


def summary_line(summary: dict, batch: int) -> str:
    """The one figure line: per pruner, the mean MACs-target error and the geometric-mean latency ratio
    (pruned / dense, at the first batch size) over every model and target it pruned, measured side by side."""
    import math

    parts = []
    for p, rows in summary.items():
        err = sum(e for e, _ in rows) / len(rows)
        gm = math.exp(sum(math.log(r) for _, r in rows) / len(rows))
        parts.append(f"macs_err_{p}={err:.3f} lat_ratio_b{batch}_{p}={gm:.3f}")
    return "latency_efficiency: " + " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
