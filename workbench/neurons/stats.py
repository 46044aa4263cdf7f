"""The workbench's shared statistics: AUROC, Pearson's r, ranks, permutation tests, intervals.

    from workbench.neurons import stats
    stats.auroc(pos, neg)                      # P(pos > neg) + 0.5 P(pos == neg)
    stats.pearson(x, y)                        # Pearson's r (nan when undefined)
    a, p = stats.auroc_and_pvalues(values, in_set, permutations=1000)   # every unit at once

`auroc` and `pearson` work on numpy vectors (the autointerp scorers, hypotheses);
`auroc_and_pvalues` works on a ``[n, units]`` torch matrix from ranks (Mann–Whitney U, ties
averaged), with permutation p-values for every unit from one matrix product (contrastive
neurons). On the same data the two AUROCs agree.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["auroc", "pearson", "doubled_ranks", "average_ranks", "permutation_indices", "auroc_and_pvalues",
           "wilson_interval"]


# -- scalar statistics (numpy) --------------------------------------------------------------------
def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg) over all pairs (nan when a side is empty)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if not len(pos) or not len(neg):
        return math.nan
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float(gt + 0.5 * eq) / (len(pos) * len(neg))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r (nan when either side is constant or has fewer than two values)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / den if den > 0 else math.nan


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (nan, nan) when n == 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


# -- ranks and the all-units AUROC (torch) ----------------------------------------------------------
def doubled_ranks(values: torch.Tensor) -> torch.Tensor:
    """Twice the average ranks along dim 0 (integers), as int64 ``[n, U]`` for ``values [n, ...]``."""
    n = values.shape[0]
    flat = values.reshape(n, -1).T.contiguous()  # [U, n]: sort along contiguous rows
    srt, order = flat.sort(dim=1)
    idx = torch.arange(n).expand_as(srt)
    same = srt[:, 1:] == srt[:, :-1]  # tied with the previous value
    if bool(same.any()):  # a tie group's rank is (first + last) / 2 of its sorted positions
        start = torch.ones_like(srt, dtype=torch.bool)
        start[:, 1:] = ~same
        end = torch.ones_like(srt, dtype=torch.bool)
        end[:, :-1] = ~same
        first = torch.where(start, idx, 0).cummax(1).values
        last = torch.where(end, idx, n - 1).flip(1).cummin(1).values.flip(1)
        r2 = first + last + 2
    else:
        r2 = 2 * idx + 2
    return torch.empty_like(order).scatter_(1, order, r2).T.contiguous()


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks along dim 0 (1 = smallest), ties getting the average of their ranks.

    ``values``: ``[n, ...]``; returns float64 of the same shape.
    """
    return (doubled_ranks(values).double() / 2).reshape(values.shape)


def permutation_indices(n: int, permutations: int, seed: int = 0) -> torch.Tensor:
    """``[permutations, n]`` random index permutations (row p shuffles the labels)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.argsort(torch.rand(int(permutations), n, generator=gen), dim=1)


def auroc_and_pvalues(values: torch.Tensor, in_set: torch.Tensor, permutations: int = 1000, seed: int = 0,
                      perms: torch.Tensor | None = None, max_elements: int = 1 << 19) -> tuple[torch.Tensor, torch.Tensor]:
    """AUROC of ``values[n, U]`` for the rows ``in_set`` (bool ``[n]``) against the rest, and
    two-sided permutation p-values (NaN when ``permutations`` is 0).

    Every unit is tested with the same shuffles: permuted rank sums are one matrix product of
    the ``[permutations, n]`` label matrix with the ``[n, U]`` ranks, and
    ``p = (1 + #{|AUROC_perm - 0.5| >= |AUROC - 0.5|}) / (1 + permutations)``. ``perms``
    (``[P, n]`` index permutations) overrides ``permutations`` / ``seed``.
    """
    values = values.reshape(values.shape[0], -1)
    n = values.shape[0]
    in_set = in_set.bool()
    n1 = int(in_set.sum())
    n0 = n - n1
    if n1 == 0 or n0 == 0:
        raise ValueError("AUROC needs texts both in and out of the set")
    # Doubled ranks are integers: rank sums compare exactly (float32 is exact below 2**24).
    ranks2 = doubled_ranks(values)
    r = ranks2.float() if n * (n + 1) < (1 << 24) else ranks2.double()
    lab = in_set.to(r.dtype)
    obs = lab @ r  # doubled rank sums [U]
    auc = ((obs.double() / 2 - n1 * (n1 + 1) / 2) / (n1 * n0)).float()
    if perms is None:
        if permutations <= 0:
            return auc, torch.full_like(auc, float("nan"))
        perms = permutation_indices(n, permutations, seed)
    P = perms.shape[0]
    M = in_set[perms].to(r.dtype)  # [P, n]: row p = the labels after shuffle p
    centre = n1 * (n + 1)  # expected doubled rank sum
    dev = (obs - centre).abs()
    hits = torch.zeros(r.shape[1], dtype=torch.long)
    chunk = max(64, max_elements // max(1, P))  # [P, chunk] products stay in cache
    for u0 in range(0, r.shape[1], chunk):
        pr = M @ r[:, u0:u0 + chunk]  # [P, chunk]
        hits[u0:u0 + chunk] = ((pr - centre).abs() >= dev[u0:u0 + chunk]).sum(0)
    pvals = ((1 + hits).double() / (1 + P)).float()
    return auc, pvals
