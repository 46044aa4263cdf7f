"""The prompt formats: Bills et al.'s and Delphi's explainer prompts, the scorers' prompts.

Explainers: `openai_explain_messages` (``token<tab>activation`` records scaled to 0–10) and
`delphi_explain_messages` (activating tokens between ``<< >>``). Scorers: `detection_messages`,
`fuzzing_messages`, `simulation_messages` and `sasc_messages`. The replies are read by
`workbench.autointerp.parsing`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .records import Record, clean_token

__all__ = [
    "DELPHI_EXPLAIN_SYSTEM", "DETECTION_SYSTEM", "EOL", "EXPLANATION_PREFIX", "FUZZING_SYSTEM", "OPENAI_EXPLAIN_SYSTEM",
    "SIMULATION_SYSTEM", "delphi_explain_messages", "detection_messages", "format_activation_records",
    "fuzzing_messages", "highlight", "normalize_activations", "openai_explain_messages", "sasc_messages",
    "simulation_messages",
]

EXPLANATION_PREFIX = "the main thing this neuron does is find"  # Bills et al.'s answer prefix
EOL = "\u0f17"  # the end-of-line mark of the OpenAI logprob-free simulator (easy to split on)


def normalize_activations(acts: Sequence[float], max_activation: float) -> list[int]:
    """Integers 0–10: ``min(10, floor(10 * relu(a) / max_activation))`` (all 0 when max <= 0)."""
    if not max_activation > 0:
        return [0] * len(acts)
    return [min(10, math.floor(10 * max(0.0, float(a)) / max_activation)) for a in acts]


def format_activation_records(records: Sequence[Record], max_activation: float, *, omit_zeros: bool = False,
                              hide_activations: bool = False) -> str:
    """Bills et al.'s record format: ``token<tab>activation`` lines, records between <start> and <end>."""
    blocks = []
    for r in records:
        norm = normalize_activations(r.acts, max_activation)
        lines = []
        for t, a in zip(r.tokens, norm, strict=True):
            if omit_zeros and a == 0:
                continue
            lines.append(f"{clean_token(t)}\t{'unknown' if hide_activations else a}")
        blocks.append("\n".join(lines))
    return "\n<start>\n" + "\n<end>\n<start>\n".join(blocks) + "\n<end>\n"


def _max_activation(records: Sequence[Record]) -> float:
    return max([max(0.0, r.max) for r in records] + [0.0])


def _nonzero_fraction(records: Sequence[Record], max_activation: float) -> float:
    norm = [a for r in records for a in normalize_activations(r.acts, max_activation)]
    return sum(a > 0 for a in norm) / len(norm) if norm else 0.0


# A small worked example for the few-shot turns (written for this module).
_FEW_TOKENS = ["The", " cat", " chased", " a", " small", " dog", " across", " the", " yard", "."]
_FEW_ACTS = np.array([0, 9, 0, 0, 1, 10, 0, 0, 0, 0], dtype=np.float32)
_FEW_EXPLANATION = "nouns naming animals"

OPENAI_EXPLAIN_SYSTEM = (
    "We study neurons in a neural network. Each neuron looks for one particular thing in a short text. "
    "Look at the tokens where the neuron activates and say in one short sentence what it looks for. "
    "Do not list example words.\n\nEach line is token<tab>activation. Activations go from 0 to 10; "
    "0 means no match and higher values mean a stronger match.")


def _openai_neuron_turn(records: Sequence[Record], index: int) -> str:
    mx = _max_activation(records)
    msg = f"\n\nNeuron {index}\nActivations:{format_activation_records(records, mx)}"
    if _nonzero_fraction(records, mx) < 0.2:
        msg += f"\nSame activations, but with all zeros filtered out:{format_activation_records(records, mx, omit_zeros=True)}"
    return msg + f"\nExplanation of neuron {index} behavior: {EXPLANATION_PREFIX}"


def openai_explain_messages(records: Sequence[Record]) -> list[dict[str, str]]:
    """The explanation prompt in Bills et al.'s format: one worked example, then the unit as neuron 2."""
    few = [Record(-1, _FEW_TOKENS, _FEW_ACTS)]
    return [{"role": "system", "content": OPENAI_EXPLAIN_SYSTEM},
            {"role": "user", "content": _openai_neuron_turn(few, 1)},
            {"role": "assistant", "content": f" {_FEW_EXPLANATION}."},
            {"role": "user", "content": _openai_neuron_turn(records, 2)}]


