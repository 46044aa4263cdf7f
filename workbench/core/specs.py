"""Declarative intervention specs: the single way the workbench edits a model.

Each spec is a small dataclass that serializes to JSON (``to_dict`` / ``spec_from_dict``),
so widgets can build and edit them and notebooks can store them. `engine.Model.run`
and `engine.Model.generate` compile a list of specs into one nnsight trace; the same
specs apply to a forward pass and to every step of generation.

Kinds:

- `Edit`: set, zero, scale, mean-ablate or add to given indices (neurons, dimensions)
  of any writable site, at all or some positions. Helpers: `zero_neurons`,
  `scale_neurons`, `set_neurons`, `mean_ablate_neurons`.
- `AblateHeads`: zero or mean-ablate attention heads (on the per-head ``z`` site).
- `Steer`: add ``strength * direction`` to a site at all or some positions.
- `Patch`: copy a site's activation from another prompt's run (same trace, batched).

Every spec compiles the same way: ``spec.compile(model)`` returns trace-time ops
(`workbench.core.program.TraceOp`), which the trace program applies at their sites. A new kind
written elsewhere subclasses `Spec`, implements ``compile``, and registers itself with
`register_spec_kind` (or the ``workbench.spec_kinds`` entry point, so JSON finds it unimported).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .ops import AblateHeadsOp, EditOp, PatchOp, SteerOp
from .program import check_finite
from .sites import WRITABLE, Site

if TYPE_CHECKING:
    from .program import TraceOp

Positions = list[int] | None


def as_list(x: Any) -> Any:
    """Tensors, arrays and sequences as plain Python lists (numbers stay numbers; None stays None)."""
    if x is None:
        return None
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (int, float, str, bool)):
        return x
    return [v.item() if hasattr(v, "item") else v for v in x]


@dataclass
class Spec:
    """Base class of intervention specs.

    ``rows`` (keyword-only) restricts a spec to some prompts of a batch (indices into the
    prompts given to `run`); ``None`` means every prompt. Batched sweeps use it to give
    each row its own intervention in one forward pass.
    """

    kind: ClassVar[str] = ""
    site: str
    rows: list[int] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        s = Site.parse(self.site)
        self.site = str(s)
        if self.rows is not None:
            self.rows = [int(r) for r in as_list(self.rows)]
            if not self.rows or min(self.rows) < 0:
                raise ValueError(f"rows must be a non-empty list of prompt indices, not {self.rows}")

    @property
    def parsed_site(self) -> Site:
        return Site.parse(self.site)

    def to_dict(self) -> dict[str, Any]:
        d = {k: as_list(v) for k, v in asdict(self).items()}
        d["kind"] = self.kind
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def describe(self) -> str:
        return f"{self.kind} {self.site}"

    def compile(self, model: Any) -> list[TraceOp]:
        """The trace-time ops this spec runs as (``[]`` when it changes nothing), checked against ``model``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement compile(model) -> [TraceOp, ...]")


@dataclass
class Edit(Spec):
    """Set, zero, scale, mean-ablate or add to ``indices`` of a site.

    op: ``"zero"``, ``"set"`` (value: a number or one per index), ``"scale"`` (value:
    factor), ``"mean"`` (value: the mean per index, see `mean_ablate_neurons`),
    ``"add"`` (value: a number or one per index). ``indices=None`` means every unit;
    ``positions=None`` means every position (and every generated token).
    """

    kind: ClassVar[str] = "edit"
    indices: list[int] | None = None
    op: str = "zero"
    value: Any = None
    positions: Positions = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.op not in ("zero", "set", "scale", "mean", "add"):
            raise ValueError(f"unknown op {self.op!r}: use zero, set, scale, mean or add")
        if self.parsed_site.name not in WRITABLE:
            raise ValueError(f"site {self.site} is read-only; writable sites: {sorted(WRITABLE)}")
        if self.op in ("set", "scale", "mean", "add") and self.value is None:
            raise ValueError(f"op {self.op!r} needs a value")
        self.indices = None if self.indices is None else [int(i) for i in as_list(self.indices)]
        self.value = as_list(self.value)
        vals = self.value if isinstance(self.value, list) else [self.value]
        if self.value is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            raise ValueError(f"op {self.op!r} takes a number or one number per index as value, not {self.value!r}")
        what = {"scale": "the scale factor", "mean": "the means"}.get(self.op, "value")
        check_finite(f"{type(self).__name__} {self.op!r} value ({what})", self.value)
        self.positions = None if self.positions is None else [int(p) for p in as_list(self.positions)]

    def compile(self, model: Any) -> list[TraceOp]:
        return [EditOp(self)]

    def describe(self) -> str:
        what = "all" if self.indices is None else ",".join(map(str, self.indices[:6])) + ("…" if len(self.indices) > 6 else "")
        return f"{self.op} {self.site}[{what}]" + (f" ×{self.value}" if self.op == "scale" else "")


