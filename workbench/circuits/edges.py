"""The edge-level engine: trace-time ops that give every receiver its own input.

One mechanism serves exact edge patching, the circuit spec and edge attribution. Along the
forward pass the ops record each sender's output (the stream entering layer 0, each head's share
of the attention output projection, each MLP's output) and rebuild each receiver's input as

    input_v = stream_v + sum over patched edges u->v of (source_u - current_u)

where ``stream_v`` is what the model feeds v (the residual stream), ``source_u`` the sender's output
on the corrupted prompt (recorded beforehand) or its mean, and ``current_u`` its output in this run.
A head's input is normalized by the layer's pre-attention norm and projected with that head's slice
of the query / key / value weights (the projection modules' outputs are replaced, so rotary
embeddings, GQA and the attention itself run as the model runs them); an MLP's input is written
after the pre-MLP norm (``mlp_in``), the logits' input after the final norm (``final_norm``). A
layer whose receivers have no patched edge is left alone, so the full circuit is the model itself.

Batched variants: ``masks`` ``[K, n_edges]`` give K edge sets; the batch holds K copies of the n
prompts (row ``k * n + i``), each set patching its own edges. The ops hold plain tensors.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import nnsight
import torch

from ..core.arch import resolve
from ..core.errors import Cancelled
from ..core.program import Step, TraceOp, TraceProgram
from .graph import ComputationGraph

__all__ = ["LayerWeights", "model_weights", "EdgeRun", "circuit_ops", "record_outputs", "run_masks",
           "gradient_run", "DEFAULT_BUDGET"]

#: Bytes the batched runs may spend on the per-sender difference buffer (rows are chunked to fit).
DEFAULT_BUDGET = 1 << 30


# -- weights ------------------------------------------------------------------------------------
class Norm:
    """A pre-norm's parameters: RMSNorm (``rms``) or LayerNorm, computed exactly as the module does."""

    def __init__(self, module: Any):
        self.weight = module.weight.detach()
        b = getattr(module, "bias", None)
        self.bias = None if b is None else b.detach()
        eps = getattr(module, "variance_epsilon", None)
        self.eps = float(eps if eps is not None else module.eps)
        self.rms = "rms" in type(module).__name__.lower()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            h = x.to(torch.float32)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * h.to(x.dtype)
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)

    def vjp(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``g [b, s, P, d]`` pulled back through the norm at ``x [b, s, d]``, for each ``P``."""
        h = x.float()
        d = h.shape[-1]
        gw = g.float() * self.weight.float()
        if self.rms:
            r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)  # [b, s, 1]
            dot = torch.einsum("bspd,bsd->bsp", gw, h)  # [b, s, P]
            out = gw.mul_(r.unsqueeze(2)).addcmul_((dot * (r.pow(3) / d)).unsqueeze(-1), h.unsqueeze(2), value=-1)
        else:
            mu = h.mean(-1, keepdim=True)
            r = torch.rsqrt(h.var(-1, unbiased=False, keepdim=True) + self.eps)
            xh = (h - mu) * r  # [b, s, d]
            m1 = gw.mean(-1, keepdim=True)  # [b, s, P, 1]
            m2 = torch.einsum("bspd,bsd->bsp", gw, xh).unsqueeze(-1) / d
            out = gw.sub_(m1).addcmul_(m2, xh.unsqueeze(2), value=-1).mul_(r.unsqueeze(2))
        return out.to(g.dtype)


class ReplicatedNorm(torch.autograd.Function):
    """``norm(x + delta_i[:, :, p])`` for every receiver ``p`` of every group ``i``, where each
    ``delta_i [b, s, P_i, d]`` is zero.

    The gradient with respect to ``delta_i`` is each receiver's own input gradient (what EAP
    needs), but the norm runs once on ``x`` and its backward applies the norm's Jacobian
    transpose to every receiver's gradient in closed form, instead of autograd through ``P``
    copies of the norm (on a CPU their fresh tensors cost more than the arithmetic)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, norm: Norm, *deltas: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(x)
        ctx.norm = norm
        y = norm(x).unsqueeze(2)
        return tuple(y.expand(dl.shape) for dl in deltas)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        gxs = [ctx.norm.vjp(x, g) for g in grads]
        return (sum(g.sum(2) for g in gxs), None, *gxs)


