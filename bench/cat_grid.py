"""``cat`` with its kept channel counts on the engine's rounding grid against the same runs unrounded.

One dense ResNet-20 (one input channel) is trained on a Fashion-MNIST subset through the sweep's own
baseline step, in a temporary sweep folder; then every setting of ``cat`` runs twice from it, through the
sweep's trial runner (``sweep.trial.run_trial``; ``cat`` trains its own epochs and replaces the
fine-tuning), with the same seed:

  grid       ``round_to`` unset (the engine's ``"auto"``: the CPU's vector width on groups of 32 channels or
             more, none below)
  unrounded  ``round_to: 1`` (every unit gated on its own: the method before it kept counts on the grid)

Settings: λ fixed (the paper's mode) and the MACs-target mode (``macs_fraction``, λ adapted; both runs must
land within 3 % of the target, so their latencies compare at equal MACs).  The dense network and every
pruned one are then timed side by side on the deployment runtime (``--runtime``, ONNX Runtime by default;
``sweep.measure.make_runner``, one thread), at batch 1 and 16, interleaved: round after round each network
runs one block of ``--block`` timed forwards, the order rotating by one each round
(``latency_efficiency.interleaved_latency``); a network's latency is the median of its block medians.
Ratios divide by the dense network's latency of the same run, so machine-wide drift cancels;
speed-up efficiency = (dense latency / pruned latency) / (dense MACs / pruned MACs).

    python bench/cat_grid.py --quick       # 1,500 training images, 1 epoch, lam 3 and macs_fraction 0.5
    python bench/cat_grid.py               # 3,000 training images, 2 epochs, lam 1 and 3, macs_fraction 0.5 and 0.25

The last line:

    cat_grid: latency_ratio_grid_over_unrounded_b1=<mean over settings> efficiency_grid_b1=<mean>
    efficiency_unrounded_b1=<mean>   (one line)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from latency_efficiency import interleaved_latency  # noqa: E402
from overhead import load  # noqa: E402

VARIANTS = {"grid": {}, "unrounded": {"round_to": 1}}
SETTINGS = {"lam=1": {"lam": 1.0}, "lam=3": {"lam": 3.0}, "macs=0.5": {"macs_fraction": 0.5},
            "macs=0.25": {"macs_fraction": 0.25}}
QUICK_SETTINGS = ("lam=3", "macs=0.5")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1,500 training images, 1 epoch, two settings")
    p.add_argument("--settings", default=None, help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--epochs", type=int, default=None, help="cat's epochs (all its training)")
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--baseline-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "torch"))
    p.add_argument("--batches", default="1,16")
    p.add_argument("--repeats", type=int, default=40, help="timed forwards per network and batch")
    p.add_argument("--block", type=int, default=5)
    a = p.parse_args(argv)
    a.settings = (a.settings.split(",") if a.settings else list(QUICK_SETTINGS if a.quick else SETTINGS))
    for s in a.settings:
        if s not in SETTINGS:
            p.error(f"--settings must name {', '.join(SETTINGS)}, but got {s!r}")
    a.epochs = a.epochs or (1 if a.quick else 2)
    a.train_subset = a.train_subset or (1500 if a.quick else 3000)
    a.batches = [int(b) for b in a.batches.split(",")]
    return a


def space(args) -> dict:
    from sweep.data.sources import FASHION_MNIST_ROOT, _find_fashion_files

    dataset = {"name": "fashion-mnist", "train_subset": args.train_subset, "val_subset": 1000, "test_subset": 2000}
    if _find_fashion_files(FASHION_MNIST_ROOT) is None:
        print("# Fashion-MNIST not found (apt-get install dataset-fashion-mnist): the embedded digits instead",
              file=sys.stderr)
        dataset = {"name": "digits"}
    return {"name": "cat-grid", "seed": args.seed, "model": {"name": "cifar_resnet20"}, "dataset": dataset,
            "baseline": {"epochs": args.baseline_epochs, "lr": 0.1}, "train": {"batch_size": 128},
            "finetune": {"epochs": args.epochs, "lr": 0.01},
            "search": {"trials": 1, "concurrency": 1, "objectives": ["accuracy", "macs"]},
            "measure": {"latency_batch": 1, "runtime": args.runtime, "remeasure": "none"},
            "methods": {"cat": {}}}


def widths(info: dict) -> str:
    """The inner widths of the residual blocks (``layerS.B.conv1``), as the pruned network has them."""
    ch = info.get("final_structure", {}).get("channels", {})
    return " ".join(str(ch[k]) for k in sorted(ch) if k.startswith("layer") and k.endswith("conv1"))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from sweep.config import parse_config
    from sweep.folder import SweepFolder
    from sweep.measure import count_macs
    from sweep.trial import TrialSpec, load_splits, prepare_baseline, run_trial

    t_start = time.time()
    torch.set_num_threads(1)
    print(f"# cat_grid  {_dt.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
          f"{os.cpu_count()} cores  load {load()}")
    print(f"# ResNet-20 (one input channel), train {args.train_subset} images, baseline {args.baseline_epochs} "
          f"epochs; cat {args.epochs} epoch(s), seed {args.seed}; settings {', '.join(args.settings)}; "
          f"latency on {args.runtime}, 1 thread, batches {args.batches}, {args.repeats} timed forwards each, "
          f"interleaved in blocks of {args.block}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cat-grid-") as tmp:
        cfg = parse_config(space(args), source="bench/cat_grid.py")
        folder = SweepFolder(Path(tmp) / "sweep")
        folder.create(cfg)
        prepare_baseline(cfg, folder, log=lambda m: print(f"#   {m}", file=sys.stderr, flush=True))
        base = folder.baseline()
        dense = folder.load_baseline_model().eval()
        example = load_splits(cfg).example_input(1)
        macs0 = count_macs(dense, example)
        rows = []
        for setting in args.settings:
            for variant, extra in VARIANTS.items():
                knobs = {"epochs": args.epochs, **SETTINGS[setting], **extra}
                t0 = time.time()
                rec = run_trial(cfg, TrialSpec(str(folder.path), f"{setting}-{variant}", "cat", knobs, args.seed),
                                trial_number=0)
                if rec.status != "ok":
                    print(f"# {setting} {variant}: {rec.status} {(rec.error or '')[:300]}", flush=True)
                    return 1
                info = json.loads(rec.info)
                model = folder.load_model(rec.model_path).eval()
                rows.append({"setting": setting, "variant": variant, "model": model,
                             "macs": count_macs(model, example) / macs0, "test": float(rec.test_accuracy),
                             "widths": widths(info), "unit": info.get("round_unit"), "wall": time.time() - t0,
                             "reached": (info.get("macs_target") or {}).get("target_reached")})
                print(f"#   {setting:<9} {variant:<9} macs {rows[-1]['macs']:.3f} test {rows[-1]['test']:.4f} "
                      f"widths {rows[-1]['widths']} ({rows[-1]['wall']:.0f} s, load {load()})", flush=True)
        shape = tuple(example.shape[1:])
        lat = {}
        for b in args.batches:
            ms = interleaved_latency([dense] + [r["model"] for r in rows], shape, b, args.repeats, args.block,
                                     threads=1, runtime=args.runtime)
            lat[b] = (ms[0], ms[1:])
    print(f"# dense: test accuracy {base['test_accuracy']:.4f}, {macs0 / 1e6:.2f} M MACs, latency "
          + ", ".join(f"b{b} {lat[b][0]:.3f} ms" for b in args.batches))
    head = f"{'setting':<10} {'variant':<10} {'unit':>4} {'MACs':>6} {'test acc':>8} "
    head += " ".join(f"{'lat b' + str(b):>8} {'eff b' + str(b):>8}" for b in args.batches) + "  inner widths"
    print(head)
    eff: dict = {v: [] for v in VARIANTS}
    over: list[float] = []
    for i, r in enumerate(rows):
        cells = []
        for b in args.batches:
            ratio = lat[b][1][i] / lat[b][0]
            e = (1.0 / ratio) / (1.0 / r["macs"])
            cells.append(f"{ratio:>8.3f} {e:>8.3f}")
            if b == args.batches[0]:
                r["ratio"], r["eff"] = ratio, e
        print(f"{r['setting']:<10} {r['variant']:<10} {str(r['unit']):>4} {r['macs']:>6.3f} {r['test']:>8.4f} "
              + " ".join(cells) + f"  {r['widths']}")
    for setting in args.settings:
        pair = {r["variant"]: r for r in rows if r["setting"] == setting}
        for v in VARIANTS:
            eff[v].append(pair[v]["eff"])
        over.append(pair["grid"]["ratio"] / pair["unrounded"]["ratio"])
        print(f"# {setting}: latency grid / unrounded at batch {args.batches[0]} {over[-1]:.3f} "
              f"(MACs {pair['grid']['macs']:.3f} / {pair['unrounded']['macs']:.3f}, test accuracy "
              f"{pair['grid']['test']:.4f} / {pair['unrounded']['test']:.4f})")
    print(f"# took {time.time() - t_start:.0f} s, load {load()}")
    mean = statistics.fmean
    b = args.batches[0]
    print(f"cat_grid: latency_ratio_grid_over_unrounded_b{b}={mean(over):.3f} "
          f"efficiency_grid_b{b}={mean(eff['grid']):.3f} efficiency_unrounded_b{b}={mean(eff['unrounded']):.3f}")
    return 0 if all(math.isfinite(x) for x in over) else 1


if __name__ == "__main__":
    sys.exit(main())
