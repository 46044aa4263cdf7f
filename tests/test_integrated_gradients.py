"""Integrated gradients, gradient × activation and input attribution vs hand-written PyTorch.

The reference uses plain forward hooks on the Hugging Face model (no nnsight, no workbench): it
records the site, then runs one forward per step with a hook that replaces the site by a leaf
tensor ``x' + α (x − x')`` and takes ``torch.autograd.grad`` of the metric with respect to it.
"""

from __future__ import annotations

import warnings
from operator import attrgetter

import pytest
import torch
from hf_paths import PATHS

import workbench as wb
from workbench.causal import (
    AttributionResult,
    CompletenessWarning,
    gradient_x_activation,
    input_attribution,
    integrated_gradients,
)

PROMPT = "The cat sat on the mat"     # 9 tokens with the tiny tokenizer
CORRUPT = "A dog is on a mat"         # 9 tokens
LONGER = "The dog sat on the rug"     # 12 tokens
REFERENCE = ["Paris is the capital of France", "Hello world, this is"]
TARGET, FOIL = 5, 9                   # token ids (the tiny vocabulary has 512)

# Few steps on purpose (equality with the reference): the completeness warning is expected there.
pytestmark = pytest.mark.filterwarnings("ignore::workbench.causal.attribution.CompletenessWarning")


# -- the reference --------------------------------------------------------------------------------
def module_of(hf, family: str, site: str):
    p = PATHS[family]
    if site == "embed":
        return attrgetter(p["embed"])(hf), "fwd"
    name, _, layer = site.partition(".")
    block = attrgetter(p["layers"])(hf)[int(layer)]
    return {"neurons": (attrgetter(p["down"])(block), "pre"), "resid_post": (block, "fwd"),
            "mlp_out": (attrgetter(p["mlp"])(block), "fwd")}[name]


