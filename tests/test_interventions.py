"""Every intervention kind vs a hand-written reference: plain PyTorch hooks on the HF model (no nnsight)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from operator import attrgetter

import pytest
import torch
from hf_paths import PATHS

import workbench as wb
from workbench.core.engine import GenerationCancelled

TARGET = "The cat sat on the mat"      # 9 tokens
SAME_LEN = "A dog is on a mat"          # 9 tokens
LONGER = "The dog sat on the rug"       # 12 tokens
SHORTER = "A dog is"                     # 5 tokens
OTHER = "Paris is the capital of France"
IDX = [3, 10, 50]

# A hook edit: fn(x, positions_of_x) -> new x, where positions_of_x[j] is the absolute
# position (in prompt + generated tokens) of x[:, j].
EditFn = Callable[[torch.Tensor, list[int]], torch.Tensor]


# -- the reference: plain forward hooks ----------------------------------------------------
def where(hf: torch.nn.Module, family: str, site: str) -> tuple[torch.nn.Module, str]:
    """The module and hook kind ('pre': its input, 'fwd': its output) of a standard site."""
    p = PATHS[family]
    name, _, layer = site.partition(".")
    if name == "logits":
        return hf, "fwd"
    if name == "embed":
        return attrgetter(p["embed"])(hf), "fwd"
    if name == "final_norm":
        return attrgetter(p["norm"])(hf), "fwd"
    block = attrgetter(p["layers"])(hf)[int(layer)]
    return {
        "resid_pre": (block, "pre"), "resid_post": (block, "fwd"), "z": (attrgetter(p["o_proj"])(block), "pre"),
        "attn_out": (attrgetter(p["attn"])(block), "fwd"), "neurons": (attrgetter(p["down"])(block), "pre"),
        "mlp_out": (attrgetter(p["mlp"])(block), "fwd"),
    }[name]


@contextmanager
def hooked(model: wb.Model, family: str, edits: list[tuple[str, EditFn]] = (),
           record: list[str] = ()) -> Iterator[dict[str, torch.Tensor]]:
    """Register edit hooks (in order), then recording hooks; remove them all on exit.

    Tracks absolute positions across calls (generation) with a pre-hook on the root model.
    """
    hf = model.hf
    H, dh = model.arch.n_heads, model.arch.d_head
    pos = {"start": 0, "n": 0}
    rec: dict[str, torch.Tensor] = {}

    def track(m, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        pos["start"] += pos["n"]
        pos["n"] = ids.shape[1]

    def wrap(site: str, fn: EditFn) -> Callable[[torch.Tensor], torch.Tensor]:
        def apply(x: torch.Tensor) -> torch.Tensor:
            s = x.shape[1]
            at = list(range(pos["start"] + pos["n"] - s, pos["start"] + pos["n"]))  # the last s positions
            y = x.clone()
            if site.startswith("z."):
                return fn(y.unflatten(-1, (H, dh)), at).flatten(-2)
            return fn(y, at)
        return apply

    def register(site: str, apply: Callable[[torch.Tensor], torch.Tensor]):
        module, kind = where(hf, family, site)
        if kind == "pre":
            def pre(m, args, kwargs):
                if args:
                    return (apply(args[0]),) + tuple(args[1:]), kwargs
                return args, {**kwargs, "hidden_states": apply(kwargs["hidden_states"])}
            return module.register_forward_pre_hook(pre, with_kwargs=True)

        def fwd(m, args, out):
            if hasattr(out, "logits"):
                out.logits = apply(out.logits)
                return out
            if isinstance(out, tuple):
                return (apply(out[0]),) + tuple(out[1:])
            return apply(out)
        return module.register_forward_hook(fwd)

    def recorder(site: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def apply(x: torch.Tensor) -> torch.Tensor:
            rec[site] = x.detach().clone().unflatten(-1, (H, dh)) if site.startswith("z.") else x.detach().clone()
            return x
        return apply

    with ExitStack() as stack:
        stack.callback(hf.register_forward_pre_hook(track, with_kwargs=True).remove)
        for site, fn in edits:
            stack.callback(register(site, wrap(site, fn)).remove)
        for site in record:
            stack.callback(register(site, recorder(site)).remove)
        yield rec


def ref_run(model: wb.Model, family: str, prompt: str, edits=(), record=()) -> tuple[torch.Tensor, dict]:
    """Logits [s, vocab] of one prompt under hook edits, and the recorded sites (batch of one)."""
    ids = model.tokenize(prompt).input_ids
    with hooked(model, family, edits, record) as rec, torch.no_grad():
        logits = model.hf(input_ids=ids).logits[0]
    return logits, rec


def ref_generate(model: wb.Model, family: str, prompt: str, edits=(), n: int = 8) -> list[int]:
    """Greedy generation with hf.generate and the hooks registered."""
    b = model.tokenize(prompt)
    with hooked(model, family, edits), torch.no_grad():
        out = model.hf.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=n,
                                do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    return out[0, b.input_ids.shape[1]:].tolist()


def at_positions(positions: list[int] | None, length: int, change: Callable[[torch.Tensor], torch.Tensor]) -> EditFn:
    """An EditFn applying ``change`` to x[:, j] at the given positions (negative: from the prompt's end)."""
    wanted = None if positions is None else {p + length if p < 0 else p for p in positions}

    def fn(x: torch.Tensor, at: list[int]) -> torch.Tensor:
        for j, p in enumerate(at):
            if wanted is None or p in wanted:
                x[:, j] = change(x[:, j])
        return x
    return fn


def on_units(indices: list[int] | None, f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Apply f to the given units (last axis; for z: heads) of a [b, ...] slice."""
    def change(v: torch.Tensor) -> torch.Tensor:
        if indices is None:
            return f(v)
        for k, i in enumerate(indices):
            takes_k = getattr(getattr(f, "__code__", None), "co_argcount", 1) == 2
            v[:, i] = f(v[:, i], k) if takes_k else f(v[:, i])
        return v
    return change


def n_tokens(model: wb.Model, prompt: str) -> int:
    return len(model.tokenize(prompt).tokens[0])


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 3e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=1e-4)


def check(model, family, prompt, specs, edits, downstream=("resid_post.1",), sites=()):
    """Engine run vs hook reference: all-position logits, downstream sites and the edited sites."""
    res = model.run(prompt, specs, capture=list(downstream) + list(sites), logits="all")
    ref_logits, rec = ref_run(model, family, prompt, edits, record=list(downstream) + list(sites))
    clean = model.run(prompt, logits="all")
    assert not torch.allclose(res.logits, clean.logits, atol=1e-4), "the intervention must change the logits"
    close(res.logits[0], ref_logits)
    for site in list(downstream) + list(sites):
        close(res[site][0], rec[site][0])
    return res


# -- Edit ----------------------------------------------------------------------------------
EDIT_CASES = {
    "zero": (None, lambda v, k=None: torch.zeros_like(v)),
    "set": (3.0, lambda v: torch.full_like(v, 3.0)),
    "set_each": ([1.0, 2.0, -3.0], lambda v, k: torch.full_like(v, [1.0, 2.0, -3.0][k])),
    "scale": (2.5, lambda v: v * 2.5),
    "mean": ([0.1, 0.2, 0.3], lambda v, k: torch.full_like(v, [0.1, 0.2, 0.3][k])),
    "add": (0.7, lambda v: v + 0.7),
    "add_each": ([1.0, -1.0, 2.0], lambda v, k: v + [1.0, -1.0, 2.0][k]),
}


@pytest.mark.parametrize("positions", [None, [0, -1], [-2]], ids=["all", "first_last", "neg2"])
@pytest.mark.parametrize("case", list(EDIT_CASES))
def test_edit_neurons(tiny, case, positions):
    family = "llama"
    model = tiny(family)
    value, f = EDIT_CASES[case]
    op = case.split("_")[0]
    spec = wb.Edit("neurons.0", IDX, op, value, positions)
    L = n_tokens(model, TARGET)
    check(model, family, TARGET, [spec], [("neurons.0", at_positions(positions, L, on_units(IDX, f)))],
          downstream=("resid_post.1", "neurons.1"), sites=("neurons.0",))


def test_edit_helpers_build_the_same_specs():
    assert wb.zero_neurons(1, IDX, [2]) == wb.Edit("neurons.1", IDX, "zero", None, [2])
    assert wb.scale_neurons(0, IDX, 2) == wb.Edit("neurons.0", IDX, "scale", 2.0)
    assert wb.set_neurons(0, IDX, [1, 2, 3]) == wb.Edit("neurons.0", IDX, "set", [1, 2, 3])
    assert wb.mean_ablate_neurons(0, IDX, [1, 2, 3], [-1]) == wb.Edit("neurons.0", IDX, "mean", [1, 2, 3], [-1])


def test_edit_neurons_every_family(model, family):
    L = n_tokens(model, TARGET)
    specs = [wb.scale_neurons(1, IDX, 3.0, positions=[1, -1]), wb.zero_neurons(0, IDX)]
    edits = [("neurons.1", at_positions([1, -1], L, on_units(IDX, lambda v: v * 3.0))),
             ("neurons.0", at_positions(None, L, on_units(IDX, torch.zeros_like)))]
    check(model, family, TARGET, specs, edits, downstream=("resid_post.1",), sites=("neurons.0", "neurons.1"))


def test_edit_whole_site_without_indices(tiny):
    model = tiny("gpt2")
    L = n_tokens(model, TARGET)
    specs = [wb.Edit("neurons.0", None, "scale", 0.5, [1, 2]), wb.Edit("mlp_out.1", None, "zero", positions=[-1])]
    edits = [("neurons.0", at_positions([1, 2], L, lambda v: v * 0.5)),
             ("mlp_out.1", at_positions([-1], L, torch.zeros_like))]
    check(model, "gpt2", TARGET, specs, edits, sites=("neurons.0", "mlp_out.1"))


@pytest.mark.parametrize("site, spec_args, f", [
    ("resid_post.0", ([0, 5], "set", [1.0, 2.0]), lambda v, k: torch.full_like(v, [1.0, 2.0][k])),
    ("resid_pre.1", ([7], "add", 4.0), lambda v: v + 4.0),
    ("embed", ([1, 2, 3], "scale", -1.0), lambda v: -v),
    ("attn_out.0", (None, "zero", None), None),
    ("mlp_out.0", ([4], "set", 9.0), lambda v: torch.full_like(v, 9.0)),
    ("z.1", ([1], "zero", None), lambda v: torch.zeros_like(v)),
    ("final_norm", ([0, 1], "add", 1.5), lambda v: v + 1.5),
])
@pytest.mark.parametrize("fam", ["llama", "gpt_neox"])
def test_edit_other_sites(tiny, fam, site, spec_args, f):
    model = tiny(fam)
    indices, op, value = spec_args
    L = n_tokens(model, TARGET)
    change = torch.zeros_like if f is None else on_units(indices, f)
    downstream = ("final_norm",) if site == "final_norm" else ("resid_post.1",)
    check(model, fam, TARGET, [wb.Edit(site, indices, op, value, [1, -1])],
          [(site, at_positions([1, -1], L, change))], downstream=downstream, sites=(site,))


def test_edit_logits_changes_top_k(model, family):
    res = model.run(TARGET, [wb.Edit("logits", [7], "set", 100.0, [-1])], top_k=3)
    assert res.top.ids[0, 0].item() == 7
    assert res.top.probs[0, 0].item() == pytest.approx(1.0)
    assert res.logits[0, 7].item() == 100.0


def test_edit_batch_negative_positions_follow_each_prompt(model, family):
    prompts = [TARGET, LONGER, "Hi"]
    spec = wb.set_neurons(1, IDX, [1.0, 2.0, 3.0], positions=[-1])
    res = model.run(prompts, [spec], capture=["neurons.1", "final_norm"], logits="all")
    for b, prompt in enumerate(prompts):
        L = res.lengths[b]
        edit = at_positions([-1], L, on_units(IDX, lambda v, k: torch.full_like(v, [1.0, 2.0, 3.0][k])))
        ref_logits, rec = ref_run(model, family, prompt, [("neurons.1", edit)], record=["neurons.1", "final_norm"])
        close(res.logits[b, :L], ref_logits)
        close(res["neurons.1"][b, :L], rec["neurons.1"][0])
        close(res["final_norm"][b, :L], rec["final_norm"][0])


# -- AblateHeads ---------------------------------------------------------------------------
@pytest.mark.parametrize("positions", [None, [1, -1]], ids=["all", "some"])
@pytest.mark.parametrize("op", ["zero", "mean"])
def test_ablate_heads(model, family, op, positions):
    heads = [0, 2]
    L = n_tokens(model, TARGET)
    if op == "zero":
        spec = wb.ablate_heads(1, heads, positions)
        new = {h: torch.zeros(model.arch.d_head) for h in heads}
    else:
        means = model.mean_activation("z.1", [OTHER, LONGER])
        assert means.shape == (model.n_heads, model.arch.d_head)
        spec = wb.AblateHeads("z.1", heads, "mean", means, positions)
        new = {h: means[h] for h in heads}

    def change(v: torch.Tensor) -> torch.Tensor:  # v: [b, H, d_head] at one position
        for h in heads:
            v[:, h] = new[h]
        return v
    check(model, family, TARGET, [spec], [("z.1", at_positions(positions, L, change))],
          downstream=("resid_post.1", "attn_out.1"), sites=("z.1",))


def test_ablate_heads_reference_is_the_o_proj_input_slice(tiny):
    """Zeroing head h's slice of the o_proj input removes exactly head_out[h] from attn_out."""
    model = tiny("gpt_neox")
    clean = model.run(TARGET, capture=["head_out.0", "attn_out.0"])
    abl = model.run(TARGET, [wb.ablate_heads(0, [1])], capture=["attn_out.0", "head_out.0"])
    close(abl["attn_out.0"], clean["attn_out.0"] - clean["head_out.0"][:, :, 1], atol=1e-4)
    assert torch.all(abl["head_out.0"][:, :, 1] == 0)


# -- Steer ---------------------------------------------------------------------------------
def direction(model: wb.Model, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.d_model, generator=g)


@pytest.mark.parametrize("positions", [None, [0, -1]], ids=["all", "some"])
@pytest.mark.parametrize("site", ["resid_post", "resid_pre", "mlp_out"])
def test_steer_sites(tiny, site, positions):
    model = tiny("llama")
    d = direction(model)
    L = n_tokens(model, TARGET)
    spec = wb.steer(0, d, 3.0, site=site, positions=positions)
    assert spec.site == f"{site}.0"
    check(model, "llama", TARGET, [spec], [(f"{site}.0", at_positions(positions, L, lambda v: v + 3.0 * d))],
          downstream=("resid_post.1",), sites=(f"{site}.0",))


def test_steer_every_family(model, family):
    d = direction(model, 2)
    L = n_tokens(model, TARGET)
    check(model, family, TARGET, [wb.steer(1, d, -2.0, positions=[2, -1])],
          [("resid_post.1", at_positions([2, -1], L, lambda v: v - 2.0 * d))],
          downstream=("final_norm",), sites=("resid_post.1",))


# -- Patch ---------------------------------------------------------------------------------
def patch_edit(rec: torch.Tensor, positions: list[int] | None, src_positions: list[int] | None, L: int,
               L_src: int, indices: list[int] | None = None) -> EditFn:
    """Write recorded source values (rec: [1, s_src, ...]) into the target at positions."""
    if positions is None:
        pairs = {p: p for p in range(L)}
    else:
        src = src_positions if src_positions is not None else positions
        pairs = {(p + L if p < 0 else p): (q + L_src if q < 0 else q) for p, q in zip(positions, src, strict=True)}

    def fn(x: torch.Tensor, at: list[int]) -> torch.Tensor:
        for j, p in enumerate(at):
            if p in pairs:
                if indices is None:
                    x[:, j] = rec[:, pairs[p]]
                else:
                    x[:, j, indices] = rec[:, pairs[p], indices]
        return x
    return fn


@pytest.mark.parametrize("site, indices, positions, src_positions, source", [
    ("resid_post.0", None, None, None, SAME_LEN),
    ("resid_post.0", None, [-1], None, SAME_LEN),
    ("z.1", [1, 3], [-1], None, SAME_LEN),
    ("z.0", [0], None, None, SAME_LEN),
    ("neurons.0", [5, 6, 7], [2, -1], None, SAME_LEN),
    ("resid_post.0", None, [-1], [-1], LONGER),
    ("neurons.1", [5, 6], [0, 3], [5, 11], LONGER),
    ("z.1", [2], [-2, -1], [-2, -1], LONGER),
    ("resid_pre.1", None, [0, 1], [4, 2], SHORTER),
], ids=["resid_all", "resid_last", "z_heads", "z0_all", "neurons_idx", "longer_last", "longer_neurons",
        "longer_z", "shorter"])
def test_patch(model, family, site, indices, positions, src_positions, source):
    L, L_src = n_tokens(model, TARGET), n_tokens(model, source)
    if source == SAME_LEN:
        assert L == L_src
    else:
        assert L != L_src
    spec = wb.Patch(site, source=source, positions=positions, source_positions=src_positions, indices=indices)
    _, src_rec = ref_run(model, family, source, record=[site])
    edit = patch_edit(src_rec[site], positions, src_positions, L, L_src, indices)
    check(model, family, TARGET, [spec], [(site, edit)], downstream=("resid_post.1",), sites=(site,))


def test_patch_into_a_batch(tiny):
    model = tiny("gpt2")
    prompts = [TARGET, OTHER]
    spec = wb.Patch("resid_post.0", source=LONGER, positions=[-1], source_positions=[-2])
    res = model.run(prompts, [spec], capture=["resid_post.1"], logits="all")
    _, src = ref_run(model, "gpt2", LONGER, record=["resid_post.0"])
    L_src = n_tokens(model, LONGER)
    for b, prompt in enumerate(prompts):
        L = res.lengths[b]
        ref_logits, rec = ref_run(model, "gpt2", prompt,
                                  [("resid_post.0", patch_edit(src["resid_post.0"], [-1], [-2], L, L_src))],
                                  record=["resid_post.1"])
        close(res.logits[b, :L], ref_logits)
        close(res["resid_post.1"][b, :L], rec["resid_post.1"][0])


def test_patch_from_itself_changes_nothing(tiny):
    model = tiny("llama")
    clean = model.run(TARGET, logits="all")
    same = model.run(TARGET, [wb.Patch("resid_post.0", source=TARGET)], logits="all")
    close(same.logits, clean.logits)


# -- several specs together -------------------------------------------------------------------
def test_many_specs_together(model, family):
    d = direction(model, 3)
    L, L_src = n_tokens(model, TARGET), n_tokens(model, LONGER)
    means = torch.randn(model.n_heads, model.arch.d_head, generator=torch.Generator().manual_seed(4))
    specs = [
        wb.zero_neurons(0, [1, 2, 3]),
        wb.ablate_heads(1, [2]),
        wb.AblateHeads("z.0", [3], "mean", means, [0]),
        wb.steer(0, d, 2.0, positions=[-1]),
        wb.Patch("resid_post.1", source=LONGER, positions=[1], source_positions=[7]),
        wb.scale_neurons(1, [4], 2.0),
        wb.Edit("neurons.1", [4], "add", 1.0),  # same site: applied after the scale
    ]
    _, src = ref_run(model, family, LONGER, record=["resid_post.1"])

    def heads(hs, value):
        def change(v):
            for h in hs:
                v[:, h] = value(h)
            return v
        return change
    edits = [
        ("neurons.0", at_positions(None, L, on_units([1, 2, 3], torch.zeros_like))),
        ("z.1", at_positions(None, L, heads([2], lambda h: 0.0))),
        ("z.0", at_positions([0], L, heads([3], lambda h: means[h]))),
        ("resid_post.0", at_positions([-1], L, lambda v: v + 2.0 * d)),
        ("resid_post.1", patch_edit(src["resid_post.1"], [1], [7], L, L_src)),
        ("neurons.1", at_positions(None, L, on_units([4], lambda v: v * 2.0))),
        ("neurons.1", at_positions(None, L, on_units([4], lambda v: v + 1.0))),
    ]
    check(model, family, TARGET, specs, edits, downstream=("final_norm",),
          sites=("neurons.0", "z.1", "z.0", "resid_post.0", "resid_post.1", "neurons.1"))
    # The same specs as dicts (what widgets send) give the same result.
    a = model.run(TARGET, [s.to_dict() for s in specs], logits="all")
    b = model.run(TARGET, specs, logits="all")
    close(a.logits, b.logits)
    # Nothing is left behind on the model: a clean run is the plain forward pass again.
    with torch.no_grad():
        plain = model.hf(input_ids=model.tokenize(TARGET).input_ids).logits[0]
    close(model.run(TARGET, logits="all").logits[0], plain)


# -- generation -----------------------------------------------------------------------------
PROMPT = "Hello world, this is"


def test_generate_without_specs_is_hf_generate(model, family):
    g = model.generate(PROMPT, max_new_tokens=8)
    want = ref_generate(model, family, PROMPT)
    assert g.token_ids == want
    assert g.text == model.tokenizer.decode(want, skip_special_tokens=True)
    assert g.prompt == PROMPT and g.interventions == []


def test_generate_steer_every_step(model, family):
    d = direction(model, 5)
    L = n_tokens(model, PROMPT)
    g = model.generate(PROMPT, [wb.steer(0, d, 4.0)], max_new_tokens=8)
    want = ref_generate(model, family, PROMPT, [("resid_post.0", at_positions(None, L, lambda v: v + 4.0 * d))])
    assert g.token_ids == want
    assert want != ref_generate(model, family, PROMPT), "the steer must change the generation"


@pytest.mark.parametrize("positions", [[1, -1], [-1, 13], [14, 16], [0]], ids=["prompt", "both", "generated", "first"])
def test_generate_steer_positions(tiny, positions):
    model = tiny("llama")
    L = n_tokens(model, PROMPT)
    assert L == 12
    d = direction(model, 6)
    g = model.generate(PROMPT, [wb.steer(1, d, 6.0, positions=positions)], max_new_tokens=8)
    want = ref_generate(model, "llama", PROMPT, [("resid_post.1", at_positions(positions, L, lambda v: v + 6.0 * d))])
    assert g.token_ids == want
    unsteered = model.generate(PROMPT, max_new_tokens=8).token_ids
    first_changed = min(p + L if p < 0 else p for p in positions) - L + 1  # first generated token that can change
    assert g.token_ids[:max(first_changed, 0)] == unsteered[:max(first_changed, 0)]


def test_generate_edits_and_ablations(model, family):
    L = n_tokens(model, PROMPT)
    specs = [wb.zero_neurons(1, IDX), wb.ablate_heads(0, [0, 1]), wb.scale_neurons(0, [2], 5.0, positions=[13])]

    def heads(v):
        v[:, [0, 1]] = 0
        return v
    edits = [("neurons.1", at_positions(None, L, on_units(IDX, torch.zeros_like))),
             ("z.0", at_positions(None, L, heads)),
             ("neurons.0", at_positions([13], L, on_units([2], lambda v: v * 5.0)))]
    assert model.generate(PROMPT, specs, max_new_tokens=8).token_ids == ref_generate(model, family, PROMPT, edits)


def test_generate_patch_applies_to_the_prompt_only(tiny):
    model = tiny("llama")
    L = n_tokens(model, TARGET)
    _, src = ref_run(model, "llama", SAME_LEN, record=["resid_post.0"])
    spec = wb.Patch("resid_post.0", source=SAME_LEN, positions=[-1])
    edit = patch_edit(src["resid_post.0"], [-1], None, L, L)
    g = model.generate(TARGET, [spec], max_new_tokens=6)
    assert g.token_ids == ref_generate(model, "llama", TARGET, [("resid_post.0", edit)], n=6)


@pytest.mark.parametrize("source", [SHORTER, LONGER], ids=["shorter", "longer"])
def test_generate_patch_from_source_of_other_length(tiny, source):
    model = tiny("llama")
    L, L_src = n_tokens(model, TARGET), n_tokens(model, source)
    _, src = ref_run(model, "llama", source, record=["resid_post.0"])
    spec = wb.Patch("resid_post.0", source=source, positions=[-1], source_positions=[0])
    g = model.generate(TARGET, [spec], max_new_tokens=6)
    want = ref_generate(model, "llama", TARGET, [("resid_post.0", patch_edit(src["resid_post.0"], [-1], [0], L, L_src))], n=6)
    assert g.token_ids == want


def test_generate_stops_at_end_of_sequence(tiny):
    """An intervention that makes EOS likely ends generation early; the result must still come back."""
    model = tiny("llama")
    L = n_tokens(model, PROMPT)
    eos = model.tokenizer.eos_token_id
    spec = wb.Edit("logits", [eos], "set", 1e4, positions=[L + 1])
    g = model.generate(PROMPT, [spec], max_new_tokens=8)
    want = ref_generate(model, "llama", PROMPT, [("logits", at_positions([L + 1], L, on_units([eos], lambda v: v * 0 + 1e4)))])
    assert g.token_ids == want
    assert len(want) == 3 and want[-1] == eos


def test_generate_streams_tokens_and_can_be_cancelled(tiny):
    model = tiny("gpt2")
    seen: list[tuple[int, str]] = []
    g = model.generate(PROMPT, [wb.zero_neurons(0, IDX)], max_new_tokens=5, on_token=lambda i, t: seen.append((i, t)))
    assert [i for i, _ in seen] == g.token_ids and len(seen) == 5
    assert seen[-1][1] == g.text
    cancel = threading.Event()

    def stop_after_first(i: int, text: str) -> None:
        cancel.set()
    with pytest.raises(GenerationCancelled):
        model.generate(PROMPT, max_new_tokens=8, on_token=stop_after_first, cancel=cancel)
    assert model.generate(PROMPT, max_new_tokens=2).token_ids == ref_generate(model, "gpt2", PROMPT, n=2), \
        "the model must be usable after a cancelled generation"


# -- remote="local": nnsight's serialization path ----------------------------------------------
def test_remote_local_run_matches_local(tiny):
    local, remote = tiny("llama"), tiny("llama", remote="local")
    assert remote.remote == "local"
    d = direction(local, 7)
    specs = [wb.zero_neurons(0, IDX, [-1]), wb.steer(0, d, 2.0), wb.ablate_heads(1, [1]),
             wb.Patch("resid_post.0", source=SAME_LEN, positions=[2])]
    caps = {"neurons.1": None, "resid_post.1": lambda x: x.norm(dim=-1), "pattern.0": lambda x: x[:, :, -1]}
    a = local.run([TARGET, OTHER], specs, capture=caps, logits="all")
    b = remote.run([TARGET, OTHER], specs, capture=caps, logits="all")
    c = local.run([TARGET, OTHER], specs, capture=caps, logits="all", remote="local")
    for other in (b, c):
        close(other.logits, a.logits)
        assert set(other.activations) == set(a.activations)
        for k in a.activations:
            close(other[k], a[k])
        assert other.top.ids.tolist() == a.top.ids.tolist()
    assert a["resid_post.1"].shape == (2, max(a.lengths))


def test_remote_local_generate_matches_local(tiny):
    local, remote = tiny("llama"), tiny("llama", remote="local")
    specs = [wb.steer(0, direction(local, 8), 3.0, positions=[-1, 13])]
    assert remote.generate(PROMPT, specs, max_new_tokens=5).token_ids == local.generate(PROMPT, specs, max_new_tokens=5).token_ids


# -- rows: one batch, a different intervention per prompt ----------------------------------------
def test_row_specific_specs_equal_separate_runs(model, family):
    clean, corrupt = "The quick brown fox jumps", "The slow green cat sleeps"
    n_clean = len(model.tokenize(clean).tokens[0])
    if len(model.tokenize(corrupt).tokens[0]) != n_clean:
        corrupt = clean[::-1]
    cells = [(0, 1), (1, 2), (1, -1), (0, 0)]
    specs = [wb.Patch(f"resid_post.{L}", source=clean, positions=[p], rows=[r]) for r, (L, p) in enumerate(cells)]
    specs.append(wb.zero_neurons(0, [3, 5], rows=[2]))
    specs.append(wb.steer(1, torch.linspace(0, 1, model.d_model), 2.0, rows=[0, 3]))
    batched = model.run([corrupt] * len(cells), specs, logits="all")
    for r, (L, p) in enumerate(cells):
        own = [wb.Patch(f"resid_post.{L}", source=clean, positions=[p])]
        own += [wb.zero_neurons(0, [3, 5])] if r == 2 else []
        own += [wb.steer(1, torch.linspace(0, 1, model.d_model), 2.0)] if r in (0, 3) else []
        single = model.run(corrupt, own, logits="all")
        torch.testing.assert_close(batched.logits[r], single.logits[0], rtol=1e-4, atol=1e-4)


def test_rows_out_of_range_is_a_clear_error(model):
    with pytest.raises(IndexError, match="row 2 is out of range"):
        model.run(["a b", "c d"], [wb.zero_neurons(0, [1], rows=[2])])
    with pytest.raises(ValueError, match="rows"):
        wb.zero_neurons(0, [1], rows=[])
    spec = wb.zero_neurons(0, [1], rows=[1])
    assert wb.core.spec_from_dict(spec.to_dict()) == spec
