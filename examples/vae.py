"""A binary VAE on MNIST in plain PyTorch, trained with any discograd estimator by name.

    python examples/vae.py disarm --steps 5000        # or reinforce, relax, gumbel, reinmax, ...
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

import discograd
from discograd.data import MNISTData, load_mnist

parser = argparse.ArgumentParser()
parser.add_argument("estimator", nargs="?", default="disarm")
parser.add_argument("--steps", type=int, default=5000)
args = parser.parse_args()

torch.manual_seed(0)
data = MNISTData(load_mnist(), "dynamic")            # 50k / 10k / 10k, binarized when drawn
encoder, decoder = nn.Linear(784, 200), nn.Linear(200, 784)
prior = nn.Parameter(torch.zeros(200))               # logits of a learned Bernoulli prior
opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters(), prior], lr=1e-3)
est = discograd.make(args.estimator, kind="bernoulli", latent_shape=(200,))


def kl(logits):                                      # KL(q(z|x) || p(z)), exact, per example
    q = torch.sigmoid(logits)
    return (q * (F.logsigmoid(logits) - F.logsigmoid(prior))
            + (1 - q) * (F.logsigmoid(-logits) - F.logsigmoid(-prior))).sum(-1)


def loss(x):                                         # the negative ELBO: E_q[f] + KL
    logits = encoder(x)
    f = lambda z: F.binary_cross_entropy_with_logits(  # -log p(x|z); z: [S, B, 200] -> [S, B]
        decoder(z), x.expand(z.shape[0], *x.shape), reduction="none").sum(-1)
    out = est(logits, f)                             # the estimator's surrogate of E_q[f]
    return out.surrogate + kl(logits).mean(), out.loss.mean() + kl(logits).mean()


for step in range(args.steps + 1):
    est.set_step(step)                               # temperature schedules follow the step
    surrogate, value = loss(data.batch("train", torch.randint(data.n("train"), (50,))))
    opt.zero_grad()
    surrogate.backward()
    opt.step()
    if step % max(1, args.steps // 10) == 0:
        print(f"step {step} train -ELBO {value.item():.2f} nats")
est.eval()
with torch.no_grad():
    _, test = loss(data.full("test")[:2000])
print(f"test -ELBO {test.item():.2f} nats ({args.estimator}, {args.steps} steps)")
