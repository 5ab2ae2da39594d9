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
# (ch-mim-and-skl)=
# # MIM and the symmetric KL divergence
#
# The VAE minimises one direction of the KL divergence between the anchored joints
# ({prf:ref}`thm-ch1-vae-kl`). The obvious way to make it symmetric is to add the other
# direction. Appendix B of {cite:p}`livne2019mim` compares that symmetric KL divergence (SKL)
# with the Jensen-Shannon divergence and with MIM. This chapter proves its four statements:
#
# - the JSD is at most half the SKL (paper Eq. 13);
# - half the SKL plus $R_H$ is an average of two cross entropies;
# - that regularised SKL equals $L_{\mathrm{MIM}}$ when the model priors are the anchors, and
#   is neither above nor below it otherwise;
# - the exact gap between half the SKL and the JSD.
#
# All four are correct as stated in appendix B. Eq. 13 prints correctly but is easy to misread,
# and the main text drops a factor $\tfrac12$ when it restates the third result. The chapter
# ends with the list of every statement of the paper that the three theory chapters found
# wrong or loose.

# %% tags=["parameters", "hide-input"]
preset = "book"

# %% tags=["hide-input"]
import dataclasses
import inspect

import numpy as np
import pandas as pd

from mimlib import discrete as d
from mimlib.book import print_table

N_SWEEP = {"smoke": 100, "book": 2000}[preset]
TABLE = d.table_instances()       # four fixed instances, keyed by seed
SWEEP = d.sweep_instances(N_SWEEP)  # further random instances each identity is swept over
show, same = print_table, d.agree


# %% [markdown]
# ## The symmetric KL divergence
#
# With the anchored joints $A_q = q(z|x) P(x)$ and $A_p = p(x|z) P(z)$, appendix B defines
#
# $$
# \begin{aligned}
# \mathrm{SKL} = \tfrac12 \Big(&D_{\mathrm{KL}}\big(p(x|z) P(z) \,\|\, q(z|x) P(x)\big) \\
# &+ D_{\mathrm{KL}}\big(q(z|x) P(x) \,\|\, p(x|z) P(z)\big)\Big).
# \end{aligned}
# $$ (eq-ch3-skl)
#
# Note the factor $\tfrac12$: SKL is the *average* of the two directions. By
# {prf:ref}`thm-ch1-vae-kl` the second direction is
# $D_{\mathrm{KL}}(A_q \,\|\, A_p) = L_{\mathrm{VAE}} - H(P(x))$. So "the second term is the
# VAE objective" holds up to the additive constant $H(P(x))$ and the weight $\tfrac12$. The
# first direction is what a VAE lacks. It averages
# $\log \frac{p(x|z) P(z)}{q(z|x) P(x)}$ over decoder samples, and the $\log P(x)$ in it
# cannot be evaluated. This is the obstacle that {cite:t}`pu2017symmetric` meet with an
# adversarial formulation.

# %%
print(inspect.getsource(d.skl))

