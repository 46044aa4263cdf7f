"""A MAIA-style interpretability agent: a chat model runs experiments on one unit with workbench tools.

    agent = wb.Agent(model, store, unit=("neurons.12", 345))        # client=None: the local SmolLM2
    result = agent.run()                                              # -> AgentResult
    result.explanation, result.scores, result.to_pandas()
    print(result.steps[3].python)                                     # the same experiment, by hand
    agent.replay(result).ok                                           # rerun every tool call, compare
    result.save("agent.json"); wb.AgentResult.load("agent.json")
    result2 = agent.resume(result, hypothesis="fires on plural nouns")  # your hypothesis, then go on

The loop follows MAIA (Shaham et al. 2024, "A Multimodal Automated Interpretability Agent"):
a system prompt describes the tools; at every step the chat model answers with one JSON
object ``{"thought": ..., "hypothesis": ..., "tool": ..., "args": {...}}``; the agent runs the
tool and sends back a text summary of the result; the model states a hypothesis, runs
experiments, revises, and ends with ``final_answer``. The tools are thin wrappers over the
workbench's own public functions, and every step records the equivalent Python call
(``step.python``), which runs in a cell with ``wb`` (workbench), ``model``, ``store``, ``client``
and ``torch`` defined:

- ``exemplars`` — `ScanStore.exemplars` (top windows) and `ScanStore.quantile_exemplars`.
- ``run_texts`` — `Model.run` on texts the agent writes: the unit's activation on every token.
- ``edit_text`` — the same on a text and an edited copy: activations before and after.
- ``ablate`` / ``steer`` — zero / set (or scale) the unit with a spec (`wb.zero_neurons`,
  `wb.set_neurons`, `wb.scale_neurons`; `wb.zero_features` etc. for dictionary features; an
  `Edit` for other sites) and compare next-token predictions (top-k, KL) and a short greedy
  generation (`Model.generate`) with and without it.
- ``score_explanation`` — `wb.score` (detection, with the chat client) of a draft explanation
  or, when the agent gives a predicate (``{"token_in": [...]}`` or ``{"regex": ..., "offset": 0}``;
  declarative, nothing the model writes is executed), the exact `wb.test_hypothesis`.
- ``final_answer`` — the explanation and evidence (scored with detection unless already scored).

Replies are parsed leniently (a JSON object anywhere in the reply, truncated JSON closed,
tool names matched loosely, missing arguments defaulted); a reply that still cannot be used is
re-asked with the error, and after ``attempts`` the failure is recorded as an ``error`` step and
the run stops cleanly. A tool that fails (bad arguments) becomes a step with ``error`` set,
and the model sees the error and goes on. The last allowed step asks for ``final_answer``; a
model that does not give one gets a forced final answer from its latest hypothesis.

**Quality.** With the embedded SmolLM2-135M-Instruct as the agent the loop runs, but the
model follows the format loosely and its experiments and explanations are rarely insightful:
expect repeated tools, generic hypotheses and forced final answers. Use a capable model
through ``wb.llm_client("openai:<model>@<url>")`` for real investigations; the small model is
there so the loop runs offline and in tests.
"""

from __future__ import annotations

import difflib
import html
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..llm.client import REASK, ChatClient, LLMError
from ..core.viewers import Showable

__all__ = ["Agent", "AgentResult", "Step", "Tool", "ToolOutput", "ReplayReport", "DEFAULT_TOOLS", "parse_step_reply",
           "match_tool"]

FORMAT = "interp-workbench/agent"
VERSION = 1
#: Steps that are not tool calls (nothing to replay).
NON_TOOL_STEPS = ("error", "user_hypothesis")


