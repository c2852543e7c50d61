"""The report page's inline style sheet and script (no external resource of any kind).

The script renders the gallery from the JSON data block with ``createElement`` and ``textContent`` only
(never ``innerHTML``), so no string from the data is ever parsed as markup. The page's Content Security
Policy allows exactly these two blocks (by hash) and ``data:`` images; nothing else loads or runs.
"""

CSS = """
:root { --fg: #1d2125; --muted: #5f6b76; --line: #d8dde3; --bg: #ffffff; --soft: #f4f6f8; --bad: #b3261e;
        --good: #1b6e3a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       background: var(--bg); margin: 0 auto; max-width: 1240px; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 4px 0 2px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.sub, .note { color: var(--muted); }
.note { font-size: 13px; margin: 4px 0 8px; }
.warn { background: #fff4e5; border-left: 4px solid #e08a00; padding: 8px 12px; margin: 8px 0; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; }
.tile { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px;
        min-width: 150px; }
.tile .n { font-size: 22px; font-weight: 600; }
.tile .l { color: var(--muted); font-size: 12px; }
.row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.t, th.t { text-align: left; }
caption.note { caption-side: top; text-align: left; font-weight: 600; color: var(--fg); padding-bottom: 4px; }
.s0 { background: #ffffff; } .s1 { background: #eef4fb; } .s2 { background: #dde9f6; } .s3 { background: #cbdef1; }
.s4 { background: #b9d3ec; } .s5 { background: #a6c7e6; } .s6 { background: #93bbe0; } .s7 { background: #7fafda; }
.s8 { background: #6aa2d3; } .s9 { background: #5595cc; }
img.fig { max-width: 100%; height: auto; border: 1px solid var(--line); }
.controls { display: flex; gap: 10px; align-items: center; margin: 8px 0; flex-wrap: wrap; }
.controls button { padding: 3px 12px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 10px; }
.card { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: var(--bg);
        overflow-wrap: anywhere; }
.card img, .card .noimg { display: block; width: 96px; height: 96px; margin: 0 auto 6px; object-fit: contain;
        image-rendering: pixelated; background: #000; }
.card .noimg { background: var(--soft); color: var(--muted); font-size: 12px; text-align: center; line-height: 96px; }
.card figcaption { font-size: 12px; }
.card figcaption div { display: flex; justify-content: space-between; gap: 6px; }
.card .k { color: var(--muted); }
.card .v { text-align: right; }
.card .diff .v, .card .corrupt .v { color: var(--bad); font-weight: 600; }
.card .id .v { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
.card .caption { margin: 4px 0; font-style: italic; }
.card .score { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 11px; }
pre.md { background: var(--soft); padding: 8px; overflow-x: auto; }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; }
"""

JS = r"""
(function () {
  "use strict";
  var block = document.getElementById("gallery-data");
  var grid = document.getElementById("gallery");
  if (!block || !grid) { return; }
  var data = JSON.parse(block.textContent);
  var PNG = "data:image/png;base64,";
  var statusEl = document.getElementById("gallery-status");
  var prev = document.getElementById("gallery-prev");
  var next = document.getElementById("gallery-next");
  var pick = document.getElementById("gallery-class");
  var rows = data.rows, view = rows, page = 0, size = data.page_size;
  var asked = /^#page=(\d+)$/.exec(window.location.hash);  // open a given page: report.html#page=3
  if (asked) { page = parseInt(asked[1], 10) - 1; }

  function className(c) {
    if (c === null || c < 0) { return "\u2013"; }
    if (!data.classes || data.classes[c] === String(c)) { return String(c); }
    return data.classes[c] + " (" + c + ")";
  }
  function show(v) { return v === null ? "\u2013" : String(v); }
  function line(parent, key, value, cls) {
    var d = document.createElement("div");
    if (cls) { d.className = cls; }
    var k = document.createElement("span"); k.className = "k"; k.textContent = key;
    var v = document.createElement("span"); v.className = "v"; v.textContent = value;
    d.appendChild(k); d.appendChild(v); parent.appendChild(d);
  }
  function card(r) {
    var f = document.createElement("figure");
    f.className = "card";
    var t = r[8], src = (t !== null && t >= 0) ? data.thumbs[t] : null;
    if (typeof src === "string" && src.indexOf(PNG) === 0) {
      var img = document.createElement("img");
      img.addEventListener("load", function () { img.setAttribute("data-loaded", img.naturalWidth > 0 ? "1" : "0"); });
      img.addEventListener("error", function () { img.setAttribute("data-loaded", "0"); });
      img.alt = "sample " + String(r[0]);
      img.src = src;
      f.appendChild(img);
    } else {
      var ph = document.createElement("div");
      ph.className = "noimg";
      ph.textContent = "no image";
      f.appendChild(ph);
    }
    var c = document.createElement("figcaption");
    line(c, "id", String(r[0]), "id");
    if (r[1] !== null) { line(c, "given", className(r[1])); }
    if (r[2] !== null) { line(c, "reference", className(r[2]), r[2] !== r[1] ? "diff" : ""); }
    if (r[3] !== null) { line(c, "true", className(r[3]), r[4] === 1 ? "corrupt" : ""); }
    if (r[5] !== null) {
      var p = document.createElement("p");
      p.className = "caption";
      p.textContent = r[5];
      c.appendChild(p);
    }
    line(c, "issue score", show(r[6]));
    for (var i = 0; i < data.score_columns.length; i++) { line(c, data.score_columns[i], show(r[7][i]), "score"); }
    f.appendChild(c);
    return f;
  }
  function render() {
    var pages = Math.max(1, Math.ceil(view.length / size));
    page = Math.min(Math.max(page, 0), pages - 1);
    var frag = document.createDocumentFragment();
    var end = Math.min(view.length, (page + 1) * size);
    for (var i = page * size; i < end; i++) { frag.appendChild(card(view[i])); }
    grid.replaceChildren(frag);
    statusEl.textContent = "page " + (page + 1) + " of " + pages + " \u00b7 " + view.length + " samples";
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
    grid.setAttribute("data-page", String(page + 1));
    grid.setAttribute("data-rendered", "1");
  }
  prev.addEventListener("click", function () { page -= 1; render(); });
  next.addEventListener("click", function () { page += 1; render(); });
  if (pick) {
    pick.addEventListener("change", function () {
      var v = pick.value;
      view = v === "" ? rows : rows.filter(function (r) { return String(r[1]) === v; });
      page = 0;
      render();
    });
  }
  render();
})();
"""
