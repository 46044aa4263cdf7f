"""Contrastive neurons: which MLP neurons tell named sets of texts apart.

    import workbench as wb
    r = wb.contrastive_neurons(model, {"en": english_texts, "fr": french_texts})
    r.top(10, set="fr")             # the neurons most specific to "fr" (by AUROC)
    r.to_pandas(); r.plot()

For every MLP neuron (the ``neurons.L`` sites) and every set ``s`` the texts are streamed
through the model in batches, and reduced *inside* the nnsight trace (so only small
per-text numbers leave it, also remotely) to:

* the **activation probability** ``p_act[s]``: the fraction of the set's tokens on which the
  neuron's activation is above ``threshold`` (the LAPE quantity of Tang et al. 2024,
  "Language-Specific Neurons"), and ``diff`` = ``p_act[s]`` minus the same fraction over the
  tokens of all other sets;
* one **value per text** (the mean or the max of the neuron over its tokens, ``reduce=``) and
  the **AUROC** of those values for the set against the rest (Mann–Whitney U from ranks, ties
  averaged; 1 = every text of the set is above every other text), with a two-sided
  **permutation p-value**: the text labels are shuffled ``permutations`` times and all
  neurons are tested at once (permuted rank sums = label matrix @ ranks), with
  ``p = (1 + #{|AUROC_perm - 0.5| >= |AUROC - 0.5|}) / (1 + permutations)``;
* the **LAPE entropy** of the activation probabilities normalized across sets (low = the
  neuron fires on one set only; most useful with more than two sets).

Padding is never counted, and by default neither is each text's first token
(``skip_first=True``: position 0 is an attention sink with outsized activations).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.viewers import Showable
from .stats import auroc_and_pvalues, average_ranks, permutation_indices
from .streaming import length_batches, progress_bar, run_reduced, token_lengths, valid_mask

__all__ = ["ContrastiveResult", "contrastive_neurons", "lape_entropy", "auroc_and_pvalues", "average_ranks",
           "permutation_indices"]

REDUCES = ("mean", "max")
#: The AUROC / permutation test works on at most this many (text, unit) values at a time.
_RANK_ELEMENTS = 1 << 24
RANK_BY = ("auroc", "diff", "p_value", "lape_entropy")


def lape_entropy(p_act: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) over sets of ``p_act[S, ...]`` normalized to sum to 1 (NaN where all are 0)."""
    total = p_act.sum(0)
    q = p_act / total
    h = -torch.where(q > 0, q * q.log(), torch.zeros_like(q)).sum(0) + 0.0  # + 0.0: no -0.0
    return torch.where(total > 0, h, torch.full_like(h, float("nan")))


