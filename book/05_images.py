# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# (ch-images)=
# # Representations of images: MIM and VAE on MNIST and Fashion-MNIST
#
# The paper's second experiment ({cite:p}`livne2019mim`, section 5 and appendix D.2) leaves
# two dimensions for images. The same hierarchical convolutional VAE, the convHVAE of
# {cite:p}`tomczak2018vampprior`, is trained once with the VAE objective and once with MIM, with a
# standard-normal prior (S) or a VampPrior (VP), on MNIST {cite:p}`lecun1998gradient` and
# Fashion-MNIST {cite:p}`xiao2017fashion`. Mutual information cannot be estimated well in 784
# dimensions, so the quality of the 80-dimensional latent code is probed with an auxiliary task: a
# k-nearest-neighbour classifier of the image class from $z$, fit on the training images and scored on
# the test images, without any label ever reaching the models (paper Table 1), and t-SNE pictures of
# the test codes (paper Fig. 2). The claim to test: for an identical parameterisation, MIM's codes
# cluster the classes better than the VAE's.
#
# This chapter reproduces Table 1 (5-NN accuracy, and k = 1, 3, 10) next to the paper's numbers,
# Fig. 2, and adds what the paper does not report: the importance-sampled test NLL, the
# reconstruction term, the number of active latent units, and learning curves.
#
# :::{admonition} Which run produced the outputs on this page
# :class: important
# The settings cell after the parameters prints the preset that produced every stored output of this page.
# With `smoke` (the continuous-integration check: a few optimiser steps on 500 training images),
# the numbers, tables and pictures only show that the chapter runs end to end; **they are not
# results and say nothing about MIM or the VAE**. Only the `book` preset (the schedule described
# under *Training schedule*) and the `paper` preset produce numbers worth comparing with the paper.
# As long as the page shows `smoke`, the book run has not been done for this page.
#
# **The `book` preset has changed since these outputs were computed.** After the screen of chapter
# {ref}`ch-ablations`, its VampPrior pseudo-inputs start from training images (`pseudo_init="data"`,
# the reference code's choice); the stored outputs below are the earlier `book` runs, with
# `pseudo_init="normal"`. Re-running this page with `book` trains the new configuration; until that
# run is committed, the VampPrior columns below are not those of the current preset.
# :::
#
# **Re-running.** The cell below holds the parameters. `preset` is one of `smoke` (minutes, for CI),
# `book` (the run meant to be committed, sized for a 2-core CPU) and `paper` (appendix D.2 as
# written, for a GPU); any setting can be overridden, e.g. with papermill:
#
# ```bash
# .venv/bin/papermill -k python3 --cwd book book/05_images.ipynb /tmp/out.ipynb \
#     -p preset book -y "datasets: [mnist]" -y "priors: [standard]" -p results_dir /tmp/results
# ```
#
# Each model is one run folder in `runs_dir` (named from the hash of its settings, checkpointed after
# every epoch), so an interrupted run resumes and a finished one is loaded with its evaluation. The
# book runs are meant to be trained in the background, one command per model, two at a time
# (one thread each), e.g. from the repository root:
#
# ```bash
# MIMLIB_PROGRESS=0 nohup .venv/bin/python -m mimlib.image_study --preset book --dataset mnist \
#     --prior vampprior --objective mim --threads 1 > runs/mnist-VP-mim.log 2>&1 &
# ```
#
# Re-running the same command continues from the last checkpoint; this chapter then loads the
# finished runs. `make runs-images DATASET=mnist` runs all of a dataset's book runs this way, two at a time.

# %% tags=["remove-input"]
# What re-running this chapter costs, from measured times only (mimlib.costs; benchmarks/time_chapters.py)
from mimlib.costs import rerun_box

rerun_box("05_images")

# %% tags=["parameters"]
preset = "book"
datasets = None      # e.g. ["mnist"]; None: both
priors = None        # e.g. ["standard"]; None: standard and VampPrior
objectives = None    # None: ["mim", "vae"]
seeds = None         # e.g. [0, 1]; None: [0]
max_epochs = None
steps_per_epoch = None
nll_samples = None
n_tsne = None        # test points in each t-SNE picture; None: 2,000 (300 for smoke)
device = None        # "cpu", "cuda" or "auto"
threads = None       # torch threads; None: leave as is
precision = None     # "auto", "fp32" or "bf16"; None: the preset's ("auto")
results_dir = "results"
runs_dir = "../runs"
PARAMETERS = dict(globals())   # what a papermill run may set; anything else is refused below

