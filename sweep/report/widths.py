"""Per-layer widths of one trial (the selected one, else the best), next to the dense baseline's.

Conventions (read from the rows' ``info`` JSON, never from a method's name):

* A trial's widths are ``info["channels"]``: ``{conv or linear layer name: output channels}`` after
  pruning (the engine's ``channel_counts``).
* The baseline's widths are its row's ``info["channels"]`` or ``info["summary"]["channels"]`` when stored;
  otherwise they are rebuilt from the registered model its summary names (``model``, ``input_shape``,
  ``num_classes``): the builder the sweep trained, so the same layers and widths.  A model that cannot be
  rebuilt here (a user builder not importable) leaves the baseline's widths unknown.
* A trial without ``channels`` that records removed residual blocks (``info["removed"]`` indices into
  ``info["blocks"]``, each with a dotted ``name``) changed depth only, unless it says it also pruned
  channels (a positive ``info["channel_ratio"]``): its widths are the baseline's with every layer inside a
  removed block at 0.  Otherwise its widths are unknown and no figure is drawn.
* Layers keep the baseline's order (forward order of ``named_modules``); a layer only the trial has is
  appended.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from .colours import colour_of
from .rows import info, is_baseline, num

WIDTHS_PREFIX = "widths_"


class Widths(NamedTuple):
    """Per-layer widths of one trial, ``before`` (baseline, may be empty) and ``after``, by layer name."""

    trial_id: str
    method: str
    layers: list[str]
    before: dict[str, int]
    after: dict[str, int]
    removed: set[str]  # layers inside removed residual blocks


def _int_map(value: object) -> dict[str, int]:
    """``value`` as ``{name: int}`` keeping only finite numbers ({} when not a mapping)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): int(num(v)) for k, v in value.items() if np.isfinite(num(v))}


def _rebuilt_channels(summary: dict) -> dict[str, int]:
    """Widths of the registered model ``summary`` names, built untrained; {} when it cannot be built."""
    try:
        from sweep.engine.channels import channel_counts
        from sweep.models import build_model

        shape = summary["input_shape"]
        model = build_model(summary["model"], num_classes=int(summary["num_classes"]), in_channels=int(shape[0]),
                            input_size=int(shape[-1]))  # fmt: skip
        return _int_map(channel_counts(model))
    except Exception:  # widths are a figure, not a result: an unbuildable model only leaves them out
        return {}


def baseline_channels(df: pd.DataFrame) -> dict[str, int]:
    """The dense baseline's widths (see the module docstring); {} when unknown."""
    rows = df[is_baseline(df)]
    if rows.empty:
        return {}
    details = info(rows.iloc[0])
    summary = details.get("summary") if isinstance(details.get("summary"), dict) else {}
    stored = _int_map(details.get("channels")) or _int_map(summary.get("channels"))
    return stored or (_rebuilt_channels(summary) if summary.get("model") else {})


def removed_layers(details: dict, layers: list[str]) -> set[str]:
    """The ``layers`` inside the residual blocks ``details`` records as removed."""
    removed = details.get("removed")
    blocks = details.get("blocks")
    if not isinstance(removed, list) or not isinstance(blocks, list):
        return set()
    names = {str(b.get("name")) for b in blocks if isinstance(b, dict) and b.get("index") in removed and b.get("name")}
    return {layer for layer in layers if any(layer.startswith(n + ".") for n in names)}


def trial_widths(row: pd.Series, before: dict[str, int]) -> Widths | None:
    """The widths of ``row`` against ``before`` (the baseline's); None when they are unknown."""
    details = info(row)
    after = _int_map(details.get("channels"))
    removed = removed_layers(details, list(before))
    if not after:
        depth_only = isinstance(details.get("removed"), list) and not num(details.get("channel_ratio")) > 0
        if not before or not depth_only:
            return None
        after = {layer: 0 if layer in removed else width for layer, width in before.items()}
    layers = [*before, *(k for k in after if k not in before)]
    return Widths(str(row["trial_id"]), str(row["method"]), layers, before, after, removed)


def plot_widths(w: Widths, title: str, styles: dict, path: Path) -> None:
    """Horizontal bars per layer: the baseline's width as a grey outline, the trial's filled in its method's
    colour; layers of removed blocks labelled "removed"."""
    fig, ax = _axes(len(w.layers))
    y = np.arange(len(w.layers))
    after = [w.after.get(layer, 0) for layer in w.layers]
    if w.before:
        ax.barh(y, [w.before.get(layer, 0) for layer in w.layers], height=0.8, color="none",
                edgecolor="grey", linewidth=0.8, label="baseline")  # fmt: skip
    ax.barh(y, after, height=0.55, color=colour_of(w.method, styles), label=f"trial {w.trial_id} ({w.method})")
    for i, layer in enumerate(w.layers):
        if layer in w.removed:
            ax.text(0.5, i, "removed", va="center", fontsize=6, color="crimson")
    ax.set_yticks(y)
    ax.set_yticklabels(w.layers, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("output channels (conv) / features (linear)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.subplots_adjust(left=0.3, right=0.97, bottom=0.08, top=0.94)
    fig.savefig(path, format="png")


def _axes(n_layers: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, max(3.0, 0.2 * n_layers + 1.4)), dpi=100)
    return fig, fig.add_subplot()
