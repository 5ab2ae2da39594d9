"""The tables of the image chapters (05 and 06) computed from a study's results and histories.

* :func:`time_per_epoch`: measured seconds per epoch, per optimiser step, of training and evaluation;
* :func:`training_curves`: the learning-curve columns (reconstruction term, rate, MIM's decoder-sampled
  term) added to a study's history.

Both take what :func:`mimlib.image_study.run_study` returns (a ``StudyResult`` or its ``history``),
whether the runs were trained or read from their records.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["time_per_epoch", "training_curves"]


def time_per_epoch(study) -> pd.DataFrame:
    """Measured time of each model's training (chapters 05 and 06, "Time per epoch"), from a
    :class:`mimlib.image_study.StudyResult`.

    One row per (dataset, prior, objective, seed): the median, min and max seconds of an epoch
    (training and validation; the learning-curve k-NN excluded), the median per optimiser step, the
    epochs run, the whole training and the final evaluation, as the runs measured them.
    """
    keys = ["dataset", "prior", "objective", "seed"]
    hist = study.history.sort_values("epoch")
    per_epoch = hist.groupby(keys, sort=False).seconds.transform(lambda s: s.diff().fillna(s.iloc[0]))
    stats = per_epoch.groupby([hist[k] for k in keys]).agg(["median", "min", "max"])
    res = study.results.set_index(keys)
    out = stats.join(res[["steps_per_epoch", "epochs", "seconds", "eval_seconds"]])
    out["median s/step"] = out["median"] / out.steps_per_epoch
    return out.drop(columns="steps_per_epoch").rename(columns={
        "median": "median s/epoch", "min": "min s/epoch", "max": "max s/epoch",
        "seconds": "training s", "eval_seconds": "evaluation s"})


def training_curves(history: pd.DataFrame) -> pd.DataFrame:
    """The learning-curve columns of chapters 05 and 06, added to a copy of a study's ``history``.

    ``recon_train``: -log p(x|z) on the training batches (encoder-sampled pairs for MIM / A-MIM);
    ``rate``: log q(z|x) - log p(z) on them (the VAE's KL term), whose mean over the data bounds the
    encoder's mutual information from above; ``dec_nll``: -log p(x|z) of MIM's decoder-sampled pairs
    (only when some run is symmetric MIM). VAE rows carry ``log p(x|z)`` / ``kl``, MIM rows ``enc/...``.
    """
    hist = history.copy()

    def col(name: str) -> pd.Series:
        return hist[name] if name in hist else pd.Series(np.nan, index=hist.index)

    hist["recon_train"] = -col("enc/log p(x|z)").fillna(col("log p(x|z)"))
    hist["rate"] = col("kl").fillna(col("enc/log q(z|x)") - col("enc/log p(z)"))
    if "dec/log p(x|z)" in hist:
        hist["dec_nll"] = -hist["dec/log p(x|z)"]
    return hist
