"""Executable hypotheses: falsifiable predicates about a unit, scored exactly on a scanned corpus.

A natural-language explanation ("fires on the word *the*") can be turned into code and then
tested on every token the scan saw, with no LLM in the loop (in the spirit of FIND,
Schwettmann et al. 2023, "FIND: A Function Description Benchmark for Evaluating
Interpretability Methods", where descriptions are checked by executing them)::

    hyp = wb.neurons.Hypothesis(lambda toks, i: toks[i] == " the", "the token ' the'")
    r = wb.test_hypothesis(store, "neurons.3", 42, hyp)
    r.precision, r.recall, r.f1, r.pearson
    r.to_pandas()            # the counterexamples: false positives and false negatives, in context

The unit's activation on every token of every stored window is recomputed (the store keeps
only per-window maxima): the windows run through the model in batches with a capture reducer
that keeps the one unit inside the trace, so only ``[batch, seq]`` values leave it. Each
window's first position is skipped when the scan skipped it (``skip_first``, the default).
"""

from __future__ import annotations

import html
import math
import re
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .stats import pearson, wilson_interval

__all__ = ["Hypothesis", "HypothesisResult", "Counterexample", "test_hypothesis", "compare_hypotheses",
           "unit_activations", "wilson_interval"]


# -- hypotheses ------------------------------------------------------------------------------
@dataclass
class Hypothesis:
    """A predicate ``fn(tokens, i) -> bool | float`` over a window's token texts and a position.

    ``tokens`` are the decoded texts of the window's tokens (each token decoded alone, with its
    leading space, e.g. ``" the"``); ``i`` the position being predicted. A float is a graded
    prediction: Pearson's r uses the value itself, and the token counts as predicted active
    when the value is above ``cutoff`` (``True`` counts as 1, so booleans need no cutoff).
    """

    fn: Callable[[list[str], int], bool | float]
    name: str = ""
    cutoff: float = 0.0

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"Hypothesis needs a callable fn(tokens, i), not {type(self.fn).__name__}")
        if not self.name:
            self.name = getattr(self.fn, "__name__", "hypothesis")

    def __call__(self, tokens: list[str], i: int) -> float:
        v = self.fn(tokens, i)
        try:
            return float(v)
        except (TypeError, ValueError):
            raise TypeError(f"hypothesis {self.name!r} returned {v!r} at position {i}: it must return a bool "
                            "or a number") from None

    @classmethod
    def token_in(cls, texts: str | Iterable[str], name: str | None = None, strip: bool = False) -> Hypothesis:
        """The token at ``i`` is one of ``texts`` (exact, or after ``str.strip`` on both sides)."""
        items = [texts] if isinstance(texts, str) else list(texts)
        want = {t.strip() if strip else t for t in items}

        def fn(tokens: list[str], i: int) -> bool:
            t = tokens[i]
            return (t.strip() if strip else t) in want

        return cls(fn, name or f"token in {sorted(want)!r}")

    @classmethod
    def regex(cls, pattern: str, name: str | None = None, offset: int = 0) -> Hypothesis:
        """The token at ``i + offset`` matches ``pattern`` (``re.search``; ``offset=-1``: the previous token)."""
        rx = re.compile(pattern)

        def fn(tokens: list[str], i: int) -> bool:
            j = i + offset
            return 0 <= j < len(tokens) and rx.search(tokens[j]) is not None

        where = "token" if offset == 0 else f"token at offset {offset:+d}"
        return cls(fn, name or f"{where} matches /{pattern}/")


# -- recomputing a unit on the stored windows --------------------------------------------------
_ACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # store -> {(key, unit): {window: acts}}


def _key_unit(store: Any, site: str | int, unit: int) -> tuple[str, int]:
    key = store.site_key(site)  # KeyError naming the store's sites
    return key, store.unit_index(key, unit)  # IndexError naming the range


def _all_windows(store: Any) -> list[int]:
    return sorted(store.window_index())


