"""FeatureList and FeatureDashboard on a tiny model with random dictionaries: payloads vs direct
computations (encode of captured activations, decoder rows through the final norm and the
unembedding, decoder cosines, the scan store), toggles vs the engine's FeatureEdit runs, errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.core.corpus import default_corpus
from workbench.dictionaries.dictionary import Dictionary, DictionaryError
from workbench.dictionaries.features import FeatureEdit, scale_features, zero_features
from workbench.dictionaries.nmf import semi_nmf
from workbench.neurons.store import ScanStore
from workbench.widgets import FeatureDashboard, FeatureList
from workbench.widgets._transport import pack
from workbench.widgets.features import Encoder, FeatureFacts, edit_spec

PROMPT = "The cat sat on the mat"
TEXT = "Hello world, this is a test"
SITE = "resid_post.1"
CORPUS = default_corpus(max_passages=12)
SCAN = {"k": 4, "window": 12, "batch_size": 3, "sample": 8, "progress": False}


def topk_dictionary(d_model: int = 48, d_sae: int = 64, seed: int = 0, site: str = SITE,
                    labels: dict[int, str] | None = None) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    return Dictionary(W_enc=torch.randn(d_model, d_sae, generator=g) / math.sqrt(d_model),
                      b_enc=torch.randn(d_sae, generator=g) * 0.1, W_dec=torch.randn(d_sae, d_model, generator=g) * 0.3,
                      b_dec=torch.randn(d_model, generator=g) * 0.1, architecture="topk", k=8, site=site,
                      labels=labels or {})


@pytest.fixture(scope="module")
def llama(tiny: Callable[..., Any]) -> wb.Model:
    return tiny("llama")


@pytest.fixture(scope="module")
def sae() -> Dictionary:
    return topk_dictionary(labels={3: "three <b>bold</b>"})


@pytest.fixture(scope="module")
def store(llama: wb.Model, sae: Dictionary, tmp_path_factory: pytest.TempPathFactory) -> ScanStore:
    return wb.scan(llama, CORPUS, tmp_path_factory.mktemp("feat") / "s", sites=[], features={"sae": (sae.site, sae.encode)},
                   **SCAN)


def encode(model: wb.Model, d: Dictionary, text: str) -> tuple[list[str], torch.Tensor]:
    """The reference: capture the site, then encode outside the model."""
    res = model.run(text, capture=[d.site], top_k=1)
    return [t.text for t in res.tokens[0]], d.encode(res.activations[d.site][0]).float()


def llama_scores(model: wb.Model, resid: torch.Tensor) -> torch.Tensor:
    """W_U (g * r) for the tiny Llama (RMSNorm: gain only)."""
    return model.hf.lm_head.weight.detach().float() @ (model.hf.model.norm.weight.detach().float() * resid)


def drain(gen: Any) -> tuple[list[dict], dict]:
    parts = []
    while True:
        try:
            parts.append(next(gen))
        except StopIteration as stop:
            return parts, stop.value


def no_numeric_lists(x: Any, path: str = "") -> None:
    """Arrays must travel as buffers: no JSON list of numbers in a packed body."""
    if isinstance(x, dict) and "__array__" in x:
        return
    if isinstance(x, dict):
        for k, v in x.items():
            no_numeric_lists(v, f"{path}.{k}")
    elif isinstance(x, list):
        assert not (len(x) > 4 and all(isinstance(v, int | float) for v in x)), f"numeric list at {path}"
        for i, v in enumerate(x):
            no_numeric_lists(v, f"{path}[{i}]")


# -- FeatureList ----------------------------------------------------------------------------------------
def test_run_payload_equals_direct_encode(llama: wb.Model, sae: Dictionary) -> None:
    fl = FeatureList(llama, sae, PROMPT, k=10)
    out = fl.call("run")
    tokens, acts = encode(llama, sae, PROMPT)
    assert out["tokens"] == tokens and out["prompt"] == PROMPT and out["k"] == 10
    top = acts.topk(10, dim=-1)
    np.testing.assert_array_equal(out["top_idx"], top.indices.numpy())
    np.testing.assert_allclose(out["top_val"], top.values.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["n_active"], (acts > 0).sum(-1).numpy())
    assert (out["n_active"] <= sae.k).all() and (out["n_active"] > 0).all()
    np.testing.assert_allclose(out["max_act"], acts.max(-1).values.numpy(), rtol=1e-5)
    assert out["top_idx"].dtype == np.int32 and out["top_val"].dtype == np.float32
    body, buffers = pack(out)
    assert len(buffers) == 4
    no_numeric_lists(body)


def test_token_latents_labels_and_promoted_tokens(llama: wb.Model, sae: Dictionary) -> None:
    labelled = topk_dictionary(seed=0)
    _, acts = encode(llama, labelled, PROMPT)
    pos = 3
    active = [int(i) for i in acts[pos].argsort(descending=True) if acts[pos, i] > 0]
    labelled.labels = {active[0]: "my label"}
    fl = FeatureList(llama, labelled, PROMPT, k=5, explanations={active[1]: "an explanation"})
    out = fl.call("token", position=pos)
    assert out["position"] == pos and fl.position == pos
    assert out["token"] == [t.text for t in llama.run(PROMPT).tokens[0]][pos]
    rows = out["latents"]
    assert [r["latent"] for r in rows] == active[:5]
    for r in rows:
        assert r["act"] == pytest.approx(float(acts[pos, r["latent"]]), rel=1e-5)
        scores = llama_scores(llama, labelled.W_dec[r["latent"]].float())
        assert [p["id"] for p in r["promoted"]] == scores.topk(5).indices.tolist()
        assert [p["score"] for p in r["promoted"]] == pytest.approx(scores.topk(5).values.tolist(), rel=1e-4)
        assert [p["token"] for p in r["promoted"]] == [llama.tokenizer.decode([i]) for i in scores.topk(5).indices.tolist()]
    assert rows[0]["label"] == "my label" and rows[1]["label"] == ""
    assert rows[1]["explanation"] == "an explanation" and rows[0]["explanation"] == ""
    assert fl.call("token", position=-1)["position"] == len(acts) - 1
    with pytest.raises(IndexError, match="out of range"):
        fl.call("token", position=99)


def test_toggles_equal_the_engines_feature_edit_run(llama: wb.Model, sae: Dictionary) -> None:
    fl = FeatureList(llama, sae, PROMPT)
    _, acts = encode(llama, sae, PROMPT)
    last = acts[-1].argsort(descending=True)[:3].tolist()  # active at the last token
    assert fl.interventions == []
    fl.toggle(last[0], "zero").toggle(last[1], "scale", 3.0)
    assert fl.edits == [{"latent": last[0], "op": "zero", "value": None},
                        {"latent": last[1], "op": "scale", "value": 3.0}]
    (spec,) = fl.interventions
    assert spec == scale_features(sae, [last[0], last[1]], [0.0, 3.0]) and isinstance(spec, FeatureEdit)
    out = fl.call("edit")
    assert out["edited"] and out["intervention"] == spec.to_dict() and out["describe"] == spec.describe()
    base = llama.run(PROMPT, top_k=10)
    edited = llama.run(PROMPT, [spec], top_k=10)
    pb = torch.softmax(base.logits[0].double(), -1)
    pe = torch.softmax(edited.logits[0].double(), -1)
    pred = out["predictions"]
    assert pred["base"] == base.top.as_rows(0) and pred["edit"] == edited.top.as_rows(0)
    ids = {r["id"] for r in base.top.as_rows(0)} | {r["id"] for r in edited.top.as_rows(0)}
    assert {r["id"] for r in pred["rows"]} == ids
    for r in pred["rows"]:
        assert r["p_base"] == float(pb[r["id"]]) and r["p_edit"] == float(pe[r["id"]])
    assert any(abs(r["p_base"] - r["p_edit"]) > 1e-4 for r in pred["rows"]), "the edit changes predictions"
    # a zero toggle inside the one combined spec is a scale by 0, which is exactly the zero op
    z = llama.run(PROMPT, [zero_features(sae, [last[0]])]).logits
    torch.testing.assert_close(llama.run(PROMPT, [scale_features(sae, [last[0]], 0.0)]).logits, z, rtol=1e-5, atol=1e-6)
    # one spec, not two in a row: a top-k dictionary re-encodes after the first edit (other latents enter)
    two = llama.run(PROMPT, [zero_features(sae, [last[0]]), scale_features(sae, [last[1]], 3.0)], top_k=10)
    assert not torch.allclose(two.logits, edited.logits, atol=1e-4)

    # the browser sends the toggles; only zero toggles give a zero spec; turning off drops it
    out = fl.call("edit", edits=[{"latent": last[2], "op": "zero"}])
    assert fl.edits == [{"latent": last[2], "op": "zero", "value": None}]
    assert fl.interventions == [zero_features(sae, [last[2]])]
    ref = llama.run(PROMPT, [zero_features(sae, [last[2]])], top_k=10)
    assert out["predictions"]["edit"] == ref.top.as_rows(0)
    fl.toggle(last[2], None)
    out = fl.call("edit")
    assert not out["edited"] and fl.interventions == [] and out["intervention"] is None
    assert all(r["p_base"] == r["p_edit"] for r in out["predictions"]["rows"])
    assert edit_spec(sae, []) is None


def test_bad_toggles_are_clear_errors(llama: wb.Model, sae: Dictionary) -> None:
    fl = FeatureList(llama, sae, PROMPT)
    with pytest.raises(ValueError, match="op is 'zero' or 'scale'"):
        fl.call("edit", edits=[{"latent": 1, "op": "set", "value": 2}])
    with pytest.raises(IndexError, match="latent 64 is out of range"):
        fl.call("edit", edits=[{"latent": 64, "op": "zero"}])
    with pytest.raises(ValueError, match="needs a number"):
        fl.call("edit", edits=[{"latent": 1, "op": "scale", "value": "x"}])
    with pytest.raises(ValueError, match="finite"):
        fl.toggle(1, "scale", math.inf)
    with pytest.raises(ValueError, match="integer"):
        fl.toggle(1.5, "zero")  # type: ignore[arg-type]
    assert fl.edits == [], "a failed request leaves the toggles alone"
    with pytest.raises(ValueError, match="prompt is empty"):
        fl.call("run", prompt="  ")


def test_list_dashboard_has_the_prompt_activations_and_a_standalone_twin(llama: wb.Model, sae: Dictionary) -> None:
    fl = FeatureList(llama, sae, PROMPT)
    _, acts = encode(llama, sae, PROMPT)
    i = int(acts[2].argmax())
    parts, out = drain(fl.rpc_latent(latent=i))
    assert fl.latent == i and parts[0]["state"]["latent"] == i
    np.testing.assert_allclose(out["prompt_acts"], acts[:, i].numpy(), rtol=1e-5, atol=1e-6)
    assert out["store"] is None and "examples" not in out
    dash = fl.dashboard()
    assert isinstance(dash, FeatureDashboard) and dash.latent == i and dash.facts is fl.facts and dash.text == PROMPT
    assert dash.show_latent()["logits"] == out["logits"]
    fl.open_dashboard(5)
    assert fl.latent == 5
    with pytest.raises(IndexError):
        fl.open_dashboard(64)


# -- FeatureDashboard ------------------------------------------------------------------------------------
def test_logit_effects_and_nearest_latents(llama: wb.Model, sae: Dictionary) -> None:
    dash = FeatureDashboard(llama, sae, 3)
    out = dash.show_latent()
    assert out["label"] == "three <b>bold</b>" and out["state"]["d_sae"] == 64
    scores = llama_scores(llama, sae.W_dec[3].float())
    top, bot = scores.topk(10), scores.topk(10, largest=False)
    assert [r["id"] for r in out["logits"]["pos"]] == top.indices.tolist()
    assert [r["id"] for r in out["logits"]["neg"]] == bot.indices.tolist()
    assert [r["score"] for r in out["logits"]["pos"]] == pytest.approx(top.values.tolist(), rel=1e-4, abs=1e-5)
    assert [r["score"] for r in out["logits"]["neg"]] == pytest.approx(bot.values.tolist(), rel=1e-4, abs=1e-5)
    assert out["logits"]["pos"][0]["score"] > 0 > out["logits"]["neg"][0]["score"]
    cos = torch.nn.functional.cosine_similarity(sae.W_dec.float(), sae.W_dec[3].float()[None], dim=-1)
    cos[3] = -2
    ref = cos.topk(8)
    assert [n["latent"] for n in out["nearest"]] == ref.indices.tolist()
    assert [n["cos"] for n in out["nearest"]] == pytest.approx(ref.values.tolist(), abs=1e-5)
    assert 3 not in [n["latent"] for n in out["nearest"]]
    assert out["decoder_norm"] == pytest.approx(float(sae.W_dec[3].norm()))
    assert out["store"] is None and "No scan store" in out["store_note"] and "examples" not in out


def test_layernorm_model_centres_the_direction(tiny: Callable[..., Any]) -> None:
    gpt2 = tiny("gpt2")
    d = topk_dictionary(seed=3)
    facts = FeatureFacts(gpt2, d)
    w = d.W_dec[7].float()
    ln = gpt2.hf.transformer.ln_f.weight.detach().float()
    ref = gpt2.hf.lm_head.weight.detach().float() @ (ln * (w - w.mean()))
    torch.testing.assert_close(facts.logit_scores(7), ref, rtol=1e-4, atol=1e-5)
    assert [r["id"] for r in facts.logit_effects(7)["pos"]] == ref.topk(10).indices.tolist()


def test_nmf_and_transcoder_directions_reach_the_residual(llama: wb.Model) -> None:
    res = llama.run([PROMPT, TEXT, "A dog is on a mat"], capture=["neurons.1"])
    A = torch.cat([res["neurons.1"][b, :L] for b, L in enumerate(res.lengths)]).T
    nmf = semi_nmf(A, 6, iters=10, progress=False).to_dictionary(site="neurons.1")
    facts = FeatureFacts(llama, nmf)
    down = llama.hf.model.layers[1].mlp.down_proj.weight.detach().float()  # [d_model, d_mlp]
    r = down @ nmf.W_dec[2].float()
    torch.testing.assert_close(facts.residual_directions()[2], r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(facts.logit_scores(2), llama_scores(llama, r), rtol=1e-4, atol=1e-5)
    g = torch.Generator().manual_seed(1)
    tc = Dictionary(W_enc=torch.randn(48, 32, generator=g) * 0.2, b_enc=torch.zeros(32), W_dec=torch.randn(32, 48, generator=g),
                    b_dec=torch.zeros(48), architecture="relu", site="mlp_in.1", out_site="mlp_out.1")
    tfacts = FeatureFacts(llama, tc)
    torch.testing.assert_close(tfacts.logit_scores(4), llama_scores(llama, tc.W_dec[4].float()), rtol=1e-4, atol=1e-5)
    dash = FeatureDashboard(llama, tc, 4)
    assert "mlp_in.1 → mlp_out.1" in dash.title


def test_custom_text_is_encoded_inside_the_trace(llama: wb.Model, sae: Dictionary) -> None:
    dash = FeatureDashboard(llama, sae, 0)
    tokens, acts = encode(llama, sae, TEXT)
    i = int(acts.max(0).values.argmax())
    out = dash.call("custom", text=TEXT, latent=i)
    assert out["tokens"] == tokens and out["latent"] == i and dash.text == TEXT
    np.testing.assert_allclose(out["acts"], acts[:, i].numpy(), rtol=1e-5, atol=1e-6)
    assert out["max"] == pytest.approx(float(acts[:, i].max()), rel=1e-5) and out["max"] > 0
    assert out["acts"].dtype == np.float32
    _, buffers = pack(out)
    assert len(buffers) == 1
    # the encoder runs as a capture reducer: only [seq, d_sae] comes back, not the site
    seen: list[dict] = []
    real = llama.run

    def spy(*a: Any, **kw: Any) -> Any:
        seen.append(kw.get("capture"))
        return real(*a, **kw)

    llama.run = spy  # type: ignore[method-assign]
    try:
        dash.call("custom", text=TEXT + " again", latent=i)
    finally:
        del llama.run
    assert len(seen) == 1 and isinstance(seen[0][SITE], Encoder)
    with pytest.raises(ValueError, match="text is empty"):
        dash.call("custom", text="")


def test_dashboard_with_store(llama: wb.Model, sae: Dictionary, store: ScanStore) -> None:
    _, acts = encode(llama, sae, TEXT)
    i = int(store.stats("sae")["frac_active"].to_numpy().argmax())
    dash = FeatureDashboard(llama, sae, i, store=store)
    assert dash.has_store and dash.facts.key == "sae"
    parts, out = drain(dash.rpc_latent())
    assert "examples" not in parts[0] and parts[0]["store"]["key"] == "sae"
    s = out["store"]
    assert s["density"] == pytest.approx(store.unit_stats("sae", i)["frac_active"])
    assert s["stats"] == pytest.approx(store.unit_stats("sae", i))
    edges, counts = store.histogram("sae", i)
    np.testing.assert_array_equal(s["hist"]["edges"], edges)
    np.testing.assert_array_equal(s["hist"]["counts"], counts.astype(np.float64))
    assert s["n_tokens"] == store.n_tokens and s["hist"]["center"] == store.bins.center
    ex = out["examples"]
    assert ex["mismatch"] is None
    ref = store.exemplars("sae", i, n=8)
    assert [(e["window"], e["position"], e["value"]) for e in ex["top"]] == [(e.window, e.position, e.value) for e in ref]
    for e, r in zip(ex["top"], ref, strict=True):
        assert e["tokens"] == r.tokens
        np.testing.assert_array_equal(e["acts"], r.acts)
        assert float(e["acts"][e["position"]]) == pytest.approx(e["value"], rel=1e-4, abs=1e-5), "rerun = stored max"
        direct = sae.encode(llama.run(llama.batch_from_ids([store.window_tokens(e["window"])]),
                                      capture=[SITE], top_k=0).activations[SITE][0])[:, i]
        np.testing.assert_allclose(e["acts"], direct.numpy(), rtol=1e-4, atol=1e-5)
    # intervals: equal-width over (0, max], highest first; counts from the store's sample
    st = store.states["sae"]
    ok = store.sample.windows >= 0
    vals = st.sample_values[ok, i]
    hi = max(float(vals.max()), store.top("sae", i)[0][0])
    groups = ex["intervals"]
    assert len(groups) == 5
    for j, g in enumerate(reversed(groups)):
        assert g["lo"] == pytest.approx(hi * j / 5) and g["hi"] == pytest.approx(hi * (j + 1) / 5)
        inside = (vals > g["lo"]) & (vals <= g["hi"] + (1e-6 if j == 4 else 0))
        assert g["count"] == int(inside.sum()) and g["n_sample"] == int(ok.sum())
        assert len(g["exemplars"]) == min(3, g["count"])
        for e in g["exemplars"]:
            assert g["lo"] < e["value"] <= g["hi"] + 1e-6
            assert float(e["acts"][e["position"]]) == pytest.approx(e["value"], rel=1e-4, abs=1e-5)
    assert sum(g["count"] for g in groups) + ex["n_inactive_sample"] == int(ok.sum())
    body, _ = pack(out)
    no_numeric_lists(body)


def test_a_reopened_store_reruns_exemplars_with_the_dictionary(llama: wb.Model, sae: Dictionary, store: ScanStore) -> None:
    again = ScanStore.open(store.path)
    assert again.transforms.get("sae") is None and again.model is None
    dash = FeatureDashboard(llama, sae, 5, store=again)
    assert again.model is llama and isinstance(again.transforms["sae"], Encoder)
    out = dash.show_latent()
    assert out["examples"]["mismatch"] is None
    ref = FeatureDashboard(llama, sae, 5, store=store).show_latent()
    assert [e["window"] for e in out["examples"]["top"]] == [e["window"] for e in ref["examples"]["top"]]
    # another dictionary of the same width: the store's numbers are not its numbers, and it says so
    other = topk_dictionary(seed=9)
    i = int(again.stats("sae")["max"].to_numpy().argmax())
    bad = FeatureDashboard(llama, other, i, store=ScanStore.open(store.path))
    assert "another dictionary" in bad.show_latent()["examples"]["mismatch"]


def test_navigation(llama: wb.Model, sae: Dictionary) -> None:
    dash = FeatureDashboard(llama, sae, 63)
    dash.next()
    assert dash.latent == 0
    dash.prev()
    assert dash.latent == 63
    dash.go(7)
    assert dash.latent == 7
    out = dash.call("latent", latent=12)
    assert dash.latent == 12 and out["state"]["latent"] == 12
    with pytest.raises(IndexError, match="latent 64 is out of range for a dictionary of 64 latents"):
        dash.call("latent", latent=64)
    with pytest.raises(ValueError, match="integer"):
        dash.call("latent", latent=1.5)
    assert dash.latent == 12


def test_constructor_errors(llama: wb.Model, sae: Dictionary, tmp_path: Any) -> None:
    with pytest.raises(DictionaryError, match="width"):
        FeatureList(llama, topk_dictionary(d_model=40, site=SITE), PROMPT)
    with pytest.raises(DictionaryError, match="layers 0..1"):
        FeatureDashboard(llama, topk_dictionary(site="resid_post.5"), 0)
    with pytest.raises(IndexError):
        FeatureDashboard(llama, sae, 64)
    with pytest.raises(ValueError, match="k must be between"):
        FeatureList(llama, sae, PROMPT, k=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        FeatureList(llama, sae, "")
    with pytest.raises(TypeError, match="Dictionary"):
        FeatureList(llama, "nope", PROMPT)  # type: ignore[arg-type]
    plain = wb.scan(llama, CORPUS[:3], tmp_path / "plain", sites=["neurons.1"], **SCAN)
    with pytest.raises(ValueError, match=r"no scan of 64 latents at resid_post.1.*features="):
        FeatureDashboard(llama, sae, 0, store=plain)
    with pytest.raises(ValueError, match="not a scan of this dictionary"):
        FeatureDashboard(llama, sae, 0, store=plain, key="neurons.1")


def test_explanations_come_from_the_stores_explanations_file(llama: wb.Model, sae: Dictionary,
                                                             store: ScanStore) -> None:
    from workbench.autointerp import Explanation, ExplanationStore, Score

    dash = FeatureDashboard(llama, sae, 2, store=store)
    assert dash.show_latent()["explanation"] == ""
    ex_store = ExplanationStore.for_store(store)
    ex_store.add(Explanation(("sae", 2), "weak <b>guess</b>", "openai", {"detection": Score("detection", 0.55, 0.4, 0.7, 20)},
                             sample=0))
    ex_store.add(Explanation(("sae", 2), "the word 'the'", "delphi", {"detection": Score("detection", 0.8, 0.7, 0.9, 20)},
                             sample=1))
    ex_store.add(Explanation(("neurons.1", 2), "another unit", "openai"))
    try:
        assert dash.show_latent()["explanation"] == "the word 'the'", "the best-scoring one, reread from disk"
        fl = FeatureList(llama, sae, PROMPT, store=store, explanations={2: "mine"})
        assert fl.facts.explanation(2) == "mine" and fl.facts.explanation(3) == ""
        assert FeatureFacts(llama, sae, store, explanations=ex_store).explanation(2) == "the word 'the'"
        assert FeatureFacts(llama, sae, store, explanations=None).explanation(2) == ""
        assert FeatureFacts(llama, sae, explanations=lambda i: f"latent {i}").explanation(7) == "latent 7"
        with pytest.raises(TypeError, match="explanations"):
            FeatureFacts(llama, sae, explanations=3)
    finally:
        (store.path / "explanations.json").unlink()


def test_static_copy_records_every_request_of_the_first_render(llama, sae) -> None:
    """The dashboard view asks for the latent, then encodes its text box: both replies are recorded."""
    dash = FeatureDashboard(llama, sae, 3, text=TEXT)
    rec = dash.snapshot()["replies"]
    assert [(r["method"], r["params"]) for r in rec] == [("latent", {"latent": 3}), ("custom", {"text": TEXT, "latent": 3})]
    assert all("error" not in r for r in rec)
    tokens, acts = encode(llama, sae, TEXT)
    assert rec[1]["content"]["tokens"] == tokens
    dash.text = ""  # an empty text box sends no custom request
    assert [r["method"] for r in dash.snapshot()["replies"]] == ["latent"]
    fl = FeatureList(llama, sae, PROMPT)
    assert [r["method"] for r in fl.snapshot()["replies"]] == ["run", "edit"]
    fl.latent = 5  # an open dashboard: its latent and its custom run of the list's text
    assert [(r["method"], r["params"].get("latent")) for r in fl.snapshot()["replies"]][-2:] == [("latent", 5), ("custom", 5)]
