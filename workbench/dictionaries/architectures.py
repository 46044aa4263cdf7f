"""Dictionary architectures: one class per kind of encoder, in a registry (as SAELens registers its SAE classes).

An `Architecture` says how a `Dictionary` turns its centred input ``x_c`` (normalized, minus
``b_pre``, see `workbench.dictionaries.dictionary`) into latents, which tensors it needs, and how
it is written to and read from SAELens files. `Dictionary`, the loader and writer
(`workbench.dictionaries.formats`), the feature specs and the trainer all go through the registry::

    relu      acts = relu(x_c @ W_enc + b_enc)
    topk      acts = relu of the k largest entries of pre, zero elsewhere
    jumprelu  acts = relu(pre) * (pre > threshold)
    gated     acts = (x_c @ W_enc + b_gate > 0) * relu(x_c @ (W_enc * exp(r_mag)) + b_mag)
    nmf       acts = relu(pre)   # a semi-NMF projection stored in W_enc/b_enc

A new architecture is a subclass registered under its name::

    @register_architecture
    class SquaredReLU(ReLU):
        name = "relu2"
        saelens = "relu2"        # the "architecture" its SAELens cfg.json says

        def encode(self, d, xc):
            return torch.relu(self.pre_acts(d, xc)) ** 2

        def encode_subset(self, d, xc, idx, cache=None):
            return super().encode_subset(d, xc, idx, cache) ** 2

``Dictionary(..., architecture="relu2")`` then encodes with it, and `save_saelens` /
`load_dictionary` round-trip it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DictionaryError

if TYPE_CHECKING:
    from .dictionary import Dictionary

__all__ = [
    "Architecture", "ARCHITECTURES", "register_architecture", "get_architecture", "saelens_architectures",
    "SAELensSource", "ReLU", "TopK", "JumpReLU", "Gated", "NMF",
]

#: The registry: architecture name -> its (stateless) `Architecture` object.
ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(cls: type[Architecture]) -> type[Architecture]:
    """Class decorator: make ``cls`` the architecture called ``cls.name`` (a later registration wins)."""
    if not (isinstance(cls, type) and issubclass(cls, Architecture)):
        raise TypeError(f"register_architecture takes an Architecture subclass, not {cls!r}")
    if not isinstance(cls.name, str) or not cls.name:
        raise ValueError(f"{cls.__name__}.name must be a non-empty string")
    ARCHITECTURES[cls.name] = cls()
    return cls


def get_architecture(name: str) -> Architecture:
    """The registered architecture called ``name`` (`DictionaryError` if there is none)."""
    a = ARCHITECTURES.get(name) if isinstance(name, str) else None
    if a is None:
        raise DictionaryError(f"unknown architecture {name!r}; supported: {', '.join(ARCHITECTURES)}")
    return a


def saelens_architectures() -> dict[str, tuple[str, bool, bool]]:
    """SAELens architecture name -> (workbench architecture, transcoder?, skip connection?), for loading."""
    table: dict[str, tuple[str, bool, bool]] = {}
    for a in ARCHITECTURES.values():  # a name two architectures write loads as the first registered (relu, not nmf)
        for n in (a.saelens, *a.saelens_aliases):
            table.setdefault(n, (a.name, False, False))
        if a.saelens_transcoder:
            table.setdefault(a.saelens_transcoder, (a.name, True, False))
            table.setdefault(_skip_name(a.saelens_transcoder), (a.name, True, True))
    return table


def _skip_name(transcoder_name: str) -> str:
    return transcoder_name.replace("transcoder", "skip_transcoder")


def _cached(cache: dict | None, key: str, make: Callable[[], Tensor]) -> Tensor:
    if cache is None:
        return make()
    t = cache.get(key)
    if t is None:
        t = cache[key] = make()
    return t


@dataclass
class SAELensSource:
    """What `Architecture.read_saelens` reads: a SAELens folder's config and state dict."""

    name: str  # the SAELens architecture name (cfg.json's "architecture", or inferred for old configs)
    cfg: dict[str, Any]
    tensors: dict[str, Tensor]
    #: ``latent(name, why, tensor=None)``: the state dict's ``name`` (or ``tensor``), checked to be ``[d_sae]``;
    #: raises `DictionaryError` saying it is needed ``why`` when it is missing.
    latent: Callable[..., Tensor]
    where: str  # the config file, for messages

    def error(self, message: str) -> DictionaryError:
        """A `DictionaryError` about the config file."""
        return DictionaryError(f"{self.where}: {message}")


