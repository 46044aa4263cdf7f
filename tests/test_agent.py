"""The MAIA-style agent loop: tools equal the Python they record, parsing, retries, cancel, resume, replay.

A scripted fake `ChatClient` (defined here) plays the agent on a tiny random Llama and a tiny
scan; the last test runs the loop offline with the embedded SmolLM2 as both subject and agent.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import workbench as wb
from workbench import agent as A
from workbench.agent import prompts as P
from workbench.agent.transcript import jsonable
from workbench.autointerp.prompts import DETECTION_SYSTEM
from workbench.core.corpus import default_corpus
from workbench.dictionaries.dictionary import Dictionary
from workbench.llm import REASK, ChatClient, ChatResponse

CORPUS = default_corpus(max_passages=12)
SCAN = {"k": 4, "window": 12, "batch_size": 3, "sample": 8, "progress": False}
SITE, UNIT = "neurons.1", 3


class Scripted(ChatClient):
    """Plays the agent from a list of replies (a callable gets the messages); answers detection prompts
    with 1 for examples containing ' the'. Records every request. No cache."""

    kind = "scripted"

    def __init__(self, replies: list[str | Callable[[list[dict]], str]]):
        super().__init__("scripted", cache=None)
        self.replies = list(replies)
        self.i = 0
        self.agent_calls: list[list[dict]] = []
        self.detection_calls = 0

    def _complete(self, messages, *, max_tokens, temperature, seed, stop):
        if messages[0]["content"] == DETECTION_SYSTEM:
            self.detection_calls += 1
            ex = re.findall(r"^Example \d+: (.*)$", messages[-1]["content"], re.M)
            return ChatResponse("[" + ",".join("1" if " the" in e else "0" for e in ex) + "]", 10, 5, False, "scripted")
        self.agent_calls.append([dict(m) for m in messages])
        r = self.replies[min(self.i, len(self.replies) - 1)]
        self.i += 1
        return ChatResponse(r(messages) if callable(r) else r, 10, 5, False, "scripted")


def reply(tool: str, args: dict | None = None, thought: str = "", hypothesis: str = "") -> str:
    return json.dumps({"thought": thought or f"use {tool}", "hypothesis": hypothesis, "tool": tool, "args": args or {}})


@pytest.fixture(scope="module")
def model(tiny):
    return tiny("llama")


@pytest.fixture(scope="module")
def store(model, tmp_path_factory):
    return wb.scan(model, CORPUS, tmp_path_factory.mktemp("agent") / "s", **SCAN)


def make(model, store, replies, **kw) -> tuple[A.Agent, Scripted]:
    client = Scripted(replies)
    kw = {"max_steps": 12, "score_final": False, "warm_start": False, "progress": False, **kw}
    return A.Agent(model, store, (SITE, UNIT), client=client, **kw), client


def run_python(step: A.Step, model, store, client) -> dict[str, Any]:
    """Execute a step's recorded Python exactly as a user would in a cell."""
    ns: dict[str, Any] = {"wb": wb, "model": model, "store": store, "client": client, "torch": torch}
    exec(step.python, ns)  # noqa: S102 - the recorded call is the thing under test
    return ns


def close(a, b, tol=1e-5) -> bool:
    return np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=tol, rtol=1e-5)


def check_texts(recs: list[dict], ns: dict) -> None:
    res, acts = ns["res"], ns["acts"]
    assert len(recs) == len(res.tokens)
    for b, r in enumerate(recs):
        L = res.lengths[b]
        assert r["tokens"] == [t.text for t in res.tokens[b]]
        assert close(r["acts"], acts[b, :L])
        ref = acts[b, 1:L].numpy()  # the scan skips each window's first position; so does the reported max
        assert r["argmax"] == 1 + int(np.argmax(ref)) and math.isclose(r["max"], float(ref.max()), rel_tol=1e-6)


