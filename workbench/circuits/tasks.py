"""Counterfactual tasks: clean and corrupted prompts of equal token length, with an answer and a
wrong token per pair, tokenized for one model.

`Task` is the contract every circuit method reads: ``clean_ids`` and ``corrupted_ids`` (``[n, s]``
token ids, no padding: every pair has the same length ``s``), ``answer_ids`` and ``wrong_ids``
(``[n]``), and `Task.metric`, the per-pair logit difference at the last position.

Build one from lists (`make_task`) or a template (`task_from_template`); the shipped generators
(IOI, induction, factual recall, greater-than, arithmetic) live in `workbench.circuits.task_generators`.
`evaluate_task` says how well a model does a task: accuracy (answer logit above the wrong one),
the mean logit difference and its spread, per pair.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    from ..core.engine import Model

__all__ = ["Task", "TaskError", "TaskReport", "make_task", "task_from_template", "evaluate_task", "single_token"]


class TaskError(WorkbenchError, ValueError):
    """A task cannot be built: no pairs, unequal token lengths, a word that is not one token, ..."""


def _pieces(model: Model, ids: Sequence[int]) -> list[str]:
    return [model.tokenizer.decode([int(i)]) for i in ids]


def single_token(model: Model, word: str | int, what: str) -> int:
    """The id of ``word`` as exactly one token of ``model``'s tokenizer (no special tokens added).

    ``what`` names the word in the error (``"name 'Bartholomew'"``): a `TaskError` says how the
    tokenizer splits it. Mind the leading space: ``" Mary"`` is the token after a space.
    """
    from ..core.engine import TokenError

    try:
        return model.token_id(word, what)
    except TokenError as exc:
        raise TaskError(str(exc)) from None


# -- the task --------------------------------------------------------------------------------
@dataclass
class Task:
    """A tokenized counterfactual dataset (see the module docstring for the fields' meaning)."""

    name: str
    clean_ids: torch.Tensor  # [n, s] long
    corrupted_ids: torch.Tensor  # [n, s] long
    answer_ids: torch.Tensor  # [n] long
    wrong_ids: torch.Tensor  # [n] long
    model_name: str = ""
    clean: list[str] = field(default_factory=list)  # texts, when built from text
    corrupted: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)  # the answer and wrong tokens' texts
    wrongs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        c, k = self.clean_ids, self.corrupted_ids
        if c.dim() != 2 or k.dim() != 2:
            raise TaskError(f"clean_ids and corrupted_ids are [n, s] token ids, not {tuple(c.shape)} and {tuple(k.shape)}")
        if c.shape != k.shape:
            raise TaskError(f"clean_ids {tuple(c.shape)} and corrupted_ids {tuple(k.shape)} must have the same shape "
                            "(pairs of equal token length)")
        if c.shape[0] == 0 or c.shape[1] == 0:
            raise TaskError(f"task {self.name!r} has no pairs (or empty prompts): shape {tuple(c.shape)}")
        if tuple(self.answer_ids.shape) != (c.shape[0],) or tuple(self.wrong_ids.shape) != (c.shape[0],):
            raise TaskError(f"answer_ids {tuple(self.answer_ids.shape)} and wrong_ids {tuple(self.wrong_ids.shape)} "
                            f"must be [n] = [{c.shape[0]}]")
        self.clean_ids, self.corrupted_ids = c.long(), k.long()
        self.answer_ids, self.wrong_ids = self.answer_ids.long(), self.wrong_ids.long()

    @property
    def n(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean_ids.shape[1])

    def __len__(self) -> int:
        return self.n

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-pair logit difference ``logit[answer] - logit[wrong]`` from last-position logits ``[n, vocab]``."""
        ans = self.answer_ids.to(logits.device)
        wrong = self.wrong_ids.to(logits.device)
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, ans] - logits[rows, wrong]

    def subset(self, index: Sequence[int] | slice) -> Task:
        """The pairs at ``index`` (a list of rows or a slice), as a new task."""
        rows = list(range(self.n))[index] if isinstance(index, slice) else [int(i) for i in index]
        bad = [r for r in rows if not 0 <= r < self.n]
        if bad:
            raise IndexError(f"pair {bad[0]} is out of range for a task of {self.n} pairs")

        def pick(xs: list) -> list:
            return [xs[r] for r in rows] if len(xs) == self.n else list(xs)

        return Task(self.name, self.clean_ids[rows], self.corrupted_ids[rows], self.answer_ids[rows],
                    self.wrong_ids[rows], self.model_name, pick(self.clean), pick(self.corrupted), dict(self.meta),
                    pick(self.answers), pick(self.wrongs))

    def to_pandas(self):
        """One row per pair: the prompts' texts, the answer and wrong tokens and their ids."""
        import pandas as pd

        def col(xs: list) -> list:
            return xs if len(xs) == self.n else [None] * self.n

        return pd.DataFrame({"clean": col(self.clean), "corrupted": col(self.corrupted), "answer": col(self.answers),
                             "wrong": col(self.wrongs), "answer_id": self.answer_ids.tolist(),
                             "wrong_id": self.wrong_ids.tolist()})

    def _repr_html_(self) -> str:
        import html

        ex = html.escape(repr(self.clean[0])) if self.clean else ""
        ans = f" → {html.escape(repr(self.answers[0]))} vs {html.escape(repr(self.wrongs[0]))}" if self.answers else ""
        return f"<b>Task</b> {html.escape(self.name)}: {self.n} pairs × {self.seq_len} tokens; e.g. {ex}{ans}"