# -- records -----------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One step of an agent run: what the model said, the tool call, its result and the same call in Python.

    ``result`` is JSON-ready (per-token activations as lists of floats); ``python`` runs in a
    cell with ``wb``, ``model``, ``store``, ``client`` and ``torch`` defined; ``error`` is set
    when the tool failed (or, for ``tool == "error"``, when the model's reply was unusable).
    """

    index: int
    thought: str
    tool: str
    args: dict[str, Any]
    result: dict[str, Any]
    python: str
    started: str
    seconds: float
    error: str | None = None
    hypothesis: str = ""
    raw: str = ""
    observation: str = ""
    attempts: int = 1
    llm_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "thought": self.thought, "tool": self.tool, "args": _jsonable(self.args),
                "result": _jsonable(self.result), "python": self.python, "started": self.started,
                "seconds": self.seconds, "error": self.error, "hypothesis": self.hypothesis, "raw": self.raw,
                "observation": self.observation, "attempts": self.attempts, "llm_seconds": self.llm_seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        return cls(int(d["index"]), str(d.get("thought", "")), str(d["tool"]), dict(d.get("args") or {}),
                   dict(d.get("result") or {}), str(d.get("python", "")), str(d.get("started", "")),
                   float(d.get("seconds", 0.0)), d.get("error"), str(d.get("hypothesis", "")), str(d.get("raw", "")),
                   str(d.get("observation", "")), int(d.get("attempts", 1)), float(d.get("llm_seconds", 0.0)))

    def summary(self) -> str:
        """A one-line summary of the result."""
        if self.error:
            return f"error: {self.error}"
        return _summary(self.tool, self.result)


@dataclass
class AgentResult(Showable):
    """A transcript: the steps, the final explanation, evidence and scores, and the chat messages.

    ``status``: ``"final"`` (the model gave ``final_answer``), ``"forced"`` (it did not by the
    last step: the explanation is its latest hypothesis), ``"cancelled"`` (stopped between
    steps), ``"error"`` (an unusable reply after retries, or the chat client failed).
    """

    steps: list[Step] = field(default_factory=list)
    explanation: str = ""
    evidence: str = ""
    scores: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    status: str = ""
    unit: tuple[str, int] | None = None
    hypothesis: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def final_step(self) -> Step | None:
        for s in reversed(self.steps):
            if s.tool == "final_answer":
                return s
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "unit": list(self.unit) if self.unit else None,
                "status": self.status, "explanation": self.explanation, "evidence": self.evidence,
                "scores": _jsonable(self.scores), "hypothesis": self.hypothesis, "meta": _jsonable(self.meta),
                "steps": [s.to_dict() for s in self.steps], "messages": [dict(m) for m in self.messages]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentResult:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not an agent transcript (format {d.get('format') if isinstance(d, dict) else None!r}, "
                             f"expected {FORMAT!r})")
        if d.get("version") != VERSION:
            raise ValueError(f"agent transcript version {d.get('version')!r} is not supported (this reads {VERSION})")
        unit = d.get("unit")
        return cls([Step.from_dict(s) for s in d.get("steps", [])], str(d.get("explanation", "")),
                   str(d.get("evidence", "")), dict(d.get("scores") or {}),
                   [{"role": str(m["role"]), "content": str(m["content"])} for m in d.get("messages", [])],
                   str(d.get("status", "")), (str(unit[0]), int(unit[1])) if unit else None,
                   str(d.get("hypothesis", "")), dict(d.get("meta") or {}))

    def save(self, path: str | Path) -> Path:
        """Write the transcript as JSON (no pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AgentResult:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no agent transcript at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{path} is not a valid agent transcript ({type(e).__name__}: {e})") from None

    def to_pandas(self):
        """One row per step: index, tool, thought, hypothesis, args, summary, python, seconds, error."""
        import pandas as pd

        cols = ["index", "tool", "thought", "hypothesis", "args", "summary", "python", "seconds", "error"]
        return pd.DataFrame([{"index": s.index, "tool": s.tool, "thought": s.thought, "hypothesis": s.hypothesis,
                              "args": json.dumps(_jsonable(s.args)), "summary": s.summary(), "python": s.python,
                              "seconds": s.seconds, "error": s.error} for s in self.steps], columns=cols)

    def __repr__(self) -> str:
        u = f"{self.unit[0]}[{self.unit[1]}]" if self.unit else "?"
        return f"AgentResult({u}, {len(self.steps)} steps, {self.status or 'running'}: {self.explanation!r})"

    def _repr_html_(self) -> str:
        e = html.escape
        rows = "".join(
            f"<tr><td>{s.index}</td><td><b>{e(s.tool)}</b></td><td>{e(s.thought)}</td>"
            f"<td>{e(s.summary())}</td><td><pre style='margin:0;white-space:pre-wrap'>{e(s.python)}</pre></td></tr>"
            for s in self.steps)
        scores = ", ".join(f"{e(k)}={e(_fmt_score(v))}" for k, v in self.scores.items())
        u = f"{self.unit[0]}[{self.unit[1]}]" if self.unit else ""
        return (f"<div><b>Agent</b> {e(u)} — {e(self.status or 'running')}, {len(self.steps)} steps<br>"
                f"<b>Explanation:</b> <i>{e(self.explanation)}</i>" + (f"<br><b>Scores:</b> {scores}" if scores else "")
                + "<table><tr><th>#</th><th>tool</th><th>thought</th><th>result</th><th>python</th></tr>"
                f"{rows}</table></div>")


@dataclass
class ReplayReport:
    """Each recorded tool call rerun: ``status`` is ``match``, ``mismatch``, ``skipped`` or ``error``."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every rerun step matched (skipped steps do not count against it)."""
        return all(r["status"] in ("match", "skipped") for r in self.rows)

    @property
    def n_matched(self) -> int:
        return sum(r["status"] == "match" for r in self.rows)

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["step", "tool", "status", "max_abs_diff", "message"])

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return f"ReplayReport(ok={self.ok}, {counts})"

    def _repr_html_(self) -> str:
        e = html.escape
        rows = "".join(f"<tr><td>{r['step']}</td><td>{e(r['tool'])}</td><td>{e(r['status'])}</td>"
                       f"<td>{r['max_abs_diff'] if r['max_abs_diff'] is not None else ''}</td>"
                       f"<td>{e(r['message'])}</td></tr>" for r in self.rows)
        return (f"<div><b>Replay</b>: {'all match' if self.ok else 'MISMATCH'}<table><tr><th>step</th><th>tool</th>"
                f"<th>status</th><th>max |diff|</th><th>message</th></tr>{rows}</table></div>")


# -- tools ---------------------------------------------------------------------------------------------------
@dataclass
class ToolOutput:
    """What a tool returns: the JSON-ready result, the Python call, the model's text, the arguments used."""

    result: dict[str, Any]
    python: str
    observation: str
    args: dict[str, Any]


@dataclass
class Tool:
    """A tool the agent may call: ``run(agent, args) -> ToolOutput``; ``usage`` is shown in the system prompt."""

    name: str
    usage: str
    run: Callable[[Agent, dict[str, Any]], ToolOutput]
    uses_llm: bool = False


class ToolError(ValueError):
    """A tool call that cannot run as asked (the message goes back to the model)."""


# -- JSON helpers ------------------------------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    """Plain JSON values: numpy/torch to lists and floats, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def _fmt_score(v: Any) -> str:
    if isinstance(v, dict):
        if "value" in v:
            val = v.get("value")
            return "–" if val is None else f"{val:.3f}"
        if "f1" in v:
            f1 = v.get("f1")
            return "f1 –" if f1 is None else f"f1 {f1:.3f}"
    if isinstance(v, (int, float)):
        return f"{v:.3f}"
    return str(v)


def _r(x: float | None, d: int = 3) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{d}g}" if abs(x) >= 1e4 else f"{x:.{d}f}"


# -- parsing the model's replies ------------------------------------------------------------------------------
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
    from ..llm.client import parse_json_reply

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


