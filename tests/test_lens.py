"""Logit lens and tuned lens on tiny models vs a hand-written PyTorch reference (hooks, no nnsight)."""

from __future__ import annotations

import json

import pytest
import torch
from hf_paths import PATHS

import workbench as wb
from workbench.causal.lens import (
    EMBED,
    LensFileError,
    LensResult,
    TunedLens,
    logit_lens,
    tuned_lens,
)

PROMPT = "The quick brown fox jumps over the lazy dog"


def _get(root, path):
    for p in path.split("."):
        root = getattr(root, p)
    return root


def reference(model, family: str, prompt: str, translators=None):
    """Per-layer lens logits [n_layers, seq, vocab] and final logits [seq, vocab], by hand."""
    hf = model.hf
    paths = dict(PATHS[family])
    blocks = _get(hf, paths["layers"])
    outs: dict[int, torch.Tensor] = {}
    handles = [b.register_forward_hook(lambda m, i, o, L=L: outs.__setitem__(L, (o[0] if isinstance(o, tuple) else o).detach()))
               for L, b in enumerate(blocks)]
    ids = torch.tensor([model.tokenizer.encode(prompt)])
    try:
        with torch.no_grad():
            final = hf(input_ids=ids).logits[0].float()
            norm = _get(hf, paths["norm"])
            cap = getattr(hf.config, "final_logit_softcapping", None)
            lens = []
            for L in range(len(blocks)):
                h = outs[L][0]
                if translators is not None and L < len(blocks) - 1:
                    w, b = translators
                    h = h + h @ w[L].T + b[L]
                lg = hf.lm_head(norm(h)).float()
                if cap:
                    lg = torch.tanh(lg / cap) * cap
                lens.append(lg)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(lens), final


def check_against(res: LensResult, lens_logits: torch.Tensor, final: torch.Tensor, tids: list[int]) -> None:
    logp_f = torch.log_softmax(final, -1)
    for i, L in enumerate(res.layers):
        for j, p in enumerate(res.positions):
            lg = lens_logits[L, p]
            logq = torch.log_softmax(lg, -1)
            top = logq.exp().topk(res.k)
            assert res.top_ids[i, j].tolist() == top.indices.tolist(), (L, p)
            torch.testing.assert_close(res.top_probs[i, j], top.values, rtol=1e-4, atol=1e-6)
            kl = (logp_f[p].exp() * (logp_f[p] - logq)).sum()
            torch.testing.assert_close(res.kl[i, j], kl.clamp_min(0), rtol=1e-3, atol=1e-5)
            for t, tid in enumerate(tids):
                torch.testing.assert_close(res.target_probs[i, j, t], logq[tid].exp(), rtol=1e-4, atol=1e-7)
                assert int(res.target_ranks[i, j, t]) == int((lg > lg[tid]).sum()) + 1


def single_token_targets(model, n: int = 2) -> list[str]:
    out = []
    for w in [" the", " of", " is", "the", "s", "a", " a", "e"]:
        if len(model.tokenizer.encode(w, add_special_tokens=False)) == 1:
            out.append(w)
        if len(out) == n:
            break
    return out


def test_logit_lens_matches_reference(model, family):
    targets = single_token_targets(model)
    res = logit_lens(model, PROMPT, targets=targets, top_k=4)
    lens_logits, final = reference(model, family, PROMPT)
    n = len(res.tokens)
    assert res.layers == list(range(model.n_layers)) and res.positions == list(range(n))
    assert res.top_ids.shape == (model.n_layers, n, 4) and res.kl.shape == (model.n_layers, n)
    assert res.kind == "logit" and res.targets == targets
    check_against(res, lens_logits, final, res.target_ids)
    assert len(res.top_tokens[0][0]) == 4 and res.top_tokens[0][0][0] == model.tokenizer.decode([int(res.top_ids[0, 0, 0])])


