"""Explanations and their scores: prompt formats and parsers against literal fixtures, and every
scorer's arithmetic against a hand computation on a tiny model with a planted neuron, driven by a
deterministic fake chat client that answers from the true labels with a known error pattern."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from planted import SITE, TOKEN, UNIT, plant

import workbench as wb
from workbench import autointerp as A
from workbench.autointerp import ExplanationStore, ExplanationStoreError, Record
from workbench.autointerp import prompts as P
from workbench.autointerp.store import EXPLANATIONS_FORMAT
from workbench.llm import REASK, ChatClient, ChatResponse, LLMError
from workbench.testing import tiny_model

EOL = "\u0f17"


# -- a planted neuron and its scan ----------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    model = tiny_model("llama")
    tid = model.tokenizer(TOKEN, add_special_tokens=False)["input_ids"]
    assert len(tid) == 1
    plant(model, tid[0])
    store = wb.scan(model, wb.default_corpus(max_passages=12), tmp_path_factory.mktemp("ai") / "scan",
                    sites=[SITE], k=8, window=24, batch_size=8, sample=32, progress=False)
    return model, store, tid[0]


@pytest.fixture(scope="module")
def brute(planted):
    """Every window's activations of the unit from full `neurons.0` captures, one window at a time."""
    model, store, _ = planted
    out = {}
    for w in sorted(store.window_index()):
        ids = store.window_tokens(w)
        res = model.run(model.batch_from_ids([ids]), capture=[SITE], top_k=0, logits=None)
        out[w] = res.activations[SITE][0, :, UNIT].double().numpy()
    return out


def clean(t: str) -> str:
    return t.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


@pytest.fixture(scope="module")
def shown_tokens(planted):
    """Window -> its cleaned token texts without position 0 (what prompts show)."""
    model, store, _ = planted
    return {w: [clean(model.tokenizer.decode([i])) for i in store.window_tokens(w)][1:] for w in sorted(store.window_index())}


class FakeClient(ChatClient):
    """Answers with ``respond(messages)``; records every request. No cache."""

    kind = "fake"

    def __init__(self, respond):
        super().__init__("fake-model", cache=None)
        self.respond = respond
        self.calls: list[tuple[list[dict], str, dict]] = []

    def _complete(self, messages, *, max_tokens, temperature, seed, stop):
        text = self.respond(messages)
        for s in stop:  # like the real back ends: the reply ends before a stop string, which is dropped
            if s in text:
                text = text[: text.index(s)]
        self.calls.append((messages, text, {"temperature": temperature, "seed": seed, "max_tokens": max_tokens,
                                            "stop": stop}))
        return ChatResponse(text, 10, 5, False, "fake-model")


def examples_of(msgs) -> list[str]:
    return re.findall(r"^Example \d+: (.*)$", msgs[-1]["content"], re.M)


def sim_tokens_of(msgs) -> list[str]:
    body = msgs[-1]["content"].split("Tokens without Activations:\n")[1].split("\n\nSequence 1 Tokens with")[0]
    return [ln[: -len("\t" + EOL)] for ln in body.split("\n") if ln]


def fuzz_truth(text: str) -> int:
    """A marking is correct iff every marked run is made of the planted token only."""
    runs = re.findall(r"<<(.*?)>>", text)
    return int(bool(runs) and all(r.replace(TOKEN, "") == "" for r in runs))


def responder(truth: dict[str, int] | None = None, flip_detect: int = 0, flip_fuzz: int = 1, last_sim: float = 3.0):
    """Explanations are fixed; detection answers the truth but flips example ``flip_detect`` of each
    prompt; fuzzing flips example ``flip_fuzz``; simulation predicts 10 on the token, 0 elsewhere and
    ``last_sim`` on each window's last token; SASC lists fixed sentences."""

    def respond(msgs):
        system, last = msgs[0]["content"], msgs[-1]["content"]
        if system == P.OPENAI_EXPLAIN_SYSTEM:
            return " the word 'the'."
        if system == P.DELPHI_EXPLAIN_SYSTEM:
            return "Marked tokens are articles.\n[EXPLANATION]: The article 'the'."
        if system == P.DETECTION_SYSTEM:
            bits = [truth[t] for t in examples_of(msgs)]
            bits[flip_detect] ^= 1
            return "[" + ", ".join(map(str, bits)) + "]"
        if system == P.FUZZING_SYSTEM:
            bits = [fuzz_truth(t) for t in examples_of(msgs)]
            if flip_fuzz < len(bits):
                bits[flip_fuzz] ^= 1
            return "Answer: " + json.dumps(bits)
        if system == P.SIMULATION_SYSTEM:
            toks = sim_tokens_of(msgs)
            vals = [10 if t == TOKEN else 0 for t in toks]
            vals[-1] = last_sim
            return "".join(f"{t.strip()}\t{v}{EOL}\n" for t, v in zip(toks, vals, strict=True))
        if "do not contain" in last:
            return "Here they are:\n1. A cat sat on a mat.\n2. Dogs bark at night.\n3. Birds sing songs.\n4. Fish swim fast."
        return "1. I saw the cat.\n2. Take the dog out.\n3. Under the sea.\n4. In the end it rained.\nThat is all."

    return respond


