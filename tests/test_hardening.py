"""Issue 11 hardening: non-finite numbers refused, clear errors for bad prompts and shapes, context
length, alias look-ups of captures, `load` warning on in-place changes, and `model.trace` holding the lock."""

from __future__ import annotations

import math
import threading
import time
import warnings

import nnsight
import pytest
import torch

import workbench as wb
from workbench.core.engine import (
    AttentionMemoryWarning,
    ContextLengthError,
    NonFiniteLogitsError,
    PromptTypeError,
)
from workbench.core.errors import WorkbenchError
from workbench.core.program import NonFiniteError
from workbench.core.specs import AblateHeads, Edit, spec_from_dict

PROMPT = "The quick brown fox"
NAN, INF = float("nan"), float("inf")


# -- 8. NaN / inf refused -----------------------------------------------------------------------------
@pytest.mark.parametrize("make, word", [
    (lambda: wb.steer(1, [NAN] + [0.0] * 47), "direction"),
    (lambda: wb.steer(1, torch.full((48,), INF)), "direction"),
    (lambda: wb.steer(1, [1.0] * 48, NAN), "strength"),
    (lambda: wb.steer(1, [1.0] * 48, -INF), "strength"),
    (lambda: wb.set_neurons(0, [1, 2], NAN), "value"),
    (lambda: wb.set_neurons(0, [1, 2], [1.0, INF]), "value"),
    (lambda: Edit("mlp_out.0", [1], "add", NAN), "value"),
    (lambda: wb.scale_neurons(0, [1], INF), "scale factor"),
    (lambda: wb.mean_ablate_neurons(0, [1, 2], [0.5, NAN]), "means"),
    (lambda: AblateHeads("z.0", [0], "mean", [[NAN] * 12] * 4), "means"),
    (lambda: spec_from_dict({"kind": "steer", "site": "resid_post.0", "direction": [NAN] * 48}), "direction"),
    (lambda: spec_from_dict({"kind": "edit", "site": "neurons.0", "indices": [1], "op": "set", "value": INF}), "value"),
])
def test_non_finite_numbers_are_refused_when_the_spec_is_built(make, word):
    with pytest.raises(NonFiniteError, match=word) as ei:
        make()
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, WorkbenchError)
    assert "finite" in str(ei.value)


def test_non_finite_numbers_are_refused_again_when_compiled(tiny):
    model = tiny("llama")
    steer = wb.steer(1, [1.0] * 48, 2.0)
    steer.strength = NAN  # changed after it was built
    edit = wb.set_neurons(0, [1], 1.0)
    edit.value = INF
    heads = AblateHeads("z.0", [0], "mean", [[0.0] * 12] * 4)
    heads.means[0][0] = NAN
    direction = wb.steer(0, [1.0] * 48)
    direction.direction[3] = -INF
    for spec, word in ((steer, "strength"), (edit, "value"), (heads, "means"), (direction, "direction")):
        with pytest.raises(NonFiniteError, match=word):
            model.run(PROMPT, [spec])
        with pytest.raises(NonFiniteError, match=word):
            model.generate(PROMPT, [spec], max_new_tokens=2)


def test_feature_edit_values_are_checked_when_compiled(tiny):
    from workbench.dictionaries import Dictionary, scale_features

    model = tiny("llama")
    g = torch.Generator().manual_seed(0)
    d = Dictionary(W_enc=torch.randn(48, 64, generator=g) / 7, b_enc=torch.zeros(64),
                   W_dec=torch.randn(64, 48, generator=g) * 0.3, b_dec=torch.zeros(48), architecture="relu",
                   site="resid_post.0")
    spec = scale_features(d, [1, 2], 2.0)
    spec.value = NAN
    with pytest.raises(NonFiniteError, match="value"):
        model.run(PROMPT, [spec])
    with pytest.raises(ValueError, match="finite"):
        scale_features(d, [1], INF)


