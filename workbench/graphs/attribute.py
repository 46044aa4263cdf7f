"""`attribute`: the attribution graph of one prompt over a transcoder set.

One real forward (inference mode) finds the active features and the output logits. One frozen
forward of ``batch_size`` copies of the prompt (`replacement_forward`) then serves every
backward: each backward pass carries one target row per copy (a logit's demeaned unembedding
vector at the final norm's output, or a feature's encoder vector at its MLP input), so a graph
with R target rows costs one forward and ``ceil(R / batch_size)`` backward passes, as in
circuit-tracer. A source's edge is its activation times the gradient reaching what it wrote:
``a_f * W_dec[f] . g`` for a feature (summed over the layers a cross-layer latent writes),
``error . g`` for an error node and ``embedding . g`` for a token.

With more active features than ``max_feature_nodes``, the rows are computed in order of
influence: after the logit rows, each batch takes the not-yet-visited features of highest
influence in the graph so far; the features never visited are left out of the graph.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from ..core.errors import Cancelled
from .errors import GraphError
from .graph import AttributionGraph
from .replacement import check_supported, replacement_forward

__all__ = ["attribute", "estimate_memory", "DEFAULT_MAX_TOKENS"]

DEFAULT_MAX_TOKENS = 128


def estimate_memory(model: Any, n_tokens: int, batch_size: int, n_features: int) -> int:
    """Bytes an attribution needs, roughly: the frozen forward's saved activations for ``batch_size``
    copies, one batch of gradients at every layer, and the dense adjacency."""
    a = model.arch
    per_tok_layer = 16 * a.d_model + 4 * a.d_mlp + 2 * a.n_heads * n_tokens  # floats kept for the backward
    fwd = batch_size * n_tokens * a.n_layers * per_tok_layer * 4
    grads = batch_size * n_tokens * (a.n_layers + 1) * a.d_model * 4 * 2
    n = n_features + (a.n_layers + 1) * n_tokens + 10
    return int(fwd + grads + n * n * 4)


def _fmt_gb(b: int) -> str:
    return f"{b / 2**30:.2f} GB"


def _logit_targets(model: Any, logits: torch.Tensor, targets: Any, max_n_logits: int,
                   desired_logit_prob: float) -> list[int]:
    probs = torch.softmax(logits.float(), -1)
    if targets is None:
        p, idx = torch.sort(probs, descending=True)
        cum = torch.cumsum(p, 0)
        k = int(torch.searchsorted(cum, torch.tensor(float(desired_logit_prob)))) + 1
        return idx[:max(1, min(k, int(max_n_logits)))].tolist()
    if isinstance(targets, (str, int)):
        targets = [targets]
    out = []
    for t in targets:
        if isinstance(t, int) and not isinstance(t, bool):
            if not 0 <= t < logits.numel():
                raise GraphError(f"target token id {t} is outside the vocabulary (0..{logits.numel() - 1})")
            out.append(int(t))
            continue
        if not isinstance(t, str) or not t:
            raise GraphError(f"a target is a token's text or id, not {t!r}")
        ids = model.tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [model.tokenizer.decode([i]) for i in ids]
            raise GraphError(f"target {t!r} is {len(ids)} tokens ({pieces}); a logit node is one token: name its first "
                             f"token ({pieces[0]!r} if that is what you mean) or give a token id")
        out.append(int(ids[0]))
    if not out:
        raise GraphError("targets is empty: name at least one token, or pass targets=None for the top logits")
    return out


def _active(tset: Any, mlp_in: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
    """Active features ``[F, 3]`` (layer, pos, feature), their activations ``[F]``, and every layer's acts."""
    feats, vals, acts_by = [], [], {}
    for L in tset.layers:
        acts = tset.encode(L, mlp_in[L]).detach().float()  # [s, d_sae]
        if not bool(torch.isfinite(acts).all()):
            raise GraphError(f"the layer-{L} transcoder gives NaN or infinite activations on this prompt")
        acts_by[L] = acts
        p, f = acts.nonzero(as_tuple=True)
        feats.append(torch.stack([torch.full_like(p, L), p, f], 1))
        vals.append(acts[p, f])
    if not feats:
        return torch.zeros(0, 3, dtype=torch.long), torch.zeros(0), acts_by
    return torch.cat(feats), torch.cat(vals), acts_by


