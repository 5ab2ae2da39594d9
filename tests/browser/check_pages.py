"""The rendered book as a reader sees it: every page of the toc opened in headless Chromium.

Usage: ``python tests/browser/check_pages.py [_build/html]`` (run by ``make browser-check``, after the
strict book build). Exit status 0 when every page passes, 1 when one fails, and 0 with a plain
"skipped" line when no Chromium is installed (``CHROMIUM=/path/to/chrome`` picks one).

Each page is loaded (``file://``) in an iframe of a small wrapper page, so that after MathJax has
typeset it the wrapper can hand back both the page's DOM and a few layout measurements through
``--dump-dom``. From them a page fails on

* raw TeX in the visible text (``\\(``, ``$$``, ``\\frac``, a ``$`` next to TeX, ...) outside
  code, pre, script and typeset math: math that MathJax never saw, or Markdown that broke it apart;
* a MathJax error node (``mjx-merror`` / ``merror``) or an undefined control sequence (red ``\\foo``);
* an ``<img>``, script or stylesheet whose local file is missing, or that needs the network;
* an internal link whose target file, or ``#anchor`` in it, is missing;
* a formula wider than its column (a horizontal scroll bar, or clipped) at a desktop window width.

The functions below (``check_dom``, ``check_layout``) need no browser; ``tests/test_browser.py`` runs
them on hand-written snippets.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Elements whose text a reader does not see as prose (or that MathJax produced).
IGNORED_TEXT = {"script", "style", "code", "pre", "textarea", "kbd", "samp", "noscript", "template", "svg",
                "math", "mjx-container", "mjx-assistive-mml", "head", "title"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track",
        "wbr"}
RAW_TEX = [
    (re.compile(r"\\[()\[\]]"), "TeX delimiter"),
    (re.compile(r"\$\$"), "'$$'"),
    (re.compile(r"\\[A-Za-z]{2,}"), "TeX command"),
    (re.compile(r"\\[{}|,;!]"), "TeX escape"),
    # a lone dollar next to TeX-looking text ($x, $\alpha, x$, }$), not a price such as $5
    (re.compile(r"\$(?=[A-Za-z\\{(|])|(?<=[A-Za-z}|)])\$"), "'$' beside TeX"),
    (re.compile(r"[_^]\{"), "TeX sub/superscript"),
]
EXTERNAL = ("http:", "https:", "//")
# Window width of the layout check: a laptop screen, where the theme shows both sidebars.
WINDOW = (1200, 1000)


@dataclass
class PageReport:
    page: str
    formulas: int = 0
    display: int = 0
    images: int = 0  # <img> in the page's article (figures, plots)
    links: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        state = "OK" if not self.failures else f"{len(self.failures)} failure(s)"
        head = (f"{self.page}: {self.formulas} formulas typeset ({self.display} display), {self.images} images, "
                f"{self.links} internal links checked: {state}")
        return "\n".join([head] + [f"    - {f}" for f in self.failures])


class _Collector(HTMLParser):
    """One pass over a DOM: visible text runs, math and error nodes, images, links, ids."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []   # (tag, ignored-for-text)
        self.text: list[tuple[str, str]] = []     # (visible text run, innermost element path)
        self.ids: set[str] = set()
        self.formulas = self.display = 0
        self.errors: list[str] = []
        self.images: list[tuple[str, bool]] = []  # (src, inside the page's <article>)
        self.links: list[str] = []
        self.resources: list[tuple[str, str]] = []  # (tag, url) of scripts and stylesheets
        self._undefined: list[str] | None = None    # text of a red <mtext>: MathJax's undefined macro

    def _ignored(self) -> bool:
        return bool(self.stack) and self.stack[-1][1]

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if a.get("name") and tag == "a":
            self.ids.add(a["name"])
        if tag == "mjx-container":
            self.formulas += 1
            self.display += a.get("display") == "true"
        if tag in ("mjx-merror", "merror") or "data-mjx-error" in a:
            self.errors.append(a.get("data-mjx-error") or a.get("title") or tag)
        if tag == "mtext" and (a.get("mathcolor") or "").lower() == "red":   # noundefined: \foo in red
            self._undefined = []
        if tag == "img":
            self.images.append((a.get("src") or "", any(t == "article" for t, _ in self.stack)))
        if tag == "a" and a.get("href") is not None:
            self.links.append(a["href"])
        if tag == "script" and a.get("src"):
            self.resources.append(("script", a["src"]))
        if tag == "link" and a.get("href") and "stylesheet" in (a.get("rel") or ""):
            self.resources.append(("stylesheet", a["href"]))
        if tag in VOID:
            return
        ignored = self._ignored() or tag in IGNORED_TEXT
        self.stack.append((tag, ignored))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID and self.stack and self.stack[-1][0] == tag:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if tag == "mtext" and self._undefined is not None:
            text = "".join(self._undefined).strip()
            if text.startswith("\\"):
                self.errors.append(f"undefined control sequence {text}")
            self._undefined = None
        for i in range(len(self.stack) - 1, -1, -1):  # tolerate unclosed children
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        if self._undefined is not None:
            self._undefined.append(data)
        if not self._ignored() and data.strip():
            self.text.append((data, "/".join(t for t, _ in self.stack[-3:])))


