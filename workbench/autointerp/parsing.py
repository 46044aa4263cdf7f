"""Strict parsers of the LLM's replies to the prompts of `workbench.autointerp.prompts`.

Each raises ValueError saying what was wrong, which `retry_parse` sends back to the model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .prompts import EOL, EXPLANATION_PREFIX
from .records import clean_token

__all__ = ["parse_binary_list", "parse_delphi_explanation", "parse_numbered_list", "parse_openai_explanation",
           "parse_simulation"]


def parse_openai_explanation(text: str) -> str:
    """The explanation in a reply to `openai_explain_messages`: its first line, prefix and final period dropped."""
    t = text.strip()
    if t.lower().startswith(EXPLANATION_PREFIX):
        t = t[len(EXPLANATION_PREFIX):].strip()
    line = t.split("\n", 1)[0].strip().strip('"').strip()
    if line.endswith("."):
        line = line[:-1].rstrip()
    if not line:
        raise ValueError("the reply is empty: write the explanation as one sentence")
    if len(line) > 300:
        raise ValueError("the explanation is longer than 300 characters: write one short sentence")
    if line.lower() in ("<start>", "<end>", "unknown") or "\t" in line:
        raise ValueError(f"{line[:40]!r} repeats the activation format: write what the neuron looks for in words")
    return line


_EXPL_TAG = re.compile(r"\[EXPLANATION\]\s*:\s*(.*)", re.I)


def parse_delphi_explanation(text: str) -> str:
    """The text after the last ``[EXPLANATION]:`` (its line); a bare one-line answer is accepted too."""
    found = _EXPL_TAG.findall(text)
    if found:
        line = found[-1].strip().split("\n", 1)[0].strip()
    else:
        lines = [ln.strip() for ln in text.strip().split("\n") if ln.strip()]
        if len(lines) != 1 or "<<" in lines[0] or len(lines[0].split()) > 30:
            raise ValueError("no line starts with [EXPLANATION]: end the answer with [EXPLANATION]: <explanation>")
        line = lines[0]
    line = line.strip().strip('"').strip()
    if line.endswith("."):
        line = line[:-1].rstrip()
    if not line:
        raise ValueError("the explanation after [EXPLANATION]: is empty")
    if len(line) > 300:
        raise ValueError("the explanation is longer than 300 characters")
    return line


_LIST = re.compile(r"\[([^\[\]]*)\]")


def parse_binary_list(text: str, n: int) -> list[int]:
    """The first ``[...]`` in a reply holding exactly ``n`` entries, each 0 or 1."""
    problems = []
    for m in _LIST.finditer(text):
        items = [s.strip().strip("'\"") for s in m.group(1).split(",")]
        if items == [""]:
            items = []
        if len(items) != n:
            problems.append(f"a list of {len(items)} entries where {n} were asked for")
            continue
        if all(s in ("0", "1") for s in items):
            return [int(s) for s in items]
        problems.append(f"entries other than 0 and 1 ({m.group(0)[:60]})")
    if problems:
        raise ValueError(problems[0])
    raise ValueError(f"no list in the reply: answer with a Python list of {n} numbers, each 0 or 1")


def parse_simulation(text: str, tokens: Sequence[str]) -> list[float]:
    """Predicted activations, one per token, from ``token<tab>activation`` lines.

    The lines must repeat the tokens in order (compared without surrounding spaces). As in
    Bills et al.'s parser, an activation that is not a number from 0 to 10 counts as 0.
    """
    want = [clean_token(t).strip() for t in tokens]
    lines = [ln for ln in text.replace(EOL, "\n").split("\n") if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.rsplit("\t", 1)[0].strip() == want[0]), None) if want else 0
    if start is None:
        raise ValueError(f"the reply does not repeat the first token {want[0]!r} followed by a tab and a number")
    lines = lines[start : start + len(want)]
    if len(lines) != len(want):
        raise ValueError(f"the reply has {len(lines)} token lines where {len(want)} were asked for")
    out = []
    for i, (ln, w) in enumerate(zip(lines, want, strict=True)):
        tok, sep, val = ln.rpartition("\t")
        if not sep:
            tok, _, val = ln.strip().rpartition(" ")
        if tok.strip() != w:
            raise ValueError(f"line {i + 1} is {ln.strip()[:40]!r}, expected the token {w!r} and its activation")
        try:
            v = float(val.strip())
        except ValueError:
            v = 0.0
        out.append(v if 0.0 <= v <= 10.0 else 0.0)
    return out


_NUMBERED = re.compile(r"^\s*(?:\d+\s*[.)]\s*)?(.*\S)\s*$")


def parse_numbered_list(text: str, min_items: int = 3) -> list[str]:
    """Items of a numbered list (``1. ...`` lines; the first item may lack its number), duplicates dropped."""
    items: list[str] = []
    for ln in text.split("\n"):
        if not ln.strip():
            continue
        is_numbered = re.match(r"^\s*\d+\s*[.)]", ln) is not None
        if not is_numbered and (items or ln.rstrip().endswith(":")):
            continue  # prose after the list, or a preamble such as "Here are ten sentences:"
        m = _NUMBERED.match(ln)
        s = m.group(1).strip().strip('"').strip() if m else ""
        if len(s) > 2 and s not in items:
            items.append(s)
    if len(items) < min_items:
        raise ValueError(f"the reply has {len(items)} usable numbered sentences, at least {min_items} are needed")
    return items
