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


def reference_thumbs(full: np.ndarray, size: int) -> np.ndarray:
    """Independent reference: max over each factor × factor block's causal cells; -1 where there are none."""
    H, s, _ = full.shape
    f = -(-s // size)
    n = -(-s // f)
    out = np.full((H, n, n), -1.0, np.float32)
    for i in range(n):
        for j in range(n):
            q0, q1, k0, k1 = i * f, min(s, (i + 1) * f), j * f, min(s, (j + 1) * f)
            vals = [full[:, q, k] for q in range(q0, q1) for k in range(k0, k1) if k <= q]
            if vals:
                out[:, i, j] = np.max(np.stack(vals, 1), 1)
    return out


def partial_contents(sent: list[tuple[dict, list]]) -> list[dict]:
    return [unpack(m["content"], b) for m, b in sent[:-1]]


def test_streamed_thumbnails_match_capture(model) -> None:
    w = AttentionHeads(model, PROMPT)
    assert (w.n_layers, w.n_heads, w.layers) == (model.n_layers, model.n_heads, list(range(model.n_layers)))
    sent = drive(w, {"prompt": PROMPT})
    ref = model.run(PROMPT, capture=[f"pattern.{L}" for L in range(model.n_layers)])
    s = len(ref.tokens[0])
    assert s <= 64  # a short prompt: the thumbnail is the whole pattern
    partials, final = sent[:-1], sent[-1]
    assert [m["content"]["layer"] for m, _ in partials] == list(range(model.n_layers))
    assert all(m["id"] == 7 and m["done"] is False for m, _ in partials)
    for msg, buffers in partials:
        L = msg["content"]["layer"]
        part = unpack(msg["content"], buffers)
        got = part["thumbs"]
        assert got.dtype == np.float16 and got.shape == (model.n_heads, s, s) and part["factor"] == 1
        full = ref[f"pattern.{L}"][0].numpy()
        above = np.triu(np.ones((s, s), bool), 1)
        np.testing.assert_array_equal(got[:, above], -1)
        np.testing.assert_allclose(got[:, ~above].astype(np.float32), full[:, ~above], atol=1e-3, rtol=1e-3)
        np.testing.assert_allclose(np.where(above, 0, got.astype(np.float32)).sum(-1), 1.0, atol=5e-3)
    assert final[0]["done"] is True and "error" not in final[0]
    assert final[0]["content"]["tokens"] == ref.token_texts(0)
    assert (final[0]["content"]["seq"], final[0]["content"]["size"], final[0]["content"]["factor"]) == (s, s, 1)
    assert w.tokens == ref.token_texts(0)
    assert w.error == ""


def test_long_prompt_thumbnails_are_max_pooled(model) -> None:
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 5)
    w = AttentionHeads(model, text)
    w.thumb_size = 16
    ref = model.run(text, capture=[f"pattern.{L}" for L in range(model.n_layers)])
    s = len(ref.tokens[0])
    assert s > 64
    f = -(-s // 16)
    parts = partial_contents(drive(w, {"prompt": text}))
    for part in parts:
        want = reference_thumbs(ref[f"pattern.{part['layer']}"][0].numpy(), 16)
        assert part["factor"] == f and part["thumbs"].shape == want.shape and want.shape[1] <= 16
        np.testing.assert_allclose(part["thumbs"].astype(np.float32), want, atol=1e-3, rtol=1e-3)
        # pooled thumbnails hold exactly values of the kept float16 triangle
        tril = w.result.activations[f"pattern.{part['layer']}"].numpy()
        full = np.full((model.n_heads, s, s), -1, np.float16)
        r, c = np.tril_indices(s)
        full[:, r, c] = tril
        np.testing.assert_array_equal(part["thumbs"], reference_thumbs(full.astype(np.float32), 16).astype(np.float16))


def test_thumbnail_plan_and_sharp_stripes_survive() -> None:
    import torch

    from workbench.widgets.attention import thumbnail_plan, thumbnails

    assert thumbnail_plan(10) == (1, 10)
    assert thumbnail_plan(64) == (1, 64)
    assert thumbnail_plan(65) == (2, 33)
    assert thumbnail_plan(1024) == (16, 64)
    assert thumbnail_plan(1000) == (16, 63)
    assert all(thumbnail_plan(s)[1] <= 64 for s in range(1, 2000, 7))
    with pytest.raises(ValueError):
        thumbnail_plan(0)
    # a previous-token head: every row puts 0.97 on the token before it, the rest spread out
    s = 1024
    full = torch.zeros(s, s)
    for q in range(s):
        full[q, : q + 1] = 0.03 / (q + 1)
        full[q, max(0, q - 1)] += 0.97
    rows, cols = torch.tril_indices(s, s)
    th = thumbnails(full[rows, cols][None].half(), s)[0].float()
    assert th.shape == (64, 64)
    diag = th.diagonal()
    assert (diag > 0.96).all(), "max-pooling keeps the previous-token stripe at full strength"
    assert (th.diagonal(-2) < 0.01).all()
    assert (th[torch.ones(64, 64, dtype=torch.bool).triu(1)] == -1).all()
    # average-pooling would fade the stripe to about 16 × 0.97 / 256 of a diagonal block
    assert float(th.diagonal().min()) > 10 * 16 * 0.97 / 256
    with pytest.raises(ValueError, match="packed triangles"):
        thumbnails(torch.zeros(2, 10), 5)


def test_enlarged_head_is_the_full_pattern(model) -> None:
    w = AttentionHeads(model, PROMPT)
    drive(w, {"prompt": PROMPT})
    ref = model.run(PROMPT, capture=[f"pattern.{L}" for L in range(model.n_layers)])
    s = len(ref.tokens[0])
    last_head = model.n_heads - 1
    for L, h in [(0, 0), (model.n_layers - 1, last_head)]:
        sent = drive(w, {"prompt": PROMPT, "layer": L, "head": h}, method="head")
        assert len(sent) == 1 and sent[0][0]["done"] is True and "error" not in sent[0][0]
        out = unpack(sent[0][0]["content"], sent[0][1])
        assert (out["layer"], out["head"], out["seq"]) == (L, h, s)
        got = out["pattern"]
        assert got.dtype == np.float16 and got.shape == (s * (s + 1) // 2,)
        np.testing.assert_array_equal(got, w.result.activations[f"pattern.{L}"][h].numpy())  # the kept run, as is
        np.testing.assert_allclose(got.astype(np.float32), pack_tril(ref[f"pattern.{L}"][0, h].numpy()), atol=1e-3, rtol=1e-3)
        full = w.pattern(L, h)
        np.testing.assert_allclose(full, np.tril(ref[f"pattern.{L}"][0, h].numpy()), atol=1e-3, rtol=1e-3)
        np.testing.assert_allclose(full.sum(-1), 1.0, atol=5e-3)


def test_head_of_another_prompt_reruns_that_layer(model) -> None:
    w = AttentionHeads(model, PROMPT)
    drive(w, {"prompt": PROMPT})
    other = "A different and much longer prompt, with other tokens in it"
    ref = model.run(other, capture=["pattern.1"])
    sent = drive(w, {"prompt": other, "layer": 1, "head": 2}, method="head")
    out = unpack(sent[0][0]["content"], sent[0][1])
    assert out["seq"] == len(ref.tokens[0]) != len(w.result.tokens[0])
    np.testing.assert_allclose(out["pattern"].astype(np.float32), pack_tril(ref["pattern.1"][0, 2].numpy()), atol=1e-3)
    # without a browser the widget's own prompt is the default, and a fresh widget has no run kept
    w2 = AttentionHeads(model, other)
    np.testing.assert_allclose(w2.pattern(1, 2), np.tril(ref["pattern.1"][0, 2].numpy()), atol=1e-3)


def test_bad_head_requests_are_clear_errors(model) -> None:
    w = AttentionHeads(model, PROMPT)
    for params, kind, text in [
        ({"layer": 0, "head": model.n_heads}, "IndexError", f"head {model.n_heads} is out of range"),
        ({"layer": model.n_layers, "head": 0}, "IndexError", "layer 2 is out of range"),
        ({"layer": 0.5, "head": 0}, "ValueError", "layer must be an integer"),
        ({"layer": 0, "head": 0, "prompt": ""}, "ValueError", "prompt is empty"),
    ]:
        err = drive(w, params, method="head")[-1][0]["error"]
        assert err["kind"] == kind and text in err["message"], err
    with pytest.raises(IndexError, match="head -1 is out of range"):
        w.pattern(0, -1)


def test_payload_is_binary_and_small(model) -> None:
    w = AttentionHeads(model, PROMPT)
    sent = drive(w, {})  # no params: the widget's own prompt and layers
    s = len(model.tokenize(PROMPT).tokens[0])
    total = 0
    for msg, buffers in sent[:-1]:
        desc = msg["content"]["thumbs"]
        assert set(desc) == {"__array__", "dtype", "shape"} and desc["dtype"] == "float16"
        assert len(buffers) == 1 and isinstance(buffers[0], memoryview)
        assert buffers[0].nbytes == model.n_heads * s * s * 2
        text = json.dumps(msg)  # JSON-serializable, and no float lists in it
        assert len(text) < 300, text
        total += sum(b.nbytes for b in buffers) + len(text)
    assert total <= model.n_layers * model.n_heads * s * s * 2 + 300 * model.n_layers


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
    f = -(-s // 64)
    for _msg, buffers in sent[:-1]:
        assert sum(b.nbytes for b in buffers) == model.n_heads * (-(-s // f)) ** 2 * 2  # thumbnails only
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
    sizes = [message_bytes(m, b) for m, b in sent]
    assert max(sizes) <= MAX_MESSAGE_BYTES - 4096, max(sizes)
    assert len(sent) == 3  # the first render: one thumbnail message per layer, then the tokens
    assert sum(sizes) < 2 * 32 * 64 * 64 * 2 + 20_000  # 524 kB, where the full triangles were 67 MB
    ref = wide.run(prompt, capture=[f"pattern.{L}" for L in range(2)])
    for L, part in enumerate(partial_contents(sent)):
        assert part["layer"] == L and part["thumbs"].shape == (32, 64, 64) and part["factor"] == 16
        full = ref[f"pattern.{L}"][0].numpy()
        # block (i, j) of the thumbnail: the max over rows 16i.., keys 16j.. on or below the diagonal
        for h, i, j in [(0, 0, 0), (5, 63, 0), (31, 40, 17), (17, 63, 63)]:
            block = np.tril(full[h], 0)[16 * i : 16 * i + 16, 16 * j : 16 * j + 16]
            assert abs(float(part["thumbs"][h, i, j]) - block.max()) <= 1e-3 * max(1, block.max())
        assert (part["thumbs"][:, 3, 4:] == -1).all()
    assert sent[-1][0]["content"]["tokens"] == ref.token_texts(0)
    # the enlarged head: its full 1,024-token triangle in one message under the budget
    sent = drive(w, {"prompt": prompt, "layer": 1, "head": 31}, method="head")
    assert len(sent) == 1 and message_bytes(*sent[0]) <= MAX_MESSAGE_BYTES - 4096
    (msg, buffers), = join(sent)
    got = unpack(msg["content"], buffers)["pattern"]
    assert got.shape == (s * (s + 1) // 2,)
    np.testing.assert_array_equal(got, w.result.activations["pattern.1"][31].numpy())
    np.testing.assert_allclose(got.astype(np.float32), pack_tril(ref["pattern.1"][0, 31].numpy()), atol=1e-3)


def test_first_render_bytes_at_1024_tokens_30_layers_9_heads() -> None:
    """SmolLM2-135M's shape (30 layers × 9 heads) at 1,024 tokens: 2.2 MB for the grid, not 283 MB."""
    import torch
    import transformers as tf

    import workbench as wb
    from workbench.testing import tiny_tokenizer
    from workbench.widgets._transport import MAX_MESSAGE_BYTES, message_bytes

    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_embd=72, n_layer=30, n_head=9, n_positions=1024, vocab_size=512, bos_token_id=0, eos_token_id=0)
    model = wb.load(tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval(), tokenizer=tiny_tokenizer())
    prompt = _prompt_of(model, 1024)
    w = AttentionHeads(model, prompt)
    sent = drive(w, {"prompt": prompt}, timeout=300)
    sizes = [message_bytes(m, b) for m, b in sent]
    before = 30 * 9 * (1024 * 1025 // 2) * 2  # every head's float16 triangle, as the grid used to get
    assert before > 283e6
    assert len(sent) == 31 and max(sizes) < MAX_MESSAGE_BYTES // 40
    assert 2.2e6 < sum(sizes) < 2.25e6, sum(sizes)  # 30 × 9 × 64 × 64 × 2 bytes plus JSON: 128× less
    head = drive(w, {"prompt": prompt, "layer": 29, "head": 8}, method="head")
    assert sum(message_bytes(m, b) for m, b in head) < 1.06e6


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
