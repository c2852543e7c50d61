"""The report as a person sees it: rendered by headless Chromium (Debian's `chromium`; `.ci/run` installs it).

Checks the screenshot (a real, non-blank page) and the DOM after the page's script ran: the gallery holds
the first page of cards, every thumbnail decoded in the browser, and markup in captions and class names shows
as text without running.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless browser test: Debian's `chromium` is not "
                                                          "installed (apt-get install chromium)")

CAPTION = "<script>document.title='pwned'</script>"
CLASS = "<img src=x onerror=\"document.title='pwned2'\">"


def _chromium(tmp: Path, *args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


class _Dom(HTMLParser):
    """Cards of the gallery, their images and the texts of the dumped DOM."""

    def __init__(self):
        super().__init__()
        self.title, self.stack, self.cards, self.imgs, self.scripts, self.text = "", [], 0, [], 0, []
        self.gallery = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("id") == "gallery":
            self.gallery = a
        if tag == "figure" and a.get("class") == "card":
            self.cards += 1
        if tag == "img" and a.get("alt", "").startswith("sample "):  # gallery thumbnails
            self.imgs.append(a)
        if tag == "script":
            self.scripts += 1
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        self.text.append(data)


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    """A run folder over 300 digits ids (shuffled, 150 flagged) with markup in captions and a class name."""
    from keepset.data import load_spec
    from keepset.report import write_report

    tmp = tmp_path_factory.mktemp("browser")
    digits = load_spec("digits")
    rng = np.random.default_rng(0)
    pos = rng.choice(len(digits), 300, replace=False)
    true = digits.labels[pos]
    corrupted = rng.random(300) < 0.4
    given = np.where(corrupted, (true + rng.integers(1, 10, 300)) % 10, true)
    mimic = np.where(corrupted, rng.normal(-1, 0.5, 300), rng.normal(0.5, 0.3, 300))
    keep = np.zeros(300, bool)
    keep[np.argsort(-mimic)[:150]] = True
    cols = {"id": digits.ids[pos], "label": given, "caption": np.array([CAPTION] * 300),
            "true_label": true, "corrupted": corrupted, "mimic_mean": mimic,
            "reference_pred": np.where(rng.random(300) < 0.9, true, given), "keep": keep}
    run = tmp / "run"
    run.mkdir()
    table = pa.table({k: pa.array(v) for k, v in cols.items()})
    table = table.replace_schema_metadata({b"keepset": json.dumps({"directions": {"mimic_mean": "higher_keeps"}})})
    pq.write_table(table, run / "scores.parquet")
    names = [CLASS] + [str(c) for c in range(1, 10)]
    (run / "summary.json").write_text(json.dumps({
        "data": "digits", "n": 300, "kept": 150, "flagged": 150, "class_names": names,
        "quality": {"estimated": 0.5, "reference_check": 0.6, "true": float(1 - corrupted.mean())},
        "warnings": [CAPTION]}))
    res = write_report(run)
    return tmp, res


@pytest.mark.slow  # 2-9 s: Chromium's first start with a fresh profile
def test_screenshot_is_a_rendered_page(digits_report):
    from PIL import Image

    tmp, res = digits_report
    shot = tmp / "shot.png"
    proc = _chromium(tmp, f"--screenshot={shot}", "--window-size=1280,2000", "--virtual-time-budget=3000",
                     res["html"].resolve().as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    im = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert im.shape == (2000, 1280, 3)
    assert im.std() > 20  # not a blank page
    assert len(np.unique(im.reshape(-1, 3), axis=0)) > 200  # text, tables, figures: many colours
    dark = (im.mean(2) < 100).mean(0)
    assert (dark > 0).sum() > 300  # dark text / thumbnails across many columns of the page


@pytest.mark.parametrize("page, cards", [(1, 100), (2, 50)])
def test_dom_after_scripts_gallery_thumbnails_and_no_injection(digits_report, page, cards):
    tmp, res = digits_report
    url = res["html"].resolve().as_uri() + ("" if page == 1 else f"#page={page}")
    proc = _chromium(tmp, "--dump-dom", "--virtual-time-budget=5000", url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    assert dom.gallery is not None and dom.gallery.get("data-rendered") == "1"
    assert dom.gallery.get("data-page") == str(page)
    assert dom.cards == cards
    assert len(dom.imgs) == cards
    assert all(a.get("data-loaded") == "1" for a in dom.imgs), [a.get("data-loaded") for a in dom.imgs][:10]
    assert all(a["src"].startswith("data:image/png;base64,") for a in dom.imgs)
    assert dom.title == "keepset report: run"  # neither injected script ran
    assert dom.scripts == 2  # only the page's data block and its own script
    text = "".join(dom.text)
    assert text.count(CAPTION) >= cards  # every caption shows its markup as text
    assert CLASS in text  # the class name too
