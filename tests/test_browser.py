"""The browser check of the rendered book (tests/browser/check_pages.py) catches what a reader would see.

The DOM checks run on hand-written snippets and need no browser. Two tests open small pages with the
book's own MathJax (the sphinx-mathjax-offline copy) in headless Chromium; they are skipped, with a
plain message, where no Chromium is installed. The check of the real build runs after the strict book
build (`make browser-check`, part of `make test`), not here.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("check_pages", Path(__file__).parent / "browser" / "check_pages.py")
cp = importlib.util.module_from_spec(_spec)
sys.modules["check_pages"] = cp
_spec.loader.exec_module(cp)

CLEAN = """<!DOCTYPE html><html><head><title>t</title><script src="local.js"></script></head><body><article>
<p>The joint <mjx-container class="MathJax" jax="CHTML"><mjx-math><mjx-mi>x</mjx-mi></mjx-math>
<mjx-assistive-mml><math><mi>x</mi></math></mjx-assistive-mml></mjx-container> costs $5, see
<a href="#sec">below</a> and <a href="other.html#eq-1">Eq. 1</a>.</p>
<pre>\\frac{a}{b} $$ \\(x\\)</pre><p><code>\\mathcal{M}</code></p>
<script>const tex = "\\\\(x\\\\)";</script>
<img src="fig.png" alt="a figure"><img src="data:image/png;base64,AAAA">
<section id="sec"><a href="https://example.org/x.html#nope">out</a> <a href="mailto:a@b.c">mail</a></section>
</article></body></html>"""


@pytest.fixture
def site(tmp_path):
    (tmp_path / "fig.png").write_bytes(b"\x89PNG")
    (tmp_path / "local.js").write_text("")
    (tmp_path / "other.html").write_text('<html><body><div id="eq-1"></div></body></html>')
    return tmp_path


def _check(site, body, name="page.html"):
    page = site / name
    page.write_text(body)
    return cp.check_dom(body, page, site)


def _with(body, snippet):
    return CLEAN.replace("</article>", snippet + "</article>")


def test_clean_page_passes(site):
    rep = _check(site, CLEAN)
    assert rep.failures == []
    assert (rep.formulas, rep.images, rep.links) == (1, 2, 2)
    assert "OK" in rep.summary()


@pytest.mark.parametrize("snippet, what", [
    ("<p>a formula MathJax never saw: \\(x\\)</p>", "TeX delimiter"),
    ("<p>display math left as text: $$x = 1$$</p>", "'$$'"),
    ("<p>the mixture \\mathcal{M}_S</p>", "TeX command"),
    # inline $...$ broken by a continuation line that starts with '+': a paragraph and a bullet list
    ("<p>so the loss is $a</p><ul><li>b$ and more</li></ul>", "'$' beside TeX"),
    ("<p>eaten backslash: D(a \\| b)</p>", "TeX escape"),
])
def test_raw_tex_in_text_fails(site, snippet, what):
    rep = _check(site, _with(CLEAN, snippet))
    assert rep.failures and all(f.startswith(f"raw TeX ({what})") for f in rep.failures), rep.failures


def test_mathjax_error_node_fails(site):
    err = ('<mjx-container class="MathJax" jax="CHTML"><mjx-math><mjx-merror data-mjx-error="Missing close brace">'
           '<mjx-mtext>\\frac{1}{</mjx-mtext></mjx-merror></mjx-math></mjx-container>')
    rep = _check(site, _with(CLEAN, f"<p>{err}</p>"))
    assert rep.failures == ["MathJax error: Missing close brace"]
    assert rep.formulas == 2


def test_undefined_macro_fails(site):
    und = ('<mjx-container class="MathJax" jax="CHTML"><mjx-math></mjx-math><mjx-assistive-mml><math>'
           '<mtext mathcolor="red">\\mathcall</mtext></math></mjx-assistive-mml></mjx-container>')
    rep = _check(site, _with(CLEAN, f"<p>{und}</p>"))
    assert rep.failures == ["MathJax error: undefined control sequence \\mathcall"]


@pytest.mark.parametrize("snippet, message", [
    ('<img src="missing.png">', "missing image: missing.png"),
    ('<img src="https://cdn.example.org/x.png">', "image needs the network"),
    ('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>', "script needs the network"),
    ('<link rel="stylesheet" href="gone.css">', "missing stylesheet: gone.css"),
    ('<a href="nowhere.html">x</a>', "broken link: nowhere.html"),
    ('<a href="other.html#eq-2">x</a>', "broken anchor: other.html#eq-2"),
    ('<a href="#no-such-section">x</a>', "broken anchor: #no-such-section"),
])
def test_missing_files_and_anchors_fail(site, snippet, message):
    rep = _check(site, _with(CLEAN, snippet))
    assert len(rep.failures) == 1 and rep.failures[0].startswith(message), rep.failures


def test_layout_overflow_fails():
    rep = cp.check_layout({"overflow": [{"id": "equation-eq-13", "display": True, "width": 691, "column": 545,
                                         "text": "R = ..."}]}, cp.PageReport("p.html"))
    assert len(rep.failures) == 1 and "equation-eq-13" in rep.failures[0] and "691px in 545px" in rep.failures[0]
    assert cp.check_layout({"overflow": []}, cp.PageReport("p.html")).failures == []


def test_toc_pages_in_order(tmp_path):
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/index\nparts:\n  - caption: A\n    chapters:\n"
                                       "      - file: book/01_a\n        sections:\n          - file: book/01b\n"
                                       "  - caption: B\n    chapters:\n      - file: book/02_b\n")
    pages = cp.toc_pages(tmp_path, tmp_path / "html")
    assert [p.relative_to(tmp_path / "html").as_posix() for p in pages] == \
        ["book/index.html", "book/01_a.html", "book/01b.html", "book/02_b.html"]


def test_without_chromium_the_check_is_skipped(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-such-browser"))
    assert cp.main([str(tmp_path)]) == 0
    assert "browser check skipped: no Chromium found" in capsys.readouterr().out


# --- in a real browser --------------------------------------------------------------------------------

def _mathjax_js():
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or not spec.origin:
        return None
    js = Path(spec.origin).parent / "static" / "mathjax" / "tex-chtml.js"
    return js if js.is_file() else None


needs_chromium = pytest.mark.skipif(cp.find_chromium() is None,
                                    reason="no Chromium installed (apt-get install chromium): browser test skipped")


def _page(tmp_path, body):
    js = _mathjax_js()
    if js is None:
        pytest.skip("sphinx-mathjax-offline (the book's MathJax) is not installed")
    page = tmp_path / "page.html"
    page.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><script defer src="{js.as_uri()}">'
                    f'</script></head><body><article>{body}</article></body></html>')
    return page


@needs_chromium
def test_chromium_typesets_and_the_check_passes(tmp_path):
    page = _page(tmp_path, '<p>Half: <span class="math">\\(\\tfrac12 \\mathcal{M}_S\\)</span>.</p>'
                           '<div class="math" id="eq">\\[D_{\\mathrm{KL}}(a \\,\\|\\, b) \\ge 0\\]</div>')
    dom, layout = cp.render(cp.find_chromium(), page)
    assert isinstance(layout, dict), layout
    rep = cp.check_layout(layout, cp.check_dom(dom, page, tmp_path))
    assert rep.failures == [] and (rep.formulas, rep.display) == (2, 1)


@needs_chromium
def test_chromium_catches_a_broken_formula(tmp_path):
    page = _page(tmp_path, '<p>Broken: <span class="math">\\(\\frac{1}\\)</span>, undefined: '
                           '<span class="math">\\(\\mathcall{M}\\)</span>, and missed: $x$ \\(</p>'
                           '<div class="math" id="wide">\\[' + " + ".join(["x_{%d}" % i for i in range(80)]) + '\\]</div>')
    dom, layout = cp.render(cp.find_chromium(), page)
    rep = cp.check_layout(layout, cp.check_dom(dom, page, tmp_path))
    text = "\n".join(rep.failures)
    assert "MathJax error: Missing argument for \\frac" in text
    assert "undefined control sequence \\mathcall" in text
    assert "raw TeX" in text
    assert "display equation wide wider than its column" in text
