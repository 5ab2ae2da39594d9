"""mimlib.book: results files shared by two chapters."""

import pandas as pd
import pytest

from mimlib.book import write_results


def test_write_results_replace_keeps_other_rows(tmp_path):
    conv = pd.DataFrame({"model": ["convhvae"] * 2, "knn5": [0.9, 0.8]})
    write_results(conv, tmp_path, "images", replace={"model": "convhvae"})
    pix = pd.DataFrame({"model": ["pixelhvae"], "knn5": [0.7], "extra": [1.0]})
    write_results(pix, tmp_path, "images", replace={"model": "pixelhvae"})
    # re-writing the first chapter's rows replaces only those, keeping the other chapter's
    conv2 = pd.DataFrame({"model": ["convhvae"], "knn5": [0.95]})
    path = write_results(conv2, tmp_path, "images", replace={"model": "convhvae"})
    out = pd.read_csv(path)
    assert out.model.tolist() == ["pixelhvae", "convhvae"]
    assert out.knn5.tolist() == [0.7, 0.95]
    assert out.extra.iloc[0] == 1.0 and pd.isna(out.extra.iloc[1])
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_results_without_replace_overwrites(tmp_path):
    write_results(pd.DataFrame({"a": [1, 2]}), tmp_path, "r")
    path = write_results(pd.DataFrame({"a": [3]}), tmp_path, "r")
    assert pd.read_csv(path).a.tolist() == [3]


def test_write_results_rejects_rows_outside_replace(tmp_path):
    with pytest.raises(ValueError, match="model == 'pixelhvae'"):
        write_results(pd.DataFrame({"model": ["convhvae"]}), tmp_path, "images", replace={"model": "pixelhvae"})


_WRITER = """
import sys
import pandas as pd
from mimlib.book import write_results
d, me, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    write_results(pd.DataFrame({"model": [me] * 3, "i": [i] * 3}), d, "images", replace={"model": me})
    out = pd.read_csv(f"{d}/images.csv")          # a reader never sees half a file
    assert (out.model == me).sum() == 3 and (out[out.model == me].i == i).all(), out
"""


def test_two_writers_in_parallel_never_corrupt_or_lose_rows(tmp_path):
    import subprocess
    import sys

    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), me, str(n)], stderr=subprocess.PIPE,
                              text=True) for me in ("convhvae", "pixelhvae")]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    out = pd.read_csv(tmp_path / "images.csv")
    assert sorted(out.model.unique()) == ["convhvae", "pixelhvae"]
    assert len(out) == 6 and (out.i == n - 1).all()
    assert not list(tmp_path.glob(".*.tmp"))


def test_check_parameters_rejects_a_misspelt_papermill_parameter(tmp_path):
    import nbformat
    import papermill as pm

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('hidden = None\nseeds = None\nPARAMETERS = dict(globals())',
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("from mimlib.book import check_parameters\n"
                                          "check_parameters(globals(), PARAMETERS)\nprint(hidden)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "p.ipynb"
    nbformat.write(nb, src)
    ok = pm.execute_notebook(str(src), str(tmp_path / "ok.ipynb"), parameters={"hidden": [5]}, kernel_name="python3",
                             progress_bar=False)
    assert "[5]" in ok.cells[-1].outputs[0].text
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown parameter\(s\) \['hiden'\].*\['hidden', 'seeds'\]"):
        pm.execute_notebook(str(src), str(tmp_path / "bad.ipynb"), parameters={"hiden": [5]}, kernel_name="python3",
                            progress_bar=False)
