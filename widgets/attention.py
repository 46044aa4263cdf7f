"""AttentionHeads: a layer × head grid of attention-pattern thumbnails for one prompt.

    from workbench.widgets import AttentionHeads
    w = AttentionHeads(model, "The cat sat on the mat because it")
    w                      # click a thumbnail to enlarge it; w.selection -> (layer, head)
    w.prompt = "..."       # reruns (so does editing the prompt in the widget)

The browser asks for the patterns with one rpc call; the kernel runs the model once,
capturing every requested layer's pattern, and streams one reply per layer holding the
lower triangles of that layer's heads as float16 (``[n_heads, s(s+1)/2]``, 2 bytes per
attention value), then a final reply with the tokens. A layer's reply larger than the
message budget travels as several chunk messages (`_transport.split`), reassembled in
the browser.

How long a prompt may be depends on the bytes, not only the tokens: the patterns of one
run, ``layers × heads × s² × 4`` bytes as eager attention holds them, must fit in
`max_pattern_bytes` (1.25 GiB, which allows the full 1,024 tokens on GPT-2 small or
SmolLM2-135M, and about 570 on a 32-layer, 32-head model); viewing fewer ``layers``
allows longer prompts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import traitlets

from ._base import WorkbenchWidget, bundle, rpc


def _tril_f16(x: torch.Tensor) -> torch.Tensor:
    """Reducer run inside the trace: batch row 0's ``[H, s, s]`` pattern → ``[H, s(s+1)/2]`` float16."""
    s = x.shape[-1]
    rows, cols = torch.tril_indices(s, s, device=x.device)
    return x[0][:, rows, cols].to(torch.float16)


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

    @rpc(background=True)
    def rpc_patterns(self, prompt: str | None = None, layers: list[int] | None = None) -> Iterator[dict]:
        """Run the prompt once; yield ``{"layer", "pattern"}`` per layer, return the tokens."""
        prompt = self.prompt if prompt is None else prompt
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("the prompt is empty: type some text to see its attention patterns")
        layers = self._check_layers(self.layers if layers is None else layers, self.model.arch.n_layers)
        n = len(self.model.tokenize(prompt).tokens[0])
        cap = self.token_cap(len(layers))
        if n > cap:
            why = ""
            if cap < self.max_tokens:
                n_heads = self.model.arch.n_heads
                why = (
                    f" for {len(layers)} layers × {n_heads} heads (layers × heads × s² × 4 bytes of patterns"
                    f" must stay under {self.max_pattern_bytes / 2**20:,.2f} MiB; view fewer layers for longer prompts)"
                )
            raise ValueError(f"the prompt has {n} tokens; AttentionHeads shows at most {cap}{why}")
        res = self.model.run(prompt, capture={f"pattern.{L}": _tril_f16 for L in layers}, top_k=1, logits=None)
        self.result = res
        seq = len(res.tokens[0])
        for L in layers:
            yield {"layer": L, "seq": seq, "pattern": res.activations[f"pattern.{L}"]}
        tokens = res.token_texts(0)
        self.tokens = tokens
        return {"tokens": tokens, "layers": layers, "seq": seq, "n_heads": self.model.arch.n_heads}