# -- argument helpers --------------------------------------------------------------------------------------------
def _int_arg(args: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = args.get(key, default)
    if v is None:
        return default
    try:
        v = int(float(v))
    except (TypeError, ValueError):
        raise ToolError(f"{key} must be a whole number, not {v!r}") from None
    return max(lo, min(hi, v))


def _float_arg(args: dict, key: str) -> float | None:
    v = args.get(key)
    if v is None or v == "":
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise ToolError(f"{key} must be a number, not {v!r}") from None
    if not math.isfinite(v):
        raise ToolError(f"{key} must be finite, not {v!r}")
    return v


def _str_arg(args: dict, key: str, default: str = "") -> str:
    v = args.get(key, default)
    if v is None:
        return default
    if isinstance(v, list):
        v = " ".join(str(x) for x in v)
    return str(v)


# -- the agent ---------------------------------------------------------------------------------------------------
SYSTEM_PROMPT = """You are an interpretability agent. You study {what} of a language model and find out what makes it activate and what it does.
Each turn, reply with ONE JSON object and nothing else:
{{"thought": "one short sentence", "hypothesis": "your current hypothesis", "tool": "TOOL", "args": {{...}}}}
Tools:
{tools}
Work like a scientist: look at exemplars, state a hypothesis, test it with new texts (include texts that should NOT activate it), revise, then finish with final_answer.
Example reply:
{{"thought": "First look at the texts where it activates most.", "hypothesis": "", "tool": "exemplars", "args": {{"n": 5}}}}"""

TASK_PROMPT = """Unit: {what} (site {site}, unit {unit}) of the model {model}.
Over the scanned corpus: maximum activation {max}, mean {mean}, active (> 0) on {frac} of tokens.
You have {budget} steps. Reply with your first JSON object."""

NEXT_PROMPT = "Step {done} of {budget} done. {hint}Reply with the next JSON object."
#: What to do next, by the tool just used (small models need the nudge; large ones ignore it).
NEXT_HINTS = {
    "exemplars": ("State a hypothesis about what the marked << >> tokens have in common, then test it with "
                  "run_texts on new texts (some that should activate the unit, some that should not). "),
    "run_texts": "Revise your hypothesis if the activations disagree; test more texts, try edit_text, ablate or "
                 "score_explanation, or give final_answer. ",
    "edit_text": "Revise your hypothesis if needed; try other edits or texts, or score_explanation. ",
    "ablate": "What does the unit do to the output? Try steer, more texts, or final_answer. ",
    "steer": "Try other texts or give final_answer. ",
    "score_explanation": "Improve the explanation if the score is low, or give final_answer. ",
}
REPEAT_ERROR = "this is exactly the call of step {step}; its result is above. Choose another tool or other arguments"
FINAL_PROMPT = ("This is your last step: reply now with final_answer, as one JSON object: "
                '{"thought": "...", "tool": "final_answer", "args": {"explanation": "...", "evidence": "..."}}')
EDIT_PROMPT = ('The user edited your current hypothesis. New hypothesis: "{hypothesis}". Continue from this '
               "hypothesis: test it with experiments, revise it if the evidence disagrees, then give final_answer.")
CONTINUE_PROMPT = "Continue the investigation. Reply with the next JSON object."
REASK_EXAMPLE = (' For example: {"thought": "test my hypothesis", "hypothesis": "...", "tool": "run_texts", '
                 '"args": {"texts": ["...", "..."]}}')
#: The agent's own first step with ``warm_start``.
WARM_REPLY = json.dumps({"thought": "First look at the texts where the unit activates most.", "hypothesis": "",
                         "tool": "exemplars", "args": {"n": 5}})


class Agent(Showable):
    """An automated-interpretability agent for one unit of a scanned model (see the module docstring).

    ``model``: the workbench `Model` the store was scanned with; ``store``: the `ScanStore`;
    ``unit``: ``(site, unit)`` — a store key (``"neurons.7"``, a feature name) and an index.
    ``client``: a `ChatClient` or an `llm_client` spec (None: the local SmolLM2, sharing
    ``model`` when it is the embedded one). ``max_steps``: the step budget per run (the last
    step asks for the final answer). ``tools``: names from `DEFAULT_TOOLS` or `Tool` objects.
    ``dictionary``: the `Dictionary` of a feature key (for ``ablate`` / ``steer`` on features).
    ``score_final``: score the final explanation with detection when no step scored it.
    ``warm_start``: the first step of a run is ``exemplars``, made by the agent itself (as
    MAIA's prompt hands over the dataset exemplars); its JSON reply stays in the conversation,
    an example of the format that small models copy far more reliably than instructions.
    """

    def __init__(self, model: Any, store: Any, unit: tuple[str | int, int], client: Any = None, max_steps: int = 12,
                 tools: Iterable[str | Tool] | None = None, *, dictionary: Any = None, max_tokens: int = 256,
                 temperature: float = 0.0, seed: int = 0, attempts: int = 3, score_final: bool = True,
                 max_new_tokens: int = 12, top_k: int = 5, max_observation_chars: int = 1500,
                 score_kwargs: dict[str, Any] | None = None, warm_start: bool = True, progress: bool = True):
        from ..core.engine import Model

        if not isinstance(model, Model):
            raise TypeError(f"Agent needs a workbench Model, not {type(model).__name__}")
        if not (isinstance(unit, (tuple, list)) and len(unit) == 2):
            raise TypeError(f"unit must be (site, unit index), e.g. ('neurons.3', 42), not {unit!r}")
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be at least 1, not {max_steps}")
        if int(attempts) < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        self.model = model
        self.store = store
        if store.model is None:
            store.model = model  # exemplars rerun their windows through the model
        self.key = store._key(unit[0])  # KeyError naming the store's sites
        self.unit = store._unit(self.key, unit[1])  # IndexError naming the range
        info = store.meta["sites"][self.key]
        self.read_site = str(info.get("site", self.key))
        self.is_feature = info.get("transform") is not None
        self.max_steps = int(max_steps)
        self.max_tokens, self.temperature, self.seed, self.attempts = int(max_tokens), float(temperature), seed, int(attempts)
        self.score_final, self.max_new_tokens, self.top_k = bool(score_final), int(max_new_tokens), int(top_k)
        self.max_observation_chars = int(max_observation_chars)
        self.score_kwargs = dict(score_kwargs or {})
        self.warm_start = bool(warm_start)
        self.progress = progress
        self.dictionary_name: str | None = None
        if dictionary is not None:
            from ..dictionaries.features import register_dictionary

            self.dictionary_name = register_dictionary(dictionary) if not isinstance(dictionary, str) else dictionary
        self.tools: dict[str, Tool] = {}
        for t in (DEFAULT_TOOLS if tools is None else tools):
            tool = t if isinstance(t, Tool) else _TOOLS_BY_NAME.get(str(t))
            if tool is None:
                raise ValueError(f"unknown tool {t!r}: known tools are {', '.join(_TOOLS_BY_NAME)} (or pass Tool objects)")
            self.tools[tool.name] = tool
        if "final_answer" not in self.tools:
            self.tools["final_answer"] = _TOOLS_BY_NAME["final_answer"]
        self._client_spec = client
        self._client: ChatClient | None = client if isinstance(client, ChatClient) else None
        self._stats: dict[str, float] | None = None
        self._lock = threading.Lock()

    # -- basics ---------------------------------------------------------------------------------------------
    @property
    def client(self) -> ChatClient:
        """The chat client (made on first use)."""
        if self._client is None:
            from ..llm.client import LocalChatClient, llm_client
            from ..core.loading import EMBEDDED_NAME

            if self._client_spec is None and getattr(self.model, "name", "") == EMBEDDED_NAME:
                self._client = LocalChatClient(self.model)
            else:
                self._client = llm_client(self._client_spec)
        return self._client

    @property
    def what(self) -> str:
        if self.is_feature:
            return f"feature {self.unit} of {self.key}"
        from ..core.arch import Site

        s = Site.parse(self.read_site)
        if s.name == "neurons":
            return f"MLP neuron {self.unit} of layer {s.layer}"
        return f"unit {self.unit} of {self.read_site}"

    def stats(self) -> dict[str, float]:
        if self._stats is None:
            self._stats = self.store.unit_stats(self.key, self.unit)
        return self._stats

    @property
    def unit_max(self) -> float:
        """The unit's maximum activation over the scan (the tint scale of the widget)."""
        m = float(self.stats().get("max", math.nan))
        return m if math.isfinite(m) else 0.0

    def system_prompt(self) -> str:
        tools = "\n".join(f"- {t.name} {t.usage}" for t in self.tools.values())
        return SYSTEM_PROMPT.format(what=self.what, tools=tools)

    def task_prompt(self, budget: int | None = None) -> str:
        st = self.stats()
        return TASK_PROMPT.format(what=self.what, site=self.key, unit=self.unit, model=self.model.name or "?",
                                  max=_r(st.get("max")), mean=_r(st.get("mean")),
                                  frac=f"{100 * float(st.get('frac_active', 0.0)):.1f}%", budget=budget or self.max_steps)

    def initial_messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_prompt()}, {"role": "user", "content": self.task_prompt()}]

    def meta(self) -> dict[str, Any]:
        client = self._client.spec if self._client is not None else str(self._client_spec or "local")
        return {"model": self.model.name, "client": client, "store": str(self.store.path), "site": self.key,
                "unit": self.unit, "read_site": self.read_site, "max_steps": self.max_steps,
                "tools": list(self.tools), "dictionary": self.dictionary_name, "unit_max": self.unit_max}

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, on_step: Callable[[Step], None] | None = None, cancel: threading.Event | None = None, *,
            progress: bool | None = None) -> AgentResult:
        """Run the loop from the start; ``on_step(step)`` after each step; ``cancel`` stops between steps."""
        result = AgentResult([], messages=self.initial_messages(), unit=(self.key, self.unit), meta=self.meta())
        return self._loop(result, on_step, cancel, self.max_steps, warm=self.warm_start and "exemplars" in self.tools,
                          progress=progress)

    def resume(self, result: AgentResult, hypothesis: str | None = None, on_step: Callable[[Step], None] | None = None,
               cancel: threading.Event | None = None, max_steps: int | None = None, *,
               progress: bool | None = None) -> AgentResult:
        """Continue a transcript (for ``max_steps`` more steps), optionally with an edited hypothesis.

        The hypothesis is injected as a user message and recorded as a ``user_hypothesis``
        step. Returns a new `AgentResult` holding the old steps and the new ones.
        """
        if result.unit is not None and tuple(result.unit) != (self.key, self.unit):
            raise ValueError(f"the transcript is about {result.unit[0]}[{result.unit[1]}], this agent studies "
                             f"{self.key}[{self.unit}]")
        budget = self.max_steps if max_steps is None else int(max_steps)
        if budget < 1:
            raise ValueError("max_steps must be at least 1")
        messages = [dict(m) for m in result.messages] or self.initial_messages()
        new = AgentResult(list(result.steps), result.explanation, result.evidence, dict(result.scores), messages, "",
                          (self.key, self.unit), result.hypothesis, {**result.meta, **self.meta()})
        if hypothesis is not None and str(hypothesis).strip():
            h = str(hypothesis).strip()
            self._say(new.messages, EDIT_PROMPT.format(hypothesis=h))
            new.hypothesis = h
            step = Step(len(new.steps), "The user edited the hypothesis.", "user_hypothesis", {"hypothesis": h},
                        {"hypothesis": h}, "", _now(), 0.0, None, h)
            new.steps.append(step)
            if on_step is not None:
                on_step(step)
        elif new.messages[-1]["role"] == "assistant":
            self._say(new.messages, CONTINUE_PROMPT)
        return self._loop(new, on_step, cancel, budget, progress=progress)

    @staticmethod
    def _say(messages: list[dict[str, str]], text: str) -> None:
        """Append a user message (merged into the last one when that is a user message too)."""
        if messages and messages[-1]["role"] == "user":
            messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n" + text}
        else:
            messages.append({"role": "user", "content": text})

    def _ask(self, messages: list[dict[str, str]]) -> tuple[dict[str, Any] | None, str, int, str | None]:
        """Ask for a step, re-asking on a malformed reply: (parsed or None, last raw text, attempts, error)."""
        names = list(self.tools)
        raw, err = "", None
        for attempt in range(1, self.attempts + 1):
            try:
                resp = self.client.chat(messages, max_tokens=self.max_tokens, temperature=self.temperature,
                                        seed=self.seed)
            except LLMError as exc:
                return None, raw, attempt, f"the chat client failed: {exc}"
            raw = resp.text
            try:
                parsed = parse_step_reply(raw, names)
            except ValueError as exc:
                err = str(exc) or type(exc).__name__
                messages.append({"role": "assistant", "content": raw})
                messages.append({"role": "user", "content": REASK.format(error=err[:300]) + REASK_EXAMPLE})
                continue
            messages.append({"role": "assistant", "content": raw})
            return parsed, raw, attempt, None
        return None, raw, self.attempts, f"no usable reply after {self.attempts} attempt(s): {err}"

    def _loop(self, result: AgentResult, on_step: Callable[[Step], None] | None, cancel: threading.Event | None,
              budget: int, warm: bool = False, progress: bool | None = None) -> AgentResult:
        from tqdm.auto import tqdm

        msgs = result.messages
        show = self.progress if progress is None else progress
        bar = tqdm(total=budget, desc=f"agent {self.key}[{self.unit}]", unit="step", disable=not show, leave=False)

        def record(step: Step) -> None:
            result.steps.append(step)
            bar.update(1)
            if on_step is not None:
                on_step(step)

        try:
            done = 0
            while True:
                if cancel is not None and cancel.is_set():
                    result.status = "cancelled"
                    break
                last = done >= budget - 1
                if last:
                    self._say(msgs, FINAL_PROMPT)
                t0, started = time.perf_counter(), _now()
                if warm and done == 0 and not last:
                    raw, attempts, err = WARM_REPLY, 0, None
                    parsed = parse_step_reply(raw, list(self.tools))
                    msgs.append({"role": "assistant", "content": raw})
                else:
                    parsed, raw, attempts, err = self._ask(msgs)
                llm_s = time.perf_counter() - t0
                index = len(result.steps)
                if parsed is None:
                    if last:  # a clean forced answer rather than an error at the very end
                        record(self._forced(result, index, started, llm_s, raw, attempts,
                                            f"the model's reply was unusable ({err})"))
                    else:
                        record(Step(index, "", "error", {}, {"raw": raw}, "", started, 0.0, err, result.hypothesis,
                                    raw, "", attempts, llm_s))
                        result.status = "error"
                    break
                if parsed["hypothesis"].strip():
                    result.hypothesis = parsed["hypothesis"].strip()
                if last and parsed["tool"] != "final_answer":
                    record(self._forced(result, index, started, llm_s, raw, attempts,
                                        f"the model chose {parsed['tool']} at the last step", parsed["thought"]))
                    break
                step = self._execute(parsed, index, started, raw, attempts, llm_s, result)
                done += 1
                if step.tool == "final_answer":  # the answer, even when scoring it failed
                    self._finish(result, step, "final")
                    record(step)
                    break
                hint = NEXT_HINTS.get(step.tool, "") if not step.error else ""
                obs = step.observation if done >= budget - 1 else (
                    f"{step.observation}\n\n{NEXT_PROMPT.format(done=done, budget=budget, hint=hint)}")
                msgs.append({"role": "user", "content": obs})
                record(step)
        finally:
            bar.close()
        if not result.explanation:
            result.explanation = result.hypothesis
        return result

    def _final_args(self, result: AgentResult, args: dict[str, Any]) -> dict[str, Any]:
        """A final answer's arguments: the hypothesis when no explanation; an earlier step's scores if any."""
        args = dict(args)
        if not _str_arg(args, "explanation").strip():
            args["explanation"] = result.hypothesis
        prev = self._scored(result, _str_arg(args, "explanation"))
        if prev is not None:
            args["scored_in_step"] = prev
        return args

    def _finish(self, result: AgentResult, step: Step, status: str) -> None:
        res = step.result
        result.explanation = str(res.get("explanation") or result.hypothesis)
        result.evidence = str(res.get("evidence") or "")
        result.scores = dict(res.get("scores") or {})
        if result.explanation:
            result.hypothesis = result.explanation
        result.status = status

    def _forced(self, result: AgentResult, index: int, started: str, llm_s: float, raw: str, attempts: int,
                why: str, thought: str = "") -> Step:
        """A final answer made from the latest hypothesis when the model gave none."""
        why = f"forced at the step limit: {why}"
        if not result.hypothesis.strip():
            result.hypothesis = self.fallback_explanation()
            why += "; no hypothesis was stated, so the explanation lists the unit's top-activating tokens"
        args = self._final_args(result, {"explanation": result.hypothesis, "evidence": why})
        t0 = time.perf_counter()
        try:
            out = self._run_tool("final_answer", args)
            if "scored_in_step" in out.args:
                out.result["scores"] = dict(result.steps[out.args["scored_in_step"]].result.get("scores") or {})
            step = Step(index, thought or "(forced final answer)", "final_answer", _jsonable(out.args),
                        _jsonable({**out.result, "forced": True}),
                        out.python, started, time.perf_counter() - t0, None, result.hypothesis, raw, out.observation,
                        attempts, llm_s)
        except Exception as exc:  # noqa: BLE001 - recorded, never raised
            step = Step(index, thought or "(forced final answer)", "final_answer", args,
                        {"explanation": result.hypothesis, "evidence": args["evidence"], "scores": {}, "forced": True},
                        "", started, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}", result.hypothesis, raw,
                        "", attempts, llm_s)
        self._finish(result, step, "forced")
        return step

    def _execute(self, parsed: dict[str, Any], index: int, started: str, raw: str, attempts: int, llm_s: float,
                 result: AgentResult) -> Step:
        tool, args = parsed["tool"], dict(parsed["args"])
        if tool == "final_answer":
            args = self._final_args(result, args)
        t0 = time.perf_counter()
        repeat = self._repeat_of(result, tool, args)
        if repeat is not None:  # refused, not run: nothing to replay
            msg = f"ToolError: {REPEAT_ERROR.format(step=repeat)}"
            return Step(index, parsed["thought"], tool, _jsonable(args), {"error": msg, "repeat_of": repeat}, "", started,
                        0.0, msg, result.hypothesis, raw, f"Error from {tool}: {msg}.", attempts, llm_s)
        try:
            out = self._run_tool(tool, args)
        except Exception as exc:  # noqa: BLE001 - the model sees the error and goes on
            msg = f"{type(exc).__name__}: {exc}"
            obs = f"Error from {tool}: {msg}. Fix the arguments or use another tool."
            res: dict[str, Any] = {"error": msg}
            if tool == "final_answer":
                res = {"explanation": _str_arg(args, "explanation"), "evidence": _str_arg(args, "evidence"), "scores": {},
                       "error": msg}
            return Step(index, parsed["thought"], tool, _jsonable(args), res, "", started, time.perf_counter() - t0, msg,
                        result.hypothesis, raw, _clip(obs, self.max_observation_chars), attempts, llm_s)
        if tool == "final_answer" and "scored_in_step" in out.args:
            out.result["scores"] = dict(result.steps[out.args["scored_in_step"]].result.get("scores") or {})
        if tool == "score_explanation":
            text = _str_arg(out.args, "explanation").strip()
            if text:
                result.hypothesis = text
        return Step(index, parsed["thought"], tool, _jsonable(out.args), _jsonable(out.result), out.python, started,
                    time.perf_counter() - t0, None, result.hypothesis, raw,
                    _clip(f"Result of {tool}:\n{out.observation}", self.max_observation_chars), attempts, llm_s)

    @staticmethod
    def _repeat_of(result: AgentResult, tool: str, args: dict[str, Any]) -> int | None:
        """The step that already made exactly this call (same tool, same arguments as given or as used)."""
        if tool == "final_answer":
            return None
        want = _jsonable(args)
        for s in reversed(result.steps):
            if s.tool == tool and not s.error and (s.args == want or (s.raw and _given_args(s.raw, tool) == want)):
                return s.index
        return None

    @staticmethod
    def _scored(result: AgentResult, explanation: str) -> int | None:
        """The last step that scored exactly this explanation (without a predicate), if any."""
        text = explanation.strip()
        for s in reversed(result.steps):
            if (s.tool == "score_explanation" and not s.error and "predicate" not in s.args
                    and str(s.args.get("explanation", "")).strip() == text and s.result.get("scores")):
                return s.index
        return None

    def _run_tool(self, name: str, args: dict[str, Any]) -> ToolOutput:
        tool = self.tools.get(name) or _TOOLS_BY_NAME.get(name)
        if tool is None:
            raise ToolError(f"unknown tool {name!r}")
        with self._lock:
            return tool.run(self, args)

    def call(self, tool: str, **args: Any) -> ToolOutput:
        """Run one tool by hand, as the agent would (``agent.call("run_texts", texts=[...])``)."""
        return self._run_tool(tool, args)

    # -- replay ----------------------------------------------------------------------------------------------
    def replay(self, result: AgentResult, *, atol: float = 1e-4, rtol: float = 1e-3, llm: bool = True) -> ReplayReport:
        """Rerun each recorded tool call against the model and compare with the recorded result.

        Numbers must agree within ``atol + rtol * |recorded|`` (activations, probabilities, KL,
        scores), texts exactly (tokens, greedy generations). A step whose tool failed must fail
        again with the same message. ``llm=False`` skips the calls that ask the chat client
        (detection scores); with a deterministic client (greedy, cached) they match too.
        """
        report = ReplayReport()
        for s in result.steps:
            row = {"step": s.index, "tool": s.tool, "status": "match", "max_abs_diff": None, "message": ""}
            report.rows.append(row)
            if s.tool in NON_TOOL_STEPS or (s.tool not in self.tools and s.tool not in _TOOLS_BY_NAME):
                row.update(status="skipped", message="not a tool call")
                continue
            if "repeat_of" in s.result:
                row.update(status="skipped", message=f"refused as a repeat of step {s.result['repeat_of']}")
                continue
            if s.tool == "final_answer" and ("scored_in_step" in s.args or s.result.get("forced") and not s.python):
                row.update(status="skipped", message="scores taken from an earlier step")
                continue
            tool = self.tools.get(s.tool) or _TOOLS_BY_NAME[s.tool]
            uses_llm = tool.uses_llm and not (s.tool == "score_explanation" and "predicate" in s.args)
            if s.tool == "final_answer":
                uses_llm = bool(s.python)
            if uses_llm and not llm:
                row.update(status="skipped", message="asks the chat client (llm=False)")
                continue
            try:
                out = self._run_tool(s.tool, dict(s.args))
            except Exception as exc:  # noqa: BLE001
                msg = f"{type(exc).__name__}: {exc}"
                if s.error and msg == s.error:
                    row.update(message="failed again with the same error")
                else:
                    row.update(status="error", message=msg if not s.error else f"{msg} (recorded: {s.error})")
                continue
            if s.error:
                row.update(status="mismatch", message=f"recorded an error ({s.error}) but the rerun succeeded")
                continue
            recorded = {k: v for k, v in s.result.items() if k != "forced"}
            ok, diff, where = _compare(recorded, _jsonable(out.result), atol, rtol)
            row.update(status="match" if ok else "mismatch", max_abs_diff=diff, message=where)
        return report

    # -- unit activations ----------------------------------------------------------------------------------
    def _scan_specs(self) -> list[Any]:
        return list(self.store.meta.get("interventions") or [])

    def _acts_code(self, texts: list[str], var: str = "res") -> str:
        specs = "store.meta['interventions'], " if self._scan_specs() else ""
        pick = f"res.activations[{self.read_site!r}]"
        if self.is_feature:
            pick = f"store.transforms[{self.key!r}]({pick})"
        return (f"{var} = model.run({texts!r}, {specs}capture=[{self.read_site!r}], top_k=0, logits=None)\n"
                f"acts = {pick}[..., {self.unit}]  # [texts, tokens]")

    def text_records(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """The unit on every token of each text: ``{text, tokens, acts, max, argmax, token}``."""
        res = self.model.run(list(texts), self._scan_specs() or None, capture=[self.read_site], top_k=0, logits=None)
        x = res.activations[self.read_site]
        if self.is_feature:
            x = self.store._transform(self.key)(x)
        acts = x[..., self.unit].float()
        return [self._record(t, [tok.text for tok in res.tokens[b]], acts[b, : res.lengths[b]].numpy())
                for b, t in enumerate(texts)]

    def _record(self, text: str, tokens: list[str], acts: np.ndarray) -> dict[str, Any]:
        first = 1 if self.store.meta.get("skip_first", True) and len(acts) > 1 else 0
        tail = acts[first:]
        j = int(np.argmax(tail)) + first if len(tail) else 0
        return {"text": text, "tokens": tokens, "acts": [float(a) for a in acts],
                "max": float(acts[j]) if len(acts) else None, "argmax": j,
                "token": tokens[j] if tokens else ""}

    def _describe_record(self, rec: dict[str, Any], label: str = "") -> str:
        tokens, acts = rec["tokens"], rec["acts"]
        j = int(rec.get("argmax", 0))
        lo, hi = max(0, j - 12), min(len(tokens), j + 5)
        shown = "".join(tokens[lo:j]) + f"<<{tokens[j]}>>" + "".join(tokens[j + 1 : hi]) if tokens else ""
        thr = 0.25 * self.unit_max if self.unit_max > 0 else 0.0
        first = 1 if self.store.meta.get("skip_first", True) else 0
        active = sorted(((a, i) for i, a in enumerate(acts) if i >= first and a is not None and a > thr), reverse=True)[:5]
        act_txt = ", ".join(f"{tokens[i]!r} {a:.2f}" for a, i in active) or "none"
        pre = "..." if lo > 0 else ""
        post = "..." if hi < len(tokens) else ""
        return (f"{label}max {_r(rec.get('max'), 2)} on {rec.get('token', '')!r}; active tokens: {act_txt}; "
                f"text: {pre}{shown}{post}").replace("\n", "⏎")

    def fallback_explanation(self, n: int = 5) -> str:
        """A description from data alone: the tokens at the unit's top exemplar maxima."""
        toks: list[str] = []
        for _, w, p in self.store.top(self.key, self.unit):
            ids = self.store.window_tokens(w)
            if p < len(ids):
                t = self.model.tokenizer.decode([ids[p]])
                if t not in toks:
                    toks.append(t)
            if len(toks) >= n:
                break
        return ("activates most on the tokens " + ", ".join(repr(t) for t in toks)) if toks else ""

    def default_prompt(self) -> str:
        """The top exemplar window up to (and including) its maximum: a prompt where the unit fires last."""
        top = self.store.top(self.key, self.unit)
        if not top:
            raise ToolError("the unit has no exemplars in the store: give a prompt")
        _, w, p = top[0]
        ids = self.store.window_tokens(w)[: p + 1]
        text = self.model.tokenizer.decode(ids, skip_special_tokens=True)
        if not text.strip():
            raise ToolError("the top exemplar has no text before its maximum: give a prompt")
        return text

    # -- specs -------------------------------------------------------------------------------------------
    def unit_spec(self, op: str, value: float | None = None) -> tuple[Any, str]:
        """The spec that zeroes / sets / scales this unit, and its Python code."""
        from ..core.arch import Site
        from ..core.specs import Edit, scale_neurons, set_neurons, zero_neurons

        if self.is_feature:
            if self.dictionary_name is None:
                raise ToolError(f"{self.key} is a dictionary feature: create the Agent with dictionary= to edit it")
            from ..dictionaries.features import scale_features, set_features, zero_features

            d = self.dictionary_name
            if op == "zero":
                return zero_features(d, [self.unit]), f"wb.zero_features({d!r}, [{self.unit}])"
            if op == "set":
                return set_features(d, [self.unit], value), f"wb.set_features({d!r}, [{self.unit}], {value!r})"
            return scale_features(d, [self.unit], value), f"wb.scale_features({d!r}, [{self.unit}], {value!r})"
        s = Site.parse(self.read_site)
        if s.name == "neurons":
            L = s.layer
            if op == "zero":
                return zero_neurons(L, [self.unit]), f"wb.zero_neurons({L}, [{self.unit}])"
            if op == "set":
                return set_neurons(L, [self.unit], value), f"wb.set_neurons({L}, [{self.unit}], {value!r})"
            return scale_neurons(L, [self.unit], value), f"wb.scale_neurons({L}, [{self.unit}], {value!r})"
        val = None if op == "zero" else value
        code = f"wb.Edit({self.read_site!r}, [{self.unit}], {op!r}" + (f", {val!r})" if val is not None else ")")
        return Edit(self.read_site, [self.unit], op, val), code

    def _effect(self, prompt: str, spec: Any, spec_code: str, n_new: int) -> tuple[dict[str, Any], str]:
        """Predictions and a greedy generation with and without a spec (plus the unit on the prompt)."""
        base_specs = self._scan_specs()
        before = self.model.run(prompt, base_specs or None, capture=[self.read_site], top_k=self.top_k)
        after = self.model.run(prompt, base_specs + [spec], top_k=self.top_k)
        lp_b = torch.log_softmax(before.logits.float(), -1)
        lp_a = torch.log_softmax(after.logits.float(), -1)
        kl = float((lp_b.exp() * (lp_b - lp_a)).sum(-1)[0])
        rows_b, rows_a = before.top.as_rows(0), after.top.as_rows(0)
        for r in rows_b:
            r["prob_after"] = float(lp_a[0, r["id"]].exp())
        for r in rows_a:
            r["prob_before"] = float(lp_b[0, r["id"]].exp())
        gen_b = self.model.generate(prompt, base_specs or None, max_new_tokens=n_new).text
        gen_a = self.model.generate(prompt, base_specs + [spec], max_new_tokens=n_new).text
        x = before.activations[self.read_site]
        if self.is_feature:
            x = self.store._transform(self.key)(x)
        rec = self._record(prompt, [t.text for t in before.tokens[0]], x[0, :, self.unit].float().numpy())
        result = {"prompt": prompt, "spec": spec.to_dict(), "text": rec, "top_before": rows_b, "top_after": rows_a,
                  "kl": kl, "generation_before": gen_b, "generation_after": gen_a}
        base = "store.meta['interventions'] + " if base_specs else ""
        base0 = "store.meta['interventions']" if base_specs else "None"
        pick = f"before.activations[{self.read_site!r}]"
        if self.is_feature:
            pick = f"store.transforms[{self.key!r}]({pick})"
        code = (f"spec = {spec_code}\n"
                f"before = model.run({prompt!r}, {base0}, capture=[{self.read_site!r}], top_k={self.top_k})\n"
                f"after = model.run({prompt!r}, {base}[spec], top_k={self.top_k})\n"
                f"acts = {pick}[0, :, {self.unit}]\n"
                "kl = torch.nn.functional.kl_div(after.logits.log_softmax(-1), before.logits.log_softmax(-1), "
                "log_target=True, reduction='batchmean')\n"
                f"generation_before = model.generate({prompt!r}, {base0}, max_new_tokens={n_new}).text\n"
                f"generation_after = model.generate({prompt!r}, {base}[spec], max_new_tokens={n_new}).text")
        return result, code

    def _describe_effect(self, what: str, r: dict[str, Any]) -> str:
        def rows(rs: list[dict], key: str) -> str:
            return ", ".join(f"{x['token']!r} {x['prob']:.2f}" + (f" (was {x[key]:.2f})" if key in x else "") for x in rs)

        return (f"{what} on the prompt {r['prompt'][-200:]!r} (the unit's activation there: max "
                f"{_r(r['text']['max'], 2)} on {r['text']['token']!r}).\n"
                f"KL divergence of the next-token distribution: {r['kl']:.4f}.\n"
                f"Next-token top {self.top_k} before: {rows(r['top_before'], '_')}\n"
                f"after: {rows(r['top_after'], 'prob_before')}\n"
                f"Generation before: {r['generation_before']!r}\nGeneration after: {r['generation_after']!r}")

    # -- scoring ------------------------------------------------------------------------------------------
    def _score(self, text: str) -> tuple[dict[str, Any], str]:
        from ..autointerp.explain import score

        kw = {"explanations": None, "on_error": "skip", **self.score_kwargs}
        scores = score(self.store, self.key, self.unit, text, ["detection"], self.client, **kw)
        extra = "".join(f", {k}={v!r}" for k, v in kw.items())
        code = f"scores = wb.score(store, {self.key!r}, {self.unit}, {text!r}, ['detection'], client{extra})"
        return {k: s.to_dict() for k, s in scores.items()}, code


def _given_args(raw: str, tool: str) -> Any:
    try:
        p = parse_step_reply(raw, [tool])
    except ValueError:
        return None
    return _jsonable(p["args"]) if p["tool"] == tool else None


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 15] + " …(truncated)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _summary(tool: str, r: dict[str, Any]) -> str:
    try:
        if tool == "exemplars":
            top = r.get("top") or []
            return f"{len(top)} top windows (max {_r(top[0]['value'], 2)})" if top else "no exemplars"
        if tool == "run_texts":
            return "; ".join(f"{t['token']!r} {_r(t['max'], 2)}" for t in r.get("texts", []))
        if tool == "edit_text":
            return f"max {_r(r['before']['max'], 2)} → {_r(r['after']['max'], 2)}"
        if tool in ("ablate", "steer"):
            return f"KL {_r(r.get('kl'), 4)}; {r.get('generation_after', '')!r}"
        if tool == "score_explanation":
            if "hypothesis" in r:
                h = r["hypothesis"]
                return f"precision {_r(h.get('precision'), 2)} recall {_r(h.get('recall'), 2)} f1 {_r(h.get('f1'), 2)}"
            return ", ".join(f"{k} {_fmt_score(v)}" for k, v in (r.get("scores") or {}).items())
        if tool == "final_answer":
            return str(r.get("explanation", ""))
        if tool == "user_hypothesis":
            return str(r.get("hypothesis", ""))
        if tool == "error":
            return "unusable reply"
    except (KeyError, TypeError, IndexError):
        pass
    return ""


