"""The chat interface every back end implements: `ChatClient` (chat, map, usage, cache) and `ChatResponse`.

A back end subclasses `ChatClient` and implements ``_complete`` (one uncached request) and sets
``kind``; `ChatClient.chat` validates the request, consults the `ResponseCache` and counts usage.
"""

from __future__ import annotations

import html
import math
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from .cache import ResponseCache, make_cache

__all__ = ["ChatClient", "ChatResponse", "Messages", "check_messages", "estimate_prompt_tokens", "estimate_tokens"]

Messages = list[dict[str, str]]

_ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True)
class ChatResponse:
    """One chat completion: the reply text, token counts, and whether it came from the cache."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    model: str
    finish_reason: str = ""
    #: True where the server gave no ``usage`` and the token counts are estimates.
    estimated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _repr_html_(self) -> str:
        tag = " (cached)" if self.cached else ""
        return (f"<div><b>{html.escape(self.model)}</b>{html.escape(tag)}: "
                f"{self.prompt_tokens} prompt + {self.completion_tokens} completion tokens"
                f"<pre style='white-space:pre-wrap'>{html.escape(self.text)}</pre></div>")


def estimate_tokens(text: str) -> int:
    """A rough token count (about 4 characters a token) for servers that report no ``usage``."""
    return math.ceil(len(text) / 4) if text else 0


def estimate_prompt_tokens(messages: Messages) -> int:
    """A rough prompt token count: each message's `estimate_tokens` plus the chat format's overhead."""
    return sum(estimate_tokens(m.get("content") or "") + 4 for m in messages) + 2


def check_messages(messages: Any) -> Messages:
    """The messages as plain ``{"role", "content"}`` dicts; TypeError/ValueError saying what is wrong."""
    if isinstance(messages, str):
        raise TypeError("messages must be a list of {'role', 'content'} dicts, not a string "
                        "(wrap it: [{'role': 'user', 'content': text}])")
    if not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in _ROLES:
            raise ValueError(f"message {i} has unknown role {m['role']!r}: use one of {_ROLES}")
        if not isinstance(m["content"], str):
            raise TypeError(f"message {i} content must be a string, got {type(m['content']).__name__}")
        out.append({"role": str(m["role"]), "content": m["content"]})
    return out


def _stop_list(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stops


class _Dropped(Exception):
    """A `ChatClient.map` request not sent because an earlier one failed (never reaches the caller:
    the failure, earlier in input order, is raised first)."""


class ChatClient:
    """Base class: `chat`, `map`, `usage`. Back ends implement ``_complete`` (and ``kind``)."""

    kind = "base"

    def __init__(self, model: str, *, cache: Any = True, concurrency: int = 1):
        if int(concurrency) < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.model_name = model
        self.concurrency = int(concurrency)
        self.cache = make_cache(cache)
        self._usage_lock = threading.Lock()
        self._usage = self._zero_usage()

    # back ends implement these
    def _complete(self, messages: Messages, *, max_tokens: int, temperature: float, seed: int | None,
                  stop: list[str]) -> ChatResponse:
        raise NotImplementedError

    def _cache_kind(self) -> str:
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description (no credentials) that `llm_client` accepts back."""
        return {"kind": self.kind, "model": self.model_name}

    @property
    def spec(self) -> str:
        """The `llm_client` spec string of this client."""
        return f"{self.kind}:{self.model_name}"

    # usage
    @staticmethod
    def _zero_usage() -> dict[str, int]:
        return {"requests": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0,
                "cached_prompt_tokens": 0, "cached_completion_tokens": 0, "retries": 0}

    @property
    def usage(self) -> dict[str, int]:
        """Counts since creation or `reset_usage`: ``requests`` made, ``cache_hits``, and tokens.

        ``prompt_tokens``/``completion_tokens`` count real requests only; tokens of replies served
        from the cache are in ``cached_prompt_tokens``/``cached_completion_tokens``; ``retries``
        counts repeated HTTP attempts.
        """
        with self._usage_lock:
            return dict(self._usage)

    def reset_usage(self) -> None:
        """Set every `usage` count back to zero."""
        with self._usage_lock:
            self._usage = self._zero_usage()

    def _count(self, **inc: int) -> None:
        with self._usage_lock:
            for k, v in inc.items():
                self._usage[k] += v

    # chat
    def chat(self, messages: Messages, *, max_tokens: int = 256, temperature: float = 0.0, seed: int | None = 0,
             stop: str | Sequence[str] | None = None, cache: bool = True) -> ChatResponse:
        """One chat completion. ``cache=False`` skips the cache for this call (the reply is still stored)."""
        msgs = check_messages(messages)
        if int(max_tokens) < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if not (0.0 <= float(temperature) <= 2.0):
            raise ValueError(f"temperature must be in [0, 2], got {temperature}")
        stops = _stop_list(stop)
        key = None
        if self.cache is not None:
            key = ResponseCache.key(self._cache_kind(), self.model_name, msgs, max_tokens, temperature, seed, stops)
            hit = self.cache.get(key) if cache else None
            if hit is not None:
                try:
                    resp = ChatResponse(text=str(hit["text"]), prompt_tokens=int(hit["prompt_tokens"]),
                                        completion_tokens=int(hit["completion_tokens"]), cached=True,
                                        model=str(hit.get("model", self.model_name)),
                                        finish_reason=str(hit.get("finish_reason", "")),
                                        estimated=bool(hit.get("estimated", False)))
                except (KeyError, TypeError, ValueError):
                    resp = None
                if resp is not None:
                    self._count(cache_hits=1, cached_prompt_tokens=resp.prompt_tokens,
                                cached_completion_tokens=resp.completion_tokens)
                    return resp
        resp = self._complete(msgs, max_tokens=int(max_tokens), temperature=float(temperature), seed=seed,
                              stop=stops)
        self._count(requests=1, prompt_tokens=resp.prompt_tokens, completion_tokens=resp.completion_tokens)
        if self.cache is not None and key is not None:
            value = resp.to_dict()
            value.pop("cached")
            self.cache.put(key, value)
        return resp

    def map(self, batch: Sequence[Messages], *, progress: bool = True, **kw: Any) -> list[ChatResponse]:
        """`chat` over many conversations, at most ``concurrency`` at a time; results in input order.

        The first error (in input order) is raised once the running requests have finished;
        requests not yet started are dropped.
        """
        from tqdm.auto import tqdm

        batch = list(batch)
        for i, msgs in enumerate(batch):
            try:
                check_messages(msgs)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"batch item {i}: {exc}") from None
        if not batch:
            return []
        bar = tqdm(total=len(batch), desc=f"{self.kind} chat", disable=not progress, leave=False)

        failed = threading.Event()  # set by the first failure: no worker starts a request after it

        def one(msgs: Messages) -> ChatResponse:
            if failed.is_set():
                raise _Dropped
            try:
                return self.chat(msgs, **kw)
            except BaseException:
                failed.set()
                raise
            finally:
                bar.update(1)

        try:
            if self.concurrency == 1 or len(batch) == 1:
                return [one(m) for m in batch]
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batch)),
                                    thread_name_prefix="llm-map") as pool:
                futures = [pool.submit(one, m) for m in batch]
                try:
                    return [f.result() for f in futures]
                except BaseException:
                    for f in futures:  # queued requests are not sent once one has failed
                        f.cancel()
                    raise
        finally:
            bar.close()

    def __repr__(self) -> str:
        cache = "off" if self.cache is None else str(self.cache.path)
        return f"{type(self).__name__}(model={self.model_name!r}, cache={cache!r})"