def with_hook(hf, family, site, fn, run):
    """Run ``run()`` with ``fn`` replacing the site's tensor [1, s, width]."""
    module, kind = module_of(hf, family, site)
    if kind == "pre":
        h = module.register_forward_pre_hook(lambda m, args: (fn(args[0]),) + tuple(args[1:]))
    else:
        h = module.register_forward_hook(
            lambda m, args, out: (fn(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else fn(out))
    try:
        return run()
    finally:
        h.remove()


def ids(model, prompt):
    return torch.tensor([model.tokenizer(prompt, add_special_tokens=True)["input_ids"]])


def record(model, family, site, prompt):
    got = {}

    def keep(x):
        got["x"] = x.detach().clone()
        return x
    with torch.no_grad():
        with_hook(model.hf, family, site, keep, lambda: model.hf(input_ids=ids(model, prompt)))
    return got["x"][0]  # [s, width]


def logit_diff(logits):
    return logits[TARGET].double() - logits[FOIL].double()


def ref_ig(model, family, site, prompt, baseline, steps, positions=None, metric=logit_diff, rule="midpoint"):
    """(attributions [P, width], metric(x), metric(baseline)) by hooks, one forward and backward per step."""
    hf, x_ids = model.hf, ids(model, prompt)
    x0 = record(model, family, site, prompt)
    n, w = x0.shape
    if isinstance(baseline, str) and baseline == "zero":
        bl = torch.zeros(n, w)
    elif isinstance(baseline, str) and baseline == "mean":
        bl = torch.cat([record(model, family, site, r) for r in REFERENCE]).mean(0).expand(n, w)
    elif isinstance(baseline, str):
        bl = record(model, family, site, baseline)
    else:
        bl = baseline.expand(n, w)
    pos = list(range(n)) if positions is None else positions
    mask = torch.zeros(n, 1)
    mask[pos] = 1.0

    def point(alpha):
        return x0 + mask * (bl + alpha * (x0 - bl) - x0)  # the chosen positions move, the others keep x0

    def value(alpha, grad):
        z = point(alpha).clone().requires_grad_(grad)
        with torch.enable_grad() if grad else torch.no_grad():
            out = with_hook(hf, family, site, lambda x: z[None].to(x.dtype), lambda: hf(input_ids=x_ids).logits[0, -1])
            m = metric(out)
            g = torch.autograd.grad(m, z)[0] if grad else None
        return float(m.detach()), g

    k = torch.arange(steps, dtype=torch.float64)
    alphas = {"midpoint": (k + 0.5) / steps, "left": k / steps, "right": (k + 1) / steps}[rule]
    total = torch.zeros(n, w, dtype=torch.float64)
    for a in alphas.tolist():
        total += value(a, True)[1].double()
    attr = ((x0 - bl).double() * total / steps)[pos]
    return attr, value(1.0, False)[0], value(0.0, False)[0]


def close(res: AttributionResult, ref, atol=2e-5):
    attr, m_in, m_bl = ref
    assert res.attributions.shape == attr.shape
    scale = float(attr.abs().max()) + 1e-12
    assert torch.allclose(res.attributions.double(), attr, atol=atol * scale, rtol=1e-4), \
        float((res.attributions.double() - attr).abs().max())
    assert res.metric_input == pytest.approx(m_in, abs=1e-4) and res.metric_baseline == pytest.approx(m_bl, abs=1e-4)


# -- equality with the reference ---------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("baseline", ["zero", "mean", CORRUPT])
def test_ig_equals_hand_written(tiny, family, baseline):
    model = tiny(family)
    res = integrated_gradients(model, PROMPT, "neurons.1", target=TARGET, foil=FOIL, baseline=baseline, steps=6,
                               reference=REFERENCE if baseline == "mean" else None, progress=False)
    close(res, ref_ig(model, family, "neurons.1", PROMPT, baseline, 6))
    assert res.baseline == {"zero": "zero", "mean": "mean"}.get(baseline, "corrupted")
    assert res.positions == list(range(9)) and res.tokens == model.to_str_tokens(PROMPT)


def test_ig_positions_residual_site_tensor_baseline_and_rules(tiny):
    model = tiny("llama")
    res = integrated_gradients(model, PROMPT, "resid_post.0", target=TARGET, foil=FOIL, baseline=CORRUPT, steps=5,
                               positions=[2, -1], rule="left", progress=False)
    close(res, ref_ig(model, "llama", "resid_post.0", PROMPT, CORRUPT, 5, positions=[2, 8], rule="left"))
    assert res.positions == [2, 8]
    b = torch.randn(model.d_mlp) * 0.1
    res = integrated_gradients(model, PROMPT, "neurons.0", target=TARGET, foil=FOIL, baseline=b, steps=4, rule="right",
                               progress=False)
    close(res, ref_ig(model, "llama", "neurons.0", PROMPT, b, 4, rule="right"))


def test_chunked_rows_equal_one_trace(tiny):
    model = tiny("gpt2")
    one = integrated_gradients(model, PROMPT, "neurons.0", target=TARGET, foil=FOIL, steps=7, progress=False)
    many = integrated_gradients(model, PROMPT, "neurons.0", target=TARGET, foil=FOIL, steps=7, batch=3, progress=False)
    assert many.extra["rows_per_trace"] == 3 and one.extra["rows_per_trace"] >= 7
    assert torch.allclose(one.attributions, many.attributions, atol=1e-6)
    assert one.metric_baseline == pytest.approx(many.metric_baseline)


@pytest.mark.parametrize("name", ["prob", "logprob", "logit"])
def test_named_and_custom_metrics(tiny, name):
    model = tiny("llama")

    def ref_metric(logits):
        lg = logits.double()
        return {"prob": torch.softmax(lg, -1)[TARGET], "logprob": torch.log_softmax(lg, -1)[TARGET],
                "logit": lg[TARGET]}[name]
    res = integrated_gradients(model, PROMPT, "neurons.1", metric=name, target=TARGET, baseline="mean", steps=4,
                               progress=False)
    close(res, ref_ig_mean_prompt(model, ref_metric))
    custom = integrated_gradients(model, PROMPT, "neurons.1", metric=lambda lg: ref_metric_rows(lg, name),
                                  baseline="mean", steps=4, progress=False)
    assert torch.allclose(custom.attributions, res.attributions, atol=1e-6)


def ref_metric_rows(lg, name):
    return {"prob": torch.softmax(lg, -1)[:, TARGET], "logprob": torch.log_softmax(lg, -1)[:, TARGET],
            "logit": lg[:, TARGET]}[name]


def ref_ig_mean_prompt(model, metric):
    """The 'mean' baseline without reference prompts: the prompt's own token mean."""
    mean = record(model, "llama", "neurons.1", PROMPT).mean(0)
    return ref_ig(model, "llama", "neurons.1", PROMPT, mean, 4, metric=metric)


# -- completeness ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_completeness_gap_shrinks_with_steps(tiny, family):
    model = tiny(family)
    gaps = []
    for m in (2, 8, 64):
        res = integrated_gradients(model, PROMPT, "neurons.1", target=TARGET, foil=FOIL, steps=m, progress=False)
        assert res.gap == pytest.approx(float(res.attributions.double().sum()) - (res.metric_input - res.metric_baseline))
        gaps.append(abs(res.gap))
    assert gaps[0] > gaps[1] > gaps[2], gaps
    assert abs(res.delta) > 0.05 and res.relative_gap < 1e-3, (res.relative_gap, res.delta)


def test_degenerate_path_is_flagged(tiny):
    """A zero baseline on the residual stream of an RMSNorm model: the gap stays large, and a warning says so."""
    model = tiny("llama")
    with pytest.warns(CompletenessWarning, match="singularity"):
        res = integrated_gradients(model, PROMPT, "resid_post.0", target=TARGET, foil=FOIL, steps=16, progress=False)
    assert res.relative_gap > 0.05


# -- gradient × activation ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_gradient_x_activation_equals_autograd(tiny, family):
    model = tiny(family)
    res = gradient_x_activation(model, PROMPT, "neurons.0", target=TARGET, foil=FOIL)
    x = record(model, family, "neurons.0", PROMPT)
    z = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = with_hook(model.hf, family, "neurons.0", lambda t: z[None], lambda: model.hf(input_ids=ids(model, PROMPT)))
        g = torch.autograd.grad(logit_diff(out.logits[0, -1]), z)[0]
    assert res.method == "gradient_x_activation" and res.steps == 1
    assert torch.allclose(res.attributions, x * g, atol=1e-6, rtol=1e-4)
    assert res.metric_baseline == pytest.approx(ref_ig(model, family, "neurons.0", PROMPT, "zero", 1)[2], abs=1e-5)


# -- input attribution -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_input_attribution_equals_hand_written(tiny, family):
    model = tiny(family)
    res = input_attribution(model, PROMPT, target=TARGET, foil=FOIL, baseline=CORRUPT, steps=6, progress=False)
    ref = ref_ig(model, family, "embed", PROMPT, CORRUPT, 6)
    close(res, ref)
    assert res.kind == "tokens" and torch.allclose(res.per_token.double(), ref[0].sum(1), atol=1e-5)
    df = res.to_pandas()
    assert list(df.columns[:3]) == ["position", "token", "attribution"] and len(df) == 9
    gxi = input_attribution(model, PROMPT, target=TARGET, foil=FOIL, method="gradient_x_input", progress=False)
    close(gxi, ref_ig(model, family, "embed", PROMPT, "zero", 1, rule="right"))


# -- remote -------------------------------------------------------------------------------------------------
def test_runs_under_remote_local(tiny):
    local, remote = tiny("llama"), tiny("llama", remote="local")
    kw = dict(target=TARGET, foil=FOIL, baseline=CORRUPT, steps=5, progress=False)
    a = integrated_gradients(local, PROMPT, "neurons.1", **kw)
    b = integrated_gradients(remote, PROMPT, "neurons.1", **kw)
    assert torch.allclose(a.attributions, b.attributions, atol=1e-6) and a.gap == pytest.approx(b.gap, abs=1e-6)
    c = input_attribution(remote, PROMPT, target=TARGET, foil=FOIL, baseline="mean", steps=3, progress=False)
    d = input_attribution(local, PROMPT, target=TARGET, foil=FOIL, baseline="mean", steps=3, progress=False)
    assert torch.allclose(c.attributions, d.attributions, atol=1e-6)


# -- the result ---------------------------------------------------------------------------------------------
def test_result_tables_and_plot(tiny):
    import matplotlib

    matplotlib.use("Agg")
    model = tiny("llama")
    res = integrated_gradients(model, PROMPT, "neurons.1", target=TARGET, foil=FOIL, steps=8, progress=False)
    top = res.top(5)
    assert len(top) == 5 and list(top["unit"]) == res.per_unit.abs().argsort(descending=True)[:5].tolist()
    assert top["attribution"].iloc[0] == pytest.approx(float(res.per_unit[top["unit"].iloc[0]]))
    cells = res.top(3, per="cell")
    k = int(res.attributions.abs().flatten().argmax())
    assert (cells["position"].iloc[0], cells["unit"].iloc[0]) == (k // model.d_mlp, k % model.d_mlp)
    assert len(res.to_pandas()) == model.d_mlp and len(res.to_pandas(per="token")) == 9
    assert res.plot().get_title().startswith("integrated_gradients at neurons.1")
    assert "completeness gap" in repr(res) and "AttributionResult" in res._repr_html_()
    assert not hasattr(res, "show")  # no viewer registered (yet)
    with pytest.raises(ValueError, match="per="):
        res.to_pandas(per="layer")


def test_root_and_package_exports():
    assert wb.integrated_gradients is integrated_gradients
    assert wb.causal.gradient_x_activation is gradient_x_activation and wb.causal.input_attribution is input_attribution


# -- bad input ----------------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors(tiny):
    model = tiny("llama")
    kw = dict(target=TARGET, foil=FOIL, progress=False)
    with pytest.raises(ValueError, match="unknown site 'nerons'"):
        integrated_gradients(model, PROMPT, "nerons.1", **kw)
    with pytest.raises(ValueError, match="read-only"):
        integrated_gradients(model, PROMPT, "resid_mid.1", **kw)
    with pytest.raises(ValueError, match="per token"):
        integrated_gradients(model, PROMPT, "z.1", **kw)
    with pytest.raises(IndexError, match="layer 7"):
        integrated_gradients(model, PROMPT, "neurons.7", **kw)
    with pytest.raises(ValueError, match="target 'zqxjv kwyp' is .* tokens"):
        integrated_gradients(model, PROMPT, "neurons.1", target="zqxjv kwyp", foil=FOIL, progress=False)
    with pytest.raises(ValueError, match="needs a foil"):
        integrated_gradients(model, PROMPT, "neurons.1", target=TARGET, progress=False)
    with pytest.raises(ValueError, match="unknown metric 'kl'"):
        integrated_gradients(model, PROMPT, "neurons.1", metric="kl", **kw)
    with pytest.raises(ValueError, match="one value per row"):
        integrated_gradients(model, PROMPT, "neurons.1", metric=lambda lg: lg.sum(), progress=False)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps must be an integer of at least 1"):
            integrated_gradients(model, PROMPT, "neurons.1", steps=bad, **kw)
    nan = torch.zeros(model.d_mlp)
    nan[3] = float("nan")
    with pytest.raises(ValueError, match="baseline tensor must be finite"):
        integrated_gradients(model, PROMPT, "neurons.1", baseline=nan, **kw)
    with pytest.raises(ValueError, match=r"\[96\] or \[9, 96\]"):
        integrated_gradients(model, PROMPT, "neurons.1", baseline=torch.zeros(5), **kw)
    with pytest.raises(ValueError, match="the prompt has 9 and the corrupted prompt 12"):
        integrated_gradients(model, PROMPT, "neurons.1", baseline=LONGER, **kw)
    with pytest.raises(IndexError, match="position 9 is out of range for a prompt of 9 tokens"):
        integrated_gradients(model, PROMPT, "neurons.1", positions=[9], **kw)
    with pytest.raises(TypeError, match="positions are token indices"):
        integrated_gradients(model, PROMPT, "neurons.1", positions=[1.5], **kw)
    with pytest.raises(ValueError, match="unknown rule 'trapezoid'"):
        integrated_gradients(model, PROMPT, "neurons.1", rule="trapezoid", **kw)
    with pytest.raises(ValueError, match="unknown method"):
        input_attribution(model, PROMPT, method="saliency", **kw)
    with pytest.raises(TypeError, match="baseline must be"):
        integrated_gradients(model, PROMPT, "neurons.1", baseline=3.0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good path raises no completeness warning
        integrated_gradients(model, PROMPT, "neurons.1", steps=16, **kw)
