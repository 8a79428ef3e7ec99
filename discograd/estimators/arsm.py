"""ARSM: Augment-REINFORCE-Swap-Merge, the antithetic estimator of categorical latents.

Yin, Yue & Zhou 2019, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient Backpropagation
Through Categorical Variables" (ICML; arXiv:1905.01413), Theorem 1 (AR), Proposition / eq. (9)-(12)
(swap and merge), section 2.3 (several categorical variables). The categorical generalisation of
ARM (estimators/arm.py); for C = 2 classes it reduces to ARM.

One categorical variable with logits phi in R^C, pi ~ Dirichlet(1_C):
    z = argmin_i (ln pi_i - phi_i)                                     ~ Categorical(softmax(phi)),
    AR:   d/dphi_c E[f(z)] = E_pi[f(z) (1 - C pi_c)].
Swapping: z^{c<->j} is the sample from pi with its entries c and j exchanged (pi^{c<->j} is again
Dirichlet(1), so z^{c<->j} ~ q); for every reference class j,
    ARS:  d/dphi_c E[f] = E[(f(z^{c<->j}) - fbar^j) (1 - C pi_j)],   fbar^j = 1/C sum_m f(z^{m<->j}),
(the baseline fbar^j has zero mean against (1 - C pi_j): E f does not change when a constant is
added to every logit), and ARSM merges (averages) over j:
    g_c = sum_j (f(z^{c<->j}) - fbar^j) (1/C - pi_j).
Several variables (``logits`` [B, n, C]): each has its own pi_v; the swap c<->j is applied to every
variable at once (the joint law of (pi_1..pi_n) is invariant under it), so one evaluation of f per
unordered pair {c, j} serves every variable: C(C-1)/2 + 1 evaluations per sample (``evals``; the
paper also skips the pairs whose pseudo actions equal z, which saves time, not variance: here f
is evaluated at all of them). Parameters inside f get the mean of f over the C^2 pseudo samples,
each distributed as q (unbiased).

Noise: pi = E / sum E with E = -ln u, so ln pi_i - phi_i = -(phi_i + G_i) + const with the
Gumbel G_i = -ln(-ln u_i): z is the Gumbel-max sample of the other estimators (common random
numbers with ``u``). Categorical only; unbiased (tests/test_estimators_strong.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Estimate, Estimator, Objective, one_hot, register


@register
class ARSM(Estimator):
    name = "arsm"
    kinds = ("categorical",)
    unbiased = True
    loss_quantity = "f averaged over the swapped samples"

    def __init__(self, kind, latent_shape, samples: int = 1):
        super().__init__(kind, latent_shape, samples=samples)
        C = int(self.latent_shape[-1])
        pairs = [(c, j) for c in range(C) for j in range(c + 1, C)]
        # pseudo sample p: 0 = z itself, 1.. = the unordered pairs; index[c, j] -> p
        index = torch.zeros(C, C, dtype=torch.long)
        for p, (c, j) in enumerate(pairs, start=1):
            index[c, j] = index[j, c] = p
        self.register_buffer("pair_index", index, persistent=False)
        # row p: the permutation of the classes that exchanges c and j (row 0: the identity)
        perm = torch.arange(C).repeat(len(pairs) + 1, 1)
        for p, (c, j) in enumerate(pairs, start=1):
            perm[p, c], perm[p, j] = j, c
        self.register_buffer("perm", perm, persistent=False)
        self.classes = C

    @property
    def evals(self) -> int:
        C = self.classes
        return self.samples * (C * (C - 1) // 2 + 1)

    def estimate(self, logits: Tensor, f: Objective, u: Tensor) -> Estimate:
        ld = logits.detach()
        S, C = u.shape[0], self.classes
        E = -torch.log(u)                                          # Exp(1): pi = E / sum E
        pi = E / E.sum(-1, keepdim=True)                           # [S, B, n, C]
        logE = torch.log(E)      # argmax_i (phi_i - ln E_i) = argmin_i (ln pi_i - phi_i) = z
        # ln E^{c<->j}_i = ln E_{perm(i)}: the classes exchanged, for every pseudo sample p
        P = self.perm.shape[0]
        logE_sw = logE[..., self.perm].movedim(-2, 0)              # [P, S, B, n, C]
        z = one_hot((ld - logE_sw).argmax(-1), C, ld.dtype)       # [P, S, B, n, C]
        fz = f(z.reshape(P * S, *z.shape[2:])).view(P, S, -1)     # [P, S, B], one call
        F = fz[self.pair_index]                                    # [C, C, S, B]: f(z^{c<->j})
        Fd = F.detach()
        fbar = Fd.mean(0)                                          # [C(j), S, B]: 1/C sum_m F[m, j]
        # g[s, b, v, c] = sum_j (F[c, j] - fbar[j]) (1/C - pi[s, b, v, j])
        diff = (Fd - fbar.unsqueeze(0)).permute(2, 3, 0, 1)       # [S, B, C(c), C(j)]
        g = torch.einsum("sbcj,sbvj->sbvc", diff, 1.0 / C - pi)   # [S, B, n, C]
        surrogate = ((g * logits).sum((-1, -2)) + F.mean((0, 1))).mean(0).mean()
        return Estimate(surrogate=surrogate, loss=Fd.mean((0, 1)).mean(0))
