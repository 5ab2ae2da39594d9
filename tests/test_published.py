"""published.csv speaks the vocabulary of our results tables, so chapters join the two without parsing."""

import pandas as pd
import pytest

from mimlib import image_study, images
from mimlib.objectives import OBJECTIVES
from mimlib.published import mixture2d_reference, published


def test_image_rows_use_our_words():
    pub = published("images")
    assert len(pub) == 8
    assert set(pub.dataset) <= set(images.DATASETS)
    assert set(pub.model) <= set(image_study.MODELS)
    assert set(pub.prior) <= set(image_study.PRIOR_SHORT)
    assert set(pub.objective) <= set(OBJECTIVES)
    # Table 1: one number per (dataset, prior, objective) of the convHVAE
    assert not pub.duplicated(["dataset", "model", "prior", "objective", "metric"]).any()


def test_table_1_joins_a_results_table_on_its_columns():
    ours = pd.DataFrame({"dataset": ["mnist", "fashion-mnist"], "model": ["convhvae"] * 2,
                         "prior": ["vampprior", "standard"], "objective": ["vae", "mim"], "knn5": [0.9, 0.8]})
    pub = published("images").query("metric == 'knn5'")
    joined = ours.merge(pub, on=["dataset", "model", "prior", "objective"], how="left")
    assert joined.value.tolist() == [0.85, 0.84]     # the paper's Table 1: MNIST VAE (VP), Fashion MIM (S)


def test_2d_rows_leave_the_image_columns_empty_and_expand_by_width():
    pub = published("mixture2d")
    assert (pub[["dataset", "model", "prior"]] == "").all().all()
    ref = mixture2d_reference([5, 20])
    assert set(ref.hidden) == {5, 20} and ref.value.notna().all()


def test_unknown_study_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"'imagse'.*images.*mixture2d"):
        published("imagse")
