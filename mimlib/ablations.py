"""Chapter 07's screening ablations: which configuration choice explains MIM's image failures.

A *variant* is one image run named by what it changes against the ``screen`` preset
(:mod:`mimlib.presets`): the model, the objective and the reference-code options of
:class:`mimlib.image_study.ImageStudyConfig` (``pseudo_init``, ``mim_warmup``, ``mim_decoder_z``,
``optimizer``, ...). :data:`SCREEN` lists the chapter's grid as data; :func:`run_variants`
trains (or reads from the run records) and evaluates each one with :func:`image_study.run_study`,
so a variant trained in the background with the command line of :func:`command` is the same run,
found by the hash of its settings.

Two readouts that the results rows do not hold are derived here from a run's history:
the *rate* E[log q(z|x) - log p(z)] of the encoder-sampled batches (:func:`rate`), and the ceiling
of E log p(z) under the encoder's log-variance clip (:func:`log_prior_ceiling`), which a collapsing
MIM run approaches.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from . import image_study, presets
from .nets.hvae import LOGVAR_MIN
from .records import read_evaluation, read_record
from .seeds import seed_summary

__all__ = ["Variant", "FACTORS", "BUDGET_FIELDS", "SCREEN", "FOLLOW_UP", "WARMUP", "AMIM_CONVHVAE", "VARIANTS", "ANALYSES", "REPLICATED", "ADOPTED", "READOUT_NAMES", "summary_lines", "REPLICATED_AMIM", "seed_runs", "recorded_seeds",
           "seed_summary", "objective_gap", "at_book_levels", "SMOKE_OVERRIDES", "config_of", "command", "run_variants", "recorded", "choose", "contrasts", "effects", "rate", "log_prior",
           "log_prior_ceiling", "log_posterior", "last_epoch_readouts", "collapse_onset", "after_warmup", "seed_study"]

#: The options a variant may change, with their book (``screen`` preset) defaults.
FACTORS: dict[str, Any] = {"pseudo_init": "normal", "mim_warmup": "rescale", "mim_decoder_z": "anchor",
                           "mim_decoder_start": "always", "optimizer": "adam", "mim_score_cost": "full",
                           "warmup_epochs": 2}

#: Settings that change a variant's budget rather than a choice (not factors): a variant that sets one is
#: read at its own budget, in its own section, never against the equal-budget screen.
BUDGET_FIELDS: tuple[str, ...] = ("max_epochs",)


@dataclass(frozen=True)
class Variant:
    """One screening run: ``model`` / ``objective`` with ``changes`` to :data:`FACTORS` (VampPrior, MNIST)."""

    model: str
    objective: str
    changes: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, int] = field(default_factory=dict)   # e.g. {"max_epochs": 16}: see BUDGET_FIELDS

    def __post_init__(self):
        unknown = sorted(set(self.changes) - set(FACTORS))
        if unknown:
            raise ValueError(f"a variant changes only {sorted(FACTORS)}; got {unknown}")
        unknown = sorted(set(self.budget) - set(BUDGET_FIELDS))
        if unknown:
            raise ValueError(f"a variant's budget sets only {list(BUDGET_FIELDS)}; got {unknown}")
        if self.model not in image_study.MODELS:
            raise ValueError(f"model must be one of {list(image_study.MODELS)}, got {self.model!r}")

    @property
    def label(self) -> str:
        """e.g. ``"MIM pseudo_init=data mim_decoder_z=prior"`` (only what differs from the defaults)."""
        diff = [f"{k}={v}" for k, v in self.settings.items() if v != FACTORS[k]]
        diff += [f"{k}={v}" for k, v in self.budget.items()]
        return " ".join([self.objective.upper().replace("AMIM", "A-MIM"), *diff]) or self.objective

    @property
    def settings(self) -> dict[str, str]:
        """Every factor's value in this variant."""
        return {**FACTORS, **self.changes}


def _grid(model: str, objective: str, **levels: tuple[str, ...]) -> list[Variant]:
    """Every combination of ``levels`` (first level of each = the book's choice)."""
    out = [{}]
    for name, values in levels.items():
        out = [{**o, name: v} for o in out for v in values]
    return [Variant(model, objective, {k: v for k, v in o.items() if v != FACTORS[k]}) for o in out]


