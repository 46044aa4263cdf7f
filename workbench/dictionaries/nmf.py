"""Semi-NMF of MLP neuron activations (Shafran et al. 2025; Ding, Li & Jordan 2010).

    res = wb.dictionaries.semi_nmf((model, 9, corpus), n_components=64)   # neurons.9 over 20k tokens of a corpus
    res = wb.dictionaries.semi_nmf(A, 64)                                  # or any A [d_mlp, n_tokens]
    res.plot(); res.to_pandas()                              # reconstruction error per iteration
    d = res.to_dictionary()                                  # a Dictionary(architecture="nmf")

``A [d_mlp x tokens] ~ F G^T`` with ``F [d_mlp x r]`` of any sign (the components: directions in
neuron space) and ``G [tokens x r] >= 0`` (how much of each component each token uses). Each
iteration:

1. ``F <- A G (G^T G + eps I)^-1`` (least squares for ``F`` given ``G``; ``eps`` is 1e-9 of the
   mean diagonal, only there to keep the solve defined);
2. optional winner-take-all sparsity: each column of ``F`` keeps its ``ceil(sparsity * d_mlp)``
   entries of largest magnitude (the component then involves only those neurons), the rest are 0;
3. normalise: ``F``'s columns to unit norm, ``G``'s columns scaled up by the same factors (``F G^T``
   does not change);
4. ``G <- G * sqrt((P+ + G Q-) / (P- + G Q+))`` with ``P = A^T F``, ``Q = F^T F`` and ``X+`` / ``X-``
   the positive / negative parts (``G`` stays non-negative).

Without sparsity both steps can only lower ``|A - F G^T|`` (step 1 is its minimiser in ``F``, step 4
is Ding et al.'s monotone update), so the recorded error never rises (up to float rounding).
``G`` starts from k-means on the tokens (cluster indicators + 0.2, as Ding et al.), or random.

As a `Dictionary`: ``W_dec = F^T`` (unit rows over the neurons), and ``encode(x) = relu(x @ W_enc)``
with ``W_enc = F (F^T F)^-1``: the least-squares coefficients of ``x`` on the components, clamped
at zero (a one-shot approximation of the non-negative fit; the training tokens' own coefficients
are ``G``).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .dictionary import Dictionary


@dataclass
class NMFResult:
    """A semi-NMF ``A ~ F G^T``: ``F [d_mlp, r]`` (unit columns), ``G [n_tokens, r] >= 0``, and
    ``errors[i]`` = ``|A - F G^T|_F / |A|_F`` after iteration ``i + 1`` (``errors0``: at the start)."""

    F: Tensor
    G: Tensor
    errors: list[float]
    errors0: float
    site: str | None = None
    sparsity: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_components(self) -> int:
        return int(self.F.shape[1])

    @property
    def error(self) -> float:
        """The final relative reconstruction error."""
        return self.errors[-1] if self.errors else self.errors0

    def to_pandas(self):
        """One row per iteration: ``iteration`` (0 = initialisation) and relative ``error``."""
        import pandas as pd

        return pd.DataFrame({"iteration": range(len(self.errors) + 1), "error": [self.errors0, *self.errors]})

    def components(self):
        """One row per component: its norm of usage (sum of G), tokens using it, top neurons."""
        import pandas as pd

        G, F = self.G, self.F
        top = F.abs().topk(min(5, F.shape[0]), dim=0).indices.T
        return pd.DataFrame({"component": range(self.n_components), "usage": G.sum(0).double().numpy(),
                             "frac_tokens": (G > 0).double().mean(0).numpy(),
                             "top_neurons": [r.tolist() for r in top]})

    def plot(self, ax: Any = None):
        """The reconstruction error per iteration (log scale); returns the Figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3))
        df = self.to_pandas()
        ax.plot(df["iteration"], df["error"], color="#2c7fb8")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("|A - F Gᵀ| / |A|")
        title = f"semi-NMF, {self.n_components} components" + (f" of {self.site}" if self.site else "")
        ax.set_title(title)
        return ax.figure

    def to_dictionary(self, site: str | None = None) -> Dictionary:
        """The components as a `Dictionary` (architecture ``"nmf"``, see the module docstring)."""
        site = site or self.site
        if site is None:
            raise ValueError("this factorization was not made from a model site: give site='neurons.L'")
        Fd = self.F.double()
        W_enc = Fd @ torch.linalg.pinv(Fd.T @ Fd)
        r, d = self.n_components, self.F.shape[0]
        meta = {"format": "workbench-nmf", "nmf": {"error": self.error, "iterations": len(self.errors),
                                                   "sparsity": self.sparsity, **self.meta}}
        return Dictionary(W_enc=W_enc.float(), b_enc=torch.zeros(r), W_dec=self.F.T.contiguous().float(),
                          b_dec=torch.zeros(d), architecture="nmf", site=site, meta=meta)

    def __repr__(self) -> str:
        return (f"NMFResult({self.n_components} components over {self.F.shape[0]} units, {self.G.shape[0]} tokens, "
                f"error {self.error:.4f} after {len(self.errors)} iterations"
                + (f", site {self.site}" if self.site else "") + ")")

    def _repr_html_(self) -> str:
        return f"<div><b>NMFResult</b> {html.escape(repr(self)[10:-1])}</div>"


