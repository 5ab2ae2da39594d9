# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# (ch-from-vae-to-mim)=
# # From the VAE to MIM
#
# The Mutual Information Machine {cite:p}`livne2019mim` starts from a way of reading the
# variational auto-encoder {cite:p}`kingma2014vae`: its loss compares two joint
# distributions over observations $x$ and codes $z$, one built from the encoder and one from
# the decoder. This chapter makes that reading precise, shows why it explains posterior
# collapse, and introduces the objects MIM is built on: the sample mixture $\mathcal{M}_S$,
# the Jensen-Shannon divergence between the two joints, and the joint-entropy regulariser
# $R_H$. Its main result is that $R_H$ turns the Jensen-Shannon divergence into an entropy,
# $H_{\mathcal{M}_S}(x, z) = \mathrm{JSD} + R_H$ ({prf:ref}`thm-ch1-jsd-entropy`).
#
# Every statement is proved and then checked on discrete models. With
# $x \in \{0, \dots, n_x - 1\}$ and $z \in \{0, \dots, n_z - 1\}$ every distribution is a
# table and every expectation a finite sum, so the checks are exact up to floating-point
# rounding: an identity either holds to about $10^{-15}$ or it is wrong. The sums live in
# `mimlib.discrete`; the property-based tests in `tests/test_discrete.py` repeat each check
# on thousands of random and near-degenerate tables.

# %% tags=["parameters", "hide-input"]
preset = "book"

# %% tags=["hide-input"]
import inspect

import numpy as np
import pandas as pd

from mimlib import discrete as d
from mimlib.book import print_table

N_SWEEP = {"smoke": 100, "book": 2000}[preset]
TABLE = d.table_instances()       # four fixed instances, keyed by seed
SWEEP = d.sweep_instances(N_SWEEP)  # further random instances each identity is swept over
show = print_table

# %% [markdown]
# ## Setting and notation
#
# Two distributions are given and never learned. They are the *anchors*: the data
# distribution $P(x)$, which we can only sample in practice, and a latent distribution $P(z)$,
# in the paper a standard normal. The model has two learned conditionals: an encoder
# $q_\theta(z|x)$ and a decoder $p_\theta(x|z)$. We drop the subscript $\theta$ when nothing
# depends on it.
#
# :::{prf:definition} Anchored joints and the sample mixture
# :label: def-ch1-anchored
#
# The *anchored encoding* and *anchored decoding* joints pair each conditional with the anchor
# of its input,
#
# $$
# A_q(x, z) \equiv q(z|x)\, P(x), \qquad A_p(x, z) \equiv p(x|z)\, P(z),
# $$ (eq-ch1-anchored)
#
# and the *sample mixture* is their average,
# $\mathcal{M}_S(x, z) \equiv \tfrac12 \big(A_q(x, z) + A_p(x, z)\big)$.
# :::
#
# All three can be sampled without evaluating $P(x)$: draw $x$ from the data and encode it,
# or draw $z$ from $P(z)$ and decode it. This is what makes them usable as the sampling
# distribution of a training loss. The paper writes $A_q$ and $A_p$ out in full; the short
# names are ours.
#
# :::{prf:definition} Model joints and the model mixture
# :label: def-ch1-model-joints
#
# Given a model data prior $q(x)$ and a model latent prior $p(z)$, the *model joints* are
#
# $$
# q(x, z) \equiv q(z|x)\, q(x), \qquad p(x, z) \equiv p(x|z)\, p(z),
# $$ (eq-ch1-model-joints)
#
# and the *model mixture* is $\mathcal{M}_\theta \equiv \tfrac12 \big(q(x, z) + p(x, z)\big)$.
# :::
#
# Unlike the anchored joints, the model joints can be *evaluated*: $q(x)$ and $p(z)$ are part
# of the model. The paper sets $p(z) = P(z)$ and builds $q(x)$ from the decoder; see
# {ref}`ch-mim-bound`. Here both are arbitrary tables.
#
# For distributions $a, b$ on the same finite set we use the entropy
# $H(a) = -\sum a \log a$, the cross entropy $H(a, b) = -\sum a \log b$, and the
# Kullback-Leibler divergence $D_{\mathrm{KL}}(a \,\|\, b) = \sum a \log (a/b)$, with
# $0 \log 0 = 0$ and $D_{\mathrm{KL}} = H(a, b) = \infty$ when $a$ puts mass where $b$ has
# none {cite:p}`cover2006elements`. When $a$ is a joint we also write $H_a(x, z)$ for $H(a)$,
# as the paper does. Logarithms are natural.
#
# :::{prf:lemma} Gibbs' inequality
# :label: lem-ch1-gibbs
#
# $H(a, b) = H(a) + D_{\mathrm{KL}}(a \,\|\, b)$ and $D_{\mathrm{KL}}(a \,\|\, b) \ge 0$, with
# equality if and only if $a = b$.
# :::
#
# :::{prf:proof}
# The identity is $-\log b = -\log a + \log(a/b)$ averaged under $a$. For the inequality,
# $\log t \le t - 1$ for $t > 0$ with equality only at $t = 1$. On the support of $a$,
# $-D_{\mathrm{KL}}(a \,\|\, b) = \sum_{a > 0} a \log(b/a) \le \sum_{a > 0} (b - a)
# = \sum_{a > 0} b - 1 \le 0$. Both steps are equalities only if $b = a$ wherever $a > 0$ and
# $b$ has no mass elsewhere, that is, $b = a$.
# :::
#
# The library computes these sums with `scipy.special`, which implements the $0 \log 0$
# convention and returns $\infty$ for a violated support:

