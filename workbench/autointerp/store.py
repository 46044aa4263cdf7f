"""`Explanation` (one explanation of one unit, its prompt, reply and scores) and `ExplanationStore` (a JSON file)."""

from __future__ import annotations

import hashlib
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import WorkbenchError
from .scores import Score, jsonable

__all__ = ["EXPLANATIONS_FORMAT", "EXPLANATIONS_VERSION", "Explanation", "ExplanationStore", "ExplanationStoreError",
           "content_hash", "open_explanations"]


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
        """JSON-ready, with the scores and the prompt."""
        return {"id": self.id, "site": self.unit[0], "unit": int(self.unit[1]), "text": self.text, "method": self.method,
                "score": {k: s.to_dict() for k, s in self.score.items()}, "source_windows": [int(w) for w in self.source_windows],
                "prompt": self.prompt, "raw": self.raw, "client": self.client, "prompt_hash": self.prompt_hash,
                "sample": self.sample, "params": jsonable(self.params), "created": self.created}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Explanation:
        """The inverse of `to_dict`."""
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


class ExplanationStoreError(WorkbenchError, ValueError):
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
        """The store's ``explanations.json`` next to the scan."""
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
        """Write the file atomically (a temporary file, then a rename)."""
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
        """The explanation with this `Explanation.id`, or None."""
        return self._items.get(ex_id)

    def get(self, site: str, unit: int, method: str | None = None) -> list[Explanation]:
        """The explanations of one unit (of one method, if given)."""
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


def open_explanations(store: Any, explanations: Any) -> ExplanationStore | None:
    """The ``explanations=`` argument as a store: "auto" (next to the scan), None/False (none), a path or a store."""
    if explanations is None or explanations is False:
        return None
    if isinstance(explanations, ExplanationStore):
        return explanations
    if isinstance(explanations, str) and explanations == "auto":
        return ExplanationStore.for_store(store)
    if isinstance(explanations, (str, os.PathLike)):
        return ExplanationStore(explanations)
    raise TypeError("explanations must be 'auto', None, a path or an ExplanationStore")


def content_hash(obj: Any) -> str:
    """A short SHA-256 of ``obj`` as canonical JSON (prompts, settings)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
