"""The trace-time ops of the built-in specs (`Edit`, `Steer`, `AblateHeads`, `Patch`).

Each built-in spec's ``compile(model)`` returns one of these; the trace program calls
``op.apply(program, x, step)`` at the op's site, exactly as it does for ops of specs defined
elsewhere (dictionary features, or your own). An op keeps its spec (plain data) for messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .program import Step, TraceOp, TraceProgram, check_finite

if TYPE_CHECKING:
    from .specs import AblateHeads, Edit, Patch, Steer

__all__ = ["EditOp", "SteerOp", "AblateHeadsOp", "PatchOp"]


def _check_indices(program: TraceProgram, spec: Any, idx: list[int] | None) -> None:
    site = spec.parsed_site
    width = program.arch.n_heads if site.name == "z" else program.arch.size(site)
    bad = [i for i in idx or [] if not -width <= i < width]
    if bad:
        unit = "head" if site.name == "z" else "index"
        raise IndexError(f"{spec.describe()}: {unit} {bad[0]} is out of range for {site} (size {width})")


class _SpecOp(TraceOp):
    """An op that carries its spec: checks rows, then the spec's own values, then positions."""

    generated = True  # positions may name tokens still to be generated

    def __init__(self, spec: Any):
        self.spec = spec
        self.site = spec.site

    def check(self, program: TraceProgram) -> None:
        s = self.spec
        program.check_rows(s.describe(), s.rows)
        self.check_values(program)
        program.check_positions(s.describe(), s.positions, self.generated)

    def check_values(self, program: TraceProgram) -> None:
        """Check the spec's indices and numbers against the model."""


class EditOp(_SpecOp):
    """Set, zero, scale, mean-ablate or add to units of a site."""

    spec: Edit

    def check_values(self, program: TraceProgram) -> None:
        s = self.spec
        _check_indices(program, s, s.indices)
        check_finite(f"{s.describe()}: the value", s.value)
        if isinstance(s.value, list):
            site = s.parsed_site
            n = len(s.indices) if s.indices is not None else program.arch.size(site)
            if len(s.value) != n:
                what = "indices" if s.indices is not None else f"units of {site}"
                raise ValueError(f"{s.describe()}: {len(s.value)} values for {n} {what}")

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        s = self.spec
        for rows, pos in program.targets(s.positions, step, _seq(s, x), s.rows):
            idx = None if s.indices is None else program.const(s, "indices", s.indices, x, integer=True)
            val = None if s.value is None else program.const(s, "value", s.value, x)
            if s.op == "zero":
                program.assign(x, rows, pos, idx, 0.0)
            elif s.op in ("set", "mean"):
                program.assign(x, rows, pos, idx, val)
            elif s.op == "scale":
                program.assign(x, rows, pos, idx, program.take(x, rows, pos, idx) * val)
            elif s.op == "add":
                program.assign(x, rows, pos, idx, program.take(x, rows, pos, idx) + val)


class SteerOp(_SpecOp):
    """Add ``strength * direction`` at positions."""

    spec: Steer

    def check_values(self, program: TraceProgram) -> None:
        s = self.spec
        width = program.arch.size(s.parsed_site)
        check_finite(f"{s.describe()}: the strength", s.strength)
        check_finite(f"{s.describe()}: the direction", s.direction)
        if len(s.direction) != width:
            raise ValueError(f"{s.describe()}: direction has {len(s.direction)} values but {s.site} has width {width}")

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        s = self.spec
        for rows, pos in program.targets(s.positions, step, _seq(s, x), s.rows):
            x[rows, pos] += program.const(s, "steer", s.direction, x, scale=s.strength)


class AblateHeadsOp(_SpecOp):
    """Zero or mean-ablate heads on ``z``."""

    spec: AblateHeads

    def check_values(self, program: TraceProgram) -> None:
        s = self.spec
        _check_indices(program, s, s.heads)
        check_finite(f"{s.describe()}: the means", s.means)
        if s.op == "mean":
            shape = tuple(torch.as_tensor(s.means).shape)
            a = program.arch
            if shape != (a.n_heads, a.d_head):
                raise ValueError(f"{s.describe()}: means have shape {shape}, expected [n_heads, d_head] = "
                                 f"{[a.n_heads, a.d_head]}")

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        s = self.spec
        for rows, pos in program.targets(s.positions, step, _seq(s, x), s.rows):
            idx = program.const(s, "heads", s.heads, x, integer=True)
            if s.op == "zero":
                program.assign(x, rows, pos, idx, 0.0)
            else:
                program.assign(x, rows, pos, idx, program.const(s, "means", s.means, x)[idx])


class PatchOp(_SpecOp):
    """Copy a site's value from a source prompt (a row of the batch, or recorded beforehand)."""

    spec: Patch
    generated = False

    def check_values(self, program: TraceProgram) -> None:
        s = self.spec
        _check_indices(program, s, s.indices)

    def check(self, program: TraceProgram) -> None:
        super().check(program)
        s = self.spec
        b = program.batch
        n_src = b.lengths[b.sources[s.source]]
        src_pos = s.source_positions if s.source_positions is not None else s.positions
        for p in src_pos or []:
            if not -n_src <= p < n_src:
                raise IndexError(f"{s.describe()}: source position {p} is out of range for a source of {n_src} tokens")
        if src_pos is None and s.positions is None and any(L != n_src for L in b.lengths[: b.n_main]):
            raise ValueError(f"{s.describe()}: the source has {n_src} tokens but the prompt has "
                             f"{b.lengths[0]}: give positions (and source_positions) to patch prompts "
                             "of different lengths")
        if s.positions is None and s.source_positions is not None:
            raise ValueError(f"{s.describe()}: source_positions need target positions of the same length")

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        s = self.spec
        if step.step > 0:
            return
        pre = program.patch_values.get(s.source, {}).get(s.site)
        if pre is None:  # the source is a row of this batch
            src = program.batch.sources[s.source]
            srcx, n_src = x[src:src + 1], program.batch.lengths[src]
        else:  # recorded beforehand (generation)
            srcx, n_src = pre.to(device=x.device, dtype=x.dtype), pre.shape[1]
        src_pos = s.source_positions if s.source_positions is not None else s.positions
        for rows, pos in program.targets(s.positions, step, _seq(s, x), s.rows):
            spos = slice(None) if src_pos is None else [p + n_src if p < 0 else p for p in src_pos]
            if s.indices is None:
                value = srcx[:, spos]
                x[rows, pos] = value if isinstance(rows, slice) else value[0]
            else:
                idx = program.const(s, "indices", s.indices, x, integer=True)
                value = srcx[:, spos][:, :, idx]
                program.assign(x, rows, pos, idx, value if isinstance(rows, slice) else value[0])


def _seq(spec: Any, x: torch.Tensor) -> int:
    return x.shape[2] if spec.parsed_site.name == "pattern" else x.shape[1]
