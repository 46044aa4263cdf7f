"""Steering directions: from a neuron's output weights, a difference of means, or a user tensor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core.arch import resolve


def neuron_direction(model: Any, layer: int, index: int) -> torch.Tensor:
    """The residual-stream direction a MLP neuron writes (its output-projection column), unit norm."""
    model.arch.check_layer(layer)
    if not 0 <= index < model.arch.d_mlp:
        raise IndexError(f"neuron {index} is out of range (d_mlp={model.arch.d_mlp})")
    layer_mod = resolve(model.hf, model.arch.layers)[layer]
    proj = resolve(layer_mod, model.arch.mlp_out_proj)
    w = proj.weight.detach().float()
    col = w[index] if type(proj).__name__ == "Conv1D" else w[:, index]
    return col / col.norm().clamp_min(1e-12)


def mean_difference(model: Any, positive: Sequence[str], negative: Sequence[str], layer: int,
                    site: str = "resid_post", position: int = -1) -> torch.Tensor:
    """Mean activation on ``positive`` minus mean on ``negative`` at a site (last token by default)."""
    if not positive or not negative:
        raise ValueError("mean_difference needs at least one positive and one negative prompt")
    key = f"{site}.{layer}"

    def means(prompts: Sequence[str]) -> torch.Tensor:
        res = model.run(list(prompts), capture=[key], top_k=1, logits=None)
        x = res.activations[key]
        rows = [x[b, (L + position) if position < 0 else position] for b, L in enumerate(res.lengths)]
        return torch.stack(rows).float().mean(0)

    return means(positive) - means(negative)
