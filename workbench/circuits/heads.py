"""Head scores on repeated random token sequences: induction, previous-token, duplicate-token, copying.

Each sequence is ``[BOS] r_0 … r_{L-1} r_0 … r_{L-1}`` (``L = seq_len`` distinct random tokens; the
BOS, the tokenizer's BOS or else EOS, is an attention sink that no score counts). From the attention
pattern (site ``pattern.L``, eager attention), averaged over sequences and query positions:

- **induction**: attention from each token of the second half to the token *after* its first
  occurrence (key ``q - L + 1``);
- **duplicate_token**: attention from each token of the second half to its first occurrence (``q - L``);
- **previous_token**: attention from every position after the first real token to the one before
  (``q - 1``).

**copying** is the direct logit attribution of a head to the tokens it attends to: for each query
``q`` (every real position), ``sum_k A[q, k] · logit_h(q → token_k)`` over the real keys ``k``,
where ``logit_h(q → t)`` is the head's output at ``q`` (``head_out``) read through the final norm's
scale at ``q`` (frozen, from the same run), the norm's weight and the token's mean-centred
unembedding row. Positive: the head raises the logits of what it attends to (a copying head);
negative: it suppresses them. It ignores any norm after attention (Gemma's post-attention norm).

Everything is reduced inside the trace (sums of ``[layers, heads]``), so it runs under
``remote="local"`` and on NDIF.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nnsight
import torch

from ..core.arch import resolve
from ..core.errors import Cancelled
from ..core.viewers import Showable
from .task_generators import bos_id, random_tokens

if TYPE_CHECKING:  # pragma: no cover
    from ..core.engine import Model

__all__ = ["HeadScores", "head_scores", "HEAD_SCORE_KINDS", "repeated_sequences"]

HEAD_SCORE_KINDS = ("induction", "previous_token", "duplicate_token", "copying")


@dataclass
class HeadScores(Showable):
    """Per-head scores ``[layers, heads]`` (see the module docstring for their definitions)."""

    induction: torch.Tensor
    previous_token: torch.Tensor
    duplicate_token: torch.Tensor
    copying: torch.Tensor | None
    n_seqs: int
    seq_len: int
    seed: int
    model_name: str = ""
    #: The model the scores came from (for `.show()`); not part of equality or repr.
    model: Any = field(default=None, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        return int(self.induction.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.induction.shape[1])

    @property
    def kinds(self) -> list[str]:
        return [k for k in HEAD_SCORE_KINDS if getattr(self, k) is not None]

    def scores(self, kind: str) -> torch.Tensor:
        """The ``[layers, heads]`` tensor of one kind."""
        if kind not in HEAD_SCORE_KINDS:
            raise ValueError(f"unknown head score {kind!r}: choose one of {', '.join(HEAD_SCORE_KINDS)}")
        v = getattr(self, kind)
        if v is None:
            raise ValueError(f"the {kind} score was not computed (head_scores(..., copying=True) computes it)")
        return v

    def top(self, kind: str = "induction", n: int = 5) -> list[tuple[int, int, float]]:
        """The ``n`` heads with the highest ``kind`` score, as (layer, head, score), best first."""
        v = self.scores(kind).float()
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        top = v.flatten().topk(min(n, v.numel()))
        H = v.shape[1]
        return [(int(i) // H, int(i) % H, float(s)) for s, i in zip(top.values, top.indices, strict=True)]

    def to_pandas(self):
        """One row per head: layer, head and every score."""
        import pandas as pd

        L, H = self.induction.shape
        data: dict[str, list] = {"layer": [l_ for l_ in range(L) for _ in range(H)],
                                 "head": [h for _ in range(L) for h in range(H)]}
        for k in self.kinds:
            data[k] = self.scores(k).float().flatten().tolist()
        return pd.DataFrame(data)

    def plot(self, kind: str | None = None, ax: Any = None) -> Any:
        """Layer × head heatmaps (matplotlib): one ``kind``, or every score side by side."""
        import matplotlib.pyplot as plt

        kinds = [kind] if kind is not None else self.kinds
        for k in kinds:
            self.scores(k)
        if ax is None:
            _, axes = plt.subplots(1, len(kinds), figsize=(2.2 + 0.3 * self.n_heads * len(kinds) + 1.2 * len(kinds),
                                                           max(3.0, 0.16 * self.n_layers + 1.5)), squeeze=False)
            axes = list(axes[0])
        else:
            axes = list(ax) if isinstance(ax, (list, tuple)) else [ax]
            if len(axes) != len(kinds):
                raise ValueError(f"give {len(kinds)} axes for the scores {kinds}, not {len(axes)}")
        for a, k in zip(axes, kinds, strict=True):
            v = self.scores(k).float().numpy()
            if k == "copying":
                lim = float(abs(v).max()) or 1.0
                im = a.imshow(v, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", origin="lower",
                              interpolation="nearest")
            else:
                im = a.imshow(v, cmap="viridis", vmin=0, vmax=max(float(v.max()), 1e-6), aspect="auto",
                              origin="lower", interpolation="nearest")
            a.set_xlabel("head")
            a.set_ylabel("layer")
            a.set_title(k.replace("_", " ") + (" (logits)" if k == "copying" else ""), fontsize=9)
            a.set_xticks(range(self.n_heads))
            a.figure.colorbar(im, ax=a, fraction=0.046, pad=0.04)
        return axes[0] if len(axes) == 1 else axes

    def _repr_html_(self) -> str:
        tops = "; ".join(f"{k}: " + ", ".join(f"L{l_}H{h} {s:.2f}" for l_, h, s in self.top(k, 3)) for k in self.kinds)
        return (f"<b>HeadScores</b> {self.n_layers} layers × {self.n_heads} heads on {self.n_seqs} repeated random "
                f"sequences of {self.seq_len} tokens. Top: {tops}")


def repeated_sequences(model: Model, n_seqs: int, seq_len: int, seed: int = 0,
                       prepend_bos: bool = True) -> torch.Tensor:
    """``[n_seqs, (1 +) 2·seq_len]`` token ids: ``[BOS] r r`` for ``seq_len`` distinct random tokens ``r``."""
    if n_seqs < 1 or seq_len < 2:
        raise ValueError(f"need n_seqs >= 1 and seq_len >= 2, not {n_seqs} and {seq_len}")
    g = torch.Generator().manual_seed(int(seed))
    bos = bos_id(model) if prepend_bos else None
    head = [bos] if bos is not None else []
    return torch.tensor([head + r + r for r in (random_tokens(model, g, seq_len) for _ in range(n_seqs))])


def _norm_info(model: Model) -> tuple[bool, float]:
    """(is it a LayerNorm (centres), eps) of the final norm."""
    m = resolve(model.hf, model.arch.final_norm)
    eps = next((float(v) for v in (getattr(m, "variance_epsilon", None), getattr(m, "eps", None))
                if isinstance(v, (int, float))), 1e-6)
    centred = isinstance(m, torch.nn.LayerNorm) or ("layernorm" in type(m).__name__.lower()
                                                     and "rms" not in type(m).__name__.lower())
    return centred, eps


def head_scores(model: Model, n_seqs: int = 16, seq_len: int = 40, seed: int = 0, *, batch_size: int = 8,
                copying: bool = True, prepend_bos: bool = True, progress: bool = True,
                cancel: threading.Event | None = None) -> HeadScores:
    """Induction, previous-token, duplicate-token and copying scores of every head (module docstring).

    ``n_seqs`` repeated random sequences of ``2 · seq_len`` tokens (seeded), in batches of
    ``batch_size``; setting ``cancel`` stops between batches with `workbench.Cancelled`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    ids = repeated_sequences(model, n_seqs, seq_len, seed, prepend_bos)
    off = ids.shape[1] - 2 * seq_len
    T, L = ids.shape[1], seq_len
    model.check_length(T, rows=min(batch_size, n_seqs))
    n_layers = model.n_layers
    second = torch.arange(off + L, T)
    q_ind, k_ind = second, second - L + 1
    q_dup, k_dup = second, second - L
    q_prev = torch.arange(off + 1, T)
    k_prev = q_prev - 1
    q_all = torch.arange(off, T)
    centred, eps = _norm_info(model)
    arch = model.arch
    totals = torch.zeros(4, n_layers, model.n_heads, dtype=torch.float64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_seqs, desc="head scores", unit="seq", leave=False)
    try:
        for start in range(0, n_seqs, batch_size):
            if cancel is not None and cancel.is_set():
                raise Cancelled("head scores cancelled", partial=None)
            rows = ids[start:start + batch_size]
            batch = model.batch_from_ids(rows.tolist())
            program = model.program(batch)
            nn = model.nn
            dev = model.device if not model.remote else torch.device("cpu")
            tok = rows.to(dev)
            with model.lock, torch.inference_mode():
                with model.trace_batch(batch):
                    if copying:
                        w_u = resolve(nn, arch.unembed).weight
                        w_u = w_u - w_u.mean(0, keepdim=True)
                        gamma = resolve(nn, arch.final_norm).weight
                        u_tok = (w_u[tok.to(w_u.device)] * gamma).float()  # [b, T, d]
                    per_layer = []
                    copy_q = []
                    for layer in range(n_layers):
                        cache: dict = {}
                        if copying:
                            ho = program.read(nn, f"head_out.{layer}", cache).float()  # [b, T, H, d]
                            if centred:
                                ho = ho - ho.mean(-1, keepdim=True)
                        pat = program.read(nn, f"pattern.{layer}", cache).float()  # [b, H, T, T]
                        ind = pat[:, :, q_ind, k_ind].sum((0, 2))
                        dup = pat[:, :, q_dup, k_dup].sum((0, 2))
                        prev = pat[:, :, q_prev, k_prev].sum((0, 2))
                        per_layer.append(torch.stack([ind, prev, dup]))
                        if copying:
                            d = torch.einsum("bqhd,bkd->bhqk", ho, u_tok)  # head's logit at q for token at k
                            copy_q.append((d * pat)[:, :, :, off:].sum(-1)[:, :, q_all])  # [b, H, nq]
                    pat_sums = torch.stack(per_layer, 1)  # [3, layers, H]
                    if copying:
                        x = resolve(nn, arch.final_norm).input.float()  # [b, T, d]
                        if centred:
                            x = x - x.mean(-1, keepdim=True)
                        inv = torch.rsqrt(x.pow(2).mean(-1) + eps)[:, q_all]  # [b, nq]
                        cp = torch.stack([(c * inv[:, None, :]).sum((0, 2)) for c in copy_q])  # [layers, H]
                        out = nnsight.save(torch.cat([pat_sums, cp[None]]).cpu())
                    else:
                        out = nnsight.save(pat_sums.cpu())
            totals[: out.shape[0]] += out.double()
            if bar is not None:
                bar.update(rows.shape[0])
    finally:
        if bar is not None:
            bar.close()
    n = ids.shape[0]
    ind = (totals[0] / (n * len(q_ind))).float()
    prev = (totals[1] / (n * len(q_prev))).float()
    dup = (totals[2] / (n * len(q_dup))).float()
    cp = (totals[3] / (n * len(q_all))).float() if copying else None
    return HeadScores(ind, prev, dup, cp, n, seq_len, seed, model.name, model=model)