def test_nan_logits_from_the_model_are_reported(tiny):
    model = tiny("llama")
    # The model itself produces NaN in the second prompt (a hook on the final norm).
    norm = model.hf.model.norm
    handle = norm.register_forward_hook(lambda m, i, o: o * torch.tensor(
        [[[1.0]], [[NAN]]], dtype=o.dtype)[: o.shape[0]])
    try:
        with pytest.raises(NonFiniteLogitsError, match=r"1 of 2 prompt\(s\).*rows \[1\]"):
            model.run([PROMPT, PROMPT])
        res = model.run([PROMPT, PROMPT], top_k=0, logits=None, capture=["resid_post.0"])  # nothing ranked
        assert torch.isfinite(res["resid_post.0"]).all()
    finally:
        handle.remove()
    res = model.run([PROMPT, PROMPT])  # the hook is gone: finite again
    assert torch.isfinite(res.logits).all()


# -- 9. cryptic errors ----------------------------------------------------------------------------------
def test_a_2d_steering_direction_names_the_argument_and_shape():
    with pytest.raises(ValueError, match=r"Steer direction must be a 1-D vector.*shape \[2, 576\]"):
        wb.steer(3, torch.ones(2, 576))
    with pytest.raises(ValueError, match="1-D vector"):
        wb.steer(3, torch.tensor(1.0))
    with pytest.raises(TypeError, match="strength"):
        wb.steer(3, torch.ones(576), "strong")


@pytest.mark.parametrize("bad", [None, 3, 2.5, {"a": 1}, [PROMPT, None], b"bytes"])
def test_non_text_prompts_raise_a_type_error_naming_the_argument(tiny, bad):
    model = tiny("llama")
    with pytest.raises(PromptTypeError, match="prompts must be a string or a list of strings") as ei:
        model.run(bad)
    assert isinstance(ei.value, TypeError)
    with pytest.raises(PromptTypeError, match="prompt must be a string"):
        model.generate(bad, max_new_tokens=1)
    with pytest.raises(PromptTypeError, match="prompts must be"):
        model.tokenize(bad)


# -- 10. context length and attention memory ---------------------------------------------------------------
def test_prompts_longer_than_the_context_are_refused(tiny):
    model = tiny("gpt2")  # n_positions 256
    assert model.max_positions == 256 and tiny("llama").max_positions == 256
    long = "a b " * 200
    n = len(model.tokenize(long).tokens[0])
    assert n > 256
    with pytest.raises(ContextLengthError, match=rf"{n} tokens.*maximum of 256 positions"):
        model.run(long)
    with pytest.raises(ContextLengthError, match="256"):
        with model.trace(long):
            model.site("resid_post.0").save()
    short = "a b " * 60
    m = len(model.tokenize(short).tokens[0])
    assert m < 256 < m + 200
    with pytest.raises(ContextLengthError, match=rf"{m} tokens \+ max_new_tokens=200 = {m + 200}.*256"):
        model.generate(short, max_new_tokens=200)
    assert model.generate(short, max_new_tokens=2).token_ids  # within the context: runs


def test_eager_attention_memory_warns_above_the_budget(tiny, monkeypatch):
    import workbench.core.engine as engine

    model = tiny("llama")
    n = len(model.tokenize(PROMPT).tokens[0])
    need = 2 * 4 * n * n * 4 * 2  # layers x heads x s^2 x 4 bytes x prompts
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.run([PROMPT, PROMPT])  # far under the default 4 GiB
    monkeypatch.setattr(engine, "EAGER_ATTENTION_BUDGET", need - 1)
    with pytest.warns(AttentionMemoryWarning, match=r"about 0 MB.*2 layers x 4 heads"):
        model.run([PROMPT, PROMPT])
    monkeypatch.setattr(engine, "EAGER_ATTENTION_BUDGET", 2**20)
    with pytest.warns(AttentionMemoryWarning, match=r"250 tokens x 1 prompt\(s\) needs about 2 MB.*budget of 1 MB"):
        model.check_length(250)  # 2 x 4 x 250^2 x 4 bytes = 2.0e6 bytes
    assert engine.EAGER_ATTENTION_BUDGET == 2**20