def test_last_layer_is_the_model_output(model, family):
    res = logit_lens(model, PROMPT, top_k=5)
    run = model.run(PROMPT, top_k=5)
    assert res.top_ids[-1, -1].tolist() == run.top.ids[0].tolist()
    torch.testing.assert_close(res.top_probs[-1, -1], run.top.probs[0], rtol=1e-5, atol=1e-7)
    assert float(res.kl[-1].abs().max()) < 1e-5
    # the hand-applied final norm + unembedding on the last resid_post is the model's output too
    lens_logits, final = reference(model, family, PROMPT)
    torch.testing.assert_close(lens_logits[-1], final, rtol=1e-4, atol=1e-4)


def test_subsets_and_negative_positions(tiny):
    model = tiny("llama")
    full = logit_lens(model, PROMPT, top_k=3)
    sub = logit_lens(model, PROMPT, top_k=3, layers=[0], positions=[-1, 1])
    n = len(full.tokens)
    assert sub.layers == [0] and sub.positions == [1, n - 1]
    torch.testing.assert_close(sub.top_probs[0], full.top_probs[0, [1, n - 1]])
    assert sub.top_ids[0].tolist() == full.top_ids[0, [1, n - 1]].tolist()
    torch.testing.assert_close(sub.kl[0], full.kl[0, [1, n - 1]])
    last = logit_lens(model, PROMPT, positions=[-1], layers=[1])
    assert last.top_ids[0, 0].tolist() == model.run(PROMPT, top_k=5).top.ids[0].tolist()


def test_a_position_subset_unembeds_only_those_positions(tiny):
    """positions=[-1] runs the model's own unembedding on one position (the lens rows were already per position)."""
    model = tiny("llama")
    seen = []
    h = model.hf.lm_head.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[-2]))
    try:
        last = logit_lens(model, PROMPT, positions=[-1], layers=[0, 1])
        sub = logit_lens(model, PROMPT, positions=[2, 0], layers=[0, 1])
    finally:
        h.remove()
    full = logit_lens(model, PROMPT, layers=[0, 1])
    n = len(full.tokens)
    assert seen[0] == 1 and seen[2] == 2  # the model's own pass; the lens rows are the other calls
    torch.testing.assert_close(last.kl[:, 0], full.kl[:, n - 1])
    torch.testing.assert_close(sub.kl, full.kl[:, sub.positions])
    assert sub.top_ids.tolist() == full.top_ids[:, sub.positions].tolist()


def test_remote_local_gives_the_same_result(tiny):
    model = tiny("llama")
    targets = single_token_targets(model)
    a = logit_lens(model, PROMPT, targets=targets)
    b = logit_lens(model, PROMPT, targets=targets, remote="local")
    c = logit_lens(tiny("llama", remote="local"), PROMPT, targets=targets)
    for other in (b, c):
        assert other.top_ids.tolist() == a.top_ids.tolist()
        torch.testing.assert_close(other.top_probs, a.top_probs)
        torch.testing.assert_close(other.target_probs, a.target_probs)
        assert other.target_ranks.tolist() == a.target_ranks.tolist()
        torch.testing.assert_close(other.kl, a.kl)
    lens = TunedLens.identity(model)
    torch.manual_seed(0)
    lens.weight.normal_(0, 0.05)
    torch.testing.assert_close(tuned_lens(model, PROMPT, lens, remote="local").kl, tuned_lens(model, PROMPT, lens).kl)


def test_bad_inputs_raise_clear_errors(tiny):
    model = tiny("llama")
    with pytest.raises(IndexError, match="out of range"):
        logit_lens(model, PROMPT, layers=[2])
    with pytest.raises(IndexError, match="out of range"):
        logit_lens(model, PROMPT, layers=[-3])  # -1, -2 count from the end (issue 11 item 3)
    with pytest.raises(IndexError, match="position 99"):
        logit_lens(model, PROMPT, positions=[99])
    multi = "xylophone quagmire"
    pieces = [model.tokenizer.decode([i]) for i in model.tokenizer.encode(multi, add_special_tokens=False)]
    assert len(pieces) > 1
    with pytest.raises(ValueError, match="single tokens") as e:
        logit_lens(model, PROMPT, targets=[multi])
    assert repr(pieces[0]) in str(e.value) and f"{len(pieces)} tokens" in str(e.value)
    with pytest.raises(ValueError, match="non-empty"):
        logit_lens(model, PROMPT, targets=[""])
    with pytest.raises(ValueError, match="empty"):
        logit_lens(model, "")
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(model, PROMPT, top_k=0)