def highlight(tokens: Sequence[str], acts: Sequence[float], threshold: float) -> str:
    """Tokens joined, each run of tokens with activation above ``threshold`` between << and >>."""
    out, i, n = [], 0, len(tokens)
    while i < n:
        if acts[i] > threshold:
            out.append("<<")
            while i < n and acts[i] > threshold:
                out.append(clean_token(tokens[i]))
                i += 1
            out.append(">>")
        else:
            out.append(clean_token(tokens[i]))
            i += 1
    return "".join(out)


def _mark(r: Record, mark_frac: float) -> str:
    return highlight(r.tokens, r.acts, mark_frac * r.max if r.max > 0 else math.inf)


DELPHI_EXPLAIN_SYSTEM = (
    "You are a careful AI researcher looking for patterns in text. You will see text examples in which "
    "some tokens are marked between << and >>; consecutive marked tokens share one pair of delimiters "
    "<<like this>>.\n"
    "- Say briefly what the marked tokens and their contexts have in common.\n"
    "- Do not mention the << >> markers and do not list possible explanations.\n"
    "- The last line of your answer must be the explanation, written as [EXPLANATION]: <explanation>")


def delphi_explain_messages(records: Sequence[Record], mark_frac: float = 0.5,
                            activations: bool = False) -> list[dict[str, str]]:
    """The explanation prompt in Delphi's format: marked examples, answer ``[EXPLANATION]: ...``.

    ``activations=True`` adds Delphi's ``Activations: ("token", 7), ...`` line under each example.
    """
    def examples(recs: Sequence[Record]) -> str:
        lines = []
        mx = _max_activation(recs)
        for i, r in enumerate(recs, 1):
            lines.append(f"Example {i}: {_mark(r, mark_frac)}")
            if activations:
                norm = normalize_activations(r.acts, mx)
                pairs = [f'("{clean_token(t)}", {a})' for t, a, x in zip(r.tokens, norm, r.acts, strict=True)
                         if r.max > 0 and x > mark_frac * r.max]
                lines.append("Activations: " + ", ".join(pairs))
        return "\n".join(lines)

    few = [Record(-1, _FEW_TOKENS, _FEW_ACTS)]
    return [{"role": "system", "content": DELPHI_EXPLAIN_SYSTEM},
            {"role": "user", "content": f"\n{examples(few)}\n"},
            {"role": "assistant", "content": f"[EXPLANATION]: {_FEW_EXPLANATION[0].upper()}{_FEW_EXPLANATION[1:]}."},
            {"role": "user", "content": f"\n{examples(records)}\n"}]


DETECTION_SYSTEM = (
    "You are a careful linguistics researcher. You will get an explanation of a text feature, such as "
    "\"male pronouns\" or \"text with negative sentiment\", and some numbered text examples. Decide for "
    "each example whether it has the feature.\n\nAnswer with a Python list with one number per example, in "
    "order: 1 if the example has the feature, 0 if not. Write nothing but the list.")

FUZZING_SYSTEM = (
    "You are a careful linguistics researcher. You will get an explanation of a text feature, such as "
    "\"male pronouns\" or \"text with negative sentiment\", and some numbered text examples in which "
    "some tokens are marked between << and >>. Some markings are wrong. An example is correct only if every "
    "marked token is an instance of the feature.\n\nAnswer with a Python list with one number per example, "
    "in order: 1 if the marking is correct, 0 if not. Write nothing but the list.")

# Worked examples for the classifier prompts; the first n are shown when n examples are asked
# about, so the worked answer has as many entries as the real one should (small models copy
# the worked answer's length).
_FEW_DETECTION = [("The cat slept on the warm sofa.", 1), ("Interest rates rose again this year.", 0),
                  ("A horse and a goat shared the barn.", 1), ("Please close the door quietly.", 0),
                  ("The old dog barked at the mailman.", 1), ("Tax forms are due in April.", 0),
                  ("Two sparrows sat on the fence.", 1), ("He paid the bill in cash.", 0)]
