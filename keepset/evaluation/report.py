"""Aggregation over seeds, markdown tables and plots (matplotlib, Agg backend) for the benchmarks."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, population standard deviation and count of the finite values (NaN, NaN, 0 if none)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std()), int(v.size)


def group(records: Sequence[dict], by: Sequence[str], metrics: Sequence[str]) -> dict[tuple, dict]:
    """Group flat records by the keys ``by`` (seed excluded) and aggregate every metric over seeds.

    Returns {key tuple: {metric: (mean, std, n)}}, keys in first-seen order.
    """
    buckets: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        key = tuple(r[k] for k in by)
        for m in metrics:
            buckets[key][m].append(r.get(m))
    return {k: {m: mean_std(v[m]) for m in metrics} for k, v in buckets.items()}


def fmt(ms: tuple[float, float, int], digits: int = 3) -> str:
    """``mean ± std`` (or ``–`` when there is no value)."""
    mean, std, n = ms
    if n == 0:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    from keepset.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (ImportError with the fix if missing)."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'keepset[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def distinct_colours(names: Sequence[str]) -> dict[str, tuple]:
    """One colour per name, as far apart as matplotlib's ``tab20`` allows.

    ``tab20`` stores each hue as a dark/light pair; the first ten names get the ten dark hues and
    the next ten the light ones, so neighbouring rows of a legend never share a hue. Past 20 names
    the colours repeat.
    """
    plt = pyplot()
    cmap = plt.get_cmap("tab20")
    return {name: cmap((2 * i) % 20 + (i // 10) % 2) for i, name in enumerate(names)}