def unit_activations(store: Any, site: str | int, unit: int, windows: Sequence[int] | str = "all", *,
                     batch_size: int = 32, progress: bool = True) -> dict[int, np.ndarray]:
    """A unit's activation on every token of stored windows: ``{window: float32 [len(window)]}``.

    Windows run through ``store.model`` in batches (shortest padding first) with the scan's
    interventions; a capture reducer keeps the one unit inside the trace. Results are cached
    per store, so several hypotheses about one unit rerun the corpus once.
    """
    key, u = _key_unit(store, site, unit)
    if store.model is None:
        raise RuntimeError("the unit's activations are recomputed by rerunning the windows through the model: "
                           "ScanStore.open(path, model=model) or store.model = model")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if isinstance(windows, str) and windows != "all":
        raise ValueError(f"windows must be 'all' or a list of window ids, not {windows!r}")
    wins = _all_windows(store) if isinstance(windows, str) else [int(w) for w in windows]
    cache = _ACTS.setdefault(store, {}).setdefault((key, u), {})
    todo = [w for w in dict.fromkeys(wins) if w not in cache]
    if todo:
        model = store.model
        site_name = store.meta["sites"][key].get("site", key)
        transform = store.site_transform(key)
        specs = store.meta.get("interventions") or None
        rows = {w: store.window_tokens(w) for w in todo}
        order = sorted(todo, key=lambda w: len(rows[w]))

        def pick(x: torch.Tensor, transform: Any = transform, u: int = u) -> torch.Tensor:
            if transform is not None:
                x = transform(x)
            return x[..., u].float()

        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), unit="win", desc=f"{key}[{u}]", disable=not progress, leave=False)
        try:
            for s in range(0, len(order), batch_size):
                chunk = order[s : s + batch_size]
                batch = model.batch_from_ids([rows[w] for w in chunk])
                res = model.run(batch, specs, capture={site_name: pick}, top_k=0, logits=None)
                acts = res.activations[site_name]
                for j, w in enumerate(chunk):
                    cache[w] = acts[j, : len(rows[w])].numpy().astype(np.float32, copy=True)
                bar.update(len(chunk))
        finally:
            bar.close()
    return {w: cache[w] for w in wins}


# -- results ----------------------------------------------------------------------------------
@dataclass
class Counterexample:
    """A token where the hypothesis and the unit disagree, with its context."""

    kind: str  # "false positive" (predicted, not active) or "false negative" (active, not predicted)
    window: int
    position: int
    token: str
    activation: float
    prediction: float
    left: str
    right: str

    @property
    def context(self) -> str:
        return f"{self.left}[[{self.token}]]{self.right}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "window": self.window, "position": self.position, "token": self.token,
                "activation": self.activation, "prediction": self.prediction, "context": self.context}


