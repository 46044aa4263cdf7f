"""Semi-NMF of MLP activations (workbench.dictionaries.nmf)."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.core.corpus import default_corpus
from workbench.dictionaries.dictionary import Dictionary
from workbench.dictionaries.nmf import NMFResult, semi_nmf


def planted_sparse_G(seed: int = 0, d: int = 40, n: int = 2000, r: int = 6):
    """A = F0 G0^T with each token using one or two components (G0 >= 0)."""
    g = torch.Generator().manual_seed(seed)
    F0 = torch.randn(d, r, generator=g)
    G0 = torch.zeros(n, r)
    a, b = torch.randint(r, (n,), generator=g), torch.randint(r, (n,), generator=g)
    G0[torch.arange(n), a] = torch.rand(n, generator=g) + 0.5
    two = torch.rand(n, generator=g) < 0.5
    G0[torch.arange(n)[two], b[two]] += torch.rand(int(two.sum()), generator=g) + 0.5
    return F0 @ G0.T, F0, G0


def planted_disjoint_F(seed: int = 0, d: int = 40, n: int = 1000, r: int = 4, s: int = 8):
    """F0 with disjoint supports of s neurons per component (identifiable with WTA sparsity s/d)."""
    g = torch.Generator().manual_seed(seed)
    F0 = torch.zeros(d, r)
    perm = torch.randperm(d, generator=g)
    for j in range(r):
        F0[perm[j * s:(j + 1) * s], j] = torch.randn(s, generator=g)
    G0 = torch.rand(n, r, generator=g) * (torch.rand(n, r, generator=g) < 0.4)
    return F0 @ G0.T, F0, G0


def test_error_never_rises_and_G_nonnegative():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(30, 500, generator=g).relu() - 0.1 * torch.randn(30, 500, generator=g)  # not exactly low rank
    for init in ("kmeans", "random"):
        res = semi_nmf(A, 8, iters=60, init=init, progress=False)
        e = [res.errors0, *res.errors]
        assert len(res.errors) == 60
        assert all(b <= a * (1 + 1e-5) for a, b in zip(e, e[1:], strict=False)), init
        assert e[-1] < e[0]
        assert (res.G >= 0).all()
        torch.testing.assert_close(res.F.norm(dim=0), torch.ones(8), rtol=0, atol=1e-5)
        direct = float((A - res.F @ res.G.T).norm() / A.norm())
        assert math.isclose(res.error, direct, rel_tol=1e-4)


def test_one_iteration_matches_hand_written_update():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(12, 80, generator=g, dtype=torch.float64)
    res = semi_nmf(A, 3, iters=1, init="random", seed=7, progress=False, dtype=torch.float64)
    # the same random start, then the textbook update
    G = torch.rand(80, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.1
    F = A @ G @ torch.linalg.inv(G.T @ G)
    s = F.norm(dim=0)
    F, G = F / s, G * s
    P, Q = A.T @ F, F.T @ F
    pos, neg = lambda M: (M.abs() + M) / 2, lambda M: (M.abs() - M) / 2  # noqa: E731
    G = G * torch.sqrt((pos(P) + G @ neg(Q)) / (neg(P) + G @ pos(Q)))
    torch.testing.assert_close(res.F, F, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(res.G, G, rtol=1e-6, atol=1e-8)
    assert math.isclose(res.errors[0], float((A - F @ G.T).norm() / A.norm()), rel_tol=1e-9)


def test_exact_reconstruction_of_planted_product():
    A, F0, G0 = planted_sparse_G()
    res = semi_nmf(A, 6, iters=300, progress=False)
    assert res.error < 1e-3
    torch.testing.assert_close(res.F @ res.G.T, A, rtol=0, atol=1e-2 * float(A.abs().max()))
    # semi-NMF factors are unique only up to mixing G with a non-negative matrix: the span is
    Q, _ = torch.linalg.qr(res.F.double())
    resid = F0.double() - Q @ (Q.T @ F0.double())
    assert float(resid.norm() / F0.norm()) < 1e-3


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_exact_factor_recovery_with_winner_take_all(seed):
    A, F0, G0 = planted_disjoint_F(seed)
    res = semi_nmf(A, 4, iters=200, sparsity=8 / 40, progress=False)
    assert ((res.F != 0).sum(0) == 8).all()  # WTA kept 8 neurons per component
    F0n = F0 / F0.norm(dim=0)
    M = F0n.T @ res.F
    match = M.argmax(1)
    assert sorted(match.tolist()) == [0, 1, 2, 3]
    assert M.max(1).values.min() > 0.9999
    G = res.G[:, match] / F0.norm(dim=0)  # F0's columns have their own scale
    torch.testing.assert_close(G, G0, rtol=0, atol=1e-4)
    assert res.error < 1e-5


def test_to_dictionary_encodes_nonnegative_least_squares():
    A, F0, G0 = planted_sparse_G(seed=2)
    res = semi_nmf(A, 6, iters=300, progress=False)
    d = res.to_dictionary("neurons.3")
    assert isinstance(d, Dictionary) and d.architecture == "nmf" and d.site == "neurons.3"
    assert d.d_in == 40 and d.d_sae == 6
    torch.testing.assert_close(d.W_dec, res.F.T)
    x = A.T[:300]
    acts = d.encode(x)
    assert (acts >= 0).all()
    ls = torch.linalg.lstsq(res.F.double(), x.T.double()).solution.T.clamp_min(0).float()
    torch.testing.assert_close(acts, ls, rtol=1e-3, atol=1e-3)
    # on exact data the clamped least squares is the factorization's own G
    torch.testing.assert_close(acts, res.G[:300], rtol=0, atol=2e-2 * float(res.G.max()))
    rec, _ = d.forward(x)
    assert float((rec - x).norm() / x.norm()) < 1e-2
    with pytest.raises(ValueError, match="site"):
        semi_nmf(A, 3, iters=2, progress=False).to_dictionary()


def test_from_model_layer_corpus(tiny):
    model = tiny("llama")
    res = semi_nmf((model, 1, default_corpus(max_passages=8)), 5, iters=20, progress=False, max_tokens=600)
    assert res.site == "neurons.1" and res.F.shape == (model.d_mlp, 5) and res.G.shape == (600, 5)
    assert res.meta["tokens"] == 600
    d = res.to_dictionary()
    assert d.site == "neurons.1" and d.W_dec.shape == (5, model.d_mlp)
    df = res.to_pandas()
    assert list(df.columns) == ["iteration", "error"] and len(df) == 21 and df["error"].iloc[0] == res.errors0
    assert len(res.components()) == 5
    fig = res.plot()
    assert fig.axes[0].get_yscale() == "log" and len(fig.axes[0].lines[0].get_xdata()) == 21
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert "NMFResult" in res._repr_html_() and "<script" not in res._repr_html_()


def test_bad_input():
    A = torch.randn(10, 50)
    with pytest.raises(ValueError, match="n_components"):
        semi_nmf(A, 11, progress=False)
    with pytest.raises(ValueError, match="n_components"):
        semi_nmf(A, 0, progress=False)
    with pytest.raises(ValueError, match="2-D"):
        semi_nmf(torch.randn(10), 2, progress=False)
    with pytest.raises(ValueError, match="empty"):
        semi_nmf(torch.zeros(10, 0), 2, progress=False)
    bad = A.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        semi_nmf(bad, 2, progress=False)
    with pytest.raises(ValueError, match="sparsity"):
        semi_nmf(A, 2, sparsity=1.5, progress=False)
    with pytest.raises(ValueError, match="iters"):
        semi_nmf(A, 2, iters=0, progress=False)
    with pytest.raises(ValueError, match="init"):
        semi_nmf(A, 2, init="svd", progress=False)
    with pytest.raises(ValueError, match="model, layer, corpus"):
        semi_nmf((1,), 2, progress=False)
    assert isinstance(semi_nmf(A, 2, iters=1, progress=False), NMFResult)
