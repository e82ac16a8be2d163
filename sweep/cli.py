"""Command line: ``sweep run | resume | status | report | select | prune | methods``.

Every user-facing error (a :class:`SweepError`) becomes one line on stderr and exit code 2;
``--debug`` shows the traceback.  Ctrl-C exits with 130 after saving what finished; SIGTERM (what a
cluster scheduler sends) takes the same path during ``run`` / ``resume`` and exits with 143, and so does a
closed output (``sweep run ... | head``: the reader went away), with 141.
Heavy libraries are imported inside the commands so that ``sweep --help`` and ``sweep methods`` are quick.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from .errors import SweepError

# a sweep is running in this process (`run` / `resume`): a closed output stops it (see _log)
_SWEEP_RUNNING: list[bool] = []
# stdout's reader has gone: lines go to stderr from then on
_OUTPUT_CLOSED: list[bool] = []


def _log(msg: str) -> None:
    """One line on stdout; once its reader has gone (``sweep run ... | head``), on stderr.

    A closed pipe stops a running sweep as SIGTERM does -- the Unix way for a writer whose reader left, with
    the books closed (finished trials kept, running ones recorded as stopped, runs closed) and exit code 141
    -- instead of ending it with a driver error; other commands finish their work."""
    if _OUTPUT_CLOSED:
        print(msg, file=sys.stderr, flush=True)
        return
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        _output_closed(msg)


def _output_closed(msg: str) -> None:
    """stdout's reader has gone while writing ``msg``: it and the lines after it go to stderr, and a running
    sweep is stopped (from the main thread at once, from another at Ray Tune's next step)."""
    import threading

    from .driver import OUTPUT_CLOSED, ask_stop, interrupt

    _OUTPUT_CLOSED.append(True)
    # the interpreter flushes stdout at exit: onto /dev/null now, not into the closed pipe (another error)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    print(msg, file=sys.stderr, flush=True)
    if not _SWEEP_RUNNING:
        return
    if threading.current_thread() is threading.main_thread():
        interrupt(OUTPUT_CLOSED)
    else:
        ask_stop(OUTPUT_CLOSED)


def _listing(lines) -> int:
    """Print a read-only listing (``sweep status``, ``sweep methods``) on stdout; exit code 0, or 141 when its
    reader has gone (``sweep methods | head -3``): the listing stops there, as ``ls | head`` does -- nothing
    is lost by dropping the rest, so unlike a running sweep's log it does not go on on stderr."""
    for line in lines:
        try:
            print(line, flush=True)
        except BrokenPipeError:
            # the interpreter flushes stdout at exit: onto /dev/null, not into the closed pipe (another error)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return 141
    return 0


def _quiet_libraries() -> None:
    import logging
    import warnings

    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by MLflow at import, also in Ray workers
    for name in ("mlflow", "alembic", "ray", "ray.tune", "optuna", "torch_pruning", "torch._export", "torch.export",
                 "torch.onnx", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch_pruning")
    warnings.filterwarnings("ignore", message=".*ExperimentalWarning.*")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    except Exception as e:  # quieter output is a nicety; say why it is missing and go on
        _log(f"warning: could not quiet Optuna's logging: {type(e).__name__}: {e}")


def _none_kept_budget(cfg, infeasible: list) -> str:
    """No trial kept ``search.constraints``: the line that names the candidate that came closest and what it
    broke, so that the next sweep's budget can be set knowingly."""
    from .constraints import budget_words

    limits = cfg.search.constraints
    closest = min(infeasible, key=lambda r: limits.excess(r.to_row(), cfg.quality))
    broke = "; ".join(limits.broken_costs(closest.to_row())) or (closest.error or "").removeprefix("infeasible: ")
    return (f"note: no trial kept search.constraints ({budget_words(dict(limits.items()))}); the closest, trial "
            f"{closest.trial_id} ({closest.method}), broke {broke}: loosen them in {cfg.source} for the next "
            f"sweep")


def _finish(outcome, cfg) -> int:
    from .driver import OUTPUT_CLOSED, SIGTERM
    from .folder import SweepFolder
    from .report import front_table
    from .results.schema import FINISHED

    if outcome.interrupted:
        return {SIGTERM: 143, OUTPUT_CLOSED: 141}.get(outcome.stop_reason, 130)
    import pandas as pd

    df = pd.DataFrame([r.to_row() for r in outcome.records])
    trials = [r for r in outcome.records if not r.is_baseline]
    count = {status: sum(r.status == status for r in trials) for status in FINISHED}
    more = "".join(f", {count[k]} {k.replace('_', ' ')}" for k in ("stopped_early", "infeasible") if count[k])
    _log("")
    _log(f"sweep {cfg.name}: {count['ok']} ok, {count['failed']} failed{more} trial(s) in {outcome.wall_s:.0f} s")
    if count["infeasible"] and not count["ok"]:
        _log(_none_kept_budget(cfg, [r for r in trials if r.status == "infeasible"]))
    if outcome.stop_reason:  # a budget (time, epochs): a normal end, with the trials it has
        _log(f"{outcome.stop_reason}: {sum(count.values())} of {cfg.search.trials} trials finished; to run the "
             f"rest, raise the budget in {SweepFolder(outcome.sweep_dir).config_path} and `sweep resume "
             f"{outcome.sweep_dir}`")
    if outcome.fit_s and outcome.trials_run:
        wall, slot = outcome.overhead()
        _log(f"trials ran {outcome.fit_s:.1f} s ({outcome.trials_run} trials, {outcome.concurrency} at a time, "
             f"{outcome.trial_s:.1f} s of trial compute): overhead {wall:.2f} s per trial ({slot:.2f} s of a "
             f"slot's time)")
    _log("Pareto front (" + ", ".join(cfg.search.objectives) + "):")
    _log(front_table(df, list(cfg.search.objectives), quality=cfg.quality))
    if not cfg.labelled_data:
        _log("note: no labelled set was given (dataset.unlabeled alone), so accuracy is unknown: the front and "
             "`sweep select` use agreement with the teacher alone")
    _log(f"results: {outcome.sweep_dir / 'trials.parquet'}")
    uri = outcome.tracking_uri
    _log(f"MLflow:  mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"MLflow:  {uri}")
    if outcome.report_dir is not None:
        _log(f"report:  {(outcome.report_dir / 'index.html').resolve()}")
    _log(f"choose:  sweep select {outcome.sweep_dir} --max-latency-ms X | --max-params N | --min-{cfg.quality} A"
         + (" (the sweep's search.constraints apply too)" if cfg.search.constraints else ""))
    if count["failed"] and count["failed"] == len(trials):  # a script's `sweep run ... && ...` must not go on
        print(f"sweep: every trial failed ({count['failed']}): their errors are in the table's error column "
              f"(`sweep status {outcome.sweep_dir}` counts them); fix the space and run again", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    from dataclasses import replace

    from .config import load_config
    from .driver import run_sweep
    from .folder import check_embedded_store_path, output_folder
    from .measure import check_device_here

    cfg = load_config(args.space, name=args.name)
    if args.trials or args.concurrency:
        cfg = replace(cfg, search=replace(cfg.search, trials=args.trials or cfg.search.trials,
                                          concurrency=args.concurrency or cfg.search.concurrency))
        cfg.raw.setdefault("search", {})
        cfg.raw["search"] = {**(cfg.raw.get("search") or {}), "trials": cfg.search.trials,
                             "concurrency": cfg.search.concurrency}
    # fail on the data and model before any process starts
    if args.address is None:  # on a cluster latencies are timed on its nodes
        check_device_here(cfg.measure.device, f"{cfg.source}: measure.device")
    _preflight(cfg)
    _check_tracking_uri(args.tracking_uri)
    sweep_dir = Path(args.out) if args.out else Path("runs") / cfg.name
    flag = "--out" if args.out else "the sweep folder (runs/<name>)"
    resolved = output_folder(sweep_dir, flag)
    if args.tracking_uri is None:
        check_embedded_store_path(resolved, flag)
    _quiet_libraries()
    return _run_until_done(cfg, run_sweep, sweep_dir, report_root=Path(args.reports), address=args.address,
                           tracking_uri=args.tracking_uri)


def _check_tracking_uri(uri: str | None) -> None:
    """A password in the tracking URI would be saved in state.json and printed: refuse it."""
    from urllib.parse import urlsplit

    from .errors import ConfigError

    parts = urlsplit(uri) if uri else None
    if parts is not None and parts.password is not None:
        shown = parts._replace(netloc=f"{parts.username}:***@{parts.hostname}"
                               + (f":{parts.port}" if parts.port else "")).geturl()
        raise ConfigError(f"--tracking-uri must not hold a password, but got {shown} (--tracking-uri); give the "
                          f"credentials in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
    if parts is not None and parts.scheme in ("http", "https"):
        # MLflow retries a server that does not answer for minutes before it gives up
        from .localcluster import unanswered

        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise ConfigError(f"--tracking-uri must have a numeric port, but got {uri} ({e}) "
                              f"(--tracking-uri)") from None
        why = unanswered(parts.hostname or "", port, TRACKING_CONNECT_TIMEOUT_S)
        if why is not None:
            raise ConfigError(f"--tracking-uri must be an MLflow server that answers, but nothing answers at "
                              f"{uri} ({why}) (--tracking-uri); start the server (`mlflow server`) or correct the "
                              f"URI") from None


# how long `sweep run` waits for an MLflow tracking server (--tracking-uri http://...) to accept a connection
TRACKING_CONNECT_TIMEOUT_S = 10.0


def _run_until_done(cfg, run_sweep, sweep_dir: Path, **kwargs) -> int:
    """``run_sweep`` with SIGTERM turned into the Ctrl-C path (see :func:`_sigterm_as_ctrl_c`)."""
    with _sigterm_as_ctrl_c() as terminated:
        _SWEEP_RUNNING.append(True)
        try:
            outcome = run_sweep(cfg, sweep_dir, log=_log, **kwargs)
        except KeyboardInterrupt:
            if terminated:
                print("sweep: terminated", file=sys.stderr)
                return 143
            if _OUTPUT_CLOSED:
                print("sweep: stopped: its output was closed (broken pipe)", file=sys.stderr)
                return 141
            raise
        finally:
            _SWEEP_RUNNING.clear()
    return _finish(outcome, cfg)


@contextmanager
def _sigterm_as_ctrl_c():
    """While a sweep runs, SIGTERM stops it the way Ctrl-C does: finished trials kept, running ones
    recorded as stopped, MLflow runs closed; yields a list that is non-empty once SIGTERM came."""
    import signal
    import threading

    from .driver import SIGTERM, interrupt

    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield seen
        return

    def handler(signum, frame):
        seen.append(signum)
        interrupt(SIGTERM, frame)

    prev = signal.signal(signal.SIGTERM, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, prev)


def _preflight(cfg) -> None:
    """Load the data and build the model once, so bad names and missing files fail in one line."""
    import torch

    from .errors import ConfigError
    from .models import build_model
    from .trial import load_splits

    splits = load_splits(cfg)
    c, h, _ = splits.input_shape
    model = build_model(cfg.model.name, num_classes=splits.num_classes, in_channels=c, input_size=h,
                        checkpoint=cfg.baseline.path or cfg.model.checkpoint, where=f"{cfg.source}: model")
    try:
        with torch.no_grad():
            out = model.eval()(splits.example_input(2))
    except Exception as e:
        raise ConfigError(f"model {cfg.model.name} cannot run on {cfg.dataset.name} inputs of shape "
                          f"{tuple(splits.input_shape)}: {type(e).__name__}: {str(e).splitlines()[0]} "
                          f"({cfg.source}: model)") from None
    if tuple(out.shape) != (2, splits.num_classes):
        raise ConfigError(f"model output must have shape (batch, {splits.num_classes}) for {cfg.dataset.name}, "
                          f"but got {tuple(out.shape)} ({cfg.source}: model.name={cfg.model.name})")
    # the architecture must survive channel surgery, and every method must apply to it
    from .engine.check import PrunabilityError, check_prunable
    from .engine.skip import resolve_layers
    from .methods import get_method

    example = splits.example_input(1)
    keep = resolve_layers(model, cfg.model.keep_layers, f"model.keep_layers ({cfg.source})")
    try:
        found = check_prunable(model, example, keep_layers=keep)
    except PrunabilityError as e:
        raise PrunabilityError(f"{e} (add the layer to model.keep_layers in {cfg.source})") from None
    _warn_skipped(found["skipped"])
    for m in cfg.methods:
        spec = get_method(m.name)
        if spec.preflight is not None:
            try:
                spec.preflight(model, example, m.knobs)
            except ConfigError as e:
                raise ConfigError(f"{e} ({cfg.source}: methods.{m.name})") from None


def _warn_skipped(skipped: list) -> None:
    """One line for the channel groups the engine leaves out because they cannot be pruned safely."""
    if skipped:
        names = ", ".join(f"'{n}'" for n, _ in skipped[:4]) + (", ..." if len(skipped) > 4 else "")
        _log(f"warning: {len(skipped)} channel group(s) cannot be pruned safely and are left out ({names}): "
             f"{skipped[0][1]}")


def cmd_resume(args) -> int:
    from .driver import run_sweep
    from .folder import SweepFolder
    from .measure import check_device_here

    sweep_dir = Path(args.sweep_dir)
    folder = SweepFolder(sweep_dir)
    cfg = folder.config()
    folder.tracking_uri()  # its MLflow store can be named (a folder moved to such a path), before Ray starts
    if args.address is None:
        check_device_here(cfg.measure.device, f"{cfg.source}: measure.device")
    _quiet_libraries()
    return _run_until_done(cfg, run_sweep, sweep_dir, report_root=Path(args.reports), address=args.address,
                           resume=True)


def cmd_status(args) -> int:
    from .status import status_lines

    return _listing(status_lines(Path(args.sweep_dir)))


def cmd_report(args) -> int:
    from .folder import SweepFolder, output_folder, report_dir
    from .report import build_report

    sweep_dir = Path(args.sweep_dir)
    _, meta = SweepFolder(sweep_dir).results()
    out = Path(args.out) if args.out else report_dir(meta.get("name", sweep_dir.name),
                                                     where=f"the name in {sweep_dir}'s trials.parquet")
    output_folder(out, "--out" if args.out else "the report folder (reports/<name>)")
    paths = build_report(sweep_dir, out, log=_log)
    _log(f"report: {(out / 'index.html').resolve()} ({len(paths)} files)")
    return 0


def cmd_select(args) -> int:
    from contextlib import nullcontext

    from .folder import SELECTION_FILE, SweepFolder
    from .select import Budget, select

    budget = Budget(max_latency_ms=args.max_latency_ms, max_params=args.max_params, max_macs=args.max_macs,
                    min_accuracy=args.min_accuracy)
    _quiet_libraries()
    folder = SweepFolder(Path(args.sweep_dir))
    # one writer: no selection while a sweep writes the folder (a folder that is no sweep: select says so)
    with folder.lock("sweep select") if folder.is_sweep() else nullcontext():
        d = select(Path(args.sweep_dir), budget, out=Path(args.out) if args.out else None,
                   export=not args.no_export, register=not args.no_register,
                   keep_sweep_budgets=not args.ignore_sweep_budgets, log=_log)
    c = d["chosen"]
    agree = f"agreement {c['agreement']:.4f} (val), " if d["quality"] == "agreement" else ""
    acc = (f"accuracy {c['accuracy']:.4f} (val), {c.get('test_accuracy', float('nan')):.4f} (test)"
           if c.get("accuracy") is not None else "accuracy n/a (no labelled set)")
    _log(f"chosen: trial {c['trial_id']} ({c['method']}) {agree}{acc} · latency {c['latency_ms']:.3f} ms re-measured "
         f"alone · params {c['params']:,} · MACs {c['macs']:,}")
    if d.get("vs_teacher"):
        from .select import vs_teacher_line

        _log(f"chosen: {vs_teacher_line(d['vs_teacher'])}")
    files = [str(v) for k, v in d["exports"].items() if not k.endswith("error")] + [SELECTION_FILE, "selection.md"]
    _log(f"exported to {d['out']}: " + ", ".join(files))
    return 0


def _knob_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _pairs(items, what: str) -> dict:
    """``NAME=VALUE`` options -> {name: value (YAML-parsed)}."""
    from .errors import ConfigError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"a {what} must be NAME=VALUE, but got --{what.replace(' ', '-')} {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _knob_value(v)
    return out


def cmd_prune(args) -> int:
    from .errors import ConfigError
    from .measure import check_runtime
    from .oneshot import PruneJob, parse_shape, run_prune

    knobs = _pairs(args.knob, "knob")
    # the target options (--ratio, --tau, --remove-blocks, ...) are knobs that methods mark as flags
    for name in args.flag_knobs:
        value = getattr(args, f"knob__{name}")
        if value is None:
            continue
        if name in knobs:
            raise ConfigError(f"give {name} once, but got both --{name.replace('_', '-')} and --knob {name}=...")
        knobs[name] = _knob_value(value)
    given = [f for f, v in (("--target-macs", args.target_macs), ("--target-params", args.target_params)) if v]
    if len(given) > 1:
        raise ConfigError(f"give one pruning target, but got {' and '.join(given)}")
    if args.finetune_epochs and not args.dataset:
        raise ConfigError(f"--finetune-epochs must come with --dataset (the data to fine-tune on), but got "
                          f"--finetune-epochs={args.finetune_epochs} without it (--finetune-epochs)")
    job = PruneJob(model=args.model, out=Path(args.out), method=args.method, knobs=knobs,
                   checkpoint=args.checkpoint, num_classes=args.num_classes,
                   input_shape=parse_shape(args.input_shape) if args.input_shape else None,
                   dataset=args.dataset, dataset_options=_pairs(args.dataset_option, "dataset option"),
                   target_macs=args.target_macs, target_params=args.target_params,
                   finetune_epochs=args.finetune_epochs, lr=args.lr, latency_batch=args.latency_batch,
                   threads=args.threads, repeats=args.repeats, seed=args.seed,
                   runtime=check_runtime(args.runtime, "cpu", "--runtime") if args.runtime else None)
    _quiet_libraries()
    summary = run_prune(job, log=_log)
    _warn_skipped(summary["skipped_groups"])
    return 0


def _add_flag_knobs(parser) -> None:
    """One option per knob that a method marks as a `sweep prune` flag (``Knob.flag``)."""
    from .methods import flag_knobs

    flags = flag_knobs()
    for name, owners in flags.items():
        methods = ", ".join(m for m, _ in owners)
        helps = {k.help for _, k in owners}
        # a knob several methods share may say more for one of them (cat's macs_fraction adapts its lam): the
        # plainest of their texts, named as that method's, and where the others' are
        plain = min(owners, key=lambda o: len(o[1].help))
        what = helps.pop() if len(helps) == 1 else f"{plain[1].help} (as {plain[0]} reads it; `sweep methods` " \
                                                    f"shows each method's)"
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"knob__{name}", metavar="V",
                            help=f"{what} (knob {name} of {methods})".replace("%", "%%"))
    parser.set_defaults(flag_knobs=sorted(flags))


def cmd_methods(args) -> int:
    return _listing(_method_lines())


def _method_lines():
    """``sweep methods``: each registered method, then one aligned line per knob."""
    from .methods import METHODS

    for name, spec in METHODS.items():
        labels = " [needs training labels]" if spec.needs_labels else " [usable in label-free sweeps]"
        yield f"{name}: {spec.summary}{labels}"
        # columns as wide as this method's widest range and default (a long list of choices stays aligned)
        defaults = ["unset" if k.default is None else str(k.default) for k in spec.knobs]
        width = max([22] + [len(k.range_text()) for k in spec.knobs])
        dwidth = max([8] + [len(d) for d in defaults])
        for k, default in zip(spec.knobs, defaults):
            yield f"    {k.name:<16} {k.kind:<11} {k.range_text():<{width}} default {default:<{dwidth}} {k.help}"


def _positive(kind, least: float | None = None):
    """An argparse type: a number > 0 (or >= ``least``, as the YAML's own bound for the same setting)."""
    def parse(s: str):
        try:
            f = float(s)
            v = kind(f) if kind is int else f
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be a finite number, but got {s!r}") from None
        if kind is int and v != f:  # 2.5 trials is no count: not rounded behind the user's back
            raise argparse.ArgumentTypeError(f"must be a whole number > 0, but got {s!r}")
        if not math.isfinite(v) or v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, but got {s!r}")
        if least is not None and v < least:
            raise argparse.ArgumentTypeError(f"must be >= {least:g}, but got {s!r}")
        return v

    return parse


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], but got {s!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], but got {s!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from .measure import RUNTIMES

    p = argparse.ArgumentParser(prog="sweep", description="AutoML sweeps for structured pruning: search, "
                                "measure, choose.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a sweep from a search-space YAML")
    r.add_argument("space", help="search-space YAML, e.g. search_spaces/quickstart.yaml")
    r.add_argument("--name", help="sweep name (default: the YAML's name)")
    r.add_argument("--out", help="sweep folder (default: runs/<name>)")
    r.add_argument("--reports", default="reports", help="where reports go (default: reports/)")
    r.add_argument("--address", help="connect to an existing Ray cluster instead of a local one")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the sweep folder)")
    r.add_argument("--trials", type=_positive(int), help="override search.trials")
    r.add_argument("--concurrency", type=_positive(int), help="override search.concurrency")
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("resume", help="continue an interrupted sweep")
    s.add_argument("sweep_dir")
    s.add_argument("--reports", default="reports")
    s.add_argument("--address")
    s.set_defaults(fn=cmd_resume)

    st = sub.add_parser("status", help="what a sweep has done and is doing (starts no Ray)")
    st.add_argument("sweep_dir")
    st.set_defaults(fn=cmd_status)

    rep = sub.add_parser("report", help="regenerate a sweep's report from its trials.parquet")
    rep.add_argument("sweep_dir")
    rep.add_argument("--out", help="report folder (default: reports/<name>)")
    rep.set_defaults(fn=cmd_report)

    sel = sub.add_parser("select", help="pick, re-measure and export the best model inside a budget")
    sel.add_argument("sweep_dir")
    sel.add_argument("--max-latency-ms", type=_positive(float))
    sel.add_argument("--max-params", type=_positive(int))
    sel.add_argument("--max-macs", type=_positive(int))
    sel.add_argument("--min-accuracy", "--min-agreement", dest="min_accuracy", type=_fraction,
                     help="minimum validation accuracy (0-1); in a label-free sweep: minimum agreement with the "
                          "teacher (either spelling bounds the sweep's quality)")
    sel.add_argument("--ignore-sweep-budgets", action="store_true",
                     help="choose by the flags alone; by default the sweep's search.constraints apply too, each "
                          "flag in place of the sweep's limit of the same name")
    sel.add_argument("--out", help="export folder (default: <sweep>/selected)")
    sel.add_argument("--no-export", action="store_true", help="skip torch.export and ONNX")
    sel.add_argument("--no-register", action="store_true", help="skip the MLflow model registry")
    sel.set_defaults(fn=cmd_select)

    pr = sub.add_parser("prune", help="prune one model once (no sweep) and write it with summary.json")
    pr.add_argument("--model", required=True, help="registry name, torchvision:<name> or package.module:function")
    pr.add_argument("--checkpoint", help="state dict to load into the model first")
    pr.add_argument("--num-classes", type=_positive(int), help="classes (default: the dataset's, else 1000)")
    pr.add_argument("--input-shape", help="C,H,W (default: the dataset's)")
    pr.add_argument("--method", default="magnitude", help="a registered method (see `sweep methods`)")
    pr.add_argument("--target-macs", type=_positive(int), help="MACs to prune down to (absolute; the method's "
                    "macs_fraction knob)")
    pr.add_argument("--target-params", type=_positive(int), help="params to prune down to (absolute; the "
                    "method's params_fraction knob)")
    _add_flag_knobs(pr)
    pr.add_argument("--knob", action="append", metavar="NAME=VALUE", help="any other knob of the method")
    pr.add_argument("--dataset", help="dataset for accuracy before/after and methods that need data")
    pr.add_argument("--dataset-option", action="append", metavar="NAME=VALUE",
                    help="dataset option, e.g. train_subset=5000")
    pr.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune after pruning (needs --dataset)")
    pr.add_argument("--lr", type=_positive(float), default=0.01)
    pr.add_argument("--latency-batch", type=_positive(int), default=1)
    pr.add_argument("--threads", type=_positive(int), help="torch threads for latency (default: torch's)")
    pr.add_argument("--repeats", type=_positive(int, least=3), default=50,
                    help="timed runs of each model (>= 3, as measure.repeats: the spread is their IQR)")
    pr.add_argument("--runtime", choices=RUNTIMES,
                    help="where latency is timed (default: onnxruntime on a CPU where installed, else torch)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--out", required=True, help="folder for model.pt and summary.json (must be new or empty)")
    pr.set_defaults(fn=cmd_prune)

    m = sub.add_parser("methods", help="list the pruning methods with their knobs and ranges")
    m.set_defaults(fn=cmd_methods)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SweepError as e:
        if args.debug:
            raise
        print(f"sweep: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
