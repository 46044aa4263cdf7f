"""Automated interpretability: explain a unit from its scanned exemplars with an LLM, then score it.

    store = wb.ScanStore.open("scans/smol", model)
    [ex] = wb.explain(store, "neurons.12", 345)                 # the local SmolLM2 by default
    wb.score(store, "neurons.12", 345, ex)                      # detection, fuzzing, simulation, sasc
    wb.ExplanationStore.for_store(store).to_pandas()            # every explanation and score so far

**Explaining.** A unit is any store key (an MLP neuron, an SAE latent, an NMF component).
Its exemplars are its top windows (`ScanStore.top`, every other rank) plus windows from
across the quantiles of the store's random window sample; each window is cropped around its
maximum and the store reruns it through the model for per-token activations. Two prompt
formats, with their instructions reworded and shortened for a small local model but the
formats kept:

- ``method="openai"``: Bills et al. 2023, "Language models can explain neurons in language
  models" (github.com/openai/automated-interpretability, ``neuron_explainer/explanations/
  explainer.py`` `TokenActivationPairExplainer` and ``activations/activation_records.py``):
  ``token<tab>activation`` lines, activations scaled to integers 0–10 by the maximum
  (``floor(10 * relu(a) / max)``), records between ``<start>``/``<end>``, the non-zero lines
  repeated when fewer than 20% are non-zero, and the answer completing "the main thing this
  neuron does is find".
- ``method="delphi"``: Paulo et al. 2024, "Automatically interpreting millions of features in
  large language models" (github.com/EleutherAI/delphi, ``delphi/explainers/default/prompts.py``
  and ``explainer.py`` ``_highlight``): ``Example i: ...`` lines with runs of activating tokens
  between ``<<`` and ``>>``, the answer's last line ``[EXPLANATION]: ...``. Tokens are marked
  at ``mark_frac`` (0.5) of the example's maximum rather than Delphi's 0.3: MLP neurons are
  dense, unlike the SAE latents Delphi was written for.

``n=`` asks for several explanations (sampled at temperature 0.7 unless given), each scored on
its own (as in PRISM, Kopf et al. 2025). Explanations and scores are kept in an
`ExplanationStore` (``explanations.json`` next to the scan); a rerun with the same prompt and
client reuses them, and the client's own reply cache makes repeated requests free.

**Scoring** (each a `Score` with a 95% confidence interval). Held-out windows only: the
windows an explanation was made from are never scored (see `holdout_split`).

- ``detection`` (Delphi): held-out activating windows (the other top ranks, and sampled windows
  whose maximum is at least ``active_frac`` of the unit's maximum) and non-activating ones (the
  sampled windows with the lowest maxima), shuffled, ``per_prompt`` to a prompt; the LLM says
  which fit the explanation. Balanced accuracy (``detection``) and F1 (``detection_f1``),
  stratified bootstrap intervals.
- ``fuzzing`` (Delphi): every held-out activating window twice, once with its real activating
  tokens marked and once with as many random other tokens marked; the LLM says whether the
  marking fits. Balanced accuracy, stratified bootstrap interval.
- ``simulation`` (Bills et al., the logprob-free all-at-once simulator): the LLM repeats each
  held-out window's tokens with a predicted 0–10 activation; Pearson's r with the true
  activations over all tokens, bootstrap over windows.
- ``sasc`` (Singh et al. 2023, "Explaining black box text modules in natural language with
  language models"; the generation prompt of github.com/csinva/imodelsX ``sasc/m3_generate.py``):
  the LLM writes sentences that contain the explanation's concept and sentences that do not;
  the model runs on them; ``sasc`` is the difference of the mean per-text maximum activation
  divided by the unit's standard deviation over the scan, ``sasc_auroc`` the probability that
  a fitting text out-activates a non-fitting one. Stratified bootstrap intervals.

Replies are parsed strictly; a malformed reply is re-asked with the error (`llm.retry_parse`)
and, after ``attempts``, raises `LLMError` (``on_error="skip"`` drops that prompt instead and
counts it in ``Score.details["failed"]``).
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..llm.client import REASK, ChatClient, LLMError, llm_client, retry_parse

__all__ = [
    "Score", "Explanation", "ExplanationStore", "ExplanationStoreError", "HeldOut", "Record", "explain", "score",
    "explain_units", "holdout_split", "unit_records", "text_max_activations", "normalize_activations",
    "format_activation_records", "openai_explain_messages", "delphi_explain_messages", "detection_messages",
    "fuzzing_messages", "simulation_messages", "sasc_messages", "highlight", "parse_openai_explanation",
    "parse_delphi_explanation", "parse_binary_list", "parse_simulation", "parse_numbered_list",
    "balanced_accuracy", "f1_score", "auroc", "pearson", "bootstrap_ci", "classification_scores",
    "correlation_score", "sasc_scores",
]

METHODS = ("openai", "delphi")
SCORERS = ("detection", "fuzzing", "simulation", "sasc")
EXPLANATION_PREFIX = "the main thing this neuron does is find"  # Bills et al.'s answer prefix
EOL = "\u0f17"  # the end-of-line mark of the OpenAI logprob-free simulator (easy to split on)


# -- records ------------------------------------------------------------------------------------------
@dataclass
class Record:
    """One window (or a crop of it) as shown to an LLM: token texts and the unit's activations."""

    window: int
    tokens: list[str]
    acts: np.ndarray
    offset: int = 0  # position of tokens[0] in the window

    @property
    def max(self) -> float:
        return float(self.acts.max()) if len(self.acts) else -math.inf

    def crop(self, before: int, after: int) -> Record:
        """``before + 1 + after`` tokens with the maximum at ``before`` where the window allows.

        Near an edge the span shifts to stay inside the window, so every crop of a long enough
        window has the same length (the length is no cue to whether a window is activating).
        """
        if not len(self.acts):
            return self
        p, n, L = int(np.argmax(self.acts)), len(self.tokens), before + after + 1
        a = min(max(0, p - before), max(0, n - L))
        b = min(n, a + L)
        return Record(self.window, self.tokens[a:b], self.acts[a:b], self.offset + a)


def _clean(token: str) -> str:
    """A token's text on one line: newlines, carriage returns and tabs written as \\n, \\r, \\t."""
    return token.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _key_unit(store: Any, site: str | int, unit: int) -> tuple[str, int]:
    key = store._key(site)
    return key, store._unit(key, unit)


