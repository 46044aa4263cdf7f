"""AttentionHeads: a layer × head grid of attention-pattern thumbnails for one prompt.

    from workbench.widgets import AttentionHeads
    w = AttentionHeads(model, "The cat sat on the mat because it")
    w                      # click a thumbnail to enlarge it; w.selection -> (layer, head)
    w.prompt = "..."       # reruns (so does editing the prompt in the widget)
    w.pattern(3, 2)        # the shown run's full [s, s] pattern of layer 3, head 2

The grid asks for the thumbnails with one rpc call (``patterns``): the kernel runs the model
once, keeps every requested layer's lower triangles as float16 (``[n_heads, s(s+1)/2]``, in
`result`), and streams one reply per layer holding only that layer's thumbnails: each head's
``s × s`` pattern max-pooled into ``size × size`` blocks of ``factor`` tokens a side (see
`thumbnail_plan`; at most `thumb_size`, 64, a side), as one float16 buffer ``[n_heads, size,
size]``. Max-pooling, not averaging, keeps one-token attention (the diagonal, previous-token
and induction stripes, a BOS column) at full strength in a 16 × 16 block; a block wholly
above the diagonal (causally masked) is -1. Up to 64 tokens the thumbnail *is* the pattern.
A final reply carries the tokens. At 1,024 tokens on a 30-layer, 9-head model the first
render moves 2.2 MB instead of the 283 MB of every full triangle.

Enlarging a head asks for its full pattern (``head``, keyed by request id like every rpc):
the exact float16 triangle ``[s(s+1)/2]`` the run kept, 1 MB at 1,024 tokens, under the
message budget. A head of another prompt than the kept run's (another view reran) reruns
that one layer.

How long a prompt may be depends on the bytes, not only the tokens: the patterns of one
run, ``layers × heads × s² × 4`` bytes as eager attention holds them, must fit in
`max_pattern_bytes` (1.25 GiB, which allows the full 1,024 tokens on GPT-2 small or
SmolLM2-135M, and about 570 on a 32-layer, 32-head model); viewing fewer ``layers``
allows longer prompts.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import traitlets

from ._base import WorkbenchWidget, bundle, rpc
from ._payload import as_int

__all__ = ["AttentionHeads", "thumbnail_plan", "thumbnails"]


@functools.lru_cache(maxsize=4)
def _tril_flat(s: int, device: torch.device) -> torch.Tensor:
    """Flat indices ``q * s + k`` of an ``s × s`` matrix's lower triangle, row by row."""
    rows, cols = torch.tril_indices(s, s, device=device)
    return rows * s + cols


def _tril_f16(x: torch.Tensor) -> torch.Tensor:
    """Reducer run inside the trace: batch row 0's ``[H, s, s]`` pattern → ``[H, s(s+1)/2]`` float16."""
    s = x.shape[-1]
    # one index_select over the flattened rows: 4x faster than x[0][:, rows, cols] at 1,024 tokens
    return x[0].reshape(x.shape[1], s * s).index_select(1, _tril_flat(s, x.device)).to(torch.float16)


