"""``report.html``: the batch report as one self-contained page beside ``report.csv``.

One table row per input, built from the same rows as the CSV (``result_row`` / ``failed_row``)
plus a small thumbnail of each overlay, embedded as a ``data:`` URI. Inline CSS and JS only and
a Content-Security-Policy that forbids any fetch: the page opens from a USB stick with no
network. Rows are sortable (click a header) and filterable (text box, status); by default the
ungradable come first, then the failed, then the ok, each highest score first. Sort and filter
live in the URL fragment (``report.html#sort=score&dir=desc&status=ok&q=idrid``).

Memory stays bounded for large batches: each thumbnail is decoded at a reduced scale straight
from the overlay JPEG already written (or passed in ready-made), and the page is streamed into
the temporary file that is then renamed into place (``files.atomic_write``), so at most one
thumbnail is held at a time.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

from ..files import atomic_write
from ..result import SCORE_DECIMALS

THUMB_SIDE = 160
STATUS_ORDER = {"ungradable": 0, "failed": 1, "ok": 2}
QUADRANTS = (
    ("upper_left", "UL", "upper left"),
    ("upper_right", "UR", "upper right"),
    ("lower_left", "LL", "lower left"),
    ("lower_right", "LR", "lower right"),
)
# (row kind, file-name suffix, link label); the visual report is linked only when present
LINKS = (
    ("overlay", "_overlay.jpg", "overlay"),
    ("mask", "_mask.png", "mask"),
    ("json", ".json", "JSON"),
    ("report", "_report.jpg", "report"),
)
_ESCAPED_BYTE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _float(value: object) -> float | None:
    try:
        v = float(str(value))
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def default_order(rows: Sequence[Mapping[str, object]]) -> list[int]:
    """Indices of ``rows``: ungradable, failed, ok; within a status highest score first
    (no score last), then input order."""

    def key(i: int) -> tuple[int, float, int]:
        r = rows[i]
        score = _float(r.get("image_score", ""))
        return (
            STATUS_ORDER.get(str(r.get("status", "")), 3),
            -score if score is not None else float("inf"),
            i,
        )

    return sorted(range(len(rows)), key=key)


def _on_disk(printable: str) -> Path | None:
    """The file a row names, or None: ``printable_path`` turned bytes that are not UTF-8 into
    ``\\xNN`` text, so the escaped bytes are restored first (then the text as written)."""
    if not printable:
        return None
    try:
        raw = b"".join(
            bytes([int(part, 16)]) if i % 2 else part.encode("utf-8", "surrogateescape")
            for i, part in enumerate(_ESCAPED_BYTE.split(printable))
        )
    except UnicodeEncodeError:
        raw = os.fsencode(printable)
    for candidate in (Path(os.fsdecode(raw)), Path(printable)):
        try:
            if candidate.is_file():
                return candidate
        except (OSError, ValueError):
            continue
    return None


def _href(target: Path, folder: Path) -> str:
    """A relative URL from ``folder`` to ``target``: the file name's bytes percent-encoded."""
    try:
        rel = os.path.relpath(target, folder)
    except ValueError:  # another drive on Windows
        rel = str(target.resolve())
    return quote(os.fsencode(rel).replace(os.sep.encode(), b"/"), safe="/")


