"""Language-model back ends for explainers and judges: one small chat interface, two back ends.

    client = wb.llm_client()                                   # the embedded SmolLM2, in-process
    client = wb.llm_client("openai:gpt-4o-mini@https://api.openai.com/v1")
    r = client.chat([{"role": "user", "content": "Say hi"}], max_tokens=16)
    r.text, r.prompt_tokens, r.completion_tokens, r.cached
    client.map([msgs1, msgs2, ...])                            # concurrency-limited, order kept
    client.usage                                               # requests, cache hits, tokens

- `OpenAIClient` talks to any OpenAI-compatible ``/v1/chat/completions`` endpoint with the
  standard library only (``urllib``), with retries (exponential backoff with jitter on connection
  errors, timeouts, 429 and 5xx; ``Retry-After`` is respected) and a concurrency limit.
  The API key comes from ``api_key=``, the ``OPENAI_API_KEY`` environment variable or
  ``~/.config/interp-workbench/llm.json``; it is never shown in ``repr``, error messages,
  ``to_dict()`` or the cache, and is read again at each request unless given explicitly.
- `LocalChatClient` runs a Hugging Face chat model in-process (default: the embedded
  SmolLM2-135M-Instruct through `workbench.load()`), greedy unless ``temperature > 0``.
- Both cache replies on disk (SQLite, safe across threads and processes), keyed by a hash of
  (back end, model, messages, max_tokens, temperature, seed, stop): a rerun costs no request.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import math
import os
import random
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ChatClient", "ChatResponse", "LLMError", "LocalChatClient", "OpenAIClient", "ResponseCache",
    "default_cache_path", "default_config_path", "estimate_tokens", "llm_client", "parse_json_reply",
    "retry_parse",
]

T = TypeVar("T")
Messages = list[dict[str, str]]

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
_ROLES = ("system", "user", "assistant", "tool", "developer")


class LLMError(RuntimeError):
    """A chat request failed: unreachable endpoint, HTTP error, bad reply, or an unparsable answer.

    ``url`` (never with credentials), ``status`` (HTTP status or None) and ``raw`` (the last raw
    reply text, where there was one) say more.
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None,
                 raw: str | None = None):
        super().__init__(message)
        self.url = url
        self.status = status
        self.raw = raw


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


def _estimate_prompt(messages: Messages) -> int:
    return sum(estimate_tokens(m.get("content") or "") + 4 for m in messages) + 2


def _check_messages(messages: Any) -> Messages:
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


# -- cache --------------------------------------------------------------------------------------

def default_cache_path() -> Path:
    """``$WORKBENCH_CACHE/llm/responses.sqlite`` (default root ``~/.cache/interp-workbench``)."""
    from ..core.loading import cache_root

    return cache_root() / "llm" / "responses.sqlite"


