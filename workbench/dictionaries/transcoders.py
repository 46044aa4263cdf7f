"""Transcoder sets: per-layer transcoders (PLT) or a cross-layer transcoder (CLT) behind one interface.

    tset = wb.train_transcoders(model, layers="0-5", folder="runs/tc")   # resumes per layer
    tset = wb.load_transcoders("runs/tc", model=model)                    # or SAELens folders, circuit-tracer
    acts = tset.encode(3, x)                                              # x: mlp_in.3 [..., d_model]
    model.run(prompt, tset.edit({(3, 5, 120): 0.0, (4, 5, 7): 2.0}))     # zero / scale features at positions

What the attribution engine reads (``L`` a covered layer):

- ``layers``, ``kind`` (``"plt"`` / ``"clt"``), ``d_model``, ``d_sae(L)``, ``input_site(L)`` (the site
  ``encode`` reads, normally ``mlp_in.L``) and ``output_site(L)`` (``mlp_out.L``);
- ``encode(L, x)``; ``decoder_rows(L)``: PLT ``W_dec [d_sae, d_model]``, CLT ``[d_sae, n_out, d_model]``
  with ``out_layers(L)`` the layers written (PLT: ``[L]``); ``b_dec(L)``; ``skip(L)`` (``W_skip [d_in,
  d_model]``, applied as ``x @ W_skip``, or None); ``reconstruct({L: acts})`` the output site of every
  covered layer, ``b_dec`` included;
- ``encoder_vector(L, features) [n, d_model]`` and ``encoder_bias(L, features) [n]``: the
  pre-activation is ``x @ v + b`` exactly (TransformerLens centring and a constant input scale folded
  in, ``b_pre`` folded into the bias); `check_linear` refuses kinds whose encoder is not affine
  followed by the activation (per-token normalization, gated).

Files. `TranscoderSet.save` writes one SAELens transcoder folder per layer (``layer_3/``) and a
``transcoders.json`` manifest (a CLT: circuit-tracer's files and the manifest). `load_transcoders`
reads those, a folder of SAELens transcoder folders (one per layer), circuit-tracer's transcoder-set
configuration (``config.yaml`` with ``model_kind`` ``transcoder_set`` or ``cross_layer_transcoder``,
its files local safetensors; also its older list-of-``{layer, filepath}`` form), and circuit-tracer
CLT folders.

Training (`train_transcoders`): one `train_sae(model, "mlp_in.L", out_site="mlp_out.L")` per layer,
checkpointed in ``folder/checkpoints/layer_L``; a finished layer is saved to ``folder/layer_L`` and
then listed in the manifest (atomic writes; the manifest is the commit point), and a rerun skips it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.fileio import atomic_folder, atomic_json
from ..core.sites import Site
from .clt import (
    MANIFEST,
    MANIFEST_FORMAT,
    CLTFeatureEdit,
    CrossLayerTranscoder,
    load_circuit_tracer_clt,
)
from .dictionary import Dictionary
from .errors import DictionaryError, DictionaryWarning
from .features import FeatureEdit
from .formats import detect_format, hook_to_site, load_dictionary
from .train import TrainerConfig, TrainingCancelled, train_sae

__all__ = ["TranscoderSet", "load_transcoders", "train_transcoders", "parse_layers", "TRANSCODER_DEFAULTS",
           "LINEAR_ARCHITECTURES"]

#: Architectures whose pre-activation is ``x_c @ W_enc + b_enc`` and whose activation equals it where active.
LINEAR_ARCHITECTURES = ("relu", "jumprelu", "topk", "nmf")
_PER_TOKEN = ("constant_norm_rescale", "layer_norm")
_INPUT_SITES = ("mlp_in", "resid_mid", "ln2_normalized")

#: `train_transcoders` defaults (a `TrainerConfig`'s fields), sized for the embedded SmolLM2-135M on 2 CPU
#: cores: see the function's docstring for the measured time and quality.
TRANSCODER_DEFAULTS: dict[str, Any] = {"expansion": 4, "k": 32, "batch_size": 2048, "max_tokens": 1_000_000,
                                       "data_tokens": 60_000, "holdout_tokens": 4096, "checkpoint_every": 20}


def parse_layers(layers: Any, n_layers: int) -> list[int]:
    """``"0-5"``, ``"0,3,7-9"``, an int, a range or a list -> sorted distinct layers, checked against ``n_layers``."""
    if layers is None:
        out = list(range(n_layers))
    elif isinstance(layers, str):
        out = []
        for part in filter(None, (p.strip() for p in layers.split(","))):
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)|(\d+)", part)
            if not m:
                raise ValueError(f"cannot read layers {layers!r}: use e.g. '0-5' or '0,3,7-9'")
            a, b = (int(m.group(1)), int(m.group(2))) if m.group(1) else (int(m.group(3)),) * 2
            if b < a:
                raise ValueError(f"layer range {part!r} runs backwards")
            out += range(a, b + 1)
    elif isinstance(layers, int) and not isinstance(layers, bool):
        out = [layers]
    else:
        out = [int(v) for v in layers]
    out = sorted(set(out))
    if not out:
        raise ValueError("no layers given")
    bad = [v for v in out if not 0 <= v < n_layers]
    if bad:
        raise ValueError(f"layer {bad[0]} is out of range: the model has layers 0..{n_layers - 1}")
    return out


class TranscoderSet:
    """Per-layer transcoders ``{layer: Dictionary}`` or one `CrossLayerTranscoder`, behind one interface."""

    def __init__(self, transcoders: Mapping[int, Dictionary] | CrossLayerTranscoder, meta: dict[str, Any] | None = None):
        self.meta = dict(meta or {})
        if isinstance(transcoders, CrossLayerTranscoder):
            self.kind, self.clt, self.plt = "clt", transcoders, {}
            self.layers = list(transcoders.layers)  # type: ignore[arg-type]
            return
        if not isinstance(transcoders, Mapping) or not transcoders:
            raise DictionaryError("a TranscoderSet takes {layer: transcoder Dictionary} (non-empty) or a "
                                  f"CrossLayerTranscoder, not {type(transcoders).__name__}")
        plt: dict[int, Dictionary] = {}
        for L, d in transcoders.items():
            if not isinstance(d, Dictionary) or not d.is_transcoder:
                raise DictionaryError(f"layer {L}: {d!r} is not a transcoder Dictionary (it needs an out_site)")
            s, o = Site.parse(d.site), Site.parse(d.out_site)  # type: ignore[arg-type]
            if s.layer != int(L) or o.layer != int(L) or o.name != "mlp_out" or s.name not in _INPUT_SITES:
                raise DictionaryError(f"the transcoder given for layer {L} reads {d.site} and writes {d.out_site}; a "
                                      f"set's layer L reads one of {', '.join(f'{n}.L' for n in _INPUT_SITES)} and "
                                      "writes mlp_out.L")
            plt[int(L)] = d
        widths = {d.d_out for d in plt.values()}
        if len(widths) != 1:
            raise DictionaryError(f"the transcoders write different widths {sorted(widths)}: one set serves one model")
        self.kind, self.clt, self.plt = "plt", None, dict(sorted(plt.items()))
        self.layers = list(self.plt)

    # -- sizes and sites -------------------------------------------------------------------
    def _layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer not in self.layers:
            raise DictionaryError(f"the transcoder set covers layers {self.layers}, not {layer!r}")
        return layer

    def dictionary(self, layer: int) -> Dictionary:
        """Layer ``layer`` as a `Dictionary` (a CLT: its encoder and same-layer decoder), for scans and dashboards."""
        L = self._layer(layer)
        return self.clt.dictionary(L) if self.clt is not None else self.plt[L]

    __getitem__ = dictionary

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    @property
    def name(self) -> str:
        """A display name: ``meta["name"]``, else the folder it was loaded from or saved to, else the kind."""
        if self.meta.get("name"):
            return str(self.meta["name"])
        p = self.meta.get("path") or (self.clt.meta.get("path") if self.clt is not None else None)
        return Path(str(p)).name if p else f"{self.kind}-transcoders"

    @property
    def d_model(self) -> int:
        return self.clt.d_out if self.clt is not None else next(iter(self.plt.values())).d_out

    def d_sae(self, layer: int) -> int:
        return self.dictionary(layer).d_sae

    def input_site(self, layer: int) -> str:
        """The site ``encode(layer, x)`` reads (``"mlp_in.L"`` for the project's own sets)."""
        return self.dictionary(layer).site

    def output_site(self, layer: int) -> str:
        return str(self.dictionary(layer).out_site)

    def out_layers(self, layer: int) -> list[int]:
        """The layers a latent of ``layer`` writes: ``[layer]`` (PLT) or ``layer`` .. the last covered (CLT)."""
        L = self._layer(layer)
        return self.clt.out_layers(L) if self.clt is not None else [L]

    @property
    def dtype(self) -> torch.dtype:
        return self.dictionary(self.layers[0]).dtype

    @property
    def device(self) -> torch.device:
        return self.dictionary(self.layers[0]).device

    # -- computation -----------------------------------------------------------------------
    def encode(self, layer: int, x: Tensor) -> Tensor:
        """Latent activations ``[..., d_sae]`` from the layer's input site ``x [..., d_in]``."""
        return self.dictionary(layer).encode(x)

    def decoder_rows(self, layer: int) -> Tensor:
        """PLT: ``W_dec [d_sae, d_model]``; CLT: ``[d_sae, len(out_layers(layer)), d_model]``."""
        L = self._layer(layer)
        return self.clt.W_dec[self.clt.index(L)] if self.clt is not None else self.plt[L].W_dec

    def b_dec(self, layer: int) -> Tensor:
        """The decoder bias written at the layer's output site ``[d_model]``."""
        return self.dictionary(layer).b_dec

    def skip(self, layer: int) -> Tensor | None:
        """``W_skip [d_in, d_model]`` (output gets ``x @ W_skip``) or None."""
        return self.dictionary(layer).W_skip

    def reconstruct(self, acts_by_layer: Mapping[int, Tensor],
                    inputs: Mapping[int, Tensor] | None = None) -> dict[int, Tensor]:
        """The output site of every covered layer from every covered layer's latents, ``b_dec`` included
        (CLT: summed over source layers <= target); ``inputs`` ``{layer: x}`` for skip connections."""
        missing = [L for L in self.layers if L not in acts_by_layer]
        if missing:
            raise DictionaryError(f"reconstruct needs the latents of every covered layer {self.layers}; missing {missing}")
        if self.clt is not None:
            return self.clt.decode(dict(acts_by_layer), None if inputs is None else dict(inputs))
        out = {}
        for L in self.layers:
            d = self.plt[L]
            x = None if inputs is None else inputs.get(L)
            if d.W_skip is not None and x is None:
                raise DictionaryError(f"layer {L}'s transcoder has a skip connection (W_skip), which reads its input: "
                                      "pass inputs={layer: x}")
            out[L] = d.decode(acts_by_layer[L], x)
        return out

    # -- the linear read-out ----------------------------------------------------------------
    def check_linear(self, layer: int | None = None) -> None:
        """Raise `DictionaryError` unless the layer's (every layer's) pre-activation is an affine function of
        the input site and its activation equals it where active (relu, jumprelu, topk)."""
        for L in self.layers if layer is None else [self._layer(layer)]:
            d = self.dictionary(L)
            if d.architecture not in LINEAR_ARCHITECTURES:
                raise DictionaryError(f"layer {L}'s transcoder is {d.architecture}: its encoder is not one affine map "
                                      f"followed by the activation ({', '.join(LINEAR_ARCHITECTURES)} are)")
            if d.normalize in _PER_TOKEN:
                raise DictionaryError(f"layer {L}'s transcoder normalizes each input ({d.normalize}): its encoder is "
                                      "not affine in the input, so it has no fixed read direction")

    def _read(self, layer: int, features: Any) -> tuple[Dictionary, Tensor]:
        self.check_linear(layer)
        d = self.dictionary(layer)
        idx = torch.as_tensor(features, dtype=torch.long, device=d.device).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= d.d_sae):
            raise IndexError(f"feature index out of range for layer {layer} ({d.d_sae} latents)")
        return d, idx

    def encoder_vector(self, layer: int, features: Any) -> Tensor:
        """The read directions ``[len(features), d_in]``: pre-activation = ``x @ v.T + encoder_bias``."""
        d, idx = self._read(layer, features)
        W = d.W_enc.index_select(1, idx)  # [d_in, n]
        if d.center_input:  # (x - mean x) @ W = x @ (W - mean over rows)
            W = W - W.mean(dim=0, keepdim=True)
        if d.normalize == "expected_average_only_in" and d.norm_scale not in (None, 1.0):
            W = W * d.norm_scale
        return W.T

    def encoder_bias(self, layer: int, features: Any) -> Tensor:
        """``b_enc`` minus ``b_pre @ W_enc`` (when there is a ``b_pre``) for ``features``, ``[len(features)]``."""
        d, idx = self._read(layer, features)
        b = d.b_enc.index_select(0, idx)
        if d.b_pre is not None:
            b = b - d.b_pre @ d.W_enc.index_select(1, idx)
        return b

    # -- edits -----------------------------------------------------------------------------
    def edit(self, nodes: Mapping[tuple[int, int | None, int], float] | Iterable[tuple[int, int | None, int]],
             positions: Any = None, *, rows: list[int] | None = None) -> list[Any]:
        """Specs that zero (factor 0) or scale (factor k) features, for ``model.run(prompt, specs)``.

        ``nodes``: ``{(layer, position, feature): factor}`` (an iterable of keys means factor 0); a
        position of None means every position (and every generated token). ``positions``: None (each
        node's own position), ``"all"`` (every position) or a list (those positions, for every node).
        PLT: `FeatureEdit` specs; CLT: `CLTFeatureEdit` specs (every later layer's output changes).
        """
        items = nodes.items() if isinstance(nodes, Mapping) else ((k, 0.0) for k in nodes)
        override: list[int] | None | str = None
        if isinstance(positions, str):
            if positions != "all":
                raise ValueError(f"positions is None, 'all' or a list of positions, not {positions!r}")
            override = "all"
        elif positions is not None:
            override = [int(p) for p in (positions if isinstance(positions, Iterable) else [positions])]
        groups: dict[tuple[int, float, int | None], list[int]] = {}
        seen: dict[tuple[int, int | None, int], float] = {}
        for key, factor in items:
            if not (isinstance(key, tuple) and len(key) == 3):
                raise ValueError(f"a node is (layer, position, feature), not {key!r}")
            L, pos, f = key
            L = self._layer(int(L))
            f, n = int(f), self.d_sae(L)
            if not 0 <= f < n:
                raise IndexError(f"feature {f} is out of range for layer {L} ({n} latents)")
            try:
                factor = float(factor)
            except (TypeError, ValueError):
                raise ValueError(f"node {key}: the factor must be a number, not {factor!r}") from None
            if not math.isfinite(factor):
                raise ValueError(f"node {key}: the factor must be finite, not {factor}")
            pos = None if pos is None or override is not None else int(pos)
            if (L, pos, f) in seen:
                if seen[(L, pos, f)] != factor:
                    raise ValueError(f"feature {f} of layer {L} is given two factors ({seen[(L, pos, f)]} and {factor})")
                continue
            seen[(L, pos, f)] = factor
            groups.setdefault((L, factor, pos), []).append(f)
        merged: dict[tuple[int, float, tuple[int, ...]], list[int | None]] = {}
        for (L, factor, pos), feats in groups.items():
            merged.setdefault((L, factor, tuple(sorted(feats))), []).append(pos)
        specs: list[Any] = []
        for (L, factor, feats), poss in sorted(merged.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
            if override == "all" or None in poss:
                where: list[int] | None = None
            elif isinstance(override, list):
                where = override
            else:
                where = sorted(p for p in poss if p is not None)
            op, value = ("zero", None) if factor == 0.0 else ("scale", factor)
            if factor == 1.0:
                continue  # no change
            if self.clt is not None:
                specs.append(CLTFeatureEdit(self.clt, L, list(feats), op, value, where, rows=rows))
            else:
                specs.append(FeatureEdit(self.plt[L], list(feats), op, value, where, rows=rows))
        return specs

    feature_edit = edit

    # -- model fit, conversion, files ----------------------------------------------------------
    def check(self, model: Any) -> TranscoderSet:
        """Raise `DictionaryError` unless every layer exists in ``model`` and its widths fit there."""
        n = model.arch.n_layers
        for L in self.layers:
            if L >= n:
                raise DictionaryError(f"the transcoder set covers layer {L}, but {getattr(model, 'name', '') or 'this model'}"
                                      f" has layers 0..{n - 1}")
            d = self.dictionary(L)
            for role, site, width in (("reads", d.site, d.d_in), ("writes", d.out_site, d.d_out)):
                want = model.arch.size(Site.parse(site))
                if width != want:
                    raise DictionaryError(f"layer {L}'s transcoder {role} {site} with width {width}, but "
                                          f"{getattr(model, 'name', '') or 'this model'} has width {want} there "
                                          f"(d_model={model.arch.d_model}): the set was made for another model")
            d.check(model)
        return self

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> TranscoderSet:
        if self.clt is not None:
            return TranscoderSet(self.clt.to(device=device, dtype=dtype), self.meta)
        return TranscoderSet({L: d.to(device=device, dtype=dtype) for L, d in self.plt.items()}, self.meta)

    def manifest(self) -> dict[str, Any]:
        """The ``transcoders.json`` content `save` writes (a CLT: what `CrossLayerTranscoder.save` writes)."""
        return {"format": MANIFEST_FORMAT, "version": 1, "kind": "plt", "layers": self.layers,
                "folders": {str(L): f"layer_{L}" for L in self.layers}, "d_model": self.d_model,
                "d_sae": {str(L): self.d_sae(L) for L in self.layers},
                "model_name": self.meta.get("model_name") or next(
                    (d.meta.get("model_name") for d in self.plt.values() if d.meta.get("model_name")), None),
                **{k: self.meta[k] for k in ("config", "stats") if k in self.meta}}

    def save(self, path: str | Path) -> Path:
        """One SAELens transcoder folder per layer plus ``transcoders.json`` (a CLT: circuit-tracer files plus
        the manifest), written atomically into folder ``path``."""
        folder = Path(path).expanduser()
        if self.clt is not None:
            return self.clt.save(folder)
        if folder.exists() and not folder.is_dir():
            raise DictionaryError(f"cannot save a transcoder set to {folder}: it is a file, not a folder")
        with atomic_folder(folder, owned=[MANIFEST] + [f"layer_{L}" for L in self.layers]) as tmp:
            for L in self.layers:
                self.plt[L].save(tmp / f"layer_{L}")
            (tmp / MANIFEST).write_text(json.dumps(self.manifest(), indent=1), encoding="utf-8")
        self.meta["path"] = str(folder)
        return folder

    def __repr__(self) -> str:
        sizes = sorted({self.d_sae(L) for L in self.layers})
        return (f"TranscoderSet({self.kind}, layers {_ranges(self.layers)}, d_model={self.d_model}, "
                f"d_sae={'/'.join(map(str, sizes))})")


def _ranges(layers: list[int]) -> str:
    out, start = [], layers[0]
    for a, b in zip(layers, layers[1:] + [None], strict=True):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ",".join(out)


# -- loading ----------------------------------------------------------------------------------------------
def load_transcoders(path_or_config: str | Path | Mapping[str, Any], model: Any = None, *,
                     dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                     input_site: str | None = None, output_site: str | None = None) -> TranscoderSet:
    """Load a transcoder set (see the module docstring for the formats) and check it against ``model``.

    ``path_or_config``: a folder (our manifest, a folder of SAELens transcoder folders, a circuit-tracer
    folder with ``config.yaml`` or CLT files), a circuit-tracer ``config.yaml`` file, or its parsed dict.
    ``input_site`` / ``output_site``: site names (``"mlp_in"``) overriding what the files say.
    """
    if device is None and model is not None:
        device = getattr(model, "device", None)
    if isinstance(path_or_config, Mapping):
        tset = _load_ct_config(dict(path_or_config), Path.cwd(), input_site, output_site)
    else:
        p = Path(path_or_config).expanduser()
        if not p.exists():
            raise DictionaryError(f"no transcoder set at {str(path_or_config)!r}: no such file or folder")
        if p.is_file():
            if p.suffix not in (".yaml", ".yml", ".json"):
                raise DictionaryError(f"{p} is a file: give a set folder or a circuit-tracer config (.yaml)")
            tset = _load_ct_config(_read_config(p), p.parent, input_site, output_site)
        elif (p / MANIFEST).exists():
            tset = _load_manifest(p, input_site, output_site)
        elif (p / "config.yaml").exists():
            tset = _load_ct_config(_read_config(p / "config.yaml"), p, input_site, output_site)
        elif (p / "W_enc_0.safetensors").exists():
            tset = TranscoderSet(load_circuit_tracer_clt(p, input_site=input_site or "mlp_in",
                                                         output_site=output_site or "mlp_out"))
        else:
            tset = _load_saelens_folders(p, model)
    if dtype is not None or device is not None:
        tset = tset.to(device=device, dtype=dtype)
    if model is not None:
        tset.check(model)
    return tset


def _read_config(p: Path) -> dict[str, Any]:
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".json":
            cfg = json.loads(text)
        else:
            import yaml

            cfg = yaml.safe_load(text)
    except Exception as exc:  # yaml's and json's parse errors
        raise DictionaryError(f"{p} is not a readable configuration: {exc}") from None
    if not isinstance(cfg, dict):
        raise DictionaryError(f"{p} should hold a mapping, not {type(cfg).__name__}")
    return cfg


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        man = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DictionaryError(f"{folder / MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(man, dict) or man.get("format") != MANIFEST_FORMAT:
        raise DictionaryError(f"{folder / MANIFEST} is not a workbench transcoder-set manifest")
    return man


def _load_manifest(folder: Path, input_site: str | None, output_site: str | None) -> TranscoderSet:
    man = _read_manifest(folder)
    if man.get("kind") == "clt":
        return TranscoderSet(CrossLayerTranscoder.load(folder, input_site=input_site, output_site=output_site))
    if man.get("kind") != "plt":
        raise DictionaryError(f"{folder / MANIFEST}: unknown kind {man.get('kind')!r} (plt or clt)")
    layers = man.get("layers") or []
    if not layers:
        raise DictionaryError(f"{folder / MANIFEST} lists no finished layers" +
                              (f" (planned: {man['planned']}; run train_transcoders again to finish)" if man.get("planned") else ""))
    folders = man.get("folders") or {}
    out = {}
    for L in layers:
        sub = folder / folders.get(str(L), f"layer_{L}")
        d = load_dictionary(sub)
        if Site.parse(d.site).layer != int(L):
            raise DictionaryError(f"{sub} reads {d.site}, but {folder / MANIFEST} lists it as layer {L}")
        out[int(L)] = d
    return TranscoderSet(out, {k: man[k] for k in ("model_name", "config", "stats") if k in man} | {"path": str(folder)})


def _load_saelens_folders(folder: Path, model: Any) -> TranscoderSet:
    subs = sorted((c for c in folder.iterdir() if c.is_dir() and detect_format(c)), key=lambda c: c.name)
    if not subs:
        raise DictionaryError(f"no transcoder set found at {folder}: expected {MANIFEST}, a circuit-tracer config.yaml or "
                              "CLT files (W_enc_0.safetensors), or one SAELens transcoder folder per layer")
    out: dict[int, Dictionary] = {}
    for sub in subs:
        d = load_dictionary(sub, model=model)
        if not d.is_transcoder:
            raise DictionaryError(f"{sub} holds an SAE (it writes the site it reads, {d.site}), not a transcoder")
        L = Site.parse(d.site).layer
        if L in out:
            raise DictionaryError(f"{sub} and {out[L].meta.get('path')} are both transcoders for layer {L}")
        out[L] = d  # type: ignore[index]
    return TranscoderSet(out, {"path": str(folder), "format": "saelens"})


def _hook_site(hook: str, layer: int, what: str) -> str:
    h = str(hook)
    if "{layer}" in h or "{L}" in h:
        h = h.replace("{layer}", str(layer)).replace("{L}", str(layer))
    elif not h.startswith("blocks."):
        h = f"blocks.{layer}.{h}"
    try:
        return hook_to_site(h)
    except DictionaryError as exc:
        raise DictionaryError(f"circuit-tracer {what} {hook!r}: {exc}") from None


def _local(path: Any, base: Path, layer: int) -> Path:
    s = str(path)
    if s.startswith("hf://"):
        raise DictionaryError(f"layer {layer}'s transcoder is at {s}: the workbench loads local files only (offline); "
                              "download it (huggingface_hub.hf_hub_download) and give the local path")
    p = Path(s).expanduser()
    return p if p.is_absolute() else base / p


def _load_ct_config(cfg: dict[str, Any], base: Path, input_site: str | None, output_site: str | None) -> TranscoderSet:
    for key in ("feature_input_hook", "feature_output_hook"):
        if key not in cfg and not (input_site and output_site):
            raise DictionaryError(f"the circuit-tracer configuration lacks {key!r}")
    kind = cfg.get("model_kind", "transcoder_set")
    in_hook, out_hook = cfg.get("feature_input_hook"), cfg.get("feature_output_hook")

    def sites(L: int) -> tuple[str, str]:
        s = f"{input_site}.{L}" if input_site else _hook_site(in_hook, L, "feature_input_hook")
        o = f"{output_site}.{L}" if output_site else _hook_site(out_hook, L, "feature_output_hook")
        return s, o

    meta = {"model_name": cfg.get("model_name"), "format": "circuit-tracer", "scan": cfg.get("scan")}
    if kind == "cross_layer_transcoder":
        folder = _local(cfg.get("path") or cfg.get("clt_path") or base, base, 0)
        s0, o0 = sites(0)
        clt = load_circuit_tracer_clt(folder, input_site=Site.parse(s0).name, output_site=Site.parse(o0).name)
        clt.meta.update({k: v for k, v in meta.items() if v})
        return TranscoderSet(clt, meta)
    if kind != "transcoder_set":
        raise DictionaryError(f"unknown circuit-tracer model_kind {kind!r} (transcoder_set or cross_layer_transcoder)")
    entries = cfg.get("transcoders")
    paths: dict[int, Path] = {}
    if entries is None:
        files = sorted(base.glob("layer_*.safetensors"))
        for f in files:
            m = re.fullmatch(r"layer_(\d+)\.safetensors", f.name)
            if m:
                paths[int(m.group(1))] = f
    elif isinstance(entries, list):
        for i, e in enumerate(entries):
            if isinstance(e, dict):  # the older form: {id, layer, filepath}
                if "layer" not in e or "filepath" not in e:
                    raise DictionaryError(f"circuit-tracer transcoders[{i}] needs 'layer' and 'filepath', has {sorted(e)}")
                L, fp = int(e["layer"]), e["filepath"]
            else:
                L, fp = i, e
            if L in paths:
                raise DictionaryError(f"the circuit-tracer configuration gives layer {L} twice")
            paths[L] = _local(fp, base, L)
    else:
        raise DictionaryError(f"circuit-tracer 'transcoders' is a list of paths, not {type(entries).__name__}")
    if not paths:
        raise DictionaryError(f"the circuit-tracer configuration names no transcoders (and {base} has no layer_*.safetensors)")
    out = {}
    for L, p in sorted(paths.items()):
        s, o = sites(L)
        out[L] = _load_ct_layer(p, L, s, o, meta)
    return TranscoderSet(out, meta)


def _load_ct_layer(path: Path, layer: int, site: str, out_site: str, meta: dict[str, Any]) -> Dictionary:
    """One circuit-tracer per-layer transcoder file (``SingleLayerTranscoder.to_safetensors``, or Gemma Scope 2 keys)."""
    from safetensors import safe_open

    if path.suffix != ".safetensors":
        raise DictionaryError(f"layer {layer}: {path} is not a safetensors file (circuit-tracer's .npz Gemma Scope files "
                              "are not read; convert them to safetensors first)")
    if not path.exists():
        raise DictionaryError(f"layer {layer}: {path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:
        raise DictionaryError(f"{path} is not a readable safetensors file: {exc}") from None

    def need(k: str) -> Tensor:
        if k not in sd:
            raise DictionaryError(f"{path} has no tensor {k!r} (it has: {', '.join(sorted(sd))})")
        return sd[k]

    if "w_enc" in sd:  # Gemma Scope 2: w_enc [d_in, d_sae], w_dec [d_sae, d_out], affine_skip_connection: x @ it
        W_enc, W_dec = need("w_enc"), need("w_dec")
        thr = sd.get("threshold")
        W_skip = sd.get("affine_skip_connection")
    else:  # W_enc [d_sae, d_in] (F.linear), W_dec [d_sae, d_out] (older files: [d_out, d_sae]), x @ W_skip.T
        W_enc = need("W_enc").T
        d_sae = W_enc.shape[1]
        W_dec = need("W_dec")
        if W_dec.shape[0] != d_sae and W_dec.dim() == 2 and W_dec.shape[1] == d_sae:
            W_dec = W_dec.T
        thr = sd.get("activation_function.threshold", sd.get("threshold"))
        W_skip = sd["W_skip"].T if "W_skip" in sd else None
    if "log_thresholds" in sd:
        raise DictionaryError(f"{path}: log_thresholds are not supported")
    if thr is not None and bool((thr < 0).any()):
        warnings.warn(f"{path}: some JumpReLU thresholds are negative; circuit-tracer passes negative pre-activations "
                      "above them, the workbench's jumprelu (relu(pre) * (pre > threshold)) does not",
                      DictionaryWarning, stacklevel=4)
    try:
        return Dictionary(W_enc=W_enc.contiguous(), b_enc=need("b_enc"), W_dec=W_dec.contiguous(), b_dec=need("b_dec"),
                          architecture="jumprelu" if thr is not None else "relu",
                          threshold=None if thr is None else thr.reshape(-1), site=site, out_site=out_site,
                          W_skip=None if W_skip is None else W_skip.contiguous(),
                          meta={**{k: v for k, v in meta.items() if v}, "path": str(path), "layer": layer})
    except DictionaryError as exc:
        raise DictionaryError(f"{path}: {exc}") from None


# -- training ---------------------------------------------------------------------------------------------
def _config(config: TrainerConfig | None, options: dict[str, Any]) -> TrainerConfig:
    names = {f.name for f in fields(TrainerConfig)} - {"transcoder"}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"train_transcoders() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                        f"TrainerConfig fields: {', '.join(sorted(names))}")
    if config is not None:
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"config must be a TrainerConfig, not {type(config).__name__}")
        return replace(config, **options)
    return TrainerConfig(**{**TRANSCODER_DEFAULTS, **options})


def train_transcoders(model: Any, layers: Any = None, corpus: Any = None, folder: str | Path | None = None,
                      config: TrainerConfig | None = None, *, resume: bool = True, progress: bool = True,
                      cancel: threading.Event | None = None,
                      on_step: Callable[[int, dict[str, float]], None] | None = None, **options: Any) -> TranscoderSet:
    """Train a per-layer transcoder set (``mlp_in.L -> mlp_out.L``, TopK) over ``layers``; returns it.

    ``layers``: ``"0-5"``, a list, a range (None: every layer). ``config`` / keywords: `TrainerConfig`
    fields (default `TRANSCODER_DEFAULTS`: 4x expansion (2304 latents on the embedded model), k=32,
    1M token-steps (about 18 epochs) over 60k collected tokens, batch 2048). ``folder``: where the set goes (one SAELens
    folder per layer + ``transcoders.json``) and its per-layer checkpoints; a rerun resumes: finished
    layers are loaded, not retrained, and an interrupted layer continues from its checkpoint
    (``resume=False`` starts every layer over). ``cancel`` (a `threading.Event`) stops with a
    checkpoint and raises `TrainingCancelled` (``.transcoders``: the finished layers' set, or None).
    ``on_step(layer, stats)`` after every step. One progress bar shows the layer, FVU and L0.

    Measured on this 2-core CPU (shared with other jobs) with the embedded SmolLM2-135M
    (benchmarks/bench_transcoders.py): the training loop takes about 130 s per layer at the defaults,
    collecting 60k tokens 5-11 s per layer the forward pass traverses (layer 15: 80-170 s). Layer 15
    reached held-out FVU 0.45 (dead 34%, L0 32); 300k token-steps gave 0.57 (dead 67%), layer 0 0.23.
    Layers 0-5 take about 15-20 minutes; all 30 layers about 1.8-2.5 hours.
    """
    cfg = _config(config, options)
    if model is None:
        raise ValueError("train_transcoders needs a model")
    todo = parse_layers(layers, model.arch.n_layers)
    root = Path(folder).expanduser() if folder is not None else None
    man: dict[str, Any] = {"format": MANIFEST_FORMAT, "version": 1, "kind": "plt", "layers": [], "folders": {},
                           "d_model": model.arch.d_model, "d_sae": {}, "model_name": getattr(model, "name", None),
                           "config": {**cfg.to_dict(), "corpus": None}, "stats": {}}
    from ..core.corpus import corpus_name

    man["config"]["corpus"] = corpus_name(corpus)
    if root is not None:
        if root.exists() and not root.is_dir():
            raise ValueError(f"folder {root} is a file; give a folder path")
        if (root / MANIFEST).exists():
            old = _read_manifest(root)
            if resume:
                if old.get("kind") != "plt":
                    raise ValueError(f"{root} holds a {old.get('kind')} set, not per-layer transcoders")
                diff = [k for k, v in man["config"].items() if k not in ("checkpoint_every", "device")
                        and (old.get("config") or {}).get(k) != v]
                if old.get("layers") and diff:
                    raise ValueError(f"{root} holds transcoders trained with other settings ({', '.join(diff)}); pass "
                                     "resume=False to retrain, or another folder")
                man.update({k: old[k] for k in ("layers", "folders", "d_sae", "stats") if k in old})
            man["layers"] = [L for L in man["layers"] if (root / man["folders"].get(str(L), f"layer_{L}")).is_dir()] \
                if resume else []
        man["planned"] = sorted(set(todo) | set(man["layers"]))
    done: dict[int, Dictionary] = {}
    from tqdm.auto import tqdm

    pending = [L for L in todo if not (root is not None and resume and L in man["layers"])]
    bar = tqdm(total=len(pending) * cfg.steps * cfg.batch_size, unit="tok", unit_scale=True, disable=not progress,
               desc="transcoders")
    state: dict[str, Any] = {}

    def step_cb(L: int) -> Callable[[dict[str, float]], None]:
        def cb(stats: dict[str, float]) -> None:
            if "start" not in state:  # a resumed layer starts at its checkpoint's step
                bar.update((int(stats["step"]) - 1) * cfg.batch_size)
                state["start"] = True
            bar.update(cfg.batch_size)
            state["l0"] = stats["l0"]
            bar.set_postfix(layer=L, fvu=f"{stats['fvu_ema']:.3f}", L0=f"{stats['l0']:.1f}",
                            dead=f"{stats['dead_fraction']:.1%}", refresh=False)
            if on_step is not None:
                on_step(L, stats)
        return cb

    try:
        for n_done, L in enumerate(todo):
            if root is not None and resume and L in man["layers"]:
                done[L] = load_dictionary(root / man["folders"].get(str(L), f"layer_{L}"))
                continue
            bar.set_description(f"transcoders: layer {L} ({n_done + 1}/{len(todo)})")
            state.clear()
            ck = root / "checkpoints" / f"layer_{L}" if root is not None else None
            t0 = time.time()
            try:
                d = train_sae(model, f"mlp_in.{L}", corpus, cfg, out_site=f"mlp_out.{L}", checkpoint=ck, resume=resume,
                              cancel=cancel, on_step=step_cb(L), progress=False)
            except TrainingCancelled as exc:
                exc.transcoders = TranscoderSet(done, {"config": man["config"]}) if done else None  # type: ignore[attr-defined]
                raise
            tr = d.meta.get("training", {})
            stats = {"fvu": tr.get("fvu"), "heldout_fvu": tr.get("heldout_fvu"), "l0": state.get("l0"),
                     "dead_fraction": tr.get("dead_fraction"), "train_time_s": tr.get("time_s"),
                     "wall_s": round(time.time() - t0, 1), "tokens": tr.get("tokens"), "n_latents": d.d_sae}
            d.meta["name"] = f"transcoder.L{L}"
            done[L] = d
            if root is not None:
                d.save(root / f"layer_{L}")
                d.meta["path"] = str(root / f"layer_{L}")
                man["layers"] = sorted(set(man["layers"]) | {L})
                man["folders"][str(L)] = f"layer_{L}"
                man["d_sae"][str(L)] = d.d_sae
                man["stats"][str(L)] = stats
                atomic_json(root / MANIFEST, man)  # the commit point
                if ck is not None:
                    shutil.rmtree(ck, ignore_errors=True)
            else:
                man["stats"][str(L)] = stats
    finally:
        bar.close()
    if root is not None:
        ck_root = root / "checkpoints"
        if ck_root.is_dir() and not any(ck_root.iterdir()):
            ck_root.rmdir()
    meta = {"config": man["config"], "stats": {k: v for k, v in man["stats"].items() if int(k) in done},
            "model_name": man["model_name"]}
    if root is not None:
        meta["path"] = str(root)
    return TranscoderSet(done, meta)
