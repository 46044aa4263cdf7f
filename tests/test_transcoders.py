"""Transcoder sets (PLT and CLT): encode/decode against inline references and circuit-tracer, feature
edits against hand-written Hugging Face hooks, loaders, resumable training, and bad input."""

from __future__ import annotations

import json
import threading

import pytest
import torch

import workbench as wb
from workbench.core.specs import specs_from_json, specs_to_json
from workbench.dictionaries import (
    CLTFeatureEdit,
    CrossLayerTranscoder,
    Dictionary,
    DictionaryError,
    TrainingCancelled,
    TranscoderSet,
    load_transcoders,
    train_transcoders,
)

PROMPT = "The quick brown fox jumps over"
TOL = 1e-5


def close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    assert diff < tol * max(1.0, float(b.float().abs().max())), diff


def random_clt(layers: list[int], d: int, m: int, arch: str = "relu", skip: bool = False, seed: int = 0,
               k: int | None = None) -> CrossLayerTranscoder:
    g = torch.Generator().manual_seed(seed)
    n = len(layers)
    return CrossLayerTranscoder(
        W_enc=torch.randn(n, d, m, generator=g) / d**0.5, b_enc=torch.randn(n, m, generator=g) * 0.2,
        W_dec=[torch.randn(m, n - i, d, generator=g) / m**0.5 for i in range(n)],
        b_dec=torch.randn(n, d, generator=g) * 0.1, layers=layers, architecture=arch,
        threshold=torch.rand(n, m, generator=g) * 0.3 if arch == "jumprelu" else None, k=k,
        W_skip=torch.randn(n, d, d, generator=g) * 0.05 if skip else None)


def random_plt(layers: list[int], d: int, m: int, arch: str = "relu", seed: int = 0) -> TranscoderSet:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for L in layers:
        out[L] = Dictionary(W_enc=torch.randn(d, m, generator=g) / d**0.5, b_enc=torch.randn(m, generator=g) * 0.2,
                            W_dec=torch.randn(m, d, generator=g) / m**0.5, b_dec=torch.randn(d, generator=g) * 0.1,
                            architecture=arch, site=f"mlp_in.{L}", out_site=f"mlp_out.{L}",
                            threshold=torch.rand(m, generator=g) * 0.3 if arch == "jumprelu" else None,
                            k=8 if arch == "topk" else None)
    return TranscoderSet(out)


def ref_act(pre: torch.Tensor, arch: str, thr: torch.Tensor | None = None, k: int | None = None) -> torch.Tensor:
    if arch == "relu":
        return torch.relu(pre)
    if arch == "jumprelu":
        return pre * (pre > thr) * (pre > 0)
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


# -- CLT: encode, decode --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk"])
def test_clt_encode_decode_equal_inline_reference(arch):
    clt = random_clt([1, 2, 4], d=16, m=24, arch=arch, skip=True, k=5 if arch == "topk" else None)
    x = {L: torch.randn(2, 5, 16) for L in clt.layers}
    acts = {}
    for i, L in enumerate(clt.layers):
        pre = x[L] @ clt.W_enc[i] + clt.b_enc[i]
        want = ref_act(pre, arch, None if clt.threshold is None else clt.threshold[i], clt.k)
        acts[L] = clt.encode(L, x[L])
        close(acts[L], want)
        assert (acts[L] > 0).any() and (acts[L] == 0).any()
    out = clt.decode(acts, inputs=x)
    for j, Lj in enumerate(clt.layers):
        want = clt.b_dec[j] + x[Lj] @ clt.W_skip[j]
        for i in range(j + 1):
            want = want + acts[clt.layers[i]] @ clt.W_dec[i][:, j - i]
        close(out[Lj], want)
    tset = TranscoderSet(clt)
    assert tset.kind == "clt" and tset.layers == [1, 2, 4] and tset.out_layers(2) == [2, 4]
    assert tset.decoder_rows(1).shape == (24, 3, 16) and tset.d_model == 16 and tset.d_sae(4) == 24
    for L, v in tset.reconstruct(acts, inputs=x).items():
        close(v, out[L])
    close(tset.encoder_vector(2, [3, 7]), clt.W_enc[1][:, [3, 7]].T)
    close(tset.encoder_bias(2, [3, 7]), clt.b_enc[1][[3, 7]])
    with pytest.raises(DictionaryError, match="missing"):
        clt.decode({1: acts[1]}, inputs=x)