# -- formats, exactly ------------------------------------------------------------------------------
REC = Record(3, ["Hello", " world", "\n", "!"], np.array([0.0, 2.0, 1.0, -1.0], np.float32))
SPARSE = Record(4, [" a", " b", " c", " d", " e", " f"], np.array([0, 0, 0, 0, 0, 4.0], np.float32))


def test_openai_record_format_and_prompt_exactly():
    assert A.normalize_activations([0, 0.5, 1.0, 0.99, -3, 7], 1.0) == [0, 5, 10, 9, 0, 10]
    assert A.normalize_activations([1, 2], 0.0) == [0, 0]
    assert A.format_activation_records([REC], 2.0) == "\n<start>\nHello\t0\n world\t10\n\\n\t5\n!\t0\n<end>\n"
    assert A.format_activation_records([REC, SPARSE], 4.0, omit_zeros=True) == \
        "\n<start>\n world\t5\n\\n\t2\n<end>\n<start>\n f\t10\n<end>\n"
    assert A.format_activation_records([SPARSE], 4.0, hide_activations=True).count("\tunknown") == 6
    msgs = A.openai_explain_messages([REC, SPARSE])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == P.OPENAI_EXPLAIN_SYSTEM and "token<tab>activation" in msgs[0]["content"]
    assert msgs[2]["content"] == " nouns naming animals."
    # max 4.0 over both records; 3 of 10 values non-zero (>= 0.2): no filtered repeat
    assert msgs[3]["content"] == (
        "\n\nNeuron 2\nActivations:\n<start>\nHello\t0\n world\t5\n\\n\t2\n!\t0\n<end>\n<start>\n"
        " a\t0\n b\t0\n c\t0\n d\t0\n e\t0\n f\t10\n<end>\n"
        "\nExplanation of neuron 2 behavior: the main thing this neuron does is find")
    # the worked example: 3 of 10 non-zero -> no repeat either; a sparse record gets the zero-filtered repeat
    # 1 of 6 values non-zero (< 0.2): the non-zero lines are repeated
    assert A.openai_explain_messages([SPARSE])[3]["content"] == (
        "\n\nNeuron 2\nActivations:\n<start>\n a\t0\n b\t0\n c\t0\n d\t0\n e\t0\n f\t10\n<end>\n"
        "\nSame activations, but with all zeros filtered out:\n<start>\n f\t10\n<end>\n"
        "\nExplanation of neuron 2 behavior: the main thing this neuron does is find")
    assert msgs[1]["content"].startswith("\n\nNeuron 1\nActivations:\n<start>\nThe\t0\n cat\t9\n")


def test_delphi_marking_and_prompt_exactly():
    assert A.highlight(["a", " b", " c", " d", "\n"], [0, 5, 6, 0, 9], 2.5) == "a<< b c>> d<<\\n>>"
    assert A.highlight(["x"], [1.0], math.inf) == "x"
    msgs = A.delphi_explain_messages([REC, SPARSE], mark_frac=0.5)
    assert msgs[0]["content"] == P.DELPHI_EXPLAIN_SYSTEM and "[EXPLANATION]:" in msgs[0]["content"]
    assert msgs[1]["content"] == "\nExample 1: The<< cat>> chased a small<< dog>> across the yard.\n"
    assert msgs[2]["content"] == "[EXPLANATION]: Nouns naming animals."
    # REC: marked above 0.5 * 2.0 = 1.0 (strictly), so only " world"; SPARSE: " f"
    assert msgs[3]["content"] == "\nExample 1: Hello<< world>>\\n!\nExample 2:  a b c d e<< f>>\n"
    with_acts = A.delphi_explain_messages([REC], activations=True)[3]["content"]
    assert with_acts == '\nExample 1: Hello<< world>>\\n!\nActivations: (" world", 10)\n'


