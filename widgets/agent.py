"""AgentTranscript: an interpretability agent's steps as they happen, with Run / Stop / Continue.

    agent = wb.Agent(model, store, unit=("neurons.12", 345))
    AgentTranscript(agent)            # press Run: steps stream in; Stop; edit the hypothesis; Continue
    AgentTranscript(result)           # a saved transcript (wb.agent.AgentResult.load(path)), read-only
    result.show()                     # the same

Each step shows the model's thought and hypothesis, the tool call, its equivalent Python, and
its result: texts tinted by the unit's activation (one scale for the whole transcript: the
unit's maximum over the scan), next-token and generation changes for ablate / steer, scores.
The run executes in a background job that sends each step as a partial reply (activations
as binary buffers). Stop cancels the job: the agent stops after the step in progress and the
transcript so far stays. Continue resumes from the transcript, with the hypothesis box's text
injected as the user's edited hypothesis when it was changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from contextlib import closing
from typing import Any

import numpy as np
import traitlets

from workbench.agent import Agent, AgentResult, Step
from workbench.core.errors import Cancelled as WorkCancelled
from workbench.core.viewers import register_viewer

from ._base import Job, WorkbenchWidget, bundle, rpc
from ._stream import Stream

#: Per-step result fields sent as JSON details (the texts with activations go separately, as arrays).
_DETAIL_KEYS = {
    "ablate": ("prompt", "spec", "top_before", "top_after", "kl", "generation_before", "generation_after"),
    "steer": ("prompt", "spec", "top_before", "top_after", "kl", "generation_before", "generation_after"),
    "edit_text": ("change",),
    "score_explanation": ("scores", "hypothesis", "counterexamples"),
    "final_answer": ("explanation", "evidence", "scores", "forced"),
    "user_hypothesis": ("hypothesis",),
    "error": ("raw",),
}


def _text(label: str, rec: dict[str, Any], argmax: int | None = None) -> dict[str, Any]:
    acts = np.asarray([np.nan if a is None else a for a in rec.get("acts", [])], dtype=np.float32)
    return {"label": label, "tokens": [str(t) for t in rec.get("tokens", [])], "acts": acts,
            "argmax": int(rec.get("argmax", argmax if argmax is not None else -1)),
            "max": rec.get("max", rec.get("value"))}


def step_texts(step: Step) -> list[dict[str, Any]]:
    """The texts of a step with the unit's per-token activations (float32 arrays)."""
    r = step.result or {}
    if step.error and step.tool != "final_answer":
        return []
    try:
        if step.tool == "exemplars":
            out = [_text(f"top {i + 1} · window {e['window']}", {**e, "argmax": e["position"], "max": e["value"]})
                   for i, e in enumerate(r.get("top", []))]
            for g in r.get("quantiles", []):
                out += [_text(f"{g['label']} · window {e['window']}", {**e, "argmax": e["position"], "max": e["value"]})
                        for e in g.get("exemplars", [])]
            return out
        if step.tool == "run_texts":
            return [_text(f"text {i + 1}", rec) for i, rec in enumerate(r.get("texts", []))]
        if step.tool == "edit_text":
            return [_text("before", r["before"]), _text("after", r["after"])]
        if step.tool in ("ablate", "steer") and "text" in r:
            return [_text("prompt (unmodified run)", r["text"])]
    except (KeyError, TypeError):
        return []
    return []


def step_payload(step: Step) -> dict[str, Any]:
    """What the browser gets for one step: JSON fields plus texts whose activations are arrays."""
    keys = _DETAIL_KEYS.get(step.tool, ())
    details = {k: step.result[k] for k in keys if k in (step.result or {})}
    return {"index": step.index, "tool": step.tool, "thought": step.thought, "hypothesis": step.hypothesis,
            "args": step.args, "python": step.python, "seconds": round(float(step.seconds), 3),
            "llm_seconds": round(float(step.llm_seconds), 3), "error": step.error, "started": step.started,
            "attempts": step.attempts, "summary": step.summary(), "texts": step_texts(step), "details": details}