def test_clt_matches_circuit_tracer_both_ways(tmp_path):
    import circuit_tracer.transcoder.cross_layer_transcoder as ct
    torch.manual_seed(0)
    n, d, m = 3, 16, 20
    # (circuit-tracer 0.5.0 writes no W_skip for a CLT; newer versions add W_skip_{i}, which we read and write)
    theirs = ct.CrossLayerTranscoder(n, m, d, activation_function="jump_relu", skip_connection=False, lazy_decoder=False,
                                     device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
        theirs.activation_function.threshold.copy_(torch.rand(n, 1, m) * 0.2)
    theirs.to_safetensors(str(tmp_path / "ct"))
    tset = load_transcoders(tmp_path / "ct")  # no config: circuit-tracer CLT files, layers 0..n-1
    x = torch.randn(n, 6, d)
    with torch.no_grad():
        ref_acts = torch.stack([theirs.encode_layer(x[i], i) for i in range(n)])
        ref_out = theirs.decode(ref_acts)
    acts = {i: tset.encode(i, x[i]) for i in range(n)}
    for i in range(n):
        close(acts[i], ref_acts[i])
    for i, v in tset.reconstruct(acts).items():
        close(v, ref_out[i], 1e-4)
    tset.clt.save(tmp_path / "ours")  # and back: circuit-tracer reads what we write
    back = ct.load_clt(str(tmp_path / "ours"), lazy_decoder=False, device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        close(torch.stack([back.encode_layer(x[i], i) for i in range(n)]), ref_acts)
        close(back.decode(ref_acts), ref_out, 1e-4)


# -- feature edits against hand-written hooks ------------------------------------------------------------
def _run_with_hooks(model, layer_fns):
    """Logits of ``model.hf`` on PROMPT with ``layer_fns[L](mlp_input, mlp_output) -> new output`` hooks."""
    layers = model.hf.model.layers
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for L in range(len(layers)):
        mlp = layers[L].mlp
        handles.append(mlp.register_forward_pre_hook(lambda mod, args, L=L: seen.__setitem__(L, args[0].detach())))
        handles.append(mlp.register_forward_hook(lambda mod, args, out, L=L: layer_fns(L, seen, out)))
    try:
        ids = model.tokenize(PROMPT).input_ids
        with torch.no_grad():
            return model.hf(ids).logits[0, -1]
    finally:
        for h in handles:
            h.remove()


def test_clt_feature_edit_equals_hand_written_hook(tiny):
    model = tiny("llama", n_layers=3)
    d = model.arch.d_model
    clt = random_clt([0, 1, 2], d=d, m=32, arch="jumprelu", seed=1)
    feats, pos = [3, 9, 17], [1, 3]
    x0 = model.run(PROMPT, capture=["mlp_in.0"]).activations["mlp_in.0"][0]
    assert (clt.encode(0, x0)[pos][:, feats] > 0).any()  # the edit does something
    for factor in (0.0, 3.0):
        specs = TranscoderSet(clt).edit({(0, p, f): factor for p in pos for f in feats})
        assert len(specs) == 1 and isinstance(specs[0], CLTFeatureEdit)
        got = model.run(PROMPT, specs).logits[0]
        delta = {}

        def fn(L, seen, out, factor=factor, delta=delta):
            if L == 0:  # the hand-written reference: encode at layer 0, change the features at pos
                pre = seen[0][0] @ clt.W_enc[0] + clt.b_enc[0]
                a = ref_act(pre, "jumprelu", clt.threshold[0])
                da = torch.zeros_like(a)
                for p in pos:
                    da[p, feats] = a[p, feats] * (factor - 1.0)
                delta[0] = da
            out = out.clone()
            out[0] += delta[0] @ clt.W_dec[0][:, L]  # into every later layer's mlp_out
            return out

        want = _run_with_hooks(model, fn)
        close(got, want, 1e-4)
        assert float((got - model.run(PROMPT).logits[0]).abs().max()) > 1e-3
    # JSON round trip of the spec (the CLT is resolved through its registered name)
    again = specs_from_json(specs_to_json(specs))
    close(model.run(PROMPT, again).logits[0], got, 1e-6)


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_plt_set_edit_equals_hand_written_hook(tiny, arch):
    model = tiny("llama")
    tset = random_plt([0, 1], model.arch.d_model, 40, arch=arch, seed=2)
    x = model.run(PROMPT, capture=["mlp_in.0", "mlp_in.1"]).activations
    acts0, acts1 = tset.encode(0, x["mlp_in.0"][0]), tset.encode(1, x["mlp_in.1"][0])
    f0 = acts0[2].topk(2).indices.tolist()  # active features, so that the edit changes something
    f1 = int(acts1[3].argmax())
    assert acts0[2, f0].min() > 0 and acts1[3, f1] > 0
    nodes = {(0, 2, f0[0]): 0.0, (0, 2, f0[1]): 0.0, (1, 3, f1): 2.5, (1, 4, f1): 2.5,
             (1, 4, int(acts1[4].argmax())): 0.0}
    got = model.run(PROMPT, tset.edit(nodes)).logits[0]

    def fn(L, seen, out):
        d = tset.dictionary(L)
        pre = seen[L][0] @ d.W_enc + d.b_enc
        a = ref_act(pre, arch, None, d.k)
        da = torch.zeros_like(a)
        for (layer, p, f), factor in nodes.items():
            if layer == L:
                da[p, f] = a[p, f] * (factor - 1.0)
        out = out.clone()
        out[0] += da @ d.W_dec
        return out

    close(got, _run_with_hooks(model, fn), 1e-4)
    assert float((got - model.run(PROMPT).logits[0]).abs().max()) > 1e-4
    # positions="all" edits every position; a node position of None too
    all_pos = model.run(PROMPT, tset.edit({(1, None, f1): 0.0})).logits[0]
    close(model.run(PROMPT, tset.edit({(1, 0, f1): 0.0}, positions="all")).logits[0], all_pos, 1e-6)
    assert float((all_pos - got).abs().max()) > 1e-4


# -- loaders ---------------------------------------------------------------------------------------------
def _same(a: TranscoderSet, b: TranscoderSet, d: int) -> None:
    assert a.layers == b.layers and a.kind == b.kind
    x = {L: torch.randn(7, d) for L in a.layers}
    acts = {L: a.encode(L, x[L]) for L in a.layers}
    for L in a.layers:
        close(b.encode(L, x[L]), acts[L], 1e-6)
    ra, rb = a.reconstruct(acts, x), b.reconstruct(acts, x)
    for L in a.layers:
        close(rb[L], ra[L], 1e-6)


def test_project_folder_round_trip(tmp_path, tiny):
    model = tiny("llama", n_layers=3)
    d = model.arch.d_model
    plt = random_plt([0, 2], d, 24, arch="jumprelu")
    plt.save(tmp_path / "plt")
    man = json.loads((tmp_path / "plt" / "transcoders.json").read_text())
    assert man["kind"] == "plt" and man["layers"] == [0, 2] and (tmp_path / "plt" / "layer_2" / "cfg.json").exists()
    _same(plt, load_transcoders(tmp_path / "plt", model=model), d)
    clt = TranscoderSet(random_clt([0, 1, 2], d, 24, arch="topk", k=4, skip=True))
    clt.save(tmp_path / "clt")
    back = load_transcoders(tmp_path / "clt", model=model)
    assert back.clt.architecture == "topk" and back.clt.k == 4
    _same(clt, back, d)


def test_saelens_transcoder_folders(tmp_path, tiny):
    from sae_lens import JumpReLUTranscoder, JumpReLUTranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    model = tiny("llama")
    d = model.arch.d_model
    theirs = {}
    g = torch.Generator().manual_seed(3)
    for L in (0, 1):
        cfg = JumpReLUTranscoderConfig(d_in=d, d_sae=32, d_out=d, dtype="float32", device="cpu", apply_b_dec_to_input=False,
                                       metadata=SAEMetadata(hook_name=f"mlp_in.{L}", hook_name_out=f"mlp_out.{L}"))
        tc = JumpReLUTranscoder(cfg)
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            tc.threshold.copy_(torch.rand(32, generator=g) * 0.2)
        tc.save_model(tmp_path / f"L{L}")
        theirs[L] = tc
    tset = load_transcoders(tmp_path, model=model)
    assert tset.layers == [0, 1] and tset.input_site(1) == "mlp_in.1" and tset.output_site(1) == "mlp_out.1"
    x = torch.randn(5, d)
    for L, tc in theirs.items():
        with torch.no_grad():
            close(tset.encode(L, x), tc.encode(x))
            close(tset.reconstruct({k: tset.encode(k, x) for k in (0, 1)})[L], tc.decode(tc.encode(x)))


def _ct_files(folder, d, m, n, jump: bool, skip: bool):
    """circuit-tracer per-layer files, written by circuit-tracer itself (installed by the set-up)."""
    g = torch.Generator().manual_seed(4)
    folder.mkdir(parents=True, exist_ok=True)
    refs = []
    for L in range(n):
        W_enc, W_dec = torch.randn(m, d, generator=g) * 0.3, torch.randn(m, d, generator=g) * 0.3
        b_enc, b_dec = torch.randn(m, generator=g) * 0.2, torch.randn(d, generator=g) * 0.1
        thr = torch.rand(m, generator=g) * 0.2 if jump else None
        W_skip = torch.randn(d, d, generator=g) * 0.05 if skip else None
        from circuit_tracer.transcoder.activation_functions import JumpReLU
        from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder

        tc = SingleLayerTranscoder(d, m, JumpReLU(thr.clone()) if jump else torch.relu, L, skip_connection=skip,
                                   device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            tc.W_enc.copy_(W_enc), tc.W_dec.copy_(W_dec), tc.b_enc.copy_(b_enc), tc.b_dec.copy_(b_dec)
            if skip:
                tc.W_skip.copy_(W_skip)
        tc.to_safetensors(str(folder / f"layer_{L}.safetensors"))
        ref = lambda x, tc=tc: (tc.encode(x), tc.decode(tc.encode(x), x))  # noqa: E731
        refs.append(ref)
    return refs


def test_circuit_tracer_transcoder_set_config(tmp_path, tiny):
    import yaml

    model = tiny("llama")
    d, n = model.arch.d_model, model.arch.n_layers
    refs = _ct_files(tmp_path / "set", d, 24, n, jump=True, skip=True)
    cfg = {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in",
           "feature_output_hook": "mlp.hook_out", "transcoders": [f"layer_{L}.safetensors" for L in range(n)]}
    (tmp_path / "set" / "config.yaml").write_text(yaml.safe_dump(cfg))
    tset = load_transcoders(tmp_path / "set" / "config.yaml", model=model)
    assert tset.layers == list(range(n)) and tset.input_site(0) == "mlp_in.0" and tset.skip(0) is not None
    x = torch.randn(6, d)
    acts = {L: tset.encode(L, x) for L in tset.layers}
    rec = tset.reconstruct(acts, {L: x for L in tset.layers})
    for L, ref in enumerate(refs):
        with torch.no_grad():
            a, y = ref(x)
        close(acts[L], a)
        close(rec[L], y, 1e-4)
    # the folder itself (config.yaml without a list: layer_*.safetensors), and the older list-of-dicts form
    assert load_transcoders(tmp_path / "set").layers == list(range(n))
    old = {"feature_input_hook": "hook_resid_mid", "feature_output_hook": "hook_mlp_out",
           "transcoders": [{"id": f"t{L}", "layer": L, "filepath": str(tmp_path / "set" / f"layer_{L}.safetensors")}
                           for L in range(n)]}
    assert load_transcoders(old).input_site(1) == "resid_mid.1"
    with pytest.raises(DictionaryError, match="local files only"):
        load_transcoders({**old, "transcoders": ["hf://org/repo/layer_0.safetensors"]})


def test_circuit_tracer_clt_config(tmp_path, tiny):
    import yaml

    model = tiny("llama", n_layers=3)
    d = model.arch.d_model
    clt = random_clt([0, 1, 2], d, 16, arch="jumprelu", seed=5)
    clt.save(tmp_path / "clt")
    (tmp_path / "clt" / "transcoders.json").unlink()  # circuit-tracer files only
    (tmp_path / "clt" / "config.yaml").write_text(yaml.safe_dump(
        {"model_kind": "cross_layer_transcoder", "feature_input_hook": "hook_resid_mid",
         "feature_output_hook": "hook_mlp_out"}))
    tset = load_transcoders(tmp_path / "clt", model=model)
    assert tset.kind == "clt" and tset.input_site(2) == "resid_mid.2" and tset.output_site(2) == "mlp_out.2"
    x = torch.randn(4, d)
    close(tset.encode(1, x), clt.encode(1, x))


# -- training --------------------------------------------------------------------------------------------
TRAIN = dict(n_latents=48, k=6, batch_size=128, max_tokens=1024, data_tokens=1024, holdout_tokens=0,
             checkpoint_every=2, context=32)


def test_train_transcoders_resumes_per_layer(tmp_path, tiny):
    model = tiny("llama")
    ev = threading.Event()
    steps: list[tuple[int, int]] = []

    def stop_in_layer_1(L, st):
        steps.append((L, int(st["step"])))
        if L == 1 and st["step"] == 3:
            ev.set()

    with pytest.raises(TrainingCancelled) as info:
        train_transcoders(model, "0-1", folder=tmp_path / "tc", cancel=ev, on_step=stop_in_layer_1, progress=False,
                          **TRAIN)
    assert info.value.transcoders.layers == [0]
    man = json.loads((tmp_path / "tc" / "transcoders.json").read_text())
    assert man["layers"] == [0] and man["planned"] == [0, 1]
    assert (tmp_path / "tc" / "checkpoints" / "layer_1" / "state.json").exists()
    mtime = (tmp_path / "tc" / "layer_0" / "sae_weights.safetensors").stat().st_mtime_ns
    assert load_transcoders(tmp_path / "tc").layers == [0]  # the finished part loads
    steps.clear()
    tset = train_transcoders(model, "0-1", folder=tmp_path / "tc", on_step=lambda L, st: steps.append((L, int(st["step"]))),
                             progress=False, **TRAIN)
    assert tset.layers == [0, 1] and steps and all(L == 1 for L, _ in steps)  # layer 0 is not retrained
    assert steps[0][1] == 4  # layer 1 continues after its checkpoint (step 3)
    assert (tmp_path / "tc" / "layer_0" / "sae_weights.safetensors").stat().st_mtime_ns == mtime
    assert not (tmp_path / "tc" / "checkpoints").exists()
    straight = train_transcoders(model, "0-1", folder=tmp_path / "straight", progress=False, **TRAIN)
    for L in (0, 1):
        assert torch.equal(tset[L].W_dec, straight[L].W_dec) and torch.equal(tset[L].W_enc, straight[L].W_enc)
    assert set(tset.meta["stats"]) == {"0", "1"} and tset.meta["stats"]["1"]["l0"] <= 6
    loaded = load_transcoders(tmp_path / "tc", model=model)
    x = torch.randn(3, model.arch.d_model)
    close(loaded.encode(1, x), tset.encode(1, x), 1e-6)
    with pytest.raises(ValueError, match="other settings"):
        train_transcoders(model, "0-1", folder=tmp_path / "tc", progress=False, **{**TRAIN, "k": 5})


def test_command_line_train_transcoders(tmp_path, monkeypatch, tiny):
    from workbench import cli

    model = tiny("llama")
    monkeypatch.setattr(cli, "_load_model", lambda a: model)
    cli.main(["train-transcoders", "--layers", "1", "--out", str(tmp_path / "tc"), "--n-latents", "32", "--k", "4",
              "--batch-size", "128", "--max-tokens", "256", "--data-tokens", "512", "--holdout-tokens", "0",
              "--no-progress"])
    assert load_transcoders(tmp_path / "tc").layers == [1]


# -- bad input -------------------------------------------------------------------------------------------
def test_sets_that_do_not_fit_the_model_are_refused(tiny):
    model = tiny("llama")  # 2 layers, d_model 48
    wide = random_plt([0], 32, 16)
    with pytest.raises(DictionaryError, match=r"layer 0.*width 32.*width 48"):
        wide.check(model)
    with pytest.raises(DictionaryError, match="layer 5"):
        random_plt([0, 5], 48, 16).check(model)
    with pytest.raises(DictionaryError, match=r"covers layer 2.*0\.\.1"):
        TranscoderSet(random_clt([0, 1, 2], 48, 16)).check(model)
    with pytest.raises(DictionaryError, match="W_dec"):
        CrossLayerTranscoder(W_enc=torch.zeros(2, 4, 6), b_enc=torch.zeros(2, 6),
                             W_dec=[torch.zeros(6, 2, 4), torch.zeros(6, 2, 4)], b_dec=torch.zeros(2, 4))
    tset = random_plt([0, 1], 48, 16)
    with pytest.raises(DictionaryError, match="covers layers"):
        tset.encode(3, torch.zeros(48))
    with pytest.raises(IndexError, match="out of range"):
        tset.edit({(0, 1, 16): 0.0})
    with pytest.raises(ValueError, match="two factors"):
        tset.edit({(0, 1, 3): 0.0, (0, 2, 3): 2.0}, positions=[1, 2])
    d = tset[0]
    norm = TranscoderSet({0: Dictionary(W_enc=d.W_enc, b_enc=d.b_enc, W_dec=d.W_dec, b_dec=d.b_dec, architecture="relu",
                                        site="mlp_in.0", out_site="mlp_out.0", normalize="layer_norm")})
    with pytest.raises(DictionaryError, match="normalizes each input"):
        norm.encoder_vector(0, [1])
    with pytest.raises(DictionaryError, match="reads resid_post.0"):
        TranscoderSet({0: Dictionary(W_enc=d.W_enc, b_enc=d.b_enc, W_dec=d.W_dec, b_dec=d.b_dec, architecture="relu",
                                     site="resid_post.0", out_site="mlp_out.0")})


def test_encoder_vector_folds_b_pre_and_centring():
    g = torch.Generator().manual_seed(7)
    d = Dictionary(W_enc=torch.randn(12, 20, generator=g), b_enc=torch.randn(20, generator=g),
                   W_dec=torch.randn(20, 12, generator=g), b_dec=torch.zeros(12), architecture="relu",
                   site="mlp_in.0", out_site="mlp_out.0", b_pre=torch.randn(12, generator=g), center_input=True,
                   normalize="expected_average_only_in", norm_scale=1.7)
    tset = TranscoderSet({0: d})
    x = torch.randn(5, 12, generator=g)
    feats = [0, 4, 19]
    pre = x @ tset.encoder_vector(0, feats).T + tset.encoder_bias(0, feats)
    close(pre, d.pre_acts(x)[:, feats], 1e-5)


def test_root_names():
    assert wb.TranscoderSet is TranscoderSet and wb.dictionaries.CrossLayerTranscoder is CrossLayerTranscoder
    assert wb.load_transcoders is load_transcoders and wb.train_transcoders is train_transcoders