# -- results -----------------------------------------------------------------------------------
@dataclass(eq=False)
class ContrastiveResult(Showable):
    """Per set and MLP neuron: activation probabilities, AUROC, permutation p-values, LAPE entropy.

    Arrays are indexed ``[set, layer index, unit]`` following ``sets`` and ``layers``
    (``lape_entropy`` is ``[layer index, unit]``). ``values[t, i, u]`` is text ``t``'s mean or
    max (``reduce``) of neuron ``u`` of layer ``layers[i]``; ``labels[t]`` is its set index,
    texts in the order given (set by set).
    """

    sets: list[str]
    layers: list[int]
    n_texts: list[int]
    n_tokens: list[int]  # tokens counted per set (no padding, no skipped first tokens)
    p_act: torch.Tensor  # [S, nL, d] float64
    diff: torch.Tensor  # [S, nL, d] float64
    auroc: torch.Tensor  # [S, nL, d] float32
    p_value: torch.Tensor  # [S, nL, d] float32 (NaN without permutations)
    lape_entropy: torch.Tensor  # [nL, d] float64
    values: torch.Tensor = field(repr=False)  # [n_texts, nL, d] float32
    labels: torch.Tensor = field(repr=False)  # [n_texts] int64
    reduce: str = "mean"
    threshold: float = 0.0
    permutations: int = 1000
    skip_first: bool = True
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def d_mlp(self) -> int:
        return int(self.p_act.shape[-1])

    def _set_index(self, name: str) -> int:
        if name not in self.sets:
            raise KeyError(f"no set {name!r}; sets: {self.sets}")
        return self.sets.index(name)

    def _frame(self, sets: list[int]):
        import numpy as np
        import pandas as pd

        nL, d = len(self.layers), self.d_mlp
        layer = np.repeat(np.array(self.layers, dtype=np.int64), d)
        unit = np.tile(np.arange(d, dtype=np.int64), nL)
        frames = []
        for s in sets:
            cols: dict[str, Any] = {"set": self.sets[s], "site": [f"neurons.{L}" for L in layer],
                                    "layer": layer, "unit": unit}
            for j, name in enumerate(self.sets):
                cols[f"p_act[{name}]"] = self.p_act[j].reshape(-1).numpy()
            cols["diff"] = self.diff[s].reshape(-1).numpy()
            cols["auroc"] = self.auroc[s].reshape(-1).double().numpy()
            cols["p_value"] = self.p_value[s].reshape(-1).double().numpy()
            cols["lape_entropy"] = self.lape_entropy.reshape(-1).numpy()
            cols["specific_to"] = np.array(self.sets, dtype=object)[self.p_act.argmax(0).reshape(-1).numpy()]
            frames.append(pd.DataFrame(cols))
        return pd.concat(frames, ignore_index=True)

    def to_pandas(self):
        """One row per set, layer and unit: ``p_act[<set>]`` for every set, diff, auroc,
        p_value, lape_entropy and ``specific_to`` (the set where the neuron fires most often)."""
        return self._frame(list(range(len(self.sets))))

    def top(self, n: int = 20, set: str | None = None, by: str = "auroc"):
        """The ``n`` best rows: highest ``auroc`` / ``diff``, lowest ``p_value`` (then highest
        AUROC) or lowest ``lape_entropy`` among neurons that fire most often on that set."""
        if by not in RANK_BY:
            raise ValueError(f"by must be one of {RANK_BY}, not {by!r}")
        idx = list(range(len(self.sets))) if set is None else [self._set_index(set)]
        df = self._frame(idx)
        if by == "auroc":
            df = df.sort_values(["auroc", "diff"], ascending=[False, False], kind="stable")
        elif by == "diff":
            df = df.sort_values(["diff", "auroc"], ascending=[False, False], kind="stable")
        elif by == "p_value":
            df = df.sort_values(["p_value", "auroc"], ascending=[True, False], kind="stable")
        else:
            df = df[(df["set"] == df["specific_to"]) & df["lape_entropy"].notna()]
            df = df.sort_values(["lape_entropy", "diff"], ascending=[True, False], kind="stable")
        return df.head(n).reset_index(drop=True)

    def plot(self, set: str | None = None, alpha: float = 0.01):
        """Left: p_act of a set vs the rest (every neuron; colour: AUROC). Right: per layer,
        the neurons significantly higher on each set (p < alpha, AUROC > 0.5). Returns the Figure."""
        import matplotlib.pyplot as plt

        s = 0 if set is None else self._set_index(set)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        rest = self.p_act.sum(0) - self.p_act[s] if len(self.sets) == 2 else None
        if rest is None:  # pooled over the other sets' tokens
            tok = torch.tensor(self.n_tokens, dtype=torch.float64)
            counts = self.p_act * tok[:, None, None]
            rest = (counts.sum(0) - counts[s]) / max(1.0, float(tok.sum() - tok[s]))
        sc = ax1.scatter(rest.reshape(-1).numpy(), self.p_act[s].reshape(-1).numpy(), s=4,
                         c=self.auroc[s].reshape(-1).numpy(), cmap="coolwarm", vmin=0, vmax=1)
        ax1.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax1.set_xlabel("activation probability, other sets")
        ax1.set_ylabel(f"activation probability, {self.sets[s]}")
        ax1.set_title(f"neurons of {self.sets[s]!r} vs the rest")
        fig.colorbar(sc, ax=ax1, fraction=0.04, label="AUROC")
        width = 0.8 / len(self.sets)
        for j, name in enumerate(self.sets):
            sig = ((self.p_value[j] < alpha) & (self.auroc[j] > 0.5)).sum(-1).numpy()
            ax2.bar([i + j * width for i in range(len(self.layers))], sig, width=width, label=name)
        ax2.set_xticks([i + 0.4 - width / 2 for i in range(len(self.layers))], [str(L) for L in self.layers], fontsize=7)
        ax2.set_xlabel("layer")
        ax2.set_ylabel(f"neurons with p < {alpha:g}, AUROC > 0.5")
        ax2.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        parts = []
        for j, name in enumerate(self.sets):
            a = self.auroc[j]
            flat = int(a.reshape(-1).argmax())
            i, u = divmod(flat, self.d_mlp)
            sig = int(((self.p_value[j] < 0.01) & (a > 0.5)).sum()) if self.permutations else None
            parts.append(f"<li><b>{html.escape(str(name))}</b>: {self.n_texts[j]} texts, {self.n_tokens[j]} tokens; "
                         f"best neuron {self.layers[i]}.{u} (AUROC {float(a.reshape(-1)[flat]):.3f})"
                         + (f"; {sig} neurons with p &lt; 0.01 and AUROC &gt; 0.5" if sig is not None else "")
                         + "</li>")
        return (f"<div><b>ContrastiveResult</b> — {len(self.sets)} sets, {len(self.layers)} layers × {self.d_mlp} "
                f"neurons, per-text {html.escape(self.reduce)}, threshold {self.threshold:g}, "
                f"{self.permutations} permutations<ul>{''.join(parts)}</ul>"
                "<code>.top(n, set=..., by=...)</code>, <code>.to_pandas()</code>, <code>.plot()</code></div>")


