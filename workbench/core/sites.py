"""The site table: every standard activation name, in one place.

A `Site` names an activation: ``Site("resid_post", 3)`` or the string ``"resid_post.3"``.
`SITES` is the one table of what exists: per site, whether it has a layer, whether it can be
written, its shape, what it is, and its TransformerLens hook name. Every other list of site
names in the workbench (`WRITABLE`, `TOKEN_SITES`, the TransformerLens aliases in both
directions) is derived from it.

===============  =====================================================  ===============
name             what it is                                             shape
===============  =====================================================  ===============
``embed``        token embeddings (embedding module output)             [b, s, d_model]
``resid_pre``    residual stream entering layer L                       [b, s, d_model]
``ln1_normalized``  pre-attention norm's input, normalized, before its weight/bias  [b, s, d_model]
``z``            per-head outputs before the output projection          [b, s, H, d_head]
``head_out``     per-head contributions after the output projection     [b, s, H, d_model]
``attn_out``     attention block output of layer L                      [b, s, d_model]
``pattern``      attention probabilities (eager attention, exact)       [b, H, s, s]
``resid_mid``    residual stream between attention and MLP (the pre-MLP norm's input)  [b, s, d_model]
``ln2_normalized``  pre-MLP norm's input, normalized, before its weight/bias  [b, s, d_model]
``mlp_in``       MLP input (after the pre-MLP norm, weight and bias included)  [b, s, d_model]
``neurons``      MLP neurons: input to the MLP output projection        [b, s, d_mlp]
``mlp_out``      MLP output of layer L                                  [b, s, d_model]
``resid_post``   residual stream leaving layer L                        [b, s, d_model]
``final_normalized``  final norm's input, normalized, before its weight/bias  [b, s, d_model]
``final_norm``   output of the final norm                               [b, s, d_model]
``logits``       unembedding output                                     [b, s, vocab]
===============  =====================================================  ===============

"Normalized" is TransformerLens's ``hook_normalized``: ``(x - mean) / sqrt(var + eps)`` for
LayerNorm, ``x / sqrt(mean(x^2) + eps)`` for RMSNorm (Gemma's ``1 + weight`` scale too comes
after), computed in float32 with the module's own eps and cast back to the model's dtype.
``resid_mid``, ``ln1_normalized``, ``ln2_normalized`` and ``final_normalized`` are read-only:
writing a norm's input would change what the next module sees, not the residual stream.
A site whose ``hook`` is empty has no exact TransformerLens hook (``mlp_in``: TransformerLens
hooks the norm's value before its weight, ``ln2.hook_normalized``, or its input, ``hook_mlp_in``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import WorkbenchError

__all__ = [
    "SiteInfo", "SITES", "Site", "SITE_NAMES", "LAYER_SITES", "GLOBAL_SITES", "WRITABLE", "TOKEN_SITES",
    "RESIDUAL_SITES", "ALIASES", "site_to_hook", "hook_name_site", "NoHookError",
]


@dataclass(frozen=True)
class SiteInfo:
    """One row of the site table."""

    name: str
    layered: bool  # needs a layer index ("resid_post.3") or not ("embed")
    writable: bool  # interventions may write it
    per_token: bool  # one [b, s, width] vector per token (scans, dictionaries, steering)
    shape: str
    doc: str
    hook: str  # TransformerLens hook name; "{L}" is the layer; "" when TransformerLens has no exact equivalent
    hook_aliases: tuple[str, ...] = ()  # other TransformerLens names read as this site


#: The table, in forward order inside a layer (``pattern`` is the same module output as ``attn_out``).
SITES: dict[str, SiteInfo] = {i.name: i for i in (
    SiteInfo("embed", False, True, True, "[b, s, d_model]", "token embeddings (embedding module output)",
             "hook_embed"),
    SiteInfo("resid_pre", True, True, True, "[b, s, d_model]", "residual stream entering layer L",
             "blocks.{L}.hook_resid_pre"),
    SiteInfo("ln1_normalized", True, False, True, "[b, s, d_model]",
             "the pre-attention norm's input, normalized, before its weight and bias (read-only)",
             "blocks.{L}.ln1.hook_normalized"),
    SiteInfo("z", True, True, False, "[b, s, H, d_head]", "per-head outputs before the output projection",
             "blocks.{L}.attn.hook_z"),
    SiteInfo("head_out", True, False, False, "[b, s, H, d_model]",
             "per-head contributions after the output projection", "blocks.{L}.attn.hook_result"),
    SiteInfo("attn_out", True, True, True, "[b, s, d_model]", "attention block output of layer L",
             "blocks.{L}.hook_attn_out"),
    SiteInfo("pattern", True, False, False, "[b, H, s, s]", "attention probabilities (eager attention, exact)",
             "blocks.{L}.attn.hook_pattern", ("attn_probs",)),
    SiteInfo("resid_mid", True, False, True, "[b, s, d_model]",
             "residual stream between attention and MLP: the pre-MLP norm's input (read-only; GPT-NeoX's "
             "parallel blocks: resid_pre)", "blocks.{L}.hook_resid_mid", ("blocks.{L}.hook_mlp_in",)),
    SiteInfo("ln2_normalized", True, False, True, "[b, s, d_model]",
             "the pre-MLP norm's input, normalized, before its weight and bias (read-only)",
             "blocks.{L}.ln2.hook_normalized"),
    SiteInfo("mlp_in", True, True, True, "[b, s, d_model]",
             "MLP input (after the pre-MLP norm, its weight and bias included; no exact TransformerLens hook)", ""),
    SiteInfo("neurons", True, True, True, "[b, s, d_mlp]", "MLP neurons: input to the MLP output projection",
             "blocks.{L}.mlp.hook_post", ("mlp_post", "hook_mlp_post")),
    SiteInfo("mlp_out", True, True, True, "[b, s, d_model]", "MLP output of layer L", "blocks.{L}.hook_mlp_out"),
    SiteInfo("resid_post", True, True, True, "[b, s, d_model]", "residual stream leaving layer L",
             "blocks.{L}.hook_resid_post"),
    SiteInfo("final_normalized", False, False, True, "[b, s, d_model]",
             "the final norm's input, normalized, before its weight and bias (read-only)",
             "ln_final.hook_normalized"),
    SiteInfo("final_norm", False, True, True, "[b, s, d_model]",
             "output of the final norm (after its weight; no exact TransformerLens hook)", ""),
    SiteInfo("logits", False, True, False, "[b, s, vocab]", "unembedding output", "logits"),
)}

LAYER_SITES = tuple(n for n, i in SITES.items() if i.layered)
GLOBAL_SITES = tuple(n for n, i in SITES.items() if not i.layered)
SITE_NAMES = ("embed",) + LAYER_SITES + ("final_normalized", "final_norm", "logits")
#: Sites whose values can be written (interventions); the others are derived or read-only.
WRITABLE = frozenset(n for n, i in SITES.items() if i.writable)
#: Sites with one vector per token, ``[b, s, width]``: what scans, dictionaries and steering read.
TOKEN_SITES = frozenset(n for n, i in SITES.items() if i.per_token)
#: Per-token sites of width d_model (the residual stream and what writes to it).
RESIDUAL_SITES = frozenset(n for n in TOKEN_SITES if n != "neurons")


def _hook_tail(template: str) -> str:
    """``"blocks.{L}.attn.hook_z"`` -> ``"attn.hook_z"`` (the part after the layer)."""
    return template.split("{L}.", 1)[1] if "{L}." in template else template


#: Short and TransformerLens names -> standard names (``"hook_z"``, ``"attn.hook_z"``, ``"mlp_post"``).
ALIASES: dict[str, str] = {}
for _i in SITES.values():
    for _t in (_i.hook, *_i.hook_aliases):
        if not _t:
            continue
        _tail = _hook_tail(_t)
        ALIASES[_tail] = _i.name
        ALIASES[_tail.rsplit(".", 1)[-1] if _i.layered and _tail.startswith(("attn.", "mlp.")) else _tail] = _i.name
ALIASES.pop("logits", None)
# Layer hooks by their full TransformerLens tail (``ln2.hook_normalized``, ``mlp.hook_post`` ...).
_LAYER_HOOKS = {_hook_tail(t): i.name for i in SITES.values() if i.layered for t in (i.hook, *i.hook_aliases)
                if "{L}" in t}
_LAYER_HOOKS.update({k: v for k, v in ALIASES.items() if k.startswith("hook_") and SITES[v].layered})

# Execution order of sites inside one layer (nnsight reads must follow forward order).
_ORDER = {name: i for i, name in enumerate(LAYER_SITES)}
_ORDER["pattern"] = _ORDER["attn_out"]  # same module output as attn_out
_FINAL_ORDER = {"final_normalized": 0, "final_norm": 1, "logits": 2}

_NEAREST = {
    "mlp_in": "TransformerLens hooks the pre-MLP norm's value before its weight and bias (ln2.hook_normalized, "
              "the site ln2_normalized) and its input (hook_mlp_in / hook_resid_mid, the site resid_mid)",
    "final_norm": "TransformerLens hooks the final norm's value before its weight (ln_final.hook_normalized, "
                  "the site final_normalized)",
}


class NoHookError(WorkbenchError, ValueError):
    """A workbench site with no exact TransformerLens hook."""


def hook_name_site(name: str) -> tuple[str, int | None] | None:
    """``"blocks.3.ln2.hook_normalized"`` -> ``("mlp_in", 3)``; None when it is no TransformerLens site hook."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m:
        site = _LAYER_HOOKS.get(m.group(2))
        return None if site is None else (site, int(m.group(1)))
    for i in SITES.values():
        if not i.layered and name and name in (i.hook, *i.hook_aliases):
            return (i.name, None)
    return None


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
            hooked = hook_name_site(spec)
            block = re.fullmatch(r"blocks\.(\d+)\.(.+)", spec)
            if hooked is not None:
                site = cls(*hooked)
            elif block:  # a TransformerLens-style name that is no workbench site
                site = cls(block.group(2), int(block.group(1)))
            elif spec in ALIASES or spec in SITES:  # a bare layer site gets "needs a layer" below
                site = cls(ALIASES.get(spec, spec), None)
            else:
                m = re.fullmatch(r"([a-z][a-z0-9_]*)\.(-?\d+)", spec)  # negative: parsed, then out of range
                if not m:
                    raise ValueError(f"cannot parse site {spec!r}; use e.g. 'resid_post.3' or 'logits'")
                site = cls(ALIASES.get(m.group(1), m.group(1)), int(m.group(2)))
        else:
            raise TypeError(f"a site is a string, tuple or Site, not {type(spec).__name__}")
        info = SITES.get(site.name)
        if info is None:
            raise ValueError(f"unknown site {site.name!r}; standard names: {', '.join(SITE_NAMES)}")
        if info.layered and site.layer is None:
            raise ValueError(f"site {site.name!r} needs a layer, e.g. '{site.name}.0'")
        if not info.layered and site.layer is not None:
            raise ValueError(f"site {site.name!r} takes no layer")
        return site

    def __str__(self) -> str:
        return self.name if self.layer is None else f"{self.name}.{self.layer}"

    @property
    def info(self) -> SiteInfo:
        """This site's row of the site table."""
        return SITES[self.name]

    @property
    def hook(self) -> str:
        """The TransformerLens hook name (``"blocks.3.hook_resid_post"``); `NoHookError` when there is none."""
        if not self.info.hook:
            near = _NEAREST.get(self.name, "")
            raise NoHookError(f"site {self.name!r} has no exact TransformerLens hook" + (f"; {near}" if near else ""))
        return self.info.hook.format(L=self.layer)

    @property
    def order(self) -> tuple[int, int]:
        """Forward-execution order key."""
        if self.name == "embed":
            return (-1, 0)
        if self.name in _FINAL_ORDER:
            return (10**9, _FINAL_ORDER[self.name])
        return (self.layer, _ORDER[self.name])  # type: ignore[return-value]


def site_to_hook(site: str | Site) -> str:
    """The TransformerLens hook name of a workbench site (``"resid_post.3"`` -> ``"blocks.3.hook_resid_post"``).

    Raises `NoHookError` for a site TransformerLens has no exact hook for (``mlp_in``, ``final_norm``).
    """
    return Site.parse(site).hook