def check_effect(r: dict, ns: dict, spec_dict: dict) -> None:
    before, after = ns["before"], ns["after"]
    assert r["spec"] == ns["spec"].to_dict() == spec_dict
    strip = [{k: v for k, v in row.items() if k in ("token", "id", "prob", "logit")} for row in r["top_before"]]
    assert [x["token"] for x in strip] == [x["token"] for x in before.top.as_rows(0)]
    assert close([x["prob"] for x in strip], [x["prob"] for x in before.top.as_rows(0)])
    assert [x["id"] for x in r["top_after"]] == [x["id"] for x in after.top.as_rows(0)]
    p_after = after.logits.float().softmax(-1)[0]
    assert close([x["prob_after"] for x in r["top_before"]], [float(p_after[x["id"]]) for x in r["top_before"]])
    assert math.isclose(r["kl"], float(ns["kl"]), rel_tol=1e-4, abs_tol=1e-7)
    assert close(r["text"]["acts"], ns["acts"])
    assert r["generation_before"] == ns["generation_before"] and r["generation_after"] == ns["generation_after"]


# -- every tool equals the Python it records ---------------------------------------------------------------------
def test_every_tool_equals_its_recorded_python(model, store):
    texts = ["The cat sat on the mat.", "A dog ran home, quickly."]
    script = [
        reply("exemplars", {"n": 3}),
        reply("run_texts", {"texts": texts}, hypothesis="the word the"),
        reply("edit_text", {"text": "The cat sat.", "new_text": "A cat sat."}),
        reply("ablate", {}),  # default prompt: the top exemplar up to its maximum
        reply("steer", {"prompt": "The cat", "factor": 3}),
        reply("steer", {"prompt": "The cat", "value": 2.5, "max_new_tokens": 5}),
        reply("score_explanation", {"explanation": "the word the", "predicate": {"token_in": [" the"]}}),
        reply("score_explanation", {"explanation": "words", "predicate": {"regex": "^ [a-z]+$", "offset": -1}}),
        reply("score_explanation", {"explanation": "the word the"}),
        reply("final_answer", {"explanation": "the word the", "evidence": "run_texts and scores"}),
    ]
    agent, client = make(model, store, script)
    res = agent.run()
    assert [s.tool for s in res.steps] == ["exemplars", "run_texts", "edit_text", "ablate", "steer", "steer",
                                          "score_explanation", "score_explanation", "score_explanation", "final_answer"]
    assert all(s.error is None for s in res.steps), [s.error for s in res.steps]
    assert res.status == "final" and res.explanation == "the word the" and res.evidence == "run_texts and scores"
    s = res.steps

    ns = run_python(s[0], model, store, client)
    assert s[0].args == {"n": 3, "quantiles": True}
    assert [e["window"] for e in s[0].result["top"]] == [e.window for e in ns["top"]] == [w for _, w, _ in store.top(SITE, UNIT)[:3]]
    for got, ref in zip(s[0].result["top"], ns["top"], strict=True):
        assert got["tokens"] == ref.tokens and close(got["acts"], ref.acts) and got["value"] == ref.value
        assert math.isclose(max(ref.acts[1:]), ref.value, rel_tol=1e-4)  # the window maximum is on the tinted tokens
    assert [g["label"] for g in s[0].result["quantiles"]] == [g.label for g in ns["quantiles"]]
    assert [[e["window"] for e in g["exemplars"]] for g in s[0].result["quantiles"]] == \
           [[e.window for e in g.exemplars] for g in ns["quantiles"]]

    check_texts(s[1].result["texts"], run_python(s[1], model, store, client))
    assert s[1].args == {"texts": texts}
    ns = run_python(s[2], model, store, client)
    check_texts([s[2].result["before"], s[2].result["after"]], ns)
    assert math.isclose(s[2].result["change"], s[2].result["after"]["max"] - s[2].result["before"]["max"])

    # ablate: the prompt defaulted to the top window up to its maximum, where the unit fires last
    _, w, p = store.top(SITE, UNIT)[0]
    assert s[3].args["prompt"] == model.tokenizer.decode(store.window_tokens(w)[: p + 1], skip_special_tokens=True)
    ns = run_python(s[3], model, store, client)
    check_effect(s[3].result, ns, wb.zero_neurons(1, [UNIT]).to_dict())
    by_hand = wb.scale_neurons(1, [UNIT], 3.0)
    check_effect(s[4].result, run_python(s[4], model, store, client), by_hand.to_dict())
    ns = run_python(s[5], model, store, client)
    check_effect(s[5].result, ns, wb.set_neurons(1, [UNIT], 2.5).to_dict())
    assert s[5].args["max_new_tokens"] == 5
    # the set spec really set the unit: rerun with capture, the unit reads 2.5 everywhere
    cap = model.run("The cat", [ns["spec"]], capture=[SITE], top_k=1).activations[SITE][0, :, UNIT]
    assert torch.allclose(cap, torch.full_like(cap, 2.5))

    for i in (6, 7):
        ns = run_python(s[i], model, store, client)
        assert s[i].result["hypothesis"] == jsonable(ns["r"].summary())
    assert s[7].args["predicate"] == {"regex": "^ [a-z]+$", "offset": -1}
    ns = run_python(s[8], model, store, client)
    assert s[8].result["scores"] == jsonable({k: v.to_dict() for k, v in ns["scores"].items()})
    assert 0.0 <= s[8].result["scores"]["detection"]["value"] <= 1.0 and client.detection_calls > 0
    # the final answer reuses the scores of the step that scored the same explanation
    assert s[9].args["scored_in_step"] == 8 and res.scores == s[8].result["scores"]
    rep = agent.replay(res)
    assert rep.ok and rep.n_matched == 9, rep.to_pandas()


