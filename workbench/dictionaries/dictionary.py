"""`Dictionary`: one sparse dictionary (SAE or transcoder) over one activation site.

A dictionary reads a site (``"resid_post.9"``), encodes an activation ``x [..., d_in]`` into
sparse latents ``acts [..., d_sae]`` and decodes them into ``[..., d_out]``: the site itself for
an SAE, ``out_site`` for a transcoder. Encoding, for every architecture::

    x_n  = normalize(x)                      # see `normalize` below (identity by default)
    x_c  = x_n - b_pre                       # when b_pre is set (SAELens apply_b_dec_to_input)
    acts = architecture.encode(x_c)          # `workbench.dictionaries.architectures`: relu, topk, ...

and decoding ``y = acts @ W_dec + b_dec``, then the normalization is undone (SAEs only for the
per-token modes, as SAELens does), then a skip connection adds ``x @ W_skip`` (raw input).

TransformerLens weight processing. An SAE trained on a TransformerLens model loaded with
``center_writing_weights=True`` (a LayerNorm model: every weight writing to the residual stream
has mean 0 over d_model) saw its site minus the site's mean over d_model. ``center_input``
reproduces that: ``x`` is replaced by ``x - x.mean(-1)`` before everything above (the skip
connection reads it too), and an SAE with ``center_output`` adds the input's mean back after
decoding, so that its reconstruction lives where the site's value does. A transcoder with
``center_output`` writes mean-free outputs (what TransformerLens's ``hook_mlp_out`` holds then);
`workbench.dictionaries.Splice` adds the replaced value's mean back. The SAELens loader sets both
from the file's ``model_from_pretrained_kwargs`` (`workbench.dictionaries.formats`).

Normalization modes (SAELens names): ``"constant_norm_rescale"`` scales each token to norm
``sqrt(d_in)``; ``"layer_norm"`` subtracts the token mean and divides by its (unbiased) std + 1e-5;
``"expected_average_only_in"`` multiplies by the constant ``norm_scale`` (1 when unknown).
Undoing a per-token mode needs the input: ``decode(acts, x)`` or ``forward(x)``.

Each architecture is a registered class (`workbench.dictionaries.architectures`: relu, topk,
jumprelu, gated, nmf, and any registered with `register_architecture`).

Load one with `workbench.load_dictionary` (SAELens, EleutherAI sparsify, dictionary_learning);
`Dictionary.save` writes the SAELens v6 layout. Both go through `set_file_io`, which
`workbench.dictionaries.formats` fills when it is imported (importing `workbench.dictionaries`
does), so that this module does not import the formats module.
"""

from __future__ import annotations

import html
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.arch import resolve
from ..core.sites import Site
from .architectures import ARCHITECTURES, Architecture, get_architecture
from .errors import DictionaryError, DictionaryWarning

__all__ = ["Dictionary", "DictionaryError", "DictionaryWarning", "ARCHITECTURES", "NORMALIZE_MODES", "set_file_io",
           "uses_layernorm"]

NORMALIZE_MODES = (None, "constant_norm_rescale", "layer_norm", "expected_average_only_in")
_PER_TOKEN = ("constant_norm_rescale", "layer_norm")
_LN_EPS = 1e-5

#: What `Dictionary.save` / `Dictionary.load` call: filled by `workbench.dictionaries.formats` on import.
_FILE_IO: dict[str, Callable[..., Any]] = {}


def set_file_io(*, save: Callable[..., Path], load: Callable[..., Dictionary]) -> None:
    """Install the writer (``save(d, path)``) and loader (``load(path, model=None, **kw)``) behind
    `Dictionary.save` and `Dictionary.load` (`workbench.dictionaries.formats` installs its own)."""
    _FILE_IO.update(save=save, load=load)


def _file_io(what: str) -> Callable[..., Any]:
    fn = _FILE_IO.get(what)
    if fn is None:
        raise DictionaryError("no dictionary file format is installed: import workbench.dictionaries")
    return fn