def test_classifier_simulation_and_sasc_prompts_exactly():
    d = A.detection_messages("The word 'the'.", ["one two", " three"])
    assert d[0]["content"] == P.DETECTION_SYSTEM
    # the worked example has as many items as the question (small models copy its length)
    assert d[1]["content"] == ("Latent explanation: Nouns naming animals.\n\nTest examples:\n\n"
                               "Example 0: The cat slept on the warm sofa.\nExample 1: Interest rates rose again this year.\n")
    assert d[2]["content"] == "[1,0]"
    assert d[3]["content"] == "Latent explanation: The word 'the'.\n\nTest examples:\n\nExample 0: one two\nExample 1:  three\n"
    assert A.detection_messages("x", ["t"] * 5)[2]["content"] == "[1,0,1,0,1]"
    assert A.detection_messages("x", ["t"] * 12)[2]["content"] == "[1,0,1,0,1,0,1,0]"
    f = A.fuzzing_messages("x", ["a<< b>>"])
    assert f[0]["content"] == P.FUZZING_SYSTEM
    assert f[1]["content"] == "Latent explanation: Nouns naming animals.\n\nTest examples:\n\nExample 0: The <<cat>> slept on the warm sofa.\n"
    assert f[2]["content"] == "[1]"
    assert f[3]["content"] == "Latent explanation: x\n\nTest examples:\n\nExample 0: a<< b>>\n"
    s = A.simulation_messages(" articles ", ["The", " end", "\n"])
    assert s[0]["content"] == P.SIMULATION_SYSTEM
    assert s[3]["content"] == ("Neuron 2\nExplanation of neuron 2 behavior: the main thing this neuron does is find articles\n\n"
                               f"Sequence 1 Tokens without Activations:\nThe\t{EOL}\n end\t{EOL}\n\\n\t{EOL}\n\n\n"
                               "Sequence 1 Tokens with Activations:\n")
    assert s[2]["content"].startswith(f"The\t0{EOL}\n cat\t9{EOL}\n chased\t0{EOL}\n")
    assert A.sasc_messages("cats", 5, True) == [{"role": "user", "content": 'Generate 5 sentences that contain the concept '
                                                 'of "cats". Write them as a numbered list, one sentence per line.\n\n1.'}]
    assert 'that do not contain the concept of "cats"' in A.sasc_messages("cats", 5, False)[0]["content"]


def test_parsers_accept_the_format_and_reject_the_rest():
    assert A.parse_openai_explanation(" the word 'the'.\nMore text") == "the word 'the'"
    assert A.parse_openai_explanation("The main thing this neuron does is find commas.") == "commas"
    with pytest.raises(ValueError, match="empty"):
        A.parse_openai_explanation("  \n ")
    with pytest.raises(ValueError, match="repeats the activation format"):
        A.parse_openai_explanation("<start>\nthe\t3")
    assert A.parse_delphi_explanation("Step 1...\n[EXPLANATION]: Articles before nouns.\n") == "Articles before nouns"
    assert A.parse_delphi_explanation("[explanation]: a\n[EXPLANATION]: b.") == "b"
    assert A.parse_delphi_explanation("Numbers in dates.") == "Numbers in dates"  # a bare one-line answer
    with pytest.raises(ValueError, match=r"\[EXPLANATION\]"):
        A.parse_delphi_explanation("I think it is\nabout dates")
    with pytest.raises(ValueError, match="empty"):
        A.parse_delphi_explanation("[EXPLANATION]:   ")
    assert A.parse_binary_list("Sure: [1, 0,1]", 3) == [1, 0, 1]
    assert A.parse_binary_list("[1,0] then [0, '1', 1]", 3) == [0, 1, 1]
    with pytest.raises(ValueError, match="2 entries where 3"):
        A.parse_binary_list("[1, 0]", 3)
    with pytest.raises(ValueError, match="other than 0 and 1"):
        A.parse_binary_list("[1, 2, 0]", 3)
    with pytest.raises(ValueError, match="no list"):
        A.parse_binary_list("1 0 1", 3)
    toks = [" The", " cat", "\n"]
    assert A.parse_simulation(f"The\t3{EOL}\ncat\t10{EOL}\n\\n\t0{EOL}", toks) == [3.0, 10.0, 0.0]
    assert A.parse_simulation("preamble\n The\t2\n cat\tlots\n\\n\t11\n", toks) == [2.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="2 token lines where 3"):
        A.parse_simulation("The\t1\ncat\t2", toks)
    with pytest.raises(ValueError, match="expected the token 'cat'"):
        A.parse_simulation("The\t1\ndog\t2\n\\n\t0", toks)
    with pytest.raises(ValueError, match="first token"):
        A.parse_simulation("nothing here", toks)
    assert A.parse_numbered_list("Here you go:\n1. One cat.\n2) Two cats.\n\n3. Three cats.\nBye") == \
        ["One cat.", "Two cats.", "Three cats."]
    assert A.parse_numbered_list(" First one.\n2. Second.\n3. Third.") == ["First one.", "Second.", "Third."]
    with pytest.raises(ValueError, match="2 usable"):
        A.parse_numbered_list("1. a cat\n2. a dog")


