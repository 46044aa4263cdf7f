"""Dictionary-feature specs (FeatureEdit, Splice) vs hand-written PyTorch hooks that call the
Dictionary's own encode/decode; bit-identical no-ops; generation; remote="local"; JSON; errors."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from operator import attrgetter

import nnsight
import pytest
import torch
from hf_paths import PATHS

import workbench as wb
from workbench.core.arch import Site
from workbench.dictionaries.dictionary import Dictionary, DictionaryError
from workbench.dictionaries.features import (
    FeatureEdit,
    Splice,
    add_features,
    feature_delta,
    feature_direction,
    get_dictionary,
    register_dictionary,
    registered_dictionaries,
    scale_features,
    set_features,
    steer_feature,
    unregister_dictionary,
    zero_features,
)
from workbench.dictionaries.nmf import semi_nmf

TARGET = "The cat sat on the mat"   # 9 tokens
OTHER = "Paris is the capital of France"
PROMPT = "Hello world, this is"       # 12 tokens


# -- random dictionaries over the tiny models' sites ----------------------------------------------------
def width(model: wb.Model, site: str) -> int:
    s = Site.parse(site)
    return model.arch.n_heads * model.arch.d_head if s.name == "z" else model.arch.size(s)


def make(model: wb.Model, arch: str = "relu", site: str = "resid_post.0", out_site: str | None = None, *,
         normalize: str | None = None, norm_scale: float | None = None, b_pre: bool = False, skip: bool = False,
         d_sae: int = 64, seed: int = 0) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    d_in = width(model, site)
    d_out = width(model, out_site) if out_site else d_in

    def rn(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    kw: dict = {}
    if arch == "topk":
        kw["k"] = 8
    if arch == "jumprelu":
        kw["threshold"] = torch.rand(d_sae, generator=g) * 0.3
    if arch == "gated":
        kw.update(b_gate=rn(d_sae, scale=0.2), b_mag=rn(d_sae, scale=0.2), r_mag=rn(d_sae, scale=0.2))
    if b_pre:
        kw["b_pre"] = rn(d_in, scale=0.2)
    if skip:
        kw["W_skip"] = rn(d_in, d_out, scale=0.05)
    return Dictionary(W_enc=rn(d_in, d_sae, scale=1 / math.sqrt(d_in)), b_enc=rn(d_sae, scale=0.1) - 0.05,
                      W_dec=rn(d_sae, d_out, scale=0.3), b_dec=rn(d_out, scale=0.1), architecture=arch, site=site,
                      out_site=out_site, normalize=normalize, norm_scale=norm_scale, **kw)


def make_nmf(model: wb.Model, layer: int = 1, r: int = 8) -> Dictionary:
    """A real semi-NMF dictionary of the tiny model's neurons."""
    res = model.run([TARGET, OTHER, PROMPT, "A dog is on a mat"], capture=[f"neurons.{layer}"])
    A = torch.cat([res[f"neurons.{layer}"][b, :L] for b, L in enumerate(res.lengths)]).T
    return semi_nmf(A, r, iters=20, progress=False).to_dictionary(site=f"neurons.{layer}")


VARIANTS: dict[str, Callable[[wb.Model], Dictionary]] = {
    "relu": lambda m: make(m, "relu", b_pre=True),
    "topk": lambda m: make(m, "topk", "resid_post.1", b_pre=True),
    "jumprelu": lambda m: make(m, "jumprelu", "resid_pre.1"),
    "gated": lambda m: make(m, "gated", b_pre=True),
    "relu_layer_norm": lambda m: make(m, "relu", normalize="layer_norm", b_pre=True),
    "topk_norm_rescale": lambda m: make(m, "topk", "mlp_out.0", normalize="constant_norm_rescale"),
    "gated_scaled": lambda m: make(m, "gated", "attn_out.1", normalize="expected_average_only_in", norm_scale=0.5),
    "transcoder": lambda m: make(m, "relu", "mlp_in.1", "mlp_out.1", b_pre=True, skip=True),
    "transcoder_jumprelu_norm": lambda m: make(m, "jumprelu", "mlp_in.0", "mlp_out.0", normalize="constant_norm_rescale"),
    "nmf": lambda m: make_nmf(m),
    "z": lambda m: make(m, "relu", "z.1"),
}
FAMILY_CASES = [("llama", v) for v in VARIANTS] + [("gpt2", v) for v in ("topk", "transcoder", "nmf", "relu_layer_norm")]


