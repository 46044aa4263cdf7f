"""The one path that moves arrays to the browser: raw binary buffers plus a JSON descriptor.

`pack(content)` walks a message's content; every numpy array or torch tensor in it
is replaced by ``{"__array__": i, "dtype": ..., "shape": [...]}`` and its bytes go
into ``buffers[i]``. The JS side (`js/src/lib/arrays.ts`) reverses this.
"""

from __future__ import annotations

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
