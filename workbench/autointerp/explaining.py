"""Explaining a unit from its exemplars with an LLM: `explain` and, for many units, `explain_units`.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ..llm import llm_client, retry_parse
from .parsing import parse_delphi_explanation, parse_openai_explanation
from .prompts import delphi_explain_messages, openai_explain_messages
from .records import holdout_split, unit_key, unit_records
from .scoring import score
from .store import Explanation, content_hash, open_explanations

__all__ = ["METHODS", "explain", "explain_units"]

METHODS = ("openai", "delphi")


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
    key, u = unit_key(store, site, unit)
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
    llm = llm_client(client)
    es = open_explanations(store, explanations)
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
            ex = Explanation((key, u), "", m, {}, [r.window for r in records], msgs, "", llm.spec, content_hash(msgs), i,
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


def explain_units(store: Any, units: Sequence[tuple[str | int, int]], client: Any = None, *,
                  method: str | Sequence[str] = "openai", n: int = 1, scorers: Sequence[str] = ("detection",),
                  progress: bool = True, explain_kw: dict | None = None, score_kw: dict | None = None):
    """Explain and score many units; one row per explanation (a pandas DataFrame) with timings."""
    import time

    import pandas as pd
    from tqdm.auto import tqdm

    llm = llm_client(client)
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