def test_recorded_results_against_a_hand_computation(model, store):
    """run_texts, independent of the recorded Python: a raw nnsight hook on the MLP's down projection."""
    agent, _ = make(model, store, [reply("run_texts", {"texts": ["Hello there, world"]}), reply("final_answer", {"explanation": "x"})])
    res = agent.run()
    rec = res.steps[0].result["texts"][0]
    ids = model.tokenizer("Hello there, world", return_tensors="pt")["input_ids"]
    seen = {}

    def grab(_module, inputs, _output):
        seen["x"] = inputs[0].detach().clone()

    hook = model.hf.model.layers[1].mlp.down_proj.register_forward_hook(grab)
    try:
        with torch.no_grad():
            model.hf(ids)
    finally:
        hook.remove()
    assert close(rec["acts"], seen["x"][0, :, UNIT])


def test_feature_unit_with_dictionary(model, tmp_path):
    g = torch.Generator().manual_seed(0)
    d = Dictionary(W_enc=torch.randn(48, 16, generator=g) / 7, b_enc=torch.zeros(16), W_dec=torch.randn(16, 48, generator=g) * 0.3,
                   b_dec=torch.zeros(48), architecture="relu", site="resid_post.0")
    st = wb.scan(model, CORPUS[:6], tmp_path / "f", sites=[], features={"sae": ("resid_post.0", d.encode)}, **SCAN)
    unit = int(np.argmax(st.stats("sae")["max"].to_numpy()))
    client = Scripted([reply("run_texts", {"texts": ["The cat sat."]}), reply("ablate", {"prompt": "The cat sat"}),
                       reply("steer", {"prompt": "The cat sat", "factor": 2}), reply("final_answer", {"explanation": "x"})])
    agent = A.Agent(model, st, ("sae", unit), client=client, dictionary=d, score_final=False, warm_start=False,
                    progress=False)
    assert agent.what == f"feature {unit} of sae"
    res = agent.run()
    assert [s.error for s in res.steps] == [None] * 4
    name = wb.dictionaries.register_dictionary(d)
    assert res.steps[1].python.startswith(f"spec = wb.dictionaries.zero_features({name!r}, [{unit}])")
    ns = run_python(res.steps[0], model, st, client)
    ref = d.encode(model.run("The cat sat.", capture=["resid_post.0"]).activations["resid_post.0"])[0, :, unit]
    assert close(res.steps[0].result["texts"][0]["acts"], ref) and close(ns["acts"][0], ref)
    check_effect(res.steps[1].result, run_python(res.steps[1], model, st, client),
                 wb.dictionaries.zero_features(name, [unit]).to_dict())
    check_effect(res.steps[2].result, run_python(res.steps[2], model, st, client),
                 wb.dictionaries.scale_features(name, [unit], 2.0).to_dict())
    assert agent.replay(res).ok
    # without the dictionary, editing the feature is a clear tool error (the run goes on)
    client2 = Scripted([reply("ablate", {"prompt": "The cat"}), reply("final_answer", {"explanation": "x"})])
    res2 = A.Agent(model, st, ("sae", unit), client=client2, score_final=False, warm_start=False, progress=False).run()
    assert "dictionary=" in res2.steps[0].error and res2.status == "final"


