"""Reading the model's step replies leniently: `parse_step_reply` and `match_tool`."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

from ..llm.parsing import parse_json_reply

__all__ = ["match_tool", "parse_step_reply"]

_ALIASES = {
    "final": "final_answer", "answer": "final_answer", "finish": "final_answer", "done": "final_answer",
    "final_explanation": "final_answer", "conclude": "final_answer", "submit": "final_answer",
    "examples": "exemplars", "exemplar": "exemplars", "top_examples": "exemplars", "dataset_exemplars": "exemplars",
    "top": "exemplars", "get_exemplars": "exemplars",
    "run": "run_texts", "texts": "run_texts", "run_text": "run_texts", "test_texts": "run_texts", "text": "run_texts",
    "activations": "run_texts", "run_model": "run_texts",
    "edit": "edit_text", "edit_texts": "edit_text", "compare": "edit_text",
    "zero": "ablate", "ablation": "ablate", "zero_ablate": "ablate", "ablate_unit": "ablate",
    "set": "steer", "scale": "steer", "steering": "steer", "amplify": "steer",
    "score": "score_explanation", "test": "score_explanation", "test_hypothesis": "score_explanation",
    "score_hypothesis": "score_explanation", "evaluate": "score_explanation", "check": "score_explanation",
}


def match_tool(name: Any, names: Sequence[str]) -> str | None:
    """The tool a possibly misspelled name means (exact, known aliases, then close matches), or None."""
    if not isinstance(name, str):
        return None
    n = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    if not n:
        return None
    if n in names:
        return n
    alias = _ALIASES.get(n)
    if alias in names:
        return alias
    close = difflib.get_close_matches(n, list(names), n=1, cutoff=0.6)
    if close:
        return close[0]
    for cand in names:  # "run_texts_tool", "use exemplars"
        if cand in n:
            return cand
    return None


def _close_json(text: str) -> str | None:
    """The first JSON object in ``text``, closed if the reply was cut off (open strings, brackets)."""
    start = text.find("{")
    if start < 0:
        return None
    stack: list[str] = []
    in_str = esc = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if stack:
                stack.pop()
            if not stack:
                return text[start : i + 1]
    body = text[start:]
    if in_str:
        if esc:
            body = body[:-1]
        body += '"'
    body = body.rstrip()
    body = re.sub(r',\s*"[^"]*"\s*$', "", body)  # a key cut off before its value
    body = re.sub(r'"[^"]*"\s*:\s*$', "", body).rstrip()
    body = body.rstrip(",").rstrip()
    return body + "".join(reversed(stack))


_TOOL_RE = re.compile(r'"?(?:tool|action)"?\s*[:=]\s*"?([A-Za-z_ ]+)"?')
_FIELD_KEYS = ("texts", "text", "new_text", "find", "replace", "prompt", "value", "factor", "explanation",
               "evidence", "predicate", "n", "max_new_tokens")


def parse_step_reply(text: str, tools: Sequence[str]) -> dict[str, Any]:
    """``{"thought", "hypothesis", "tool", "args"}`` from a model's reply; ValueError saying what is wrong.

    Accepts a JSON object anywhere in the reply (in a code fence or not), closes JSON cut off
    by the token limit, matches the tool name loosely (`match_tool`), takes arguments from
    ``args`` / ``arguments`` / ``parameters`` or from the top level, and defaults them to ``{}``.
    """
    obj: dict[str, Any] | None = None
    try:
        obj = parse_json_reply(text, ("tool",))
    except ValueError as first:
        closed = _close_json(text)
        if closed is not None:
            try:
                cand = json.loads(closed)
            except ValueError:
                try:
                    cand = parse_json_reply(closed, ())
                except ValueError:
                    cand = None
            if isinstance(cand, dict) and ("tool" in cand or "action" in cand or "explanation" in cand):
                obj = cand
        if obj is None:
            m = _TOOL_RE.search(text)
            if m and match_tool(m.group(1), tools):
                obj = {"tool": m.group(1)}
            else:
                raise ValueError(f"{first}. Reply with one JSON object with the keys \"thought\", "
                                 f"\"hypothesis\", \"tool\" and \"args\"") from None
    name = obj.get("tool", obj.get("action"))
    if isinstance(name, dict):  # {"tool": {"name": ..., "args": ...}}
        obj = {**obj, **{k: v for k, v in name.items() if k != "name"}}
        name = name.get("name")
    tool = match_tool(name, tools)
    if tool is None and name is None and "explanation" in obj and "final_answer" in tools:
        tool = "final_answer"
    if tool is None:
        raise ValueError(f"unknown tool {name!r}: the tools are {', '.join(tools)}")
    args = obj.get("args", obj.get("arguments", obj.get("parameters", obj.get("input"))))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            args = {"texts": [args]} if tool == "run_texts" else {"explanation": args} if tool in (
                "final_answer", "score_explanation") else {"prompt": args} if tool in ("ablate", "steer") else {}
    if isinstance(args, list):
        args = {"texts": args} if tool == "run_texts" else {}
    if not isinstance(args, dict):
        args = {}
    for k in _FIELD_KEYS:  # arguments put at the top level
        if k in obj and k not in args:
            args[k] = obj[k]
    thought = obj.get("thought", obj.get("reasoning", ""))
    hyp = obj.get("hypothesis", "")
    return {"thought": thought if isinstance(thought, str) else json.dumps(thought),
            "hypothesis": hyp if isinstance(hyp, str) else json.dumps(hyp), "tool": tool, "args": args}
