"""Subspace interventions: act on an activation's projection onto k orthonormal directions.

A `Subspace` is a basis ``[k, width]`` of orthonormal rows at a per-token site
(``Subspace("resid_post.6", basis)``). Its directions may be given (a mean difference, probe
weights, SAE decoder rows: `Subspace.from_directions`), found by PCA (`Subspace.pca`), or learned
elsewhere. With ``B`` the basis and ``c = h @ B.T`` the coordinates of an activation ``h``, the specs are:

- `SubspaceInterchange`: ``h + (c_source - c) @ B``, with ``c_source`` from another prompt's run
  (equal lengths and positions work as for `workbench.core.specs.Patch`, with the same errors);
- `SubspaceAblate`: ``h - c @ B`` (project the subspace out), or ``h + (mean - c) @ B`` (mean-ablate);
- `SubspaceSteer`: ``h + strength * coords @ B`` (a vector given in the subspace's coordinates);
- `SubspaceSet`: ``h + (coords - c) @ B`` (set the coordinates).

They are ordinary specs: registered kinds, JSON (`Spec.to_dict` / `spec_from_dict`), composable
with every other spec, applied by `Model.run`, at every step of `Model.generate`, inside raw traces
(``model.apply([...])``; the interchange needs its source in the batch, so `run` it) and under
``remote="local"``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from ..core.errors import WorkbenchError
from ..core.fileio import atomic_tensors
from ..core.ops import PatchOp
from ..core.program import Step, TraceOp, TraceProgram, check_finite, finite_number
from ..core.sites import TOKEN_SITES, WRITABLE, Site
from ..core.specs import Patch, Positions, Spec, as_list, register_spec_kind

__all__ = [
    "Subspace", "SubspaceError", "SubspaceWarning", "SubspaceInterchange", "SubspaceAblate", "SubspaceSteer",
    "SubspaceSet", "interchange_subspace", "ablate_subspace", "steer_subspace", "set_subspace",
    "ORTHONORMAL_TOLERANCE",
]

#: Largest ``|B @ B.T - I|`` entry a basis may have and still count as orthonormal.
ORTHONORMAL_TOLERANCE = 1e-4
_RANK_TOLERANCE = 1e-6  # singular values below this times the largest count as zero


class SubspaceError(WorkbenchError, ValueError):
    """A subspace (or a spec on it) that cannot be built or does not fit the model."""


class SubspaceWarning(UserWarning):
    """A basis given as orthonormal was not, and was orthonormalized."""


def _matrix(what: str, directions: Any) -> torch.Tensor:
    """Directions (a [k, width] or [width] tensor, array or nested list, or a list of vectors) as float64 [k, width]."""
    if isinstance(directions, (list, tuple)) and directions and all(hasattr(d, "detach") for d in directions):
        directions = torch.stack([d.detach().reshape(-1).cpu() for d in directions])
    if hasattr(directions, "detach"):
        t = directions.detach().cpu()
    else:
        try:
            t = torch.as_tensor(as_list(directions) if hasattr(directions, "tolist") else directions)
        except (TypeError, ValueError, RuntimeError) as e:
            raise SubspaceError(f"{what} must be a [k, width] matrix of numbers (or one vector): {e}") from None
    if t.dtype == torch.bool or t.is_complex():
        raise SubspaceError(f"{what} must hold real numbers, not {t.dtype}")
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise SubspaceError(f"{what} must be a [k, width] matrix with k >= 1 (or one vector), not shape {list(t.shape)}")
    t = t.to(torch.float64)
    check_finite(what, t)
    return t


def _orthonormal(what: str, b: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(an orthonormal basis of the rows of ``b``, Gram-Schmidt in their order; how far ``b`` was from orthonormal)."""
    k, width = b.shape
    if k > width:
        raise SubspaceError(f"{what} has k={k} directions but the site is only {width} wide: k must be at most {width}")
    s = torch.linalg.svdvals(b)
    if float(s.max()) == 0.0:
        raise SubspaceError(f"{what} has rank 0 (every direction is zero): give at least one non-zero direction")
    rank = int((s > s.max() * _RANK_TOLERANCE).sum())
    if rank < k:
        raise SubspaceError(f"{what} has rank {rank} < k={k}: its directions are linearly dependent; "
                            f"drop the redundant ones (or keep {rank})")
    off = float((b @ b.T - torch.eye(k, dtype=b.dtype)).abs().max())
    q, r = torch.linalg.qr(b.T)  # b.T = q r: q's columns span the rows of b, in order
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return (q * signs).T.contiguous(), off


