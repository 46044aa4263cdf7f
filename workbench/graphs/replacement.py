"""The local replacement model of one prompt: the real forward, made linear for the backward.

One nnsight trace runs the prompt once; each backward pass over it is batched over ``rows``
target rows (``is_grads_batched``). Its values are the real model's; only the gradient paths
change:

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
from ..core.errors import WorkbenchError
from ..core.program import Batch

__all__ = ["RowPlan", "attribution_rows", "check_supported", "UnsupportedModelError"]


class UnsupportedModelError(WorkbenchError, ValueError):
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


def _freeze_norm(env: Any, parts: bool = False) -> Any:
    """Inside a trace: make ``env``'s output linear in its input for the backward; returns the output
    (``parts``: also the input and the frozen normalized value before the weight)."""
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
    w = _weight(env, kind, x)
    new = out.detach() + dx * (rstd * w if w is not None else rstd)  # one constant factor: one product backward
    env.output = new
    if not parts:
        return new
    return new, x, (h * rstd).to(x.dtype) + dx * rstd


def _bias_of(env: Any) -> torch.Tensor | None:
    b = getattr(getattr(env, "_module", env), "bias", None)
    return b.detach() if isinstance(b, torch.Tensor) and bool(b.any()) else None


@dataclass
class RowPlan:
    """Everything the trace needs to compute target rows, as plain tensors (what travels to a remote host).

    ``chunks``: one dict per backward pass: ``out [B]`` (the output row of each batch row, -1 for none),
    ``logit_b [k]`` / ``logit_vec [k, d]`` (batch rows whose target is a logit, and its demeaned
    unembedding vector), ``feat_b``, ``feat_L``, ``feat_p [k]`` / ``feat_vec [k, d]`` (batch rows whose
    target is a feature: its layer, position and encoder vector). ``sources``: per source layer and
    position, ``(cols [k], pos, act [k], out_layers, W [k, n_out, d])`` of the graph's feature columns.
    ``inputs``: the site name each covered layer's transcoder reads (``mlp_in``, ``resid_mid`` or
    ``ln2_normalized``). ``errors [n_layers, s, d]`` the error vectors; ``b_dec`` ``{layer: [d]}``; ``skips``
    ``{layer: [d, d]}``; ``n_rows`` and ``n_cols`` the output's shape; ``col_errors`` and
    ``col_tokens`` where the error and token columns start; ``n_pos`` the whole prompt's length when
    the trace runs a prefix of it (0: the trace's own length), which the error columns are laid out by.
    """

    rows: int
    covered: list[int]
    inputs: dict[int, str]
    chunks: list[dict[str, Any]]
    sources: list[tuple[torch.Tensor, int, torch.Tensor, list[int], torch.Tensor]]
    errors: torch.Tensor
    b_dec: dict[int, torch.Tensor]
    skips: dict[int, torch.Tensor]
    n_rows: int
    n_cols: int
    col_errors: int
    col_tokens: int
    n_pos: int = 0

    def nbytes(self) -> int:
        """Bytes of tensors this plan sends (a remote run's upload)."""
        n = self.errors.numel() * self.errors.element_size()
        for c in self.chunks:
            n += sum(v.numel() * v.element_size() for v in c.values() if isinstance(v, torch.Tensor))
        for cols, _, act, _, W in self.sources:
            n += sum(t.numel() * t.element_size() for t in (cols, act, W))
        n += sum(t.numel() * t.element_size() for t in (*self.b_dec.values(), *self.skips.values()))
        return int(n)


def _pass(plan: RowPlan, ch: dict[str, Any], leaves: list[torch.Tensor], mlp_in: dict[int, torch.Tensor],
          final: torch.Tensor, e_leaf: torch.Tensor, points: list[tuple[torch.Tensor, torch.Tensor]]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One backward pass: the chunk's rows ``[B, n_cols]`` and their bias terms ``[B]``.

    The frozen forward ran one copy of the prompt; the pass's target rows are one batched
    vector-Jacobian product over it (``is_grads_batched``: the backward vectorized over the rows).
    A chunk fills its rows from the first, so a partial chunk runs only its ``B`` used rows."""
    B, s, d = int((ch["out"] >= 0).sum()), e_leaf.shape[1], e_leaf.shape[2]
    outs, gouts = [], []
    if ch["logit_b"].numel():
        g = torch.zeros(B, *final.shape, dtype=final.dtype, device=final.device)
        g[ch["logit_b"].to(g.device), 0] = ch["logit_vec"].to(g)
        outs.append(final)
        gouts.append(g)
    for L in sorted(set(ch["feat_L"].tolist())):
        m = ch["feat_L"] == L
        x = mlp_in[L]
        g = torch.zeros(B, *x.shape, dtype=x.dtype, device=x.device)
        g[ch["feat_b"][m].to(g.device), 0, ch["feat_p"][m].to(g.device)] = ch["feat_vec"][m].to(g)
        outs.append(x)
        gouts.append(g)
    n_layers = len(leaves)
    wrt = [e_leaf, *leaves, *(t for t, _ in points)]
    if B == 1:  # one row: a plain backward
        grads = torch.autograd.grad(outs, wrt, [g[0] for g in gouts], retain_graph=True, allow_unused=True)
    else:
        grads = torch.autograd.grad(outs, wrt, gouts, retain_graph=True, allow_unused=True, is_grads_batched=True)
    zero = torch.zeros(B, s, d)

    def rows_of(g: torch.Tensor | None) -> torch.Tensor:
        return zero if g is None else g.detach().float().cpu().reshape(B, s, d)

    g_e = rows_of(grads[0])
    g_m = [rows_of(g) for g in grads[1:1 + n_layers]]
    block = torch.zeros(B, plan.n_cols)
    for cols, pos, act, outs_L, W in plan.sources:  # one group per (source layer, position): a GEMM each
        contrib = torch.zeros(B, cols.numel())
        for j, Lo in enumerate(outs_L):
            contrib += g_m[Lo][:, pos] @ W[:, j].T
        block[:, cols] = contrib * act[None]
    e0, t0, S = plan.col_errors, plan.col_tokens, plan.n_pos or s
    for L in range(n_layers):
        block[:, e0 + L * S:e0 + L * S + s] = torch.einsum("bsd,sd->bs", g_m[L], plan.errors[L])
    emb = e_leaf[0].detach().float().cpu()
    block[:, t0:t0 + s] = torch.einsum("bsd,sd->bs", g_e, emb)
    bias = torch.zeros(B)
    for L, b in plan.b_dec.items():
        bias += (g_m[L].sum(1) * b.float()[None]).sum(-1)
    for g, (_, b) in zip(grads[1 + n_layers:], points, strict=True):
        if g is not None:
            gb = g.detach().float().cpu().reshape(B, -1, b.numel())
            bias += (gb.sum(1) * b.float().cpu()[None]).sum(-1)
    return block, bias


def attribution_rows(model: Any, ids: torch.Tensor, plan: RowPlan, *, remote: bool | str | None = None,
                     bar: Any = None, cancel: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen model on ``ids [1, s]`` and every backward pass of ``plan`` (``plan.rows`` target
    rows each), inside one trace; returns the rows ``[n_rows, n_cols]`` and their bias terms ``[n_rows]``.

    Only ``plan``'s tensors go into the trace and only the rows come back, so the same code runs
    on a remote host (``remote=``: as the model's ``remote`` setting, or ``"local"`` to rehearse it).
    ``bar`` (a tqdm) and ``cancel`` (an Event) are used on local runs only.
    """
    a = model.arch
    batch = Batch(ids, torch.ones(1, ids.shape[1], dtype=torch.long), [[]], 1)
    nn = model.nn
    tb = model.trace_batch
    r = model.remote if remote is None else remote
    if r:
        bar = cancel = None  # neither travels
    n_layers, want, skips = a.n_layers, set(plan.covered), plan.skips
    kw: dict[str, Any] = {"use_cache": False}
    import inspect

    if "logits_to_keep" in inspect.signature(model.hf.forward).parameters:
        kw["logits_to_keep"] = 1
    biases = _linear_biases(model)
    with model.lock, torch.enable_grad():
        with tb(batch, remote=r, **kw):
            emb = resolve(nn, a.embed)
            e_leaf = emb.output.detach().clone().requires_grad_(True)
            emb.output = e_leaf
            leaves, mlp_in, points = [], {}, []
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
                x, resid_mid, normed = _freeze_norm(resolve(layer, a.ln2), parts=True)
                if (L, "ln2") in biases:
                    points.append((x, biases[(L, "ln2")]))
                if L in want:  # what the layer's transcoder reads
                    mlp_in[L] = {"mlp_in": x, "resid_mid": resid_mid, "ln2_normalized": normed}[plan.inputs[L]]
                mlp = resolve(layer, a.mlp)
                val = mlp.output.detach()
                if L in skips:
                    src = mlp_in[L] if L in mlp_in else x
                    s_lin = src @ skips[L].to(src)
                    leaf = (val - s_lin.detach()).clone().requires_grad_(True)
                    mlp.output = leaf + s_lin
                else:
                    leaf = val.clone().requires_grad_(True)
                    mlp.output = leaf
                leaves.append(leaf)
            fin = _freeze_norm(resolve(nn, a.final_norm))
            if (-1, "final") in biases:
                points.append((fin, biases[(-1, "final")]))
            final = fin[:, -1]
            out_rows = torch.zeros(plan.n_rows, plan.n_cols)
            out_bias = torch.zeros(plan.n_rows)
            stopped = False
            for ch in plan.chunks:
                if cancel is not None and cancel.is_set():
                    stopped = True
                    break
                block, bias = _pass(plan, ch, leaves, mlp_in, final, e_leaf, points)
                used = ch["out"][:block.shape[0]]
                out_rows[used] = block
                out_bias[used] = bias
                if bar is not None:
                    bar.update(block.shape[0])
            saved = nnsight.save([out_rows, out_bias, stopped])
    out_rows, out_bias, stopped = saved
    if stopped:
        from ..core.errors import Cancelled

        raise Cancelled("attribution cancelled between backward passes")
    return out_rows, out_bias


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