def _compare(a: Any, b: Any, atol: float, rtol: float, path: str = "") -> tuple[bool, float | None, str]:
    """Recursive comparison: (equal within tolerance, largest numeric difference, where it first differs)."""
    worst: list[float] = []
    first_bad: list[str] = []

    def walk(x: Any, y: Any, p: str) -> None:
        if isinstance(x, bool) or isinstance(y, bool):
            if x != y:
                first_bad.append(f"{p}: {x!r} != {y!r}")
            return
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            d = abs(float(x) - float(y))
            worst.append(d)
            if d > atol + rtol * abs(float(x)):
                first_bad.append(f"{p}: {x!r} != {y!r}")
            return
        if isinstance(x, dict) and isinstance(y, dict):
            if set(x) != set(y):
                first_bad.append(f"{p}: keys {sorted(set(x) ^ set(y))} differ")
                return
            for k in x:
                walk(x[k], y[k], f"{p}.{k}" if p else str(k))
            return
        if isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                first_bad.append(f"{p}: length {len(x)} != {len(y)}")
                return
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{p}[{i}]")
            return
        if x != y:
            first_bad.append(f"{p}: {str(x)[:80]!r} != {str(y)[:80]!r}")

    walk(a, b, path)
    return (not first_bad), (max(worst) if worst else None), (first_bad[0] if first_bad else "")


