"""The architecture map: one set of standard names for every supported model family.

A `Site` names an activation: ``Site("resid_post", 3)`` or the string
``"resid_post.3"`` (TransformerLens hook names such as ``"blocks.3.hook_resid_post"``
are accepted too). `ArchMap` says where each site lives in a Hugging Face model.

Standard names (shapes for batch b, sequence s):

===============  =====================================================  ===============
name             what it is                                             shape
===============  =====================================================  ===============
``embed``        token embeddings (embedding module output)             [b, s, d_model]
``resid_pre``    residual stream entering layer L                       [b, s, d_model]
``attn_out``     attention block output of layer L                      [b, s, d_model]
``z``            per-head outputs before the output projection          [b, s, H, d_head]
``head_out``     per-head contributions after the output projection     [b, s, H, d_model]
``pattern``      attention probabilities (eager attention, exact)       [b, H, s, s]
``mlp_in``       MLP input (after the pre-MLP norm; transcoders read it)  [b, s, d_model]
``mlp_out``      MLP output of layer L                                  [b, s, d_model]
``neurons``      MLP neurons: input to the MLP output projection        [b, s, d_mlp]
``resid_post``   residual stream leaving layer L                        [b, s, d_model]
``final_norm``   output of the final norm                               [b, s, d_model]
``logits``       unembedding output                                     [b, s, vocab]
===============  =====================================================  ===============
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

LAYER_SITES = ("resid_pre", "z", "head_out", "attn_out", "pattern", "mlp_in", "neurons", "mlp_out", "resid_post")
GLOBAL_SITES = ("embed", "final_norm", "logits")
SITE_NAMES = ("embed",) + LAYER_SITES + ("final_norm", "logits")
#: Sites whose values can be written (interventions); the others are derived or read-only.
WRITABLE = frozenset({"embed", "resid_pre", "z", "attn_out", "mlp_in", "neurons", "mlp_out", "resid_post", "final_norm", "logits"})

ALIASES = {
    "mlp_post": "neurons",
    "hook_mlp_post": "neurons",
    "hook_post": "neurons",
    "attn_probs": "pattern",
    "hook_pattern": "pattern",
    "hook_z": "z",
    "hook_result": "head_out",
    "hook_resid_pre": "resid_pre",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "hook_mlp_in": "mlp_in",
    "ln2.hook_normalized": "mlp_in",
    "hook_embed": "embed",
    "ln_final.hook_normalized": "final_norm",
}

# Execution order of sites inside one layer (nnsight reads must follow forward order).
_ORDER = {name: i for i, name in enumerate(LAYER_SITES)}
_ORDER["pattern"] = _ORDER["attn_out"]  # same module output as attn_out


@dataclass(frozen=True, order=True)
class Site:
    """An activation site: a standard name and, for per-layer sites, a layer index."""

    name: str
    layer: int | None = None

    @classmethod
    def parse(cls, spec: str | Site | tuple) -> Site:
        """Parse ``"resid_post.3"``, ``"blocks.3.hook_resid_post"``, ``("neurons", 3)`` or a Site."""
        if isinstance(spec, Site):
            site = spec
        elif isinstance(spec, tuple):
            site = cls(ALIASES.get(spec[0], spec[0]), None if len(spec) < 2 else spec[1])
        elif isinstance(spec, str):
            m = re.fullmatch(r"blocks\.(\d+)\.(?:mlp\.|attn\.)?(hook_\w+|ln2\.hook_normalized)", spec)
            if m:
                site = cls(ALIASES.get(m.group(2), m.group(2)), int(m.group(1)))
            elif spec in ALIASES or spec in SITE_NAMES:  # a bare layer site gets "needs a layer" below
                site = cls(ALIASES.get(spec, spec), None)
            else:
                m = re.fullmatch(r"([a-z_]+)\.(-?\d+)", spec)  # negative: parsed, then out of range
                if not m:
                    raise ValueError(f"cannot parse site {spec!r}; use e.g. 'resid_post.3' or 'logits'")
                site = cls(ALIASES.get(m.group(1), m.group(1)), int(m.group(2)))
        else:
            raise TypeError(f"a site is a string, tuple or Site, not {type(spec).__name__}")
        if site.name not in SITE_NAMES:
            raise ValueError(f"unknown site {site.name!r}; standard names: {', '.join(SITE_NAMES)}")
        if site.name in LAYER_SITES and site.layer is None:
            raise ValueError(f"site {site.name!r} needs a layer, e.g. '{site.name}.0'")
        if site.name in GLOBAL_SITES and site.layer is not None:
            raise ValueError(f"site {site.name!r} takes no layer")
        return site

    def __str__(self) -> str:
        return self.name if self.layer is None else f"{self.name}.{self.layer}"

    @property
    def order(self) -> tuple[int, int]:
        """Forward-execution order key."""
        if self.name == "embed":
            return (-1, 0)
        if self.name in ("final_norm", "logits"):
            return (10**9, 0 if self.name == "final_norm" else 1)
        return (self.layer, _ORDER[self.name])  # type: ignore[return-value]


@dataclass
class ArchMap:
    """Where the standard sites live in one Hugging Face model family.

    Paths are attribute paths from the HF ``*ForCausalLM`` module; the per-layer
    ones are relative to a layer. To support a new architecture, build one of
    these and pass it as ``load(..., arch=ArchMap(...))``.
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

    def check_layer(self, layer: int | None) -> None:
        if layer is None:
            return
        if not isinstance(layer, int) or not (0 <= layer < self.n_layers):
            raise IndexError(f"layer {layer!r} is out of range: this model has layers 0..{self.n_layers - 1}")

    def layer_list(self, layers: Any = None) -> list[int]:
        """Validated, sorted, unique layer indices (``None``: every layer; one int is a list of one)."""
        if layers is None:
            return list(range(self.n_layers))
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = [layers]
        out = []
        for L in layers:
            if isinstance(L, bool) or not isinstance(L, int):
                raise TypeError(f"layers are integers, not {L!r}")
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


def _get(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


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
            _get(hf_model, getattr(arch, attr))
        except AttributeError:
            missing.append(f"{attr} ({getattr(arch, attr)})")
    if not missing:
        layer0 = _get(hf_model, arch.layers)[0]
        for attr in ("attn", "attn_o_proj", "mlp", "mlp_out_proj"):
            try:
                _get(layer0, getattr(arch, attr))
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
    layers = _get(hf_model, arch.layers)
    arch.n_layers = len(layers)
    arch.n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    arch.d_model = getattr(cfg, "hidden_size", None) or cfg.n_embd
    arch.d_head = getattr(cfg, "head_dim", None) or arch.d_model // arch.n_heads
    down = _get(layers[0], arch.mlp_out_proj)
    w = down.weight
    # Linear stores [out, in]; GPT-2's Conv1D stores [in, out].
    arch.d_mlp = w.shape[0] if type(down).__name__ == "Conv1D" else w.shape[1]
    arch.vocab = _get(hf_model, arch.unembed).weight.shape[0]