#: Chapter 07's screening grid (issue: "the two failures"), in the order the background jobs ran:
#: PixelHVAE (VP) A-MIM: pseudo-input init x warm-up placement; convHVAE (VP) MIM: pseudo-input init x
#: the decoder-sampled half's z; convHVAE (VP) VAE under each init as the control.
SCREEN: list[Variant] = [
    *_grid("pixelhvae", "amim", pseudo_init=("normal", "data"), mim_warmup=("rescale", "reference")),
    *_grid("convhvae", "mim", pseudo_init=("normal", "data"), mim_decoder_z=("anchor", "prior")),
    *_grid("convhvae", "vae", pseudo_init=("normal", "data")),
]

#: Single-factor follow-ups the screen called for (each against its model's book levels): A-MIM collapsed
#: under all of the screen's levels, so the reference's optimiser, AdamNormGrad, is tried alone.
FOLLOW_UP: list[Variant] = [Variant("pixelhvae", "amim", {"optimizer": "adam-normgrad"})]

#: The warm-up's length (the reference warms up over 100 epochs, 50,000 steps; the screen over 2 epochs,
#: 100 steps): A-MIM with beta warmed up over 8 epochs, trained for 16, so that as many epochs at full
#: weight follow the warm-up (9) as in the screen, under each warm-up placement (with ``rescale`` the
#: warm-up only rescales A-MIM's loss; with ``reference`` it weakens log p(z2)). A longer budget: read in
#: its own section, not in the screen.
WARMUP: list[Variant] = [Variant("pixelhvae", "amim", {"warmup_epochs": 8}, {"max_epochs": 16}),
                         Variant("pixelhvae", "amim", {"mim_warmup": "reference", "warmup_epochs": 8}, {"max_epochs": 16})]

#: A-MIM with the convHVAE's factorised decoder instead of the PixelCNN (the screen's convHVAE budget): a
#: test of chapter 07's reading of A-MIM's collapse (its proposition), which puts it down to a decoder that
#: can model the images without a code.
AMIM_CONVHVAE: Variant = Variant("convhvae", "amim")

#: Every variant of chapter 07, in the order it shows them.
VARIANTS: list[Variant] = [*SCREEN, *FOLLOW_UP]

#: The chapter's analyses: (model, objective, factors varied), each read at the book levels of the others.
ANALYSES: list[tuple[str, str, tuple[str, ...]]] = [
    ("pixelhvae", "amim", ("pseudo_init", "mim_warmup")),
    ("pixelhvae", "amim", ("optimizer",)),
    ("convhvae", "mim", ("pseudo_init", "mim_decoder_z")),
    ("convhvae", "vae", ("pseudo_init",)),
]


#: The cells the candidate adoption rests on, trained at further seeds: convHVAE (VP) MIM and VAE at each
#: pseudo-input initialisation, with the anchor's z (the book's ``mim_decoder_z``).
REPLICATED: list[Variant] = [v for v in SCREEN if v.model == "convhvae" and v.settings["mim_decoder_z"] == "anchor"]

#: The convHVAE (VP) cells of the configuration the book adopted (data-initialised pseudo-inputs, the
#: anchor's z): MIM and the VAE, the comparison of the book's main question at the screen budget.
ADOPTED: list[Variant] = [v for v in REPLICATED if v.settings["pseudo_init"] == "data"]

#: Readable names of the readouts that the generated summaries speak about.
READOUT_NAMES: dict[str, str] = {"knn5": "5-NN (sampled)", "knn5_mean": "5-NN (mean codes)",
                                 "active_z2": "active z2", "nll_is": "NLL"}

#: A-MIM (PixelHVAE) cells trained at a further seed: the book's levels, the data initialisation alone (the
#: A-MIM of chapter 06's adopted preset) and the reference's optimiser alone.
REPLICATED_AMIM: list[Variant] = [Variant("pixelhvae", "amim"), Variant("pixelhvae", "amim", {"pseudo_init": "data"}),
                                  Variant("pixelhvae", "amim", {"optimizer": "adam-normgrad"})]