# -- the tools' bodies -----------------------------------------------------------------------------------------
def _exemplars(agent: Agent, args: dict[str, Any]) -> ToolOutput:
    n = _int_arg(args, "n", 5, 1, 20)
    quantiles = args.get("quantiles", True)
    quantiles = quantiles if isinstance(quantiles, bool) else str(quantiles).lower() not in ("false", "0", "no")
    st, key, u = agent.store, agent.key, agent.unit
    top = st.exemplars(key, u, n=n)
    groups = st.quantile_exemplars(key, u, groups=4, per_group=1) if quantiles else []
    code = f"top = store.exemplars({key!r}, {u}, n={n})"
    if quantiles:
        code += f"\nquantiles = store.quantile_exemplars({key!r}, {u}, groups=4, per_group=1)"

    def ex(e: Any) -> dict[str, Any]:
        return {"window": int(e.window), "position": int(e.position), "value": float(e.value), "tokens": list(e.tokens),
                "acts": [float(a) for a in e.acts]}

    result = {"top": [ex(e) for e in top],
              "quantiles": [{"label": g.label, "lo": float(g.lo), "hi": float(g.hi), "exemplars": [ex(e) for e in g.exemplars]}
                            for g in groups]}
    lines = ["Top windows (the maximum token between << >>):"]
    for i, e in enumerate(result["top"]):
        rec = {"tokens": e["tokens"], "acts": e["acts"], "argmax": e["position"], "max": e["value"],
               "token": e["tokens"][e["position"]] if e["tokens"] else ""}
        lines.append(agent._describe_record(rec, f"{i + 1}. "))
    if result["quantiles"]:
        lines.append("Windows from lower quantiles of the activation distribution:")
        for g in result["quantiles"]:
            for e in g["exemplars"]:
                rec = {"tokens": e["tokens"], "acts": e["acts"], "argmax": e["position"], "max": e["value"],
                       "token": e["tokens"][e["position"]] if e["tokens"] else ""}
                lines.append(agent._describe_record(rec, f"{g['label']}: "))
    return ToolOutput(result, code, "\n".join(lines), {"n": n, "quantiles": quantiles})