# -- parsing ---------------------------------------------------------------------------------------------------
TOOLS = [t.name for t in A.DEFAULT_TOOLS]


@pytest.mark.parametrize("text, tool, args", [
    ('{"thought": "t", "tool": "run_texts", "args": {"texts": ["a"]}}', "run_texts", {"texts": ["a"]}),
    ('Sure!\n```json\n{"thought": "t", "tool": "exemplars", "args": {"n": 2},}\n```', "exemplars", {"n": 2}),
    ('{"thought": "t", "tool": "Run Texts", "args": {"texts": ["a", "b"]}', "run_texts", {"texts": ["a", "b"]}),
    ('{"thought": "the top examples are about lists and', None, None),
    ('{"tool": "exemplar", "args": {"n": 3, "quantiles": false', "exemplars", {"n": 3, "quantiles": False}),
    ('{"thought": "t", "tool": "score", "explanation": "commas"}', "score_explanation", {"explanation": "commas"}),
    ('{"thought": "t", "tool": "final", "args": "fires on commas"}', "final_answer", {"explanation": "fires on commas"}),
    ('{"explanation": "commas", "evidence": "e"}', "final_answer", {"explanation": "commas", "evidence": "e"}),
    ('{"thought": "t", "tool": "run_texts", "args": ["x", "y"]}', "run_texts", {"texts": ["x", "y"]}),
    ('I will use tool: ablate now', "ablate", {}),
    ('{"thought": "t", "tool": "telepathy", "args": {}}', None, None),
    ("no json at all", None, None),
])
def test_parse_step_reply(text, tool, args):
    if tool is None:
        with pytest.raises(ValueError):
            A.parse_step_reply(text, TOOLS)
        return
    p = A.parse_step_reply(text, TOOLS)
    assert p["tool"] == tool and p["args"] == args


def test_match_tool():
    assert A.match_tool("final", TOOLS) == "final_answer"
    assert A.match_tool("score-explanation", TOOLS) == "score_explanation"
    assert A.match_tool("ablation", TOOLS) == "ablate"
    assert A.match_tool("exemplar", TOOLS) == "exemplars"
    assert A.match_tool("steer", ["exemplars", "final_answer"]) is None
    assert A.match_tool(None, TOOLS) is None and A.match_tool("xyzzy", TOOLS) is None


# -- robustness ----------------------------------------------------------------------------------------------
def test_malformed_replies_are_retried_then_recorded_as_an_error_step(model, store):
    agent, client = make(model, store, ["I think it is about cats.", "still no json", "nope"], attempts=3)
    res = agent.run()
    assert len(client.agent_calls) == 3 and res.status == "error"
    [step] = res.steps
    assert step.tool == "error" and step.attempts == 3 and "no usable reply after 3" in step.error
    assert step.raw == "nope" and step.result == {"raw": "nope"}
    # each re-ask appended the bad reply and the correction
    second = client.agent_calls[1]
    assert second[-2] == {"role": "assistant", "content": "I think it is about cats."}
    assert second[-1]["role"] == "user" and second[-1]["content"].startswith(REASK.split("{error}")[0])
    assert res.messages[-1]["content"].startswith(REASK.split("{error}")[0])
    assert agent.replay(res).rows[0]["status"] == "skipped"


def test_one_bad_reply_then_a_good_one(model, store):
    agent, client = make(model, store, ["garbage", reply("exemplars", {"n": 2}), reply("final_answer", {"explanation": "e"})])
    res = agent.run()
    assert [s.tool for s in res.steps] == ["exemplars", "final_answer"] and res.steps[0].attempts == 2
    assert res.status == "final"


def test_tool_error_is_recorded_and_the_model_goes_on(model, store):
    agent, client = make(model, store, [reply("run_texts", {"texts": []}), reply("edit_text", {"text": "abc", "find": "zz", "replace": "y"}),
                                        reply("score_explanation", {"predicate": {"regex": "("}}),
                                        reply("final_answer", {"explanation": "e"})])
    res = agent.run()
    assert [s.tool for s in res.steps] == ["run_texts", "edit_text", "score_explanation", "final_answer"]
    assert "texts" in res.steps[0].error and "'zz' is not in the text" in res.steps[1].error
    assert "invalid regex" in res.steps[2].error and res.status == "final"
    assert client.agent_calls[1][-1]["content"].startswith("Error from run_texts: ToolError")
    rep = agent.replay(res)
    assert rep.ok and [r["message"] for r in rep.rows[:3]] == ["failed again with the same error"] * 3