def at_book_levels(results: pd.DataFrame, model: str, objective: str, factors: tuple[str, ...]) -> pd.DataFrame:
    """The rows of ``model`` / ``objective`` whose factors other than ``factors`` sit at the book's levels
    (so a follow-up that changes one more factor is not pooled into a 2 x 2 cell)."""
    rows = results[(results.model == model) & (results.objective == objective)]
    for f, level in FACTORS.items():
        if f not in factors and f in rows:
            rows = rows[rows[f] == level]
    return rows


def config_of(variant: Variant, preset: str = "screen", **overrides: Any) -> image_study.ImageStudyConfig:
    """The run config of ``variant`` under ``preset`` (MNIST, VampPrior), ``overrides`` on top."""
    study = "images" if variant.model == "convhvae" else variant.model
    base = dict(dataset="mnist", prior="vampprior", objective=variant.objective)
    return presets.resolve(study, preset, **{**base, **variant.changes, **variant.budget, **overrides})


def command(variant: Variant, preset: str = "screen", records_dir: str = "book/results/records") -> str:
    """The background command line (from the repository root) that trains and records ``variant``."""
    model = f"--model {variant.model}" if variant.model != "convhvae" else "--prior vampprior"
    sets = " ".join(f"{k}={v}" for k, v in {**variant.changes, **variant.budget}.items())
    return (f"python -m mimlib.image_study --preset {preset} --dataset mnist {model} --objective "
            f"{variant.objective} --records-dir {records_dir}" + (f" --set {sets}" if sets else ""))


def run_variants(variants: list[Variant], preset: str = "screen", seeds: tuple[int, ...] = (0,), records_dir=None,
                 runs_dir=None, progress: bool | None = None, n_tsne: int = 1_000,
                 **overrides: Any) -> image_study.StudyResult:
    """Train (or read from ``records_dir``) and evaluate every variant under every seed; rows and
    histories gain the columns ``variant`` (its label) and one per factor. Arrays and models are
    keyed by the label (first seed only); a newly recorded run stores a t-SNE of ``n_tsne`` test codes."""
    if not variants:
        raise ValueError("run_variants needs at least one variant")
    rows, hists, arrays, models, data = [], [], {}, {}, {}
    wall = train = 0.0
    for v in variants:
        cfg = config_of(v, preset, **overrides)
        res = image_study.run_study(cfg, seeds=list(seeds), runs_dir=runs_dir, records_dir=records_dir,
                                    progress=progress,
                                    arrays=lambda m, d, c: image_study.figure_arrays(m, d, c, n_tsne=n_tsne))
        for df, out in ((res.results, rows), (res.history, hists)):
            df = df.copy()
            df.insert(0, "variant", v.label)
            for k, val in {**v.settings, **v.budget}.items():
                df[k] = val
            df["model"] = v.model
            out.append(df)
        first = ("mnist", "vampprior", v.objective, seeds[0])
        if first in res.arrays:
            arrays[v.label] = res.arrays[first]
        if first in res.models:
            models[v.label] = res.models[first]
        data.update(res.data)
        wall += res.wall_seconds
        train += res.train_seconds
    return image_study.StudyResult(pd.concat(rows, ignore_index=True), pd.concat(hists, ignore_index=True),
                                   models, data, wall, train, arrays)


def recorded(variants: list[Variant], records_dir, preset: str = "screen", **overrides: Any
             ) -> tuple[list[Variant], list[Variant]]:
    """(variants whose run record, with its evaluation, is in ``records_dir``; the others)."""
    have, missing = [], []
    for v in variants:
        cfg = config_of(v, preset, **overrides)
        rec = read_record(records_dir, image_study.STUDY, image_study.run_name(cfg), cfg.run_key())
        ok = rec is not None and read_evaluation(records_dir, image_study.STUDY, image_study.run_name(cfg),
                                                 cfg.eval_key()) is not None
        (have if ok else missing).append(v)
    return have, missing


