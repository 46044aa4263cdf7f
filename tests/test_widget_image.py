"""widget.save_image without a browser: the snapshot message, the view's reply, the atomic write."""

from __future__ import annotations

import struct
import zlib

import pytest

from workbench.widgets._base import WorkbenchWidget
from workbench.widgets._image import image_format, png_size


def tiny_png(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + b"\xff\xff\xff" * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class Probe(WorkbenchWidget):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[dict, list | None]] = []

    def send(self, content: dict, buffers: list | None = None) -> None:  # type: ignore[override]
        self.sent.append((content, buffers))


def request(w: Probe, method: str, params: dict, buffers: list | None = None) -> None:
    w._on_custom(w, {"type": "request", "id": 1, "method": method, "params": params, "view": "v"}, buffers or [])


def test_png_size_and_format() -> None:
    assert png_size(tiny_png(7, 3)) == (7, 3)
    with pytest.raises(ValueError, match="PNG"):
        png_size(b"GIF89a" + b"\0" * 30)
    assert image_format("a/b.svg", None) == "svg" and image_format("a/b", None) == "png"
    assert image_format("x.png", "SVG") == "svg"
    with pytest.raises(ValueError, match="unknown image format"):
        image_format("x.jpg", None)


def test_no_view_is_a_clear_error(tmp_path) -> None:
    w = Probe()
    with pytest.raises(RuntimeError, match="no view of this Probe is displayed"):
        w.save_image(tmp_path / "x.png")
    assert w.sent == []


def test_reply_writes_the_file(tmp_path) -> None:
    w = Probe()
    request(w, "image_view", {"view": "v", "open": True})
    h = w.save_image(tmp_path / "x.png")
    msg = w.sent[-1][0]
    assert msg == {"type": "snapshot", "id": h.id, "format": "png"}
    assert h.pending and not (tmp_path / "x.png").exists()
    with pytest.raises(RuntimeError, match="not answered yet"):
        h.result()
    data = tiny_png(12, 5)
    request(w, "image", {"id": h.id, "format": "png", "width": 0, "height": 0, "ms": 3.5}, [memoryview(data)])
    assert h.done and h.wait(0) and (h.width, h.height, h.nbytes) == (12, 5, len(data))
    assert (tmp_path / "x.png").read_bytes() == data and h.result() == tmp_path / "x.png"
    assert w.last_image is h and h.render_ms == 3.5
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temp file left behind
    # a second view answering the same request is ignored
    request(w, "image", {"id": h.id, "format": "png"}, [memoryview(tiny_png(1, 1))])
    assert png_size((tmp_path / "x.png").read_bytes()) == (12, 5)


def test_view_errors_bad_bytes_and_timeout(tmp_path) -> None:
    w = Probe()
    request(w, "image_view", {"view": "v", "open": True})
    h = w.save_image(tmp_path / "a.svg")
    request(w, "image", {"id": h.id, "format": "svg", "error": "this view draws no SVG"})
    assert h.error.endswith("this view draws no SVG") and not (tmp_path / "a.svg").exists()
    with pytest.raises(RuntimeError, match="no SVG"):
        h.result()
    h2 = w.save_image(tmp_path / "b.png")
    request(w, "image", {"id": h2.id, "format": "png"}, [memoryview(b"not a png at all, not at all")])
    assert "not a PNG" in h2.error and not (tmp_path / "b.png").exists()
    h3 = w.save_image(tmp_path / "c.png", timeout=0.05)
    assert h3.wait(5) and "no view answered" in h3.error
    request(w, "image_view", {"view": "v", "open": False})
    with pytest.raises(RuntimeError, match="no view"):
        w.save_image(tmp_path / "d.png")


def test_button_images_are_kept() -> None:
    w = Probe()
    request(w, "image", {"id": None, "format": "svg", "width": 30, "height": 20},
            [memoryview(b'<svg xmlns="http://www.w3.org/2000/svg"/>')])
    assert w.last_image is not None and w.last_image.done and w.last_image.path is None
    assert (w.last_image.width, w.last_image.height) == (30, 20)