class Architecture:
    """How one kind of dictionary encodes (the subclasses below; register new ones with `register_architecture`).

    Methods take the `Dictionary` ``d`` and its centred input ``xc [..., d_in]``. ``name`` is the
    workbench name (`Dictionary.architecture`); ``saelens`` the SAELens ``architecture`` of an SAE
    and ``saelens_transcoder`` that of a transcoder (None: SAELens has none, the SAE name is
    written with ``d_out``); ``saelens_aliases`` other SAELens names read as this architecture. A
    SAELens name that several architectures write loads as the first registered, unless the
    workbench metadata of the file names another that writes it (nmf is saved as "standard").
    ``requires``: tensors it needs besides ``W_enc, b_enc, W_dec, b_dec``.
    """

    name: ClassVar[str] = ""
    saelens: ClassVar[str] = ""
    saelens_transcoder: ClassVar[str | None] = None
    saelens_aliases: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()

    # -- the dictionary ------------------------------------------------------------------------
    def validate(self, d: Dictionary) -> None:
        """Raise `DictionaryError` unless ``d`` has what this architecture needs (may normalize fields)."""
        missing = [n for n in self.requires if getattr(d, n) is None]
        if missing:
            raise DictionaryError(f"a {self.name} dictionary needs {', '.join(missing)} [d_sae]")

    def settings(self, d: Dictionary) -> dict[str, Any]:
        """Settings shown beside the name (``{"k": 32}`` for topk)."""
        return {}

    # -- the computation -------------------------------------------------------------------------
    def pre_acts(self, d: Dictionary, xc: Tensor) -> Tensor:
        """Encoder pre-activations ``[..., d_sae]``: one fused op, as the libraries' nn.Linear."""
        return F.linear(xc, d.W_enc.T, d.b_enc)

    def encode(self, d: Dictionary, xc: Tensor) -> Tensor:
        """Latent activations ``[..., d_sae]`` of the centred input."""
        raise NotImplementedError

    def encode_subset(self, d: Dictionary, xc: Tensor, idx: Tensor, cache: dict | None = None) -> Tensor:
        """The activations of latents ``idx`` only, ``[..., len(idx)]`` (what feature edits need).

        ``cache``: a dict kept by the caller for this dictionary and ``idx`` (sliced weights). The
        default encodes every latent and selects (right for any architecture).
        """
        return self.encode(d, xc).index_select(-1, idx)

    def decode(self, d: Dictionary, acts: Tensor) -> Tensor:
        """``acts @ W_dec + b_dec`` (`Dictionary.decode` then undoes normalization and adds a skip)."""
        return acts @ d.W_dec + d.b_dec

    # -- SAELens files ---------------------------------------------------------------------------
    def saelens_name(self, transcoder: bool, skip: bool) -> str:
        """The SAELens ``architecture`` written for a dictionary of this kind."""
        if transcoder and self.saelens_transcoder:
            return _skip_name(self.saelens_transcoder) if skip else self.saelens_transcoder
        return self.saelens

    def saelens_names(self) -> tuple[str, ...]:
        """Every SAELens name this architecture writes or reads."""
        t = self.saelens_transcoder
        return (self.saelens, *self.saelens_aliases) + ((t, _skip_name(t)) if t else ())

    def fold_input_shift(self, t: dict[str, Tensor], shift: Tensor) -> None:
        """Fold a shift of the input into the encoder biases of ``t`` (float64 tensors, in place):
        ``shift = b_pre @ W_enc``, so that encoding ``x`` gives what encoding ``x - b_pre`` gave."""
        t["b_enc"] = t["b_enc"] - shift

    def saelens_tensors(self, t: dict[str, Tensor]) -> dict[str, Tensor]:
        """The encoder tensors SAELens stores (besides W_enc, W_dec, b_dec, W_skip), from ``t``."""
        return {"b_enc": t["b_enc"]}

    def saelens_config(self, d: Dictionary) -> dict[str, Any]:
        """Extra cfg.json keys for this architecture."""
        return {}

    def read_saelens(self, src: SAELensSource) -> dict[str, Any]:
        """`Dictionary` fields of the encoder (``b_enc`` and this architecture's own) from a SAELens folder."""
        return {"b_enc": src.latent("b_enc", f"by a {src.name} SAE")}

    def finish_saelens(self, src: SAELensSource, fields: dict[str, Any]) -> None:
        """Last changes to the loaded fields (``W_enc, b_enc, W_dec`` ...), in place, after the decoder scaling."""