def recorded_seeds(variant: Variant, records_dir, preset: str = "screen", seeds: Iterable[int] = range(10),
                   **overrides: Any) -> list[int]:
    """The seeds among ``seeds`` at which ``variant`` has a run record with its evaluation in ``records_dir``."""
    have = []
    for seed in seeds:
        cfg = config_of(variant, preset, seed=seed, **overrides)
        name = image_study.run_name(cfg)
        if (read_record(records_dir, image_study.STUDY, name, cfg.run_key()) is not None
                and read_evaluation(records_dir, image_study.STUDY, name, cfg.eval_key()) is not None):
            have.append(seed)
    return have


def seed_study(per_cell: list[tuple[Variant, list[int]]], preset: str = "screen", **kwargs: Any
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, histories) of every (variant, seeds) of ``per_cell`` (trained, or read from
    ``records_dir``: ``kwargs`` go to :func:`run_variants`): one results row per run, with the
    :func:`last_epoch_readouts` of its last epoch's training batches, and one history row per run and
    epoch, with the same readouts and the epoch counted from the warm-up's end (:func:`after_warmup`)."""
    parts, hists = [], []
    for v, seeds in per_cell:
        if not seeds:
            continue
        study = run_variants([v], preset, seeds=tuple(seeds), **kwargs)
        h = study.history
        hists.append(h.assign(rate=rate(h), log_pz=log_prior(h), log_qzx=log_posterior(h),
                              after_warmup=after_warmup(h)))
        last = h.sort_values("epoch").groupby(["variant", "seed"]).tail(1).set_index(["variant", "seed"])
        parts.append(study.results.join(last_epoch_readouts(last), on=["variant", "seed"]))
    if not parts:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(parts, ignore_index=True), pd.concat(hists, ignore_index=True)


def last_epoch_readouts(last: pd.DataFrame) -> pd.DataFrame:
    """``rate``, ``log_pz`` and ``log_qzx`` (:func:`rate`, :func:`log_prior`, :func:`log_posterior`) of
    history rows ``last`` (one per run: its last epoch), with their index."""
    return pd.DataFrame({"rate": rate(last), "log_pz": log_prior(last), "log_qzx": log_posterior(last)})


def seed_runs(per_cell: list[tuple[Variant, list[int]]], preset: str = "screen", **kwargs: Any) -> pd.DataFrame:
    """The results of :func:`seed_study` (one row per run, with its last epoch's rate and E log p(z))."""
    return seed_study(per_cell, preset, **kwargs)[0]


def after_warmup(history: pd.DataFrame) -> pd.Series:
    """Per epoch: the epoch counted from the first one at full KL/MIM weight (0; negative during the
    warm-up). With beta = min(1, (epoch + 1) / warmup_epochs) (0-based epochs, :func:`train.beta_schedule`),
    the first epoch at weight 1 is ``warmup_epochs - 1``. Needs the ``warmup_epochs`` column."""
    return history["epoch"] + 1 - history["warmup_epochs"].clip(lower=1)


def collapse_onset(history: pd.DataFrame, since: str = "full_weight") -> int | None:
    """The first epoch (1-based) of one run's ``history`` from which on the rate of the encoder-sampled
    batches (:func:`rate`) stays below half a reference value, the onset of the collapse; None if it
    never does. ``since="full_weight"``: the reference is the rate at the first epoch at full weight
    (needs the ``warmup_epochs`` column); ``"peak"``: the run's highest rate (a rate that falls during
    a long warm-up counts from where it fell)."""
    h = history.sort_values("epoch")
    r = rate(h).to_numpy()
    if since == "full_weight":
        start = max(int(h["warmup_epochs"].iloc[0]), 1) - 1
    elif since == "peak":
        start = int(np.argmax(r))
    else:
        raise ValueError(f"since must be 'full_weight' or 'peak', got {since!r}")
    stays = [i for i in range(start + 1, len(r)) if (r[i:] < 0.5 * r[start]).all()]
    return int(h["epoch"].iloc[stays[0]]) + 1 if stays else None


