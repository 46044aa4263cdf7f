"""Activation patching, attribution patching and ablation vs a hand-written reference.

The reference uses plain PyTorch forward hooks on the Hugging Face model (no nnsight, no
workbench): it records the source run's activations, then reruns the base prompt once per cell
with a hook that writes the source value into that cell, and computes the metric by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from operator import attrgetter

import pytest
import torch
from hf_paths import PATHS

import workbench as wb
from workbench.causal.patching import (
    AblationResult,
    PatchingResult,
    ablate,
    activation_patching,
    attribution_patching,
    noise_specs,
    subject_positions,
)

CLEAN = "The cat sat on the mat"     # 9 tokens with the tiny tokenizer
CORRUPT = "A dog is on a mat"        # 9 tokens
LONGER = "The dog sat on the rug"    # 12 tokens
REFERENCE = ["Paris is the capital of France", "A dog is on a mat", "The dog sat on the rug", "Hello world, this is"]
SUBJECT = "cat"                      # tokens ' c', 'at' -> positions 1, 2

Fn = Callable[[torch.Tensor], torch.Tensor]


# -- the reference -----------------------------------------------------------------------------
def module_of(hf: torch.nn.Module, family: str, site: str) -> tuple[torch.nn.Module, str]:
    p = PATHS[family]
    if site == "embed":
        return attrgetter(p["embed"])(hf), "fwd"
    name, _, layer = site.partition(".")
    block = attrgetter(p["layers"])(hf)[int(layer)]
    return {"resid_pre": (block, "pre"), "resid_post": (block, "fwd"), "attn_out": (attrgetter(p["attn"])(block), "fwd"),
            "mlp_out": (attrgetter(p["mlp"])(block), "fwd"), "z": (attrgetter(p["o_proj"])(block), "pre"),
            "neurons": (attrgetter(p["down"])(block), "pre")}[name]


def hook(hf, family, site: str, fn: Fn):
    """Register fn on the site's tensor ([1, s, ...]; z is flat [1, s, H*d_head]); returns the handle."""
    module, kind = module_of(hf, family, site)
    if kind == "pre":
        def pre(m, args, kwargs):
            if args:
                return (fn(args[0]),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def fwd(m, args, out):
        return (fn(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else fn(out)
    return module.register_forward_hook(fwd)


def ids_of(model: wb.Model, prompt: str) -> torch.Tensor:
    return torch.tensor([model.tokenizer(prompt, add_special_tokens=True)["input_ids"]])


def ref_forward(model, family, prompt, edits=(), record=(), grad=False):
    """Last-position logits [vocab] under hook edits, and recorded site tensors."""
    rec: dict[str, torch.Tensor] = {}
    hf = model.hf

    def recorder(site):
        def f(x):
            if grad:
                x.retain_grad()
                rec[site] = x
                return x
            rec[site] = x.detach().clone()
            return x
        return f
    with ExitStack() as stack, (torch.enable_grad() if grad else torch.no_grad()):
        for site, fn in edits:
            stack.callback(hook(hf, family, site, fn).remove)
        for site in record:
            stack.callback(hook(hf, family, site, recorder(site)).remove)
        logits = hf(input_ids=ids_of(model, prompt)).logits[0, -1]
    return logits, rec


def ref_metric(logits, metric, ans, wrong, clean_logits):
    logits = logits.double()
    if metric == "logit_diff":
        return logits[ans] - logits[wrong]
    if metric == "prob":
        return torch.softmax(logits, -1)[ans]
    p = torch.softmax(clean_logits.double(), -1)
    return (p * (torch.log(p) - torch.log_softmax(logits, -1))).sum()


def ref_noise(model, positions, noise, seed):
    emb = attrgetter(PATHS["llama"]["embed"] if "llama" in model.arch.family else {
        "gpt2": PATHS["gpt2"]["embed"], "gpt_neox": PATHS["gpt_neox"]["embed"]}[model.arch.family])(model.hf)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(positions), model.d_model, generator=g) * (noise * emb.weight.detach().float().std())


def add_noise(positions, eps) -> Fn:
    def f(x):
        x = x.clone()
        for i, p in enumerate(positions):
            x[:, p] += eps[i].to(x.dtype)
        return x
    return f


def cell_edit(site_name, kind, col, positions, src, n_heads) -> Fn:
    """Write the source value (src: [1, s, ...], flat for z) into one cell."""
    def f(x):
        x = x.clone()
        if kind == "position":
            x[:, col] = src[:, col]
        elif kind == "head":
            xs, ss = x.unflatten(-1, (n_heads, -1)), src.unflatten(-1, (n_heads, -1))
            ps = slice(None) if positions is None else positions
            xs[:, ps, col] = ss[:, ps, col]
            x = xs.flatten(-2)
        else:
            ps = slice(None) if positions is None else positions
            x[:, ps, col] = src[:, ps, col]
        return x
    return f


def reference_sweep(model, family, *, site, kind, layers, columns, positions, metric, direction, ans, wrong,
                    corrupted=None, noise=None, subj=None, seed=0):
    """(raw, normalized, m_clean, m_corr) by hooks: one forward per cell."""
    corrupt_edits = [] if noise is None else [("embed", add_noise(subj, ref_noise(model, subj, noise, seed)))]
    corrupt_prompt = CLEAN if noise is not None else corrupted
    clean_logits, clean_rec = ref_forward(model, family, CLEAN, record=[f"{site}.{L}" for L in layers])
    corr_logits, corr_rec = ref_forward(model, family, corrupt_prompt, corrupt_edits, record=[f"{site}.{L}" for L in layers])
    m_clean = ref_metric(clean_logits, metric, ans, wrong, clean_logits)
    m_corr = ref_metric(corr_logits, metric, ans, wrong, clean_logits)
    if direction == "denoising":
        base, base_edits, src_rec = corrupt_prompt, corrupt_edits, clean_rec
    else:
        base, base_edits, src_rec = CLEAN, [], corr_rec
    raw = torch.empty(len(layers), len(columns), dtype=torch.float64)
    for i, L in enumerate(layers):
        for j, c in enumerate(columns):
            edit = cell_edit(site, kind, c, positions, src_rec[f"{site}.{L}"], model.n_heads)
            lg, _ = ref_forward(model, family, base, base_edits + [(f"{site}.{L}", edit)])
            raw[i, j] = ref_metric(lg, metric, ans, wrong, clean_logits)
    return raw, (raw - m_corr) / (m_clean - m_corr), float(m_clean), float(m_corr)


def targets(model: wb.Model, prompt: str = CLEAN) -> tuple[str, str, int, int]:
    """The clean run's top two next tokens (answer, wrong) as strings and ids."""
    tok = model.tokenizer
    ok = [int(i) for i in model.run(prompt, top_k=40).top.ids[0]
          if tok(tok.decode([int(i)]), add_special_tokens=False)["input_ids"] == [int(i)]]
    return tok.decode([ok[0]]), tok.decode([ok[1]]), ok[0], ok[1]


def close(a, b, atol=2e-4):
    torch.testing.assert_close(torch.as_tensor(a).double(), torch.as_tensor(b).double(), atol=atol, rtol=2e-4)


SWEEPS = {  # name: (site, kind, positions, heads, neurons)
    "resid_post": ("resid_post", "position", None, None, None),
    "resid_pre": ("resid_pre", "position", None, None, None),
    "attn_out": ("attn_out", "position", None, None, None),
    "mlp_out": ("mlp_out", "position", None, None, None),
    "z_all_positions": ("z", "head", None, None, None),
    "z_some_positions": ("z", "head", [2, -1], [0, 3], None),
    "neurons_by_position": ("neurons", "position", None, None, None),
    "neurons_chosen": ("neurons", "neuron", [1, -1], None, [3, 10, 50]),
}


def _run_case(model, family, case, direction, metric, noise=None):
    site, kind, positions, heads, neurons = SWEEPS[case]
    ans, wrong, a_id, w_id = targets(model)
    kw = dict(answer=ans, wrong=wrong, site=site, metric=metric, direction=direction, positions=positions,
              heads=heads, neurons=neurons, progress=False, batch_size=7)
    if noise is None:
        res = activation_patching(model, CLEAN, CORRUPT, **kw)
    else:
        res = activation_patching(model, CLEAN, noise=noise, subject=SUBJECT, seed=3, **kw)
    n = len(res.tokens)
    pos = None if positions is None else [p + n if p < 0 else p for p in positions]
    cols = heads or neurons or (list(range(model.n_heads)) if kind == "head" else list(range(n)))
    assert res.columns == cols and res.column_kind == kind and res.layers == [0, 1]
    raw, norm, m_clean, m_corr = reference_sweep(
        model, family, site=site, kind=kind, layers=[0, 1], columns=cols, positions=pos if kind != "position" else None,
        metric=metric, direction=direction, ans=a_id, wrong=w_id, corrupted=None if noise else CORRUPT,
        noise=noise, subj=[1, 2] if noise else None, seed=3)
    close(res.clean_metric, m_clean)
    close(res.corrupted_metric, m_corr)
    close(res.raw, raw)
    close(res.values, norm, atol=1e-3)
    return res


# -- activation patching vs hooks ------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("case", list(SWEEPS))
@pytest.mark.parametrize("fam", ["llama", "gpt2", "gpt_neox"])
def test_activation_patching_vs_hooks(tiny, fam, case, direction):
    metric = ("logit_diff", "prob", "kl")[(list(SWEEPS).index(case) + (direction == "noising")) % 3]
    _run_case(tiny(fam), fam, case, direction, metric)


@pytest.mark.parametrize("metric", ["logit_diff", "prob", "kl"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_every_metric_vs_hooks(tiny, metric, direction):
    for case in ("resid_post", "z_all_positions", "neurons_chosen"):
        _run_case(tiny("llama"), "llama", case, direction, metric)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("case", ["resid_post", "z_some_positions", "neurons_chosen", "attn_out"])
def test_noise_corruption_vs_hooks(tiny, case, direction):
    _run_case(tiny("llama"), "llama", case, direction, "prob", noise=3.0)


def test_other_families_run(tiny):
    for fam in ("gemma2", "qwen2"):
        model = tiny(fam)
        ans, wrong, *_ = targets(model)
        res = activation_patching(model, CLEAN, CORRUPT, answer=ans, wrong=wrong, progress=False)
        assert res.values.shape == (model.n_layers, len(res.tokens))
        close(res.values[-1, -1], 1.0, atol=1e-4)


# -- normalization, cells and the noise -------------------------------------------------------------
@pytest.mark.parametrize("metric", ["logit_diff", "prob", "kl"])
def test_normalization(tiny, metric):
    model = tiny("gpt2")
    ans, wrong, *_ = targets(model)
    res = activation_patching(model, CLEAN, CORRUPT, answer=ans, wrong=wrong, metric=metric, progress=False)
    last = model.n_layers - 1
    # Denoising the last layer's residual at the last position restores the clean output.
    close(res.values[-1, -1], 1.0, atol=1e-4)
    # Earlier positions of the last layer cannot reach the last position any more: no effect.
    close(res.values[-1, :-1], torch.zeros(len(res.tokens) - 1), atol=1e-4)
    # The base run alone is the corrupted run (0); patching the whole last residual gives 1.
    from workbench.causal.patching import metric_values

    clean_logp = torch.log_softmax(model.run(CLEAN).logits.float(), -1)
    a_id, w_id = targets(model)[2:]
    for specs, want in (([], 0.0), ([wb.Patch(f"resid_post.{last}", source=CLEAN)], 1.0)):
        lg = model.run(res.base_prompt, res.base_specs + specs).logits
        m = float(metric_values(lg, metric, a_id, w_id, clean_logp)[0])
        close((m - res.corrupted_metric) / (res.clean_metric - res.corrupted_metric), want, atol=1e-4)
    # Noising: the same cell gives the corrupted output (0), other cells of that layer stay clean (1).
    nz = activation_patching(model, CLEAN, CORRUPT, answer=ans, wrong=wrong, metric=metric, direction="noising",
                             progress=False)
    close(nz.values[-1, -1], 0.0, atol=1e-4)
    close(nz.values[-1, :-1], torch.ones(len(nz.tokens) - 1), atol=1e-4)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("case", ["resid_post", "z_some_positions", "neurons_chosen"])
@pytest.mark.parametrize("noise", [None, 3.0])
def test_cell_specs_replay_a_cell(tiny, case, direction, noise):
    model = tiny("llama")
    site, kind, positions, heads, neurons = SWEEPS[case]
    ans, wrong, a_id, w_id = targets(model)
    kw = dict(answer=ans, wrong=wrong, site=site, direction=direction, positions=positions, heads=heads,
              neurons=neurons, progress=False)
    res = (activation_patching(model, CLEAN, CORRUPT, **kw) if noise is None
           else activation_patching(model, CLEAN, noise=noise, subject=SUBJECT, **kw))
    for i, L in enumerate(res.layers):
        for j, c in list(enumerate(res.columns))[:3]:
            lg = model.run(res.base_prompt, res.base_specs + res.cell_specs(L, c)).logits[0]
            close(lg[a_id] - lg[w_id], res.raw[i, j], atol=1e-4)
            # specs are JSON-serializable (the widget sends them back)
            assert wb.specs_from_json(wb.specs_to_json(res.cell_specs(L, c))) == res.cell_specs(L, c)
    with pytest.raises(IndexError, match="not in this sweep"):
        res.cell_specs(99, res.columns[0])


def test_noise_is_seeded_and_matches_the_reference(tiny):
    model = tiny("llama")
    assert subject_positions(model, CLEAN, SUBJECT) == [1, 2]
    assert subject_positions(model, CLEAN, [2, -1]) == [2, 8]
    specs = noise_specs(model, CLEAN, SUBJECT, 3.0, seed=5)
    eps = ref_noise(model, [1, 2], 3.0, 5)
    assert [s.positions for s in specs] == [[1], [2]] and all(s.site == "embed" for s in specs)
    close(torch.tensor([s.direction for s in specs]), eps, atol=1e-6)
    ans, wrong, *_ = targets(model)
    kw = dict(answer=ans, wrong=wrong, noise=3.0, subject=SUBJECT, progress=False)
    a = activation_patching(model, CLEAN, seed=5, **kw)
    b = activation_patching(model, CLEAN, seed=5, **kw)
    c = activation_patching(model, CLEAN, seed=6, **kw)
    assert torch.equal(a.raw, b.raw) and a.base_specs == b.base_specs == specs
    assert not torch.allclose(a.raw, c.raw)
    assert a.subject_positions == [1, 2] and a.base_prompt == CLEAN and a.corrupted is None
    # The noised run through base_specs is the reference noised run.
    lg, _ = ref_forward(model, "llama", CLEAN, [("embed", add_noise([1, 2], eps))])
    close(model.run(CLEAN, a.base_specs).logits[0], lg, atol=1e-4)


def test_result_object(tiny):
    import matplotlib

    matplotlib.use("Agg")
    model = tiny("gpt_neox")
    ans, wrong, *_ = targets(model)
    res = activation_patching(model, CLEAN, CORRUPT, answer=ans, wrong=wrong, site="z", progress=False)
    assert isinstance(res, PatchingResult) and res.method == "exact" and res.column_kind == "head"
    df = res.to_pandas()
    assert df.shape == (model.n_layers, model.n_heads) and list(df.index) == [0, 1]
    ax = res.plot()
    assert ax.get_ylabel() == "layer" and len(ax.get_xticklabels()) == model.n_heads
    assert "PatchingResult" in res._repr_html_()
    pos = activation_patching(model, CLEAN, CORRUPT, answer=ans, wrong=wrong, layers=[1], positions=[0, -1],
                              progress=False)
    assert pos.columns == [0, 8] and pos.layers == [1] and pos.values.shape == (1, 2)
    assert [t.get_text() for t in pos.plot().get_xticklabels()] == ["0:" + pos.tokens[0], "8:" + pos.tokens[8]]


# -- bad input ------------------------------------------------------------------------------------------
def test_bad_inputs(tiny):
    model = tiny("llama")
    ans, wrong, *_ = targets(model)
    kw = dict(answer=ans, wrong=wrong, progress=False)
    with pytest.raises(ValueError, match=r"same number of tokens.*9.*12(.|\n)*positions that differ: \[1, 2, 3"):
        activation_patching(model, CLEAN, LONGER, **kw)
    with pytest.raises(ValueError, match="same number of tokens"):
        attribution_patching(model, CLEAN, LONGER, **kw)
    with pytest.raises(ValueError, match=r"answer ' mat' is 2 tokens \[' m', 'at'\]"):
        activation_patching(model, CLEAN, CORRUPT, answer=" mat", wrong=wrong, progress=False)
    with pytest.raises(ValueError, match="wrong answer 'xyzzy' is"):
        activation_patching(model, CLEAN, CORRUPT, answer=ans, wrong="xyzzy", progress=False)
    with pytest.raises(ValueError, match="needs a wrong answer"):
        activation_patching(model, CLEAN, CORRUPT, answer=ans, progress=False)
    with pytest.raises(IndexError, match=r"layer 2 is out of range.*0\.\.1"):
        activation_patching(model, CLEAN, CORRUPT, layers=[0, 2], **kw)
    with pytest.raises(IndexError, match="position 9 is out of range"):
        activation_patching(model, CLEAN, CORRUPT, positions=[9], **kw)
    with pytest.raises(IndexError, match="head 4 is out of range"):
        activation_patching(model, CLEAN, CORRUPT, site="z", heads=[4], **kw)
    with pytest.raises(IndexError, match="neuron 96 is out of range"):
        activation_patching(model, CLEAN, CORRUPT, site="neurons", neurons=[96], **kw)
    with pytest.raises(ValueError, match="unknown site 'pattern'"):
        activation_patching(model, CLEAN, CORRUPT, site="pattern", **kw)
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        activation_patching(model, CLEAN, CORRUPT, metric="acc", **kw)
    with pytest.raises(ValueError, match="unknown direction 'sideways'"):
        activation_patching(model, CLEAN, CORRUPT, direction="sideways", **kw)
    with pytest.raises(ValueError, match="not a substring"):
        activation_patching(model, CLEAN, noise=3.0, subject="Eiffel", **kw)
    with pytest.raises(ValueError, match="needs subject"):
        activation_patching(model, CLEAN, noise=3.0, **kw)
    with pytest.raises(ValueError, match="either a corrupted prompt or noise"):
        activation_patching(model, CLEAN, CORRUPT, noise=3.0, subject=SUBJECT, **kw)
    with pytest.raises(ValueError, match="give a corrupted prompt"):
        activation_patching(model, CLEAN, **kw)
    with pytest.raises(ValueError, match="same logit_diff"):
        activation_patching(model, CLEAN, CLEAN, **kw)
    kw.pop("progress")
    with pytest.raises(ValueError, match="unknown method"):
        ablate(model, CLEAN, heads={0: [1]}, method="shuffle", **kw)
    with pytest.raises(IndexError, match="layer 5 is out of range"):
        ablate(model, CLEAN, heads={5: [1]}, **kw)
    with pytest.raises(IndexError, match="head 7 is out of range"):
        ablate(model, CLEAN, heads={0: [7]}, **kw)
    with pytest.raises(ValueError, match="give heads"):
        ablate(model, CLEAN, **kw)
    with pytest.raises(ValueError, match="needs reference"):
        ablate(model, CLEAN, heads={0: [1]}, method="mean", **kw)
    with pytest.raises(ValueError, match="same number of tokens"):
        ablate(model, CLEAN, heads={0: [1]}, method="resample", reference=["Hi"], **kw)
    with pytest.raises(ValueError, match="is 2 tokens"):
        attribution_patching(model, CLEAN, CORRUPT, answer=" mat", wrong=wrong)


# -- attribution patching ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def double_models():
    """Separate float64 tiny models: finite differences need the precision."""
    from workbench.testing import tiny_model

    out = {}
    for fam in ("llama", "gpt2"):
        m = tiny_model(fam)
        m.hf.double()
        out[fam] = m
    return out


def manual_attribution(model, family, *, site, kind, layers, columns, positions, metric, direction, ans, wrong,
                       noise_eps=None):
    """Autograd by hand through hooks: grad of the base run's metric · (source − base), per cell."""
    sites = [f"{site}.{L}" for L in layers]
    corrupt_edits = [] if noise_eps is None else [("embed", add_noise([1, 2], noise_eps))]
    corrupt = CORRUPT if noise_eps is None else CLEAN
    clean_logits, clean_rec = ref_forward(model, family, CLEAN, record=sites)
    corr_logits, corr_rec = ref_forward(model, family, corrupt, corrupt_edits, record=sites)
    if direction == "denoising":
        base, edits, src = corrupt, corrupt_edits, clean_rec
    else:
        base, edits, src = CLEAN, [], corr_rec
    lg, rec = ref_forward(model, family, base, edits, record=sites, grad=True)
    m = ref_metric(lg, metric, ans, wrong, clean_logits.detach())
    m.backward()
    out = torch.empty(len(layers), len(columns), dtype=torch.float64)
    for i, s in enumerate(sites):
        prod = (rec[s].grad * (src[s] - rec[s].detach()))[0]  # [s, features]
        if kind == "head":
            prod = prod.unflatten(-1, (model.n_heads, -1)).sum(-1)
        if kind == "position":
            out[i] = prod.sum(-1)[columns]
        else:
            out[i] = (prod if positions is None else prod[positions]).sum(0)[columns]
    return out + m.detach(), src, base, edits, clean_logits


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("case", ["resid_post", "resid_pre", "attn_out", "mlp_out", "z_some_positions",
                                  "neurons_by_position", "neurons_chosen"])
@pytest.mark.parametrize("fam", ["llama", "gpt2"])
def test_attribution_vs_autograd_and_finite_differences(double_models, fam, case, direction):
    model = double_models[fam]
    metric = "logit_diff" if direction == "noising" else ("prob", "kl", "logit_diff")[len(case) % 3]
    site, kind, positions, heads, neurons = SWEEPS[case]
    ans, wrong, a_id, w_id = targets(model)
    res = attribution_patching(model, CLEAN, CORRUPT, answer=ans, wrong=wrong, site=site, metric=metric,
                               direction=direction, positions=positions, heads=heads, neurons=neurons)
    assert res.method == "attribution"
    n = len(res.tokens)
    pos = None if positions is None else [p + n if p < 0 else p for p in positions]
    want, src, base, edits, clean_logits = manual_attribution(
        model, fam, site=site, kind=kind, layers=res.layers, columns=res.columns,
        positions=pos if kind != "position" else None, metric=metric, direction=direction, ans=a_id, wrong=w_id)
    close(res.raw, want, atol=1e-6)
    # Finite differences: move each cell from the base value toward the source by ±ε (Llama's
    # attention softmax and RMSNorm run in float32 even in a float64 model, so ε is not tiny).
    eps = 3e-3
    m0 = ref_metric(ref_forward(model, fam, base, edits)[0], metric, a_id, w_id, clean_logits)
    H = model.n_heads
    for i, L in enumerate(res.layers):
        for j, c in list(enumerate(res.columns))[-3:]:
            fd = []
            for sgn in (1, -1):
                def step(x, L=L, c=c, sgn=sgn):
                    target = cell_edit(site, kind, c, pos if kind != "position" else None, src[f"{site}.{L}"], H)(x)
                    return x + sgn * eps * (target - x)
                fd.append(ref_metric(ref_forward(model, fam, base, edits + [(f"{site}.{L}", step)])[0],
                                     metric, a_id, w_id, clean_logits))
            slope = (fd[0] - fd[1]) / (2 * eps)
            est = float(res.raw[i, j] - m0)
            assert abs(est - float(slope)) <= 1e-4 + 2e-3 * abs(float(slope)), (L, c, est, float(slope))


def test_attribution_with_noise_and_its_normalization(double_models):
    model = double_models["llama"]
    ans, wrong, a_id, w_id = targets(model)
    kw = dict(answer=ans, wrong=wrong, noise=3.0, subject=SUBJECT, seed=2, progress=False)
    for direction in ("denoising", "noising"):
        att = attribution_patching(model, CLEAN, direction=direction, **kw)
        exact = activation_patching(model, CLEAN, direction=direction, **kw)
        close(att.clean_metric, exact.clean_metric, atol=1e-8)
        close(att.corrupted_metric, exact.corrupted_metric, atol=1e-8)
        assert att.base_specs == exact.base_specs and att.base_prompt == exact.base_prompt
        want = manual_attribution(model, "llama", site="resid_post", kind="position", layers=[0, 1],
                                  columns=list(range(9)), positions=None, metric="logit_diff", direction=direction,
                                  ans=a_id, wrong=w_id, noise_eps=ref_noise(model, [1, 2], 3.0, 2))[0]
        close(att.raw, want, atol=1e-6)
        close(att.values, (att.raw - att.corrupted_metric) / (att.clean_metric - att.corrupted_metric), atol=1e-8)
        # Positions the noise never reaches (before the subject) are unaffected in both methods.
        close(att.values[:, 0], exact.values[:, 0], atol=1e-6)


# -- ablation -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
@pytest.mark.parametrize("fam", ["llama", "gpt2", "gpt_neox"])
def test_ablate_vs_hooks(tiny, fam, method):
    model = tiny(fam)
    ans, wrong, a_id, w_id = targets(model)
    heads, neurons = {1: [0, 2]}, {0: [3, 10, 50]}
    res = ablate(model, CLEAN, heads=heads, neurons=neurons, method=method, reference=REFERENCE, answer=ans,
                 wrong=wrong, seed=1)
    assert isinstance(res, AblationResult)
    H = model.n_heads
    if method == "zero":
        hv, nv = (lambda x: torch.zeros_like(x)), (lambda x: torch.zeros_like(x))
    elif method == "mean":
        def mean_of(site):
            rows = [ref_forward(model, fam, p, record=[site])[1][site][0] for p in REFERENCE]
            return torch.cat(rows).mean(0)
        zm, nm = mean_of("z.1").unflatten(-1, (H, -1)), mean_of("neurons.0")
        hv, nv = (lambda x: zm.expand_as(x)), (lambda x: nm.expand_as(x))
    else:
        assert res.resample_source in REFERENCE and res.resample_source != CLEAN
        assert len(ids_of(model, res.resample_source)[0]) == len(ids_of(model, CLEAN)[0])
        _, rec = ref_forward(model, fam, res.resample_source, record=["z.1", "neurons.0"])
        zs, ns = rec["z.1"][0].unflatten(-1, (H, -1)), rec["neurons.0"][0]
        hv, nv = (lambda x: zs), (lambda x: ns)

    def z_edit(x):
        x = x.clone().unflatten(-1, (H, -1))
        x[0, :, [0, 2]] = hv(x[0])[:, [0, 2]].to(x.dtype)
        return x.flatten(-2)

    def n_edit(x):
        x = x.clone()
        x[0, :, [3, 10, 50]] = nv(x[0])[:, [3, 10, 50]].to(x.dtype)
        return x
    clean_logits, _ = ref_forward(model, fam, CLEAN)
    lg, _ = ref_forward(model, fam, CLEAN, [("z.1", z_edit), ("neurons.0", n_edit)])
    close(res.before, ref_metric(clean_logits, "logit_diff", a_id, w_id, clean_logits))
    close(res.after, ref_metric(lg, "logit_diff", a_id, w_id, clean_logits))
    close(res.change, res.after - res.before, atol=1e-9)
    assert res.to_pandas().shape[0] == 1
    # The ablation replays through the engine with its specs.
    lg2 = model.run(CLEAN, res.specs).logits[0]
    close(lg2[a_id] - lg2[w_id], res.after)


def test_ablate_metrics(tiny):
    model = tiny("llama")
    ans, wrong, a_id, _ = targets(model)
    kl = ablate(model, CLEAN, heads={0: [0, 1, 2, 3]}, answer=ans, metric="kl")
    assert kl.before == pytest.approx(0.0, abs=1e-6) and kl.after > 0
    pr = ablate(model, CLEAN, neurons={1: list(range(20))}, answer=ans, metric="prob")
    clean_logits, _ = ref_forward(model, "llama", CLEAN)
    close(pr.before, torch.softmax(clean_logits, -1)[a_id])
    import matplotlib

    matplotlib.use("Agg")
    assert pr.plot().get_ylabel() == "prob"


# -- the embedded model ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    return wb.load(progress=False)


@pytest.mark.embedded
def test_causal_tracing_embedded(smol):
    prompt = "The Eiffel Tower is located in the city of"
    res = activation_patching(smol, prompt, answer=" Paris", metric="prob", noise=3.0, subject="The Eiffel Tower",
                              seed=0, progress=False)
    subj = res.subject_positions
    assert "".join(res.tokens[p] for p in subj) == "The Eiffel Tower"
    assert res.clean_metric > 2 * res.corrupted_metric
    early_subject = res.values[:16, subj].max().item()
    late_last = res.values[25:30, -1].min().item()
    assert early_subject > EARLY_SUBJECT_MIN, res.values
    assert late_last > LATE_LAST_MIN, res.values


EARLY_SUBJECT_MIN = 0.3
LATE_LAST_MIN = 0.5


def test_top_cells_are_the_largest_values():
    from workbench.testing import tiny_model

    model = tiny_model("llama")
    res = activation_patching(model, "The value of the", "The value of a", answer=" the", metric="prob", progress=False)
    cells = res.top_cells(4)
    flat = sorted(res.values.flatten().tolist(), reverse=True)[:4]
    assert [round(v, 6) for _, _, v in cells] == [round(v, 6) for v in flat]
    for layer, col, v in cells:
        assert res.values[res.layers.index(layer), res.columns.index(col)].item() == pytest.approx(v)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("site, extra", [("resid_pre", {}), ("mlp_out", {}), ("z", {}), ("neurons", {"neurons": [2, 7]})])
@pytest.mark.parametrize("how", ["prompt-denoising", "noise-noising"])
def test_forked_sweep_equals_replaying_every_cell(family, site, extra, how):
    """The sweep forks rows at their layer; each row must equal its cell_specs run through run()."""
    from workbench.testing import tiny_model

    model = tiny_model(family)
    kw = dict(answer=" the", metric="prob", site=site, progress=False, **extra)
    if how == "prompt-denoising":
        res = activation_patching(model, "The value of the", "The value of a", **kw)
    else:
        res = activation_patching(model, "The value of the", noise=3.0, subject="The value", direction="noising", **kw)
    ans = model.tokenizer.encode(" the")[0]
    for i, L in enumerate(res.layers):
        for j, c in enumerate(res.columns):
            run = model.run(res.base_prompt, res.base_specs + res.cell_specs(L, c), top_k=1)
            p = torch.softmax(run.logits[0].float(), -1)[ans]
            assert res.raw[i, j].item() == pytest.approx(p.item(), abs=1e-5), (L, c)
