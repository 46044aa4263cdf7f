"""Parsing model replies: `parse_json_reply` (lenient JSON) and `retry_parse` (re-ask with the error, `REASK`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .base import ChatClient, ChatResponse, Messages, check_messages
from .errors import LLMError

__all__ = ["REASK", "parse_json_reply", "retry_parse"]

T = TypeVar("T")

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
    msgs = check_messages(messages)
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