def summary_lines(diff: pd.DataFrame, title: str, by: str, names: dict[str, str] | None = None) -> list[str]:
    """One Markdown bullet per (group, readout) of :func:`seed_summary` of ``diff`` (paired differences
    with an index level ``seed``) whose readout is in ``names`` (default :data:`READOUT_NAMES`): the mean,
    its 95% interval (two seeds or more), the seeds and how many share the mean's sign. ``by``: the
    index level naming the group (e.g. ``"objective"``)."""
    names = READOUT_NAMES if names is None else names
    out = []
    for _, r in (seed_summary(diff) if len(diff) else pd.DataFrame()).iterrows():
        key = r.readout.split(" (")[0]
        if key in names:
            ci = f" [{r.lo:+.3g}, {r.hi:+.3g}]" if r.seeds > 1 else ""
            out.append(f"- {title}, {r[by]}: {names[key]} {r['mean']:+.3g}{ci}, {r.seeds} seed(s), "
                       f"same sign at {r.same_sign} of {r.seeds} (per seed: {r.per_seed})")
    return out


def objective_gap(results: pd.DataFrame, metrics: list[str], first: str = "mim", second: str = "vae",
                  within: tuple[str, ...] = ("pseudo_init", "seed")) -> pd.DataFrame:
    """``first`` minus ``second`` (objectives) for each metric at each combination of ``within`` where
    both were run: seeds pair runs that saw the same data in the same order."""
    mean = results.groupby([*within, "objective"])[metrics].mean()
    present = set(mean.index.get_level_values("objective"))
    if not {first, second} <= present:
        return pd.DataFrame(columns=metrics)
    out = mean.xs(first, level="objective") - mean.xs(second, level="objective")
    return out.dropna(how="all")


#: What the smoke preset changes besides its own settings: 100 pseudo-inputs (the PixelHVAE smoke preset
#: trains on 300 images, fewer than the 500 that ``pseudo_init="data"`` starts from).
SMOKE_OVERRIDES: dict[str, Any] = dict(n_pseudo=100)


def choose(labels: list[str] | None, preset: str, records_dir, train_missing: bool | None = None,
           **overrides: Any) -> tuple[list[Variant], list[Variant]]:
    """Chapter 07's variants: (those to show, those left out for want of a run record).

    ``labels``: :attr:`Variant.label` of the variants wanted (None: all of :data:`VARIANTS`; an unknown
    label raises ``ValueError`` listing the valid ones). With the smoke preset and no labels, only the
    corners of each 2 x 2 and one VAE (every code path in 5 runs). ``train_missing`` (None: only with
    the smoke preset) keeps variants without a record, to be trained; otherwise they are returned as
    missing, for the chapter to list with the commands that run them."""
    chosen = [v for v in VARIANTS if labels is None or v.label in labels]
    if labels is not None and len(chosen) != len(labels):
        raise ValueError(f"unknown variant(s) {sorted(set(labels) - {v.label for v in chosen})}; "
                         f"valid: {[v.label for v in VARIANTS]}")
    if preset == "smoke" and labels is None:
        chosen = [v for v in chosen if len(v.changes) in (0, 2)]
    if train_missing is None:
        train_missing = preset == "smoke"
    return (chosen, []) if train_missing else recorded(chosen, records_dir, preset, **overrides)


def contrasts(results: pd.DataFrame, factors: tuple[str, ...], metrics: list[str]
              ) -> list[tuple[str, pd.DataFrame]]:
    """What the runs of one model and objective (``results``) say about ``factors``, as titled tables.

    With every cell of the factorial run: each factor's :func:`effects` at each level of the others.
    Otherwise: each run cell minus the cell at the book's levels of all factors (a *joint* effect
    where several factors differ: it does not say which of them acts)."""
    cells = results.groupby(list(factors))[metrics].mean()
    cells.index = pd.MultiIndex.from_tuples([c if isinstance(c, tuple) else (c,) for c in cells.index],
                                            names=list(factors))
    book = tuple(FACTORS[f] for f in factors)
    if len(cells) == 2 ** len(factors):
        return [(f"{f}: {FACTORS[f]} -> the other level, at each level of the other factors",
                 effects(results, f, metrics, within=[g for g in factors if g != f] or ["objective"]))
                for f in factors]
    if book not in cells.index:
        return []
    out = []
    for c in cells.index:
        if c != book:
            changed = {f: v for f, v in zip(factors, c) if v != FACTORS[f]}
            diff = (cells.loc[[c]].reset_index(drop=True) - cells.loc[[book]].reset_index(drop=True))
            out.append((f"{changed} minus the book's levels" + (" (joint effect)" if len(changed) > 1 else ""),
                        diff.rename(columns=lambda m: f"{m} (diff)")))
    return out