@register_architecture
class ReLU(Architecture):
    """``acts = relu(x_c @ W_enc + b_enc)`` (SAELens "standard")."""

    name = "relu"
    saelens = "standard"
    saelens_transcoder = "transcoder"

    def encode(self, d: Dictionary, xc: Tensor) -> Tensor:
        return torch.relu(self.pre_acts(d, xc))

    def subset_pre_acts(self, d: Dictionary, xc: Tensor, idx: Tensor, cache: dict | None = None) -> Tensor:
        """The pre-activations of latents ``idx`` only."""
        We = _cached(cache, "We", lambda: d.W_enc.index_select(1, idx).T.contiguous())
        return F.linear(xc, We, d.b_enc[idx])

    def encode_subset(self, d: Dictionary, xc: Tensor, idx: Tensor, cache: dict | None = None) -> Tensor:
        return torch.relu(self.subset_pre_acts(d, xc, idx, cache))


@register_architecture
class TopK(Architecture):
    """The ``k`` largest pre-activations (after a ReLU), zero elsewhere (Gao et al. 2024).

    Ties (likely only in half precision) are broken by ``torch.topk``.
    """

    name = "topk"
    saelens = "topk"

    def validate(self, d: Dictionary) -> None:
        if isinstance(d.k, Tensor):
            d.k = int(d.k.item())
        if not isinstance(d.k, int) or isinstance(d.k, bool) or not 1 <= d.k <= d.d_sae:
            raise DictionaryError(f"a topk dictionary needs k, an integer in 1..d_sae={d.d_sae}; got {d.k!r}")

    def settings(self, d: Dictionary) -> dict[str, Any]:
        return {"k": d.k}

    def encode(self, d: Dictionary, xc: Tensor) -> Tensor:
        pre = self.pre_acts(d, xc)
        vals, idx = torch.topk(pre, d.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))
    # encode_subset: the default (whether a latent is active depends on all the others)

    def saelens_config(self, d: Dictionary) -> dict[str, Any]:
        return {"k": d.k, "rescale_acts_by_decoder_norm": False}

    def read_saelens(self, src: SAELensSource) -> dict[str, Any]:
        out = super().read_saelens(src)
        k = src.cfg.get("k", (src.cfg.get("activation_fn_kwargs") or {}).get("k"))
        if k is None:
            raise src.error("a topk SAE needs 'k' (or activation_fn_kwargs.k)")
        if isinstance(k, float) and k.is_integer():
            k = int(k)
        out["k"] = k
        return out

    def finish_saelens(self, src: SAELensSource, fields: dict[str, Any]) -> None:
        if src.cfg.get("rescale_acts_by_decoder_norm"):  # fold as SAELens's fold_W_dec_norm
            W_enc, b_enc, W_dec = fields["W_enc"], fields["b_enc"], fields["W_dec"]
            norms = W_dec.float().norm(dim=-1).clamp_min(1e-8)
            fields["W_enc"] = (W_enc.float() * norms).to(W_enc.dtype)
            fields["b_enc"] = (b_enc.float() * norms).to(b_enc.dtype)
            fields["W_dec"] = (W_dec.float() / norms[:, None]).to(W_dec.dtype)