# %% [markdown]
# ## The JSD is at most half the SKL
#
# :::{prf:lemma} The JSD in cross entropies
# :label: lem-ch3-jsd-ce
#
# $$
# \mathrm{JSD} = \tfrac12 \big(H(A_p, \mathcal{M}_S) + H(A_q, \mathcal{M}_S)\big) - R_H .
# $$ (eq-ch3-jsd-ce)
# :::
#
# :::{prf:proof}
# Write both divergences of {eq}`eq-ch1-jsd` as $H(A, \mathcal{M}_S) - H(A)$
# ({prf:ref}`lem-ch1-gibbs`); the two entropies average to $R_H$.
# :::
#
# :::{prf:theorem} JSD and SKL (paper Eq. 13)
# :label: thm-ch3-jsd-skl
#
# $\mathrm{JSD} \le \tfrac12 \mathrm{SKL}$, with equality if and only if $A_q = A_p$, where
# both vanish.
# :::
#
# :::{prf:proof}
# The function $-\log$ is convex, so at every point
# $-\log \mathcal{M}_S = -\log \tfrac12 (A_p + A_q) \le -\tfrac12 \log A_p - \tfrac12 \log A_q$,
# with equality only where $A_p = A_q$. Averaging under $A_p$ and under $A_q$ bounds the two
# cross entropies in {eq}`eq-ch3-jsd-ce`:
#
# $$
# \begin{aligned}
# \mathrm{JSD}
# &\le \tfrac14 \big(H(A_p) + H(A_p, A_q) + H(A_q) + H(A_q, A_p)\big) - R_H \\
# &= \tfrac14 \big(H(A_p, A_q) + H(A_q, A_p) + 2 R_H\big) - R_H \\
# &= \tfrac14 \big(D_{\mathrm{KL}}(A_p \,\|\, A_q) + D_{\mathrm{KL}}(A_q \,\|\, A_p)
#    + 4 R_H\big) - R_H \\
# &= \tfrac14 \big(D_{\mathrm{KL}}(A_p \,\|\, A_q) + D_{\mathrm{KL}}(A_q \,\|\, A_p)\big)
#  = \tfrac12 \mathrm{SKL} .
# \end{aligned}
# $$ (eq-ch3-eq13)
#
# The second line uses $H(A_p) + H(A_q) = 2 R_H$. The third uses
# $H(A, B) = H(A) + D_{\mathrm{KL}}(A \,\|\, B)$ twice, which adds another $2 R_H$. The
# inequality is strict unless $A_p = A_q$ wherever $A_p$ or $A_q$ has mass, that is, unless
# $A_p = A_q$.
# :::
#
# This is the paper's chain, line for line, and every line is right. Its typesetting hides
# one thing: the $\tfrac14$ multiplies the $2 R_H$ and $4 R_H$ terms too, as the closing
# brackets in {eq}`eq-ch3-eq13` show. Read with those terms outside the bracket, the second
# and third lines would be false. The table evaluates each line from its own formula, and both
# misreadings.

# %%
# NBVAL_CHECK_OUTPUT
rows, checks = [], []
for seed, m in TABLE.items():
    a_q, a_p, rh = d.anchored_encoding(m), d.anchored_decoding(m), d.r_h(m)
    kls = d.kl(a_p, a_q) + d.kl(a_q, a_p)
    line1 = 0.25 * (d.entropy(a_p) + d.cross_entropy(a_p, a_q) + d.entropy(a_q) + d.cross_entropy(a_q, a_p)) - rh
    line2 = 0.25 * (d.cross_entropy(a_p, a_q) + d.cross_entropy(a_q, a_p) + 2 * rh) - rh
    line3 = 0.25 * (kls + 4 * rh) - rh
    line4 = 0.25 * kls
    misread2 = 0.25 * (d.cross_entropy(a_p, a_q) + d.cross_entropy(a_q, a_p)) + 2 * rh - rh
    misread3 = 0.25 * kls + 4 * rh - rh
    rows.append({"seed": seed, "JSD": d.jsd(m), "line 1": line1, "line 2": line2, "line 3": line3,
                 "line 4": line4, "SKL/2": 0.5 * d.skl(m)})
    checks.append({"seed": seed, "JSD <= line 1": d.jsd(m) <= line1,
                   "lines 1-4 and SKL/2 equal": all(same(v, line1) for v in (line2, line3, line4, 0.5 * d.skl(m))),
                   "misread line 2 equal": same(misread2, line1),
                   "misread line 3 equal": same(misread3, line1)})
show(rows)
show(checks)
print("JSD <= SKL/2 on every sweep instance:", all(d.jsd(m) <= 0.5 * d.skl(m) + 1e-12 for m in SWEEP))