class LayerWeights:
    """One layer's norms and per-head projection weights: ``wq [H, dh, d]``, ``wk``/``wv [G, dh, d]``,
    biases ``[H|G, dh]`` or None, ``wo [H, dh, d]`` (head h's output is ``z_h @ wo[h]``)."""

    def __init__(self, family: str, layer: Any, arch: Any, n_kv: int):
        H, dh, d = arch.n_heads, arch.d_head, arch.d_model
        attn = resolve(layer, arch.attn)
        self.ln1 = Norm(resolve(layer, arch.ln1))
        self.ln2 = Norm(resolve(layer, arch.ln2))
        if family == "llama":
            self.wq, self.bq = _lin(attn.q_proj, H, dh)
            self.wk, self.bk = _lin(attn.k_proj, n_kv, dh)
            self.wv, self.bv = _lin(attn.v_proj, n_kv, dh)
        elif family == "gpt2":  # Conv1D [in, out]: x @ W + b, out = [q | k | v]
            w, b = attn.c_attn.weight.detach().T, attn.c_attn.bias.detach()
            parts = [w[i * d:(i + 1) * d].reshape(H, dh, d) for i in range(3)]
            bias = [b[i * d:(i + 1) * d].reshape(H, dh) for i in range(3)]
            (self.wq, self.wk, self.wv), (self.bq, self.bk, self.bv) = parts, bias
        else:  # gpt_neox: Linear, out viewed [H, 3 * dh] = per head [q | k | v]
            w = attn.query_key_value.weight.detach().reshape(H, 3, dh, d)
            b = attn.query_key_value.bias.detach().reshape(H, 3, dh)
            self.wq, self.wk, self.wv = w[:, 0], w[:, 1], w[:, 2]
            self.bq, self.bk, self.bv = b[:, 0], b[:, 1], b[:, 2]
        o = resolve(layer, arch.attn_o_proj)
        wo = o.weight.detach()
        wo = wo if type(o).__name__ != "Conv1D" else wo.T  # -> [d, H * dh]
        self.wo = wo.reshape(d, H, dh).permute(1, 2, 0).contiguous()  # [H, dh, d]


