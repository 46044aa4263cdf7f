"""`OpenAIClient`: any OpenAI-compatible ``/v1/chat/completions`` endpoint, standard library only.

Retries (exponential backoff with jitter on connection errors, timeouts, 429 and 5xx;
``Retry-After`` respected) and a concurrency limit. The API key comes from ``api_key=``, the
``OPENAI_API_KEY`` environment variable or ``~/.config/interp-workbench/llm.json``; it is never
shown in ``repr``, error messages, ``to_dict()`` or the cache, and is read again at each request
unless given explicitly.

Keys are scoped to hosts: the environment variable goes only to https://api.openai.com and to the
hosts listed in ``$WORKBENCH_LLM_KEY_HOSTS``; a config file's ``"api_keys"`` entries only to their
own host, its global ``"api_key"`` only to its ``"base_url"`` (default https://api.openai.com).
Redirects are not followed (the key would go with them), and plain ``http://`` to a host that is
not loopback is refused unless ``allow_insecure_http=True``.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from .base import ChatClient, ChatResponse, Messages, estimate_prompt_tokens, estimate_tokens
from .errors import LLMError

__all__ = ["DEFAULT_OPENAI_URL", "KEY_HOSTS_ENV", "OpenAIClient", "default_config_path"]

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
#: Environment variable listing the hosts (``host``, ``host:port`` or ``https://host``, comma-separated)
#: that may receive the API key from the environment, besides https://api.openai.com.
KEY_HOSTS_ENV = "WORKBENCH_LLM_KEY_HOSTS"
_DEFAULT_KEY_HOSTS = ("https://api.openai.com",)


def default_config_path() -> Path:
    """``~/.config/interp-workbench/llm.json`` (``$XDG_CONFIG_HOME`` respected)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "interp-workbench" / "llm.json"


