"""Sparse probing (Gurnee et al. 2023, "Finding Neurons in a Haystack"): how few MLP neurons
suffice to read out a binary feature, and which ones.

    import workbench as wb
    is_the = lambda toks, i: toks[i] == " the"
    p = wb.sparse_probe(model, texts, is_the, ks=(1, 2, 4, 8, 16))
    p.to_pandas(); p.selected[1]; p.plot()

Texts are split into a training and a held-out part **by text** (the tokens of one text are
never on both sides; the split is stratified on whether a text has a positive label).

1. **Ranking** (training texts only): class-conditional sums and sums of squares of every
   neuron are reduced inside the nnsight trace, and neurons are ranked by the paper's
   heuristic, the absolute difference of the class means (``method="mean_diff"``) or that
   difference over the pooled standard deviation (``method="normalized"``).
2. **Gathering**: a second pass over all texts keeps only the top ``max(ks)`` neurons.
3. **Probing**: for each ``k`` a logistic regression on the top-``k`` neurons (features
   standardized with training statistics, L2 penalty, fitted with LBFGS in torch) is scored on
   the training and held-out examples: F1 of the positive class, accuracy, precision, recall.

``level="token"``: one example per token; labels are a list per text with one label per token
(0/1/bool, or ``None`` to leave a token out) or a callable ``(tokens: list[str], i) -> bool``.
``level="text"``: one example per text (the mean or max of each neuron over the text's
tokens, ``reduce=``); labels are one 0/1 per text. Padding is never used, and each text's
first token is left out by default (``skip_first=True``: an attention sink).
"""

from __future__ import annotations

import html
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.viewers import Showable
from .streaming import length_batches, progress_bar, run_reduced, token_lengths, valid_mask

__all__ = ["ProbeResult", "fit_logistic", "sparse_probe"]

LEVELS = ("token", "text")
METHODS = ("mean_diff", "normalized")
REDUCES = ("mean", "max")