# %% tags=["hide-input"]
import dataclasses
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from sklearn.manifold import TSNE

from mimlib import image_study, images, objectives as objectives_module, presets
from mimlib.book import as_list, check_parameters, check_writable, print_run_settings, show_source, write_results
from mimlib.nets import hvae
from mimlib.plots import DATASET_NAMES as NAMES, OBJECTIVE_COLORS
from mimlib.published import published

check_parameters(globals(), PARAMETERS)
cfg = presets.resolve("images", preset, max_epochs=max_epochs, steps_per_epoch=steps_per_epoch,
                      nll_samples=nll_samples, device=device, threads=threads, precision=precision)
datasets = as_list(datasets, "datasets", str, ["fashion-mnist", "mnist"])
priors = as_list(priors, "priors", str, ["standard", "vampprior"])
objectives = as_list(objectives, "objectives", str, ["mim", "vae"])
seeds = as_list(seeds, "seeds", int, [0])
check_writable(results_dir, "results folder")
n_tsne = n_tsne or (300 if preset == "smoke" else 2000)
if cfg.threads:
    torch.set_num_threads(cfg.threads)

print_run_settings(preset, cfg, skip=("dataset", "prior", "objective", "seed"), train_images=cfg.n_train_subset)
print(f"datasets={datasets}, priors={priors}, objectives={objectives}, seeds={seeds}")

# %% [markdown]
# ## The data
#
# Both datasets hold 28x28 grey-level images in 10 classes. As in the VampPrior code the paper builds
# on, the first 50,000 images of the training file train the models, the last 10,000 validate them
# (early stopping) and the 10,000 of the test file test them. The decoder is a product of Bernoullis, so
# the images are binarised: every training batch is re-drawn from Bernoulli(pixel intensity) in every
# epoch (*dynamic* binarisation), while the validation and test images are binarised once with a fixed
# seed, so that every model is scored on the same bits (`mimlib.images`). The labels are used only by
# the k-NN probe.

# %%
data = {d: image_study.load_data(dataclasses.replace(cfg, dataset=d)) for d in datasets}
fig, axes = plt.subplots(len(datasets), 12, figsize=(12, 1.1 * len(datasets)), squeeze=False)
for row, d in zip(axes, datasets):
    for i, ax in enumerate(row):
        img = data[d].test_u8[i, 0] if i < 6 else data[d].test[i - 6, 0]
        ax.imshow(img, cmap="gray_r")
        ax.set_xticks([])
        ax.set_yticks([])
    row[0].set_ylabel(d, rotation=0, ha="right", va="center")
fig.suptitle("test images: grey levels (left) and their fixed binarisation (right)", y=1.02)
plt.show()
for d in datasets:
    print(f"{d}: {data[d].n_train} training images used, {len(data[d].val)} validation, "
          f"{len(data[d].test)} test; from {images.find_dataset(d)['train_images'].parent}")

# %% [markdown]
# ## The model
#
# The convHVAE with $L = 2$ stochastic layers {cite:p}`tomczak2018vampprior` has two 40-dimensional
# latents, $z = [z_1, z_2] \in \mathbb{R}^{80}$, and factorises top-down in both directions:
#
# $$
# \begin{aligned}
# q_\theta(z|x) &= q_\theta(z_2|x)\, q_\theta(z_1|x, z_2), \\
# p_\theta(x, z) &= p_\theta(x|z_1, z_2)\, p_\theta(z_1|z_2)\, p_\theta(z_2).
# \end{aligned}
# $$ (eq-img-factorisation)
#
# Every conditional is a diagonal Gaussian whose mean and log-variance (clipped to $[-6, 2]$) come from
# *gated* layers, $h(x) \odot \sigma(g(x))$ with no other non-linearity; $q_\theta(z_2|x)$ and
# $q_\theta(z_1|x, z_2)$ read the image through two stacks of five gated convolutions, and the decoder
# maps $[z_1, z_2]$ through gated dense layers to a 28x28 map refined by four gated 3x3 convolutions
# with 64 channels, ending in the logits of a Bernoulli per pixel. A gated layer is computed as one
# convolution with twice the channels, split in two:

# %%
show_source(hvae.GatedConv2d.forward)

# %%
show_source(hvae.ConvHVAE.encoder, strip_docstring=True)

# %% [markdown]
# The prior on the top latent is either the standard normal (S) or the VampPrior (VP), a uniform
# mixture of the encoder's own posteriors at $K = 500$ learned pseudo-inputs $u_k \in [0, 1]^{784}$:
#
# $$
# p_\theta(z_2) = \frac{1}{K} \sum_{k=1}^{K} q_\theta(z_2 | u_k).
# $$ (eq-img-vampprior)
#
# The $K$ encodings are computed once per training step and shared by every use of the prior in that
# step (MIM uses it twice):