def test_tuned_lens_identity_equals_logit_lens(model, family):
    lens = TunedLens.identity(model)
    a, b = logit_lens(model, PROMPT, top_k=3), tuned_lens(model, PROMPT, lens, top_k=3)
    assert b.kind == "tuned"
    assert a.top_ids.tolist() == b.top_ids.tolist()
    torch.testing.assert_close(a.top_probs, b.top_probs)
    torch.testing.assert_close(a.kl, b.kl, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_tuned_lens_matches_reference(tiny, family):
    model = tiny(family)
    lens = TunedLens.identity(model)
    g = torch.Generator().manual_seed(1)
    lens.weight.copy_(torch.randn(lens.weight.shape, generator=g) * 0.1)
    lens.bias.copy_(torch.randn(lens.bias.shape, generator=g) * 0.1)
    targets = single_token_targets(model)
    res = tuned_lens(model, PROMPT, lens, targets=targets, top_k=3)
    lens_logits, final = reference(model, family, PROMPT, (lens.weight, lens.bias))
    check_against(res, lens_logits, final, res.target_ids)
    assert float(res.kl[-1].abs().max()) < 1e-5  # the last layer is never translated


def test_tuned_lens_checks_the_model(tiny):
    lens = TunedLens.identity(tiny("llama"))
    three = tiny("llama", n_layers=3)
    with pytest.raises(LensFileError, match="2 layers but the model has 3"):
        tuned_lens(three, PROMPT, lens)
    with pytest.raises(TypeError, match="TunedLens"):
        tuned_lens(three, PROMPT, "folder")


def test_save_load_round_trip(tiny, tmp_path):
    model = tiny("llama")
    lens = TunedLens.identity(model)
    lens.weight.normal_(0, 0.1)
    lens.bias.normal_(0, 0.1)
    lens.meta["note"] = "hello"
    lens.save(tmp_path / "lens")
    assert sorted(p.name for p in (tmp_path / "lens").iterdir()) == ["config.json", "params.safetensors"]
    back = TunedLens.load(tmp_path / "lens")
    torch.testing.assert_close(back.weight, lens.weight)
    torch.testing.assert_close(back.bias, lens.bias)
    assert back.meta["note"] == "hello" and (back.n_layers, back.d_model) == (2, model.d_model)
    torch.testing.assert_close(tuned_lens(model, PROMPT, back).kl, tuned_lens(model, PROMPT, lens).kl)


def test_loads_the_tuned_lens_project_layout(tiny, tmp_path):
    model = tiny("llama")
    d, n = model.d_model, model.n_layers
    state = {}
    for i in range(n):  # their translator i reads hidden_states[i] (0 = embeddings)
        state[f"layer_translators.{i}.weight"] = torch.full((d, d), float(i))
        state[f"layer_translators.{i}.bias"] = torch.full((d,), float(i))
    torch.save(state, tmp_path / "params.pt")
    (tmp_path / "config.json").write_text(json.dumps({"base_model_name_or_path": "x", "d_model": d,
                                                      "num_hidden_layers": n, "bias": True}))
    lens = TunedLens.load(tmp_path)
    assert lens.n_layers == n and lens.weight.shape == (n - 1, d, d)
    assert float(lens.weight[0, 0, 0]) == 1.0 and float(lens.bias[0, 0]) == 1.0  # shifted onto resid_post.0


def test_corrupt_and_missing_files(tiny, tmp_path):
    model = tiny("llama")
    with pytest.raises(LensFileError, match="not a folder"):
        TunedLens.load(tmp_path / "nope")
    folder = TunedLens.identity(model).save(tmp_path / "lens")
    (folder / "params.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(LensFileError, match="not a valid safetensors"):
        TunedLens.load(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(LensFileError, match="not valid JSON"):
        TunedLens.load(folder)
    (folder / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(LensFileError, match="neither"):
        TunedLens.load(folder)
    # a pickle that is not plain tensors is refused (weights_only=True), never executed
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"d_model": model.d_model, "num_hidden_layers": 2}))
    import pickle

    class Evil:
        def __reduce__(self):
            return (exec, ("import builtins; builtins.__evil = 1",))

    (bad / "params.pt").write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(LensFileError, match="weights_only"):
        TunedLens.load(bad)
    import builtins
    assert not hasattr(builtins, "__evil")
    # wrong shapes
    other = TunedLens.identity(tiny("llama", n_layers=3))
    other.save(tmp_path / "three")
    cfg = json.loads((tmp_path / "three" / "config.json").read_text())
    cfg["d_model"] = 8
    (tmp_path / "three" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LensFileError, match="shape"):
        TunedLens.load(tmp_path / "three")


def test_train_reduces_the_loss_and_saves(tiny, tmp_path):
    model = tiny("llama")
    before = [p.detach().clone() for p in model.hf.parameters()]
    lens = TunedLens.train(model, steps=80, lr=1e-2, seq_len=24, batch_size=4, progress=False,
                           checkpoint=tmp_path / "ck", save_every=10)
    losses = lens.meta["train_losses"]
    assert len(losses) == 80
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10, losses
    for p, q in zip(before, model.hf.parameters(), strict=True):  # the model is untouched
        assert torch.equal(p, q.detach()) and q.grad is None
    back = TunedLens.load(tmp_path / "ck")
    torch.testing.assert_close(back.weight, lens.weight)
    # on the training text the tuned lens is closer to the final distribution than the logit lens
    text = "The following sections describe the standard types that are built into the interpreter."
    assert float(tuned_lens(model, text, lens).kl[0].mean()) < float(logit_lens(model, text).kl[0].mean())


def test_result_views(tiny):
    model = tiny("llama")
    targets = single_token_targets(model, 1)
    res = logit_lens(model, "The cat sat", targets=targets, top_k=2)
    df = res.to_pandas()
    assert len(df) == len(res.layers) * len(res.positions) * 2
    assert {"layer", "position", "prediction", "prob", "kl", f"p({targets[0]})", f"rank({targets[0]})"} <= set(df.columns)
    import matplotlib

    matplotlib.use("Agg")
    ax = res.plot()
    assert len(ax.texts) == len(res.layers) * len(res.positions)
    res.plot(target=targets[0])
    with pytest.raises(ValueError, match="not computed"):
        res.plot(target="zzz")
    assert "LensResult" in res._repr_html_()
    assert res.sites() == ["resid_post.0", "resid_post.1"]


def test_exported_from_workbench():
    assert wb.logit_lens is logit_lens and wb.causal.TunedLens is TunedLens and wb.causal.LensResult is LensResult


@pytest.mark.embedded
def test_embedded_paris_at_the_final_layer():
    model = wb.load(progress=False)
    res = logit_lens(model, "The capital of France is", targets=[" Paris"])
    assert res.top_tokens[-1][-1][0] == " Paris"
    assert int(res.target_ranks[-1, -1, 0]) == 1
    assert float(res.target_probs[-1, -1, 0]) > 0.3
    # early layers do not know it yet
    assert int(res.target_ranks[0, -1, 0]) > 1


# -- issue 11: negative layers, the embeddings row, tuned-lens layouts, atomic saves ------------------
def test_negative_layers_count_from_the_end(tiny):
    model = tiny("llama")
    a = model.arch
    assert a.layer_list([-1]) == [a.n_layers - 1] and a.layer_list(-2) == [0]
    assert a.layer_list([0, -2, 1, -1]) == [0, 1]
    with pytest.raises(IndexError, match=r"layer -3 is out of range: this model has layers 0\.\.1"):
        a.layer_list([-3])
    res, ref = logit_lens(model, PROMPT, layers=[-1]), logit_lens(model, PROMPT, layers=[1])
    assert res.layers == [1]
    torch.testing.assert_close(res.kl, ref.kl)
    assert res.top_ids.tolist() == ref.top_ids.tolist()
    from workbench.neurons.weights import neuron_weights

    w = neuron_weights(model, layers=[-1], k=3, progress=False)
    assert w.layers == [1]


def _hidden_states(model, prompt):
    ids = torch.tensor([model.tokenizer.encode(prompt)])
    with torch.no_grad():
        out = model.hf(input_ids=ids, output_hidden_states=True)
    return out.hidden_states, out.logits[0].float()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_embed_row_of_the_logit_and_tuned_lens(tiny, family):
    model = tiny(family)
    targets = single_token_targets(model)
    res = logit_lens(model, PROMPT, layers=["embed", 0, -1], targets=targets, top_k=3)
    assert res.layers == [EMBED, 0, 1] and res.sites() == ["resid_pre.0", "resid_post.0", "resid_post.1"]
    lens_logits, final = reference(model, family, PROMPT)
    hs, _ = _hidden_states(model, PROMPT)
    norm = _get(model.hf, PATHS[family]["norm"])
    with torch.no_grad():
        emb = model.hf.lm_head(norm(hs[0][0])).float()  # hidden_states[0] = what enters layer 0
        rows = torch.stack([emb, lens_logits[0], lens_logits[1]])
    check_against(_relabel(res), rows, final, res.target_ids)
    # the tuned lens uses the embedding translator on that row, and only there
    lens = TunedLens.identity(model)
    g = torch.Generator().manual_seed(3)
    lens.embed_weight.copy_(torch.randn(lens.embed_weight.shape, generator=g) * 0.1)
    lens.embed_bias.copy_(torch.randn(lens.embed_bias.shape, generator=g) * 0.1)
    tres = tuned_lens(model, PROMPT, lens, layers=["embed", 0, 1], targets=targets, top_k=3)
    with torch.no_grad():
        h = lens.translate(hs[0][0], "embed")
        rows = torch.stack([model.hf.lm_head(norm(h)).float(), lens_logits[0], lens_logits[1]])
    check_against(_relabel(tres), rows, final, tres.target_ids)
    # calls without "embed" are unchanged: no embeddings row
    assert logit_lens(model, PROMPT).layers == [0, 1]
    with pytest.raises(TypeError, match="'embed'"):
        logit_lens(model, PROMPT, layers=["emb"])
    assert logit_lens(model, PROMPT, layers=["embed"]).layers == [EMBED]


def _relabel(res: LensResult) -> LensResult:
    """check_against indexes its reference rows by layer: number the rows 0..n-1 instead."""
    import dataclasses

    return dataclasses.replace(res, layers=list(range(len(res.layers))))


def test_save_load_keeps_the_embedding_translator(tiny, tmp_path):
    model = tiny("llama")
    lens = TunedLens.identity(model)
    lens.embed_weight.normal_(0, 0.1)
    lens.embed_bias.normal_(0, 0.1)
    lens.weight.normal_(0, 0.1)
    for layout in ("workbench", "tuned-lens"):
        back = TunedLens.load(lens.save(tmp_path / layout, layout=layout))
        torch.testing.assert_close(back.embed_weight, lens.embed_weight)
        torch.testing.assert_close(back.embed_bias, lens.embed_bias)
        torch.testing.assert_close(back.weight, lens.weight)
    # switching layouts in place leaves only the new layout's files
    lens.save(tmp_path / "workbench", layout="tuned-lens")
    assert sorted(p.name for p in (tmp_path / "workbench").iterdir()) == ["config.json", "params.pt"]
    # a trained lens keeps the embedding translator of its init
    trained = TunedLens.train(model, steps=1, seq_len=8, progress=False, init=back)
    torch.testing.assert_close(trained.embed_weight, lens.embed_weight)


def test_save_is_atomic(tiny, tmp_path, monkeypatch):
    model = tiny("llama")
    a, b = TunedLens.identity(model), TunedLens.identity(model)
    a.weight.fill_(0.5)
    b.weight.fill_(-0.5)
    folder = a.save(tmp_path / "lens")

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated, mid-save)")

    monkeypatch.setattr(json, "dumps", boom)  # the config is written after the parameters
    with pytest.raises(OSError, match="simulated"):
        b.save(folder)
    monkeypatch.undo()
    back = TunedLens.load(folder)  # still the complete old lens, not new params under the old config
    torch.testing.assert_close(back.weight, a.weight)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "params.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["lens"]  # no temporary folder left behind


