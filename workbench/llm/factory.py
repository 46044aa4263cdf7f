"""`llm_client`: a chat client from a spec string (``"local"``, ``"openai:<model>@<url>"``), dict or client."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import ChatClient
from .local import LocalChatClient
from .openai import DEFAULT_OPENAI_URL, OpenAIClient, default_config_path

__all__ = ["llm_client"]


def llm_client(spec: str | Mapping[str, Any] | ChatClient | None = None, **kwargs: Any) -> ChatClient:
    """A chat client from a spec.

    - ``None`` / ``"local"``: the embedded SmolLM2-135M-Instruct in-process;
      ``"local:<hf name or path>"``: another local chat model.
    - ``"openai:<model>@<base_url>"``: an OpenAI-compatible endpoint; ``"openai:<model>"`` uses
      ``$OPENAI_BASE_URL``, the config file's ``"base_url"`` or https://api.openai.com/v1.
    - a dict from ``client.to_dict()``; a `ChatClient` is returned as is.

    Keyword arguments go to the client (``cache=``, ``concurrency=``, ``api_key=``,
    ``allow_insecure_http=``, ...). Keys are scoped to their host (see `OpenAIClient`): a spec that
    points elsewhere never receives ``$OPENAI_API_KEY``.
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
