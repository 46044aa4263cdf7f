"""Scoring an explanation on held-out windows: `score` (detection, fuzzing, simulation, SASC).

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
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..llm import REASK, ChatClient, LLMError, llm_client, retry_parse
from .parsing import parse_binary_list, parse_numbered_list, parse_simulation
from .prompts import (
    detection_messages,
    fuzzing_messages,
    highlight,
    sasc_messages,
    simulation_messages,
)
from .records import (
    Record,
    clean_token,
    holdout_split,
    text_max_activations,
    unit_key,
    unit_records,
)
from .scores import Score, classification_scores, correlation_score, sasc_scores
from .store import Explanation, content_hash, open_explanations

__all__ = ["SCORERS", "score"]

SCORERS = ("detection", "fuzzing", "simulation", "sasc")


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
    return "".join(clean_token(t) for t in r.tokens)


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
    key, u = unit_key(store, site, unit)
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
    llm = llm_client(client)
    es = open_explanations(store, explanations)
    settings = {"n_positive": n_positive, "n_negative": n_negative, "active_frac": active_frac, "per_prompt": per_prompt,
                "crop": list(crop) if crop else None, "sim_crop": list(sim_crop) if sim_crop else None,
                "mark_frac": mark_frac, "n_sasc": n_sasc, "n_boot": n_boot, "seed": seed, "client": llm.spec,
                "max_tokens": max_tokens, "text": text}
    results: dict[str, Score] = {}
    for m in meths:
        rng = np.random.default_rng([seed, SCORERS.index(m)])  # each scorer's draws independent of the others
        sh = content_hash({**settings, "method": m})
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