# %%
show_source(hvae.ConvHVAE.p_z2, strip_docstring=True)

# %% tags=["NBVAL_CHECK_OUTPUT"]
for prior in ("standard", "vampprior"):
    m = hvae.ConvHVAE(prior)
    print(f"convHVAE ({image_study.PRIOR_SHORT[prior]}): {sum(p.numel() for p in m.parameters()):,} parameters")

# %% [markdown]
# In the committed runs the decoder-sampled half of MIM draws $z$ from the anchor
# $P(z) = \mathcal{N}(0, I_{80})$ over the whole latent, whatever the model prior (`ConvHVAE.anchor`).
# The paper is ambiguous here: its section 2 samples the anchor, and its appendix C sets the model prior
# equal to it, $p(z) = P(z)$, which a learned VampPrior is not. The reference code draws that $z$ from
# the model prior $p_\theta(z_2)\,p_\theta(z_1|z_2)$ (VampPrior: $z_2$ from $q_\theta(z_2|u_k)$ at a
# pseudo-input); with the standard prior the two differ only in $z_1$. Both are options
# (`mim_decoder_z="anchor"` or `"prior"`); the `paper` preset takes the reference's.

# %% [markdown]
# ## MIM with a Bernoulli decoder
#
# MIM's loss is estimated as in Algorithm 1 of the paper (chapter {ref}`ch-mixture2d` derives the two
# terms). Its decoder-sampled term draws $z \sim P(z)$ and then an image $x \sim p_\theta(x|z)$, and
# evaluates
#
# $$
# f_\theta(x, z) = -\tfrac12\left(\log q_\theta(z|x) + 2\log p_\theta(x|z) + \log p_\theta(z)\right).
# $$ (eq-img-dec-term)
#
# With a Gaussian decoder $x$ is reparameterised and the pathwise gradient is the whole gradient. A
# binary image cannot be reparameterised: the gradient of $\mathbb{E}_{p_\theta(x|z)}[f_\theta(x,z)]$
# has a second part, through the sampling distribution itself, which the pathwise estimator silently
# drops. We keep the *sampled binary image* (the model's own data) and add that part with the
# score-function (REINFORCE) estimator {cite:p}`williams1992simple`,
#
# $$
# \begin{aligned}
# \nabla_\theta\, \mathbb{E}_{p_\theta(x|z)}\left[f_\theta(x, z)\right]
#   &= \mathbb{E}\left[\nabla_\theta f_\theta(x, z)\right] \\
#   &\quad {}+ \mathbb{E}\left[\left(f_\theta(x, z) - b\right) \nabla_\theta \log p_\theta(x|z)\right],
# \end{aligned}
# $$ (eq-img-score)
#
# where the baseline $b$ may be anything that does not depend on that $x$. We use the leave-one-out
# mean of the batch {cite:p}`kool2019buy`,
#
# $$
# b_i = \frac{1}{N - 1} \sum_{j \neq i} f_\theta(x_j, z_j),
# $$ (eq-img-loo)
#
# which removes the large common offset of $f$ (hundreds of nats) without bias. The second term of
# {eq}`eq-img-score` is implemented as a surrogate $s - \mathrm{stop\_grad}(s)$ with
# $s = \mathrm{stop\_grad}(f - b)\,\log p_\theta(x|z)$: it is exactly zero in the forward pass (the
# reported loss is unchanged) and its gradient is the score-function term.

# %%
show_source(objectives_module.score_function_surrogate, strip_docstring=True)

# %%
show_source(objectives_module._mim_decoder_term, strip_docstring=True)

# %% [markdown]
# `tests/test_objectives_bernoulli.py` checks this on a model with a 3-pixel Bernoulli decoder and fixed
# $z$, where the expectation is a sum over the 8 possible images: the surrogate's gradient, averaged
# over many draws, matches the exact gradient within five standard errors, while the pathwise gradient
# alone misses it by more than twenty, and the loss value is bit-for-bit unchanged. The reference code
# took a different route (the detached Bernoulli mean image plus a score-function term); ours keeps the
# image a draw of the model.