class _Secret:
    """Holds a credential; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        """The credential itself (only for the request headers)."""
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
    host = (urllib.parse.urlsplit(url).hostname or "").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # not "127.example.com"
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, the port filled in from the scheme."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower().rstrip("."), port or (443 if scheme == "https" else 80)


def _host_matches(entry: str, url: str) -> bool:
    """Whether a key entry (a URL, ``host`` or ``host:port``) names the host of ``url``.

    A URL entry must match scheme, host and port; a bare host matches any port unless it names one.
    """
    entry = entry.strip()
    if not entry:
        return False
    scheme, host, port = _origin(url)
    if "://" in entry:
        return _origin(entry) == (scheme, host, port)
    parts = urllib.parse.urlsplit("//" + entry)
    try:
        want_port = parts.port
    except ValueError:
        return False
    return bool(parts.hostname) and (parts.hostname or "").lower().rstrip(".") == host and (
        want_port is None or want_port == port)


def _env_key_hosts() -> list[str]:
    extra = os.environ.get(KEY_HOSTS_ENV, "")
    return [*_DEFAULT_KEY_HOSTS, *(h for h in re.split(r"[,\s]+", extra) if h)]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would send the Authorization header to the new host."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


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

    Keys stay with their host: the environment variable is sent only to https://api.openai.com and
    the hosts in ``$WORKBENCH_LLM_KEY_HOSTS`` (``host``, ``host:port`` or a URL, comma-separated);
    ``"api_keys"`` entries (a base URL or ``host[:port]``) only to that host; the config file's
    global ``"api_key"`` only to its ``"base_url"`` (default https://api.openai.com). ``api_key=``
    goes to this client's own host. Plain ``http://`` to a host other than loopback raises `LLMError`
    before connecting unless ``allow_insecure_http=True``. Redirects are not followed.
    """

    kind = "openai"

    def __init__(self, base_url: str = DEFAULT_OPENAI_URL, model: str = "gpt-4o-mini", *,
                 api_key: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 config_path: str | os.PathLike[str] | None = None, timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 0.5, max_backoff: float = 30.0, concurrency: int = 4,
                 cache: Any = True, extra_body: Mapping[str, Any] | None = None,
                 allow_insecure_http: bool = False):
        super().__init__(model, cache=cache, concurrency=concurrency)
        if not model or not isinstance(model, str):
            raise ValueError("model must be a non-empty model name")
        if int(max_retries) < 0 or float(timeout) <= 0 or float(backoff) < 0:
            raise ValueError("max_retries must be >= 0, timeout > 0 and backoff >= 0")
        self.url = _endpoint(base_url)
        self.base_url = base_url.strip().rstrip("/")
        self._display_url = _redact_url(self.url)
        self.allow_insecure_http = bool(allow_insecure_http)
        self._check_transport()
        self.api_key_env = api_key_env
        self.config_path = Path(config_path) if config_path is not None else None
        self._key = _Secret(api_key) if api_key else None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.extra_body = dict(extra_body or {})
        self._slots = threading.BoundedSemaphore(self.concurrency)
        handlers: list[Any] = [_NoRedirect()]
        if _is_loopback(self.url):
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def _check_transport(self) -> None:
        """Refuse plain http to a host that is not loopback, unless the user opted in."""
        if urllib.parse.urlsplit(self.url).scheme == "http" and not _is_loopback(self.url) \
                and not self.allow_insecure_http:
            raise LLMError(f"refusing plain http:// to {self._display_url}: the host is not loopback, so the "
                           "prompts and any API key would travel unencrypted. Use https://, or pass "
                           "allow_insecure_http=True to OpenAIClient / llm_client if you accept that.",
                           url=self._display_url)

    def _cache_kind(self) -> str:
        return f"openai:{self._display_url}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description (the base URL without credentials; never the key)."""
        d: dict[str, Any] = {"kind": self.kind, "model": self.model_name, "base_url": _redact_url(self.base_url)}
        if self.allow_insecure_http:
            d["allow_insecure_http"] = True
        return d

    @property
    def spec(self) -> str:
        """The `llm_client` spec string: ``openai:<model>@<base_url>``."""
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

    def _env_key(self) -> str | None:
        return (os.environ.get(self.api_key_env) or None) if self.api_key_env else None

    def _resolve_key(self) -> str | None:
        """The key for this client's host, or None: a key never goes to a host it was not configured for."""
        if self._key is not None:
            return self._key.get()
        env = self._env_key()
        if env and any(_host_matches(h, self.url) for h in _env_key_hosts()):
            return env
        cfg = self._config()
        keys = cfg.get("api_keys")
        if isinstance(keys, dict):
            for entry in sorted(keys, key=lambda e: "://" not in str(e)):  # full URLs before bare hosts
                key = keys[entry]
                if isinstance(entry, str) and isinstance(key, str) and key and _host_matches(entry, self.url):
                    return key
        key = cfg.get("api_key")
        home = cfg.get("base_url") if isinstance(cfg.get("base_url"), str) and cfg.get("base_url") else DEFAULT_OPENAI_URL
        if isinstance(key, str) and key and _host_matches(home, self.url):
            return key
        return None

    def _withheld_hint(self) -> str:
        """Why no key was sent, where a key exists but belongs to another host."""
        try:
            if self._key is not None or self._resolve_key() is not None:
                return ""
            cfg_key = self._config().get("api_key")
        except (LLMError, ValueError):
            return ""
        _, host, port = _origin(self.url)
        if self._env_key():
            return (f"; no key was sent: ${self.api_key_env} goes only to https://api.openai.com and the hosts in "
                    f"${KEY_HOSTS_ENV} (add {host}:{port} there), or give api_key=")
        if isinstance(cfg_key, str) and cfg_key:
            return (f"; no key was sent: the config file's \"api_key\" belongs to its \"base_url\"; add "
                    f"\"{host}:{port}\" under \"api_keys\"")
        return ""

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
                        hint = ""
                        if status in (401, 403):
                            hint = " (check the API key" + self._withheld_hint() + ")"
                        elif 300 <= status < 400:
                            hint = " (redirects are not followed, so that the key stays with this host)"
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
        self._check_transport()
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
            pt = estimate_prompt_tokens(messages)
        if not isinstance(ct, int):
            ct = estimate_tokens(content)
        return ChatResponse(text=content, prompt_tokens=pt, completion_tokens=ct, cached=False,
                            model=str(data.get("model") or self.model_name),
                            finish_reason=str(choices[0].get("finish_reason") or ""), estimated=estimated)


def _is_certificate_error(reason: Any) -> bool:
    import ssl

    return isinstance(reason, ssl.SSLCertVerificationError)