def make_thumbnail(source: str | os.PathLike | bytes, side: int = THUMB_SIDE) -> bytes | None:
    """A JPEG at most ``side`` px on its longest side, or None when the image is unreadable.
    JPEGs decode at a reduced DCT scale (``draft``): a 2048 px overlay never becomes a
    full-size bitmap."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.draft("RGB", (side, side))
            im = im.convert("RGB")
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
            return buf.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _verdict(row: Mapping[str, object]) -> tuple[str, str, int]:
    """Text, CSS class and sort rank of the verdict cell."""
    status = row.get("status")
    if status == "failed":
        return "failed", "v-failed", -2
    if status != "ok":
        return "not gradable", "v-ungradable", -1
    detected = str(row.get("hemorrhage_detected", ""))
    if detected == "1":
        return "hemorrhage", "v-yes", 2
    if detected == "0":
        return "no hemorrhage", "v-no", 0
    return "score only", "v-none", 1


def _num_cell(value: object, digits: int | None = None) -> str:
    v = _float(value)
    if v is None:
        return '<td class="num" data-v="">&ndash;</td>'
    text = f"{v:.{digits}f}" if digits is not None else _esc(value)
    return f'<td class="num" data-v="{v!r}">{text}</td>'


def _row_html(
    index: int,
    row: Mapping[str, object],
    folder: Path,
    thumbnail: bytes | None,
) -> str:
    status = str(row.get("status", ""))
    name = str(row.get("input", ""))
    overlay = _on_disk(str(row.get("overlay", "")))
    if thumbnail is None and overlay is not None:
        thumbnail = make_thumbnail(overlay)
    if thumbnail is not None:
        uri = "data:image/jpeg;base64," + base64.b64encode(thumbnail).decode("ascii")
        thumb = f'<img src="{uri}" alt="overlay of {_esc(name)}" loading="eager">'
        if overlay is not None:
            thumb = f'<a href="{_esc(_href(overlay, folder))}">{thumb}</a>'
    else:
        thumb = '<span class="nothumb">no image</span>'

    links = []
    stem_source = overlay or _on_disk(str(row.get("json", "")))
    for kind, suffix, label in LINKS:
        target = _on_disk(str(row.get(kind, ""))) if kind in row else None
        if target is None and stem_source is not None:  # e.g. the visual report: by name
            base = os.fsencode(stem_source.name)
            for s in (b"_overlay.jpg", b".json"):
                if base.endswith(s):
                    sibling = stem_source.with_name(os.fsdecode(base[: -len(s)] + suffix.encode()))
                    target = sibling if sibling.is_file() else None
                    break
        if target is not None:
            links.append(f'<a href="{_esc(_href(target, folder))}">{label}</a>')

    verdict, vclass, vrank = _verdict(row)
    cut = max(name.rfind("/"), name.rfind(os.sep)) + 1
    folder_part, base_part = name[:cut], name[cut:]
    error = str(row.get("error", ""))
    if error.startswith(name + ": "):  # a failed row's message repeats the input: once is enough
        error = error[len(name) + 2 :]
    notes: list[str] = []  # an ungradable row's reasons are also its flags: each once
    for part in (error, str(row.get("flags", ""))):
        notes += [n for n in (x.strip() for x in part.split(";")) if n and n not in notes]
    note = "; ".join(notes)
    search = " ".join((name, status, verdict, note)).lower()
    cells = [
        f'<td class="thumb">{thumb}</td>',
        f'<td class="name" data-v="{_esc(name.lower())}"><span class="dir">{_esc(folder_part)}'
        f"</span><b>{_esc(base_part)}</b></td>",
        f'<td data-v="{STATUS_ORDER.get(status, 3)}"><span class="st st-{_esc(status)}">'
        f"{_esc(status)}</span></td>",
        f'<td data-v="{vrank}" class="{vclass}">{_esc(verdict)}</td>',
        _num_cell(row.get("image_score", ""), SCORE_DECIMALS),
        _num_cell(row.get("burden_percent", ""), 3),
        _num_cell(row.get("lesion_count", "")),
        *(_num_cell(row.get(q, "")) for q, _, _ in QUADRANTS),
        f'<td class="note" data-v="{_esc(note.lower())}">{_esc(note)}</td>',
        f'<td class="files">{" ".join(links)}</td>',
    ]
    return (
        f'<tr data-i="{index}" data-status="{_esc(status)}" data-text="{_esc(search)}">'
        + "".join(cells)
        + "</tr>\n"
    )


_CSS = """
:root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430}
body{margin:16px 20px;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px}
#summary{margin:0 0 10px;color:#4a5565}
.bar{display:flex;gap:12px;align-items:center;margin:0 0 10px}
.bar input,.bar select{font:inherit;padding:4px 8px;border:1px solid #b9c0cc;border-radius:4px}
.bar input{width:320px}
#shown{color:#4a5565}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:middle}
th{background:#e9ecf1;position:sticky;top:0;font-size:13px;white-space:nowrap;z-index:1}
th.sortable{cursor:pointer;user-select:none}
th.sortable:hover{background:#dde2ea}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.thumb{width:164px;padding:2px 4px}
td.thumb img{display:block;max-width:160px;max-height:160px;border-radius:2px}
.nothumb{display:inline-block;width:160px;padding:24px 0;text-align:center;color:#8a93a3;
background:#eef0f3;font-size:12px}
td.name{word-break:break-all;max-width:280px;font-family:ui-monospace,monospace;font-size:12px}
td.name .dir{color:#8a93a3}
td.name b{font-weight:600}
td.note{max-width:260px;font-size:12px;color:#4a5565}
td.files a{margin-right:6px;white-space:nowrap}
.st{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.st-ok{background:#dcf2e3;color:#17603a}
.st-ungradable{background:#fde9c7;color:#8a4b00}
.st-failed{background:#f9d4d4;color:#9b1c1c}
.v-yes{color:#b01515;font-weight:600}
.v-no{color:#17603a}
.v-ungradable,.v-failed,.v-none{color:#8a93a3}
tr[hidden]{display:none}
#js-errors{color:#9b1c1c}
#js-errors:empty{display:none}
"""

# The first script only collects errors (window.onerror) into #js-errors; the second sorts,
# filters and checks that every thumbnail decoded (body[data-broken-images]).
_ERROR_JS = """
window.__errors = [];
function __report(msg) {
  window.__errors.push(String(msg));
  var ul = document.getElementById("js-errors");
  if (ul) {
    var li = document.createElement("li");
    li.textContent = String(msg);
    ul.appendChild(li);
  }
  document.documentElement.setAttribute("data-js-errors", String(window.__errors.length));
}
window.addEventListener("error", function (e) {
  if (e.target && e.target.tagName === "IMG") {
    e.target.setAttribute("data-broken", "1");
  } else {
    __report((e.message || "error") + " at " + (e.lineno || "?") + ":" + (e.colno || "?"));
  }
}, true);
window.addEventListener("unhandledrejection", function (e) { __report("unhandled: " + e.reason); });
"""

_MAIN_JS = """
(function () {
  "use strict";
  var table = document.getElementById("report");
  var tbody = table.tBodies[0];
  var rows = Array.prototype.slice.call(tbody.rows);
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var q = document.getElementById("q");
  var statusSel = document.getElementById("status");
  var shown = document.getElementById("shown");
  var state = {sort: "status", dir: "asc", q: "", status: ""};

  function colIndex(key) {
    for (var i = 0; i < heads.length; i++) if (heads[i].dataset.key === key) return i;
    return -1;
  }
  function numericKey(key) { return heads[colIndex(key)].dataset.type === "num"; }
  function cellValue(row, i, numeric) {
    var v = row.cells[i].getAttribute("data-v");
    if (numeric) return v === "" || v === null ? null : parseFloat(v);
    return v === null ? "" : v;
  }
  function sortRows() {
    var i = colIndex(state.sort);
    if (i < 0) { state.sort = "status"; i = colIndex("status"); }
    var numeric = heads[i].dataset.type === "num";
    var sign = state.dir === "desc" ? -1 : 1;
    rows.sort(function (a, b) {
      var va = cellValue(a, i, numeric), vb = cellValue(b, i, numeric);
      var ia = +a.dataset.i, ib = +b.dataset.i;
      if (numeric) {
        if (va === null && vb !== null) return 1;   /* empty cells last either way */
        if (vb === null && va !== null) return -1;
        if (va !== null && vb !== null && va !== vb) return sign * (va - vb);
      } else if (va !== vb) {
        return sign * (va < vb ? -1 : 1);
      }
      return ia - ib;   /* ties: the default order (status, then highest score) */
    });
    var frag = document.createDocumentFragment();
    rows.forEach(function (r) { frag.appendChild(r); });
    tbody.appendChild(frag);
    heads.forEach(function (h, j) {
      if (j === i) h.setAttribute("aria-sort", state.dir === "desc" ? "descending" : "ascending");
      else h.removeAttribute("aria-sort");
    });
  }
  function filterRows() {
    var needle = state.q.trim().toLowerCase(), n = 0;
    rows.forEach(function (r) {
      var ok = (!state.status || r.dataset.status === state.status) &&
               (!needle || r.dataset.text.indexOf(needle) >= 0);
      r.hidden = !ok;
      if (ok) n++;
    });
    shown.textContent = "showing " + n + " of " + rows.length;
    shown.setAttribute("data-shown", String(n));
  }
  function saveState() {
    var p = new URLSearchParams();
    if (state.sort !== "status" || state.dir !== "asc") {
      p.set("sort", state.sort);
      p.set("dir", state.dir);
    }
    if (state.status) p.set("status", state.status);
    if (state.q) p.set("q", state.q);
    var h = p.toString();
    try {
      history.replaceState(null, "", h ? "#" + h : location.pathname);
    } catch (e) { /* some browsers refuse it on file: pages; the view still works */ }
  }
  function loadState() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (p.get("sort") && colIndex(p.get("sort")) >= 0) state.sort = p.get("sort");
    if (p.get("dir") === "desc" || p.get("dir") === "asc") state.dir = p.get("dir");
    else if (p.get("sort")) state.dir = numericKey(state.sort) ? "desc" : "asc";
    state.status = p.get("status") || "";
    state.q = p.get("q") || "";
    q.value = state.q;
    statusSel.value = state.status;
    if (statusSel.value !== state.status) { state.status = ""; statusSel.value = ""; }
  }

  heads.forEach(function (h) {
    if (!h.classList.contains("sortable")) return;
    h.tabIndex = 0;
    function go() {
      if (state.sort === h.dataset.key) state.dir = state.dir === "asc" ? "desc" : "asc";
      else { state.sort = h.dataset.key; state.dir = h.dataset.type === "num" ? "desc" : "asc"; }
      sortRows(); saveState();
    }
    h.addEventListener("click", go);
    h.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); }
    });
  });
  q.addEventListener("input", function () { state.q = q.value; filterRows(); saveState(); });
  statusSel.addEventListener("change", function () {
    state.status = statusSel.value; filterRows(); saveState();
  });
  window.addEventListener("hashchange", function () { loadState(); sortRows(); filterRows(); });

  loadState();
  sortRows();
  filterRows();

  function checkImages() {
    var imgs = document.querySelectorAll("img"), broken = 0;
    Array.prototype.forEach.call(imgs, function (im) {
      if (!im.complete || im.naturalWidth === 0) { im.setAttribute("data-broken", "1"); broken++; }
    });
    document.body.setAttribute("data-images", String(imgs.length));
    document.body.setAttribute("data-broken-images", String(broken));
  }
  if (document.readyState === "complete") checkImages();
  else window.addEventListener("load", checkImages);
  document.body.setAttribute("data-ready", "1");
})();
"""


def _head(title: str) -> str:
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n"
        f"<script>{_ERROR_JS}</script>\n</head>\n"
    )


def _summary(rows: Sequence[Mapping[str, object]]) -> str:
    counts = {s: 0 for s in STATUS_ORDER}
    detected = 0
    for r in rows:
        s = str(r.get("status", ""))
        counts[s] = counts.get(s, 0) + 1
        detected += str(r.get("hemorrhage_detected", "")) == "1"
    parts = [f"{counts[s]} {s}" for s in ("ok", "ungradable", "failed")]
    return (
        f"{len(rows)} images: {', '.join(parts)}; hemorrhage detected in {detected}. "
        "Thumbnails are overlays; ungradable photographs report no findings."
    )


def _columns() -> str:
    cols = [
        ("thumb", "Overlay", "", False, ""),
        ("input", "Image", "text", True, ""),
        ("status", "Status", "text", True, ""),
        ("verdict", "Verdict", "num", True, ""),
        ("score", "Score", "num", True, "image score (0-1)"),
        ("burden", "Burden %", "num", True, "lesion area as % of the field of view"),
        ("lesions", "Lesions", "num", True, "lesion count"),
        *(
            (q, short, "num", True, f"lesions in the {long} quadrant")
            for q, short, long in QUADRANTS
        ),
        ("note", "Flags / reason", "text", True, ""),
        ("files", "Files", "", False, ""),
    ]
    out = []
    for key, label, typ, sortable, tip in cols:
        attrs = f' data-key="{key}"'
        if sortable:
            attrs += f' class="sortable" data-type="{typ}"'
        if tip:
            attrs += f' title="{_esc(tip)}"'
        out.append(f'<th scope="col"{attrs}>{_esc(label)}</th>')
    return "<tr>" + "".join(out) + "</tr>"


def render_html_report(
    out: TextIO,
    rows: Sequence[Mapping[str, object]],
    folder: Path,
    thumbnails: Mapping[int, bytes] | None = None,
    title: str = "hemoseg-edge batch report",
) -> None:
    """Write the page to ``out``; links are relative to ``folder`` (where the page lives).
    ``thumbnails``: ready-made JPEG thumbnails by row index; other rows' thumbnails are made
    from the overlay file their row names."""
    thumbnails = thumbnails or {}
    out.write(_head(title))
    out.write(f'<body>\n<h1>{_esc(title)}</h1>\n<p id="summary">{_esc(_summary(rows))}</p>\n')
    out.write(
        '<div class="bar"><input id="q" type="search" placeholder="filter: name, flag, reason'
        '&hellip;" aria-label="text filter">'
        '<select id="status" aria-label="status filter"><option value="">all statuses</option>'
        '<option value="ungradable">ungradable</option><option value="failed">failed</option>'
        '<option value="ok">ok</option></select><span id="shown"></span></div>\n'
        '<ul id="js-errors"></ul>\n'
    )
    out.write(f'<table id="report">\n<thead>{_columns()}</thead>\n<tbody>\n')
    for rank, i in enumerate(default_order(rows)):
        out.write(_row_html(rank, rows[i], folder, thumbnails.get(i)))
    out.write(f"</tbody>\n</table>\n<script>{_MAIN_JS}</script>\n</body>\n</html>\n")


def write_html_report(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, object]],
    thumbnails: Mapping[int, bytes] | None = None,
    title: str = "hemoseg-edge batch report",
) -> None:
    """Write ``report.html`` atomically (readers never see half a page), streamed row by row
    into the temporary file so a large batch holds one thumbnail at a time."""
    path = Path(path)
    folder = path.parent

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as f:
            render_html_report(f, rows, folder, thumbnails, title)

    atomic_write(path, _write)
