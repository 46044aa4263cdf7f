"""Contrastive neurons on tiny models: a planted token detector, and every statistic against a
brute-force computation from full ``neurons.L`` captures (one text at a time, no padding)."""

from __future__ import annotations

import html
import re

import matplotlib
import pytest
import torch

import workbench as wb
from workbench.neurons.contrastive import (
    ContrastiveResult,
    average_ranks,
    contrastive_neurons,
    permutation_indices,
)
from workbench.testing import tiny_model

matplotlib.use("Agg")

TOKEN = " the"
UNIT = 5


def sentences() -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for v in list(topics.values())[:300]:
        for s in re.split(r"(?<=[.!?])\s+", v):
            s = " ".join(s.split())
            if 30 < len(s) < 100 and s.isascii():
                out.append(s)
    return out


def split_sets(model: wb.Model, n: int = 12) -> tuple[int, list[str], list[str]]:
    """Texts with the token (after position 0) and texts without it anywhere."""
    tok = model.tokenizer
    tid = tok(TOKEN, add_special_tokens=False)["input_ids"]
    assert len(tid) == 1
    tid = tid[0]
    a = [s for s in sentences() if tid in tok(s)["input_ids"][1:]][:n]
    b = [s for s in sentences() if tid not in tok(s)["input_ids"]][:n]
    assert len(a) == len(b) == n
    return tid, a, b


def plant(model: wb.Model, family: str, tid: int, unit: int = UNIT) -> None:
    """Make MLP neuron `unit` of layer 0 fire strongly on token `tid` only.

    The token's embedding is scaled up (so it dominates its residual stream against the
    attention output) and the neuron's input weights point along it.
    """
    hf = model.hf
    with torch.no_grad():
        if family == "gpt2":
            emb = hf.transformer.wte.weight
            e = emb[tid].clone()
            emb[tid] *= 10
            fc = hf.transformer.h[0].mlp.c_fc  # Conv1D: weight [d_model, d_mlp]
            fc.weight[:, unit] = 3 * e / e.norm()
            fc.bias[unit] = -6.0
        else:
            emb = hf.model.embed_tokens.weight
            e = emb[tid].clone()
            emb[tid] *= 10
            mlp = hf.model.layers[0].mlp
            mlp.gate_proj.weight[unit] = 2 * e / e.norm()
            mlp.up_proj.weight[unit] = 2 * e / e.norm()


THRESHOLD = {"llama": 20.0, "gpt2": 6.0}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def planted(request):
    family = request.param
    model = tiny_model(family)
    tid, a, b = split_sets(model)
    plant(model, family, tid)
    return family, model, a, b


def full_acts(model: wb.Model, texts: list[str], layers: list[int]) -> list[torch.Tensor]:
    """Per text ``[n_layers, seq, d_mlp]``, each text run alone (no padding)."""
    out = []
    for t in texts:
        res = model.run(t, capture=[f"neurons.{L}" for L in layers], logits=None)
        out.append(torch.stack([res.activations[f"neurons.{L}"][0] for L in layers]).float())
    return out


