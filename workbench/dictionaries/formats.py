"""Read and write sparse dictionaries: SAELens, EleutherAI sparsify and dictionary_learning files.

``load_dictionary(path)`` recognises:

- **SAELens** folders: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``),
  v6 configs (``architecture``, ``metadata.hook_name``) and pre-6 flat ones (``hook_point``/
  ``hook_name``, ``activation_fn_str``); architectures standard, topk, jumprelu, gated,
  transcoder, skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder; Dunefsky-style
  transcoders (``out_hook_point`` and a ``b_dec_out`` tensor).
- **sparsify** folders: ``cfg.json`` + ``sae.safetensors``, named after the module they hook
  (``layers.15``, ``layers.15.mlp``); a parent of several loads with ``hookpoint="layers.15"``.
- **dictionary_learning** checkpoints: ``ae.pt`` (read with ``torch.load(weights_only=True)``
  only) + ``config.json``: AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder, AutoEncoderTopK,
  BatchTopKSAE, MatryoshkaBatchTopKSAE, AutoEncoderNew.

Hook names become workbench sites with `hook_to_site` (TransformerLens names, Hugging Face
module paths, dictionary_learning submodule names). ``save_saelens`` writes the SAELens v6 layout.

TransformerLens weight processing (`saelens_weight_processing`). A SAELens file records how its
model was loaded, ``model_from_pretrained_kwargs`` (v6: under ``metadata``; older: top level).
SAELens 3.19.2 and later load ``HookedTransformer.from_pretrained_no_processing(**kwargs)``
(every flag off unless the record turns it on); older versions (``sae_lens_training_version``
below 3.19.2) loaded ``from_pretrained(**kwargs)`` (fold_ln, center_writing_weights,
center_unembed and fold_value_biases on by default). What each flag does to the site read:

- ``center_writing_weights`` (LayerNorm models only, as in TransformerLens): the residual stream
  and everything writing to it (``embed``, ``resid_pre/mid/post``, ``attn_out``, ``mlp_out``) have
  mean 0 over d_model; reproduced exactly by subtracting the mean (`Dictionary.center_input`).
  The norms' ``hook_normalized`` values, ``mlp.hook_post`` and ``hook_z`` do not change.
- ``fold_ln`` and ``center_unembed``: no per-token site changes (the norms' ``hook_normalized``
  is taken before their weights either way; the unembedding is no dictionary site).
- ``fold_value_biases``: ``hook_z`` loses each head's value bias; a ``z`` dictionary is refused
  unless the model has no attention biases. ``refactor_factored_attn_matrices``: ``hook_z`` is
  re-based by an SVD; a ``z`` dictionary is refused.
What depends on the architecture (its SAELens name, its encoder tensors and config keys) comes
from its registered class (`workbench.dictionaries.architectures`). Importing this module
installs `load_dictionary` and `save_saelens` behind `Dictionary.load` / `Dictionary.save`.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.arch import resolve
from ..core.fileio import atomic_folder
from ..core.sites import NoHookError, Site, site_to_hook
from .architectures import ARCHITECTURES, SAELensSource, get_architecture, saelens_architectures
from .dictionary import Dictionary, set_file_io, uses_layernorm
from .errors import DictionaryError, DictionaryWarning

__all__ = ["load_dictionary", "save_saelens", "detect_format", "hook_to_site", "site_to_hook", "saelens_hook_name",
           "SAELENS_LAYOUT_VERSION", "saelens_weight_processing", "TL_PROCESSING_DEFAULTS"]

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SPARSITY = "sparsity.safetensors"
SAELENS_SCALER = "activation_scaler.json"
SPARSIFY_WEIGHTS = "sae.safetensors"
DL_WEIGHTS = "ae.pt"
DL_CFG = "config.json"
#: The SAELens config layout `save_saelens` follows (SAELens reads configs older than 6.0 differently).
SAELENS_LAYOUT_VERSION = "6.0.0"

# SAELens metadata worth carrying through a save (JSON values describing how the SAE was trained).
_SAELENS_KEEP = ("context_size", "prepend_bos", "dataset_path", "neuronpedia_id", "model_class_name",
                 "model_from_pretrained_kwargs", "exclude_special_tokens", "seqpos_slice")


# -- hook names <-> sites (TransformerLens names: the site table, `workbench.core.sites`) --------------
# Submodule of a layer -> (site of its output, site of its input or None)
_HF_SUB = {
    None: ("resid_post", "resid_pre"),
    "mlp": ("mlp_out", "mlp_in"), "feed_forward": ("mlp_out", "mlp_in"), "ffn": ("mlp_out", "mlp_in"),
    "mlp.down_proj": ("mlp_out", "neurons"), "mlp.c_proj": ("mlp_out", "neurons"),
    "mlp.dense_4h_to_h": ("mlp_out", "neurons"), "mlp.fc2": ("mlp_out", "neurons"),
    "self_attn": ("attn_out", None), "attn": ("attn_out", None), "attention": ("attn_out", None),
    "self_attn.o_proj": ("attn_out", "z"), "attn.c_proj": ("attn_out", "z"), "attention.dense": ("attn_out", "z"),
    "attn.out_proj": ("attn_out", "z"), "self_attn.dense": ("attn_out", "z"),
    "ln_2": ("mlp_in", "resid_mid"), "pre_feedforward_layernorm": ("mlp_in", "resid_mid"),
}
_HF_GLOBAL = {"embed_tokens": "embed", "wte": "embed", "embed_in": "embed", "norm": "final_norm",
              "ln_f": "final_norm", "final_layer_norm": "final_norm", "lm_head": "logits", "embed_out": "logits"}
_DL_NAMES = {"resid_post": "resid_post", "resid_out": "resid_post", "resid_pre": "resid_pre", "resid_in": "resid_pre",
             "mlp_out": "mlp_out", "attn_out": "attn_out", "mlp_in": "mlp_in", "neurons": "neurons"}
_NO_SITE = {"mlp.hook_pre": "MLP pre-activations (before the nonlinearity)",
            "mlp.hook_pre_linear": "the MLP's linear (up) branch", "attn.hook_q": "queries",
            "attn.hook_k": "keys", "attn.hook_v": "values", "attn.hook_attn_scores": "attention scores",
            "ln1.hook_scale": "the pre-attention norm's scale sqrt(var + eps), one number per token",
            "ln2.hook_scale": "the pre-MLP norm's scale sqrt(var + eps), one number per token",
            "hook_attn_in": "the attention input split per head", "hook_q_input": "the query input split per head",
            "hook_k_input": "the key input split per head", "hook_v_input": "the value input split per head"}
_NO_GLOBAL_SITE = {"ln_final.hook_scale": "the final norm's scale sqrt(var + eps), one number per token"}


def hook_to_site(name: str, io: str = "output") -> str:
    """The workbench site a hook name refers to.

    Accepts standard site names, TransformerLens hook names (``blocks.3.hook_resid_post``,
    ``blocks.3.mlp.hook_post``, ``blocks.3.ln2.hook_normalized`` ...), Hugging Face module paths
    (``model.layers.3`` -> its output ``resid_post.3``, or its input ``resid_pre.3`` with
    ``io="input"``; ``model.layers.3.mlp`` -> ``mlp_out.3`` / ``mlp_in.3``; a ``.input``/``.output``
    suffix overrides ``io``) and dictionary_learning names (``resid_post_layer_3``).
    """
    if io not in ("input", "output"):
        raise ValueError(f"io is 'input' or 'output', not {io!r}")
    s = str(name).strip()
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", s)
    if m and m.group(2) in _NO_SITE:
        raise DictionaryError(f"hook {name!r} reads {_NO_SITE[m.group(2)]}; no workbench site equals it exactly, "
                              "pass site=... if you know an equivalent one")
    if s in _NO_GLOBAL_SITE:
        raise DictionaryError(f"hook {name!r} reads {_NO_GLOBAL_SITE[s]}; no workbench site equals it exactly")
    if m and m.group(2) in ("mlp.hook_in", "mlp.hook_out"):  # TransformerBridge-style MLP hooks
        return f"{'mlp_in' if m.group(2).endswith('in') else 'mlp_out'}.{m.group(1)}"
    try:
        return str(Site.parse(s))
    except ValueError:
        pass
    m = re.fullmatch(r"(.+)\.(input|output)", s)
    if m:
        s, io = m.group(1), m.group(2)
    m = re.fullmatch(r"(?:.*?\.)?(?:layers|h|blocks|layer)\.(\d+)(?:\.(.+))?", s)
    if m:
        layer, sub = int(m.group(1)), m.group(2)
        if sub in _HF_SUB:
            out, inp = _HF_SUB[sub]
            target = out if io == "output" else inp
            if target is None:
                raise DictionaryError(f"the input of module {name!r} is not a workbench site; pass site=...")
            return f"{target}.{layer}"
    else:
        last = s.split(".")[-1]
        if last in _HF_GLOBAL and io == "output":
            return _HF_GLOBAL[last]
        m = re.fullmatch(r"([a-z_]+?)(?:_layer_?(\d+))?", s)
        if m and m.group(1) in _DL_NAMES and m.group(2) is not None:
            return f"{_DL_NAMES[m.group(1)]}.{int(m.group(2))}"
        if s == "embed":
            return "embed"
    raise DictionaryError(f"cannot map hook {name!r} to a workbench site; pass site='resid_post.3' (or another of "
                          "embed, resid_pre.L, attn_out.L, resid_mid.L, ln2_normalized.L, mlp_in.L, neurons.L, mlp_out.L, "
                          "resid_post.L)")


# -- low-level readers -----------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise DictionaryError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DictionaryError(f"{path} is not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DictionaryError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DictionaryError(f"{path} should hold a JSON object, not a {type(data).__name__}")
    return data


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import safe_open

    if not path.exists():
        raise DictionaryError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise DictionaryError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from None


def _read_pt(path: Path) -> dict[str, Tensor]:
    """A state dict from a torch checkpoint, never unpickling arbitrary objects."""
    if not path.exists():
        raise DictionaryError(f"{path} is missing")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"it references {m.group(1)}" if m else "it holds pickled Python objects"
        raise DictionaryError(
            f"{path} is not a plain state dict of tensors: {what}, and the workbench never unpickles "
            "arbitrary objects (torch.load(weights_only=True) refused it). Where you trust the file, re-save "
            "just the tensors: torch.save(module.state_dict(), path).") from None
    except Exception as exc:  # truncated zip, not a torch file at all, ...
        raise DictionaryError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): {exc}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        what = type(obj).__name__ if not isinstance(obj, dict) else "a dict with non-tensor values"
        raise DictionaryError(f"{path} does not hold a state dict of tensors (found {what})")
    return obj


def _need(sd: dict[str, Tensor], name: str, file: Path, why: str) -> Tensor:
    if name not in sd:
        raise DictionaryError(f"{file.name} has no tensor {name!r} (needed {why}); it has: {', '.join(sorted(sd))}")
    return sd[name]


def _check_shape(t: Tensor, name: str, shape: tuple[int, ...], file: Path, says: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise DictionaryError(f"tensor {name} in {file.name} has shape {list(t.shape)} but {says} "
                              f"(expected {list(shape)})")


def _int_key(cfg: dict[str, Any], key: str, file: Path) -> int:
    if key not in cfg:
        raise DictionaryError(f"{file} lacks the key {key!r}")
    v = cfg[key]
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise DictionaryError(f"{file}: {key!r} should be a positive integer, not {v!r}")
    return v


# -- detection -------------------------------------------------------------------------------------
def detect_format(path: str | Path) -> str | None:
    """``"saelens"``, ``"sparsify"``, ``"dictionary_learning"`` or None for a folder (or weights file)."""
    p = Path(path)
    if p.is_file():
        if p.name == SAELENS_WEIGHTS:
            return "saelens"
        if p.name == SPARSIFY_WEIGHTS:
            return "sparsify"
        if p.suffix in (".pt", ".pth"):
            return "dictionary_learning"
        return detect_format(p.parent) if p.name in (SAELENS_CFG, DL_CFG) else None
    if (p / SAELENS_WEIGHTS).exists():
        return "saelens"
    if (p / SPARSIFY_WEIGHTS).exists():
        return "sparsify"
    if (p / DL_WEIGHTS).exists():
        return "dictionary_learning"
    return None


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _children(folder: Path) -> list[str]:
    """Subfolders (one level) that hold a dictionary, in natural order."""
    try:
        subs = [c for c in folder.iterdir() if c.is_dir() and detect_format(c)]
    except OSError:
        return []
    return sorted((c.name for c in subs), key=_natural_key)


# -- TransformerLens weight processing recorded by SAELens ---------------------------------------------
#: TransformerLens's weight-processing flags, as ``HookedTransformer.from_pretrained`` defaults them.
TL_PROCESSING_DEFAULTS = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True,
                          "fold_value_biases": True, "refactor_factored_attn_matrices": False}
_NO_PROCESSING_SINCE = (3, 19, 2)  # SAELens loads from_pretrained_no_processing(**kwargs) from this version on
#: Sites whose TransformerLens values are mean-free under center_writing_weights (LayerNorm models).
_CENTRED_SITES = frozenset({"embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"})


def _version_tuple(v: Any) -> tuple[int, ...] | None:
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(v)) if v is not None else None
    return None if m is None else tuple(int(g or 0) for g in m.groups())


def saelens_weight_processing(cfg: dict[str, Any], where: str = "cfg.json") -> dict[str, bool] | None:
    """The TransformerLens weight processing a SAELens SAE's model was loaded with (the five
    `TL_PROCESSING_DEFAULTS` flags), from ``cfg``'s ``model_from_pretrained_kwargs`` and
    ``sae_lens_training_version``; None when the model was no HookedTransformer (``model_class_name``)."""
    md = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}

    def get(key: str) -> Any:
        return md[key] if key in md else cfg.get(key)

    if (get("model_class_name") or "HookedTransformer") not in ("HookedTransformer", "HookedSAETransformer"):
        return None
    kwargs = get("model_from_pretrained_kwargs")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise DictionaryError(f"{where}: model_from_pretrained_kwargs should be a JSON object, not {kwargs!r}")
    version = _version_tuple(get("sae_lens_training_version"))
    old = version is not None and version < _NO_PROCESSING_SINCE
    flags = dict(TL_PROCESSING_DEFAULTS) if old else dict.fromkeys(TL_PROCESSING_DEFAULTS, False)
    for key in TL_PROCESSING_DEFAULTS:
        if key in kwargs:
            flags[key] = bool(kwargs[key])
    return flags


def _has_attention_biases(model: Any) -> bool:
    """Whether layer 0's attention has biases on its inputs (value biases among them)."""
    arch = model.arch
    attn = resolve(resolve(model.hf, arch.layers)[0], arch.attn)
    out = arch.attn_o_proj[len(arch.attn) + 1:] if arch.attn_o_proj.startswith(arch.attn + ".") else arch.attn_o_proj
    return any(n.endswith("bias") and not n.startswith(out + ".") for n, _ in attn.named_parameters())