# -- building tasks from text ------------------------------------------------------------------
Candidate = tuple[str, str, "str | int", "str | int"]  # clean, corrupted, answer, wrong


def _length_error(model: Model, i: int, a: list[int], b: list[int], clean: str, corrupted: str) -> TaskError:
    n = max(len(a), len(b))
    differ = [j for j in range(n) if j >= len(a) or j >= len(b) or a[j] != b[j]]
    return TaskError(
        f"pair {i}: the clean and corrupted prompts must have the same number of tokens, but clean has {len(a)} "
        f"and corrupted has {len(b)}.\n  clean:     {clean!r} -> {_pieces(model, a)}\n  corrupted: {corrupted!r} -> "
        f"{_pieces(model, b)}\n  positions that differ: {differ}. Use words of the same token count, or "
        "on_mismatch='drop' to drop such pairs")


def _tokenize(model: Model, texts: list[str]) -> list[list[int]]:
    batch = model.tokenize(texts)
    return [[t.id for t in row] for row in batch.tokens]


def _build(model: Model, cands: Sequence[Candidate], name: str, on_mismatch: str, meta: dict[str, Any],
           target_len: int | None = None) -> Task:
    """Tokenize candidate pairs and keep those of equal length (one length for the whole task)."""
    if on_mismatch not in ("raise", "drop"):
        raise ValueError(f"on_mismatch is 'raise' or 'drop', not {on_mismatch!r}")
    if not cands:
        raise TaskError(f"task {name!r} has no pairs: give at least one (clean, corrupted, answer, wrong)")
    clean = [c[0] for c in cands]
    corrupted = [c[1] for c in cands]
    for i, (a, b) in enumerate(zip(clean, corrupted, strict=True)):
        for what, t in (("clean", a), ("corrupted", b)):
            if not isinstance(t, str) or not t:
                raise TaskError(f"pair {i}: the {what} prompt must be a non-empty string, not {t!r}")
    ids_c = _tokenize(model, clean)
    ids_k = _tokenize(model, corrupted)
    ans = [single_token(model, c[2], f"pair {i}'s answer") for i, c in enumerate(cands)]
    wrong = [single_token(model, c[3], f"pair {i}'s wrong answer") for i, c in enumerate(cands)]
    keep, unequal = [], 0
    for i in range(len(cands)):
        if len(ids_c[i]) != len(ids_k[i]):
            if on_mismatch == "raise":
                raise _length_error(model, i, ids_c[i], ids_k[i], clean[i], corrupted[i])
            unequal += 1
            continue
        if ans[i] == wrong[i]:
            if on_mismatch == "raise":
                raise TaskError(f"pair {i}: the answer and the wrong answer are the same token "
                                f"{_pieces(model, [ans[i]])}: the logit difference would always be 0")
            unequal += 1
            continue
        keep.append(i)
    if not keep:
        raise TaskError(f"task {name!r}: none of its {len(cands)} pairs has clean and corrupted prompts of equal "
                        "token length (and distinct answer and wrong tokens)")
    lengths = Counter(len(ids_c[i]) for i in keep)
    s = target_len if target_len is not None else lengths.most_common(1)[0][0]
    other = [i for i in keep if len(ids_c[i]) != s]
    if other and on_mismatch == "raise":
        j = other[0]
        first = next(i for i in keep if len(ids_c[i]) == s)
        raise TaskError(f"every pair of a task must have the same token length (the task is one [n, s] tensor), but "
                        f"pair {first} has {s} tokens and pair {j} has {len(ids_c[j])} ({clean[j]!r}); token lengths "
                        f"found: {dict(sorted(lengths.items()))}. Use on_mismatch='drop' to keep the pairs of the "
                        "most common length")
    keep = [i for i in keep if len(ids_c[i]) == s]
    if not keep:
        raise TaskError(f"task {name!r}: no pair has the required length of {s} tokens")
    meta = {**meta, "dropped_unequal": unequal, "dropped_other_length": len(other), "candidates": len(cands)}
    return Task(
        name=name,
        clean_ids=torch.tensor([ids_c[i] for i in keep], dtype=torch.long),
        corrupted_ids=torch.tensor([ids_k[i] for i in keep], dtype=torch.long),
        answer_ids=torch.tensor([ans[i] for i in keep], dtype=torch.long),
        wrong_ids=torch.tensor([wrong[i] for i in keep], dtype=torch.long),
        model_name=model.name,
        clean=[clean[i] for i in keep],
        corrupted=[corrupted[i] for i in keep],
        meta=meta,
        answers=_pieces(model, [ans[i] for i in keep]),
        wrongs=_pieces(model, [wrong[i] for i in keep]),
    )


