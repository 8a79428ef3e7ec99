"""Hard-attention classifier: glimpse locations as categorical latent variables.

After Mnih et al. 2014 ("Recurrent Models of Visual Attention", arXiv:1406.6247), with the
continuous Gaussian location policy replaced by a categorical one over a grid of candidate glimpse
positions, so that every estimator for discrete latents can train it.

Candidate glimpses. The ``size`` x ``size`` image is cut into ``grid`` x ``grid`` cells of side
``cell = size / grid``; candidate k = (i, j) is centred on cell (i, j). At scale s = 0..scales-1 the
glimpse covers ``patch * 2^s`` pixels (zero padding outside the image), average-pooled to
``patch`` x ``patch``. :meth:`Attention.patches` extracts all K = grid^2 candidates once per image,
``[B, K, D]`` with D = scales * patch^2, and the glimpse at location z (``[..., K]``) is
``rho = sum_k z_k patches_k``: a one-hot z extracts exactly one patch, a relaxed z (Gumbel-softmax)
gives the convex combination (soft attention), and straight-through z passes gradients.

Glimpse network (Mnih et al. eq. in section 4): g = relu(W2 relu(W_what rho + W_where z)).

- ``recurrent=False``: a coarse view of the whole image (average-pooled to ``context`` x
  ``context``) feeds the location network, which outputs all T glimpse logits at once,
  ``[B, T, K]``; the classifier reads the T glimpse vectors (concatenated). The T locations are
  independent given x: an ordinary LatentModel (kind ``categorical``, latent_shape (T, K)),
  f(z) = per-example cross-entropy, every estimator applies, the diagnostics probe works.
- ``recurrent=True`` (RAM-style): a core h_t = relu(W_h h_{t-1} + W_g g_t), h_0 = 0; the logits
  of step t come from [context, h_{t-1}], so later latents depend on earlier samples
  (``sequential``). The model drives the rollout (:meth:`sequential_estimate`) through the
  estimator's ``sample_step`` / ``finish`` hooks; the classifier reads h_T. Single-evaluation
  estimators take one rollout; ``reinforce estimator.samples=S`` and ``vimco`` take S rollouts
  side by side (``parallel_rollouts``), each weighted by its joint log q over the T steps
  (estimators/layered.py, "rollout"); the other multi-evaluation estimators are refused.

Parameter groups: ``encoder`` = the location network (context net and location head), ``decoder``
= glimpse network, core and classifier. The classifier never sees the coarse view: everything it
knows about the image comes through the glimpses.

Inputs carry the label as their last column (``models.base.with_labels``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discograd.errors import ConfigError
from discograd.images import image_side
from discograd.latents import gumbel_noise, one_hot, uniform
from .base import LatentModel, split_labels
from .config import Latent, int_at_least, plain
from .registry import register

EVAL_FLOATS = 1 << 24     # candidate-patch floats per evaluation chunk (64 MiB in float32)


def cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    """-log softmax(out)[y], ``[S, B]`` for class logits ``[S, B, C]`` (vmap-safe: no F.one_hot)."""
    return -(torch.log_softmax(out, -1) * one_hot(y, out.shape[-1], out.dtype)).sum(-1)


@dataclass
class AttentionConfig:
    name: str = "attention"
    latent: Latent = Latent.categorical   # glimpse locations: categorical only
    glimpses: int = 4          # T glimpse steps
    grid: int = 7              # grid x grid candidate glimpse centres (must divide the image side)
    patch: int = 8             # glimpse side in pixels at the finest scale
    scales: int = 2            # scale s covers patch * 2^s pixels, average-pooled to patch x patch
    context: int = 7           # side of the coarse (average-pooled) view given to the location net
    hidden: int = 256
    recurrent: bool = False    # True: RAM-style core, location t depends on glimpses < t


@register
class Attention(LatentModel):
    name = "attention"
    schema = AttentionConfig
    needs_labels = True
    main_metric = "accuracy"

    @classmethod
    def check_config(cls, model_cfg, data_cfg) -> None:
        """Categorical latents, and a glimpse geometry that fits the data's image side."""
        m = model_cfg
        if plain(m.latent) != "categorical":
            raise ConfigError(f"model.latent={plain(m.latent)} is invalid for model 'attention': "
                              "glimpse locations are categorical; accepted: categorical")
        side = image_side(data_cfg)
        int_at_least("model.glimpses", m.glimpses, 1)
        int_at_least("model.grid", m.grid, 1)
        if m.grid > side or side % m.grid:
            divisors = [k for k in range(2, side + 1) if side % k == 0]
            raise ConfigError(f"model.grid={m.grid} does not divide the {side}x{side} images of "
                              f"data={data_cfg.name}; accepted: a divisor of {side} "
                              f"({', '.join(map(str, divisors))})")
        int_at_least("model.patch", m.patch, 1)
        int_at_least("model.scales", m.scales, 1)
        largest = m.patch * 2 ** (m.scales - 1)
        if largest > 2 * side:
            raise ConfigError(f"model.patch={m.patch} with model.scales={m.scales} gives "
                              f"{largest}-pixel glimpses on {side}x{side} images; accepted: "
                              f"patch * 2^(scales-1) <= {2 * side}")
        if not isinstance(m.context, int) or not 1 <= m.context <= side:
            raise ConfigError(f"model.context={m.context} is invalid: it must be an integer in "
                              f"1..{side} (the side of the coarse view of the {side}x{side} image)")
        int_at_least("model.hidden", m.hidden, 1)

    @classmethod
    def from_config(cls, model_cfg, data_cfg) -> Attention:
        m = model_cfg
        return cls(image_size=image_side(data_cfg), glimpses=m.glimpses, grid=m.grid,
                   patch=m.patch, scales=m.scales, context=m.context, hidden=m.hidden,
                   recurrent=bool(m.recurrent))

    def metric_names(self, samples: int) -> tuple[str, ...]:
        return ("accuracy", "nll", "accuracy_argmax", "nll_argmax", "loss")

    def __init__(self, image_size: int = 28, glimpses: int = 4, grid: int = 7, patch: int = 8,
                 scales: int = 2, context: int = 7, hidden: int = 256, recurrent: bool = False,
                 classes: int = 10):
        super().__init__()
        if image_size % grid:
            raise ValueError(f"grid {grid} does not divide the image side {image_size}")
        self.kind = "categorical"
        self.size, self.T, self.G, self.P = int(image_size), int(glimpses), int(grid), int(patch)
        self.scales, self.context, self.hidden = int(scales), int(context), int(hidden)
        self.classes = int(classes)
        self.cell = self.size // self.G
        self.K = self.G * self.G
        self.D = self.scales * self.P * self.P
        self.sequential = bool(recurrent)
        self.parallel_rollouts = self.sequential
        self.latent_shape = (self.T, self.K)
        H = self.hidden
        # location network (diagnostics group "encoder")
        self.context_net = nn.Sequential(nn.Linear(self.context ** 2, H), nn.ReLU())
        self.where = nn.Linear(2 * H if recurrent else H, self.K if recurrent else self.T * self.K)
        nn.init.zeros_(self.where.weight)      # a uniform initial policy
        nn.init.zeros_(self.where.bias)
        # glimpse network, core, classifier (group "decoder")
        self.what = nn.Linear(self.D, H)
        self.where_embed = nn.Linear(self.K, H, bias=False)
        self.glimpse = nn.Sequential(nn.ReLU(), nn.Linear(H, H), nn.ReLU())
        if recurrent:
            self.core_h = nn.Linear(H, H)
            self.core_g = nn.Linear(H, H)
        self.classifier = nn.Sequential(nn.Linear(H if recurrent else self.T * H, H), nn.ReLU(),
                                        nn.Linear(H, self.classes))

    # --- geometry ------------------------------------------------------------------------------
    def box(self, k: int, scale: int = 0) -> tuple[int, int, int]:
        """(top, left, side) in image pixels of candidate k at ``scale`` (may extend outside)."""
        side = self.P << scale
        start = (self.cell - side) // 2
        i, j = divmod(int(k), self.G)
        return self.cell * i + start, self.cell * j + start, side

    def patches(self, pixels: Tensor) -> Tensor:
        """All candidate glimpses ``[B, K, D]`` of images ``[B, size*size]`` (scale-major in D)."""
        B, G, P, c = pixels.shape[0], self.G, self.P, self.cell
        img = pixels.reshape(B, 1, self.size, self.size)
        out = []
        for s in range(self.scales):
            side = P << s
            start = (c - side) // 2                       # top-left of box 0 (may be < 0)
            end = c * (G - 1) + start + side              # one past the last box
            lo, hi = max(0, -start), max(0, end - self.size)
            padded = F.pad(img, (lo, hi, lo, hi))[:, :, start + lo:, start + lo:]
            f = 1 << s
            for k in (1 << r for r in range(s)):   # box means of side f at every offset
                padded = (padded[..., :-k, :-k] + padded[..., k:, :-k]
                          + padded[..., :-k, k:] + padded[..., k:, k:]) / 4
            span = (P - 1) * f + 1
            w = padded[:, 0].unfold(1, span, c).unfold(2, span, c)[:, :G, :G, ::f, ::f]
            out.append(w.reshape(B, self.K, P * P))                  # w: [B, G, G, P, P]
        return torch.cat(out, -1)

    def coarse(self, pixels: Tensor) -> Tensor:
        img = pixels.reshape(pixels.shape[0], 1, self.size, self.size)
        return F.adaptive_avg_pool2d(img, self.context).flatten(1)

    # --- networks ------------------------------------------------------------------------------
    @staticmethod
    def rho(z: Tensor, patches: Tensor) -> Tensor:
        """The glimpse at locations z ``[S, B, ..., K]``: sum_k z_k patches_k, ``[S, B, ..., D]``."""
        return torch.einsum("sb...k,bkd->sb...d", z, patches)

    def glimpse_features(self, z: Tensor, patches: Tensor) -> Tensor:
        """g for locations z ``[S, B, ..., K]`` (one-hot or relaxed): ``[S, B, ..., hidden]``."""
        return self.glimpse(self.what(self.rho(z, patches)) + self.where_embed(z))

    def _classify_parallel(self, z: Tensor, patches: Tensor) -> Tensor:
        g = self.glimpse_features(z, patches)                          # [S, B, T, H]
        return self.classifier(g.flatten(-2))                          # [S, B, C]

    def _rollout(self, pixels: Tensor, samples: int, choose):
        """Recurrent model: h_0 = 0; for each t, logits_t = where([context, h_{t-1}]) ``[S, B, K]``,
        z_t = choose(t, logits_t), h_t = core(h_{t-1}, g(z_t)). Returns (class logits [S, B, C],
        z [S, B, T, K])."""
        patches = self.patches(pixels)
        c = self.context_net(self.coarse(pixels))
        S, B, H = samples, pixels.shape[0], self.hidden
        ctx = c.unsqueeze(0).expand(S, B, H)
        h = c.new_zeros(S, B, H)
        zs = []
        for t in range(self.T):
            logits_t = self.where(torch.cat([ctx, h], -1))
            z_t = choose(t, logits_t)
            h = torch.relu(self.core_h(h) + self.core_g(self.glimpse_features(z_t, patches)))
            zs.append(z_t)
        return self.classifier(h), torch.stack(zs, -2)

    # --- the LatentModel interface -------------------------------------------------------------
    def logits(self, x: Tensor) -> Tensor:
        if self.sequential:
            raise NotImplementedError(
                "model 'attention' with model.recurrent=true has sequential latents: its logits "
                "depend on earlier samples; use sequential_estimate")
        pixels, _ = split_labels(x)
        c = self.context_net(self.coarse(pixels))
        return self.where(c).view(x.shape[0], self.T, self.K)

    def objective(self, x: Tensor, logits: Tensor):
        pixels, y = split_labels(x)
        patches = self.patches(pixels)
        return lambda z: cross_entropy(self._classify_parallel(z, patches), y)

    def sequential_estimate(self, x: Tensor, estimator, u: Tensor | None = None):
        pixels, y = split_labels(x)
        B = pixels.shape[0]
        if u is None:
            u = uniform(estimator.noise_shape((B, self.T, self.K)), pixels)
        parts: dict[str, Tensor] = {}

        def choose(t, logits_t):
            if t == 0:
                parts["first"] = logits_t[0]                   # a function of x only
            z_t, lq = estimator.sample_step(logits_t[0] if R == 1 else logits_t, u[:, :, t])
            parts["logq"] = lq if t == 0 else parts["logq"] + lq
            return z_t

        R = estimator.rollouts          # S whole rollouts for reinforce/vimco with S samples
        out, _ = self._rollout(pixels, R, choose)
        fz = cross_entropy(out, y)                                           # [R, B]
        baseline_input = parts["first"].unsqueeze(1).expand(B, self.T, self.K)
        return estimator.finish(fz, parts["logq"], baseline_input)

    def encoder_parameters(self):
        return list(self.context_net.parameters()) + list(self.where.parameters())

    def decoder_parameters(self):
        enc = {id(p) for p in self.encoder_parameters()}
        return [p for p in self.parameters() if id(p) not in enc]

    # --- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, pixels: Tensor, mode: str, samples: int = 1,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(class logits [S, B, C], chosen locations [S, B, T] as candidate indices) with hard
        glimpses: ``argmax`` (the most probable location at each step; S = 1) or ``sample``
        (exact samples of the policy, S = samples)."""
        S = 1 if mode == "argmax" else int(samples)

        def pick(logits_t: Tensor) -> Tensor:
            if mode == "argmax":
                idx = logits_t.argmax(-1)
            else:
                u = uniform(tuple(logits_t.shape), logits_t, generator=generator)
                idx = (logits_t + gumbel_noise(u)).argmax(-1)
            return one_hot(idx, self.K, logits_t.dtype)

        if self.sequential:
            out, z = self._rollout(pixels, S, lambda t, logits_t: pick(logits_t))
        else:
            c = self.context_net(self.coarse(pixels))
            logits = self.where(c).view(pixels.shape[0], self.T, self.K)
            z = pick(logits.unsqueeze(0).expand(S, *logits.shape))
            out = self._classify_parallel(z, self.patches(pixels))
        return out, z.argmax(-1)

    @torch.no_grad()
    def evaluate(self, x: Tensor, samples: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-example metrics with hard glimpses: ``accuracy`` / ``nll`` averaged over ``samples``
        location draws from the policy (the expected accuracy of the stochastic classifier),
        ``accuracy_argmax`` / ``nll_argmax`` with the most probable location at each step;
        ``loss`` = ``nll``."""
        res: dict[str, list[Tensor]] = {k: [] for k in ("accuracy", "nll", "accuracy_argmax",
                                                        "nll_argmax", "loss")}
        chunk = max(1, EVAL_FLOATS // (self.K * self.D * max(1, samples)))
        for i in range(0, x.shape[0], chunk):
            pixels, y = split_labels(x[i:i + chunk])
            for mode, suffix in (("sample", ""), ("argmax", "_argmax")):
                out, _ = self.predict(pixels, mode, samples, generator)
                res["nll" + suffix].append(cross_entropy(out, y).mean(0))
                res["accuracy" + suffix].append((out.argmax(-1) == y).to(out.dtype).mean(0))
        res["loss"] = res["nll"]
        return {k: torch.cat(v) for k, v in res.items()}
