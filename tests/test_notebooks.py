"""The committed chapters: each chapter in the table of contents is a .py/.ipynb pair that agrees,
and every notebook was executed in order with the book preset.

A chapter source (book/NN_name.py) that is not yet in _toc.yml is a draft: `make test` still runs it
with the smoke preset, but it has no committed notebook until its book run exists.
"""

from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def _toc_files() -> set[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {toc["root"]}
    for part in toc.get("parts", []):
        files.update(ch["file"] for ch in part.get("chapters", []))
    return files


TOC = _toc_files()
PAIRS = [p for p in sorted(BOOK.glob("[0-9][0-9]_*.py")) + [BOOK / "index.py"]
         if f"book/{p.stem}" in TOC]
DRAFTS = [p for p in sorted(BOOK.glob("[0-9][0-9]_*.py")) if f"book/{p.stem}" not in TOC]


def test_toc_entries_exist():
    for f in TOC:
        assert any((ROOT / (f + ext)).exists() for ext in (".ipynb", ".md")), f"{f} in _toc.yml has no file"


@pytest.mark.parametrize("py", DRAFTS, ids=lambda p: p.name)
def test_drafts_have_no_stale_notebook(py):
    assert not py.with_suffix(".ipynb").exists(), \
        f"{py.name} is not in _toc.yml but has a notebook: add it to the book or remove the notebook"


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_chapters():
    assert PAIRS, "no chapters found in book/"


@pytest.mark.parametrize("py", PAIRS, ids=lambda p: p.name)
def test_pair_code_agrees(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{py.name} has no paired notebook"
    src = jupytext.read(py)
    nb = nbformat.read(ipynb, as_version=4)
    a = [c.source.strip() for c in _code_cells(src)]
    b = [c.source.strip() for c in _code_cells(nb)]
    assert a == b, f"code of {py.name} and {ipynb.name} differs: run `jupytext --sync` and re-execute"
    ma = [c.source.strip() for c in src.cells if c.cell_type == "markdown"]
    mb = [c.source.strip() for c in nb.cells if c.cell_type == "markdown"]
    assert ma == mb, f"markdown of {py.name} and {ipynb.name} differs"


@pytest.mark.parametrize("py", PAIRS, ids=lambda p: p.name)
def test_notebook_executed_in_order_without_errors(py):
    nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    cells = _code_cells(nb)
    assert all(c.source.strip() for c in cells), "empty code cell (it makes Jupyter Book re-execute)"
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"cells not executed once, in order: {counts}"
    for c in cells:
        for out in c.outputs:
            assert out.output_type != "error", f"stored error output in {py.name}: {out.get('ename')}"


@pytest.mark.parametrize("py", PAIRS, ids=lambda p: p.name)
def test_chapter_has_parameters_cell_with_preset(py):
    nb = jupytext.read(py)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "preset" in params[0].source


def test_committed_notebooks_use_book_preset():
    for py in PAIRS:
        nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert 'preset = "book"' in params[0].source, py.name
        assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells), \
            f"{py.name} holds papermill-injected parameters: commit the book-preset execution"