def test_metrics_against_explicit_loops():
    rng = np.random.default_rng(0)
    y, p = rng.random(40) < 0.4, rng.random(40) < 0.5
    tp = sum(a and b for a, b in zip(y, p, strict=True))
    tn = sum((not a) and (not b) for a, b in zip(y, p, strict=True))
    fp = sum((not a) and b for a, b in zip(y, p, strict=True))
    fn = sum(a and (not b) for a, b in zip(y, p, strict=True))
    assert A.balanced_accuracy(y, p) == pytest.approx(0.5 * (tp / (tp + fn) + tn / (tn + fp)))
    assert A.f1_score(y, p) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert math.isnan(A.balanced_accuracy([1, 1], [1, 0]))
    pos, neg = rng.integers(0, 5, 13).astype(float), rng.integers(0, 5, 9).astype(float)
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in pos for b in neg]
    assert A.auroc(pos, neg) == pytest.approx(sum(pairs) / len(pairs))
    x, z = rng.normal(size=50), rng.normal(size=50)
    assert A.pearson(x, x + z) == pytest.approx(np.corrcoef(x, x + z)[0, 1])
    assert math.isnan(A.pearson(np.ones(5), x[:5]))
    # the bootstrap interval of a mean is close to the normal one on a large sample
    data = rng.normal(3.0, 2.0, 400)
    lo, hi = A.bootstrap_ci(lambda i: data[i].mean(), len(data), n_boot=2000, seed=1)
    half = 1.96 * data.std() / math.sqrt(len(data))
    assert lo == pytest.approx(data.mean() - half, abs=0.06) and hi == pytest.approx(data.mean() + half, abs=0.06)
    # strata keep both classes in every resample: balanced accuracy is never nan
    lo, hi = A.bootstrap_ci(lambda i: A.balanced_accuracy(y[i], p[i]), len(y), strata=y, n_boot=200)
    assert 0 <= lo <= A.balanced_accuracy(y, p) <= hi <= 1


# -- the store side ------------------------------------------------------------------------------------
def test_holdout_split_by_definition(planted):
    _, store, _ = planted
    split = A.holdout_split(store, SITE, UNIT, n_top=3, n_quantile=2, n_positive=6, n_negative=5)
    top = [w for _, w, _ in store.top(SITE, UNIT)]
    mx = store.top(SITE, UNIT)[0][0]
    assert split.threshold == pytest.approx(0.5 * mx)
    assert split.explain[:3] == [top[0], top[2], top[4]]
    sw = store.sample.windows.tolist()
    sv = store.states[SITE].sample_values[:, UNIT].tolist()
    sample = {w: v for w, v in zip(sw, sv, strict=True) if w >= 0 and w not in top}
    ranked = sorted(sample, key=lambda w: (-sample[w], w))
    n = len(ranked)
    assert split.explain[3:] == [ranked[n // 4], ranked[n // 2 + (n - n // 2) // 2]]
    rest = [w for w in top if w not in split.explain[:3]]
    extra = [w for w in ranked if sample[w] >= 0.5 * mx and w not in split.explain]
    assert split.positive == (rest + extra)[:6]
    low = [w for w in sorted(sample, key=lambda w: (sample[w], w)) if sample[w] < 0.5 * mx and w not in split.explain]
    assert split.negative == low[:5]
    sets = [set(split.explain), set(split.positive), set(split.negative)]
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1 :])


def test_unit_records_rerun_and_crop(planted, brute, shown_tokens):
    _, store, _ = planted
    wins = [w for _, w, _ in store.top(SITE, UNIT)][:3]
    for r in A.unit_records(store, SITE, UNIT, wins):
        assert [clean(t) for t in r.tokens] == shown_tokens[r.window] and r.offset == 1
        np.testing.assert_allclose(r.acts, brute[r.window][1:], rtol=1e-4, atol=1e-4)
    for r in A.unit_records(store, SITE, UNIT, wins, crop=(5, 2)):
        full = brute[r.window][1:]
        p = int(np.argmax(full))
        assert len(r.tokens) == 8 and r.offset - 1 == min(max(0, p - 5), len(full) - 8)
        np.testing.assert_allclose(r.acts, full[r.offset - 1 : r.offset + 7], rtol=1e-4, atol=1e-4)
    assert A.unit_records(store, SITE, UNIT, []) == []


