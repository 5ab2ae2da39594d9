"""Figure helpers shared by the chapters (matplotlib + seaborn)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.patches import Ellipse

from .data import mixture_log_density, sample_mixture

__all__ = ["OBJECTIVE_COLORS", "OBJECTIVE_NAMES", "DATASET_NAMES", "plot_mixture_panels", "plot_metric_sweep",
           "plot_variant_curves", "plot_tsne_panels"]

OBJECTIVE_COLORS = {"mim": "tab:blue", "vae": "tab:red", "amim": "tab:green"}
OBJECTIVE_NAMES = {"mim": "MIM", "vae": "VAE", "amim": "A-MIM"}
DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def _density_contours(ax, lim: float = 2.2):
    g = torch.linspace(-lim, lim, 200)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    dens = mixture_log_density(torch.stack([xx, yy], -1)).exp()
    ax.contour(xx.numpy(), yy.numpy(), dens.numpy(), levels=6, colors="k", linewidths=0.6)


def plot_mixture_panels(panels: dict, hidden: list[int], results: pd.DataFrame,
                        objectives: tuple[str, ...] = ("vae", "mim"), seed_index: int = 0,
                        n_ellipses: int = 150):
    """Paper Fig. 1: per width, VAE and MIM side by side, from :func:`mimlib.mixture2d.figure1_arrays`
    (``panels[(objective, hidden)]``, as a sweep returns them in ``SweepResult.panels``).

    Top row: level sets of P(x) (black) and reconstructions x' ~ p(x|z'), z' ~ q(z|x0)
    for x0 ~ P(x) (red). Bottom row: one-std ellipses of q(z|x0) (green), the posterior
    means coloured by the mixture component of x0, and the one-std circle of P(z) (dashed). Titles give that
    seed's KSG MI and reconstruction error (distance to a decoder sample).
    """
    cols = [(h, o) for h in hidden for o in objectives]
    fig, axes = plt.subplots(2, len(cols), figsize=(2.4 * len(cols), 5.0), squeeze=False)
    for j, (h, obj) in enumerate(cols):
        panel = panels[(obj, h)]
        top, bottom = axes[0, j], axes[1, j]
        _density_contours(top)
        x_rec, mean, std = panel["x_rec"], panel["q_mean"], panel["q_std"]
        top.scatter(x_rec[:, 0], x_rec[:, 1], s=3, c="red", alpha=0.6, linewidths=0)
        row = results[(results.objective == obj) & (results.hidden == h)].iloc[seed_index]
        top.set_title(f"{OBJECTIVE_NAMES[obj]}, H={h}\nMI={row.mi_ksg:.2f}, err={row.recon_sample:.2f}",
                      fontsize=9)
        bottom.scatter(mean[:, 0], mean[:, 1], c=panel["labels"], cmap="tab10", vmin=0, vmax=9, s=2,
                       alpha=0.8, linewidths=0, zorder=3)
        for i in range(min(n_ellipses, len(mean))):
            bottom.add_patch(Ellipse(mean[i], 2 * std[i, 0], 2 * std[i, 1], fill=False,
                                     ec="tab:green", lw=0.5, alpha=0.7))
        bottom.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls="--", ec="k", lw=1.0))
        for ax, lim in ((top, 2.2), (bottom, 3.5)):
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("x space")
    axes[1, 0].set_ylabel("z space")
    fig.tight_layout()
    return fig


METRIC_LABELS = {"mi_ksg": "MI (KSG, nats)", "nll_is": "NLL, importance sampled (nats)",
                 "nll_single": "NLL, one-sample bound (nats)", "recon_mean": "recon. error, decoder mean",
                 "recon_sample": "recon. error, decoder sample", "knn5": "5-NN accuracy",
                 "enc_std": "mean posterior std of q(z|x)"}


def plot_metric_sweep(results: pd.DataFrame, metrics: list[str], reference: pd.DataFrame | None = None,
                      hlines: dict[str, tuple[float, str]] | None = None):
    """Paper Fig. 3: each metric against the hidden width, mean +/- one std over seeds,
    with the reference code's figures as open markers where given, and optional
    horizontal reference lines ``hlines[metric] = (value, label)``."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        sns.lineplot(data=results, x="hidden", y=m, hue="objective", palette=OBJECTIVE_COLORS,
                     errorbar="sd", marker="o", ax=ax, legend=ax is axes[0, 0])
        if reference is not None:
            ref = reference[reference.metric == m]
            for obj, r in ref.groupby("objective"):
                ax.plot(r.hidden, r.value, ls=":", marker="s", mfc="none", color=OBJECTIVE_COLORS[obj],
                        label=f"{obj} (reference code)")
        if hlines and m in hlines:
            value, label = hlines[m]
            ax.axhline(value, color="k", ls="--", lw=1, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("hidden units H")
        ax.set_ylabel(METRIC_LABELS.get(m, m))
    seen: dict[str, object] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    l, h = list(seen), list(seen.values())
    if axes[0, 0].get_legend() is not None:
        axes[0, 0].get_legend().remove()
    fig.legend(h, l, loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    return fig


def plot_variant_curves(history: pd.DataFrame, metrics: dict[str, str], hue: str = "variant",
                        hlines: dict[str, tuple[float, str]] | None = None, title: str | None = None,
                        x: str = "epoch", xlabel: str = "epoch", style: str | None = None,
                        vlines: tuple[float, ...] = ()):
    """Chapter 07: each history column of ``metrics`` (column -> axis label) against ``x`` (the 1-based
    epoch by default), one line per ``hue`` value (and ``style`` value: each drawn alone, e.g. one per
    seed); ``hlines[column] = (value, label)`` adds a dashed reference line, ``vlines`` dotted vertical ones."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.5 * len(metrics), 3.0), squeeze=False)
    h = history.assign(epoch=history["epoch"] + 1)
    for ax, (col, label) in zip(axes[0], metrics.items()):
        sns.lineplot(data=h, x=x, y=col, hue=hue, style=style or hue, markers=True, dashes=style is not None,
                     ax=ax, legend=ax is axes[0, 0], estimator=None if style else "mean")
        for v in vlines:
            ax.axvline(v, color="0.4", ls=":", lw=1)
        if hlines and col in hlines:
            value, text = hlines[col]
            ax.axhline(value, color="k", ls="--", lw=1)
            ax.annotate(text, (0.02, value), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
        ax.set_ylabel(label)
        ax.set_xlabel(xlabel)
    leg = axes[0, 0].get_legend()
    if leg is not None:
        handles, labels = axes[0, 0].get_legend_handles_labels()
        leg.remove()
        fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False, fontsize=8,
                   bbox_to_anchor=(0.5, -0.02 - 0.06 * math.ceil(len(labels) / 2)))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_tsne_panels(arrays: dict[str, dict[str, np.ndarray]], titles: dict[str, str] | None = None,
                     ncols: int = 4):
    """Chapter 07: one t-SNE picture per run (``arrays[label]["tsne"]``, coloured by ``tsne_labels``);
    runs without a t-SNE array are skipped."""
    labels = [k for k, a in arrays.items() if "tsne" in a]
    nrows = max(1, math.ceil(len(labels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, k in zip(axes.flat, labels):
        a = arrays[k]
        ax.scatter(a["tsne"][:, 0], a["tsne"][:, 1], c=a["tsne_labels"], cmap="tab10", s=2, vmin=0, vmax=9)
        ax.set_title((titles or {}).get(k, k), fontsize=8)
    fig.tight_layout()
    return fig
