"""Text corpora for dataset-scale analyses: what a scan, a probe or an SAE trainer reads.

A corpus is anything that yields texts: a list of strings, a pandas Series, a path (or list
of paths) to ``.txt`` files or folders of them, an iterable of strings, or an iterable of
dicts with a ``"text"`` field (a Hugging Face dataset works when you have one).

The default corpus, `default_corpus`, is real English prose that ships with Python
itself: the reference-manual topics of `pydoc_data.topics` (the text ``help("assert")``
shows), about 460 KB from the Python documentation (PSF license), split into passages of
a few paragraphs. It needs no download.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _reflow(paragraph: str) -> str:
    """Join the hard-wrapped lines of a prose paragraph; keep indented code blocks as they are."""
    lines = paragraph.split("\n")
    if all(line.startswith((" ", "\t")) for line in lines if line.strip()):
        return paragraph
    return " ".join(line.strip() for line in lines)


def default_corpus(max_passages: int | None = None, target_chars: int = 600) -> list[str]:
    """Python's reference-manual topics (`pydoc_data.topics`) split into passages.

    Each topic is cut at blank lines into paragraphs (prose is reflowed, code kept
    verbatim, reStructuredText underlines dropped); consecutive paragraphs are joined
    until a passage reaches about ``target_chars`` characters. Deterministic: the same
    Python version gives the same passages, in topic order.
    """
    from pydoc_data.topics import topics

    passages: list[str] = []
    for key in sorted(topics):
        paras = []
        for para in re.split(r"\n\s*\n", topics[key]):
            lines = [ln for ln in para.strip("\n").split("\n") if not re.fullmatch(r"\s*([*=\-~^])\1{2,}\s*", ln)]
            text = _reflow("\n".join(lines)).rstrip()
            if text.strip():
                paras.append(text)
        cur: list[str] = []
        for p in paras:
            cur.append(p)
            if sum(len(x) for x in cur) >= target_chars:
                passages.append("\n\n".join(cur))
                cur = []
        if cur:
            passages.append("\n\n".join(cur))
    return passages[:max_passages] if max_passages is not None else passages


def _text_of(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and "text" in item:
        return str(item["text"])
    raise TypeError(f"a corpus yields strings (or dicts with a 'text' field), not {type(item).__name__}")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*.txt") if p.is_file())
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"corpus path {path} does not exist")


def iter_texts(corpus: Any = None) -> Iterator[str]:
    """Yield the texts of a corpus (see the module docstring for what counts as one)."""
    if corpus is None:
        yield from default_corpus()
        return
    if isinstance(corpus, str | Path) and (isinstance(corpus, Path) or "\n" not in corpus and len(corpus) < 4096):
        path = Path(corpus)
        if path.exists() or isinstance(corpus, Path) or corpus.endswith(".txt"):
            for f in _files(path):
                yield f.read_text(encoding="utf-8", errors="replace")
            return
        raise TypeError(f"corpus {corpus!r} is a single string that is not a path: pass a list of texts")
    if isinstance(corpus, str):
        raise TypeError("a corpus is a list of texts, not one string: wrap it as [text]")
    if hasattr(corpus, "to_list") and hasattr(corpus, "dtype"):  # pandas Series
        corpus = corpus.to_list()
    if not isinstance(corpus, Iterable):
        raise TypeError(f"a corpus is an iterable of texts, not {type(corpus).__name__}")
    for item in corpus:
        if isinstance(item, Path):
            for f in _files(item):
                yield f.read_text(encoding="utf-8", errors="replace")
        else:
            yield _text_of(item)


def corpus_name(corpus: Any) -> str:
    """A short human description of a corpus (stored in scan metadata)."""
    if corpus is None:
        return "pydoc_data.topics (Python reference manual)"
    if isinstance(corpus, str | Path):
        return f"files: {corpus}"
    name = getattr(corpus, "name", None) or getattr(getattr(corpus, "info", None), "dataset_name", None)
    n = len(corpus) if hasattr(corpus, "__len__") else None
    return f"{name or type(corpus).__name__}" + (f" ({n} texts)" if n is not None else "")


class Fingerprint:
    """A running SHA-256 over token ids: proves a resumed scan reads the same windows."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, ids: Sequence[int]) -> None:
        self._h.update(len(ids).to_bytes(4, "little") + np.asarray(ids, dtype=np.int64).tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


DATA = Path(__file__).resolve().parents[1] / "data"


def language_sets() -> dict[str, list[str]]:
    """``{"english": [...], "french": [...]}``: 24 short parallel sentences per language, shipped with the
    package (``workbench/data/languages.json``) for contrasting languages without a download."""
    import json

    raw = json.loads((DATA / "languages.json").read_text(encoding="utf-8"))
    return {k: list(v) for k, v in raw.items() if isinstance(v, list)}