class Subspace:
    """k orthonormal directions at a per-token site: ``basis`` is ``[k, width]``, one unit row each.

    ``Subspace(site, basis)`` takes a basis meant to be orthonormal. If it is not (some
    ``|B B^T - I|`` entry above `ORTHONORMAL_TOLERANCE`), ``non_orthonormal`` decides:
    ``"warn"`` (the default) orthonormalizes it with a `SubspaceWarning`, ``"fix"`` does so
    silently, ``"raise"`` refuses it. Orthonormalizing is Gram-Schmidt in the rows' order (the first
    direction keeps its direction, normalized), so the span is unchanged. `from_directions` takes
    arbitrary directions and orthonormalizes them silently. Either way a NaN or infinite entry,
    k > width, rank 0 (all zero) or linearly dependent directions raise `SubspaceError`
    (`NonFiniteError` for NaN/inf). The basis is stored as float32 on the CPU.

    ``meta`` is free JSON-able information (`pca` stores the explained variance and the mean coordinates).
    """

    def __init__(self, site: str, basis: Any, name: str = "", meta: dict[str, Any] | None = None, *,
                 non_orthonormal: str = "warn"):
        if non_orthonormal not in ("warn", "fix", "raise"):
            raise ValueError(f"non_orthonormal must be 'warn', 'fix' or 'raise', not {non_orthonormal!r}")
        s = Site.parse(site)
        if s.name not in TOKEN_SITES:
            raise SubspaceError(f"a subspace lives at a per-token site ([b, s, width]), not {s}: use one of "
                                f"{sorted(TOKEN_SITES)}")
        self.site = str(s)
        self.name = str(name)
        self.meta = dict(meta or {})
        what = f"the basis of subspace {self.name or self.site!r}"
        b = _matrix(what, basis)
        q, off = _orthonormal(what, b)
        if off <= ORTHONORMAL_TOLERANCE:
            q = b  # orthonormal as given: keep it exactly
        elif non_orthonormal == "raise":
            raise SubspaceError(f"{what} is not orthonormal (max |B B^T - I| = {off:.3g} > {ORTHONORMAL_TOLERANCE}): "
                                "pass an orthonormal basis, or use Subspace.from_directions")
        elif non_orthonormal == "warn":
            warnings.warn(f"{what} is not orthonormal (max |B B^T - I| = {off:.3g}): orthonormalized it "
                          "(Gram-Schmidt in row order, same span); use Subspace.from_directions for raw directions",
                          SubspaceWarning, stacklevel=2)
        self.basis = q.to(torch.float32).contiguous()

    # -- constructors ----------------------------------------------------------------
    @classmethod
    def from_directions(cls, site: str, directions: Any, name: str = "", meta: dict[str, Any] | None = None) -> Subspace:
        """The span of ``directions`` (one vector, a ``[k, width]`` matrix or a list of vectors),
        orthonormalized silently (Gram-Schmidt in their order).

        A mean difference (`workbench.causal.mean_difference`), a probe's weight vector, a neuron's
        output direction or an SAE's decoder rows (``W_dec[features]``) are all just directions.
        """
        return cls(site, directions, name, meta, non_orthonormal="fix")

    @classmethod
    def pca(cls, model: Any, site: str, prompts: Sequence[str], k: int, *, center: bool = True,
            skip_first: bool = False, batch_size: int = 16, name: str = "") -> Subspace:
        """The top-``k`` principal directions of ``site`` over every real token of ``prompts``.

        ``center`` subtracts the mean first; ``skip_first`` drops position 0 (an attention sink with
        outlier norms in many models). ``meta`` records the explained-variance ratios, the number of
        tokens and the mean's coordinates (``meta["mean_coords"]``: what `SubspaceAblate` mean-ablates to).
        """
        x = _tokens(model, site, prompts, skip_first, batch_size)
        width = x.shape[1]
        k = int(k)
        if not 1 <= k <= width:
            raise SubspaceError(f"PCA k={k} is out of range: k must be between 1 and the site's width {width}")
        mean = x.mean(0)
        xc = x - mean if center else x
        most = x.shape[0] - 1 if center else x.shape[0]
        if k > most:
            raise SubspaceError(f"PCA of {x.shape[0]} token(s) gives at most {most} direction(s), not k={k}: "
                                "give more prompts")
        _, sv, vh = torch.linalg.svd(xc, full_matrices=False)
        var = sv.pow(2)
        basis = vh[:k]
        flip = basis.sum(1, keepdim=True) < 0  # a fixed sign: each direction's entries sum to >= 0
        basis = torch.where(flip, -basis, basis)
        meta = {"method": "pca", "tokens": int(x.shape[0]), "centered": bool(center),
                "explained_variance_ratio": (var[:k] / var.sum().clamp_min(1e-30)).tolist(),
                "mean_coords": (mean @ basis.T).tolist()}
        return cls(site, basis, name or f"pca{k}@{Site.parse(site)}", meta, non_orthonormal="fix")

    # -- facts and maths ------------------------------------------------------------
    @property
    def k(self) -> int:
        """The number of directions."""
        return int(self.basis.shape[0])

    @property
    def width(self) -> int:
        """The site's width the basis is for."""
        return int(self.basis.shape[1])

    def coords(self, x: torch.Tensor) -> torch.Tensor:
        """Coordinates of activations ``x [..., width]`` in the subspace: ``x @ B.T`` -> ``[..., k]``."""
        b = self.basis.to(device=x.device, dtype=x.dtype)
        return x @ b.T

    def component(self, x: torch.Tensor) -> torch.Tensor:
        """The part of ``x [..., width]`` inside the subspace: ``(x @ B.T) @ B``."""
        b = self.basis.to(device=x.device, dtype=x.dtype)
        return (x @ b.T) @ b

    def mean_coords(self, model: Any, prompts: Sequence[str], *, skip_first: bool = False,
                    batch_size: int = 16) -> list[float]:
        """The mean coordinates over every real token of ``prompts`` (for `SubspaceAblate`'s ``mean``)."""
        x = _tokens(model, self.site, prompts, skip_first, batch_size)
        if x.shape[1] != self.width:
            raise SubspaceError(f"subspace {self.name or self.site!r} is {self.width} wide but {self.site} has "
                                f"width {x.shape[1]}")
        return (x.mean(0) @ self.basis.double().T).tolist()

    # -- serialization -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "name": self.name, "basis": self.basis.tolist(), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Subspace:
        """Rebuild a subspace from `to_dict` output (the basis must still be orthonormal)."""
        if not isinstance(d, dict) or "site" not in d or "basis" not in d:
            raise SubspaceError(f"a subspace dict has 'site' and 'basis' (and 'name', 'meta'), not {d!r:.80}")
        return cls(d["site"], d["basis"], d.get("name", ""), d.get("meta") or {}, non_orthonormal="raise")

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Subspace:
        return cls.from_dict(json.loads(text))

    def save(self, path: str) -> None:
        """Write the subspace to a safetensors file (basis as a tensor; site, name, meta as metadata), atomically."""
        atomic_tensors(path, {"basis": self.basis},
                       {"site": self.site, "name": self.name, "meta": json.dumps(self.meta)})

    @classmethod
    def load(cls, path: str) -> Subspace:
        """Read a file `save` wrote."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            if "site" not in md or "basis" not in f.keys():  # noqa: SIM118 (safe_open has keys(), not __contains__)
                raise SubspaceError(f"{path} is no saved subspace: it lacks a 'basis' tensor or 'site' metadata")
            basis = f.get_tensor("basis")
        return cls(md["site"], basis, md.get("name", ""), json.loads(md.get("meta") or "{}"), non_orthonormal="raise")

    # -- python --------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Subspace):
            return NotImplemented
        return (self.site, self.name, self.meta) == (other.site, other.name, other.meta) and \
            torch.equal(self.basis, other.basis)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return f"Subspace({label}site={self.site}, k={self.k}, width={self.width})"


def _tokens(model: Any, site: str, prompts: Sequence[str], skip_first: bool, batch_size: int) -> torch.Tensor:
    """Every real token's activation at ``site`` over ``prompts``: float64 ``[n_tokens, width]``."""
    key = str(Site.parse(site))
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise SubspaceError("no prompts given: PCA and mean coordinates need at least one prompt")
    rows = []
    for i in range(0, len(prompts), max(1, int(batch_size))):
        res = model.run(prompts[i:i + batch_size], capture=[key], top_k=0, logits=None)
        x = res.activations[key]
        for b, L in enumerate(res.lengths):
            rows.append(x[b, (1 if skip_first else 0):L])
    out = torch.cat(rows).double()
    if out.shape[0] == 0:
        raise SubspaceError("the prompts have no tokens left (skip_first drops position 0 of each)")
    return out


