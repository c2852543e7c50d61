"""Benchmark plots people can read: distinct styles, only measured points, legends outside, iso-F1, y range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from keepset.evaluation import plots  # noqa: E402


def test_segments_never_bridge_a_missing_value():
    grid = [0.1, 0.3, 0.5, 0.7, 0.9]
    runs = plots.segments([0.9, 0.1, 0.3, 0.7], [4, 1, 2, 3], grid)
    assert runs == [([0.1, 0.3], [1.0, 2.0]), ([0.7, 0.9], [3.0, 4.0])]
    assert plots.segments([0.1, 0.3], [1.0, float("nan")], grid) == [([0.1], [1.0])]


def test_every_method_gets_its_own_colour_and_marker():
    from keepset.bench.detection import METHODS as DET
    from keepset.bench.pruning import METHODS as PRU

    for methods in (DET, PRU):
        styles = plots.method_styles(methods)
        assert len({s["color"] for s in styles.values()}) == len(methods)
        assert len({s["marker"] for s in styles.values()}) == len(methods)


def test_iso_f1_curves_have_constant_f1():
    plt = plots.pyplot()
    fig, ax = plt.subplots()
    plots.iso_f1(ax, levels=(0.3, 0.8))
    lines = ax.get_lines()
    assert len(lines) == 2
    for f, line in zip((0.3, 0.8), lines):
        r, p = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert np.allclose(2 * p * r / (p + r), f) and p.max() <= 1 + 1e-6
    plt.close(fig)


def test_collapse_floor():
    assert plots.collapse_floor([0.8, 0.85, 0.86], 0.87) is None
    floor = plots.collapse_floor([0.05, 0.6, 0.8, 0.86], 0.87)
    assert 0.435 <= floor < 0.6


def _capture(monkeypatch):
    import keepset.evaluation.report as report

    figs = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figs.__setitem__(Path(path).name, fig))
    return figs


def _legend_outside_axes(fig):
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    return all(not legend.overlaps(ax.get_window_extent()) for ax in fig.axes if ax.get_visible())


def test_detection_plots_draw_only_measured_rates(monkeypatch):
    from keepset.bench import detection

    figs = _capture(monkeypatch)
    methods = ["stage2", "loss", "cleanlab"]
    settings = [(k, r) for k in ("symmetric", "asymmetric") for r in (0.2, 0.4, 0.6)]
    agg = {(k, r, m): {"auroc": (0.9 - r / 2 + i / 50, 0.01, 3), "precision": (0.8, 0.02, 3),
                       "recall": (0.7, 0.02, 3)} for k, r in settings for i, m in enumerate(methods)}
    detection._plots(agg, settings, methods, Path("unused"))
    fig = figs["auroc_vs_rate.png"]
    for ax in fig.axes:
        for line in ax.get_lines():
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            if len(x) > 1 and line.get_linestyle() not in ("None", "none", ""):
                assert np.ptp(x) == 0 or np.ptp(y) == 0  # only the chance line and separators, no data line
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == ["0.2", "0.4", "0.6"]  # no tick at an unmeasured rate
    assert _legend_outside_axes(fig)
    pr = figs["precision_recall.png"]
    assert _legend_outside_axes(pr)
    assert sum(1 for ax in pr.axes for line in ax.get_lines() if line.get_linestyle() == ":") == 6 * 5  # iso-F1


def test_pruning_plot_breaks_lines_at_gaps_and_the_axis_for_collapsed_methods(monkeypatch):
    from keepset.bench import pruning

    figs = _capture(monkeypatch)
    ratios = [0.1, 0.3, 0.5, 0.7, 0.9]
    agg = {(0.4, "full", 1.0): {"accuracy": (0.85, 0.0, 3)}}
    for r in ratios:
        agg[(0.4, "mimic", r)] = {"accuracy": (0.8 + r / 20, 0.01, 3)}
        if r != 0.5:
            agg[(0.4, "random", r)] = {"accuracy": (0.7 + r / 10, 0.01, 3)}
        agg[(0.4, "el2n", r)] = {"accuracy": (0.02 if r < 0.5 else 0.8, 0.01, 3)}
    agg[(0.4, "stage2", "auto")] = {"accuracy": (0.84, 0.01, 3), "kept_fraction": (0.6, 0.01, 3)}
    pruning._plot(agg, [0.4], ratios, ["random", "mimic", "stage2", "el2n"], Path("unused"))
    fig = figs["accuracy_vs_ratio.png"]
    main, low = [ax for ax in fig.axes if ax.get_visible()]
    assert main.get_ylim()[0] > 0.425 and low.get_ylim() == (0.0, main.get_ylim()[0])  # broken axis
    random_colour = plots.method_styles(pruning.METHODS)["random"]["color"]
    for ax in (main, low):
        for line in ax.get_lines():
            if line.get_color() == random_colour and len(line.get_xdata()) > 1:
                x = list(line.get_xdata())
                assert not (0.3 in x and 0.7 in x and 0.5 not in x)  # no line across the missing 0.5
    assert _legend_outside_axes(fig)
