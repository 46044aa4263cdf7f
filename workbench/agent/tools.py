"""The agent's tools: `Tool`, `ToolOutput`, the tool bodies and `DEFAULT_TOOLS`.

Each tool is ``run(agent, args) -> ToolOutput``: a thin wrapper over the workbench's public
functions, reached through the running `Agent` (its ``store``, ``key``, ``unit`` and its
experiment methods), that also records the same call as Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.program import finite_number
from .errors import ToolError
from .transcript import fmt_num, fmt_score, jsonable

__all__ = ["DEFAULT_TOOLS", "TOOLS_BY_NAME", "Tool", "ToolOutput", "float_arg", "int_arg", "str_arg"]


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
    run: Callable[[Any, dict[str, Any]], ToolOutput]  # (agent, args)
    uses_llm: bool = False


def int_arg(args: dict, key: str, default: int, lo: int, hi: int) -> int:
    """``args[key]`` as a whole number clipped to [lo, hi] (``default`` when absent); ToolError otherwise."""
    v = args.get(key, default)
    if v is None:
        return default
    try:
        v = int(float(v))
    except (TypeError, ValueError):
        raise ToolError(f"{key} must be a whole number, not {v!r}") from None
    return max(lo, min(hi, v))


def float_arg(args: dict, key: str) -> float | None:
    """``args[key]`` as a finite float, None when absent; ToolError otherwise."""
    v = args.get(key)
    if v is None or v == "":
        return None
    try:
        return finite_number(key, v)
    except ValueError as e:
        raise ToolError(str(e)) from None


def str_arg(args: dict, key: str, default: str = "") -> str:
    """``args[key]`` as a string (a list joined with spaces; ``default`` when absent)."""
    v = args.get(key, default)
    if v is None:
        return default
    if isinstance(v, list):
        v = " ".join(str(x) for x in v)
    return str(v)


def _exemplars(agent: Any, args: dict[str, Any]) -> ToolOutput:
    n = int_arg(args, "n", 5, 1, 20)
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
        lines.append(agent.describe_record(rec, f"{i + 1}. "))
    if result["quantiles"]:
        lines.append("Windows from lower quantiles of the activation distribution:")
        for g in result["quantiles"]:
            for e in g["exemplars"]:
                rec = {"tokens": e["tokens"], "acts": e["acts"], "argmax": e["position"], "max": e["value"],
                       "token": e["tokens"][e["position"]] if e["tokens"] else ""}
                lines.append(agent.describe_record(rec, f"{g['label']}: "))
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


def _run_texts(agent: Any, args: dict[str, Any]) -> ToolOutput:
    texts = _texts(args)
    recs = agent.text_records(texts)
    obs = "\n".join(agent.describe_record(r, f"{i + 1}. ") for i, r in enumerate(recs))
    return ToolOutput({"texts": recs}, agent.acts_code(texts), obs, {"texts": texts})


def _edit_text(agent: Any, args: dict[str, Any]) -> ToolOutput:
    text = str_arg(args, "text")
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
    obs = (agent.describe_record(before, "Before: ") + "\n" + agent.describe_record(after, "After: ")
           + f"\nChange of the maximum: {fmt_num(result['change'], 2)}")
    return ToolOutput(result, agent.acts_code([text, new]), obs, {"text": text, "new_text": new})


def _prompt(agent: Any, args: dict[str, Any]) -> str:
    p = str_arg(args, "prompt") or str_arg(args, "text")
    return p if p.strip() else agent.default_prompt()


def _ablate(agent: Any, args: dict[str, Any]) -> ToolOutput:
    prompt = _prompt(agent, args)
    n_new = int_arg(args, "max_new_tokens", agent.max_new_tokens, 1, 48)
    spec, code = agent.unit_spec("zero")
    result, py = agent.effect(prompt, spec, code, n_new)
    return ToolOutput(result, py, agent.describe_effect("Zeroing the unit", result),
                      {"prompt": prompt, "max_new_tokens": n_new})


def _steer(agent: Any, args: dict[str, Any]) -> ToolOutput:
    prompt = _prompt(agent, args)
    n_new = int_arg(args, "max_new_tokens", agent.max_new_tokens, 1, 48)
    factor, value = float_arg(args, "factor"), float_arg(args, "value")
    if factor is not None and value is None:
        spec, code = agent.unit_spec("scale", factor)
        what, used = f"Scaling the unit by {factor:g}", {"factor": factor}
    else:
        if value is None:
            value = float(f"{2 * agent.unit_max:.4g}") if agent.unit_max > 0 else 1.0
        spec, code = agent.unit_spec("set", value)
        what, used = f"Setting the unit to {value:g} at every position", {"value": value}
    result, py = agent.effect(prompt, spec, code, n_new)
    return ToolOutput(result, py, agent.describe_effect(what, result), {"prompt": prompt, **used, "max_new_tokens": n_new})


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
        return (Hypothesis.token_in(toks, strip=strip), f"wb.neurons.Hypothesis.token_in({toks!r}, strip={strip!r})",
                {"token_in": toks, "strip": strip})
    if "regex" in p:
        pat = str(p["regex"])
        try:
            re.compile(pat)
        except re.error as e:
            raise ToolError(f"invalid regex {pat!r}: {e}") from None
        offset = int(p.get("offset", 0) or 0)
        return Hypothesis.regex(pat, offset=offset), f"wb.neurons.Hypothesis.regex({pat!r}, offset={offset})", {"regex": pat, "offset": offset}
    raise ToolError('a predicate has "token_in" (a list of tokens) or "regex" (a pattern)')


def _score_explanation(agent: Any, args: dict[str, Any]) -> ToolOutput:
    text = str_arg(args, "explanation").strip()
    pred = args.get("predicate")
    if pred not in (None, "", {}, []):
        from ..neurons.hypotheses import test_hypothesis

        hyp, hcode, norm = _predicate(pred)
        r = test_hypothesis(agent.store, agent.key, agent.unit, hyp, progress=False)
        summary = jsonable(r.summary())
        ces = [jsonable(c.to_dict()) for c in (r.false_negatives[:3] + r.false_positives[:3])]
        code = f"r = wb.test_hypothesis(store, {agent.key!r}, {agent.unit}, {hcode}, progress=False)\nr.summary()"
        obs = (f"Predicate {norm} over {r.n_tokens} tokens (active: activation > {r.threshold:.3g}): precision "
               f"{fmt_num(r.precision, 2)}, recall {fmt_num(r.recall, 2)}, f1 {fmt_num(r.f1, 2)}, pearson {fmt_num(r.pearson, 2)}.")
        if ces:
            obs += "\nCounterexamples: " + "; ".join(
                f"{c['kind']} {c['token']!r} ({c['activation']:.2f}) in {c['context'][-60:]!r}" for c in ces)
        return ToolOutput({"hypothesis": summary, "counterexamples": ces}, code, obs,
                          {"explanation": text, "predicate": norm})
    if not text:
        raise ToolError('give "explanation": a short description of when the unit activates')
    scores, code = agent.score_text(text)
    parts = [f"{k} {fmt_score(v)} (95% CI {fmt_num(v.get('lo'), 2)}–{fmt_num(v.get('hi'), 2)}, n={v.get('n')})" for k, v in scores.items()]
    obs = f"Scores of {text!r}: " + "; ".join(parts) + (
        ". Detection is balanced accuracy: 0.5 is chance, 1.0 perfect." if "detection" in scores else "")
    return ToolOutput({"scores": scores}, code, obs, {"explanation": text})


def _final_answer(agent: Any, args: dict[str, Any]) -> ToolOutput:
    text = str_arg(args, "explanation").strip()
    evidence = str_arg(args, "evidence").strip()
    used: dict[str, Any] = {"explanation": text, "evidence": evidence}
    scores: dict[str, Any] = {}
    code = ""
    if "scored_in_step" in args:
        used["scored_in_step"] = int(args["scored_in_step"])
    elif agent.score_final and text and args.get("score", True):
        scores, code = agent.score_text(text)
        used["score"] = True
    else:
        used["score"] = False
    obs = f"Final answer: {text!r}" + (f"; scores: {', '.join(f'{k} {fmt_score(v)}' for k, v in scores.items())}" if scores else "")
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
#: The known tools by name.
TOOLS_BY_NAME: dict[str, Tool] = {t.name: t for t in DEFAULT_TOOLS}