def _subspace(x: Any) -> Subspace:
    if isinstance(x, Subspace):
        return x
    if isinstance(x, dict):
        return Subspace.from_dict(x)
    raise TypeError(f"a subspace spec needs a Subspace (or its dict), not {type(x).__name__}")


def _coords(what: str, values: Any, k: int) -> list[float]:
    """``values`` as k finite floats (one per direction), or a clear error."""
    v = as_list(values)
    v = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    if not isinstance(v, list) or any(isinstance(e, (list, tuple, bool)) or not isinstance(e, (int, float)) for e in v):
        raise SubspaceError(f"{what} must be one number per direction of the subspace ({k}), not {values!r:.80}")
    if len(v) != k:
        raise SubspaceError(f"{what} has {len(v)} values but the subspace has k={k} directions")
    out = [float(e) for e in v]
    check_finite(what, out)
    return out


def _positions(p: Any) -> Positions:
    return None if p is None else [int(i) for i in as_list(p)]


def _init(spec: Spec, subspace: Any, site: str | None, rows: Any) -> None:
    """Set the fields every subspace spec shares, then the base checks."""
    sub = _subspace(subspace)
    if site is not None and str(Site.parse(site)) != sub.site:
        raise SubspaceError(f"site {site!r} does not match the subspace's site {sub.site}")
    spec.subspace, spec.site, spec.rows = sub, sub.site, rows
    Spec.__post_init__(spec)
    if spec.parsed_site.name not in WRITABLE:
        raise SubspaceError(f"{type(spec).__name__}: site {spec.site} is read-only; a subspace spec writes its "
                            f"site: use one of {sorted(WRITABLE & TOKEN_SITES)}")


