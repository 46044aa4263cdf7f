"""Weight-based neuron analyses (workbench.neurons.weights) vs a per-neuron loop over the raw HF weights.

The reference reads each family's weights by hand (numpy, float64): no workbench helper is used.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import workbench.neurons.weights as W
from workbench.neurons.weights import (
    NeuronWeights,
    NeuronWeightsFileError,
    io_classes,
    neuron_weights,
    vocab_classes,
)
from workbench.testing import tiny_model, tiny_tokenizer

FAMILIES = ("llama", "gpt2", "gpt_neox", "gemma2", "qwen2")
GATED = {"llama": True, "qwen2": True, "gemma2": True, "gpt2": False, "gpt_neox": False}


# -- the hand-written reference ----------------------------------------------------------------
def raw_weights(model, family: str):
    """Per layer: (gate rows or None, in rows, out rows) as float64 [d_mlp, d_model]; the final
    norm's effective gain; whether it is a LayerNorm; the unembedding [vocab, d_model]."""
    hf = model.hf

    def np64(t):
        return t.detach().double().numpy()

    if family in ("llama", "qwen2", "gemma2"):
        layers = [(np64(b.mlp.gate_proj.weight), np64(b.mlp.up_proj.weight), np64(b.mlp.down_proj.weight).T)
                  for b in hf.model.layers]
        w = np64(hf.model.norm.weight)
        gain = 1.0 + w if family == "gemma2" else w  # Gemma's RMSNorm multiplies by (1 + weight)
        return layers, gain, False, np64(hf.lm_head.weight)
    if family == "gpt2":  # Conv1D: c_fc.weight is [d_model, d_mlp], c_proj.weight is [d_mlp, d_model]
        layers = [(None, np64(b.mlp.c_fc.weight).T, np64(b.mlp.c_proj.weight)) for b in hf.transformer.h]
        return layers, np64(hf.transformer.ln_f.weight), True, np64(hf.lm_head.weight)
    if family == "gpt_neox":
        layers = [(None, np64(b.mlp.dense_h_to_4h.weight), np64(b.mlp.dense_4h_to_h.weight).T) for b in hf.gpt_neox.layers]
        return layers, np64(hf.gpt_neox.final_layer_norm.weight), True, np64(hf.lm_head.weight)
    if family == "phi3":  # fused gate_up_proj: the first half of the rows is the gate (Phi3MLP.forward)
        layers = []
        for b in hf.model.layers:
            gate, up = b.mlp.gate_up_proj.weight.chunk(2, dim=0)
            layers.append((np64(gate), np64(up), np64(b.mlp.down_proj.weight).T))
        return layers, np64(hf.model.norm.weight), False, np64(hf.lm_head.weight)
    raise ValueError(family)


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def paper_io_class(lin: float, gate: float | None, gl: float | None, t: float = 0.5) -> str:
    """Gerstner & Schütze's classes, written as the if-chain of the authors' first count_categories.

    That code assumes their "refactored" weights, (w_up, w_out) flipped so that cos(w_gate, w_up) >= 0
    (the function is unchanged; cos(w_up, w_out) keeps its sign, the other two flip), so flip first.
    """
    if gate is None:
        return "enrichment" if lin > t else "depletion" if lin < -t else "orthogonal output"
    if gl < 0:
        gate, gl = -gate, -gl
    if lin < -t:
        if gate < -t or gate > t:
            return "depletion" if math.copysign(gl, gate) < -t else "atypical depletion"
        return "conditional depletion" if -t <= gl <= t else "atypical conditional depletion"
    if lin > t:
        if gate < -t or gate > t:
            return "enrichment" if math.copysign(gl, gate) > t else "atypical enrichment"
        return "conditional enrichment" if -t <= gl <= t else "atypical conditional enrichment"
    if -t <= gate <= t:
        return "orthogonal output"
    return "proportional change" if -t <= gl <= t else "atypical proportional change"


