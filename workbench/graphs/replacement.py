"""The local replacement model of one prompt: the real forward, made linear for the backward.

One nnsight trace runs the prompt ``rows`` times (one copy per target row of a batched
backward). Its values are the real model's; only the gradient paths change:

- every norm's denominator is frozen: its output is the real output plus
  ``weight * (dx [- mean dx]) * rstd`` of a zero-valued ``dx = x - x.detach()``;
- attention patterns are frozen: queries and keys are detached, so gradients reach the
  residual stream through the values only;
- every MLP's output is a leaf (its real value): what the MLP wrote enters the graph as its
  transcoder's features, their decoder bias and an error term (the whole output where the layer
  has no transcoder); a transcoder's skip connection stays a linear path;
- the token embeddings are a leaf too.

So the map from the leaves to each MLP input and to the final norm's output is linear, and its
gradients are the attribution graph's edges. Supported: models whose attention has separate
``q_proj``/``k_proj`` modules (the Llama family: Llama, SmolLM2, Qwen2/3, Mistral, Gemma, OLMo),
with LayerNorm or RMSNorm; logit softcapping is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nnsight
import torch

from ..core.arch import resolve
from ..core.program import Batch

__all__ = ["ReplacementRun", "replacement_forward", "check_supported", "UnsupportedModelError"]


class UnsupportedModelError(ValueError):
    """A model the replacement model cannot freeze (the message names the missing part)."""


def _norm_kind(module: Any) -> tuple[str, float]:
    m = getattr(module, "_module", module)
    name = type(m).__name__.lower()
    eps = next((v for v in (getattr(m, "variance_epsilon", None), getattr(m, "eps", None))
                if isinstance(v, (int, float))), None)
    if eps is None:
        raise UnsupportedModelError(f"{type(m).__name__} has no eps: the replacement model freezes LayerNorm and "
                                    "RMSNorm denominators only")
    if isinstance(m, torch.nn.LayerNorm) or ("layernorm" in name and "rms" not in name):
        return "layer", float(eps)
    if "rms" in name:
        return ("rms1p" if "gemma" in name else "rms"), float(eps)
    raise UnsupportedModelError(f"{type(m).__name__} is neither a LayerNorm nor an RMSNorm")


def check_supported(model: Any) -> None:
    """Refuse, before any work, a model whose attention or norms cannot be frozen here."""
    a = model.arch
    if not a.ln1 or not a.ln2:
        raise UnsupportedModelError(f"{model.name}: attribution graphs need pre-attention and pre-MLP norms "
                                    "(ln1/ln2 in the architecture map)")
    layer0 = resolve(model.hf, a.layers)[0]
    attn = resolve(layer0, a.attn)
    if not (hasattr(attn, "q_proj") and hasattr(attn, "k_proj")):
        raise UnsupportedModelError(f"{model.name} ({a.family}): attribution graphs need attention with separate "
                                    "q_proj and k_proj modules (the Llama family) to freeze the patterns")
    for path in (a.ln1, a.ln2):
        _norm_kind(resolve(layer0, path))
    known = {a.ln1, a.ln2}
    extra = [name for name, m in layer0.named_modules() if name and "norm" in type(m).__name__.lower()
             and name not in known and not name.startswith(a.attn + ".")]
    if extra:
        raise UnsupportedModelError(f"{model.name} ({a.family}) has norms besides the pre-attention and pre-MLP "
                                    f"ones ({', '.join(extra)}); the replacement model freezes only those two")
    _norm_kind(resolve(model.hf, a.final_norm))
    cfg = getattr(model.hf, "config", None)
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None):
        if getattr(cfg, "final_logit_softcapping", None):
            raise UnsupportedModelError(f"{model.name} caps its logits (final_logit_softcapping): the logits are not "
                                        "linear in the final residual stream, so logit nodes are undefined")


def _weight(module: Any, kind: str, like: torch.Tensor) -> torch.Tensor | None:
    m = getattr(module, "_module", module)
    w = getattr(m, "weight", None)
    if w is None:
        return None
    w = w.detach().to(like.dtype)
    return 1.0 + w if kind == "rms1p" else w


def _freeze_norm(env: Any) -> torch.Tensor:
    """Inside a trace: make ``env``'s output linear in its input for the backward; returns the output."""
    kind, eps = _norm_kind(env)
    x = env.input
    out = env.output
    xd = x.detach()
    dx = x - xd
    h = xd.float()
    if kind == "layer":
        h = h - h.mean(-1, keepdim=True)
        dx = dx - dx.mean(-1, keepdim=True)
    rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)
    lin = dx * rstd
    w = _weight(env, kind, x)
    if w is not None:
        lin = lin * w
    new = out.detach() + lin
    env.output = new
    return new


def _bias_of(env: Any) -> torch.Tensor | None:
    b = getattr(getattr(env, "_module", env), "bias", None)
    return b.detach() if isinstance(b, torch.Tensor) and bool(b.any()) else None


