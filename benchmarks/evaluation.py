"""The final test bound: log p(x) >= logsumexp_k log w_k - log K with K = 1000 importance samples
over the 10k test images, on the default (linear) VAE, as the harness computes it
(``VAE.evaluate``), as a direct loop over chunks of images would, and the bare matrix products
of either (the encoder on every image, the decoder on every one of the K x images latent
samples): the floor the bound's cost is held to (``vs_products`` = harness / products)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import median, peak_memory_mb, timed


def plain_bound(model, x: torch.Tensor, samples: int, images_per_chunk: int = 20) -> torch.Tensor:
    """The direct way: per chunk of images, K Bernoulli samples, binary cross-entropies."""
    out = []
    for i in range(0, len(x), images_per_chunk):
        xb = x[i:i + images_per_chunk]
        logits = model.encoder(xb)
        z = torch.bernoulli(torch.sigmoid(logits).expand(samples, *logits.shape))
        dec = model.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(dec, xb.expand_as(dec), reduction="none").sum(-1)
        prior = model.prior_logits.expand_as(z)
        log_pz = -F.binary_cross_entropy_with_logits(prior, z, reduction="none").sum(-1)
        log_qz = -F.binary_cross_entropy_with_logits(logits.expand_as(z), z, reduction="none").sum(-1)
        out.append(torch.logsumexp(log_px + log_pz - log_qz, 0) - math.log(samples))
    return torch.cat(out)


def bare_products(model, x: torch.Tensor, samples: int, z: torch.Tensor) -> None:
    """The matrix products of the bound and nothing else: the encoder on the images, the decoder
    on ``samples`` latent vectors per image (``z``: one image chunk's samples, reused)."""
    rows = z.shape[1]
    for i in range(0, len(x), rows):
        model.encoder(x[i:i + rows])
        model.decoder(z[:, :min(rows, len(x) - i)])


def run_case(device: torch.device, samples: int = 1000, images: int = 10000, repeats: int = 1,
             part: str = "both") -> dict:
    from discograd.data import MNISTData, load_mnist
    from discograd.models import VAE
    torch.manual_seed(0)
    data = MNISTData(load_mnist(), "dynamic", device, 0)
    x = data.full("test")[:images]
    model = VAE().to(device)
    model.set_data_mean(data.train_mean())
    model.eval()
    gen = torch.Generator(device=device).manual_seed(0)
    row = {"what": f"test bound, K={samples}, {len(x)} images", "harness_s": float("nan"),
           "plain_s": float("nan"), "products_s": float("nan")}
    chunk = max(1, (1 << 15) // samples)                    # the harness's images per chunk
    z = torch.bernoulli(torch.full((samples, chunk, 200), 0.5, device=device))
    with torch.no_grad():
        # warm-up on one chunk (allocator, thread pool), then the harness and its bare products
        # interleaved in rounds, so that both see the same machine; medians over rounds
        model.evaluate(x[:chunk], samples, generator=gen)
        bare_products(model, x[:chunk], samples, z)
        harness, products = [], []
        for _ in range(max(1, repeats)):
            if part in ("both", "harness"):
                harness += timed(lambda: model.evaluate(x, samples, generator=gen), 1, device, warmup=0)
            if part == "both":
                products += timed(lambda: bare_products(model, x, samples, z), 1, device, warmup=0)
        row["harness_s"] = median(harness) if harness else float("nan")
        row["products_s"] = median(products) if products else float("nan")
        if part in ("both", "plain"):
            row["plain_s"] = median(timed(lambda: plain_bound(model, x, samples), 1, device,
                                          warmup=0))
    row["speedup"] = row["plain_s"] / row["harness_s"]
    row["vs_products"] = row["harness_s"] / row["products_s"]
    row["peak_mb"] = peak_memory_mb(device)
    return row
