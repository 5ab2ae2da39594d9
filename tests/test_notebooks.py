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
    # The cost box (mimlib.costs.rerun_box) of a chapter that cannot be re-executed without its weights is
    # executed alone by `benchmarks/time_chapters.py --refresh-boxes`, which leaves its count empty; it must
    # have its output. Every other cell: executed once, in order.
    boxes = [c for c in cells if "rerun_box(" in c.source and c.execution_count is None]
    assert all(c.outputs for c in boxes), f"{py.name}: the cost box has no output (run time_chapters.py --refresh-boxes)"
    counts = [c.execution_count for c in cells if not any(c is b for b in boxes)]
    assert counts == list(range(1, len(counts) + 1)), f"cells not executed once, in order: {counts}"
    for c in cells:
        for out in c.outputs:
            assert out.output_type != "error", f"stored error output in {py.name}: {out.get('ename')}"


@pytest.mark.parametrize("py", PAIRS, ids=lambda p: p.name)
def test_chapter_has_parameters_cell_with_preset(py):
    nb = jupytext.read(py)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "preset" in params[0].source


#: The preset each chapter's committed notebook is executed with ("book" unless named here).
COMMITTED_PRESET = {"07_ablations.py": "screen"}


def test_committed_notebooks_use_book_preset():
    for py in PAIRS:
        nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert f'preset = "{COMMITTED_PRESET.get(py.name, "book")}"' in params[0].source, py.name
        assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells), \
            f"{py.name} holds papermill-injected parameters: commit the book-preset execution"


def _tiny_notebook(path: Path, stored: str) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(6 * 7)", metadata={"tags": ["NBVAL_CHECK_OUTPUT"]}, execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored)]
    nb.cells = [cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_nbval_compares_the_outputs_of_tagged_cells(tmp_path):
    """The chapters' NBVAL_CHECK_OUTPUT *tags* are honoured (the root conftest.py maps them onto nbval's
    markers; nbval alone knows them only as source comments and ignored them): a wrong stored output fails."""
    import shutil
    import subprocess
    import sys

    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    _tiny_notebook(tmp_path / "good.ipynb", "42\n")
    _tiny_notebook(tmp_path / "bad.ipynb", "41\n")
    run = lambda name: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         name], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    good, bad = run("good.ipynb"), run("bad.ipynb")
    assert good.returncode == 0, good.stdout[-2000:]
    assert bad.returncode != 0 and "41" in bad.stdout, bad.stdout[-2000:]