@dataclass
class AblateHeads(Spec):
    """Zero (or mean-ablate, with ``means`` of shape [heads, d_head]) attention heads at a layer."""

    kind: ClassVar[str] = "ablate_heads"
    heads: list[int] = field(default_factory=list)
    op: str = "zero"
    means: Any = None
    positions: Positions = None

    def __post_init__(self) -> None:
        if isinstance(self.site, int):
            self.site = f"z.{self.site}"
        super().__post_init__()
        if self.parsed_site.name != "z":
            raise ValueError("AblateHeads acts on the per-head site 'z.<layer>'")
        if self.op not in ("zero", "mean"):
            raise ValueError("AblateHeads op is 'zero' or 'mean'")
        if self.op == "mean" and self.means is None:
            raise ValueError("mean ablation of heads needs means [n_heads, d_head]")
        self.heads = [int(h) for h in as_list(self.heads)]
        self.means = as_list(self.means)
        check_finite("AblateHeads means", self.means)

    def compile(self, model: Any) -> list[TraceOp]:
        return [AblateHeadsOp(self)]

    def describe(self) -> str:
        return f"ablate heads {self.heads} @ layer {self.parsed_site.layer}"


@dataclass
class Steer(Spec):
    """Add ``strength * direction`` to a site (a residual stream by default) at positions."""

    kind: ClassVar[str] = "steer"
    direction: Any = None
    strength: float = 1.0
    positions: Positions = None
    name: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction is None:
            raise ValueError("Steer needs a direction (a vector of the site's width)")
        if self.parsed_site.name not in WRITABLE:
            raise ValueError(f"cannot steer read-only site {self.site}")
        self.direction = _vector("Steer direction", self.direction, self.site)
        try:
            self.strength = float(as_list(self.strength))
        except (TypeError, ValueError):
            raise TypeError(f"Steer strength must be a number, not {self.strength!r}") from None
        check_finite("Steer strength", self.strength)
        self.positions = None if self.positions is None else [int(p) for p in as_list(self.positions)]

    def compile(self, model: Any) -> list[TraceOp]:
        return [SteerOp(self)]

    def describe(self) -> str:
        return f"steer {self.name or 'direction'} @ {self.site} ×{self.strength:g}"


def _vector(what: str, x: Any, site: str) -> list[float]:
    """``x`` (a tensor, array or list) as a flat list of finite floats, or a clear error naming ``what``."""
    v = as_list(x)
    expected = f"a 1-D vector of {site}'s width (e.g. d_model for a residual stream)"
    if not isinstance(v, list):
        raise ValueError(f"{what} must be {expected}, not a single {type(x).__name__}")
    if any(isinstance(e, (list, tuple)) for e in v) or getattr(x, "ndim", 1) != 1:
        try:
            import torch

            shape = list(torch.as_tensor(v).shape)
        except (TypeError, ValueError, RuntimeError):
            shape = "nested"
        raise ValueError(f"{what} must be {expected}, but it has shape {shape}: pass one vector (e.g. x[0] or x.mean(0))")
    if not all(isinstance(e, (int, float)) for e in v):
        bad = next(e for e in v if not isinstance(e, (int, float)))
        raise TypeError(f"{what} must hold numbers, not {type(bad).__name__} ({bad!r})")
    out = [float(e) for e in v]
    check_finite(what, out)
    return out