@dataclass
class HypothesisResult:
    """How well a hypothesis predicts where a unit is active, counted over every scored token.

    A token is *active* when its activation is above ``threshold``; *predicted* when the
    hypothesis' value is above its cutoff. ``precision = tp / (tp + fp)``, ``recall = tp /
    (tp + fn)``, ``f1`` their harmonic mean (nan when undefined), ``pearson`` the correlation of
    the hypothesis' value with the activation (nan when either is constant). The intervals are
    Wilson 95% intervals of precision and recall (tokens are not independent, so read them as
    a lower bound on the uncertainty).
    """

    site: str
    unit: int
    name: str
    threshold: float
    threshold_rule: str
    n_tokens: int
    n_windows: int
    tp: int
    fp: int
    fn: int
    tn: int
    pearson: float
    false_positives: list[Counterexample] = field(default_factory=list)
    false_negatives: list[Counterexample] = field(default_factory=list)
    activations: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else math.nan

    @property
    def precision_ci(self) -> tuple[float, float]:
        return wilson_interval(self.tp, self.tp + self.fp)

    @property
    def recall_ci(self) -> tuple[float, float]:
        return wilson_interval(self.tp, self.tp + self.fn)

    @property
    def counterexamples(self) -> list[Counterexample]:
        return self.false_negatives + self.false_positives

    def summary(self) -> dict[str, Any]:
        """One JSON-ready row: the counts and scores."""
        p_lo, p_hi = self.precision_ci
        r_lo, r_hi = self.recall_ci
        return {"site": self.site, "unit": self.unit, "hypothesis": self.name, "threshold": self.threshold,
                "n_tokens": self.n_tokens, "active": self.tp + self.fn, "predicted": self.tp + self.fp,
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn, "precision": self.precision,
                "precision_lo": p_lo, "precision_hi": p_hi, "recall": self.recall, "recall_lo": r_lo,
                "recall_hi": r_hi, "f1": self.f1, "pearson": self.pearson}

    def to_pandas(self):
        """The counterexamples (false negatives first, most active first; then false positives)."""
        import pandas as pd

        cols = ["kind", "window", "position", "token", "activation", "prediction", "context"]
        return pd.DataFrame([c.to_dict() for c in self.counterexamples], columns=cols)

    def plot(self, ax: Any = None):
        """Activation histograms of predicted and not-predicted tokens, with the threshold."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        a, pred = self.activations, self.predictions > 0
        if len(a):
            bins = np.linspace(float(a.min()), float(a.max()) + 1e-6, 50)
            ax.hist(a[~pred], bins=bins, alpha=0.6, label=f"not predicted ({int((~pred).sum())})", color="#7f8c8d")
            ax.hist(a[pred], bins=bins, alpha=0.7, label=f"predicted ({int(pred.sum())})", color="#e67e22")
            ax.set_yscale("log")
        ax.axvline(self.threshold, color="k", ls="--", lw=1, label=f"threshold {self.threshold:.3g}")
        ax.set_xlabel("activation")
        ax.set_ylabel("tokens")
        ax.set_title(f"{self.site}[{self.unit}]: {self.name}  P={self.precision:.2f} R={self.recall:.2f} "
                     f"r={self.pearson:.2f}", fontsize=9)
        ax.legend(fontsize=7)
        return ax.figure

    def __repr__(self) -> str:
        return (f"HypothesisResult({self.name!r} on {self.site}[{self.unit}]: precision={self.precision:.3f}, "
                f"recall={self.recall:.3f}, f1={self.f1:.3f}, pearson={self.pearson:.3f}, "
                f"{self.n_tokens} tokens, threshold {self.threshold:.4g})")

    def _repr_html_(self, max_rows: int = 10) -> str:
        e = html.escape
        p_lo, p_hi = self.precision_ci
        r_lo, r_hi = self.recall_ci

        def rows(items: list[Counterexample]) -> str:
            out = []
            for c in items[:max_rows]:
                ctx = (f"{e(c.left)}<b style='background:#f5b041'>{e(c.token)}</b>{e(c.right)}")
                out.append(f"<tr><td>{c.window}:{c.position}</td><td>{c.activation:.3f}</td>"
                           f"<td style='font-family:monospace;white-space:pre-wrap'>{ctx}</td></tr>")
            return "".join(out) or "<tr><td colspan=3><i>none</i></td></tr>"

        return (f"<div><b>Hypothesis</b> {e(self.name)} on {e(self.site)}[{self.unit}] "
                f"({self.n_tokens} tokens in {self.n_windows} windows; active = activation &gt; "
                f"{self.threshold:.4g}, {e(self.threshold_rule)})<br>"
                f"precision {self.precision:.3f} [{p_lo:.3f}, {p_hi:.3f}], recall {self.recall:.3f} "
                f"[{r_lo:.3f}, {r_hi:.3f}], F1 {self.f1:.3f}, Pearson r {self.pearson:.3f}; "
                f"tp {self.tp}, fp {self.fp}, fn {self.fn}, tn {self.tn}"
                f"<table><tr><th colspan=3>false negatives (active, not predicted)</th></tr>{rows(self.false_negatives)}"
                f"<tr><th colspan=3>false positives (predicted, not active)</th></tr>{rows(self.false_positives)}"
                "</table></div>")


# -- scoring ------------------------------------------------------------------------------------
def _threshold(store: Any, key: str, u: int, threshold: float | str | None) -> tuple[float, str]:
    if threshold is None:
        mx = float(store.unit_stats(key, u)["max"])
        if not math.isfinite(mx) or mx <= 0:
            raise ValueError(f"{key}[{u}] never has a positive activation (max {mx:.4g}): the default threshold "
                             "(half the maximum) is undefined; pass threshold= a number or 'active'")
        return 0.5 * mx, "half the unit's maximum over the scan"
    if isinstance(threshold, str):
        if threshold != "active":
            raise ValueError(f"threshold must be None, 'active' or a number, not {threshold!r}")
        return 0.0, "active: activation > 0"
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite, not {threshold!r}")
    return t, "given"


def _decoder(store: Any) -> Callable[[int], str]:
    tok = store.model.tokenizer
    memo: dict[int, str] = {}

    def text(i: int) -> str:
        s = memo.get(i)
        if s is None:
            s = memo[i] = tok.decode([i])
        return s

    return text


def test_hypothesis(store: Any, site: str | int, unit: int, hyp: Hypothesis | Callable, threshold: float | str | None = None,
                    windows: Sequence[int] | str = "all", *, max_counterexamples: int = 20, context: tuple[int, int] = (12, 4),
                    batch_size: int = 32, progress: bool = True) -> HypothesisResult:
    """Score a hypothesis against a unit on every token of the scanned windows, exactly.

    ``threshold``: a token is active when its activation is above it. ``None`` (default):
    half the unit's maximum over the scan (``0.5 * store.unit_stats(site, unit)["max"]``), so
    the hypothesis must predict the unit's strong activations; ``"active"``: above 0 (the
    scan's ``frac_active``); or a number. ``windows``: ``"all"`` or window ids. Every position
    of every window is scored, except each window's first when the scan skipped it.
    Counterexamples keep the ``max_counterexamples`` worst of each kind with ``context``
    (tokens before, after).
    """
    key, u = _key_unit(store, site, unit)
    if not isinstance(hyp, Hypothesis):
        hyp = Hypothesis(hyp)
    if max_counterexamples < 0:
        raise ValueError("max_counterexamples must be >= 0")
    thr, rule = _threshold(store, key, u, threshold)
    acts = unit_activations(store, key, u, windows, batch_size=batch_size, progress=progress)
    if not acts:
        raise ValueError("no windows to score")
    first = 1 if store.meta.get("skip_first", True) else 0
    text = _decoder(store)
    all_a: list[np.ndarray] = []
    all_p: list[np.ndarray] = []
    where: list[tuple[int, int]] = []
    toks_of: dict[int, list[str]] = {}
    for w, a in acts.items():
        toks = [text(i) for i in store.window_tokens(w)]
        toks_of[w] = toks
        if len(toks) <= first:
            continue
        vals = np.array([hyp(toks, i) for i in range(first, len(toks))], dtype=np.float64)
        if not np.all(np.isfinite(vals)):
            raise ValueError(f"hypothesis {hyp.name!r} returned a non-finite value in window {w}")
        all_p.append(vals)
        all_a.append(a[first:].astype(np.float64))
        where += [(w, i) for i in range(first, len(toks))]
    if not where:
        raise ValueError("the windows have no token to score (each window's first position is skipped)")
    A = np.concatenate(all_a)
    P = np.concatenate(all_p)
    active = A > thr
    pred = P > hyp.cutoff
    tp = int((active & pred).sum())
    fp = int((~active & pred).sum())
    fn = int((active & ~pred).sum())
    tn = int((~active & ~pred).sum())
    before, after = context

    def ce(kind: str, idx: np.ndarray) -> list[Counterexample]:
        out = []
        for j in idx[:max_counterexamples]:
            w, i = where[int(j)]
            toks = toks_of[w]
            out.append(Counterexample(kind, w, i, toks[i], float(A[j]), float(P[j]),
                                      "".join(toks[max(0, i - before) : i]), "".join(toks[i + 1 : i + 1 + after])))
        return out

    fp_idx = np.nonzero(~active & pred)[0]
    fp_idx = fp_idx[np.argsort(A[fp_idx], kind="stable")]  # least active first: the clearest mistakes
    fn_idx = np.nonzero(active & ~pred)[0]
    fn_idx = fn_idx[np.argsort(-A[fn_idx], kind="stable")]  # most active first
    return HypothesisResult(key, u, hyp.name, thr, rule, len(A), len(acts), tp, fp, fn, tn, pearson(P, A),
                            ce("false positive", fp_idx), ce("false negative", fn_idx),
                            A.astype(np.float32), P.astype(np.float32))


test_hypothesis.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite its name


def compare_hypotheses(store: Any, site: str | int, unit: int, hyps: Sequence[Hypothesis | Callable],
                       threshold: float | str | None = None, windows: Sequence[int] | str = "all", *,
                       batch_size: int = 32, progress: bool = True):
    """Score several hypotheses about one unit (the corpus reruns once): a DataFrame, best F1 first."""
    import pandas as pd

    rows = [test_hypothesis(store, site, unit, h, threshold, windows, max_counterexamples=0, batch_size=batch_size,
                            progress=progress).summary() for h in hyps]
    return pd.DataFrame(rows).sort_values("f1", ascending=False, na_position="last").reset_index(drop=True)
