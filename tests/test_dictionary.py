"""Sparse dictionaries: loading SAELens / sparsify / dictionary_learning files, the forward math, saving.

Reference writers: dictionary_learning checkpoints are written by the real library when it is
installed (``pip install --no-deps dictionary-learning==0.1.0 einops``), else by a writer that
produces the same state-dict keys. SAELens and sparsify folders are written here following their
``save_model`` / ``save_to_disk`` code (sae-lens 6.54, eai-sparsify 1.3.3): those libraries pull in
heavy dependencies (transformer-lens, datasets). Every check compares with a forward pass written
inline below in numpy, from the formats' equations.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from workbench.dictionaries.architectures import ARCHITECTURES
from workbench.dictionaries.dictionary import Dictionary, DictionaryError, DictionaryWarning
from workbench.dictionaries.formats import hook_to_site, load_dictionary, save_saelens, site_to_hook

try:  # the real dictionary_learning library, as the reference writer when installed
    from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    HAVE_DL = True
except Exception:  # pragma: no cover - depends on the environment
    HAVE_DL = False

D, N = 8, 16  # d_in, d_sae of the small dictionaries


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g(seed)) * scale


def npy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().double().cpu().numpy()


# -- the reference forward, in numpy ---------------------------------------------------------------
def ref_normalize(x: np.ndarray, mode: str | None, scale: float | None = None):
    """Normalized input and a function undoing it on an output."""
    if mode == "constant_norm_rescale":
        c = math.sqrt(x.shape[-1]) / np.linalg.norm(x, axis=-1, keepdims=True)
        return x * c, lambda y: y / c
    if mode == "layer_norm":
        mu = x.mean(-1, keepdims=True)
        std = (x - mu).std(-1, ddof=1, keepdims=True)
        return (x - mu) / (std + 1e-5), lambda y: y * std + mu
    if mode == "expected_average_only_in":
        s = 1.0 if scale is None else scale
        return x * s, lambda y: y / s
    return x, lambda y: y


def ref_acts(x, arch, W_enc, b_enc=None, *, b_pre=None, k=None, threshold=None, b_gate=None, b_mag=None,
             r_mag=None):
    if b_pre is not None:
        x = x - b_pre
    if arch == "gated":
        gate = (x @ W_enc + b_gate) > 0
        return gate * np.maximum(x @ (W_enc * np.exp(r_mag)) + b_mag, 0.0)
    pre = x @ W_enc + b_enc
    if arch == "relu":
        return np.maximum(pre, 0.0)
    if arch == "jumprelu":
        return np.where(pre > threshold, np.maximum(pre, 0.0), 0.0)
    assert arch == "topk"
    idx = np.argsort(-pre, axis=-1)[..., :k]
    out = np.zeros_like(pre)
    np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0.0), -1)
    return out


def close(a, b, atol=1e-4):
    a = a.detach().double().cpu().numpy() if isinstance(a, torch.Tensor) else a
    np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4)


def xs(*lead: int, d: int = D, seed: int = 99) -> torch.Tensor:
    return randn(*lead, d, seed=seed) + 0.5


# -- reference writers -------------------------------------------------------------------------------
def saelens_tensors(arch: str, d_in: int = D, d_sae: int = N, d_out: int | None = None, seed: int = 0) -> dict:
    d_out = d_in if d_out is None else d_out
    t = {"W_enc": randn(d_in, d_sae, seed=seed, scale=0.5), "W_dec": randn(d_sae, d_out, seed=seed + 1, scale=0.5),
         "b_dec": randn(d_out, seed=seed + 2, scale=0.3)}
    if arch == "gated":
        t.update(b_gate=randn(d_sae, seed=seed + 3, scale=0.3), b_mag=randn(d_sae, seed=seed + 4, scale=0.3),
                 r_mag=randn(d_sae, seed=seed + 5, scale=0.3))
    else:
        t["b_enc"] = randn(d_sae, seed=seed + 3, scale=0.3)
    if "jumprelu" in arch:
        t["threshold"] = torch.rand(d_sae, generator=g(seed + 6)) * 0.8
    if "skip" in arch:
        t["W_skip"] = randn(d_out, d_in, seed=seed + 7, scale=0.2)  # SAELens stores [d_out, d_in]
    return t


def write_saelens_v6(folder: Path, arch: str, tensors: dict, *, hook: str = "blocks.1.hook_resid_post",
                     hook_out: str | None = None, **cfg_extra) -> Path:
    """What SAE.save_model writes: save_file(state_dict) + json.dump(cfg.to_dict())."""
    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = tensors["W_enc"].shape
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": "transcoder" not in arch, "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
                        "model_name": "gpt2", "hook_name": hook, "hook_head_index": None, "context_size": 128,
                        "prepend_bos": True, "dataset_path": "x", "neuronpedia_id": None},
           "architecture": arch}
    if arch == "topk":
        cfg.update(k=4, rescale_acts_by_decoder_norm=False)
    if "transcoder" in arch:
        cfg["d_out"] = tensors["W_dec"].shape[1]
        cfg["metadata"]["hook_name_out"] = hook_out
    cfg.update(cfg_extra)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def write_sparsify(folder: Path, *, d_in: int = D, n: int = N, k: int = 4, transcode: bool = False,
                   skip: bool = False, dtype=torch.bfloat16, seed: int = 0) -> dict:
    """What SparseCoder.save_to_disk writes: save_model(self) + {**cfg.to_dict(), "d_in": d_in}."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = {"encoder.weight": randn(n, d_in, seed=seed, scale=0.5), "encoder.bias": randn(n, seed=seed + 1, scale=0.3),
          "W_dec": randn(n, d_in, seed=seed + 2, scale=0.5), "b_dec": randn(d_in, seed=seed + 3, scale=0.3)}
    if skip:
        sd["W_skip"] = randn(d_in, d_in, seed=seed + 4, scale=0.2)
    sd = {key: v.to(dtype).contiguous() for key, v in sd.items()}
    save_file(sd, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": n, "k": k,
           "multi_topk": False, "skip_connection": skip, "transcode": transcode, "d_in": d_in}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return sd


DL_CLASSES = ["AutoEncoder", "GatedAutoEncoder", "JumpReluAutoEncoder", "AutoEncoderTopK", "BatchTopKSAE"]