# -- the logistic probe -----------------------------------------------------------------------
def logistic_loss(w: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """Mean binary cross-entropy of ``sigmoid(X @ w + b)`` plus ``l2 / 2 * |w|^2`` (b unpenalized)."""
    z = X @ w + b
    return torch.nn.functional.binary_cross_entropy_with_logits(z, y) + 0.5 * l2 * (w * w).sum()


def fit_logistic(X: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, max_iter: int = 500,
                 tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularized logistic regression by LBFGS (float64): returns ``(w [k], b [])`` that
    minimize `logistic_loss`. Standardize ``X`` first for a well-conditioned problem."""
    X = X.double()
    y = y.double()
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    p = y.mean().clamp(1e-6, 1 - 1e-6)
    with torch.no_grad():
        b.fill_(float(torch.log(p / (1 - p))))  # the intercept-only optimum
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = logistic_loss(w, b, X, y, l2)
        loss.backward()
        return loss

    with torch.enable_grad():
        for _ in range(5):  # LBFGS may stop early on a flat step; a restart finishes the job
            opt.step(closure)
            g = torch.cat([w.grad.reshape(-1), b.grad.reshape(-1)])
            if float(g.abs().max()) <= tol * 10:
                break
    return w.detach(), b.detach()


def _scores(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pred, y = pred.bool(), y.bool()
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    n = int(y.numel())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "accuracy": (n - fp - fn) / n if n else float("nan"), "precision": precision, "recall": recall}


# -- results ----------------------------------------------------------------------------------
@dataclass(eq=False)
class ProbeResult(Showable):
    """Sparse probes on the top-``k`` neurons for each ``k`` in ``ks``.

    ``selected[k]``: the ``(layer, unit)`` pairs of the probe, best-ranked first.
    ``metrics[k]``: ``train_f1``, ``test_f1``, ``train_accuracy``, ... (positive class).
    ``probes[k]``: ``weight``, ``bias`` on standardized features and the training ``mean`` /
    ``std`` used to standardize. ``score`` (``[layer index, unit]``) is the ranking statistic
    (signed; neurons are ranked by its absolute value), from the training texts only.
    """

    level: str
    method: str
    ks: list[int]
    layers: list[int]
    selected: dict[int, list[tuple[int, int]]]
    metrics: dict[int, dict[str, float]]
    probes: dict[int, dict[str, torch.Tensor]] = field(repr=False)
    score: torch.Tensor = field(repr=False)  # [nL, d] float64
    mean_pos: torch.Tensor = field(repr=False)
    mean_neg: torch.Tensor = field(repr=False)
    var_pos: torch.Tensor = field(repr=False)
    var_neg: torch.Tensor = field(repr=False)
    train_texts: list[int] = field(default_factory=list, repr=False)
    test_texts: list[int] = field(default_factory=list, repr=False)
    n_train: dict[str, int] = field(default_factory=dict)  # examples: {"pos": .., "neg": ..}
    n_test: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_pandas(self):
        """One row per k: the neurons (``(layer, unit)`` pairs) and train / held-out F1, accuracy, precision, recall."""
        import pandas as pd

        rows = []
        for k in self.ks:
            rows.append({"k": k, "neurons": list(self.selected[k]), **self.metrics[k]})
        return pd.DataFrame(rows)

    def ranking(self, n: int | None = 20):
        """The best-ranked neurons: site, layer, unit, score and the class means (training texts)."""
        import pandas as pd

        d = self.score.shape[1]
        order = self.score.abs().reshape(-1).argsort(descending=True, stable=True)
        order = order if n is None else order[:n]
        rows = []
        for r, flat in enumerate(order.tolist()):
            i, u = divmod(flat, d)
            rows.append({"rank": r + 1, "site": f"neurons.{self.layers[i]}", "layer": self.layers[i], "unit": u,
                         "score": float(self.score[i, u]), "mean_pos": float(self.mean_pos[i, u]),
                         "mean_neg": float(self.mean_neg[i, u])})
        return pd.DataFrame(rows)

    def plot(self, ax: Any = None):
        """F1 of the positive class against k (training and held-out), log2 x-axis. Returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        for part, style in (("train", "--"), ("test", "-")):
            ax.plot(self.ks, [self.metrics[k][f"{part}_f1"] for k in self.ks], style, marker="o",
                    label="held-out" if part == "test" else "train")
        ax.set_xscale("log", base=2)
        ax.set_xticks(self.ks, [str(k) for k in self.ks])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("k (neurons in the probe)")
        ax.set_ylabel("F1 (positive class)")
        ax.set_title(f"sparse probing ({self.level} level, {self.method})")
        ax.legend()
        return ax

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{k}</td><td>{html.escape(', '.join(f'{L}.{u}' for L, u in self.selected[k][:8]))}"
            f"{' …' if len(self.selected[k]) > 8 else ''}</td><td>{self.metrics[k]['train_f1']:.3f}</td>"
            f"<td>{self.metrics[k]['test_f1']:.3f}</td></tr>" for k in self.ks)
        return (f"<div><b>ProbeResult</b> — {html.escape(self.level)} level, ranking {html.escape(self.method)}; "
                f"train {self.n_train.get('pos', 0)} positive / {self.n_train.get('neg', 0)} negative, held-out "
                f"{self.n_test.get('pos', 0)} / {self.n_test.get('neg', 0)}"
                "<table><tr><th>k</th><th>neurons (layer.unit)</th><th>train F1</th><th>held-out F1</th></tr>"
                f"{rows}</table><code>.selected[k]</code>, <code>.to_pandas()</code>, <code>.plot()</code></div>")


# -- inputs -----------------------------------------------------------------------------------
def _label_value(v: Any, where: str) -> int:
    if v is None:
        return -1
    if isinstance(v, torch.Tensor):
        v = v.item()
    if hasattr(v, "item") and not isinstance(v, (bool, int, float)):  # numpy scalars
        v = v.item()
    if v in (0, 1) and not isinstance(v, str):
        return int(v)
    raise ValueError(f"{where}: a label is 0/1/True/False (or None to leave a token out), not {v!r}")


def _check_ks(ks: Iterable[int] | int) -> list[int]:
    if isinstance(ks, int) and not isinstance(ks, bool):
        ks = [ks]
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"ks are positive integers, not {k!r}")
        out.append(k)
    if not out:
        raise ValueError("no ks given")
    return sorted(set(out))


