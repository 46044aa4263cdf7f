"""Images of a widget's view: the handle `WorkbenchWidget.save_image` returns, and PNG/SVG checks.

The kernel asks the browser for an image with a ``{"type": "snapshot", "id", "format"}``
message; the first view that gets it renders (``js/src/lib/snapshot.ts``) and answers with the
request ``image`` carrying the bytes as a binary buffer. The kernel only reads messages between
cells, so the file is written (atomically) after the cell that asked has finished: look at
``handle.done`` (or ``widget.last_image``) in a later cell.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.fileio import atomic_bytes

FORMATS = ("png", "svg")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError when ``data`` is not a PNG."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return struct.unpack(">II", data[16:24])


def image_format(path: str | Path, format: str | None) -> str:
    """The format to save: ``format`` if given, else from the suffix (``.svg``), else PNG."""
    fmt = (format or Path(path).suffix.lstrip(".") or "png").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def check_image(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Validate what a view sent; the PNG's pixel size (None for SVG)."""
    if fmt == "png":
        return png_size(data)
    head = data[:2000].lstrip().decode("utf-8", "replace")
    if not (head.startswith("<svg") or head.startswith("<?xml")):
        raise ValueError("an SVG image must be the text of an <svg> element")
    return None


@dataclass
class ImageRequest:
    """One ``save_image`` call: filled in when the view's answer arrives (after the asking cell).

    ``done`` is True once the file is written; ``error`` says why not (no view answered, the
    view could not render). ``width``/``height`` are pixels for PNG, CSS pixels for SVG;
    ``render_ms`` is the browser's time to render, ``seconds`` the whole round trip.
    """

    id: int
    path: Path | None
    format: str
    started: float = field(default_factory=time.monotonic)
    done: bool = False
    error: str = ""
    width: int = 0
    height: int = 0
    nbytes: int = 0
    render_ms: float = 0.0
    seconds: float = 0.0
    data: bytes = field(default=b"", repr=False)
    _event: threading.Event = field(default_factory=threading.Event, repr=False)

    def finish(self, data: bytes, width: int, height: int, render_ms: float) -> None:
        if self.path is not None:
            atomic_bytes(self.path, data)
        self.data, self.width, self.height, self.nbytes = data, int(width), int(height), len(data)
        self.render_ms, self.seconds, self.done = float(render_ms), time.monotonic() - self.started, True
        self._event.set()

    def fail(self, message: str) -> None:
        if self.done or self.error:
            return
        self.error, self.seconds = message, time.monotonic() - self.started
        self._event.set()

    @property
    def pending(self) -> bool:
        return not (self.done or self.error)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until answered (only useful from another thread: a running cell blocks the reply)."""
        return self._event.wait(timeout)

    def result(self) -> Path | bytes:
        """The written path (or the bytes); raises if the view failed or has not answered yet."""
        if self.error:
            raise RuntimeError(self.error)
        if not self.done:
            raise RuntimeError("the view has not answered yet: it does once the cell that called "
                               "save_image has finished; look again in a later cell")
        return self.path if self.path is not None else self.data
