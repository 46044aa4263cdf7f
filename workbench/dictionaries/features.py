"""Interventions on dictionary features: edit SAE / transcoder latents inside the model.

    d = wb.load_dictionary("path/to/sae", model=model)           # or any `Dictionary`
    model.run(prompt, [wb.dictionaries.scale_features(d, [123], 4.0)])          # turn latent 123 up
    model.generate(prompt, [wb.dictionaries.zero_features(d, 123)])            # ... or off, at every step
    model.run(prompt, [wb.dictionaries.Splice(d)])                              # what the dictionary "sees"
    wb.steer(9, wb.dictionaries.feature_direction(d, 123), 8.0)                 # steer along its decoder row

Two specs, compiled by the engine like every other spec (`workbench.core.specs`):

- `FeatureEdit` encodes the activation ``x`` at the dictionary's ``site``, applies ``op``
  (``zero`` / ``scale`` / ``set`` / ``add``) to the chosen latents, and adds the decoded
  difference, keeping the reconstruction error::

      x_new = x + decode(edited) - decode(acts) = x + ((edited - acts)[idx] @ W_dec[idx]) * u

  where ``u`` undoes the input normalization (per token for ``constant_norm_rescale`` /
  ``layer_norm`` SAEs, ``1 / norm_scale`` for ``expected_average_only_in``, as
  `Dictionary.decode` does). ``b_dec``, the normalization shift and a skip connection
  cancel exactly, so only the edited latents' rows of ``W_dec`` are touched. A transcoder
  reads ``site`` (``mlp_in.L``) and adds the difference to ``out_site`` (``mlp_out.L``).
  A latent that is not active and is zeroed or scaled gives a difference of exactly 0.
  Without an effective edit (no features, ``scale`` by 1, ``add`` 0) the spec is dropped
  before the trace: the site is not even visited and the output is bit-identical.
- `Splice` replaces the site (transcoder: ``out_site``) by the dictionary's reconstruction
  ``forward(x)[0]``, error term dropped: for evaluation (`workbench.evaluate_dictionary`)
  and to see the model through the dictionary.

A dictionary trained on a TransformerLens model with centred weights (``center_input`` /
``center_output``, read from its SAELens file) reads the site minus its mean over d_model; an
SAE's reconstruction gets that mean back, and a transcoder's spliced output gets the mean of the
value it replaces, so only the mean-free part changes (which is all that the next norm sees).

Several specs on one site apply in list order, each on the output of the previous one.

JSON. A spec names its dictionary: ``to_dict()`` stores ``dictionary`` (a name in this
process's registry) and ``path`` (``d.meta["path"]``, where it was loaded from, if known).
`register_dictionary` gives a dictionary a name (specs built from a `Dictionary` register it
themselves); `spec_from_dict` resolves the name through the registry, else loads the
dictionary from ``path`` (and registers it under that name), else raises `DictionaryError`.
"""

from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.program import Step, TraceOp, TraceProgram, check_finite
from ..core.sites import TOKEN_SITES, WRITABLE, Site
from ..core.specs import Positions, Spec, Steer, as_list, register_spec_kind
from .dictionary import Dictionary, DictionaryError

__all__ = [
    "edit_value",
    "DictionarySpec", "FeatureEdit", "Splice", "register_dictionary", "get_dictionary", "unregister_dictionary",
    "registered_dictionaries", "zero_features", "scale_features", "set_features", "add_features",
    "feature_direction", "steer_feature", "feature_delta", "FEATURE_OPS", "DictionaryOp",
]

FEATURE_OPS = ("zero", "scale", "set", "add")
#: Sites a dictionary can be spliced into or edited at: one vector per token (``z``: heads flattened).
DICTIONARY_SITES = TOKEN_SITES | {"z"}
_PER_TOKEN = ("constant_norm_rescale", "layer_norm")


