"""Random transcoder sets (real `TranscoderSet` objects of random `Dictionary` transcoders) for graph tests.

Random weights, like the tiny models: the graph engine's arithmetic is what the tests check.
"""

from __future__ import annotations

import torch

from workbench.dictionaries import Dictionary
from workbench.dictionaries.transcoders import TranscoderSet


def random_transcoders(layers: list[int], d: int, m: int, seed: int = 0, scale: float = 1.0,
                       architecture: str = "relu", k: int | None = None, skip: bool = False,
                       site: str = "mlp_in") -> TranscoderSet:
    """ReLU (or TopK with ``k``) transcoders ``mlp_in.L -> mlp_out.L`` with random weights, as a set."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for L in layers:
        out[L] = Dictionary(
            W_enc=torch.randn(d, m, generator=g) * scale / d**0.5, b_enc=torch.randn(m, generator=g) * 0.1,
            W_dec=torch.randn(m, d, generator=g) / m**0.5, b_dec=torch.randn(d, generator=g) * 0.1,
            architecture=architecture, k=k, site=f"{site}.{L}", out_site=f"mlp_out.{L}",
            W_skip=torch.randn(d, d, generator=g) * 0.05 if skip else None)
    return TranscoderSet(out)


def RandomPLT(layers: list[int], d: int, m: int, seed: int = 0, scale: float = 1.0) -> TranscoderSet:  # noqa: N802
    """`random_transcoders` with ReLU latents (the name the widget tests use)."""
    return random_transcoders(layers, d, m, seed, scale)