def default_config_path() -> Path:
    """``~/.config/interp-workbench/llm.json`` (``$XDG_CONFIG_HOME`` respected)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "interp-workbench" / "llm.json"


class ResponseCache:
    """Chat replies on disk in SQLite (WAL), keyed by a SHA-256 of the request; thread- and process-safe.

    A path ending in ``.sqlite``/``.db`` is the file; any other path is a folder holding
    ``responses.sqlite``. Only the reply and its token counts are stored, never credentials.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None):
        p = Path(path) if path is not None else default_cache_path()
        if p.suffix not in (".sqlite", ".db", ".sqlite3"):
            p = p / "responses.sqlite"
        self.path = p
        self._local = threading.local()
        self._init_lock = threading.Lock()
        self._ready = False

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: no corruption, fewer fsyncs
            with self._init_lock:
                if not self._ready:
                    try:
                        conn.execute("PRAGMA journal_mode=WAL")
                    except sqlite3.OperationalError:  # pragma: no cover - e.g. a network file system
                        pass
                    conn.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, "
                                 "value TEXT NOT NULL, created REAL NOT NULL)")
                    self._ready = True
            self._local.conn = conn
        return conn

    @staticmethod
    def key(kind: str, model: str, messages: Messages, max_tokens: int, temperature: float, seed: int | None,
            stop: Sequence[str]) -> str:
        payload = json.dumps([kind, model, messages, int(max_tokens), float(temperature), seed, list(stop)],
                             sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            row = self._conn().execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise LLMError(f"the response cache {self.path} cannot be read ({exc}): delete it or pass "
                           "cache=None") from None
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            return None  # a damaged entry is a miss; the next put replaces it
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        data = json.dumps(value, ensure_ascii=False)
        for attempt in range(5):
            try:
                self._conn().execute("INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                                     (key, data, time.time()))
                return
            except sqlite3.OperationalError:  # "database is locked" beyond busy_timeout: try again
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def clear(self) -> None:
        self._conn().execute("DELETE FROM responses")


def _make_cache(cache: Any) -> ResponseCache | None:
    if cache is None or cache is False:
        return None
    if cache is True:
        return ResponseCache()
    if isinstance(cache, ResponseCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return ResponseCache(cache)
    raise TypeError(f"cache must be True (default location), None/False (off), a path or a ResponseCache, "
                    f"not {type(cache).__name__}")


# -- the interface --------------------------------------------------------------------------------

class ChatClient:
    """Base class: `chat`, `map`, `usage`. Back ends implement ``_complete`` (and ``kind``)."""

    kind = "base"

    def __init__(self, model: str, *, cache: Any = True, concurrency: int = 1):
        if int(concurrency) < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.model_name = model
        self.concurrency = int(concurrency)
        self.cache = _make_cache(cache)
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
        msgs = _check_messages(messages)
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
                _check_messages(msgs)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"batch item {i}: {exc}") from None
        if not batch:
            return []
        bar = tqdm(total=len(batch), desc=f"{self.kind} chat", disable=not progress, leave=False)

        def one(msgs: Messages) -> ChatResponse:
            try:
                return self.chat(msgs, **kw)
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


# -- OpenAI-compatible HTTP ------------------------------------------------------------------------

class _Secret:
    """Holds a credential; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("API keys are not serialized: give the key again, or use the environment variable "
                        "or the config file")


def _redact_url(url: str) -> str:
    """The URL without user info, query or fragment (where credentials may hide)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _endpoint(base_url: str) -> str:
    base = base_url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL like https://api.openai.com/v1, got {_redact_url(base)!r}")
    if base.endswith("/chat/completions"):
        return base
    if re.search(r"/v\d+[a-z]*$", parts.path):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


def _is_loopback(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIClient(ChatClient):
    """Any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...).

    ``base_url`` may be the server root, the ``/v1`` root or the full endpoint. The key: ``api_key``,
    else the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``), else ``"api_key"`` in
    the config file (``~/.config/interp-workbench/llm.json``, which may also map base URLs to keys
    under ``"api_keys"``); no key sends no ``Authorization`` header (local servers).
    ``timeout`` is per attempt; failed attempts (connection errors, timeouts, 429, 5xx, malformed
    replies) are retried ``max_retries`` times with exponential backoff from ``backoff`` seconds
    (with jitter, capped at ``max_backoff``; a ``Retry-After`` header sets the minimum wait).
    ``concurrency`` bounds simultaneous requests of this client, in `map` and across threads.
    """

    kind = "openai"

    def __init__(self, base_url: str = DEFAULT_OPENAI_URL, model: str = "gpt-4o-mini", *,
                 api_key: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 config_path: str | os.PathLike[str] | None = None, timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 0.5, max_backoff: float = 30.0, concurrency: int = 4,
                 cache: Any = True, extra_body: Mapping[str, Any] | None = None):
        super().__init__(model, cache=cache, concurrency=concurrency)
        if not model or not isinstance(model, str):
            raise ValueError("model must be a non-empty model name")
        if int(max_retries) < 0 or float(timeout) <= 0 or float(backoff) < 0:
            raise ValueError("max_retries must be >= 0, timeout > 0 and backoff >= 0")
        self.url = _endpoint(base_url)
        self.base_url = base_url.strip().rstrip("/")
        self._display_url = _redact_url(self.url)
        self.api_key_env = api_key_env
        self.config_path = Path(config_path) if config_path is not None else None
        self._key = _Secret(api_key) if api_key else None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.extra_body = dict(extra_body or {})
        self._slots = threading.BoundedSemaphore(self.concurrency)
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)

    def _cache_kind(self) -> str:
        return f"openai:{self._display_url}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model_name, "base_url": _redact_url(self.base_url)}

    @property
    def spec(self) -> str:
        return f"openai:{self.model_name}@{_redact_url(self.base_url)}"

    def __repr__(self) -> str:
        cache = "off" if self.cache is None else str(self.cache.path)
        return (f"OpenAIClient(base_url={_redact_url(self.base_url)!r}, model={self.model_name!r}, "
                f"key={'set' if self._has_key() else 'none'}, cache={cache!r})")

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("OpenAIClient is not pickled (it may hold an API key): use client.to_dict() "
                        "and wb.llm_client(...) to describe it")

    # key resolution, at request time so no copy outlives its use
    def _config(self) -> dict[str, Any]:
        path = self.config_path or default_config_path()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise LLMError(f"cannot read the LLM config file {path}: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise LLMError(f"the LLM config file {path} must hold a JSON object")
        return data

    def _resolve_key(self) -> str | None:
        if self._key is not None:
            return self._key.get()
        env = os.environ.get(self.api_key_env) if self.api_key_env else None
        if env:
            return env
        cfg = self._config()
        keys = cfg.get("api_keys")
        if isinstance(keys, dict):
            for base in (self.base_url, self.base_url.rstrip("/") + "/", _redact_url(self.base_url)):
                if isinstance(keys.get(base), str) and keys[base]:
                    return keys[base]
        key = cfg.get("api_key")
        return key if isinstance(key, str) and key else None

    def _has_key(self) -> bool:
        try:
            return self._resolve_key() is not None
        except LLMError:
            return False

    def _scrub(self, text: str) -> str:
        """Remove the key from text a server sent back (some echo part of a bad key)."""
        try:
            key = self._resolve_key()
        except LLMError:
            key = None
        if key:
            text = text.replace(key, "<key>")
            if len(key) > 12:  # servers often echo a prefix or suffix of it
                text = text.replace(key[:12], "<key>").replace(key[-8:], "<key>")
        return text

    # the request
    def _complete(self, messages: Messages, *, max_tokens: int, temperature: float, seed: int | None,
                  stop: list[str]) -> ChatResponse:
        body: dict[str, Any] = {"model": self.model_name, "messages": messages, "max_tokens": max_tokens,
                                "temperature": temperature, "stream": False}
        if seed is not None:
            body["seed"] = int(seed)
        if stop:
            body["stop"] = stop
        body.update(self.extra_body)
        data = json.dumps(body).encode("utf-8")
        last = "no attempt made"
        raw: str | None = None
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            with self._slots:
                try:
                    status, text = self._post(data)
                    text = self._scrub(text)
                except urllib.error.HTTPError as exc:
                    status, text = exc.code, self._scrub(self._read_error(exc))
                    if status in _RETRY_STATUS:
                        wait = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                        last = f"HTTP {status}: {self._server_message(text)}"
                    else:
                        hint = " (check the API key)" if status in (401, 403) else ""
                        raise LLMError(f"{self._display_url} answered HTTP {status}{hint}: "
                                       f"{self._server_message(text)}", url=self._display_url,
                                       status=status) from None
                except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                    reason = getattr(exc, "reason", exc)
                    if _is_certificate_error(reason):
                        raise LLMError(f"TLS certificate error for {self._display_url}: {reason}",
                                       url=self._display_url) from None
                    last = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
                else:
                    raw = text
                    try:
                        return self._parse(text, messages)
                    except ValueError as exc:
                        last = f"malformed reply ({exc})"
            if attempt == self.max_retries:
                break
            self._count(retries=1)
            delay = min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
            time.sleep(max(delay, wait or 0.0))
        raise LLMError(f"request to {self._display_url} failed after {self.max_retries + 1} attempt(s): "
                       f"{self._scrub(last)}", url=self._display_url,
                       raw=None if raw is None else raw[:2000])

    def _post(self, data: bytes) -> tuple[int, str]:
        req = urllib.request.Request(self.url, data=data, method="POST", headers=self._headers())
        with self._opener.open(req, timeout=self.timeout) as resp:
            return resp.status, resp.read().decode("utf-8", errors="replace")

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json",
             "User-Agent": "interp-workbench"}
        key = self._resolve_key()
        if key:
            h["Authorization"] = "Bearer " + key
        return h

    @staticmethod
    def _read_error(exc: urllib.error.HTTPError) -> str:
        try:
            return exc.read().decode("utf-8", errors="replace")
        except (OSError, ValueError):
            return ""

    def _server_message(self, text: str) -> str:
        msg = text.strip()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict) and err.get("message"):
                msg = str(err["message"])
            elif isinstance(err, str):
                msg = err
            elif data.get("detail"):
                msg = str(data["detail"])
        msg = self._scrub(msg)
        return (msg[:500] + "...") if len(msg) > 500 else (msg or "(empty body)")

    def _parse(self, text: str, messages: Messages) -> ChatResponse:
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError(f"not JSON: {text[:120]!r}") from None
        if not isinstance(data, dict):
            raise ValueError("the reply is not a JSON object")
        if "error" in data and "choices" not in data:
            err = data["error"]
            raise ValueError(str(err.get("message", err) if isinstance(err, dict) else err)[:300])
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ValueError("no 'choices' in the reply")
        msg = choices[0].get("message")
        if isinstance(msg, dict):
            content = msg.get("content")
        elif "text" in choices[0]:
            content = choices[0]["text"]
        else:
            raise ValueError("no 'message' in the first choice")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError("the message content is not a string")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        estimated = not (isinstance(pt, int) and isinstance(ct, int))
        if not isinstance(pt, int):
            pt = _estimate_prompt(messages)
        if not isinstance(ct, int):
            ct = estimate_tokens(content)
        return ChatResponse(text=content, prompt_tokens=pt, completion_tokens=ct, cached=False,
                            model=str(data.get("model") or self.model_name),
                            finish_reason=str(choices[0].get("finish_reason") or ""), estimated=estimated)


def _is_certificate_error(reason: Any) -> bool:
    import ssl

    return isinstance(reason, ssl.SSLCertVerificationError)


# -- local in-process model ------------------------------------------------------------------------



class LocalChatClient(ChatClient):
    """A Hugging Face chat model run in-process (default: the embedded SmolLM2-135M-Instruct).

    ``model``: None (the embedded model via `workbench.load()`, loaded on first use), a workbench
    `Model`, or a Hugging Face name/path. The tokenizer's chat template is applied (a plain
    ``role: content`` layout where it has none); decoding is greedy unless ``temperature > 0``,
    which samples with ``seed``. ``prompt_tokens`` is the templated prompt's length and
    ``completion_tokens`` the number of generated tokens (an end-of-turn token included).
    Requests run one at a time (a lock), so `map` from many threads is safe.
    """

    kind = "local"

    def __init__(self, model: Any = None, *, cache: Any = True, concurrency: int = 1, device: Any = None):
        from ..core.loading import EMBEDDED_NAME

        if not (model is None or isinstance(model, str) or hasattr(model, "hf")):
            raise TypeError(f"model must be None, a Hugging Face name/path or a workbench Model, "
                            f"not {type(model).__name__}")
        if getattr(model, "remote", False) is True:
            raise ValueError("LocalChatClient runs the model in-process: give a local model, not remote=True")
        self._model = None if model is None or isinstance(model, str) else model
        self._source = model if isinstance(model, str) else None
        self._device = device
        name = (self._source or EMBEDDED_NAME) if self._model is None else (
            getattr(self._model, "name", "") or type(self._model).__name__)
        super().__init__(name, cache=cache, concurrency=concurrency)
        self._lock = threading.RLock()

    @property
    def model(self) -> Any:
        """The workbench `Model` (loaded on first use)."""
        with self._lock:
            if self._model is None:
                from ..core.loading import load

                self._model = load(self._source, device=self._device)
            return self._model

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def _reload_name(self) -> str | None:
        """What `load()` takes to get this model again (None: the embedded one)."""
        from ..core.loading import EMBEDDED_NAME

        if self._source is not None:
            return self._source
        return None if self.model_name == EMBEDDED_NAME else self.model_name

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self._reload_name()}

    @property
    def spec(self) -> str:
        name = self._reload_name()
        return "local" if name is None else f"local:{name}"

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The token ids of the templated prompt (ending with the assistant turn's opening)."""
        msgs = _check_messages(messages)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, Mapping) or hasattr(ids, "keys"):  # a BatchEncoding
                ids = ids["input_ids"]
            if hasattr(ids, "tolist"):
                ids = ids.tolist()
            if ids and isinstance(ids[0], list):
                ids = ids[0]
            return [int(i) for i in ids]
        text = "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"
        return [int(i) for i in tok(text, add_special_tokens=True)["input_ids"]]

    def _complete(self, messages: Messages, *, max_tokens: int, temperature: float, seed: int | None,
                  stop: list[str]) -> ChatResponse:
        import torch

        with self._lock:
            wm = self.model
            tok = wm.tokenizer
            ids = self.prompt_ids(messages)
            hf = wm.hf
            device = next(hf.parameters()).device
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            eos = _eos_ids(tok, hf)
            kw: dict[str, Any] = dict(max_new_tokens=max_tokens, attention_mask=torch.ones_like(input_ids),
                                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
                                      eos_token_id=eos)
            if temperature > 0:
                kw.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            else:
                kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if stop:
                kw.update(stop_strings=stop, tokenizer=tok)
            model_lock = getattr(wm, "_lock", None) or threading.RLock()
            with model_lock, torch.inference_mode(), torch.random.fork_rng(devices=[]):
                if temperature > 0:
                    torch.manual_seed(0 if seed is None else int(seed))
                out = hf.generate(input_ids, **kw)
            new = out[0, len(ids):].tolist()
            finish = "length"
            if new and new[-1] in eos:
                finish = "stop"
            text = tok.decode([t for t in new if t not in eos], skip_special_tokens=True)
            for s in stop:
                cut = text.find(s)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            return ChatResponse(text=text, prompt_tokens=len(ids), completion_tokens=len(new), cached=False,
                                model=self.model_name, finish_reason=finish)