@register_architecture
class JumpReLU(ReLU):
    """``acts = relu(pre) * (pre > threshold)`` (Rajamanoharan et al. 2024)."""

    name = "jumprelu"
    saelens = "jumprelu"
    saelens_transcoder = "jumprelu_transcoder"
    saelens_aliases = ("jump_relu",)
    requires = ("threshold",)

    def encode(self, d: Dictionary, xc: Tensor) -> Tensor:
        pre = self.pre_acts(d, xc)
        return torch.relu(pre) * (pre > d.threshold).to(pre.dtype)

    def encode_subset(self, d: Dictionary, xc: Tensor, idx: Tensor, cache: dict | None = None) -> Tensor:
        pre = self.subset_pre_acts(d, xc, idx, cache)
        acts = torch.relu(pre)
        return acts * (pre > d.threshold[idx]).to(pre.dtype)

    def saelens_tensors(self, t: dict[str, Tensor]) -> dict[str, Tensor]:
        return {**super().saelens_tensors(t), "threshold": t["threshold"]}

    def read_saelens(self, src: SAELensSource) -> dict[str, Any]:
        out = super().read_saelens(src)
        sd = src.tensors
        thr = None
        if "threshold" in sd:
            thr = sd["threshold"]
        elif "log_threshold" in sd:
            thr = torch.exp(sd["log_threshold"].float()).to(sd["log_threshold"].dtype)
        out["threshold"] = src.latent("threshold", "by a jumprelu SAE", thr)
        return out


@register_architecture
class Gated(Architecture):
    """``acts = (x_c @ W_enc + b_gate > 0) * relu(x_c @ (W_enc * exp(r_mag)) + b_mag)`` (Rajamanoharan et al.
    2024); ``b_enc`` is unused (loaders set it to ``b_gate``), the pre-activations are the gate's."""

    name = "gated"
    saelens = "gated"
    requires = ("b_gate", "b_mag", "r_mag")

    def pre_acts(self, d: Dictionary, xc: Tensor) -> Tensor:
        return F.linear(xc, d.W_enc.T, d.b_gate)

    def encode(self, d: Dictionary, xc: Tensor) -> Tensor:
        gate = F.linear(xc, d.W_enc.T, d.b_gate) > 0
        mag = torch.relu(F.linear(xc, (d.W_enc * torch.exp(d.r_mag)).T, d.b_mag))
        return mag * gate.to(mag.dtype)

    def encode_subset(self, d: Dictionary, xc: Tensor, idx: Tensor, cache: dict | None = None) -> Tensor:
        Wg = _cached(cache, "Wg", lambda: d.W_enc.index_select(1, idx).T.contiguous())
        Wm = _cached(cache, "Wm", lambda: (d.W_enc.index_select(1, idx) * torch.exp(d.r_mag[idx])).T.contiguous())
        gate = F.linear(xc, Wg, d.b_gate[idx]) > 0
        mag = torch.relu(F.linear(xc, Wm, d.b_mag[idx]))
        return mag * gate.to(mag.dtype)

    def fold_input_shift(self, t: dict[str, Tensor], shift: Tensor) -> None:
        t["b_gate"] = t["b_gate"] - shift
        t["b_mag"] = t["b_mag"] - shift * torch.exp(t["r_mag"])

    def saelens_tensors(self, t: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"b_gate": t["b_gate"], "b_mag": t["b_mag"], "r_mag": t["r_mag"]}

    def read_saelens(self, src: SAELensSource) -> dict[str, Any]:
        out = {n: src.latent(n, "by a gated SAE") for n in ("b_gate", "b_mag", "r_mag")}
        out["b_enc"] = out["b_gate"]
        return out


@register_architecture
class NMF(ReLU):
    """Semi-NMF components (`workbench.semi_nmf`): a ReLU of the stored projection; SAELens sees a standard SAE."""

    name = "nmf"