def _to_dict(spec: Spec) -> dict[str, Any]:
    d = {f.name: (v.to_dict() if isinstance(v, Subspace) else as_list(v))
         for f in fields(spec) for v in (getattr(spec, f.name),)}
    d["kind"] = spec.kind
    return d


def _label(sub: Subspace) -> str:
    return f"{sub.name or 'subspace'} (k={sub.k}) @ {sub.site}"


# -- the specs --------------------------------------------------------------------------
@register_spec_kind
@dataclass(init=False)
class SubspaceInterchange(Patch):
    """Replace the projection onto ``subspace`` by the source run's: ``h + (c_source - c) @ B``.

    ``source`` is another prompt; ``positions`` are target positions and ``source_positions``
    default to the same. As for `Patch`, prompts of different lengths need positions; the patch
    applies to the prompt (not to generated tokens).
    """

    kind: ClassVar[str] = "subspace_interchange"
    subspace: Subspace | None = None

    def __init__(self, subspace: Subspace | dict, source: str = "", positions: Positions = None,
                 source_positions: Positions = None, *, rows: list[int] | None = None, site: str | None = None,
                 indices: None = None):
        if indices is not None:
            raise SubspaceError("SubspaceInterchange acts on the whole subspace: it takes no indices")
        self.source, self.positions, self.source_positions, self.indices = source, positions, source_positions, None
        _init(self, subspace, site, rows)
        Patch.__post_init__(self)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def compile(self, model: Any) -> list[TraceOp]:
        return [_InterchangeOp(self)]

    def describe(self) -> str:
        return f"interchange {_label(self.subspace)} from {self.source[:30]!r}"


