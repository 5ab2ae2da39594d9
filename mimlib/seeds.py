"""Statistics over seeds: per-seed values summarised by their mean and a Student-t interval, paired
differences between objectives, and the generated headline of a comparison.

Runs of one seed pair across cells: the seed fixes the initial weights, the pseudo-inputs drawn from
the training set and the data order, so MIM and the VAE at the same seed saw the same images in the
same order (chapters 05-07). A difference is computed per seed first and then summarised
(:func:`paired_gap`), which removes the part of the spread that the seed shares.

The interval is the Student-t interval mean +- t_{n-1, (1+level)/2} s / sqrt(n) over the n seeds (s the
sample standard deviation); with one seed there is none.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["seed_summary", "paired_gap", "headline"]


def seed_summary(per_seed: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Summarise per-seed values over the index level ``seed``: for each remaining row and column, the
    mean, a Student-t interval at ``level`` (mean +- t_{n-1} s / sqrt(n); NaN for one seed), the number of
    seeds, and how many of them share the mean's sign (``same_sign``). One row per (group, column)."""
    if "seed" not in per_seed.index.names:
        raise ValueError(f"per_seed needs an index level 'seed'; has {per_seed.index.names}")
    keys = [n for n in per_seed.index.names if n != "seed"]
    rows = []
    for key, g in per_seed.groupby(level=keys, sort=False) if keys else [((), per_seed)]:
        key = key if isinstance(key, tuple) else (key,)
        for col in per_seed.columns:
            v = g[col].dropna().to_numpy(dtype=float)
            n = len(v)
            mean = float(v.mean()) if n else float("nan")
            half = (float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
                    if n > 1 else float("nan"))
            rows.append({**dict(zip(keys, key)), "readout": col, "mean": mean, "lo": mean - half,
                         "hi": mean + half, "seeds": n, "same_sign": int((np.sign(v) == np.sign(mean)).sum()),
                         "per_seed": ", ".join(f"{x:.3g}" for x in v)})
    return pd.DataFrame(rows)

def paired_gap(results: pd.DataFrame, metric: str, cells: tuple[str, ...] = ("dataset", "prior"),
               first: str = "mim", second: str = "vae", level: float = 0.95) -> pd.DataFrame:
    """``first`` minus ``second`` (objectives) of ``metric`` in each cell, paired by seed, summarised over
    seeds (:func:`seed_summary`): one row per cell with ``mean``, ``lo``, ``hi``, ``seeds``, ``same_sign``,
    ``per_seed``. Only seeds at which both objectives have a run count."""
    wide = results.pivot_table(index=[*cells, "seed"], columns="objective", values=metric, aggfunc="mean")
    if first not in wide or second not in wide:
        return pd.DataFrame(columns=[*cells, "readout", "mean", "lo", "hi", "seeds", "same_sign", "per_seed"])
    diff = (wide[first] - wide[second]).dropna().to_frame(f"{metric} ({first} - {second})")
    return seed_summary(diff, level)


def headline(gap: pd.DataFrame, higher_is_better: bool = True, first: str = "MIM", second: str = "the VAE",
             level: float = 0.95) -> str:
    """One sentence from :func:`paired_gap`'s rows: in how many cells ``first`` is ahead of ``second`` at
    ``level`` (the interval excludes 0 on ``first``'s side), behind, or not told apart (the interval
    includes 0, or there is one seed only)."""
    sign = 1.0 if higher_is_better else -1.0
    lo, hi = sign * gap["lo"].to_numpy(dtype=float), sign * gap["hi"].to_numpy(dtype=float)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    ahead, behind = int(np.sum(lo > 0)), int(np.sum(hi < 0))
    n = len(gap)
    pct = f"{level:.0%}"
    if n == 0:
        return f"No cell has runs of both {first} and {second} at a common seed."
    return (f"{first} ahead of {second} in {ahead} of {n} cells at {pct}, behind in {behind}, "
            f"not told apart in {n - ahead - behind}.")