# %% [markdown]
# The two divergences differ in kind, not only in size. The JSD never exceeds $\log 2$
# ({prf:ref}`thm-ch1-jsd-entropy`). The SKL is unbounded, and infinite as soon as one joint
# puts mass where the other has none. Take two symbols, uniform anchors, an encoder that keeps
# $x$ with probability $1 - \epsilon$, and a decoder that flips $z$ with probability
# $1 - \epsilon$. As $\epsilon \to 0$ the two joints move to disjoint supports:

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for eps in [1e-1, 1e-3, 1e-6, 1e-9]:
    keep = np.array([[1 - eps, eps], [eps, 1 - eps]])
    m = d.DiscreteMIM(anchor_x=[0.5, 0.5], anchor_z=[0.5, 0.5], q_z_given_x=keep,
                      p_x_given_z=keep[::-1], q_x=[0.5, 0.5], p_z=[0.5, 0.5])
    rows.append({"epsilon": f"{eps:g}", "JSD": d.jsd(m), "log 2": np.log(2), "SKL/2": 0.5 * d.skl(m)})
show(rows, index="epsilon")

# %% [markdown]
# ## The regularised SKL as an average of cross entropies
#
# :::{prf:theorem} Regularised SKL
# :label: thm-ch3-skl-ce
#
# $$
# \begin{aligned}
# \tfrac12 \mathrm{SKL} + R_H
# = \tfrac12 \Big( &H\big(\mathcal{M}_S, q(z|x) P(x)\big) \\
# &+ H\big(\mathcal{M}_S, p(x|z) P(z)\big) \Big).
# \end{aligned}
# $$ (eq-ch3-skl-ce)
# :::
#
# :::{prf:proof}
# Expand $\mathcal{M}_S = \tfrac12 (A_q + A_p)$ in the first argument. The right side becomes
# $\tfrac14 \big(H(A_q) + H(A_p, A_q) + H(A_q, A_p) + H(A_p)\big)$. This is the first line of
# {eq}`eq-ch3-eq13` without the $-R_H$, so it equals $\tfrac12 \mathrm{SKL} + R_H$.
# :::
#
# This is the paper's statement exactly: the $\tfrac12$ in front of SKL is right.
#
# :::{prf:theorem} MIM with anchored priors is the regularised SKL
# :label: thm-ch3-mim-skl
#
# If $q(x) = P(x)$ and $p(z) = P(z)$, then $L_{\mathrm{MIM}} = \tfrac12 \mathrm{SKL} + R_H$.
# In general, with $\mathcal{M}_S(x)$ and $\mathcal{M}_S(z)$ the marginals of the sample
# mixture,
#
# $$
# \begin{aligned}
# &L_{\mathrm{MIM}} - \big(\tfrac12 \mathrm{SKL} + R_H\big) \\
# &\qquad = \tfrac12\, \mathbb{E}_{\mathcal{M}_S} \Big[\log \frac{P(x)}{q(x)} + \log \frac{P(z)}{p(z)}\Big],
# \end{aligned}
# $$ (eq-ch3-mim-skl-gap)
#
# which takes both signs. For fixed encoder and decoder, $L_{\mathrm{MIM}}$ is smallest when
# $q(x) = \mathcal{M}_S(x)$ and $p(z) = \mathcal{M}_S(z)$. There the difference is
# $-\tfrac12 \big(D_{\mathrm{KL}}(\mathcal{M}_S(x) \,\|\, P(x)) +
# D_{\mathrm{KL}}(\mathcal{M}_S(z) \,\|\, P(z))\big) \le 0$.
# :::
#
# :::{prf:proof}
# By {eq}`eq-ch2-lmim` and {eq}`eq-ch3-skl-ce`, both sides are expectations under
# $\mathcal{M}_S$ of $-\tfrac12 (\log B_1 + \log B_2)$. For $L_{\mathrm{MIM}}$,
# $B_1 = q(z|x) q(x)$ and $B_2 = p(x|z) p(z)$. For the regularised SKL, $B_1 = q(z|x) P(x)$
# and $B_2 = p(x|z) P(z)$. The conditionals cancel in the difference of the integrands,
# leaving {eq}`eq-ch3-mim-skl-gap`. With anchored priors the integrand is zero.
#
# The priors enter $L_{\mathrm{MIM}}$ only through
# $\tfrac12 \big(H(\mathcal{M}_S(x), q(x)) + H(\mathcal{M}_S(z), p(z))\big)$, which by
# {prf:ref}`lem-ch1-gibbs` is minimal exactly at the marginals of $\mathcal{M}_S$. With
# $q(x) = \mathcal{M}_S(x)$ the $x$-part of {eq}`eq-ch3-mim-skl-gap` becomes
# $\tfrac12 \sum_x \mathcal{M}_S(x) \log \frac{P(x)}{\mathcal{M}_S(x)}
# = -\tfrac12 D_{\mathrm{KL}}(\mathcal{M}_S(x) \,\|\, P(x))$, and likewise for $z$. The
# difference is then negative unless both marginals of $\mathcal{M}_S$ equal the anchors. It
# is positive, for example, when a prior puts almost no mass where $\mathcal{M}_S$ does.
# :::
#
# The first sentence is appendix B's claim that the two losses are equivalent. The last one is
# its remark that MIM "is not a bound on the regularized SKL", made precise: a learned prior
# can take $L_{\mathrm{MIM}}$ below the regularised SKL, by moving towards the marginals of
# $\mathcal{M}_S$ rather than towards the anchors. This is the trade of "latent prior fidelity
# for increased model consistency" that appendix A mentions.
#
# The main text (section 2) states the same result as "equal to the symmetric KL loss plus
# the regularizer $R_H$". With the SKL of {eq}`eq-ch3-skl` that drops a factor $\tfrac12$:
# $L_{\mathrm{MIM}} = \tfrac12 \mathrm{SKL} + R_H
# = \tfrac14 \big(D_{\mathrm{KL}}(A_p \,\|\, A_q) + D_{\mathrm{KL}}(A_q \,\|\, A_p)\big) + R_H$.
# The column "= SKL + R_H" of the table checks the main text's reading.

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for seed, m in TABLE.items():
    ms, a_q, a_p = d.sample_mixture(m), d.anchored_encoding(m), d.anchored_decoding(m)
    mx, mz = d.marginals(ms)
    rows.append({"seed": seed, "SKL/2 + R_H": 0.5 * d.skl(m) + d.r_h(m),
                 "mean CE": 0.5 * (d.cross_entropy(ms, a_q) + d.cross_entropy(ms, a_p)),
                 "L_MIM anchored": d.l_mim(d.with_anchor_priors(m)), "L_MIM random": d.l_mim(m),
                 "L_MIM M_S marginals": d.l_mim(dataclasses.replace(m, q_x=mx, p_z=mz))})