# -- explain -------------------------------------------------------------------------------------------
def test_explain_builds_the_prompt_from_the_split_and_parses(planted, tmp_path):
    _, store, _ = planted
    fake = FakeClient(responder())
    es = ExplanationStore(tmp_path / "e.json")
    [ex] = A.explain(store, SITE, UNIT, fake, explanations=es)
    split = A.holdout_split(store, SITE, UNIT)
    assert ex.text == "the word 'the'" and ex.method == "openai" and ex.unit == (SITE, UNIT)
    assert ex.source_windows == split.explain and ex.client == "fake:fake-model"
    recs = A.unit_records(store, SITE, UNIT, split.explain, crop=(12, 4))
    assert ex.prompt == A.openai_explain_messages(recs) == fake.calls[0][0]
    assert fake.calls[0][2] == {"temperature": 0.0, "seed": 0, "max_tokens": 48, "stop": []}
    three = A.explain(store, SITE, UNIT, fake, n=3, method=["delphi", "openai"], explanations=es)
    assert [(e.method, e.sample) for e in three] == [("delphi", 0), ("delphi", 1), ("delphi", 2), ("openai", 0),
                                                     ("openai", 1), ("openai", 2)]
    assert three[0].text == "The article 'the'" and three[0].prompt == A.delphi_explain_messages(recs, 0.5)
    assert [c[2]["seed"] for c in fake.calls[1:]] == [0, 1, 2, 0, 1, 2]
    assert {c[2]["temperature"] for c in fake.calls[1:]} == {0.7}
    assert len(es) == 7 and len(es.get(SITE, UNIT, "delphi")) == 3


# -- scoring arithmetic, by hand -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def truth(planted, brute):
    """Detection text (as shown: the window cropped (24, 8)) -> 1 if the window's maximum is at
    least half the unit's maximum, from the brute-force activations."""
    _, store, _ = planted
    mx = max(a[1:].max() for a in brute.values())
    out: dict[str, int] = {}
    for w, a in brute.items():
        [r] = A.unit_records(store, SITE, UNIT, [w], crop=(24, 8))
        text = "".join(clean(t) for t in r.tokens)
        label = int(a[1:].max() >= 0.5 * mx)
        assert out.get(text, label) == label
        out[text] = label
    return out


@pytest.fixture(scope="module")
def scored(planted, truth, tmp_path_factory):
    _, store, _ = planted
    fake = FakeClient(responder(truth))
    es = ExplanationStore(tmp_path_factory.mktemp("es") / "explanations.json")
    [ex] = A.explain(store, SITE, UNIT, fake, explanations=es)
    n_explain = len(fake.calls)
    scores = A.score(store, SITE, UNIT, ex, client=fake, explanations=es, n_boot=300)
    return ex, scores, fake.calls[n_explain:], es, fake


def by_hand_ba(y, p):
    tp = sum(1 for a, b in zip(y, p, strict=True) if a and b)
    tn = sum(1 for a, b in zip(y, p, strict=True) if not a and not b)
    return 0.5 * (tp / sum(y) + tn / (len(y) - sum(y))), tp, tn


def test_detection_score_by_hand(planted, truth, scored):
    _, store, _ = planted
    ex, scores, calls, _, _ = scored
    y, p = [], []
    for msgs, reply, _ in calls:
        if msgs[0]["content"] != P.DETECTION_SYSTEM:
            continue
        texts = examples_of(msgs)
        assert 1 <= len(texts) <= 5
        y += [truth[t] for t in texts]
        assert "]" not in reply  # cut at the stop string
        p += json.loads(reply + "]")
    split = A.holdout_split(store, SITE, UNIT).without(ex.source_windows)
    assert len(y) == len(split.positive) + len(split.negative) == scores["detection"].n == 20
    assert sum(y) == len(split.positive)
    ba, tp, tn = by_hand_ba(y, p)
    fp, fn = len(y) - sum(y) - tn, sum(y) - tp
    assert fp + fn == math.ceil(20 / 5)  # one flipped answer per prompt
    assert scores["detection"].value == pytest.approx(ba)
    assert scores["detection_f1"].value == pytest.approx(2 * tp / (2 * tp + fp + fn))
    d = scores["detection"].details
    assert (d["tp"], d["fp"], d["fn"], d["tn"], d["failed"]) == (tp, fp, fn, tn, 0)
    for s in (scores["detection"], scores["detection_f1"]):
        assert 0 <= s.lo <= s.value <= s.hi <= 1