def reference(model, family: str, k: int, stats_on: str = "cosine") -> list[list[dict]]:
    """For every layer and neuron: cosines, classes, top-k ids/scores and vocabulary moments."""
    layers, gain, layernorm, U = raw_weights(model, family)
    Uc = (U - U.mean(0)) * gain  # TransformerLens fold_ln + center_unembed (Gurnee et al.)
    out = []
    for gate_rows, in_rows, out_rows in layers:
        rows = []
        for j in range(out_rows.shape[0]):
            w_in, w_out = in_rows[j], out_rows[j]
            r = {"io_cos": cos(w_in, w_out)}
            if gate_rows is not None:
                r["io_cos_gate"] = cos(gate_rows[j], w_out)
                r["gate_up_cos"] = cos(gate_rows[j], w_in)
            r["io_class"] = paper_io_class(r["io_cos"], r.get("io_cos_gate"), r.get("gate_up_cos"))
            wo = w_out - w_out.mean() if layernorm else w_out
            scores = U @ (gain * wo)
            order = np.argsort(-scores, kind="stable")
            r["top_ids"], r["top"] = order[:k], scores[order[:k]]
            order = np.argsort(scores, kind="stable")
            r["bottom_ids"], r["bottom"] = order[:k], scores[order[:k]]
            vals = (Uc @ wo) / (np.linalg.norm(Uc, axis=1) * np.linalg.norm(wo)) if stats_on == "cosine" else scores
            m, s = vals.mean(), vals.std()
            z = (vals - m) / s
            r.update(mean=m, std=s, skew=(z ** 3).mean(), kurt=(z ** 4).mean() - 3.0)
            kt = r["kurt"] > 7.0
            r["vocab_class"] = "prediction" if kt and r["skew"] > 0 else "suppression" if kt and r["skew"] < 0 else ""
            rows.append(r)
        out.append(rows)
    return out


def randomized(family: str, seed: int = 1):
    """A fresh tiny model whose final-norm gain (and LayerNorm bias) is random, so folding matters."""
    model = tiny_model(family, seed=seed)
    hf = model.hf
    norm = {"gpt2": lambda: hf.transformer.ln_f, "gpt_neox": lambda: hf.gpt_neox.final_layer_norm}.get(
        family, lambda: hf.model.norm)()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=g) * 1.5 - 0.25)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))
    return model