def _apply_processing(d: Dictionary, flags: dict[str, bool] | None, model: Any, where: str) -> Dictionary:
    """``d`` reading its site as TransformerLens fed it under ``flags``, or `DictionaryError` naming the setting."""
    if not flags:
        return d
    sites = [Site.parse(d.site).name] + ([Site.parse(d.out_site).name] if d.out_site else [])
    if "z" in sites and flags.get("refactor_factored_attn_matrices"):
        raise DictionaryError(f"{where}: the model was loaded with refactor_factored_attn_matrices=True "
                              "(model_from_pretrained_kwargs), which re-bases hook_z by an SVD of each head's W_V W_O; "
                              "the workbench does not reproduce it, so this hook_z dictionary would read another tensor")
    if "z" in sites and flags.get("fold_value_biases") and (model is None or _has_attention_biases(model)):
        why = ("the model has attention biases" if model is not None else
               "pass model=... to check that the model has no attention biases, where it changes nothing")
        raise DictionaryError(f"{where}: the model was loaded with fold_value_biases=True (model_from_pretrained_kwargs), "
                              "which removes each head's value bias from hook_z; the workbench does not reproduce it "
                              f"({why})")
    meta = dict(d.meta, tl_processing=dict(flags))
    centre = bool(flags.get("center_writing_weights"))
    if centre and model is not None:
        centre = uses_layernorm(model)  # TransformerLens centres LayerNorm models only
    elif centre:
        meta["centring_assumes_layernorm"] = True  # checked against the model by Dictionary.check
    c_in = centre and sites[0] in _CENTRED_SITES
    c_out = centre and sites[-1] in _CENTRED_SITES
    if not (c_in or c_out):
        meta.pop("centring_assumes_layernorm", None)
    return replace(d, center_input=c_in, center_output=c_out, meta=meta, labels=dict(d.labels))