def _eos_ids(tok: Any, hf: Any) -> list[int]:
    ids: list[int] = []
    gen = getattr(hf, "generation_config", None)
    for v in (getattr(gen, "eos_token_id", None), tok.eos_token_id):
        if v is None:
            continue
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if int(i) not in ids:
                ids.append(int(i))
    for special in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
        if tid is not None and int(tid) not in ids:
            ids.append(int(tid))
    if not ids:
        raise ValueError("the tokenizer has no end-of-sequence token: cannot tell where a reply ends")
    return ids


# -- factory ------------------------------------------------------------------------------------------

def llm_client(spec: str | Mapping[str, Any] | ChatClient | None = None, **kwargs: Any) -> ChatClient:
    """A chat client from a spec.

    - ``None`` / ``"local"``: the embedded SmolLM2-135M-Instruct in-process;
      ``"local:<hf name or path>"``: another local chat model.
    - ``"openai:<model>@<base_url>"``: an OpenAI-compatible endpoint; ``"openai:<model>"`` uses
      ``$OPENAI_BASE_URL``, the config file's ``"base_url"`` or https://api.openai.com/v1.
    - a dict from ``client.to_dict()``; a `ChatClient` is returned as is.

    Keyword arguments go to the client (``cache=``, ``concurrency=``, ``api_key=``, ...).
    """
    if isinstance(spec, ChatClient):
        if kwargs:
            raise ValueError("keyword arguments cannot change an existing client")
        return spec
    if isinstance(spec, Mapping):
        d = dict(spec)
        kind = d.pop("kind", None)
        if kind == "local":
            return LocalChatClient(d.pop("model", None), **{**d, **kwargs})
        if kind == "openai":
            if "base_url" not in d or "model" not in d:
                raise ValueError("an openai client spec needs 'model' and 'base_url'")
            return OpenAIClient(d.pop("base_url"), d.pop("model"), **{**d, **kwargs})
        raise ValueError(f"unknown client kind {kind!r}: use 'local' or 'openai'")
    if spec is None or spec == "local":
        return LocalChatClient(None, **kwargs)
    if not isinstance(spec, str):
        raise TypeError(f"llm_client takes a spec string, dict or ChatClient, not {type(spec).__name__}")
    kind, _, rest = spec.partition(":")
    if kind == "local":
        return LocalChatClient(rest or None, **kwargs)
    if kind == "openai":
        m = re.fullmatch(r"(.*?)@(https?://.+)", rest)
        if m:
            model, base = m.group(1), m.group(2)
        else:
            model = rest
            base = os.environ.get("OPENAI_BASE_URL") or ""
            if not base:
                cfg_path = kwargs.get("config_path") or default_config_path()
                try:
                    cfg = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    cfg = {}
                base = (cfg.get("base_url") if isinstance(cfg, dict) else None) or DEFAULT_OPENAI_URL
        if not model:
            raise ValueError(f"spec {spec!r} names no model: use 'openai:<model>@<base_url>'")
        return OpenAIClient(base, model, **kwargs)
    raise ValueError(f"unknown LLM spec {spec!r}: use 'local', 'local:<hf name>' or 'openai:<model>@<base_url>'")