def pair_auroc(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """AUROC over all (positive, negative) pairs: P(pos > neg) + 0.5 P(pos == neg). [n, U] inputs."""
    gt = (pos[:, None, :] > neg[None, :, :]).double().sum((0, 1))
    eq = (pos[:, None, :] == neg[None, :, :]).double().sum((0, 1))
    return (gt + 0.5 * eq) / (pos.shape[0] * neg.shape[0])


def brute(model, sets: dict[str, list[str]], reduce: str, threshold: float, skip_first: bool):
    layers = list(range(model.n_layers))
    texts = [t for v in sets.values() for t in v]
    labels = torch.tensor([s for s, v in enumerate(sets.values()) for _ in v])
    acts = full_acts(model, texts, layers)
    start = int(skip_first)
    vals = torch.stack([a[:, start:].mean(1) if reduce == "mean" else a[:, start:].amax(1) for a in acts])
    active = torch.stack([(a[:, start:] > threshold).double().sum(1) for a in acts])  # [N, nL, d]
    ntok = torch.tensor([a.shape[1] - start for a in acts], dtype=torch.float64)
    S = len(sets)
    p_act = torch.stack([active[labels == s].sum(0) / ntok[labels == s].sum() for s in range(S)])
    rest = torch.stack([active[labels != s].sum(0) / ntok[labels != s].sum() for s in range(S)])
    return vals, labels, p_act, p_act - rest


def test_planted_neuron_ranks_first_and_matches_brute_force(planted):
    family, model, a, b = planted
    thr = THRESHOLD[family]
    res = contrastive_neurons(model, {"A": a, "B": b}, threshold=thr, permutations=1000, progress=False)
    assert isinstance(res, ContrastiveResult)
    top = res.top(1, set="A")
    assert (top.loc[0, "layer"], top.loc[0, "unit"]) == (0, UNIT)
    top = res.top(1, set="A", by="diff")
    assert (top.loc[0, "layer"], top.loc[0, "unit"]) == (0, UNIT)
    assert res.p_value[0, 0, UNIT] < 0.01
    assert res.auroc[0, 0, UNIT] == 1.0 and res.auroc[1, 0, UNIT] == 0.0
    # every number against the brute force
    vals, labels, p_act, diff = brute(model, {"A": a, "B": b}, "mean", thr, True)
    torch.testing.assert_close(res.values, vals, rtol=1e-4, atol=1e-4)
    assert torch.equal(res.labels, labels)
    torch.testing.assert_close(res.p_act, p_act)
    torch.testing.assert_close(res.diff, diff)
    flat = vals.reshape(len(labels), -1)
    ref = pair_auroc(flat[labels == 0], flat[labels == 1]).reshape(res.auroc.shape[1:])
    torch.testing.assert_close(res.auroc[0].double(), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.auroc[1].double(), 1 - ref, atol=1e-6, rtol=0)
    assert res.n_texts == [len(a), len(b)]
    assert res.n_tokens == [sum(len(model.to_str_tokens(t)) - 1 for t in s) for s in (a, b)]


def test_permutation_pvalues_match_a_loop_over_shuffles(planted):
    family, model, a, b = planted
    P = 200
    res = contrastive_neurons(model, {"A": a, "B": b}, reduce="max", threshold=THRESHOLD[family], permutations=P,
                              seed=3, progress=False)
    N = len(a) + len(b)
    perms = permutation_indices(N, P, seed=3)
    labels = res.labels
    flat = res.values.reshape(N, -1)
    obs = pair_auroc(flat[labels == 0], flat[labels == 1])
    units = [UNIT, 0, 1, 17, res.d_mlp + 3]  # layer 0 units and one of layer 1
    hits = torch.zeros(len(units), dtype=torch.float64)
    for p in range(P):
        lab = labels[perms[p]]
        perm = pair_auroc(flat[lab == 0][:, units], flat[lab == 1][:, units])
        hits += ((perm - 0.5).abs() >= (obs[units] - 0.5).abs() - 1e-12).double()
    expected = (1 + hits) / (1 + P)
    got = res.p_value[0].reshape(-1)[units].double()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(res.p_value[1], res.p_value[0])
    assert float(got[0]) == pytest.approx(1 / (P + 1))  # the planted neuron: no shuffle reaches AUROC 1


def test_max_reduce_no_skip_three_sets_and_lape_entropy(planted):
    family, model, a, b = planted
    sets = {"A": a[:6], "B": b[:6], "C": b[6:] + a[6:8]}
    res = contrastive_neurons(model, sets, reduce="max", threshold=1.0, permutations=50, skip_first=False,
                              progress=False)
    vals, labels, p_act, diff = brute(model, sets, "max", 1.0, False)
    torch.testing.assert_close(res.values, vals, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.p_act, p_act)
    torch.testing.assert_close(res.diff, diff)
    flat = vals.reshape(len(labels), -1)
    for s in range(3):
        ref = pair_auroc(flat[labels == s], flat[labels != s]).reshape(res.auroc.shape[1:])
        torch.testing.assert_close(res.auroc[s].double(), ref, atol=1e-6, rtol=0)
    # LAPE entropy by hand: -sum q log q with q = p_act / sum over sets
    for L in range(model.n_layers):
        for u in (0, UNIT, 40):
            p = p_act[:, L, u]
            if float(p.sum()) == 0:
                assert torch.isnan(res.lape_entropy[L, u])
                continue
            q = p / p.sum()
            h = -sum(float(x) * torch.log(x).item() for x in q if x > 0)
            assert float(res.lape_entropy[L, u]) == pytest.approx(h, abs=1e-9)
    df = res.top(5, by="lape_entropy")
    assert (df["set"] == df["specific_to"]).all() and df["lape_entropy"].is_monotonic_increasing


def test_average_ranks_with_ties():
    x = torch.tensor([[3.0, 1.0], [1.0, 1.0], [3.0, 2.0], [2.0, 1.0], [3.0, 5.0]])
    r = average_ranks(x)
    for u in range(2):
        col = x[:, u]
        ref = [1 + float((col < v).sum()) + 0.5 * (float((col == v).sum()) - 1) for v in col]
        assert r[:, u].tolist() == ref


def test_statistics_in_chunks_equal_one_pass(monkeypatch):
    """Synthetic per-text values with many ties, 3 sets: unit chunks give the same numbers."""
    import workbench.neurons.contrastive as c

    g = torch.Generator().manual_seed(1)
    N, nL, d = 30, 2, 50
    values = torch.randint(0, 4, (N, nL, d), generator=g).float()
    lab = torch.tensor([0] * 10 + [1] * 12 + [2] * 8)
    active = torch.rand(3, nL, d, generator=g, dtype=torch.float64) * 5
    args = (["a", "b", "c"], [0, 1], lab, [6] * N, values, active, "mean", 0.0, 300, 0, True)
    whole = c._result(*args)
    monkeypatch.setattr(c, "_RANK_ELEMENTS", N * 7)
    parts = c._result(*args)
    torch.testing.assert_close(parts.auroc, whole.auroc)
    torch.testing.assert_close(parts.p_value, whole.p_value)
    flat = values.reshape(N, -1)
    for s in range(3):
        ref = pair_auroc(flat[lab == s], flat[lab != s]).reshape(nL, d)
        torch.testing.assert_close(whole.auroc[s].double(), ref, atol=1e-6, rtol=0)
        a, p = c.auroc_and_pvalues(flat, lab == s, 300, perms=c.permutation_indices(N, 300), max_elements=1000)
        torch.testing.assert_close(p.reshape(nL, d), whole.p_value[s])


def test_table_top_plot_and_html(planted):
    family, model, a, b = planted
    res = contrastive_neurons(model, {"<A&>": a[:5], "B": b[:5]}, layers=[1], permutations=20, progress=False)
    df = res.to_pandas()
    d = model.d_mlp
    assert len(df) == 2 * d and set(df["layer"]) == {1}
    assert {"set", "site", "layer", "unit", "p_act[<A&>]", "p_act[B]", "diff", "auroc", "p_value",
            "lape_entropy"} <= set(df.columns)
    assert df["site"].iloc[0] == "neurons.1"
    t = res.top(7, by="p_value")
    assert len(t) == 7 and t["p_value"].is_monotonic_increasing
    t = res.top(4, set="B")
    assert list(t["set"]) == ["B"] * 4 and t["auroc"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="by must be one of"):
        res.top(by="nope")
    with pytest.raises(KeyError, match="no set 'C'"):
        res.top(set="C")
    fig = res.plot()
    assert len(fig.axes) >= 2
    h = res._repr_html_()
    assert "&lt;A&amp;&gt;" in h and "<A&>" not in h
    assert html.escape("<A&>") in h


def test_no_permutations_gives_nan_pvalues(tiny):
    model = tiny("llama")
    res = contrastive_neurons(model, {"a": ["the cat sat on the mat"], "b": ["a dog ran in a park"]},
                              permutations=0, progress=False)
    assert torch.isnan(res.p_value).all()
    assert ((res.auroc == 0) | (res.auroc == 1)).all()  # one text per set


def test_remote_local_gives_the_same_result(tiny):
    model, remote = tiny("llama"), tiny("llama", remote="local")
    sets = {"x": ["The cat sat on the mat.", "A class is defined here.", "Return the value"],
            "y": ["for i in range(10): print(i)", "import os, sys", "x = [1, 2, 3]"]}
    r1 = contrastive_neurons(model, sets, permutations=100, batch_size=2, progress=False)
    r2 = contrastive_neurons(remote, sets, permutations=100, batch_size=2, progress=False)
    r3 = contrastive_neurons(model, sets, permutations=100, batch_size=4, progress=False, remote="local")
    for r in (r2, r3):
        torch.testing.assert_close(r.values, r1.values)
        torch.testing.assert_close(r.p_act, r1.p_act)
        torch.testing.assert_close(r.auroc, r1.auroc)
        torch.testing.assert_close(r.p_value, r1.p_value)


def test_bad_inputs(tiny):
    model = tiny("llama")
    ok = ["some text here", "more text here"]
    with pytest.raises(ValueError, match="at least 2 sets"):
        contrastive_neurons(model, {"a": ok}, progress=False)
    with pytest.raises(ValueError, match="set 'b' is empty"):
        contrastive_neurons(model, {"a": ok, "b": []}, progress=False)
    with pytest.raises(ValueError, match="text 1 of set 'b' is empty"):
        contrastive_neurons(model, {"a": ok, "b": ["fine", ""]}, progress=False)
    with pytest.raises(IndexError, match="layer 2 is out of range"):
        contrastive_neurons(model, {"a": ok, "b": ok}, layers=[0, 2], progress=False)
    with pytest.raises(TypeError, match="single string"):
        contrastive_neurons(model, {"a": ok, "b": "not a list"}, progress=False)
    with pytest.raises(TypeError, match="dict"):
        contrastive_neurons(model, [ok, ok], progress=False)
    with pytest.raises(ValueError, match="reduce must be"):
        contrastive_neurons(model, {"a": ok, "b": ok}, reduce="median", progress=False)
    with pytest.raises(ValueError, match="permutations"):
        contrastive_neurons(model, {"a": ok, "b": ok}, permutations=-1, progress=False)
    one = next(t for t in ("a", "x", "the") if len(model.to_str_tokens(t)) == 1)
    with pytest.raises(ValueError, match="text 0 of set 'b' has 1 token"):
        contrastive_neurons(model, {"a": ok, "b": [one]}, progress=False)
    contrastive_neurons(model, {"a": ok, "b": [one]}, skip_first=False, permutations=0, progress=False)


def test_one_statistics_module_shared_by_contrastive_hypotheses_and_autointerp():
    """stats.auroc (pairs) equals the rank AUROC contrastive uses; the old names are the same objects."""
    import math

    import numpy as np

    import workbench.neurons.contrastive as c
    from workbench.neurons import stats

    g = torch.Generator().manual_seed(4)
    values = torch.randint(0, 5, (23, 7), generator=g).float()  # many ties
    in_set = torch.arange(23) % 3 == 0
    a, _ = stats.auroc_and_pvalues(values, in_set, permutations=0)
    for u in range(7):
        col = values[:, u].numpy()
        assert abs(stats.auroc(col[in_set.numpy()], col[~in_set.numpy()]) - float(a[u])) < 1e-6
    assert math.isnan(stats.auroc(np.zeros(0), np.ones(3)))
    x = np.array([1.0, 2.0, 4.0, 3.0])
    assert abs(stats.pearson(x, 2 * x + 1) - 1.0) < 1e-12 and math.isnan(stats.pearson(x, np.ones(4)))
    assert math.isnan(stats.pearson(x[:1], x[:1]))
    assert c.auroc_and_pvalues is stats.auroc_and_pvalues and c.average_ranks is stats.average_ranks
    assert c.permutation_indices is stats.permutation_indices
    from workbench.neurons import hypotheses

    assert hypotheses.wilson_interval is stats.wilson_interval


def test_streaming_helpers_are_public():
    from workbench.neurons.streaming import length_batches, valid_mask

    assert length_batches([5, 2, 9, 2], 2) == [[1, 3], [0, 2]]
    assert valid_mask([3, 1], skip_first=True).tolist() == [[False, True, True], [False, False, False]]
    with pytest.raises(ValueError, match="batch_size"):
        length_batches([1], 0)
