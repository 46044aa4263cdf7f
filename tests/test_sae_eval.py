"""evaluate_dictionary vs a brute-force computation from full captures and logits, window by window."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import matplotlib
import pytest
import torch
from test_features import make, make_nmf

import workbench as wb
from workbench.core.activations import token_windows
from workbench.dictionaries.dictionary import Dictionary, DictionaryError
from workbench.dictionaries.evaluate import DictionaryEval, evaluate_dictionary
from workbench.dictionaries.features import Splice, register_dictionary

matplotlib.use("Agg")


def windows(model: wb.Model, corpus, context: int, max_tokens: int | None, skip: int) -> list[list[int]]:
    """The windows the evaluation reads: corpus windows until max_tokens counted tokens, the last one cut."""
    out, count = [], 0
    for w in token_windows(model.tokenizer, corpus, context):
        if max_tokens is not None:
            w = w[: skip + max_tokens - count]
        if len(w) > skip:
            out.append(w)
            count += len(w) - skip
        if max_tokens is not None and count >= max_tokens:
            break
    return out


def brute_force(model: wb.Model, d: Dictionary, wins: list[list[int]], skip: int, dense: float) -> dict:
    """Every metric from full captures and all-position logits, one window per run."""
    write = d.out_site or d.site
    ys, yh, acts, lc, ls, lz, tg = [], [], [], [], [], [], []
    for w in wins:
        batch = model.batch_from_ids([w])
        P = None if skip == 0 else list(range(skip, len(w)))
        clean = model.run(batch, capture=[d.site, write], logits="all")
        spliced = model.run(batch, [Splice(d, positions=P)], logits="all")
        zeroed = model.run(batch, [wb.Edit(write, None, "zero", positions=P)], logits="all")
        x, y = clean[d.site][0, skip:], clean[write][0, skip:]
        if x.dim() == 3:
            x, y = x.flatten(-2), y.flatten(-2)
        r, a = d.forward(x)
        ys.append(y.double())
        yh.append(r.double())
        acts.append(a)
        for store, res in ((lc, clean), (ls, spliced), (lz, zeroed)):
            store.append(torch.log_softmax(res.logits[0, skip:len(w) - 1].double(), -1))
        tg.append(torch.tensor(w[skip + 1:]))
    y, y_hat, a = torch.cat(ys), torch.cat(yh), torch.cat(acts)
    lc, ls, lz, tg = torch.cat(lc), torch.cat(ls), torch.cat(lz), torch.cat(tg)[:, None]
    fvu = float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    freq = (a > 0).double().mean(0)
    ce = [float(-lp.gather(-1, tg).mean()) for lp in (lc, ls, lz)]
    return dict(n_tokens=len(y), n_predictions=len(tg), n_windows=len(wins), fvu=fvu, explained_variance=1 - fvu,
                mse=float(((y - y_hat) ** 2).mean()), l0=float((a > 0).sum(1).double().mean()),
                dead_fraction=float((freq == 0).double().mean()), dense_fraction=float((freq > dense).double().mean()),
                ce_clean=ce[0], ce_splice=ce[1], ce_zero=ce[2], delta_ce=ce[1] - ce[0],
                loss_recovered=(ce[2] - ce[1]) / (ce[2] - ce[0]), kl=float((lc.exp() * (lc - ls)).sum(-1).mean()),
                frequencies=freq)


def with_dead_and_dense(model: wb.Model) -> Dictionary:
    d = make(model, "relu", "resid_post.1", normalize="layer_norm", b_pre=True, seed=21)
    b = d.b_enc.clone()
    b[:4], b[4:8] = -1e3, 5.0  # never / almost always active
    return Dictionary(**{**{k: getattr(d, k) for k in ("W_enc", "W_dec", "b_dec", "architecture", "site", "b_pre",
                                                        "normalize")}, "b_enc": b})


CASES = {
    "topk": ("llama", lambda m: make(m, "topk", "resid_post.0", b_pre=True), 1),
    "transcoder": ("llama", lambda m: make(m, "relu", "mlp_in.1", "mlp_out.1", b_pre=True, skip=True), 1),
    "nmf_gpt2_skip0": ("gpt2", lambda m: make_nmf(m), 0),
    "dead_and_dense": ("llama", with_dead_and_dense, 1),
    "z_gpt2": ("gpt2", lambda m: make(m, "gated", "z.1"), 2),
}


def check(ev: DictionaryEval, want: dict, rel: float = 1e-5) -> None:
    for k in ("n_tokens", "n_predictions", "n_windows"):
        assert getattr(ev, k) == want[k], k
    for k, v in want.items():
        if k == "frequencies":
            torch.testing.assert_close(ev.frequencies.double(), v, rtol=1e-6, atol=1e-9)
        elif k not in ("n_tokens", "n_predictions", "n_windows"):
            assert getattr(ev, k) == pytest.approx(v, rel=rel, abs=1e-7), k


@pytest.mark.parametrize("case", list(CASES))
def test_metrics_equal_brute_force(tiny, case):
    family, build, skip = CASES[case]
    model = tiny(family)
    d = build(model)
    ev = evaluate_dictionary(model, d, max_tokens=250, context=24, batch_size=4, progress=False, skip_first=skip)
    wins = windows(model, None, 24, 250, skip)
    assert len({len(w) for w in wins}) == 2, "the last window is cut to fit max_tokens"
    want = brute_force(model, d, wins, skip, 0.1)
    assert ev.n_tokens == 250
    check(ev, want)
    assert 0 < ev.l0 < d.d_sae and ev.ce_zero != ev.ce_clean
    if case == "dead_and_dense":
        assert ev.dead_fraction == 4 / d.d_sae and ev.dense_fraction >= 4 / d.d_sae and ev.n_dead == 4
    if case == "topk":
        assert ev.l0 == pytest.approx(min(d.k, ev.l0)) and ev.l0 <= d.k


def test_whole_corpus_with_a_short_last_window_and_other_threshold(tiny):
    model = tiny("llama")
    d = make(model, "jumprelu", "resid_pre.1", seed=4)
    corpus = ["The cat sat on the mat. " * 6, "A dog is on a mat, and Paris is the capital of France."]
    ev = evaluate_dictionary(model, d, corpus, max_tokens=None, context=20, batch_size=3, progress=False,
                             dense_threshold=0.5)
    wins = windows(model, corpus, 20, None, 1)
    assert len(wins[-1]) < 20 and ev.n_windows == len(wins)
    check(ev, brute_force(model, d, wins, 1, 0.5))


def test_remote_local_equals_local(tiny):
    local, remote = tiny("llama"), tiny("llama", remote="local")
    d = make(local, "relu", "mlp_in.0", "mlp_out.0", seed=8)
    a = evaluate_dictionary(local, d, max_tokens=120, context=16, batch_size=4, progress=False)
    b = evaluate_dictionary(remote, d, max_tokens=120, context=16, batch_size=4, progress=False)
    for k in DictionaryEval.METRICS:
        assert getattr(b, k) == pytest.approx(getattr(a, k), rel=1e-6, abs=1e-9), k
    assert torch.equal(a.frequencies, b.frequencies)


def test_result_object(tiny):
    model = tiny("llama")
    d = make(model, "topk", "resid_post.0", seed=9)
    register_dictionary(d, "<b>mine</b>")
    ev = evaluate_dictionary(model, d, max_tokens=60, context=16, progress=False)
    assert ev.dictionary == "<b>mine</b>"
    data = json.loads(json.dumps(ev.to_dict()))
    assert data["fvu"] == pytest.approx(ev.fvu) and data["n_dead"] == ev.n_dead and data["site"] == "resid_post.0"
    assert set(DictionaryEval.METRICS) <= set(data)
    df = ev.to_pandas()
    assert list(df.columns) == ["metric", "value", "meaning"]
    got = dict(zip(df.metric, df.value, strict=True))
    assert all(got[k] == getattr(ev, k) for k in DictionaryEval.METRICS)
    page = ev._repr_html_()
    assert "&lt;b&gt;mine&lt;/b&gt;" in page and "<b>mine</b>" not in page
    assert ev.explained_variance == pytest.approx(1 - ev.fvu)
    ax = ev.plot()
    assert ax.get_xlabel() == "log10 firing frequency"
    assert "FVU" in repr(ev)


def test_metrics_mean_what_they_say(tiny):
    """A perfect dictionary (identity-like) recovers all the loss; the splice of a zero decoder is the ablation."""
    model = tiny("llama")
    n = model.d_model
    eye = torch.eye(n)
    perfect = Dictionary(W_enc=torch.cat([eye, -eye], 1), b_enc=torch.zeros(2 * n), W_dec=torch.cat([eye, -eye], 0),
                         b_dec=torch.zeros(n), architecture="relu", site="resid_post.0")
    ev = evaluate_dictionary(model, perfect, max_tokens=100, context=16, progress=False)
    assert ev.fvu == pytest.approx(0, abs=1e-10) and ev.delta_ce == pytest.approx(0, abs=1e-5)
    assert ev.loss_recovered == pytest.approx(1, abs=1e-4) and ev.kl == pytest.approx(0, abs=1e-6)
    assert ev.l0 == pytest.approx(n, abs=1)  # each coordinate is +x or -x: one of the pair is active
    null = Dictionary(W_enc=torch.randn(n, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, n), b_dec=torch.zeros(n),
                      architecture="relu", site="resid_post.0")
    ev0 = evaluate_dictionary(model, null, max_tokens=100, context=16, progress=False)
    assert ev0.fvu >= 1 and ev0.ce_splice == pytest.approx(ev0.ce_zero, rel=1e-6)
    assert ev0.loss_recovered == pytest.approx(0, abs=1e-5)


@contextmanager
def no_forward(model: wb.Model):
    calls = []
    h = model.hf.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        yield
    finally:
        h.remove()
        assert calls == [], "the error must come before the model runs"


def test_errors_before_running(tiny):
    model = tiny("llama")
    d = make(model)
    bad = Dictionary(W_enc=torch.zeros(40, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, 40), b_dec=torch.zeros(40),
                     architecture="relu", site="resid_post.0")
    with no_forward(model):
        with pytest.raises(DictionaryError, match="width 40"):
            evaluate_dictionary(model, bad, progress=False)
        with pytest.raises(TypeError, match="Dictionary"):
            evaluate_dictionary(model, "resid_post.0", progress=False)
        for kw, words in [({"batch_size": 0}, "batch_size"), ({"max_tokens": 0}, "max_tokens"),
                          ({"skip_first": 63}, "skip_first"), ({"dense_threshold": 1.5}, "dense_threshold")]:
            with pytest.raises(ValueError, match=words):
                evaluate_dictionary(model, d, progress=False, **kw)
        with pytest.raises(ValueError, match="gave no tokens"):
            evaluate_dictionary(model, d, ["", ""], progress=False)
    assert math.isfinite(evaluate_dictionary(model, d, max_tokens=10, context=8, progress=False).fvu)