# -- public loader ---------------------------------------------------------------------------------
def load_dictionary(path: str | Path, model: Any = None, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | str | None = None, site: str | None = None,
                    out_site: str | None = None, hookpoint: str | None = None,
                    tl_processing: dict[str, bool] | None = None) -> Dictionary:
    """Load a sparse dictionary, detecting its format (SAELens, sparsify, dictionary_learning).

    ``model``: check the dictionary fits it (`Dictionary.check`) and default ``device`` to its device.
    ``dtype``: convert (default: as stored). ``site``/``out_site``: override the sites read from the
    files. ``hookpoint``: the subfolder to load when ``path`` holds several (sparsify layout).
    ``tl_processing``: TransformerLens flags (``{"center_writing_weights": True}``) overriding what a
    SAELens file records (`saelens_weight_processing`), e.g. for an old file that records nothing.
    A SAELens dictionary reads its site as TransformerLens fed it under the recorded processing
    (centred for ``center_writing_weights`` on a LayerNorm model), or is refused naming the setting.
    """
    if tl_processing is not None:
        if not isinstance(tl_processing, dict) or not set(tl_processing) <= set(TL_PROCESSING_DEFAULTS):
            raise DictionaryError(f"tl_processing is a dict with keys among {', '.join(TL_PROCESSING_DEFAULTS)}, "
                                  f"not {tl_processing!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DictionaryError(f"no dictionary at {str(path)!r}: no such file or folder")
    if hookpoint is not None:
        base = p if p.is_dir() else p.parent
        if not (base / hookpoint).is_dir():
            choices = _children(base)
            raise DictionaryError(f"{base} has no hookpoint folder {hookpoint!r}; choices: "
                                  f"{', '.join(choices) if choices else '(none found)'}")
        p = base / hookpoint
    fmt = detect_format(p)
    if fmt is None:
        folder = p if p.is_dir() else p.parent
        choices = _children(folder) if p.is_dir() else []
        if len(choices) == 1:
            p, fmt = folder / choices[0], detect_format(folder / choices[0])
        elif choices:
            raise DictionaryError(f"{folder} holds {len(choices)} dictionaries; pick one with hookpoint=..., "
                                  f"one of: {', '.join(choices)}")
        elif p.is_dir() and (p / SAELENS_CFG).exists():
            raise DictionaryError(f"{p} has {SAELENS_CFG} but no weights: expected {SAELENS_WEIGHTS} (SAELens) "
                                  f"or {SPARSIFY_WEIGHTS} (sparsify)")
        elif p.is_dir() and (p / DL_CFG).exists():
            raise DictionaryError(f"{p} has {DL_CFG} but no {DL_WEIGHTS} (dictionary_learning)")
        else:
            raise DictionaryError(
                f"no dictionary found at {p}: expected a SAELens folder ({SAELENS_CFG} + {SAELENS_WEIGHTS}), a "
                f"sparsify folder ({SAELENS_CFG} + {SPARSIFY_WEIGHTS}) or a dictionary_learning checkpoint "
                f"({DL_WEIGHTS} + {DL_CFG})")
    loader = {"saelens": _load_saelens, "sparsify": _load_sparsify, "dictionary_learning": _load_dl}[fmt]
    d = loader(p, site=site, out_site=out_site)
    if fmt == "saelens" or tl_processing is not None:
        cfg = d.meta.get("cfg") if fmt == "saelens" else {}
        flags = saelens_weight_processing(cfg, str(d.meta.get("path", p)))
        if tl_processing is not None:
            flags = {**(flags or dict.fromkeys(TL_PROCESSING_DEFAULTS, False)),
                     **{k: bool(v) for k, v in tl_processing.items()}}
        d = _apply_processing(d, flags, model, str(d.meta.get("path", p)))
    if device is None and model is not None:
        device = _model_device(model)
    if isinstance(dtype, str):
        dtype = _DTYPES.get(dtype.replace("torch.", ""))
        if dtype is None:
            raise DictionaryError("dtype is one of float32, float16, bfloat16, float64")
    if device is not None or dtype is not None:
        d = d.to(device=device, dtype=dtype)
    if model is not None:
        d.check(model)
    return d


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _model_device(model: Any) -> torch.device:
    try:
        dev = next(model.hf.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")
    return torch.device("cpu") if dev.type == "meta" else dev


def _build(file: Path, **kw: Any) -> Dictionary:
    try:
        return Dictionary(**kw)
    except DictionaryError as exc:
        raise DictionaryError(f"{file}: {exc}") from None


def _sites(hook: Any, hook_out: Any, transcoder: bool, site: str | None, out_site: str | None,
           file: Path, hf_in: Any = None, hf_out: Any = None) -> tuple[str, str | None]:
    """Workbench sites from hook names (TransformerLens first, then HF module paths)."""

    def one(name: Any, hf: Any, io: str, what: str) -> str:
        errors = []
        for cand in (name, hf):
            if isinstance(cand, str) and cand:
                try:
                    return hook_to_site(cand, io=io)
                except DictionaryError as exc:
                    errors.append(str(exc))
        if errors:
            raise DictionaryError(f"{file}: {errors[0]}")
        raise DictionaryError(f"{file} names no {what} hook; pass site='resid_post.3' (or the right site)")

    s = site if site is not None else one(hook, hf_in, "input" if transcoder else "output", "input")
    o = None
    if transcoder:
        if out_site is not None:
            o = out_site
        elif hook_out or hf_out:
            o = one(hook_out, hf_out, "output", "output")
        else:
            o = s
    return s, o


# -- SAELens ---------------------------------------------------------------------------------------
def _load_saelens(p: Path, *, site: str | None, out_site: str | None) -> Dictionary:
    folder = p if p.is_dir() else p.parent
    cfg_file, w_file = folder / SAELENS_CFG, folder / SAELENS_WEIGHTS
    cfg = _read_json(cfg_file)
    md = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}

    def get(key: str, default: Any = None) -> Any:
        return cfg[key] if key in cfg else md.get(key, default)

    wb = md.get("workbench") if isinstance(md.get("workbench"), dict) else {}
    act_fn = cfg.get("activation_fn", cfg.get("activation_fn_str")) or "relu"
    raw_arch = cfg.get("architecture")
    if raw_arch is None:
        raw_arch = "topk" if act_fn == "topk" else "standard"
    elif raw_arch == "standard" and act_fn == "topk":
        raw_arch = "topk"
    table = saelens_architectures()
    if not isinstance(raw_arch, str) or raw_arch not in table:
        raise DictionaryError(f"{cfg_file}: unknown or unsupported SAELens architecture {raw_arch!r}; supported: "
                              f"{', '.join(sorted(table))}")
    if act_fn not in ("relu", "topk"):
        raise DictionaryError(f"{cfg_file}: unsupported activation function {act_fn!r} (relu and topk are supported)")
    arch, transcoder, skip = table[raw_arch]
    if wb.get("architecture") in ARCHITECTURES and raw_arch in ARCHITECTURES[wb["architecture"]].saelens_names():
        arch = wb["architecture"]  # e.g. nmf, which SAELens reads as a standard SAE
    impl = get_architecture(arch)
    d_in = _int_key(cfg, "d_in", cfg_file)
    d_sae = _int_key(cfg, "d_sae", cfg_file)
    sd = _read_safetensors(w_file)
    dunefsky = "b_dec_out" in sd
    hook_out = get("hook_name_out") or get("hook_point_out") or get("out_hook_point")
    d_out = _int_key(cfg, "d_out", cfg_file) if "d_out" in cfg else d_in
    transcoder = transcoder or dunefsky or bool(cfg.get("is_transcoder")) or bool(hook_out) or d_out != d_in
    says = f"{cfg_file.name} says d_in={d_in}, d_sae={d_sae}" + (f", d_out={d_out}" if transcoder else "")

    W_enc = _need(sd, "W_enc", w_file, "by every SAE")
    W_dec = _need(sd, "W_dec", w_file, "by every SAE")
    _check_shape(W_enc, "W_enc", (d_in, d_sae), w_file, says)
    _check_shape(W_dec, "W_dec", (d_sae, d_out), w_file, says)
    if dunefsky:
        b_pre = _need(sd, "b_dec", w_file, "as the input centering of a transcoder with b_dec_out")
        _check_shape(b_pre, "b_dec", (d_in,), w_file, says)
        b_dec = sd["b_dec_out"]
        _check_shape(b_dec, "b_dec_out", (d_out,), w_file, says)
    else:
        b_dec = _need(sd, "b_dec", w_file, "by every SAE")
        _check_shape(b_dec, "b_dec", (d_out,), w_file, says)
        apply_b = cfg.get("apply_b_dec_to_input", True)
        b_pre = b_dec if (apply_b and not transcoder) else None
    vec = (d_sae,)

    def latent(name: str, why: str, t: Tensor | None = None) -> Tensor:
        t = _need(sd, name, w_file, why) if t is None else t
        _check_shape(t, name, vec, w_file, says)
        return t

    src = SAELensSource(name=raw_arch, cfg=cfg, tensors=sd, latent=latent, where=str(cfg_file))
    fields: dict[str, Any] = {"W_enc": W_enc, "W_dec": W_dec, **impl.read_saelens(src)}
    W_skip = None
    if skip or "W_skip" in sd:
        W_skip = _need(sd, "W_skip", w_file, "by a skip transcoder")
        _check_shape(W_skip, "W_skip", (d_out, d_in), w_file, says + " (W_skip is stored [d_out, d_in])")
        W_skip = W_skip.T
    if "scaling_factor" in sd and not torch.allclose(sd["scaling_factor"].float(), torch.ones(1)):
        if not cfg.get("finetuning_scaling_factor"):
            raise DictionaryError(f"{w_file.name} has a scaling_factor tensor that is not all ones but "
                                  f"{cfg_file.name} has finetuning_scaling_factor false (SAELens refuses this too)")
        _check_shape(sd["scaling_factor"], "scaling_factor", vec, w_file, says)
        fields["W_dec"] = W_dec * sd["scaling_factor"].to(W_dec.dtype)[:, None]  # decode used acts * scaling_factor
    impl.finish_saelens(src, fields)

    normalize = cfg.get("normalize_activations")
    if isinstance(normalize, bool):  # pre-6 boolean
        normalize = "expected_average_only_in" if normalize else None
    if normalize in ("none", None):
        normalize = None
    if normalize == "covariance_whitening":
        raise DictionaryError(f"{cfg_file}: normalize_activations 'covariance_whitening' is not supported "
                              "(fold the whitening into the weights with SAELens first)")
    if normalize not in (None, "constant_norm_rescale", "layer_norm", "expected_average_only_in"):
        raise DictionaryError(f"{cfg_file}: unknown normalize_activations {normalize!r}")
    norm_scale = None
    if normalize == "expected_average_only_in":
        norm_scale = cfg.get("norm_scaling_factor")
        scaler = folder / SAELENS_SCALER
        if norm_scale is None and scaler.exists():
            norm_scale = _read_json(scaler).get("scaling_factor")

    hook = get("hook_name") or get("hook_point")
    if wb.get("site") and site is None:
        site = wb["site"]
        if transcoder and out_site is None:
            out_site = wb.get("out_site")
    s, o = _sites(hook, hook_out, transcoder, site, out_site, cfg_file, get("hf_hook_name"), get("hf_hook_name_out"))
    meta: dict[str, Any] = {"format": "saelens", "path": str(folder), "cfg": cfg, "hook_name": hook,
                            "architecture_name": raw_arch}
    if hook_out:
        meta["hook_name_out"] = hook_out
    if get("model_name"):
        meta["model_name"] = get("model_name")
    if get("hook_head_index") is not None:
        meta["head_index"] = get("hook_head_index")
    if cfg.get("reshape_activations") == "hook_z":
        meta["reshape"] = "hook_z"
    sparsity_file = folder / SAELENS_SPARSITY
    if sparsity_file.exists():
        sp = _read_safetensors(sparsity_file).get("sparsity")
        if sp is not None and tuple(sp.shape) == vec:
            meta["sparsity"] = sp.float()
        else:
            warnings.warn(f"{sparsity_file} has no 'sparsity' tensor of shape [{d_sae}]; ignored",
                          DictionaryWarning, stacklevel=3)
    labels = wb.get("labels") or {}
    return _build(cfg_file, b_dec=b_dec, architecture=arch, site=s, out_site=o, b_pre=b_pre, normalize=normalize,
                  norm_scale=norm_scale, W_skip=W_skip, labels=labels, meta=meta, **fields)


# -- sparsify --------------------------------------------------------------------------------------
def _load_sparsify(p: Path, *, site: str | None, out_site: str | None) -> Dictionary:
    folder = p if p.is_dir() else p.parent
    cfg_file, w_file = folder / SAELENS_CFG, folder / SPARSIFY_WEIGHTS
    cfg = _read_json(cfg_file)
    d_in = _int_key(cfg, "d_in", cfg_file)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise DictionaryError(f"{cfg_file}: sparsify activation {activation!r} is not supported (topk is)")
    k = cfg.get("k", 32)
    transcode = bool(cfg.get("transcode", False))
    sd = _read_safetensors(w_file)
    enc_w = _need(sd, "encoder.weight", w_file, "as the encoder")
    n = cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32))
    says = f"{cfg_file.name} says d_in={d_in}, num_latents={n}"
    _check_shape(enc_w, "encoder.weight", (n, d_in), w_file, says)
    enc_b = _need(sd, "encoder.bias", w_file, "as the encoder bias")
    _check_shape(enc_b, "encoder.bias", (n,), w_file, says)
    W_dec = _need(sd, "W_dec", w_file, "as the decoder")
    _check_shape(W_dec, "W_dec", (n, d_in), w_file, says)
    b_dec = _need(sd, "b_dec", w_file, "as the decoder bias")
    _check_shape(b_dec, "b_dec", (d_in,), w_file, says)
    W_skip = None
    if cfg.get("skip_connection") or "W_skip" in sd:
        W_skip = _need(sd, "W_skip", w_file, "by skip_connection")
        _check_shape(W_skip, "W_skip", (d_in, d_in), w_file, says)
        W_skip = W_skip.T  # sparsify adds x @ W_skip.mT
    normalize, norm_scale = None, None
    if cfg.get("normalize_io"):
        in_norm = float(_need(sd, "in_norm", w_file, "by normalize_io"))
        out_norm = float(_need(sd, "out_norm", w_file, "by normalize_io"))
        if not math.isclose(in_norm, out_norm, rel_tol=1e-6):
            raise DictionaryError(f"{cfg_file}: normalize_io with different input and output norms "
                                  f"({in_norm} vs {out_norm}) is not supported")
        normalize, norm_scale = "expected_average_only_in", math.sqrt(d_in) / in_norm
    hookpoint = folder.name
    s, o = _sites(hookpoint, hookpoint if transcode else None, transcode, site, out_site, folder)
    meta = {"format": "sparsify", "path": str(folder), "cfg": cfg, "hook_name": hookpoint}
    return _build(cfg_file, W_enc=enc_w.T, b_enc=enc_b, W_dec=W_dec, b_dec=b_dec, architecture="topk", site=s,
                  out_site=o, k=k, b_pre=None if transcode else b_dec, normalize=normalize, norm_scale=norm_scale,
                  W_skip=W_skip, meta=meta)