# %%
for f in (d.entropy, d.cross_entropy, d.kl, d.anchored_encoding, d.anchored_decoding,
          d.sample_mixture):
    print(inspect.getsource(f))

# %% [markdown]
# ## The VAE loss as a divergence between joints
#
# For one observation the VAE maximises the evidence lower bound (paper Eq. 1)
#
# $$
# \mathrm{ELBO}(x) = \mathbb{E}_{q(z|x)}\big[\log p(x|z) + \log P(z) - \log q(z|x)\big],
# $$ (eq-ch1-elbo)
#
# and its loss is the negative ELBO averaged over the data,
# $L_{\mathrm{VAE}} = -\mathbb{E}_{P(x)}\, \mathrm{ELBO}(x)$.
#
# :::{prf:lemma} What the ELBO bounds
# :label: lem-ch1-elbo
#
# Let $\bar p(x) = \sum_z p(x|z) P(z)$ be the decoder's marginal and
# $\bar p(z|x) = p(x|z) P(z) / \bar p(x)$ its posterior. For every $x$ with $\bar p(x) > 0$,
# $\mathrm{ELBO}(x) = \log \bar p(x) - D_{\mathrm{KL}}\big(q(z|x) \,\|\, \bar p(z|x)\big)
# \le \log \bar p(x)$, with equality if and only if $q(z|x) = \bar p(z|x)$.
# :::
#
# :::{prf:proof}
# Substitute $p(x|z) P(z) = \bar p(x)\, \bar p(z|x)$ in {eq}`eq-ch1-elbo`; the constant
# $\log \bar p(x)$ leaves the expectation and what remains is
# $-D_{\mathrm{KL}}(q(z|x) \,\|\, \bar p(z|x))$. Conclude with {prf:ref}`lem-ch1-gibbs`.
# :::
#
# The paper writes the left side of Eq. 1 as $\log P(x)$, the same symbol it later uses for
# the data anchor. The bound holds for the model's marginal $\bar p(x)$; for the data anchor
# it fails pointwise in general (the table below finds such $x$), and holds only on average,
# by the next theorem.
#
# :::{prf:theorem} The VAE loss is a KL divergence between the anchored joints
# :label: thm-ch1-vae-kl
#
# $$
# L_{\mathrm{VAE}} = D_{\mathrm{KL}}\big(q(z|x) P(x) \,\|\, p(x|z) P(z)\big) + H(P(x)).
# $$ (eq-ch1-vae-kl)
#
# The "additive constant" of the paper's Eq. 2 is therefore the data entropy $H(P(x))$. It
# does not depend on $\theta$, and $L_{\mathrm{VAE}} \ge H(P(x))$, i.e.
# $\mathbb{E}_{P(x)} \mathrm{ELBO}(x) \le \mathbb{E}_{P(x)} \log P(x)$, with equality if and
# only if $A_q = A_p$.
# :::
#
# :::{prf:proof}
# Write the divergence as an expectation under $A_q$: $D_{\mathrm{KL}}(A_q \,\|\, A_p)$ is the
# $A_q$-average of $\log q(z|x) + \log P(x) - \log p(x|z) - \log P(z)$. The three terms other
# than $\log P(x)$ are, with the sign flipped,
# $\mathbb{E}_{P(x)} \mathrm{ELBO}(x)$, so they add up to $L_{\mathrm{VAE}}$. The remaining
# term is $\mathbb{E}_{A_q} \log P(x) = \mathbb{E}_{P(x)} \log P(x) = -H(P(x))$, because it
# does not depend on $z$. Hence $D_{\mathrm{KL}}(A_q \,\|\, A_p) = L_{\mathrm{VAE}} - H(P(x))$.
# The bound and its equality case are {prf:ref}`lem-ch1-gibbs`.
# :::
#
# The check: `vae_loss` sums the negative ELBO term by term; the right side is the KL of
# the two tables plus the data entropy.

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for seed, m in TABLE.items():
    lhs = d.vae_loss(m)
    rhs = d.kl(d.anchored_encoding(m), d.anchored_decoding(m)) + d.entropy(m.anchor_x)
    rows.append({"seed": seed, "L_VAE": lhs, "KL(A_q||A_p) + H(P(x))": rhs,
                 "equal": bool(np.isclose(lhs, rhs, rtol=1e-12, atol=1e-12)),
                 "ELBO <= log pbar(x), all x": bool(np.all(d.elbo(m) <= np.log(d.decoder_marginal(m)))),
                 "ELBO <= log P(x), all x": bool(np.all(d.elbo(m) <= np.log(m.anchor_x))),
                 "L_VAE >= H(P(x))": lhs >= d.entropy(m.anchor_x)})
