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
import sys
import threading
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from workbench.core import errors

from ._image import ImageRequest, check_image, image_format
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
        if buffers and "buffers" in inspect.signature(fn).parameters:  # binary data the view sent
            params = {**params, "buffers": list(buffers)}
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

    # -- images: widget.save_image (see _image.py and js/src/lib/snapshot.ts) ---------------
    last_image: ImageRequest | None = None  # the latest image a view sent (save_image or its button)

    def save_image(self, path: str | Path | None, format: str | None = None, timeout: float = 60.0) -> ImageRequest:
        """Save what the widget's view shows as PNG (or SVG, for the graph widgets) to ``path``.

        ``format`` is ``"png"`` or ``"svg"`` (default: from the suffix, else PNG); ``path=None``
        keeps the bytes on the handle only. The view renders the image in the browser, at the
        screen's devicePixelRatio, and sends it back; the kernel reads that answer only after
        the current cell has finished, so this returns at once with an `ImageRequest` and the
        file is written (atomically) a moment later: check ``handle.done`` / ``handle.error``,
        or ``widget.last_image``, in a later cell. Raises when no view of the widget is
        displayed yet (display it, e.g. as a cell's last line, and save from a later cell);
        the handle reports an error if no view answers within ``timeout`` seconds.
        """
        fmt = image_format(path or "", format)
        views = self.__dict__.setdefault("_image_views", set())
        if not views:
            raise RuntimeError(f"no view of this {type(self).__name__} is displayed: show the widget "
                               "(put it last in a cell) and call save_image from a later cell")
        pending = self.__dict__.setdefault("_image_pending", {})
        ids = self.__dict__.setdefault("_image_ids", itertools.count(1))
        req = ImageRequest(next(ids), Path(path) if path is not None else None, fmt)
        pending[req.id] = req
        timer = threading.Timer(timeout, req.fail, args=(f"no view answered within {timeout:g} s: is the widget still "
                                                          "displayed (and its notebook open)?",))
        timer.daemon = True
        timer.start()
        self.send({"type": "snapshot", "id": req.id, "format": fmt})
        return req

    @rpc()
    def rpc_image(self, id: int | None = None, format: str = "png", width: int = 0, height: int = 0, ms: float = 0.0,
                  error: str = "", buffers: list | None = None) -> dict[str, Any]:
        """A view's image: the answer to save_image request ``id`` (None: the view's own button)."""
        req = self.__dict__.get("_image_pending", {}).pop(id, None) if id is not None else None
        if id is not None and (req is None or req.error):
            return {"ignored": True}  # another view answered first, or it timed out
        if error:
            if req is not None:
                req.fail(f"the view could not render the image: {error}")
            return {"ok": False}
        data = bytes(buffers[0]) if buffers else b""
        fmt = image_format("", format)
        try:
            size = check_image(data, fmt)
        except ValueError as exc:
            if req is not None:
                req.fail(str(exc))
            raise
        if size is not None:
            width, height = size
        req = req or ImageRequest(0, None, fmt)
        req.finish(data, width, height, ms)
        self.last_image = req
        self._image_saved(req)
        return {"ok": True, "bytes": len(data)}

    @rpc()
    def rpc_image_view(self, view: str = "", open: bool = True) -> dict[str, int]:
        """A view appeared (or went away): save_image needs one to answer."""
        views = self.__dict__.setdefault("_image_views", set())
        (views.add if open else views.discard)(str(view))
        return {"views": len(views)}

    def _image_saved(self, image: ImageRequest) -> None:
        """Hook: a widget may keep a copy of each image (CircuitGraph keeps its SVG as ``.svg``)."""

    # -- static copies (`workbench.widgets.export`) ---------------------------------------
    #: The replies a static copy of the page replays: empty in live use, filled by `snapshot`.
    _static = traitlets.Dict({}).tag(sync=True)
    #: Most bytes (JSON and buffers) `snapshot` keeps of one reply; a larger one is recorded as a note.
    static_max_bytes = 32 * 2**20
    _instances: weakref.WeakSet[WorkbenchWidget] = weakref.WeakSet()

    def __new__(cls, *args: Any, **kwargs: Any) -> WorkbenchWidget:
        self = super().__new__(cls, *args, **kwargs)
        WorkbenchWidget._instances.add(self)  # every live widget, for `snapshot_all`
        return self

    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The ``(method, params)`` requests the view makes on its first render, given the traits."""
        return []

    def snapshot(self) -> dict[str, Any]:
        """Compute the replies of `static_requests` and keep them (packed, buffers as bytes) in ``_static``.

        A static HTML copy of the notebook replays them to the view with no kernel. Each entry is
        ``{"method", "params", "partials": [{"content", "buffers"}], "content", "buffers"}``, or
        ``{"method", "params", "error"}`` when the call failed or its reply is over `static_max_bytes`.
        """
        replies = []
        for method, params in self.static_requests():
            rec: dict[str, Any] = {"method": method, "params": params}
            try:
                partials, final = self._static_call(method, params)
                packed = [pack(p) for p in [*partials, final]]
                size = sum(len(str(body)) + sum(b.nbytes for b in bufs) for body, bufs in packed)
                if size > self.static_max_bytes:
                    raise ValueError(f"static copy: this reply ({size / 2**20:.1f} MB) is over the "
                                     f"{self.static_max_bytes / 2**20:.0f} MB kept; open the notebook to rerun")
                rec["partials"] = [{"content": body, "buffers": [bytes(b) for b in bufs]} for body, bufs in packed[:-1]]
                rec["content"], rec["buffers"] = packed[-1][0], [bytes(b) for b in packed[-1][1]]
            except Exception as exc:  # the static view shows the error, as the live one would
                rec["error"] = {"message": str(exc), "kind": type(exc).__name__}
            replies.append(rec)
        self._static = {"replies": replies}
        return self._static

    def _static_call(self, method: str, params: dict[str, Any]) -> tuple[list[Any], Any]:
        """Run one rpc method as `call` does; return (partial replies, final reply)."""
        result = getattr(self, f"rpc_{method}")(**params)
        partials: list[Any] = []
        if inspect.isgenerator(result):
            while True:
                try:
                    partials.append(next(result))
                except StopIteration as stop:
                    return partials, stop.value
        return partials, result

    @classmethod
    def snapshot_all(cls) -> int:
        """`snapshot` every open widget (one failing is reported, not raised); return how many were kept."""
        n = 0
        for w in list(WorkbenchWidget._instances):
            if isinstance(w, cls) and w.comm is not None:
                try:
                    w.snapshot()
                    n += 1
                except Exception as exc:  # pragma: no cover - snapshot records rpc errors itself
                    print(f"static copy: {type(w).__name__} not kept: {exc}", file=sys.stderr)
        return n
