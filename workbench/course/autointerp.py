"""Exercises of ``09_autointerp.ipynb``: what an explainer sees, a detection score, an executable hypothesis."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from ._feedback import Wrong, attempt, expect_close
from ._registry import exercise

_SEED = 9


def _floats(value: Any, what: str) -> list[float]:
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise Wrong(f"{what} should be a list of numbers, got {type(value).__name__} ({exc})") from exc


# -- 09.normalize --------------------------------------------------------------------------------------------
_EDGE_CASES = [  # (activations, max): negatives, above the maximum, exactly at a step, a unit that never fires
    ([-1.5, 0.0, 0.25, 0.99, 1.0, 2.5], 1.0),
    ([0.3, 0.6, 0.9], 0.9),
    ([-0.2, 0.4], 0.0),
]


@exercise("09.normalize", "scale activations to the explainer's integers 0-10 (Bills et al.)")
def check_normalize(answer: Any, records: Any = None) -> str:
    """``answer(acts, max_activation) -> list[int]``; compared with `normalize_activations` on the records and edge cases.

    ``records``: `Record` objects (the explainer's windows, `unit_records`); their common maximum
    is the scale, as in the explanation prompt.
    """
    from workbench.autointerp import normalize_activations

    cases: list[tuple[list[float], float, str]] = []
    recs = list(records or [])
    if recs:
        mx = max([max(0.0, float(np.max(r.acts))) for r in recs if len(r.acts)] + [0.0])
        cases += [([float(a) for a in r.acts], mx, f"window {r.window}") for r in recs]
    cases += [(acts, mx, f"acts={acts}, max_activation={mx}") for acts, mx in _EDGE_CASES]
    for acts, mx, where in cases:
        ref = normalize_activations(acts, mx)
        got = attempt(answer, np.asarray(acts, np.float64), mx, what="your normalize")
        vals = _floats(got, "your normalized activations")
        if len(vals) != len(ref):
            raise Wrong(f"on {where}: {len(vals)} values for {len(ref)} activations")
        if any(v != int(v) for v in vals if math.isfinite(v)) or not all(math.isfinite(v) for v in vals):
            raise Wrong(f"on {where}: the explainer sees whole numbers 0-10, got {vals[:6]}...")
        bad = [i for i, (g, r) in enumerate(zip(vals, ref, strict=True)) if int(g) != r]
        if bad:
            i = bad[0]
            hints = []
            if acts[i] < 0 and vals[i] < 0:
                hints.append("negative activations count as 0 (relu first)")
            elif mx > 0 and acts[i] > mx and vals[i] > 10:
                hints.append("values above the maximum are capped at 10")
            elif mx > 0 and int(vals[i]) == round(10 * acts[i] / mx):
                hints.append("round down (floor), do not round to nearest")
            elif not mx > 0:
                hints.append("when the maximum is not positive every value is 0")
            hint = "; " + "; ".join(hints) if hints else ". The rule is min(10, floor(10 * relu(a) / max))"
            raise Wrong(f"on {where}: activation {acts[i]:.4g} should become {ref[i]}, got {int(vals[i])} "
                        f"({len(bad)} of {len(ref)} values off){hint}")
    n = sum(len(a) for a, _, _ in cases)
    return (f"your scaling matches normalize_activations on {len(recs)} explainer window(s) and "
            f"{len(_EDGE_CASES)} edge cases ({n} activations)")


# -- 09.detection_score --------------------------------------------------------------------------------------
def _labels_from_counts(details: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    tp, fp, fn, tn = (int(details[k]) for k in ("tp", "fp", "fn", "tn"))
    y = np.array([1] * tp + [0] * fp + [1] * fn + [0] * tn, bool)
    p = np.array([1] * tp + [1] * fp + [0] * fn + [0] * tn, bool)
    return y, p


def _detection_cases(score: Any) -> list[tuple[np.ndarray, np.ndarray, str]]:
    rng = np.random.default_rng(_SEED)
    cases = []
    if score is not None:
        details = getattr(score, "details", None) or {}
        if not all(k in details for k in ("tp", "fp", "fn", "tn")):
            raise Wrong("score=... should be a detection Score from wb.score (its details hold tp, fp, fn, tn)")
        y, p = _labels_from_counts(details)
        if y.any() and (~y).any():
            cases.append((y, p, "the notebook's detection run"))
    for n_pos, n_neg, hit, false_alarm in ((30, 10, 0.8, 0.5), (6, 24, 0.5, 0.1), (12, 12, 0.9, 0.3)):
        y = np.array([1] * n_pos + [0] * n_neg, bool)
        p = np.where(y, rng.random(len(y)) < hit, rng.random(len(y)) < false_alarm)
        cases.append((y, p, f"{n_pos} activating and {n_neg} non-activating windows"))
    return cases


@exercise("09.detection_score", "a detection score: balanced accuracy and F1 of a scorer's yes/no answers")
def check_detection_score(answer: Any, score: Any = None) -> str:
    """``answer(labels, preds) -> (balanced_accuracy, f1)`` on 0/1 arrays; compared with `classification_scores`.

    ``score``: a detection `Score` from `wb.score` (its counts are one of the cases); the
    other cases are seeded and unbalanced, where balanced and plain accuracy differ.
    """
    from workbench.autointerp import classification_scores

    cases = _detection_cases(score)
    for y, p, where in cases:
        ref = classification_scores("detection", y, p, n_boot=1)
        want = (ref["detection"].value, ref["detection_f1"].value)
        got = attempt(answer, y.astype(int), p.astype(int), what="your detection_score")
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise Wrong(f"return two numbers (balanced_accuracy, f1), got {got!r:.80}")
        vals = _floats(got, "your (balanced_accuracy, f1)")
        try:
            expect_close(vals, list(want), what=f"your (balanced_accuracy, f1) on {where}", atol=1e-6, rtol=1e-6)
        except Wrong as exc:
            hints = []
            if math.isclose(vals[0], float((y == p).mean()), abs_tol=1e-9) and not math.isclose(
                    vals[0], want[0], abs_tol=1e-9):
                hints.append("that is plain accuracy: balanced accuracy averages the hit rate on activating "
                             "windows and the correct-rejection rate on the others")
            tp = int((y & p).sum())
            if tp + int((p & ~y).sum()) and math.isclose(vals[1], tp / int(p.sum()), abs_tol=1e-9) and not \
                    math.isclose(vals[1], want[1], abs_tol=1e-9):
                hints.append("your F1 is the precision; F1 = 2 tp / (2 tp + fp + fn)")
            raise Wrong(str(exc) + ("; " + "; ".join(hints) if hints else "")) from None
    return (f"your balanced accuracy and F1 match classification_scores on {len(cases)} sets of answers"
            + (f" (the notebook's run: {score.value:.3f})" if score is not None else ""))


# -- 09.hypothesis -------------------------------------------------------------------------------------------
def top_token(store: Any, site: str | int, unit: int, frac: float = 0.5) -> tuple[str, float]:
    """The token most often at the maximum of a unit's strong top windows (maximum at least ``frac`` of the
    unit's), and the fraction of those windows where it is."""
    top = store.top(site, unit)
    if not top:
        raise Wrong(f"{site}[{unit}] has no top windows in the store")
    strong = [(v, w, p) for v, w, p in top if v >= frac * top[0][0]] or top[:1]
    tok = store.require_model().tokenizer
    counts = Counter(tok.decode([int(store.window_tokens(w)[p])]) for _, w, p in strong)
    t, c = counts.most_common(1)[0]
    return t, c / len(strong)


@exercise("09.hypothesis", "an executable hypothesis that predicts where a unit fires (F1 on every scanned token)")
def check_hypothesis(answer: Any, store: Any, site: str | int, unit: int, min_f1: float = 0.7) -> str:
    """``answer(tokens, i) -> bool``; scored with `test_hypothesis` over every token of the scan (F1 >= ``min_f1``)."""
    from workbench.neurons.hypotheses import Hypothesis, test_hypothesis

    if not callable(answer):
        raise Wrong(f"your hypothesis should be a function (tokens, i) -> bool, got {type(answer).__name__}")

    def fn(tokens: list[str], i: int) -> Any:
        return attempt(answer, tokens, i, what="your hypothesis")

    try:
        r = test_hypothesis(store, site, unit, Hypothesis(fn, "yours"), max_counterexamples=3, progress=False)
    except Wrong:
        raise
    except (TypeError, ValueError) as exc:  # e.g. a return value that is not a bool or a number
        raise Wrong(str(exc)) from exc
    f1 = r.f1 if math.isfinite(r.f1) else 0.0
    active, predicted = r.tp + r.fn, r.tp + r.fp
    said = (f"F1 {f1:.3f} (precision {r.precision:.3f}, recall {r.recall:.3f}; {predicted} tokens predicted, "
            f"{active} active above {r.threshold:.3g}, of {r.n_tokens})")
    if f1 >= min_f1:
        return f"{said} on {r.site}[{r.unit}]"
    tok, frac = top_token(store, site, unit)
    if r.tp == 0:
        hint = ("your predicate " + ("never fires" if predicted == 0 else "never fires on an active token")
                + f". Tokens carry their leading space: the unit's top token is {tok!r} (at the maximum of "
                f"{100 * frac:.0f}% of its strong top windows)")
    elif r.precision < 0.5:
        hint = (f"too broad: most tokens you predict are not active (e.g. {r.false_positives[0].context!r}). "
                f"The unit's top token is {tok!r}" if r.false_positives else "too broad")
    else:
        hint = (f"too narrow: you miss active tokens (e.g. {r.false_negatives[0].context!r})"
                if r.false_negatives else "too narrow")
    raise Wrong(f"{said}; at least {min_f1} needed: {hint}")