@dataclass
class ReplacementRun:
    """One frozen forward: leaves, the linear outputs to differentiate, and the real values (copy 0).

    ``embed_leaf [rows, s, d]`` and ``mlp_leaves[L] [rows, s, d]`` are the leaves; ``mlp_in[L]``
    (covered layers) and ``final [rows, d]`` (final norm output at the last position) the outputs;
    ``mlp_in_values``, ``mlp_out_values`` and ``embed_values`` their real values ``[s, d]``;
    ``logits [vocab]`` the last position's logits; ``skip_values[L]`` what a skip connection wrote;
    ``bias_points``: ``(output, bias)`` of every module on the linear paths that adds a constant
    (value and output projections, norms with a bias): a target's bias term includes
    ``sum over positions of grad(output) . bias``.
    """

    embed_leaf: torch.Tensor
    mlp_leaves: list[torch.Tensor]
    mlp_in: dict[int, torch.Tensor]
    final: torch.Tensor
    embed_values: torch.Tensor
    mlp_in_values: dict[int, torch.Tensor]
    mlp_out_values: list[torch.Tensor]
    skip_values: dict[int, torch.Tensor]
    logits: torch.Tensor
    bias_points: list[tuple[torch.Tensor, torch.Tensor]]


def replacement_forward(model: Any, ids: torch.Tensor, rows: int, covered: list[int],
                        skips: dict[int, torch.Tensor]) -> ReplacementRun:
    """Run ``ids [1, s]`` as ``rows`` copies through the frozen model (see the module docstring).

    ``covered``: the layers whose MLP input is an output to differentiate (transcoder layers);
    ``skips``: ``{layer: W_skip [d, d]}`` for transcoders with a skip connection (a linear path).
    """
    a = model.arch
    batch = Batch(ids.repeat(rows, 1), torch.ones(rows, ids.shape[1], dtype=torch.long),
                  [[] for _ in range(rows)], rows)
    nn = model.nn
    n_layers = a.n_layers
    want = set(covered)
    kw: dict[str, Any] = {"use_cache": False}
    import inspect

    if "logits_to_keep" in inspect.signature(model.hf.forward).parameters:
        kw["logits_to_keep"] = 1
    biases = _linear_biases(model)
    with model.lock, torch.enable_grad():
        with model.trace_batch(batch, remote=False, **kw):
            emb = resolve(nn, a.embed)
            e = emb.output
            e_leaf = e.detach().clone().requires_grad_(True)
            emb.output = e_leaf
            leaves, mlp_in, in_vals, out_vals, skip_vals, points = [], {}, {}, [], {}, []
            layers = resolve(nn, a.layers)
            for L in range(n_layers):
                layer = layers[L]
                h = _freeze_norm(resolve(layer, a.ln1))
                if (L, "ln1") in biases:
                    points.append((h, biases[(L, "ln1")]))
                attn = resolve(layer, a.attn)
                attn.q_proj.output = attn.q_proj.output.detach()
                attn.k_proj.output = attn.k_proj.output.detach()
                if (L, "v") in biases:
                    points.append((attn.v_proj.output, biases[(L, "v")]))
                if (L, "o") in biases:
                    points.append((resolve(layer, a.attn_o_proj).output, biases[(L, "o")]))
                x = _freeze_norm(resolve(layer, a.ln2))
                if (L, "ln2") in biases:
                    points.append((x, biases[(L, "ln2")]))
                if L in want:
                    mlp_in[L] = x
                    in_vals[L] = x[0].detach()
                mlp = resolve(layer, a.mlp)
                out = mlp.output
                val = out.detach()
                out_vals.append(val[0].clone())
                if L in skips:
                    s_lin = x @ skips[L].to(x.dtype)
                    leaf = (val - s_lin.detach()).clone().requires_grad_(True)
                    skip_vals[L] = s_lin[0].detach()
                    mlp.output = leaf + s_lin
                else:
                    leaf = val.clone().requires_grad_(True)
                    mlp.output = leaf
                leaves.append(leaf)
            fin = _freeze_norm(resolve(nn, a.final_norm))
            if (-1, "final") in biases:
                points.append((fin, biases[(-1, "final")]))
            final = fin[:, -1]
            logits = resolve(nn, a.unembed).output[0, -1].detach()
            saved = nnsight.save([e_leaf, leaves, mlp_in, final, in_vals, out_vals, skip_vals, logits, points])
    e_leaf, leaves, mlp_in, final, in_vals, out_vals, skip_vals, logits, points = saved
    return ReplacementRun(e_leaf, leaves, mlp_in, final, e_leaf[0].detach(), in_vals, out_vals, skip_vals,
                          logits.float(), list(points))


def _linear_biases(model: Any) -> dict[tuple[int, str], torch.Tensor]:
    """``{(layer, part): bias}`` of the constants on the frozen model's linear paths (none for Llama)."""
    a = model.arch
    out: dict[tuple[int, str], torch.Tensor] = {}
    layers = resolve(model.hf, a.layers)
    for L in range(a.n_layers):
        layer = layers[L]
        attn = resolve(layer, a.attn)
        for part, mod in (("ln1", resolve(layer, a.ln1)), ("v", attn.v_proj), ("o", resolve(layer, a.attn_o_proj)),
                          ("ln2", resolve(layer, a.ln2))):
            b = _bias_of(mod)
            if b is not None:
                out[(L, part)] = b
    b = _bias_of(resolve(model.hf, a.final_norm))
    if b is not None:
        out[(-1, "final")] = b
    return out
