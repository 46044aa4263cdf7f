"""AttentionHeads: streamed, packed float16 patterns equal the engine's captures."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import traitlets

from workbench.widgets._transport import pack_tril, unpack
from workbench.widgets.attention import AttentionHeads

PROMPT = "The cat sat on the mat because it was tired."


@pytest.fixture(params=["llama", "gpt2"])
def model(request, tiny):
    """The cached tiny model of each family (overrides conftest's all-family fixture)."""
    return tiny(request.param)


def drive(widget: AttentionHeads, params: dict, method: str = "patterns", timeout: float = 60) -> list[tuple[dict, list]]:
    """Send a request exactly as the browser does; return every (message, buffers) sent back."""
    sent: list[tuple[dict, list]] = []
    done = threading.Event()

    def send(msg: dict, buffers: list | None = None) -> None:
        sent.append((msg, list(buffers or [])))
        if msg.get("done"):
            done.set()

    widget.send = send  # type: ignore[method-assign]
    widget._on_custom(widget, {"type": "request", "id": 7, "method": method, "params": params}, [])
    assert done.wait(timeout), "no final reply"
    return sent


def test_streamed_patterns_match_capture(model) -> None:
    w = AttentionHeads(model, PROMPT)
    assert (w.n_layers, w.n_heads, w.layers) == (model.n_layers, model.n_heads, list(range(model.n_layers)))
    sent = drive(w, {"prompt": PROMPT})
    ref = model.run(PROMPT, capture=[f"pattern.{L}" for L in range(model.n_layers)])
    s = len(ref.tokens[0])
    partials, final = sent[:-1], sent[-1]
    assert [m["content"]["layer"] for m, _ in partials] == list(range(model.n_layers))
    assert all(m["id"] == 7 and m["done"] is False for m, _ in partials)
    for msg, buffers in partials:
        L = msg["content"]["layer"]
        got = unpack(msg["content"], buffers)["pattern"]
        assert got.dtype == np.float16 and got.shape == (model.n_heads, s * (s + 1) // 2)
        want = pack_tril(ref[f"pattern.{L}"][0].numpy())
        np.testing.assert_allclose(got.astype(np.float32), want, atol=1e-3, rtol=1e-3)
        # rows of the unpacked triangle are attention distributions
        full = np.zeros((model.n_heads, s, s), np.float32)
        rows, cols = np.tril_indices(s)
        full[:, rows, cols] = got
        np.testing.assert_allclose(full.sum(-1), 1.0, atol=5e-3)
    assert final[0]["done"] is True and "error" not in final[0]
    assert final[0]["content"]["tokens"] == ref.token_texts(0)
    assert w.tokens == ref.token_texts(0)
    assert w.error == ""


def test_payload_is_binary_and_small(model) -> None:
    w = AttentionHeads(model, PROMPT)
    sent = drive(w, {})  # no params: the widget's own prompt and layers
    s = len(model.tokenize(PROMPT).tokens[0])
    n_values = model.n_layers * model.n_heads * s * (s + 1) // 2
    total = 0
    for msg, buffers in sent[:-1]:
        desc = msg["content"]["pattern"]
        assert set(desc) == {"__array__", "dtype", "shape"} and desc["dtype"] == "float16"
        assert len(buffers) == 1 and isinstance(buffers[0], memoryview)
        text = json.dumps(msg)  # JSON-serializable, and no float lists in it
        assert len(text) < 300, text
        total += sum(b.nbytes for b in buffers) + len(text)
    assert total / n_values <= 2.5, f"{total / n_values:.2f} bytes per attention value"


def test_call_from_python_and_layer_subset(model) -> None:
    last = model.n_layers - 1
    w = AttentionHeads(model, "Hello there", layers=[last])
    w.prompt = PROMPT
    parts = []
    gen = w.rpc_patterns()
    while True:
        try:
            parts.append(next(gen))
        except StopIteration as stop:
            final = stop.value
            break
    assert [p["layer"] for p in parts] == [last]
    assert final["tokens"] == model.to_str_tokens(PROMPT)
    assert final["layers"] == [last]
    assert w.call("patterns", prompt="Hi")["tokens"] == model.to_str_tokens("Hi")


def test_wrong_layer_is_a_clear_error(model) -> None:
    with pytest.raises(IndexError, match=r"layer 99 is out of range: this model has layers 0\.\.1"):
        AttentionHeads(model, PROMPT, layers=[99])
    w = AttentionHeads(model, PROMPT)
    with pytest.raises(IndexError, match="out of range"):
        w.call("patterns", layers=[-1])
    with pytest.raises(IndexError, match="out of range"):
        w.layers = [0, 2]
    sent = drive(w, {"layers": [5]})
    err = sent[-1][0]["error"]
    assert err["kind"] == "IndexError" and "layer 5 is out of range" in err["message"]
    assert "out of range" in w.error


def test_empty_prompt_gives_an_error_reply(model) -> None:
    w = AttentionHeads(model, PROMPT)
    sent = drive(w, {"prompt": ""})
    assert len(sent) == 1
    msg = sent[0][0]
    assert msg["done"] is True and "content" not in msg
    assert msg["error"]["kind"] == "ValueError" and "prompt is empty" in msg["error"]["message"]
    assert "prompt is empty" in w.error
    # the next good request clears the error
    drive(w, {"prompt": PROMPT})
    assert w.error == ""


def test_selection(model) -> None:
    w = AttentionHeads(model, PROMPT)
    assert w.selected == [] and w.selection is None
    w.selected = [1, 3]
    assert w.selection == (1, 3)
    w.selected = []
    assert w.selection is None
    with pytest.raises(traitlets.TraitError):
        w.selected = [1]


def test_long_prompt_messages_stay_small(model) -> None:
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)
    s = len(model.tokenize(text).tokens[0])
    assert s > 150
    w = AttentionHeads(model, text)
    sent = drive(w, {"prompt": text})
    for _msg, buffers in sent[:-1]:
        assert sum(b.nbytes for b in buffers) == model.n_heads * s * (s + 1) // 2 * 2
    w.max_tokens = 100
    sent = drive(w, {"prompt": text})
    assert "at most 100" in sent[-1][0]["error"]["message"]


# -- large payloads: every message under the byte budget, whatever the model's shape ----------


@pytest.fixture(scope="module")
def wide():
    """A tiny GPT-2 with 32 heads and room for 1,024 positions (the widget's token cap)."""
    import torch
    import transformers as tf

    import workbench as wb
    from workbench.testing import tiny_tokenizer

    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=32, n_positions=1024, vocab_size=512, bos_token_id=0, eos_token_id=0)
    hf = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    return wb.load(hf, tokenizer=tiny_tokenizer())


