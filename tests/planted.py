"""A tiny Llama with one planted MLP neuron, shared by the autointerp, hypothesis and course tests."""

from __future__ import annotations

import torch

import workbench as wb

TOKEN, UNIT, SITE = " the", 5, "neurons.0"


def plant(model: wb.Model, tid: int, unit: int = UNIT) -> None:
    """MLP neuron ``unit`` of layer 0 fires strongly on token ``tid`` only (its embedding scaled up so it
    dominates the residual stream; the neuron's gate and up weights point along it)."""
    with torch.no_grad():
        emb = model.hf.model.embed_tokens.weight
        e = emb[tid].clone()
        emb[tid] *= 30
        mlp = model.hf.model.layers[0].mlp
        mlp.gate_proj.weight[unit] = 2 * e / e.norm()
        mlp.up_proj.weight[unit] = 2 * e / e.norm()
