"""``sweep select``: the most accurate model inside a budget, re-measured alone, exported, registered.

Reads ``trials.parquet`` only (no tracking server needed to choose); MLflow registration is a last,
optional step.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .constraints import Constraints, fmt_limit
from .errors import BudgetError
from .folder import SELECTION_FILE, SweepFolder, output_folder, written_whole
from .results.schema import TrialRecord


@dataclass(frozen=True)
class Budget:
    """``sweep select``'s limits (its flags): the budgets of :class:`~sweep.constraints.Constraints` under the
    flags' names (``min_accuracy`` is ``min_quality``: it bounds the sweep's quality column, ``agreement`` when
    label-free), checked and measured by them; broken ones are worded without the budget's name
    (``latency_ms 3.1 > 2``), since the flag says which."""

    max_latency_ms: float | None = None
    max_params: float | None = None
    max_macs: float | None = None
    min_accuracy: float | None = None

    def items(self):
        return [(k, v) for k, v in asdict(self).items() if v is not None]

    def constraints(self) -> Constraints:
        return Constraints(max_latency_ms=self.max_latency_ms, max_params=self.max_params, max_macs=self.max_macs,
                           min_quality=self.min_accuracy, where="sweep select")

    def broken(self, row: TrialRecord, quality: str = "accuracy") -> list[str]:
        """The limits a row breaks, each as text (e.g. ``latency_ms 3.1 > 2``; ``latency_ms unknown``)."""
        return self.constraints().broken(row, quality, named=False)

    def excess(self, row: TrialRecord, quality: str = "accuracy") -> float:
        """Sum of relative violations: how far outside the budget a row lies (0 inside, infinite if unknown)."""
        return self.constraints().excess(row, quality)


# candidates re-measured side by side when a latency budget decides between them (the most accurate first; the
# next ones only if all of these break the budget): enough to take the load's swings out of the choice, few
# enough that a budget the first one meets costs a few models' timing, not the whole front's
REMEASURED_TOGETHER = 4

NO_LABELS_NOTE = ("no labelled set was given (dataset.unlabeled alone), so accuracy is unknown: the choice is "
                  "on agreement with the teacher alone")


def _acc(v) -> str:
    """An accuracy figure, or ``n/a`` when unknown (no labelled set)."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _describe(r: TrialRecord, quality: str = "accuracy", latency_note: str = "") -> str:
    return (f"trial {r.trial_id} ({r.method}): {quality} {r.get(quality, math.nan):.4f}, latency "
            f"{r.latency_ms:.3f} ms{latency_note}, params {r.params:,}, MACs {r.macs:,}")


def candidates(records: list[TrialRecord], budget: Budget, quality: str = "accuracy") -> list[TrialRecord]:
    """``ok`` records inside the budget, best first: highest quality (validation accuracy, or agreement
    with the teacher in a label-free sweep), ties broken by lower latency.  The dense baseline is a
    candidate like any trial."""
    ok = [r for r in records if r.status == "ok"]
    inside = [r for r in ok if not budget.broken(r, quality)]
    return sorted(inside, key=lambda r: (-r.get(quality), r.latency_ms))


def choose(records: list[TrialRecord], budget: Budget, quality: str = "accuracy") -> list[TrialRecord]:
    """Candidates in order, or a BudgetError naming the closest point and what it breaks."""
    cands = candidates(records, budget, quality)
    if cands:
        return cands
    ok = [r for r in records if r.status == "ok"]
    if not ok:
        raise BudgetError("no finished trial to choose from (the sweep has no `ok` rows)")
    closest = min(ok, key=lambda r: budget.excess(r, quality))
    raise BudgetError(f"no trial meets the budget ({_budget_text(budget)}); closest: {_describe(closest, quality)} — "
                      f"breaks {', '.join(budget.broken(closest, quality))}")


def _budget_text(b: Budget) -> str:
    return ", ".join(f"{k.replace('_', '-')} {fmt_limit(v)}" for k, v in b.items()) or "no limits"