# -- parsing helpers for explainers -----------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _candidates(text: str) -> list[str]:
    out = [m.group(1) for m in _FENCE.finditer(text)]
    out.append(text)
    return out


def parse_json_reply(text: str, schema_keys: Sequence[str] | Mapping[str, type | tuple[type, ...]] = ()) -> dict:
    """The first JSON object in a model's reply that has all ``schema_keys``.

    Looks inside ```json fences first, then anywhere in the text; tolerates trailing commas and
    curly quotes. ``schema_keys`` may map keys to types, which are checked (an int passes as float).
    Raises ValueError saying what was wrong (no object, missing keys, wrong types).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, not {type(text).__name__}")
    types = dict(schema_keys) if isinstance(schema_keys, Mapping) else {k: None for k in schema_keys}
    decoder = json.JSONDecoder()
    seen_objects: list[dict] = []
    problems: list[str] = []
    for chunk in _candidates(text):
        variants = [chunk]
        fixed = _TRAILING_COMMA.sub(r"\1", chunk.replace("\u201c", '"').replace("\u201d", '"'))
        if fixed != chunk:
            variants.append(fixed)
        for body in variants:
            for start in [i for i, c in enumerate(body) if c == "{"]:
                try:
                    obj, _ = decoder.raw_decode(body, start)
                except ValueError:
                    continue
                if not isinstance(obj, dict):
                    continue
                seen_objects.append(obj)
                missing = [k for k in types if k not in obj]
                if missing:
                    problems.append(f"missing keys {missing}")
                    continue
                bad = [k for k, t in types.items() if t is not None and not _type_ok(obj[k], t)]
                if bad:
                    problems.append("wrong types for " + ", ".join(
                        f"{k!r} (got {type(obj[k]).__name__})" for k in bad))
                    continue
                return obj
    if not seen_objects:
        raise ValueError(f"no JSON object found in the reply: {text[:200]!r}")
    raise ValueError(f"no JSON object in the reply has the expected keys {list(types)}: {problems[0]}")


def _type_ok(value: Any, t: type | tuple[type, ...]) -> bool:
    ts = t if isinstance(t, tuple) else (t,)
    if float in ts and isinstance(value, int) and not isinstance(value, bool):
        return True
    if bool not in ts and isinstance(value, bool) and (int in ts or float in ts):
        return False
    return isinstance(value, ts)


REASK = ("Your previous reply could not be used: {error}. Answer again, following the requested "
         "format exactly and adding nothing else.")


def retry_parse(client: ChatClient, messages: Messages, parse: Callable[[str], T], attempts: int = 3,
                **chat_kw: Any) -> tuple[T, ChatResponse]:
    """Ask, parse the reply with ``parse``; on failure re-ask with the error; return (value, response).

    ``parse`` signals a malformed reply with ValueError, KeyError, TypeError or IndexError. Each re-ask
    appends the bad reply and a correction to the conversation (so it is a new request, not a cache
    hit). After ``attempts`` failures raises `LLMError` whose ``raw`` is the last reply.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    msgs = _check_messages(messages)
    last_text, last_err = "", ""
    for _ in range(attempts):
        resp = client.chat(msgs, **chat_kw)
        try:
            return parse(resp.text), resp
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            last_text, last_err = resp.text, str(exc) or type(exc).__name__
        msgs = msgs + [{"role": "assistant", "content": resp.text},
                       {"role": "user", "content": REASK.format(error=last_err[:300])}]
    raise LLMError(f"the model's reply could not be parsed after {attempts} attempt(s) ({last_err[:300]}); "
                   f"last reply: {last_text[:500]!r}", raw=last_text)
