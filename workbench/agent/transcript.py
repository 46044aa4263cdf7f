"""Agent transcripts: `Step`, `AgentResult` (JSON save/load, views) and `ReplayReport`; JSON helpers."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.viewers import Showable

__all__ = ["FORMAT", "NON_TOOL_STEPS", "VERSION", "AgentResult", "ReplayReport", "Step", "fmt_num", "fmt_score",
           "jsonable", "step_summary"]

FORMAT = "interp-workbench/agent"
VERSION = 1
#: Steps that are not tool calls (nothing to replay).
NON_TOOL_STEPS = ("error", "user_hypothesis")


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
        """JSON-ready."""
        return {"index": self.index, "thought": self.thought, "tool": self.tool, "args": jsonable(self.args),
                "result": jsonable(self.result), "python": self.python, "started": self.started,
                "seconds": self.seconds, "error": self.error, "hypothesis": self.hypothesis, "raw": self.raw,
                "observation": self.observation, "attempts": self.attempts, "llm_seconds": self.llm_seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        """The inverse of `to_dict`."""
        return cls(int(d["index"]), str(d.get("thought", "")), str(d["tool"]), dict(d.get("args") or {}),
                   dict(d.get("result") or {}), str(d.get("python", "")), str(d.get("started", "")),
                   float(d.get("seconds", 0.0)), d.get("error"), str(d.get("hypothesis", "")), str(d.get("raw", "")),
                   str(d.get("observation", "")), int(d.get("attempts", 1)), float(d.get("llm_seconds", 0.0)))

    def summary(self) -> str:
        """A one-line summary of the result."""
        if self.error:
            return f"error: {self.error}"
        return step_summary(self.tool, self.result)


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
        """The last ``final_answer`` step, if any."""
        for s in reversed(self.steps):
            if s.tool == "final_answer":
                return s
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the format tag and version."""
        return {"format": FORMAT, "version": VERSION, "unit": list(self.unit) if self.unit else None,
                "status": self.status, "explanation": self.explanation, "evidence": self.evidence,
                "scores": jsonable(self.scores), "hypothesis": self.hypothesis, "meta": jsonable(self.meta),
                "steps": [s.to_dict() for s in self.steps], "messages": [dict(m) for m in self.messages]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentResult:
        """The inverse of `to_dict`; ValueError for another format or version."""
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
        """Write the transcript as JSON (no pickle), atomically (fsynced before the rename)."""
        from ..core.fileio import atomic_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> AgentResult:
        """Read a transcript written by `save` (ValueError naming what is wrong)."""
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
                              "args": json.dumps(jsonable(s.args)), "summary": s.summary(), "python": s.python,
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
        scores = ", ".join(f"{e(k)}={e(fmt_score(v))}" for k, v in self.scores.items())
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
        """How many rerun steps matched."""
        return sum(r["status"] == "match" for r in self.rows)

    def to_pandas(self):
        """One row per step: step, tool, status, max_abs_diff, message."""
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


def jsonable(x: Any) -> Any:
    """Plain JSON values: numpy/torch to lists and floats, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
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


def fmt_score(v: Any) -> str:
    """A recorded score (``{"value": ...}`` or a hypothesis ``{"f1": ...}``) as short text."""
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


def fmt_num(x: float | None, d: int = 3) -> str:
    """A number with ``d`` decimals (``d`` significant digits from 1e4), "nan" for None or non-finite."""
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{d}g}" if abs(x) >= 1e4 else f"{x:.{d}f}"


def step_summary(tool: str, r: dict[str, Any]) -> str:
    """A one-line summary of a tool's recorded result."""
    try:
        if tool == "exemplars":
            top = r.get("top") or []
            return f"{len(top)} top windows (max {fmt_num(top[0]['value'], 2)})" if top else "no exemplars"
        if tool == "run_texts":
            return "; ".join(f"{t['token']!r} {fmt_num(t['max'], 2)}" for t in r.get("texts", []))
        if tool == "edit_text":
            return f"max {fmt_num(r['before']['max'], 2)} → {fmt_num(r['after']['max'], 2)}"
        if tool in ("ablate", "steer"):
            return f"KL {fmt_num(r.get('kl'), 4)}; {r.get('generation_after', '')!r}"
        if tool == "score_explanation":
            if "hypothesis" in r:
                h = r["hypothesis"]
                return f"precision {fmt_num(h.get('precision'), 2)} recall {fmt_num(h.get('recall'), 2)} f1 {fmt_num(h.get('f1'), 2)}"
            return ", ".join(f"{k} {fmt_score(v)}" for k, v in (r.get("scores") or {}).items())
        if tool == "final_answer":
            return str(r.get("explanation", ""))
        if tool == "user_hypothesis":
            return str(r.get("hypothesis", ""))
        if tool == "error":
            return "unusable reply"
    except (KeyError, TypeError, IndexError):
        pass
    return ""
