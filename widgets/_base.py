"""Base class for workbench widgets: request/response messages keyed by id.

The browser sends ``{"type": "request", "id": n, "method": m, "params": {...}}``;
the kernel calls ``self.rpc_<m>(**params)`` and answers with ``{"type": "reply",
"id": n, "done": true, "content": ...}`` (arrays travel as binary buffers via
`_transport.pack`; a message over `_transport.MAX_MESSAGE_BYTES` goes as consecutive chunk
messages with the same id, which `js/src/lib/rpc.ts` reassembles). A method may be a generator: each yielded value is sent as a
partial reply and its return value as the final one. Methods registered with
``background=True`` run in a worker thread; a newer request to the same method from
the same view (each browser view sends its own ``view`` id) cancels the older one (the
generator sees ``job.cancelled``; `Job.check` raises `Cancelled`, a
`workbench.core.errors.Cancelled`). `_stream.Stream` bridges work in another thread to such
a generator.
Errors come back as ``{"error": {...}}`` and the widget shows them.
"""

from __future__ import annotations

import inspect
import itertools
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from workbench.core import errors

from ._transport import pack, split

STATIC = Path(__file__).parent / "static"


def bundle(name: str) -> Path:
    """Path of a widget's bundled ES module; a clear error when js/ was not built."""
    path = STATIC / f"{name}.js"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the widget bundle was not built. Run `pip install .` "
            "(it bundles js/ with esbuild) or `cd js && npm install && node build.mjs`."
        )
    return path


class Cancelled(errors.Cancelled):
    """Raised inside a background job when a newer request replaced it (or the view cancelled it)."""

    def __init__(self, message: str = "superseded by a newer request", partial: Any = None) -> None:
        super().__init__(message, partial)


class Job:
    """One background request: its id and a cancellation flag."""

    def __init__(self, rid: int, key: tuple[str, str]) -> None:
        self.id = rid
        self.key = key  # (method, view): a newer request from the same view supersedes this one
        self.method = key[0]
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def event(self) -> threading.Event:
        """The cancellation flag as an Event (pass it as ``cancel=`` to `Model.generate`)."""
        return self._event

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise `Cancelled` if this job was superseded or cancelled."""
        if self._event.is_set():
            raise Cancelled()


def rpc(background: bool = False) -> Callable[[Callable], Callable]:
    """Mark a method as callable from the browser (optionally in a worker thread)."""

    def mark(fn: Callable) -> Callable:
        fn._rpc_background = background  # type: ignore[attr-defined]
        return fn

    return mark


class WorkbenchWidget(anywidget.AnyWidget):
    """An anywidget whose browser side calls kernel methods by request id."""

    error = traitlets.Unicode("").tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._jobs: dict[tuple[str, str], Job] = {}
        self._lock = threading.Lock()
        self.on_msg(self._on_custom)
        self.last_reply: Any = None
        self._parts = itertools.count()  # tells apart the chunked replies of one request

    # -- message plumbing -------------------------------------------------
    def _send_reply(self, rid: int, content: Any = None, done: bool = True, error: dict | None = None) -> None:
        msg: dict[str, Any] = {"type": "reply", "id": rid, "done": done}
        if error is not None:
            msg["error"] = error
            self._send_split(msg, None)
            return
        body, buffers = pack(content)
        msg["content"] = body
        self._send_split(msg, buffers)

    def _send_split(self, msg: dict, buffers: list | None) -> None:
        """Send one reply as one message, or as chunks each under the byte budget."""
        pieces = split(msg, buffers, part=next(self._parts))
        if len(pieces) == 1:  # the common case: exactly as before chunking existed
            if buffers is None:
                self.send(msg)
            else:
                self.send(msg, buffers=buffers or None)
            return
        for chunk, chunk_buffers in pieces:
            self.send(chunk, buffers=chunk_buffers)

    def _on_custom(self, _widget: Any, content: dict, buffers: list) -> None:
        kind = content.get("type")
        if kind == "cancel":
            with self._lock:
                for job in self._jobs.values():
                    if job.id == content.get("id"):
                        job.cancel()
            return
        if kind != "request":
            return
        rid, method, params = content["id"], content.get("method", ""), content.get("params") or {}
        view = str(content.get("view", ""))
        fn = getattr(self, f"rpc_{method}", None)
        if fn is None or not hasattr(fn, "_rpc_background"):
            self._send_reply(rid, error={"message": f"unknown method {method!r}", "kind": "KeyError"})
            return
        if fn._rpc_background:
            job = Job(rid, (method, view))
            with self._lock:
                old = self._jobs.get(job.key)
                if old is not None:
                    old.cancel()
                self._jobs[job.key] = job
            threading.Thread(target=self._run, args=(fn, rid, params, job), daemon=True).start()
        else:
            self._run(fn, rid, params, None)

    def _run(self, fn: Callable, rid: int, params: dict, job: Job | None) -> None:
        self.busy = True
        try:
            if job is not None and "job" in inspect.signature(fn).parameters:
                params = {**params, "job": job}
            result = fn(**params)
            if inspect.isgenerator(result):
                while True:
                    try:
                        part = next(result)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    if job is not None:
                        job.check()
                    self._send_reply(rid, part, done=False)
            if job is not None:
                job.check()
            self.error = ""
            self.last_reply = result
            self._send_reply(rid, result, done=True)
        except errors.Cancelled:  # tell the view, in case it did not cancel the request itself
            self._send_reply(rid, error={"message": "superseded by a newer request", "kind": "Cancelled"})
        except Exception as exc:  # shown in the widget, not lost in the log
            self.error = f"{type(exc).__name__}: {exc}"
            self._send_reply(
                rid,
                error={"message": str(exc), "kind": type(exc).__name__, "traceback": traceback.format_exc()},
            )
        finally:
            if job is not None:
                with self._lock:
                    if self._jobs.get(job.key) is job:
                        del self._jobs[job.key]
            self.busy = bool(self._jobs)

    def call(self, method: str, **params: Any) -> Any:
        """Call an rpc method from Python exactly as the browser would (synchronously)."""
        fn = getattr(self, f"rpc_{method}")
        result = fn(**params)
        if inspect.isgenerator(result):
            while True:
                try:
                    next(result)
                except StopIteration as stop:
                    return stop.value
        return result