@dataclass
class Patch(Spec):
    """Replace a site's activation by its value on ``source`` (another prompt).

    ``positions`` are target positions; ``source_positions`` default to the same.
    ``indices`` restricts the patch to some units (for ``z``: heads).
    """

    kind: ClassVar[str] = "patch"
    source: str = ""
    positions: Positions = None
    source_positions: Positions = None
    indices: list[int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.source:
            raise ValueError("Patch needs a source prompt")
        if self.parsed_site.name not in WRITABLE:
            raise ValueError(f"cannot patch read-only site {self.site}")
        self.positions = None if self.positions is None else [int(p) for p in as_list(self.positions)]
        self.source_positions = None if self.source_positions is None else [int(p) for p in as_list(self.source_positions)]
        if self.source_positions is not None and self.positions is not None and len(self.source_positions) != len(self.positions):
            raise ValueError("positions and source_positions must have the same length")
        self.indices = None if self.indices is None else [int(i) for i in as_list(self.indices)]

    def compile(self, model: Any) -> list[TraceOp]:
        return [PatchOp(self)]

    def describe(self) -> str:
        return f"patch {self.site} from {self.source[:30]!r}"


SPEC_KINDS: dict[str, type[Spec]] = {c.kind: c for c in (Edit, AblateHeads, Steer, Patch)}
#: Spec kinds defined in other modules (`workbench.dictionaries.features`: feature_edit, splice), by kind.
EXTRA_SPEC_KINDS: dict[str, type[Spec]] = {}
#: The entry-point group naming modules that define spec kinds (loaded when JSON names an unknown kind).
SPEC_KINDS_ENTRY_POINT = "workbench.spec_kinds"
_plugins_loaded = False


def register_spec_kind(cls: type[Spec]) -> type[Spec]:
    """Class decorator: make a spec kind defined elsewhere known to `spec_from_dict`."""
    if not cls.kind or cls.kind in SPEC_KINDS:
        raise ValueError(f"spec kind {cls.kind!r} is empty or already taken")
    EXTRA_SPEC_KINDS[cls.kind] = cls
    return cls


def spec_kinds() -> dict[str, type[Spec]]:
    """Every spec kind `spec_from_dict` knows: kind -> class (loads the ``workbench.spec_kinds`` entry points)."""
    global _plugins_loaded
    if not _plugins_loaded:
        from importlib.metadata import entry_points

        for ep in entry_points(group=SPEC_KINDS_ENTRY_POINT):
            ep.load()  # importing the module registers its kinds
        _plugins_loaded = True
    return {**SPEC_KINDS, **EXTRA_SPEC_KINDS}


def spec_from_dict(d: dict[str, Any]) -> Spec:
    """Rebuild a spec from `Spec.to_dict` output."""
    d = dict(d)
    kind = d.pop("kind", None)
    cls = SPEC_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        kinds = spec_kinds() if isinstance(kind, str) else {**SPEC_KINDS, **EXTRA_SPEC_KINDS}
        cls = kinds.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ValueError(f"unknown intervention kind {kind!r}; known: {sorted(kinds)}")
    return cls(**d)


def specs_to_json(specs: list[Spec]) -> str:
    return json.dumps([s.to_dict() for s in specs])


def specs_from_json(text: str) -> list[Spec]:
    return [spec_from_dict(d) for d in json.loads(text)]


# -- helpers that read like the papers -------------------------------------------------
def zero_neurons(layer: int, indices: list[int], positions: Positions = None, *, rows: list[int] | None = None) -> Edit:
    """Zero-ablate MLP neurons."""
    return Edit(f"neurons.{layer}", indices, "zero", None, positions, rows=rows)


def scale_neurons(layer: int, indices: list[int], factor: float, positions: Positions = None, *, rows: list[int] | None = None) -> Edit:
    """Multiply MLP neurons by ``factor``."""
    return Edit(f"neurons.{layer}", indices, "scale", float(factor), positions, rows=rows)


def set_neurons(layer: int, indices: list[int], value: float | list[float], positions: Positions = None, *, rows: list[int] | None = None) -> Edit:
    """Set MLP neurons to a value (or one value per neuron)."""
    return Edit(f"neurons.{layer}", indices, "set", value, positions, rows=rows)


def mean_ablate_neurons(layer: int, indices: list[int], means: list[float], positions: Positions = None, *, rows: list[int] | None = None) -> Edit:
    """Replace MLP neurons by their mean (see `Model.mean_activation`)."""
    return Edit(f"neurons.{layer}", indices, "mean", means, positions, rows=rows)


def ablate_heads(layer: int, heads: list[int], positions: Positions = None, *, rows: list[int] | None = None) -> AblateHeads:
    """Zero-ablate attention heads at a layer."""
    return AblateHeads(f"z.{layer}", heads, "zero", None, positions, rows=rows)


def steer(layer: int, direction: Any, strength: float = 1.0, site: str = "resid_post", positions: Positions = None, name: str = "", *, rows: list[int] | None = None) -> Steer:
    """Add a steering direction to the residual stream after ``layer``."""
    return Steer(f"{site}.{layer}", direction, strength, positions, name, rows=rows)