def test_forced_final_answer_at_max_steps(model, store):
    agent, client = make(model, store, [reply("run_texts", {"texts": [f"a b c {i}"]}, hypothesis=f"h{i}") for i in range(5)],
                         max_steps=3)
    res = agent.run()
    assert [s.tool for s in res.steps] == ["run_texts", "run_texts", "final_answer"]
    assert len(client.agent_calls) == 3 and res.status == "forced"
    assert P.FINAL_PROMPT in client.agent_calls[2][-1]["content"]  # the last step asked for the answer
    assert P.FINAL_PROMPT not in client.agent_calls[1][-1]["content"]
    final = res.steps[-1]
    assert final.result["forced"] is True and res.explanation == "h2" and "run_texts at the last step" in final.args["evidence"]
    # an unusable reply at the last step also ends in a clean forced answer, not an error
    agent2, _ = make(model, store, [reply("exemplars", {"n": 1}, hypothesis="hh"), "???", "???", "???"], max_steps=2)
    res2 = agent2.run()
    assert res2.status == "forced" and res2.explanation == "hh" and res2.steps[-1].error is None


def test_repeated_calls_are_refused_and_an_empty_forced_answer_falls_back_to_data(model, store):
    agent, client = make(model, store, [reply("exemplars", {"n": 5})] * 4, max_steps=4, warm_start=True)
    res = agent.run()
    assert [s.tool for s in res.steps] == ["exemplars", "exemplars", "exemplars", "final_answer"]
    assert res.steps[0].attempts == 0 and res.steps[0].raw == P.WARM_REPLY  # the warm start: no request
    assert len(client.agent_calls) == 3 and client.agent_calls[0][-2] == {"role": "assistant", "content": P.WARM_REPLY}
    assert "exactly the call of step 0" in res.steps[1].error and "exactly the call of step 0" in res.steps[2].error
    assert P.NEXT_HINTS["exemplars"] in client.agent_calls[0][-1]["content"]
    # no hypothesis was ever stated: the forced answer lists the top exemplars' maximum tokens
    tops = []
    for _, w, p in store.top(SITE, UNIT):
        t = model.tokenizer.decode([store.window_tokens(w)[p]])
        if t not in tops:
            tops.append(t)
    assert res.status == "forced" and res.explanation == "activates most on the tokens " + ", ".join(map(repr, tops[:5]))
    assert "top-activating tokens" in res.evidence
    rep = agent.replay(res)
    assert rep.ok and [r["status"] for r in rep.rows] == ["match", "skipped", "skipped", "skipped"]
    assert rep.rows[1]["message"] == "refused as a repeat of step 0"


def test_forced_final_is_scored_when_asked(model, store):
    agent, client = make(model, store, [reply("run_texts", {"texts": [f"the cat {i}"]}, hypothesis="the word the")
                                        for i in range(2)], max_steps=2, score_final=True)
    res = agent.run()
    assert res.status == "forced" and "detection" in res.scores and client.detection_calls > 0
    ns = run_python(res.steps[-1], model, store, client)
    assert res.scores == jsonable({k: v.to_dict() for k, v in ns["scores"].items()})
    rep = agent.replay(res)
    assert rep.ok and rep.rows[-1]["status"] == "match"
    assert agent.replay(res, llm=False).rows[-1]["status"] == "skipped"


def test_cancel_stops_between_steps(model, store):
    cancel = threading.Event()
    seen = []

    def on_step(step):
        seen.append(step.index)
        if len(seen) == 2:
            cancel.set()

    agent, client = make(model, store, [reply("exemplars", {"n": 1}), reply("run_texts", {"texts": ["x y"]}),
                                        reply("run_texts", {"texts": ["never"]})])
    with pytest.raises(A.AgentCancelled) as e:
        agent.run(on_step=on_step, cancel=cancel)
    res = e.value.partial
    assert seen == [0, 1] and len(res.steps) == 2 and res.status == "cancelled" and len(client.agent_calls) == 2
    pre = threading.Event()
    pre.set()
    with pytest.raises(A.AgentCancelled) as e:
        agent.run(cancel=pre)
    assert e.value.partial.steps == []