# -- dictionary_learning ---------------------------------------------------------------------------
_DL_CLASSES = ("AutoEncoder", "AutoEncoderNew", "GatedAutoEncoder", "JumpReluAutoEncoder", "AutoEncoderTopK",
               "BatchTopKSAE", "MatryoshkaBatchTopKSAE")


def _dl_class(sd: dict[str, Tensor], named: Any) -> str:
    if isinstance(named, str):
        name = named.rsplit(".", 1)[-1].strip("'>")
        if name in _DL_CLASSES:
            return name
    keys = set(sd)
    if {"gate_bias", "mag_bias", "r_mag"} <= keys:
        return "GatedAutoEncoder"
    if {"W_enc", "k", "group_sizes"} <= keys:
        return "MatryoshkaBatchTopKSAE"
    if {"W_enc", "threshold"} <= keys and "k" not in keys:
        return "JumpReluAutoEncoder"
    if {"encoder.weight", "k"} <= keys:
        return "AutoEncoderTopK"
    if {"encoder.weight", "decoder.bias"} <= keys:
        return "AutoEncoderNew"
    if {"encoder.weight", "bias"} <= keys:
        return "AutoEncoder"
    raise DictionaryError(f"unrecognised dictionary_learning state dict (keys: {', '.join(sorted(keys))}); "
                          f"supported classes: {', '.join(_DL_CLASSES)}")


