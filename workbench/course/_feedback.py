"""What a checker says: `Feedback` (passed or not, with a message), and helpers that explain a mismatch.

A checker never lets the student's error escape: `attempt` runs the student's code and turns any
exception into a `Wrong` with the exception's type and message, and `NotImplementedError` (the
stub's ``raise NotImplementedError``) into "not attempted yet".
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.errors import WorkbenchError

PASS, FAIL, TODO = "✅", "❌", "✏️"


class Wrong(WorkbenchError):
    """Raised by a checker when the answer is wrong; its message says what was expected."""


class NotAttempted(Wrong):
    """The exercise still holds its stub."""


@dataclass(frozen=True)
class Feedback:
    """The verdict on one exercise. ``bool(feedback)`` is whether it passed."""

    exercise: str
    passed: bool
    message: str
    attempted: bool = True

    def __bool__(self) -> bool:
        return self.passed

    @property
    def mark(self) -> str:
        return PASS if self.passed else (FAIL if self.attempted else TODO)

    def __str__(self) -> str:
        verdict = "correct" if self.passed else ("not yet" if self.attempted else "not attempted yet")
        return f"{self.mark} {self.exercise}: {verdict}. {self.message}".rstrip()

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else ("#b35900" if not self.attempted else "#cf222e")
        return (f'<div class="iw-feedback" data-exercise="{html.escape(self.exercise)}" '
                f'data-passed="{str(self.passed).lower()}" style="border-left:4px solid {colour};'
                f'padding:4px 10px;margin:4px 0">{html.escape(str(self))}</div>')


def attempt(fn: Any, *args: Any, what: str = "your function", **kwargs: Any) -> Any:
    """Call the student's ``fn``; any exception becomes a `Wrong` saying what it raised."""
    if not callable(fn):
        raise Wrong(f"{what} should be a function, got {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as exc:
        raise NotAttempted("replace `raise NotImplementedError` with your code") from exc
    except Exception as exc:  # the student's bug, reported, never raised into the notebook
        raise Wrong(f"{what} raised {type(exc).__name__}: {exc}") from exc


def as_tensor(value: Any, what: str = "your answer"):
    """The answer as a float torch tensor, or a `Wrong` naming the type it has."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu()
    if isinstance(value, (np.ndarray, list, tuple, float, int)):
        try:
            return torch.as_tensor(np.asarray(value, dtype=np.float64)).float()
        except (TypeError, ValueError) as exc:
            raise Wrong(f"{what} could not be read as numbers: {exc}") from exc
    raise Wrong(f"{what} should be a tensor (or array), got {type(value).__name__}")


def expect_close(got: Any, expected: Any, what: str = "your answer", atol: float = 1e-4,
                 rtol: float = 1e-3) -> None:
    """Raise `Wrong` unless ``got`` has ``expected``'s shape and values (explaining the first difference)."""
    got_t, exp_t = as_tensor(got, what), as_tensor(expected, "the reference")
    if tuple(got_t.shape) != tuple(exp_t.shape):
        raise Wrong(f"{what} has shape {tuple(got_t.shape)}, expected {tuple(exp_t.shape)}")
    if not bool(got_t.isfinite().all()):
        bad = int((~got_t.isfinite()).sum())
        raise Wrong(f"{what} holds {bad} NaN or infinite value(s)")
    diff = (got_t - exp_t).abs()
    tol = atol + rtol * exp_t.abs()
    if bool((diff <= tol).all()):
        return
    flat = int((diff - tol).flatten().argmax())
    index = tuple(int(i) for i in _unravel(flat, tuple(exp_t.shape)))
    where = f" at index {index}" if index else ""
    raise Wrong(f"{what} differs{where}: expected {float(exp_t[index]):.4g}, got {float(got_t[index]):.4g} "
                f"({int((diff > tol).sum())} of {exp_t.numel()} values off)")


def expect_equal(got: Any, expected: Any, what: str = "your answer") -> None:
    """Raise `Wrong` unless ``got == expected`` (numbers compare with a small tolerance)."""
    if isinstance(expected, float) or isinstance(got, float):
        try:
            ok = math.isclose(float(got), float(expected), rel_tol=1e-3, abs_tol=1e-4)
        except (TypeError, ValueError):
            ok = False
    else:
        try:
            ok = bool(got == expected)
        except Exception:  # e.g. a tensor compared with a tuple
            ok = False
    if not ok:
        raise Wrong(f"{what} is {got!r}, expected {expected!r}")


def _unravel(flat: int, shape: tuple[int, ...]) -> list[int]:
    out = []
    for n in reversed(shape):
        out.append(flat % n)
        flat //= n
    return list(reversed(out))


def verdict(exercise: str, check: Callable[[], str | None]) -> Feedback:
    """Run one check; a `Wrong` becomes a failing `Feedback`, a string return value the success message."""
    try:
        message = check() or ""
    except NotAttempted as exc:
        return Feedback(exercise, False, str(exc), attempted=False)
    except Wrong as exc:
        return Feedback(exercise, False, str(exc))
    except Exception as exc:  # a checker bug must not crash the student's kernel either
        return Feedback(exercise, False, f"the checker could not run ({type(exc).__name__}: {exc})")
    return Feedback(exercise, True, message)