def dl_module(cls: str, seed: int = 0):
    """A dictionary_learning module with random parameters (real library)."""
    torch.manual_seed(seed)
    make = {"AutoEncoder": lambda: AutoEncoder(D, N), "GatedAutoEncoder": lambda: GatedAutoEncoder(D, N),
            "JumpReluAutoEncoder": lambda: JumpReluAutoEncoder(D, N),
            "AutoEncoderTopK": lambda: AutoEncoderTopK(D, N, 4), "BatchTopKSAE": lambda: BatchTopKSAE(D, N, 4)}
    ae = make[cls]()
    with torch.no_grad():
        for name, p in ae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g(seed + len(name))) * 0.4)
        if cls == "JumpReluAutoEncoder":
            ae.threshold.copy_(torch.rand(N, generator=g(seed)) * 0.5)
        if cls == "BatchTopKSAE":
            ae.threshold.fill_(0.3)
    return ae


def dl_state_dict(cls: str, seed: int = 0) -> dict:
    """The checkpoint's state dict: from the real library when installed, else the same keys by hand."""
    if HAVE_DL:
        return {k: v.cpu() for k, v in dl_module(cls, seed).state_dict().items()}
    r = lambda *s, o=0: randn(*s, seed=seed + o, scale=0.4)  # noqa: E731
    if cls == "AutoEncoder":
        return {"bias": r(D), "encoder.weight": r(N, D, o=1), "encoder.bias": r(N, o=2), "decoder.weight": r(D, N, o=3)}
    if cls == "GatedAutoEncoder":
        return {"decoder_bias": r(D), "encoder.weight": r(N, D, o=1), "r_mag": r(N, o=2), "gate_bias": r(N, o=3),
                "mag_bias": r(N, o=4), "decoder.weight": r(D, N, o=5)}
    if cls == "JumpReluAutoEncoder":
        return {"W_enc": r(D, N), "b_enc": r(N, o=1), "W_dec": r(N, D, o=2), "b_dec": r(D, o=3),
                "threshold": torch.rand(N, generator=g(seed)) * 0.5}
    return {"k": torch.tensor(4, dtype=torch.int), "threshold": torch.tensor(0.3 if cls == "BatchTopKSAE" else -1.0),
            "decoder.weight": r(D, N), "encoder.weight": r(N, D, o=1), "encoder.bias": r(N, o=2), "b_dec": r(D, o=3)}


