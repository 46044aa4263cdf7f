"""Scores with confidence intervals: `Score`, the metrics, and the percentile bootstrap.

`classification_scores` (balanced accuracy, F1), `correlation_score` (Pearson's r over tokens,
resampling whole windows) and `sasc_scores` (the SASC effect size and AUROC) each return
`Score` objects with 95% bootstrap intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..neurons.stats import auroc, pearson

__all__ = ["Score", "auroc", "balanced_accuracy", "bootstrap_ci", "classification_scores", "correlation_score",
           "f1_score", "jsonable", "pearson", "sasc_scores"]


@dataclass
class Score:
    """One score of an explanation with a 95% confidence interval ``[lo, hi]`` from ``n`` items."""

    name: str
    value: float
    lo: float
    hi: float
    n: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers as None)."""
        return {"name": self.name, "value": _num(self.value), "lo": _num(self.lo), "hi": _num(self.hi),
                "n": int(self.n), "details": jsonable(self.details)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Score:
        """The inverse of `to_dict` (None back to nan)."""
        return cls(str(d["name"]), _float(d["value"]), _float(d["lo"]), _float(d["hi"]), int(d["n"]),
                   dict(d.get("details") or {}))

    def __repr__(self) -> str:
        return f"Score({self.name}={self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}], n={self.n})"


def _num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


def jsonable(x: Any) -> Any:
    """Plain JSON values: numpy numbers to int/float, non-finite floats to None, containers recursively."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _num(x)
    return x


def balanced_accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates (nan without both classes)."""
    y, p = np.asarray(labels, bool), np.asarray(preds, bool)
    if y.all() or (~y).all():
        return math.nan
    return 0.5 * (float((p & y).sum()) / y.sum() + float((~p & ~y).sum()) / (~y).sum())


def f1_score(labels: np.ndarray, preds: np.ndarray) -> float:
    """2 tp / (2 tp + fp + fn) (nan when there is no positive label or prediction)."""
    y, p = np.asarray(labels, bool), np.asarray(preds, bool)
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else math.nan


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, *, strata: np.ndarray | None = None, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` items.

    With ``strata`` (a label per item), each stratum is resampled on its own with its own
    size, so every resample keeps both classes. Resamples where the statistic is nan are
    left out; (nan, nan) when all are.
    """
    if n == 0 or n_boot < 1:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.nonzero(np.asarray(strata) == s)[0] for s in np.unique(strata)]
    vals = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups if len(g)])
        vals[b] = stat(idx)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return (math.nan, math.nan)
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(vals, [a, 100 - a])
    return (float(lo), float(hi))


def classification_scores(name: str, labels: Sequence[bool], preds: Sequence[bool], *, n_boot: int = 1000, seed: int = 0,
                          details: dict | None = None) -> dict[str, Score]:
    """``name`` (balanced accuracy) and ``name_f1``, with stratified bootstrap intervals."""
    y, p = np.asarray(labels, bool), np.asarray(preds, bool)
    counts = {"tp": int((p & y).sum()), "fp": int((p & ~y).sum()), "fn": int((~p & y).sum()),
              "tn": int((~p & ~y).sum()), **(details or {})}
    out = {}
    for nm, fn in ((name, balanced_accuracy), (f"{name}_f1", f1_score)):
        lo, hi = bootstrap_ci(lambda i, fn=fn: fn(y[i], p[i]), len(y), strata=y, n_boot=n_boot, seed=seed)
        out[nm] = Score(nm, fn(y, p), lo, hi, len(y), dict(counts))
    return out


def correlation_score(name: str, true: Sequence[np.ndarray], pred: Sequence[np.ndarray], *, n_boot: int = 1000,
                      seed: int = 0, details: dict | None = None) -> Score:
    """Pearson's r over all tokens of all windows; the interval resamples whole windows."""
    t = [np.asarray(a, np.float64) for a in true]
    q = [np.asarray(a, np.float64) for a in pred]
    if not t:
        return Score(name, math.nan, math.nan, math.nan, 0, dict(details or {}))
    value = pearson(np.concatenate(t), np.concatenate(q))
    lo, hi = bootstrap_ci(lambda i: pearson(np.concatenate([t[j] for j in i]), np.concatenate([q[j] for j in i])),
                          len(t), n_boot=n_boot, seed=seed)
    return Score(name, value, lo, hi, len(t), {"tokens": int(sum(len(a) for a in t)), **(details or {})})


def sasc_scores(pos: Sequence[float], neg: Sequence[float], std: float, *, n_boot: int = 1000, seed: int = 0,
                details: dict | None = None) -> dict[str, Score]:
    """``sasc`` = (mean(pos) - mean(neg)) / std and ``sasc_auroc``, stratified bootstrap intervals."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])

    def diff(i: np.ndarray) -> float:
        a, b = x[i][y[i]], x[i][~y[i]]
        return (a.mean() - b.mean()) / std if len(a) and len(b) and std > 0 else math.nan

    def roc(i: np.ndarray) -> float:
        return auroc(x[i][y[i]], x[i][~y[i]])

    d = {"mean_fit": float(pos.mean()) if len(pos) else math.nan,
         "mean_unfit": float(neg.mean()) if len(neg) else math.nan, "std": float(std), **(details or {})}
    out = {}
    for nm, fn in (("sasc", diff), ("sasc_auroc", roc)):
        lo, hi = bootstrap_ci(fn, len(x), strata=y, n_boot=n_boot, seed=seed)
        out[nm] = Score(nm, fn(np.arange(len(x))), lo, hi, len(x), dict(d))
    return out
