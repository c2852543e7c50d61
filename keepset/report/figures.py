"""Figures of the report page, as base64 PNG data URIs (matplotlib, Agg backend)."""

from __future__ import annotations

import base64
import io

import numpy as np

#: (label, colour, line style) of the groups compared in the score distributions
GROUPS = {"kept": ("kept", "#1f77b4", "-"), "flagged": ("flagged", "#d62728", "--"),
          "clean": ("clean (truth)", "#2ca02c", "-"), "corrupted": ("corrupted (truth)", "#9467bd", "--")}


def figure_uri(fig, dpi: int = 100) -> str:
    """A matplotlib figure as a PNG data URI; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _bins(v: np.ndarray, n: int = 40) -> np.ndarray:
    """Shared bin edges over the central 99% of the finite values (outliers land in the end bins)."""
    lo, hi = np.percentile(v, [0.5, 99.5])
    if not hi > lo:
        lo, hi = float(v.min()) - 0.5, float(v.max()) + 0.5
    return np.linspace(lo, hi, n + 1)


def score_distributions(columns: dict[str, np.ndarray], directions: dict[str, str], keep: np.ndarray,
                        corrupted: np.ndarray | None = None, max_columns: int = 8) -> str | None:
    """Histograms (density) of every score column [N] for kept vs flagged samples, and clean vs corrupted
    when the truth is known: one panel per (column, comparison), outliers clipped into the end bins.
    Returns a PNG data URI, or None when there is no score column."""
    from keepset.evaluation.plots import pyplot

    names = list(columns)[:max_columns]
    if not names:
        return None
    plt = pyplot()
    rows = [("kept", "flagged")] + ([("clean", "corrupted")] if corrupted is not None else [])
    masks = {"kept": keep, "flagged": ~keep}
    if corrupted is not None:
        masks.update(clean=~corrupted, corrupted=corrupted)
    nrow_blocks = -(-len(names) // 5)  # at most 5 panels a row, rows balanced (6 -> 3 + 3)
    ncol = -(-len(names) // nrow_blocks)
    nrows = nrow_blocks * len(rows)
    height = 2.1 * nrows + 0.5  # inches: 0.55 on top for the legend, 0.3 below for the last tick labels
    fig, axes = plt.subplots(nrows, ncol, figsize=(3.1 * ncol, height), squeeze=False)
    fig.subplots_adjust(left=0.03, right=0.99, bottom=0.3 / height, top=1 - 0.55 / height, hspace=0.45, wspace=0.12)
    handles = {}
    for i, name in enumerate(names):
        v = np.asarray(columns[name], dtype=np.float64)
        finite = np.isfinite(v)
        for r, pair in enumerate(rows):
            ax = axes[(i // ncol) * len(rows) + r][i % ncol]
            if not finite.any():
                ax.set_axis_off()
                continue
            edges = _bins(v[finite])
            for g in pair:
                sel = finite & masks[g]
                if sel.any():
                    label, colour, style = GROUPS[g]
                    counts, _ = np.histogram(np.clip(v[sel], edges[0], edges[-1]), bins=edges, density=True)
                    handles[g] = ax.stairs(counts, edges, color=colour, linestyle=style, lw=1.4,
                                           label=f"{label} ({int(masks[g].sum()):,})")
            arrow = {"higher_keeps": " (higher keeps)", "higher_drops": " (higher drops)"}.get(directions.get(name), "")
            ax.set_title(f"{name}{arrow}", fontsize=9)
            ax.tick_params(labelsize=7.5)
            ax.set_yticks([])
    for j in range(len(names), nrow_blocks * ncol):
        for r in range(len(rows)):
            axes[(j // ncol) * len(rows) + r][j % ncol].set_visible(False)
    order = [g for g in ("kept", "flagged", "clean", "corrupted") if g in handles]
    fig.legend([handles[g] for g in order], [handles[g].get_label() for g in order], loc="upper center",
               ncol=len(order), fontsize=8.5, frameon=False, handlelength=2.5)
    return figure_uri(fig)
