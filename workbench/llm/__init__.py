"""Language-model back ends for explainers and judges: one small chat interface, two back ends.

    client = wb.llm_client()                                   # the embedded SmolLM2, in-process
    client = wb.llm_client("openai:gpt-4o-mini@https://api.openai.com/v1")
    r = client.chat([{"role": "user", "content": "Say hi"}], max_tokens=16)
    r.text, r.prompt_tokens, r.completion_tokens, r.cached
    client.map([msgs1, msgs2, ...])                            # concurrency-limited, order kept
    client.usage                                               # requests, cache hits, tokens

Modules: `base` (`ChatClient`, `ChatResponse`), `errors` (`LLMError`), `cache` (`ResponseCache`:
replies on disk in SQLite, keyed by a hash of back end, model, messages, max_tokens,
temperature, seed and stop, so a rerun costs no request), `openai` (`OpenAIClient`, HTTP with
retries; the API key never shown), `local` (`LocalChatClient`, a Hugging Face chat model
in-process, greedy unless ``temperature > 0``), `factory` (`llm_client`) and `parsing`
(`parse_json_reply`, `retry_parse`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import ChatClient, ChatResponse, estimate_tokens
from .cache import ResponseCache, default_cache_path
from .errors import LLMError
from .local import LocalChatClient
from .parsing import REASK, parse_json_reply, retry_parse

if TYPE_CHECKING:
    from .factory import llm_client
    from .openai import OpenAIClient, default_config_path

__all__ = [
    "ChatClient", "ChatResponse", "LLMError", "LocalChatClient", "OpenAIClient", "REASK", "ResponseCache",
    "default_cache_path", "default_config_path", "estimate_tokens", "llm_client", "parse_json_reply",
    "retry_parse",
]

#: Loaded on first use, so importing the package (and `workbench.agent`) loads no HTTP client.
_LAZY = {"llm_client": "factory", "OpenAIClient": "openai", "default_config_path": "openai"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