# -- the registry ---------------------------------------------------------------------------------------
_REGISTRY: dict[str, Dictionary] = {}
_DEVICE_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Dictionary -> {device: copy}


def _name_of(d: Dictionary) -> str | None:
    for name, other in _REGISTRY.items():
        if other is d:
            return name
    return None


def _auto_name(d: Dictionary) -> str:
    base = d.meta.get("name")
    if not base and d.meta.get("path"):
        p = Path(str(d.meta["path"]))
        base = p.parent.name if p.is_file() or p.suffix else p.name
    if not base:
        base = f"{d.architecture}{d.d_sae}"
    base = re.sub(r"\s+", "_", str(base)) + f"@{d.site}" + (f"->{d.out_site}" if d.out_site else "")
    name, i = base, 1
    while name in _REGISTRY:
        i += 1
        name = f"{base}#{i}"
    return name


def register_dictionary(d: Dictionary, name: str | None = None) -> str:
    """Give ``d`` a name that specs (and their JSON) use to refer to it; returns the name.

    Without ``name``: the dictionary's existing name, or a new one made from ``meta["name"]``,
    its folder name or its architecture and size, plus its site (``"topk4608@resid_post.9"``).
    With ``name``: that name now means ``d`` (a later registration under the same name wins,
    as re-running a notebook cell expects). The registry keeps the dictionary alive.
    """
    if not isinstance(d, Dictionary):
        raise TypeError(f"register_dictionary takes a workbench Dictionary, not {type(d).__name__}")
    if name is None:
        return _name_of(d) or _register(d, _auto_name(d))
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a dictionary name is a non-empty string, not {name!r}")
    return _register(d, name)


def _register(d: Dictionary, name: str) -> str:
    old = _name_of(d)
    if old is not None and old != name:
        del _REGISTRY[old]  # one name per dictionary: the newest
    _REGISTRY[name] = d
    return name


def get_dictionary(name: str) -> Dictionary:
    """The dictionary registered under ``name`` (`DictionaryError` if there is none)."""
    d = _REGISTRY.get(name)
    if d is None:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise DictionaryError(f"no dictionary is registered under the name {name!r} (registered: {known}); "
                              "load it and call workbench.register_dictionary(d, name)")
    return d


def unregister_dictionary(name_or_dictionary: str | Dictionary) -> None:
    """Forget a registered dictionary (frees it once nothing else holds it)."""
    name = name_or_dictionary if isinstance(name_or_dictionary, str) else _name_of(name_or_dictionary)
    if name is None or name not in _REGISTRY:
        raise DictionaryError(f"{name_or_dictionary!r} is not registered")
    del _REGISTRY[name]


def registered_dictionaries() -> dict[str, Dictionary]:
    """A copy of the registry: name -> dictionary."""
    return dict(_REGISTRY)


def _resolve(ref: Any, path: str | None) -> tuple[str, Dictionary]:
    """(name, dictionary) for a Dictionary or a name (loading ``path`` when the name is unknown)."""
    if isinstance(ref, Dictionary):
        return register_dictionary(ref), ref
    if not isinstance(ref, str) or not ref:
        raise TypeError(f"a dictionary spec needs a workbench Dictionary or the name of a registered one, "
                        f"not {type(ref).__name__}")
    d = _REGISTRY.get(ref)
    if d is not None and (path is None or _same_path(d.meta.get("path"), path)):
        return ref, d
    if path is None:
        get_dictionary(ref)  # raises with the list of known names
    for name, other in _REGISTRY.items():  # already loaded from that path under another name
        if _same_path(other.meta.get("path"), path):
            return name, other
    if not Path(path).exists():
        why = (f"the name {ref!r} means another dictionary here" if d is not None
               else f"no dictionary is registered under the name {ref!r}")
        raise DictionaryError(f"{why}, and the path it was loaded from, {path}, does not exist: load it and call "
                              "workbench.register_dictionary(d, name)")
    loaded = Dictionary.load(path)
    return _register(loaded, ref if d is None else _auto_name(loaded)), loaded


