"""Subspace specs vs hand-written PyTorch forward hooks on the HF model (no nnsight in the reference).

The reference writes the projection as the matrix ``P = B^T B`` (the specs work in coordinates),
records source activations with its own hooks, and tracks absolute positions across generation steps.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from operator import attrgetter

import nnsight
import pytest
import torch
from hf_paths import PATHS

import workbench as wb
from workbench.causal import (
    Subspace,
    SubspaceAblate,
    SubspaceError,
    SubspaceInterchange,
    SubspaceSet,
    SubspaceSteer,
    SubspaceWarning,
    ablate_subspace,
    interchange_subspace,
    set_subspace,
    steer_subspace,
)
from workbench.core.program import NonFiniteError
from workbench.core.specs import spec_from_dict, specs_from_json, specs_to_json

TARGET = "The cat sat on the mat"      # 9 tokens
SAME_LEN = "A dog is on a mat"          # 9 tokens
LONGER = "The dog sat on the rug"       # 12 tokens
SHORTER = "A dog is"                     # 5 tokens
OTHER = "Paris is the capital of France"
SWAP = "print the list of names"       # 9 tokens, and a source that changes greedy tokens on every family
FAMILIES = ("llama", "gpt2", "gpt_neox")


def basis(width: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(width, k, generator=g, dtype=torch.float64))
    return q.T.float()


def n_tokens(model, prompt: str) -> int:
    return len(model.tokenize(prompt).tokens[0])


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)


# -- the reference: plain forward hooks ----------------------------------------------------
def module_of(model, family: str, site: str) -> tuple[torch.nn.Module, str]:
    p = PATHS[family]
    name, layer = site.split(".")
    block = attrgetter(p["layers"])(model.hf)[int(layer)]
    return {"resid_post": (block, "fwd"), "mlp_out": (attrgetter(p["mlp"])(block), "fwd"),
            "neurons": (attrgetter(p["down"])(block), "pre")}[name]


@contextmanager
def hooked(model, family: str, edits=(), record=()) -> Iterator[dict[str, torch.Tensor]]:
    """Edit hooks ``(site, fn(x, absolute_positions) -> x)`` in order, then recording hooks."""
    pos = {"start": 0, "n": 0}
    rec: dict[str, torch.Tensor] = {}

    def track(m, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        pos["start"] += pos["n"]
        pos["n"] = ids.shape[1]

    def register(site: str, apply: Callable[[torch.Tensor], torch.Tensor]):
        module, kind = module_of(model, family, site)
        if kind == "pre":
            return module.register_forward_pre_hook(lambda m, args: (apply(args[0]), *args[1:]))

        def fwd(m, args, out):
            return (apply(out[0]), *out[1:]) if isinstance(out, tuple) else apply(out)
        return module.register_forward_hook(fwd)

    def edit(fn):
        def apply(x):
            s = x.shape[1]
            return fn(x.clone(), list(range(pos["start"] + pos["n"] - s, pos["start"] + pos["n"])))
        return apply

    def recorder(site):
        def apply(x):
            rec[site] = x.detach().clone()
            return x
        return apply

    with ExitStack() as stack:
        stack.callback(model.hf.register_forward_pre_hook(track, with_kwargs=True).remove)
        for site, fn in edits:
            stack.callback(register(site, edit(fn)).remove)
        for site in record:
            stack.callback(register(site, recorder(site)).remove)
        yield rec


def ref_run(model, family, prompt, edits=(), record=()):
    ids = model.tokenize(prompt).input_ids
    with hooked(model, family, edits, record) as rec, torch.no_grad():
        return model.hf(input_ids=ids).logits[0], rec


def ref_generate(model, family, prompt, edits=(), n=6):
    b = model.tokenize(prompt)
    with hooked(model, family, edits), torch.no_grad():
        out = model.hf.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=n,
                                do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    return out[0, b.input_ids.shape[1]:].tolist()


def reference(kind: str, B: torch.Tensor, L: int, positions=None, *, src=None, src_positions=None,
              value=None, strength: float = 1.0):
    """fn(x, at) applying the subspace edit at the wanted absolute positions of a prompt of L tokens."""
    P = B.T @ B
    wanted = None if positions is None else [p + L if p < 0 else p for p in positions]
    v = None if value is None else torch.tensor(value, dtype=B.dtype) @ B
    if kind == "interchange":
        Ls = src.shape[1]
        sp = positions if src_positions is None else src_positions
        source_at = ({p: p for p in range(L)} if positions is None else
                     {t: (s + Ls if s < 0 else s) for t, s in zip(wanted, sp, strict=True)})

    def new(h: torch.Tensor, p: int) -> torch.Tensor:
        if kind == "interchange":
            return h - h @ P + src[:, source_at[p]] @ P
        if kind == "ablate":
            return h - h @ P + (0 if v is None else v)
        if kind == "steer":
            return h + strength * v
        return h - h @ P + v  # set

    def fn(x: torch.Tensor, at: list[int]) -> torch.Tensor:
        for j, p in enumerate(at):
            if (kind == "interchange" and p in source_at) or (kind != "interchange" and (wanted is None or p in wanted)):
                x[:, j] = new(x[:, j], p)
        return x
    return fn


CASES = {  # id -> (kind, site, positions, extra)
    "interchange_all": ("interchange", "resid_post.0", None, {}),
    "interchange_last": ("interchange", "resid_post.0", [-1], {}),
    "interchange_neurons": ("interchange", "neurons.1", [2, -1], {"k": 5}),
    "ablate": ("ablate", "resid_post.0", None, {}),
    "ablate_mean": ("ablate", "mlp_out.0", [1, -1], {"mean": True}),
    "steer": ("steer", "resid_post.1", [-1], {}),
    "set": ("set", "resid_post.0", [0, 3], {}),
}


def build(model, kind, site, positions, extra, source=SAME_LEN, src_positions=None):
    """(the spec, its subspace, the reference's keyword arguments)."""
    width = model.arch.size(wb.Site.parse(site))
    sub = Subspace(site, basis(width, extra.get("k", 3), seed=extra.get("seed", len(site))), name="t")
    k = sub.k
    value = extra.get("value", [float(i) - 1.5 for i in range(k)])
    if kind == "interchange":
        _, rec = ref_run(model, model.arch.family, source, record=[site])
        return (interchange_subspace(sub, source, positions, src_positions), sub,
                dict(src=rec[site], src_positions=src_positions))
    if kind == "ablate":
        mean = value if extra.get("mean") else None
        return ablate_subspace(sub, mean, positions), sub, dict(value=mean)
    if kind == "steer":
        return steer_subspace(sub, value, 8.0, positions), sub, dict(value=value, strength=8.0)
    return set_subspace(sub, value, positions), sub, dict(value=value)


@pytest.fixture(params=FAMILIES)
def fam_model(request, tiny):
    m = tiny(request.param)
    assert m.arch.family == request.param
    return request.param, m


# -- run and generation -----------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_specs_equal_hooks_in_run(fam_model, case):
    family, model = fam_model
    kind, site, positions, extra = CASES[case]
    L = n_tokens(model, TARGET)
    assert L == n_tokens(model, SAME_LEN)
    spec, sub, kw = build(model, kind, site, positions, extra)
    got = model.run(TARGET, [spec], logits="all").logits[0]
    want, _ = ref_run(model, family, TARGET, [(site, reference(kind, sub.basis, L, positions, **kw))])
    close(got, want)
    plain = model.run(TARGET, logits="all").logits[0]
    assert (got - plain).abs().max() > 1e-3, "the spec changed nothing"


@pytest.mark.parametrize("kind", ["interchange", "ablate", "steer", "set"])
def test_specs_equal_hooks_in_generation(fam_model, kind):
    family, model = fam_model
    L = n_tokens(model, TARGET)
    # Positions past the prompt name generated tokens (the interchange acts on the prompt only).
    positions = [-2, -1] if kind == "interchange" else ([L - 1, L + 2] if kind == "steer" else None)
    assert n_tokens(model, SWAP) == L
    extra = {"k": 24, "seed": 0} if kind == "interchange" else {"seed": 7, "value": [4.0, -4.0, 4.0]}
    spec, sub, kw = build(model, kind, "resid_post.0", positions, extra, source=SWAP)
    got = model.generate(TARGET, [spec], max_new_tokens=6).token_ids
    want = ref_generate(model, family, TARGET, [("resid_post.0", reference(kind, sub.basis, L, positions, **kw))])
    assert got == want
    assert want != ref_generate(model, family, TARGET), "the spec changed no token"


def test_interchange_from_other_lengths_and_into_a_batch(tiny):
    model = tiny("gpt2")
    site = "resid_post.0"
    sub = Subspace(site, basis(48, 4))
    _, src = ref_run(model, "gpt2", LONGER, record=[site])
    spec = interchange_subspace(sub, LONGER, positions=[-1, 1], source_positions=[-2, 0])
    res = model.run([TARGET, OTHER], [spec], logits="all")
    for b, prompt in enumerate([TARGET, OTHER]):
        L = res.lengths[b]
        want, _ = ref_run(model, "gpt2", prompt, [(site, reference("interchange", sub.basis, L, [-1, 1],
                                                                     src=src[site], src_positions=[-2, 0]))])
        close(res.logits[b, :L], want)
    # rows: only the second prompt is patched
    one = model.run([TARGET, OTHER], [interchange_subspace(sub, LONGER, [-1], [-2], rows=[1])], logits="all")
    plain = model.run([TARGET, OTHER], logits="all")
    close(one.logits[0, :res.lengths[0]], plain.logits[0, :res.lengths[0]])
    assert (one.logits[1] - plain.logits[1]).abs().max() > 1e-3
    # generation with a source of another length
    g = model.generate(TARGET, [interchange_subspace(sub, SHORTER, [-1], [0])], max_new_tokens=5).token_ids
    _, s2 = ref_run(model, "gpt2", SHORTER, record=[site])
    L = n_tokens(model, TARGET)
    assert g == ref_generate(model, "gpt2", TARGET, [(site, reference("interchange", sub.basis, L, [-1], src=s2[site],
                                                                      src_positions=[0]))], n=5)


def test_a_full_rank_interchange_is_a_patch_and_a_zero_coordinate_set_is_an_ablation(tiny):
    model = tiny("llama")
    full = Subspace("resid_post.0", basis(48, 48))
    a = model.run(TARGET, [interchange_subspace(full, SAME_LEN, [2, -1])], logits="all").logits
    b = model.run(TARGET, [wb.Patch("resid_post.0", source=SAME_LEN, positions=[2, -1])], logits="all").logits
    close(a, b)
    sub = Subspace("resid_post.0", basis(48, 3))
    close(model.run(TARGET, [set_subspace(sub, [0, 0, 0])], logits="all").logits,
          model.run(TARGET, [ablate_subspace(sub)], logits="all").logits)


def test_composition_with_other_specs(tiny):
    model = tiny("gpt_neox")
    family = "gpt_neox"
    L = n_tokens(model, TARGET)
    s0 = Subspace("resid_post.0", basis(48, 3, 1))
    s1 = Subspace("resid_post.1", basis(48, 2, 2))
    d = torch.linspace(-1, 1, 48)
    _, src = ref_run(model, family, SAME_LEN, record=["resid_post.0"])
    specs = [wb.zero_neurons(0, [1, 5]), interchange_subspace(s0, SAME_LEN, [-1]), ablate_subspace(s0, None, [2]),
             wb.steer(1, d, 1.5), steer_subspace(s1, [3.0, -2.0], 1.0, [-1]),
             SubspaceSet(s1, [0.5, 0.5], [0])]

    def zero(x, at):
        x[..., [1, 5]] = 0
        return x

    def steer(x, at):
        return x + 1.5 * d

    edits = [("neurons.0", zero), ("resid_post.0", reference("interchange", s0.basis, L, [-1], src=src["resid_post.0"])),
             ("resid_post.0", reference("ablate", s0.basis, L, [2])), ("resid_post.1", steer),
             ("resid_post.1", reference("steer", s1.basis, L, [-1], value=[3.0, -2.0])),
             ("resid_post.1", reference("set", s1.basis, L, [0], value=[0.5, 0.5]))]
    got = model.run(TARGET, specs, logits="all").logits[0]
    want, _ = ref_run(model, family, TARGET, edits)
    close(got, want)
    # the same list, through JSON, composes the same way (and in generation)
    back = specs_from_json(specs_to_json(specs))
    close(model.run(TARGET, back, logits="all").logits[0], want)
    gen_specs = [s for s in specs if not isinstance(s, SubspaceInterchange)]
    gen_edits = [e for i, e in enumerate(edits) if i != 1]
    assert model.generate(TARGET, gen_specs, max_new_tokens=5).token_ids == \
        ref_generate(model, family, TARGET, gen_edits, n=5)


def test_specs_apply_inside_a_raw_trace(tiny):
    model = tiny("llama")
    L = n_tokens(model, TARGET)
    sub = Subspace("resid_post.0", basis(48, 3))
    specs = [ablate_subspace(sub, [1.0, 0.0, -1.0], [1]), steer_subspace(sub, [1, 2, 3], 1.0, [-1])]
    with model.trace(TARGET):
        model.apply(specs)
        logits = nnsight.save(model.site("logits").clone())
    want, _ = ref_run(model, "llama", TARGET, [("resid_post.0", reference("ablate", sub.basis, L, [1], value=[1.0, 0.0, -1.0])),
                                               ("resid_post.0", reference("steer", sub.basis, L, [-1], value=[1, 2, 3]))])
    close(logits[0], want)
    with pytest.raises(ValueError, match="source prompt"):
        with model.trace(TARGET):
            model.apply([interchange_subspace(sub, SAME_LEN)])


def test_remote_local_matches_hooks(tiny):
    local, remote = tiny("llama"), tiny("llama", remote="local")
    L = n_tokens(local, TARGET)
    for kind, positions in (("interchange", [2, -1]), ("ablate", None), ("steer", [-1]), ("set", [0, 4])):
        spec, sub, kw = build(local, kind, "resid_post.0", positions, {"mean": True})
        want, _ = ref_run(local, "llama", TARGET, [("resid_post.0", reference(kind, sub.basis, L, positions, **kw))])
        close(remote.run(TARGET, [spec], logits="all").logits[0], want)
        assert remote.generate(TARGET, [spec], max_new_tokens=4).token_ids == local.generate(
            TARGET, [spec], max_new_tokens=4).token_ids


# -- JSON, files ---------------------------------------------------------------------------
def test_json_round_trip(tiny, tmp_path):
    model = tiny("llama")
    sub = Subspace("resid_post.1", basis(48, 3), name="color", meta={"source": "test"})
    assert Subspace.from_json(sub.to_json()) == sub
    sub.save(tmp_path / "s.safetensors")
    assert Subspace.load(tmp_path / "s.safetensors") == sub
    specs = [SubspaceInterchange(sub, SAME_LEN, [1], [2], rows=[0]), SubspaceAblate(sub, [0.1, 0.2, 0.3], [-1]),
             SubspaceSteer(sub, [1, 0, 0], 3.0), SubspaceSet(sub, [0, 1, 0], [2])]
    back = specs_from_json(specs_to_json(specs))
    assert back == specs and [type(s) for s in back] == [type(s) for s in specs]
    d = specs[1].to_dict()
    assert d["kind"] == "subspace_ablate" and d["subspace"]["site"] == "resid_post.1" and len(d["subspace"]["basis"]) == 3
    assert spec_from_dict(d) == specs[1]
    # dict specs run like spec objects, with identical results
    close(model.run(TARGET, [s.to_dict() for s in specs], logits="all").logits,
          model.run(TARGET, specs, logits="all").logits)
    with pytest.raises(SubspaceError, match="does not match the subspace's site"):
        spec_from_dict({**d, "site": "resid_post.0"})


# -- constructors -----------------------------------------------------------------------
def test_pca_equals_a_hand_computed_pca(tiny):
    model = tiny("gpt2")
    prompts = [TARGET, LONGER, OTHER, SHORTER]
    sub = Subspace.pca(model, "resid_post.1", prompts, 4)
    xs = [ref_run(model, "gpt2", p, record=["resid_post.1"])[1]["resid_post.1"][0] for p in prompts]
    x = torch.cat(xs).double()
    mu = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mu, full_matrices=False)
    cos = (sub.basis.double() @ vh[:4].T).diagonal().abs()
    assert cos.min() > 0.999, cos
    torch.testing.assert_close(torch.tensor(sub.meta["explained_variance_ratio"], dtype=torch.float64),
                               (s[:4] ** 2 / (s ** 2).sum()), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(sub.meta["mean_coords"], dtype=torch.float64),
                               mu @ sub.basis.double().T, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(sub.mean_coords(model, prompts), dtype=torch.float64),
                               mu @ sub.basis.double().T, atol=1e-4, rtol=1e-4)
    assert sub.meta["tokens"] == x.shape[0]
    with pytest.raises(SubspaceError, match="at most"):
        Subspace.pca(model, "resid_post.1", [SHORTER], 48)


