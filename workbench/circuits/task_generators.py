"""The shipped tasks, generated (seeded) for a model's own tokenizer.

- `ioi_task`: indirect object identification (Wang et al. 2022), with the ABC corruption.
- `induction_task`: repeated random token sequences.
- `factual_task`: subject -> attribute (country capitals by default).
- `greater_than_task`: "The war lasted from the year 1732 to the year 17" (Hanna et al. 2023),
  adapted to tokenizers that split years into digits (see its docstring).
- `arithmetic_task`: two-operand addition or subtraction, few-shot.

Names, places, objects and attributes are checked against the tokenizer: a word given by the user
that is not a single token (with its leading space) raises a `TaskError` saying how it tokenizes;
words of the default lists that are not single tokens are left out (``task.meta`` lists them).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .tasks import Candidate, Task, TaskError, collect_pairs, single_token

if TYPE_CHECKING:  # pragma: no cover
    from ..core.engine import Model

__all__ = ["ioi_task", "induction_task", "factual_task", "greater_than_task", "arithmetic_task",
           "IOI_TEMPLATES", "NAMES", "CAPITALS"]

NAMES = ("Mary", "John", "Alice", "Bob", "Tom", "James", "Michael", "David", "Sarah", "Emma", "Anna", "Paul", "Mark",
         "Peter", "Lisa", "Kate", "Laura", "Daniel", "Jack", "Ryan", "Alex", "Sam", "Chris", "Kevin", "Jessica",
         "Rachel", "Steven", "Amy", "Eric", "Jennifer", "Robert", "William", "Thomas", "Charles", "Joseph", "Richard",
         "George", "Edward", "Henry", "Frank", "Linda", "Susan", "Karen", "Nancy", "Helen", "Emily", "Jason", "Brian",
         "Andrew", "Matthew", "Adam", "Nathan", "Ben", "Luke", "Jane", "Rose", "Grace", "Lucy", "Sophie", "Ian")
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park", "beach")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "book", "letter")

#: Wang et al.'s IOI templates ([A] is the indirect object, the answer; [B] the repeated subject).
#: The default task uses the first; templates of other token lengths are dropped (counted in meta).
IOI_TEMPLATES = (
    "When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "While [A] and [B] were working at the [PLACE], [B] gave a [OBJECT] to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
)

#: Country -> capital, both single tokens in SmolLM2's tokenizer; most of them the embedded model knows.
CAPITALS = (("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("China", "Beijing"), ("Russia", "Moscow"), ("Canada", "Ottawa"), ("England", "London"),
            ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Denmark", "Copenhagen"), ("Hungary", "Budapest"),
            ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Cuba", "Havana"), ("Korea", "Seoul"),
            ("Netherlands", "Amsterdam"), ("Syria", "Damascus"), ("Israel", "Jerusalem"), ("Scotland", "Edinburgh"),
            ("Wales", "Cardiff"), ("Ukraine", "Kiev"), ("Afghanistan", "Kabul"), ("Philippines", "Manila"),
            ("Egypt", "Cairo"), ("Poland", "Warsaw"), ("Finland", "Helsinki"), ("Peru", "Lima"))

GT_NOUNS = ("war", "expedition", "project", "contract", "journey", "reign", "dynasty", "conflict", "treaty", "voyage")


def _words(model: Model, given: Sequence[str] | None, default: Sequence[str], what: str, need: int) -> tuple[list[str], list[str]]:
    """Single-token words (with a leading space): the user's (each checked) or the default list's (filtered)."""
    if given is not None:
        words = [str(w) for w in given]
        for w in words:
            single_token(model, " " + w.strip(), f"{what} {w.strip()!r}:")
        left: list[str] = []
    else:
        words, left = [], []
        for w in default:
            ok = len(model.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1
            (words if ok else left).append(w)
    words = list(dict.fromkeys(w.strip() for w in words))
    if len(words) < need:
        raise TaskError(f"need at least {need} distinct single-token {what}s, got {len(words)}"
                        + (f" ({len(left)} default {what}s are several tokens in this tokenizer: {left[:8]}...)"
                           if left else ""))
    return words, left


def ioi_task(model: Model, n: int = 20, seed: int = 0, *, templates: Sequence[str] | None = None,
             names: Sequence[str] | None = None, places: Sequence[str] | None = None,
             objects: Sequence[str] | None = None) -> Task:
    """Indirect object identification (Wang et al.): "When Mary and John went to the store, John gave a
    drink to" -> answer " Mary" (the indirect object), wrong " John" (the repeated subject).

    Corruption (ABC): the same template with three new distinct names in place of A, B and the
    repeated B, so the corrupted prompt says nothing about which of A or B is the answer.
    ``templates`` use ``[A]``, ``[B]``, ``[PLACE]`` and ``[OBJECT]``; by default the first of
    `IOI_TEMPLATES`, in both orders (ABBA and BABA). Pairs whose template tokenizes to another
    length than the most common are dropped (``task.meta`` counts them).
    """
    nm, nm_left = _words(model, names, NAMES, "name", 6)
    pl, _ = _words(model, places, PLACES, "place", 1)
    ob, _ = _words(model, objects, OBJECTS, "object", 1)
    tmpls = list(templates) if templates is not None else list(IOI_TEMPLATES[:2])
    if not tmpls:
        raise TaskError("give at least one IOI template")
    for t in tmpls:
        if "[A]" not in t or "[B]" not in t:
            raise TaskError(f"an IOI template needs [A] and [B] slots: {t!r}")

    def draw(rng: random.Random) -> Candidate:
        t = rng.choice(tmpls)
        a, b, a2, b2, c2 = rng.sample(nm, 5)
        place, obj = rng.choice(pl), rng.choice(ob)

        def fill(x: str, y: str, z: str) -> str:
            # [B] occurs twice: the first occurrence is y, the repeated one z (ABC: all distinct)
            s = t.replace("[PLACE]", place).replace("[OBJECT]", obj).replace("[A]", x)
            first = s.index("[B]")
            return s[:first] + y + s[first + 3:].replace("[B]", z)

        return fill(a, b, b), fill(a2, b2, c2), " " + a, " " + b

    return collect_pairs(model, draw, n, seed, "ioi", {"corruption": "ABC", "templates": tmpls,
                                                       "names_left_out": nm_left})


def random_tokens(model: Model, rng: torch.Generator, k: int) -> list[int]:
    """``k`` distinct random token ids, avoiding special tokens."""
    vocab = min(model.arch.vocab, len(model.tokenizer))
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    if vocab - len(special) < k:
        raise TaskError(f"the vocabulary has only {vocab - len(special)} ordinary tokens, fewer than the {k} needed")
    out: list[int] = []
    while len(out) < k:
        for t in torch.randperm(vocab, generator=rng)[: 2 * k].tolist():
            if t not in special and t not in out:
                out.append(t)
                if len(out) == k:
                    break
    return out


def bos_id(model: Model) -> int | None:
    """The token that starts random-token sequences (the tokenizer's BOS, else EOS), or None."""
    tok = model.tokenizer
    for t in (getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None)):
        if isinstance(t, int):
            return t
    return None