show(rows)
print("Lemma and theorem hold on every sweep instance:",
      all(np.all(d.elbo(m) <= np.log(d.decoder_marginal(m)) + 1e-12)
          and np.isclose(d.vae_loss(m), d.kl(d.anchored_encoding(m), d.anchored_decoding(m))
                         + d.entropy(m.anchor_x), rtol=1e-10, atol=1e-10)
          for m in SWEEP))

# %% [markdown]
# The last-but-one column is the pointwise reading of Eq. 1 with the data anchor: it fails
# for three of the four instances, while the bound on the decoder marginal never does.
#
# ## Why the VAE loss invites posterior collapse
#
# The ELBO splits into a reconstruction term and a *rate*
# $\mathbb{E}_{P(x)} D_{\mathrm{KL}}(q(z|x) \,\|\, P(z))$. The rate is where posterior
# collapse {cite:p}`bowman2016generating,he2019lagging` comes from: it charges the encoder
# for every nat of information its code carries about $x$
# {cite:p}`hoffman2016elbo,alemi2018fixing`.
#
# :::{prf:theorem} The rate contains the mutual information
# :label: thm-ch1-rate
#
# Let $\bar q(z) = \sum_x q(z|x) P(x)$ be the aggregate posterior and $I_{A_q}(x; z)$ the
# mutual information of $A_q$. Then
#
# $$
# \mathbb{E}_{P(x)} D_{\mathrm{KL}}\big(q(z|x) \,\|\, P(z)\big)
# = I_{A_q}(x; z) + D_{\mathrm{KL}}\big(\bar q(z) \,\|\, P(z)\big).
# $$ (eq-ch1-rate)
# :::
#
# :::{prf:proof}
# Inside the expectation under $A_q$, split
# $\log \frac{q(z|x)}{P(z)} = \log \frac{q(z|x)}{\bar q(z)} + \log \frac{\bar q(z)}{P(z)}$.
# Because $A_q(x, z) = P(x) q(z|x)$ has marginals $P(x)$ and $\bar q(z)$, the first term
# averages to $I_{A_q}(x; z) = D_{\mathrm{KL}}(A_q \,\|\, P(x) \bar q(z))$ and the second,
# which depends on $z$ only, to $D_{\mathrm{KL}}(\bar q \,\|\, P(z))$.
# :::
#
# So the VAE loss is a reconstruction error plus a direct price on $I_{A_q}(x; z)$. If the
# decoder can model $P(x)$ without looking at $z$, information in $z$ no longer lowers the
# reconstruction error, and only the price is left. The collapsed encoder $q(z|x) = P(z)$,
# with the decoder $p(x|z) = P(x)$, is then a global optimum.
#
# {prf:ref}`thm-ch1-vae-kl` shows that the VAE loss does not prefer informative codes even
# when the decoder does use $z$. Every pair whose anchored joints agree, $A_q = A_p = J$,
# reaches the global minimum $H(P(x))$ of the VAE loss. Such a $J$ can be any coupling of
# $P(x)$ and $P(z)$, from the independent one ($I = 0$, the collapsed pair) to an invertible
# one. Which of them training finds is left to the architecture and the optimiser.
#
# The table takes $P(x) = P(z) = P$ and the couplings
# $J_\lambda = \lambda\, \mathrm{diag}(P) + (1 - \lambda)\, P P^\top$, which keep both
# marginals for every $\lambda \in [0, 1]$. Encoder and decoder are the two conditionals of
# $J_\lambda$. The VAE loss is flat in $\lambda$. The entropy of the sample mixture, which
# MIM bounds ({ref}`ch-mim-bound`), falls as the mutual information rises.