def test_tuned_lens_missing_key_lists_the_keys_found(tiny, tmp_path):
    model = tiny("llama")
    d = model.d_model
    torch.save({"0.weight": torch.zeros(d, d), "0.bias": torch.zeros(d), "extra": torch.zeros(1)},
               tmp_path / "params.pt")
    (tmp_path / "config.json").write_text(json.dumps({"base_model_name_or_path": "x", "d_model": d,
                                                      "num_hidden_layers": 2, "bias": True}))
    with pytest.raises(LensFileError, match=r"1\.weight .* is missing; the file has keys \['0\.bias', '0\.weight', 'extra'\]"):
        TunedLens.load(tmp_path)


def test_loads_tuned_lens_0_0_layout(tiny, tmp_path):
    """tuned-lens 0.0.x saved the whole module: input_translator (or input_probe / input_adapter) and
    layer_translators.L for resid_post.L, next to the unembedding, with num_layers in its config."""
    model = tiny("llama")
    d, n = model.d_model, model.n_layers
    for old in ("translator", "adapter", "probe"):
        state = {f"input_{old}.weight": torch.full((d, d), 7.0), f"input_{old}.bias": torch.full((d,), 7.0),
                 "unembedding.weight": torch.zeros(5, d), "layer_norm.weight": torch.ones(d)}
        for L in range(n - 1):
            state[f"layer_{old}s.{L}.weight"] = torch.full((d, d), float(L + 1))
            state[f"layer_{old}s.{L}.bias"] = torch.full((d,), float(L + 1))
        folder = tmp_path / old
        folder.mkdir()
        torch.save(state, folder / "params.pt")
        (folder / "config.json").write_text(json.dumps({"bias": True, "extra_layers": 0, "include_input": True,
                                                        "reuse_unembedding": True, "d_model": d, "num_layers": n,
                                                        "vocab_size": 5}))
        lens = TunedLens.load(folder)
        assert float(lens.embed_weight[0, 0]) == 7.0 and float(lens.weight[0, 0, 0]) == 1.0, old
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "extra_layers": 1}))
    with pytest.raises(LensFileError, match="extra_layers"):
        TunedLens.load(folder)