def _prompt_of(model, n_tokens: int) -> str:
    """The longest prefix of a repeated sentence that has at most `n_tokens` tokens."""
    base = "the quick brown fox jumps over the lazy dog " * 200
    lo, hi = 0, len(base)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(model.tokenize(base[:mid]).tokens[0]) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return base[:lo]


def test_32_heads_at_the_cap_every_message_under_budget(wide) -> None:
    from workbench.widgets._transport import MAX_MESSAGE_BYTES, join, message_bytes

    w = AttentionHeads(wide, PROMPT)
    cap = w.token_cap()
    assert cap == 1024  # small models keep the full 1,024 tokens
    prompt = _prompt_of(wide, cap)
    s = len(wide.tokenize(prompt).tokens[0])
    assert s == cap
    sent = drive(w, {"prompt": prompt})
    assert len(sent) > 2 * 8  # each layer's 33.6 MB triangle went as several chunks
    sizes = [message_bytes(m, b) for m, b in sent]
    assert max(sizes) <= MAX_MESSAGE_BYTES - 4096, max(sizes)
    assert all(m["id"] == 7 for m, _ in sent)
    whole = join(sent)
    assert [m.get("done") for m, _ in whole] == [False, False, True]
    ref = wide.run(prompt, capture=[f"pattern.{L}" for L in range(2)])
    for L, (msg, buffers) in enumerate(whole[:2]):
        assert msg["content"]["layer"] == L
        got = unpack(msg["content"], buffers)["pattern"]
        assert got.shape == (32, s * (s + 1) // 2)
        np.testing.assert_array_equal(got, w.result.activations[f"pattern.{L}"].numpy())
        np.testing.assert_allclose(got.astype(np.float32), pack_tril(ref[f"pattern.{L}"][0].numpy()), atol=1e-3)
    assert whole[-1][0]["content"]["tokens"] == ref.token_texts(0)


def test_split_join_round_trip_and_small_messages_unchanged() -> None:
    from workbench.widgets._transport import join, pack, split

    a = np.arange(5000, dtype=np.float32).reshape(50, 100)
    b = np.arange(7, dtype=np.int32)
    body, bufs = pack({"a": a, "b": b, "text": "é" * 3000})
    msg = {"type": "reply", "id": 3, "done": False, "content": body}
    assert split(msg, bufs) == [(msg, bufs)]  # under the budget: one message, as before
    msgs = split(msg, bufs, part=4, budget=8192)
    assert len(msgs) > 3 and all(set(m) == {"type", "id", "chunk"} and len(bb) == 1 for m, bb in msgs)
    (got, got_bufs), = join(msgs[::-1])  # any order
    assert got == msg
    out = unpack(got["content"], got_bufs)
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"], b)


def test_token_cap_depends_on_bytes(model) -> None:
    w = AttentionHeads(model, PROMPT)
    assert w.token_cap() == 1024  # a tiny model keeps the default
    # the budget of a 32-layer, 32-head model (layers × heads × s² × 4 bytes ≤ 1.25 GiB)
    w.max_pattern_bytes = AttentionHeads.max_pattern_bytes * model.n_heads * model.n_layers / (32 * 32)
    assert w.token_cap() == 572
    assert w.token_cap(1) > w.token_cap()  # fewer layers, longer prompts
    w.max_pattern_bytes = 2 * model.n_heads * 4 * 20**2  # 20 tokens for both layers
    text = _prompt_of(model, 24)
    sent = drive(w, {"prompt": text})
    err = sent[-1][0]["error"]["message"]
    assert "has 24 tokens; AttentionHeads shows at most 20 for 2 layers" in err and "MiB" in err
    sent = drive(w, {"prompt": text, "layers": [0]})  # one layer: 28 tokens fit
    assert "error" not in sent[-1][0]