def _token_labels(model: Any, texts: list[str], labels: Any, lengths: list[int], skip_first: bool) -> list[torch.Tensor]:
    """Per text, int8 labels per token: 1, 0 or -1 (left out: no label, or the skipped first token)."""
    out = []
    if callable(labels):
        for b0 in range(0, len(texts), 64):
            batch = model.tokenize(texts[b0:b0 + 64])
            for j, toks in enumerate(batch.tokens):
                strs = [t.text for t in toks]
                out.append(torch.tensor([_label_value(bool(labels(strs, i)), f"text {b0 + j}, token {i}")
                                         for i in range(len(strs))], dtype=torch.int8))
    else:
        if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
            raise TypeError("token-level labels are a list (one list of per-token labels per text) or a callable "
                            "(tokens, i) -> bool")
        if len(labels) != len(texts):
            raise ValueError(f"labels has {len(labels)} entries but there are {len(texts)} texts")
        for t, row in enumerate(labels):
            if isinstance(row, (str, bytes)) or not hasattr(row, "__len__"):
                raise TypeError(f"labels[{t}] must be a list with one label per token, not {type(row).__name__}")
            if len(row) != lengths[t]:
                raise ValueError(f"labels[{t}] has {len(row)} labels but text {t} has {lengths[t]} tokens "
                                 "(see model.to_str_tokens(text))")
            out.append(torch.tensor([_label_value(v, f"labels[{t}][{i}]") for i, v in enumerate(row)],
                                    dtype=torch.int8))
    if skip_first:
        for row in out:
            row[:1] = -1
    return out


def _split(has_pos: list[bool], test_size: float, seed: int) -> tuple[list[int], list[int]]:
    """Text indices for training and held-out, stratified on ``has_pos``."""
    rng = random.Random(seed)
    train, test = [], []
    for stratum in (True, False):
        idx = [i for i, h in enumerate(has_pos) if h == stratum]
        rng.shuffle(idx)
        n_test = int(round(test_size * len(idx)))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test += idx[:n_test]
        train += idx[n_test:]
    return sorted(train), sorted(test)