def _same_path(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    try:
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    except OSError:
        return str(a) == str(b)


def on_device(d: Dictionary, device: torch.device) -> Dictionary:
    """``d`` on ``device`` (its own dtype), cached per dictionary so repeated runs do not copy again."""
    if d.device == device:
        return d
    copies = _DEVICE_COPIES.setdefault(d, {})
    c = copies.get(device)
    if c is None:
        c = copies[device] = d.to(device)
    return c


# -- the specs ------------------------------------------------------------------------------------------
@dataclass
class DictionarySpec(Spec):
    """Base of specs that act through a dictionary: ``site`` is the dictionary's (read) site.

    ``dictionary`` is a `Dictionary` or a registered name; it is stored as the name, with
    ``path`` (where it was loaded from) so that JSON can be resolved in another session.
    """

    site: str = field(default="", kw_only=True)
    dictionary: Any
    path: str | None = field(default=None, kw_only=True)
    out_site: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        name, d = _resolve(self.dictionary, self.path)
        self.dictionary = name
        self._dict = d  # not a field: JSON and equality use the name
        p = d.meta.get("path")
        self.path = str(p) if p is not None else (str(self.path) if self.path is not None else None)
        if self.site and Site.parse(self.site) != Site.parse(d.site):
            raise DictionaryError(f"the spec says site {self.site}, but the dictionary {name!r} reads {d.site}")
        self.site = d.site
        if self.out_site is not None and (d.out_site is None or Site.parse(self.out_site) != Site.parse(d.out_site)):
            raise DictionaryError(f"the spec says out_site {self.out_site}, but the dictionary {name!r} writes "
                                  f"{d.out_site or d.site}")
        self.out_site = d.out_site
        super().__post_init__()
        for role, s in (("reads", d.site), ("writes", d.out_site or d.site)):
            name_ = Site.parse(s).name
            if name_ not in DICTIONARY_SITES:
                raise DictionaryError(f"the dictionary {role} {s}: dictionary specs act on one vector per token "
                                      f"({', '.join(sorted(DICTIONARY_SITES))})")
            if role == "writes" and name_ not in WRITABLE:  # a transcoder only reads its input site
                raise DictionaryError(f"the dictionary writes {s}, which is read-only; writable sites: "
                                      f"{', '.join(sorted(DICTIONARY_SITES & WRITABLE))}")
        if d.out_site is not None and Site.parse(d.out_site) != Site.parse(d.site) and \
                Site.parse(d.out_site).order <= Site.parse(d.site).order:
            raise DictionaryError(f"the transcoder writes {d.out_site}, which the forward pass computes before the "
                                  f"site it reads ({d.site})")

    @property
    def dictionary_object(self) -> Dictionary:
        """The `Dictionary` object this spec uses."""
        return self._dict

    @property
    def write_site(self) -> str:
        """Where the spec changes the model: ``out_site`` for a transcoder, else ``site``."""
        return self._dict.out_site or self._dict.site

    @property
    def is_noop(self) -> bool:
        return False

    def compile(self, model: Any) -> list[TraceOp]:
        """Check the dictionary against ``model``, then the trace-time ops (one per site it touches)."""
        self.check(model)
        if self.is_noop:
            return []
        d = self._dict
        if not getattr(model, "remote", False):
            d = on_device(d, model.device)
        same = Site.parse(self.write_site) == self.parsed_site
        op = DictionaryOp("edit" if isinstance(self, FeatureEdit) else "splice", d, getattr(self, "features", []),
                          getattr(self, "op", ""), getattr(self, "value", None), self.positions, self.rows,
                          self.parsed_site.name == "z", same, self.site, self.describe())
        return [op] if same else [op, WriteBackOp(op, self.write_site)]

    def check(self, model: Any) -> None:
        """Raise `DictionaryError` unless the dictionary fits the model (sites, widths)."""
        d = self._dict
        d.check(model)
        if Site.parse(d.site).name == "z" and d.d_in != model.arch.n_heads * model.arch.d_head:
            raise DictionaryError(f"{self.describe()}: a dictionary on z must read all heads flattened "
                                  f"({model.arch.n_heads * model.arch.d_head} wide), not one head ({d.d_in})")


def edit_value(op: str, value: Any, n_features: int, what: str) -> float | list[float] | None:
    """A feature edit's value, checked: None for ``"zero"``, else one finite number or one per feature."""
    if op == "zero":
        return None
    if value is None:
        raise ValueError(f"op {op!r} needs a value")
    v = as_list(value)
    vals = v if isinstance(v, list) else [v]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vals):
        raise ValueError(f"op {op!r} takes a number or one number per feature as value, not {value!r}")
    if isinstance(v, list) and len(v) != n_features:
        raise ValueError(f"{len(v)} values for {n_features} features")
    if not all(math.isfinite(x) for x in vals):
        raise ValueError(f"{what} values must be finite, not {v!r}")
    return [float(x) for x in v] if isinstance(v, list) else float(v)


