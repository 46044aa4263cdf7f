"""Answers and assertions shared by the course checkers' tests."""

from __future__ import annotations

from workbench import course


def stub(*_args):
    """The notebook's stub: not attempted."""
    raise NotImplementedError


def crash(*_args):
    """An answer that raises."""
    raise KeyError("oops")


def expect(feedback: course.Feedback, passed: bool, *words: str) -> None:
    """The verdict is ``passed`` and its text holds each of ``words`` and its mark."""
    assert feedback.passed is passed, str(feedback)
    text = str(feedback)
    for w in words:
        assert w in text, text
    assert feedback.mark in text
