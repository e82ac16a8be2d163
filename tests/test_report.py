"""The static report, built from a synthetic trials.parquet."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweep import report
from sweep.errors import SweepDirError
from sweep.results.schema import COLUMNS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KNOBS = {"knob.magnitude.ratio": pa.float64(), "knob.taylor.ratio": pa.float64(), "knob.taylor.steps": pa.int64()}
BASELINE = {"accuracy": 0.9, "test_accuracy": 0.89, "params": 1_000_000, "macs": 50_000_000, "latency_ms": 4.0}
ERROR = "CUDA <script>alert('x')</script> out of memory & more"


def _row(trial_id: str, method: str, status: str, acc: float, ratio: float, i: int) -> dict:
    start = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=i)
    keep = 1.0 - ratio
    row = {name: None for name, _, _ in COLUMNS}
    row.update(
        sweep="demo",
        trial_id=trial_id,
        status=status,
        error="" if status == "ok" else ERROR,
        method=method,
        baseline_accuracy=BASELINE["accuracy"],
        baseline_test_accuracy=BASELINE["test_accuracy"],
        seed=i,
        started_at=start,
        ended_at=start + timedelta(seconds=30),
    )
    if status == "ok":
        params = int(BASELINE["params"] * keep)
        macs = int(BASELINE["macs"] * keep)
        latency = BASELINE["latency_ms"] * (0.3 + 0.7 * keep)
        row.update(
            accuracy=acc,
            test_accuracy=acc - 0.01,
            params=params,
            macs=macs,
            latency_ms=latency,
            latency_iqr_ms=0.05,
            params_ratio=params / BASELINE["params"],
            macs_ratio=macs / BASELINE["macs"],
            latency_ratio=latency / BASELINE["latency_ms"],
        )
    return row


BASE_CHANNELS = {"conv1": 16, "layer1.0.conv1": 16, "layer1.0.conv2": 16, "layer2.0.conv1": 32, "fc": 10}


def write_trials(sweep_dir: Path, ok_trials: bool = True, widths: bool = False) -> list[dict]:
    """A baseline row, ten ok rows over two methods (unless ok_trials=False) and one failed row; with
    ``widths``, the baseline and every ok trial record per-layer widths (``info["channels"]``)."""
    rows = [_row("baseline", "baseline", "ok", BASELINE["accuracy"], 0.0, 0)]
    rows[0]["test_accuracy"] = BASELINE["test_accuracy"]
    if ok_trials:
        rng = np.random.default_rng(0)
        for i in range(10):
            method = "magnitude" if i % 2 else "taylor"
            ratio = 0.1 + 0.08 * i
            # Noise large enough that some trials fall off the front.
            acc = 0.9 - 0.25 * ratio**2 - rng.uniform(0, 0.08)
            row = _row(f"t{i:03d}", method, "ok", acc, ratio, i + 1)
            row["latency_ms"] *= rng.uniform(0.9, 1.2)
            row[f"knob.{method}.ratio"] = ratio
            if method == "taylor":
                row["knob.taylor.steps"] = 3
            rows.append(row)
    failed = _row("tfail", "magnitude", "failed", 0.0, 0.5, 20)
    failed["knob.magnitude.ratio"] = 0.99
    rows.append(failed)
    if widths:
        for r in rows:
            if r["status"] == "ok":
                keep = r["params"] / BASELINE["params"]
                channels = {k: v if k == "fc" else max(1, round(v * keep)) for k, v in BASE_CHANNELS.items()}
                r["info"] = json.dumps({"channels": channels})
    for row in rows:
        row.setdefault("knob.magnitude.ratio", None)
        row.setdefault("knob.taylor.ratio", None)
        row.setdefault("knob.taylor.steps", None)
    # The sweep's front on (accuracy, latency_ms), as the engine would flag it.
    from sweep import pareto

    ok = [r for r in rows if r["status"] == "ok"]
    for r, on in zip(ok, pareto.front_flags(ok, ["accuracy", "latency_ms"]), strict=True):
        r["on_front"] = on
    write_table(sweep_dir, rows, {"name": "demo", "objectives": ["accuracy", "latency_ms"], "baseline": BASELINE})
    return rows


def write_table(sweep_dir: Path, rows: list[dict], meta: dict) -> None:
    """``rows`` as ``sweep_dir/trials.parquet`` with the schema's columns, the test knobs and ``meta``."""
    fields = [pa.field(name, typ) for name, typ, _ in COLUMNS] + [pa.field(k, t) for k, t in KNOBS.items()]
    schema = pa.schema(fields, metadata={"sweep": json.dumps(meta)})
    sweep_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sweep_dir / "trials.parquet")


