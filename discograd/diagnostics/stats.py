"""The statistics of grad_stats.csv (README, "Gradient diagnostics"; the definitions are a
contract), computed from the moments of K gradient estimates and a reference.

For each parameter group (``encoder``: upstream of the logits, ``decoder``: inside f, ``all``)
with P coordinates, estimates g_1..g_K and a reference gradient g*:

    g_bar     = 1/K sum_k g_k
    variance  = 1/P sum_p  1/(K-1) sum_k (g_kp - g_bar_p)^2
    bias2     = ||g_bar - g*||^2 / P - variance / K  [- variance_ref / M for a sampled reference]
    mean_norm2 = ||g_bar||^2 - P variance / K        (unbiased for ||E g||^2; may be negative)
    mean_norm = sqrt(max(mean_norm2, 0)),  snr = mean_norm / sqrt(P variance)
    cosine    = g_bar . g* / sqrt(mean_norm2 ||E g*||^2_hat), NaN unless resolved (below)
    mse       = bias2 + variance

E||g_bar - g*||^2 / P = bias^2 + variance / K (+ variance_ref / M), so bias2 is an unbiased
estimate of the squared bias per coordinate; E||g_bar||^2 = ||E g||^2 + P variance / K, which is
why the raw ||g_bar|| (``mean_norm_raw``) gives a noisy estimator an SNR floor of about 1/sqrt(K).
Standard errors (``bias2_se``, ``mean_norm2_se``) come from a delete-one-group jackknife (Efron &
Stein 1981) over G = 10 groups of the K estimates, paired with G groups of the reference's M draws
when it is sampled: the groups are independent, so the errors hold whatever the correlation
between coordinates.

Cosine: ``cosine_se`` is its jackknife standard error, ``cosine_lo``/``cosine_hi`` the interval
cosine +- 2 SE clipped to [-1, 1]; ``cosine`` itself is NaN unless it is resolved (see
:func:`group_stats`): a ratio with a noisy denominator is never clipped into a false 1.000.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

GRAD_STATS_HEADER = ["step", "estimator", "param_group", "samples", "reference", "mean_norm",
                     "variance", "bias2", "mse", "cosine", "snr", "evals", "seconds_per_estimate",
                     # added after the contract's columns (their meaning is in the module doc)
                     "aux", "batch_size", "mean_norm2", "mean_norm2_se", "bias2_se",
                     "mean_norm_raw", "snr_raw", "cosine_raw", "cosine_se", "cosine_lo", "cosine_hi"]
GROUPS = ("encoder", "decoder", "all")
JACKKNIFE_GROUPS = 10           # groups of the K estimates for the standard errors
COSINE_HALF_WIDTH = 0.2         # a cosine is "resolved" when 2 SE <= this (else only its interval)


def grad_stats_row(values: dict) -> list:
    """A grad_stats.csv row from a mapping of column name -> value: every column of
    GRAD_STATS_HEADER exactly once, in its order (a missing or unknown name is an error)."""
    missing = [c for c in GRAD_STATS_HEADER if c not in values]
    unknown = [c for c in values if c not in GRAD_STATS_HEADER]
    if missing or unknown:
        raise KeyError(f"grad_stats row: missing columns {missing}, unknown columns {unknown}")
    return [values[c] for c in GRAD_STATS_HEADER]


def _jackknife_se(values: Tensor) -> float:
    """Standard error of a statistic from its G leave-one-group-out values (Efron & Stein)."""
    G = values.numel()
    return math.sqrt((G - 1) / G * (values - values.mean()).square().sum().item())


def _flat(mom, members, i: int) -> Tensor:
    """Field i of the moments of ``members``, flattened and concatenated along the coordinates
    (the group sums, field 2, keep their leading group axis)."""
    if i == 2:
        return torch.cat([mom[n][2].flatten(1) for n in members], 1)
    return torch.cat([mom[n][i].flatten() for n in members])


def _leave_one_out(mom, members, K: int) -> tuple[Tensor, Tensor]:
    """For each jackknife group j: the mean [G, P] of the estimates outside group j and their
    per-coordinate variance averaged over coordinates [G], from the group sums S_j and the sums of
    squared norms Q_j (sum of squared deviations = Q - ||S||^2 / n)."""
    S = _flat(mom, members, 2)
    Q = sum(mom[n][3] for n in members)
    n_out = K - mom[members[0]][4]
    S_out = S.sum(0, keepdim=True) - S
    ss_out = (Q.sum() - Q) - S_out.square().sum(1) / n_out
    return S_out / n_out[:, None], ss_out / (n_out - 1) / S.shape[1]


def group_stats(mom, members, K: int, g_ref=None, ref_mom=None, M: int = 0) -> dict[str, float]:
    """The statistics of one parameter group (module doc), noise-corrected, with jackknife
    standard errors (delete one of G groups of the K estimates, and of the reference's M draws
    when it is sampled: the groups are independent units). ``g_ref``: an exact reference
    gradient (dict of tensors), or ``ref_mom``: the moments of M reference draws. Returns a dict
    keyed by grad_stats.csv column."""
    mean, var_c = _flat(mom, members, 0), _flat(mom, members, 1)
    P = mean.numel()
    variance = var_c.mean().item()
    if ref_mom is None:
        ref = torch.cat([g_ref[n].flatten() for n in members])
        ref_noise = 0.0
    else:                      # E||g* - E g*||^2 / P of the sampled reference is removed too
        ref = _flat(ref_mom, members, 0)
        ref_noise = _flat(ref_mom, members, 1).mean().item() / M
    bias2 = (mean - ref).pow(2).sum().item() / P - variance / K - ref_noise
    # ||g_bar||^2 overestimates ||E g||^2 by P variance / K: the unbiased estimate, and its clip
    norm2_raw = mean.square().sum().item()
    norm2 = norm2_raw - P * variance / K
    norm_raw, norm = math.sqrt(norm2_raw), math.sqrt(max(norm2, 0.0))
    ref2 = ref.square().sum().item() - P * ref_noise          # unbiased ||E g*||^2
    dot = (mean @ ref).item()                                 # unbiased E g . E g* (independent)
    rnorm_raw = ref.norm().item()
    cosine_raw = dot / (norm_raw * rnorm_raw) if norm_raw > 0 and rnorm_raw > 0 else math.nan
    scale = math.sqrt(P * variance)
    snr = norm / scale if variance > 0 else math.inf
    snr_raw = norm_raw / scale if variance > 0 else math.inf
    # jackknife: leave-one-group-out values of bias2, of the corrected ||E g||^2 and of the cosine
    G = mom[members[0]][4].numel()
    bias2_se = norm2_se = cosine_se = math.nan
    if G >= 2 and K - mom[members[0]][4].max().item() >= 2:
        mean_out, var_out = _leave_one_out(mom, members, K)
        n_out = K - mom[members[0]][4]
        ref_out, ref_noise_out = ref[None], 0.0
        if ref_mom is not None:
            ref_out, rvar_out = _leave_one_out(ref_mom, members, M)
            ref_noise_out = rvar_out / (M - ref_mom[members[0]][4])
        bias2_out = (mean_out - ref_out).square().sum(1) / P - var_out / n_out - ref_noise_out
        norm2_out = mean_out.square().sum(1) - P * var_out / n_out
        ref2_out = ref_out.square().sum(1) - P * ref_noise_out
        bias2_se, norm2_se = _jackknife_se(bias2_out), _jackknife_se(norm2_out)
        if bool((norm2_out > 0).all()) and bool((ref2_out > 0).all()):
            cos_out = (mean_out * ref_out).sum(1) / (norm2_out * ref2_out).sqrt()
            cosine_se = _jackknife_se(cos_out)
        else:            # a leave-one-out denominator at or below zero: no interval
            cosine_se = math.inf
    # the cosine of E g with E g*: a ratio of unbiased estimates, consistent but not unbiased,
    # and unbounded when a denominator is noisy: never clipped into [-1, 1] (a clipped 1.000 is
    # not a measurement). It is reported (``cosine``) only when resolved: ||E g||^2 and ||E g*||^2
    # above zero by 2 SE, the estimate inside [-1, 1] and an interval cosine +- 2 SE no wider
    # than +-COSINE_HALF_WIDTH; the interval itself (clipped to the cosine's range) is always
    # written.
    est = dot / math.sqrt(norm2 * ref2) if norm2 > 0 and ref2 > 0 else math.nan
    if P == 1 and math.isfinite(est):     # one coordinate: the cosine is the sign, exactly
        est, cosine_se = math.copysign(1.0, dot), 0.0
    lo = hi = math.nan
    if math.isfinite(est) and math.isfinite(cosine_se):
        lo, hi = max(-1.0, est - 2 * cosine_se), min(1.0, est + 2 * cosine_se)
    elif math.isfinite(est):
        lo, hi = -1.0, 1.0
    if lo > hi:          # the whole interval outside [-1, 1]: no cosine is consistent with it
        lo = hi = math.nan
    resolved = (math.isfinite(est) and -1.0 <= est <= 1.0 and not (norm2 < 2 * norm2_se)
                and 2 * cosine_se <= COSINE_HALF_WIDTH and lo <= hi)
    cosine = est if resolved else math.nan
    return {"mean_norm": norm, "variance": variance, "bias2": bias2, "mse": bias2 + variance,
            "cosine": cosine, "snr": snr, "mean_norm2": norm2, "mean_norm2_se": norm2_se,
            "bias2_se": bias2_se, "mean_norm_raw": norm_raw, "snr_raw": snr_raw,
            "cosine_raw": cosine_raw, "cosine_se": cosine_se, "cosine_lo": lo, "cosine_hi": hi}
