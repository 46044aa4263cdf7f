"""The trace program: the one place where specs and captures run inside an nnsight trace.

Every intervention, built-in or not, reaches the model the same way: ``spec.compile(model)``
returns a list of `TraceOp` objects, each bound to one site, and `TraceProgram` visits the
sites in forward order, calling ``op.apply(program, x, step)`` on the live tensor, then saves
the captures. Because this is plain nnsight code, it runs under ``remote=True`` and
``remote="local"`` too.

The public interface, for methods that need their own in-trace code (the lens, forked patching
sweeps, scans, or a method of yours outside the package):

- ``TraceProgram(model, specs, capture, batch)``; ``program.visit(nn, Step(0, batch.lengths))``
  applies the specs and returns the saved captures;
- ``program.read(nn, site, cache)`` the live tensor at a standard site, ``program.logits(nn)``,
  ``program.module(nn, "final_norm")`` a module of the architecture map;
- for ops: ``program.targets(positions, step, seq, rows)`` the (rows, positions) index pairs to
  act on at this step, ``program.const(...)`` numbers as cached tensors, ``program.take`` /
  ``program.assign`` indexed reads and writes, ``program.check_rows`` / ``check_positions`` batch-aware checks.

See docs/architecture.md for a new spec written outside the package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nnsight
import torch

from .arch import resolve
from .errors import WorkbenchError
from .results import Token
from .sites import Site

if TYPE_CHECKING:
    from .specs import Spec

__all__ = ["Batch", "Step", "TraceOp", "TraceProgram", "Reducer", "NonFiniteError", "check_finite", "finite_number",
           "NormNotFoundError", "normalized"]

Reducer = Callable[[torch.Tensor], torch.Tensor]


class NormNotFoundError(WorkbenchError, ValueError):
    """A normalized-value site on a model whose norm is not in the architecture map, or of an unknown kind."""


def normalized(norm: Any, x: torch.Tensor, what: str = "the norm") -> torch.Tensor:
    """``x`` normalized as ``norm`` (a LayerNorm or RMSNorm module, or its nnsight envoy) does, before its weight.

    LayerNorm: ``(x - mean) / sqrt(var + eps)``; RMSNorm: ``x / sqrt(mean(x^2) + eps)`` (Gemma's
    ``1 + weight`` scale comes after, as every weight does). In float32, with the module's eps,
    cast back to ``x``'s dtype: TransformerLens's ``hook_normalized``.
    """
    module = getattr(norm, "_module", norm)  # nnsight envoy -> the torch module
    kind = type(module).__name__
    eps = next((v for v in (getattr(module, "variance_epsilon", None), getattr(module, "eps", None))
                if isinstance(v, (int, float))), None)
    rms = "rms" in kind.lower()
    if eps is None or not (rms or isinstance(module, torch.nn.LayerNorm) or "layernorm" in kind.lower()):
        raise NormNotFoundError(f"{what} is a {kind}, which the workbench cannot normalize: it needs a LayerNorm or "
                                "RMSNorm with an `eps` or `variance_epsilon` attribute")
    h = x if x.dtype == torch.float64 else x.float()
    if not rms:
        h = h - h.mean(-1, keepdim=True)
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class NonFiniteError(WorkbenchError, ValueError):
    """A spec's number (a direction, a strength, a value, a mean) is NaN or infinite."""


def check_finite(what: str, values: Any) -> None:
    """Raise `NonFiniteError` naming ``what`` if ``values`` (a number, nested lists, a tensor or array) holds NaN or inf."""
    if values is None:
        return
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        bad = [values] if not math.isfinite(values) else []
        n = 1
    else:
        try:
            t = torch.as_tensor(values.tolist() if hasattr(values, "tolist") else values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            return  # not numbers: the caller's own type check says so
        flat = t.reshape(-1)
        n = flat.numel()
        bad = flat[~torch.isfinite(flat)].tolist()
    if bad:
        shown = ", ".join(str(v) for v in bad[:3]) + (", …" if len(bad) > 3 else "")
        raise NonFiniteError(f"{what} must be finite: {len(bad)} of {n} value(s) are NaN or infinite ({shown})")


def finite_number(what: str, v: Any) -> float:
    """``v`` as a finite float; ValueError (or `NonFiniteError`) naming ``what`` otherwise."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, not {v!r}") from None
    if not math.isfinite(f):
        raise NonFiniteError(f"{what} must be finite, not {f!r}")
    return f


@dataclass
class Batch:
    """Tokenized prompts, right-padded: main rows first, then patch-source rows."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: list[list[Token]]
    n_main: int
    sources: dict[str, int] = field(default_factory=dict)  # source prompt -> row

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]


@dataclass
class Step:
    """Where a generation step is: step 0 sees the whole prompt, later steps one token."""

    step: int
    lengths: list[int]