def test_fuzzing_score_by_hand(scored):
    _, scores, calls, _, _ = scored
    y, p = [], []
    for msgs, reply, _ in calls:
        if msgs[0]["content"] == P.FUZZING_SYSTEM:
            texts = examples_of(msgs)
            y += [fuzz_truth(t) for t in texts]
            p += json.loads(reply.removeprefix("Answer: ") + "]")
    assert sum(y) * 2 == len(y) == scores["fuzzing"].n  # each window once correctly, once randomly marked
    ba, _, _ = by_hand_ba(y, p)
    assert ba < 1 and scores["fuzzing"].value == pytest.approx(ba)
    assert scores["fuzzing"].lo <= ba <= scores["fuzzing"].hi


def test_simulation_score_by_hand(scored, brute, shown_tokens):
    _, scores, calls, _, _ = scored
    true, pred = [], []
    sims = [msgs for msgs, _, _ in calls if msgs[0]["content"] == P.SIMULATION_SYSTEM]
    assert len(sims) == len(scores["simulation"].details["windows"])
    for msgs, w in zip(sims, scores["simulation"].details["windows"], strict=True):
        toks = sim_tokens_of(msgs)  # a crop of window w: find where it starts
        st = shown_tokens[w]
        [i] = [i for i in range(len(st) - len(toks) + 1) if st[i : i + len(toks)] == toks][:1]
        true.append(brute[w][1 + i : 1 + i + len(toks)])
        pred.append([10.0 if t == TOKEN else 0.0 for t in toks[:-1]] + [3.0])
    assert len(true) == scores["simulation"].n == 20
    want = np.corrcoef(np.concatenate(true), np.concatenate(pred))[0, 1]
    assert scores["simulation"].value == pytest.approx(want, abs=1e-6)
    assert scores["simulation"].details["tokens"] == sum(len(t) for t in true)
    assert scores["simulation"].lo <= want <= scores["simulation"].hi


def test_sasc_score_by_hand(planted, scored):
    model, store, _ = planted
    _, scores, _, _, _ = scored
    fit = ["I saw the cat.", "Take the dog out.", "Under the sea.", "In the end it rained."]
    unfit = ["A cat sat on a mat.", "Dogs bark at night.", "Birds sing songs.", "Fish swim fast."]

    def top(text):
        res = model.run(text, capture=[SITE], top_k=0, logits=None)
        return float(res.activations[SITE][0, 1:, UNIT].max())

    pos, neg = [top(t) for t in fit], [top(t) for t in unfit]
    std = store.unit_stats(SITE, UNIT)["std"]
    assert scores["sasc"].details["fit"] == fit and scores["sasc"].details["unfit"] == unfit
    assert scores["sasc"].value == pytest.approx((np.mean(pos) - np.mean(neg)) / std, rel=1e-5)
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg]
    assert scores["sasc_auroc"].value == pytest.approx(np.mean(pairs))
    assert scores["sasc"].n == 8 and scores["sasc"].lo <= scores["sasc"].value <= scores["sasc"].hi


def test_held_out_windows_are_never_the_explainer_s(planted, scored, brute, shown_tokens):
    _, store, _ = planted
    ex, scores, calls, _, _ = scored
    src = set(ex.source_windows)
    for name in ("detection", "fuzzing", "simulation"):
        assert not src & set(scores[name].details["windows"]), name
    # and no scoring prompt shows a piece of an explanation window's text
    src_text = ["".join(shown_tokens[w]) for w in src]
    checked = 0
    for msgs, _, _ in calls:
        if msgs[0]["content"] in (P.DETECTION_SYSTEM, P.FUZZING_SYSTEM):
            shown = [re.sub(r"<<|>>", "", t) for t in examples_of(msgs)]
        elif msgs[0]["content"] == P.SIMULATION_SYSTEM:
            shown = ["".join(sim_tokens_of(msgs))]
        else:
            continue
        long = [s for s in shown if len(s) >= 20]  # (a 1-token crop of a 2-token window, "." say, is anywhere)
        assert not any(s in t for s in long for t in src_text)
        checked += len(long)
    assert checked >= 50