def sweep_budget(budget: Budget, constraints, log=print, *, keep_sweep: bool = True) -> Budget:
    """The limits a selection keeps: the sweep's own hard budgets (``constraints``, its search.constraints), so
    that a selection never picks what the sweep itself ruled out (a trial whose quality or re-measured latency
    breaks them), together with the limits given in ``budget`` (the flags); a flag sets its limit in place of
    the sweep's of the same name, so it can tighten, loosen or add one.  ``keep_sweep=False``
    (``--ignore-sweep-budgets``): the flags alone.  Says in one line where each limit came from."""
    if not keep_sweep or not constraints:
        return budget
    own, given = dict(Budget(**constraints.budget_kwargs()).items()), dict(budget.items())
    merged = Budget(**{**own, **given})

    def source(k: str) -> str:
        if k not in given:
            return "search.constraints"
        return f"flag, for the sweep's {fmt_limit(own[k])}" if k in own else "flag"

    log("budget: " + ", ".join(f"{k.replace('_', '-')} {fmt_limit(v)} ({source(k)})" for k, v in merged.items())
        + "; --ignore-sweep-budgets leaves out the sweep's search.constraints")
    return merged


def select(sweep_dir: Path, budget: Budget, *, out: Path | None = None, export: bool = True,
           register: bool = True, keep_sweep_budgets: bool = True, log=print) -> dict:
    from .measure import check_device_here
    from .trial import load_splits, trial_threads

    folder = SweepFolder(sweep_dir)
    out = output_folder(out, "--out", empty=True, reuse=SELECTION_FILE) if out else folder.selected_dir
    records, meta = folder.results()
    cfg, state = folder.config(), folder.state()
    check_device_here(cfg.measure.device, f"{cfg.source}: measure.device")  # the chosen model is timed here
    if register:  # the store the model is registered in can be named (before anything is measured or written)
        folder.tracking_uri(state, hint=", or select with --no-register")
    quality = meta.get("quality", "accuracy")
    budget = sweep_budget(budget, cfg.search.constraints, log, keep_sweep=keep_sweep_budgets)
    ordered = choose(records, budget, quality)
    if not cfg.labelled_data:
        log(f"note: {NO_LABELS_NOTE}")
    splits = load_splits(cfg)
    threads = trial_threads(cfg)
    chosen, rejected_after = None, []
    tried: list[tuple[TrialRecord, float]] = []  # (re-measured, the sweep's latency) of each rejected
    size = REMEASURED_TOGETHER if budget.max_latency_ms is not None else 1
    for start in range(0, len(ordered), size):
        group = ordered[start:start + size]
        models = [folder.load_model(r.model_path) for r in group]
        if len(group) > 1:
            log(f"re-measuring the latency of {len(group)} candidate(s) side by side (the best {quality} first)")
        for r, model, lat in zip(group, models, _remeasured(models, splits.input_shape, cfg, threads)):
            remeasured = r.replace(latency_ms=lat.median_ms, latency_iqr_ms=lat.iqr_ms, threads=lat.threads,
                                   latency_runtime=lat.runtime)
            broken = budget.broken(remeasured, quality)
            if broken:
                rejected_after.append({"trial_id": r.trial_id, "why": "re-measured alone: " + ", ".join(broken)})
                tried.append((remeasured, r.latency_ms))
                log(f"trial {r.trial_id}: re-measured latency {lat.median_ms:.3f} ms breaks the budget; next")
                continue
            chosen, chosen_lat, chosen_model = remeasured, lat, model
            break
        if chosen is not None:
            break
    if chosen is None:
        raise _none_after_remeasure(budget, tried, quality)

    from .pareto import front_flags

    front_rejects = []
    for r, on in zip(records, front_flags(records, meta.get("objectives") or [quality, "latency_ms"])):
        if not on or r.trial_id == chosen.trial_id:
            continue
        why = budget.broken(r, quality)
        front_rejects.append({"trial_id": r.trial_id, "method": r.method, "accuracy": r.accuracy,
                              "latency_ms": r.latency_ms, "params": r.params, "macs": r.macs,
                              "agreement": r.agreement,
                              "why": ", ".join(why) if why else f"inside the budget but lower {quality} "
                                                                  f"(or equal and slower)"})
    with written_whole(out) as tmp:
        decision = {
            "sweep": cfg.name, "quality": quality, "budget": dict(budget.items()), "chosen": _public(chosen),
            "latency_remeasured": chosen_lat.to_dict(), "rejected_front_points": front_rejects,
            "rejected_after_remeasure": rejected_after, "candidates_inside_budget": len(ordered),
            "selected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "exports": {},
        }
        if not cfg.labelled_data:
            decision["note"] = NO_LABELS_NOTE
        vs = _vs_teacher(folder.baseline().get("teacher"), chosen_model, splits.input_shape, cfg)
        if vs:
            decision["vs_teacher"] = vs
        import torch

        torch.save(chosen_model, tmp / "model.pt")
        if export:
            decision["exports"] = _export(chosen_model, splits.example_input(1), tmp, log)
        (tmp / SELECTION_FILE).write_text(json.dumps(decision, indent=2, default=str))
        (tmp / "selection.md").write_text(_markdown(decision))
    if register:
        decision["registry"] = _register(folder, state, cfg.name, chosen, chosen_model, splits.example_input(1), out,
                                          log)
        (out / SELECTION_FILE).write_text(json.dumps(decision, indent=2, default=str))
    decision["out"] = str(out)
    return decision


