"""Executable hypotheses, scored exactly over every token of a scan, against brute force on a tiny
model: a planted token detector is found with precision = recall = 1, and every count, score and
counterexample equals a plain loop over full `neurons.0` captures."""

from __future__ import annotations

import html
import math

import matplotlib
import numpy as np
import pytest
from planted import SITE, TOKEN, UNIT, plant

import workbench as wb
from workbench.neurons import hypotheses as H
from workbench.neurons.hypotheses import Hypothesis, wilson_interval
from workbench.testing import tiny_model

matplotlib.use("Agg")



@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    model = tiny_model("llama")
    [tid] = model.tokenizer(TOKEN, add_special_tokens=False)["input_ids"]
    plant(model, tid)
    store = wb.scan(model, wb.default_corpus(max_passages=12), tmp_path_factory.mktemp("hyp") / "scan", sites=[SITE],
                    k=8, window=24, batch_size=8, sample=16, progress=False)
    return model, store, tid


@pytest.fixture(scope="module")
def brute(planted):
    """Per window: (token texts, the unit's activations) from a full capture of that window alone."""
    model, store, _ = planted
    out = {}
    for w in sorted(store.window_index()):
        ids = store.window_tokens(w)
        res = model.run(model.batch_from_ids([ids]), capture=[SITE], top_k=0, logits=None)
        out[w] = ([model.tokenizer.decode([i]) for i in ids], res.activations[SITE][0, :, UNIT].double().numpy())
    return out


def score_by_hand(brute, fn, threshold, cutoff=0.0):
    tp = fp = fn_ = tn = 0
    a_all, p_all, fps, fns = [], [], [], []
    for w, (toks, acts) in brute.items():
        for i in range(1, len(toks)):  # position 0 is skipped, as the scan does
            v = float(fn(toks, i))
            act, pred = acts[i] > threshold, v > cutoff
            tp += act and pred
            fp += (not act) and pred
            fn_ += act and not pred
            tn += (not act) and not pred
            a_all.append(acts[i])
            p_all.append(v)
            if pred and not act:
                fps.append((acts[i], w, i))
            if act and not pred:
                fns.append((-acts[i], w, i))
    return tp, fp, fn_, tn, np.array(a_all), np.array(p_all), sorted(fps), sorted(fns)


def test_planted_rule_scores_precision_and_recall_one(planted, brute):
    _, store, tid = planted
    r = H.test_hypothesis(store, SITE, UNIT, Hypothesis(lambda toks, i: toks[i] == TOKEN, "is ' the'"), progress=False)
    assert r.precision == 1.0 and r.recall == 1.0 and r.f1 == 1.0
    assert r.false_positives == [] and r.false_negatives == []
    n_tok = sum(len(t) - 1 for t, _ in brute.values())
    n_the = sum(t[1:].count(TOKEN) for t, _ in brute.values())
    assert r.n_tokens == n_tok == store.n_tokens and r.tp == n_the > 20 and r.tn == n_tok - n_the
    assert r.threshold == pytest.approx(0.5 * store.unit_stats(SITE, UNIT)["max"])
    assert r.pearson > 0.95
    assert r.precision_ci[0] > 0.85 and r.recall_ci[1] == pytest.approx(1.0)
    # the same rule from the helper
    assert H.test_hypothesis(store, SITE, UNIT, Hypothesis.token_in(TOKEN), progress=False).f1 == 1.0


@pytest.mark.parametrize("threshold", [None, "active", 3.0])
def test_counts_pearson_and_counterexamples_equal_brute_force(planted, brute, threshold):
    """A wrong hypothesis (tokens after a space-led token of 1-2 letters), and a graded one."""
    _, store, _ = planted

    def rule(toks, i):
        return toks[i - 1].startswith(" ") and len(toks[i - 1].strip()) <= 2

    thr = {None: 0.5 * store.unit_stats(SITE, UNIT)["max"], "active": 0.0, 3.0: 3.0}[threshold]
    r = H.test_hypothesis(store, SITE, UNIT, Hypothesis(rule, "after a short word"), threshold, max_counterexamples=7,
                          context=(3, 2), progress=False)
    tp, fp, fn, tn, a, p, fps, fns = score_by_hand(brute, rule, thr)
    assert (r.tp, r.fp, r.fn, r.tn) == (tp, fp, fn, tn)
    assert r.precision == pytest.approx(tp / (tp + fp)) and r.recall == pytest.approx(tp / (tp + fn) if tp + fn else math.nan,
                                                                                     nan_ok=True)
    assert r.pearson == pytest.approx(np.corrcoef(p, a)[0, 1], abs=1e-6)
    assert [(c.window, c.position) for c in r.false_positives] == [(w, i) for _, w, i in fps[:7]]
    assert [(c.window, c.position) for c in r.false_negatives] == [(w, i) for _, w, i in fns[:7]]
    for c in r.counterexamples:
        toks, acts = brute[c.window]
        assert c.token == toks[c.position] and c.activation == pytest.approx(acts[c.position], rel=1e-4, abs=1e-4)
        assert c.context == "".join(toks[max(0, c.position - 3) : c.position]) + f"[[{toks[c.position]}]]" + \
            "".join(toks[c.position + 1 : c.position + 3])
    # a graded prediction: Pearson on the values, classification above the cutoff
    graded = Hypothesis(lambda toks, i: len(toks[i]) / 4.0, "length", cutoff=0.6)
    g = H.test_hypothesis(store, SITE, UNIT, graded, threshold, progress=False)
    tp, fp, fn, tn, a, p, _, _ = score_by_hand(brute, graded.fn, thr, cutoff=0.6)
    assert (g.tp, g.fp, g.fn, g.tn) == (tp, fp, fn, tn)
    assert g.pearson == pytest.approx(np.corrcoef(p, a)[0, 1], abs=1e-6)