def _texts(args: dict[str, Any]) -> list[str]:
    texts = args.get("texts", args.get("text"))
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list):
        raise ToolError('give "texts": a list of strings to run, e.g. {"texts": ["The cat sat.", "A dog ran."]}')
    out = [str(t) for t in texts if str(t).strip()][:8]
    if not out:
        raise ToolError('give "texts": at least one non-empty string')
    return [t[:1000] for t in out]


def _run_texts(agent: Agent, args: dict[str, Any]) -> ToolOutput:
    texts = _texts(args)
    recs = agent.text_records(texts)
    obs = "\n".join(agent._describe_record(r, f"{i + 1}. ") for i, r in enumerate(recs))
    return ToolOutput({"texts": recs}, agent._acts_code(texts), obs, {"texts": texts})


def _edit_text(agent: Agent, args: dict[str, Any]) -> ToolOutput:
    text = _str_arg(args, "text")
    if not text.strip():
        raise ToolError('give "text" (the original) and "new_text" (the edited text), or "find" and "replace"')
    new = args.get("new_text")
    if new is None or not str(new).strip():
        find, repl = args.get("find"), args.get("replace")
        if find is None or repl is None:
            raise ToolError('give "new_text", or "find" and "replace"')
        if str(find) not in text:
            raise ToolError(f"{find!r} is not in the text")
        new = text.replace(str(find), str(repl), 1)
    new = str(new)
    before, after = agent.text_records([text, new])
    result = {"before": before, "after": after,
              "change": (after["max"] - before["max"]) if None not in (after["max"], before["max"]) else None}
    obs = (agent._describe_record(before, "Before: ") + "\n" + agent._describe_record(after, "After: ")
           + f"\nChange of the maximum: {_r(result['change'], 2)}")
    return ToolOutput(result, agent._acts_code([text, new]), obs, {"text": text, "new_text": new})


