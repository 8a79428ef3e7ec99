"""Every estimator on latents in layers: q(z_1..z_L) = prod_l q(z_l | z_<l).

A layered model (two stochastic layers of a VAE, a sigmoid belief net) cannot hand over all its
logits at once: the logits of layer l depend on the *samples* of the layers before it. It hands
over a :class:`Layers` view instead, and :func:`layered_estimate` applies an estimator to it in one
of two ways, the ones the estimators' authors use.

Rollout (``mode(estimator) == "rollout"``): single-evaluation estimators with a per-step hook
(ST, Gumbel-softmax, ST-Gumbel, annealed ST, ReinMax, GST, Gumbel-Rao) and the score-function
estimators whose S samples are S whole rollouts (``reinforce`` with its baselines or with the
leave-one-out baseline of ``estimator.samples`` rollouts, ``vimco``). The layers are sampled in
order with ``estimator.sample_step``: a relaxed or straight-through sample of layer l feeds layer
l + 1 with its gradient path (the stochastic binary networks of Jang et al. 2016, section 4.1), and
the score-function estimators weigh each rollout's learning signal by its joint
log q = sum_l log q(z_l | z_<l) (Mnih & Rezende 2016; VIMCO and NVIL on multi-layer belief nets).

Local (every other estimator: ``arm``, ``disarm``, ``rloo``, ``arsm``, ``muprop``, ``rebar``,
``relax``, ``exact``): per layer, as in Yin & Zhou 2019 (ARM, Proposition 2 / eq. (26)-(27)) and
the DisARM code (``get_multilayer_grad_estimation``). One rollout b_1..b_L is drawn. With
g_l(b_<=l) = E[f(b) | b_<=l] the gradient with respect to every parameter theta is

    d/dtheta E[f] = E[d_theta f(b)]                                        (f's own parameters)
                  + sum_l E_{b_<l}[ d/dphi_l E_{b_l ~ q(. | phi_l)}[g_l(b_<l, b_l)] d phi_l/d theta ],
    phi_l = logits of layer l given b_<l.

The first term is f at the rollout, differentiated with respect to f's parameters and the logits
that f reads directly (a sampled KL). The l-th term is the estimator applied, unchanged, to the
one-layer problem (phi_l, f_l), where f_l(c) evaluates f at (b_<l, c, b_>l) and b_>l is drawn
afresh from q(. | c): an unbiased estimate of g_l(b_<l, c), so an unbiased estimator of the
one-layer gradient stays unbiased. f_l is evaluated with the model's parameters *detached*
(``frozen``): f's own parameters get their gradient once, from the first term, not once per layer.
The later layers of row r of f_l's input are drawn from continuation uniforms of their own (row r
of ``E`` extra noise slices, independent of the estimator's: the ARM and DisARM codes' default,
independent samples per branch).

Control variates evaluate f_l at relaxed points: REBAR and RELAX at sigma_lambda(z), MuProp at the
mean. There f_l continues with the later layers relaxed too (``f_l.smooth(c, tau)``): Concrete
samples at the estimator's temperature from the same continuation uniforms (the REBAR code's
``_random_sample_switch``: a continuous rollout of the rest of the network), or their means when
tau is None (MuProp's mean-field pass, Gu et al. 2016 Algorithm 1). A control variate needs only to
be continuous in z (REBAR, RELAX) or linear in z (MuProp) for the estimator to stay unbiased,
whatever it is, so the choice changes the variance, never the mean (tested by enumeration in
tests/test_layered.py).

The estimator instance is shared by the layers: REBAR's eta and temperature and RELAX's network
are one set for all layers, trained on the sum of the layers' variances (the REBAR code shares the
temperature but has one eta per layer; the RELAX code has one of each per layer). ``exact`` sums
over layer l's configurations given b_<l and samples the later layers: unbiased (a local
expectation gradient, Titsias & Lazaro-Gredilla 2015), no longer exact.

Cost of a local estimate: L x ``evals`` evaluations of f, each with a rollout of the later layers.
"""
from __future__ import annotations

import torch
from torch import Tensor