show(rows)

# %% [markdown]
# The next cell checks each identity on these instances, and the sign of the gap over the sweep.

# %%
# NBVAL_CHECK_OUTPUT
checks = []
for (seed, m), r in zip(TABLE.items(), rows):
    ms = d.sample_mixture(m)
    mx, mz = d.marginals(ms)
    reg, mim_anchored, mim_best = r["SKL/2 + R_H"], r["L_MIM anchored"], r["L_MIM M_S marginals"]
    gap = 0.5 * float(np.sum(ms * (np.log(m.anchor_x / m.q_x)[:, None] + np.log(m.anchor_z / m.p_z)[None, :])))
    checks.append({"seed": seed, "SKL/2 + R_H = mean CE": same(reg, r["mean CE"]),
                   "= L_MIM anchored": same(mim_anchored, reg),
                   "= SKL + R_H": same(mim_anchored, d.skl(m) + d.r_h(m)),
                   "gap formula": same(d.l_mim(m) - reg, gap),
                   "best priors minimise": mim_best <= min(d.l_mim(m), mim_anchored),
                   "best gap formula": same(mim_best - reg,
                                            -0.5 * (d.kl(mx, m.anchor_x) + d.kl(mz, m.anchor_z)))})
show(checks)
signs = {bool(d.l_mim(m) > 0.5 * d.skl(m) + d.r_h(m)) for m in SWEEP}
print("L_MIM > SKL/2 + R_H and L_MIM < SKL/2 + R_H both occur in the sweep:", signs == {True, False})

