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
