"""Safe HTML building blocks: escaping, JSON data blocks, tables, the page skeleton with its CSP.

Every string that comes from the data (class names, captions, ids, paths, warnings, file names) goes
through ``esc`` (server-side text and attributes) or ``script_json`` (the gallery's data block).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from typing import Sequence

from keepset.report.assets import CSS, JS


def esc(value) -> str:
    """HTML-escape any value's text, quotes included (safe in text and in quoted attributes)."""
    return html.escape(str(value), quote=True)


def _clean(obj):
    """NaN / inf -> None, recursively (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def script_json(obj) -> str:
    """JSON safe inside ``<script type="application/json">``: ``<``, ``>``, ``&`` and every non-ASCII
    character (U+2028 / U+2029 included) are written as ``\\uXXXX`` escapes, so no ``</script>`` or comment
    opener can appear in the text; JSON.parse gives back the exact strings."""
    text = json.dumps(_clean(obj), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def fmt(value, digits: int = 3) -> str:
    """A number for a table cell: fixed digits, ``–`` for None / NaN; other values escaped as text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return esc(value)


def pct(num: float, den: float) -> str:
    return "–" if not den else f"{100.0 * num / den:.1f}%"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], text_cols: Sequence[int] = (0,),
          cell_class: Sequence[Sequence[str]] | None = None, caption: str | None = None) -> str:
    """An HTML table. ``header`` is escaped here; ``rows`` hold cells that are ALREADY safe HTML (use ``esc``
    or ``fmt`` on data). ``text_cols``: left-aligned columns; ``cell_class``: a CSS class per cell."""
    out = ["<table>"]
    if caption:
        out.append(f"<caption class=\"note\">{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th class=\"{'t' if i in text_cols else ''}\">{esc(h)}</th>"
                                       for i, h in enumerate(header)) + "</tr></thead><tbody>")
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            cls = " ".join(filter(None, ["t" if i in text_cols else "",
                                         cell_class[r][i] if cell_class is not None else ""]))
            cells.append(f"<td class=\"{cls}\">{cell}</td>" if cls else f"<td>{cell}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def tiles(items: Sequence[tuple[str, str]]) -> str:
    """Big-number tiles [(value, label)], both escaped here."""
    return "<div class=\"tiles\">" + "".join(
        f"<div class=\"tile\"><div class=\"n\">{esc(v)}</div><div class=\"l\">{esc(lab)}</div></div>"
        for v, lab in items) + "</div>"


def img(uri: str, alt: str) -> str:
    """An embedded image; only ``data:image/png;base64,`` URIs are accepted (no external resource)."""
    if not uri.startswith("data:image/png;base64,"):
        raise ValueError("the report embeds PNG data URIs only")
    return f"<img class=\"fig\" src=\"{esc(uri)}\" alt=\"{esc(alt)}\">"


def png_uri(raw: bytes) -> str:
    """PNG bytes as a data URI (ValueError when the bytes are not a PNG)."""
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG file")
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def page(title: str, body: str, data: dict | None = None) -> str:
    """The whole document. ``title`` is escaped here; ``body`` must already be safe HTML. ``data``: the
    gallery's JSON data (embedded with ``script_json``); with it, the gallery script is included.

    The Content Security Policy forbids every external resource and every script and style but the page's
    own (by hash): even a string that escaped escaping could neither load nor run anything.
    """
    script = ""
    csp = f"default-src 'none'; img-src data:; style-src {_sha256(CSS)}; base-uri 'none'; form-action 'none'"
    if data is not None:
        script = (f"<script type=\"application/json\" id=\"gallery-data\">{script_json(data)}</script>"
                  f"<script>{JS}</script>")
        csp += f"; script-src {_sha256(JS)}"
    else:
        csp += "; script-src 'none'"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n{script}\n</body></html>\n")


def markdown(text: str) -> str:
    """The benchmark's results.md as HTML: headings, pipe tables and paragraphs, every character escaped
    (no raw HTML, no links: a minimal converter for the tables keepset writes)."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            i += 1
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{esc(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            body = [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append(table(block[0], [[esc(c) for c in r] for r in body]))
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith("#") \
                    and not lines[i].lstrip().startswith("|"):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{esc(' '.join(para))}</p>")
    return "\n".join(out)