# -- the analysis ---------------------------------------------------------------------------------
def _check_sets(sets: Mapping[str, Sequence[str]]) -> tuple[list[str], list[str], list[int]]:
    if not isinstance(sets, Mapping):
        raise TypeError(f"sets is a dict of name -> list of texts, not {type(sets).__name__}")
    if len(sets) < 2:
        raise ValueError(f"contrastive_neurons needs at least 2 sets of texts, got {len(sets)}")
    names, texts, labels = [], [], []
    for s, (name, items) in enumerate(sets.items()):
        if isinstance(items, str):
            raise TypeError(f"set {name!r} is a single string: give a list of texts")
        items = list(items)
        if not items:
            raise ValueError(f"set {name!r} is empty: give at least one text")
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"text {i} of set {name!r} is a {type(t).__name__}, not a string")
            if not t:
                raise ValueError(f"text {i} of set {name!r} is empty")
        names.append(str(name))
        texts += items
        labels += [s] * len(items)
    return names, texts, labels


def contrastive_neurons(model: Any, sets: Mapping[str, Sequence[str]], layers: Iterable[int] | int | None = None,
                        reduce: str = "mean", threshold: float = 0.0, permutations: int = 1000, seed: int = 0,
                        batch_size: int = 8, progress: bool = True, *, skip_first: bool = True,
                        remote: bool | str | None = None) -> ContrastiveResult:
    """Rank MLP neurons by how well they separate named sets of texts (see the module doc).

    ``sets``: ``{"name": [texts...], ...}`` (at least two non-empty sets). ``reduce``: the
    per-text value, ``"mean"`` or ``"max"`` of the neuron over the text's tokens.
    ``threshold``: a token "activates" the neuron when its value is strictly above it.
    ``permutations``: label shuffles for the p-values (0: no test, p-values are NaN).
    """
    names, texts, labels = _check_sets(sets)
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, not {reduce!r}")
    if not isinstance(permutations, int) or isinstance(permutations, bool) or permutations < 0:
        raise ValueError(f"permutations must be a non-negative integer, not {permutations!r}")
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    Ls = model.arch.layer_list(layers)
    lengths = token_lengths(model, texts)
    counted = [L - int(skip_first) for L in lengths]
    for t, c in enumerate(counted):
        if c < 1:
            i = t - labels.index(labels[t])
            why = " (the first token is skipped: skip_first=True)" if skip_first else ""
            raise ValueError(f"text {i} of set {names[labels[t]]!r} has {lengths[t]} token(s), none left to count"
                             f"{why}: {texts[t]!r}")

    N, S, nL, d = len(texts), len(names), len(Ls), model.arch.d_mlp
    values = torch.zeros(N, nL, d, dtype=torch.float32)
    active = torch.zeros(S, nL, d, dtype=torch.float64)
    lab = torch.tensor(labels, dtype=torch.long)
    batches = length_batches(lengths, batch_size)
    bar = progress_bar(len(batches), "contrastive neurons", progress)
    use_max = reduce == "max"
    try:
        for rows in batches:
            mask = valid_mask([lengths[i] for i in rows], skip_first)

            def reducer(x: torch.Tensor, mask: torch.Tensor = mask) -> torch.Tensor:
                m = mask.to(x.device)[:, : x.shape[1], None]
                xf = x.float()
                val = xf.masked_fill(~m, float("-inf")).amax(1) if use_max else (xf * m).sum(1)
                act = ((xf > threshold) & m).sum(1).float()
                return torch.stack([val, act], 1)  # [b, 2, d]

            out = run_reduced(model, [texts[i] for i in rows], Ls, reducer, remote)
            idx = torch.tensor(rows)
            for i, L in enumerate(Ls):
                o = out[L].float()
                v = o[:, 0]
                if not use_max:
                    v = v / torch.tensor([counted[r] for r in rows], dtype=torch.float32)[:, None]
                values[idx, i] = v
                active[:, i].index_add_(0, lab[idx], o[:, 1].double())
            bar.update(1)
    finally:
        bar.close()
    return _result(names, Ls, lab, counted, values, active, reduce, threshold, permutations, seed, skip_first,
                   meta={"model": getattr(model, "name", "")})