def test_scores_are_stored_and_reused(planted, scored):
    _, store, _ = planted
    ex, scores, _, es, fake = scored
    again = ExplanationStore(es.path)
    [back] = again.get(SITE, UNIT)
    assert back.to_dict() == ex.to_dict()
    assert set(back.score) == {"detection", "detection_f1", "fuzzing", "simulation", "sasc", "sasc_auroc"}
    df = again.to_pandas()
    assert df.loc[0, "fuzzing"] == pytest.approx(scores["fuzzing"].value) and df.loc[0, "text"] == "the word 'the'"
    n = len(fake.calls)
    assert A.score(store, SITE, UNIT, ex, client=fake, explanations=es, n_boot=300) == scores
    [same] = A.explain(store, SITE, UNIT, fake, explanations=es)
    assert same.cached and same.text == ex.text and len(fake.calls) == n  # nothing asked again
    changed = A.score(store, SITE, UNIT, ex, ["detection"], client=fake, explanations=es, n_boot=300, per_prompt=4)
    assert len(fake.calls) == n + 5 and changed["detection"].n == 20
    html_ = ex._repr_html_()
    assert "detection" in html_ and "&#x27;the&#x27;" in html_


def test_corrupt_or_foreign_explanation_files_are_refused(tmp_path):
    p = tmp_path / "explanations.json"
    p.write_text("{not json")
    with pytest.raises(ExplanationStoreError, match="corrupt"):
        ExplanationStore(p)
    p.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ExplanationStoreError, match="not an explanations file"):
        ExplanationStore(p)
    p.write_text(json.dumps({"format": EXPLANATIONS_FORMAT, "version": 1, "explanations": [{"site": "neurons.0"}]}))
    with pytest.raises(ExplanationStoreError, match="explanation 0 is malformed"):
        ExplanationStore(p)
    p.write_text(json.dumps({"format": EXPLANATIONS_FORMAT, "version": 99, "explanations": []}))
    with pytest.raises(ExplanationStoreError, match="version 99"):
        ExplanationStore(p)
    # nan survives a round trip (stored as null: the file is strict JSON)
    es = ExplanationStore(tmp_path / "ok.json")
    ex = A.Explanation(("neurons.0", 1), "x", "openai", {"simulation": A.Score("simulation", math.nan, math.nan, 1.0, 0)})
    es.add(ex)
    json.loads((tmp_path / "ok.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    [back] = ExplanationStore(tmp_path / "ok.json").get("neurons.0", 1)
    assert math.isnan(back.score["simulation"].value) and back.score["simulation"].hi == 1.0


# -- bad input ---------------------------------------------------------------------------------------------
def test_facade_and_error_bases():
    from workbench.core.errors import WorkbenchError

    assert all(hasattr(A, name) for name in A.__all__)
    assert issubclass(ExplanationStoreError, WorkbenchError) and issubclass(ExplanationStoreError, ValueError)


def test_malformed_replies_are_reasked_then_raise(planted):
    _, store, _ = planted
    fake = FakeClient(lambda msgs: "   ")
    with pytest.raises(LLMError, match="could not be parsed after 3 attempt"):
        A.explain(store, SITE, UNIT, fake, explanations=None)
    assert len(fake.calls) == 3
    assert fake.calls[1][0][-2] == {"role": "assistant", "content": "   "}
    assert fake.calls[1][0][-1]["content"] == REASK.format(error="the reply is empty: write the explanation as one sentence")
    # a model that fixes its answer when told
    answers = iter(["", "commas"])
    fix = FakeClient(lambda msgs: next(answers))
    [ex] = A.explain(store, SITE, UNIT, fix, explanations=None)
    assert ex.text == "commas" and len(fix.calls) == 2
    # scoring: raise by default, or skip and count
    bad = FakeClient(lambda msgs: "maybe?")
    with pytest.raises(LLMError, match="no list"):
        A.score(store, SITE, UNIT, "the word the", ["detection"], bad, explanations=None)
    s = A.score(store, SITE, UNIT, "the word the", ["detection", "simulation"], bad, explanations=None, on_error="skip",
                attempts=2)
    assert s["detection"].details["failed"] == 4 and s["detection"].n == 0 and math.isnan(s["detection"].value)
    assert s["simulation"].details["failed"] == 20 and math.isnan(s["simulation"].value)


def test_bad_inputs(planted):
    _, store, _ = planted
    fake = FakeClient(responder())
    with pytest.raises(IndexError, match="out of range"):
        A.explain(store, SITE, 96, fake, explanations=None)
    with pytest.raises(KeyError, match="no 'neurons.7'"):
        A.explain(store, "neurons.7", 0, fake, explanations=None)
    with pytest.raises(ValueError, match="method must be one of"):
        A.explain(store, SITE, UNIT, fake, method="gpt", explanations=None)
    with pytest.raises(ValueError, match="n must be at least 1"):
        A.explain(store, SITE, UNIT, fake, n=0, explanations=None)
    with pytest.raises(ValueError, match="no exemplars"):
        A.explain(store, SITE, UNIT, fake, n_top=0, n_quantile=0, explanations=None)
    with pytest.raises(ValueError, match="methods must be among"):
        A.score(store, SITE, UNIT, "x", ["vibes"], fake, explanations=None)
    with pytest.raises(ValueError, match="empty"):
        A.score(store, SITE, UNIT, "  ", ["detection"], fake, explanations=None)
    other = A.Explanation((SITE, 4), "x", "openai")
    with pytest.raises(ValueError, match=r"neurons.0\[4\], not neurons.0\[5\]"):
        A.score(store, SITE, UNIT, other, ["detection"], fake, explanations=None)
    with pytest.raises(ValueError, match="on_error"):
        A.score(store, SITE, UNIT, "x", ["detection"], fake, on_error="ignore", explanations=None)
    with pytest.raises(ValueError, match="non-activating"):
        A.score(store, SITE, UNIT, "x", ["detection"], fake, n_negative=0, explanations=None)
    with pytest.raises(TypeError, match="explanation must be"):
        A.score(store, SITE, UNIT, 3, ["detection"], fake, explanations=None)


def test_any_store_key_a_feature_through_an_encoder(planted, tmp_path):
    """Explain and detect on an SAE-like feature scanned through an encoder."""
    model, _, tid = planted
    torch.manual_seed(0)
    W = torch.zeros(model.arch.d_mlp, 3)
    W[UNIT, 1] = 1.0  # feature 1 reads the planted neuron
    W[:, 0] = torch.randn(model.arch.d_mlp) * 0.1

    def enc(x):
        return torch.relu(x.float() @ W)

    store = wb.scan(model, wb.default_corpus(max_passages=12), tmp_path / "f", sites=[], features={"sae": (SITE, enc)},
                    k=8, window=24, batch_size=8, sample=32, progress=False)
    shown = {}
    for w in sorted(store.window_index()):
        [r] = A.unit_records(store, "sae", 1, [w], crop=(24, 8))
        shown["".join(clean(t) for t in r.tokens)] = int(tid in store.window_tokens(w)[1:])
    inner = responder()

    def respond(msgs):  # detection answered from the truth, without errors
        if msgs[0]["content"] == P.DETECTION_SYSTEM:
            return json.dumps([shown[t] for t in examples_of(msgs)])
        return inner(msgs)

    fake = FakeClient(respond)
    [ex] = A.explain(store, "sae", 1, fake, explanations=None)
    s = A.score(store, "sae", 1, ex, ["detection"], fake, explanations=None, n_boot=100)
    assert s["detection"].value == 1.0 and s["detection"].n > 0


# -- the real local back end -----------------------------------------------------------------------------------
@pytest.mark.embedded
def test_embedded_smollm2_explains_and_scores_its_own_neuron(tmp_path):
    """End to end with the embedded SmolLM2 as both the subject and the explainer (greedy)."""
    from workbench.llm import LocalChatClient

    model = wb.load(progress=False)
    store = wb.scan(model, wb.default_corpus(max_passages=40), tmp_path / "s", sites=["neurons.3"], k=8, window=32,
                    batch_size=8, sample=32, max_tokens=4000, progress=False)
    st = store.stats("neurons.3")
    unit = int((st["max"] / st["std"]).idxmax())
    client = LocalChatClient(model, cache=tmp_path / "llm")
    [ex] = A.explain(store, "neurons.3", unit, client, max_tokens=32)
    assert ex.text and ex.raw and ex.client.startswith("local") and ex.source_windows
    s = A.score(store, "neurons.3", unit, ex, ["detection"], client, on_error="skip", n_boot=200)
    det = s["detection"]
    split = A.holdout_split(store, "neurons.3", unit).without(ex.source_windows)
    total = len(split.positive) + len(split.negative)
    assert total > 0 and det.n <= total and det.details["failed"] <= math.ceil(total / 5)
    if det.n:
        assert 0.0 <= det.value <= 1.0 and det.lo <= det.value <= det.hi
    # the rerun is served from the explanation store and the reply cache
    before = client.usage["requests"]
    [again] = A.explain(store, "neurons.3", unit, client, max_tokens=32)
    assert again.cached and again.text == ex.text and client.usage["requests"] == before