# -- the reference: plain forward hooks that call the Dictionary itself ---------------------------------------
_MODULES = {"resid_post": ("block", "fwd"), "resid_pre": ("block", "pre"), "mlp_in": ("mlp", "pre"),
            "mlp_out": ("mlp", "fwd"), "neurons": ("down", "pre"), "attn_out": ("attn", "fwd"), "z": ("o_proj", "pre")}


def where(model: wb.Model, family: str, site: str) -> tuple[torch.nn.Module, str]:
    s = Site.parse(site)
    block = attrgetter(PATHS[family]["layers"])(model.hf)[s.layer]
    part, kind = _MODULES[s.name]
    return (block if part == "block" else attrgetter(PATHS[family][part])(block)), kind


Change = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x read [b, j, d_in], y written [b, j, d_out]) -> new y


@contextmanager
def hooked(model: wb.Model, family: str, d: Dictionary, change: Change, positions: list[int] | None = None,
           prompt_len: int = 0) -> Iterator[None]:
    """Apply ``change`` at the dictionary's write site, at absolute positions (negative: from the prompt's
    end), reading the dictionary's input site; tracks positions across generation steps."""
    pos = {"start": 0, "n": 0}
    wanted = None if positions is None else {p + prompt_len if p < 0 else p for p in positions}
    stash: dict[str, torch.Tensor] = {}

    def track(m, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        pos["start"] += pos["n"]
        pos["n"] = ids.shape[1]

    def edit(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = y.shape[1]
        at = range(pos["start"] + pos["n"] - s, pos["start"] + pos["n"])
        js = [j for j, p in enumerate(at) if wanted is None or p in wanted]
        y = y.clone()
        if js:
            y[:, js] = change(x[:, js], y[:, js])
        return y

    def on(site: str, fn: Callable[[torch.Tensor], torch.Tensor]):
        module, kind = where(model, family, site)
        if kind == "pre":
            def pre(m, args, kwargs):
                if args:
                    return (fn(args[0]),) + tuple(args[1:]), kwargs
                return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
            return module.register_forward_pre_hook(pre, with_kwargs=True)

        def fwd(m, args, out):
            return (fn(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else fn(out)
        return module.register_forward_hook(fwd)

    def keep(x: torch.Tensor) -> torch.Tensor:
        stash["x"] = x
        return x

    with ExitStack() as stack:
        stack.callback(model.hf.register_forward_pre_hook(track, with_kwargs=True).remove)
        if d.out_site is None:
            stack.callback(on(d.site, lambda y: edit(y, y)).remove)
        else:
            stack.callback(on(d.site, keep).remove)
            stack.callback(on(d.out_site, lambda y: edit(y, stash["x"])).remove)
        yield


def edit_change(d: Dictionary, feats: list[int], op: str, value) -> Change:
    """x + decode(edited) - decode(acts), written with the Dictionary's own encode/decode."""
    vals = value if isinstance(value, list) else [value] * len(feats)

    def change(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = d.encode(x)
        e = a.clone()
        for k, f in enumerate(feats):
            e[..., f] = {"zero": 0.0, "scale": a[..., f] * (vals[k] or 0), "set": vals[k],
                         "add": a[..., f] + (vals[k] or 0)}[op]
        return y + (d.decode(e, x) - d.decode(a, x)).to(y.dtype)
    return change


def splice_change(d: Dictionary) -> Change:
    return lambda x, y: d.forward(x)[0].to(y.dtype)


def ref_logits(model: wb.Model, family: str, prompt: str | list[str], d: Dictionary | None = None,
               change: Change | None = None, positions: list[int] | None = None) -> torch.Tensor:
    b = model.tokenize(prompt)
    with ExitStack() as stack, torch.no_grad():
        if d is not None:
            stack.enter_context(hooked(model, family, d, change, positions, b.lengths[0]))
        return model.hf(input_ids=b.input_ids, attention_mask=b.attention_mask).logits


def ref_generate(model: wb.Model, family: str, prompt: str, d: Dictionary, change: Change,
                 positions: list[int] | None = None, n: int = 8) -> list[int]:
    b = model.tokenize(prompt)
    with hooked(model, family, d, change, positions, b.lengths[0]), torch.no_grad():
        out = model.hf.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=n,
                                do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    return out[0, b.input_ids.shape[1]:].tolist()


def active_features(model: wb.Model, d: Dictionary, prompt: str = TARGET, n: int = 2) -> list[int]:
    """The n latents most active on the prompt (each active somewhere)."""
    x = model.run(prompt, capture=[d.site])[d.site][0]
    acts = d.encode(x.flatten(-2) if x.dim() == 3 else x)
    total = acts.sum(0)
    top = total.topk(n).indices.tolist()
    assert all(total[f] > 0 for f in top), "the test dictionary must have active latents"
    return top


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 5e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=1e-4)


@pytest.fixture(scope="module")
def dicts(tiny) -> Callable[[str, str], Dictionary]:
    cache: dict = {}

    def get(family: str, variant: str) -> Dictionary:
        if (family, variant) not in cache:
            cache[(family, variant)] = VARIANTS[variant](tiny(family))
        return cache[(family, variant)]
    return get


# -- no edit: bit-identical ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, variant", FAMILY_CASES)
def test_no_edit_is_bit_identical(tiny, dicts, family, variant):
    model, d = tiny(family), dicts(family, variant)
    clean = model.run([TARGET, OTHER], logits="all")
    noops = [FeatureEdit(d, [], "zero"), scale_features(d, [1, 2], 1.0), add_features(d, 3, 0.0),
             scale_features(d, [4, 5], [1.0, 1.0])]
    assert all(s.is_noop for s in noops)
    same = model.run([TARGET, OTHER], noops, logits="all")
    assert torch.equal(same.logits, clean.logits)
    with torch.no_grad():
        plain = model.hf(**model.inputs(model.tokenize([TARGET, OTHER]))).logits
    assert torch.equal(model.run([TARGET, OTHER], noops, logits="all").logits[0], plain[0])
    g = model.generate(PROMPT, noops, max_new_tokens=5)
    assert g.token_ids == model.generate(PROMPT, max_new_tokens=5).token_ids


def test_zeroing_a_latent_that_never_fires_changes_nothing(tiny):
    model = tiny("llama")
    d = make(model, "topk", "resid_post.0")
    x = model.run(TARGET, capture=["resid_post.0"])["resid_post.0"][0]
    dead = int((d.encode(x) > 0).sum(0).eq(0).nonzero()[0])
    clean = model.run(TARGET, logits="all")
    assert torch.equal(model.run(TARGET, [zero_features(d, dead)], logits="all").logits, clean.logits)
    assert not torch.equal(model.run(TARGET, [zero_features(d, active_features(model, d, n=1))], logits="all").logits,
                           clean.logits)


# -- edits vs hooks ------------------------------------------------------------------------------------------
OPS = {"zero": None, "scale": 3.0, "set": [4.0, 0.5], "add": 2.0}


@pytest.mark.parametrize("positions", [None, [1, -1]], ids=["all", "some"])
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("family, variant", FAMILY_CASES)
def test_feature_edit_matches_hook(tiny, dicts, family, variant, op, positions):
    model, d = tiny(family), dicts(family, variant)
    feats = active_features(model, d)
    spec = FeatureEdit(d, feats, op, OPS[op], positions)
    res = model.run(TARGET, [spec], logits="all", capture=[spec.write_site, "resid_post.1"])
    ref = ref_logits(model, family, TARGET, d, edit_change(d, feats, op, OPS[op]), positions)
    clean = model.run(TARGET, logits="all")
    assert not torch.allclose(res.logits, clean.logits, atol=1e-4), "the edit must change the logits"
    close(res.logits[0], ref[0])


@pytest.mark.parametrize("family, variant", FAMILY_CASES)
def test_edited_site_is_x_plus_decoded_difference(tiny, dicts, family, variant):
    """The written site equals x + decode(edited) - decode(acts) computed from the clean capture."""
    model, d = tiny(family), dicts(family, variant)
    feats = active_features(model, d)
    write = d.out_site or d.site
    clean = model.run(TARGET, capture=[d.site, write])
    res = model.run(TARGET, [set_features(d, feats, [1.5, 0.0])], capture=[write])
    x, y = clean[d.site][0], clean[write][0]
    if x.dim() == 3:  # z: heads flattened
        x, y = x.flatten(-2), y.flatten(-2)
    want = edit_change(d, feats, "set", [1.5, 0.0])(x, y)
    close(res[write][0].reshape(want.shape), want)
    # the spec's own helper, which the engine uses, agrees too
    close(y + feature_delta(d, x, feats, "set", [1.5, 0.0]), want)


@pytest.mark.parametrize("positions", [None, [2, -1]], ids=["all", "some"])
@pytest.mark.parametrize("family, variant", FAMILY_CASES)
def test_splice_matches_hook(tiny, dicts, family, variant, positions):
    model, d = tiny(family), dicts(family, variant)
    spec = Splice(d, positions=positions)
    res = model.run(TARGET, [spec], logits="all", capture=[spec.write_site])
    ref = ref_logits(model, family, TARGET, d, splice_change(d), positions)
    close(res.logits[0], ref[0])
    clean = model.run(TARGET, capture=[d.site])
    x = clean[d.site][0]
    recon = d.forward(x.flatten(-2) if x.dim() == 3 else x)[0]
    got = res[spec.write_site][0].reshape(recon.shape)
    if positions is None:
        close(got, recon)  # the whole site is the reconstruction
    else:
        close(got[positions], recon[positions])


def test_several_specs_and_rows(tiny, dicts):
    """Feature edits combine with other specs, and rows= gives each prompt its own edit."""
    model = tiny("llama")
    d, tc = dicts("llama", "relu"), dicts("llama", "transcoder")
    fd, ft = active_features(model, d), active_features(model, tc)
    specs = [zero_features(d, fd[0], rows=[1]), wb.zero_neurons(1, [2, 3]), scale_features(tc, ft, 0.0, rows=[0])]
    batched = model.run([TARGET, OTHER], specs, logits="all")
    for r, p in enumerate([TARGET, OTHER]):
        own = [dataclasses.replace(s, rows=None) for s in specs if s.rows is None or r in s.rows]
        single = model.run(p, own, logits="all")
        L = single.lengths[0]
        close(batched.logits[r, :L], single.logits[0])


def test_transcoder_edit_leaves_the_read_site_alone(tiny, dicts):
    model = tiny("llama")
    tc = dicts("llama", "transcoder")
    f = active_features(model, tc)
    clean = model.run(TARGET, capture=["mlp_in.1", "mlp_out.1"])
    res = model.run(TARGET, [zero_features(tc, f)], capture=["mlp_in.1", "mlp_out.1"])
    assert torch.equal(res["mlp_in.1"], clean["mlp_in.1"])
    assert not torch.allclose(res["mlp_out.1"], clean["mlp_out.1"])


def test_bfloat16_model_with_a_float32_dictionary(tiny):
    """The dictionary computes in its own dtype; the result is written back in the model's."""
    model = tiny("llama", dtype=torch.bfloat16)
    assert next(model.hf.parameters()).dtype == torch.bfloat16
    d = make(model, "topk", "resid_post.0", b_pre=True, seed=7)
    feats = active_features(model, d)
    for spec, change in ((scale_features(d, feats, 3.0), edit_change(d, feats, "scale", 3.0)),
                         (Splice(d), splice_change(d))):
        res = model.run(TARGET, [spec], logits="all", capture=["resid_post.0"])
        assert res["resid_post.0"].dtype == torch.bfloat16
        ref = ref_logits(model, "llama", TARGET, d, change)
        torch.testing.assert_close(res.logits[0].float(), ref[0].float(), atol=0.05, rtol=0.02)


# -- generation, raw traces, remote="local" -------------------------------------------------------------------
@pytest.mark.parametrize("positions", [None, [-1, 13], [14]], ids=["all", "prompt_and_generated", "generated"])
@pytest.mark.parametrize("family, variant", [("llama", "topk"), ("llama", "transcoder"), ("gpt2", "relu_layer_norm"),
                                             ("llama", "nmf")])
def test_generate_with_feature_edit_equals_hf_generate(tiny, dicts, family, variant, positions):
    model, d = tiny(family), dicts(family, variant)
    L = len(model.tokenize(PROMPT).tokens[0])
    assert L == 12
    feats = active_features(model, d, PROMPT)
    spec = add_features(d, feats, [30.0, -15.0], positions)
    g = model.generate(PROMPT, [spec], max_new_tokens=8)
    want = ref_generate(model, family, PROMPT, d, edit_change(d, feats, "add", [30.0, -15.0]), positions)
    assert g.token_ids == want
    if positions is None:
        assert want != model.generate(PROMPT, max_new_tokens=8).token_ids, "the edit must change the generation"


@pytest.mark.parametrize("family, variant", [("llama", "topk"), ("gpt2", "transcoder")])
def test_generate_with_splice_equals_hf_generate(tiny, dicts, family, variant):
    model, d = tiny(family), dicts(family, variant)
    g = model.generate(PROMPT, [Splice(d)], max_new_tokens=8)
    assert g.token_ids == ref_generate(model, family, PROMPT, d, splice_change(d))


def test_apply_inside_a_raw_trace(tiny, dicts):
    model = tiny("llama")
    d, tc = dicts("llama", "gated"), dicts("llama", "transcoder")
    specs = [scale_features(d, active_features(model, d), 4.0), Splice(tc, positions=[-1])]
    with model.trace(TARGET):
        model.apply(specs)
        logits = nnsight.save(model.site("logits").clone())
    ref = model.run(TARGET, specs, logits="all")
    close(logits, ref.logits)
    assert not torch.allclose(ref.logits, model.run(TARGET, logits="all").logits, atol=1e-4)


def test_remote_local_equals_local(tiny, dicts):
    local, remote = tiny("llama"), tiny("llama", remote="local")
    d, tc = dicts("llama", "topk_norm_rescale"), dicts("llama", "transcoder")
    specs = [scale_features(d, active_features(local, d), 3.0, positions=[1, -1]), Splice(tc),
             zero_features(d, active_features(local, d)[:1], rows=[1])]
    a = local.run([TARGET, OTHER], specs, logits="all", capture={"mlp_out.1": lambda x: x.norm(dim=-1)})
    b = remote.run([TARGET, OTHER], specs, logits="all", capture={"mlp_out.1": lambda x: x.norm(dim=-1)})
    close(b.logits, a.logits)
    close(b["mlp_out.1"], a["mlp_out.1"])
    gen = [add_features(d, active_features(local, d, PROMPT), 5.0)]
    assert remote.generate(PROMPT, gen, max_new_tokens=5).token_ids == local.generate(PROMPT, gen, max_new_tokens=5).token_ids


def test_remote_payload_leaves_the_registry_behind(tiny, dicts, monkeypatch):
    """Only the dictionaries a run uses travel: not every registered one."""
    from nnsight.schema.request import RequestModel

    remote = tiny("llama", remote="local")
    big = make(remote, "relu", d_sae=20_000, seed=3)  # ~8 MB of weights
    register_dictionary(big, "big-unused")
    sizes = []
    orig = RequestModel.serialize

    def spy(*args, **kwargs):
        blob = orig(*args, **kwargs)
        sizes.append(len(blob))
        return blob
    monkeypatch.setattr(RequestModel, "serialize", staticmethod(spy))
    try:
        d = dicts("llama", "relu")
        remote.run(TARGET, [zero_features(d, 1)])
        assert sizes and max(sizes) < 2_000_000, sizes
    finally:
        unregister_dictionary("big-unused")


# -- steering along a feature -----------------------------------------------------------------------------------
def test_feature_direction_steers_neurons(tiny, dicts):
    model = tiny("llama")
    d = dicts("llama", "nmf")
    v = feature_direction(d, 2)
    assert v.shape == (model.d_mlp,) and torch.allclose(v.norm(), torch.tensor(1.0))
    close(v, d.W_dec[2] / d.W_dec[2].norm())
    spec = wb.steer(1, v, 5.0, site="neurons")
    assert dataclasses.replace(steer_feature(d, 2, 5.0), name="") == spec
    res = model.run(TARGET, [spec], logits="all")
    ref = ref_logits(model, "llama", TARGET, d, lambda x, y: y + 5.0 * v)
    close(res.logits[0], ref[0])
    tc = dicts("llama", "transcoder")
    assert steer_feature(tc, 3, 2.0).site == "mlp_out.1"  # a transcoder's latents write its out_site
    with pytest.raises(IndexError, match="out of range"):
        feature_direction(d, d.d_sae)


# -- JSON and the registry ---------------------------------------------------------------------------------------
def test_json_round_trip(tiny, dicts):
    model = tiny("llama")
    d, tc = dicts("llama", "topk"), dicts("llama", "transcoder")
    specs = [zero_features(d, [1, 2]), scale_features(d, 3, 2.5, positions=[0, -1]), set_features(tc, [4, 5], [1.0, -2.0]),
             add_features(d, [6], 0.5, rows=[1]), Splice(tc), Splice(d, positions=[2], rows=[0])]
    for s in specs:
        data = json.loads(json.dumps(s.to_dict()))
        assert data["kind"] in ("feature_edit", "splice") and data["dictionary"] == register_dictionary(s.dictionary_object)
        assert data["site"] == s.dictionary_object.site and data["out_site"] == s.dictionary_object.out_site
        back = wb.core.spec_from_dict(data)
        assert type(back) is type(s) and back == s and back.dictionary_object is s.dictionary_object
        assert back.to_dict() == s.to_dict()
    assert wb.specs_from_json(wb.specs_to_json(specs)) == specs
    a = model.run([TARGET, OTHER], specs, logits="all")
    b = model.run([TARGET, OTHER], [s.to_dict() for s in specs], logits="all")
    assert torch.equal(a.logits, b.logits)


def test_json_loads_the_dictionary_from_its_path(tiny, dicts, tmp_path):
    model = tiny("llama")
    make(model, "jumprelu", "resid_post.1", b_pre=True, seed=5).save(tmp_path / "sae")
    d = Dictionary.load(tmp_path / "sae", model=model)
    spec = scale_features(d, active_features(model, d), 3.0)
    data = json.loads(spec.to_json())
    assert data["path"] == str(tmp_path / "sae")
    want = model.run(TARGET, [spec], logits="all").logits
    unregister_dictionary(spec.dictionary)  # a new session: the name is unknown, the file is there
    back = wb.core.spec_from_dict(data)
    assert back.dictionary == data["dictionary"] and back.dictionary_object is not d
    assert torch.equal(model.run(TARGET, [back], logits="all").logits, want)
    # the name now means another dictionary here: the path decides
    other = make(model, "relu", "resid_post.1", seed=6)
    register_dictionary(other, data["dictionary"])
    again = wb.core.spec_from_dict(data)
    assert again.dictionary_object is not other and again.dictionary != data["dictionary"]
    assert again.dictionary_object.meta["path"] == data["path"]
    assert torch.equal(model.run(TARGET, [again], logits="all").logits, want)
    assert wb.core.spec_from_dict(data).dictionary_object is again.dictionary_object  # found by its path, not reloaded
    # neither the name nor the path: a clear error
    gone = dict(data, dictionary="nobody-knows-me", path=str(tmp_path / "missing"))
    with pytest.raises(DictionaryError, match="no dictionary is registered under the name 'nobody-knows-me'.*does not exist"):
        wb.core.spec_from_dict(gone)
    with pytest.raises(DictionaryError, match="no dictionary is registered under the name 'nobody-knows-me'"):
        wb.core.spec_from_dict(dict(data, dictionary="nobody-knows-me", path=None))


def test_registry(tiny):
    model = tiny("llama")
    a, b = make(model, seed=11), make(model, seed=12)
    na = register_dictionary(a)
    assert register_dictionary(a) == na and get_dictionary(na) is a
    nb = register_dictionary(b)
    assert nb != na and get_dictionary(nb) is b  # same site and size: a distinct name
    assert register_dictionary(a, "mine") == "mine" and get_dictionary("mine") is a and na not in registered_dictionaries()
    register_dictionary(b, "mine")  # a later registration under a name wins
    assert get_dictionary("mine") is b
    assert FeatureEdit("mine", [1]).dictionary_object is b
    with pytest.raises(DictionaryError, match="no dictionary is registered under the name 'nope'"):
        get_dictionary("nope")
    with pytest.raises(TypeError, match="Dictionary"):
        register_dictionary("not a dictionary")
    unregister_dictionary("mine")
    with pytest.raises(DictionaryError, match="not registered"):
        unregister_dictionary("mine")


# -- errors before anything runs --------------------------------------------------------------------------------
@contextmanager
def no_forward(model: wb.Model) -> Iterator[None]:
    calls = []
    h = model.hf.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        yield
    finally:
        h.remove()
        assert calls == [], "the error must come before the model runs"


def test_bad_specs(tiny):
    model = tiny("llama")
    d = make(model)
    cases = [
        (lambda: zero_features(d, 64), IndexError, r"feature 64 is out of range for the dictionary .* \(64 latents\)"),
        (lambda: zero_features(d, [-65]), IndexError, "feature -65 is out of range"),
        (lambda: FeatureEdit(d, [1], "double"), ValueError, "unknown op 'double'"),
        (lambda: FeatureEdit(d, [1], "scale"), ValueError, "op 'scale' needs a value"),
        (lambda: set_features(d, [1, 2], [1.0]), ValueError, "1 values for 2 features"),
        (lambda: set_features(d, [1], "high"), ValueError, "one number per feature"),
        (lambda: add_features(d, [1], float("nan")), ValueError, "finite"),
        (lambda: zero_features(d, [1, 1]), ValueError, "listed twice"),
        (lambda: zero_features(d, [1.5]), ValueError, "integer latent indices"),
        (lambda: FeatureEdit("no-such-dictionary", [1]), DictionaryError, "no dictionary is registered"),
        (lambda: FeatureEdit(42, [1]), TypeError, "Dictionary or the name"),
        (lambda: FeatureEdit(d, [1], site="resid_post.1"), DictionaryError, "reads resid_post.0"),
        (lambda: Splice(make(model, site="head_out.0")), DictionaryError, "one vector per token"),
        (lambda: Splice(make(model, site="mlp_out.1", out_site="mlp_in.1")), DictionaryError, "computes before"),
        (lambda: wb.core.spec_from_dict({"kind": "feature_edit", "dictionary": "zzz", "features": [1]}), DictionaryError,
         "no dictionary is registered under the name 'zzz'"),
    ]
    for make_spec, exc, words in cases:
        with pytest.raises(exc, match=words):
            make_spec()


def raw(d_in: int, d_out: int, site: str, out_site: str | None = None) -> Dictionary:
    return Dictionary(W_enc=torch.zeros(d_in, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, d_out),
                      b_dec=torch.zeros(d_out), architecture="relu", site=site, out_site=out_site)


def test_bad_specs_for_the_model(tiny):
    model = tiny("llama")
    cases = [
        ([zero_features(raw(40, 40, "resid_post.0"), [1])], DictionaryError, r"resid_post\.0 with width 40.*width 48"),
        ([Splice(raw(48, 48, "neurons.1"))], DictionaryError, r"neurons\.1 with width 48.*width 96"),
        ([Splice(raw(48, 47, "mlp_in.1", "mlp_out.1"))], DictionaryError, r"writes mlp_out\.1 with width 47"),
        ([Splice(raw(48, 48, "resid_post.5"))], IndexError, "layer 5 is out of range"),
        ([Splice(raw(12, 12, "z.0"))], DictionaryError, "one head"),
        ([scale_features(make(model), 1, 2.0, positions=[9])], IndexError, "position 9 is out of range"),
        ([zero_features(make(model), 1, rows=[3])], IndexError, "row 3 is out of range"),
        ([wb.zero_neurons(0, [1]), Splice(raw(40, 40, "resid_post.0"))], DictionaryError, "width 40"),
    ]
    for specs, exc, words in cases:
        with no_forward(model), pytest.raises(exc, match=words):
            model.run(TARGET, specs)
    with no_forward(model), pytest.raises(DictionaryError, match="width 40"):
        model.generate(PROMPT, cases[0][0], max_new_tokens=2)


def test_describe_and_kinds(tiny):
    model = tiny("llama")
    d = make(model)
    s = scale_features(d, [1, 2], 3.0)
    assert "scale features [1,2]" in s.describe() and s.dictionary in s.describe()
    assert "splice" in Splice(d).describe()
    from workbench.core.specs import SPEC_KINDS, spec_kinds

    assert {"feature_edit", "splice"} <= set(spec_kinds()) and "feature_edit" not in SPEC_KINDS
