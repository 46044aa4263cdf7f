"""The agent's loop: `Agent` runs, resumes and replays an investigation of one unit (usage: `workbench.agent`).

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
  `wb.set_neurons`, `wb.scale_neurons`; `wb.dictionaries.zero_features` etc. for dictionary features; an
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

import math
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from ..core.viewers import Showable
from ..llm.base import ChatClient
from ..llm.errors import LLMError
from ..llm.parsing import REASK
from .errors import AgentCancelled, ToolError
from .experiments import UnitExperiments
from .parsing import parse_step_reply
from .prompts import (
    CONTINUE_PROMPT,
    EDIT_PROMPT,
    FINAL_PROMPT,
    NEXT_HINTS,
    NEXT_PROMPT,
    REASK_EXAMPLE,
    REPEAT_ERROR,
    SYSTEM_PROMPT,
    TASK_PROMPT,
    WARM_REPLY,
)
from .tools import DEFAULT_TOOLS, TOOLS_BY_NAME, Tool, ToolOutput, str_arg
from .transcript import NON_TOOL_STEPS, AgentResult, ReplayReport, Step, fmt_num, jsonable

__all__ = ["Agent"]


class Agent(UnitExperiments, Showable):
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
        self.key = store.site_key(unit[0])  # KeyError naming the store's sites
        self.unit = store.unit_index(self.key, unit[1])  # IndexError naming the range
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
            tool = t if isinstance(t, Tool) else TOOLS_BY_NAME.get(str(t))
            if tool is None:
                raise ValueError(f"unknown tool {t!r}: known tools are {', '.join(TOOLS_BY_NAME)} (or pass Tool objects)")
            self.tools[tool.name] = tool
        if "final_answer" not in self.tools:
            self.tools["final_answer"] = TOOLS_BY_NAME["final_answer"]
        self._client_spec = client
        self._client: ChatClient | None = client if isinstance(client, ChatClient) else None
        self._stats: dict[str, float] | None = None
        self._lock = threading.Lock()

    # -- basics ---------------------------------------------------------------------------------------------
    @property
    def client(self) -> ChatClient:
        """The chat client (made on first use)."""
        if self._client is None:
            from ..core.loading import EMBEDDED_NAME
            from ..llm.factory import llm_client
            from ..llm.local import LocalChatClient

            if self._client_spec is None and getattr(self.model, "name", "") == EMBEDDED_NAME:
                self._client = LocalChatClient(self.model)
            else:
                self._client = llm_client(self._client_spec)
        return self._client

    @property
    def what(self) -> str:
        """The unit in words for the prompts ("MLP neuron 7 of layer 3", "feature 5 of sae")."""
        if self.is_feature:
            return f"feature {self.unit} of {self.key}"
        from ..core.sites import Site

        s = Site.parse(self.read_site)
        if s.name == "neurons":
            return f"MLP neuron {self.unit} of layer {s.layer}"
        return f"unit {self.unit} of {self.read_site}"

    def stats(self) -> dict[str, float]:
        """The unit's statistics over the scan (`ScanStore.unit_stats`), computed once."""
        if self._stats is None:
            self._stats = self.store.unit_stats(self.key, self.unit)
        return self._stats

    @property
    def unit_max(self) -> float:
        """The unit's maximum activation over the scan (the tint scale of the widget)."""
        m = float(self.stats().get("max", math.nan))
        return m if math.isfinite(m) else 0.0

    def system_prompt(self) -> str:
        """The system prompt, listing this agent's tools."""
        tools = "\n".join(f"- {t.name} {t.usage}" for t in self.tools.values())
        return SYSTEM_PROMPT.format(what=self.what, tools=tools)

    def task_prompt(self, budget: int | None = None) -> str:
        """The first user message: the unit, its scan statistics and the step budget."""
        st = self.stats()
        return TASK_PROMPT.format(what=self.what, site=self.key, unit=self.unit, model=self.model.name or "?",
                                  max=fmt_num(st.get("max")), mean=fmt_num(st.get("mean")),
                                  frac=f"{100 * float(st.get('frac_active', 0.0)):.1f}%", budget=budget or self.max_steps)

    def initial_messages(self) -> list[dict[str, str]]:
        """The conversation a run starts from: system prompt and task prompt."""
        return [{"role": "system", "content": self.system_prompt()}, {"role": "user", "content": self.task_prompt()}]

    def meta(self) -> dict[str, Any]:
        """What a transcript records about the run: model, client, store, unit, tools."""
        client = self._client.spec if self._client is not None else str(self._client_spec or "local")
        return {"model": self.model.name, "client": client, "store": str(self.store.path), "site": self.key,
                "unit": self.unit, "read_site": self.read_site, "max_steps": self.max_steps,
                "tools": list(self.tools), "dictionary": self.dictionary_name, "unit_max": self.unit_max}

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, on_step: Callable[[Step], None] | None = None, cancel: threading.Event | None = None, *,
            progress: bool | None = None) -> AgentResult:
        """Run the loop from the start; ``on_step(step)`` after each step.

        ``cancel`` (a `threading.Event`) stops the run between steps: `AgentCancelled` is raised
        with ``.partial``, the transcript so far (status ``"cancelled"``), which `resume` continues.
        """
        result = AgentResult([], messages=self.initial_messages(), unit=(self.key, self.unit), meta=self.meta())
        return self._loop(result, on_step, cancel, self.max_steps, warm=self.warm_start and "exemplars" in self.tools,
                          progress=progress)

    def resume(self, result: AgentResult, hypothesis: str | None = None, on_step: Callable[[Step], None] | None = None,
               cancel: threading.Event | None = None, max_steps: int | None = None, *,
               progress: bool | None = None) -> AgentResult:
        """Continue a transcript (for ``max_steps`` more steps), optionally with an edited hypothesis.

        The hypothesis is injected as a user message and recorded as a ``user_hypothesis``
        step. Returns a new `AgentResult` holding the old steps and the new ones; a set
        ``cancel`` raises `AgentCancelled` with that result (status ``"cancelled"``) as ``.partial``.
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
        if result.status == "cancelled":
            raise AgentCancelled(f"the agent run was cancelled after {len(result.steps)} step(s)", partial=result)
        return result

    def _final_args(self, result: AgentResult, args: dict[str, Any]) -> dict[str, Any]:
        """A final answer's arguments: the hypothesis when no explanation; an earlier step's scores if any."""
        args = dict(args)
        if not str_arg(args, "explanation").strip():
            args["explanation"] = result.hypothesis
        prev = self._scored(result, str_arg(args, "explanation"))
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
            step = Step(index, thought or "(forced final answer)", "final_answer", jsonable(out.args),
                        jsonable({**out.result, "forced": True}),
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
            return Step(index, parsed["thought"], tool, jsonable(args), {"error": msg, "repeat_of": repeat}, "", started,
                        0.0, msg, result.hypothesis, raw, f"Error from {tool}: {msg}.", attempts, llm_s)
        try:
            out = self._run_tool(tool, args)
        except Exception as exc:  # noqa: BLE001 - the model sees the error and goes on
            msg = f"{type(exc).__name__}: {exc}"
            obs = f"Error from {tool}: {msg}. Fix the arguments or use another tool."
            res: dict[str, Any] = {"error": msg}
            if tool == "final_answer":
                res = {"explanation": str_arg(args, "explanation"), "evidence": str_arg(args, "evidence"), "scores": {},
                       "error": msg}
            return Step(index, parsed["thought"], tool, jsonable(args), res, "", started, time.perf_counter() - t0, msg,
                        result.hypothesis, raw, _clip(obs, self.max_observation_chars), attempts, llm_s)
        if tool == "final_answer" and "scored_in_step" in out.args:
            out.result["scores"] = dict(result.steps[out.args["scored_in_step"]].result.get("scores") or {})
        if tool == "score_explanation":
            text = str_arg(out.args, "explanation").strip()
            if text:
                result.hypothesis = text
        return Step(index, parsed["thought"], tool, jsonable(out.args), jsonable(out.result), out.python, started,
                    time.perf_counter() - t0, None, result.hypothesis, raw,
                    _clip(f"Result of {tool}:\n{out.observation}", self.max_observation_chars), attempts, llm_s)

    @staticmethod
    def _repeat_of(result: AgentResult, tool: str, args: dict[str, Any]) -> int | None:
        """The step that already made exactly this call (same tool, same arguments as given or as used)."""
        if tool == "final_answer":
            return None
        want = jsonable(args)
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
        tool = self.tools.get(name) or TOOLS_BY_NAME.get(name)
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
            if s.tool in NON_TOOL_STEPS or (s.tool not in self.tools and s.tool not in TOOLS_BY_NAME):
                row.update(status="skipped", message="not a tool call")
                continue
            if "repeat_of" in s.result:
                row.update(status="skipped", message=f"refused as a repeat of step {s.result['repeat_of']}")
                continue
            if s.tool == "final_answer" and ("scored_in_step" in s.args or s.result.get("forced") and not s.python):
                row.update(status="skipped", message="scores taken from an earlier step")
                continue
            tool = self.tools.get(s.tool) or TOOLS_BY_NAME[s.tool]
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
            ok, diff, where = _compare(recorded, jsonable(out.result), atol, rtol)
            row.update(status="match" if ok else "mismatch", max_abs_diff=diff, message=where)
        return report


def _given_args(raw: str, tool: str) -> Any:
    try:
        p = parse_step_reply(raw, [tool])
    except ValueError:
        return None
    return jsonable(p["args"]) if p["tool"] == tool else None


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 15] + " …(truncated)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