def _remeasured(models: list, input_shape, cfg, threads: int) -> list:
    """The latency of each of ``models``, with the machine to this process: on the sweep's runtime
    (``measure.runtime``) as the trials were timed, at least 100 timed runs each, several models interleaved
    (:func:`sweep.measure.compare_latency`) so that a change of the machine's load hits them alike: the budget
    never rules out a faster model, or lets in a slower one, for when it happened to be timed."""
    from .measure import compare_latency, measure_latency

    kw = dict(batch=cfg.measure.latency_batch, warmup=cfg.measure.warmup, repeats=max(cfg.measure.repeats, 100),
              threads=threads, device=cfg.measure.device, runtime=cfg.measure.runtime)
    if len(models) == 1:
        return [measure_latency(models[0], input_shape, **kw)]
    return compare_latency(models, input_shape, **kw)


def _none_after_remeasure(budget: Budget, tried: list[tuple[TrialRecord, float]], quality: str) -> BudgetError:
    """Every candidate inside the budget by the sweep's figures broke it once re-measured alone: name the one
    that came closest, with the latency it was re-measured at beside the sweep's."""
    closest, swept = min(tried, key=lambda t: budget.excess(t[0], quality))
    what = _describe(closest, quality, f" re-measured alone ({swept:.3f} ms in the sweep)")
    return BudgetError(f"no trial meets the budget ({_budget_text(budget)}) once its latency is re-measured alone "
                       f"({len(tried)} tried); closest: {what} — breaks {', '.join(budget.broken(closest, quality))}; "
                       f"latency varies with the machine's load: loosen --max-latency-ms or select on a quieter "
                       f"machine")


def _vs_teacher(teacher, model, input_shape, cfg) -> dict | None:
    """The chosen student against a non-neural (MBN) teacher: the student timed again exactly as the
    teacher was (its runtime, batch, threads and device), and the per-sample speed-up; None when the sweep
    has no such teacher or its latency is unknown."""
    from .measure import measure_latency, runtime_of_label

    lat = teacher.get("latency") if isinstance(teacher, dict) else None
    if not isinstance(lat, dict) or not lat.get("median_ms") or not lat.get("batch"):
        return None
    student = measure_latency(model, input_shape, batch=int(lat["batch"]), warmup=cfg.measure.warmup,
                              repeats=max(cfg.measure.repeats, 100), threads=lat.get("threads"),
                              device=lat.get("device") or cfg.measure.device,
                              runtime=runtime_of_label(lat.get("runtime")))
    return {"kind": teacher.get("kind"), "teacher_latency": lat, "student_latency": student.to_dict(),
            "speedup": (lat["median_ms"] / lat["batch"]) / (student.median_ms / student.batch)}


def _public(r: TrialRecord) -> dict:
    return {k: v for k, v in r.to_row().items() if v is not None and k not in ("info",)}


def _export(model, example, out: Path, log) -> dict:
    """torch.export program and ONNX (input ``input``, output ``output``, the example's fixed shape); each
    failure is recorded, not fatal, and reported."""
    import torch

    res = {}
    model = model.eval()
    try:
        ep = torch.export.export(model, (example,))
        torch.export.save(ep, str(out / "model.pt2"))
        res["torch_export"] = "model.pt2"
    except Exception as e:
        res["torch_export_error"] = f"{type(e).__name__}: {e}"[:500]
        log(f"warning: torch.export failed: {res['torch_export_error']}")
    try:  # the exporter and settings whose graph the latency was timed on (onnxruntime), outputs checked
        from .measure import export_onnx

        (out / "model.onnx").write_bytes(export_onnx(model, example))
        res["onnx"] = "model.onnx"
    except Exception as e:
        res["onnx_error"] = f"{type(e).__name__}: {e}"[:500]
        log(f"warning: ONNX export failed: {res['onnx_error']}")
    return res