def _ids_of(path: Path, cache: dict) -> set[str]:
    if path not in cache:
        c = _Collector()
        c.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = c.ids
    return cache[path]


def _snippet(text: str, start: int, end: int, width: int = 40) -> str:
    s = text[max(0, start - width):end + width]
    return " ".join(s.split())


def check_dom(dom: str, page: Path, root: Path | None = None, report: PageReport | None = None,
              id_cache: dict | None = None) -> PageReport:
    """Check a rendered DOM (a string) of the page file ``page``; local paths resolve beside it.

    ``root`` (the html folder) only shortens names in messages. Returns a PageReport.
    """
    page = Path(page).resolve()
    root = Path(root).resolve() if root else page.parent
    rep = report or PageReport(page=os.path.relpath(page, root))
    id_cache = {} if id_cache is None else id_cache
    c = _Collector()
    c.feed(dom)
    c.close()
    rep.formulas, rep.display = c.formulas, c.display

    for data, where in c.text:
        for rx, what in RAW_TEX:
            m = rx.search(data)
            if m:
                rep.failures.append(f"raw TeX ({what}) in text <{where}>: ...{_snippet(data, m.start(), m.end())}...")
                break
    for e in c.errors:
        rep.failures.append(f"MathJax error: {e}")

    def local(url: str) -> Path | None:
        parts = urlsplit(url)
        if parts.scheme == "file":
            return Path(unquote(parts.path))
        if parts.scheme or url.startswith("//"):
            return None
        return (page.parent / unquote(parts.path)).resolve() if parts.path else page

    for src, in_article in c.images:
        rep.images += in_article
        if src.startswith("data:"):
            continue
        if not src:
            rep.failures.append("image without src")
            continue
        target = local(src)
        if target is None:
            rep.failures.append(f"image needs the network: {src}")
        elif not target.is_file():
            rep.failures.append(f"missing image: {src}")
    for kind, url in c.resources:
        if url.startswith("data:"):
            continue
        target = local(url)
        if target is None:
            rep.failures.append(f"{kind} needs the network: {url}")
        elif not target.is_file():
            rep.failures.append(f"missing {kind}: {url}")

    seen = set()
    for href in c.links:
        parts = urlsplit(href)
        if parts.scheme in ("mailto", "javascript", "tel", "data") or href.startswith(EXTERNAL) or href in ("", "#"):
            continue
        if href in seen:
            continue
        seen.add(href)
        rep.links += 1
        target = local(href)
        if target is None:
            continue
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            rep.failures.append(f"broken link: {href} ({os.path.relpath(target, root)} does not exist)")
            continue
        anchor = unquote(parts.fragment)
        if anchor:
            if target == page:
                ids = c.ids | _ids_of(page, id_cache)
            elif target.suffix == ".html":
                ids = _ids_of(target, id_cache)
            else:
                continue
            if anchor not in ids:
                rep.failures.append(f"broken anchor: {href} (no id '{anchor}' in {os.path.relpath(target, root)})")
    return rep


def check_layout(layout: dict, rep: PageReport) -> PageReport:
    """Failures from the wrapper's measurements: a formula wider than its column."""
    for eq in layout.get("overflow", []):
        what = f"display equation {eq['id'] or '(no label)'}" if eq.get("display", True) else "inline formula"
        rep.failures.append(f"{what} wider than its column ({eq['width']}px in {eq['column']}px: a scroll bar "
                            f"or clipped) at a {WINDOW[0]}px window: {eq['text'][:60]}")
    return rep