EXPECTED = [
    "accuracy_vs_latency.png",
    "accuracy_vs_params.png",
    "accuracy_vs_macs.png",
    "hypervolume.png",
    "parallel_coordinates.png",
    "index.html",
    "summary.md",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[Path]]:
    """One report shared by the read-only checks below (rendering is the slow part)."""
    root = tmp_path_factory.mktemp("built")
    rows = write_trials(root / "sweep")
    written = report.build_report(root / "sweep", root / "sweep" / "report")
    return root / "sweep", rows, written


def test_build_report_writes_every_file(built) -> None:
    sweep_dir, _, written = built
    out = sweep_dir / "report"
    names = {p.name for p in written}
    assert set(EXPECTED) <= names
    for path in written:
        assert path.parent == out and path.is_file() and path.stat().st_size > 0
    for name in EXPECTED:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    # No temp folder is left beside the report.
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["report", "trials.parquet"]
    if "interactive.html" in names:
        text = (out / "interactive.html").read_text(encoding="utf-8")
        assert "t001" in text and not re.search(r"""<script[^>]*src\s*=\s*["']https?://""", text)


def test_index_html_content(built) -> None:
    sweep_dir, rows, _ = built
    index = (sweep_dir / "report" / "index.html").read_text(encoding="utf-8")
    for name in EXPECTED[:5]:
        assert f'src="{name}"' in index
    front_ids = [r["trial_id"] for r in rows if r["on_front"]]
    off_ids = [r["trial_id"] for r in rows if r["on_front"] is False]
    assert front_ids and off_ids  # the synthetic data exercises both
    for trial_id in front_ids:
        assert trial_id in index
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in index
    assert "<script" not in index
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", index, re.IGNORECASE)
    assert "http://" not in index and "https://" not in index
    assert "ratio=" in index  # knob values shown for front rows


def test_summary_md_mentions_front_size(built) -> None:
    sweep_dir, rows, _ = built
    summary = (sweep_dir / "report" / "summary.md").read_text(encoding="utf-8")
    assert f"Front size:** {sum(bool(r['on_front']) for r in rows)}" in summary
    assert "10 ok, 1 failed" in summary


