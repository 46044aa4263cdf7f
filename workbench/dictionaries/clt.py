"""Cross-layer transcoders (CLT): a latent at layer l reads that layer's MLP input and writes every
later covered layer's MLP output (Ameisen et al. 2025; circuit-tracer's ``CrossLayerTranscoder``).

    clt = CrossLayerTranscoder.load("path/to/clt")            # circuit-tracer files (+ our manifest)
    acts = clt.encode(3, x)                                    # x: the input site of layer 3 [..., d_in]
    out = clt.decode({L: acts_L for L in clt.layers})         # {L': mlp_out reconstruction}
    model.run(prompt, [clt.edit(3, [12, 40], "scale", 0.0)])   # a feature edit, through the spec mechanism

Shapes (``n = len(layers)``, source index ``i`` is model layer ``layers[i]``)::

    W_enc [n, d_in, d_sae]    b_enc [n, d_sae]    threshold [n, d_sae] (jumprelu)
    W_dec[i] [d_sae, n - i, d_out]                 (latent of layer i -> output layers i..n-1)
    b_dec [n, d_out]          W_skip [n, d_in, d_out] (optional, x @ W_skip[i])

Encoding is ``act(x @ W_enc[i] + b_enc[i])`` with ``act`` ReLU, JumpReLU (``relu(pre) * (pre >
threshold)``) or TopK (the ``k`` largest, after a ReLU); decoding into output layer ``j`` is
``b_dec[j] + sum_{i <= j} acts_i @ W_dec[i][:, j - i] (+ x_j @ W_skip[j])``.

Files: circuit-tracer's layout (``CrossLayerTranscoder.to_safetensors``): per source index ``i``
``W_enc_{i}.safetensors`` with ``W_enc_{i} [d_sae, d_in]`` (transposed from ours), ``b_enc_{i}``,
``b_dec_{i}``, optional ``threshold_{i}`` and ``W_skip_{i} [d_in, d_out]`` (applied as ``x @
W_skip``), and ``W_dec_{i}.safetensors`` with ``W_dec_{i} [d_sae, n - i, d_out]``. `save` adds a
``transcoders.json`` manifest (model layers, sites, architecture), which circuit-tracer ignores.

Edits. `CLTFeatureEdit` is a spec (`workbench.core.specs`): at the source layer's input site it
encodes the chosen latents, applies ``zero``/``scale``/``set``/``add``, and adds ``delta_acts @
W_dec[i][idx, j - i]`` to the MLP output of every covered layer ``j >= i`` (reconstruction error
kept, as `FeatureEdit` does). A spec names its CLT by a registered name (`register_clt`) and the
folder it was loaded from, so its JSON resolves in another session.
"""

from __future__ import annotations

import json
import re
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.fileio import atomic_folder
from ..core.program import Step, TraceOp, TraceProgram
from ..core.sites import Site
from ..core.specs import Positions, Spec, as_list, register_spec_kind
from .dictionary import Dictionary
from .errors import DictionaryError, DictionaryWarning
from .features import edit_value

__all__ = ["CrossLayerTranscoder", "CLTFeatureEdit", "register_clt", "get_clt", "registered_clts",
           "CLT_ARCHITECTURES", "MANIFEST", "MANIFEST_FORMAT", "load_circuit_tracer_clt"]

CLT_ARCHITECTURES = ("relu", "jumprelu", "topk")
MANIFEST = "transcoders.json"
MANIFEST_FORMAT = "workbench-transcoders"
_OPS = ("zero", "scale", "set", "add")


def _read_st(path: Path) -> dict[str, Tensor]:
    from safetensors import safe_open

    if not path.exists():
        raise DictionaryError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors' own errors, OSError
        raise DictionaryError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from None


