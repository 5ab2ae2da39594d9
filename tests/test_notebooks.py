"""The committed chapters: each .py/.ipynb pair agrees, and every notebook was executed in order."""

from pathlib import Path

import jupytext
import nbformat
import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
PAIRS = sorted(BOOK.glob("[0-9][0-9]_*.py")) + [BOOK / "index.py"]


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