# -- 6. look-ups by any alias ----------------------------------------------------------------------------
def test_activations_accept_every_alias_of_a_site(tiny):
    model = tiny("gpt2")
    res = model.run(PROMPT, capture=["blocks.1.hook_resid_pre", "neurons.0"])
    x = res.activations["blocks.1.hook_resid_pre"]
    assert x is res.activations["resid_pre.1"] and x is res["blocks.1.hook_resid_pre"]
    assert "blocks.1.hook_resid_pre" in res.activations and "resid_pre.1" in res.activations
    assert res.activations.get("blocks.1.hook_resid_pre") is x and res.activations.get("resid_post.1") is None
    assert sorted(res.activations) == ["neurons.0", "resid_pre.1"]  # keys stay canonical
    assert res.activations == {"resid_pre.1": x, "neurons.0": res.activations["neurons.0"]}
    assert isinstance(res.activations, dict) and 7 not in res.activations
    with pytest.raises(KeyError, match="not captured"):
        res.activations["blocks.0.hook_resid_pre"]


# -- 7. load() says it changed the caller's model ------------------------------------------------------------
def test_load_warns_when_it_switches_the_callers_model_to_eager():
    from workbench.testing import tiny_hf_model, tiny_tokenizer

    hf = tiny_hf_model("llama")
    hf.set_attn_implementation("sdpa")
    assert hf.config._attn_implementation == "sdpa"
    with pytest.warns(UserWarning, match=r"in place.*'eager'.*'sdpa'"):
        wb.load(hf, tokenizer=tiny_tokenizer())
    assert hf.config._attn_implementation == "eager"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already eager: nothing changes, nothing to say
        wb.load(hf, tokenizer=tiny_tokenizer())
    assert "in place" in wb.load.__doc__


# -- 15. model.trace holds the lock ----------------------------------------------------------------------------
def test_a_run_from_another_thread_waits_for_a_user_trace(tiny):
    model = tiny("llama")
    events: list[str] = []

    def rerun() -> None:
        events.append("run start")
        model.run(PROMPT)
        events.append("run done")

    t = threading.Thread(target=rerun)
    with model.trace(PROMPT):
        t.start()
        h = model.site("resid_post.0")
        h[:] = h * 1.0
        t.join(timeout=0.5)
        events.append("alive in trace" if t.is_alive() else "finished in trace")
        out = nnsight.save(model.site("resid_post.1").sum())
    events.append("trace done")
    t.join(timeout=30)
    assert not t.is_alive()
    assert events == ["run start", "alive in trace", "trace done", "run done"], events
    assert math.isfinite(float(out.detach()))
    # the lock is free again, and a second trace works the same way
    assert model.lock.acquire(timeout=1)
    model.lock.release()
    with model.trace(PROMPT):
        again = nnsight.save(model.site("resid_post.1").sum())
    assert float(again.detach()) == float(out.detach())


def test_the_trace_lock_is_released_when_the_block_fails(tiny):
    model = tiny("llama")
    with pytest.raises(Exception):  # noqa: B017 - whatever nnsight raises for a bad site read
        with model.trace(PROMPT):
            model.site("resid_post.0").save()
            raise KeyError("boom")
    done = threading.Event()
    threading.Thread(target=lambda: (model.run(PROMPT), done.set())).start()
    assert done.wait(timeout=30)
    start = time.monotonic()
    tracer = model.trace(PROMPT)  # not a with block: takes no lock
    del tracer
    threading.Thread(target=lambda: (model.run(PROMPT), done.set())).start()
    assert done.wait(timeout=30) and time.monotonic() - start < 30
