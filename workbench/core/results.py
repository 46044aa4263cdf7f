"""Result objects: they carry tensors, convert to pandas, and render themselves in notebooks."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import torch

from .sites import Site


@dataclass(frozen=True)
class Token:
    """One token: its id, its text, and its exact character span in the prompt (end exclusive)."""

    id: int
    text: str
    start: int
    end: int


@dataclass
class TopK:
    """Top-k next-token predictions per prompt: probabilities, logits, ids and token texts."""

    probs: torch.Tensor  # [b, k]
    logits: torch.Tensor  # [b, k]
    ids: torch.Tensor  # [b, k]
    tokens: list[list[str]]

    def to_pandas(self):
        import pandas as pd

        rows = []
        for b, toks in enumerate(self.tokens):
            for r, t in enumerate(toks):
                rows.append({"prompt": b, "rank": r + 1, "token": t, "id": int(self.ids[b, r]),
                             "prob": float(self.probs[b, r]), "logit": float(self.logits[b, r])})
        return pd.DataFrame(rows)

    def as_rows(self, b: int = 0) -> list[dict[str, Any]]:
        """JSON-ready rows for one prompt (what widgets show)."""
        return [{"token": t, "id": int(self.ids[b, r]), "prob": float(self.probs[b, r]), "logit": float(self.logits[b, r])}
                for r, t in enumerate(self.tokens[b])]


class SiteDict(dict):
    """A dict keyed by canonical site names that also finds a site by any of its aliases.

    ``d["blocks.1.hook_resid_pre"]``, ``d["resid_pre.1"]`` and ``"blocks.1.hook_resid_pre" in d`` all
    work; keys, iteration and equality stay those of the plain dict of canonical names.
    """

    def _canon(self, key: Any) -> Any:
        if dict.__contains__(self, key) or not isinstance(key, str):
            return key
        try:
            return str(Site.parse(key))
        except Exception:  # not a site name: look it up as given
            return key

    def __getitem__(self, key: Any) -> Any:
        k = self._canon(key)
        if not dict.__contains__(self, k):
            raise KeyError(f"{key!r} was not captured; captured: {sorted(map(str, self))}. Pass capture=[{key!r}].")
        return dict.__getitem__(self, k)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, self._canon(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return dict.get(self, self._canon(key), default)

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, self._canon(key), value)

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, self._canon(key))

    def pop(self, key: Any, *default: Any) -> Any:
        return dict.pop(self, self._canon(key), *default)

    def copy(self) -> SiteDict:
        return SiteDict(self)

    def __reduce__(self) -> tuple:  # pickles (and torch.save) as a plain dict of canonical names
        return (dict, (dict(self),))


@dataclass
class RunResult:
    """What `Model.run` returns.

    ``tokens[b]`` are prompt b's tokens with spans; ``top`` the next-token top-k;
    ``logits`` the last-position logits ``[b, vocab]`` (or all positions ``[b, s, vocab]``
    with ``logits="all"``); ``activations[site]`` the captured tensors (batch first,
    right-padded; ``lengths[b]`` real tokens per prompt). ``result["neurons.3"]`` works too.
    """

    prompts: list[str]
    tokens: list[list[Token]]
    top: TopK
    logits: torch.Tensor | None
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    interventions: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.activations, SiteDict):  # look-ups by any alias of a site
            self.activations = SiteDict(self.activations)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    def __getitem__(self, site: str) -> torch.Tensor:
        from .arch import Site

        key = str(Site.parse(site))
        if key not in self.activations:
            raise KeyError(f"{key} was not captured; captured: {sorted(self.activations)}. Pass capture=[{key!r}].")
        return self.activations[key]

    def token_texts(self, b: int = 0) -> list[str]:
        return [t.text for t in self.tokens[b]]

    def to_pandas(self):
        """The top-k next-token table (one row per prompt and rank)."""
        return self.top.to_pandas()

    def _repr_html_(self) -> str:
        parts = []
        for b in range(len(self.prompts)):
            toks = "".join(f"<span style='border:1px solid #ddd;margin:1px;padding:0 2px'>{html.escape(t.text)}</span>"
                           for t in self.tokens[b])
            rows = "".join(f"<tr><td>{r + 1}</td><td><code>{html.escape(repr(t))}</code></td><td>{float(self.top.probs[b, r]):.3f}</td></tr>"
                           for r, t in enumerate(self.top.tokens[b]))
            parts.append(f"<div><div>{toks}</div><table><tr><th>#</th><th>next token</th><th>p</th></tr>{rows}</table></div>")
        ints = ", ".join(html.escape(s.describe()) for s in self.interventions) or "none"
        acts = ", ".join(html.escape(f"{k} {tuple(v.shape)}") for k, v in self.activations.items()) or "none"
        return f"<div><b>RunResult</b> — interventions: {ints}; activations: {acts}{''.join(parts)}</div>"


@dataclass
class GenerationResult:
    """What `Model.generate` returns: the prompt, the new tokens and their text."""

    prompt: str
    token_ids: list[int]
    text: str
    interventions: list[Any] = field(default_factory=list)

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame({"step": range(len(self.token_ids)), "id": self.token_ids})

    def _repr_html_(self) -> str:
        return f"<div><b>{html.escape(self.prompt)}</b>{html.escape(self.text)}</div>"