@register_spec_kind
@dataclass
class FeatureEdit(DictionarySpec):
    """Edit dictionary latents and add the decoded difference (reconstruction error kept).

    ``features``: latent indices; ``op``: ``"zero"``, ``"scale"`` (value: factor), ``"set"``
    (value), ``"add"`` (value); a value is one number or one per feature. ``positions=None``
    means every position (and every generated token); ``rows`` restricts it to some prompts.
    """

    kind: ClassVar[str] = "feature_edit"
    features: list[int] = field(default_factory=list)
    op: str = "zero"
    value: Any = None
    positions: Positions = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.op not in FEATURE_OPS:
            raise ValueError(f"unknown op {self.op!r}: a feature edit is one of {', '.join(FEATURE_OPS)}")
        feats = as_list(self.features)
        feats = [feats] if isinstance(feats, int | float) else list(feats or [])
        if any(isinstance(i, bool) or not isinstance(i, int | float) or int(i) != i for i in feats):
            raise ValueError(f"features are integer latent indices, not {self.features!r}")
        n = self._dict.d_sae
        feats = [int(i) for i in feats]
        bad = [i for i in feats if not -n <= i < n]
        if bad:
            raise IndexError(f"feature {bad[0]} is out of range for the dictionary {self.dictionary!r} "
                             f"({n} latents)")
        feats = [i % n for i in feats]
        if len(set(feats)) != len(feats):
            raise ValueError(f"feature listed twice in {feats}")
        self.features = feats
        self.value = edit_value(self.op, self.value, len(feats), "feature edit")
        self.positions = None if self.positions is None else [int(p) for p in as_list(self.positions)]

    @property
    def is_noop(self) -> bool:
        """No effective edit: no features, scale by 1, or add 0 (the engine skips the site)."""
        if not self.features:
            return True
        vals = self.value if isinstance(self.value, list) else [self.value]
        return (self.op == "scale" and all(v == 1.0 for v in vals)) or (self.op == "add" and all(v == 0.0 for v in vals))

    def describe(self) -> str:
        f = ",".join(map(str, self.features[:6])) + ("…" if len(self.features) > 6 else "")
        v = "" if self.value is None else (f" ×{self.value}" if self.op == "scale" else f" {self.value}")
        return f"{self.op} features [{f}] of {self.dictionary}{v}"


@register_spec_kind
@dataclass
class Splice(DictionarySpec):
    """Replace the site (a transcoder: ``out_site``) by the dictionary's reconstruction, no error term."""

    kind: ClassVar[str] = "splice"
    positions: Positions = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positions = None if self.positions is None else [int(p) for p in as_list(self.positions)]

    def describe(self) -> str:
        return f"splice {self.dictionary} @ {self.write_site}"


