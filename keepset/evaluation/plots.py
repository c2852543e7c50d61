"""Plot helpers shared by the benchmark figures and the HTML report (matplotlib, Agg backend).

The rules they implement: every method keeps one colour AND one marker in every subplot; only measured
points are drawn (a line never bridges a value that was not measured); legends sit outside the axes;
precision-recall axes carry iso-F1 curves; a few collapsed methods do not squash the y range of the others.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from keepset.evaluation.report import pyplot

#: qualitative colours, far apart and readable on white (matplotlib's tab10, then black and two darker hues)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#6b3e00", "#004d40", "#aa0066")
#: markers that stay distinct at 6-8 pt, filled where possible
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*", "d", "8")


def method_styles(methods: Sequence[str]) -> dict[str, dict]:
    """One style per method, by its position in ``methods``: {name: {"color", "marker"}}.

    Colour and marker cycle with different periods (14 and 14, offset for the second round), so the first
    14 methods differ in both and later ones still differ in at least one. Pass the same full list to
    every subplot (e.g. the benchmark's METHODS) so a method looks the same everywhere.
    """
    out = {}
    for i, m in enumerate(methods):
        round_ = i // len(PALETTE)
        out[m] = {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[(i + 3 * round_) % len(MARKERS)]}
    return out


def dodge(n: int, width: float = 0.6) -> np.ndarray:
    """Horizontal offsets [n] in (-width/2, width/2), centred, for n methods sharing one category."""
    if n <= 1:
        return np.zeros(max(n, 0))
    return (np.arange(n) - (n - 1) / 2) * (width / n)


def segments(x: Sequence[float], y: Sequence[float], measured_x: Sequence[float]) -> list[tuple[list, list]]:
    """Split (x, y) into runs of consecutive measured x values.

    ``measured_x``: the sorted grid every method was supposed to be measured at. A method missing one grid
    value gets two separate runs, so no line is drawn across the gap.
    """
    grid = {float(v): i for i, v in enumerate(measured_x)}
    pts = sorted((grid[float(a)], float(a), float(b)) for a, b in zip(x, y) if float(a) in grid and np.isfinite(b))
    runs: list[tuple[list, list]] = []
    last = None
    for gi, a, b in pts:
        if last is None or gi != last + 1:
            runs.append(([], []))
        runs[-1][0].append(a)
        runs[-1][1].append(b)
        last = gi
    return runs


def iso_f1(ax, levels: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 0.9)) -> None:
    """Draw iso-F1 curves (precision as a function of recall at fixed F1) on a precision-recall axis.

    Each curve is labelled with its F1 just outside the right spine (where it meets recall 1), away
    from the data; add ``iso_f1_handle()`` to the legend to say what the dotted curves are.
    """
    for f in levels:
        r = np.linspace(f / (2 - f) + 1e-9, 1.0, 200)  # below this recall, F1 = f needs precision > 1
        p = f * r / (2 * r - f)
        ax.plot(r, p, color="0.55", lw=0.8, ls=":", zorder=0)
        ax.annotate(f"{f:g}", xy=(1.0, f / (2 - f)), xycoords=("axes fraction", "data"), xytext=(2, 0),
                    textcoords="offset points", fontsize=6.5, color="0.4", ha="left", va="center",
                    annotation_clip=False)


def iso_f1_handle():
    """A legend handle and label for the dotted iso-F1 curves."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color="0.55", lw=0.8, ls=":"), "iso-F1 curve\n(F1 at its right end)"


def legend_outside(fig, handles, labels, *, title: str | None = None, where: str = "right", ncol: int = 1):
    """One legend for the whole figure, outside every axis (right or below)."""
    if where == "right":
        return fig.legend(handles, labels, loc="outside right center", title=title, fontsize=8, ncol=ncol,
                          frameon=False)
    return fig.legend(handles, labels, loc="outside lower center", title=title, fontsize=8,
                      ncol=ncol or min(6, len(labels)), frameon=False)


def handles_for(styles: dict[str, dict], names: Sequence[str], line: bool = False,
                labels: dict[str, str] | None = None) -> tuple[list, list]:
    """Legend handles (marker, optionally with a line) and labels for ``names`` in that order."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=styles[n]["color"], marker=styles[n]["marker"], markersize=7,
                      linestyle="-" if line else "none") for n in names]
    return handles, [(labels or {}).get(n, n) for n in names]


def collapse_floor(values: Sequence[float], reference: float) -> float | None:
    """The lower bound of the useful y range of an accuracy plot, or None when nothing has collapsed.

    A value below half of ``reference`` (e.g. the all-data accuracy) counts as collapsed: such a method lost
    more than half of what training on everything achieves. The floor sits just below the lowest value that
    did not collapse.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0 or not np.isfinite(reference):
        return None
    cut = 0.5 * reference
    low, ok = v[v < cut], v[v >= cut]
    if low.size == 0 or ok.size == 0:
        return None
    return float(max(cut, ok.min() - 0.04 * (v.max() - ok.min() + 1e-9) - 0.02))


def broken_axes(fig, spec, floor: float, top: float, bottom: float = 0.0, ratio: float = 4.0):
    """Two axes sharing x in one gridspec cell: the main one on [floor, top], a short one on [bottom, floor)
    for the collapsed values, with diagonal break marks. Returns (main, low)."""
    sub = spec.subgridspec(2, 1, height_ratios=[ratio, 1], hspace=0.05)
    main = fig.add_subplot(sub[0])
    low = fig.add_subplot(sub[1], sharex=main)
    main.set_ylim(floor, top)
    low.set_ylim(bottom, floor)
    main.spines["bottom"].set_visible(False)
    low.spines["top"].set_visible(False)
    main.tick_params(axis="x", which="both", bottom=False, labelbottom=False)
    kw = dict(marker=[(-1, -0.5), (1, 0.5)], markersize=10, linestyle="none", color="k", mec="k", mew=1,
              clip_on=False)
    main.plot([0, 1], [0, 0], transform=main.transAxes, **kw)
    low.plot([0, 1], [1, 1], transform=low.transAxes, **kw)
    return main, low


__all__ = ["PALETTE", "MARKERS", "method_styles", "dodge", "segments", "iso_f1", "iso_f1_handle", "legend_outside",
           "handles_for", "collapse_floor", "broken_axes", "pyplot"]