# %%
# NBVAL_CHECK_OUTPUT
P = np.random.default_rng(7).dirichlet(np.ones(5))
rows = []
for lam in [0.0, 0.25, 0.5, 0.75, 1.0]:
    m = d.from_model_joint(lam * np.diag(P) + (1 - lam) * np.outer(P, P), P, P)
    rows.append({"lambda": lam, "I(x;z)": d.mutual_information(d.anchored_encoding(m)),
                 "L_VAE": d.vae_loss(m), "H(P(x))": d.entropy(P),
                 "H_MS(x,z)": d.entropy(d.sample_mixture(m))})
show(rows, index="lambda")

# %% [markdown]
# At $\lambda = 0$ the code is independent of the data and
# $H_{\mathcal{M}_S} = 2 H(P)$; at $\lambda = 1$ it is a copy of the data and
# $H_{\mathcal{M}_S} = H(P)$. The VAE cannot tell the two apart.
#
# ## The Jensen-Shannon divergence and the entropy regulariser
#
# The VAE's divergence is asymmetric. A symmetric choice that needs only samples of the two
# anchored joints is the Jensen-Shannon divergence {cite:p}`lin1991divergence` (paper Eq. 3),
#
# $$
# \mathrm{JSD} = \tfrac12 \Big(D_{\mathrm{KL}}\big(p(x|z) P(z) \,\|\, \mathcal{M}_S\big)
# + D_{\mathrm{KL}}\big(q(z|x) P(x) \,\|\, \mathcal{M}_S\big)\Big).
# $$ (eq-ch1-jsd)
#
# To favour informative codes, MIM adds the average joint entropy of the anchored joints,
#
# $$
# R_H = \tfrac12 \big(H_{A_q}(x, z) + H_{A_p}(x, z)\big).
# $$ (eq-ch1-rh)
#
# Each joint entropy is a sum of marginal entropies minus a mutual information,
# $H(x, z) = H(x) + H(z) - I(x; z)$. Lowering $R_H$ therefore pushes the information of both
# anchored joints up, or their marginal entropies down.
#
# $R_H$ is tractable "up to a constant": by the chain rule,
# $H_{A_q}(x, z) = H(P(x)) + \mathbb{E}_{P(x)} H(q(\cdot|x))$ and
# $H_{A_p}(x, z) = H(P(z)) + \mathbb{E}_{P(z)} H(p(\cdot|z))$. The anchor entropies are
# constants; the conditional entropies are expectations of quantities the model can
# evaluate.

# %%
for f in (d.jsd, d.r_h):
    print(inspect.getsource(f))

# %% [markdown]
# :::{prf:theorem} The regularised JSD is the entropy of the sample mixture
# :label: thm-ch1-jsd-entropy
#
# $$
# H_{\mathcal{M}_S}(x, z) = \mathrm{JSD} + R_H .
# $$ (eq-ch1-jsd-entropy)
#
# Consequently $R_H \le H_{\mathcal{M}_S}(x, z) \le R_H + \log 2$. The lower bound is an
# equality if and only if $A_q = A_p$.
# :::
#
# :::{prf:proof}
# By {prf:ref}`lem-ch1-gibbs`,
# $D_{\mathrm{KL}}(A \,\|\, \mathcal{M}_S) = H(A, \mathcal{M}_S) - H(A)$ for $A = A_p, A_q$.
# Averaging the two, the entropies average to $R_H$. The cross entropy is linear in its
# first argument, so the cross entropies average to
# $H\big(\tfrac12 (A_p + A_q), \mathcal{M}_S\big) = H(\mathcal{M}_S, \mathcal{M}_S)
# = H_{\mathcal{M}_S}(x, z)$. Hence $\mathrm{JSD} = H_{\mathcal{M}_S}(x, z) - R_H$.
#
# For the bounds, $\mathrm{JSD} \ge 0$ is {prf:ref}`lem-ch1-gibbs`, with equality if and only
# if $A_q = \mathcal{M}_S = A_p$. For the upper bound, $\mathcal{M}_S \ge \tfrac12 A$
# pointwise for $A = A_p, A_q$, so
# $D_{\mathrm{KL}}(A \,\|\, \mathcal{M}_S) = \mathbb{E}_A \log (A / \mathcal{M}_S)
# \le \log 2$, and $\mathrm{JSD} \le \log 2$.
# :::
#
# In the paper's sentence introducing $R_H$, the phrase "which can be shown to be equal to
# $H_{\mathcal{M}_S}(x, z)$" refers to the *sum* $\mathrm{JSD} + R_H$. $R_H$ alone is
# smaller than $H_{\mathcal{M}_S}$ by exactly the JSD, as the table shows.

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for seed, m in TABLE.items():
    a_q, a_p = d.anchored_encoding(m), d.anchored_decoding(m)
    h_ms = d.entropy(d.sample_mixture(m))
    chain_q = d.entropy(m.anchor_x) + float(np.sum(m.anchor_x * [d.entropy(r) for r in m.q_z_given_x]))
    chain_p = d.entropy(m.anchor_z) + float(np.sum(m.anchor_z * [d.entropy(r) for r in m.p_x_given_z]))
    rows.append({"seed": seed, "H_MS(x,z)": h_ms, "JSD": d.jsd(m), "R_H": d.r_h(m),
                 "JSD + R_H": d.jsd(m) + d.r_h(m),
                 "equal": bool(np.isclose(h_ms, d.jsd(m) + d.r_h(m), rtol=1e-12, atol=1e-12)),
                 "R_H <= H_MS <= R_H + log 2": bool(d.r_h(m) <= h_ms <= d.r_h(m) + np.log(2)),
                 "chain rule": bool(np.isclose(d.entropy(a_q), chain_q, rtol=1e-12)
                                    and np.isclose(d.entropy(a_p), chain_p, rtol=1e-12))})