def _load_dl(p: Path, *, site: str | None, out_site: str | None) -> Dictionary:
    pt = p if p.is_file() else p / DL_WEIGHTS
    cfg_file = pt.parent / DL_CFG
    cfg = _read_json(cfg_file) if cfg_file.exists() else {}
    tr = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    sd = _read_pt(pt)
    cls = _dl_class(sd, tr.get("dict_class"))
    need = lambda name: _need(sd, name, pt, f"by {cls}")  # noqa: E731
    kw: dict[str, Any] = {}
    k = None
    if cls in ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE"):
        enc = need("encoder.weight")
        W_enc, W_dec = enc.T, need("decoder.weight").T
        b_enc = need("encoder.bias")
        if cls == "AutoEncoder":
            b_dec = need("bias")
            b_pre = b_dec
        elif cls == "AutoEncoderNew":
            b_dec, b_pre = need("decoder.bias"), None
        else:
            b_dec = need("b_dec")
            b_pre = b_dec
    elif cls == "GatedAutoEncoder":
        W_enc, W_dec = need("encoder.weight").T, need("decoder.weight").T
        b_dec = need("decoder_bias")
        b_pre = b_dec
        kw = {"b_gate": need("gate_bias"), "b_mag": need("mag_bias"), "r_mag": need("r_mag")}
        b_enc = kw["b_gate"]
    else:  # JumpReluAutoEncoder, MatryoshkaBatchTopKSAE: W_enc [d_in, d_sae] parameters
        W_enc, b_enc, W_dec, b_dec = need("W_enc"), need("b_enc"), need("W_dec"), need("b_dec")
        b_pre = b_dec if cls == "MatryoshkaBatchTopKSAE" else None
    d_in, d_sae = W_enc.shape
    if W_dec.shape != (d_sae, d_in) or b_dec.shape != (d_in,) or b_enc.shape != (d_sae,):
        raise DictionaryError(f"{pt}: inconsistent {cls} tensors: encoder [d_in={d_in}, d_sae={d_sae}], decoder "
                              f"{list(W_dec.shape)} (as [d_sae, d_in]), biases {list(b_enc.shape)} and "
                              f"{list(b_dec.shape)}")
    for key, val in (("activation_dim", d_in), ("dict_size", d_sae)):
        if key in tr and tr[key] != val:
            raise DictionaryError(f"{cfg_file.name} says {key}={tr[key]} but {pt.name} has {key}={val} "
                                  f"(encoder shape [d_in={d_in}, d_sae={d_sae}])")
    arch = "relu"
    meta: dict[str, Any] = {"format": "dictionary_learning", "path": str(pt), "cfg": cfg, "dict_class": cls}
    if cls == "GatedAutoEncoder":
        arch = "gated"
    elif cls == "JumpReluAutoEncoder":
        arch, kw["threshold"] = "jumprelu", need("threshold")
    elif cls in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        k = int(need("k").item())
        thr = float(sd["threshold"].item()) if "threshold" in sd and sd["threshold"].numel() == 1 else -1.0
        meta["threshold"] = thr
        if cls != "AutoEncoderTopK" and thr >= 0:
            # BatchTopK-style encode (use_threshold=True): relu(pre) * (relu(pre) > threshold), a jumprelu
            arch, kw["threshold"] = "jumprelu", torch.full((d_sae,), thr, dtype=W_enc.dtype)
            k = None
        else:
            arch = "topk"  # AutoEncoderTopK.encode; a BatchTopK without a learned threshold falls back to per-token top-k
    if cls == "AutoEncoder":  # AutoEncoder.from_pretrained normalizes decoder columns by default
        norms = W_dec.float().norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms)):
            W_dec = (W_dec.float() / norms[:, None]).to(W_dec.dtype)
            W_enc = (W_enc.float() * norms).to(W_enc.dtype)
            b_enc = (b_enc.float() * norms).to(b_enc.dtype)
            meta["decoder_normalized"] = True
    hook = tr.get("submodule_name")
    if site is None and not hook:
        raise DictionaryError(f"{pt}: no {DL_CFG} with trainer.submodule_name beside it to say which site the "
                              "dictionary reads; pass site='resid_post.3' (or the right site)")
    s, o = _sites(hook, None, out_site is not None, site, out_site, cfg_file if cfg else pt)
    if tr.get("lm_name"):
        meta["model_name"] = tr["lm_name"]
    if hook:
        meta["hook_name"] = hook
    return _build(pt, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, architecture=arch, site=s, out_site=o,
                  k=k, b_pre=b_pre, meta=meta, **kw)