def induction_task(model: Model, n: int = 20, seq_len: int = 20, seed: int = 0, *, prepend_bos: bool = True) -> Task:
    """Induction on repeated random tokens.

    Clean: ``[BOS] r_0 … r_{L-1} r_0 … r_{L-2}`` for ``L = seq_len`` distinct random tokens; the
    answer is ``r_{L-1}``, what an induction head predicts after seeing ``r_{L-2}`` again. Corrupted:
    the same sequence with the first occurrence of ``r_{L-1}`` replaced by a fresh token ``w``, which
    is the wrong answer; the prompts differ at that one position, and induction on the corrupted
    prompt predicts ``w`` (the metric flips sign).
    """
    if seq_len < 2:
        raise TaskError(f"induction needs seq_len >= 2, not {seq_len}")
    if n < 1:
        raise TaskError(f"a task needs at least one pair: n={n}")
    g = torch.Generator().manual_seed(int(seed))
    bos = bos_id(model) if prepend_bos else None
    head = [bos] if bos is not None else []
    clean, corrupted, ans, wrong = [], [], [], []
    for _ in range(n):
        toks = random_tokens(model, g, seq_len + 1)
        r, w = toks[:seq_len], toks[seq_len]
        clean.append(head + r + r[:-1])
        corrupted.append(head + r[:-1] + [w] + r[:-1])
        ans.append(r[-1])
        wrong.append(w)
    dec = model.tokenizer.decode
    return Task("induction", torch.tensor(clean), torch.tensor(corrupted), torch.tensor(ans), torch.tensor(wrong),
                model.name, [dec(c) for c in clean], [dec(c) for c in corrupted],
                {"seq_len": seq_len, "seed": seed, "bos": bos, "corrupted_position": len(head) + seq_len - 1},
                [dec([a]) for a in ans], [dec([w]) for w in wrong])