@dataclass(eq=False)
class CrossLayerTranscoder:
    """A cross-layer transcoder over model layers ``layers`` (see the module docstring for shapes).

    ``input_site`` / ``output_site``: site names without a layer (``"mlp_in"``, ``"mlp_out"``);
    ``architecture``: ``"relu"``, ``"jumprelu"`` (needs ``threshold``) or ``"topk"`` (needs ``k``).
    """

    W_enc: Tensor
    b_enc: Tensor
    W_dec: list[Tensor]
    b_dec: Tensor
    layers: list[int] | None = None
    architecture: str = "relu"
    threshold: Tensor | None = None
    k: int | None = None
    W_skip: Tensor | None = None
    input_site: str = "mlp_in"
    output_site: str = "mlp_out"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.W_enc, Tensor) or self.W_enc.dim() != 3 or not self.W_enc.is_floating_point():
            raise DictionaryError(f"CLT W_enc must be a float tensor [n_layers, d_in, d_sae], got "
                                  f"{list(getattr(self.W_enc, 'shape', []))}")
        n, d_in, d_sae = self.W_enc.shape
        if self.layers is None:
            self.layers = list(range(n))
        self.layers = [int(v) for v in self.layers]
        if len(self.layers) != n or sorted(set(self.layers)) != self.layers or min(self.layers) < 0:
            raise DictionaryError(f"CLT layers must be {n} distinct increasing layer indices (one per W_enc entry), "
                                  f"not {self.layers}")
        if self.architecture not in CLT_ARCHITECTURES:
            raise DictionaryError(f"unknown CLT architecture {self.architecture!r}; supported: "
                                  f"{', '.join(CLT_ARCHITECTURES)}")
        W_dec = list(self.W_dec)
        if len(W_dec) != n:
            raise DictionaryError(f"CLT W_dec has {len(W_dec)} entries; expected one per source layer ({n})")
        d_out = int(W_dec[0].shape[-1]) if W_dec and W_dec[0].dim() == 3 else -1
        ref = self.W_enc
        for i, w in enumerate(W_dec):
            if not isinstance(w, Tensor) or tuple(w.shape) != (d_sae, n - i, d_out):
                raise DictionaryError(f"CLT W_dec[{i}] has shape {list(getattr(w, 'shape', []))}; expected "
                                      f"[d_sae={d_sae}, n_out={n - i}, d_out={d_out}] (layer {self.layers[i]} writes "
                                      f"layers {self.layers[i:]})")
            W_dec[i] = w.to(device=ref.device, dtype=ref.dtype)
        self.W_dec = W_dec
        want = {"b_enc": (n, d_sae), "b_dec": (n, d_out), "threshold": (n, d_sae), "W_skip": (n, d_in, d_out)}
        for name, shape in want.items():
            t = getattr(self, name)
            if t is None:
                continue
            t = torch.as_tensor(t)
            if tuple(t.shape) != shape:
                raise DictionaryError(f"CLT {name} has shape {list(t.shape)}; expected {list(shape)} "
                                      f"(n_layers={n}, d_in={d_in}, d_sae={d_sae}, d_out={d_out})")
            setattr(self, name, t.to(device=ref.device, dtype=ref.dtype))
        if self.architecture == "jumprelu" and self.threshold is None:
            raise DictionaryError("a jumprelu CLT needs threshold [n_layers, d_sae]")
        if self.architecture == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= d_sae:
                raise DictionaryError(f"a topk CLT needs k, an integer in 1..d_sae={d_sae}; got {self.k!r}")
        for role in ("input_site", "output_site"):
            name = str(getattr(self, role))
            try:
                Site.parse(f"{name}.0")
            except ValueError as exc:
                raise DictionaryError(f"CLT {role}: {exc}") from None
            setattr(self, role, name)
        self.meta = dict(self.meta or {})
        self._views: dict[int, Dictionary] = {}

    # -- sizes -----------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[2])

    @property
    def d_out(self) -> int:
        return int(self.b_dec.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def index(self, layer: int) -> int:
        """The source index of model layer ``layer`` (`DictionaryError` if the CLT does not cover it)."""
        try:
            return self.layers.index(int(layer))  # type: ignore[union-attr]
        except (ValueError, TypeError):
            raise DictionaryError(f"the CLT covers layers {self.layers}, not {layer!r}") from None

    def out_layers(self, layer: int) -> list[int]:
        """The model layers whose MLP output a latent of ``layer`` writes (``layer`` .. the last covered)."""
        return list(self.layers[self.index(layer):])  # type: ignore[index]

    # -- per-layer views -------------------------------------------------------------------
    def dictionary(self, layer: int) -> Dictionary:
        """Layer ``layer`` as a `Dictionary` (its encoder, and its decoder into the same layer's output):
        what scans, dashboards and `Dictionary.encode` use. Cached."""
        i = self.index(layer)
        d = self._views.get(i)
        if d is None:
            L = self.layers[i]  # type: ignore[index]
            d = Dictionary(W_enc=self.W_enc[i], b_enc=self.b_enc[i], W_dec=self.W_dec[i][:, 0], b_dec=self.b_dec[i],
                           architecture=self.architecture, site=f"{self.input_site}.{L}",
                           out_site=f"{self.output_site}.{L}", k=self.k,
                           threshold=None if self.threshold is None else self.threshold[i],
                           W_skip=None if self.W_skip is None else self.W_skip[i],
                           meta={"format": "clt", "clt_layer": L, "model_name": self.meta.get("model_name"),
                                 "name": f"{self.meta.get('name') or 'clt'}.L{L}"})
            self._views[i] = d
        return d

    # -- computation -----------------------------------------------------------------------
    def encode(self, layer: int, x: Tensor) -> Tensor:
        """Latent activations ``[..., d_sae]`` of layer ``layer`` from its input site ``x [..., d_in]``."""
        return self.dictionary(layer).encode(x)

    def decode(self, acts: dict[int, Tensor], inputs: dict[int, Tensor] | None = None) -> dict[int, Tensor]:
        """The output-site reconstruction of every covered layer from the latents of every covered layer
        (``{layer: [..., d_sae]}``), ``b_dec`` included; ``inputs`` (``{layer: x}``) for a skip connection."""
        missing = [L for L in self.layers if L not in acts]  # type: ignore[union-attr]
        extra = sorted(set(acts) - set(self.layers))  # type: ignore[arg-type]
        if missing or extra:
            raise DictionaryError(f"CLT decode needs the latents of every covered layer {self.layers}: "
                                  + (f"missing {missing}" if missing else f"not covered: {extra}"))
        if self.W_skip is not None and (inputs is None or any(L not in inputs for L in self.layers)):  # type: ignore[union-attr]
            raise DictionaryError("this CLT has a skip connection (W_skip), which reads each layer's input: "
                                  "pass inputs={layer: x}")
        a = {L: torch.as_tensor(v).to(device=self.device, dtype=self.dtype) for L, v in acts.items()}
        lead = {tuple(v.shape[:-1]) for v in a.values()}
        if len(lead) != 1 or any(v.shape[-1] != self.d_sae for v in a.values()):
            raise DictionaryError(f"CLT decode: latents must share one leading shape and end in d_sae={self.d_sae}, "
                                  f"got {[list(v.shape) for v in a.values()]}")
        out: dict[int, Tensor] = {}
        for j, Lj in enumerate(self.layers):  # type: ignore[arg-type]
            y = self.b_dec[j].expand(*next(iter(lead)), self.d_out).clone()
            for i in range(j + 1):
                y = y + a[self.layers[i]] @ self.W_dec[i][:, j - i]  # type: ignore[index]
            if self.W_skip is not None:
                y = y + inputs[Lj].to(device=self.device, dtype=self.dtype) @ self.W_skip[j]  # type: ignore[index]
            out[Lj] = y
        return out

    def edit(self, layer: int, features: int | list[int], op: str = "zero", value: Any = None,
             positions: Positions = None, *, rows: list[int] | None = None) -> CLTFeatureEdit:
        """A `CLTFeatureEdit` of latents ``features`` of ``layer`` (``op``: zero, scale, set, add)."""
        feats = as_list(features)
        return CLTFeatureEdit(self, layer, [feats] if isinstance(feats, int) else list(feats), op, value, positions,
                              rows=rows)

    # -- conversion, model fit -------------------------------------------------------------
    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> CrossLayerTranscoder:
        """A copy on another device and/or dtype."""
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)
        return CrossLayerTranscoder(mv(self.W_enc), mv(self.b_enc), [mv(w) for w in self.W_dec], mv(self.b_dec),
                                    list(self.layers), self.architecture, mv(self.threshold), self.k, mv(self.W_skip),
                                    self.input_site, self.output_site, dict(self.meta))

    def check(self, model: Any) -> CrossLayerTranscoder:
        """Raise `DictionaryError` unless every layer fits ``model`` (layers, input and output widths)."""
        n_layers = model.arch.n_layers
        bad = [L for L in self.layers if L >= n_layers]  # type: ignore[union-attr]
        if bad:
            raise DictionaryError(f"the CLT covers layers {self.layers}, but {getattr(model, 'name', '') or 'this model'}"
                                  f" has layers 0..{n_layers - 1} (layer {bad[0]} does not exist)")
        for L in self.layers:  # type: ignore[union-attr]
            self.dictionary(L).check(model)
        return self

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write circuit-tracer's CLT files plus a ``transcoders.json`` manifest into folder ``path`` (atomic)."""
        from safetensors.torch import save_file

        folder = Path(path).expanduser()
        if folder.exists() and not folder.is_dir():
            raise DictionaryError(f"cannot save a CLT to {folder}: it is a file, not a folder")
        owned = [MANIFEST] + [f"{w}_{i}.safetensors" for i in range(self.n_layers) for w in ("W_enc", "W_dec")]
        with atomic_folder(folder, owned=owned) as tmp:
            for i in range(self.n_layers):
                enc = {f"W_enc_{i}": self.W_enc[i].T, f"b_enc_{i}": self.b_enc[i], f"b_dec_{i}": self.b_dec[i]}
                if self.threshold is not None:
                    enc[f"threshold_{i}"] = self.threshold[i]
                if self.W_skip is not None:
                    enc[f"W_skip_{i}"] = self.W_skip[i]
                save_file({k: v.detach().cpu().contiguous() for k, v in enc.items()}, str(tmp / f"W_enc_{i}.safetensors"))
                save_file({f"W_dec_{i}": self.W_dec[i].detach().cpu().contiguous()}, str(tmp / f"W_dec_{i}.safetensors"))
            manifest = {"format": MANIFEST_FORMAT, "version": 1, "kind": "clt", "layers": list(self.layers),  # type: ignore[arg-type]
                        "architecture": self.architecture, "k": self.k, "input_site": self.input_site,
                        "output_site": self.output_site, "d_in": self.d_in, "d_sae": self.d_sae, "d_model": self.d_out,
                        "model_name": self.meta.get("model_name"), "files": "circuit-tracer"}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        self.meta["path"] = str(folder)
        return folder

    @classmethod
    def load(cls, path: str | Path, *, layers: list[int] | None = None, input_site: str | None = None,
             output_site: str | None = None, architecture: str | None = None, k: int | None = None,
             dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> CrossLayerTranscoder:
        """Read a CLT folder: circuit-tracer files, with our ``transcoders.json`` manifest if there is one
        (the keywords override it; without one, layers are 0..n-1 and the sites ``input_site`` and
        ``output_site``, default mlp_in / mlp_out)."""
        folder = Path(path).expanduser()
        man: dict[str, Any] = {}
        if (folder / MANIFEST).exists():
            try:
                man = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DictionaryError(f"{folder / MANIFEST} is not valid JSON: {exc}") from None
            if not isinstance(man, dict) or man.get("kind") != "clt":
                raise DictionaryError(f"{folder / MANIFEST} does not describe a CLT (kind {man.get('kind')!r})")
        clt = load_circuit_tracer_clt(folder, layers=layers if layers is not None else man.get("layers"),
                                      input_site=input_site or man.get("input_site") or "mlp_in",
                                      output_site=output_site or man.get("output_site") or "mlp_out",
                                      architecture=architecture or man.get("architecture"),
                                      k=k if k is not None else man.get("k"), dtype=dtype, device=device)
        if man.get("model_name"):
            clt.meta["model_name"] = man["model_name"]
        return clt

    def __repr__(self) -> str:
        arch = self.architecture + (f" k={self.k}" if self.architecture == "topk" else "")
        return (f"CrossLayerTranscoder({arch}, layers {self.layers[0]}..{self.layers[-1]} ({self.n_layers}), "  # type: ignore[index]
                f"{self.input_site}->{self.output_site}, d_in={self.d_in}, d_sae={self.d_sae}, d_out={self.d_out}, "
                f"{str(self.dtype).replace('torch.', '')}, {self.device})")


def load_circuit_tracer_clt(folder: str | Path, *, layers: list[int] | None = None, input_site: str = "mlp_in",
                            output_site: str = "mlp_out", architecture: str | None = None, k: int | None = None,
                            dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                            ) -> CrossLayerTranscoder:
    """A CLT from circuit-tracer's files (``W_enc_{i}.safetensors`` + ``W_dec_{i}.safetensors``, i = 0..n-1)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DictionaryError(f"no CLT folder at {folder}")
    idx = sorted(int(m.group(1)) for p in folder.glob("W_enc_*.safetensors")
                 if (m := re.fullmatch(r"W_enc_(\d+)\.safetensors", p.name)))
    if not idx:
        raise DictionaryError(f"{folder} holds no circuit-tracer CLT files (W_enc_0.safetensors, W_dec_0.safetensors, ...)")
    n = len(idx)
    if idx != list(range(n)):
        raise DictionaryError(f"{folder}: the CLT files must be numbered 0..{n - 1}, found W_enc_{idx}")
    enc, dec = [], []
    for i in range(n):
        e = _read_st(folder / f"W_enc_{i}.safetensors")
        for key in (f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"):
            if key not in e:
                raise DictionaryError(f"{folder / f'W_enc_{i}.safetensors'} has no tensor {key!r} (it has: "
                                      f"{', '.join(sorted(e))})")
        enc.append(e)
        d = _read_st(folder / f"W_dec_{i}.safetensors")
        if f"W_dec_{i}" not in d:
            raise DictionaryError(f"{folder / f'W_dec_{i}.safetensors'} has no tensor 'W_dec_{i}'")
        dec.append(d[f"W_dec_{i}"])
    has_thr = [f"threshold_{i}" in e for i, e in enumerate(enc)]
    has_skip = [f"W_skip_{i}" in e for i, e in enumerate(enc)]
    for what, flags in (("threshold", has_thr), ("W_skip", has_skip)):
        if any(flags) and not all(flags):
            raise DictionaryError(f"{folder}: some layers have {what} and some do not: all or none must")
    shapes = {tuple(e[f"W_enc_{i}"].shape) for i, e in enumerate(enc)}
    if len(shapes) != 1:
        raise DictionaryError(f"{folder}: the layers' W_enc have different shapes {sorted(shapes)}")
    d_sae, d_in = next(iter(shapes))
    W_enc = torch.stack([e[f"W_enc_{i}"].T for i, e in enumerate(enc)])
    thr = torch.stack([e[f"threshold_{i}"].reshape(-1) for i, e in enumerate(enc)]) if all(has_thr) and n else None
    arch = architecture or ("jumprelu" if thr is not None else "relu")
    if arch == "jumprelu" and thr is not None and bool((thr < 0).any()):
        warnings.warn(f"{folder}: some JumpReLU thresholds are negative; circuit-tracer passes negative pre-activations "
                      "above them, the workbench's jumprelu (relu(pre) * (pre > threshold)) does not",
                      DictionaryWarning, stacklevel=3)
    if dtype is None:
        dtype = W_enc.dtype
    clt = CrossLayerTranscoder(
        W_enc=W_enc, b_enc=torch.stack([e[f"b_enc_{i}"] for i, e in enumerate(enc)]), W_dec=dec,
        b_dec=torch.stack([e[f"b_dec_{i}"] for i, e in enumerate(enc)]), layers=layers, architecture=arch,
        threshold=thr, k=k, W_skip=torch.stack([e[f"W_skip_{i}"] for i, e in enumerate(enc)]) if all(has_skip) else None,
        input_site=input_site, output_site=output_site, meta={"format": "circuit-tracer-clt", "path": str(folder)})
    return clt.to(device=device, dtype=dtype) if (device is not None or dtype != clt.dtype) else clt


# -- the registry -----------------------------------------------------------------------------------------
_CLTS: dict[str, CrossLayerTranscoder] = {}


def register_clt(clt: CrossLayerTranscoder, name: str | None = None) -> str:
    """Give a CLT a name that `CLTFeatureEdit` (and its JSON) uses; returns the name."""
    if not isinstance(clt, CrossLayerTranscoder):
        raise TypeError(f"register_clt takes a CrossLayerTranscoder, not {type(clt).__name__}")
    for old, other in list(_CLTS.items()):
        if other is clt:
            if name is None or name == old:
                return old
            del _CLTS[old]
    if name is None:
        base = str(clt.meta.get("name") or (Path(clt.meta["path"]).name if clt.meta.get("path") else "clt"))
        name, i = base, 1
        while name in _CLTS:
            i += 1
            name = f"{base}#{i}"
    _CLTS[name] = clt
    return name


def get_clt(name: str) -> CrossLayerTranscoder:
    """The CLT registered under ``name``."""
    if name not in _CLTS:
        raise DictionaryError(f"no CLT is registered under the name {name!r} (registered: "
                              f"{', '.join(sorted(_CLTS)) or 'none'}); load it and call register_clt(clt, name)")
    return _CLTS[name]


def registered_clts() -> dict[str, CrossLayerTranscoder]:
    """A copy of the CLT registry."""
    return dict(_CLTS)


def _resolve_clt(ref: Any, path: str | None) -> tuple[str, CrossLayerTranscoder]:
    if isinstance(ref, CrossLayerTranscoder):
        return register_clt(ref), ref
    if not isinstance(ref, str) or not ref:
        raise TypeError(f"a CLT feature edit needs a CrossLayerTranscoder or a registered name, not {type(ref).__name__}")
    if ref in _CLTS:
        return ref, _CLTS[ref]
    if path is not None and Path(path).is_dir():
        clt = CrossLayerTranscoder.load(path)
        return register_clt(clt, ref), clt
    get_clt(ref)  # raises with the known names
    raise AssertionError  # pragma: no cover


# -- the spec ---------------------------------------------------------------------------------------------
@register_spec_kind
@dataclass
class CLTFeatureEdit(Spec):
    """Edit latents ``features`` of CLT layer ``layer`` and add the decoded difference to every later
    covered layer's output site (reconstruction error kept).

    ``op``: ``zero``, ``scale`` (value: factor), ``set``, ``add`` (a value or one per feature);
    ``positions=None``: every position (and generated token); ``rows``: some prompts only.
    """

    kind: ClassVar[str] = "clt_feature_edit"
    site: str = field(default="", kw_only=True)
    clt: Any = None
    layer: int = 0
    features: list[int] = field(default_factory=list)
    op: str = "zero"
    value: Any = None
    positions: Positions = None
    path: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        name, clt = _resolve_clt(self.clt, self.path)
        self.clt, self._clt = name, clt
        p = clt.meta.get("path")
        self.path = str(p) if p is not None else self.path
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise TypeError(f"layer is an integer, not {self.layer!r}")
        i = clt.index(self.layer)
        want = f"{clt.input_site}.{clt.layers[i]}"  # type: ignore[index]
        if self.site and Site.parse(self.site) != Site.parse(want):
            raise DictionaryError(f"the spec says site {self.site}, but CLT layer {self.layer} reads {want}")
        self.site = want
        super().__post_init__()
        if self.op not in _OPS:
            raise ValueError(f"unknown op {self.op!r}: a feature edit is one of {', '.join(_OPS)}")
        feats = as_list(self.features)
        feats = [feats] if isinstance(feats, int | float) else list(feats or [])
        if any(isinstance(f, bool) or not isinstance(f, int | float) or int(f) != f for f in feats):
            raise ValueError(f"features are integer latent indices, not {self.features!r}")
        n = clt.d_sae
        bad = [f for f in feats if not -n <= int(f) < n]
        if bad:
            raise IndexError(f"feature {bad[0]} is out of range for CLT {name!r} ({n} latents per layer)")
        feats = [int(f) % n for f in feats]
        if len(set(feats)) != len(feats):
            raise ValueError(f"feature listed twice in {feats}")
        self.features = feats
        self.value = edit_value(self.op, self.value, len(feats), "CLT feature edit")
        self.positions = None if self.positions is None else [int(p) for p in as_list(self.positions)]

    @property
    def clt_object(self) -> CrossLayerTranscoder:
        return self._clt

    @property
    def is_noop(self) -> bool:
        vals = self.value if isinstance(self.value, list) else [self.value]
        return not self.features or (self.op == "scale" and all(v == 1.0 for v in vals)) or \
            (self.op == "add" and all(v == 0.0 for v in vals))

    def describe(self) -> str:
        f = ",".join(map(str, self.features[:6])) + ("…" if len(self.features) > 6 else "")
        v = "" if self.value is None else (f" ×{self.value}" if self.op == "scale" else f" {self.value}")
        return f"{self.op} CLT features [{f}] of {self.clt} layer {self.layer}{v}"

    def compile(self, model: Any) -> list[TraceOp]:
        """Check the CLT against ``model``; a read op at the layer's input site and one write op per output layer."""
        clt = self._clt
        clt.check(model)
        if self.is_noop:
            return []
        if not getattr(model, "remote", False) and clt.device != model.device:
            clt = _on_device(clt, model.device)
        i = clt.index(self.layer)
        read = CLTReadOp(self.site, clt.dictionary(self.layer), clt.W_dec[i],
                         self.features, self.op, self.value, self.positions, self.rows, self.describe())
        writes = [CLTWriteOp(read, j, f"{clt.output_site}.{L}") for j, L in enumerate(clt.out_layers(self.layer))]
        return [read, *writes]


_DEVICE_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # CLT -> {device: copy}


def _on_device(clt: CrossLayerTranscoder, device: torch.device) -> CrossLayerTranscoder:
    """``clt`` on ``device``, cached per CLT so that repeated runs do not copy again."""
    copies = _DEVICE_COPIES.setdefault(clt, {})
    c = copies.get(str(device))
    if c is None:
        c = copies[str(device)] = clt.to(device=device)
        c.meta = clt.meta
    return c


class CLTReadOp(TraceOp):
    """At the source layer's input site: the decoded difference for every output layer, kept for the writes."""

    def __init__(self, site: str, d: Dictionary, W_dec: Tensor, features: list[int], op: str, value: Any,
                 positions: list[int] | None, rows: list[int] | None, label: str):
        self.site, self.d, self.W_dec, self.features, self.op, self.value = site, d, W_dec, features, op, value
        self.positions, self.rows, self.label = positions, rows, label
        self.cache: dict = {}
        self.pending: list[tuple[Any, Any, Tensor]] = []  # (rows, pos, [..., n_out, d_out])

    def check(self, program: TraceProgram) -> None:
        program.check_rows(self.label, self.rows)
        program.check_positions(self.label, self.positions)

    def apply(self, program: TraceProgram, x: Tensor, st: Step) -> None:
        d = self.d
        if d.device != x.device:  # a remote model's device is only known here
            d = self.d = d.to(x.device)
            self.W_dec = self.W_dec.to(x.device)
            self.cache = {}
        key = ("idx", x.device)
        idx = self.cache.get(key)
        if idx is None:
            idx = self.cache[key] = torch.tensor(self.features, device=x.device, dtype=torch.long)
            self.cache["Wd"] = self.W_dec.index_select(0, idx)  # [n_feat, n_out, d_out]
        self.pending = []
        for rows, pos in program.targets(self.positions, st, x.shape[1], self.rows):
            xs = x[rows, pos].to(d.dtype)
            acts = d.encode_subset(xs, idx, self.cache.setdefault("enc", {}))
            if self.op == "zero":
                delta = -acts
            else:
                v = torch.tensor(self.value, device=x.device, dtype=d.dtype)
                delta = acts * v - acts if self.op == "scale" else v - acts if self.op == "set" else v.expand_as(acts)
            self.pending.append((rows, pos, torch.einsum("...f,fjd->...jd", delta, self.cache["Wd"])))


class CLTWriteOp(TraceOp):
    """At output layer ``j``'s site: add what the read op decoded for it."""

    def __init__(self, src: CLTReadOp, j: int, site: str):
        self.src, self.j, self.site = src, j, site

    def apply(self, program: TraceProgram, x: Tensor, st: Step) -> None:
        for rows, pos, out in self.src.pending:
            x[rows, pos] += out[..., self.j, :].to(x.dtype)