def _prompt(agent: Agent, args: dict[str, Any]) -> str:
    p = _str_arg(args, "prompt") or _str_arg(args, "text")
    return p if p.strip() else agent.default_prompt()


def _ablate(agent: Agent, args: dict[str, Any]) -> ToolOutput:
    prompt = _prompt(agent, args)
    n_new = _int_arg(args, "max_new_tokens", agent.max_new_tokens, 1, 48)
    spec, code = agent.unit_spec("zero")
    result, py = agent._effect(prompt, spec, code, n_new)
    return ToolOutput(result, py, agent._describe_effect("Zeroing the unit", result),
                      {"prompt": prompt, "max_new_tokens": n_new})


def _steer(agent: Agent, args: dict[str, Any]) -> ToolOutput:
    prompt = _prompt(agent, args)
    n_new = _int_arg(args, "max_new_tokens", agent.max_new_tokens, 1, 48)
    factor, value = _float_arg(args, "factor"), _float_arg(args, "value")
    if factor is not None and value is None:
        spec, code = agent.unit_spec("scale", factor)
        what, used = f"Scaling the unit by {factor:g}", {"factor": factor}
    else:
        if value is None:
            value = float(f"{2 * agent.unit_max:.4g}") if agent.unit_max > 0 else 1.0
        spec, code = agent.unit_spec("set", value)
        what, used = f"Setting the unit to {value:g} at every position", {"value": value}
    result, py = agent._effect(prompt, spec, code, n_new)
    return ToolOutput(result, py, agent._describe_effect(what, result), {"prompt": prompt, **used, "max_new_tokens": n_new})