def _as_list(values: Any, n: int, what: str) -> list:
    if isinstance(values, (str, int)):
        return [values] * n
    out = list(values)
    if len(out) != n:
        raise TaskError(f"got {n} clean prompts but {len(out)} {what}: give one per pair (or a single value for all)")
    return out


def make_task(model: Model, clean: str | Sequence[str], corrupted: str | Sequence[str],
              answers: str | int | Sequence[str | int], wrong: str | int | Sequence[str | int], *,
              name: str = "custom", on_mismatch: str = "raise") -> Task:
    """A task from lists: clean and corrupted prompts, and per pair the answer and wrong tokens.

    Answers are single-token strings (``" Paris"``, mind the space) or token ids; one value applies
    to every pair. Each pair's prompts must have the same token length, and every pair the same
    length as the others: a `TaskError` says which pair differs and how it tokenizes, unless
    ``on_mismatch="drop"``, which drops such pairs (``task.meta`` counts them).
    """
    clean = [clean] if isinstance(clean, str) else list(clean)
    corrupted = [corrupted] if isinstance(corrupted, str) else list(corrupted)
    if not clean:
        raise TaskError(f"task {name!r} has no pairs: give at least one clean and corrupted prompt")
    if len(corrupted) != len(clean):
        raise TaskError(f"got {len(clean)} clean prompts but {len(corrupted)} corrupted ones: give one per pair")
    a = _as_list(answers, len(clean), "answers")
    w = _as_list(wrong, len(clean), "wrong answers")
    return _build(model, list(zip(clean, corrupted, a, w, strict=True)), name, on_mismatch, {"source": "lists"})