def test_cancel_convention_on_resume_and_error_bases(model, store):
    from workbench.core.errors import Cancelled, WorkbenchError

    assert issubclass(A.AgentCancelled, Cancelled) and issubclass(A.ToolError, WorkbenchError)
    assert issubclass(A.ToolError, ValueError) and all(hasattr(A, name) for name in A.__all__)
    agent, client = make(model, store, [reply("exemplars", {"n": 1}), reply("final_answer", {"explanation": "e"})])
    first = agent.run()
    pre = threading.Event()
    pre.set()
    with pytest.raises(A.AgentCancelled) as e:
        agent.resume(first, hypothesis="h", cancel=pre)
    part = e.value.partial
    assert isinstance(part, A.AgentResult) and part.status == "cancelled"
    assert [s.tool for s in part.steps] == ["exemplars", "final_answer", "user_hypothesis"]
    assert len(client.agent_calls) == 2  # nothing was asked after the cancel
    assert agent.resume(part, max_steps=1).status in ("final", "forced")  # the partial transcript resumes


def test_resume_with_an_edited_hypothesis(model, store):
    cancel = threading.Event()
    agent, client = make(model, store, [reply("exemplars", {"n": 1}, hypothesis="cats"), reply("run_texts", {"texts": ["a cat"]}),
                                        reply("run_texts", {"texts": ["a comma, here"]}),
                                        reply("final_answer", {"explanation": "commas", "evidence": "ran texts"})])
    with pytest.raises(A.AgentCancelled) as e:
        agent.run(on_step=lambda s: cancel.set() if s.index == 1 else None, cancel=cancel)
    first = e.value.partial
    assert len(first.steps) == 2 and first.hypothesis == "cats"
    n_msgs = len(first.messages)
    got = []
    res = agent.resume(first, hypothesis="fires on commas", on_step=got.append)
    assert [s.tool for s in res.steps] == ["exemplars", "run_texts", "user_hypothesis", "run_texts", "final_answer"]
    assert [s.index for s in res.steps] == list(range(5)) and [s.index for s in got] == [2, 3, 4]
    edit = res.steps[2]
    assert edit.args == {"hypothesis": "fires on commas"} and edit.hypothesis == "fires on commas"
    # the edit went to the model as a user message, right before the first resumed request
    asked = client.agent_calls[2]
    assert asked[-1]["role"] == "user" and 'New hypothesis: "fires on commas"' in asked[-1]["content"]
    assert res.steps[3].hypothesis == "fires on commas"  # the model kept it (no hypothesis in its reply)
    assert res.explanation == "commas" and res.status == "final"
    assert len(first.steps) == 2 and len(first.messages) == n_msgs  # the first transcript is unchanged
    assert agent.replay(res).ok
    # continuing a finished transcript without an edit asks the model to go on
    more = agent.resume(res, max_steps=1)
    assert client.agent_calls[-1][-2]["content"].startswith('{"thought"')
    assert P.CONTINUE_PROMPT in client.agent_calls[-1][-1]["content"] and len(more.steps) == 6
    with pytest.raises(ValueError, match="about neurons.1"):
        A.Agent(model, store, (SITE, UNIT + 1), client=client, progress=False).resume(res)


def test_save_load_round_trip_and_views(model, store, tmp_path):
    evil = '<img src=x onerror="window.__x=1">'
    agent, _ = make(model, store, [reply("run_texts", {"texts": [f"a {evil} b"]}, thought=evil, hypothesis=evil),
                                   reply("final_answer", {"explanation": evil})])
    res = agent.run()
    path = res.save(tmp_path / "t" / "agent.json")
    back = A.AgentResult.load(path)
    assert back.to_dict() == json.loads(json.dumps(res.to_dict())) and back.unit == (SITE, UNIT)
    assert json.loads(path.read_text())["format"] == "interp-workbench/agent"
    assert agent.replay(back).ok  # a loaded transcript replays
    df = back.to_pandas()
    assert list(df["tool"]) == ["run_texts", "final_answer"] and df.loc[0, "python"] == res.steps[0].python
    page = back._repr_html_()
    assert evil not in page and "&lt;img" in page
    assert evil not in agent.replay(back)._repr_html_()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        A.AgentResult.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(ValueError, match="not an agent transcript"):
        A.AgentResult.load(tmp_path / "other.json")


