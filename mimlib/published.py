"""The paper's and the reference code's numbers, the facts our results are compared with.

They live in one file, ``published.csv`` beside this module, each row naming
its source:

* ``paper-table-1``: Table 1 of the paper (5-NN test accuracy);
* ``reference-figures``: the reference code's published 2-D figures (10 seeds,
  mean), read off by eye, hence ``approx``; ranges of hidden widths share a value;
* ``reference-rerun-seeds-1-2``: the reference code re-run (seeds 1-2) on a
  2-core CPU with current libraries, as reported in the project's issue 2.

Nothing in this file is produced by our code.

Its columns use the words of our own results tables, so the two are joined without parsing:
``study``, ``source``, ``dataset`` (``mnist``, ``fashion-mnist``), ``model`` (``convhvae``, ``pixelhvae``),
``prior`` (``standard``, ``vampprior``), ``objective`` (``mim``, ``vae``, ``amim``), ``hidden_min`` /
``hidden_max`` (the 2-D study's widths a value holds for), ``metric`` (a column name of our results,
e.g. ``knn5``), ``value``, ``approx``, ``note``. Columns that do not apply to a study are empty strings.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["PUBLISHED_CSV", "published", "mixture2d_reference"]

PUBLISHED_CSV = Path(__file__).with_name("published.csv")


def published(study: str | None = None) -> pd.DataFrame:
    """All published numbers, or those of one study ('mixture2d', 'images')."""
    words = ("study", "source", "dataset", "model", "prior", "objective", "metric", "note")
    df = pd.read_csv(PUBLISHED_CSV, dtype={c: str for c in words}, keep_default_na=False,
                     na_values={"hidden_min": [""], "hidden_max": [""], "value": [""]})
    if study is not None and study not in set(df.study):
        raise ValueError(f"no published numbers for study {study!r}; studies: {sorted(set(df.study))}")
    return df if study is None else df[df.study == study].reset_index(drop=True)


def mixture2d_reference(hidden: list[int] | tuple[int, ...], source: str = "reference-figures") -> pd.DataFrame:
    """The reference code's 2-D figures expanded to one row per (objective, hidden, metric)."""
    df = published("mixture2d")
    df = df[df.source == source]
    rows = []
    for h in hidden:
        hit = df[(df.hidden_min <= h) & (df.hidden_max >= h)]
        for _, r in hit.iterrows():
            rows.append({"objective": r.objective, "hidden": h, "metric": r.metric, "value": r.value,
                         "source": source})
    return pd.DataFrame(rows, columns=["objective", "hidden", "metric", "value", "source"])