def _slots(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def task_from_template(model: Model, template: str, corrupted_template: str, answer: str, wrong: str,
                       values: dict[str, Sequence[str]], *, n: int = 20, seed: int = 0, name: str = "template",
                       on_mismatch: str = "drop") -> Task:
    """A task from ``str.format`` templates filled with values drawn (seeded) from ``values``.

    ``template`` and ``corrupted_template`` (e.g. ``"When {A} and {B} went out, {B} thanked"`` and
    ``"When {A} and {B} went out, {C} thanked"``), ``answer`` and ``wrong`` (``" {A}"``, ``" {B}"``)
    share one draw per pair; slots drawing from equal value lists get distinct values. Answer and
    wrong must render to single tokens. Pairs of unequal length are dropped (``on_mismatch="drop"``,
    counted in ``task.meta``) or raise (``"raise"``).
    """
    if n < 1:
        raise TaskError(f"a task needs at least one pair: n={n}")
    slots = list(dict.fromkeys(_slots(template) + _slots(corrupted_template) + _slots(answer) + _slots(wrong)))
    missing = [s for s in slots if s not in values]
    if missing:
        raise TaskError(f"the templates use slot(s) {missing} that `values` does not give (it has {sorted(values)})")
    pools = {s: [str(v) for v in values[s]] for s in slots}
    empty = [s for s in slots if not pools[s]]
    if empty:
        raise TaskError(f"slot(s) {empty} have no values")
    for s in slots:  # check answer/wrong words up front, so the error names the word
        for tmpl, what in ((answer, "answer"), (wrong, "wrong answer")):
            if _slots(tmpl) == [s] and tmpl.replace("{" + s + "}", "") in ("", " "):
                for v in pools[s]:
                    single_token(model, tmpl.format(**{s: v}), f"{what} value {v!r} of slot {s!r}:")
    rng = random.Random(seed)

    def draw() -> Candidate:
        groups: dict[tuple, list[str]] = {}
        for s in slots:
            groups.setdefault(tuple(pools[s]), []).append(s)
        got: dict[str, str] = {}
        for pool, names in groups.items():
            if len(names) > len(pool):
                raise TaskError(f"slots {names} draw distinct values from a list of only {len(pool)}: give more values")
            for s, v in zip(names, rng.sample(list(pool), len(names)), strict=True):
                got[s] = v
        return (template.format(**got), corrupted_template.format(**got), answer.format(**got), wrong.format(**got))

    return _build(model, [draw() for _ in range(n)], name, on_mismatch, {"source": "template", "seed": seed,
                                                                         "template": template,
                                                                         "corrupted_template": corrupted_template})


def collect_pairs(model: Model, draw: Callable[[random.Random], Candidate], n: int, seed: int, name: str,
                  meta: dict[str, Any], max_rounds: int = 5) -> Task:
    """Draw candidates until ``n`` pairs of equal (and common) token length are found; generators use it.

    Pairs whose clean and corrupted prompts tokenize to different lengths, or whose length differs
    from the most common one of the first round, are dropped and counted in ``task.meta``.
    """
    if n < 1:
        raise TaskError(f"a task needs at least one pair: n={n}")
    rng = random.Random(seed)
    kept: Task | None = None
    dropped_unequal = dropped_other = 0
    s: int | None = None
    for _ in range(max_rounds):
        need = n - (kept.n if kept is not None else 0)
        cands = [draw(rng) for _ in range(need + max(2, need // 4))]
        try:
            part = _build(model, cands, name, "drop", meta, target_len=s)
        except TaskError:
            if s is None:
                raise
            continue
        s = part.seq_len
        dropped_unequal += part.meta["dropped_unequal"]
        dropped_other += part.meta["dropped_other_length"]
        kept = part if kept is None else _concat(kept, part)
        if kept.n >= n:
            break
    if kept is None or kept.n < n:
        got = 0 if kept is None else kept.n
        raise TaskError(f"task {name!r}: found only {got} of {n} pairs of equal token length ({dropped_unequal} "
                        f"candidate pairs had unequal lengths, {dropped_other} another length)")
    kept = kept.subset(range(n))
    kept.meta.update({"dropped_unequal": dropped_unequal, "dropped_other_length": dropped_other, "seed": seed})
    kept.meta.pop("candidates", None)
    return kept


def _concat(a: Task, b: Task) -> Task:
    return Task(a.name, torch.cat([a.clean_ids, b.clean_ids]), torch.cat([a.corrupted_ids, b.corrupted_ids]),
                torch.cat([a.answer_ids, b.answer_ids]), torch.cat([a.wrong_ids, b.wrong_ids]), a.model_name,
                a.clean + b.clean, a.corrupted + b.corrupted, dict(a.meta), a.answers + b.answers, a.wrongs + b.wrongs)


# -- evaluation --------------------------------------------------------------------------------
@dataclass
class TaskReport:
    """How a model does a task: accuracy (answer logit > wrong logit), mean logit difference and its
    standard deviation (unbiased; 0 for one pair), on the clean prompts and on the corrupted ones."""

    name: str
    n: int
    accuracy: float
    mean_logit_diff: float
    std_logit_diff: float
    corrupted_accuracy: float
    corrupted_mean_logit_diff: float
    corrupted_std_logit_diff: float
    clean_diffs: torch.Tensor  # [n]
    corrupted_diffs: torch.Tensor  # [n]
    answer_rank: torch.Tensor  # [n] rank of the answer among all tokens on the clean prompt (0 = top)
    top_tokens: list[str]  # the clean run's top prediction per pair
    task: Task = field(repr=False)

    def summary(self) -> dict[str, float | int | str]:
        """The headline figures as a dict."""
        return {"task": self.name, "n": self.n, "accuracy": self.accuracy, "mean_logit_diff": self.mean_logit_diff,
                "std_logit_diff": self.std_logit_diff, "corrupted_accuracy": self.corrupted_accuracy,
                "corrupted_mean_logit_diff": self.corrupted_mean_logit_diff,
                "corrupted_std_logit_diff": self.corrupted_std_logit_diff,
                "top1_answer": float((self.answer_rank == 0).float().mean())}

    def to_pandas(self):
        """One row per pair: prompts, answer/wrong, clean and corrupted logit differences, correctness."""
        df = self.task.to_pandas()
        df["logit_diff"] = self.clean_diffs.tolist()
        df["corrupted_logit_diff"] = self.corrupted_diffs.tolist()
        df["correct"] = (self.clean_diffs > 0).tolist()
        df["answer_rank"] = self.answer_rank.tolist()
        df["top_token"] = self.top_tokens
        return df

    def plot(self, ax: Any = None) -> Any:
        """Histogram of the per-pair logit differences, clean and corrupted (matplotlib)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 3))
        ax.hist(self.clean_diffs.numpy(), bins=20, alpha=0.7, label="clean", color="#4477aa")
        ax.hist(self.corrupted_diffs.numpy(), bins=20, alpha=0.7, label="corrupted", color="#cc6677")
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlabel("logit[answer] − logit[wrong]")
        ax.set_ylabel("pairs")
        ax.set_title(f"{self.name}: accuracy {self.accuracy:.0%}, mean {self.mean_logit_diff:.2f} ± "
                     f"{self.std_logit_diff:.2f}", fontsize=9)
        ax.legend(fontsize=8)
        return ax

    def _repr_html_(self) -> str:
        return (f"<b>TaskReport</b> {self.name} ({self.n} pairs): accuracy {self.accuracy:.1%}, logit diff "
                f"{self.mean_logit_diff:.3f} ± {self.std_logit_diff:.3f}; corrupted: accuracy "
                f"{self.corrupted_accuracy:.1%}, logit diff {self.corrupted_mean_logit_diff:.3f} ± "
                f"{self.corrupted_std_logit_diff:.3f}")


def last_logits(model: Model, ids: torch.Tensor, batch_size: int = 32, specs: Sequence[Any] = ()) -> torch.Tensor:
    """Last-position logits ``[n, vocab]`` (float32, CPU) of equal-length rows of token ids, through `Model.run`."""
    out = []
    for i in range(0, ids.shape[0], batch_size):
        res = model.run(model.batch_from_ids(ids[i:i + batch_size].tolist()), list(specs), top_k=1, logits="last")
        out.append(res.logits.float())
    return torch.cat(out)


def _stats(d: torch.Tensor) -> tuple[float, float, float]:
    std = float(d.std()) if d.numel() > 1 else 0.0
    return float((d > 0).float().mean()), float(d.mean()), std


def evaluate_task(model: Model, task: Task, *, batch_size: int = 32) -> TaskReport:
    """Run the clean and corrupted prompts (batched through `Model.run`) and report the metric."""
    if not isinstance(task, Task):
        raise TypeError(f"evaluate_task takes a Task, not {type(task).__name__}")
    if task.model_name and model.name and task.model_name != model.name:
        raise TaskError(f"task {task.name!r} was tokenized for model {task.model_name!r}, not {model.name!r}: "
                        "build it again for this model")
    lc = last_logits(model, task.clean_ids, batch_size)
    lk = last_logits(model, task.corrupted_ids, batch_size)
    dc, dk = task.metric(lc), task.metric(lk)
    ans = lc.gather(1, task.answer_ids[:, None])
    rank = (lc > ans).sum(1)
    top = _pieces(model, lc.argmax(1).tolist())
    acc, mean, std = _stats(dc)
    cacc, cmean, cstd = _stats(dk)
    return TaskReport(task.name, task.n, acc, mean, std, cacc, cmean, cstd, dc, dk, rank, top, task)