def uses_layernorm(model: Any) -> bool:
    """Whether ``model``'s blocks normalize with LayerNorm (mean and variance), as GPT-2 and Pythia do,
    rather than RMSNorm: TransformerLens centres the residual stream of LayerNorm models only."""
    arch = model.arch
    try:
        layer0 = resolve(model.hf, arch.layers)[0]
        norm = resolve(layer0, arch.ln1) if arch.ln1 else resolve(model.hf, arch.final_norm)
    except (AttributeError, IndexError, TypeError):
        return False
    name = type(norm).__name__
    return isinstance(norm, torch.nn.LayerNorm) or ("LayerNorm" in name and "RMS" not in name)


def _norm_name(name: str) -> str:
    """A model name reduced for comparison across hubs: last path part, lower case, no separators."""
    return re.sub(r"[^a-z0-9]", "", str(name).rstrip("/").split("/")[-1].lower())


@dataclass(eq=False)
class Dictionary:
    """A sparse dictionary over one site: SAE (``out_site`` None) or transcoder (reads ``site``, writes ``out_site``).

    Shapes: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``,
    ``threshold/b_gate/b_mag/r_mag [d_sae]``, ``b_pre [d_in]``, ``W_skip [d_in, d_out]``.
    All tensors share ``W_enc``'s dtype and device. ``architecture`` names a registered
    `Architecture` (an `Architecture` subclass or object is accepted and stored by name); for
    ``"gated"``, ``b_enc`` is not used by `encode` (loaders set it to ``b_gate``). ``meta`` holds the source format, path, model name,
    hook names and raw config; ``meta["sparsity"]`` (if present) is SAELens's log10 firing density.
    """

    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    architecture: str
    site: str
    out_site: str | None = None
    k: int | None = None
    threshold: Tensor | None = None
    b_gate: Tensor | None = None
    b_mag: Tensor | None = None
    r_mag: Tensor | None = None
    b_pre: Tensor | None = None
    normalize: str | None = None
    norm_scale: float | None = None
    W_skip: Tensor | None = None
    labels: dict[int, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    center_input: bool = False  # subtract the input's mean over d_in first (TransformerLens centring)
    center_output: bool = False  # the decoder's outputs are mean-free (an SAE adds the input's mean back)

    # -- validation ------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if isinstance(self.architecture, Architecture) or (isinstance(self.architecture, type)
                                                            and issubclass(self.architecture, Architecture)):
            self.architecture = self.architecture.name
        get_architecture(self.architecture)  # raises for an unknown name
        if self.normalize == "none":
            self.normalize = None
        if self.normalize not in NORMALIZE_MODES:
            raise DictionaryError(f"unknown normalize mode {self.normalize!r}; supported: "
                                  f"{', '.join(str(m) for m in NORMALIZE_MODES)}")
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            if not isinstance(getattr(self, name), Tensor):
                raise DictionaryError(f"{name} must be a torch tensor, not {type(getattr(self, name)).__name__}")
        if self.W_enc.dim() != 2 or not self.W_enc.is_floating_point():
            raise DictionaryError(f"W_enc must be a 2-D float tensor [d_in, d_sae], got shape {list(self.W_enc.shape)} "
                                  f"({self.W_enc.dtype})")
        ref = self.W_enc
        d_in, d_sae = ref.shape
        if self.W_dec.dim() != 2 or self.W_dec.shape[0] != d_sae:
            raise DictionaryError(f"W_dec has shape {list(self.W_dec.shape)} but W_enc {list(ref.shape)} means "
                                  f"W_dec should be [d_sae={d_sae}, d_out]")
        d_out = self.W_dec.shape[1]
        want = {"b_enc": (d_sae,), "b_dec": (d_out,), "threshold": (d_sae,), "b_gate": (d_sae,), "b_mag": (d_sae,),
                "r_mag": (d_sae,), "b_pre": (d_in,), "W_skip": (d_in, d_out)}
        for name, shape in want.items():
            t = getattr(self, name)
            if t is None:
                continue
            if not isinstance(t, Tensor):
                t = torch.as_tensor(t)
            if name == "threshold" and t.dim() == 0:
                t = t.expand(d_sae)  # one threshold for all latents
            if tuple(t.shape) != shape:
                raise DictionaryError(f"{name} has shape {list(t.shape)}; expected {list(shape)} "
                                      f"(d_in={d_in}, d_sae={d_sae}, d_out={d_out})")
            if t.dtype != ref.dtype or t.device != ref.device:
                t = t.to(device=ref.device, dtype=ref.dtype)
            setattr(self, name, t)
        self.architecture_impl.validate(self)
        try:
            self.site = str(Site.parse(self.site))
            if self.out_site is not None:
                self.out_site = str(Site.parse(self.out_site))
        except (ValueError, TypeError) as exc:
            raise DictionaryError(f"bad site for a dictionary: {exc}") from None
        if self.out_site is None and d_out != d_in:
            raise DictionaryError(f"an SAE (no out_site) must decode to its input width: d_in={d_in} but "
                                  f"W_dec gives d_out={d_out}; set out_site for a transcoder")
        if self.norm_scale is not None:
            self.norm_scale = float(self.norm_scale)
            if not math.isfinite(self.norm_scale) or self.norm_scale <= 0:
                raise DictionaryError(f"norm_scale must be a positive number, got {self.norm_scale}")
        self.labels = {int(i): str(v) for i, v in dict(self.labels or {}).items()}
        self.meta = dict(self.meta or {})
        self.center_input, self.center_output = bool(self.center_input), bool(self.center_output)

    # -- sizes -----------------------------------------------------------------------------
    @property
    def architecture_impl(self) -> Architecture:
        """The registered `Architecture` that ``architecture`` names (how this dictionary encodes)."""
        return get_architecture(self.architecture)

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def is_transcoder(self) -> bool:
        return self.out_site is not None

    @property
    def directions(self) -> Tensor:
        """Decoder rows scaled to unit norm ``[d_sae, d_out]`` (what a latent writes)."""
        w = self.W_dec
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # -- computation -----------------------------------------------------------------------
    def _input(self, x: Any, width: int, what: str) -> Tensor:
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x)
        if x.dim() == 0 or x.shape[-1] != width:
            raise DictionaryError(f"{what} has shape {list(x.shape)}: its last axis must be {width} "
                                  f"({self._describe_sizes()})")
        return x.to(device=self.device, dtype=self.dtype)

    def _describe_sizes(self) -> str:
        return f"site {self.site}, d_in={self.d_in}, d_sae={self.d_sae}, d_out={self.d_out}"

    def norm_stats(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """Per-token normalization as ``(multiplier, shift, undo_multiplier)``: normalized input
        ``(x - shift) * multiplier``, undone by ``y * undo_multiplier + shift`` (float32 statistics)."""
        xf = x.float()
        if self.normalize == "constant_norm_rescale":
            mult = math.sqrt(self.d_in) / xf.norm(dim=-1, keepdim=True)
            return mult, torch.zeros((), device=x.device), 1.0 / mult
        if self.normalize == "layer_norm":  # as SAELens: divide by std + eps, undo with std
            mu = xf.mean(dim=-1, keepdim=True)
            std = (xf - mu).std(dim=-1, keepdim=True)
            return 1.0 / (std + _LN_EPS), mu, std
        return None

    def processed_input(self, x: Tensor) -> Tensor:
        """``x`` as the dictionary was trained to read it: minus its mean over the last axis when
        ``center_input`` (TransformerLens's ``center_writing_weights``), else ``x`` itself."""
        return x - x.mean(dim=-1, keepdim=True) if self.center_input else x

    def _normalized(self, x: Tensor) -> Tensor:
        if self.normalize == "expected_average_only_in":
            return x * self.norm_scale if self.norm_scale not in (None, 1.0) else x
        st = self.norm_stats(x)
        if st is None:
            return x
        mult, shift, _ = st
        return ((x.float() - shift) * mult).to(x.dtype)

    def _centered(self, x: Tensor) -> Tensor:
        xn = self._normalized(self.processed_input(x))
        return xn - self.b_pre if self.b_pre is not None else xn

    def pre_acts(self, x: Tensor) -> Tensor:
        """Encoder pre-activations ``[..., d_sae]`` (for gated: the gate pre-activations)."""
        xc = self._centered(self._input(x, self.d_in, "input"))
        return self.architecture_impl.pre_acts(self, xc)

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations ``[..., d_sae]`` of inputs ``x [..., d_in]`` (any leading shape)."""
        x = self._input(x, self.d_in, "input")
        return self.architecture_impl.encode(self, self._centered(x))

    def encode_subset(self, x: Tensor, idx: Tensor, cache: dict | None = None) -> Tensor:
        """The activations of latents ``idx`` (a long tensor) only, ``[..., len(idx)]``; ``cache``: a dict
        the caller keeps for this dictionary and ``idx`` (see `Architecture.encode_subset`)."""
        x = self._input(x, self.d_in, "input")
        return self.architecture_impl.encode_subset(self, self._centered(x), idx, cache)

    def decode(self, acts: Tensor, x: Tensor | None = None) -> Tensor:
        """Reconstruction ``[..., d_out]`` from latents; ``x`` (the encoded input) is needed to undo a
        per-token normalization and for a skip connection."""
        acts = self._input(acts, self.d_sae, "latent activations")
        y = self.architecture_impl.decode(self, acts)
        raw = None
        if x is not None:
            raw = self._input(x, self.d_in, "input")
            if raw.shape[:-1] != acts.shape[:-1]:
                raise DictionaryError(f"decode: input x {list(raw.shape)} and latents {list(acts.shape)} "
                                      "have different leading shapes")
            x = self.processed_input(raw)
        if self.normalize == "expected_average_only_in":
            if self.norm_scale is not None and self.norm_scale != 1.0:
                y = y / self.norm_scale
        elif self.normalize in _PER_TOKEN and not self.is_transcoder:
            if x is None:
                raise DictionaryError(f"this dictionary normalizes each input ({self.normalize}); decoding back to "
                                      "activation scale needs that input: use decode(acts, x) or forward(x)")
            _, shift, undo = self.norm_stats(x)  # type: ignore[misc]
            y = (y.float() * undo + shift).to(y.dtype)
        if self.W_skip is not None:
            if x is None:
                raise DictionaryError("this dictionary has a skip connection (W_skip), which reads the input: "
                                      "use decode(acts, x) or forward(x)")
            y = y + x @ self.W_skip
        if self.center_output and not self.is_transcoder:
            if raw is None:
                raise DictionaryError("this SAE reads its input minus the input's mean (center_input, TransformerLens's "
                                      "center_writing_weights); decoding back to the site needs that input: use "
                                      "decode(acts, x) or forward(x)")
            y = y + raw.mean(dim=-1, keepdim=True).to(y.dtype)
        return y

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(reconstruction [..., d_out], acts [..., d_sae])`` for inputs ``x [..., d_in]``."""
        x = self._input(x, self.d_in, "input")
        acts = self.encode(x)
        return self.decode(acts, x), acts

    __call__ = forward

    # -- conversion ------------------------------------------------------------------------
    def to(self, *args: Any, device: str | torch.device | None = None,
           dtype: torch.dtype | None = None) -> Dictionary:
        """A copy on another device and/or dtype: ``d.to("cuda")``, ``d.to(torch.bfloat16)``."""
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            elif isinstance(a, (str, torch.device)):
                device = a
            else:
                raise TypeError(f"Dictionary.to takes a device and/or a dtype, not {a!r}")
        if dtype is not None and not dtype.is_floating_point:
            raise DictionaryError(f"a dictionary's dtype must be floating point, not {dtype}")
        kw = {}
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "b_mag", "r_mag", "b_pre", "W_skip"):
            t = getattr(self, name)
            kw[name] = None if t is None else t.to(device=device, dtype=dtype)
        return replace(self, **kw, labels=dict(self.labels), meta=dict(self.meta))

    # -- model fit -------------------------------------------------------------------------
    def check(self, model: Any) -> Dictionary:
        """Raise `DictionaryError` unless the dictionary fits ``model`` (site layer and width);
        warn (`DictionaryWarning`) when it names another model. Returns ``self``."""
        arch = model.arch
        for role, spec, width in (("reads", self.site, self.d_in), ("writes", self.out_site, self.d_out)):
            if spec is None:
                continue
            site = Site.parse(spec)
            try:
                arch.check_layer(site.layer)
            except IndexError:
                raise DictionaryError(f"the dictionary {role} {site}, but {getattr(model, 'name', '') or 'this model'} "
                                      f"has layers 0..{arch.n_layers - 1}") from None
            expected = arch.size(site)
            ok = width == expected
            if site.name == "z":  # SAELens hook_z SAEs: all heads flattened, or one head
                ok = width in (arch.d_head, arch.n_heads * arch.d_head)
                expected = arch.n_heads * arch.d_head
            if not ok:
                raise DictionaryError(
                    f"the dictionary {role} {site} with width {width}, but {getattr(model, 'name', '') or 'this model'} "
                    f"has width {expected} there (d_model={arch.d_model}, d_mlp={arch.d_mlp}): "
                    "it was trained on another model or site")
        if (self.center_input or self.center_output) and self.meta.get("centring_assumes_layernorm") \
                and not uses_layernorm(model):
            raise DictionaryError(
                f"the dictionary centres its {'input' if self.center_input else 'output'} because its file says "
                "center_writing_weights=True (model_from_pretrained_kwargs), which TransformerLens applies to "
                f"LayerNorm models only; {getattr(model, 'name', '') or 'this model'} uses RMSNorm, so TransformerLens "
                "fed it uncentred activations: load it with load_dictionary(path, model=model) to read it that way")
        theirs = self.meta.get("model_name")
        ours = getattr(model, "name", "")
        if theirs and ours and _norm_name(theirs) != _norm_name(ours):
            warnings.warn(f"the dictionary was trained on {theirs!r}, the loaded model is {ours!r} "
                          "(fine if they are the same model under two names)", DictionaryWarning, stacklevel=2)
        return self

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the SAELens v6 layout (cfg.json + sae_weights.safetensors) into folder ``path``."""
        return _file_io("save")(self, path)

    @classmethod
    def load(cls, path: str | Path, model: Any = None, **kwargs: Any) -> Dictionary:
        """Load any supported format (see `workbench.load_dictionary`)."""
        return _file_io("load")(path, model=model, **kwargs)

    # -- display ---------------------------------------------------------------------------
    def _settings(self, sep: str) -> str:
        return sep.join(f"{k}={v}" for k, v in self.architecture_impl.settings(self).items())

    def _summary(self) -> list[tuple[str, str]]:
        arch = self.architecture + (f" ({self._settings(', ')})" if self._settings(", ") else "")
        if self.W_skip is not None:
            arch += " + skip"
        rows = [("architecture", arch),
                ("site", self.site + (f" → {self.out_site}" if self.out_site else "")),
                ("sizes", f"d_in={self.d_in}, d_sae={self.d_sae}" + (f", d_out={self.d_out}" if self.is_transcoder else "")),
                ("dtype / device", f"{str(self.dtype).replace('torch.', '')} / {self.device}")]
        if self.normalize:
            rows.append(("normalize", self.normalize + (f" (scale {self.norm_scale:g})" if self.norm_scale else "")))
        if self.b_pre is not None:
            rows.append(("input centering", "b_pre subtracted before encoding"))
        if self.center_input or self.center_output:
            what = " and ".join(w for w, on in (("input", self.center_input), ("output", self.center_output)) if on)
            rows.append(("TransformerLens centring", f"{what} mean-free over d_model (center_writing_weights)"))
        for key, label in (("format", "source format"), ("model_name", "trained on"), ("path", "path")):
            if self.meta.get(key):
                rows.append((label, str(self.meta[key])))
        if self.labels:
            rows.append(("labels", f"{len(self.labels)} latents labelled"))
        return rows

    def __repr__(self) -> str:
        arch = " ".join(filter(None, (self.architecture, self._settings(" "))))
        where = self.site + (f"->{self.out_site}" if self.out_site else "")
        src = f", from {self.meta['format']}" if self.meta.get("format") else ""
        return (f"Dictionary({arch}, {where}, d_in={self.d_in}, d_sae={self.d_sae}"
                f"{f', d_out={self.d_out}' if self.is_transcoder else ''}, "
                f"{str(self.dtype).replace('torch.', '')}, {self.device}{src})")

    def _repr_html_(self) -> str:
        kind = "transcoder" if self.is_transcoder else "SAE"
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                       for k, v in self._summary())
        return f"<div><b>Dictionary</b> ({html.escape(kind)})<table>{body}</table></div>"