def check(res: NeuronWeights, ref: list[list[dict]], layers: list[int]) -> None:
    df = res.to_pandas()
    for i, L in enumerate(layers):
        for j, r in enumerate(ref[L]):
            assert res.io_cos[i, j].item() == pytest.approx(r["io_cos"], abs=1e-5)
            if "io_cos_gate" in r:
                assert res.io_cos_gate[i, j].item() == pytest.approx(r["io_cos_gate"], abs=1e-5)
                assert res.gate_up_cos[i, j].item() == pytest.approx(r["gate_up_cos"], abs=1e-5)
            assert res.promoted_ids[i, j].tolist() == r["top_ids"].tolist(), (L, j)
            assert res.suppressed_ids[i, j].tolist() == r["bottom_ids"].tolist(), (L, j)
            np.testing.assert_allclose(res.promoted_scores[i, j].numpy(), r["top"], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(res.suppressed_scores[i, j].numpy(), r["bottom"], rtol=1e-4, atol=1e-5)
            assert res.vocab_mean[i, j].item() == pytest.approx(r["mean"], rel=1e-3, abs=1e-6)
            assert res.vocab_std[i, j].item() == pytest.approx(r["std"], rel=1e-4)
            assert res.vocab_skew[i, j].item() == pytest.approx(r["skew"], rel=1e-3, abs=1e-4)
            assert res.vocab_kurtosis[i, j].item() == pytest.approx(r["kurt"], rel=1e-3, abs=1e-4)
            row = df.iloc[i * res.d_mlp + j]
            assert (row.site, row.layer, row.unit) == (f"neurons.{L}", L, j)
            assert row.io_class == r["io_class"]
            assert row.vocab_class == r["vocab_class"]


# -- numbers vs the reference --------------------------------------------------------------------
@pytest.mark.parametrize("stats_on", ["cosine", "score"])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_reference(family: str, stats_on: str) -> None:
    model = randomized(family)
    res = neuron_weights(model, k=7, progress=False, stats_on=stats_on)
    assert res.layers == [0, 1] and res.gated == GATED[family] and res.k == 7
    assert res.meta["final_norm"] == {"gemma2": "rmsnorm (1 + weight)", "gpt2": "layernorm",
                                      "gpt_neox": "layernorm"}.get(family, "rmsnorm")
    check(res, reference(model, family, 7, stats_on), [0, 1])
    cols = list(res.to_pandas().columns)
    gated_cols = ["io_cos_gate", "io_cos_up", "gate_up_cos"]
    assert cols[:4] == ["site", "layer", "unit", "io_cos"]
    assert all((c in cols) == GATED[family] for c in gated_cols)
    assert {"io_class", "vocab_mean", "vocab_std", "vocab_skew", "vocab_kurtosis", "vocab_class"} <= set(cols)


def test_blocks_and_layers_do_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small score blocks (top-k merged across vocabulary blocks) and a layer subset give the same numbers."""
    model = randomized("llama")
    full = neuron_weights(model, k=5, progress=False)
    monkeypatch.setattr(W, "_CPU_BLOCK", (7, 100))  # 14 neuron chunks x 6 vocabulary blocks (the last one short)
    small = neuron_weights(model, k=5, progress=False)
    sub = neuron_weights(model, k=5, layers=[1], progress=False, chunk_size=5)
    for name in W._TENSORS:
        a, b = getattr(full, name), getattr(small, name)
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name
        assert torch.allclose(a[1:].float(), getattr(sub, name).float(), rtol=1e-5, atol=1e-6), name
    assert sub.layers == [1] and neuron_weights(model, k=5, layers=1, progress=False).layers == [1]
    check(small, reference(model, "llama", 5), [0, 1])


def test_fused_gate_up_layout() -> None:
    """Phi-3's fused gate_up_proj: the first half is the gate."""
    import transformers as tf

    import workbench as wb

    torch.manual_seed(0)
    cfg = tf.Phi3Config(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, pad_token_id=0,
                        bos_token_id=0, eos_token_id=0)
    hf = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    model = wb.load(hf, tokenizer=tiny_tokenizer())
    res = neuron_weights(model, k=4, progress=False)
    assert res.gated and res.meta["mlp"]["fused_gate_up"]
    check(res, reference(model, "phi3", 4), [0, 1])


def test_arch_extra_declares_the_projections() -> None:
    """ArchMap.extra names the input projections (here swapped on purpose, so the cosines swap)."""
    model = tiny_model("llama", seed=2)
    plain = neuron_weights(model, k=3, progress=False)
    model.arch.extra = {"mlp_gate_proj": "mlp.up_proj", "mlp_up_proj": "mlp.gate_proj"}
    swapped = neuron_weights(model, k=3, progress=False)
    assert torch.allclose(swapped.io_cos, plain.io_cos_gate) and torch.allclose(swapped.io_cos_gate, plain.io_cos)
    assert torch.allclose(swapped.gate_up_cos, plain.gate_up_cos)
    model.arch.extra = {"mlp_in_proj": "mlp.nope"}
    with pytest.raises(NotImplementedError, match="mlp.nope"):
        neuron_weights(model, progress=False)


def test_public_layout_and_layer_vectors() -> None:
    """mlp_layout / layer_vectors (used by the neuron dashboard) read the same rows as the reference."""
    model = tiny_model("llama", seed=2)
    lay = W.mlp_layout(model.hf, model.arch)
    assert isinstance(lay, W.MLPLayout) and lay.gate == "mlp.gate_proj" and lay.up == "mlp.up_proj" and not lay.fused
    layers, *_ = raw_weights(model, "llama")
    for L, (g, u, o) in enumerate(layers):
        w_gate, w_in, w_out = W.layer_vectors(model.hf, model.arch, lay, L)
        for got, want in ((w_gate, g), (w_in, u), (w_out, o)):
            np.testing.assert_array_equal(got.double().numpy(), want.astype(np.float32).astype(np.float64))
    from workbench.core.errors import WorkbenchError

    assert issubclass(NeuronWeightsFileError, WorkbenchError) and issubclass(NeuronWeightsFileError, ValueError)


def test_bfloat16_is_close_to_float32(tiny) -> None:
    model = tiny("llama")
    a = neuron_weights(model, k=5, progress=False)
    b = neuron_weights(model, k=5, progress=False, dtype=torch.bfloat16)
    assert b.meta["dtype"] == "bfloat16"
    assert torch.allclose(a.vocab_kurtosis, b.vocab_kurtosis, atol=0.05)
    assert torch.allclose(a.vocab_skew, b.vocab_skew, atol=0.02)
    assert torch.allclose(a.promoted_scores, b.promoted_scores, atol=0.03, rtol=0.02)
    assert (a.promoted_ids[..., 0] == b.promoted_ids[..., 0]).float().mean() > 0.9


# -- classes -------------------------------------------------------------------------------------
def test_io_classes_follow_the_paper_on_a_grid() -> None:
    """Every combination of cosines (including the boundaries) against the authors' if-chain."""
    vals = [-0.9, -0.5, -0.3, 0.0, 0.3, 0.5, 0.51, 0.9]
    grid = np.array([(a, b, c) for a in vals for b in vals for c in vals])
    got = io_classes(grid[:, 0], grid[:, 1], grid[:, 2])
    want = [paper_io_class(*row) for row in grid]
    assert list(got) == want
    assert set(want) == set(W.IO_CLASSES)  # the grid reaches all 11 classes
    plain = io_classes(np.array([0.6, 0.1, -0.7, np.nan]))
    assert list(plain) == ["enrichment", "orthogonal output", "depletion", ""]
    assert list(io_classes(np.array([0.9]), np.array([np.nan]), np.array([0.9]))) == [""]
    assert list(vocab_classes(np.array([8.0, 8.0, 6.0, 8.0]), np.array([0.5, -0.5, 3.0, 0.0]))) == \
        ["prediction", "suppression", "", ""]


def _plant_token_direction(model, family: str, L: int, unit: int, token: int, sign: float) -> None:
    """Make token's unembedding row orthogonal to every other row, and the neuron write along it."""
    hf = model.hf
    with torch.no_grad():
        U = hf.lm_head.weight  # tied to the input embedding for gpt2 / gemma2: fine, this is a fresh model
        u = U[token].clone()
        u -= u.mean()  # mean-free, so a LayerNorm's centring leaves it alone
        u_hat = u / u.norm()
        U.sub_((U @ u_hat)[:, None] * u_hat[None, :])
        U[token] = u
        w = sign * 3.0 * u
        if family == "gpt2":
            hf.transformer.h[L].mlp.c_proj.weight[unit, :] = w
        elif family == "gpt_neox":
            hf.gpt_neox.layers[L].mlp.dense_4h_to_h.weight[:, unit] = w
        else:
            hf.model.layers[L].mlp.down_proj.weight[:, unit] = w


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("stats_on", ["cosine", "score"])
def test_planted_prediction_and_suppression_neurons(family: str, stats_on: str) -> None:
    token = 123
    model = tiny_model(family, seed=3)
    _plant_token_direction(model, family, 1, 5, token, +1.0)
    _plant_token_direction(model, family, 0, 9, token, -1.0)
    res = neuron_weights(model, k=5, progress=False, stats_on=stats_on)
    pred = res.unit(1, 5)
    assert pred["vocab_class"] == "prediction", pred
    assert pred["promoted"][0]["id"] == token and pred["vocab_kurtosis"] > 50 and pred["vocab_skew"] > 3
    assert pred["promoted"][0]["token"] == model.tokenizer.decode([token])
    sup = res.unit(0, 9)
    assert sup["vocab_class"] == "suppression", sup
    assert sup["suppressed"][0]["id"] == token and sup["vocab_skew"] < -3
    # random neurons are not: a 512-token vocabulary of random directions is near-Gaussian
    others = res.vocab_class.copy()
    others[1, 5] = others[0, 9] = ""
    assert (others == "").all()


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_planted_io_classes(family: str) -> None:
    model = tiny_model(family, seed=4)
    hf = model.hf
    g = torch.Generator().manual_seed(0)
    e = torch.linalg.qr(torch.randn(48, 3, generator=g))[0].T  # three orthonormal residual directions
    with torch.no_grad():
        if family == "gpt2":
            mlp = hf.transformer.h[1].mlp
            mlp.c_proj.weight[0], mlp.c_fc.weight[:, 0] = e[0], -2 * e[0]  # w_in = -w_out: depletion
            mlp.c_proj.weight[1], mlp.c_fc.weight[:, 1] = e[0], e[0] + 0.1 * e[1]  # enrichment
        elif family == "gpt_neox":
            mlp = hf.gpt_neox.layers[1].mlp
            mlp.dense_4h_to_h.weight[:, 0], mlp.dense_h_to_4h.weight[0] = e[0], -2 * e[0]
            mlp.dense_4h_to_h.weight[:, 1], mlp.dense_h_to_4h.weight[1] = e[0], e[0] + 0.1 * e[1]
        else:
            mlp = hf.model.layers[1].mlp
            out, up, gate = mlp.down_proj.weight, mlp.up_proj.weight, mlp.gate_proj.weight
            out[:, 0], up[0], gate[0] = e[0], -e[0], -e[0]  # w_in = -w_out (gate along w_in): depletion
            out[:, 1], up[1], gate[1] = e[0], e[0], 2 * e[0]  # enrichment
            out[:, 2], up[2], gate[2] = e[0], -e[0], e[1]  # gate orthogonal: conditional depletion
            out[:, 3], up[3], gate[3] = e[0], e[1], e[0]  # up orthogonal, gate along out: proportional change
            out[:, 4], up[4], gate[4] = e[0], -0.6 * e[0] + 0.8 * e[1], 0.6 * e[0] + 0.45 * e[1] + 0.6614 * e[2]
    res = neuron_weights(model, k=3, progress=False)
    got = [res.unit(1, j)["io_class"] for j in range(5 if res.gated else 2)]
    if res.gated:
        assert got == ["depletion", "enrichment", "conditional depletion", "proportional change", "atypical depletion"]
        assert res.unit(1, 0)["io_cos"] == pytest.approx(-1.0, abs=1e-6)
        assert res.unit(1, 4)["gate_up_cos"] == pytest.approx(0.0, abs=1e-3)
    else:
        assert got == ["depletion", "enrichment"]
        assert res.unit(1, 0)["io_cos"] == pytest.approx(-1.0, abs=1e-6)


def test_reclassify_and_zero_neuron(tiny) -> None:
    model = tiny_model("llama", seed=5)
    with torch.no_grad():
        model.hf.model.layers[0].mlp.down_proj.weight[:, 3] = 0.0  # a dead neuron: NaN cosines
    res = neuron_weights(model, k=3, progress=False)
    u = res.unit(0, 3)
    assert u["io_cos"] is None and u["io_class"] == "" and u["vocab_class"] == ""
    json.dumps(u, allow_nan=False)
    lo = res.reclassify(kurtosis_threshold=-10.0, io_threshold=0.01)
    assert lo.kurtosis_threshold == -10.0 and res.kurtosis_threshold == 7.0
    vc = lo.vocab_class
    skew = lo.vocab_skew.numpy()
    ok = ~np.isnan(skew)
    assert (vc[ok & (skew > 0)] == "prediction").all() and (vc[ok & (skew < 0)] == "suppression").all()
    assert (lo.io_class != "orthogonal output").sum() > (res.io_class != "orthogonal output").sum()


# -- the result object ---------------------------------------------------------------------------
def test_unit_views_and_table_agree(tiny) -> None:
    model = tiny("gpt2")
    res = neuron_weights(model, k=4, progress=False)
    df = res.to_pandas()
    assert len(df) == 2 * model.arch.d_mlp
    u = res.unit(1, 17)
    assert json.loads(json.dumps(u, allow_nan=False)) == u
    row = df[(df.layer == 1) & (df.unit == 17)].iloc[0]
    for key in ("io_cos", "vocab_mean", "vocab_std", "vocab_skew", "vocab_kurtosis"):
        assert u[key] == pytest.approx(float(row[key]))
    assert u["io_class"] == row.io_class and u["vocab_class"] == row.vocab_class
    assert u["promoted"] == res.promoted(1, 17) and u["suppressed"] == res.suppressed(1, 17)
    assert [t["id"] for t in u["promoted"]] == res.promoted_ids[1, 17].tolist()
    assert [t["token"] for t in u["promoted"]] == [model.tokenizer.decode([i]) for i in res.promoted_ids[1, 17].tolist()]
    assert row.top_promoted == u["promoted"][0]["token"] and row.top_suppressed == u["suppressed"][0]["token"]
    scores = [t["score"] for t in u["promoted"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    assert [t["score"] for t in u["suppressed"]] == sorted(t["score"] for t in u["suppressed"])
    with pytest.raises(IndexError, match="layer 5"):
        res.unit(5, 0)
    with pytest.raises(IndexError, match="unit 9999"):
        res.promoted(0, 9999)
    with pytest.raises(TypeError):
        res.unit(0, "3")


def test_plot_and_html(tiny) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    res = neuron_weights(tiny("qwen2"), k=3, progress=False)
    fig = res.plot()
    assert isinstance(fig, Figure) and len(fig.axes) >= 3
    res.meta["model"] = "<script>alert(1)</script>"
    html = res._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.count("<tr>") == 1 + len(res.layers)
    counts = res.class_counts()
    assert sum(counts["io"][c][0] for c in W.IO_CLASSES) == res.d_mlp


def test_bad_arguments(tiny) -> None:
    model = tiny("llama")
    with pytest.raises(ValueError, match="k must be"):
        neuron_weights(model, k=0, progress=False)
    with pytest.raises(ValueError, match="k must be"):
        neuron_weights(model, k=10**6, progress=False)
    with pytest.raises(ValueError, match="stats_on"):
        neuron_weights(model, stats_on="logits", progress=False)
    with pytest.raises(IndexError, match="out of range"):
        neuron_weights(model, layers=[2], progress=False)
    with pytest.raises(ValueError, match="no layers"):
        neuron_weights(model, layers=[], progress=False)
    with pytest.raises(TypeError, match="dtype"):
        neuron_weights(model, dtype=torch.int32, progress=False)


def test_unknown_layouts_fail_clearly() -> None:
    model = tiny_model("llama", seed=6)
    mlp = model.hf.model.layers[0].mlp
    gate, up = mlp.gate_proj, mlp.up_proj
    del mlp.gate_proj, mlp.up_proj
    mlp.experts = torch.nn.ModuleList([gate, up])
    with pytest.raises(NotImplementedError, match=r"cannot read the MLP layout of LlamaMLP \(children: \['act_fn', 'down_proj', 'experts'\]\)"):
        neuron_weights(model, progress=False)

    model = tiny_model("llama", seed=6)

    class Odd(torch.nn.Module):  # a "norm" that is neither RMSNorm nor LayerNorm
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(48))

        def forward(self, x):
            return torch.tanh(x) * self.weight

    model.hf.model.norm = Odd()
    with pytest.raises(NotImplementedError, match="cannot fold the final norm Odd"):
        neuron_weights(model, progress=False)


# -- files ---------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, tiny) -> None:
    for family in ("llama", "gpt2"):
        res = neuron_weights(tiny(family), k=4, progress=False).reclassify(kurtosis_threshold=0.5)
        path = res.save(tmp_path / f"{family}.safetensors")
        back = NeuronWeights.load(path)
        assert back.layers == res.layers and back.gated == res.gated and back.meta == res.meta
        assert back.kurtosis_threshold == 0.5 and back.token_text == res.token_text
        for name in W._TENSORS:
            a, b = getattr(res, name), getattr(back, name)
            assert (a is None and b is None) or torch.equal(a, b), name
        assert back.to_pandas().equals(res.to_pandas())
        assert back.unit(1, 2) == res.unit(1, 2)
    with pytest.raises(IsADirectoryError):
        res.save(tmp_path)


def test_corrupt_files_name_the_file(tmp_path, tiny) -> None:
    from safetensors.torch import save_file

    res = neuron_weights(tiny("llama"), k=3, progress=False)
    good = res.save(tmp_path / "w.safetensors").read_bytes()
    cases = {
        "truncated.safetensors": good[: len(good) // 2],
        "garbage.safetensors": b"\x00\x01not a safetensors file at all",
        "empty.safetensors": b"",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(NeuronWeightsFileError, match=name):
            NeuronWeights.load(p)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(NeuronWeightsFileError, match="other.safetensors.*not a NeuronWeights file"):
        NeuronWeights.load(other)
    bad_json = tmp_path / "badjson.safetensors"
    save_file({"x": torch.zeros(2)}, str(bad_json), metadata={"format": W.FORMAT, "json": "{not json"})
    with pytest.raises(NeuronWeightsFileError, match="badjson.safetensors.*JSON"):
        NeuronWeights.load(bad_json)
    tensors = {n: getattr(res, n) for n in W._TENSORS if n != "vocab_skew"}
    tensors["token_ids"] = torch.tensor(sorted(res.token_text))
    meta_json = json.dumps({"layers": res.layers, "gated": True, "token_text": [res.token_text[i] for i in sorted(res.token_text)]})
    missing = tmp_path / "missing.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(missing), metadata={"format": W.FORMAT, "json": meta_json})
    with pytest.raises(NeuronWeightsFileError, match="missing.safetensors lacks the tensors \\['vocab_skew'\\]"):
        NeuronWeights.load(missing)
    with pytest.raises(NeuronWeightsFileError, match="nowhere.safetensors"):
        NeuronWeights.load(tmp_path / "nowhere.safetensors")


def test_tiny_hf_model_is_untouched_by_analysis(tiny) -> None:
    """Reading weights must not modify them (no in-place folding)."""
    model = tiny("gemma2")
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    neuron_weights(model, k=3, progress=False)
    after = model.hf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
