"""Counterfactual tasks: clean and corrupted prompts of equal token length, with an answer and a
wrong token per pair, tokenized for one model.

`Task` is the contract every circuit method reads: ``clean_ids`` and ``corrupted_ids`` (``[n, s]``
token ids, no padding: every pair has the same length ``s``), ``answer_ids`` and ``wrong_ids``
(``[n]``), and `Task.metric`, the per-pair logit difference at the last position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Task"]


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

    @property
    def n(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean_ids.shape[1])

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-pair logit difference ``logit[answer] - logit[wrong]`` from last-position logits ``[n, vocab]``."""
        ans = self.answer_ids.to(logits.device)
        wrong = self.wrong_ids.to(logits.device)
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, ans] - logits[rows, wrong]
