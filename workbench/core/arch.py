"""The architecture map: where the standard sites (`workbench.core.sites`) live in each model family.

`ArchMap` gives attribute paths into a Hugging Face ``*ForCausalLM`` module; `infer_arch`
builds it for the Llama family (SmolLM2, Llama, Qwen2/3, Mistral, Gemma 2/3, OLMo), GPT-2 and
GPT-NeoX/Pythia. `resolve` is the one dotted-path getter (``resolve(hf, "model.layers")``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .sites import ALIASES, GLOBAL_SITES, LAYER_SITES, SITE_NAMES, WRITABLE, Site

__all__ = ["ArchMap", "infer_arch", "fill_dims", "fill_norms", "resolve", "Site", "SITE_NAMES", "LAYER_SITES", "GLOBAL_SITES",
           "WRITABLE", "ALIASES"]


def resolve(root: Any, path: str) -> Any:
    """``resolve(model, "model.layers")``: follow a dotted attribute path (works on nnsight envoys too)."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


@dataclass
class ArchMap:
    """Where the standard sites live in one Hugging Face model family.

    Paths are attribute paths from the HF ``*ForCausalLM`` module; the per-layer
    ones are relative to a layer. To support a new architecture, build one of
    these and pass it as ``load(..., arch=ArchMap(...))``.

    ``ln1`` and ``ln2`` (optional, per layer) are the pre-attention and pre-MLP norms, which the
    sites ``ln1_normalized``, ``resid_mid`` and ``ln2_normalized`` read; left empty, `fill_dims`
    finds them by their usual names (Gemma 2/3: ``pre_feedforward_layernorm`` is the pre-MLP norm),
    and a model without them (post-norm blocks, as OLMo 2) says so when those sites are read.
    """

    family: str
    layers: str
    embed: str
    attn: str
    attn_o_proj: str
    mlp: str
    mlp_out_proj: str
    final_norm: str
    unembed: str
    n_layers: int = 0
    n_heads: int = 0
    d_model: int = 0
    d_head: int = 0
    d_mlp: int = 0
    vocab: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    ln1: str = ""
    ln2: str = ""

    def check_layer(self, layer: int | None) -> None:
        if layer is None:
            return
        if not isinstance(layer, int) or not (0 <= layer < self.n_layers):
            raise IndexError(f"layer {layer!r} is out of range: this model has layers 0..{self.n_layers - 1}")

    def layer_list(self, layers: Any = None) -> list[int]:
        """Validated, sorted, unique layer indices (``None``: every layer; one int is a list of one).

        Negative indices count from the end like positions do (``-1`` is the last layer); the
        result holds only non-negative indices.
        """
        if layers is None:
            return list(range(self.n_layers))
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = [layers]
        out = []
        for L in layers:
            if isinstance(L, bool) or not isinstance(L, int):
                raise TypeError(f"layers are integers, not {L!r}")
            if -self.n_layers <= L < 0:
                L += self.n_layers
            self.check_layer(L)
            out.append(L)
        if not out:
            raise ValueError("no layers given")
        return sorted(set(out))

    def size(self, site: Site) -> int:
        """Length of the last axis at a site (what neuron/direction indices refer to)."""
        return {"neurons": self.d_mlp, "z": self.d_head, "logits": self.vocab}.get(site.name, self.d_model)


# family -> (layers, embed, attn, attn_o_proj, mlp, mlp_out_proj, final_norm, unembed)
_FAMILIES: dict[str, tuple[str, ...]] = {
    "llama": ("model.layers", "model.embed_tokens", "self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj", "model.norm", "lm_head"),
    "gpt2": ("transformer.h", "transformer.wte", "attn", "attn.c_proj", "mlp", "mlp.c_proj", "transformer.ln_f", "lm_head"),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.embed_in", "attention", "attention.dense", "mlp", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", "lm_head"),
}
_MODEL_TYPES = {
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
    "gemma2": "llama", "gemma3_text": "llama", "gemma3": "llama", "olmo": "llama", "olmo2": "llama",
    "phi3": "llama", "smollm3": "llama",
    "gpt2": "gpt2", "gpt_neox": "gpt_neox",
}


