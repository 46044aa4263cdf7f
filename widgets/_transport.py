"""The one path that moves arrays to the browser: raw binary buffers plus a JSON descriptor.

`pack(content)` walks a message's content; every numpy array or torch tensor in it
is replaced by ``{"__array__": i, "dtype": ..., "shape": [...]}`` and its bytes go
into ``buffers[i]``. The JS side (`js/src/lib/arrays.ts`) reverses this.

`split(msg, buffers)` keeps every message under `MAX_MESSAGE_BYTES` (JSON and buffers
together), whatever the payload: a message that fits goes as it is; a larger one becomes
consecutive ``{"type", "id", "chunk": {...}}`` messages, each carrying one slice of a byte
stream (the content's JSON text, then every buffer) with its index, the count and the
sizes. `js/src/lib/rpc.ts` reassembles the slices (in any order) before it resolves the
request; `join` is the Python inverse, for tests.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

_DTYPES = {
    np.dtype("float32"): "float32",
    np.dtype("float16"): "float16",
    np.dtype("float64"): "float64",
    np.dtype("int32"): "int32",
    np.dtype("uint8"): "uint8",
    np.dtype("uint16"): "uint16",
    np.dtype("int8"): "int8",
    np.dtype("bool"): "bool",
}


def _as_numpy(x: Any) -> np.ndarray | None:
    if isinstance(x, np.ndarray):
        return x
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    return None


def to_wire(arr: np.ndarray) -> np.ndarray:
    """Cast to a dtype the browser decodes (int64 → int32, float64 stays only if asked)."""
    if arr.dtype == np.int64:
        if arr.size and (arr.max() > np.iinfo(np.int32).max or arr.min() < np.iinfo(np.int32).min):
            raise ValueError("int64 array out of int32 range cannot be sent to the browser")
        arr = arr.astype(np.int32)
    if arr.dtype not in _DTYPES:
        raise TypeError(f"dtype {arr.dtype} cannot be sent to the browser")
    return np.ascontiguousarray(arr)


def pack(content: Any) -> tuple[Any, list[memoryview]]:
    """Replace arrays in `content` by descriptors; return (json_content, buffers)."""
    buffers: list[memoryview] = []

    def walk(x: Any) -> Any:
        arr = _as_numpy(x)
        if arr is not None:
            arr = to_wire(arr)
            buffers.append(memoryview(arr.tobytes()))
            return {"__array__": len(buffers) - 1, "dtype": _DTYPES[arr.dtype], "shape": list(arr.shape)}
        if isinstance(x, dict):
            return {str(k): walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        if isinstance(x, (np.floating, np.integer)):
            return x.item()
        return x

    return walk(content), buffers


#: Largest message sent to the browser, JSON and binary buffers together (the websocket
#: budget is about 10 MB; the kernel's envelope adds well under `_ENVELOPE_BYTES`).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_ENVELOPE_BYTES = 4096


def _dumps(x: Any) -> str:
    return json.dumps(x, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def message_bytes(msg: dict, buffers: list[memoryview] | None = None) -> int:
    """Bytes of one message as sent: its JSON text plus its buffers."""
    return len(json.dumps(msg, ensure_ascii=False, default=str).encode()) + sum(memoryview(b).nbytes for b in buffers or [])


def split(
    msg: dict, buffers: list[memoryview] | None, part: int = 0, budget: int | None = None
) -> list[tuple[dict, list[memoryview]]]:
    """Cut one (msg, buffers) into messages of at most `budget` bytes each (see the module doc).

    `budget` defaults to `MAX_MESSAGE_BYTES`, read at each call.

    `part` tells apart the chunked messages of one request id (each streamed reply is one part).
    """
    budget = MAX_MESSAGE_BYTES if budget is None else budget
    buffers = [memoryview(b).cast("B") for b in buffers or []]
    if message_bytes(msg, buffers) + _ENVELOPE_BYTES <= budget:
        return [(msg, buffers)]
    head = {k: v for k, v in msg.items() if k != "content"}
    text = _dumps(msg.get("content")).encode()
    pieces = [memoryview(text), *buffers]
    sizes = [p.nbytes for p in pieces]
    total = sum(sizes)
    # the header's size barely depends on index and count: allow for their largest values
    header = {"type": msg.get("type"), "id": msg.get("id"),
              "chunk": {"part": part, "index": total, "count": total, "sizes": sizes, "head": head}}
    room = budget - _ENVELOPE_BYTES - message_bytes(header)
    if room < 1024:
        raise ValueError(f"a message's header alone is {budget - room} bytes, over the {budget}-byte budget")
    count = -(-total // room)
    out: list[tuple[dict, list[memoryview]]] = []
    stream = _Stream(pieces)
    for index in range(count):
        chunk = {"part": part, "index": index, "count": count, "sizes": sizes, "head": head}
        out.append(({"type": msg.get("type"), "id": msg.get("id"), "chunk": chunk}, [stream.take(room)]))
    return out


class _Stream:
    """Read consecutive byte slices across a list of buffers (copying only across borders)."""

    def __init__(self, pieces: list[memoryview]) -> None:
        self.pieces, self.i, self.off = pieces, 0, 0

    def take(self, n: int) -> memoryview:
        parts: list[memoryview] = []
        while n and self.i < len(self.pieces):
            p = self.pieces[self.i]
            k = min(n, p.nbytes - self.off)
            parts.append(p[self.off : self.off + k])
            self.off += k
            n -= k
            if self.off == p.nbytes:
                self.i, self.off = self.i + 1, 0
        return parts[0] if len(parts) == 1 else memoryview(b"".join(parts))


def join(messages: list[tuple[dict, list]]) -> list[tuple[dict, list[bytes]]]:
    """Inverse of `split` over a sequence of sent messages (chunks in any order): whole messages."""
    out: list[tuple[dict, list[bytes]] | None] = []
    groups: dict[tuple, tuple[int, dict[int, bytes]]] = {}
    for msg, buffers in messages:
        chunk = msg.get("chunk")
        if chunk is None:
            out.append((msg, [bytes(b) for b in buffers]))
            continue
        key = (msg.get("id"), chunk["part"])
        if key not in groups:
            groups[key] = (len(out), {})
            out.append(None)
        slot, got = groups[key]
        got[chunk["index"]] = bytes(buffers[0])
        if len(got) == chunk["count"]:
            data = b"".join(got[i] for i in range(chunk["count"]))
            pieces, off = [], 0
            for n in chunk["sizes"]:
                pieces.append(data[off : off + n])
                off += n
            whole = {**chunk["head"], "content": json.loads(pieces[0].decode())}
            out[slot] = (whole, pieces[1:])
    if any(m is None for m in out):
        raise ValueError("incomplete chunked message")
    return out  # type: ignore[return-value]


def unpack(content: Any, buffers: list[bytes | memoryview]) -> Any:
    """Inverse of `pack` (used by tests and for arrays sent from the browser)."""
    if isinstance(content, dict) and "__array__" in content:
        dtype = {v: k for k, v in _DTYPES.items()}[content["dtype"]]
        return np.frombuffer(bytes(buffers[content["__array__"]]), dtype=dtype).reshape(content["shape"])
    if isinstance(content, dict):
        return {k: unpack(v, buffers) for k, v in content.items()}
    if isinstance(content, list):
        return [unpack(v, buffers) for v in content]
    return content


def pack_tril(mat: np.ndarray) -> np.ndarray:
    """Pack the lower triangles of `[..., n, n]` matrices row by row into `[..., n(n+1)/2]`."""
    n = mat.shape[-1]
    rows, cols = np.tril_indices(n)
    return mat[..., rows, cols]
