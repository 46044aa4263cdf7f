"""A random per-layer ReLU transcoder set with the `TranscoderSet` interface, for graph tests on tiny models.

Random weights, like the tiny models: the graph engine's arithmetic is what the tests check.
"""

from __future__ import annotations

import torch


class RandomPLT:
    """ReLU transcoders ``mlp_in.L -> mlp_out.L``: ``W_enc [d, m]``, ``b_enc [m]``, ``W_dec [m, d]``, ``b_dec [d]``."""

    kind = "plt"
    name = "random-plt"

    def __init__(self, layers: list[int], d: int, m: int, seed: int = 0, scale: float = 1.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.layers = list(layers)
        self.d_model = d
        self.W_enc = {L: torch.randn(d, m, generator=g) * scale / d**0.5 for L in layers}
        self.b_enc = {L: torch.randn(m, generator=g) * 0.1 for L in layers}
        self.W_dec = {L: torch.randn(m, d, generator=g) / m**0.5 for L in layers}
        self.bd = {L: torch.randn(d, generator=g) * 0.1 for L in layers}

    def d_sae(self, layer: int) -> int:
        return self.W_enc[layer].shape[1]

    def check(self, model: object) -> None:
        pass

    def check_linear(self) -> None:
        pass

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.float() @ self.W_enc[layer] + self.b_enc[layer])

    def decoder_rows(self, layer: int) -> torch.Tensor:
        return self.W_dec[layer]

    def out_layers(self, layer: int) -> list[int]:
        return [layer]

    def b_dec(self, layer: int) -> torch.Tensor:
        return self.bd[layer]

    def encoder_vector(self, layer: int, features: list[int]) -> torch.Tensor:
        return self.W_enc[layer][:, features].T

    def encoder_bias(self, layer: int, features: list[int]) -> torch.Tensor:
        return self.b_enc[layer][features]

    def skip(self, layer: int) -> None:
        return None

    def reconstruct(self, acts: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return {L: a @ self.W_dec[L] + self.bd[L] for L, a in acts.items()}