@register_spec_kind
@dataclass(init=False)
class SubspaceAblate(Spec):
    """Project the subspace out (``mean=None``: ``h - c @ B``) or mean-ablate inside it (``h + (mean - c) @ B``).

    ``mean``: k coordinates (e.g. `Subspace.mean_coords`, or ``meta["mean_coords"]`` of a PCA
    subspace); a vector of the site's width (!= k) is taken as a mean activation and projected.
    """

    kind: ClassVar[str] = "subspace_ablate"
    subspace: Subspace | None = None
    mean: list[float] | None = None
    positions: Positions = None

    def __init__(self, subspace: Subspace | dict, mean: Any = None, positions: Positions = None, *,
                 rows: list[int] | None = None, site: str | None = None):
        _init(self, subspace, site, rows)
        sub = self.subspace
        if mean is not None:
            m = as_list(mean)
            if isinstance(m, list) and len(m) == sub.width != sub.k and not any(isinstance(e, list) for e in m):
                check_finite(f"{type(self).__name__} mean activation", m)
                m = sub.coords(torch.tensor(m, dtype=torch.float64)).tolist()
            mean = _coords(f"{type(self).__name__} mean (coordinates)", m, sub.k)
        self.mean = mean
        self.positions = _positions(positions)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def compile(self, model: Any) -> list[TraceOp]:
        return [_SubspaceOp(self, "ablate")]

    def describe(self) -> str:
        return f"{'mean-ablate' if self.mean is not None else 'ablate'} {_label(self.subspace)}"


@register_spec_kind
@dataclass(init=False)
class SubspaceSteer(Spec):
    """Add ``strength * coords @ B``: a vector given in the subspace's coordinates (k numbers)."""

    kind: ClassVar[str] = "subspace_steer"
    subspace: Subspace | None = None
    coords: list[float] | None = None
    strength: float = 1.0
    positions: Positions = None

    def __init__(self, subspace: Subspace | dict, coords: Any = None, strength: float = 1.0,
                 positions: Positions = None, *, rows: list[int] | None = None, site: str | None = None):
        _init(self, subspace, site, rows)
        if coords is None:
            raise SubspaceError("SubspaceSteer needs coords: one number per direction of the subspace")
        self.coords = _coords("SubspaceSteer coords", coords, self.subspace.k)
        self.strength = finite_number("SubspaceSteer strength", as_list(strength))
        self.positions = _positions(positions)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def compile(self, model: Any) -> list[TraceOp]:
        return [_SubspaceOp(self, "steer")]

    def describe(self) -> str:
        return f"steer {_label(self.subspace)} ×{self.strength:g}"


@register_spec_kind
@dataclass(init=False)
class SubspaceSet(Spec):
    """Set the subspace coordinates to ``coords`` (k numbers): ``h + (coords - c) @ B``."""

    kind: ClassVar[str] = "subspace_set"
    subspace: Subspace | None = None
    coords: list[float] | None = None
    positions: Positions = None

    def __init__(self, subspace: Subspace | dict, coords: Any = None, positions: Positions = None, *,
                 rows: list[int] | None = None, site: str | None = None):
        _init(self, subspace, site, rows)
        if coords is None:
            raise SubspaceError("SubspaceSet needs coords: one number per direction of the subspace")
        self.coords = _coords("SubspaceSet coords", coords, self.subspace.k)
        self.positions = _positions(positions)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def compile(self, model: Any) -> list[TraceOp]:
        return [_SubspaceOp(self, "set")]

    def describe(self) -> str:
        return f"set {_label(self.subspace)}"


# -- the trace-time ops --------------------------------------------------------------------
def _check_width(program: TraceProgram, spec: Any) -> None:
    width = program.arch.size(spec.parsed_site)
    if spec.subspace.width != width:
        raise SubspaceError(f"{spec.describe()}: the subspace is {spec.subspace.width} wide but {spec.site} has "
                            f"width {width}")


class _Tensors:
    """The basis (and a spec's numbers) as tensors on the activation's device and dtype, built once."""

    def __init__(self) -> None:
        self.cache: dict[tuple, torch.Tensor] = {}

    def get(self, what: str, values: Any, x: torch.Tensor) -> torch.Tensor:
        """``values`` (a tensor, numbers, or a function making them) as a tensor like ``x``, cached by ``what``."""
        key = (what, x.device, x.dtype)
        t = self.cache.get(key)
        if t is None:
            v = values() if callable(values) else values
            t = v.to(device=x.device, dtype=x.dtype) if isinstance(v, torch.Tensor) else \
                torch.tensor(v, device=x.device, dtype=x.dtype)
            self.cache[key] = t
        return t