# The wrapper page: loads the page in a same-sized iframe, waits for MathJax, then writes the page's
# DOM (as escaped text) and the measurements into its own DOM, which --dump-dom prints.
_WRAPPER = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body style="margin:0">
<pre id="layout">pending</pre><div id="dom" hidden></div>
<iframe id="page" src="%(url)s" style="width:%(w)dpx;height:%(h)dpx;border:0"></iframe>
<script>
const frame = document.getElementById('page');
function report() {
  const d = frame.contentDocument, w = frame.contentWindow, overflow = [];
  function block(e) {   // the nearest block ancestor: the column a formula must fit in
    for (let b = e.parentElement; b; b = b.parentElement) {
      const disp = w.getComputedStyle(b).display;
      if (disp === 'block' || disp === 'list-item' || disp === 'table-cell' || disp === 'flow-root') return b;
    }
    return d.body;
  }
  d.querySelectorAll('mjx-container').forEach(function (c) {
    const display = c.getAttribute('display') === 'true';
    const box = display ? (c.closest('div.math') || block(c)) : block(c);
    const s = w.getComputedStyle(box), r = box.getBoundingClientRect();
    const left = r.left + parseFloat(s.paddingLeft) + parseFloat(s.borderLeftWidth);
    const right = r.right - parseFloat(s.paddingRight) - parseFloat(s.borderRightWidth);
    const rc = c.getBoundingClientRect();
    // a display formula's own scroll bar or its box's (clientWidth is 0 for inline elements),
    // or any formula sticking out of its column
    const scrolls = display && (c.scrollWidth > c.clientWidth + 1 || box.scrollWidth > box.clientWidth + 1);
    if (scrolls || rc.right > right + 1 || rc.left < left - 1) {
      let width = rc.width, column = right - left;
      if (display && c.scrollWidth > c.clientWidth + 1) { width = c.scrollWidth; column = c.clientWidth; }
      else if (display && box.scrollWidth > box.clientWidth + 1) { width = box.scrollWidth; column = box.clientWidth; }
      overflow.push({id: display ? (box.id || '') : '', display: display, width: Math.round(width),
                     column: Math.round(column),
                     text: (c.querySelector('mjx-assistive-mml') || c).textContent.replace(/\\s+/g, ' ')});
    }
  });
  document.getElementById('dom').textContent = d.documentElement.outerHTML;
  document.getElementById('layout').textContent = JSON.stringify({overflow: overflow});
}
frame.addEventListener('load', function () {
  let w;
  try { w = frame.contentWindow; void frame.contentDocument.body; }
  catch (e) { document.getElementById('layout').textContent = 'no access: ' + e; return; }
  const mj = w.MathJax;
  if (mj && mj.startup && mj.startup.promise) {
    mj.startup.promise.then(report, function (e) {
      document.getElementById('layout').textContent = 'MathJax failed: ' + e; });
  } else { report(); }
});
</script></body></html>
"""


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    for name in CHROMIUM_NAMES:
        if shutil.which(name):
            return shutil.which(name)
    return None


def render(chromium: str, page: Path, budget_ms: int = 30000, timeout_s: float = 180) -> tuple[str, dict | str]:
    """The page's DOM after MathJax (a string) and the wrapper's layout dict, or an error string."""
    with tempfile.TemporaryDirectory(prefix="check-pages-") as tmp:
        wrapper = Path(tmp) / "wrapper.html"
        wrapper.write_text(_WRAPPER % {"url": page.resolve().as_uri(), "w": WINDOW[0], "h": WINDOW[1]},
                           encoding="utf-8")
        cmd = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage",
               "--allow-file-access-from-files", f"--user-data-dir={tmp}/profile",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--virtual-time-budget={budget_ms}",
               "--dump-dom", wrapper.as_uri()]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    dom = out.stdout
    m = re.search(r'<pre id="layout">(.*?)</pre>', dom, re.S)
    layout_text = html.unescape(m.group(1)) if m else f"no wrapper output (chromium exit {out.returncode})"
    t = re.search(r'<div id="dom" hidden="">(.*?)</div>', dom, re.S)
    page_dom = html.unescape(t.group(1)) if t else ""
    try:
        return page_dom, json.loads(layout_text)
    except json.JSONDecodeError:
        return page_dom, layout_text


def toc_pages(book_dir: Path, html_dir: Path) -> list[Path]:
    """The built pages of the toc's files (root first), in toc order."""
    import yaml

    toc = yaml.safe_load((book_dir / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for key in ("chapters", "sections", "parts"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk({k: v for k, v in toc.items() if k != "root"})
    return [html_dir / (Path(f).with_suffix("").as_posix() + ".html") for f in files]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("html_dir", nargs="?", default="_build/html")
    ap.add_argument("--book", default=".", help="folder of _toc.yml")
    ap.add_argument("--budget-ms", type=int, default=int(os.environ.get("CHECK_PAGES_BUDGET_MS", 30000)),
                    help="Chromium's virtual time budget per page")
    args = ap.parse_args(argv)
    html_dir = Path(args.html_dir).resolve()
    chromium = find_chromium()
    if chromium is None:
        print("browser check skipped: no Chromium found (apt-get install chromium, or set CHROMIUM=...)")
        return 0
    pages = toc_pages(Path(args.book), html_dir)
    missing = [p for p in pages if not p.is_file()]
    if missing:
        print("browser check: pages of the toc not built (run the book build first): "
              + ", ".join(os.path.relpath(p, html_dir) for p in missing))
        return 1
    t0, failed, cache = time.time(), 0, {}
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"browser check: {len(pages)} pages of {html_dir} in {version or chromium}")
    for page in pages:
        rep = PageReport(page=os.path.relpath(page, html_dir))
        try:
            dom, layout = render(chromium, page, args.budget_ms)
        except subprocess.TimeoutExpired as e:
            dom, layout = "", f"Chromium still running after {e.timeout:.0f} s"
        if isinstance(layout, str) or not dom:
            if layout == "pending":
                layout = f"MathJax had not finished within --virtual-time-budget={args.budget_ms} ms"
            rep.failures.append(f"page not rendered: {layout}")
        else:
            check_dom(dom, page, html_dir, rep, cache)
            check_layout(layout, rep)
        failed += bool(rep.failures)
        print(rep.summary(), flush=True)
    print(f"browser check: {len(pages) - failed} of {len(pages)} pages pass ({time.time() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