def effects(results: pd.DataFrame, factor: str, metrics: list[str], within: list[str]) -> pd.DataFrame:
    """The change of each metric when ``factor`` moves from its book level to the other level, at each
    combination of the ``within`` columns (the other factors, the objective, the model), mean over
    seeds: one row per combination, columns ``metric`` (level b - level a)."""
    base = FACTORS[factor]
    present = set(results[factor])
    levels = sorted(present - {base})
    if base not in present or len(levels) != 1:
        raise ValueError(f"{factor} must take its book level {base!r} and one other; got {sorted(set(results[factor]))}")
    mean = results.groupby([*within, factor])[metrics].mean()
    out = mean.xs(levels[0], level=factor) - mean.xs(base, level=factor)
    return out.dropna(how="all").rename(columns={m: f"{m} ({levels[0]} - {base})" for m in metrics})


def _term(history: pd.DataFrame, name: str) -> pd.Series:
    """A logged term of the encoder-sampled batches: ``enc/<name>`` (MIM, A-MIM) or ``<name>`` (VAE),
    row by row (a history of several objectives has both columns, each NaN where the other is set)."""
    cols = [c for c in (f"enc/{name}", name) if c in history]
    if not cols:
        raise KeyError(f"the history has no {name!r} column")
    out = history[cols[0]]
    for c in cols[1:]:
        out = out.fillna(history[c])
    return out


def log_prior(history: pd.DataFrame) -> pd.Series:
    """Per epoch: the mean log p(z) of that epoch's encoder-sampled training codes (nats)."""
    return _term(history, "log p(z)")


def log_posterior(history: pd.DataFrame) -> pd.Series:
    """Per epoch: the mean log q(z|x) of that epoch's encoder-sampled training codes (nats; minus the
    encoder's entropy, at most :func:`log_prior_ceiling` under the log-variance clip)."""
    return _term(history, "log q(z|x)")


def rate(history: pd.DataFrame) -> pd.Series:
    """Per epoch: the mean of log q(z|x) - log p(z) over that epoch's encoder-sampled training batches
    (nats; the history's ``log q(z|x)`` / ``log p(z)`` columns, ``enc/``-prefixed for MIM and A-MIM)."""
    return _term(history, "log q(z|x)") - _term(history, "log p(z)")


def log_prior_ceiling(dim: int = 80, logvar_min: float = LOGVAR_MIN) -> float:
    r"""E_q log p(z) of an encoder whose q(z|x) coincides with a prior component at the log-variance
    clip ``logvar_min``: -D/2 (log 2 pi + lv + 1) (126.5 nats for D = 80, lv = -6).

    Every Gaussian here (q(z|x), p(z1|z2), the VampPrior's components q(z2|u_k)) has its
    log-variances clipped at ``logvar_min``; for one Gaussian prior, E_q log p(z) is at most this
    value (the maximum over the prior's mean and variance of E_q log N(z; mu, sigma^2) for
    q = N(m, s^2) is -1/2 (log 2 pi + 1 + log s^2) per dimension, and s^2 >= e^{lv}). For a mixture
    it is the value reached when the codes sit on one component at the clip: the collapse this
    chapter looks for. (The peak density, -D/2 (log 2 pi + lv), bounds log p(z) pointwise.)"""
    return -dim / 2 * (math.log(2 * math.pi) + logvar_min + 1)


def _check_names() -> None:
    """Every factor is a field of the image config (fails at import if a name drifts)."""
    names = {f.name for f in dataclasses.fields(image_study.ImageStudyConfig)}
    missing = sorted(set(FACTORS) - names)
    if missing:
        raise ImportError(f"mimlib.ablations.FACTORS names unknown config fields {missing}")


_check_names()