from discograd.latents import Layers, hard_sample, probs, relaxed_sample
from .estimate import Estimate

MODES = ("rollout", "local")


def mode(estimator) -> str:
    """``rollout`` or ``local`` (module docstring)."""
    return "rollout" if estimator.sequential_support(parallel_rollouts=True) is None else "local"


def noise_shape(estimator, depth: int, batch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Uniforms of one layered estimate: ``[L, N + E, B, *shape]`` with ``batch_shape`` =
    ``(B, *shape)``: slices [0, N) of layer l are the estimator's own (``noise_shape``; slice 0 draws
    the rollout), and in local mode E = ``evals`` more are the continuation uniforms of rows
    0..E-1 of f_l's input."""
    n = estimator.noise_shape(tuple(batch_shape))[0]
    extra = estimator.evals if mode(estimator) == "local" else 0
    return (depth, n + extra, *batch_shape)


class Continuation:
    """f_l: the objective of layer l's one-layer problem (module docstring)."""

    def __init__(self, layers: Layers, l: int, prefix: list[Tensor], noise: Tensor):
        self.layers, self.l, self.prefix = layers, l, prefix
        self.noise = noise                              # [L, E, B, *shape]

    def _rows(self, k: int, rows: int) -> Tensor:
        e = self.noise.shape[1]
        idx = torch.arange(rows, device=self.noise.device) % e
        return self.noise[k].index_select(0, idx)       # [rows, B, *shape]

    def _run(self, c: Tensor, how: str, tau: Tensor | float | None) -> Tensor:
        layers, kind = self.layers, self.layers.kind
        zs = [*self.prefix, c]
        for k in range(self.l + 1, layers.depth):
            lg = layers.logits(k, zs, frozen=True)
            lg = lg.expand(c.shape[0], *lg.shape[1:])
            if how == "hard":
                z = hard_sample(lg, kind, self._rows(k, c.shape[0]))
            elif tau is None:
                z = probs(lg, kind)                     # mean field
            else:
                z, _ = relaxed_sample(lg, kind, self._rows(k, c.shape[0]), tau, hard=False)
            zs.append(z)
        return layers.objective(zs, frozen=True)

    def __call__(self, c: Tensor) -> Tensor:
        return self._run(c, "hard", None)

    def smooth(self, c: Tensor, tau: Tensor | float | None) -> Tensor:
        return self._run(c, "smooth", tau)


def layered_estimate(estimator, layers: Layers, u: Tensor) -> Estimate:
    """The estimate of d/dtheta E[f] for a layered model; ``u``: uniforms of :func:`noise_shape`."""
    n = estimator.noise_shape((1, *layers.shape))[0]
    if mode(estimator) == "rollout":
        zs: list[Tensor] = []
        logq = first = None
        for l in range(layers.depth):
            lg = layers.logits(l, zs, frozen=False)
            if l == 0:
                first = lg[0].detach()          # a function of x alone: the baseline's input
            z, lq = estimator.sample_step(lg[0] if lg.shape[0] == 1 else lg, u[l, :n])
            zs.append(z)
            logq = lq if logq is None else logq + lq
        return estimator.finish(layers.objective(zs, frozen=False), logq, first)

    # local: one rollout, then the estimator on each layer's one-layer problem
    zs, logits = [], []
    for l in range(layers.depth):
        lg = layers.logits(l, zs, frozen=False)[0]      # [B, *shape]: depends on b_<l (constants)
        logits.append(lg)
        zs.append(hard_sample(lg, layers.kind, u[l, :1]))
    direct = layers.objective(zs, frozen=False)         # [1, B]: f's own parameters, once
    surrogate = direct.mean()
    stats: dict[str, Tensor] = {}
    for l in range(layers.depth):
        f_l = Continuation(layers, l, zs[:l], u[:, n:])
        est = estimator(logits[l], f_l, u[l, :n])
        surrogate = surrogate + est.surrogate
        for key, value in est.stats.items():
            stats[key] = stats.get(key, 0.0) + value / layers.depth
    return Estimate(surrogate=surrogate, loss=direct.detach()[0], stats=stats)