def thumbnail_plan(s: int, max_size: int = 64) -> tuple[int, int]:
    """``(factor, size)``: an ``s``-token pattern pools into ``size × size`` blocks of ``factor`` tokens."""
    if s < 1 or max_size < 1:
        raise ValueError(f"need s ≥ 1 and max_size ≥ 1, not {s} and {max_size}")
    factor = -(-s // max_size)
    return factor, -(-s // factor)


@functools.lru_cache(maxsize=4)
def _block_index(s: int, factor: int) -> torch.Tensor:
    """For each packed lower-triangle entry (row q, key k): its block ``(q // f) * size + k // f``."""
    size = -(-s // factor)
    rows, cols = torch.tril_indices(s, s)
    return (rows // factor) * size + cols // factor


def thumbnails(tril: torch.Tensor, s: int, max_size: int = 64) -> torch.Tensor:
    """Max-pool packed triangles ``[H, s(s+1)/2]`` into ``[H, size, size]`` thumbnails (see `thumbnail_plan`).

    A block holds the largest attention value among its cells on or below the diagonal; a block with
    none (wholly above the diagonal) is -1. Same dtype as `tril`.
    """
    if tril.ndim != 2 or tril.shape[1] != s * (s + 1) // 2:
        raise ValueError(f"expected packed triangles [H, {s * (s + 1) // 2}] for s={s}, got {list(tril.shape)}")
    factor, size = thumbnail_plan(s, max_size)
    idx = _block_index(s, factor).to(tril.device)
    out = torch.full((tril.shape[0], size * size), -1.0, dtype=tril.dtype, device=tril.device)
    out.scatter_reduce_(1, idx.expand(tril.shape[0], -1), tril, "amax")
    return out.view(-1, size, size)


class AttentionHeads(WorkbenchWidget):
    """Thumbnails of every head's attention pattern; click one to inspect it with token labels."""

    _esm = bundle("attention")

    prompt = traitlets.Unicode("").tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    layers = traitlets.List(traitlets.Int()).tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    selected = traitlets.List().tag(sync=True)

    #: Longest prompt (in tokens) the widget will show, whatever the model.
    max_tokens = 1024
    #: Budget for one run's patterns, ``layers × heads × s² × 4`` bytes: caps the tokens by model shape.
    max_pattern_bytes = 1.25 * 2**30
    #: Largest side of a grid thumbnail (values, one per pixel): longer prompts are max-pooled into blocks.
    thumb_size = 64

    def __init__(self, model: Any, prompt: str, layers: Iterable[int] | None = None, **kwargs: Any) -> None:
        self.model = model
        n_layers = model.arch.n_layers
        super().__init__(
            prompt=prompt,
            n_layers=n_layers,
            n_heads=model.arch.n_heads,
            layers=self._check_layers(layers, n_layers),
            **kwargs,
        )
        self.result: Any = None  # the last RunResult (patterns as packed float16 triangles)
        self._kept: tuple[str, Any] | None = None  # (prompt, RunResult) of the grid's last run
        self._loose: tuple[str, int, torch.Tensor, int] | None = None  # one layer rerun for a head
        self._kept_lock = threading.Lock()

    @staticmethod
    def _check_layers(layers: Iterable[int] | None, n_layers: int) -> list[int]:
        if layers is None:
            return list(range(n_layers))
        if isinstance(layers, int):
            layers = [layers]
        out: list[int] = []
        for L in layers:
            if isinstance(L, bool) or not isinstance(L, int) or not 0 <= L < n_layers:
                raise IndexError(f"layer {L!r} is out of range: this model has layers 0..{n_layers - 1}")
            if L not in out:
                out.append(L)
        if not out:
            raise ValueError("no layers given: pass layers=None for all layers")
        return sorted(out)

    @traitlets.validate("layers")
    def _validate_layers(self, proposal: dict) -> list[int]:
        return self._check_layers(proposal["value"], self.n_layers or self.model.arch.n_layers)

    @traitlets.validate("selected")
    def _validate_selected(self, proposal: dict) -> list[int]:
        value = list(proposal["value"] or [])
        if value and (len(value) != 2 or not all(isinstance(v, int) for v in value)):
            raise traitlets.TraitError(f"selected must be [] or [layer, head], not {value!r}")
        return value

    @property
    def selection(self) -> tuple[int, int] | None:
        """The clicked head as ``(layer, head)``, or None when nothing is selected."""
        return (int(self.selected[0]), int(self.selected[1])) if len(self.selected) == 2 else None

    def token_cap(self, n_layers: int | None = None) -> int:
        """Longest prompt shown when viewing `n_layers` layers (default: the widget's layers)."""
        n_layers = len(self.layers) if n_layers is None else n_layers
        per_s2 = max(1, n_layers) * max(1, self.model.arch.n_heads) * 4
        return max(1, min(int(self.max_tokens), math.isqrt(int(self.max_pattern_bytes // per_s2))))

    def _check_length(self, prompt: str, n_layers: int) -> None:
        n = len(self.model.tokenize(prompt).tokens[0])
        cap = self.token_cap(n_layers)
        if n > cap:
            why = ""
            if cap < self.max_tokens:
                n_heads = self.model.arch.n_heads
                why = (
                    f" for {n_layers} layers × {n_heads} heads (layers × heads × s² × 4 bytes of patterns"
                    f" must stay under {self.max_pattern_bytes / 2**20:,.2f} MiB; view fewer layers for longer prompts)"
                )
            raise ValueError(f"the prompt has {n} tokens; AttentionHeads shows at most {cap}{why}")

    def _run_layers(self, prompt: str, layers: list[int]) -> Any:
        """One run capturing the packed float16 triangles of `layers`."""
        self._check_length(prompt, len(layers))
        return self.model.run(prompt, capture={f"pattern.{L}": _tril_f16 for L in layers}, top_k=1, logits=None)

    # -- static copy ---------------------------------------------------------------------
    #: A static copy keeps every head's full pattern (so clicking any thumbnail enlarges it) up to these bytes.
    static_head_bytes = 4 * 2**20

    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The grid's ``patterns``, then the ``head`` of the selected head, or of every head if they are small."""
        reqs: list[tuple[str, dict[str, Any]]] = [("patterns", {"prompt": self.prompt, "layers": list(self.layers)})]
        if not self.prompt:
            return reqs  # the view shows the error of its one request
        n = len(self.model.tokenize(self.prompt).tokens[0])
        heads = [(L, h) for L in self.layers for h in range(self.n_heads)]
        if len(heads) * n * (n + 1) > self.static_head_bytes:  # float16 triangles: s(s+1)/2 x 2 bytes each
            heads = [self.selection] if self.selection is not None else []
        elif self.selection is not None:  # the selected head first: the view asks for it at once
            heads.sort(key=lambda lh: lh != self.selection)
        reqs += [("head", {"prompt": self.prompt, "layer": L, "head": h}) for L, h in heads]
        return reqs

    @rpc(background=True)
    def rpc_patterns(self, prompt: str | None = None, layers: list[int] | None = None) -> Iterator[dict]:
        """Run the prompt once; yield ``{"layer", "seq", "factor", "thumbs"}`` per layer, return the tokens."""
        prompt = self._nonempty(self.prompt if prompt is None else prompt)
        layers = self._check_layers(self.layers if layers is None else layers, self.model.arch.n_layers)
        res = self._run_layers(prompt, layers)
        self.result = res
        with self._kept_lock:
            self._kept = (prompt, res)
        seq = len(res.tokens[0])
        factor, size = thumbnail_plan(seq, self.thumb_size)
        for L in layers:
            thumbs = thumbnails(res.activations[f"pattern.{L}"], seq, self.thumb_size)
            yield {"layer": L, "seq": seq, "factor": factor, "thumbs": thumbs}
        tokens = res.token_texts(0)
        self.tokens = tokens
        return {"tokens": tokens, "layers": layers, "seq": seq, "n_heads": self.model.arch.n_heads,
                "factor": factor, "size": size}

    @rpc(background=True)
    def rpc_head(self, layer: int, head: int, prompt: str | None = None) -> dict:
        """One head's full pattern: ``{"layer", "head", "seq", "pattern"}``, float16 ``[s(s+1)/2]``."""
        layer, head = self._check_head(layer, head)
        tril, seq = self._layer_tril(self._nonempty(self.prompt if prompt is None else prompt), layer)
        return {"layer": layer, "head": head, "seq": seq, "pattern": tril[head]}

    def pattern(self, layer: int, head: int, prompt: str | None = None) -> np.ndarray:
        """Head ``(layer, head)``'s ``[s, s]`` float32 pattern of `prompt` (default: the widget's), zero above the diagonal.

        The values are those the enlarged head shows (float16, from the grid's run when it was that prompt).
        """
        layer, head = self._check_head(layer, head)
        tril, s = self._layer_tril(self._nonempty(self.prompt if prompt is None else prompt), layer)
        out = np.zeros((s, s), np.float32)
        out[np.tril_indices(s)] = tril[head].float().cpu().numpy()
        return out

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _nonempty(prompt: Any) -> str:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("the prompt is empty: type some text to see its attention patterns")
        return prompt

    def _check_head(self, layer: Any, head: Any) -> tuple[int, int]:
        layer, head = as_int("layer", layer), as_int("head", head)
        n_layers, n_heads = self.model.arch.n_layers, self.model.arch.n_heads
        if not 0 <= layer < n_layers:
            raise IndexError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")
        if not 0 <= head < n_heads:
            raise IndexError(f"head {head} is out of range: this model has heads 0..{n_heads - 1}")
        return layer, head

    def _layer_tril(self, prompt: str, layer: int) -> tuple[torch.Tensor, int]:
        """Packed triangles ``[H, s(s+1)/2]`` of `layer` for `prompt`: kept from a run, or one new run."""
        key = f"pattern.{layer}"
        with self._kept_lock:
            kept, loose = self._kept, self._loose
        if kept is not None and kept[0] == prompt and key in kept[1].activations:
            return kept[1].activations[key], len(kept[1].tokens[0])
        if loose is not None and loose[0] == prompt and loose[1] == layer:
            return loose[2], loose[3]
        res = self._run_layers(prompt, [layer])
        tril, seq = res.activations[key], len(res.tokens[0])
        with self._kept_lock:
            self._loose = (prompt, layer, tril, seq)
        return tril, seq