def factual_task(model: Model, n: int = 20, seed: int = 0, *, facts: Sequence[tuple[str, str]] | None = None,
                 template: str = "The capital of {subject} is") -> Task:
    """Factual recall: ``template`` filled with a subject -> its attribute (`CAPITALS` by default).

    Corrupted: the same template with another subject; the wrong answer is that subject's attribute
    (the prediction flips on corruption). Subjects and attributes must be single tokens with a
    leading space; user facts that are not raise a `TaskError`, default ones are left out.
    """
    if "{subject}" not in template:
        raise TaskError(f"the factual template needs a {{subject}} slot: {template!r}")
    pairs, left = [], []
    for subj, attr in (facts if facts is not None else CAPITALS):
        ok = True
        for w, what in ((subj, "subject"), (attr, "attribute")):
            if facts is not None:
                single_token(model, " " + w.strip(), f"{what} {w.strip()!r}:")
            elif len(model.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) != 1:
                ok = False
        (pairs if ok else left).append((subj.strip(), attr.strip()))
    if len({a for _, a in pairs}) < 2:
        raise TaskError(f"need at least two facts with distinct single-token attributes, got {len(pairs)}")

    def draw(rng: random.Random) -> Candidate:
        while True:
            (s1, a1), (s2, a2) = rng.sample(pairs, 2)
            if a1 != a2:
                return template.format(subject=s1), template.format(subject=s2), " " + a1, " " + a2

    return collect_pairs(model, draw, n, seed, "factual", {"template": template, "facts_left_out": left})


def _digit(model: Model, d: int) -> int:
    return single_token(model, str(d), f"digit {d}")