def _lin(mod: Any, n: int, dh: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = mod.weight.detach()
    b = None if mod.bias is None else mod.bias.detach().reshape(n, dh)
    return w.reshape(n, dh, w.shape[-1]), b


def _proj(y: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Per-head projection: ``y [b, s, n, d]`` with ``w [n, dh, d]`` -> ``[b, s, n, dh]``."""
    out = torch.einsum("bsnd,ned->bsne", y, w)
    return out if b is None else out + b


_WEIGHTS: dict[int, tuple[Any, list[LayerWeights], Norm]] = {}


def model_weights(model: Any, graph: ComputationGraph) -> tuple[list[LayerWeights], Norm]:
    """The per-layer weights and the final norm of ``model`` (cached per model object)."""
    hit = _WEIGHTS.get(id(model))
    if hit is not None and hit[0] is model.hf:
        return hit[1], hit[2]
    a = model.arch
    layers = resolve(model.hf, a.layers)
    fam = graph.config["family"]
    ws = [LayerWeights(fam, layers[L], a, graph.n_kv_heads) for L in range(a.n_layers)]
    final = Norm(resolve(model.hf, a.final_norm))
    _WEIGHTS[id(model)] = (model.hf, ws, final)
    return ws, final


# -- the shared state of one run's ops -------------------------------------------------------------
class EdgeRun:
    """State shared by the ops of one run.

    ``mode``: ``"patch"`` (``masks`` ``[K, n_senders, n_receivers]`` of patched edges, ``source``
    ``[n_senders, n_src, s, d]`` with ``n_src`` 1 or the prompts per set), ``"record"`` (keep every
    sender's output in ``rec``) or ``"grad"`` (receiver inputs kept in ``inputs`` for autograd;
    also records when ``record``). ``alpha`` (``[rows]``) with ``source`` interpolates the stream
    entering layer 0 from the source to this run's (EAP-IG). ``rows``: the batch rows acted on
    (None: all). ``prompt_only``: act at the prompt pass only (generation with a recorded source).
    """

    def __init__(self, graph: ComputationGraph, weights: list[LayerWeights], final: Norm, mode: str, *,
                 masks: torch.Tensor | None = None, source: torch.Tensor | None = None, n_sets: int = 1,
                 record: bool = False, alpha: torch.Tensor | None = None, rows: list[int] | None = None,
                 prompt_only: bool = False, family: str = "llama"):
        self.g, self.w, self.final, self.mode = graph, weights, final, mode
        self.family = family
        self.masks, self.source, self.K = masks, source, n_sets
        self.record, self.alpha, self.rows, self.prompt_only = record or mode == "record", alpha, rows, prompt_only
        S = graph.n_senders
        if masks is not None:
            need = masks.reshape(-1, S, graph.n_receivers).any(0).any(-1)  # senders with a patched edge
            self.need = need
            self.cidx = torch.cumsum(need.long(), 0) - 1
            self.n_need_prefix = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(need.long(), 0)])
            self.cmasks = masks[:, need]  # [K, S_need, R]
            self.recv_active = masks.any(0).any(0)  # [R]
        self.inputs: list[tuple[list[int], torch.Tensor]] = []  # grad mode: (receivers, input [b, s, P, d])
        self.streams: list[torch.Tensor] = []  # record mode: the stream entering each layer
        self.start, self.pre = 0, None  # patch mode: first layer run, the clean outputs of senders below it
        self.rec: torch.Tensor | None = None
        self.D: torch.Tensor | None = None

    # -- per-step set-up -------------------------------------------------------------------
    def active(self, step: Step) -> bool:
        return not (self.prompt_only and step.step > 0)

    def sel(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rows is None else x[self.rows]

    def begin(self, x: torch.Tensor) -> None:
        """At the stream entering layer 0 (``x``, the selected rows): allocate this step's buffers."""
        b, s, d = x.shape
        if self.record:
            self.rec = x.new_zeros(self.g.n_senders, b, s, d)
        if self.mode == "patch":  # [sets, senders with a patched edge, prompts, s, d]
            self.D = x.new_zeros(self.K, int(self.need.sum()), b // self.K, s, d)
            if self.start > 0:
                self.prefill()

    def prefill(self) -> None:
        """The senders below ``start`` (their layers skipped) carry the clean run's outputs ``pre``."""
        ids = torch.arange(1 + self.start * (self.g.n_heads + 1))
        ids = ids[self.need[ids]]
        if ids.numel():
            diff = self.source[ids].to(self.D.dtype) - self.pre[ids].to(self.D.dtype)  # [k', n, s, d]
            self.D[:, self.cidx[ids]] = diff.unsqueeze(0)

    def put(self, first: int, out: torch.Tensor) -> None:
        """Senders ``first .. first + k - 1`` produced ``out [b, s, k, d]``."""
        k = out.shape[2]
        if self.record:
            self.rec[first:first + k] = out.detach().permute(2, 0, 1, 3)
        if self.mode != "patch":
            return
        ids = torch.arange(first, first + k)
        need = self.need[ids]
        if not bool(need.any()):
            return
        cur = out.permute(2, 0, 1, 3)[need]  # [k', b, s, d]
        src = self.source[ids[need]].to(cur.dtype)  # [k', n_src, s|1, d]
        kk, b = cur.shape[0], cur.shape[1]
        diff = src.unsqueeze(1) - cur.reshape(kk, self.K, b // self.K, *cur.shape[2:])
        self.D[:, self.cidx[ids[need]]] = diff.transpose(0, 1)

    def delta(self, receivers: list[int], n_up: int) -> torch.Tensor | None:
        """``[b, s, P, d]``: the sum over the patched edges into each receiver of (source - current)."""
        if self.mode != "patch" or not bool(self.recv_active[receivers].any()):
            return None
        c, M = self._receiver_masks(receivers, n_up)
        if c == 0:
            return None
        M = M.to(self.D.dtype)
        K, _, n, s, d = self.D.shape
        D = self.D[:, :c].reshape(K, c, -1)  # a view: [K, c, n s d]
        out = torch.matmul(M.transpose(1, 2), D)  # [K, P, n s d]
        P = len(receivers)
        return out.reshape(K, P, n, s, d).permute(0, 2, 3, 1, 4).reshape(K * n, s, P, d)

    def _receiver_masks(self, receivers: list[int], n_up: int) -> tuple[int, torch.Tensor]:
        """How many needed senders lie upstream (``c``), and the sets' patched edges from them into
        ``receivers``: bool ``[K, c, P]``."""
        c = int(self.n_need_prefix[n_up])
        return c, self.cmasks[:, :c][:, :, receivers]

    def sparse_deltas(self, receivers: list[int], n_up: int) -> list[tuple[int, torch.Tensor, torch.Tensor]] | None:
        """Patch mode, when few sets patch each receiver: per receiver that some set patches,
        ``(position in receivers, the sets [k'], their delta [k', n, s, d])``; None to take the
        dense path (`delta`: every set and receiver), or when this run acts on chosen rows only."""
        if self.mode != "patch" or self.rows is not None:
            return None
        c, M = self._receiver_masks(receivers, n_up)
        if c == 0:
            return []
        act = M.any(1)  # [K, P]: which set patches which receiver
        if int(act.sum()) * _SPARSE_AT > act.numel():
            return None
        K, _, n, s, d = self.D.shape
        out = []
        for j in act.any(0).nonzero()[:, 0].tolist():
            sets = act[:, j].nonzero()[:, 0]
            D = self.D[sets, :c].reshape(len(sets), c, -1)  # [k', c, n s d]
            dl = torch.bmm(M[sets, :, j].to(D.dtype).unsqueeze(1), D)  # [k', 1, n s d]
            out.append((j, sets, dl.view(len(sets), n, s, d)))
        return out

    def normed_inputs(self, x: torch.Tensor, groups: list[list[int]], norm: Norm) -> tuple[torch.Tensor, ...]:
        """Grad mode: the normalized input ``[b, s, P, d]`` of each group of receivers, one norm
        for all (see `ReplicatedNorm`); the gradient is taken with respect to their inputs."""
        b, s, d = x.shape
        zero = x.new_zeros(()).requires_grad_()
        deltas = [zero.expand(b, s, len(g), d) for g in groups]  # no memory: the gradient's shape only
        self.inputs += list(zip(groups, deltas, strict=True))
        return ReplicatedNorm.apply(x, norm, *deltas)

    def receiver_inputs(self, x: torch.Tensor, receivers: list[int], n_up: int) -> torch.Tensor | None:
        """Each receiver's input ``[b, s, P, d]`` from the stream ``x`` (None: nothing to change)."""
        if self.mode == "grad":
            xin = x.unsqueeze(2).repeat(1, 1, len(receivers), 1)
            self.inputs.append((receivers, xin))
            return xin
        dl = self.delta(receivers, n_up)
        return None if dl is None else x.unsqueeze(2) + dl


def _write(x: torch.Tensor, rows: list[int] | None, value: torch.Tensor) -> None:
    if rows is None:
        x[:] = value
    else:
        x[rows] = value


def _replace(out: torch.Tensor, rows: list[int] | None, value: torch.Tensor) -> torch.Tensor:
    if rows is None:
        return value
    new = out.clone()
    new[rows] = value
    return new


class _Op(TraceOp):
    def __init__(self, run: EdgeRun, site: str, layer: int = -1):
        self.run, self.site, self.layer = run, site, layer


class StreamOp(_Op):
    """``resid_pre.L``: keep the layer's input; at layer 0 start the step (and record ``embed``)."""

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        r = self.run
        if not r.active(step):
            return
        if r.record:
            r.streams.append(r.sel(x))
        if self.layer == r.start and r.start > 0:
            r.begin(r.sel(x))
        if self.layer == 0:
            if r.alpha is not None:  # EAP-IG: the input embedding on the path from the source to this run
                src = r.source[0].to(x.dtype)  # [n, s, d]
                a = r.alpha.to(x.dtype)[:, None, None]
                xs = r.sel(x)
                val = src.repeat(xs.shape[0] // src.shape[0], 1, 1)
                _write(x, r.rows, val + a * (xs - val))
            xs = r.sel(x)
            r.begin(xs)
            r.put(0, xs.unsqueeze(2))
        r.stream = r.sel(x)


class AttnInOp(_Op):
    """``ln1_normalized.L``: per-receiver inputs, normalized and projected into the q/k/v projections."""

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        r = self.run
        if not r.active(step):
            return
        L = self.layer
        p = r.g.ports(L)
        recv = sorted(set(p["q"]) | set(p["k"]) | set(p["v"]))
        w = r.w[L]
        if r.mode == "grad":  # one normalized input per distinct receiver list (q, k, v may share one)
            groups = [list(g) for g in dict.fromkeys(tuple(p[c]) for c in ("q", "k", "v"))]
            ys = dict(zip(map(tuple, groups), r.normed_inputs(r.stream, groups, w.ln1), strict=True))
            yq, yk, yv = ys[tuple(p["q"])], ys[tuple(p["k"])], ys[tuple(p["v"])]
        else:
            sparse = r.sparse_deltas(recv, p["n_up_attn"])
            if sparse is not None:
                if sparse:
                    _patch_heads(program, r, L, p, recv, sparse)
                return
            xin = r.receiver_inputs(r.stream, recv, p["n_up_attn"])
            if xin is None:
                return
            y = w.ln1(xin)
            loc = {rv: i for i, rv in enumerate(recv)}
            yq, yk, yv = (y[:, :, [loc[i] for i in p[c]]] for c in ("q", "k", "v"))
        q = _proj(yq, w.wq, w.bq)
        k = _proj(yk, w.wk, w.bk)
        v = _proj(yv, w.wv, w.bv)
        attn = program.module(program.nn, "attn", L)
        rows = r.rows
        if r.family == "llama":
            for mod, val in ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v)):
                mod.output = _replace(mod.output, rows, val.flatten(-2).to(mod.output.dtype))
        elif r.family == "gpt2":
            val = torch.cat([q.flatten(-2), k.flatten(-2), v.flatten(-2)], -1)
            attn.c_attn.output = _replace(attn.c_attn.output, rows, val.to(attn.c_attn.output.dtype))
        else:
            val = torch.cat([q, k, v], -1).flatten(-2)
            mod = attn.query_key_value
            mod.output = _replace(mod.output, rows, val.to(mod.output.dtype))


def _patch_heads(program: TraceProgram, r: EdgeRun, L: int, p: dict[str, Any], recv: list[int],
                 sparse: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
    """The sparse path of `AttnInOp`: only the sets that patch a receiver recompute its q/k/v
    (norm and projection of their own input); every other head keeps the model's own values."""
    w, fam = r.w[L], r.family
    attn = program.module(program.nn, "attn", L)
    K = r.K
    xs = r.stream.reshape(K, -1, *r.stream.shape[1:])  # [K, n, s, d]
    writes: dict[str, list[tuple[torch.Tensor, int, torch.Tensor]]] = {}
    for j, sets, dl in sparse:
        y = w.ln1(xs[sets] + dl)  # [k', n, s, d]
        rv = recv[j]
        for kind, W, B in (("q", w.wq, w.bq), ("k", w.wk, w.bk), ("v", w.wv, w.bv)):
            if rv not in p[kind]:
                continue
            h = p[kind].index(rv)
            val = y @ W[h].to(y.dtype).T  # [k', n, s, dh]
            if B is not None:
                val = val + B[h].to(y.dtype)
            name, start = _head_columns(fam, kind, h, W.shape[1], w.wq.shape[0])
            writes.setdefault(name, []).append((sets, start, val))
    for name in ("q_proj", "k_proj", "v_proj", "c_attn", "query_key_value"):  # the order the model runs them
        if name not in writes:
            continue
        mod = getattr(attn, name)
        o = mod.output.clone()
        ov = o.view(K, -1, *o.shape[1:])
        for sets, start, val in writes[name]:
            ov[sets, :, :, start:start + val.shape[-1]] = val.to(o.dtype)
        mod.output = o


def _head_columns(family: str, kind: str, head: int, dh: int, n_heads: int) -> tuple[str, int]:
    """The module whose output holds ``kind`` (q/k/v) of ``head``, and that head's first column."""
    if family == "llama":
        return f"{kind}_proj", head * dh
    part = "qkv".index(kind)
    if family == "gpt2":  # c_attn: [q | k | v], each n_heads * dh
        return "c_attn", part * n_heads * dh + head * dh
    return "query_key_value", head * 3 * dh + part * dh  # gpt_neox: per head [q | k | v]


def _patch_rows(r: EdgeRun, x: torch.Tensor, src: torch.Tensor, norm: Norm, receiver: int, n_up: int) -> bool:
    """The sparse path of a single-receiver op (MLP, logits): the sets that patch ``receiver`` write
    ``norm(src + delta)`` into their rows of ``x``; False to take the dense path."""
    sparse = r.sparse_deltas([receiver], n_up)
    if sparse is None:
        return False
    xv = x.view(r.K, -1, *x.shape[1:])
    for _, sets, dl in sparse:
        xv[sets] = norm(src.reshape(r.K, -1, *src.shape[1:])[sets] + dl).to(x.dtype)
    return True


#: The sparse path runs when at most one in this many (set, receiver) pairs is patched.
_SPARSE_AT = 2


class HeadsOutOp(_Op):
    """``z.L``: each head's output ``z_h @ W_O[h]``."""

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        r = self.run
        if not r.active(step):
            return
        L = self.layer
        first = 1 + L * (r.g.n_heads + 1)
        if not r.record and (r.mode != "patch" or not bool(r.need[first:first + r.g.n_heads].any())):
            return
        r.put(first, torch.einsum("bshe,hed->bshd", r.sel(x), r.w[L].wo.to(x.dtype)))


class MidOp(_Op):
    """``resid_mid.L``: keep the stream the MLP reads (GPT-NeoX's parallel blocks: ``resid_pre``)."""

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        if self.run.active(step):
            self.run.mid = self.run.sel(x)


class MlpInOp(_Op):
    """``mlp_in.L``: the MLP's own input, after the pre-MLP norm."""

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        r = self.run
        if not r.active(step):
            return
        p = r.g.ports(self.layer)
        if _patch_rows(r, x, r.mid, r.w[self.layer].ln2, p["mlp"], p["n_up_mlp"]):
            return
        xin = r.receiver_inputs(r.mid, [p["mlp"]], p["n_up_mlp"])
        if xin is not None:
            _write(x, r.rows, r.w[self.layer].ln2(xin[:, :, 0]).to(x.dtype))


class MlpOutOp(_Op):
    """``mlp_out.L``: the MLP's output."""

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        r = self.run
        if r.active(step):
            r.put(1 + self.layer * (r.g.n_heads + 1) + r.g.n_heads, r.sel(x).unsqueeze(2))


class FinalStreamOp(_Op):
    """``resid_post`` of the last layer: the final norm's input."""

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        if self.run.active(step):
            self.run.last = self.run.sel(x)


class LogitsInOp(_Op):
    """``final_norm``: the logits' input, after the final norm."""

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        r = self.run
        if not r.active(step):
            return
        if _patch_rows(r, x, r.last, r.final, r.g.logits_receiver, r.g.n_senders):
            return
        xin = r.receiver_inputs(r.last, [r.g.logits_receiver], r.g.n_senders)
        if xin is not None:
            _write(x, r.rows, r.final(xin[:, :, 0]).to(x.dtype))


def edge_ops(run: EdgeRun) -> list[TraceOp]:
    """The ops of one run, at every layer (a layer with nothing to do costs a few reads)."""
    g = run.g
    nL = g.n_layers
    ops: list[TraceOp] = []
    for L in range(nL):
        ops += [StreamOp(run, f"resid_pre.{L}", L), AttnInOp(run, f"ln1_normalized.{L}", L),
                HeadsOutOp(run, f"z.{L}", L), MidOp(run, f"resid_mid.{L}", L), MlpInOp(run, f"mlp_in.{L}", L),
                MlpOutOp(run, f"mlp_out.{L}", L)]
    ops += [FinalStreamOp(run, f"resid_post.{nL - 1}", nL - 1), LogitsInOp(run, "final_norm")]
    if run.mode == "patch":  # drop the ops of layers with nothing to patch
        act = run.recv_active
        keep = []
        for op in ops:
            if isinstance(op, AttnInOp):
                p = g.ports(op.layer)
                if not bool(act[sorted(set(p["q"]) | set(p["k"]) | set(p["v"]))].any()):
                    continue
            if isinstance(op, MlpInOp) and not bool(act[g.ports(op.layer)["mlp"]]):
                continue
            if isinstance(op, LogitsInOp) and not bool(act[g.logits_receiver]):
                continue
            if 0 <= op.layer < run.start:  # below the first layer run (skipped)
                continue
            keep.append(op)
        ops = keep
    return ops


# -- runs ---------------------------------------------------------------------------------------
def _batch(model: Any, ids: torch.Tensor) -> Any:
    from ..core.program import Batch

    n, s = ids.shape
    return Batch(ids, torch.ones_like(ids), [[] for _ in range(n)], n)


def _trace_kwargs(model: Any) -> dict[str, Any]:
    import inspect

    kw: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.hf.forward).parameters:
        kw["logits_to_keep"] = 1  # every row has the same length: unembed the last position only
    return kw


def _skip_layers(program: TraceProgram, nn: Any, outputs: Sequence[torch.Tensor]) -> None:
    """Skip layers ``0 .. len(outputs) - 1``: layer j returns ``outputs[j]`` without running."""
    for j, out in enumerate(outputs):
        program.layer(nn, j).skip(out)


def _forward(model: Any, ids: torch.Tensor, run: EdgeRun, grad: bool = False,
             skip: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, EdgeRun]:
    """One trace of token rows ``ids`` with ``run``'s ops; returns last-position logits ``[rows, vocab]``.

    ``skip``: outputs of the first layers, which then do not run (their ops must not be there)."""
    batch = _batch(model, ids)
    program = TraceProgram(model, [], {}, batch)
    for op in edge_ops(run):
        program.ops.setdefault(op.site, []).append(op)
    from ..core.sites import Site

    program.sites = sorted({Site.parse(k) for k in program.ops}, key=lambda s: s.order)
    nn = model.nn
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with model.lock, ctx:
        with model.trace_batch(batch, remote=False, **_trace_kwargs(model)):
            _skip_layers(program, nn, skip)
            program.visit(nn, Step(0, batch.lengths))
            logits = nnsight.save(program.logits(nn)[:, -1])
            saved = nnsight.save([run.rec, [x for _, x in run.inputs], getattr(run, "last", None), run.streams])
    run.rec, run.last, run.streams = saved[0], saved[2], saved[3]
    run.inputs = [(rv, x) for (rv, _), x in zip(run.inputs, saved[1], strict=True)]
    return logits, run


def record_outputs(model: Any, graph: ComputationGraph, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sender's output on token rows ``ids [n, s]``: ``[n_senders, n, s, d]``, and the last logits."""
    ws, final = model_weights(model, graph)
    run = EdgeRun(graph, ws, final, "record", family=graph.config["family"])
    logits, run = _forward(model, ids.to(model.device), run)
    return run.rec, logits.detach()


def _sender_masks(graph: ComputationGraph, masks: torch.Tensor) -> torch.Tensor:
    """``[K, n_edges]`` bool -> ``[K, n_senders, n_receivers]`` bool."""
    out = torch.zeros(masks.shape[0], graph.n_senders, graph.n_receivers, dtype=torch.bool)
    out[:, graph.edge_sender, graph.edge_receiver] = masks
    return out


def _logit_only(graph: ComputationGraph, masks: torch.Tensor) -> torch.Tensor:
    """``[K]`` bool: the sets whose patched edges all enter the logits (or that patch nothing)."""
    other = graph.edge_receiver != graph.logits_receiver
    return ~masks[:, other].any(1)


def _direct_ok(model: Any) -> bool:
    """Whether the logits are ``unembed(final_norm(stream))`` with nothing after (no softcapping)."""
    cfg = getattr(model.hf, "config", None)
    return getattr(cfg, "final_logit_softcapping", None) is None and model.hf.get_output_embeddings() is not None


def _clean_run(model: Any, graph: ComputationGraph, ids: torch.Tensor) -> EdgeRun:
    """The clean run recorded: every sender's output ``rec``, the stream entering each layer
    ``streams`` and the final norm's input ``last``."""
    ws, final = model_weights(model, graph)
    run = EdgeRun(graph, ws, final, "record", family=graph.config["family"])
    return _forward(model, ids, run)[1]


def _first_layers(graph: ComputationGraph, masks: torch.Tensor) -> torch.Tensor:
    """``[K]``: the earliest layer with a patched receiver in each set (``n_layers`` if none)."""
    lay = graph.receiver_layers[graph.edge_receiver]  # [n_edges]
    big = torch.full_like(lay, graph.n_layers)
    return torch.where(masks, lay, big).min(1).values


def _direct_logits(model: Any, graph: ComputationGraph, masks: torch.Tensor, source: torch.Tensor,
                   clean: tuple[torch.Tensor, torch.Tensor], chunk: int = 32) -> list[torch.Tensor]:
    """Last-position logits ``[n, vocab]`` per set for sets that patch only edges into the logits.

    Nothing upstream of the logits changes, so their input is the clean final stream plus the
    sum over the set's edges of (source - clean sender output): no forward is needed.
    """
    rec, last = clean[0][:, :, -1], clean[1][:, -1]  # [S, n, d], [n, d]
    _, final = model_weights(model, graph)
    head = model.hf.get_output_embeddings()
    diff = source[:, :, -1].to(rec.dtype) - rec  # [S, n, d]
    sm = _sender_masks(graph, masks)[:, :, graph.logits_receiver].to(rec.device, rec.dtype)  # [K, S]
    out: list[torch.Tensor] = []
    with model.lock, torch.inference_mode():
        for start in range(0, sm.shape[0], chunk):
            x = last + torch.einsum("ks,snd->knd", sm[start:start + chunk], diff)
            out.extend(head(final(x).to(head.weight.dtype)).float().cpu())
    return out


def _chunk_size(graph: ComputationGraph, masks: torch.Tensor, n: int, s: int, d: int, budget: int) -> int:
    """Sets per traced batch so that the difference buffer fits ``budget`` bytes."""
    need = masks.any(0)
    n_send = int(torch.unique(graph.edge_sender[need]).numel()) if bool(need.any()) else 0
    per_set = max(1, n_send) * n * s * d * 4 + n * s * d * 4 * 12
    return max(1, min(masks.shape[0], budget // per_set))


def _plan(first: list[int], n_layers: int, chunk: int) -> list[tuple[int, int]]:
    """Batches ``(start, stop)`` over sets sorted by ``first`` (descending) that minimize the layers run.

    A batch runs its sets from its smallest first layer on: its cost is ``k * (n_layers - L)`` set-layers
    plus one set's full forward (the per-forward overhead). Batches hold at most ``chunk`` sets and
    split only between groups of equal ``first`` (a group larger than ``chunk`` is split evenly).
    """
    if not first:
        return []
    bounds = [0] + [i for i in range(1, len(first)) if first[i] != first[i - 1]] + [len(first)]
    G = len(bounds) - 1
    best = [0.0] + [float("inf")] * G
    back = [0] * (G + 1)
    for j in range(1, G + 1):  # groups [i, j) in one run of batches
        for i in range(j - 1, -1, -1):
            k = bounds[j] - bounds[i]
            c = best[i] + -(-k // chunk) * n_layers + k * (n_layers - first[bounds[j] - 1])
            if c < best[j]:
                best[j], back[j] = c, i
    out: list[tuple[int, int]] = []
    j = G
    while j > 0:
        a, b = bounds[back[j]], bounds[j]
        nb = -(-(b - a) // chunk)
        step = -(-(b - a) // nb)
        out[:0] = [(x, min(b, x + step)) for x in range(a, b, step)]
        j = back[j]
    return out


def run_masks(model: Any, graph: ComputationGraph, clean_ids: torch.Tensor, source: torch.Tensor,
              masks: torch.Tensor, *, budget: int = DEFAULT_BUDGET, progress: bool = False,
              cancel: threading.Event | None = None, desc: str = "patching edges") -> torch.Tensor:
    """Last-position logits ``[K, n, vocab]`` of the clean rows with each mask's edges patched.

    ``source`` ``[n_senders, n, s, d]`` (recorded) or ``[n_senders, 1, 1, d]`` (means). Sets that
    patch only edges into the logits are computed from one clean run without a forward of their
    own (`_direct_logits`); the others run as rows of batches whose difference buffer fits
    ``budget`` bytes.
    """
    from tqdm.auto import tqdm

    K = masks.shape[0]
    n, s = clean_ids.shape
    dev = model.device
    src = source.to(dev)
    ids = clean_ids.to(dev)
    out: list[torch.Tensor | None] = [None] * K
    direct = _logit_only(graph, masks) if _direct_ok(model) else torch.zeros(K, dtype=torch.bool)
    d_idx, t_idx = direct.nonzero()[:, 0].tolist(), (~direct).nonzero()[:, 0].tolist()
    first = _first_layers(graph, masks)
    clean = _clean_run(model, graph, ids) if d_idx or bool((first[t_idx] > 0).any()) else None
    with tqdm(total=K, desc=desc, disable=not progress, leave=False) as bar:
        if d_idx:
            for i, lg in zip(d_idx, _direct_logits(model, graph, masks[d_idx], src, (clean.rec, clean.last)),
                             strict=True):
                out[i] = lg
            bar.update(len(d_idx))
        t_idx.sort(key=lambda i: -int(first[i]))  # chunks of sets that start late skip their first layers
        _traced(model, graph, ids, src, masks, t_idx, out, budget, bar, cancel, desc, first, clean)
    return torch.stack(out)


def _traced(model: Any, graph: ComputationGraph, ids: torch.Tensor, src: torch.Tensor, masks: torch.Tensor,
            idx: list[int], out: list[torch.Tensor | None], budget: int, bar: Any,
            cancel: threading.Event | None, desc: str, first: torch.Tensor, clean: EdgeRun | None) -> None:
    """Sets ``idx`` of ``masks`` as rows of traced batches; each set's logits ``[n, vocab]`` go to ``out``.

    A batch whose sets patch nothing below layer ``L`` (``first``) skips layers ``< L``: they
    return the ``clean`` run's stream, and their senders carry its outputs."""
    if not idx:
        return
    n, s = ids.shape
    ws, final = model_weights(model, graph)
    chunk = _chunk_size(graph, masks[idx], n, s, model.d_model, budget)
    plan = _plan([int(first[i]) for i in idx], graph.n_layers, chunk) if clean is not None else \
        [(a, min(len(idx), a + chunk)) for a in range(0, len(idx), chunk)]
    for start, stop in plan:
        if cancel is not None and cancel.is_set():
            done = [o for o in out if o is not None]
            raise Cancelled(f"{desc}: cancelled after {len(done)} of {len(out)} edge sets",
                            partial=torch.stack(done) if done else None)
        part = idx[start:stop]
        k = len(part)
        run = EdgeRun(graph, ws, final, "patch", masks=_sender_masks(graph, masks[part]).to(model.device), source=src,
                      n_sets=k, family=graph.config["family"])
        skip: list[torch.Tensor] = []
        L = int(first[part].min())
        if clean is not None and 0 < L < graph.n_layers:
            run.start, run.pre = L, clean.rec
            skip = [clean.streams[j + 1].repeat(k, 1, 1) for j in range(L)]
        logits, _ = _forward(model, ids.repeat(k, 1), run, skip=skip)
        for i, lg in zip(part, logits.detach().float().reshape(k, n, -1).cpu(), strict=True):
            out[i] = lg
        bar.update(k)


def gradient_run(model: Any, graph: ComputationGraph, ids: torch.Tensor, metric: Any, *, record: bool = False,
                 alpha: torch.Tensor | None = None, source: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, list[tuple[list[int], torch.Tensor]], torch.Tensor | None]:
    """Forward and backward of ``metric(last_logits).sum()``: (metric values, per layer-group
    (receivers, gradient ``[rows, s, P, d]``), recorded sender outputs when ``record``)."""
    ws, final = model_weights(model, graph)
    run = EdgeRun(graph, ws, final, "grad", record=record, alpha=alpha, source=source,
                  family=graph.config["family"])
    logits, run = _forward(model, ids.to(model.device), run, grad=True)
    with torch.enable_grad():
        m = metric(logits.float())
        grads = torch.autograd.grad(m.sum(), [x for _, x in run.inputs])
    return m.detach(), [(rv, gr.detach()) for (rv, _), gr in zip(run.inputs, grads, strict=True)], run.rec


# -- the circuit spec's ops ----------------------------------------------------------------------------
class _CheckOp(_Op):
    """Refuses, before the trace, a batch the recorded source does not fit."""

    def __init__(self, run: EdgeRun, site: str, what: str, length: int | None):
        super().__init__(run, site)
        self.what, self.length = what, length

    def check(self, program: TraceProgram) -> None:
        b = program.batch
        rows = self.run.rows if self.run.rows is not None else list(range(b.n_main))
        program.check_rows(self.what, rows)
        if self.length is None:
            return
        lens = [b.lengths[r] for r in rows]
        if any(L != self.length for L in lens) or b.input_ids.shape[1] != self.length:
            raise ValueError(f"{self.what}: the corrupted prompt has {self.length} tokens but the prompt has "
                             f"{lens[0] if len(set(lens)) == 1 else lens}: a circuit patches position by position, "
                             "so give prompts of the corrupted prompt's token length (or use mean=...)")

    def apply(self, program: TraceProgram, x: torch.Tensor, step: Step) -> None:
        pass


_SOURCES: dict[tuple, torch.Tensor] = {}


def _source_values(model: Any, graph: ComputationGraph, corrupted: str | None,
                   mean: Sequence[str] | None) -> torch.Tensor:
    key = (id(model.hf), graph.split_qkv, corrupted, tuple(mean) if mean is not None else None)
    hit = _SOURCES.get(key)
    if hit is not None:
        return hit
    if corrupted is not None:
        ids = model.tokenize(corrupted).input_ids
        rec, _ = record_outputs(model, graph, ids)
        val = rec  # [S, 1, s, d]
    else:
        sums, count = None, 0
        for p in mean:
            ids = model.tokenize(p).input_ids
            rec, _ = record_outputs(model, graph, ids)
            t = rec.sum(dim=(1, 2))
            sums = t if sums is None else sums + t
            count += ids.shape[1]
        val = (sums / count)[:, None, None, :]
    if len(_SOURCES) > 16:
        _SOURCES.clear()
    _SOURCES[key] = val
    return val


def circuit_ops(model: Any, circuit: Any, *, corrupted: str | None, mean: Sequence[str] | None,
                rows: list[int] | None = None) -> list[TraceOp]:
    """The ops of `CircuitSpec`: every edge outside ``circuit`` patched to the corrupted value or the mean."""
    graph = ComputationGraph.from_model(model, split_qkv=circuit.graph.split_qkv)
    keep = circuit.mask(graph)
    masks = _sender_masks(graph, (~keep)[None]).to(model.device)
    if not bool(masks.any()):
        return []
    src = _source_values(model, graph, corrupted, mean).to(model.device)
    ws, final = model_weights(model, graph)
    run = EdgeRun(graph, ws, final, "patch", masks=masks, source=src, rows=rows, prompt_only=corrupted is not None,
                  family=graph.config["family"])
    what = f"circuit of {int(keep.sum())} edges"
    length = None if corrupted is None else int(src.shape[2])
    return [_CheckOp(run, "resid_pre.0", what, length)] + edge_ops(run)
