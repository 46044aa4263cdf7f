"""What an explainer sees of a unit: `Record` windows with per-token activations, and `holdout_split`.

`unit_records` reruns a unit's windows through the store's model for per-token activations;
`holdout_split` separates the windows shown to the explainer from those held out for scoring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["HeldOut", "Record", "clean_token", "holdout_split", "text_max_activations", "unit_key", "unit_records"]


@dataclass
class Record:
    """One window (or a crop of it) as shown to an LLM: token texts and the unit's activations."""

    window: int
    tokens: list[str]
    acts: np.ndarray
    offset: int = 0  # position of tokens[0] in the window

    @property
    def max(self) -> float:
        """The largest activation (-inf for an empty record)."""
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


def clean_token(token: str) -> str:
    """A token's text on one line: newlines, carriage returns and tabs written as \\n, \\r, \\t."""
    return token.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def unit_key(store: Any, site: str | int, unit: int) -> tuple[str, int]:
    """The store key of ``site`` and the checked unit index (KeyError / IndexError naming what exists)."""
    key = store.site_key(site)
    return key, store.unit_index(key, unit)


def _first(store: Any) -> int:
    return 1 if store.meta.get("skip_first", True) else 0


def unit_records(store: Any, site: str | int, unit: int, windows: Sequence[int],
                 crop: tuple[int, int] | None = None) -> list[Record]:
    """Windows with the unit's activation on each token (rerun through the store's model).

    The first position is dropped where the scan skipped it; ``crop=(before, after)`` keeps
    that many tokens around each window's maximum.
    """
    key, u = unit_key(store, site, unit)
    windows = [int(w) for w in windows]
    if not windows:
        return []
    acts = store.unit_activations(key, u, windows)
    tok = store.require_model().tokenizer
    first = _first(store)
    out = []
    for w, a in zip(windows, acts, strict=True):
        toks = [tok.decode([i]) for i in store.window_tokens(w)]
        r = Record(w, toks[first:], np.asarray(a[first:], dtype=np.float32), first)
        out.append(r.crop(*crop) if crop is not None else r)
    return out


def text_max_activations(store: Any, site: str | int, unit: int, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
    """The unit's maximum activation over each text (first position skipped as in the scan)."""
    key, u = unit_key(store, site, unit)
    model = store.require_model()
    site_name = store.meta["sites"][key].get("site", key)
    transform = store.site_transform(key)
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


@dataclass
class HeldOut:
    """Windows of one unit: shown to the explainer, and held out for scoring (disjoint sets)."""

    explain: list[int]
    positive: list[int]
    negative: list[int]
    threshold: float  # a held-out sampled window is activating when its maximum is >= this

    def without(self, windows: Sequence[int]) -> HeldOut:
        """The same split with ``windows`` removed from the held-out sets."""
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
    key, u = unit_key(store, site, unit)
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