# %% [markdown]
# ## Training schedule
#
# **The paper's protocol** (appendix D.2, following the VampPrior code): Adam with learning rate
# $5\cdot 10^{-4}$, batches of 100, up to 2,000 epochs of 500 steps (at most 1,000,000 steps), early
# stopping after 50 epochs without a better validation loss, and the KL/MIM weight $\beta$ warmed up
# over the first 100 epochs (50,000 steps). The `paper` preset follows it (float32; meant for a GPU).
#
# **What a step costs depends on the CPU.** `benchmarks/bench_hvae.py` prints, for the machine it runs
# on, the seconds per training step of each model in float32 and in bfloat16, the FLOPs of a step, and
# the fraction of that machine's own matrix-multiply speed the step reaches; its saved outputs, each
# headed by the CPU it was measured on, are in `benchmarks/results/`. Two settings leave the model and
# its parameters untouched and change only the rounding: convolutions and dense layers in bfloat16
# under `torch.autocast` (parameters, optimiser state, the outputs of every block and all log-densities
# stay float32), and the channels-last memory layout. bfloat16 is several times *faster* on CPUs that
# compute it natively (AMX, AVX512-BF16) and many times *slower* on the others, where it is emulated
# (AVX2-only CPUs such as AMD's Zen 3). So the presets ask for `precision="auto"`
# (`mimlib.precision`): bfloat16 only where the CPU has the instructions and a short
# measurement confirms the gain, float32 elsewhere. Precision is not part of a run's identity; the
# results table records what each run computed in (its `precision` column), and the committed runs of
# this page were trained in bfloat16 on a 2-core CPU with AMX. MIM costs about twice the VAE per step
# because it runs the decoder and the encoder on a second, decoder-sampled batch; the VampPrior adds the
# encoding of its 500 pseudo-inputs at every step.
#
# **The `book` schedule.** Every model gets the same number of steps, so MIM and the VAE are compared at
# equal numbers of images seen: 16 epochs of 250 steps, i.e. 4,000 steps, 400,000 images, 8 passes over
# the training set. $\beta = \min(1, (\text{epoch}+1)/4)$ is 0.25, 0.5 and 0.75 in the first three
# epochs and 1 from the 4th on, so each model spends 13 of its 16 epochs (3,250 of its 4,000 steps, 81%)
# on its real objective. Early stopping watches the validation loss (at $\beta = 1$) on 2,000 validation
# images with patience 5 and keeps each model's best epoch. After every epoch a cheap 5-NN accuracy (mean
# codes; fit on 10,000 training and scored on 2,000 validation images) feeds the learning curves. Each
# dataset's four runs go in two single-thread jobs side by side, (VAE-S then MIM-VP) and (MIM-S then
# VAE-VP), a schedule sized so that each job, evaluation included, fits in 2.5 hours on the bfloat16
# machine that trained the committed runs (on a float32-only CPU, multiply by the ratio
# `bench_hvae.py` prints). What each run actually took, per epoch and in total, is printed under
# Table 1, from the runs' own records.
#
# **How far this is from the paper.** 4,000 steps are 0.4% of the paper's cap, and fewer than a tenth of
# its warm-up alone. Neither objective has converged after 8 passes (see the learning curves), so the
# absolute accuracies are not the paper's; the comparison is between MIM and the VAE trained identically.
# The printed settings below each table state what was run.

# %%
show_source(image_study.epoch_batches, strip_docstring=True)

# %% [markdown]
# ## Training and evaluation
#
# Every (dataset, prior, objective, seed): train or load, then evaluate (or load the cached evaluation).
# The evaluation of one model, on the test images:
#
# * **k-NN accuracy**, $k = 1, 3, 5, 10$ (scikit-learn, Euclidean): the classifier is fit on the codes of
#   the 50,000 training images (binarised once) and scored on the codes of the 10,000 test images. The
#   paper's codes are *sampled*, $z \sim q_\theta(z|x)$ (`knn5`); we also report the codes at the mean
#   (`knn5_mean`: $z_2$ at its mean, then $z_1$ at the mean of $q_\theta(z_1|x, z_2)$);
# * **NLL**: $-\log q_\theta(x)$ by importance sampling with samples from $q_\theta(z|x)$
#   {cite:p}`burda2016importance`, in nats (`nll_samples` samples on `nll_points` test images);
# * **reconstruction**: the mean of $-\log p_\theta(x|z)$, $z \sim q_\theta(z|x)$, in nats;
# * **active units**: latent dimensions $d$ with $\mathrm{Cov}_x\left(\mathbb{E}_{q_\theta(z|x)}[z_d]\right) > 0.01$
#   {cite:p}`burda2016importance`, of 80 (the expectation over $z_1$ averages 10 draws of $z_2$).

