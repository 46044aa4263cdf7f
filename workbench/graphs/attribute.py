"""`attribute`: the attribution graph of one prompt over a transcoder set.

One real forward (inference mode) finds the active features, the error vectors and the output
logits. A trace then runs a frozen forward and backward passes (`attribution_rows`): each
backward pass is one vector-Jacobian product batched over ``batch_size`` target rows (a logit's
demeaned unembedding vector at the final norm's output, or a feature's encoder vector at its MLP
input), so a graph with R target rows costs about ``ceil(R / batch_size)`` backward passes, as in
circuit-tracer. A feature at position p reads nothing after p, so rows are grouped by the prompt
prefix they need, with one trace per prefix (up to four): the backward passes of early features
run over a short prefix. A source's edge is its activation times the gradient reaching what it wrote:
``a_f * W_dec[f] . g`` for a feature (summed over the layers a cross-layer latent writes),
``error . g`` for an error node and ``embedding . g`` for a token.

With more active features than ``max_feature_nodes``, the rows are computed in order of
influence: after the logit rows, each batch takes the not-yet-visited features of highest
influence in the graph so far; the features never visited are left out of the graph (each round of ``4 * batch_size`` rows is a
trace of its own).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from .errors import GraphError
from .graph import AttributionGraph
from .replacement import RowPlan, attribution_rows, check_supported

__all__ = ["attribute", "estimate_memory", "DEFAULT_MAX_TOKENS"]

DEFAULT_MAX_TOKENS = 128
_PREFIXES = 4  # at most this many prompt prefixes (frozen forwards) per batch of rows


def estimate_memory(model: Any, n_tokens: int, batch_size: int, n_features: int) -> int:
    """Bytes an attribution needs, roughly: a fixed part (about 0.45 GB measured on the embedded
    model: the first attribution's caches, whatever the prompt), the frozen forward's saved
    activations (one copy of the prompt), one batch of gradients at every layer, and the dense
    adjacency with its temporaries (about 3.5 copies). `benchmarks/bench_attribution.py` prints the
    estimate beside the measured peak."""
    a = model.arch
    per_tok_layer = 16 * a.d_model + 4 * a.d_mlp + 2 * a.n_heads * n_tokens  # floats kept for the backward
    fwd = n_tokens * a.n_layers * per_tok_layer * 4
    grads = batch_size * n_tokens * (a.n_layers + 1) * a.d_model * 4 * 2
    n = n_features + (a.n_layers + 1) * n_tokens + 10
    return int(0.45 * 2**30 + fwd + grads + n * n * 14)


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
        out.append(model.token_id(t, "target"))  # a logit node is one token
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
              cancel: threading.Event | None = None, remote: bool | str | None = None) -> AttributionGraph:
    """The attribution graph of ``prompt`` on ``model`` with ``transcoders`` (a `TranscoderSet`).

    ``targets``: token texts or ids for the logit nodes (one token each); by default the top
    logits, up to ``max_n_logits``, covering ``desired_logit_prob`` of the probability.
    ``batch_size``: target rows per backward pass.
    ``max_tokens``: prompts longer than this are refused with the memory they would need.
    Layers without a transcoder keep their real MLP, which enters as error nodes.
    ``remote``: as the model's setting by default; ``"local"`` rehearses a remote run. What travels
    is the `RowPlan` (per target row an encoder or unembedding vector, the active features'
    decoder rows, the error vectors) and back only the rows: ``settings["upload_bytes"]`` and
    ``settings["download_bytes"]`` say how much.
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
    n_layers = model.arch.n_layers
    # the real run: every MLP's input and output, and the logits
    inputs = {L: _input_site(transcoders, L) for L in layers}
    res = model.run(prompt, capture=[f"{inputs[L]}.{L}" for L in layers] + [f"mlp_out.{L}" for L in range(n_layers)],
                    top_k=1, logits="last", remote=remote)
    mlp_in_real = {L: res[f"{inputs[L]}.{L}"][0].float() for L in layers}
    logits = res.logits[0].float()
    if not bool(torch.isfinite(logits).all()):
        raise GraphError("the model's logits on this prompt hold NaN or inf")
    logit_ids = _logit_targets(model, logits, targets, max_n_logits, desired_logit_prob)
    probs_all = torch.softmax(logits, -1)
    feats, acts, acts_by = _active(transcoders, mlp_in_real)
    n_active = feats.shape[0]
    K = len(logit_ids)
    skips = {L: w for L in layers if (w := _effective_skip(transcoders, L)) is not None}
    recon = transcoders.reconstruct({L: acts_by[L] for L in layers}, mlp_in_real if skips else None)
    errors = torch.stack([res[f"mlp_out.{L}"][0].float() - (recon[L].float() if L in recon else 0.0)
                          for L in range(n_layers)])  # a skip connection's part is in both
    W_U = model.hf.get_output_embeddings().weight.detach().float()
    b_U = getattr(model.hf.get_output_embeddings(), "bias", None)
    u = W_U[logit_ids] - W_U.mean(0, keepdim=True)
    ub = (b_U.detach().float()[logit_ids] - b_U.detach().float().mean()) if b_U is not None else torch.zeros(K)
    ctx = _Context(transcoders, feats, acts, errors, u, ub, skips, layers, max(1, min(batch_size, K + n_active)),
                   n_layers, s, K, remote, inputs)
    from tqdm.auto import tqdm

    with tqdm(total=K + min(n_active, max_feature_nodes), desc="attribution rows", disable=not progress,
              leave=False) as bar:
        if n_active <= max_feature_nodes:
            selected = list(range(n_active))
            got = ctx.rows(model, ids, [("logit", j) for j in range(K)] + [("feat", i) for i in selected],
                           selected, bar, cancel)
        else:
            selected, got = ctx.by_influence(model, ids, max_feature_nodes, probs_all[logit_ids], bar, cancel)
    F = len(selected)
    n = F + n_layers * s + s + K
    adj, bias, values = torch.zeros(n, n), torch.zeros(n), torch.zeros(n)
    pos_of = {f: i for i, f in enumerate(selected)}
    for (kind, j), (row, b) in got.items():
        r = pos_of[j] if kind == "feat" else n - K + j
        adj[r] = row
        bias[r] = b
    enc_v, enc_b = ctx.encoders(selected) if selected else ({}, {})
    for i, f in enumerate(selected):
        L, p, _ = feats[f].tolist()
        values[i] = float(mlp_in_real[L][p] @ enc_v[f]) + enc_b[f]
    for j, t in enumerate(logit_ids):
        values[n - K + j] = float(logits[t] - logits.mean())
    g = AttributionGraph(
        prompt=prompt, tokens=toks, token_ids=ids[0].tolist(), n_layers=n_layers,
        features=feats[selected] if F else torch.zeros(0, 3, dtype=torch.long),
        activations=acts[selected] if F else torch.zeros(0), logit_ids=logit_ids,
        logit_probs=probs_all[logit_ids], logit_tokens=[model.tokenizer.decode([t]) for t in logit_ids],
        adjacency=adj, values=values, bias=bias, model_name=model.name,
        scan=getattr(transcoders, "name", "") or model.name, covered_layers=layers,
        settings={"max_n_logits": int(max_n_logits), "desired_logit_prob": float(desired_logit_prob),
                  "batch_size": batch_size, "max_feature_nodes": int(max_feature_nodes),
                  "n_active_features": int(n_active), "targets": None if targets is None else list(logit_ids),
                  "backward_passes": ctx.passes, "forward_passes": ctx.traces, "upload_bytes": ctx.upload,
                  "download_bytes": ctx.download, "kind": getattr(transcoders, "kind", "plt")},
        model=model, transcoders=transcoders)
    return g


def _input_site(tset: Any, layer: int) -> str:
    """The site name (no layer) the layer's transcoder reads: mlp_in, resid_mid or ln2_normalized."""
    site = tset.input_site(layer) if hasattr(tset, "input_site") else f"mlp_in.{layer}"
    name = str(site).split(".")[0]
    if name not in ("mlp_in", "resid_mid", "ln2_normalized"):
        raise GraphError(f"layer {layer}'s transcoder reads {site}; attribution graphs need transcoders that read the "
                         "MLP's input (mlp_in, resid_mid or ln2_normalized)")
    return name


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


class _Context:
    """Builds `RowPlan`s for target rows and runs them (one trace per plan)."""

    def __init__(self, tset: Any, feats: torch.Tensor, acts: torch.Tensor, errors: torch.Tensor, u: torch.Tensor,
                 ub: torch.Tensor, skips: dict[int, torch.Tensor], layers: list[int], rows: int, n_layers: int,
                 s: int, K: int, remote: Any, inputs: dict[int, str]) -> None:
        self.tset, self.feats, self.acts, self.errors, self.u, self.ub = tset, feats, acts, errors, u, ub
        self.skips, self.layers, self.B, self.n_layers, self.s, self.K = skips, layers, rows, n_layers, s, K
        self.remote, self.inputs = remote, inputs
        self.passes = self.traces = self.upload = self.download = 0
        self.b_dec = {L: tset.b_dec(L).float() for L in layers}
        self.enc_vec: dict[int, torch.Tensor] = {}
        self.enc_bias: dict[int, float] = {}

    def _sources(self, selected: list[int]) -> list[tuple]:
        out = []
        if not selected:
            return out
        sel = torch.tensor(selected)
        lay = self.feats[sel, 0]
        for L in self.layers:
            m = (lay == L).nonzero().flatten()
            if not m.numel():
                continue
            outs = list(self.tset.out_layers(L)) if getattr(self.tset, "kind", "plt") == "clt" else [L]
            rows = self.tset.decoder_rows(L)
            pos_all = self.feats[sel[m], 1]
            for p in pos_all.unique().tolist():
                mm = m[pos_all == p]
                idx = sel[mm]
                W = rows[self.feats[idx, 2]].float()
                out.append((mm, int(p), self.acts[idx], outs, W[:, None] if W.dim() == 2 else W))
        return out

    def encoders(self, feats: list[int]) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
        """Each feature's encoder vector and bias, read once per layer (features by index into ``feats``)."""
        vec: dict[int, torch.Tensor] = {}
        bias: dict[int, float] = {}
        todo = [j for j in feats if j not in self.enc_vec]
        if todo:
            t = torch.tensor(todo)
            for L in self.feats[t, 0].unique().tolist():
                js = t[self.feats[t, 0] == L]
                fids = self.feats[js, 2].tolist()
                V = self.tset.encoder_vector(L, fids).float()
                b = self.tset.encoder_bias(L, fids).float()
                for i, j in enumerate(js.tolist()):
                    self.enc_vec[j], self.enc_bias[j] = V[i], float(b[i])
        for j in feats:
            vec[j], bias[j] = self.enc_vec[j], self.enc_bias[j]
        return vec, bias

    def _chunks(self, targets: list[tuple[str, int]], out_index: dict[tuple[str, int], int]) -> list[dict]:
        enc, _ = self.encoders([j for kind, j in targets if kind == "feat"])
        chunks = []
        for start in range(0, len(targets), self.B):
            part = targets[start:start + self.B]
            out = torch.full((self.B,), -1, dtype=torch.long)
            lb, lv, fb, fL, fp, fv = [], [], [], [], [], []
            for b, (kind, j) in enumerate(part):
                out[b] = out_index[(kind, j)]
                if kind == "logit":
                    lb.append(b)
                    lv.append(self.u[j])
                else:
                    L, p, f = self.feats[j].tolist()
                    fb.append(b)
                    fL.append(L)
                    fp.append(p)
                    fv.append(enc[j])
            d = self.u.shape[1]
            chunks.append({"out": out, "logit_b": torch.tensor(lb, dtype=torch.long),
                           "logit_vec": torch.stack(lv) if lv else torch.zeros(0, d),
                           "feat_b": torch.tensor(fb, dtype=torch.long), "feat_L": torch.tensor(fL, dtype=torch.long),
                           "feat_p": torch.tensor(fp, dtype=torch.long),
                           "feat_vec": torch.stack(fv) if fv else torch.zeros(0, d)})
        return chunks

    def _prefixes(self, targets: list[tuple[str, int]]) -> list[tuple[int, list[tuple[str, int]]]]:
        """The targets grouped by the prompt prefix their rows need, ``[(length, targets)]``.

        A feature at position p reads nothing after p (causal attention), so its backward pass
        can run on a frozen forward of the first p + 1 tokens; logits need the whole prompt.
        The prompt is cut at up to ``_PREFIXES`` lengths, about every third token (a trace each)."""
        s = self.s
        n = min(_PREFIXES, max(1, s // 3))
        ends = sorted({-(-s * i // n) for i in range(1, n + 1)})
        groups: dict[int, list[tuple[str, int]]] = {}
        for t in targets:
            pos = s - 1 if t[0] == "logit" else int(self.feats[t[1], 1])
            groups.setdefault(next(e for e in ends if e > pos), []).append(t)
        return sorted(groups.items())

    def rows(self, model: Any, ids: torch.Tensor, targets: list[tuple[str, int]], selected: list[int], bar: Any,
             cancel: Any) -> dict[tuple[str, int], tuple[torch.Tensor, float]]:
        """``{target: (row over the selected features' columns, bias)}``, one trace per prompt prefix
        (`_prefixes`)."""
        F = len(selected)
        n_cols = F + self.n_layers * self.s + self.s + self.K
        sources = self._sources(selected)
        _, enc_b = self.encoders([j for kind, j in targets if kind == "feat"])
        out = {}
        for P, part in self._prefixes(targets):
            index = {t: i for i, t in enumerate(part)}
            plan = RowPlan(rows=self.B, covered=self.layers, inputs=self.inputs, chunks=self._chunks(part, index),
                           sources=[src for src in sources if src[1] < P], errors=self.errors[:, :P].contiguous(),
                           b_dec=self.b_dec, skips=self.skips, n_rows=len(part), n_cols=n_cols, col_errors=F,
                           col_tokens=F + self.n_layers * self.s, n_pos=self.s)
            rows, bias = attribution_rows(model, ids[:, :P].to(model.device), plan, remote=self.remote, bar=bar,
                                          cancel=cancel)
            self.passes += len(plan.chunks)
            self.traces += 1
            self.upload += plan.nbytes()
            self.download += rows.numel() * 4 + bias.numel() * 4
            for t, i in index.items():
                kind, j = t
                extra = float(self.ub[j]) if kind == "logit" else enc_b[j]
                out[t] = (rows[i], float(bias[i]) + extra)
        return out

    def by_influence(self, model: Any, ids: torch.Tensor, max_features: int, probs: torch.Tensor, bar: Any,
                     cancel: Any) -> tuple[list[int], dict[tuple[str, int], tuple[torch.Tensor, float]]]:
        """Rows in order of influence, up to ``max_features`` features (see the module docstring)."""
        from .pruning import node_influence

        n_active = self.feats.shape[0]
        every = list(range(n_active))
        got = self.rows(model, ids, [("logit", j) for j in range(self.K)], every, bar, cancel)
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
            take = order[:min(self.B * 4, max_features - len(visited))]
            if not take:
                break
            got.update(self.rows(model, ids, [("feat", i) for i in take], every, bar, cancel))
            visited += take
            seen.update(take)
        keep = sorted(visited)
        cols = torch.tensor(keep + list(range(n_active, n)), dtype=torch.long)
        out = {}
        for key, (row, b) in got.items():
            if key[0] == "feat" and key[1] not in seen:
                continue
            out[key] = (row[cols], b)
        return keep, out