def test_loads_a_bias_free_tuned_lens(tiny, tmp_path):
    model = tiny("llama")
    d, n = model.d_model, model.n_layers
    torch.save({f"{i}.weight": torch.full((d, d), float(i + 1)) for i in range(n)}, tmp_path / "params.pt")
    (tmp_path / "config.json").write_text(json.dumps({"base_model_name_or_path": "x", "d_model": d,
                                                      "num_hidden_layers": n, "bias": False}))
    lens = TunedLens.load(tmp_path)
    assert float(lens.embed_weight[0, 0]) == 1.0 and float(lens.weight[0, 0, 0]) == 2.0
    assert float(lens.bias.abs().sum()) == 0.0


def test_patching_layers_count_from_the_end(tiny):
    from workbench.causal.patching import activation_patching

    model = tiny("llama")
    kw = dict(answer=" the", noise=3.0, subject="The quick", metric="prob", positions=[0, -1], progress=False)
    neg = activation_patching(model, PROMPT, layers=[-1], **kw)
    pos = activation_patching(model, PROMPT, layers=[1], **kw)
    assert neg.layers == [1]
    torch.testing.assert_close(neg.values, pos.values)
    with pytest.raises(IndexError, match="out of range"):
        activation_patching(model, PROMPT, layers=[-3], **kw)
