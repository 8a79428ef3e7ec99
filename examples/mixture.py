"""Which estimator has the lowest variance on *my* model? A Gaussian mixture with a categorical
assignment per point (not a model of the runner), probed with five estimators at one state.

    python examples/mixture.py
"""
import torch
from torch import nn

import discograd

torch.manual_seed(0)
K, D, N = 5, 2, 64
x = torch.cat([torch.randn(N // 2, D) + 3, torch.randn(N // 2, D) - 3])


class Mixture(nn.Module):
    def __init__(self):
        super().__init__()
        self.assign = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K))   # q(k | x)
        self.means = nn.Parameter(torch.randn(K, D))                                 # inside f


model = Mixture()


def logits(x):                                       # one categorical latent of K classes
    return model.assign(x).unsqueeze(1)              # [B, 1, K]


def objective(x, logits):                            # f(z) = squared distance to the chosen mean
    return lambda z: ((x - z[..., 0, :] @ model.means) ** 2).sum(-1)       # [S, B, 1, K] -> [S, B]


table = discograd.probe(model, logits, objective,
                        ["reinforce", "rloo", "arsm", "gumbel", "st"], x, samples=200)
columns = ["estimator", "param_group", "evals", "variance", "bias2", "bias2_se", "snr",
           "cosine", "reference"]
print(table[table.param_group == "encoder"][columns].to_string(index=False))