class TraceOp:
    """One trace-time operation at one site: what every spec compiles into.

    Subclasses set ``site`` (a standard site name) and implement `apply`; `check` may refuse a
    batch before the trace starts. Ops must hold plain data (tensors, numbers, lists) so that
    remote runs can serialize them.
    """

    site: str = ""

    def check(self, program: TraceProgram) -> None:
        """Raise a clear error if this op cannot run on ``program``'s batch (before the trace)."""

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        """Edit ``x``, the live tensor at ``self.site``, in place (inside the trace)."""
        raise NotImplementedError


class TraceProgram:
    """Specs and captures compiled into an ordered visit of sites (runs inside a trace)."""

    def __init__(self, model: Any, specs: Sequence[Spec], capture: dict[str, Reducer | None], batch: Batch,
                 new_tokens: int = 0):
        self.arch = model.arch
        self.batch = batch
        self._consts: dict[tuple, torch.Tensor] = {}  # spec numbers as tensors, per device/dtype
        self.new_tokens = new_tokens  # generation: positions may also name generated tokens
        self.patch_values: dict[str, dict[str, torch.Tensor]] = {}  # source -> site -> [1, s, ...]
        self.ops: dict[str, list[TraceOp]] = {}
        for s in specs:
            self.arch.check_layer(s.parsed_site.layer)
            # [] when a spec changes nothing: its site is then not even visited.
            for op in s.compile(model):
                where = Site.parse(op.site)
                self.arch.check_layer(where.layer)
                op.check(self)
                self.ops.setdefault(str(where), []).append(op)
        self.capture = {str(Site.parse(k)): v for k, v in capture.items()}
        for k in self.capture:
            self.arch.check_layer(Site.parse(k).layer)
        sites = {Site.parse(k) for k in list(self.ops) + list(self.capture)}
        self.sites = sorted(sites, key=lambda s: s.order)

    # -- checks ops call before the trace ---------------------------------------------
    def check_rows(self, what: str, rows: list[int] | None) -> None:
        """Refuse rows beyond the batch's prompts."""
        if rows is not None and max(rows) >= self.batch.n_main:
            raise IndexError(f"{what}: row {max(rows)} is out of range for {self.batch.n_main} prompt(s)")

    def check_positions(self, what: str, positions: list[int] | None, generated: bool = True) -> None:
        """Refuse positions beyond every prompt (and, when ``generated``, the tokens to generate)."""
        extra = self.new_tokens if generated else 0
        for p in positions or []:
            for L in self.batch.lengths[: self.batch.n_main]:
                if not -L <= p < L + extra:
                    raise IndexError(f"{what}: position {p} is out of range for a prompt of {L} tokens"
                                     + (f" and {extra} generated tokens" if extra else ""))

    # -- reading sites ---------------------------------------------------------------
    def module(self, nn: Any, attr: str, layer: int | None = None) -> Any:
        """The module the architecture map names ``attr`` (``"final_norm"``; ``"mlp"`` with a layer)."""
        if layer is None:
            return resolve(nn, getattr(self.arch, attr))
        return resolve(self.layer(nn, layer), getattr(self.arch, attr))

    def layer(self, nn: Any, i: int) -> Any:
        """Decoder layer ``i`` of the (nnsight) model."""
        return resolve(nn, self.arch.layers)[i]

    def read(self, nn: Any, site: Site | str, cache: dict | None = None) -> torch.Tensor:
        """The live tensor at a standard site; ``cache`` shares module reads between sites of a layer."""
        site = Site.parse(site)
        cache = {} if cache is None else cache
        a = self.arch
        name, L = site.name, site.layer
        if name == "embed":
            return resolve(nn, a.embed).output
        if name == "final_norm":
            return resolve(nn, a.final_norm).output
        if name == "final_normalized":
            norm = resolve(nn, a.final_norm)
            return normalized(norm, norm.input, "the final norm")
        if name == "logits":
            return self.logits(nn)
        layer = self.layer(nn, L)
        if name == "resid_pre":
            return layer.input
        if name == "ln1_normalized":
            norm = resolve(layer, self._norm_path("ln1", site))
            return normalized(norm, norm.input, f"layer {L}'s pre-attention norm")
        if name in ("resid_mid", "ln2_normalized"):
            norm = resolve(layer, self._norm_path("ln2", site))
            if ("ln2", L) not in cache:
                cache[("ln2", L)] = norm.input
            x = cache[("ln2", L)]
            return x if name == "resid_mid" else normalized(norm, x, f"layer {L}'s pre-MLP norm")
        if name in ("z", "head_out"):
            if ("z", L) not in cache:
                cache[("z", L)] = resolve(layer, a.attn_o_proj).input.unflatten(-1, (a.n_heads, a.d_head))
            z = cache[("z", L)]
            if name == "z":
                return z
            proj = resolve(layer, a.attn_o_proj)
            w = proj.weight
            w = w if type(proj._module).__name__ != "Conv1D" else w.T  # -> [d_model, H*d_head]
            return torch.einsum("bshd,mhd->bshm", z, w.reshape(a.d_model, a.n_heads, a.d_head))
        if name in ("attn_out", "pattern"):
            if ("attn", L) not in cache:
                cache[("attn", L)] = resolve(layer, a.attn).output
            out = cache[("attn", L)]
            if name == "pattern" and out[1] is None:
                raise RuntimeError("attention probabilities are not materialized: load the model with eager attention")
            return out[0] if name == "attn_out" else out[1]
        if name == "mlp_in":
            return resolve(layer, a.mlp).input
        if name == "neurons":
            return resolve(layer, a.mlp_out_proj).input
        if name == "mlp_out":
            out = resolve(layer, a.mlp).output
            return out[0] if isinstance(out, tuple) else out
        if name == "resid_post":
            out = layer.output
            return out[0] if isinstance(out, tuple) else out
        raise ValueError(f"unknown site {site}")

    def _norm_path(self, attr: str, site: Site) -> str:
        path = getattr(self.arch, attr, "")
        if not path:
            raise NormNotFoundError(
                f"site {site} reads the {'pre-attention' if attr == 'ln1' else 'pre-MLP'} norm, which this "
                f"model's architecture map ({self.arch.family}) does not name: its blocks may not be pre-norm. "
                f"Set ArchMap.{attr} to the norm's path inside a layer if it has one.")
        return path

    @staticmethod
    def logits(nn: Any) -> torch.Tensor:
        """The logits the model returns (after any final softcapping, as in Gemma 2)."""
        out = nn.output
        return out.logits if hasattr(out, "logits") else out[0]

    # -- positions -----------------------------------------------------------------
    def targets(self, positions: list[int] | None, st: Step, seq: int,
                rows: list[int] | None = None) -> list[tuple[Any, Any]]:
        """(row, position index) pairs for an op's rows at this step; [] when nothing applies."""
        n = self.batch.n_main
        if positions is None:
            return [(slice(0, n), slice(None))] if rows is None else [(r, slice(None)) for r in rows]
        out = []
        if st.step == 0:
            off = max(st.lengths) - seq  # > 0 when only the last positions are there (generate's logits)
            for r in range(n) if rows is None else rows:
                L = st.lengths[r]
                ps = [p + L if p < 0 else p for p in positions]
                ps = [p - off for p in ps if off <= p < L]  # p >= L: a generated token, for later steps
                if ps:
                    out.append((r, ps))
            if rows is None and len(out) == n and all(o[1] == out[0][1] for o in out):
                return [(slice(0, n), out[0][1])]
            return out
        # later generation steps: one new token at absolute position lengths[r] + step - 1
        for r in range(n) if rows is None else rows:
            absolute = st.lengths[r] + st.step - 1
            if absolute in positions:
                out.append((r, [seq - 1]))
        return out

    # -- helpers for ops -----------------------------------------------------------
    def const(self, owner: Any, what: str, values: Any, x: torch.Tensor, integer: bool = False,
              scale: float | None = None) -> torch.Tensor:
        """An op's numbers as a tensor on x's device and dtype, built once (not at every step)."""
        key = (id(owner), what, x.device, x.dtype)
        t = self._consts.get(key)
        if t is None:
            t = torch.tensor(values, device=x.device, dtype=None if integer else x.dtype)
            if scale is not None:
                t = t * scale
            self._consts[key] = t
        return t

    @staticmethod
    def _key(x: torch.Tensor, rows: Any, pos: Any, idx: torch.Tensor | None) -> tuple:
        if idx is None:
            return (rows, pos)
        if isinstance(pos, list):
            p = torch.tensor(pos, device=x.device)
            return (rows, p[:, None], idx[None, :])
        return (rows, pos, idx)

    def take(self, x: torch.Tensor, rows: Any, pos: Any, idx: torch.Tensor | None) -> torch.Tensor:
        """``x[rows, pos, idx]`` (``idx=None``: every unit)."""
        return x[self._key(x, rows, pos, idx)]

    def assign(self, x: torch.Tensor, rows: Any, pos: Any, idx: torch.Tensor | None, value: Any) -> None:
        """``x[rows, pos, idx] = value`` in place (``idx=None``: every unit)."""
        x[self._key(x, rows, pos, idx)] = value

    # -- the body that runs inside the trace ----------------------------------------
    def visit(self, nn: Any, st: Step, saves: dict[str, list] | None = None) -> dict[str, torch.Tensor]:
        """Visit sites in forward order: apply the ops, then capture. Returns saved tensors."""
        cache: dict = {}
        out: dict[str, torch.Tensor] = {}
        self.nn = nn  # ops that act on a module beside their site (the circuit ops' q/k/v projections) read it
        for site in self.sites:
            key = str(site)
            x = self.read(nn, site, cache)
            for op in self.ops.get(key, ()):
                op.apply(self, x, st)
            if key in self.capture:
                reducer = self.capture[key]
                main = x[: self.batch.n_main]
                if reducer is None and st.step == 0:  # drop padding that only longer patch sources need
                    T = max(self.batch.lengths[: self.batch.n_main])
                    main = main[:, :, :T, :T] if site.name == "pattern" else main[:, :T]
                value = main.detach().clone() if reducer is None else reducer(main)
                if saves is None:
                    out[key] = nnsight.save(value)
                else:
                    saves[key].append(value)
        self.nn = None  # a remote run sends the program back: it must not hold the model
        return out
