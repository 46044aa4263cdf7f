"""LogitLens widget on tiny models: payload vs the engine, binary transport, pinning, errors, .show()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.causal.lens import TunedLens, logit_lens, tuned_lens
from workbench.widgets import LogitLens
from workbench.widgets._transport import pack

PROMPT = "The quick brown fox jumps"


@pytest.fixture(scope="module")
def llama() -> wb.Model:
    from workbench.testing import tiny_model

    return tiny_model("llama")


def one_token(model: wb.Model) -> str:
    for w in [" the", "the", "s", "e"]:
        if len(model.tokenizer.encode(w, add_special_tokens=False)) == 1:
            return w
    raise AssertionError("no single-token target")


def test_run_payload_matches_the_engine(llama):
    t = one_token(llama)
    w = LogitLens(llama, PROMPT, targets=[t], top_k=3)
    r = w.call("run")
    ref = logit_lens(llama, PROMPT, targets=[t], top_k=3)
    assert r["tokens"] == ref.tokens and r["targets"] == [t] and r["kind"] == "logit"
    n = len(ref.tokens)
    assert r["top_ids"].dtype == np.int32 and r["top_ids"].shape == (2, n, 3)
    assert r["top_probs"].dtype == np.float32
    np.testing.assert_array_equal(r["top_ids"], ref.top_ids.numpy())
    np.testing.assert_allclose(r["top_probs"], ref.top_probs.numpy(), rtol=1e-6)
    np.testing.assert_allclose(r["target_probs"], ref.target_probs.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(r["target_ranks"], ref.target_ranks.numpy())
    np.testing.assert_allclose(r["kl"], ref.kl.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(r["layers"], [0, 1])
    assert r["id_text"][str(int(ref.top_ids[1, -1, 0]))] == ref.top_tokens[1][-1][0]
    assert r["state"] == {"prompt": PROMPT, "targets": [t], "top_k": 3}


def test_arrays_travel_as_binary_buffers(llama):
    r = LogitLens(llama, PROMPT).call("run")
    body, buffers = pack(r)
    for key in ("top_ids", "top_probs", "target_probs", "target_ranks", "kl", "layers", "positions"):
        assert "__array__" in body[key], key
    assert body["top_probs"]["dtype"] == "float32" and body["top_ids"]["dtype"] == "int32"
    assert len(buffers) == 8
    assert isinstance(body["id_text"], dict) and all(isinstance(v, str) for v in body["id_text"].values())


def test_rerun_with_a_new_prompt(llama):
    w = LogitLens(llama, PROMPT)
    a = w.call("run")
    b = w.call("run", prompt="Another prompt entirely")
    assert b["tokens"] != a["tokens"] and b["state"]["prompt"] == "Another prompt entirely"
    assert w.result.prompt == "Another prompt entirely"
    np.testing.assert_array_equal(b["top_ids"], logit_lens(llama, "Another prompt entirely").top_ids.numpy())


def test_pinning(llama):
    w = LogitLens(llama, PROMPT)
    assert w.pinned == [] and w.pinned_site is None
    w.pin(1, 3)
    assert w.pinned == [1, 3] and w.pinned_site == "resid_post.1" and w.pinned_position == 3
    w.pinned = [0, 2]  # what a click in the browser sets
    assert w.pinned_site == "resid_post.0"
    with pytest.raises(IndexError, match="out of range"):
        w.pin(5, 0)


def test_errors_are_clear(llama):
    with pytest.raises(ValueError, match="single tokens"):
        LogitLens(llama, PROMPT, targets=["xylophone quagmire"])
    w = LogitLens(llama, PROMPT)
    with pytest.raises(ValueError, match="empty"):
        w.call("run", prompt="")
    with pytest.raises(ValueError, match="single tokens"):
        w.call("run", targets=["xylophone quagmire"])
    # through the message path the error is sent to the browser
    sent = []
    w.send = lambda msg, buffers=None: sent.append(msg)
    w._run(w.rpc_run, 7, {"prompt": ""}, None)
    assert sent[-1]["error"]["kind"] == "ValueError" and "empty" in sent[-1]["error"]["message"]
    assert "empty" in w.error


def test_show_and_from_result(llama):
    t = one_token(llama)
    res = logit_lens(llama, PROMPT, targets=[t], top_k=4)
    w = res.show()
    assert isinstance(w, LogitLens) and w.prompt == PROMPT and w.targets == [t] and w.top_k == 4
    assert w.result is res  # no recomputation for the same view
    r = w.call("run")
    np.testing.assert_array_equal(r["top_ids"], res.top_ids.numpy())


def test_tuned_lens_widget(llama):
    lens = TunedLens.identity(llama)
    torch.manual_seed(0)
    lens.weight.normal_(0, 0.05)
    w = LogitLens(llama, PROMPT, lens=lens)
    assert w.kind == "tuned"
    r = w.call("run")
    assert r["kind"] == "tuned"
    np.testing.assert_allclose(r["kl"], tuned_lens(llama, PROMPT, lens).kl.numpy(), rtol=1e-5)
    shown = tuned_lens(llama, PROMPT, lens).show()
    assert shown.lens is lens and shown.kind == "tuned"