def infer_arch(hf_model: Any) -> ArchMap:
    """Build the ArchMap of a Hugging Face causal LM, or say what is missing."""
    cfg = getattr(hf_model, "config", None)
    if cfg is None:
        raise NotImplementedError(
            f"{type(hf_model).__name__} is not a Hugging Face causal LM: it has no `config` (model_type, sizes). "
            "Load a transformers *ForCausalLM model, or one with a config and arch=workbench.ArchMap(...)."
        )
    if getattr(cfg, "text_config", None) is not None and cfg.model_type in ("gemma3",):
        cfg = cfg.text_config
    mtype = getattr(cfg, "model_type", "?")
    fam = _MODEL_TYPES.get(mtype)
    paths = _FAMILIES.get(fam or "", None)
    if paths is None:
        # Try the Llama layout on unknown types that happen to follow it.
        paths, fam = _FAMILIES["llama"], f"llama-like ({mtype})"
    arch = ArchMap(fam, *paths)
    if fam == "gpt_neox" and not hasattr(hf_model, "lm_head") and hasattr(hf_model, "embed_out"):
        arch.unembed = "embed_out"  # transformers < 5
    missing = []
    for attr in ("layers", "embed", "final_norm", "unembed"):
        try:
            resolve(hf_model, getattr(arch, attr))
        except AttributeError:
            missing.append(f"{attr} ({getattr(arch, attr)})")
    if not missing:
        layer0 = resolve(hf_model, arch.layers)[0]
        for attr in ("attn", "attn_o_proj", "mlp", "mlp_out_proj"):
            try:
                resolve(layer0, getattr(arch, attr))
            except AttributeError:
                missing.append(f"{attr} (layer.{getattr(arch, attr)})")
    if missing:
        raise NotImplementedError(
            f"architecture {mtype!r} ({type(hf_model).__name__}) is not in the architecture map: "
            f"could not find {', '.join(missing)}. Declare it with "
            "load(model, arch=workbench.ArchMap(family=..., layers='model.layers', embed=..., attn=..., "
            "attn_o_proj=..., mlp=..., mlp_out_proj=..., final_norm=..., unembed=...))."
        )
    fill_dims(arch, hf_model)
    return arch


def fill_dims(arch: ArchMap, hf_model: Any) -> None:
    """Read the model's sizes into the map (from the modules, so configs need not agree)."""
    cfg = hf_model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    layers = resolve(hf_model, arch.layers)
    arch.n_layers = len(layers)
    arch.n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    arch.d_model = getattr(cfg, "hidden_size", None) or cfg.n_embd
    arch.d_head = getattr(cfg, "head_dim", None) or arch.d_model // arch.n_heads
    down = resolve(layers[0], arch.mlp_out_proj)
    w = down.weight
    # Linear stores [out, in]; GPT-2's Conv1D stores [in, out].
    arch.d_mlp = w.shape[0] if type(down).__name__ == "Conv1D" else w.shape[1]
    arch.vocab = resolve(hf_model, arch.unembed).weight.shape[0]
    fill_norms(arch, layers[0])


# Pre-norm blocks: the pre-attention norm and, in order of preference, the pre-MLP norm.
_LN1 = ("input_layernorm", "ln_1")
_LN2 = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2")


def fill_norms(arch: ArchMap, layer0: Any) -> None:
    """Fill ``arch.ln1`` / ``arch.ln2`` left empty from the first layer's module names.

    Only pre-norm blocks get them: without a pre-attention norm (OLMo 2 normalizes the outputs
    instead), ``post_attention_layernorm`` is no MLP-input norm and both stay empty.
    """
    def has(path: str) -> bool:
        try:
            resolve(layer0, path)
        except AttributeError:
            return False
        return True

    if not arch.ln1:
        arch.ln1 = next((n for n in _LN1 if has(n)), "")
    if not arch.ln2 and arch.ln1:
        arch.ln2 = next((n for n in _LN2 if has(n)), "")