def test_replay_detects_tampering(model, store):
    agent, _ = make(model, store, [reply("run_texts", {"texts": ["one two three"]}), reply("ablate", {"prompt": "one two"}),
                                   reply("final_answer", {"explanation": "x"})])
    res = agent.run()
    bad = A.AgentResult.from_dict(json.loads(json.dumps(res.to_dict())))
    bad.steps[0].result["texts"][0]["acts"][1] += 0.01
    bad.steps[1].result["generation_after"] += "!"
    rep = agent.replay(bad)
    assert not rep.ok
    assert [r["status"] for r in rep.rows] == ["mismatch", "mismatch", "match"]
    assert "acts[1]" in rep.rows[0]["message"] and math.isclose(rep.rows[0]["max_abs_diff"], 0.01, rel_tol=1e-3)
    assert "generation_after" in rep.rows[1]["message"]


def test_construction_errors(model, store):
    with pytest.raises(IndexError, match="out of range"):
        A.Agent(model, store, (SITE, 10_000), client=Scripted([]))
    with pytest.raises(KeyError, match="no 'neurons.9'"):
        A.Agent(model, store, ("neurons.9", 0), client=Scripted([]))
    with pytest.raises(ValueError, match="unknown tool"):
        A.Agent(model, store, (SITE, 0), client=Scripted([]), tools=["exemplars", "telepathy"])
    with pytest.raises(ValueError, match="max_steps"):
        A.Agent(model, store, (SITE, 0), client=Scripted([]), max_steps=0)
    with pytest.raises(TypeError, match="unit must be"):
        A.Agent(model, store, SITE, client=Scripted([]))
    # a subset of tools: the prompt lists only those, and final_answer is always there
    agent = A.Agent(model, store, (SITE, 0), client=Scripted([]), tools=["run_texts"])
    assert list(agent.tools) == ["run_texts", "final_answer"]
    assert "- run_texts" in agent.system_prompt() and "- ablate" not in agent.system_prompt()


def test_the_chat_client_failing_is_an_error_step(model, store):
    from workbench.llm import LLMError

    class Down(ChatClient):
        kind = "down"

        def _complete(self, messages, **kw):
            raise LLMError("connection refused")

    res = A.Agent(model, store, (SITE, UNIT), client=Down("x", cache=None), warm_start=False, progress=False).run()
    assert res.status == "error" and "connection refused" in res.steps[0].error


# -- the real local back end -----------------------------------------------------------------------------------
@pytest.mark.embedded
def test_embedded_smollm2_runs_the_loop_and_replays(tmp_path):
    """SmolLM2-135M as subject and agent, greedy: the loop finishes (a final or a clean forced answer)
    and the transcript replays exactly. The small model's science is not judged here."""
    from workbench.llm import LocalChatClient

    model = wb.load(progress=False)
    store = wb.scan(model, default_corpus(max_passages=20), tmp_path / "s", sites=["neurons.3"], k=6, window=24,
                    batch_size=8, sample=16, max_tokens=1500, progress=False)
    st = store.stats("neurons.3")
    unit = int((st["max"] / st["std"]).idxmax())
    client = LocalChatClient(model, cache=tmp_path / "llm")
    agent = A.Agent(model, store, ("neurons.3", unit), client=client, max_steps=3, max_tokens=96, attempts=2,
                    score_final=False, progress=False)
    res = agent.run()
    assert res.status in ("final", "forced"), [(s.tool, s.error, s.raw) for s in res.steps]
    assert res.steps[0].tool == "exemplars" and res.steps[0].error is None  # the warm start
    assert res.steps[-1].tool == "final_answer" and res.explanation and len(res.steps) <= 3
    assert client.usage["requests"] >= 1
    back = A.AgentResult.load(res.save(tmp_path / "agent.json"))
    rep = agent.replay(back)
    assert rep.ok, rep.to_pandas()