def _predicate(p: Any) -> tuple[Any, str, dict[str, Any]]:
    """A declarative predicate -> (Hypothesis, its Python, the normalized predicate)."""
    from ..neurons.hypotheses import Hypothesis

    if isinstance(p, str):
        p = {"regex": p}
    elif isinstance(p, list):
        p = {"token_in": p}
    if not isinstance(p, dict):
        raise ToolError('a predicate is {"token_in": [" the", " a"]} or {"regex": "^ [A-Z]", "offset": 0}')
    if "token_in" in p:
        toks = p["token_in"]
        toks = [toks] if isinstance(toks, str) else [str(t) for t in (toks or [])]
        if not toks:
            raise ToolError("token_in needs at least one token")
        strip = bool(p.get("strip", True))
        return (Hypothesis.token_in(toks, strip=strip), f"wb.Hypothesis.token_in({toks!r}, strip={strip!r})",
                {"token_in": toks, "strip": strip})
    if "regex" in p:
        pat = str(p["regex"])
        try:
            re.compile(pat)
        except re.error as e:
            raise ToolError(f"invalid regex {pat!r}: {e}") from None
        offset = int(p.get("offset", 0) or 0)
        return Hypothesis.regex(pat, offset=offset), f"wb.Hypothesis.regex({pat!r}, offset={offset})", {"regex": pat, "offset": offset}
    raise ToolError('a predicate has "token_in" (a list of tokens) or "regex" (a pattern)')


def _score_explanation(agent: Agent, args: dict[str, Any]) -> ToolOutput:
    text = _str_arg(args, "explanation").strip()
    pred = args.get("predicate")
    if pred not in (None, "", {}, []):
        from ..neurons.hypotheses import test_hypothesis

        hyp, hcode, norm = _predicate(pred)
        r = test_hypothesis(agent.store, agent.key, agent.unit, hyp, progress=False)
        summary = _jsonable(r.summary())
        ces = [_jsonable(c.to_dict()) for c in (r.false_negatives[:3] + r.false_positives[:3])]
        code = f"r = wb.test_hypothesis(store, {agent.key!r}, {agent.unit}, {hcode}, progress=False)\nr.summary()"
        obs = (f"Predicate {norm} over {r.n_tokens} tokens (active: activation > {r.threshold:.3g}): precision "
               f"{_r(r.precision, 2)}, recall {_r(r.recall, 2)}, f1 {_r(r.f1, 2)}, pearson {_r(r.pearson, 2)}.")
        if ces:
            obs += "\nCounterexamples: " + "; ".join(
                f"{c['kind']} {c['token']!r} ({c['activation']:.2f}) in {c['context'][-60:]!r}" for c in ces)
        return ToolOutput({"hypothesis": summary, "counterexamples": ces}, code, obs,
                          {"explanation": text, "predicate": norm})
    if not text:
        raise ToolError('give "explanation": a short description of when the unit activates')
    scores, code = agent._score(text)
    parts = [f"{k} {_fmt_score(v)} (95% CI {_r(v.get('lo'), 2)}–{_r(v.get('hi'), 2)}, n={v.get('n')})" for k, v in scores.items()]
    obs = f"Scores of {text!r}: " + "; ".join(parts) + (
        ". Detection is balanced accuracy: 0.5 is chance, 1.0 perfect." if "detection" in scores else "")
    return ToolOutput({"scores": scores}, code, obs, {"explanation": text})


def _final_answer(agent: Agent, args: dict[str, Any]) -> ToolOutput:
    text = _str_arg(args, "explanation").strip()
    evidence = _str_arg(args, "evidence").strip()
    used: dict[str, Any] = {"explanation": text, "evidence": evidence}
    scores: dict[str, Any] = {}
    code = ""
    if "scored_in_step" in args:
        used["scored_in_step"] = int(args["scored_in_step"])
    elif agent.score_final and text and args.get("score", True):
        scores, code = agent._score(text)
        used["score"] = True
    else:
        used["score"] = False
    obs = f"Final answer: {text!r}" + (f"; scores: {', '.join(f'{k} {_fmt_score(v)}' for k, v in scores.items())}" if scores else "")
    return ToolOutput({"explanation": text, "evidence": evidence, "scores": scores}, code, obs, used)


DEFAULT_TOOLS: tuple[Tool, ...] = (
    Tool("exemplars", '{"n": 5}: the texts where the unit activates most (and some from lower quantiles), '
         "with the activation of every token.", _exemplars),
    Tool("run_texts", '{"texts": ["...", "..."]}: run the model on your own texts; returns the unit\'s '
         "activation on every token.", _run_texts),
    Tool("edit_text", '{"text": "...", "new_text": "..."}: compare the activations on a text and an edited copy.',
         _edit_text),
    Tool("ablate", '{"prompt": "..."}: zero the unit; see how the next-token predictions and a short '
         "generation change.", _ablate),
    Tool("steer", '{"prompt": "...", "value": 5.0}: set the unit to a value (or "factor": 4 to scale it); '
         "see the effect on predictions and generation.", _steer),
    Tool("score_explanation", '{"explanation": "...", "predicate": {"token_in": [" the"]}}: score a draft '
         'explanation (with a predicate — {"token_in": [...]} or {"regex": "...", "offset": 0} — exact precision '
         "and recall over the corpus; without one, a detection score).", _score_explanation, uses_llm=True),
    Tool("final_answer", '{"explanation": "...", "evidence": "..."}: finish with your explanation.', _final_answer,
         uses_llm=True),
)
_TOOLS_BY_NAME: dict[str, Tool] = {t.name: t for t in DEFAULT_TOOLS}