def test_from_directions_spans_the_directions_silently():
    g = torch.Generator().manual_seed(3)
    dirs = torch.randn(3, 48, generator=g) * 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sub = Subspace.from_directions("resid_post.0", dirs)
        one = Subspace.from_directions("resid_post.0", dirs[0])  # a mean difference: one vector
    assert sub.k == 3 and one.k == 1
    torch.testing.assert_close(sub.basis @ sub.basis.T, torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(dirs @ sub.basis.T @ sub.basis, dirs, atol=1e-4, rtol=1e-4)  # same span
    torch.testing.assert_close(one.basis[0], dirs[0] / dirs[0].norm(), atol=1e-6, rtol=0)  # Gram-Schmidt order
    listed = Subspace.from_directions("resid_post.0", list(dirs))
    torch.testing.assert_close(listed.basis, sub.basis)


# -- bad input ------------------------------------------------------------------------------
def test_a_non_orthonormal_basis_is_orthonormalized_with_a_warning_or_refused():
    b = basis(48, 3)
    skew = b.clone()
    skew[1] += 0.5 * skew[0]
    with pytest.warns(SubspaceWarning, match="not orthonormal"):
        sub = Subspace("resid_post.0", skew)
    torch.testing.assert_close(sub.basis @ sub.basis.T, torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(sub.basis[0], b[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(skew @ sub.basis.T @ sub.basis, skew, atol=1e-5, rtol=1e-5)
    with pytest.raises(SubspaceError, match="not orthonormal"):
        Subspace("resid_post.0", skew, non_orthonormal="raise")
    with pytest.raises(SubspaceError, match="not orthonormal"):
        Subspace.from_dict({"site": "resid_post.0", "basis": skew.tolist()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(Subspace("resid_post.0", b).basis, b)  # orthonormal: kept exactly, no warning


def test_bad_bases_are_clear_errors():
    with pytest.raises(SubspaceError, match="k=49 directions but the site is only 48 wide"):
        Subspace("resid_post.0", torch.randn(49, 48))
    nan = basis(48, 2)
    nan[1, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="basis.*must be finite: 1 of 96"):
        Subspace("resid_post.0", nan)
    with pytest.raises(NonFiniteError, match="finite"):
        Subspace.from_directions("resid_post.0", [float("inf")] + [0.0] * 47)
    with pytest.raises(SubspaceError, match="rank 0"):
        Subspace.from_directions("resid_post.0", torch.zeros(2, 48))
    d = torch.randn(48)
    with pytest.raises(SubspaceError, match="rank 1 < k=2"):
        Subspace.from_directions("resid_post.0", torch.stack([d, 2 * d]))
    with pytest.raises(SubspaceError, match="k >= 1"):
        Subspace("resid_post.0", torch.zeros(0, 48))
    with pytest.raises(SubspaceError, match="per-token site"):
        Subspace("z.0", basis(12, 2))
    with pytest.raises(SubspaceError, match="real numbers|matrix"):
        Subspace("resid_post.0", [["a", "b"]])


def test_bad_specs_are_clear_errors(tiny):
    model = tiny("llama")
    sub = Subspace("resid_post.0", basis(48, 3))
    with pytest.raises(ValueError, match="the source has 5 tokens but the prompt has 9"):
        model.run(TARGET, [interchange_subspace(sub, SHORTER)])
    with pytest.raises(ValueError, match="the source has 5 tokens"):
        model.generate(TARGET, [interchange_subspace(sub, SHORTER)], max_new_tokens=2)
    with pytest.raises(IndexError, match="source position 7 is out of range for a source of 5 tokens"):
        model.run(TARGET, [interchange_subspace(sub, SHORTER, [1], [7])])
    with pytest.raises(ValueError, match="same length"):
        interchange_subspace(sub, SHORTER, [1, 2], [0])
    with pytest.raises(ValueError, match="needs a source"):
        SubspaceInterchange(sub, "")
    narrow = Subspace("resid_post.0", basis(32, 3))
    for spec in (ablate_subspace(narrow), steer_subspace(narrow, [1, 2, 3]), interchange_subspace(narrow, SAME_LEN)):
        with pytest.raises(SubspaceError, match="the subspace is 32 wide but resid_post.0 has width 48"):
            model.run(TARGET, [spec])
    with pytest.raises(SubspaceError, match="2 values but the subspace has k=3"):
        steer_subspace(sub, [1, 2])
    with pytest.raises(NonFiniteError, match="coords must be finite"):
        set_subspace(sub, [1, float("nan"), 0])
    with pytest.raises(ValueError, match="strength must be finite|strength must be a number"):
        steer_subspace(sub, [1, 2, 3], float("inf"))
    with pytest.raises(SubspaceError, match="mean.*4 values but the subspace has k=3"):
        ablate_subspace(sub, [0, 0, 0, 0])
    with pytest.raises(SubspaceError, match="read-only"):
        ablate_subspace(Subspace("resid_mid.0", basis(48, 2)))
    with pytest.raises(IndexError, match="position 40 is out of range"):
        model.run(TARGET, [ablate_subspace(sub, None, [40])])
    with pytest.raises(SubspaceError, match="needs coords"):
        SubspaceSteer(sub)
    with pytest.raises(TypeError, match="needs a Subspace"):
        SubspaceAblate(basis(48, 2))


def test_a_mean_activation_is_projected_to_coordinates(tiny):
    model = tiny("llama")
    sub = Subspace("resid_post.0", basis(48, 3))
    m = model.mean_activation("resid_post.0", [TARGET, OTHER])
    spec = ablate_subspace(sub, m)
    torch.testing.assert_close(torch.tensor(spec.mean), sub.coords(m.float()), atol=1e-5, rtol=1e-5)