# %% tags=["NBVAL_IGNORE_OUTPUT"]
t0 = time.perf_counter()
study = image_study.run_study(cfg, datasets=datasets, priors=priors, objectives=objectives, seeds=seeds,
                              runs_dir=runs_dir, data=data)
wall = time.perf_counter() - t0
res = study.results
print(f"wall time in this execution: {wall:.0f} s ({len(res)} models; "
      f"{'loaded from ' + runs_dir if wall < 0.5 * study.train_seconds else 'trained now'})")
print(f"training time of all models, as measured when they were trained: {study.train_seconds:.0f} s")
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {cfg.torch_device()}")

# %%
path = write_results(res, results_dir, "images" if preset == "book" else f"images-{preset}",
                     replace={"model": "convhvae"})  # keeps chapter 06's PixelHVAE rows
print(f"wrote {path}: {len(res)} rows, columns {list(res.columns)}")

# %% [markdown]
# ## Table 1: 5-NN accuracy of the latent code
#
# Our 5-NN test accuracy (sampled codes, mean over seeds) beside the paper's Table 1. The settings that
# produced our numbers are printed under the table.

# %% tags=["NBVAL_CHECK_OUTPUT"]
pub = published("images").query("metric == 'knn5' and model == 'convhvae'")
pub = pub.assign(prior=pub.prior.map(image_study.PRIOR_SHORT))
ours = res.assign(prior=res.prior.map(image_study.PRIOR_SHORT)).groupby(["dataset", "prior", "objective"]).knn5.mean()
theirs = pub.set_index(["dataset", "prior", "objective"]).value
cols = [(p, o, s) for p in ("S", "VP") for o in ("mim", "vae") for s in ("ours", "paper")]
table = pd.DataFrame(index=[NAMES[d] for d in ("fashion-mnist", "mnist")],
                     columns=pd.MultiIndex.from_tuples(cols, names=["prior", "objective", ""]), dtype=float)
for d in ("fashion-mnist", "mnist"):
    for p, o, s in cols:
        src = ours if s == "ours" else theirs
        table.loc[NAMES[d], (p, o, s)] = src.get((d, p, o), np.nan)
print(table.round(2).to_string(na_rep="-"))
first = res.iloc[0]
print(f"\nours: preset={preset}, seeds={seeds}, {int(first.steps_per_epoch)} steps x up to {cfg.max_epochs} "
      f"epochs of batch {cfg.batch_size} (warm-up {cfg.warmup_epochs} epochs, patience {cfg.patience}), "
      f"lr {cfg.lr}, precision {cfg.precision}; k-NN fit on {int(first.knn_train)} training and scored on "
      f"{int(first.eval_test)} test images, sampled z")
print("epochs run (best):", ", ".join(f"{NAMES[r.dataset]} {image_study.PRIOR_SHORT[r.prior]} {r.objective.upper()} "
                                       f"{int(r.epochs)} ({int(r.best_epoch)})" for r in res.itertuples()))

# %% [markdown]
# All measures, per model (one row per seed): k-NN accuracy for every $k$ with sampled and mean codes,
# importance-sampled NLL, reconstruction term, active units, and the training time.

# %%
show = ["dataset", "prior", "objective", "seed", "knn1", "knn3", "knn5", "knn10", "knn5_mean", "nll_is",
        "recon", "active_units", "active_z1", "active_z2", "epochs", "best_epoch", "seconds"]
print(res[show].round(3).to_string(index=False))
print(f"\nNLL: {int(first.nll_samples)} importance samples on {int(first.nll_points)} test images; "
      f"reconstruction and active units on {int(first.eval_test)} test images")

# %% [markdown]
# **Time per epoch.** From each run's history: the training and validation time of every epoch (the
# learning-curve k-NN excluded), its median over epochs, that median per optimiser step, the
# whole training, and the final evaluation. These are the times the runs measured where they were
# trained; a run that shared the CPU with other work than its partner job is slower than the plan below.

# %%
timing = image_study.time_per_epoch(study)
print(timing.round(2).to_string())
print(f"\ntotal training time {res.seconds.sum() / 3600:.2f} h and evaluation {res.eval_seconds.sum() / 3600:.2f} h "
      f"summed over the {len(res)} models")

# %% [markdown]
# ## Figure 2: t-SNE of the test codes
#
# Sampled codes of `n_tsne` test images, projected to 2-D with t-SNE {cite:p}`vandermaaten2008tsne`
# (scikit-learn, perplexity 30, PCA initialisation, fixed seed), VAE and MIM side by side for the
# standard prior as in the paper's Fig. 2, coloured by class. t-SNE preserves neighbourhoods, not
# distances or cluster sizes; it is a picture of what the k-NN classifier sees.

