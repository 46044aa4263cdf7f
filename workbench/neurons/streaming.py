"""Streaming texts through the model in batches, reduced inside the trace (contrastive neurons, probing).

Texts are batched by similar length (little padding); per batch a reducer runs inside the
nnsight trace on every ``neurons.L`` site, so only small per-text numbers leave it (also
remotely). `valid_mask` marks the tokens that count (no padding, optionally no first token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["token_lengths", "length_batches", "valid_mask", "run_reduced", "progress_bar"]


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


def run_reduced(model: Any, texts: list[str], layers: list[int], reducer: Callable[[torch.Tensor], torch.Tensor],
                remote: bool | str | None) -> dict[int, torch.Tensor]:
    """One batch through the model; ``reducer`` runs inside the trace on each ``neurons.L``."""
    caps = {f"neurons.{L}": reducer for L in layers}
    res = model.run(texts, capture=caps, top_k=0, logits=None, remote=remote)  # top_k=0: no unembedding
    return {L: res.activations[f"neurons.{L}"].detach().cpu() for L in layers}


def progress_bar(total: int, desc: str, progress: bool) -> Any:
    """A tqdm bar of ``total`` batches (disabled when ``progress`` is False; not left on screen)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)
