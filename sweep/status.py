"""``sweep status runs/<name>``: what a sweep has done and is doing, read from its folder alone.

It reads ``sweep.yaml``, ``trials.parquet``, ``state.json`` (the driver's heartbeat: the trials in flight,
rewritten within a second of one starting or ending, and every :data:`~sweep.folder.HEARTBEAT_EVERY_S` seconds) and the
lock file (who writes the folder); it neither starts nor imports Ray, and writes nothing.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path

from .constraints import budget_words
from .durable import pid_alive
from .folder import HEARTBEAT_EVERY_S, SweepFolder
from .results.schema import epochs_spent

# trials listed by a heartbeat older than this are not reported as running (the driver missed 3 beats)
RECENT_S = 3 * HEARTBEAT_EVERY_S


def _ago(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    if s < 120:
        return f"{s} s ago"
    if s < 2 * 3600:
        return f"{s // 60} min ago"
    return f"{s // 3600} h ago"


def status_lines(sweep_dir: Path, now: float | None = None) -> list[str]:
    """One line per fact: the sweep, its baseline, done, its budgets (if any), stopped, running, remaining, the
    driver, the last end."""
    now = time.time() if now is None else now
    folder = SweepFolder(sweep_dir)
    cfg = folder.config()  # the usual one-line error on a folder that is not a sweep
    records, _ = folder.store.records()
    state = folder.state()
    total = cfg.search.trials
    rows = [r for r in records if not r.is_baseline]
    ok = sum(r.status == "ok" for r in rows)
    failed = sum(r.status == "failed" for r in rows)
    stopped = [r for r in rows if r.status == "stopped"]
    early = sum(r.status == "stopped_early" for r in rows)
    infeasible = sum(r.status == "infeasible" for r in rows)
    done = ok + failed + early + infeasible

    holder = folder.lock_holder()
    here = holder is not None and holder.get("host") == socket.gethostname()
    alive = pid_alive(holder["pid"]) if here else None  # None: no holder, or another host (cannot tell)
    beat = state.get("heartbeat")
    age = now - float(beat) if isinstance(beat, (int, float)) else None
    listed = [str(t) for t in state.get("running") or []]
    fresh = age is not None and age <= RECENT_S and alive is not False and holder is not None
    running = listed if fresh else []

    base = next((r for r in records if r.is_baseline), None)
    lines = [f"sweep: {cfg.name} ({folder.path})"]
    if base is not None and base.status == "ok":
        lines.append(f"baseline: {cfg.quality} {base.get(cfg.quality, base.accuracy):.4f} (val) · params "
                     f"{base.params:,} · latency {base.latency_ms:.3f} ms")
    elif folder.baseline_training_path.is_file():
        lines.append("baseline: not trained yet; its training state after the latest epoch is saved (a resumed "
                     "sweep goes on from there)")
    else:
        lines.append("baseline: not trained yet")
    more = (f", {early} stopped early" if early else "") + (f", {infeasible} infeasible" if infeasible else "")
    lines.append(f"done: {done} of {total} trials ({ok} ok, {failed} failed{more})")
    if cfg.search.epoch_budget is not None:
        lines.append(f"fine-tune epochs: {epochs_spent(rows)} spent of search.epoch_budget={cfg.search.epoch_budget}")
    if cfg.search.constraints:
        lines.append(f"budgets: {budget_words(dict(cfg.search.constraints.items()))} (search.constraints; "
                     f"{infeasible} candidate(s) over them, not fine-tuned)")
    if stopped:
        why = "; ".join(f"{n} × {reason}" if n > 1 else reason
                        for reason, n in Counter(r.error or "?" for r in stopped).most_common())
        # a driver running trials re-runs the stopped rows first (a resume, or a promotion round)
        again = "the running driver runs them again" if fresh and state.get("phase") == "trials" else \
            "run again by `sweep resume`"
        lines.append(f"stopped: {len(stopped)} ({again}): {why}")
    else:
        lines.append("stopped: 0")
    saved = len(folder.progress_names())
    if saved:
        lines.append(f"fine-tune states saved: {saved} (a trial cut short goes on from its latest epoch when it runs "
                     f"again)")
    if running:
        lines.append(f"running: {len(running)} ({', '.join(running)}; heartbeat {_ago(age)})")
    elif listed and not fresh:
        gone = "its driver is not running" if alive is False or holder is None else "no heartbeat since"
        lines.append(f"running: 0 (the last heartbeat, {_ago(age) if age is not None else 'of unknown age'}, "
                     f"listed {len(listed)}: {gone}; `sweep resume` runs again first those that saved a fine-tune "
                     f"state)")
    else:
        lines.append("running: 0")
    lines.append(f"remaining: {max(total - done, 0)} of {total} trials")
    if holder is None:
        lines.append("driver: none (no process holds the sweep folder)")
    else:
        who = f"pid {holder['pid']} on {holder.get('host', '?')} (`{holder.get('command', '?')}` since " \
              f"{holder.get('since', '?')})"
        phase = f", {state['phase']}" if state.get("phase") and alive is not False else ""
        beat_s = f"; heartbeat {_ago(age)}" if age is not None and alive is not False else ""
        if alive is True:
            lines.append(f"driver: {who}: alive{phase}{beat_s}")
        elif alive is False:
            lines.append(f"driver: none: {who} is not running (its lock is stale; the next writer takes it over)")
        else:
            lines.append(f"driver: {who}: on another host, cannot tell whether it is alive{phase}{beat_s}")
    if state.get("outcome"):  # cleared when a driver starts
        lines.append(f"last run ended: {state['outcome']}")
    return lines
