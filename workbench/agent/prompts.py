"""The agent's prompts: the system prompt, per-step prompts and hints, and the warm-start reply."""

from __future__ import annotations

import json

__all__ = ["CONTINUE_PROMPT", "EDIT_PROMPT", "FINAL_PROMPT", "NEXT_HINTS", "NEXT_PROMPT", "REASK_EXAMPLE",
           "REPEAT_ERROR", "SYSTEM_PROMPT", "TASK_PROMPT", "WARM_REPLY"]

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
