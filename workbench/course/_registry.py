"""The exercise registry: each exercise is one checker function, registered under its id.

An id is ``"<notebook number>.<name>"`` (``"02.previous_token"``). `check(id, answer, **inputs)` looks
the exercise up and returns its `Feedback`; an unknown id gets a message listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._feedback import Feedback, verdict


@dataclass(frozen=True)
class Exercise:
    """One exercise: its id, a one-line task and the checker ``fn(answer, **inputs) -> str | None``."""

    id: str
    task: str
    checker: Callable[..., str | None]

    def check(self, answer: Any, **inputs: Any) -> Feedback:
        return verdict(self.id, lambda: self.checker(answer, **inputs))


EXERCISES: dict[str, Exercise] = {}


def exercise(id: str, task: str) -> Callable[[Callable[..., str | None]], Callable[..., Feedback]]:
    """Register a checker under ``id``; the decorated name becomes a function returning `Feedback`."""

    def register(checker: Callable[..., str | None]) -> Callable[..., Feedback]:
        if id in EXERCISES:
            raise ValueError(f"exercise {id!r} is registered twice")
        ex = Exercise(id, task, checker)
        EXERCISES[id] = ex

        def run(answer: Any, **inputs: Any) -> Feedback:
            return ex.check(answer, **inputs)

        run.__name__ = checker.__name__
        run.__doc__ = checker.__doc__
        run.exercise = ex  # type: ignore[attr-defined]
        return run

    return register


def check(id: str, answer: Any, **inputs: Any) -> Feedback:
    """Check ``answer`` for exercise ``id``; never raises (an unknown id fails with the known ones)."""
    ex = EXERCISES.get(id)
    if ex is None:
        known = ", ".join(sorted(EXERCISES)) or "none"
        return Feedback(id, False, f"there is no exercise {id!r}; known: {known}")
    return ex.check(answer, **inputs)
