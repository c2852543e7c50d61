"""Progress output in a log (stderr not a terminal): whole lines, no carriage returns, the final count kept."""

import io
import sys

from keepset import _progress


def test_log_progress_is_written_as_whole_lines(monkeypatch):
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(_progress, "LOG_INTERVAL_S", 0.0)
    for _ in _progress.progress_bar(range(5), desc="scoring"):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("scoring") for line in lines)
    assert "5/5" in lines[-1]


def test_disabled_progress_writes_nothing_and_still_iterates(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert list(_progress.progress_bar(range(3), desc="x", enabled=False)) == [0, 1, 2]
    assert log.getvalue() == ""


def test_log_progress_is_rate_limited_even_with_postfix_updates(monkeypatch):
    """The training loop sets a postfix every few steps; in a log that must not force a line each time."""
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(_progress, "LOG_INTERVAL_S", 3600.0)
    bar = _progress.progress_bar(total=100, desc="training")
    for step in range(100):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
        bar.set_description("training")
    bar.close()
    lines = log.getvalue().splitlines()
    assert 1 <= len(lines) <= 2, lines  # the opening line and the final count, nothing per step
    assert "100/100" in lines[-1] and "loss=0.010" in lines[-1]