class AgentTranscript(WorkbenchWidget):
    """The steps of an `Agent` run as they happen; Run / Stop / Continue with an editable hypothesis."""

    _esm = bundle("agent")

    unit_label = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)  # "", running, final, forced, cancelled, error
    hypothesis = traitlets.Unicode("").tag(sync=True)
    explanation = traitlets.Unicode("").tag(sync=True)
    scores = traitlets.Dict().tag(sync=True)
    n_steps = traitlets.Int(0).tag(sync=True)
    max_steps = traitlets.Int(0).tag(sync=True)
    can_run = traitlets.Bool(False).tag(sync=True)
    #: The tint scale: the unit's maximum activation over the scan.
    scale = traitlets.Float(1.0).tag(sync=True)

    def __init__(self, source: Agent | AgentResult, result: AgentResult | None = None, **kwargs: Any) -> None:
        if isinstance(source, Agent):
            agent, res = source, result
        elif isinstance(source, AgentResult):
            if result is not None:
                raise TypeError("give AgentTranscript(agent, result) or AgentTranscript(result)")
            agent, res = None, source
        else:
            raise TypeError(f"AgentTranscript takes a workbench Agent or AgentResult, not {type(source).__name__}")
        unit = (agent.key, agent.unit) if agent is not None else res.unit
        scale = agent.unit_max if agent is not None else float((res.meta or {}).get("unit_max") or 0.0)
        label = agent.what if agent is not None else (f"{unit[0]} unit {unit[1]}" if unit else "")
        super().__init__(unit_label=f"{label} ({unit[0]}[{unit[1]}])" if unit else label,
                         scale=scale if scale > 0 else 1.0, can_run=agent is not None,
                         max_steps=agent.max_steps if agent is not None else 0, **kwargs)
        self.agent = agent
        self._result = res
        self._live: list[Step] = list(res.steps) if res is not None else []
        self._worker: threading.Thread | None = None
        self._cancel: threading.Event | None = None
        self._state = threading.RLock()
        if res is not None:
            self._apply(res)

    # -- state ------------------------------------------------------------------------------------
    @property
    def result(self) -> AgentResult | None:
        """The latest transcript (after a run or a stop; None before the first run)."""
        return self._result

    @property
    def steps(self) -> list[Step]:
        """Every step so far, including those of a run in progress."""
        with self._state:
            return list(self._live)

    def _apply(self, res: AgentResult) -> None:
        self.status = res.status
        self.hypothesis = res.hypothesis
        self.explanation = res.explanation
        self.scores = dict(res.scores)
        self.n_steps = len(res.steps)

    def _summary(self) -> dict[str, Any]:
        res = self._result
        return {"status": self.status, "hypothesis": self.hypothesis, "explanation": self.explanation,
                "evidence": res.evidence if res is not None else "", "scores": dict(self.scores),
                "n_steps": len(self._live)}

    # -- rpc --------------------------------------------------------------------------------------
    # -- static copy ---------------------------------------------------------------------
    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The transcript so far (``steps``)."""
        return [("steps", {})]

    @rpc()
    def rpc_steps(self) -> dict[str, Any]:
        """Every step so far (a view opening, or re-rendering, shows the whole transcript)."""
        with self._state:
            steps = list(self._live)
        return {**self._summary(), "steps": [step_payload(s) for s in steps]}

    @rpc(background=True)
    def rpc_run(self, hypothesis: str | None = None, after: int = 0, restart: bool = False,
                job: Job | None = None) -> Generator[dict, None, dict]:
        """Run (``restart`` or no transcript yet) or continue the agent, streaming steps.

        ``after``: how many steps the view already shows (missing ones are sent first).
        ``hypothesis``: an edited hypothesis to inject when continuing (ignored when empty).
        Partial replies are ``{"step": payload, "hypothesis", "n_steps"}``; the final reply the
        summary (status, hypothesis, explanation, evidence, scores, n_steps).
        """
        if self.agent is None:
            raise RuntimeError("this transcript has no agent to run: open AgentTranscript(agent) (or "
                               "AgentTranscript(agent, result) to continue a saved transcript)")
        self._join()
        cancel = job.event if job is not None else threading.Event()
        with self._state:
            previous = None if restart else self._result
            if previous is None:
                self._live = []
            backlog = list(self._live[int(after or 0):])
        for s in backlog:
            yield {"step": step_payload(s), "hypothesis": self.hypothesis, "n_steps": len(self._live)}
        edit = hypothesis.strip() if isinstance(hypothesis, str) and hypothesis.strip() else None

        def work(emit: Callable[[Step], None]) -> None:
            def on_step(step: Step) -> None:
                with self._state:
                    self._live.append(step)
                emit(step)

            try:
                try:
                    if previous is None:
                        res = self.agent.run(on_step=on_step, cancel=cancel, progress=False)
                    else:
                        res = self.agent.resume(previous, hypothesis=edit, on_step=on_step, cancel=cancel,
                                                progress=False)
                except WorkCancelled as stopped:  # a stopped run raises with the transcript so far
                    if not isinstance(stopped.partial, AgentResult):
                        raise
                    res = stopped.partial
            except BaseException:
                self.status = "error"
                raise
            with self._state:
                self._result = res
                self._live = list(res.steps)
            self._apply(res)

        self.status = "running"
        self._cancel = cancel
        run = Stream(work, job, cancel, wait=False, poll=0.1, name="agent-run")  # a stop raises Cancelled at once
        self._worker = run.thread
        with closing(iter(run)) as steps:
            for step in steps:
                if step.hypothesis:
                    self.hypothesis = step.hypothesis
                self.n_steps = len(self._live)
                yield {"step": step_payload(step), "hypothesis": self.hypothesis, "n_steps": self.n_steps}
        return self._summary()

    def _join(self, timeout: float | None = None) -> None:
        w = self._worker
        if w is not None and w.is_alive() and w is not threading.current_thread():
            w.join(timeout)

    # -- Python API ----------------------------------------------------------------------------------
    def run(self, hypothesis: str | None = None, restart: bool = False) -> AgentResult:
        """Run (or continue) synchronously from Python, as the buttons do; returns the transcript."""
        self.call("run", hypothesis=hypothesis, after=len(self._live), restart=restart)
        assert self._result is not None
        return self._result

    def stop(self, wait: bool = True) -> None:
        """Stop the running agent after its current step (the transcript so far stays)."""
        if self._cancel is not None:
            self._cancel.set()
        if wait:
            self._join()


register_viewer(AgentResult, lambda res, **kw: AgentTranscript(res, **kw))
register_viewer(Agent, lambda agent, **kw: AgentTranscript(agent, **kw))