# -- the computation (runs inside the trace; also what tests and widgets may call) -------------------
def _sub(cache: dict, key: tuple, make: Any) -> Tensor:
    t = cache.get(key)
    if t is None:
        t = cache[key] = make()
    return t


def feature_delta(d: Dictionary, x: Tensor, features: list[int], op: str, value: Any,
                  cache: dict | None = None) -> Tensor:
    """``decode(edited) - decode(acts)`` for inputs ``x [..., d_in]``: what `FeatureEdit` adds.

    Computed through the edited latents' ``W_dec`` rows only (exact up to float rounding);
    the architecture encodes only the edited latents where it can (`Architecture.encode_subset`:
    all but top-k). Returns ``[..., d_out]`` in the dictionary's dtype.
    """
    cache = {} if cache is None else cache
    x = d.processed_input(x.to(dtype=d.dtype))  # TransformerLens centring (its mean cancels in the difference)
    dev, key = x.device, (id(d), x.device, tuple(features))
    idx = _sub(cache, ("idx",) + key, lambda: torch.tensor(features, device=dev, dtype=torch.long))
    st = d.norm_stats(x) if d.normalize in _PER_TOKEN else None
    if d.normalize == "expected_average_only_in":
        xn = x * d.norm_scale if d.norm_scale not in (None, 1.0) else x
    elif st is not None:
        mult, shift, _ = st
        xn = ((x.float() - shift) * mult).to(x.dtype)
    else:
        xn = x
    xc = xn - d.b_pre if d.b_pre is not None else xn
    acts = d.architecture_impl.encode_subset(d, xc, idx, _sub(cache, ("encode",) + key, dict))
    if op == "zero":
        delta = -acts
    else:
        v = _sub(cache, ("val",) + key + (str(value),),
                 lambda: torch.tensor(value, device=dev, dtype=d.dtype))
        if op == "scale":
            delta = acts * v - acts
        elif op == "set":
            delta = v - acts
        elif op == "add":
            delta = v.expand_as(acts)
        else:
            raise ValueError(f"unknown op {op!r}")
    Wd = _sub(cache, ("Wd",) + key, lambda: d.W_dec.index_select(0, idx))
    y = delta @ Wd
    if d.normalize == "expected_average_only_in":
        if d.norm_scale is not None and d.norm_scale != 1.0:
            y = y / d.norm_scale
    elif st is not None and not d.is_transcoder:
        y = (y.float() * st[2]).to(y.dtype)
    return y


class DictionaryOp(TraceOp):
    """The trace-time half of a dictionary spec, placed at its read site by `DictionarySpec.compile`.

    Remote runs pickle it by value (with the functions it calls): it refers to the dictionary,
    plain numbers and torch only, never to the specs or the registry.
    """

    def __init__(self, mode: str, d: Dictionary, features: list[int], op: str, value: Any,
                 positions: list[int] | None, rows: list[int] | None, zsite: bool, writes_here: bool,
                 site: str, label: str):
        self.site, self.label = site, label
        self.mode, self.d, self.features, self.op, self.value = mode, d, features, op, value
        self.positions, self.rows, self.zsite, self.writes_here = positions, rows, zsite, writes_here
        self.cache: dict = {}
        self.pending: list = []  # a transcoder's outputs, waiting for its out_site

    def check(self, program: TraceProgram) -> None:
        program.check_rows(self.label, self.rows)
        check_finite(f"{self.label}: the value", self.value)
        program.check_positions(self.label, self.positions)

    def apply(self, program: TraceProgram, x: Tensor, st: Step) -> None:
        d = self.d
        if d.device != x.device:  # a remote model's device is only known here
            d = self.d = d.to(x.device)
        self.pending = []
        for rows, pos in program.targets(self.positions, st, x.shape[1], self.rows):
            xs = x[rows, pos]
            if self.zsite:
                xs = xs.flatten(-2)
            if self.mode == "edit":
                out = feature_delta(d, xs, self.features, self.op, self.value, self.cache)
            else:
                out = d.forward(xs)[0]
            if self.writes_here:
                _write(x, rows, pos, out, self.mode, self.zsite)
            else:
                self.pending.append((rows, pos, out))