def greater_than_task(model: Model, n: int = 20, seed: int = 0, *, centuries: Sequence[int] = range(11, 19),
                      nouns: Sequence[str] | None = None) -> Task:
    """Greater-than (Hanna et al.): "The war lasted from the year 1732 to the year 17" -> a later year.

    SmolLM2's tokenizer (like Llama's) splits years into single digits (" ", "1", "7", "3", "2"), so
    the next token after "...the year 17" is the end year's tens digit, not Hanna et al.'s two-digit
    "YY" token. With the start year's tens digit ``d`` (1..8), the answer is ``d+1`` (a later decade:
    always a later year) and the wrong answer ``d-1`` (an earlier decade: always an earlier year).
    The two are symmetric around ``d``, so merely copying ``d`` scores nothing; the metric is
    ``logit(d+1) - logit(d-1)``. Nouns may be several tokens: pairs of another length than the most
    common one are dropped (``task.meta`` counts them). Corrupted (Hanna et al.'s "01" baseline): the start year ``CC01``,
    after which both digits are valid. The tokenizer must give each digit as one token; the prompt
    must end with the century as digits (checked).
    """
    cents = [int(c) for c in centuries]
    if not cents or any(not 10 <= c <= 99 for c in cents):
        raise TaskError(f"centuries are two-digit numbers (11 for the 1100s), not {list(centuries)}")
    for d in range(10):
        _digit(model, d)
    nn_ = [str(w).strip() for w in (nouns if nouns is not None else GT_NOUNS) if str(w).strip()]
    if not nn_:
        raise TaskError("give at least one noun")

    def draw(rng: random.Random) -> Candidate:
        c, d, u, noun = rng.choice(cents), rng.randint(1, 8), rng.randint(0, 9), rng.choice(nn_)
        t = "The {noun} lasted from the year {start} to the year {c}"
        return (t.format(noun=noun, start=f"{c}{d}{u}", c=c), t.format(noun=noun, start=f"{c}01", c=c),
                str(d + 1), str(d - 1))

    task = collect_pairs(model, draw, n, seed, "greater_than", {"answer": "tens digit + 1", "wrong": "tens digit - 1",
                                                                "corruption": "start year CC01"})
    last = model.tokenizer.decode(task.clean_ids[0, -2:].tolist())
    if not last.strip().isdigit():
        raise TaskError(f"this tokenizer does not end the prompt with the century's digits ({last!r}): greater-than "
                        "needs digit tokens")
    return task


def arithmetic_task(model: Model, n: int = 20, seed: int = 0, *, op: str = "+", operand_digits: int = 1,
                    shots: int = 3) -> Task:
    """Two-operand arithmetic, few-shot: ``"2 + 5 = 7\\n1 + 3 = 4\\n6 + 2 = 8\\n3 + 4 = "`` -> ``"7"``.

    ``op`` is ``"+"`` or ``"-"`` (non-negative results). With ``operand_digits=1`` the result is
    one digit (one token); with 2, the answer is the result's first digit (two-digit results only).
    Corrupted: the second operand changed so that the answer digit changes; the wrong answer is the
    corrupted prompt's answer (the prediction flips). ``shots`` fixed solved examples come first
    (the embedded model needs them: zero-shot it rarely answers with the sum).
    """
    if op not in ("+", "-"):
        raise TaskError(f"op is '+' or '-', not {op!r}")
    if operand_digits not in (1, 2):
        raise TaskError(f"operand_digits is 1 or 2, not {operand_digits}")
    if not 0 <= shots <= 3:
        raise TaskError(f"shots is 0..3, not {shots}")
    for d in range(10):
        _digit(model, d)
    f = (lambda a, b: a + b) if op == "+" else (lambda a, b: a - b)
    lo, hi = (0, 9) if operand_digits == 1 else (10, 99)
    examples = [(2, 5), (1, 3), (6, 2)] if operand_digits == 1 else [(12, 25), (31, 14), (20, 46)]
    if op == "-":
        examples = [(a + b, b) for a, b in examples]
    prefix = "".join(f"{a} {op} {b} = {f(a, b)}\n" for a, b in examples[:shots])

    def answer(a: int, b: int) -> int | None:
        r = f(a, b)
        if r < 0 or (operand_digits == 1 and r > 9) or (operand_digits == 2 and not 10 <= r <= 99):
            return None
        return int(str(r)[0])

    def draw(rng: random.Random) -> Candidate:
        while True:
            a, b, b2 = rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi)
            x, y = answer(a, b), answer(a, b2)
            if x is not None and y is not None and x != y:
                return f"{prefix}{a} {op} {b} = ", f"{prefix}{a} {op} {b2} = ", str(x), str(y)

    return collect_pairs(model, draw, n, seed, "arithmetic", {"op": op, "operand_digits": operand_digits,
                                                              "shots": shots})
