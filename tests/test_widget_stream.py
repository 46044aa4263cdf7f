"""The widgets' one thread-to-generator bridge: order, results, errors, cancellation, throttling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import pytest

from workbench.core.engine import GenerationCancelled
from workbench.core.errors import Cancelled as WorkCancelled
from workbench.widgets._base import Cancelled, Job
from workbench.widgets._stream import Stream, keyed


def drain(gen: Any) -> tuple[list, Any]:
    it, parts = iter(gen), []
    while True:
        try:
            parts.append(next(it))
        except StopIteration as stop:
            return parts, stop.value


def test_items_in_order_then_the_result() -> None:
    def work(emit: Callable[[Any], None]) -> str:
        for i in range(5):
            emit(i)
        return "done"

    s = Stream(work)
    assert drain(s) == ([0, 1, 2, 3, 4], "done")
    assert not s.cancel.is_set(), "a stream that ran to the end does not cancel its work"
    assert drain(keyed("n", Stream(work))) == ([{"n": i} for i in range(5)], "done")


def test_worker_errors_are_reraised_and_cancellations_become_the_widgets_cancelled() -> None:
    def fail(_emit: Callable[[Any], None]) -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        drain(Stream(fail))
    for exc in (GenerationCancelled(), WorkCancelled("stopped")):
        def stopped(_emit: Callable[[Any], None], exc: BaseException = exc) -> None:
            raise exc

        with pytest.raises(Cancelled) as info:
            drain(Stream(stopped))
        assert info.value.__cause__ is exc
    assert issubclass(Cancelled, WorkCancelled)


def test_a_cancelled_job_raises_at_once_or_after_the_work_stops() -> None:
    gate = threading.Event()

    def slow(emit: Callable[[Any], None], cancel: threading.Event) -> str:
        emit("first")
        gate.wait(10)
        if cancel.is_set():
            raise GenerationCancelled()
        return "finished"

    job = Job(1, ("m", "v"))
    cancel = threading.Event()
    s = Stream(lambda emit: slow(emit, cancel), job, cancel, wait=False)
    it = iter(s)
    assert next(it) == "first"
    job.cancel()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        next(it)
    assert time.monotonic() - t0 < 5 and s.thread.is_alive(), "wait=False does not wait for the work"
    assert cancel.is_set()
    gate.set()
    s.thread.join(10)
    # wait=True: the cancel event is set and the stream ends when the work does, with its cancellation
    gate.clear()
    job, cancel = Job(2, ("m", "v")), threading.Event()
    s = Stream(lambda emit: slow(emit, cancel), job, cancel)
    it = iter(s)
    assert next(it) == "first"
    job.cancel()
    threading.Timer(0.2, gate.set).start()
    with pytest.raises(Cancelled):
        next(it)
    s.thread.join(5)
    assert not s.thread.is_alive()


def test_dropping_the_generator_cancels_the_work() -> None:
    def forever(emit: Callable[[Any], None], cancel: threading.Event) -> None:
        while not cancel.wait(0.01):
            emit("tick")

    cancel = threading.Event()
    s = Stream(lambda emit: forever(emit, cancel), cancel=cancel)
    outer: Generator = keyed("k", s)
    assert next(outer) == {"k": "tick"}
    outer.close()
    s.thread.join(5)
    assert cancel.is_set() and not s.thread.is_alive()


def test_throttle_keeps_only_the_newest_item() -> None:
    def fast(emit: Callable[[Any], None]) -> str:
        text = ""
        for i in range(40):
            text += str(i % 10)
            emit(text)
            time.sleep(0.005)
        return text

    t0 = time.monotonic()
    parts, final = drain(Stream(fast, throttle=0.05))
    elapsed = time.monotonic() - t0
    assert final == "".join(str(i % 10) for i in range(40))
    assert parts and all(final.startswith(p) for p in parts) and parts == sorted(parts, key=len)
    assert len(parts) <= elapsed / 0.05 + 2 and len(parts) < 40
