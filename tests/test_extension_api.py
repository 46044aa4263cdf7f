"""The public extension API: a spec and an in-trace method written outside the package.

The code is the example in docs/architecture.md, extracted and imported from a real file, so
the documented example is what runs. References are plain PyTorch forward hooks.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.core.program import TraceOp
from workbench.core.specs import Spec, specs_from_json, specs_to_json

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
PROMPT = "The cat sat on the mat"


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    text = DOC.read_text()
    block = re.search(r"## Extending: a new intervention.*?```python\n(.*?)```", text, re.S).group(1)
    path = tmp_path_factory.mktemp("ext") / "my_clamp.py"
    path.write_text(block)
    spec = importlib.util.spec_from_file_location("my_clamp", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["my_clamp"] = mod
    spec.loader.exec_module(mod)
    return mod


def _hook_logits(model, layer, limit, positions=None):
    block = model.hf.model.layers[layer]

    def fn(_m, _args, out):
        x = out[0] if isinstance(out, tuple) else out
        y = x.clone()
        sel = slice(None) if positions is None else positions
        y[:, sel] = y[:, sel].clamp(-limit, limit)
        return (y, *out[1:]) if isinstance(out, tuple) else y

    h = block.register_forward_hook(fn)
    try:
        with torch.no_grad():
            ids = model.tokenize(PROMPT).input_ids
            return model.hf(input_ids=ids).logits[0, -1]
    finally:
        h.remove()


def test_a_spec_defined_outside_matches_a_hook(tiny, ext):
    model = tiny("llama")
    for positions in (None, [1, -1]):
        spec = ext.Clamp("resid_post.0", limit=0.05, positions=positions)
        assert isinstance(spec.compile(model)[0], TraceOp)
        got = model.run(PROMPT, [spec]).logits[0]
        ref = _hook_logits(model, 0, 0.05, positions)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        plain = model.run(PROMPT).logits[0]
        assert (got - plain).abs().max() > 1e-3  # the clamp changed something


def test_the_new_kind_round_trips_json_and_is_checked(tiny, ext):
    model = tiny("llama")
    back = specs_from_json(specs_to_json([ext.Clamp("resid_post.1", limit=0.5, positions=[2])]))
    assert type(back[0]) is ext.Clamp and back[0].limit == 0.5 and back[0].positions == [2]
    with pytest.raises(IndexError, match="position 99 is out of range"):
        model.run(PROMPT, [ext.Clamp("resid_post.1", positions=[99])])
    with pytest.raises(IndexError, match="row 3 is out of range"):
        model.run(PROMPT, [ext.Clamp("resid_post.1", rows=[3])])


def test_the_new_kind_runs_at_every_generation_step(tiny, ext):
    model = tiny("llama")
    spec = ext.Clamp("resid_post.0", limit=0.05)
    got = model.generate(PROMPT, [spec], max_new_tokens=4).token_ids
    block = model.hf.model.layers[0]
    h = block.register_forward_hook(lambda _m, _a, out: out.clamp(-0.05, 0.05) if not isinstance(out, tuple)
                                    else (out[0].clamp(-0.05, 0.05), *out[1:]))
    try:
        ids = model.tokenize(PROMPT).input_ids
        ref = model.hf.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    finally:
        h.remove()
    assert got == ref[0, ids.shape[1]:].tolist()


def test_an_in_trace_method_reads_sites_through_the_public_program(tiny, ext):
    model = tiny("llama")
    norms = ext.resid_norms(model, PROMPT)
    with torch.no_grad():
        hs = model.hf(input_ids=model.tokenize(PROMPT).input_ids, output_hidden_states=True).hidden_states
    ref = torch.stack([hs[L + 1].norm(dim=-1) for L in range(model.n_layers - 1)])
    # The last hidden state HF returns is after the final norm; compare the layers before it.
    torch.testing.assert_close(norms[: model.n_layers - 1], ref, atol=1e-5, rtol=1e-5)


def test_builtins_compile_through_the_same_path(tiny):
    model = tiny("llama")

    class Inert(wb.Edit):  # a built-in whose compile says "nothing to do": the engine must obey it
        def compile(self, model):
            return []

    plain = model.run(PROMPT).logits
    assert torch.equal(model.run(PROMPT, [Inert("neurons.0", [1, 2], "zero")]).logits, plain)
    assert not torch.equal(model.run(PROMPT, [wb.Edit("neurons.0", None, "zero")]).logits, plain)


def test_a_spec_without_compile_says_so(tiny):
    from dataclasses import dataclass

    @dataclass
    class Bare(Spec):
        kind = "bare_test_kind"

    with pytest.raises(NotImplementedError, match="compile"):
        tiny("llama").run(PROMPT, [Bare("resid_post.0")])


def test_the_extensions_run_remote_local(tiny, ext):
    import nnsight

    nnsight.register(ext)  # a module the server lacks travels by value (as the docs say)
    local, remote = tiny("llama"), tiny("llama", remote="local")
    spec = ext.Clamp("resid_post.0", limit=0.05, positions=[1])
    torch.testing.assert_close(remote.run(PROMPT, [spec]).logits, local.run(PROMPT, [spec]).logits)
    torch.testing.assert_close(ext.resid_norms(remote, PROMPT), ext.resid_norms(local, PROMPT))