# -- the analysis -----------------------------------------------------------------------------
def sparse_probe(model: Any, texts: Sequence[str], labels: Any, ks: Iterable[int] | int = (1, 2, 4, 8, 16),
                 level: str = "token", layers: Iterable[int] | int | None = None, method: str = "mean_diff",
                 test_size: float = 0.3, seed: int = 0, progress: bool = True, *, batch_size: int = 8,
                 skip_first: bool = True, reduce: str = "mean", l2: float = 1e-3,
                 remote: bool | str | None = None) -> ProbeResult:
    """Rank MLP neurons for a binary feature, then fit logistic probes on the top-k (see the module doc).

    ``labels``: ``level="text"``: one 0/1 per text; ``level="token"``: a list per text of
    per-token labels (``None`` leaves a token out) or a callable ``(tokens, i) -> bool``.
    ``l2``: the probe's L2 penalty on standardized features.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, not {reduce!r}")
    if not 0 < float(test_size) < 1:
        raise ValueError(f"test_size is a fraction of the texts between 0 and 1, not {test_size!r}")
    if isinstance(texts, str):
        raise TypeError("texts is a list of strings, not one string")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts given")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is a {type(t).__name__}, not a string")
        if not t:
            raise ValueError(f"text {i} is empty")
    ks = _check_ks(ks)
    Ls = model.arch.layer_list(layers)
    nL, d = len(Ls), model.arch.d_mlp
    K = max(ks)
    if K > nL * d:
        raise ValueError(f"k = {K} is more than the {nL * d} neurons of the layers probed")
    lengths = token_lengths(model, texts)
    if skip_first and level == "text":
        short = [i for i, L in enumerate(lengths) if L < 2]
        if short:
            raise ValueError(f"text {short[0]} has a single token, none left to pool (skip_first=True)")

    # Labels: per text, per token (token level) or one per text.
    if level == "token":
        tok_labels = _token_labels(model, texts, labels, lengths, skip_first)
        has_pos = [bool((row == 1).any()) for row in tok_labels]
        n_pos = sum(int((row == 1).sum()) for row in tok_labels)
        n_neg = sum(int((row == 0).sum()) for row in tok_labels)
    else:
        if callable(labels) or isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
            raise TypeError("text-level labels are a list with one 0/1 per text")
        if len(labels) != len(texts):
            raise ValueError(f"labels has {len(labels)} entries but there are {len(texts)} texts")
        text_labels = [_label_value(v, f"labels[{i}]") for i, v in enumerate(labels)]
        if -1 in text_labels:
            raise ValueError(f"labels[{text_labels.index(-1)}] is None: every text needs a 0/1 label")
        has_pos = [v == 1 for v in text_labels]
        n_pos = sum(has_pos)
        n_neg = len(texts) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"the labels have a single class ({n_pos} positive, {n_neg} negative examples): "
                         "a probe needs both")
    train, test = _split(has_pos, float(test_size), seed)

    def counts(idx: list[int]) -> dict[str, int]:
        if level == "token":
            return {"pos": sum(int((tok_labels[i] == 1).sum()) for i in idx),
                    "neg": sum(int((tok_labels[i] == 0).sum()) for i in idx)}
        return {"pos": sum(has_pos[i] for i in idx), "neg": sum(not has_pos[i] for i in idx)}

    n_train, n_test = counts(train), counts(test)
    if n_test["pos"] == 0 or not test:
        raise ValueError(f"no positive example in the held-out split ({len(test)} of {len(texts)} texts, "
                         f"test_size={test_size}): give more texts with positives or a larger test_size")
    if n_train["pos"] == 0 or n_train["neg"] == 0:
        raise ValueError(f"the training split has a single class ({n_train['pos']} positive, {n_train['neg']} "
                         "negative examples): give more texts of each class")

    def label_rows(rows: list[int]) -> torch.Tensor:
        """``[b, width]`` int8: 1 / 0 per example token (token level) or per text (text level: [b])."""
        if level == "text":
            return torch.tensor([text_labels[i] for i in rows], dtype=torch.int8)
        width = max(lengths[i] for i in rows)
        lab = torch.full((len(rows), width), -1, dtype=torch.int8)
        for j, i in enumerate(rows):
            lab[j, : lengths[i]] = tok_labels[i]
        return lab

    def pooled(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(x.device)[:, : x.shape[1], None]
        xf = x.float()
        if reduce == "max":
            return xf.masked_fill(~m, float("-inf")).amax(1)
        return (xf * m).sum(1) / m.sum(1).clamp_min(1)

    # Pass 1 (training texts): class-conditional sums and sums of squares, reduced in the trace.
    sums = torch.zeros(nL, 4, d, dtype=torch.float64)
    batches1 = length_batches([lengths[i] for i in train], batch_size)
    batches2 = length_batches(lengths, batch_size)
    bar = progress_bar(len(batches1) + len(batches2), "sparse probe", progress)
    try:
        for b in batches1:
            rows = [train[j] for j in b]
            lab = label_rows(rows)
            mask = valid_mask([lengths[i] for i in rows], skip_first)

            def reducer1(x: torch.Tensor, lab: torch.Tensor = lab, mask: torch.Tensor = mask) -> torch.Tensor:
                if level == "text":
                    f = pooled(x, mask)  # [b, d] float32 (float64 is not on every device)
                    lp = (lab == 1).to(f)
                    ln = (lab == 0).to(f)
                    return torch.stack([lp @ f, lp @ (f * f), ln @ f, ln @ (f * f)])
                lb = lab.to(x.device)[:, : x.shape[1]]
                xd = x.float()
                mp = (lb == 1).to(xd)[..., None]
                mn = (lb == 0).to(xd)[..., None]
                return torch.stack([(xd * mp).sum((0, 1)), (xd * xd * mp).sum((0, 1)),
                                    (xd * mn).sum((0, 1)), (xd * xd * mn).sum((0, 1))])

            out = run_reduced(model, [texts[i] for i in rows], Ls, reducer1, remote)
            for i, L in enumerate(Ls):
                sums[i] += out[L].double()
            bar.update(1)

        npos, nneg = n_train["pos"], n_train["neg"]
        mean_pos, mean_neg = sums[:, 0] / npos, sums[:, 2] / nneg
        var_pos = (sums[:, 1] / npos - mean_pos ** 2).clamp_min(0)
        var_neg = (sums[:, 3] / nneg - mean_neg ** 2).clamp_min(0)
        score = mean_pos - mean_neg
        if method == "normalized":
            score = score / (0.5 * (var_pos + var_neg)).sqrt().clamp_min(1e-12)
        order = score.abs().reshape(-1).argsort(descending=True, stable=True)[:K].tolist()
        cand = [(Ls[f // d], f % d) for f in order]
        by_layer: dict[int, list[int]] = {}
        for L, u in cand:
            by_layer.setdefault(L, []).append(u)
        col_of = {c: j for j, c in enumerate(cand)}
        cols = {L: torch.tensor([col_of[(L, u)] for u in us]) for L, us in by_layer.items()}
        layers2 = sorted(by_layer)

        # Pass 2 (all texts): only the candidates' activations.
        def gather(ix: torch.Tensor, mask: torch.Tensor):
            def reducer2(x: torch.Tensor) -> torch.Tensor:
                xs = x[..., ix.to(x.device)]
                return pooled(xs, mask) if level == "text" else xs.float()

            return reducer2

        feats: list[torch.Tensor | None] = [None] * len(texts)
        for rows in batches2:
            mask = valid_mask([lengths[i] for i in rows], skip_first)
            caps = {f"neurons.{L}": gather(torch.tensor(by_layer[L]), mask) for L in layers2}
            res = model.run([texts[i] for i in rows], capture=caps, top_k=0, logits=None, remote=remote)
            for j, i in enumerate(rows):
                n = 1 if level == "text" else lengths[i]
                f = torch.zeros(n, K, dtype=torch.float32)
                for L in layers2:
                    a = res.activations[f"neurons.{L}"][j].float()
                    f[:, cols[L]] = a[None] if level == "text" else a[:n]
                feats[i] = f
            bar.update(1)
    finally:
        bar.close()

    def dataset(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for i in idx:
            if level == "text":
                xs.append(feats[i])
                ys.append(torch.tensor([float(text_labels[i])]))
            else:
                keep = tok_labels[i] >= 0
                xs.append(feats[i][keep])
                ys.append(tok_labels[i][keep].double())
        return torch.cat(xs).double(), torch.cat(ys).double()

    Xtr, ytr = dataset(train)
    Xte, yte = dataset(test)
    selected, metrics, probes = {}, {}, {}
    for k in ks:
        mu = Xtr[:, :k].mean(0)
        sd = Xtr[:, :k].std(0, unbiased=False)
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        w, b = fit_logistic((Xtr[:, :k] - mu) / sd, ytr, l2=l2)
        m = {}
        for part, X, y in (("train", Xtr, ytr), ("test", Xte, yte)):
            pred = ((X[:, :k] - mu) / sd) @ w + b > 0
            m.update({f"{part}_{name}": v for name, v in _scores(pred, y > 0.5).items()})
        selected[k] = cand[:k]
        metrics[k] = m
        probes[k] = {"weight": w, "bias": b, "mean": mu, "std": sd}
    return ProbeResult(
        level=level, method=method, ks=ks, layers=Ls, selected=selected, metrics=metrics, probes=probes,
        score=score, mean_pos=mean_pos, mean_neg=mean_neg, var_pos=var_pos, var_neg=var_neg,
        train_texts=train, test_texts=test, n_train=n_train, n_test=n_test,
        meta={"model": getattr(model, "name", ""), "seed": seed, "test_size": test_size, "l2": l2,
              "skip_first": skip_first, "reduce": reduce if level == "text" else None},
    )