def model_requirement() -> str:
    """The pip requirement of a registered pt2 model: this torch's release, without a local build label
    (``2.14.1+cu130`` -> ``torch==2.14.1``; a local label names a wheel index, not a release)."""
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def _register(folder: SweepFolder, state: dict, name: str, chosen: TrialRecord, model, example, out: Path,
              log) -> dict:
    """Log the chosen model to its trial's MLflow run, register it, and point the alias at it (in the sweep's
    store: :meth:`SweepFolder.tracking_uri`, the folder's own where the sweep used the embedded one)."""
    try:
        from .results.mlflow_sink import _client  # noqa: I001 (first: it keeps MLflow's telemetry off)

        import mlflow

        uri = folder.tracking_uri(state)
        client = _client(uri, folder.artifacts_dir if uri == folder.default_tracking_uri else None)
        mlflow.set_tracking_uri(uri)
        run_id = chosen.mlflow_run_id or state.get("parent_run_id")
        reg_name = f"{name}-selected"
        import contextlib
        import io

        # MLflow prints its own registration chatter; the one line below says the same
        with mlflow.start_run(run_id=run_id), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            # pt2 (torch.export): the registered model loads without unpickling code.  Its requirement is
            # torch alone, given rather than inferred: MLflow's inference loads the model in a subprocess to
            # see what it imports (about 6 s of the selection on 2 cores, for the answer this line gives)
            info = mlflow.pytorch.log_model(model, name="selected_model", registered_model_name=reg_name,
                                            input_example=example.numpy(), serialization_format="pt2",
                                            pip_requirements=[model_requirement()])
            mlflow.log_artifacts(str(out), artifact_path="selection")
        versions = client.search_model_versions(f"name = '{reg_name}'")
        version = max(int(v.version) for v in versions)
        client.set_registered_model_alias(reg_name, "selected", str(version))
        # log_model reopened the (finished) run as RUNNING; restore its terminal status
        client.set_terminated(run_id, status="FINISHED")
        log(f"registered {reg_name} version {version} with alias 'selected' in MLflow ({uri})")
        return {"model": reg_name, "version": version, "alias": "selected", "model_uri": info.model_uri}
    except Exception as e:
        log(f"warning: MLflow registration failed ({type(e).__name__}: {e}); the export is complete")
        return {"error": f"{type(e).__name__}: {e}"[:500]}


def vs_teacher_line(v: dict) -> str:
    from .measure import speed_words

    t, s = v["teacher_latency"], v["student_latency"]
    return (f"{speed_words(v['speedup'])} per sample than the {(v.get('kind') or '').upper() or 'non-neural'} "
            f"teacher ({s['median_ms']:.3g} ms vs {t['median_ms']:.3g} ms at batch {t['batch']}, "
            f"{t.get('threads')} thread(s), {t.get('device')}, {t.get('runtime') or 'torch'}; timed alike)")


def _markdown(d: dict) -> str:
    c = d["chosen"]
    lines = [f"# Selection for sweep `{d['sweep']}`", "",
             f"Budget: {', '.join(f'{k} = {v}' for k, v in d['budget'].items()) or 'none'}", "",
             f"Chosen: trial `{c['trial_id']}` ({c['method']}) — "
             + (f"agreement with the teacher {c['agreement']:.4f}, " if d.get("quality") == "agreement" else "")
             + f"validation accuracy {_acc(c.get('accuracy'))}, "
             f"test accuracy {_acc(c.get('test_accuracy'))}, latency {c['latency_ms']:.3f} ms "
             f"(re-measured alone, batch {d['latency_remeasured']['batch']}, "
             f"{d['latency_remeasured']['threads']} thread(s), {d['latency_remeasured']['device']}, "
             f"{d['latency_remeasured'].get('runtime') or 'torch'}), "
             f"params {c['params']:,}, MACs {c['macs']:,}.", "",
             f"Why: the `ok` trial with the highest {d.get('quality', 'accuracy')} inside the budget "
             "(ties: lower latency).", "",
             *([f"Note: {d['note']}.", ""] if d.get("note") else []),
             *([vs_teacher_line(d["vs_teacher"]) + ".", ""] if d.get("vs_teacher") else []),
             "| rejected front point | method | accuracy | latency ms | params | why |", "|---|---|---|---|---|---|"]
    for r in d["rejected_front_points"]:
        lines.append(f"| {r['trial_id']} | {r['method']} | {_acc(r['accuracy'])} | {r['latency_ms']:.3f} | "
                     f"{r['params']:,} | {r['why']} |")
    return "\n".join(lines) + "\n"