# %%
tsne_prior = "standard" if "standard" in priors else priors[0]
pairs = [(d, o) for d in datasets for o in ("vae", "mim") if o in objectives]
fig, axes = plt.subplots(1, len(pairs), figsize=(3.3 * len(pairs), 3.4), squeeze=False)
for ax, (d, o) in zip(axes[0], pairs):
    model = study.models[(d, tsne_prior, o, seeds[0])]
    x, y = data[d].test[:n_tsne], data[d].test_labels[:n_tsne].numpy()
    model.set_compute(cfg.eval_precision, cfg.channels_last)
    zs, _ = image_study.embed(model, x, generator_seed=cfg.eval_seed + 2)
    model.set_compute(cfg.precision, cfg.channels_last)
    emb = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", learning_rate="auto",
               random_state=0).fit_transform(zs)
    ax.scatter(emb[:, 0], emb[:, 1], c=y, cmap="tab10", s=2, vmin=0, vmax=9)
    k5 = res[(res.dataset == d) & (res.prior == tsne_prior) & (res.objective == o)].knn5.mean()
    ax.set_title(f"{NAMES[d]}, {o.upper()} ({image_study.PRIOR_SHORT[tsne_prior]})\n5-NN {k5:.2f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
classes = {"mnist": [str(i) for i in range(10)],
           "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                             "Bag", "Ankle boot"]}
for d in datasets:
    handles = [plt.Line2D([], [], ls="", marker="o", ms=4, color=plt.cm.tab10(i)) for i in range(10)]
    fig.legend(handles, [f"{i}: {c}" if d == "fashion-mnist" else c for i, c in enumerate(classes[d])],
               title=f"{NAMES[d]} classes", fontsize=7, title_fontsize=8, ncol=10, frameon=False,
               loc="lower center", bbox_to_anchor=(0.5, -0.1 - 0.1 * datasets.index(d)))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Learning curves
#
# Against the number of training images seen: the cheap 5-NN accuracy computed after every epoch (mean
# codes, 10,000 training / 2,000 validation images in the `book` preset), the validation loss at
# $\beta = 1$ (each objective's own loss, so MIM and VAE values are not comparable with each other), and
# the reconstruction term $-\log p_\theta(x|z)$ on the training batches (encoder-sampled pairs for MIM),
# the *rate* $\log q_\theta(z|x) - \log p_\theta(z)$ on the training batches (the VAE's KL term; for MIM
# on its encoder-sampled pairs), whose mean over the data bounds the mutual information of the encoding
# joint from above and, added to the reconstruction term, gives the negative ELBO,
# and, for MIM only, $-\log p_\theta(x|z)$ of its decoder-sampled pairs: the entropy of the decoder at
# anchor samples $z \sim P(z)$, which the decoder-sampled term {eq}`eq-img-dec-term` (with its full
# gradient, {eq}`eq-img-score`) rewards making small. The grey band covers the images seen with $\beta < 1$ (the warm-up).

# %%
hist = image_study.training_curves(study.history)   # adds recon_train, rate and (MIM) dec_nll
panels = [("curve_knn", "5-NN accuracy (validation, mean codes)"), ("val_loss", "validation loss (nats)"),
          ("recon_train", "-log p(x|z), training (nats)"), ("rate", "rate: log q(z|x) - log p(z) (nats)"),
          ("dec_nll", "-log p(x|z), decoder-sampled (MIM)")]
ncols = 3
rows_per = -(-len(panels) // ncols)  # each dataset gets rows_per rows of ncols panels
fig, axes = plt.subplots(rows_per * len(datasets), ncols, figsize=(4.2 * ncols, 3.0 * rows_per * len(datasets)),
                         squeeze=False)
warm_examples = max(cfg.warmup_epochs - 1, 0) * int(first.steps_per_epoch) * cfg.batch_size  # images seen with beta < 1
for di, d in enumerate(datasets):
    cells = axes[rows_per * di:rows_per * (di + 1)].ravel()
    for ax in cells[len(panels):]:
        ax.set_visible(False)
    for ax, (col, label) in zip(cells, panels):
        if col not in hist:
            ax.set_visible(False)
            continue
        for (p, o, s), g in hist[hist.dataset == d].groupby(["prior", "objective", "seed"]):
            if g[col].isna().all():
                continue
            ax.plot(g.examples, g[col], color=OBJECTIVE_COLORS[o], ls="-" if p == "standard" else "--",
                    marker=".", lw=1, label=f"{o.upper()} {image_study.PRIOR_SHORT[p]}" + (f" s{s}" if len(seeds) > 1 else ""))
        ax.axvspan(0, warm_examples, color="0.9", zorder=0)
        ax.set_xlabel("training images seen")
        ax.set_ylabel(label, fontsize=8)
        ax.set_title(NAMES[d], fontsize=9)
    cells[0].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## How much does bfloat16 change the numbers?
#
# The `book` preset trains and evaluates with bfloat16 convolutions. For one trained model, the same
# test images and the same latent samples scored with float32 and with bfloat16 networks:

# %%
d0 = datasets[0]
key = (d0, priors[0], objectives[0], seeds[0])
model = study.models[key]
x = data[d0].test[:200]
with torch.inference_mode():
    torch.manual_seed(0)
    model.set_compute("fp32", cfg.channels_last)
    z = model.encoder(x).sample()
    lp32 = model.decoder(z).log_prob(x)
    model.set_compute("bf16", cfg.channels_last)
    lp16 = model.decoder(z).log_prob(x)
    model.set_compute(cfg.precision, cfg.channels_last)
diff = (lp16 - lp32).abs()
print(f"{key}: log p(x|z) on 200 test images, float32 mean {lp32.mean():.3f} nats; "
      f"|bf16 - fp32| mean {diff.mean():.3f}, max {diff.max():.3f} nats")

# %% [markdown]
# ## Discussion
#
# The paragraph below is generated from the numbers of the run shown on this page; with the `smoke`
# preset it describes noise.

# %%
lines, cells = [], []
if preset == "smoke":
    lines.append("**These are smoke-test numbers** (a few optimiser steps on 500 images): the comparison "
                 "below is printed to exercise the code and means nothing.\n")
for d in datasets:
    for p in priors:
        sub = res[(res.dataset == d) & (res.prior == p)].groupby("objective")[
            ["knn5", "nll_is", "active_units", "active_z1", "active_z2"]].mean()
        if not {"mim", "vae"} <= set(sub.index):
            continue
        ps = image_study.PRIOR_SHORT[p]
        paper_gap = theirs.get((d, ps, "mim"), np.nan) - theirs.get((d, ps, "vae"), np.nan)
        gap = sub.knn5["mim"] - sub.knn5["vae"]
        cell_hist = hist[(hist.dataset == d) & (hist.prior == p)].sort_values("epoch").groupby("objective")
        last = cell_hist[["rate", "recon_train"]].last()
        # how much the validation 5-NN (mean codes) still moved over the last 4 epochs: is the curve flat?
        moved = cell_hist.curve_knn.agg(lambda c: c.dropna().iloc[-1] - c.dropna().iloc[-5]
                                        if c.notna().sum() >= 5 else np.nan)
        cells.append(gap)
        lines.append(f"- {NAMES[d]}, convHVAE ({ps}): 5-NN {sub.knn5['mim']:.3f} (MIM) vs {sub.knn5['vae']:.3f} "
                     f"(VAE), a gap of {gap:+.3f} (paper: {paper_gap:+.2f}); NLL {sub.nll_is['mim']:.1f} vs "
                     f"{sub.nll_is['vae']:.1f} nats; rate {last.rate['mim']:.0f} vs {last.rate['vae']:.0f} nats and "
                     f"reconstruction {last.recon_train['mim']:.0f} vs {last.recon_train['vae']:.0f} nats in the last "
                     f"training epoch; active units {sub.active_units['mim']:.0f} (z1 {sub.active_z1['mim']:.0f}, z2 "
                     f"{sub.active_z2['mim']:.0f}) vs {sub.active_units['vae']:.0f} (z1 {sub.active_z1['vae']:.0f}, "
                     f"z2 {sub.active_z2['vae']:.0f}) of 80; validation 5-NN (mean codes) moved by "
                     f"{moved['mim']:+.3f} (MIM) and {moved['vae']:+.3f} (VAE) over the last 4 epochs.")
if cells:
    lines.insert(int(preset == "smoke"), f"**MIM's 5-NN accuracy (sampled codes) is above the VAE's in "
                 f"{sum(g > 0 for g in cells)} of the {len(cells)} cells on this page** (the paper: in all four, "
                 f"by 0.07 to 0.13).\n")
lines.append(f"- Over all {len(res)} models on this page, 5-NN with sampled codes ranges from {res.knn5.min():.3f} to "
             f"{res.knn5.max():.3f}, and with mean codes from {res.knn5_mean.min():.3f} to {res.knn5_mean.max():.3f}.")
display(Markdown("\n".join(lines)))

# %% [markdown]
# **Reading these numbers.** The paper reports MIM ahead of the VAE in 5-NN accuracy in every cell of
# Table 1 (by 0.07 to 0.13), with the VAE expected to be the better density model (lower NLL), since it
# maximises a likelihood bound while MIM trades likelihood for mutual information. The list above says
# whether the run on this page shows the same ordering and by how much; nothing else on this page should
# be read as a claim about it. The rate and reconstruction columns show where a model's NLL comes from:
# their sum is the negative ELBO, which the importance-sampled NLL tightens. A model whose encoder is
# much sharper than its prior (a high rate) pays for it in NLL even when it reconstructs well. The last
# line compares sampled with mean codes: where the mean codes of all models classify about equally well
# and the sampled ones do not, the sampled gap measures how much the encoder's noise blurs the classes
# (how sharp $q_\theta(z|x)$ is), not how the posterior means are arranged. The paper's Table 1 uses
# sampled codes.
#
# **Differences from the paper that could move the numbers**, in decreasing order of our expected
# effect: (i) the `book` schedule is 4,000 steps per model against up to 1,000,000 with early stopping
# in the paper, so neither model has converged and the gap may still change with training (the learning
# curves show whether it is still moving); (ii) the decoder-sampled MIM term uses a sampled binary image
# with a score-function gradient, where the reference code used the Bernoulli mean image; (iii) the
# decoder-sampled $z$ comes from the $\mathcal{N}(0, I)$ anchor, not the model prior, so with the VampPrior
# the decoder-sampled pairs ask the encoder to map the model's images back to codes spread like
# $\mathcal{N}(0, I)$ rather than like the VampPrior (we expect this to matter for the top latent $z_2$,
# the one the VampPrior models, and have not measured it; few active $z_2$ units for MIM with the VampPrior,
# in the list above, would fit this explanation without proving it); (iv) bfloat16
# convolutions (their effect on a likelihood is measured just above); (v) one seed in the `book` preset
# where the reference runs used 10, so differences of a few hundredths are within seed-to-seed spread;
# (vi) the NLL uses 100 importance samples on 1,000 test images, not 5,000 on all 10,000, so it is a
# slightly looser upper bound.
#
# **Differences from the reference code** (read from seraphlabs-ca/MIM, `convHVAE_2level.py`, its
# optimiser and the commands in its README), each now a named option of `ImageStudyConfig`, all set to
# the reference's in the `paper` preset; the committed `book` runs used the first value of each:
# (a) VampPrior pseudo-inputs start from N(0.05, 0.01) here, from 500 training images plus noise there
# (`pseudo_init="data"`, its README's commands for the paper's runs; without that flag its default is
# N(-0.05, 0.01)); with N(0.05, 0.01) the 500 components start almost identical, one Gaussian in
# effect; (b) during the warm-up our $\beta$ rescales MIM's encoder-sampled term,
# $-\tfrac{1+\beta}{2}[\log p_\theta(x|z) + \log p_\theta(z)]$, while the reference also weights the top
# prior, $-\tfrac{1+\beta}{2}[\log p_\theta(x|z) + \log p_\theta(z_1|z_2) + \beta \log p_\theta(z_2)]$
# (`mim_warmup="reference"`); (c) our decoder-sampled half runs from the first step with weight $\beta$,
# the reference's only once $\beta = 1$ (`mim_decoder_start="after_warmup"`); (d) its $z$ (above); (e)
# the reference feeds the detached decoder *mean* image back and evaluates $\log p_\theta(x|z)$ at $x$
# equal to that mean, where its derivative with respect to the mean is zero: its score-function term and
# every decoder gradient of that half vanish, so the half trains only the encoder and the prior, while
# ours is the unbiased gradient of the sampled half; (f) the reference optimises with "AdamNormGrad",
# each parameter tensor's gradient divided by its norm before Adam (`optimizer="adam-normgrad"`), ours
# with plain Adam. The screen of chapter {ref}`ch-ablations` (200 steps per run; the 2 x 2 of (a) and
# (d) with VAE controls at seed 0, and the cells with our anchor $z$ at seeds 0-2) found the reference's
# decoder-sampled $z$ (d) the largest effect, and a harmful one; the reference's initialisation (a)
# woke the top layer of both objectives and improved their NLL at every seed, while its effect on the
# 5-NN accuracy changed sign from seed to seed. The `book` preset therefore now takes (a) and keeps our
# choices for (b)-(f); the outputs on this page predate that change (see the box at the top).