def _first(store: Any) -> int:
    return 1 if store.meta.get("skip_first", True) else 0


def unit_records(store: Any, site: str | int, unit: int, windows: Sequence[int],
                 crop: tuple[int, int] | None = None) -> list[Record]:
    """Windows with the unit's activation on each token (rerun through the store's model).

    The first position is dropped where the scan skipped it; ``crop=(before, after)`` keeps
    that many tokens around each window's maximum.
    """
    key, u = _key_unit(store, site, unit)
    windows = [int(w) for w in windows]
    if not windows:
        return []
    acts = store._unit_acts(key, u, windows)
    tok = store._need_model().tokenizer
    first = _first(store)
    out = []
    for w, a in zip(windows, acts, strict=True):
        toks = [tok.decode([i]) for i in store.window_tokens(w)]
        r = Record(w, toks[first:], np.asarray(a[first:], dtype=np.float32), first)
        out.append(r.crop(*crop) if crop is not None else r)
    return out


def text_max_activations(store: Any, site: str | int, unit: int, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
    """The unit's maximum activation over each text (first position skipped as in the scan)."""
    key, u = _key_unit(store, site, unit)
    model = store._need_model()
    site_name = store.meta["sites"][key].get("site", key)
    transform = store._transform(key)
    specs = store.meta.get("interventions") or None
    first = _first(store)

    def pick(x: torch.Tensor, transform: Any = transform, u: int = u) -> torch.Tensor:
        if transform is not None:
            x = transform(x)
        return x[..., u].float()

    out = []
    texts = list(texts)
    for s in range(0, len(texts), batch_size):
        chunk = texts[s : s + batch_size]
        res = model.run(chunk, specs, capture={site_name: pick}, top_k=0, logits=None)
        a = res.activations[site_name]
        for j, n in enumerate(res.lengths):
            out.append(float(a[j, first:n].max()) if n > first else math.nan)
    return np.array(out, dtype=np.float64)


# -- held-out split -------------------------------------------------------------------------------------
@dataclass
class HeldOut:
    """Windows of one unit: shown to the explainer, and held out for scoring (disjoint sets)."""

    explain: list[int]
    positive: list[int]
    negative: list[int]
    threshold: float  # a held-out sampled window is activating when its maximum is >= this

    def without(self, windows: Sequence[int]) -> HeldOut:
        drop = set(int(w) for w in windows)
        return HeldOut(self.explain, [w for w in self.positive if w not in drop],
                       [w for w in self.negative if w not in drop], self.threshold)


def holdout_split(store: Any, site: str | int, unit: int, *, n_top: int = 6, n_quantile: int = 2, n_positive: int = 10,
                  n_negative: int = 10, active_frac: float = 0.5) -> HeldOut:
    """Split a unit's windows into explanation exemplars and held-out scoring windows.

    Explanation: the top windows at even ranks (0, 2, 4, ...; at most ``n_top``) and
    ``n_quantile`` windows from the store's random sample, one from the middle of each of
    ``n_quantile`` equal-count ranges of the sampled windows' maxima. Held out, positive: the
    other top windows, then sampled windows whose maximum is at least ``active_frac`` times
    the unit's maximum (at most ``n_positive``). Held out, negative: the sampled windows below
    that with the lowest maxima (at most ``n_negative``). Deterministic; the sets are disjoint.
    """
    key, u = _key_unit(store, site, unit)
    if min(n_top, n_quantile, n_positive, n_negative) < 0:
        raise ValueError("n_top, n_quantile, n_positive and n_negative must be >= 0")
    top = store.top(key, u)
    even = [w for r, (_, w, _) in enumerate(top) if r % 2 == 0]
    explain = even[:n_top]
    rest_top = [w for _, w, _ in top if w not in set(explain)]
    top_set = {w for _, w, _ in top}
    mx = top[0][0] if top else math.nan
    thr = active_frac * mx if math.isfinite(mx) and mx > 0 else math.inf
    ok = store.sample.windows >= 0
    wins = store.sample.windows[ok].tolist()
    vals = store.states[key].sample_values[ok, u].tolist()
    pairs = [(v, w) for v, w in zip(vals, wins, strict=True) if w not in top_set]
    pairs.sort(key=lambda p: (-p[0], p[1]))
    quant: list[int] = []
    n = len(pairs)
    for g in range(n_quantile):
        a, b = (g * n) // n_quantile, ((g + 1) * n) // n_quantile
        if b > a:
            quant.append(pairs[a + (b - a) // 2][1])
    explain = explain + quant
    used = set(explain)
    positive = (rest_top + [w for v, w in pairs if v >= thr and w not in used])[:n_positive]
    negative = [w for v, w in sorted(pairs, key=lambda p: (p[0], p[1])) if v < thr and w not in used][:n_negative]
    return HeldOut(explain, positive, negative, thr)


# -- scores ------------------------------------------------------------------------------------------------
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
        return {"name": self.name, "value": _num(self.value), "lo": _num(self.lo), "hi": _num(self.hi),
                "n": int(self.n), "details": _jsonable(self.details)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Score:
        return cls(str(d["name"]), _float(d["value"]), _float(d["lo"]), _float(d["hi"]), int(d["n"]),
                   dict(d.get("details") or {}))

    def __repr__(self) -> str:
        return f"Score({self.name}={self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}], n={self.n})"


def _num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
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


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg) over all pairs (nan when a side is empty)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if not len(pos) or not len(neg):
        return math.nan
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float(gt + 0.5 * eq) / (len(pos) * len(neg))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r (nan when either side is constant or has fewer than two values)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / den if den > 0 else math.nan


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


# -- prompt formats -------------------------------------------------------------------------------------------
def normalize_activations(acts: Sequence[float], max_activation: float) -> list[int]:
    """Integers 0–10: ``min(10, floor(10 * relu(a) / max_activation))`` (all 0 when max <= 0)."""
    if not max_activation > 0:
        return [0] * len(acts)
    return [min(10, math.floor(10 * max(0.0, float(a)) / max_activation)) for a in acts]


def format_activation_records(records: Sequence[Record], max_activation: float, *, omit_zeros: bool = False,
                              hide_activations: bool = False) -> str:
    """Bills et al.'s record format: ``token<tab>activation`` lines, records between <start> and <end>."""
    blocks = []
    for r in records:
        norm = normalize_activations(r.acts, max_activation)
        lines = []
        for t, a in zip(r.tokens, norm, strict=True):
            if omit_zeros and a == 0:
                continue
            lines.append(f"{_clean(t)}\t{'unknown' if hide_activations else a}")
        blocks.append("\n".join(lines))
    return "\n<start>\n" + "\n<end>\n<start>\n".join(blocks) + "\n<end>\n"


def _max_activation(records: Sequence[Record]) -> float:
    return max([max(0.0, r.max) for r in records] + [0.0])


def _nonzero_fraction(records: Sequence[Record], max_activation: float) -> float:
    norm = [a for r in records for a in normalize_activations(r.acts, max_activation)]
    return sum(a > 0 for a in norm) / len(norm) if norm else 0.0


# A small worked example for the few-shot turns (written for this module).
_FEW_TOKENS = ["The", " cat", " chased", " a", " small", " dog", " across", " the", " yard", "."]
_FEW_ACTS = np.array([0, 9, 0, 0, 1, 10, 0, 0, 0, 0], dtype=np.float32)
_FEW_EXPLANATION = "nouns naming animals"

OPENAI_EXPLAIN_SYSTEM = (
    "We study neurons in a neural network. Each neuron looks for one particular thing in a short text. "
    "Look at the tokens where the neuron activates and say in one short sentence what it looks for. "
    "Do not list example words.\n\nEach line is token<tab>activation. Activations go from 0 to 10; "
    "0 means no match and higher values mean a stronger match.")


def _openai_neuron_turn(records: Sequence[Record], index: int) -> str:
    mx = _max_activation(records)
    msg = f"\n\nNeuron {index}\nActivations:{format_activation_records(records, mx)}"
    if _nonzero_fraction(records, mx) < 0.2:
        msg += f"\nSame activations, but with all zeros filtered out:{format_activation_records(records, mx, omit_zeros=True)}"
    return msg + f"\nExplanation of neuron {index} behavior: {EXPLANATION_PREFIX}"


def openai_explain_messages(records: Sequence[Record]) -> list[dict[str, str]]:
    """The explanation prompt in Bills et al.'s format: one worked example, then the unit as neuron 2."""
    few = [Record(-1, _FEW_TOKENS, _FEW_ACTS)]
    return [{"role": "system", "content": OPENAI_EXPLAIN_SYSTEM},
            {"role": "user", "content": _openai_neuron_turn(few, 1)},
            {"role": "assistant", "content": f" {_FEW_EXPLANATION}."},
            {"role": "user", "content": _openai_neuron_turn(records, 2)}]


def parse_openai_explanation(text: str) -> str:
    """The explanation in a reply to `openai_explain_messages`: its first line, prefix and final period dropped."""
    t = text.strip()
    if t.lower().startswith(EXPLANATION_PREFIX):
        t = t[len(EXPLANATION_PREFIX):].strip()
    line = t.split("\n", 1)[0].strip().strip('"').strip()
    if line.endswith("."):
        line = line[:-1].rstrip()
    if not line:
        raise ValueError("the reply is empty: write the explanation as one sentence")
    if len(line) > 300:
        raise ValueError("the explanation is longer than 300 characters: write one short sentence")
    if line.lower() in ("<start>", "<end>", "unknown") or "\t" in line:
        raise ValueError(f"{line[:40]!r} repeats the activation format: write what the neuron looks for in words")
    return line


def highlight(tokens: Sequence[str], acts: Sequence[float], threshold: float) -> str:
    """Tokens joined, each run of tokens with activation above ``threshold`` between << and >>."""
    out, i, n = [], 0, len(tokens)
    while i < n:
        if acts[i] > threshold:
            out.append("<<")
            while i < n and acts[i] > threshold:
                out.append(_clean(tokens[i]))
                i += 1
            out.append(">>")
        else:
            out.append(_clean(tokens[i]))
            i += 1
    return "".join(out)


def _mark(r: Record, mark_frac: float) -> str:
    return highlight(r.tokens, r.acts, mark_frac * r.max if r.max > 0 else math.inf)


DELPHI_EXPLAIN_SYSTEM = (
    "You are a careful AI researcher looking for patterns in text. You will see text examples in which "
    "some tokens are marked between << and >>; consecutive marked tokens share one pair of delimiters "
    "<<like this>>.\n"
    "- Say briefly what the marked tokens and their contexts have in common.\n"
    "- Do not mention the << >> markers and do not list possible explanations.\n"
    "- The last line of your answer must be the explanation, written as [EXPLANATION]: <explanation>")


def delphi_explain_messages(records: Sequence[Record], mark_frac: float = 0.5,
                            activations: bool = False) -> list[dict[str, str]]:
    """The explanation prompt in Delphi's format: marked examples, answer ``[EXPLANATION]: ...``.

    ``activations=True`` adds Delphi's ``Activations: ("token", 7), ...`` line under each example.
    """
    def examples(recs: Sequence[Record]) -> str:
        lines = []
        mx = _max_activation(recs)
        for i, r in enumerate(recs, 1):
            lines.append(f"Example {i}: {_mark(r, mark_frac)}")
            if activations:
                norm = normalize_activations(r.acts, mx)
                pairs = [f'("{_clean(t)}", {a})' for t, a, x in zip(r.tokens, norm, r.acts, strict=True)
                         if r.max > 0 and x > mark_frac * r.max]
                lines.append("Activations: " + ", ".join(pairs))
        return "\n".join(lines)

    few = [Record(-1, _FEW_TOKENS, _FEW_ACTS)]
    return [{"role": "system", "content": DELPHI_EXPLAIN_SYSTEM},
            {"role": "user", "content": f"\n{examples(few)}\n"},
            {"role": "assistant", "content": f"[EXPLANATION]: {_FEW_EXPLANATION[0].upper()}{_FEW_EXPLANATION[1:]}."},
            {"role": "user", "content": f"\n{examples(records)}\n"}]


_EXPL_TAG = re.compile(r"\[EXPLANATION\]\s*:\s*(.*)", re.I)


def parse_delphi_explanation(text: str) -> str:
    """The text after the last ``[EXPLANATION]:`` (its line); a bare one-line answer is accepted too."""
    found = _EXPL_TAG.findall(text)
    if found:
        line = found[-1].strip().split("\n", 1)[0].strip()
    else:
        lines = [ln.strip() for ln in text.strip().split("\n") if ln.strip()]
        if len(lines) != 1 or "<<" in lines[0] or len(lines[0].split()) > 30:
            raise ValueError("no line starts with [EXPLANATION]: end the answer with [EXPLANATION]: <explanation>")
        line = lines[0]
    line = line.strip().strip('"').strip()
    if line.endswith("."):
        line = line[:-1].rstrip()
    if not line:
        raise ValueError("the explanation after [EXPLANATION]: is empty")
    if len(line) > 300:
        raise ValueError("the explanation is longer than 300 characters")
    return line


DETECTION_SYSTEM = (
    "You are a careful linguistics researcher. You will get an explanation of a text feature, such as "
    "\"male pronouns\" or \"text with negative sentiment\", and some numbered text examples. Decide for "
    "each example whether it has the feature.\n\nAnswer with a Python list with one number per example, in "
    "order: 1 if the example has the feature, 0 if not. Write nothing but the list.")

FUZZING_SYSTEM = (
    "You are a careful linguistics researcher. You will get an explanation of a text feature, such as "
    "\"male pronouns\" or \"text with negative sentiment\", and some numbered text examples in which "
    "some tokens are marked between << and >>. Some markings are wrong. An example is correct only if every "
    "marked token is an instance of the feature.\n\nAnswer with a Python list with one number per example, "
    "in order: 1 if the marking is correct, 0 if not. Write nothing but the list.")

# Worked examples for the classifier prompts; the first n are shown when n examples are asked
# about, so the worked answer has as many entries as the real one should (small models copy
# the worked answer's length).
_FEW_DETECTION = [("The cat slept on the warm sofa.", 1), ("Interest rates rose again this year.", 0),
                  ("A horse and a goat shared the barn.", 1), ("Please close the door quietly.", 0),
                  ("The old dog barked at the mailman.", 1), ("Tax forms are due in April.", 0),
                  ("Two sparrows sat on the fence.", 1), ("He paid the bill in cash.", 0)]
_FEW_FUZZING = [("The <<cat>> slept on the warm sofa.", 1), ("Interest <<rates>> rose again this year.", 0),
                ("A <<horse>> and a <<goat>> shared the barn.", 1), ("Please <<close>> the door quietly.", 0),
                ("The old <<dog>> barked at the mailman.", 1), ("Tax forms are <<due>> in April.", 0),
                ("Two <<sparrows>> sat on the fence.", 1), ("He <<paid>> the bill in cash.", 0)]


def _classifier_turn(explanation: str, texts: Sequence[str]) -> str:
    examples = "\n".join(f"Example {i}: {t}" for i, t in enumerate(texts))
    return f"Latent explanation: {explanation}\n\nTest examples:\n\n{examples}\n"


def _list_text(bits: Sequence[int]) -> str:
    return "[" + ",".join(str(int(b)) for b in bits) + "]"


def _classifier_messages(system: str, pool: list[tuple[str, int]], explanation: str,
                         texts: Sequence[str]) -> list[dict[str, str]]:
    few = [pool[i % len(pool)] for i in range(max(1, min(len(texts), len(pool))))]
    return [{"role": "system", "content": system},
            {"role": "user", "content": _classifier_turn(f"{_FEW_EXPLANATION[0].upper()}{_FEW_EXPLANATION[1:]}.",
                                                         [t for t, _ in few])},
            {"role": "assistant", "content": _list_text([b for _, b in few])},
            {"role": "user", "content": _classifier_turn(explanation, texts)}]


def detection_messages(explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """Delphi's detection prompt: which examples fit the explanation, as a list of 0/1.

    One worked example with as many items as ``texts`` (at most 8), then the real question.
    """
    return _classifier_messages(DETECTION_SYSTEM, _FEW_DETECTION, explanation, texts)


def fuzzing_messages(explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """Delphi's fuzzing prompt: is each example's << >> marking correct, as a list of 0/1."""
    return _classifier_messages(FUZZING_SYSTEM, _FEW_FUZZING, explanation, texts)


_LIST = re.compile(r"\[([^\[\]]*)\]")


def parse_binary_list(text: str, n: int) -> list[int]:
    """The first ``[...]`` in a reply holding exactly ``n`` entries, each 0 or 1."""
    problems = []
    for m in _LIST.finditer(text):
        items = [s.strip().strip("'\"") for s in m.group(1).split(",")]
        if items == [""]:
            items = []
        if len(items) != n:
            problems.append(f"a list of {len(items)} entries where {n} were asked for")
            continue
        if all(s in ("0", "1") for s in items):
            return [int(s) for s in items]
        problems.append(f"entries other than 0 and 1 ({m.group(0)[:60]})")
    if problems:
        raise ValueError(problems[0])
    raise ValueError(f"no list in the reply: answer with a Python list of {n} numbers, each 0 or 1")


SIMULATION_SYSTEM = (
    "We study neurons in a neural network. Each neuron looks for one particular thing in a short text. "
    "Read the explanation of what the neuron does and predict its activation on each token.\n\n"
    "Each line is token<tab>activation, with activations from 0 to 10; most activations are 0. You will see "
    "the tokens of a sequence with the activations left blank. Repeat the same tokens, in the same order, "
    "one per line, with the activations filled in.")


def _sim_lines(tokens: Sequence[str], acts: Sequence[int] | None = None) -> str:
    if acts is None:
        return "".join(f"{_clean(t)}\t{EOL}\n" for t in tokens)
    return "".join(f"{_clean(t)}\t{a}{EOL}\n" for t, a in zip(tokens, acts, strict=True))


def _sim_turn(index: int, explanation: str, tokens: Sequence[str]) -> str:
    return (f"Neuron {index}\nExplanation of neuron {index} behavior: {EXPLANATION_PREFIX} {explanation.strip()}\n\n"
            f"Sequence 1 Tokens without Activations:\n{_sim_lines(tokens)}\n\nSequence 1 Tokens with Activations:\n")


def simulation_messages(explanation: str, tokens: Sequence[str]) -> list[dict[str, str]]:
    """The logprob-free all-at-once simulation prompt of Bills et al. (one worked example)."""
    few = normalize_activations(_FEW_ACTS, float(_FEW_ACTS.max()))
    return [{"role": "system", "content": SIMULATION_SYSTEM},
            {"role": "user", "content": _sim_turn(1, _FEW_EXPLANATION, _FEW_TOKENS)},
            {"role": "assistant", "content": _sim_lines(_FEW_TOKENS, few)},
            {"role": "user", "content": _sim_turn(2, explanation, tokens)}]


def parse_simulation(text: str, tokens: Sequence[str]) -> list[float]:
    """Predicted activations, one per token, from ``token<tab>activation`` lines.

    The lines must repeat the tokens in order (compared without surrounding spaces). As in
    Bills et al.'s parser, an activation that is not a number from 0 to 10 counts as 0.
    """
    want = [_clean(t).strip() for t in tokens]
    lines = [ln for ln in text.replace(EOL, "\n").split("\n") if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.rsplit("\t", 1)[0].strip() == want[0]), None) if want else 0
    if start is None:
        raise ValueError(f"the reply does not repeat the first token {want[0]!r} followed by a tab and a number")
    lines = lines[start : start + len(want)]
    if len(lines) != len(want):
        raise ValueError(f"the reply has {len(lines)} token lines where {len(want)} were asked for")
    out = []
    for i, (ln, w) in enumerate(zip(lines, want, strict=True)):
        tok, sep, val = ln.rpartition("\t")
        if not sep:
            tok, _, val = ln.strip().rpartition(" ")
        if tok.strip() != w:
            raise ValueError(f"line {i + 1} is {ln.strip()[:40]!r}, expected the token {w!r} and its activation")
        try:
            v = float(val.strip())
        except ValueError:
            v = 0.0
        out.append(v if 0.0 <= v <= 10.0 else 0.0)
    return out


def sasc_messages(explanation: str, n: int, fit: bool) -> list[dict[str, str]]:
    """SASC's generation prompt (Singh et al. 2023, template 0): sentences that do / do not contain the concept."""
    neg = "" if fit else "do not "
    return [{"role": "user", "content": f'Generate {n} sentences that {neg}contain the concept of "{explanation}". '
                                        f"Write them as a numbered list, one sentence per line.\n\n1."}]


_NUMBERED = re.compile(r"^\s*(?:\d+\s*[.)]\s*)?(.*\S)\s*$")


def parse_numbered_list(text: str, min_items: int = 3) -> list[str]:
    """Items of a numbered list (``1. ...`` lines; the first item may lack its number), duplicates dropped."""
    items: list[str] = []
    for ln in text.split("\n"):
        if not ln.strip():
            continue
        is_numbered = re.match(r"^\s*\d+\s*[.)]", ln) is not None
        if not is_numbered and (items or ln.rstrip().endswith(":")):
            continue  # prose after the list, or a preamble such as "Here are ten sentences:"
        m = _NUMBERED.match(ln)
        s = m.group(1).strip().strip('"').strip() if m else ""
        if len(s) > 2 and s not in items:
            items.append(s)
    if len(items) < min_items:
        raise ValueError(f"the reply has {len(items)} usable numbered sentences, at least {min_items} are needed")
    return items


# -- explanations and their store ----------------------------------------------------------------------------
@dataclass
class Explanation:
    """One explanation of one unit, with the prompt and reply it came from and its scores."""

    unit: tuple[str, int]
    text: str
    method: str
    score: dict[str, Score] = field(default_factory=dict)
    source_windows: list[int] = field(default_factory=list)
    prompt: list[dict[str, str]] = field(default_factory=list)
    raw: str = ""
    client: str = ""
    prompt_hash: str = ""
    sample: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    cached: bool = field(default=False, compare=False)  # reused from an ExplanationStore (not saved)

    @property
    def id(self) -> str:
        """A key over what determines the reply: unit, method, client, prompt, sample and generation settings."""
        blob = json.dumps([self.unit[0], self.unit[1], self.method, self.client, self.prompt_hash, self.sample,
                           self.params.get("temperature"), self.params.get("max_tokens"), self.params.get("seed")],
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "site": self.unit[0], "unit": int(self.unit[1]), "text": self.text, "method": self.method,
                "score": {k: s.to_dict() for k, s in self.score.items()}, "source_windows": [int(w) for w in self.source_windows],
                "prompt": self.prompt, "raw": self.raw, "client": self.client, "prompt_hash": self.prompt_hash,
                "sample": self.sample, "params": _jsonable(self.params), "created": self.created}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Explanation:
        return cls((str(d["site"]), int(d["unit"])), str(d["text"]), str(d["method"]),
                   {k: Score.from_dict(v) for k, v in (d.get("score") or {}).items()},
                   [int(w) for w in d.get("source_windows", [])], list(d.get("prompt", [])), str(d.get("raw", "")),
                   str(d.get("client", "")), str(d.get("prompt_hash", "")), int(d.get("sample", 0)),
                   dict(d.get("params") or {}), str(d.get("created", "")))

    def __repr__(self) -> str:
        scores = ", ".join(f"{k}={s.value:.3f}" for k, s in self.score.items())
        return f"Explanation({self.unit[0]}[{self.unit[1]}] {self.method}: {self.text!r}{'; ' + scores if scores else ''})"

    def _repr_html_(self) -> str:
        e = html.escape
        rows = "".join(f"<tr><td>{e(k)}</td><td>{s.value:.3f}</td><td>[{s.lo:.3f}, {s.hi:.3f}]</td><td>{s.n}</td></tr>"
                       for k, s in self.score.items())
        table = f"<table><tr><th>score</th><th>value</th><th>95% CI</th><th>n</th></tr>{rows}</table>" if rows else ""
        return (f"<div><b>{e(self.unit[0])}[{self.unit[1]}]</b> ({e(self.method)}, {e(self.client)}): "
                f"<i>{e(self.text)}</i>{table}</div>")


class ExplanationStoreError(ValueError):
    """An explanations file that cannot be read (with the path and the reason)."""


EXPLANATIONS_FORMAT = "interp-workbench/explanations"
EXPLANATIONS_VERSION = 1


class ExplanationStore:
    """Explanations and their scores in one JSON file, keyed by (site, unit); several per unit.

    ``ExplanationStore.for_store(store)`` uses ``store.path / "explanations.json"``. Writes are
    atomic (a temporary file, then a rename); a corrupt file raises `ExplanationStoreError`.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._items: dict[str, Explanation] = {}
        if self.path.exists():
            self._load()

    @classmethod
    def for_store(cls, store: Any) -> ExplanationStore:
        return cls(Path(store.path) / "explanations.json")

    def _load(self) -> None:
        p = self.path
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExplanationStoreError(f"{p} is corrupt (not valid JSON: {e}); move it away to start a new file") from None
        except OSError as e:
            raise ExplanationStoreError(f"{p} cannot be read: {e}") from None
        if not isinstance(data, dict) or data.get("format") != EXPLANATIONS_FORMAT:
            raise ExplanationStoreError(f"{p} is not an explanations file (format "
                                        f"{data.get('format') if isinstance(data, dict) else None!r})")
        if data.get("version") != EXPLANATIONS_VERSION:
            raise ExplanationStoreError(f"{p}: version {data.get('version')!r} is not supported "
                                        f"(this workbench reads {EXPLANATIONS_VERSION})")
        items = data.get("explanations")
        if not isinstance(items, list):
            raise ExplanationStoreError(f"{p} has no list of explanations: the file is corrupt")
        for i, d in enumerate(items):
            try:
                ex = Explanation.from_dict(d)
            except (KeyError, TypeError, ValueError) as e:
                raise ExplanationStoreError(f"{p}: explanation {i} is malformed ({type(e).__name__}: {e})") from None
            self._items[ex.id] = ex

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": EXPLANATIONS_FORMAT, "version": EXPLANATIONS_VERSION,
                "explanations": [ex.to_dict() for ex in self._items.values()]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, allow_nan=False, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def add(self, ex: Explanation, save: bool = True) -> None:
        """Add (or replace, by `Explanation.id`) an explanation."""
        self._items[ex.id] = ex
        if save:
            self.save()

    def find(self, ex_id: str) -> Explanation | None:
        return self._items.get(ex_id)

    def get(self, site: str, unit: int, method: str | None = None) -> list[Explanation]:
        return [ex for ex in self._items.values()
                if ex.unit == (site, int(unit)) and (method is None or ex.method == method)]

    def __iter__(self):
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def to_pandas(self):
        """One row per explanation: site, unit, method, text, client, and each score with its interval."""
        import pandas as pd

        rows = []
        for ex in self._items.values():
            row = {"site": ex.unit[0], "unit": ex.unit[1], "method": ex.method, "sample": ex.sample, "text": ex.text,
                   "client": ex.client, "n_source": len(ex.source_windows), "created": ex.created, "id": ex.id}
            for k, s in ex.score.items():
                row[k], row[f"{k}_lo"], row[f"{k}_hi"] = s.value, s.lo, s.hi
            rows.append(row)
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"ExplanationStore({str(self.path)!r}, {len(self)} explanations)"

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{ex._repr_html_()}</li>" for ex in list(self._items.values())[:50])
        return f"<div><b>ExplanationStore</b> {html.escape(str(self.path))} ({len(self)})<ul>{items}</ul></div>"


def _explanation_store(store: Any, explanations: Any) -> ExplanationStore | None:
    if explanations is None or explanations is False:
        return None
    if isinstance(explanations, ExplanationStore):
        return explanations
    if isinstance(explanations, str) and explanations == "auto":
        return ExplanationStore.for_store(store)
    if isinstance(explanations, (str, os.PathLike)):
        return ExplanationStore(explanations)
    raise TypeError("explanations must be 'auto', None, a path or an ExplanationStore")


def _client(client: Any) -> ChatClient:
    if isinstance(client, ChatClient):
        return client
    return llm_client(client)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- explain ------------------------------------------------------------------------------------------------
def explain(store: Any, site: str | int, unit: int, client: Any = None, n: int = 1, method: str | Sequence[str] = "openai", *,
            n_top: int = 6, n_quantile: int = 2, crop: tuple[int, int] | None = (12, 4), mark_frac: float = 0.5,
            temperature: float | None = None, max_tokens: int = 48, attempts: int = 3, seed: int = 0,
            explanations: Any = "auto", reuse: bool = True) -> list[Explanation]:
    """Explain a unit from its exemplars: ``n`` explanations per method (``"openai"``, ``"delphi"`` or both).

    The exemplars are `holdout_split`'s explanation windows (``n_top`` top windows at even
    ranks, ``n_quantile`` windows across the sample's quantiles), each cropped to ``crop``
    tokens (before, after) around its maximum. ``temperature``: 0 for one explanation, 0.7
    for several unless given; sample ``i`` uses ``seed + i``. Results are added to
    ``explanations`` (``"auto"``: the store's ``explanations.json``; None: kept nowhere) and,
    with ``reuse``, an explanation already there for the same prompt and client is returned
    instead of asking again (its ``cached`` flag set).
    """
    key, u = _key_unit(store, site, unit)
    methods = [method] if isinstance(method, str) else list(method)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"method must be one of {METHODS} (or a list of them), not {method!r}")
    if n < 1:
        raise ValueError("n must be at least 1")
    split = holdout_split(store, key, u, n_top=n_top, n_quantile=n_quantile)
    if not split.explain:
        raise ValueError(f"{key}[{u}] has no exemplars to explain from (n_top={n_top}, n_quantile={n_quantile}, "
                         f"{len(store.top(key, u))} top windows in the store)")
    records = unit_records(store, key, u, split.explain, crop)
    records = [r for r in records if len(r.tokens)]
    if not records:
        raise ValueError(f"{key}[{u}]: the exemplar windows have no tokens after the skipped first position")
    llm = _client(client)
    es = _explanation_store(store, explanations)
    temp = float(temperature) if temperature is not None else (0.0 if n == 1 else 0.7)
    out: list[Explanation] = []
    for m in methods:
        if m == "openai":
            msgs, parse = openai_explain_messages(records), parse_openai_explanation
        else:
            msgs, parse = delphi_explain_messages(records, mark_frac), parse_delphi_explanation
        params = {"temperature": temp, "max_tokens": int(max_tokens), "n_top": n_top, "n_quantile": n_quantile,
                  "crop": list(crop) if crop else None, "mark_frac": mark_frac}
        for i in range(n):
            ex = Explanation((key, u), "", m, {}, [r.window for r in records], msgs, "", llm.spec, _hash(msgs), i,
                             {**params, "seed": seed + i}, _now())
            if es is not None and reuse:
                old = es.find(ex.id)
                if old is not None:
                    old.cached = True
                    out.append(old)
                    continue
            text, resp = retry_parse(llm, msgs, parse, attempts, max_tokens=int(max_tokens), temperature=temp, seed=seed + i)
            ex.text, ex.raw = text, resp.text
            if es is not None:
                es.add(ex)
            out.append(ex)
    return out


# -- score ---------------------------------------------------------------------------------------------------
def _ask_all(llm: ChatClient, prompts: list[list[dict[str, str]]], parses: list[Callable[[str], Any]], attempts: int,
             on_error: str, **kw: Any) -> list[Any]:
    """First attempts through ``llm.map``; malformed replies re-asked with the error; None for a skipped failure."""
    if not prompts:
        return []
    first = llm.map(prompts, progress=False, **kw)
    out: list[Any] = []
    for msgs, parse, resp in zip(prompts, parses, first, strict=True):
        try:
            out.append(parse(resp.text))
            continue
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            err, text = str(exc) or type(exc).__name__, resp.text
        try:
            if attempts <= 1:
                raise LLMError(f"the model's reply could not be parsed after 1 attempt(s) ({err[:300]}); "
                               f"last reply: {text[:500]!r}", raw=text)
            more = msgs + [{"role": "assistant", "content": text},
                           {"role": "user", "content": REASK.format(error=err[:300])}]
            value, _ = retry_parse(llm, more, parse, attempts - 1, **kw)
            out.append(value)
        except LLMError:
            if on_error == "raise":
                raise
            out.append(None)
    return out


def _classify(llm: ChatClient, explanation: str, items: list[tuple[str, int]], build: Callable, per_prompt: int,
              attempts: int, on_error: str, max_tokens: int, seed: int) -> tuple[list[int], list[int], int]:
    """Ask about items (text, label) ``per_prompt`` at a time; returns (labels, predictions, failed prompts)."""
    batches = [items[i : i + per_prompt] for i in range(0, len(items), per_prompt)]
    prompts = [build(explanation, [t for t, _ in b]) for b in batches]
    parses = [functools.partial(_parse_bits, n=len(b)) for b in batches]
    answers = _ask_all(llm, prompts, parses, attempts, on_error, max_tokens=max_tokens, temperature=0.0, seed=seed,
                       stop=["]"])
    labels, preds, failed = [], [], 0
    for b, a in zip(batches, answers, strict=True):
        if a is None:
            failed += 1
            continue
        labels += [lab for _, lab in b]
        preds += a
    return labels, preds, failed


def _parse_bits(text: str, n: int) -> list[int]:
    """`parse_binary_list` of a reply cut at the stop string "]" (which back ends drop)."""
    i = text.find("[")
    if i >= 0 and "]" not in text[i:]:
        text = text + "]"
    return parse_binary_list(text, n)


def _text(r: Record) -> str:
    return "".join(_clean(t) for t in r.tokens)


def score(store: Any, site: str | int, unit: int, explanation: Explanation | str,
          methods: str | Sequence[str] = SCORERS, client: Any = None, *, n_positive: int = 10, n_negative: int = 10,
          active_frac: float = 0.5, per_prompt: int = 5, crop: tuple[int, int] | None = (24, 8),
          sim_crop: tuple[int, int] | None = (12, 4), mark_frac: float = 0.5, n_sasc: int = 10, n_boot: int = 1000,
          seed: int = 0, attempts: int = 3, on_error: str = "raise", max_tokens: int | None = None,
          explanations: Any = "auto", reuse: bool = True) -> dict[str, Score]:
    """Score an explanation of a unit on held-out windows; returns (and stores) the scores.

    ``methods``: any of ``"detection"``, ``"fuzzing"``, ``"simulation"``, ``"sasc"`` (see the
    module docstring). Held-out windows come from `holdout_split` with the explanation's
    own ``n_top``/``n_quantile``, minus its ``source_windows`` (a plain string explanation
    excludes the default explanation windows). ``crop``: tokens shown around each window's
    maximum for detection and fuzzing, ``sim_crop`` for simulation. ``on_error``: ``"raise"``
    (an unparsable reply after ``attempts`` raises `LLMError`) or ``"skip"`` (that prompt is
    left out and counted in ``details["failed"]``). With ``reuse``, a score already on the
    explanation with the same settings is returned without asking again.
    """
    key, u = _key_unit(store, site, unit)
    meths = [methods] if isinstance(methods, str) else list(methods)
    bad = [m for m in meths if m not in SCORERS]
    if bad or not meths:
        raise ValueError(f"methods must be among {SCORERS}, not {methods!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    if per_prompt < 1 or n_sasc < 2:
        raise ValueError("per_prompt must be >= 1 and n_sasc >= 2")
    if isinstance(explanation, str):
        text = explanation.strip()
        ex: Explanation | None = None
        p = {}
    elif isinstance(explanation, Explanation):
        if explanation.unit != (key, u):
            raise ValueError(f"the explanation is of {explanation.unit[0]}[{explanation.unit[1]}], not {key}[{u}]")
        text, ex, p = explanation.text.strip(), explanation, explanation.params
    else:
        raise TypeError(f"explanation must be an Explanation or a string, not {type(explanation).__name__}")
    if not text:
        raise ValueError("the explanation is empty")
    split = holdout_split(store, key, u, n_top=p.get("n_top", 6), n_quantile=p.get("n_quantile", 2),
                          n_positive=n_positive, n_negative=n_negative, active_frac=active_frac)
    split = split.without(ex.source_windows if ex is not None else split.explain)
    llm = _client(client)
    es = _explanation_store(store, explanations)
    settings = {"n_positive": n_positive, "n_negative": n_negative, "active_frac": active_frac, "per_prompt": per_prompt,
                "crop": list(crop) if crop else None, "sim_crop": list(sim_crop) if sim_crop else None,
                "mark_frac": mark_frac, "n_sasc": n_sasc, "n_boot": n_boot, "seed": seed, "client": llm.spec,
                "max_tokens": max_tokens, "text": text}
    results: dict[str, Score] = {}
    for m in meths:
        rng = np.random.default_rng([seed, SCORERS.index(m)])  # each scorer's draws independent of the others
        sh = _hash({**settings, "method": m})
        if ex is not None and reuse:
            old = {k: s for k, s in ex.score.items() if k.split("_")[0] == m and s.details.get("settings") == sh}
            if old:
                results.update(old)
                continue
        if m == "detection":
            new = _score_detection(store, key, u, llm, text, split, crop, per_prompt, attempts, on_error,
                                   max_tokens or 8 + 3 * per_prompt, n_boot, seed, rng)
        elif m == "fuzzing":
            new = _score_fuzzing(store, key, u, llm, text, split, crop, mark_frac, per_prompt, attempts, on_error,
                                 max_tokens or 8 + 3 * per_prompt, n_boot, seed, rng)
        elif m == "simulation":
            new = _score_simulation(store, key, u, llm, text, split, sim_crop, attempts, on_error, max_tokens, n_boot, seed)
        else:
            new = _score_sasc(store, key, u, llm, text, n_sasc, attempts, on_error, max_tokens or 40 * n_sasc, n_boot, seed)
        for s in new.values():
            s.details["settings"] = sh
        results.update(new)
    if ex is not None:
        ex.score.update(results)
        if es is not None:
            es.add(ex)
    return results


def _score_detection(store, key, u, llm, text, split, crop, per_prompt, attempts, on_error, max_tokens, n_boot, seed, rng):
    if not split.positive or not split.negative:
        raise ValueError(f"detection needs held-out activating and non-activating windows; {key}[{u}] has "
                         f"{len(split.positive)} and {len(split.negative)} (scan more text or lower active_frac)")
    pos = unit_records(store, key, u, split.positive, crop)
    neg = unit_records(store, key, u, split.negative, crop)
    items = [(_text(r), 1) for r in pos] + [(_text(r), 0) for r in neg]
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    labels, preds, failed = _classify(llm, text, items, detection_messages, per_prompt, attempts, on_error, max_tokens, seed)
    return classification_scores("detection", labels, preds, n_boot=n_boot, seed=seed,
                                 details={"failed": failed, "windows": split.positive + split.negative})


def _score_fuzzing(store, key, u, llm, text, split, crop, mark_frac, per_prompt, attempts, on_error, max_tokens, n_boot,
                   seed, rng):
    if not split.positive:
        raise ValueError(f"fuzzing needs held-out activating windows; {key}[{u}] has none")
    items: list[tuple[str, int]] = []
    used = []
    for r in unit_records(store, key, u, split.positive, crop):
        if not r.max > 0:
            continue
        real = r.acts > mark_frac * r.max
        others = np.nonzero(~real)[0]
        k = int(real.sum())
        if len(others) < k:
            continue
        fake = np.zeros(len(r.acts), bool)
        fake[rng.choice(others, size=k, replace=False)] = True
        items.append((highlight(r.tokens, real.astype(np.float32), 0.5), 1))
        items.append((highlight(r.tokens, fake.astype(np.float32), 0.5), 0))
        used.append(r.window)
    if not items:
        raise ValueError(f"fuzzing: no held-out window of {key}[{u}] has room for a random marking")
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    labels, preds, failed = _classify(llm, text, items, fuzzing_messages, per_prompt, attempts, on_error, max_tokens, seed)
    out = classification_scores("fuzzing", labels, preds, n_boot=n_boot, seed=seed,
                                details={"failed": failed, "windows": used})
    return {"fuzzing": out["fuzzing"]}


def _score_simulation(store, key, u, llm, text, split, sim_crop, attempts, on_error, max_tokens, n_boot, seed):
    recs = [r for r in unit_records(store, key, u, split.positive + split.negative, sim_crop) if len(r.tokens)]
    if not recs:
        raise ValueError(f"simulation needs held-out windows; {key}[{u}] has none")
    prompts = [simulation_messages(text, r.tokens) for r in recs]
    parses = [lambda s, toks=r.tokens: parse_simulation(s, toks) for r in recs]
    mt = max_tokens or max(64, 8 * max(len(r.tokens) for r in recs))
    answers = _ask_all(llm, prompts, parses, attempts, on_error, max_tokens=mt, temperature=0.0, seed=seed)
    true, pred, wins = [], [], []
    for r, a in zip(recs, answers, strict=True):
        if a is not None:
            true.append(r.acts)
            pred.append(np.asarray(a))
            wins.append(r.window)
    return {"simulation": correlation_score("simulation", true, pred, n_boot=n_boot, seed=seed,
                                            details={"failed": len(recs) - len(true), "windows": wins})}


def _score_sasc(store, key, u, llm, text, n, attempts, on_error, max_tokens, n_boot, seed):
    got = _ask_all(llm, [sasc_messages(text, n, True), sasc_messages(text, n, False)],
                   [parse_numbered_list, parse_numbered_list], attempts, on_error, max_tokens=max_tokens,
                   temperature=0.0, seed=seed)
    fit, unfit = [g[:n] if g is not None else [] for g in got]
    if not fit or not unfit:
        nan = Score("sasc", math.nan, math.nan, math.nan, 0, {"failed": 2 - sum(g is not None for g in got)})
        return {"sasc": nan, "sasc_auroc": Score("sasc_auroc", math.nan, math.nan, math.nan, 0, dict(nan.details))}
    acts = text_max_activations(store, key, u, fit + unfit)
    pos, neg = acts[: len(fit)], acts[len(fit):]
    keep_p, keep_n = np.isfinite(pos), np.isfinite(neg)
    std = float(store.unit_stats(key, u)["std"])
    return sasc_scores(pos[keep_p], neg[keep_n], std, n_boot=n_boot, seed=seed,
                       details={"failed": 0, "fit": [t for t, k in zip(fit, keep_p, strict=True) if k],
                                "unfit": [t for t, k in zip(unfit, keep_n, strict=True) if k]})


# -- many units -------------------------------------------------------------------------------------------------
def explain_units(store: Any, units: Sequence[tuple[str | int, int]], client: Any = None, *,
                  method: str | Sequence[str] = "openai", n: int = 1, scorers: Sequence[str] = ("detection",),
                  progress: bool = True, explain_kw: dict | None = None, score_kw: dict | None = None):
    """Explain and score many units; one row per explanation (a pandas DataFrame) with timings."""
    import time

    import pandas as pd
    from tqdm.auto import tqdm

    llm = _client(client)
    rows = []
    for site, unit in tqdm(list(units), desc="explain", disable=not progress):
        t0 = time.perf_counter()
        exs = explain(store, site, unit, llm, n, method, **(explain_kw or {}))
        t1 = time.perf_counter()
        for ex in exs:
            scores = score(store, site, unit, ex, scorers, llm, **(score_kw or {})) if scorers else {}
            row = {"site": ex.unit[0], "unit": ex.unit[1], "method": ex.method, "sample": ex.sample, "text": ex.text,
                   "cached": ex.cached, "explain_s": (t1 - t0) / len(exs)}
            for k, s in scores.items():
                row[k], row[f"{k}_lo"], row[f"{k}_hi"] = s.value, s.lo, s.hi
                if "failed" in s.details:
                    row[f"{k.split('_')[0]}_failed"] = s.details["failed"]
            row["total_s"] = time.perf_counter() - t0
            rows.append(row)
    return pd.DataFrame(rows)
