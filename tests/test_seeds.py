"""Statistics over seeds: paired MIM - VAE differences per cell and the headline generated from them."""

import pandas as pd
import pytest

from mimlib import seeds


def _results(diffs: dict[tuple[str, str], list[float]], seed_effect: float = 5.0) -> pd.DataFrame:
    """Runs of MIM and the VAE per (dataset, prior, seed), with MIM - VAE = the given value at each seed
    and a large effect of the seed shared by both objectives (pairing must remove it)."""
    rows = []
    for (d, p), values in diffs.items():
        for s, gap in enumerate(values):
            base = 0.5 + seed_effect * s
            rows += [dict(dataset=d, prior=p, seed=s, objective="vae", knn5=base),
                     dict(dataset=d, prior=p, seed=s, objective="mim", knn5=base + gap)]
    return pd.DataFrame(rows)


def test_paired_gap_removes_the_seed_and_the_headline_counts_cells():
    res = _results({("mnist", "standard"): [0.10, 0.11, 0.09], ("mnist", "vampprior"): [-0.20, -0.21, -0.19],
                    ("fashion-mnist", "standard"): [0.10, -0.10, 0.05]})
    # a cell whose objectives share no seed is not a paired comparison
    res = pd.concat([res, pd.DataFrame([dict(dataset="fashion-mnist", prior="vampprior", seed=0, objective="mim",
                                             knn5=0.9), dict(dataset="fashion-mnist", prior="vampprior", seed=1,
                                                             objective="vae", knn5=0.8)])])
    gap = seeds.paired_gap(res, "knn5").set_index(["dataset", "prior"])
    assert len(gap) == 3 and (gap.seeds == 3).all()
    assert gap.loc[("mnist", "standard"), "mean"] == pytest.approx(0.10)          # the seed effect (5 per seed) is gone
    assert gap.loc[("mnist", "standard"), "hi"] - gap.loc[("mnist", "standard"), "mean"] == pytest.approx(
        4.302653 * 0.01 / 3 ** 0.5, rel=1e-4)
    assert seeds.headline(gap) == "MIM ahead of the VAE in 1 of 3 cells at 95%, behind in 1, not told apart in 1."
    nll_like = gap.loc[[("mnist", "standard"), ("mnist", "vampprior")]]     # lower is better: the signs swap
    assert seeds.headline(nll_like, higher_is_better=False) == ("MIM ahead of the VAE in 1 of 2 cells at 95%, "
                                                                "behind in 1, not told apart in 0.")
    one = seeds.paired_gap(res[res.seed == 0], "knn5")
    assert seeds.headline(one) == "MIM ahead of the VAE in 0 of 3 cells at 95%, behind in 0, not told apart in 3."   # one seed: no interval


def test_no_pair_no_claim():
    res = _results({("mnist", "standard"): [0.1]})
    assert seeds.headline(seeds.paired_gap(res[res.objective == "mim"], "knn5")).startswith("No cell has runs")