_FEW_FUZZING = [("The <<cat>> slept on the warm sofa.", 1), ("Interest <<rates>> rose again this year.", 0),
                ("A <<horse>> and a <<goat>> shared the barn.", 1), ("Please <<close>> the door quietly.", 0),
                ("The old <<dog>> barked at the mailman.", 1), ("Tax forms are <<due>> in April.", 0),
                ("Two <<sparrows>> sat on the fence.", 1), ("He <<paid>> the bill in cash.", 0)]


def _classifier_turn(explanation: str, texts: Sequence[str]) -> str:
    examples = "\n".join(f"Example {i}: {t}" for i, t in enumerate(texts))
    return f"Latent explanation: {explanation}\n\nTest examples:\n\n{examples}\n"


def _list_text(bits: Sequence[int]) -> str:
    return "[" + ",".join(str(int(b)) for b in bits) + "]"


def _classifier_messages(system: str, pool: list[tuple[str, int]], explanation: str,
                         texts: Sequence[str]) -> list[dict[str, str]]:
    few = [pool[i % len(pool)] for i in range(max(1, min(len(texts), len(pool))))]
    return [{"role": "system", "content": system},
            {"role": "user", "content": _classifier_turn(f"{_FEW_EXPLANATION[0].upper()}{_FEW_EXPLANATION[1:]}.",
                                                         [t for t, _ in few])},
            {"role": "assistant", "content": _list_text([b for _, b in few])},
            {"role": "user", "content": _classifier_turn(explanation, texts)}]


def detection_messages(explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """Delphi's detection prompt: which examples fit the explanation, as a list of 0/1.

    One worked example with as many items as ``texts`` (at most 8), then the real question.
    """
    return _classifier_messages(DETECTION_SYSTEM, _FEW_DETECTION, explanation, texts)


def fuzzing_messages(explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """Delphi's fuzzing prompt: is each example's << >> marking correct, as a list of 0/1."""
    return _classifier_messages(FUZZING_SYSTEM, _FEW_FUZZING, explanation, texts)


SIMULATION_SYSTEM = (
    "We study neurons in a neural network. Each neuron looks for one particular thing in a short text. "
    "Read the explanation of what the neuron does and predict its activation on each token.\n\n"
    "Each line is token<tab>activation, with activations from 0 to 10; most activations are 0. You will see "
    "the tokens of a sequence with the activations left blank. Repeat the same tokens, in the same order, "
    "one per line, with the activations filled in.")


def _sim_lines(tokens: Sequence[str], acts: Sequence[int] | None = None) -> str:
    if acts is None:
        return "".join(f"{clean_token(t)}\t{EOL}\n" for t in tokens)
    return "".join(f"{clean_token(t)}\t{a}{EOL}\n" for t, a in zip(tokens, acts, strict=True))


def _sim_turn(index: int, explanation: str, tokens: Sequence[str]) -> str:
    return (f"Neuron {index}\nExplanation of neuron {index} behavior: {EXPLANATION_PREFIX} {explanation.strip()}\n\n"
            f"Sequence 1 Tokens without Activations:\n{_sim_lines(tokens)}\n\nSequence 1 Tokens with Activations:\n")


def simulation_messages(explanation: str, tokens: Sequence[str]) -> list[dict[str, str]]:
    """The logprob-free all-at-once simulation prompt of Bills et al. (one worked example)."""
    few = normalize_activations(_FEW_ACTS, float(_FEW_ACTS.max()))
    return [{"role": "system", "content": SIMULATION_SYSTEM},
            {"role": "user", "content": _sim_turn(1, _FEW_EXPLANATION, _FEW_TOKENS)},
            {"role": "assistant", "content": _sim_lines(_FEW_TOKENS, few)},
            {"role": "user", "content": _sim_turn(2, explanation, tokens)}]


def sasc_messages(explanation: str, n: int, fit: bool) -> list[dict[str, str]]:
    """SASC's generation prompt (Singh et al. 2023, template 0): sentences that do / do not contain the concept."""
    neg = "" if fit else "do not "
    return [{"role": "user", "content": f'Generate {n} sentences that {neg}contain the concept of "{explanation}". '
                                        f"Write them as a numbered list, one sentence per line.\n\n1."}]
