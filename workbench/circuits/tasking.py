"""Checks and helpers every circuit method applies to a `Task` (the contract in ``tasks.py``)."""

from __future__ import annotations

from typing import Any

import torch

from .tasks import TaskError

__all__ = ["TaskError", "check_task", "pair_metric"]


def check_task(model: Any, task: Any) -> None:
    """Refuse, with a clear message, a task that does not fit ``model``."""
    for attr in ("clean_ids", "corrupted_ids", "answer_ids", "wrong_ids", "metric"):
        if not hasattr(task, attr):
            raise TaskError(f"a task needs clean_ids, corrupted_ids, answer_ids, wrong_ids and metric; "
                            f"{type(task).__name__} has no {attr!r} (build a workbench.circuits.Task)")
    c, k = task.clean_ids, task.corrupted_ids
    if not isinstance(c, torch.Tensor) or not isinstance(k, torch.Tensor) or c.dim() != 2 or k.dim() != 2:
        raise TaskError("clean_ids and corrupted_ids must be [n, s] tensors of token ids")
    name = getattr(task, "name", "task")
    if c.shape[0] == 0 or c.shape[1] == 0:
        raise TaskError(f"task {name!r} has no pairs (clean_ids has shape {list(c.shape)}): give at least one pair")
    if c.shape != k.shape:
        raise TaskError(f"task {name!r}: clean and corrupted prompts must have equal token lengths and counts, but "
                        f"clean_ids is {list(c.shape)} and corrupted_ids is {list(k.shape)}")
    n = c.shape[0]
    for attr in ("answer_ids", "wrong_ids"):
        t = getattr(task, attr)
        if not isinstance(t, torch.Tensor) or t.shape != (n,):
            raise TaskError(f"task {name!r}: {attr} must be a [n] = [{n}] tensor, not {getattr(t, 'shape', t)!r}")
    vocab = model.arch.vocab
    for attr in ("clean_ids", "corrupted_ids", "answer_ids", "wrong_ids"):
        t = getattr(task, attr)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
            raise TaskError(f"task {name!r}: {attr} holds token ids outside the model's vocabulary of {vocab}: "
                            "was it built for another tokenizer?")
    mname = getattr(task, "model_name", "")
    if mname and model.name and mname != model.name:
        raise TaskError(f"task {name!r} was tokenized for {mname!r}, not {model.name!r}: rebuild it for this model")


def pair_metric(task: Any, logits: torch.Tensor) -> torch.Tensor:
    """``task.metric`` on ``[reps * n, vocab]`` last-position logits (reps copies of the pairs) -> ``[reps * n]``."""
    n = task.clean_ids.shape[0]
    reps = logits.shape[0] // n
    if reps == 1:
        return task.metric(logits)
    return torch.cat([task.metric(lg) for lg in logits.reshape(reps, n, -1)])