def _result(names: list[str], Ls: list[int], lab: torch.Tensor, counted: list[int], values: torch.Tensor,
            active: torch.Tensor, reduce: str, threshold: float, permutations: int, seed: int, skip_first: bool,
            meta: dict[str, Any] | None = None) -> ContrastiveResult:
    """The statistics from per-text values and per-set active-token counts."""
    S, (N, nL, d) = len(names), values.shape
    tokens = torch.zeros(S, dtype=torch.float64).index_add_(0, lab, torch.tensor(counted, dtype=torch.float64))
    p_act = active / tokens[:, None, None]
    rest_active = active.sum(0, keepdim=True) - active
    rest_tokens = tokens.sum() - tokens
    diff = p_act - rest_active / rest_tokens[:, None, None]
    flat = values.reshape(N, nL * d)
    auroc = torch.empty(S, nL * d)
    pval = torch.empty(S, nL * d)
    perms = permutation_indices(N, permutations, seed) if permutations else None
    chunk = max(1, _RANK_ELEMENTS // max(1, N))  # units at a time: ranks of [N, chunk] stay small
    for s in range(S):
        if S == 2 and s == 1:  # the second set against the first: the mirror image
            auroc[1], pval[1] = 1 - auroc[0], pval[0]
            break
        for u0 in range(0, nL * d, chunk):
            a, p = auroc_and_pvalues(flat[:, u0:u0 + chunk], lab == s, permutations, perms=perms)
            auroc[s, u0:u0 + chunk], pval[s, u0:u0 + chunk] = a, p
    return ContrastiveResult(
        sets=names, layers=Ls, n_texts=[int((lab == s).sum()) for s in range(S)],
        n_tokens=[int(t) for t in tokens], p_act=p_act, diff=diff, auroc=auroc.reshape(S, nL, d),
        p_value=pval.reshape(S, nL, d), lape_entropy=lape_entropy(p_act), values=values, labels=lab,
        reduce=reduce, threshold=threshold, permutations=permutations, skip_first=skip_first, seed=seed,
        meta=dict(meta or {}),
    )