def test_unit_activations_equal_the_scan_and_brute_force(planted, brute):
    _, store, _ = planted
    acts = H.unit_activations(store, SITE, UNIT, batch_size=5, progress=False)
    assert sorted(acts) == sorted(brute)
    for w, a in acts.items():
        np.testing.assert_allclose(a, brute[w][1], rtol=1e-4, atol=1e-4)
    for v, w, p in store.top(SITE, UNIT):  # the rerun agrees with the scan's maxima
        assert acts[w][p] == pytest.approx(v, rel=1e-4) and acts[w][1:].max() == pytest.approx(v, rel=1e-4)
    sub = H.unit_activations(store, SITE, UNIT, [3, 1], progress=False)
    assert list(sub) == [3, 1]


def test_window_subsets_regex_and_compare(planted, brute):
    _, store, _ = planted
    r = H.test_hypothesis(store, SITE, UNIT, Hypothesis.regex(r"^ the$"), windows=[0, 1, 2, 3], progress=False)
    assert r.n_windows == 4 and r.n_tokens == sum(len(brute[w][0]) - 1 for w in range(4))
    prev = Hypothesis.regex(r"^ of$", offset=-1)
    assert prev.fn([" of", " the"], 1) and not prev.fn([" the"], 0)
    df = H.compare_hypotheses(store, SITE, UNIT, [prev, Hypothesis.token_in(TOKEN), Hypothesis.token_in(" the", strip=True)],
                              progress=False)
    assert list(df["hypothesis"])[0].startswith("token in") and df.loc[0, "f1"] == 1.0
    assert df["n_tokens"].nunique() == 1


def test_result_table_html_and_plot(planted):
    _, store, _ = planted
    r = H.test_hypothesis(store, SITE, UNIT, Hypothesis(lambda t, i: t[i] in (" the", " a"), "<the> & a"), progress=False)
    df = r.to_pandas()
    assert list(df.columns) == ["kind", "window", "position", "token", "activation", "prediction", "context"]
    assert set(df["kind"]) <= {"false positive", "false negative"} and len(df) == len(r.counterexamples) > 0
    s = r.summary()
    assert s["fp"] == r.fp and s["precision"] == r.precision and s["hypothesis"] == "<the> & a"
    page = r._repr_html_()
    assert html.escape("<the> & a") in page and "<the>" not in page
    fig = r.plot()
    assert fig.axes and fig.axes[0].get_xlabel() == "activation"
    assert "precision=" in repr(r)


def test_wilson_interval_by_formula():
    lo, hi = wilson_interval(8, 10)
    z = 1.959964
    p, n = 0.8, 10
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (lo, hi) == pytest.approx((c - h, c + h))
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_bad_inputs(planted):
    model, store, _ = planted
    h = Hypothesis.token_in(TOKEN)
    with pytest.raises(IndexError, match="out of range"):
        H.test_hypothesis(store, SITE, 96, h, progress=False)
    with pytest.raises(KeyError, match="no 'neurons.4'"):
        H.test_hypothesis(store, "neurons.4", 0, h, progress=False)
    with pytest.raises(ValueError, match="threshold must be"):
        H.test_hypothesis(store, SITE, UNIT, h, "high", progress=False)
    with pytest.raises(TypeError, match="must return a bool"):
        H.test_hypothesis(store, SITE, UNIT, Hypothesis(lambda t, i: "yes"), progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        H.test_hypothesis(store, SITE, UNIT, Hypothesis(lambda t, i: math.nan), progress=False)
    with pytest.raises(TypeError, match="callable"):
        Hypothesis("tokens[i] == ' the'")
    with pytest.raises(ValueError, match="windows must be"):
        H.unit_activations(store, SITE, UNIT, "some", progress=False)
    with pytest.raises(KeyError, match="window 99999"):
        H.test_hypothesis(store, SITE, UNIT, h, windows=[99999], progress=False)
    mx = store.unit_stats(SITE, 3)["max"]
    if mx <= 0:  # pragma: no cover - depends on the random init
        with pytest.raises(ValueError, match="never has a positive activation"):
            H.test_hypothesis(store, SITE, 3, h, progress=False)
    bare = wb.neurons.ScanStore.open(store.path)  # no model
    with pytest.raises(RuntimeError, match="rerunning the windows"):
        H.test_hypothesis(bare, SITE, UNIT, h, progress=False)
    assert getattr(H.test_hypothesis, "__test__", True) is False  # pytest does not collect it
