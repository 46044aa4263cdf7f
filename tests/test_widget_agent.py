"""AgentTranscript payloads: streamed steps with activations as binary buffers, stop, continue, read-only."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from test_agent import SCAN, SITE, UNIT, Scripted, reply

import workbench as wb
from workbench.agent import Agent, AgentResult
from workbench.core.corpus import default_corpus
from workbench.widgets._base import Cancelled, Job
from workbench.widgets._transport import pack
from workbench.widgets.agent import AgentTranscript, step_payload, step_texts

EVIL = '<img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def model(tiny):
    return tiny("llama")


@pytest.fixture(scope="module")
def store(model, tmp_path_factory):
    return wb.scan(model, default_corpus(max_passages=12), tmp_path_factory.mktemp("wagent") / "s", **SCAN)


def script():
    return [reply("exemplars", {"n": 2}, hypothesis="h0"),
            reply("run_texts", {"texts": [f"a {EVIL} b", "plain text"]}, hypothesis="h1"),
            reply("ablate", {"prompt": "The cat"}),
            reply("score_explanation", {"explanation": "h1", "predicate": {"token_in": [" the"]}}),
            reply("final_answer", {"explanation": "h1", "evidence": "texts"})]


def make(model, store, replies=None, **kw):
    client = Scripted(replies or script())
    agent = Agent(model, store, (SITE, UNIT), client=client, score_final=False, warm_start=False, progress=False, **kw)
    return AgentTranscript(agent), client


def drain(gen):
    parts = []
    while True:
        try:
            parts.append(next(gen))
        except StopIteration as stop:
            return parts, stop.value


def test_run_streams_every_step_with_activations_as_buffers(model, store):
    w, _ = make(model, store)
    assert w.can_run and w.unit_label == f"MLP neuron {UNIT} of layer 1 ({SITE}[{UNIT}])"
    assert w.scale == pytest.approx(store.unit_stats(SITE, UNIT)["max"])
    parts, final = drain(w.rpc_run())
    assert [p["step"]["index"] for p in parts] == [0, 1, 2, 3, 4]
    assert [p["step"]["tool"] for p in parts] == ["exemplars", "run_texts", "ablate", "score_explanation", "final_answer"]
    assert final["status"] == "final" and final["explanation"] == "h1" and final["n_steps"] == 5
    assert w.status == "final" and w.n_steps == 5 and w.hypothesis == "h1" and w.explanation == "h1"
    res = w.result
    assert isinstance(res, AgentResult) and [s.index for s in res.steps] == [0, 1, 2, 3, 4]
    # exemplars: one text per top window and per quantile window, acts = the recorded per-token activations
    ex = parts[0]["step"]
    rec = res.steps[0].result
    assert len(ex["texts"]) == len(rec["top"]) + sum(len(g["exemplars"]) for g in rec["quantiles"])
    t0 = ex["texts"][0]
    assert t0["tokens"] == rec["top"][0]["tokens"] and t0["argmax"] == rec["top"][0]["position"]
    assert t0["acts"].dtype == np.float32 and np.allclose(t0["acts"], rec["top"][0]["acts"], atol=1e-6)
    # run_texts: the evil token text travels as plain text, the activations as a buffer
    rt = parts[1]["step"]
    assert "".join(rt["texts"][0]["tokens"]) == f"a {EVIL} b"
    body, buffers = pack(parts[1])
    assert len(buffers) == 2 and body["step"]["texts"][0]["acts"]["__array__"] == 0
    assert body["step"]["texts"][0]["acts"]["dtype"] == "float32"
    assert "acts" not in json.dumps(body["step"]["details"])  # activations are never JSON lists
    assert body["step"]["python"] == res.steps[1].python
    # ablate: the prediction tables and generations as JSON details; the prompt tinted
    ab = parts[2]["step"]
    assert set(ab["details"]) == {"prompt", "spec", "top_before", "top_after", "kl", "generation_before", "generation_after"}
    assert ab["details"]["spec"] == wb.zero_neurons(1, [UNIT]).to_dict() and len(ab["texts"]) == 1
    assert parts[3]["step"]["details"]["hypothesis"]["n_tokens"] > 0
    assert parts[4]["step"]["details"]["explanation"] == "h1"
    # the whole transcript again, for a view that opens later
    again = w.call("steps")
    assert [s["index"] for s in again["steps"]] == [0, 1, 2, 3, 4] and again["status"] == "final"
    assert np.array_equal(again["steps"][1]["texts"][1]["acts"], rt["texts"][1]["acts"])


def test_stop_keeps_the_transcript_and_continue_injects_the_edited_hypothesis(model, store):
    gate = threading.Event()

    def blocked(text):
        def answer(_messages):
            gate.wait(30)
            return text
        return answer

    replies = [reply("run_texts", {"texts": ["one"]}, hypothesis="h0"), blocked(reply("run_texts", {"texts": ["two"]})),
               reply("run_texts", {"texts": ["three, four"]}), reply("final_answer", {"explanation": "commas"})]
    w, client = make(model, store, replies)
    job = Job(1, ("run", "view"))
    gen = w.rpc_run(job=job)
    first = next(gen)
    assert first["step"]["index"] == 0 and first["hypothesis"] == "h0"
    job.cancel()  # Stop: the request ends; the agent stops after the step in progress
    with pytest.raises(Cancelled):
        next(gen)
    gate.set()
    w._join(30)
    assert w.result.status == "cancelled" and len(w.result.steps) == 2 and w.status == "cancelled"
    assert len(client.agent_calls) == 2  # no step was started after the stop
    # Continue from a view that shows one step: the missing step comes first, then the edit and new steps
    parts, final = drain(w.rpc_run(hypothesis="  fires on commas  ", after=1))
    steps = [p["step"] for p in parts]
    assert [s["index"] for s in steps] == [1, 2, 3, 4]
    assert [s["tool"] for s in steps] == ["run_texts", "user_hypothesis", "run_texts", "final_answer"]
    assert steps[1]["details"] == {"hypothesis": "fires on commas"} and steps[1]["python"] == ""
    assert 'New hypothesis: "fires on commas"' in client.agent_calls[2][-1]["content"]
    assert final["status"] == "final" and final["explanation"] == "commas" and w.n_steps == 5
    # Continue without an edit (the hypothesis box unchanged: the view sends none)
    parts, _ = drain(w.rpc_run(hypothesis=None, after=5))
    assert "user_hypothesis" not in [p["step"]["tool"] for p in parts]
    # Run again starts over
    n_calls = len(client.agent_calls)
    parts, final = drain(w.rpc_run(restart=True))
    assert parts[0]["step"]["index"] == 0 and len(client.agent_calls) > n_calls
    assert [s.index for s in w.result.steps] == list(range(len(w.result.steps)))


def test_python_api_run_and_stop(model, store):
    w, _ = make(model, store)
    res = w.run()
    assert res.status == "final" and len(res.steps) == 5 and w.steps == res.steps
    w.stop()  # nothing running: harmless


def test_read_only_transcript_from_a_saved_result(model, store, tmp_path):
    w, _ = make(model, store)
    res = w.run()
    saved = AgentResult.load(res.save(tmp_path / "a.json"))
    view = AgentTranscript(saved)
    assert not view.can_run and view.status == "final" and view.n_steps == 5 and view.explanation == "h1"
    assert view.scale == pytest.approx(store.unit_stats(SITE, UNIT)["max"])
    got = view.call("steps")
    assert [s["tool"] for s in got["steps"]] == [s.tool for s in res.steps]
    assert np.allclose(got["steps"][1]["texts"][0]["acts"], res.steps[1].result["texts"][0]["acts"])
    with pytest.raises(RuntimeError, match="no agent to run"):
        view.call("run")
    import workbench.widgets  # noqa: F401 - registers the viewers

    assert isinstance(saved.show(), AgentTranscript)
    assert isinstance(w.agent.show(), AgentTranscript) and w.agent.show().can_run
    with pytest.raises(TypeError, match="Agent or AgentResult"):
        AgentTranscript(42)


def test_step_texts_of_each_tool(model, store):
    w, _ = make(model, store, [reply("edit_text", {"text": "The cat sat.", "new_text": "A cat sat."}),
                                reply("run_texts", {"texts": []}), reply("final_answer", {"explanation": "x"})])
    res = w.run()
    edit, bad, fin = res.steps
    texts = step_texts(edit)
    assert [t["label"] for t in texts] == ["before", "after"]
    assert np.allclose(texts[1]["acts"], edit.result["after"]["acts"])
    assert step_texts(bad) == [] and step_payload(bad)["error"] == bad.error
    assert step_payload(fin)["details"]["explanation"] == "x"