def test_report_into_existing_folder_keeps_other_files(tmp_path: Path) -> None:
    write_trials(tmp_path / "sweep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "summary.md").write_text("stale")
    report.build_report(tmp_path / "sweep", out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert "Front size" in (out / "summary.md").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_report_with_empty_front(tmp_path: Path) -> None:
    write_trials(tmp_path / "sweep", ok_trials=False)
    # Only the baseline is ok here; drop it too so nothing at all is ok.
    table = pq.read_table(tmp_path / "sweep" / "trials.parquet")
    mask = pa.compute.not_equal(table["trial_id"], "baseline")
    pq.write_table(table.filter(mask), tmp_path / "sweep" / "trials.parquet")
    out = tmp_path / "report"
    written = report.build_report(tmp_path / "sweep", out)
    assert {p.name for p in written} >= set(EXPECTED)
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "front is empty" in index
    assert "Front size:** 0" in (out / "summary.md").read_text(encoding="utf-8")


def test_missing_parquet_raises_sweep_dir_error(tmp_path: Path) -> None:
    with pytest.raises(SweepDirError) as info:
        report.build_report(tmp_path / "nowhere", tmp_path / "report")
    message = str(info.value)
    assert "trials.parquet" in message and str(tmp_path / "nowhere") in message and "\n" not in message
    assert not (tmp_path / "report").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # temp folder cleaned up


def test_unreadable_parquet_raises_sweep_dir_error(tmp_path: Path) -> None:
    (tmp_path / "trials.parquet").write_bytes(b"not parquet")
    with pytest.raises(SweepDirError, match="trials.parquet"):
        report.build_report(tmp_path, tmp_path / "report")


def test_front_table_is_fixed_width(tmp_path: Path) -> None:
    rows = write_trials(tmp_path / "sweep")
    df = pq.read_table(tmp_path / "sweep" / "trials.parquet").to_pandas()
    text = report.front_table(df, ["accuracy", "latency_ms"])
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["trial", "method"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + sum(bool(r["on_front"]) for r in rows)
    assert "ratio=" in text
    assert report.front_table(df.iloc[0:0], ["accuracy", "latency_ms"]) == "no trials on the Pareto front"


def test_generic_method_details_and_method_comparison(tmp_path: Path) -> None:
    """Front rows with `trajectory` / `layer_ratios` in their info get plots; methods get compared."""
    import json

    import pyarrow.parquet as pq

    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    write_trials(sweep_dir)
    table = pq.read_table(sweep_dir / "trials.parquet")
    rows = table.to_pylist()
    best = max((r for r in rows if r["status"] == "ok" and r["trial_id"] != "baseline"),
               key=lambda r: r["accuracy"])
    best["info"] = json.dumps({"trajectory": [{"step": 0, "params": 100, "quality": 0.9},
                                              {"step": 1, "params": 60, "quality": 0.88}],
                               "layer_ratios": {"conv1": 0.5, "conv2": 0.75}})
    best["on_front"] = True
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), sweep_dir / "trials.parquet")
    out = tmp_path / "report"
    report.build_report(sweep_dir, out)
    tid = best["trial_id"]
    for prefix in ("trajectory_", "layers_"):
        png = out / f"{prefix}{tid}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert f"trajectory_{tid}.png" in page and f"layers_{tid}.png" in page
    assert "Methods compared" in page
    for method in ("magnitude", "taylor"):
        assert f"<td>{method}</td>" in page


def test_hypervolume_counts_the_baseline(tmp_path: Path) -> None:
    """With only the baseline ok, the hypervolume is the baseline's own box: 1 x (1.1 - 1) = 0.1."""
    write_trials(tmp_path / "sweep", ok_trials=False)
    report.build_report(tmp_path / "sweep", tmp_path / "report")
    assert "Final hypervolume:** 0.1000" in (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")


def test_unknown_quality_raises_sweep_dir_error(tmp_path: Path) -> None:
    meta = {"objectives": ["accuracy", "latency_ms"], "baseline": BASELINE, "quality": "bogus"}
    write_table(tmp_path / "sweep", [_row("baseline", "baseline", "ok", 0.9, 0.0, 0)], meta)
    with pytest.raises(SweepDirError, match="quality='bogus'"):
        report.build_report(tmp_path / "sweep", tmp_path / "report")


def write_label_free(sweep_dir: Path) -> None:
    """A label-free sweep where agreement and accuracy rank trials differently (no stored front flags).

    Front on (agreement, latency): baseline, a, c, d (b is dominated by a); on (accuracy, latency) it
    would be b and d instead.  Best agreement: a; best accuracy: b."""
    figures = {  # trial: (agreement, accuracy, latency_ms)
        "baseline": (1.0, 0.90, 4.0), "a": (0.95, 0.70, 2.0), "b": (0.80, 0.90, 2.0),
        "c": (0.90, 0.85, 1.0), "d": (0.60, 0.88, 0.5),
    }  # fmt: skip
    rows = []
    for i, (trial_id, (agreement, accuracy, latency)) in enumerate(figures.items()):
        row = _row(trial_id, "baseline" if i == 0 else "magnitude", "ok", accuracy, 0.1 * i, i)
        row.update(agreement=agreement, latency_ms=latency, latency_ratio=None, on_front=None)
        rows.append(row)
    meta = {"name": "free", "objectives": ["agreement", "latency_ms"], "quality": "agreement",
            "baseline": {**BASELINE, "agreement": 1.0}}  # fmt: skip
    write_table(sweep_dir, rows, meta)


def test_label_free_report_uses_agreement_as_quality(tmp_path: Path) -> None:
    from sweep.report import interactive, plots
    from sweep.report.read import read_trials

    write_label_free(tmp_path / "sweep")
    df, meta = read_trials(tmp_path / "sweep")
    assert meta["quality"] == "agreement"
    # The projection's staircase is the front of (agreement, latency), by rising latency.
    stairs = plots.plot_projection(df, "agreement", "latency_ms", set(), {"magnitude": ("k", "o")},
                                   tmp_path / "p.png")  # fmt: skip
    assert list(stairs["trial_id"]) == ["d", "c", "a", "baseline"]
    # The interactive page plots agreement, not accuracy.
    traces = interactive.interactive_traces(df, "agreement", {"magnitude": ("k", "o")})
    assert {t["name"]: sorted(t["y"]) for t in traces} == {"magnitude": [0.6, 0.8, 0.9, 0.95], "baseline": [1.0]}

    out = tmp_path / "report"
    report.build_report(tmp_path / "sweep", out)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "Best agreement:** 0.9500 (a, magnitude)" in summary
    assert "Front size:** 4" in summary
    # The front table leads with agreement (best first) and keeps accuracy beside it for reference.
    header, _rule, *lines = [line for line in summary.splitlines() if line.startswith("|")]
    assert header.startswith("| trial | method | knobs | agreement | accuracy |")
    assert [line.split("|")[1].strip() for line in lines] == ["baseline", "a", "c", "d"]
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'alt="agreement vs latency"' in index and 'href="interactive.html"' in index
    page = (out / "interactive.html").read_text(encoding="utf-8")
    assert "<h2>agreement vs latency</h2>" in page and "agreement with the teacher (validation)" in page

    text = report.front_table(df, meta["objectives"], quality="agreement")
    assert text.splitlines()[0].split()[:5] == ["trial", "method", "knobs", "agreement", "accuracy"]
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["baseline", "a", "c", "d"]


def test_blocks_in_info_get_a_per_block_figure_whatever_the_method(tmp_path: Path) -> None:
    """A front row whose info holds ``blocks`` gets ``blocks_<trial>.png``; off-front rows get none."""
    rows = write_trials(tmp_path / "sweep")
    blocks = [{"index": i, "delta": d, "removable": i != 0, "removed": i in (1, 3)}
              for i, d in enumerate([0.5, 0.05, 0.3, 0.1])]  # fmt: skip
    on = next(r for r in rows if r["on_front"] and r["trial_id"] != "baseline")
    off = next(r for r in rows if r["on_front"] is False)
    on["trial_id"] = "t/on"  # made file-safe in the file name
    on["info"] = json.dumps({"blocks": blocks, "tau": 0.2, "blocks_title": "Depth importance"})
    off["info"] = json.dumps({"blocks": blocks})
    meta = {"name": "demo", "objectives": ["accuracy", "latency_ms"], "baseline": BASELINE}
    write_table(tmp_path / "sweep", rows, meta)
    names = {p.name for p in report.build_report(tmp_path / "sweep", tmp_path / "out")}
    assert "blocks_t_on.png" in names and f"blocks_{off['trial_id']}.png" not in names
    assert (tmp_path / "out" / "blocks_t_on.png").read_bytes()[:8] == PNG_SIGNATURE
    index = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "<h2>Per-block importance</h2>" in index
    assert '<img src="blocks_t_on.png" alt="Depth importance, trial t/on">' in index

    on["info"] = json.dumps({})  # only the off-front row has blocks now
    write_table(tmp_path / "sweep", rows, meta)
    report.build_report(tmp_path / "sweep", tmp_path / "out2")
    assert "Per-block importance" not in (tmp_path / "out2" / "index.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- colours, budgets, parallel, widths


def test_one_colour_per_method_everywhere(tmp_path: Path) -> None:
    """Methods get palette colours in sorted order, whatever order they are given in; the interactive
    scatter and the parallel coordinates use exactly those colours."""
    from sweep.report import colours, interactive, parallel
    from sweep.report.read import read_trials

    styles = colours.method_styles(["taylor", "magnitude", "baseline", "taylor"])
    assert list(styles) == ["magnitude", "taylor"]
    assert [s.colour for s in styles.values()] == list(colours.PALETTE[:2])
    assert colours.colour_of("baseline", styles) == colours.BASELINE_COLOUR
    write_trials(tmp_path / "sweep")
    df, _ = read_trials(tmp_path / "sweep")
    traces = {t["name"]: t["colour"] for t in interactive.interactive_traces(df, "accuracy", styles)}
    assert traces == {"magnitude": styles["magnitude"].colour, "taylor": styles["taylor"].colour,
                      "baseline": colours.BASELINE_COLOUR}  # fmt: skip
    fig = parallel.parallel_figure(df, "accuracy", styles)
    scale = {c for _, c in fig.data[0].line.colorscale}
    assert scale == {styles["magnitude"].colour, styles["taylor"].colour, colours.BASELINE_COLOUR}


def test_budget_explorer_gives_the_best_quality_within_each_front_budget() -> None:
    """Hand-made: a (0.95, 2 ms, 100 params), b (0.90, 1 ms, 300), c (0.80, 0.5 ms, 50), d dominated."""
    import pandas as pd

    from sweep.report.tables import budget_explorer, budget_headers

    columns = ["trial_id", "method", "status", "accuracy", "latency_ms", "params", "macs"]
    df = pd.DataFrame([
        ("a", "m", "ok", 0.95, 2.0, 100, 1e3),
        ("b", "m", "ok", 0.90, 1.0, 300, 1e3),
        ("c", "n", "ok", 0.80, 0.5, 50, 1e3),
        ("d", "n", "ok", 0.70, 2.5, 400, 1e3),
        ("f", "n", "failed", 0.99, 0.1, 1, 1e3),
    ], columns=columns)  # fmt: skip
    front = df[df["trial_id"].isin(["a", "b", "c"])]
    meta = {"quality": "accuracy", "objectives": ["accuracy", "latency_ms", "params"]}
    rows = budget_explorer(df, front, meta)
    assert len(budget_headers("accuracy")) == len(rows[0])
    got = [(r[0], r[1], r[2], r[3]) for r in rows]
    assert got == [
        ("latency (ms)", "0.5", "0.8000", "c"), ("latency (ms)", "1", "0.9000", "b"),
        ("latency (ms)", "2", "0.9500", "a"),
        ("params", "50", "0.8000", "c"), ("params", "100", "0.9500", "a"), ("params", "300", "0.9500", "a"),
    ]  # fmt: skip
    # MACs is budgeted only when the sweep optimised it
    assert {r[0] for r in budget_explorer(df, front, {**meta, "objectives": ["accuracy", "macs"]})} == {
        "latency (ms)", "params", "MACs"}


def test_parallel_axes_run_from_knobs_to_objectives_with_na_for_other_methods(tmp_path: Path) -> None:
    from sweep.report.colours import method_styles
    from sweep.report.parallel import NA, parallel_axes, parallel_rows
    from sweep.report.read import read_trials

    write_trials(tmp_path / "sweep")
    df, _ = read_trials(tmp_path / "sweep")
    rows = parallel_rows(df)
    assert list(rows["trial_id"])[-1] == "baseline" and "tfail" not in set(rows["trial_id"])
    axes = parallel_axes(rows, "accuracy", method_styles(["magnitude", "taylor"]))
    labels = [a.label for a in axes]
    assert labels == ["method", "magnitude.ratio", "taylor.ratio", "taylor.steps", "accuracy", "latency_ms",
                      "params", "macs"]  # fmt: skip
    method = axes[0]
    assert method.ticktext == ["magnitude", "taylor", "baseline"]
    ratio = axes[1]
    is_mag = (rows["method"] == "magnitude").to_numpy()
    na = ratio.tickvals[ratio.ticktext.index(NA)]
    assert (ratio.values[~is_mag] == na).all() and (ratio.values[is_mag] > na).all()
    assert all(np.isfinite(a.values).all() and len(a.values) == len(rows) for a in axes)
    assert NA not in axes[4].ticktext  # every drawn row has a quality


def test_widths_of_the_best_trial_or_the_selected_one(tmp_path: Path) -> None:
    """The best trial's widths are drawn against the baseline's; a selection.json moves the figure to the
    trial `sweep select` chose."""
    rows = write_trials(tmp_path / "sweep", widths=True)
    ok = [r for r in rows if r["status"] == "ok" and r["trial_id"] != "baseline"]
    best = max(ok, key=lambda r: r["accuracy"])
    names = {p.name for p in report.build_report(tmp_path / "sweep", tmp_path / "out")}
    assert f"widths_{best['trial_id']}.png" in names
    index = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert f"Per-layer widths of the best trial, {best['trial_id']}" in index

    other = next(r for r in ok if r is not best)
    (tmp_path / "sweep" / "selected").mkdir()
    selection = {"chosen": {"trial_id": other["trial_id"]}}
    (tmp_path / "sweep" / "selected" / "selection.json").write_text(json.dumps(selection))
    names = {p.name for p in report.build_report(tmp_path / "sweep", tmp_path / "out2")}
    assert f"widths_{other['trial_id']}.png" in names and f"widths_{best['trial_id']}.png" not in names
    assert "Per-layer widths of the selected trial" in (tmp_path / "out2" / "index.html").read_text(encoding="utf-8")


def test_widths_conventions() -> None:
    """channels win; a depth-only trial (removed blocks, no channels) zeroes its blocks' layers; a trial that
    also pruned channels without recording them, or records nothing, has unknown widths."""
    import pandas as pd

    from sweep.report.widths import trial_widths

    before = {"conv1": 16, "layer1.0.conv1": 16, "layer1.1.conv1": 16, "layer1.10.conv1": 16, "fc": 10}
    blocks = [{"index": i, "name": f"layer1.{i}"} for i in (0, 1, 10)]

    def row(details: dict) -> pd.Series:
        return pd.Series({"trial_id": "t", "method": "m", "info": json.dumps(details)})

    w = trial_widths(row({"channels": {"conv1": 8, "fc": 10, "extra": 4}}), before)
    assert w.after == {"conv1": 8, "fc": 10, "extra": 4} and w.layers[-1] == "extra" and not w.removed
    w = trial_widths(row({"removed": [1], "blocks": blocks, "channel_ratio": 0.0}), before)
    assert w.removed == {"layer1.1.conv1"}  # not layer1.10: block names match whole path parts
    assert w.after == {**before, "layer1.1.conv1": 0}
    assert trial_widths(row({"removed": [1], "blocks": blocks, "channel_ratio": 0.3}), before) is None
    assert trial_widths(row({}), before) is None
    assert trial_widths(row({"removed": [1], "blocks": blocks}), {}) is None  # baseline widths unknown


def test_baseline_widths_are_rebuilt_from_the_registered_model() -> None:
    """A baseline row without stored channels gets the widths of the registered model its summary names."""
    import pandas as pd

    from sweep.report.widths import baseline_channels

    summary = {"model": "small_cnn", "input_shape": [1, 8, 8], "num_classes": 10}
    df = pd.DataFrame([{"trial_id": "baseline", "info": json.dumps({"summary": summary})}])
    assert list(baseline_channels(df).values()) == [32, 64, 128, 10]
    unknown = {**summary, "model": "no.such:model"}
    df = pd.DataFrame([{"trial_id": "baseline", "info": json.dumps({"summary": unknown})}])
    assert baseline_channels(df) == {}


@pytest.mark.parametrize("status", ["stopped_early", "infeasible"])
def test_stopped_early_and_infeasible_rows_are_shown_apart_never_on_the_front(tmp_path: Path, status: str) -> None:
    """A row cut short by successive halving (or over a hard budget) carries figures that would dominate the
    front (cheap and accurate); the report lists it in its own table, counts it, and keeps it off the front."""
    rows = write_trials(tmp_path / "sweep")
    apart = _row("tapart", "magnitude", "ok", 0.99, 0.95, 30)  # 5 % of the costs at 0.99: would lead the front
    apart.update(status=status, error=f"{status}: the reason", finetune_epochs=1 if status == "stopped_early" else 0)
    apart["knob.magnitude.ratio"] = 0.95
    for k in KNOBS:
        apart.setdefault(k, None)
    write_table(tmp_path / "sweep", [*rows, apart], {"name": "demo", "objectives": ["accuracy", "latency_ms"],
                                                     "baseline": BASELINE})
    out = tmp_path / "report"
    report.build_report(tmp_path / "sweep", out)
    index = (out / "index.html").read_text(encoding="utf-8")
    front = index.split('id="front"')[1].split("</table>")[0]
    assert "tapart" not in front
    table = index.split('id="apart"')[1].split("</table>")[0]
    assert "tapart" in table and status in table and "0.9900" in table and f"{status}: the reason" in table
    assert "Stopped early and infeasible trials (1)" in index
    assert f"1 {status.replace('_', ' ')}" in index  # the summary's trial counts


def test_the_sweeps_budgets_are_named_in_the_summary_and_drawn_on_the_plots_of_their_axes(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sweep.report.plots import _plot_budgets

    rows = write_trials(tmp_path / "sweep")
    over = _row("tover", "magnitude", "ok", 0.5, 0.1, 30)  # 90 % of the params: over the budget, not fine-tuned
    over.update(status="infeasible", error="infeasible: params 900,000 > max_params 500,000", finetune_epochs=0)
    for k in KNOBS:
        over.setdefault(k, None)
    budgets = {"max_params": 500_000.0, "min_quality": 0.7}
    write_table(tmp_path / "sweep", [*rows, over], {"name": "demo", "objectives": ["accuracy", "latency_ms"],
                                                    "baseline": BASELINE, "constraints": budgets})
    out = tmp_path / "report"
    report.build_report(tmp_path / "sweep", out)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert ("Budgets (search.constraints):** max_params 500,000, min_quality 0.7: 1 candidate(s) broke a cost "
            "budget right after pruning and were not fine-tuned (infeasible)") in summary
    # each view draws the budgets of its own axes: max_params across the params view, min_quality on every one
    for cost, want in (("params", {"budget: max_params 500,000", "budget: min_quality 0.7"}),
                       ("latency_ms", {"budget: min_quality 0.7"})):
        fig, ax = plt.subplots()
        _plot_budgets(ax, budgets, cost)
        assert {line.get_label() for line in ax.get_lines()} == want
        plt.close(fig)
    # the interactive scatter (quality vs latency) draws the budgets of its axes alone
    text = (out / "interactive.html").read_text(encoding="utf-8")
    assert "budget: min_quality 0.7" in text and "budget: max_params" not in text
    # a table written before budgets were recorded (or a sweep without any) has no such line
    write_trials(tmp_path / "plain")
    report.build_report(tmp_path / "plain", tmp_path / "plain_report")
    assert "Budgets" not in (tmp_path / "plain_report" / "summary.md").read_text(encoding="utf-8")


def test_no_apart_section_without_such_rows(built) -> None:
    sweep_dir, _, _ = built
    index = (sweep_dir / "report" / "index.html").read_text(encoding="utf-8")
    assert 'id="apart"' not in index and "Stopped early" not in index


# --------------------------------------------------------------------------- compressive MBN: the teacher


MBN_TEACHER = {  # as prepare_mbn_baseline stores it in the baseline's summary
    "kind": "mbn", "latency_ms": 40.0, "fit_s": 3.5, "reused": False, "train_points": 1150, "ks": [575, 287, 143],
    "settings": {"V": 100, "clusters": 10}, "val_cluster_accuracy": 0.93, "test_cluster_accuracy": 0.92,
    "val_nmi": 0.88, "test_nmi": 0.87,
    "latency": {"median_ms": 40.0, "iqr_ms": 2.0, "batch": 1, "repeats": 30, "threads": 1, "device": "cpu",
                "runtime": "torch 2.0"},
}  # fmt: skip


def write_mbn_sweep(sweep_dir: Path) -> None:
    """:func:`write_label_free` with an MBN teacher timed at 40 ms per sample on the rows' conditions, except
    trial d, timed on 2 threads: speed-ups baseline 10x, a 20x, c 40x, d 80x (marked)."""
    write_label_free(sweep_dir)
    table = pq.read_table(sweep_dir / "trials.parquet")
    rows = table.to_pylist()
    for r in rows:
        r.update(latency_runtime="torch 2.0", threads=2 if r["trial_id"] == "d" else 1, latency_batch=1, device="cpu")
        if r["trial_id"] == "baseline":
            r["info"] = json.dumps({"summary": {"agreement": 1.0, "teacher": MBN_TEACHER}})
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), sweep_dir / "trials.parquet")


def test_mbn_teacher_report_shows_the_teacher_and_the_speed_up(tmp_path: Path) -> None:
    from sweep.report import interactive
    from sweep.report.read import read_trials
    from sweep.report.teacher import LABEL, speedup, teacher_mark, teacher_of

    write_mbn_sweep(tmp_path / "sweep")
    df, meta = read_trials(tmp_path / "sweep")
    teacher = teacher_of(df)
    assert teacher is not None and teacher.per_sample_ms == 40.0 and teacher.val_nmi == 0.88
    base = df[df["trial_id"] == "baseline"].iloc[0]
    assert speedup(teacher, base) == pytest.approx(40.0 / 4.0)
    # a point at (its latency, agreement 1) on the latency axis; a line at agreement 1 on params and MACs
    assert teacher_mark(teacher, "agreement", "latency_ms")[:3] == ("point", 40.0, 1.0)
    assert teacher_mark(teacher, "agreement", "params")[0] == "line"
    assert teacher_mark(None, "agreement", "params") is None
    styles = {"magnitude": ("k", "o")}
    traces = {t["name"]: t for t in interactive.interactive_traces(df, "agreement", styles, teacher)}
    assert list(traces[LABEL]["x"]) == [40.0] and list(traces[LABEL]["y"]) == [1.0]

    out = tmp_path / "report"
    report.build_report(tmp_path / "sweep", out)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert ("**MBN teacher:** per-sample prediction latency 40 ms (median 40 ± 2 ms per call; torch 2.0, "
            "1 thread(s), batch 1, cpu); clustering accuracy 0.9300 (val), 0.9200 (test); NMI 0.8800 (val), "
            "0.8700 (test)") in summary
    assert "fitted on 1150 unlabeled training inputs in 3.5 s (V=100, k 575/287/143)" in summary
    assert "the dense student is 10x faster" in summary and "**Baseline (dense student):**" in summary
    header, _rule, *lines = [line for line in summary.splitlines() if line.startswith("|")]
    cells = [c.strip() for c in header.split("|")]
    col = cells.index("speed-up vs teacher")
    assert cells[col - 1] == "latency ratio"
    # teacher's per-sample latency / the row's: 40 / 4, 40 / 2, 40 / 1, 40 / 0.5 (timed on other threads: marked)
    assert {line.split("|")[1].strip(): line.split("|")[col].strip() for line in lines} == {
        "baseline": "10x", "a": "20x", "c": "40x", "d": "80x*"}
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "<th>speed-up vs teacher</th>" in index and "<td>MBN teacher</td>" in index
    assert 'alt="agreement vs latency, with the MBN teacher point"' in index
    assert 'alt="agreement vs params, with the MBN teacher as a line at agreement 1"' in index
    assert "MBN teacher" in (out / "interactive.html").read_text(encoding="utf-8")
    text = report.front_table(df, meta["objectives"], quality="agreement")
    assert text.splitlines()[0].rstrip().endswith("speed-up vs teacher  noise-aware  same structure as")
    assert [line.split()[-3] for line in text.splitlines()[2:]] == ["10x", "20x", "40x", "80x*"]


def test_reports_without_an_mbn_teacher_have_no_teacher_and_no_speed_up(built, tmp_path: Path) -> None:
    from sweep.report.read import read_trials
    from sweep.report.tables import front_headers
    from sweep.report.teacher import teacher_of

    sweep_dir, _, _ = built
    write_label_free(tmp_path / "free")  # label-free, but its teacher is a network
    report.build_report(tmp_path / "free", tmp_path / "free_report")
    for source, out in ((sweep_dir, sweep_dir / "report"), (tmp_path / "free", tmp_path / "free_report")):
        for name in ("index.html", "summary.md"):
            page = (out / name).read_text(encoding="utf-8")
            assert "speed-up vs teacher" not in page and "MBN teacher" not in page and "dense student" not in page
        df, meta = read_trials(source)
        assert teacher_of(df) is None
        assert "speed-up" not in report.front_table(df, meta["objectives"], meta["quality"])
    assert "speed-up vs teacher" not in front_headers("agreement")


@pytest.mark.parametrize("dataset", ["unlabeled", "digits"])
def test_summary_says_when_no_labelled_set_was_given(tmp_path: Path, dataset: str) -> None:
    rows = write_trials(tmp_path / "sweep")
    write_table(tmp_path / "sweep", rows, {"name": "demo", "objectives": ["accuracy", "latency_ms"],
                                           "baseline": BASELINE, "dataset": dataset})
    report.build_report(tmp_path / "sweep", tmp_path / "report")
    said = "no labelled set was given" in (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert said == (dataset == "unlabeled")


def test_a_second_render_drops_per_trial_plots_it_no_longer_draws(tmp_path: Path) -> None:
    """Per-trial plots of an earlier render (a trial since gone from the table) are removed; other files a
    user keeps in the report folder stay."""
    write_trials(tmp_path / "sweep")
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "layers_gone.png").write_bytes(b"\x89PNG old")
    (out / "widths_gone.png").write_bytes(b"\x89PNG old")
    written = {p.name for p in report.build_report(tmp_path / "sweep", out)}
    assert not (out / "layers_gone.png").exists() and not (out / "widths_gone.png").exists()
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert written <= {p.name for p in out.iterdir()}


def test_a_report_of_another_sweep_folder_is_not_replaced_without_a_word(tmp_path: Path) -> None:
    """Two sweeps of one name (`sweep run x.yaml --out runs/try2`) share reports/<name>: the second says whose
    report it replaces, and how to draw that one again; drawing the same sweep again says nothing."""
    for d in ("a", "b"):
        write_trials(tmp_path / d)
    out, said = tmp_path / "reports" / "same", []
    report.build_report(tmp_path / "a", out, log=said.append)
    report.build_report(tmp_path / "a", out, log=said.append)
    assert said == []
    report.build_report(tmp_path / "b", out, log=said.append)
    assert said == [f"note: {out} held the report of {(tmp_path / 'a').resolve()}; it now holds this sweep's "
                    f"(`sweep report {(tmp_path / 'a').resolve()} --out DIR` draws that one again)"]


def test_projection_legend_sits_beside_the_axes_not_over_a_point(tmp_path: Path) -> None:
    """A legend inside a scatter (even loc="best") can hide a trial; beside the axes it hides none."""
    from sweep.report import plots

    fig, ax = plots._new_axes((9.5, 5))
    grid = np.linspace(0, 1, 12)
    # points in every corner, so no inside spot is free; the report's longest label too
    for name in ("magnitude", "sr_init", "lnpt", plots.APART_STYLE["infeasible"][1]):
        ax.scatter(*np.meshgrid(grid, grid), s=20, label=name)
    legend = plots.legend_beside(ax)
    plots._save(fig, tmp_path / "p.png", left=0.09, bottom=0.12, top=0.92, right=0.74)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    box, axes = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.x0 >= axes.x1  # wholly right of the axes
    assert box.x1 <= fig.bbox.x1  # and inside the figure, not cut off