def write_dl(folder: Path, cls: str, seed: int = 0, submodule: str | None = "resid_post_layer_1") -> dict:
    """What dictionary_learning's trainSAE writes: torch.save(state_dict, ae.pt) + config.json {"trainer": ...}."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = dl_state_dict(cls, seed)
    torch.save(sd, folder / "ae.pt")
    trainer = {"dict_class": cls, "trainer_class": "X", "activation_dim": D, "dict_size": N, "layer": 1,
               "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": submodule}
    if "TopK" in cls:
        trainer["k"] = 4
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"d_submodule": D}}))
    return sd


# -- SAELens -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
@pytest.mark.parametrize("apply_b", [True, False])
def test_saelens_v6_encode_decode_match_reference(tmp_path, arch, apply_b):
    t = saelens_tensors(arch)
    write_saelens_v6(tmp_path / "sae", arch, t, apply_b_dec_to_input=apply_b)
    d = load_dictionary(tmp_path / "sae")
    ours = {"standard": "relu"}.get(arch, arch)
    assert (d.architecture, d.site, d.out_site, d.d_in, d.d_sae) == (ours, "resid_post.1", None, D, N)
    assert d.meta["format"] == "saelens" and d.meta["model_name"] == "gpt2"
    x = xs(2, 3)
    n = {k: npy(v) for k, v in t.items()}
    want = ref_acts(npy(x), ours, n["W_enc"], n.get("b_enc"), b_pre=n["b_dec"] if apply_b else None, k=4,
                    threshold=n.get("threshold"), b_gate=n.get("b_gate"), b_mag=n.get("b_mag"), r_mag=n.get("r_mag"))
    acts = d.encode(x)
    assert acts.shape == (2, 3, N)
    close(acts, want)
    assert (want > 0).any() and (want == 0).any()  # the test exercises both branches
    if arch == "topk":
        assert ((acts != 0).sum(-1) <= 4).all()
    recon, acts2 = d.forward(x)
    close(acts2, want)
    close(recon, want @ n["W_dec"] + n["b_dec"])
    close(d.decode(acts), want @ n["W_dec"] + n["b_dec"])


@pytest.mark.parametrize("mode", ["constant_norm_rescale", "layer_norm", "expected_average_only_in"])
def test_saelens_normalization_modes(tmp_path, mode):
    t = saelens_tensors("standard", seed=3)
    folder = write_saelens_v6(tmp_path / "sae", "standard", t, normalize_activations=mode)
    if mode == "expected_average_only_in":  # a training checkpoint's activation scaler
        (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.37}))
    d = load_dictionary(folder)
    assert d.normalize == mode
    x = xs(4, seed=5) * 3.0
    n = {k: npy(v) for k, v in t.items()}
    xn, undo = ref_normalize(npy(x), mode, 0.37)
    want = ref_acts(xn, "relu", n["W_enc"], n["b_enc"], b_pre=n["b_dec"])
    close(d.encode(x), want)
    recon, _ = d.forward(x)
    close(recon, undo(want @ n["W_dec"] + n["b_dec"]))
    if mode == "expected_average_only_in":
        assert d.norm_scale == pytest.approx(0.37)
        close(d.decode(d.encode(x)), recon.numpy())
    else:
        with pytest.raises(DictionaryError, match="needs that input"):
            d.decode(d.encode(x))
        close(d.decode(d.encode(x), x), recon.numpy())


def test_saelens_pre6_flat_configs(tmp_path):
    # topk through activation_fn_str + activation_fn_kwargs, hook_point naming, no architecture key
    t = saelens_tensors("topk", seed=7)
    folder = tmp_path / "old_topk"
    folder.mkdir()
    save_file(t, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "model_name": "gpt2-small", "hook_point": "blocks.0.hook_resid_pre", "hook_point_layer": 0, "d_in": D,
        "d_sae": N, "dtype": "torch.float32", "device": "cuda", "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3}, "sae_lens_training_version": "3.13.0"}))
    d = load_dictionary(folder)
    assert (d.architecture, d.k, d.site) == ("topk", 3, "resid_pre.0")
    n = {k: npy(v) for k, v in t.items()}
    x = xs(5, seed=8)
    # SAELens before 3.19.2 trained on HookedTransformer.from_pretrained: a centred residual stream
    assert d.center_input
    close(d.encode(x), ref_acts(npy(x - x.mean(-1, keepdim=True)), "topk", n["W_enc"], n["b_enc"], b_pre=n["b_dec"], k=3))

    # no architecture: standard; boolean normalize_activations; a finetuning scaling factor on decode
    t = saelens_tensors("standard", seed=9)
    sf = torch.rand(N, generator=g(1)) + 0.5
    folder = tmp_path / "old_std"
    folder.mkdir()
    save_file({**t, "scaling_factor": sf}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "hook_name": "blocks.1.hook_mlp_out", "hook_layer": 1, "d_in": D, "d_sae": N, "dtype": "float32",
        "activation_fn_str": "relu", "apply_b_dec_to_input": False, "normalize_activations": False,
        "finetuning_scaling_factor": True}))
    d = load_dictionary(folder)
    assert (d.architecture, d.site, d.normalize, d.b_pre) == ("relu", "mlp_out.1", None, None)
    n = {k: npy(v) for k, v in t.items()}
    x = xs(3, seed=10)
    acts = ref_acts(npy(x), "relu", n["W_enc"], n["b_enc"])
    close(d.encode(x), acts)
    close(d.forward(x)[0], (acts * npy(sf)) @ n["W_dec"] + n["b_dec"])


def test_saelens_jumprelu_log_threshold_and_topk_decoder_norm_rescale(tmp_path):
    t = saelens_tensors("jumprelu", seed=11)
    thr = t.pop("threshold")
    write_saelens_v6(tmp_path / "j", "jumprelu", {**t, "log_threshold": thr.log()})
    d = load_dictionary(tmp_path / "j")
    n = {k: npy(v) for k, v in t.items()}
    x = xs(6, seed=12)
    close(d.encode(x), ref_acts(npy(x), "jumprelu", n["W_enc"], n["b_enc"], b_pre=n["b_dec"], threshold=npy(thr)))

    # rescale_acts_by_decoder_norm: top-k of pre * ||W_dec_i||, decode (acts / ||W_dec_i||) @ W_dec
    t = saelens_tensors("topk", seed=13)
    write_saelens_v6(tmp_path / "t", "topk", t, rescale_acts_by_decoder_norm=True)
    d = load_dictionary(tmp_path / "t")
    n = {k: npy(v) for k, v in t.items()}
    norms = np.linalg.norm(n["W_dec"], axis=-1)
    pre = (npy(x) - n["b_dec"]) @ n["W_enc"] + n["b_enc"]
    want = ref_acts(pre * norms, "relu", np.eye(N), np.zeros(N))
    want = np.where(np.argsort(np.argsort(-pre * norms, -1), -1) < 4, want, 0.0)
    close(d.encode(x), want)
    close(d.forward(x)[0], (want / norms) @ n["W_dec"] + n["b_dec"])


@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"])
def test_saelens_transcoders(tmp_path, arch):
    t = saelens_tensors(arch, d_out=6, seed=21)
    write_saelens_v6(tmp_path / "tc", arch, t, hook="blocks.1.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out")
    d = load_dictionary(tmp_path / "tc")
    assert (d.site, d.out_site, d.d_in, d.d_out, d.is_transcoder) == ("ln2_normalized.1", "mlp_out.1", D, 6, True)
    assert d.b_pre is None  # SAELens transcoders never subtract b_dec from the input
    n = {k: npy(v) for k, v in t.items()}
    x = xs(2, 5, seed=22)
    acts = ref_acts(npy(x), "jumprelu" if "jumprelu" in arch else "relu", n["W_enc"], n["b_enc"],
                    threshold=n.get("threshold"))
    close(d.encode(x), acts)
    want = acts @ n["W_dec"] + n["b_dec"]
    if "skip" in arch:
        want = want + npy(x) @ n["W_skip"].T
        with pytest.raises(DictionaryError, match="skip connection"):
            d.decode(d.encode(x))
    close(d.forward(x)[0], want)


def test_saelens_transcoder_normalization_is_not_undone(tmp_path):
    t = saelens_tensors("transcoder", d_out=6, seed=23)
    write_saelens_v6(tmp_path / "tc", "transcoder", t, hook="blocks.0.hook_mlp_in", hook_out="blocks.0.hook_mlp_out",
                     normalize_activations="constant_norm_rescale")
    d = load_dictionary(tmp_path / "tc")
    n = {k: npy(v) for k, v in t.items()}
    x = xs(3, seed=24) * 4
    xn, _ = ref_normalize(npy(x), "constant_norm_rescale")
    acts = ref_acts(xn, "relu", n["W_enc"], n["b_enc"])
    close(d.encode(x), acts)
    close(d.decode(d.encode(x)), acts @ n["W_dec"] + n["b_dec"])  # as SAELens's Transcoder.decode


def test_dunefsky_style_transcoder(tmp_path):
    t = saelens_tensors("standard", seed=31)
    t["W_dec"] = randn(N, 6, seed=32)
    t["b_dec_out"] = randn(6, seed=33)  # b_dec is the input centering [d_in], b_dec_out the output bias
    folder = tmp_path / "dunefsky"
    folder.mkdir()
    save_file(t, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "model_name": "gpt2-small", "hook_point": "blocks.8.ln2.hook_normalized", "hook_point_layer": 8,
        "out_hook_point": "blocks.8.hook_mlp_out", "out_hook_point_layer": 8, "is_transcoder": True,
        "d_in": D, "d_out": 6, "d_sae": N, "dtype": "float32"}))
    d = load_dictionary(folder)
    assert (d.site, d.out_site) == ("ln2_normalized.8", "mlp_out.8")
    n = {k: npy(v) for k, v in t.items()}
    x = xs(4, seed=34)
    acts = ref_acts(npy(x), "relu", n["W_enc"], n["b_enc"], b_pre=n["b_dec"])
    close(d.encode(x), acts)
    close(d.forward(x)[0], acts @ n["W_dec"] + n["b_dec_out"])


def test_saelens_sparsity_file_and_site_override(tmp_path):
    t = saelens_tensors("standard", seed=41)
    folder = write_saelens_v6(tmp_path / "s", "standard", t, hook="blocks.3.hook_resid_post")
    sp = torch.rand(N, generator=g(2)) * -4
    save_file({"sparsity": sp}, str(folder / "sparsity.safetensors"))
    d = load_dictionary(folder, site="resid_post.0")
    assert d.site == "resid_post.0"
    close(d.meta["sparsity"], npy(sp), atol=0)


# -- sparsify ---------------------------------------------------------------------------------------------
def test_sparsify_sae_bf16(tmp_path):
    sd = write_sparsify(tmp_path / "layers.1", k=4)
    d32 = load_dictionary(tmp_path / "layers.1", dtype="float32")  # bf16 -> fp32 is exact
    assert (d32.architecture, d32.k, d32.site, d32.out_site) == ("topk", 4, "resid_post.1", None)
    n = {k: npy(v) for k, v in sd.items()}
    x = xs(2, 3, seed=51)
    # sparsify: top-k of relu((x - b_dec) @ encoder.weight.T + encoder.bias); decode acts @ W_dec + b_dec
    acts = ref_acts(npy(x), "topk", n["encoder.weight"].T, n["encoder.bias"], b_pre=n["b_dec"], k=4)
    close(d32.encode(x), acts)
    close(d32.forward(x)[0], acts @ n["W_dec"] + n["b_dec"])
    d = load_dictionary(tmp_path / "layers.1")  # stored dtype kept
    assert d.dtype == torch.bfloat16
    a16 = d.encode(x)
    assert a16.dtype == torch.bfloat16 and a16.shape == (2, 3, N)
    assert ((a16 != 0).sum(-1) <= 4).all()
    np.testing.assert_allclose(npy(d.forward(x)[0]), npy(d32.forward(x)[0]), atol=0.15, rtol=0.05)


def test_sparsify_transcoder_with_skip(tmp_path):
    sd = write_sparsify(tmp_path / "layers.0.mlp", transcode=True, skip=True, dtype=torch.float32, seed=3)
    d = load_dictionary(tmp_path / "layers.0.mlp")
    assert (d.site, d.out_site, d.b_pre) == ("mlp_in.0", "mlp_out.0", None)  # transcoders do not subtract b_dec
    n = {k: npy(v) for k, v in sd.items()}
    x = xs(5, seed=52)
    acts = ref_acts(npy(x), "topk", n["encoder.weight"].T, n["encoder.bias"], k=4)
    close(d.encode(x), acts)
    close(d.forward(x)[0], acts @ n["W_dec"] + n["b_dec"] + npy(x) @ n["W_skip"].T)  # sparsify: x @ W_skip.mT


def test_sparsify_parent_folder_needs_hookpoint(tmp_path):
    write_sparsify(tmp_path / "run" / "layers.0")
    write_sparsify(tmp_path / "run" / "layers.1.mlp", transcode=True)
    write_sparsify(tmp_path / "run" / "layers.10")
    with pytest.raises(DictionaryError, match=r"hookpoint=.*layers\.0, layers\.1\.mlp, layers\.10"):
        load_dictionary(tmp_path / "run")
    with pytest.raises(DictionaryError, match=r"no hookpoint folder 'layers\.7'; choices: layers\.0"):
        load_dictionary(tmp_path / "run", hookpoint="layers.7")
    d = load_dictionary(tmp_path / "run", hookpoint="layers.1.mlp")
    assert (d.site, d.out_site) == ("mlp_in.1", "mlp_out.1")
    assert load_dictionary(tmp_path / "run", hookpoint="layers.10").site == "resid_post.10"


# -- dictionary_learning -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", DL_CLASSES)
def test_dictionary_learning_match_reference(tmp_path, cls):
    sd = write_dl(tmp_path / "trainer_0", cls)
    d = load_dictionary(tmp_path / "trainer_0")
    assert d.site == "resid_post.1" and d.meta["model_name"] == "EleutherAI/pythia-70m-deduped"
    n = {k: npy(v) for k, v in sd.items()}
    x = xs(2, 4, seed=61)
    xn = npy(x)
    if cls == "AutoEncoder":  # relu(encoder(x - bias)); from_pretrained rescales to unit decoder columns
        f = ref_acts(xn, "relu", n["encoder.weight"].T, n["encoder.bias"], b_pre=n["bias"])
        norms = np.linalg.norm(n["decoder.weight"], axis=0)
        close(d.encode(x), f * norms)
        close(d.forward(x)[0], f @ n["decoder.weight"].T + n["bias"])
        np.testing.assert_allclose(np.linalg.norm(npy(d.W_dec), axis=-1), 1.0, rtol=1e-5)
    elif cls == "GatedAutoEncoder":
        xc = xn - n["decoder_bias"]
        enc = xc @ n["encoder.weight"].T
        f = (enc + n["gate_bias"] > 0) * np.maximum(np.exp(n["r_mag"]) * enc + n["mag_bias"], 0)
        assert d.architecture == "gated"
        close(d.encode(x), f)
        close(d.forward(x)[0], f @ n["decoder.weight"].T + n["decoder_bias"])
    elif cls == "JumpReluAutoEncoder":  # relu(pre * (pre > threshold)), no input centering
        pre = xn @ n["W_enc"] + n["b_enc"]
        f = np.maximum(pre * (pre > n["threshold"]), 0)
        assert d.architecture == "jumprelu" and d.b_pre is None
        close(d.encode(x), f)
        close(d.forward(x)[0], f @ n["W_dec"] + n["b_dec"])
    else:
        post = np.maximum((xn - n["b_dec"]) @ n["encoder.weight"].T + n["encoder.bias"], 0)
        if cls == "AutoEncoderTopK":  # top-k of relu(encoder(x - b_dec))
            f = np.where(np.argsort(np.argsort(-post, -1), -1) < 4, post, 0.0)
            assert (d.architecture, d.k) == ("topk", 4)
        else:  # BatchTopKSAE.encode(use_threshold=True): relu(pre) * (relu(pre) > threshold)
            f = post * (post > 0.3)
            assert d.architecture == "jumprelu"
        close(d.encode(x), f)
        close(d.forward(x)[0], f @ n["decoder.weight"].T + n["b_dec"])
    assert (f > 0).any()


@pytest.mark.skipif(not HAVE_DL, reason="dictionary_learning is not installed (pip install --no-deps dictionary-learning einops)")
@pytest.mark.parametrize("cls", DL_CLASSES)
def test_dictionary_learning_equals_the_library(tmp_path, cls):
    write_dl(tmp_path / "t", cls, seed=5)
    ae = AutoEncoder.from_pretrained(tmp_path / "t" / "ae.pt") if cls == "AutoEncoder" else dl_module(cls, seed=5)
    d = load_dictionary(tmp_path / "t")
    x = xs(7, seed=62)
    with torch.no_grad():
        f = ae.encode(x)
        close(d.encode(x), npy(f), atol=1e-5)
        close(d.decode(f), npy(ae.decode(f)), atol=1e-5)


def test_dictionary_learning_without_config_needs_site(tmp_path):
    folder = tmp_path / "t"
    write_dl(folder, "JumpReluAutoEncoder")
    (folder / "config.json").unlink()
    with pytest.raises(DictionaryError, match="pass site="):
        load_dictionary(folder)
    d = load_dictionary(folder / "ae.pt", site="mlp_out.0")
    assert d.site == "mlp_out.0" and d.architecture == "jumprelu"


# -- hook names -> sites -------------------------------------------------------------------------------------
@pytest.mark.parametrize("hook,io,site", [
    ("blocks.3.hook_resid_post", "output", "resid_post.3"),
    ("blocks.3.hook_resid_pre", "output", "resid_pre.3"),
    ("blocks.3.hook_mlp_out", "output", "mlp_out.3"),
    ("blocks.3.mlp.hook_post", "output", "neurons.3"),
    ("blocks.3.ln2.hook_normalized", "output", "ln2_normalized.3"),
    ("blocks.3.hook_attn_out", "output", "attn_out.3"),
    ("blocks.3.attn.hook_z", "output", "z.3"),
    ("blocks.3.mlp.hook_in", "output", "mlp_in.3"),
    ("hook_embed", "output", "embed"),
    ("model.layers.15", "output", "resid_post.15"),
    ("model.layers.15", "input", "resid_pre.15"),
    ("model.layers.15.mlp", "output", "mlp_out.15"),
    ("model.layers.15.mlp", "input", "mlp_in.15"),
    ("layers.15.mlp", "input", "mlp_in.15"),
    ("transformer.h.2.mlp.c_proj", "input", "neurons.2"),
    ("gpt_neox.layers.4.attention", "output", "attn_out.4"),
    ("model.layers.5.output", "input", "resid_post.5"),
    ("model.layers.5.pre_feedforward_layernorm.output", "output", "mlp_in.5"),
    ("resid_post_layer_3", "output", "resid_post.3"),
    ("mlp_out_layer_2", "output", "mlp_out.2"),
])
def test_hook_to_site(hook, io, site):
    assert hook_to_site(hook, io=io) == site


@pytest.mark.parametrize("site", ["resid_pre.0", "resid_post.4", "mlp_out.2", "neurons.1", "ln2_normalized.3",
                                  "attn_out.0", "z.1", "embed", "final_normalized"])
def test_site_to_hook_round_trips(site):
    hook = site_to_hook(site)
    assert hook.startswith(("blocks.", "hook_", "ln_final"))
    assert hook_to_site(hook) == site


@pytest.mark.parametrize("hook", ["blocks.3.ln2.hook_scale", "blocks.3.mlp.hook_pre", "foo.bar", "layers.x"])
def test_hook_to_site_errors(hook):
    with pytest.raises(DictionaryError, match=r"site"):
        hook_to_site(hook)


# -- fitting a model -----------------------------------------------------------------------------------------
def make(d_in=48, d_sae=32, d_out=None, site="resid_post.1", out_site=None, arch="relu", **kw) -> Dictionary:
    d_out = d_in if d_out is None else d_out
    return Dictionary(W_enc=randn(d_in, d_sae, seed=1, scale=0.3), b_enc=randn(d_sae, seed=2, scale=0.1),
                      W_dec=randn(d_sae, d_out, seed=3, scale=0.3), b_dec=randn(d_out, seed=4, scale=0.1),
                      architecture=arch, site=site, out_site=out_site, **kw)


def test_check_against_tiny_model(tiny, tmp_path):
    model = tiny("llama")
    assert make().check(model) is not None
    assert model.arch.d_mlp != model.arch.d_model
    make(d_in=model.arch.d_mlp, site="neurons.0").check(model)
    with pytest.raises(DictionaryError, match=r"resid_post\.1 with width 40.*width 48"):
        make(d_in=40).check(model)
    with pytest.raises(DictionaryError, match=r"neurons\.0 with width 48.*width 96"):
        make(site="neurons.0").check(model)
    with pytest.raises(DictionaryError, match=r"reads resid_post\.5.*layers 0\.\.1"):
        make(site="resid_post.5").check(model)
    make(site="mlp_in.0", out_site="mlp_out.0").check(model)
    with pytest.raises(DictionaryError, match=r"writes mlp_out\.0 with width 47"):
        make(site="mlp_in.0", out_site="mlp_out.0", d_out=47).check(model)
    with pytest.warns(DictionaryWarning, match="trained on 'google/gemma-2-2b'"):
        make(meta={"model_name": "google/gemma-2-2b"}).check(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(meta={"model_name": "someone/llama_for_causal_lm"}).check(model)  # same name, other hub spelling
    # through the loader: a folder written for a wider model fails with a clear message
    t = saelens_tensors("standard")
    write_saelens_v6(tmp_path / "wide", "standard", t)
    with pytest.raises(DictionaryError, match="width 8.*width 48"):
        load_dictionary(tmp_path / "wide", model=model)
    make().save(tmp_path / "ok")
    d = load_dictionary(tmp_path / "ok", model=model)
    h = model.run("The cat sat", capture=["resid_post.1"]).activations["resid_post.1"]
    recon, acts = d.forward(h)
    assert recon.shape == h.shape and acts.shape == (*h.shape[:-1], 32)


# -- save / load round trip -------------------------------------------------------------------------------------
def _variants() -> dict[str, dict]:
    return {
        "relu": dict(arch="relu", b_pre="dec"),
        "relu_own_center": dict(arch="relu", b_pre="own"),
        "topk": dict(arch="topk", k=5, b_pre="dec"),
        "jumprelu": dict(arch="jumprelu", threshold=True),
        "gated": dict(arch="gated", b_pre="own"),
        "nmf": dict(arch="nmf"),
        "layer_norm": dict(arch="relu", b_pre="dec", normalize="layer_norm"),
        "scaled": dict(arch="gated", b_pre="dec", normalize="expected_average_only_in", norm_scale=0.25),
        "transcoder_skip": dict(arch="relu", out=True, skip=True, b_pre="own"),
        "jumprelu_transcoder": dict(arch="jumprelu", out=True, threshold=True),
        "topk_transcoder_skip": dict(arch="topk", k=3, out=True, skip=True, normalize="constant_norm_rescale"),
    }


def _variant(spec: dict) -> Dictionary:
    d_out = 6 if spec.get("out") else D
    b_dec = randn(d_out, seed=4, scale=0.3)
    kw: dict = {}
    if spec.get("b_pre") == "dec":
        kw["b_pre"] = b_dec
    elif spec.get("b_pre") == "own":
        kw["b_pre"] = randn(D, seed=5, scale=0.3)
    if spec.get("threshold"):
        kw["threshold"] = torch.rand(N, generator=g(6)) * 0.5
    if spec["arch"] == "gated":
        kw.update(b_gate=randn(N, seed=7, scale=0.3), b_mag=randn(N, seed=8, scale=0.3), r_mag=randn(N, seed=9, scale=0.3))
    if spec.get("skip"):
        kw["W_skip"] = randn(D, d_out, seed=10, scale=0.2)
    return Dictionary(W_enc=randn(D, N, seed=1, scale=0.5), b_enc=randn(N, seed=2, scale=0.3),
                      W_dec=randn(N, d_out, seed=3, scale=0.5), b_dec=b_dec, architecture=spec["arch"],
                      site="mlp_in.1" if spec.get("out") else "resid_post.1",
                      out_site="mlp_out.1" if spec.get("out") else None, k=spec.get("k"),
                      normalize=spec.get("normalize"), norm_scale=spec.get("norm_scale"),
                      labels={3: "cats", 7: "<b>dogs</b>"}, meta={"model_name": "gpt2"}, **kw)


@pytest.mark.parametrize("name", list(_variants()))
def test_save_load_round_trip(tmp_path, name):
    d = _variant(_variants()[name])
    d.save(tmp_path / name)
    cfg = json.loads((tmp_path / name / "cfg.json").read_text())
    e = Dictionary.load(tmp_path / name)
    assert (e.architecture, e.site, e.out_site, e.k, e.labels) == (d.architecture, d.site, d.out_site, d.k, d.labels)
    x = xs(3, 2, seed=71)
    close(e.encode(x), d.encode(x).numpy(), atol=1e-5)
    close(e.forward(x)[0], d.forward(x)[0].numpy(), atol=1e-5)
    assert (d.encode(x) > 0).any()
    # the SAELens v6 layout
    assert cfg["metadata"]["sae_lens_version"] >= "6"
    assert cfg["metadata"]["hook_name"] == (site_to_hook(d.site) if d.site != "mlp_in.1" else "mlp_in.1")
    assert cfg["metadata"]["model_name"] == "gpt2"
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (D, N, "float32")
    expected_arch = {"relu": "standard", "relu_own_center": "standard", "topk": "topk", "jumprelu": "jumprelu",
                     "gated": "gated", "nmf": "standard", "layer_norm": "standard", "scaled": "gated",
                     "transcoder_skip": "skip_transcoder", "jumprelu_transcoder": "jumprelu_transcoder",
                     "topk_transcoder_skip": "topk"}[name]
    assert cfg["architecture"] == expected_arch
    if d.architecture == "topk":
        assert cfg["k"] == d.k
    if d.is_transcoder:
        assert cfg["d_out"] == 6 and cfg["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"
        assert cfg["apply_b_dec_to_input"] is False
    assert cfg["apply_b_dec_to_input"] == (name in ("relu", "topk", "layer_norm", "scaled"))
    assert cfg["normalize_activations"] == {"layer_norm": "layer_norm",
                                            "topk_transcoder_skip": "constant_norm_rescale"}.get(name, "none")


def test_round_trip_of_a_loaded_file_keeps_metadata(tmp_path):
    t = saelens_tensors("jumprelu", seed=81)
    write_saelens_v6(tmp_path / "a", "jumprelu", t, hook="blocks.0.hook_mlp_out")
    save_file({"sparsity": torch.full((N,), -2.0)}, str(tmp_path / "a" / "sparsity.safetensors"))
    d = load_dictionary(tmp_path / "a")
    save_saelens(d, tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "cfg.json").read_text())
    assert cfg["metadata"]["context_size"] == 128 and cfg["metadata"]["hook_name"] == "blocks.0.hook_mlp_out"
    e = load_dictionary(tmp_path / "b")
    close(e.meta["sparsity"], np.full(N, -2.0), atol=0)
    for name in t:
        assert torch.equal(getattr(e, name), getattr(d, name)), name


# -- the architecture registry ------------------------------------------------------------------------------------
def _any_arch(name: str, transcoder: bool = False) -> Dictionary:
    """A dictionary of architecture ``name`` with every optional tensor set (each architecture uses its own)."""
    d_out = 6 if transcoder else D
    return Dictionary(W_enc=randn(D, N, seed=1, scale=0.5), b_enc=randn(N, seed=2, scale=0.3),
                      W_dec=randn(N, d_out, seed=3, scale=0.5), b_dec=randn(d_out, seed=4, scale=0.3),
                      architecture=name, k=3, threshold=torch.rand(N, generator=g(6)) * 0.3,
                      b_gate=randn(N, seed=7, scale=0.3), b_mag=randn(N, seed=8, scale=0.3),
                      r_mag=randn(N, seed=9, scale=0.3), b_pre=randn(D, seed=5, scale=0.3),
                      site="mlp_in.1" if transcoder else "resid_post.1", out_site="mlp_out.1" if transcoder else None)


@pytest.mark.parametrize("transcoder", [False, True])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_registered_architecture_round_trips(tmp_path, name, transcoder):
    impl = ARCHITECTURES[name]
    d = _any_arch(name, transcoder)
    assert d.architecture_impl is impl
    save_saelens(d, tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "cfg.json").read_text())
    assert cfg["architecture"] == impl.saelens_name(transcoder, False)
    e = load_dictionary(tmp_path / "d")
    assert e.architecture == name and e.is_transcoder == transcoder
    x = xs(5, seed=72)
    close(e.encode(x), d.encode(x).numpy(), atol=1e-5)
    close(e.forward(x)[0], d.forward(x)[0].numpy(), atol=1e-5)
    idx = torch.tensor([0, 3, 9, 15])
    close(d.encode_subset(x, idx), d.encode(x)[..., idx].numpy(), atol=1e-6)


def test_a_registered_architecture_is_used_by_encode_features_and_files(tmp_path):
    from workbench.dictionaries.architectures import ReLU, get_architecture, register_architecture
    from workbench.dictionaries.features import feature_delta

    @register_architecture
    class SquaredReLU(ReLU):
        name = "test_relu2"
        saelens = "test_relu2"

        def encode(self, d, xc):
            return torch.relu(self.pre_acts(d, xc)) ** 2

        def encode_subset(self, d, xc, idx, cache=None):
            return super().encode_subset(d, xc, idx, cache) ** 2

    @register_architecture
    class StandardSquaredReLU(SquaredReLU):  # writes SAELens's "standard": loads back through the metadata
        name = "test_relu2_std"
        saelens = "standard"

    try:
        b_pre = randn(D, seed=5, scale=0.3)
        for arch in (SquaredReLU, "test_relu2_std"):
            d = make(d_in=D, d_sae=N, arch=arch, b_pre=b_pre)
            name = d.architecture
            assert name in ("test_relu2", "test_relu2_std") and isinstance(d.architecture_impl, SquaredReLU)
            x = xs(4, seed=3)
            ref = np.maximum((npy(x) - npy(b_pre)) @ npy(d.W_enc) + npy(d.b_enc), 0.0) ** 2
            close(d.encode(x), ref)
            close(d.forward(x)[0], ref @ npy(d.W_dec) + npy(d.b_dec))
            close(feature_delta(d, x, [1, 5], "zero", None), -ref[:, [1, 5]] @ npy(d.W_dec)[[1, 5]])
            d.save(tmp_path / name)
            cfg = json.loads((tmp_path / name / "cfg.json").read_text())
            assert cfg["architecture"] == get_architecture(name).saelens
            e = load_dictionary(tmp_path / name)
            assert e.architecture == name
            close(e.encode(x), ref, atol=1e-5)
        assert "test_relu2" in repr(make(d_in=D, d_sae=N, arch="test_relu2"))
    finally:
        ARCHITECTURES.pop("test_relu2", None)
        ARCHITECTURES.pop("test_relu2_std", None)
    with pytest.raises(DictionaryError, match="unknown architecture 'test_relu2'; supported: relu, topk"):
        make(arch="test_relu2")


def test_errors_derive_from_the_workbench_root():
    from workbench.core.errors import WorkbenchError

    assert issubclass(DictionaryError, WorkbenchError) and issubclass(DictionaryError, ValueError)


# -- dtypes, devices, directions, display ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_float32(dtype):
    d = make(d_in=D, d_sae=N, arch="jumprelu", threshold=torch.full((N,), 0.05), b_pre=randn(D, seed=9, scale=0.1),
             normalize="constant_norm_rescale")
    h = d.to(dtype)
    assert h.dtype == dtype and h.b_pre.dtype == dtype and h.threshold.dtype == dtype and d.dtype == torch.float32
    x = xs(4, 3, seed=91) * 20  # large norms: statistics are taken in float32
    recon, acts = h.forward(x)
    assert recon.dtype == dtype and acts.dtype == dtype
    r32, a32 = d.forward(x)
    tol = 0.05 if dtype == torch.float16 else 0.2
    assert (acts.float() - a32).abs().max() < tol * a32.abs().max()
    assert (recon.float() - r32).abs().max() < tol * r32.abs().max()


def test_shapes_directions_and_to():
    d = make(d_in=D, d_sae=N, arch="topk", k=3)
    x = xs(2, 3, seed=92)
    flat = d.encode(x.reshape(6, D)).reshape(2, 3, N)
    close(d.encode(x), npy(flat), atol=1e-6)
    close(d.encode(x[0, 0]), npy(flat[0, 0]), atol=1e-6)
    close(d.pre_acts(x), npy(x) @ npy(d.W_enc) + npy(d.b_enc))
    close(d.directions.norm(dim=-1), np.ones(N), atol=1e-6)
    close(d.directions * d.W_dec.norm(dim=-1, keepdim=True), npy(d.W_dec), atol=1e-6)
    e = d.to("cpu", torch.float64)
    assert e.dtype == torch.float64 and e.device.type == "cpu" and e.k == 3 and e is not d
    close(e.encode(x), npy(d.encode(x)), atol=1e-5)
    with pytest.raises(DictionaryError, match=r"last axis must be 8"):
        d.encode(torch.zeros(2, 7))


def test_repr_and_html():
    d = make(meta={"format": "saelens", "path": "/tmp/<b>x</b>"}, labels={1: "a"})
    assert repr(d).startswith("Dictionary(relu, resid_post.1, d_in=48, d_sae=32")
    page = d._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page and "1 latents labelled" in page
    tc = make(site="mlp_in.0", out_site="mlp_out.0", d_out=40)
    assert "mlp_in.0->mlp_out.0" in repr(tc) and "d_out=40" in repr(tc) and "transcoder" in tc._repr_html_()


def test_constructor_validation():
    with pytest.raises(DictionaryError, match="k, an integer"):
        make(arch="topk")
    with pytest.raises(DictionaryError, match="threshold"):
        make(arch="jumprelu")
    with pytest.raises(DictionaryError, match="b_gate, b_mag, r_mag"):
        make(arch="gated")
    with pytest.raises(DictionaryError, match="unknown architecture"):
        make(arch="sigmoid")
    with pytest.raises(DictionaryError, match=r"b_pre has shape \[5\]"):
        make(b_pre=torch.zeros(5))
    with pytest.raises(DictionaryError, match="set out_site for a transcoder"):
        make(d_out=40)
    with pytest.raises(DictionaryError, match="unknown site"):
        make(site="resid_middle.1")
    assert make(normalize="none").normalize is None


# -- bad input: clear errors ---------------------------------------------------------------------------------------
class _NotTensors:  # a pickled object inside a checkpoint
    pass


def test_missing_and_incomplete_folders(tmp_path):
    with pytest.raises(DictionaryError, match="no such file or folder"):
        load_dictionary(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DictionaryError, match="no dictionary found"):
        load_dictionary(tmp_path / "empty")
    (tmp_path / "cfg_only").mkdir()
    (tmp_path / "cfg_only" / "cfg.json").write_text("{}")
    with pytest.raises(DictionaryError, match="but no weights"):
        load_dictionary(tmp_path / "cfg_only")
    folder = write_saelens_v6(tmp_path / "no_cfg", "standard", saelens_tensors("standard"))
    (folder / "cfg.json").unlink()
    with pytest.raises(DictionaryError, match=r"cfg\.json is missing"):
        load_dictionary(folder)


@pytest.mark.parametrize("problem,message", [
    ("bad_json", r"not valid JSON"),
    ("no_d_sae", r"lacks the key 'd_sae'"),
    ("unknown_arch", r"unsupported SAELens architecture 'matching_pursuit'"),
    ("no_k", r"topk SAE needs 'k'"),
    ("no_hook", r"names no input hook; pass site="),
    ("missing_tensor", r"no tensor 'threshold' \(needed by a jumprelu SAE\); it has: W_dec, W_enc, b_dec, b_enc"),
    ("shape", r"tensor W_enc in sae_weights\.safetensors has shape \[8, 12\] but cfg\.json says d_in=8, d_sae=16"),
    ("truncated", r"not a readable safetensors file \(truncated"),
])
def test_saelens_errors(tmp_path, problem, message):
    arch = {"unknown_arch": "matching_pursuit", "no_k": "topk", "missing_tensor": "jumprelu"}.get(problem, "standard")
    t = saelens_tensors(arch)
    if problem == "missing_tensor":
        del t["threshold"]
    if problem == "shape":
        t["W_enc"] = t["W_enc"][:, :12]
    folder = write_saelens_v6(tmp_path / "s", arch, t)
    cfg = json.loads((folder / "cfg.json").read_text())
    if problem == "no_d_sae":
        del cfg["d_sae"]
    if problem == "no_k":
        del cfg["k"]
    if problem == "no_hook":
        del cfg["metadata"]["hook_name"]
    if problem == "shape":
        cfg["d_sae"] = N  # the tensors say 12
    (folder / "cfg.json").write_text(json.dumps(cfg) if problem != "bad_json" else json.dumps(cfg)[:-7])
    if problem == "truncated":
        data = (folder / "sae_weights.safetensors").read_bytes()
        (folder / "sae_weights.safetensors").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DictionaryError, match=message):
        load_dictionary(folder)


def test_sparsify_errors(tmp_path):
    write_sparsify(tmp_path / "layers.0")
    cfg = json.loads((tmp_path / "layers.0" / "cfg.json").read_text())
    (tmp_path / "layers.0" / "cfg.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "d_in"}))
    with pytest.raises(DictionaryError, match="lacks the key 'd_in'"):
        load_dictionary(tmp_path / "layers.0")
    write_sparsify(tmp_path / "layers.1", n=12)
    cfg = json.loads((tmp_path / "layers.1" / "cfg.json").read_text())
    (tmp_path / "layers.1" / "cfg.json").write_text(json.dumps({**cfg, "num_latents": 16}))
    with pytest.raises(DictionaryError, match=r"encoder\.weight in sae\.safetensors has shape \[12, 8\].*num_latents=16"):
        load_dictionary(tmp_path / "layers.1")
    write_sparsify(tmp_path / "renamed")
    with pytest.raises(DictionaryError, match="cannot map hook 'renamed'"):
        load_dictionary(tmp_path / "renamed")
    assert load_dictionary(tmp_path / "renamed", site="resid_post.0").site == "resid_post.0"


def test_dictionary_learning_errors(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save({"encoder.weight": torch.zeros(N, D), "cfg": _NotTensors()}, folder / "ae.pt")
    with pytest.raises(DictionaryError, match=r"not a plain state dict of tensors: it references .*_NotTensors"):
        load_dictionary(folder, site="resid_post.0")
    write_dl(tmp_path / "trunc", "AutoEncoder")
    data = (tmp_path / "trunc" / "ae.pt").read_bytes()
    (tmp_path / "trunc" / "ae.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DictionaryError, match=r"not a readable torch checkpoint \(truncated"):
        load_dictionary(tmp_path / "trunc")
    write_dl(tmp_path / "missing", "GatedAutoEncoder")
    sd = torch.load(tmp_path / "missing" / "ae.pt", weights_only=True)
    del sd["mag_bias"]
    torch.save(sd, tmp_path / "missing" / "ae.pt")
    with pytest.raises(DictionaryError, match=r"unrecognised dictionary_learning state dict|no tensor 'mag_bias'"):
        load_dictionary(tmp_path / "missing")
    write_dl(tmp_path / "size", "AutoEncoder")
    cfg = json.loads((tmp_path / "size" / "config.json").read_text())
    cfg["trainer"]["dict_size"] = 99
    (tmp_path / "size" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DictionaryError, match=r"config\.json says dict_size=99 but ae\.pt has dict_size=16"):
        load_dictionary(tmp_path / "size")
    (tmp_path / "dl_cfg_only").mkdir()
    (tmp_path / "dl_cfg_only" / "config.json").write_text("{}")
    with pytest.raises(DictionaryError, match=r"config\.json but no ae\.pt"):
        load_dictionary(tmp_path / "dl_cfg_only")