# %% [markdown]
# ## The exact gap between the SKL and the JSD
#
# :::{prf:theorem} Exact relation between SKL and JSD
# :label: thm-ch3-skl-jsd
#
# $$
# \begin{aligned}
# \tfrac12 \mathrm{SKL}
# = \tfrac12 \Big(&D_{\mathrm{KL}}\big(\mathcal{M}_S \,\|\, q(z|x) P(x)\big) \\
# &+ D_{\mathrm{KL}}\big(\mathcal{M}_S \,\|\, p(x|z) P(z)\big)\Big) + \mathrm{JSD} .
# \end{aligned}
# $$ (eq-ch3-skl-jsd)
#
# Writing out the JSD, half the SKL is the sum of the two divergences between
# $\mathcal{M}_S$ and each anchored joint, in both directions, each with weight $\tfrac12$.
# :::
#
# :::{prf:proof}
# In {eq}`eq-ch3-skl-ce`, write each cross entropy as
# $H(\mathcal{M}_S, A) = H(\mathcal{M}_S) + D_{\mathrm{KL}}(\mathcal{M}_S \,\|\, A)$. Then
# replace $H(\mathcal{M}_S)$ by $\mathrm{JSD} + R_H$ ({prf:ref}`thm-ch1-jsd-entropy`) and
# cancel $R_H$ on both sides.
# :::
#
# The first term of {eq}`eq-ch3-skl-jsd` is non-negative. This gives a second proof of
# {prf:ref}`thm-ch3-jsd-skl` and names its gap: the divergences from the mixture to its
# components, the "reverse" Jensen-Shannon terms.

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for seed, m in TABLE.items():
    ms, a_q, a_p = d.sample_mixture(m), d.anchored_encoding(m), d.anchored_decoding(m)
    reverse = 0.5 * (d.kl(ms, a_q) + d.kl(ms, a_p))
    both = reverse + 0.5 * (d.kl(a_q, ms) + d.kl(a_p, ms))
    rows.append({"seed": seed, "SKL/2": 0.5 * d.skl(m), "reverse JS terms": reverse, "JSD": d.jsd(m),
                 "sum": reverse + d.jsd(m), "equal": same(0.5 * d.skl(m), reverse + d.jsd(m)),
                 "four-KL form equal": same(0.5 * d.skl(m), both)})
show(rows)
print("Exact relation holds on every sweep instance:",
      all(same(0.5 * d.skl(m), 0.5 * (d.kl(d.sample_mixture(m), d.anchored_encoding(m))
                                      + d.kl(d.sample_mixture(m), d.anchored_decoding(m))) + d.jsd(m))
          for m in SWEEP))

# %% [markdown]
# The equality case of both theorems: when the two anchored joints coincide, every
# divergence in this chapter is zero.

# %%
# NBVAL_CHECK_OUTPUT
J = np.random.default_rng(11).dirichlet(np.ones(12)).reshape(3, 4)
m = d.from_model_joint(J, J.sum(axis=1), J.sum(axis=0))
print("A_q == A_p:", np.allclose(d.anchored_encoding(m), d.anchored_decoding(m), rtol=1e-12, atol=0))
print("SKL == 0:", abs(d.skl(m)) < 1e-12, " JSD == 0:", abs(d.jsd(m)) < 1e-12)
print("L_MIM == SKL/2 + R_H == H(M_S):",
      abs(d.l_mim(m) - 0.5 * d.skl(m) - d.r_h(m)) < 1e-12
      and abs(d.l_mim(m) - d.entropy(d.sample_mixture(m))) < 1e-12)