def attribute(model: Any, prompt: str, transcoders: Any, *, targets: Any = None, max_n_logits: int = 10,
              desired_logit_prob: float = 0.95, batch_size: int = 64, max_feature_nodes: int = 7500,
              max_tokens: int = DEFAULT_MAX_TOKENS, progress: bool = True,
              cancel: threading.Event | None = None) -> AttributionGraph:
    """The attribution graph of ``prompt`` on ``model`` with ``transcoders`` (a `TranscoderSet`).

    ``targets``: token texts or ids for the logit nodes (one token each); by default the top
    logits, up to ``max_n_logits``, covering ``desired_logit_prob`` of the probability.
    ``batch_size``: target rows per backward pass (and copies in the frozen forward).
    ``max_tokens``: prompts longer than this are refused with the memory they would need.
    Layers without a transcoder keep their real MLP, which enters as error nodes.
    """
    check_supported(model)
    transcoders.check(model)
    transcoders.check_linear()
    if not isinstance(prompt, str) or not prompt.strip():
        raise GraphError(f"the prompt must be non-empty text, not {prompt!r}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise GraphError(f"batch_size must be at least 1, not {batch_size}")
    batch = model.tokenize(prompt)
    ids = batch.input_ids[:1]
    s = ids.shape[1]
    toks = [t.text for t in batch.tokens[0]]
    if s > int(max_tokens):
        need = estimate_memory(model, s, batch_size, s * len(transcoders.layers) * 64)
        raise GraphError(f"the prompt has {s} tokens, over max_tokens={max_tokens}: an attribution graph of it would "
                         f"need about {_fmt_gb(need)} (batch_size={batch_size}, ~64 active features per layer and "
                         "position); shorten the prompt, or raise max_tokens (and lower batch_size) if that fits")
    model.check_length(s)
    layers = list(transcoders.layers)
    res = model.run(prompt, capture=[f"mlp_in.{L}" for L in layers], top_k=1, logits="last")
    mlp_in_real = {L: res[f"mlp_in.{L}"][0].float() for L in layers}
    logits = res.logits[0].float()
    if not bool(torch.isfinite(logits).all()):
        raise GraphError("the model's logits on this prompt hold NaN or inf")
    logit_ids = _logit_targets(model, logits, targets, max_n_logits, desired_logit_prob)
    probs_all = torch.softmax(logits, -1)
    feats, acts, acts_by = _active(transcoders, mlp_in_real)
    n_active = feats.shape[0]

    n_layers, d = model.arch.n_layers, model.arch.d_model
    K = len(logit_ids)
    rows = max(1, min(batch_size, K + n_active))
    skips = {L: w for L in layers if (w := _effective_skip(transcoders, L)) is not None}
    run = replacement_forward(model, ids.to(model.device), rows, layers, skips)

    # what each leaf is made of (real values, copy 0): features, decoder bias and the error
    recon = transcoders.reconstruct({L: acts_by[L] for L in layers}, mlp_in_real if skips else None)
    err = []
    for L in range(n_layers):
        v = run.mlp_out_values[L].float()
        if L in recon:
            v = v - recon[L].float()  # the skip connection's part is in both
        err.append(v)
    emb = run.embed_values.float()

    # logit target vectors
    W_U = model.hf.get_output_embeddings().weight.detach().float()
    b_U = getattr(model.hf.get_output_embeddings(), "bias", None)
    u = W_U[logit_ids] - W_U.mean(0, keepdim=True)
    ub = (b_U.detach().float()[logit_ids] - b_U.detach().float().mean()) if b_U is not None else torch.zeros(K)

    # node order: selected features, errors, tokens, logits; selection may be partial
    selected = _select_all(n_active) if n_active <= max_feature_nodes else None
    plan = _Plan(model, transcoders, run, feats, acts, err, emb, u, ub, logit_ids, rows, n_layers, s, d, layers)
    if selected is not None:
        adj_rows = plan.rows_for([("logit", j) for j in range(K)] + [("feat", i) for i in selected], selected,
                                 progress, cancel)
    else:
        selected, adj_rows = plan.by_influence(max_feature_nodes, probs_all[logit_ids], progress, cancel)
    F = len(selected)
    n = F + n_layers * s + s + K
    adj = torch.zeros(n, n)
    bias = torch.zeros(n)
    values = torch.zeros(n)
    pos_of = {f: i for i, f in enumerate(selected)}
    for (kind, j), (row, b) in adj_rows.items():
        r = pos_of[j] if kind == "feat" else F + n_layers * s + s + j
        adj[r] = row
        bias[r] = b
    for i, f in enumerate(selected):
        L, p, fi = feats[f].tolist()
        vec = transcoders.encoder_vector(L, [fi])[0].float()
        values[i] = float(mlp_in_real[L][p] @ vec + transcoders.encoder_bias(L, [fi])[0])
    lg = logits
    for j, t in enumerate(logit_ids):
        values[F + n_layers * s + s + j] = float(lg[t] - lg.mean())
    tok_text = [model.tokenizer.decode([t]) for t in logit_ids]
    g = AttributionGraph(
        prompt=prompt, tokens=toks, token_ids=ids[0].tolist(), n_layers=n_layers,
        features=feats[selected] if F else torch.zeros(0, 3, dtype=torch.long),
        activations=acts[selected] if F else torch.zeros(0), logit_ids=logit_ids,
        logit_probs=probs_all[logit_ids], logit_tokens=tok_text, adjacency=adj, values=values, bias=bias,
        model_name=model.name, scan=getattr(transcoders, "name", "") or model.name, covered_layers=layers,
        settings={"max_n_logits": int(max_n_logits), "desired_logit_prob": float(desired_logit_prob),
                  "batch_size": batch_size, "max_feature_nodes": int(max_feature_nodes),
                  "n_active_features": int(n_active), "targets": None if targets is None else list(logit_ids),
                  "backward_passes": plan.passes, "kind": getattr(transcoders, "kind", "plt")},
        model=model, transcoders=transcoders)
    labels = getattr(transcoders, "labels", None)
    if callable(labels):
        g.labels.update(labels(g))
    return g


def _effective_skip(tset: Any, layer: int) -> torch.Tensor | None:
    """The skip connection as a matrix on the raw MLP input (a centred input folds into it)."""
    w = tset.skip(layer)
    if w is None:
        return None
    w = w.float()
    d = tset.dictionary(layer) if hasattr(tset, "dictionary") else None
    if d is not None and getattr(d, "center_input", False):
        w = w - w.mean(0, keepdim=True)  # (x - mean x) @ W = x @ (W - mean over rows)
    return w


def _select_all(n: int) -> list[int]:
    return list(range(n))


class _Plan:
    """The batched backward passes over one frozen forward."""

    def __init__(self, model: Any, tset: Any, run: Any, feats: torch.Tensor, acts: torch.Tensor,
                 err: list[torch.Tensor], emb: torch.Tensor, u: torch.Tensor, ub: torch.Tensor,
                 logit_ids: list[int], rows: int, n_layers: int, s: int, d: int, layers: list[int]) -> None:
        self.model, self.tset, self.run = model, tset, run
        self.feats, self.acts, self.err, self.emb, self.u, self.ub = feats, acts, err, emb, u, ub
        self.K, self.rows, self.n_layers, self.s, self.d, self.layers = len(logit_ids), rows, n_layers, s, d, layers
        self.passes = 0
        self.b_dec = {L: tset.b_dec(L).float() for L in layers}
        self.enc_bias_cache: dict[int, torch.Tensor] = {}

    def _sources(self, selected: list[int]) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per source layer: (layer, columns, positions, feature ids, activations) of the selected features."""
        out = []
        if not selected:
            return out
        sel = torch.tensor(selected)
        lay = self.feats[sel, 0]
        for L in self.layers:
            m = (lay == L).nonzero().flatten()
            if m.numel():
                idx = sel[m]
                out.append((L, m, self.feats[idx, 1], self.feats[idx, 2], self.acts[idx]))
        return out

    def _backward(self, chunk: list[tuple[str, int]]) -> list[torch.Tensor | None]:
        run, rows, d, s = self.run, self.rows, self.d, self.s
        outs, grads_out = [], []
        g_final = torch.zeros(rows, d, dtype=run.final.dtype)
        by_layer: dict[int, torch.Tensor] = {}
        for b, (kind, j) in enumerate(chunk):
            if kind == "logit":
                g_final[b] = self.u[j].to(g_final.dtype)
            else:
                L, p, f = self.feats[j].tolist()
                gl = by_layer.get(L)
                if gl is None:
                    gl = by_layer[L] = torch.zeros(rows, s, d, dtype=run.mlp_in[L].dtype)
                gl[b, p] = self.tset.encoder_vector(L, [f])[0].to(gl.dtype)
        if any(k == "logit" for k, _ in chunk):
            outs.append(run.final)
            grads_out.append(g_final.to(run.final.device))
        for L, gl in by_layer.items():
            outs.append(run.mlp_in[L])
            grads_out.append(gl.to(run.mlp_in[L].device))
        inputs = [run.embed_leaf] + list(run.mlp_leaves) + [t for t, _ in run.bias_points]
        with torch.enable_grad():
            grads = torch.autograd.grad(outs, inputs, grads_out, retain_graph=True, allow_unused=True)
        self.passes += 1
        return [None if g is None else g.detach().float().cpu() for g in grads]

    def rows_for(self, targets: list[tuple[str, int]], selected: list[int], progress: bool,
                 cancel: threading.Event | None) -> dict[tuple[str, int], tuple[torch.Tensor, float]]:
        """``{target: (adjacency row [n], bias)}`` for the targets, columns over ``selected`` features."""
        from tqdm.auto import tqdm

        out: dict[tuple[str, int], tuple[torch.Tensor, float]] = {}
        srcs = self._sources(selected)
        F = len(selected)
        with tqdm(total=len(targets), desc="attribution rows", disable=not progress, leave=False) as bar:
            for start in range(0, len(targets), self.rows):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"attribution cancelled after {start} of {len(targets)} rows")
                chunk = targets[start:start + self.rows]
                out.update(self._rows(chunk, self._backward(chunk), srcs, F))
                bar.update(len(chunk))
        return out

    def _rows(self, chunk: list[tuple[str, int]], grads: list[torch.Tensor | None], srcs: list, F: int
              ) -> dict[tuple[str, int], tuple[torch.Tensor, float]]:
        n_layers, s = self.n_layers, self.s
        n = F + n_layers * s + s + self.K
        B = len(chunk)
        zeros = torch.zeros(self.rows, s, self.d)
        g_emb = grads[0] if grads[0] is not None else zeros
        g_mlp = [g if g is not None else zeros for g in grads[1:1 + n_layers]]
        g_bias = grads[1 + n_layers:]
        block = torch.zeros(B, n)
        for L, cols, pos, fid, a in srcs:
            contrib = torch.zeros(B, cols.numel())
            W = self.tset.decoder_rows(L)
            if self.tset.kind == "clt":
                for j, Lo in enumerate(self.tset.out_layers(L)):
                    w = W[fid, j].float()
                    contrib += (g_mlp[Lo][:B, pos] * w[None]).sum(-1)
            else:
                w = W[fid].float()
                contrib = (g_mlp[L][:B, pos] * w[None]).sum(-1)
            block[:, cols] = contrib * a[None]
        e0 = F
        for L in range(n_layers):
            block[:, e0 + L * s:e0 + (L + 1) * s] = (g_mlp[L][:B] * self.err[L][None]).sum(-1)
        t0 = F + n_layers * s
        block[:, t0:t0 + s] = (g_emb[:B] * self.emb[None]).sum(-1)
        dec_bias = torch.zeros(B)
        for L in self.layers:
            dec_bias += (g_mlp[L][:B].sum(1) * self.b_dec[L][None]).sum(-1)
        for g, (_, b_vec) in zip(g_bias, self.run.bias_points, strict=True):
            if g is not None:
                dec_bias += (g[:B].sum(1) * b_vec.float()[None]).sum(-1)
        out = {}
        for b, (kind, j) in enumerate(chunk):
            if kind == "logit":
                extra = float(self.ub[j])
            else:
                L, _, f = self.feats[j].tolist()
                extra = float(self.tset.encoder_bias(L, [f])[0])
            out[(kind, j)] = (block[b], float(dec_bias[b]) + extra)
        return out

    def by_influence(self, max_features: int, probs: torch.Tensor, progress: bool, cancel: threading.Event | None
                     ) -> tuple[list[int], dict[tuple[str, int], tuple[torch.Tensor, float]]]:
        """Rows in order of influence, up to ``max_features`` features (see the module docstring)."""
        from .pruning import node_influence

        n_active = self.feats.shape[0]
        every = list(range(n_active))
        got = self.rows_for([("logit", j) for j in range(self.K)], every, progress, cancel)
        visited: list[int] = []
        seen: set[int] = set()
        n = n_active + self.n_layers * self.s + self.s + self.K
        lw = torch.zeros(n)
        lw[n - self.K:] = probs
        while len(visited) < max_features:
            adj = torch.zeros(n, n)
            for (kind, j), (row, _) in got.items():
                adj[j if kind == "feat" else n - self.K + j] = row
            inf = node_influence(adj, lw)[:n_active]
            order = [i for i in torch.argsort(inf, descending=True).tolist() if i not in seen]
            take = order[:min(self.rows, max_features - len(visited))]
            if not take:
                break
            got.update(self.rows_for([("feat", i) for i in take], every, False, cancel))
            visited += take
            seen.update(take)
        keep = sorted(visited)
        # re-index the columns to the kept features (the rest leave the graph)
        cols = torch.tensor(keep + list(range(n_active, n)), dtype=torch.long)
        out = {}
        for key, (row, b) in got.items():
            if key[0] == "feat" and key[1] not in seen:
                continue
            out[key] = (row[cols], b)
        return keep, out