show(rows)
print("Identity and bounds hold on every sweep instance:",
      all(np.isclose(d.entropy(d.sample_mixture(m)), d.jsd(m) + d.r_h(m), rtol=1e-10, atol=1e-10)
          and -1e-12 <= d.jsd(m) <= np.log(2) + 1e-12 for m in SWEEP))

# %% [markdown]
# The equality case: when the two anchored joints coincide the JSD vanishes and $R_H$ is the
# entropy of the sample mixture. We build such a pair from a random joint $J$, taking its
# marginals as anchors and its conditionals as encoder and decoder.

# %%
# NBVAL_CHECK_OUTPUT
J = np.random.default_rng(11).dirichlet(np.ones(12)).reshape(3, 4)
m = d.from_model_joint(J, J.sum(axis=1), J.sum(axis=0))
print("JSD == 0:", abs(d.jsd(m)) < 1e-12)
print("H_MS(x,z) == R_H:", abs(d.entropy(d.sample_mixture(m)) - d.r_h(m)) < 1e-12)
print("L_VAE == H(P(x)):", abs(d.vae_loss(m) - d.entropy(m.anchor_x)) < 1e-12)

# %% [markdown]
# ## Summary
#
# - The VAE loss is $D_{\mathrm{KL}}(A_q \,\|\, A_p) + H(P(x))$ ({prf:ref}`thm-ch1-vae-kl`).
#   It is minimal on every consistent pair, whatever their mutual information, and its rate
#   term charges for information ({prf:ref}`thm-ch1-rate`).
# - MIM's target, the JSD plus $R_H$, is the entropy of the sample mixture
#   ({prf:ref}`thm-ch1-jsd-entropy`). Among consistent pairs this entropy is lowest for the
#   most informative code.
# - $H_{\mathcal{M}_S}$ still needs $\log P(x)$, which we cannot evaluate. {ref}`ch-mim-bound`
#   bounds it by a loss that needs only the model.
#
# ## Errata
#
# Statements of the paper that the checks above found wrong or loose:
#
# 1. **Eq. 1** bounds $\log \bar p(x)$, with $\bar p(x) = \sum_z p(x|z) P(z)$ the decoder's
#    marginal ({prf:ref}`lem-ch1-elbo`). Read with the data anchor $P(x)$, the symbol the
#    paper uses later, it fails pointwise (three of the four instances above). It holds only
#    on average over $P(x)$: $\mathbb{E}_{P} \mathrm{ELBO} \le -H(P(x))$.
# 2. **Eq. 2** holds "up to an additive constant". The constant is the data entropy:
#    $L_{\mathrm{VAE}} = D_{\mathrm{KL}}(q(z|x)P(x) \,\|\, p(x|z)P(z)) + H(P(x))$
#    ({prf:ref}`thm-ch1-vae-kl`).
# 3. **Section 2**, "we add the regularizer $R_H$ … which can be shown to be equal to
#    $H_{\mathcal{M}_S}(x, z)$" is ambiguous: it reads as if $R_H$ itself were the mixture
#    entropy. What holds is $\mathrm{JSD} + R_H = H_{\mathcal{M}_S}(x, z)$; $R_H$ alone is
#    smaller by the JSD, which lies in $[0, \log 2]$ ({prf:ref}`thm-ch1-jsd-entropy`).
