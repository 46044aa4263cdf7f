"""Sparse probing on tiny models: a planted token detector must be found with k = 1; the ranking
statistic and the gathered features against full ``neurons.L`` captures; the LBFGS logistic
probe against Newton's method."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from test_contrastive import TOKEN, UNIT, plant, sentences

from workbench.neurons.probing import ProbeResult, fit_logistic, logistic_loss, sparse_probe
from workbench.testing import tiny_model

matplotlib.use("Agg")


def is_token(tokens: list[str], i: int) -> bool:
    return tokens[i] == TOKEN


@pytest.fixture(scope="module")
def planted():
    model = tiny_model("llama")
    tid = model.tokenizer(TOKEN, add_special_tokens=False)["input_ids"][0]
    plant(model, "llama", tid)
    return model, sentences()[:40]


def full_acts(model, texts: list[str]) -> list[torch.Tensor]:
    """Per text ``[n_layers, seq, d_mlp]``, run alone."""
    out = []
    for t in texts:
        res = model.run(t, capture=[f"neurons.{L}" for L in range(model.n_layers)], logits=None)
        out.append(torch.stack([res.activations[f"neurons.{L}"][0] for L in range(model.n_layers)]).double())
    return out


def test_planted_neuron_is_found_with_k1(planted):
    model, texts = planted
    res = sparse_probe(model, texts, is_token, ks=(1, 2, 4), progress=False)
    assert isinstance(res, ProbeResult)
    assert res.selected[1] == [(0, UNIT)]
    assert res.metrics[1]["test_f1"] >= 0.95
    assert res.selected[4][:1] == [(0, UNIT)] and len(res.selected[4]) == 4
    # split by text: disjoint, complete, both sides have positives
    assert not set(res.train_texts) & set(res.test_texts)
    assert sorted(res.train_texts + res.test_texts) == list(range(len(texts)))
    assert res.n_test["pos"] > 0 and res.n_train["pos"] > 0
    # example counts by hand (the first token of each text is left out)
    toks = [model.to_str_tokens(t) for t in texts]
    pos = sum(sum(is_token(tk, i) for i in range(1, len(tk))) for tk in toks)
    assert res.n_train["pos"] + res.n_test["pos"] == pos
    assert res.n_train["neg"] + res.n_test["neg"] == sum(len(tk) - 1 for tk in toks) - pos


@pytest.mark.parametrize("method", ["mean_diff", "normalized"])
def test_ranking_statistic_matches_brute_force(planted, method):
    model, texts = planted
    res = sparse_probe(model, texts, is_token, ks=(3,), method=method, progress=False)
    train = [texts[i] for i in res.train_texts]
    acts = full_acts(model, train)
    pos, neg = [], []
    for t, a in zip(train, acts, strict=True):
        tk = model.to_str_tokens(t)
        for i in range(1, len(tk)):
            (pos if is_token(tk, i) else neg).append(a[:, i])
    pos, neg = torch.stack(pos), torch.stack(neg)  # [n, nL, d]
    mp, mn = pos.mean(0), neg.mean(0)
    torch.testing.assert_close(res.mean_pos, mp)
    torch.testing.assert_close(res.mean_neg, mn)
    torch.testing.assert_close(res.var_pos, pos.var(0, unbiased=False), rtol=1e-5, atol=1e-6)
    ref = mp - mn
    if method == "normalized":
        ref = ref / (0.5 * (pos.var(0, unbiased=False) + neg.var(0, unbiased=False))).sqrt()
    torch.testing.assert_close(res.score, ref, rtol=1e-5, atol=1e-6)
    best = ref.abs().reshape(-1).topk(3).indices.tolist()
    assert res.selected[3] == [divmod(f, model.d_mlp) for f in best]
    rk = res.ranking(3)
    assert list(zip(rk["layer"], rk["unit"], strict=True)) == res.selected[3]
    # pass 2 gathered the selected neurons' activations: the probe's standardization statistics
    allx = torch.cat([pos, neg])
    sel = torch.stack([allx[:, L, u] for L, u in res.selected[3]], 1)
    torch.testing.assert_close(res.probes[3]["mean"], sel.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.probes[3]["std"], sel.std(0, unbiased=False), rtol=1e-5, atol=1e-6)


def test_text_level_features_and_predictions_match_brute_force(planted):
    model, texts = planted
    labels = [TOKEN in model.to_str_tokens(t)[1:] for t in texts]
    res = sparse_probe(model, texts, labels, ks=(1, 3), level="text", progress=False)
    assert res.selected[1] == [(0, UNIT)]
    assert res.metrics[1]["test_f1"] >= 0.95
    tr = full_acts(model, [texts[i] for i in res.train_texts])
    ftr = torch.stack([a[:, 1:].mean(1) for a in tr])
    Xtr = torch.stack([ftr[:, L, u] for L, u in res.selected[3]], 1)
    torch.testing.assert_close(res.probes[3]["mean"], Xtr.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.probes[3]["std"], Xtr.std(0, unbiased=False), rtol=1e-5, atol=1e-6)
    # Recompute held-out predictions from brute-force text means and the fitted probe.
    acts = full_acts(model, [texts[i] for i in res.test_texts])
    feats = torch.stack([a[:, 1:].mean(1) for a in acts])  # [n, nL, d]
    y = torch.tensor([labels[i] for i in res.test_texts])
    k = 3
    X = torch.stack([feats[:, L, u] for L, u in res.selected[k]], 1)
    p = res.probes[k]
    pred = ((X - p["mean"]) / p["std"]) @ p["weight"] + p["bias"] > 0
    acc = float((pred == y).double().mean())
    assert res.metrics[k]["test_accuracy"] == pytest.approx(acc)
    tp = int((pred & y).sum())
    prec = tp / max(1, int(pred.sum()))
    rec = tp / int(y.sum())
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    assert res.metrics[k]["test_f1"] == pytest.approx(f1)


def test_label_lists_equal_the_callable_and_none_leaves_tokens_out(planted):
    model, texts = planted
    texts = texts[:24]
    lists = [[is_token(tk, i) for i in range(len(tk))] for tk in map(model.to_str_tokens, texts)]
    a = sparse_probe(model, texts, is_token, ks=(1, 2), progress=False)
    b = sparse_probe(model, texts, lists, ks=(1, 2), progress=False)
    assert a.selected == b.selected and a.metrics == b.metrics
    torch.testing.assert_close(a.score, b.score)
    # None: the token is not an example
    lists[0][2] = None
    c = sparse_probe(model, texts, lists, ks=(1,), progress=False)
    assert c.n_train["neg"] + c.n_test["neg"] == a.n_train["neg"] + a.n_test["neg"] - (not is_token(model.to_str_tokens(texts[0]), 2))


def test_logistic_probe_matches_newton():
    g = torch.Generator().manual_seed(0)
    n, k, l2 = 300, 4, 1e-2
    X = torch.randn(n, k, generator=g, dtype=torch.float64)
    logits = X @ torch.tensor([1.5, -2.0, 0.5, 0.0], dtype=torch.float64) + 0.3
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(logits)).double()
    w, b = fit_logistic(X, y, l2=l2)
    # Newton's method on the same objective (a hand-written reference)
    Z = torch.cat([X, torch.ones(n, 1, dtype=torch.float64)], 1)
    theta = torch.zeros(k + 1, dtype=torch.float64)
    reg = torch.diag(torch.tensor([l2] * k + [0.0], dtype=torch.float64))
    for _ in range(50):
        p = torch.sigmoid(Z @ theta)
        grad = Z.T @ (p - y) / n + reg @ theta
        H = Z.T @ (Z * (p * (1 - p))[:, None]) / n + reg
        theta = theta - torch.linalg.solve(H, grad)
    torch.testing.assert_close(w, theta[:k], atol=1e-6, rtol=0)
    torch.testing.assert_close(b, theta[k], atol=1e-6, rtol=0)
    wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
    logistic_loss(wg, bg, X, y, l2).backward()
    assert float(wg.grad.abs().max()) < 1e-7 and abs(float(bg.grad)) < 1e-7


def test_logistic_probe_on_separable_data_is_finite_and_separates():
    X = torch.tensor([[-2.0], [-1.0], [-0.5], [0.5], [1.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.float64)
    w, b = fit_logistic(X, y, l2=1e-2)
    assert torch.isfinite(w).all() and float(w[0]) > 0
    assert ((X @ w + b > 0).double() == y).all()
    # symmetric data: the optimum has b = 0
    assert abs(float(b)) < 1e-6


def test_table_plot_and_html(planted):
    model, texts = planted
    res = sparse_probe(model, texts[:20], is_token, ks=(1, 2), progress=False)
    df = res.to_pandas()
    assert list(df["k"]) == [1, 2]
    assert {"train_f1", "test_f1", "train_accuracy", "test_accuracy", "train_precision", "test_precision",
            "train_recall", "test_recall"} <= set(df.columns)
    assert df.loc[0, "neurons"] == [(0, UNIT)]
    ax = res.plot()
    assert len(ax.get_lines()) == 2
    h = res._repr_html_()
    assert "ProbeResult" in h and "0.5" in h


def test_remote_local_gives_the_same_probe(tiny):
    model, remote = tiny("llama"), tiny("llama", remote="local")
    texts = sentences()[:12]
    a = sparse_probe(model, texts, is_token, ks=(1, 2), progress=False)
    b = sparse_probe(remote, texts, is_token, ks=(1, 2), progress=False)
    assert a.selected == b.selected
    torch.testing.assert_close(a.score, b.score)
    for k in a.ks:
        assert a.metrics[k] == pytest.approx(b.metrics[k])


def test_bad_inputs(tiny):
    model = tiny("llama")
    texts = sentences()[:10]
    with pytest.raises(ValueError, match="labels has 3 entries but there are 10 texts"):
        sparse_probe(model, texts, [1, 0, 1], level="text", progress=False)
    with pytest.raises(ValueError, match="labels has 3 entries but there are 10 texts"):
        sparse_probe(model, texts, [[0], [1], [0]], progress=False)
    n0 = len(model.to_str_tokens(texts[0]))
    with pytest.raises(ValueError, match=f"labels\\[0\\] has 2 labels but text 0 has {n0} tokens"):
        sparse_probe(model, texts, [[0, 1]] * 10, progress=False)
    with pytest.raises(ValueError, match="single class"):
        sparse_probe(model, texts, [1] * 10, level="text", progress=False)
    with pytest.raises(ValueError, match="single class"):
        sparse_probe(model, texts, lambda toks, i: False, progress=False)
    with pytest.raises(ValueError, match="no positive example in the held-out split"):
        sparse_probe(model, texts, [1] + [0] * 9, level="text", progress=False)
    with pytest.raises(ValueError, match="a label is 0/1"):
        sparse_probe(model, texts, [2] * 10, level="text", progress=False)
    with pytest.raises(ValueError, match="level must be"):
        sparse_probe(model, texts, is_token, level="word", progress=False)
    with pytest.raises(ValueError, match="method must be"):
        sparse_probe(model, texts, is_token, method="svm", progress=False)
    with pytest.raises(ValueError, match="more than the 96 neurons"):
        sparse_probe(model, texts, is_token, ks=(1, 97), layers=[1], progress=False)
    with pytest.raises(ValueError, match="ks are positive"):
        sparse_probe(model, texts, is_token, ks=(0,), progress=False)
    with pytest.raises(IndexError, match="layer 5 is out of range"):
        sparse_probe(model, texts, is_token, layers=[5], progress=False)
    with pytest.raises(ValueError, match="text 1 is empty"):
        sparse_probe(model, ["abc def", ""], is_token, progress=False)
    with pytest.raises(ValueError, match="test_size"):
        sparse_probe(model, texts, is_token, test_size=1.0, progress=False)
