"""The report page of a benchmark folder (``results.json`` of ``keepset bench detection | pruning``).

The tables and plots are re-made from ``results.json`` with the benchmark's own ``write_reports`` (in a
temporary folder), so the page always shows the current plots; a folder of another benchmark shows the
markdown tables and PNG plots it holds.
"""

from __future__ import annotations

import json
import tempfile
import types
from pathlib import Path

from keepset.report.html import esc, img, markdown, page, png_uri

#: config keys that say which benchmark wrote a results.json
_KINDS = {"detection": ("kinds", "rates"), "pruning": ("ratios", "noise")}


def read_results(path: Path) -> dict:
    """results.json as {"config": dict, "cells": dict}; ValueError with the fix when it is not one."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc}); rerun the benchmark") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict) or not isinstance(doc.get("cells"), dict):
        raise ValueError(f"{path} is not a keepset benchmark results file "
                         "(expected {\"config\": ..., \"cells\": ...})")
    return doc


def benchmark_kind(config: dict) -> str | None:
    for kind, keys in _KINDS.items():
        if all(k in config for k in keys):
            return kind
    return None


def _regenerate(kind: str, doc: dict, out: Path) -> None:
    from keepset.bench import detection, pruning

    store = types.SimpleNamespace(config=doc["config"], cells=doc["cells"])
    module = detection if kind == "detection" else pruning
    try:
        module.write_reports(store, out)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"results.json of the {kind} benchmark is missing fields ({type(exc).__name__}: {exc}); "
                         "rerun the benchmark") from None


def render_benchmark(folder: Path) -> tuple[str, dict]:
    """The page of a benchmark folder and a few facts about it ({"kind", "cells", "plots"})."""
    doc = read_results(folder / "results.json")
    kind = benchmark_kind(doc["config"])
    with tempfile.TemporaryDirectory(prefix="keepset-report-") as tmp:
        src = Path(tmp) if kind else folder
        if kind and doc["cells"]:
            _regenerate(kind, doc, src)
        texts = [(p.name, p.read_text(encoding="utf-8", errors="replace")) for p in sorted(src.glob("*.md"))]
        plots = [(p.name, png_uri(p.read_bytes())) for p in sorted(src.glob("*.png"))]
    body = [f"<h1>keepset report: {esc(kind or 'benchmark')} benchmark</h1>",
            f"<p class=\"sub\">{esc(folder.resolve())} · {len(doc['cells']):,} finished cells</p>"]
    if not doc["cells"]:
        body.append("<p class=\"warn\">results.json holds no finished cell yet.</p>")
    for name, uri in plots:
        body.append(f"<h2>{esc(name)}</h2>" + img(uri, name))
    for name, text in texts:
        body.append(f"<section class=\"md\"><p class=\"note\">{esc(name)}</p>{markdown(text)}</section>")
    cfg = json.dumps(doc["config"], indent=1, sort_keys=True, default=str)
    body.append(f"<h2>Configuration</h2><pre class=\"md\">{esc(cfg)}</pre>")
    body.append(_footer())
    return page(f"keepset report: {kind or 'benchmark'}", "\n".join(body)), {
        "kind": kind, "cells": len(doc["cells"]), "plots": len(plots)}


def _footer() -> str:
    from keepset._version import __version__

    return f"<footer>written by keepset {esc(__version__)} · a static page: no network, no external resource</footer>"
