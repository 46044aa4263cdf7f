"""Streaming texts through the model in batches, reduced inside the trace (scans, contrastive neurons, probing).

Texts are batched by similar length (little padding); per batch a reducer runs inside the
nnsight trace on every ``neurons.L`` site, so only small per-text numbers leave it (also
remotely). `valid_mask` marks the tokens that count (no padding, optionally no first token).
`run_to_last_site` is the one trace all of them use: it stops after the last site it reads, so
no layer above it, no final norm and no unembedding runs (none of them needs logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import nnsight
import torch

from ..core.program import Batch, Step
from ..core.specs import Patch

__all__ = ["token_lengths", "length_batches", "valid_mask", "run_reduced", "run_to_last_site", "progress_bar"]


def token_lengths(model: Any, texts: Sequence[str]) -> list[int]:
    """Number of tokens of each text as `Model.tokenize` makes them (special tokens included)."""
    if not texts:
        return []
    enc = model.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [len(ids) for ids in enc]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Text indices in batches of similar length (sorted by length: little padding)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def valid_mask(lengths: Sequence[int], skip_first: bool) -> torch.Tensor:
    """``[b, max_len]`` bool: real tokens (no padding), without position 0 if ``skip_first``."""
    width = max(lengths)
    pos = torch.arange(width)[None, :]
    mask = pos < torch.tensor(list(lengths))[:, None]
    if skip_first:
        mask &= pos >= 1
    return mask


def run_to_last_site(model: Any, batch: Batch, specs: Sequence[Any], capture: dict[str, Callable[[torch.Tensor], Any]],
                     remote: bool | str | None = None) -> dict[str, Any]:
    """One trace of ``batch`` with ``specs`` applied and ``capture``'s reducers run inside it (as in
    `Model.run`), stopped right after the last site it reads: the forward never reaches the
    layers above, the final norm or the unembedding. Returns each site's reduced value, detached
    on the CPU (tensors, or dicts of them)."""
    if any(isinstance(s, Patch) for s in specs):
        raise ValueError("Patch specs need their source prompt tokenized with the batch: use Model.run with text prompts")
    model.check_length(batch.input_ids.shape[1], rows=batch.input_ids.shape[0])
    program = model.program(batch, specs, capture)
    st = Step(0, batch.lengths)
    nn, inputs, rkw = model.nn, model.inputs(batch), model.remote_kwargs(remote)
    with model.lock, torch.inference_mode():
        with nn.trace(inputs, **rkw) as tracer:
            saved = nnsight.save(program.visit(nn, st))
            tracer.stop()
    return {key: _detached(v) for key, v in saved.items()}


def _detached(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _detached(x) for k, x in v.items()}
    return v.detach().cpu() if isinstance(v, torch.Tensor) else v


def run_reduced(model: Any, texts: list[str], layers: list[int], reducer: Callable[[torch.Tensor], torch.Tensor],
                remote: bool | str | None) -> dict[int, torch.Tensor]:
    """One batch through the model; ``reducer`` runs inside the trace on each ``neurons.L`` (no unembedding)."""
    caps = {f"neurons.{L}": reducer for L in layers}
    acts = run_to_last_site(model, model.tokenize(texts), [], caps, remote)
    return {L: acts[f"neurons.{L}"] for L in layers}


def progress_bar(total: int, desc: str, progress: bool) -> Any:
    """A tqdm bar of ``total`` batches (disabled when ``progress`` is False; not left on screen)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)