def _kmeans_init(X: Tensor, r: int, g: torch.Generator, iters: int = 10) -> Tensor:
    """Cluster indicators of k-means on the rows of X (k-means++ seeding), plus 0.2."""
    n = len(X)
    sq = (X * X).sum(1)
    centers = [int(torch.randint(n, (1,), generator=g))]
    dist = (sq - 2 * X @ X[centers[0]] + sq[centers[0]]).clamp_min(0)
    for _ in range(1, r):
        p = dist / dist.sum() if float(dist.sum()) > 0 else torch.full_like(dist, 1.0 / n)
        c = int(torch.multinomial(p, 1, generator=g))
        centers.append(c)
        dist = torch.minimum(dist, (sq - 2 * X @ X[c] + sq[c]).clamp_min(0))
    C = X[centers].clone()
    for _ in range(iters):
        lab = (C @ X.T * -2 + (C * C).sum(1, keepdim=True)).argmin(0)
        for j in range(r):
            members = X[lab == j]
            if len(members):
                C[j] = members.mean(0)
    lab = (C @ X.T * -2 + (C * C).sum(1, keepdim=True)).argmin(0)
    G = torch.full((n, r), 0.2, dtype=X.dtype)
    G[torch.arange(n), lab] += 1.0
    return G


def _error(A: Tensor, F: Tensor, G: Tensor, chunk: int = 8192) -> float:
    """|A - F G^T|_F computed directly (no cancellation), in token chunks."""
    total = 0.0
    for i in range(0, A.shape[1], chunk):
        R = A[:, i:i + chunk] - F @ G[i:i + chunk].T
        total += float(R.double().pow(2).sum())
    return math.sqrt(total)


def semi_nmf(A: Tensor | tuple, n_components: int, iters: int = 200, sparsity: float | None = None, seed: int = 0,
             progress: bool = True, *, init: str = "kmeans", max_tokens: int = 20_000,
             dtype: torch.dtype = torch.float32) -> NMFResult:
    """Semi-NMF ``A ~ F G^T`` with ``G >= 0`` (see the module docstring).

    ``A``: a ``[d_mlp, n_tokens]`` tensor, or ``(model, layer, corpus)``: the MLP neurons of that
    layer over ``max_tokens`` tokens of the corpus (``corpus`` None: the default corpus).
    ``sparsity``: the fraction of entries each column of ``F`` keeps (winner-take-all), or None.
    ``init``: ``"kmeans"`` or ``"random"``.
    """
    site = None
    meta: dict[str, Any] = {}
    if isinstance(A, tuple):
        if len(A) not in (2, 3):
            raise ValueError("give A as a [d_mlp, n_tokens] tensor or as (model, layer, corpus)")
        from ..core.activations import collect_activations
        from ..core.corpus import corpus_name

        model, layer = A[0], A[1]
        corpus = A[2] if len(A) == 3 else None
        site = f"neurons.{int(layer)}"
        X = collect_activations(model, site, corpus, max_tokens, progress=progress)
        A = X.T
        meta = {"model_name": getattr(model, "name", None), "corpus": corpus_name(corpus), "tokens": int(X.shape[0])}
    if not isinstance(A, Tensor) or A.dim() != 2:
        raise ValueError(f"A must be a 2-D tensor [d_mlp, n_tokens], not {getattr(A, 'shape', type(A).__name__)}")
    if A.numel() == 0:
        raise ValueError(f"A is empty (shape {list(A.shape)})")
    if not torch.isfinite(A).all():
        raise ValueError("A has NaN or infinite entries")
    d, n = A.shape
    if isinstance(n_components, bool) or not isinstance(n_components, int) or not 1 <= n_components <= min(d, n):
        raise ValueError(f"n_components must be an integer in 1..min(d, n_tokens) = {min(d, n)}, not {n_components!r}")
    if iters < 1:
        raise ValueError(f"iters must be at least 1, not {iters}")
    if sparsity is not None and not 0 < sparsity <= 1:
        raise ValueError(f"sparsity is the fraction of each component's entries kept, in (0, 1]; got {sparsity}")
    if init not in ("kmeans", "random"):
        raise ValueError(f"init must be 'kmeans' or 'random', not {init!r}")
    from tqdm.auto import tqdm

    A = A.detach().to("cpu", dtype)
    r = n_components
    g = torch.Generator().manual_seed(int(seed))
    G = _kmeans_init(A.T, r, g) if init == "kmeans" else torch.rand(n, r, generator=g, dtype=dtype) + 0.1
    norm_A = max(float(A.double().pow(2).sum().sqrt()), 1e-300)
    F = (A @ G) @ torch.linalg.pinv((G.T @ G).double()).to(dtype)
    err0 = _error(A, F, G) / norm_A
    keep = None if sparsity is None else max(1, math.ceil(sparsity * d))
    tiny = torch.finfo(dtype).tiny
    errors: list[float] = []
    bar = tqdm(range(iters), desc=f"semi-NMF r={r}", disable=not progress, leave=False)
    for _ in bar:
        GtG = (G.T @ G).double()
        ridge = 1e-9 * float(GtG.diagonal().mean()) + 1e-30
        F = torch.linalg.solve(GtG + ridge * torch.eye(r, dtype=torch.float64), (A @ G).double().T).T.to(dtype)
        if keep is not None and keep < d:
            thr = F.abs().topk(keep, dim=0).values[-1]
            F = F * (F.abs() >= thr)
        s = F.norm(dim=0).clamp_min(tiny)
        F = F / s
        G = G * s
        P, Q = A.T @ F, F.T @ F
        num = P.clamp_min(0) + G @ (-Q).clamp_min(0)
        den = (-P).clamp_min(0) + G @ Q.clamp_min(0)
        G = G * torch.sqrt(num / den.clamp_min(tiny))
        errors.append(_error(A, F, G) / norm_A)
        bar.set_postfix(error=f"{errors[-1]:.4f}", refresh=False)
    bar.close()
    return NMFResult(F, G, errors, err0, site, sparsity, {**meta, "init": init, "seed": seed})
