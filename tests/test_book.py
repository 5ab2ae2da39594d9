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
