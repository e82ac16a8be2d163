"""One colour per method, shared by every figure of a report (matplotlib PNGs and plotly pages).

Conventions:

* Colours are ``#rrggbb`` strings, which matplotlib and plotly both read, so a method has the very same
  colour in every PNG and on the interactive page.
* Methods take the palette in sorted order (the order of the summary's method list), so a report's
  colours depend only on which methods the sweep ran, not on which trial finished first.
* The baseline is not a method: it always has :data:`BASELINE_COLOUR` and a star.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

# matplotlib's "tab10" as hex, so plotly gets exactly the colours matplotlib draws
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")
BASELINE_COLOUR = "#ffd700"  # gold: the dense model stands apart from every method's colour
BUDGET_COLOUR = "#ff8c00"  # dark orange, dotted: a hard budget's limit (search.constraints) across a plot
BASELINE = "baseline"


class Style(NamedTuple):
    colour: str
    marker: str


def method_styles(methods: Sequence[str]) -> dict[str, Style]:
    """A :class:`Style` per method, methods in sorted order (the baseline row's ``"baseline"`` is left out)."""
    names = sorted({str(m) for m in methods} - {BASELINE})
    return {m: Style(PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, m in enumerate(names)}


def colour_of(method: str, styles: dict[str, Style]) -> str:
    """The colour of ``method`` (the baseline's for the baseline, grey for a method the styles lack)."""
    if method == BASELINE:
        return BASELINE_COLOUR
    style = styles.get(method)
    return style[0] if style else "#999999"
