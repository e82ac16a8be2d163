"""Search efficiency: random search, TPE and TPE + MO-ASHA (with rung 0) side by side, per fine-tune epoch.

One space, three strategies, several seeds, in one run, each sweep through ``sweep.driver.run_sweep`` on
the embedded local Ray in a temporary folder (no report):

* space: Fashion-MNIST (Debian's ``dataset-fashion-mnist``; seeded subsets), ``cifar_resnet20`` with one
  input channel on 1x28x28 (as ``search_spaces/fashion_mnist.yaml``), ``magnitude`` with one ratio per
  depth stage (``stage_ratios: {stages: 4, low: 0, high: 0.8}``) where ``sweep.methods`` offers that knob
  family, else its global ``ratio`` in [0.1, 0.8] (the header says which); objectives accuracy and MACs.
* (a) ``random``: Optuna's random sampler, 2N trials, every trial fully fine-tuned;
  (b) ``tpe``: TPE, N trials, every trial fully fine-tuned (the reference);
  (c) ``tpe+asha``: TPE, M trials (default 4N: most candidates stop at rung 0, before any fine-tune
  epoch, or at rung 1, so successive halving spends its epochs on more candidates; with 2N it spent 11-17
  epochs against TPE's 18 and ended below TPE's hypervolume in one seed of three -- see bench/README.md),
  ``search.scheduler: {type: mo_asha, reduction_factor: 3, min_epochs: 1, rung0: true, selection:
  hypervolume}``.
* Per seed the dense baseline is trained once, by the TPE sweep, and handed to the other two as
  ``baseline: <state dict>``: all three judge candidates against the same network and the same figures.
  The seed also draws the data subsets and validation split, so hypervolumes are compared within a seed
  and only ratios are averaged over seeds.

From each sweep's rows (``TrialStore(folder).records()``), in ``ended_at`` order: cumulative fine-tune
epochs (every row's ``finetune_epochs``: ``stopped_early`` rows count the epochs they got) and wall seconds
since the sweep's first trial started, against the sweep's hypervolume after that row -- computed exactly
as the driver does (``sweep.pareto.sweep_hypervolume`` over the ``ok`` rows so far, the dense baseline
included, normalised by the baseline's figures); ``stopped_early`` rows never enter it.

Figures, mean +- std over seeds:

* hypervolume within a budget of fine-tune epochs (and of wall seconds), at fractions of TPE's total;
* compute to reach TPE's final hypervolume: the fine-tune epochs (and seconds) after which a strategy's
  hypervolume first reaches it, as a fraction of TPE's total (``inf``: not reached in this run);
* TPE with N trials against random with 2N trials (same seeds): ratio of final hypervolumes (the sweep's
  hypervolume, which holds the baseline's fixed volume; the ratio of the gains over the baseline alone is
  printed next to it);
* a hard budget (first seed only; ``--budget 0`` skips it): TPE with N trials and ``search.constraints:
  {max_macs: 0.5 x the dense baseline's MACs}`` beside the same seed's TPE sweep without it -- the fine-tune
  epochs each spends on candidates that break the budget (the issue's goal: none with the budget), how many
  of them come in the first and the second half of the trials (the sampler is told, so it should learn the
  feasible region), and the hypervolume of the candidates inside the budget;
* rung-0 Spearman rho: every ``ok`` trial of the TPE sweep is pruned again (same method, knobs, seed and
  baseline: ``sweep.trial.run_trial`` on the TPE sweep's folder, with the MO-ASHA rung-0 setting), its
  quality after adaptive BN (the figure the scheduler judges at rung 0) taken from the rung-0 report and the
  trial stopped there; rho of that quality against the trial's final (fine-tuned) accuracy.  Next to it,
  the same rho for the quality right after pruning without re-estimating BatchNorm (the TPE trials' own
  ``pruned_quality`` metric in the sweep's MLflow store), to show what adaptive BN adds.

    python bench/search_efficiency.py --quick      # 3 seeds, N=6, 600 training images (< 15 min on 2 cores)
    python bench/search_efficiency.py              # 3 seeds, N=12, 3,000 training images, 9 epochs (~2 h on 2 cores)
    python bench/search_efficiency.py --full       # 3 seeds, N=24, all 54,000 training images: a bigger machine

The last line (one line; wrapped here):

    search: asha_epochs_fraction=<epochs to reach TPE's final HV / TPE's epochs>
            tpe_n_over_random_2n=<HV ratio> rung0_spearman=<rho>
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from overhead import load, quiet, ts  # the benchmarks' shared helpers (this script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STRATEGIES = ("random", "tpe", "tpe+asha")
LABELS = {"random": "random (2N)", "tpe": "TPE (N)", "tpe+asha": "TPE+MO-ASHA", "tpe+budget": "TPE (N), budget"}
OBJECTIVES = ["accuracy", "macs"]
STAGE_RATIOS = {"stages": 4, "low": 0.0, "high": 0.8}  # issue 12, item 4
GLOBAL_RATIO = {"low": 0.1, "high": 0.8}  # search_spaces/fashion_mnist.yaml's range
SCHEDULER = {"type": "mo_asha", "reduction_factor": 3, "min_epochs": 1, "rung0": True, "selection": "hypervolume"}
# budgets at which the hypervolume curves are printed, as fractions of the TPE sweep's total
CURVE_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0)

# the budget sweep (first seed only): TPE with search.constraints {max_macs: this x the baseline's MACs};
# per-stage ratios in [0, 0.8] leave a candidate 0.04-1 of the MACs, about 0.4 on average (each stage's
# convolutions keep (1 - r)^2), so about half of an unconstrained sweep's candidates break this budget
BUDGET_MACS_FRACTION = 0.5

# TPE+MO-ASHA's trials per TPE trial (M = ASHA_TRIALS_PER_N * N), see the module docstring
ASHA_TRIALS_PER_N = 4

# Presets.  quick: sized to finish in under 15 minutes on 2 cores (about 45 k training-image passes per
# seed, most of them fine-tuning; ResNet-20 trains at one to two hundred 28x28 images a second per core);
# default: a longer run on the same machine, fine-tuning 9 epochs so that successive halving has the
# rungs 0, 1, 3 and 9 (with 3 epochs only 0, 1 and 3: at most two chances to stop a candidate early);
# full: the whole training set, for a machine with more cores (concurrency follows the cores there).
PRESETS = {
    "quick": dict(trials=6, train_subset=600, val_subset=400, test_subset=200, baseline_epochs=4,
                  finetune_epochs=3),
    "default": dict(trials=12, train_subset=3000, val_subset=1000, test_subset=1000, baseline_epochs=5,
                    finetune_epochs=9),
    "full": dict(trials=24, train_subset=None, val_subset=2000, test_subset=None, baseline_epochs=10,
                 finetune_epochs=9),
}


# ------------------------------------------------------------------------------------------ config
def dataset_options(args) -> dict:
    from sweep.data.sources import FASHION_MNIST_ROOT, _find_fashion_files

    if args.dataset == "fashion-mnist" and _find_fashion_files(args.root or FASHION_MNIST_ROOT) is None:
        return {}  # main() says so and falls back to digits
    opts = {"name": args.dataset}
    if args.dataset == "fashion-mnist" and args.root:
        opts["root"] = args.root
    for key in ("train_subset", "val_subset", "test_subset"):
        if getattr(args, key):
            opts[key] = getattr(args, key)
    return opts


def asha_epoch_budget(args) -> int:
    """The TPE+MO-ASHA sweeps' ``search.epoch_budget`` (``--asha-epoch-budget``): that fraction of the
    fine-tune epochs the TPE sweep spends (N trials x the full fine-tune)."""
    return max(1, round(args.asha_epoch_budget * args.trials * args.finetune_epochs))


def space_dict(args, *, seed: int, strategy: str, knobs: dict, baseline: Path | None, dataset: dict,
               constraints: dict | None = None) -> dict:
    """The search space of one sweep, as the YAML would hold it (``constraints``: its search.constraints)."""
    search = {"trials": {"random": 2 * args.trials, "tpe": args.trials, "tpe+asha": args.asha_trials,
                         "tpe+budget": args.trials}[strategy],
              "concurrency": args.concurrency, "sampler": "random" if strategy == "random" else "tpe",
              "objectives": list(OBJECTIVES), "cpus_per_trial": 1}
    if args.reproducible:
        search["reproducible"] = True
    if strategy == "tpe+asha":
        search["scheduler"] = {**SCHEDULER, "rung0": not args.asha_no_rung0}
        if args.asha_rung0_eta is not None:
            search["scheduler"]["rung0_reduction_factor"] = args.asha_rung0_eta
        if args.asha_rung0_front:
            search["scheduler"]["rung0_keeps_front"] = True
        if args.asha_epoch_budget:
            search["epoch_budget"] = asha_epoch_budget(args)
        if args.asha_keep:
            search["scheduler"]["keep"] = args.asha_keep
        if args.asha_promote:
            search["scheduler"]["promote"] = True
        if args.asha_promote_every:
            search["scheduler"]["promote_every"] = args.asha_promote_every
        if args.asha_brackets:
            search["scheduler"]["brackets"] = args.asha_brackets
    if constraints:
        search["constraints"] = dict(constraints)
    return {
        "name": f"se-{strategy.replace('+', '-')}-s{seed}",
        "seed": seed,
        "model": {"name": "cifar_resnet20"},
        "dataset": dict(dataset),
        # one baseline per seed: trained by the first sweep of the seed, then read by the others
        "baseline": {"path": str(baseline)} if baseline else {"epochs": args.baseline_epochs, "lr": 0.1},
        "train": {"batch_size": 128},
        "finetune": {"epochs": args.finetune_epochs, "lr": 0.01},
        "search": search,
        # latency is no objective here: timed briefly, on eager torch (no ONNX export per trial), never again
        "measure": {"latency_batch": 1, "warmup": 1, "repeats": 3, "runtime": "torch", "remeasure": "none"},
        "methods": {"magnitude": dict(knobs)},
    }


def magnitude_knobs(args, dataset: dict) -> tuple[dict, str]:
    """The per-stage ratio knob family where ``sweep.methods`` offers it, else the global ratio: probed by
    parsing the space with it (an unknown knob is a ConfigError), so no method is named in code twice."""
    from sweep.config import parse_config
    from sweep.errors import ConfigError

    family = {"stage_ratios": dict(STAGE_RATIOS, stages=args.stages)}
    probe = space_dict(args, seed=0, strategy="tpe", knobs=family, baseline=None, dataset=dataset)
    try:
        parse_config(probe, source="bench/search_efficiency.py")
    except ConfigError as e:
        why = " ".join(str(e).split(" (")[0].split())[:120]  # what is wrong, without where and the knob list
        return {"ratio": dict(GLOBAL_RATIO)}, (f"magnitude, global ratio in [{GLOBAL_RATIO['low']}, "
                                               f"{GLOBAL_RATIO['high']}] (stage_ratios not offered here: {why})")
    return family, (f"magnitude, per-stage ratios (stage_ratios: stages {args.stages}, low {STAGE_RATIOS['low']}, "
                    f"high {STAGE_RATIOS['high']})")


# ------------------------------------------------------------------------------------------ one sweep
@dataclass
class Sweep:
    strategy: str
    seed: int
    folder: Path
    wall_s: float  # run_sweep, Ray start to return
    records: list = field(default_factory=list)  # trial rows (baseline apart)
    baseline: object = None  # the baseline row
    meta: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)  # (cum epochs, wall s, hv) from (0, 0, hv of the baseline alone)

    @property
    def epochs(self) -> float:
        return self.curve[-1][0]

    @property
    def seconds(self) -> float:
        return self.curve[-1][1]

    @property
    def hv(self) -> float:
        return self.curve[-1][2]

    @property
    def hv0(self) -> float:
        return self.curve[0][2]

    def count(self, status: str) -> int:
        return sum(1 for r in self.records if r.status == status)


def run_one(args, work: Path, *, seed: int, strategy: str, knobs: dict, baseline: Path | None,
            dataset: dict, constraints: dict | None = None) -> Sweep:
    from sweep.config import parse_config
    from sweep.driver import run_sweep
    from sweep.results.store import TrialStore

    folder = work / f"s{seed}-{strategy.replace('+', '-')}"
    cfg = parse_config(space_dict(args, seed=seed, strategy=strategy, knobs=knobs, baseline=baseline,
                                  dataset=dataset, constraints=constraints),
                       source=f"bench/search_efficiency.py ({strategy}, seed {seed})")

    def log(msg: str) -> None:
        if args.verbose:
            print(f"  | {strategy} s{seed}: {msg}", file=sys.stderr, flush=True)

    print(f"# seed {seed}: {LABELS[strategy]}, {cfg.search.trials} trials ... (load {load()})", file=sys.stderr,
          flush=True)
    t0 = time.time()
    outcome = run_sweep(cfg, folder, report_root=None, log=log)
    if outcome.interrupted:  # Ctrl-C or SIGTERM while its trials ran: the benchmark stops, not only this sweep
        raise KeyboardInterrupt(f"the {strategy} sweep of seed {seed} was interrupted")
    wall = time.time() - t0
    records, meta = TrialStore(folder).records()
    sw = Sweep(strategy, seed, folder, wall, meta=meta,
               records=[r for r in records if r.trial_id != "baseline"],
               baseline=next((r for r in records if r.trial_id == "baseline"), None))
    sw.curve = curve(sw)
    print(f"#   done in {wall:.0f} s: {len(sw.records)} rows, {sw.count('ok')} ok, {sw.count('stopped_early')} "
          f"stopped early, {sw.count('infeasible')} infeasible, {sw.epochs:.0f} fine-tune epochs, HV {sw.hv:.4f}",
          file=sys.stderr, flush=True)
    return sw


def curve(sw: Sweep) -> list[tuple[float, float, float]]:
    """(cumulative fine-tune epochs, seconds since the first trial started, hypervolume) after each row in
    ``ended_at`` order, from (0, 0, the baseline's own hypervolume)."""
    ok: list = []
    rows = sorted((r for r in sw.records if r.ended_at is not None), key=lambda r: ts(r.ended_at))
    t0 = min((ts(r.started_at) for r in rows if r.started_at is not None), default=0.0)
    out = [(0.0, 0.0, hv_of(sw, ok))]
    epochs = 0.0
    for r in rows:
        epochs += float(r.finetune_epochs or 0)
        if r.status == "ok":  # stopped_early, failed and infeasible rows spend (or not) but never enter
            ok.append(r)
        out.append((epochs, ts(r.ended_at) - t0, hv_of(sw, ok)))
    return out


def hv_of(sw: Sweep, rows: list) -> float:
    """The sweep's hypervolume as the driver computes it (:func:`sweep.pareto.records_hypervolume`) over these
    ok rows and the baseline's."""
    from sweep.pareto import records_hypervolume

    rows = ([sw.baseline] if sw.baseline is not None and sw.baseline.status == "ok" else []) + list(rows)
    return records_hypervolume(rows, OBJECTIVES, sw.meta["baseline"])


def reach(sw: Sweep, target: float) -> tuple[float, float]:
    """(epochs, seconds) after which ``sw``'s hypervolume first reaches ``target``; inf when it never does."""
    for epochs, secs, hv in sw.curve:
        if hv >= target - 1e-12:  # the same function on the same points: equal volumes compare equal
            return epochs, secs
    return math.inf, math.inf


def within(sw: Sweep, budget: float, axis: int) -> float:
    """Hypervolume reached within ``budget`` epochs (axis 0) or seconds (axis 1); a sweep that finished with
    less keeps its final value."""
    best = sw.curve[0][2]
    for point in sw.curve:
        if point[axis] <= budget + 1e-9:
            best = point[2]
    return best


def export_baseline(sw: Sweep, out: Path) -> Path:
    """The TPE sweep's trained dense model as a state dict (what ``baseline: path`` reads)."""
    import torch

    from sweep.folder import SweepFolder

    torch.save(SweepFolder(sw.folder).load_baseline_model().state_dict(), out)
    return out


# ------------------------------------------------------------------------------------------ budgets
def budget_of(ref: Sweep, fraction: float) -> dict:
    """search.constraints for the budget sweep: MACs at most ``fraction`` of the dense baseline's."""
    return {"max_macs": float(fraction * ref.baseline.macs)}


def by_number(rows: list) -> list:
    """Rows in the order the sampler proposed them (trial numbers)."""
    return sorted(rows, key=lambda r: r.trial_number if r.trial_number is not None else 0)


def print_budget_part(ref: Sweep, budget: Sweep, fraction: float) -> int:
    """What a hard budget does to a sweep, side by side with the same seed's sweep without it: the epochs each
    spends on candidates that break the budget (goal: none in the budget sweep), how many of its candidates
    break it early and late (the sampler is told, so it should learn to stay inside), and the hypervolume
    of the candidates inside the budget.  Returns the budget sweep's fine-tune epochs on infeasible rows."""
    limit = budget_of(ref, fraction)["max_macs"]

    def breaking(rows: list) -> list:
        return [r for r in rows if r.macs is not None and r.macs > limit]

    inside = [r for r in ref.records if r.status == "ok" and r.macs is not None and r.macs <= limit]
    wasted_ref = sum(float(r.finetune_epochs or 0) for r in breaking(ref.records))
    infeasible = [r for r in budget.records if r.status == "infeasible"]
    wasted = sum(float(r.finetune_epochs or 0) for r in infeasible + breaking(
        [r for r in budget.records if r.status != "infeasible"]))
    rows = by_number(budget.records)
    half = len(rows) // 2
    early = sum(r.status == "infeasible" for r in rows[:half])
    late = sum(r.status == "infeasible" for r in rows[half:])
    ref_rows = by_number(ref.records)
    ref_early, ref_late = len(breaking(ref_rows[:half])), len(breaking(ref_rows[half:]))
    print(f"# budget: search.constraints max_macs = {fraction:g} x the dense baseline's MACs = {limit:,.0f} "
          f"(seed {ref.seed}, TPE, {len(rows)} trials), against the same seed's TPE sweep without it")
    head = (f"{'sweep':<16}{'rows':>5}{'ok':>4}{'infeasible':>11}{'fail':>5}{'ft epochs':>10}"
            f"{'on over-budget':>16}{'over budget 1st/2nd half':>26}{'HV inside budget':>18}")
    print(head)
    print("-" * len(head))
    print(f"{'TPE, no budget':<16}{len(ref.records):>5}{ref.count('ok'):>4}{'-':>11}{ref.count('failed'):>5}"
          f"{ref.epochs:>10.0f}{wasted_ref:>16.0f}{f'{ref_early}/{half} {ref_late}/{len(ref_rows) - half}':>26}"
          f"{hv_of(ref, inside):>18.4f}")
    print(f"{'TPE, budget':<16}{len(rows):>5}{budget.count('ok'):>4}{len(infeasible):>11}{budget.count('failed'):>5}"
          f"{budget.epochs:>10.0f}{wasted:>16.0f}{f'{early}/{half} {late}/{len(rows) - half}':>26}"
          f"{hv_of(budget, [r for r in budget.records if r.status == 'ok']):>18.4f}")
    print("# 'on over-budget': fine-tune epochs spent on candidates whose MACs break the budget (goal: 0 with the "
          "budget); 'over budget': such candidates among the first and the second half of the trials, by trial "
          "number (the sampler is told the budget sweep's); 'HV inside budget': the hypervolume of the ok rows "
          "within the budget, baseline included")
    return int(wasted)


# ------------------------------------------------------------------------------------------ rung 0
class _Rung0(BaseException):
    """Raised from the rung-0 report to end the trial there, as the scheduler ends a stopped trial (its
    report never returns); a BaseException so that run_trial does not record it as a failed trial."""

    def __init__(self, quality: float):
        super().__init__(quality)
        self.quality = quality


def rung0_qualities(sw: Sweep, args) -> list[tuple[float, float, float]]:
    """(rung-0 quality after adaptive BN, quality right after pruning (MLflow), final accuracy) for every ok
    trial of a fully fine-tuned sweep, each pruned again from its knobs and seed on the sweep's baseline."""
    from sweep.config import parse_config, read_yaml
    from sweep.trial import TrialSpec, run_trial

    # the TPE sweep's own space, with the MO-ASHA sweep's scheduler: the trial then adapts BN and reports rung 0
    raw = read_yaml(sw.folder / "sweep.yaml")
    raw["search"] = {**raw["search"], "scheduler": dict(SCHEDULER)}
    cfg = parse_config(raw, source=f"{sw.folder / 'sweep.yaml'} (rung 0)")
    # both cores for this serial pass (a thread count changes no figure beyond float rounding)
    cfg = replace(cfg, measure=replace(cfg.measure, threads=max(1, os.cpu_count() or 1)))
    before = pruned_quality_from_mlflow(sw)
    out = []
    for r in sorted(sw.records, key=lambda r: r.trial_number if r.trial_number is not None else 0):
        if r.status != "ok" or r.accuracy is None:
            continue

        def report(epochs: int, record) -> None:
            if epochs == 0:
                raise _Rung0(float(record.get(cfg.quality)))

        spec = TrialSpec(str(sw.folder), f"rung0-{r.trial_id}", r.method, dict(r.knobs), int(r.seed))
        q0 = math.nan
        try:
            rec = run_trial(cfg, spec, trial_number=r.trial_number, report_rung=report)
            print(f"#   (rung 0 of {r.trial_id} was not reported: {rec.status} {rec.error[:120]})", file=sys.stderr)
        except _Rung0 as stop:
            q0 = stop.quality
        out.append((q0, before.get(r.trial_id, math.nan), float(r.accuracy)))
    return out


def pruned_quality_from_mlflow(sw: Sweep) -> dict:
    """trial id -> its ``pruned_quality`` metric (quality right after pruning, before any fine-tune epoch;
    without rung 0 the BatchNorm statistics are the dense network's) from the sweep's MLflow store."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{sw.folder / 'mlflow.db'}")
        out = {}
        for r in sw.records:
            if r.mlflow_run_id:
                hist = client.get_metric_history(r.mlflow_run_id, "pruned_quality")
                if hist:
                    out[r.trial_id] = float(hist[0].value)
        return out
    except Exception as e:
        print(f"# (pruned_quality not readable from MLflow: {type(e).__name__}: {e})", file=sys.stderr)
        return {}


def spearman(xs: list[float], ys: list[float]) -> float:
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return math.nan
    return float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)


# ------------------------------------------------------------------------------------------ printing
def mean_std(xs: list[float], digits: int = 3) -> str:
    """``mean +- std`` over seeds; ``inf`` when one is infinite (not reached), ``nan`` when none is finite."""
    if any(math.isinf(x) for x in xs):
        return "inf"
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return "nan"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def mean(xs: list[float]) -> float:
    if any(math.isinf(x) for x in xs):
        return math.inf
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.mean(xs) if xs else math.nan


def fmt(x: float, digits: int = 3) -> str:
    return "inf" if math.isinf(x) else "nan" if math.isnan(x) else f"{x:.{digits}f}"


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="under 15 minutes on 2 cores")
    size.add_argument("--full", action="store_true", help="whole training set, longer fine-tunes: a bigger machine")
    ap.add_argument("--seeds", default="0,1,2", help="sweep seeds (comma list)")
    ap.add_argument("--trials", type=int, help="N: TPE's trials; random gets 2N")
    ap.add_argument("--asha-trials", type=int, help=f"TPE+MO-ASHA's trials (default {ASHA_TRIALS_PER_N}N)")
    ap.add_argument("--concurrency", type=int, help="trials at a time (default 2; --full: the cores, at most 8)")
    ap.add_argument("--finetune-epochs", type=int)
    ap.add_argument("--baseline-epochs", type=int)
    ap.add_argument("--train-subset", type=int)
    ap.add_argument("--val-subset", type=int)
    ap.add_argument("--test-subset", type=int)
    ap.add_argument("--stages", type=int, default=STAGE_RATIOS["stages"], help="depth stages of stage_ratios")
    ap.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (falls back to digits when missing)")
    ap.add_argument("--root", help="Fashion-MNIST folder (default: Debian's)")
    ap.add_argument("--no-rung0", action="store_true", help="skip the rung-0 Spearman measurement")
    ap.add_argument("--no-random", action="store_true", help="skip the random sweeps (TPE vs TPE+MO-ASHA only; "
                    "tpe_n_over_random_2n is then nan)")
    ap.add_argument("--reconstruct", action="store_true", help="magnitude re-fits every layer to the unpruned "
                    "network's outputs before fine-tuning (reconstruct: true, fixed), in every strategy's space")
    ap.add_argument("--asha-no-rung0", action="store_true",
                    help="TPE+MO-ASHA without rung 0: every candidate fine-tunes at least min_epochs before it is "
                         "judged (rungs 1, 3, 9)")
    ap.add_argument("--asha-rung0-eta", type=int, help="TPE+MO-ASHA's rung0_reduction_factor: keep the top "
                    "⌊n/η₀⌋ + 1 at rung 0 (default: the reduction factor, 3)")
    ap.add_argument("--asha-rung0-front", action="store_true", help="TPE+MO-ASHA's rung0_keeps_front: every "
                    "trial on rung 0's first front goes on, so rung 0 stops only dominated trials")
    ap.add_argument("--asha-keep", choices=("syne_tune", "asha", "promotable"), help="TPE+MO-ASHA's "
                    "search.scheduler.keep: how many of a rung's n results go on, ⌊n/η⌋ + 1 (syne_tune, the "
                    "default), max(1, ⌊n/η⌋) (asha) or ⌊n/η⌋ (promotable, meant with --asha-promote)")
    ap.add_argument("--asha-promote", action="store_true", help="TPE+MO-ASHA's search.scheduler.promote: once no "
                    "candidate is left, the trials stopped at a rung that the grown rung ranks in its top ⌊n/η⌋ go "
                    "on from there (ASHA's promotions, at the end)")
    ap.add_argument("--asha-promote-every", type=int, help="TPE+MO-ASHA's search.scheduler.promote_every (with "
                    "--asha-promote): promotions run after every that many new candidates, not only at the end")
    ap.add_argument("--asha-brackets", type=int, help="TPE+MO-ASHA's search.scheduler.brackets: the trials spread "
                    "over Hyperband's brackets, bracket b judged from the b-th rung on (default 1: every trial from "
                    "the first rung)")
    ap.add_argument("--asha-epoch-budget", type=float, help="the TPE+MO-ASHA sweeps' search.epoch_budget, as a "
                    "fraction of the TPE sweep's fine-tune epochs (e.g. 1: as many as TPE's; --asha-trials then "
                    "only caps the candidates); default: none, the sweep ends with its trials")
    ap.add_argument("--reproducible", action="store_true", help="every sweep with search.reproducible: its "
                    "sampler sees the trials in the order it drew them, concurrency behind, so its draws do not "
                    "depend on the machine's load (which rung stops a trial under MO-ASHA still may)")
    ap.add_argument("--budget", type=float, default=BUDGET_MACS_FRACTION,
                    help="the budget sweep's max_macs as a fraction of the dense baseline's MACs "
                         f"(default {BUDGET_MACS_FRACTION}); 0: no budget sweep")
    ap.add_argument("--verbose", action="store_true", help="the sweeps' progress lines on stderr")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    args = ap.parse_args(argv)
    preset = "quick" if args.quick else "full" if args.full else "default"
    for key, value in PRESETS[preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.concurrency is None:
        args.concurrency = max(2, min(8, os.cpu_count() or 1)) if args.full else 2
    if args.asha_trials is None:
        args.asha_trials = ASHA_TRIALS_PER_N * args.trials
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.trials < 1 or args.asha_trials < 1 or not seeds or args.finetune_epochs < 1:
        ap.error("--trials, --asha-trials and --finetune-epochs must be >= 1, and --seeds non-empty")
    if args.asha_epoch_budget is not None and not args.asha_epoch_budget > 0:
        ap.error(f"--asha-epoch-budget must be > 0, but got --asha-epoch-budget {args.asha_epoch_budget}")
    if args.asha_rung0_eta is not None and (args.asha_no_rung0 or args.asha_rung0_eta < 2):
        ap.error(f"--asha-rung0-eta must be an integer >= 2 and needs rung 0 (no --asha-no-rung0), but got "
                 f"--asha-rung0-eta {args.asha_rung0_eta}")

    quiet()
    t_start = time.time()
    load_start = load()
    args.data = dataset_options(args)
    note = ""
    if not args.data:
        note = (f" (Fashion-MNIST files not found under {args.root or '/usr/share/datasets/fashion-mnist'}: "
                f"`apt-get install dataset-fashion-mnist`; fell back to the embedded digits)")
        args.dataset = "digits"
        args.data = {"name": "digits"}
    args.knobs, method_line = magnitude_knobs(args, args.data)
    if args.reconstruct:
        args.knobs["reconstruct"] = True
        method_line += ", reconstruct: true (every layer re-fitted to the unpruned network before fine-tuning)"
    strategies = tuple(s for s in STRATEGIES if not (args.no_random and s == "random"))

    from importlib.metadata import version

    import torch

    budget_line = (f"budget sweep (seed {seeds[0]}): TPE {args.trials}, max_macs {args.budget:g} x the baseline's"
                   if args.budget > 0 else "no budget sweep")
    print(f"# search_efficiency  {_dt.datetime.now().isoformat(timespec='seconds')}  sweep {version('sweep')}  "
          f"ray {version('ray')}  optuna {version('optuna')}  torch {torch.__version__}  torch-pruning "
          f"{version('torch-pruning')}  python {sys.version.split()[0]}  {os.cpu_count()} cores  preset {preset}")
    subsets = ", ".join(f"{k.split('_')[0]} {args.data[k]}" for k in ("train_subset", "val_subset", "test_subset")
                        if k in args.data)
    print(f"# space: {args.dataset}{' (' + subsets + ')' if subsets else ''}{note}, cifar_resnet20 (one input "
          f"channel), {method_line}; objectives {', '.join(OBJECTIVES)}")
    print(f"# baseline {args.baseline_epochs} epochs (trained once per seed, shared by the three), fine-tune "
          f"{args.finetune_epochs} epochs; seeds {','.join(map(str, seeds))}; N={args.trials}: random "
          f"{'skipped (--no-random)' if args.no_random else str(2 * args.trials) + ' trials'}, TPE {args.trials}, "
          f"TPE+MO-ASHA {args.asha_trials} (reduction_factor "
          f"{SCHEDULER['reduction_factor']}, min_epochs {SCHEDULER['min_epochs']}, "
          f"{'no rung 0' if args.asha_no_rung0 else 'rung0'}"
          f"{'' if args.asha_rung0_eta is None else f' with rung0_reduction_factor {args.asha_rung0_eta}'}"
          f"{', rung0_keeps_front' if args.asha_rung0_front else ''}, selection "
          f"{SCHEDULER['selection']}{f', keep {args.asha_keep}' if args.asha_keep else ''}"
          f"{', promote' if args.asha_promote else ''}"
          f"{f' every {args.asha_promote_every} candidates' if args.asha_promote_every else ''}"
          f"{f', brackets {args.asha_brackets}' if args.asha_brackets else ''}"
          f"{'' if not args.asha_epoch_budget else f', epoch_budget {asha_epoch_budget(args)}'}); "
          f"{budget_line}; "
          f"{args.concurrency} at a time, 1 CPU each{', reproducible draws' if args.reproducible else ''}")
    print(f"# load avg (1/5/15 min) at start {load_start}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    sweeps: dict[int, dict[str, Sweep]] = {}
    rho: dict[int, list] = {}
    # One embedded Ray for every sweep, started by sweep's own start-up (token auth, private temp folder, Tune
    # settings) before the first: run_sweep then uses it and leaves it up, so nine sweeps pay one Ray start.
    # Ray is not imported before this, or the embedded Ray would run without its token.
    from sweep.driver import _ray_init, _ray_shutdown

    def note(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr)

    def on_sigterm(signum, frame):  # outside a sweep's trials (a sweep handles SIGTERM itself, above)
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)
    started = _ray_init(None, work, None, log=note)
    finished = False
    try:
        for i, seed in enumerate(seeds):
            runs = sweeps[seed] = {}
            runs["tpe"] = run_one(args, work, seed=seed, strategy="tpe", knobs=args.knobs, baseline=None,
                                  dataset=args.data)
            if runs["tpe"].baseline is None:
                raise SystemExit(f"the TPE sweep of seed {seed} wrote no baseline row")
            state = export_baseline(runs["tpe"], work / f"baseline-s{seed}.pt")
            # the other two alternate their order over seeds, so that a load change does not always hit one
            for strategy in (("random", "tpe+asha") if i % 2 == 0 else ("tpe+asha", "random")):
                if strategy not in strategies:
                    continue
                runs[strategy] = run_one(args, work, seed=seed, strategy=strategy, knobs=args.knobs,
                                         baseline=state, dataset=args.data)
            if args.budget > 0 and i == 0:
                runs["tpe+budget"] = run_one(args, work, seed=seed, strategy="tpe+budget", knobs=args.knobs,
                                             baseline=state, dataset=args.data,
                                             constraints=budget_of(runs["tpe"], args.budget))
            if not args.no_rung0:
                print(f"# seed {seed}: rung 0 of the TPE trials, pruned again ... (load {load()})", file=sys.stderr,
                      flush=True)
                rho[seed] = rung0_qualities(runs["tpe"], args)
        finished = True
    finally:  # sweep's own shutdown: its session folder goes with it; an interrupted run leaves nothing behind
        _ray_shutdown(started, note)
        if not finished and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load_end = load()

    # ---------------------------------------------------------------- per seed
    print("# per seed (HV: the sweep's hypervolume, baseline included; 'to TPE HV': fine-tune epochs / seconds "
          "after which the sweep first reached the TPE sweep's final HV of that seed)")
    head = (f"{'seed':>4}  {'strategy':<13}{'rows':>5}{'ok':>4}{'early':>6}{'fail':>5}{'ft epochs':>10}"
            f"{'trial s':>9}{'sweep s':>9}{'HV':>8}{'HV gain':>9}{'to TPE HV ep':>14}{'(frac)':>8}"
            f"{'to TPE HV s':>13}{'(frac)':>8}")
    print(head)
    print("-" * len(head))
    frac_e: dict[str, list] = {s: [] for s in strategies}
    frac_s: dict[str, list] = {s: [] for s in strategies}
    ratio, gain_ratio, random_n = [], [], []
    for seed in seeds:
        ref = sweeps[seed]["tpe"]
        ran_out = []
        for strategy in strategies:
            sw = sweeps[seed][strategy]
            ep, secs = reach(sw, ref.hv)
            if strategy != "tpe" and math.isinf(ep) and sw.epochs < ref.epochs:
                # not reached, with compute left: its trials ran out, not its budget (bench/README.md)
                ran_out.append(f"#   seed {seed}: {LABELS[strategy]} ran out of trials: {len(sw.records)} ended after "
                               f"{sw.epochs:.0f} fine-tune epochs ({sw.epochs / ref.epochs:.2f} of TPE's) at HV "
                               f"{sw.hv:.4f} against TPE's {ref.hv:.4f}")
            fe = ep / ref.epochs if ref.epochs else math.nan
            fs = secs / ref.seconds if ref.seconds else math.nan
            frac_e[strategy].append(fe)
            frac_s[strategy].append(fs)
            print(f"{seed:>4}  {LABELS[strategy]:<13}{len(sw.records):>5}{sw.count('ok'):>4}"
                  f"{sw.count('stopped_early'):>6}{sw.count('failed'):>5}{sw.epochs:>10.0f}{sw.seconds:>9.0f}"
                  f"{sw.wall_s:>9.0f}{sw.hv:>8.4f}{sw.hv - sw.hv0:>9.4f}{fmt(ep, 0):>14}{fmt(fe, 2):>8}"
                  f"{fmt(secs, 0):>13}{fmt(fs, 2):>8}")
        for line in ran_out:
            print(line)
        if "random" not in strategies:
            continue
        rnd = sweeps[seed]["random"]
        ratio.append(ref.hv / rnd.hv if rnd.hv else math.nan)
        gain = rnd.hv - rnd.hv0
        gain_ratio.append((ref.hv - ref.hv0) / gain if gain > 0 else math.nan)
        # random's first N trials (by sampling order) are what random search with N trials would have drawn
        first = sorted(rnd.records, key=lambda r: r.trial_number if r.trial_number is not None else 0)[:args.trials]
        random_n.append(hv_of(rnd, [r for r in first if r.status == "ok"]) / ref.hv)
    print("# 'trial s': seconds from the sweep's first trial start to its last trial end; 'sweep s': the whole "
          "run_sweep call (Ray start, baseline, trials, folding the table); 'HV gain': HV - the baseline's alone")

    # ---------------------------------------------------------------- summary over seeds
    n = len(seeds)
    print(f"# mean ± std over {n} seed{'s' if n > 1 else ''} (inf: not reached in at least one seed)")
    head = (f"{'strategy':<13}{'ft epochs':>16}{'HV':>18}{'epochs to TPE HV / TPE epochs':>32}"
            f"{'s to TPE HV / TPE s':>22}")
    print(head)
    print("-" * len(head))
    for strategy in strategies:
        sws = [sweeps[s][strategy] for s in seeds]
        print(f"{LABELS[strategy]:<13}{mean_std([sw.epochs for sw in sws], 1):>16}"
              f"{mean_std([sw.hv for sw in sws], 4):>18}{mean_std(frac_e[strategy], 2):>32}"
              f"{mean_std(frac_s[strategy], 2):>22}")
    print(f"# TPE (N={args.trials}) / random (2N={2 * args.trials}) final HV: {mean_std(ratio, 4)}; gains over the "
          f"baseline alone: {mean_std(gain_ratio, 3)}; random's first N trials / TPE (N): {mean_std(random_n, 4)}")

    # ---------------------------------------------------------------- curves
    for axis, unit, total in ((0, "fine-tune epochs", "epochs"), (1, "wall seconds since the first trial", "s")):
        print(f"# hypervolume within a budget of {unit}, as a fraction of the TPE sweep's total (mean ± std over "
              f"seeds; a sweep that finished with less keeps its final HV)")
        head = f"{'budget':>8}" + "".join(f"{LABELS[s]:>22}" for s in strategies)
        print(head)
        print("-" * len(head))
        for frac in CURVE_FRACTIONS:
            cells = []
            for strategy in strategies:
                vals = []
                for seed in seeds:
                    ref = sweeps[seed]["tpe"]
                    budget = frac * (ref.epochs if axis == 0 else ref.seconds)
                    vals.append(within(sweeps[seed][strategy], budget, axis))
                cells.append(f"{mean_std(vals, 4):>22}")
            print(f"{frac:>7.1f}x" + "".join(cells))
        tot = [sweeps[s]["tpe"].epochs if axis == 0 else sweeps[s]["tpe"].seconds for s in seeds]
        print(f"# (TPE's total per seed: {', '.join(f'{t:.0f}' for t in tot)} {total})")

    # ---------------------------------------------------------------- rung 0
    rho0, rho_raw = [], []
    if rho:
        print("# rung 0: every ok TPE trial pruned again (same knobs, seed, baseline), quality after adaptive BN on "
              "512 training inputs (the MO-ASHA rung-0 figure) vs its final fine-tuned accuracy; 'no BN "
              "re-estimation': the TPE trial's own quality right after pruning")
        for seed in seeds:
            pts = rho.get(seed, [])
            r0 = spearman([p[0] for p in pts], [p[2] for p in pts])
            rr = spearman([p[1] for p in pts], [p[2] for p in pts])
            rho0.append(r0)
            rho_raw.append(rr)
            q0 = [p[0] for p in pts if math.isfinite(p[0])]
            print(f"#   seed {seed}: {len(pts)} trials, Spearman rho rung 0 (adaptive BN) {fmt(r0)}, no BN "
                  f"re-estimation {fmt(rr)}; rung-0 accuracy {min(q0, default=math.nan):.3f}..."
                  f"{max(q0, default=math.nan):.3f}, final {min((p[2] for p in pts), default=math.nan):.3f}..."
                  f"{max((p[2] for p in pts), default=math.nan):.3f}")
        print(f"# rung-0 Spearman rho over seeds: adaptive BN {mean_std(rho0)}; no BN re-estimation "
              f"{mean_std(rho_raw)}")
    else:
        print("# rung 0: not measured (--no-rung0)")

    budget_seed = next((s for s in seeds if "tpe+budget" in sweeps[s]), None)
    if budget_seed is not None:
        print_budget_part(sweeps[budget_seed]["tpe"], sweeps[budget_seed]["tpe+budget"], args.budget)
    else:
        print("# budget: not measured (--budget 0)")

    took = time.time() - t_start
    print(f"# took {took:.0f} s ({took / 60:.1f} min); load avg (1/5/15 min) at end {load_end}")
    if args.keep:
        print(f"# kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"search: asha_epochs_fraction={fmt(mean(frac_e['tpe+asha']))} tpe_n_over_random_2n={fmt(mean(ratio), 4)} "
          f"rung0_spearman={fmt(mean(rho0))}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: Ray shut down, the temporary folder removed
        print(f"search_efficiency: stopped ({stop or 'Ctrl-C'}); nothing was kept", file=sys.stderr)
        sys.exit(130)
