"""The one thread-to-generator bridge of the widgets: work in a worker thread, its items as partial replies.

    s = Stream(lambda emit: model.generate(..., on_token=lambda _i, t: emit(t), cancel=ev).text,
               job, cancel=ev, throttle=1 / MAX_PARTIALS_PER_S)
    text = yield from s                     # in an rpc generator: each emitted item, then the result

``work(emit)`` runs in a daemon thread; what it passes to ``emit`` is yielded in order (or, with
``throttle``, only the newest item, at most once per ``throttle`` seconds); what it returns is the
generator's return value; what it raises is re-raised in the consuming thread (a cancellation,
any `workbench.core.errors.Cancelled` such as `GenerationCancelled`, as the widgets' `Cancelled`).
``cancel`` (the event the work watches) is set when ``job`` is cancelled and when the consumer
drops the generator before the work ended. On a cancelled job the stream raises `Cancelled` at
once (``wait=False``: the work finishes its step in the background) or drains until the work
stops (``wait=True``).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any, Generic, TypeVar

from workbench.core.errors import Cancelled as WorkCancelled

from ._base import Cancelled, Job

__all__ = ["MAX_PARTIALS_PER_S", "Stream", "keyed", "generation"]

R = TypeVar("R")
#: At most this many partial replies per second while a generation streams.
MAX_PARTIALS_PER_S = 20.0


class Stream(Generic[R]):
    """Run ``work(emit)`` in a worker thread (started at once); iterate to get its items and result."""

    def __init__(self, work: Callable[[Callable[[Any], None]], R], job: Job | None = None,
                 cancel: threading.Event | None = None, *, throttle: float | None = None, wait: bool = True,
                 poll: float = 0.05, name: str = "widget-stream") -> None:
        self.job, self.throttle, self.wait, self.poll = job, throttle, wait, poll
        self.cancel = cancel if cancel is not None else threading.Event()
        self._q: queue.Queue = queue.Queue()
        self._work = work
        self.thread = threading.Thread(target=self._run, daemon=True, name=name)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._q.put(("done", self._work(lambda item: self._q.put(("item", item)))))
        except BaseException as exc:  # handed to the consuming thread
            self._q.put(("error", exc))

    def __iter__(self) -> Generator[Any, None, R]:
        finished = False
        last, pending, has = -math.inf, None, False
        try:
            while True:
                if self.job is not None and self.job.cancelled:
                    self.cancel.set()
                    if not self.wait:
                        raise Cancelled()
                if has and time.monotonic() - last >= self.throttle:
                    last, item, pending, has = time.monotonic(), pending, None, False
                    yield item
                    continue
                wait = self.poll if not has else max(0.0, min(self.poll, last + self.throttle - time.monotonic()))
                try:
                    kind, value = self._q.get(timeout=wait)
                except queue.Empty:
                    continue
                if kind == "item":
                    if self.throttle is None:
                        yield value
                    else:
                        pending, has = value, True
                    continue
                finished = True
                if kind == "done":
                    return value
                if isinstance(value, WorkCancelled) and not isinstance(value, Cancelled):
                    raise Cancelled() from value
                raise value
        finally:
            if not finished:
                self.cancel.set()


def keyed(key: str, items: Iterable[Any]) -> Generator[dict[str, Any], None, Any]:
    """Yield each item as ``{key: item}``; return the inner generator's return value (closing it on exit)."""
    gen = iter(items)
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            yield {key: item}
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()  # stops the worker when this request was dropped mid-stream


def generation(model: Any, prompt: str, specs: list, max_new_tokens: int, job: Job | None,
               name: str = "widget-generate") -> Generator[str, None, str]:
    """`Model.generate` in a worker thread: yield the text so far (throttled), return the final text."""
    cancel = threading.Event()

    def work(emit: Callable[[Any], None]) -> str:
        res = model.generate(prompt, specs, max_new_tokens=max_new_tokens, on_token=lambda _i, text: emit(text),
                             cancel=cancel)
        return res.text

    return (yield from Stream(work, job, cancel, throttle=1.0 / MAX_PARTIALS_PER_S, name=name))