# -- writer ----------------------------------------------------------------------------------------
def saelens_hook_name(site: str) -> str:
    """The ``hook_name`` a SAELens file gets for ``site``: its exact TransformerLens hook, else the site's own name.

    ``mlp_in`` and ``final_norm`` (after the norm's weight) have no TransformerLens hook: writing
    ``ln2.hook_normalized`` for them would make TransformerLens feed the dictionary another tensor,
    so their files name the workbench site, which the workbench loads back and TransformerLens refuses.
    """
    try:
        return site_to_hook(site)
    except NoHookError:
        return str(Site.parse(site))


def save_saelens(d: Dictionary, path: str | Path) -> Path:
    """Write ``d`` as a SAELens v6 folder (cfg.json + sae_weights.safetensors [+ sparsity.safetensors]).

    Things SAELens cannot express are folded into the weights with the same outputs: an input
    centering ``b_pre`` other than ``b_dec`` (into the encoder biases) and a known
    ``expected_average_only_in`` scale (into W_enc, W_dec, b_dec). Topk and gated transcoders, which
    SAELens has no class for, are written with the SAE architecture name plus ``d_out`` and
    ``metadata.hook_name_out``; skip connections are stored as ``W_skip [d_out, d_in]``.
    """
    from safetensors.torch import save_file

    impl = get_architecture(d.architecture)
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise DictionaryError(f"cannot save a dictionary to {folder}: it is a file, not a folder")
    dt = d.dtype
    f64 = {n: (None if getattr(d, n) is None else getattr(d, n).detach().to("cpu", torch.float64))
           for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "b_mag", "r_mag", "b_pre", "W_skip")}
    normalize = d.normalize
    same_center = d.b_pre is not None and d.b_pre.shape == d.b_dec.shape and torch.equal(d.b_pre, d.b_dec)
    if normalize == "expected_average_only_in" and d.norm_scale is not None:
        s = d.norm_scale
        f64["W_enc"] = f64["W_enc"] * s
        f64["W_dec"] = f64["W_dec"] / s
        f64["b_dec"] = f64["b_dec"] / s
        if f64["b_pre"] is not None:
            f64["b_pre"] = f64["b_pre"] / s
        normalize = None
    apply_b = bool(same_center and not d.is_transcoder)
    if f64["b_pre"] is not None and not apply_b:  # fold the centering into the encoder biases
        impl.fold_input_shift(f64, f64["b_pre"] @ f64["W_enc"])
    name = impl.saelens_name(d.is_transcoder, d.W_skip is not None)
    tensors = {"W_enc": f64["W_enc"], "W_dec": f64["W_dec"], "b_dec": f64["b_dec"], **impl.saelens_tensors(f64)}
    if f64["W_skip"] is not None:
        tensors["W_skip"] = f64["W_skip"].T
    tensors = {k: v.to(dt).contiguous() for k, v in tensors.items()}

    src_cfg = d.meta.get("cfg") if isinstance(d.meta.get("cfg"), dict) else {}
    src_md = src_cfg.get("metadata") if isinstance(src_cfg.get("metadata"), dict) else src_cfg
    metadata: dict[str, Any] = {k: src_md[k] for k in _SAELENS_KEEP if k in src_md and _jsonable(src_md[k])}
    metadata.update({
        "sae_lens_version": SAELENS_LAYOUT_VERSION, "sae_lens_training_version": None,
        "model_name": d.meta.get("model_name"), "hook_name": saelens_hook_name(d.site),
        "hook_head_index": d.meta.get("head_index"),
    })
    if d.is_transcoder:
        metadata["hook_name_out"] = saelens_hook_name(d.out_site)  # type: ignore[arg-type]
    kw = dict(metadata.get("model_from_pretrained_kwargs") or {})
    flags = d.meta.get("tl_processing")
    if isinstance(flags, dict) and (any(flags.values()) or kw):
        kw.update({k: bool(v) for k, v in flags.items()})  # explicit: SAELens loads from_pretrained_no_processing(**kw)
    if d.center_input or d.center_output:
        kw["center_writing_weights"] = True
    if kw:
        metadata["model_from_pretrained_kwargs"] = kw
    metadata["workbench"] = {
        "version": _version(), "site": d.site, "out_site": d.out_site, "architecture": d.architecture,
        "source_format": d.meta.get("format"), "labels": {str(i): v for i, v in sorted(d.labels.items())},
    }
    cfg: dict[str, Any] = {
        "architecture": name, "d_in": d.d_in, "d_sae": d.d_sae, "dtype": str(dt).replace("torch.", ""),
        "device": "cpu", "apply_b_dec_to_input": apply_b, "normalize_activations": normalize or "none",
        "reshape_activations": "hook_z" if d.meta.get("reshape") == "hook_z" else "none",
    }
    cfg.update(impl.saelens_config(d))
    if d.is_transcoder:
        cfg["d_out"] = d.d_out
    cfg["metadata"] = metadata
    # into a temporary sibling folder, swapped in once complete: a crash mid-save leaves the old folder
    with atomic_folder(folder, owned=(SAELENS_WEIGHTS, SAELENS_SPARSITY, SAELENS_CFG)) as tmp:
        save_file(tensors, str(tmp / SAELENS_WEIGHTS))
        sp = d.meta.get("sparsity")
        if isinstance(sp, Tensor) and tuple(sp.shape) == (d.d_sae,):
            save_file({"sparsity": sp.detach().to("cpu", torch.float32).contiguous()}, str(tmp / SAELENS_SPARSITY))
        (tmp / SAELENS_CFG).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return folder


def _version() -> str | None:
    """The installed workbench version (None when running from an uninstalled source tree)."""
    try:
        return metadata.version("interp-workbench")
    except metadata.PackageNotFoundError:
        return None


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


set_file_io(save=save_saelens, load=load_dictionary)