class _SubspaceOp(TraceOp):
    """Ablate, steer or set a subspace at the spec's rows and positions (every generated token too)."""

    def __init__(self, spec: Any, mode: str):
        self.spec, self.site, self.mode = spec, spec.site, mode
        self.tensors = _Tensors()

    def check(self, program: TraceProgram) -> None:
        s = self.spec
        program.check_rows(s.describe(), s.rows)
        _check_width(program, s)
        program.check_positions(s.describe(), s.positions)

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        s, t = self.spec, self.tensors
        b = t.get("basis", s.subspace.basis, x)
        if self.mode == "steer":
            v = t.get("steer", lambda: torch.tensor(s.coords) @ s.subspace.basis * s.strength, x)
        for rows, pos in program.targets(s.positions, step, x.shape[1], s.rows):
            h = x[rows, pos]
            if self.mode == "steer":
                x[rows, pos] = h + v
            elif self.mode == "set":
                x[rows, pos] = h + (t.get("coords", s.coords, x) - h @ b.T) @ b
            elif s.mean is None:  # ablate: project out
                x[rows, pos] = h - (h @ b.T) @ b
            else:
                x[rows, pos] = h + (t.get("mean", s.mean, x) - h @ b.T) @ b


class _InterchangeOp(PatchOp):
    """Swap in a source run's subspace coordinates (a row of the batch, or recorded beforehand)."""

    spec: SubspaceInterchange

    def __init__(self, spec: SubspaceInterchange):
        super().__init__(spec)
        self.tensors = _Tensors()

    def check_values(self, program: TraceProgram) -> None:
        _check_width(program, self.spec)

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        s = self.spec
        if step.step > 0:
            return  # the source has no generated tokens
        pre = program.patch_values.get(s.source, {}).get(s.site)
        if pre is None:  # the source is a row of this batch
            src = program.batch.sources[s.source]
            srcx, n_src = x[src:src + 1], program.batch.lengths[src]
        else:  # recorded beforehand (generation)
            srcx, n_src = pre.to(device=x.device, dtype=x.dtype), pre.shape[1]
        b = self.tensors.get("basis", s.subspace.basis, x)
        src_pos = s.source_positions if s.source_positions is not None else s.positions
        spos = slice(None) if src_pos is None else [p + n_src if p < 0 else p for p in src_pos]
        c_src = srcx[:, spos] @ b.T  # [1, P, k], read before any row is written
        for rows, pos in program.targets(s.positions, step, x.shape[1], s.rows):
            h = x[rows, pos]
            x[rows, pos] = h + ((c_src if isinstance(rows, slice) else c_src[0]) - h @ b.T) @ b


# -- helpers that read like the papers --------------------------------------------------------
def interchange_subspace(subspace: Subspace, source: str, positions: Positions = None,
                         source_positions: Positions = None, *, rows: list[int] | None = None) -> SubspaceInterchange:
    """Take ``subspace``'s coordinates from ``source``'s run (an interchange intervention)."""
    return SubspaceInterchange(subspace, source, positions, source_positions, rows=rows)


def ablate_subspace(subspace: Subspace, mean: Any = None, positions: Positions = None, *,
                    rows: list[int] | None = None) -> SubspaceAblate:
    """Project ``subspace`` out of its site (or set its coordinates to ``mean``)."""
    return SubspaceAblate(subspace, mean, positions, rows=rows)


def steer_subspace(subspace: Subspace, coords: Any, strength: float = 1.0, positions: Positions = None, *,
                   rows: list[int] | None = None) -> SubspaceSteer:
    """Add ``strength * coords @ basis`` to the site (a steering vector in the subspace's coordinates)."""
    return SubspaceSteer(subspace, coords, strength, positions, rows=rows)


def set_subspace(subspace: Subspace, coords: Any, positions: Positions = None, *,
                 rows: list[int] | None = None) -> SubspaceSet:
    """Set the subspace's coordinates to ``coords`` (the rest of the activation is kept)."""
    return SubspaceSet(subspace, coords, positions, rows=rows)