class WriteBackOp(TraceOp):
    """A transcoder op's second half, at its out_site: write what the read site computed."""

    def __init__(self, src: DictionaryOp, site: str):
        self.src = src
        self.site = site

    def apply(self, program: TraceProgram, x: Tensor, st: Step) -> None:
        for rows, pos, out in self.src.pending:
            if self.src.mode == "splice" and self.src.d.center_output:  # mean-free outputs: keep the site's mean
                out = out + x[rows, pos].mean(dim=-1, keepdim=True).to(out.dtype)
            _write(x, rows, pos, out, self.src.mode, False)
        self.src.pending = []


def _write(x: Tensor, rows: Any, pos: Any, out: Tensor, mode: str, zsite: bool) -> None:
    out = out.to(x.dtype)
    if zsite:
        out = out.unflatten(-1, x.shape[-2:])
    if mode == "edit":
        x[rows, pos] += out
    else:
        x[rows, pos] = out


# -- helpers that read like the papers ----------------------------------------------------------------
def _feats(idx: Any) -> list[int]:
    v = as_list(idx)
    return [v] if isinstance(v, int) else list(v)


def zero_features(d: Dictionary | str, features: int | list[int], positions: Positions = None, *,
                  rows: list[int] | None = None) -> FeatureEdit:
    """Zero dictionary latents (keeping the reconstruction error)."""
    return FeatureEdit(d, _feats(features), "zero", None, positions, rows=rows)


def scale_features(d: Dictionary | str, features: int | list[int], factor: float | list[float],
                   positions: Positions = None, *, rows: list[int] | None = None) -> FeatureEdit:
    """Multiply dictionary latents by ``factor`` (an inactive latent stays 0)."""
    return FeatureEdit(d, _feats(features), "scale", factor, positions, rows=rows)


def set_features(d: Dictionary | str, features: int | list[int], value: float | list[float],
                 positions: Positions = None, *, rows: list[int] | None = None) -> FeatureEdit:
    """Set dictionary latents to a value (clamping, e.g. the Golden Gate demo)."""
    return FeatureEdit(d, _feats(features), "set", value, positions, rows=rows)


def add_features(d: Dictionary | str, features: int | list[int], value: float | list[float],
                 positions: Positions = None, *, rows: list[int] | None = None) -> FeatureEdit:
    """Add to dictionary latents (adds ``value * W_dec[i]``, undoing any normalization)."""
    return FeatureEdit(d, _feats(features), "add", value, positions, rows=rows)


def feature_direction(d: Dictionary | str, feature: int) -> Tensor:
    """Unit decoder row ``[d_out]`` of a latent: a direction for `workbench.steer` at the dictionary's
    write site (``site="neurons"`` for a dictionary over ``neurons.L``, e.g. semi-NMF components)."""
    if isinstance(d, str):
        d = get_dictionary(d)
    n = d.d_sae
    if isinstance(feature, bool) or not isinstance(feature, int) or not -n <= feature < n:
        raise IndexError(f"feature {feature!r} is out of range for a dictionary of {n} latents")
    w = d.W_dec[feature].detach()
    return (w / w.norm().clamp_min(1e-12)).clone()


def steer_feature(d: Dictionary | str, feature: int, strength: float, positions: Positions = None, *,
                  rows: list[int] | None = None) -> Steer:
    """`Steer` along a latent's unit decoder row at the dictionary's write site."""
    name = d if isinstance(d, str) else register_dictionary(d)
    dd = get_dictionary(name)
    return Steer(dd.out_site or dd.site, feature_direction(dd, feature), strength, positions,
                 f"{name}[{feature}]", rows=rows)