# %% [markdown]
# ## Errata
#
# Every statement of the paper's section 2 and appendices A-B has now been proved and checked.
# The ones below are wrong or loose; each correction is verified in the chapter named.
#
# 1. **Eq. 1**, $\log P(x) \ge \mathrm{ELBO}$: true for the decoder's marginal
#    $\bar p(x) = \sum_z p(x|z) P(z)$. With $P(x)$ the data anchor it fails pointwise and holds
#    only on average, $\mathbb{E}_{P(x)} \mathrm{ELBO} \le -H(P(x))$
#    ({ref}`ch-from-vae-to-mim`, {prf:ref}`lem-ch1-elbo`).
# 2. **Eq. 2**, "up to an additive constant": the constant is the data entropy,
#    $L_{\mathrm{VAE}} = D_{\mathrm{KL}}(q(z|x) P(x) \,\|\, p(x|z) P(z)) + H(P(x))$
#    ({prf:ref}`thm-ch1-vae-kl`).
# 3. **Section 2**, $R_H$ "can be shown to be equal to $H_{\mathcal{M}_S}(x, z)$": the sum
#    $\mathrm{JSD} + R_H$ is; $R_H$ alone is smaller by $\mathrm{JSD} \in [0, \log 2]$
#    ({prf:ref}`thm-ch1-jsd-entropy`).
# 4. **Section 2**, with $q(x) = P(x)$ and $p(z) = P(z)$, "$L_{\mathrm{MIM}}$ is equal to the
#    symmetric KL loss plus the regularizer": it equals $\tfrac12 \mathrm{SKL} + R_H$, with the
#    SKL of appendix B, which already averages the two directions
#    ({prf:ref}`thm-ch3-mim-skl`).
# 5. **Appendix A**, $L_{\mathrm{CE}}$ "will try to enforce consistency between the model and
#    the anchored distributions": its minimum only requires
#    $\mathcal{M}_\theta = \mathcal{M}_S$, which allows $q(x, z) = A_p$ and $p(x, z) = A_q$
#    ({ref}`ch-mim-bound`, {prf:ref}`thm-ch2-lce`).
# 6. **Appendix A**, "the MIM consistency regularizer in Eq. (4)": $R_{\mathrm{MIM}}$ is
#    introduced in Eq. (9).
# 7. **Appendix A**, $R_{\mathrm{MIM}} = 0$ "only when $q_\theta(x, z) = p_\theta(x, z)$": only
#    on the support of $\mathcal{M}_S$ ({prf:ref}`thm-ch2-rmim`).
# 8. **Eq. 11** is correct. Its last argument $q_\theta(z, x)$ means $q_\theta(x, z)$
#    ({prf:ref}`thm-ch2-decomposition`).
# 9. **Eq. 13** is correct, provided the $\tfrac14$ is read as multiplying the $2 R_H$ and
#    $4 R_H$ terms as well ({prf:ref}`thm-ch3-jsd-skl`).
# 10. **Appendix B**, "the second term of which is the VAE objective": it is
#     $L_{\mathrm{VAE}} - H(P(x))$, entering the SKL with weight $\tfrac12$.
# 11. **Appendix C** writes the encoder as $q_\theta(x|z)$ twice, in "the encoder and decoder
#     distributions" and in the importance weight $P(z)/q_\theta(x|z)$. Both should read
#     $q_\theta(z|x)$.
# 12. **Algorithm 1**: the comments on lines 4 and 9 are swapped (line 5 is the importance
#     estimate, line 10 the one-sample marginal). Line 13 sums the two halves, giving
#     $2 L_{\mathrm{MIM}}$. The one-sample $\log q(x)$ makes the expected loss
#     $L_{\mathrm{MIM}} + \tfrac14 \mathbb{E}_{P(x)} D_{\mathrm{KL}}(q(z|x) \,\|\, \bar p(z|x)) -
#     \tfrac14 I_{A_p}(x; z)$, neither above nor below $L_{\mathrm{MIM}}$
#     ({prf:ref}`thm-ch2-algorithm1-bias`).
# 13. **Appendix E.2** gives A-MIM's sample distribution as $P(x)\, q_\theta(z)$. It is the
#     anchored encoding joint $q_\theta(z|x) P(x)$, as in `mimlib.objectives.amim`.
#
# Correct as printed, and checked: the bound chain of Eqs. 4-8 and 12, Eq. 10 and the proof of
# $R_{\mathrm{MIM}} \ge 0$, Eq. 11, Eq. 13, the regularised-SKL identity, the statement that
# MIM does not bound the regularised SKL, and the exact SKL-JSD relation.
