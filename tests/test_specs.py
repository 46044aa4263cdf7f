"""Intervention specs: JSON round trips, and bad input rejected with clear errors before anything runs."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.core.specs import SPEC_KINDS

D = [0.5] * 48


def all_kinds() -> list[wb.Spec]:
    """At least one spec of every kind and op, with every optional field used somewhere."""
    return [
        wb.zero_neurons(0, [1, 2]),
        wb.scale_neurons(1, [3], 2.5, positions=[0, -1]),
        wb.set_neurons(0, [4, 5], [1.0, -2.0]),
        wb.set_neurons(0, [4], 3.0),
        wb.mean_ablate_neurons(1, [6, 7], [0.1, 0.2], positions=[2]),
        wb.Edit("resid_post.1", None, "add", 0.25, [1]),
        wb.Edit("embed", [0], "zero"),
        wb.Edit("logits", [7], "set", 100.0, [-1]),
        wb.ablate_heads(1, [0, 3]),
        wb.ablate_heads(0, [2], positions=[-1]),
        wb.AblateHeads("z.1", [1], "mean", torch.ones(4, 12)),
        wb.AblateHeads(0, [1]),  # a bare layer means z.<layer>
        wb.steer(0, torch.linspace(-1, 1, 48), 3.0, name="happy"),
        wb.steer(1, D, -1.0, site="mlp_out", positions=[0, 5]),
        wb.Steer("resid_pre.0", np.ones(48, dtype=np.float32), 2),
        wb.Patch("resid_post.0", source="The dog sat on the rug"),
        wb.Patch("z.1", source="A dog is", positions=[-1, 0], source_positions=[-2, 1], indices=[1, 3]),
        wb.Patch("blocks.1.mlp.hook_post", source="x", indices=torch.tensor([5, 6])),
    ]


@pytest.mark.parametrize("spec", all_kinds(), ids=lambda s: s.describe())
def test_round_trip(spec):
    d = spec.to_dict()
    assert d["kind"] == spec.kind and d["site"] == spec.site
    text = json.dumps(d)  # JSON-ready: no tensors or numpy values left
    back = wb.core.spec_from_dict(json.loads(text))
    assert type(back) is type(spec)
    assert back == spec
    assert back.to_dict() == d
    assert wb.core.spec_from_dict(json.loads(spec.to_json())) == spec
    assert isinstance(spec.describe(), str) and spec.describe()


def test_every_kind_is_covered():
    assert {s.kind for s in all_kinds()} == set(SPEC_KINDS) == {"edit", "ablate_heads", "steer", "patch"}
    assert {s.op for s in all_kinds() if isinstance(s, wb.Edit)} == {"zero", "set", "scale", "mean", "add"}


def test_list_round_trip():
    specs = all_kinds()
    text = wb.specs_to_json(specs)
    assert isinstance(json.loads(text), list)
    assert wb.specs_from_json(text) == specs
    assert wb.specs_from_json("[]") == []


def test_values_are_normalized():
    s = wb.Edit("neurons.0", torch.tensor([1, 2]), "set", np.array([1.5, 2.5]), positions=(0, 1))
    assert s.indices == [1, 2] and s.value == [1.5, 2.5] and s.positions == [0, 1]
    assert all(type(i) is int for i in s.indices) and all(type(v) is float for v in s.value)
    st = wb.steer(0, torch.ones(48, dtype=torch.float16), 2)
    assert st.strength == 2.0 and all(type(v) is float for v in st.direction)
    assert wb.Edit("blocks.0.hook_resid_post", [1], "zero").site == "resid_post.0"
    a = wb.AblateHeads("z.0", torch.tensor([1]), "mean", torch.zeros(4, 12))
    assert a.heads == [1] and np.array(a.means).shape == (4, 12)


def test_applied_dicts_equal_applied_specs(tiny):
    """What widgets send (dicts) runs exactly like the specs themselves."""
    model = tiny("llama")
    specs = [s for s in all_kinds() if not isinstance(s, wb.Patch)]
    specs.append(wb.Patch("resid_post.0", source="A dog is", positions=[0], source_positions=[1]))
    a = model.run("The cat sat on the mat", specs, logits="all")
    b = model.run("The cat sat on the mat", json.loads(wb.specs_to_json(specs)), logits="all")
    torch.testing.assert_close(a.logits, b.logits)
    assert a.interventions == b.interventions == specs


# -- errors at construction ----------------------------------------------------------------
@pytest.mark.parametrize("make, exc, words", [
    (lambda: wb.Edit("neurons.0", [1], "double"), ValueError, "unknown op 'double'"),
    (lambda: wb.Edit("pattern.0", [1], "zero"), ValueError, "pattern.0 is read-only"),
    (lambda: wb.Edit("head_out.1", [1], "zero"), ValueError, "read-only"),
    (lambda: wb.Edit("neurons.0", [1], "set"), ValueError, "op 'set' needs a value"),
    (lambda: wb.Edit("neurons.0", [1], "scale"), ValueError, "op 'scale' needs a value"),
    (lambda: wb.Edit("neurons.0", [1], "mean"), ValueError, "needs a value"),
    (lambda: wb.Edit("neurons.0", [1], "add"), ValueError, "needs a value"),
    (lambda: wb.Edit("neurons.0", [1], "set", "high"), ValueError, "takes a number or one number per index"),
    (lambda: wb.Edit("neurons.0", [1, 2], "add", [1.0, "x"]), ValueError, "one number per index"),
    (lambda: wb.Edit("neurons.0", [1], "set", [[1.0]]), ValueError, "one number per index"),
    (lambda: wb.Edit("neuron.0", [1], "zero"), ValueError, "unknown site 'neuron'"),
    (lambda: wb.Edit("neurons", [1], "zero"), ValueError, "needs a layer"),
    (lambda: wb.AblateHeads("resid_post.0", [1]), ValueError, "per-head site 'z.<layer>'"),
    (lambda: wb.AblateHeads("z.0", [1], "scale"), ValueError, "'zero' or 'mean'"),
    (lambda: wb.AblateHeads("z.0", [1], "mean"), ValueError, "needs means"),
    (lambda: wb.Steer("resid_post.0"), ValueError, "needs a direction"),
    (lambda: wb.Steer("pattern.1", D), ValueError, "cannot steer read-only site pattern.1"),
    (lambda: wb.Patch("resid_post.0"), ValueError, "needs a source prompt"),
    (lambda: wb.Patch("pattern.0", source="x"), ValueError, "cannot patch read-only"),
    (lambda: wb.Patch("resid_post.0", source="x", positions=[1, 2], source_positions=[1]), ValueError,
     "same length"),
    (lambda: wb.core.spec_from_dict({"kind": "explode", "site": "neurons.0"}), ValueError, "unknown intervention kind 'explode'"),
    (lambda: wb.core.spec_from_dict({"site": "neurons.0"}), ValueError, "unknown intervention kind None"),
    (lambda: wb.core.spec_from_dict({"kind": "edit", "site": "neurons.0", "op": "zero", "bogus": 1}), TypeError, "bogus"),
    (lambda: wb.specs_from_json('[{"kind": "steer", "site": "logits.0", "direction": [1]}]'), ValueError, "takes no layer"),
])
def test_bad_specs(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


# -- errors that need the model: raised before any forward pass ------------------------------
@contextmanager
def no_forward(model: wb.Model):
    """Fail if the model runs a forward pass inside the block."""
    calls = []
    h = model.hf.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        yield
    finally:
        h.remove()
        assert calls == [], "the error must come before the model runs"


PROMPT = "The cat sat on the mat"  # 9 tokens


@pytest.mark.parametrize("make, exc, words", [
    (lambda: [wb.zero_neurons(2, [1])], IndexError, r"layer 2 is out of range: this model has layers 0\.\.1"),
    (lambda: [wb.Edit("neurons.-1", [1], "zero")], IndexError, "layer -1 is out of range"),
    (lambda: [wb.zero_neurons(0, [96])], IndexError, r"index 96 is out of range for neurons\.0 \(size 96\)"),
    (lambda: [wb.zero_neurons(0, [-97])], IndexError, "index -97 is out of range"),
    (lambda: [wb.Edit("resid_post.0", [48], "zero")], IndexError, "size 48"),
    (lambda: [wb.Edit("logits", [512], "zero")], IndexError, "size 512"),
    (lambda: [wb.ablate_heads(0, [4])], IndexError, r"head 4 is out of range for z\.0 \(size 4\)"),
    (lambda: [wb.Patch("z.0", source="A dog is", positions=[0], indices=[7])], IndexError, "head 7"),
    (lambda: [wb.Patch("neurons.0", source="A dog is", positions=[0], indices=[100])], IndexError, "index 100"),
    (lambda: [wb.zero_neurons(0, [1], positions=[9])], IndexError, "position 9 is out of range for a prompt of 9 tokens"),
    (lambda: [wb.zero_neurons(0, [1], positions=[-10])], IndexError, "position -10 is out of range"),
    (lambda: [wb.steer(0, D, positions=[0, 20])], IndexError, "position 20"),
    (lambda: [wb.Patch("resid_post.0", source="A dog is", positions=[0], source_positions=[5])], IndexError,
     "source position 5 is out of range for a source of 5 tokens"),
    (lambda: [wb.Patch("resid_post.0", source="A dog is", positions=[8])], IndexError, "source position 8"),
    (lambda: [wb.Patch("resid_post.0", source="A dog is")], ValueError, "source has 5 tokens but the prompt has 9"),
    (lambda: [wb.Patch("resid_post.0", source="A dog is", source_positions=[1])], ValueError, "need target positions"),
    (lambda: [wb.set_neurons(0, [1, 2, 3], [1.0, 2.0])], ValueError, "2 values for 3 indices"),
    (lambda: [wb.Edit("neurons.0", None, "set", [1.0, 2.0])], ValueError, r"2 values for 96 units of neurons\.0"),
    (lambda: [wb.Edit("resid_post.1", None, "add", [0.0] * 47)], ValueError, "47 values for 48 units"),
    (lambda: [wb.steer(0, [1.0] * 47)], ValueError, r"direction has 47 values but resid_post\.0 has width 48"),
    (lambda: [wb.steer(0, [1.0] * 96, site="mlp_out")], ValueError, "direction has 96 values"),
    (lambda: [wb.AblateHeads("z.1", [0], "mean", torch.zeros(4, 11))], ValueError, r"means have shape \(4, 11\)"),
    (lambda: [wb.AblateHeads("z.1", [0], "mean", torch.zeros(12))], ValueError, "expected \\[n_heads, d_head\\]"),
    (lambda: [wb.zero_neurons(0, [1]), wb.steer(1, [1.0])], ValueError, "direction has 1 values"),  # any bad spec stops all
    (lambda: [42], TypeError, "an intervention is a workbench spec or its dict, not int"),
    (lambda: [{"kind": "edit", "site": "neurons.0", "op": "nope"}], ValueError, "unknown op"),
])
def test_bad_specs_for_the_model(tiny, make, exc, words):
    model = tiny("llama")
    with no_forward(model), pytest.raises(exc, match=words):
        model.run(PROMPT, make())


def test_bad_captures_and_prompts_before_running(tiny):
    model = tiny("gpt2")
    with no_forward(model):
        with pytest.raises(IndexError, match="layer 5 is out of range"):
            model.run(PROMPT, capture=["neurons.5"])
        with pytest.raises(ValueError, match="unknown site 'mlp'"):
            model.run(PROMPT, capture=["mlp.0"])
        with pytest.raises(ValueError, match="cannot parse site"):
            model.run(PROMPT, capture=[""])
        with pytest.raises(ValueError, match="prompt 1 is empty"):
            model.run([PROMPT, ""])


def test_generation_positions(tiny):
    """In generate, positions may name generated tokens (up to the last one), not beyond."""
    model = tiny("llama")
    with no_forward(model):
        with pytest.raises(IndexError, match="position 17 is out of range for a prompt of 9 tokens and 8 generated"):
            model.generate(PROMPT, [wb.steer(0, D, positions=[17])], max_new_tokens=8)
        with pytest.raises(IndexError, match="position 9 is out of range for a prompt of 9 tokens"):
            model.run(PROMPT, [wb.steer(0, D, positions=[9])])
        with pytest.raises(IndexError, match="source position"):  # patches act on the prompt only
            model.generate(PROMPT, [wb.Patch("resid_post.0", source="A dog is", positions=[0], source_positions=[9])])
        with pytest.raises(IndexError, match="position 9 is out of range for a prompt of 9 tokens$"):
            model.generate(PROMPT, [wb.Patch("resid_post.0", source="A dog is", positions=[9], source_positions=[0])])
        with pytest.raises(ValueError, match="max_new_tokens"):
            model.generate(PROMPT, max_new_tokens=0)
    # The last position allowed is the last generated token (a no-op, but not an error).
    model.generate(PROMPT, [wb.steer(0, D, positions=[16])], max_new_tokens=8)


def test_no_forward_detects_a_run(tiny):
    """The guard above is real: it catches runs and generation."""
    model = tiny("llama")
    for go in (lambda: model.run(PROMPT), lambda: model.generate(PROMPT, max_new_tokens=2)):
        with pytest.raises(AssertionError, match="before the model runs"), no_forward(model):
            go()
