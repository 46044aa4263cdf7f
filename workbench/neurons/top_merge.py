"""Merging candidates into a running top-k per unit, as a small C kernel.

`KeyState.merge_top` keeps, for every unit, the k best (value, window, position) entries in the
order value descending, then window ascending (an empty slot, window -1, after every real
window of the same value; one NaN above every number; -0.0 equal to +0.0). Its torch version
sorts every column a candidate could enter: at the start of a scan, when every column can,
that sort costs more than the scan's reductions of the batch. `merged` gives the same entries
with one insertion per candidate that beats a column's k-th entry. It returns None (and the
torch version runs) when the kernel cannot be built (`workbench.core.native`) or is disabled
(``WORKBENCH_NATIVE=0``), or for tensors that are not on the CPU.
"""

from __future__ import annotations

import ctypes

import torch

from ..core import native

__all__ = ["merged", "available", "SOURCE"]

SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* The sort key of an entry, as KeyState._merged builds it: the value's order-preserving
   integer (after -0.0 -> +0.0 and one canonical NaN) above, the window below (earlier first,
   an empty slot -1 last). Writes the canonical value to *canon. */
static inline int64_t key_of(float v, int64_t w, float *canon) {
  uint32_t u;
  v = v + 0.0f;
  if (v != v) u = 0x7FC00000u; else memcpy(&u, &v, 4);
  memcpy(canon, &u, 4);
  int32_t b = (int32_t)u;
  int64_t hi = b < 0 ? (int64_t)(b ^ 0x7FFFFFFF) : (int64_t)b;
  int64_t lo = w < 0 ? 0 : 0xFFFFFFFFLL - w;
  return (int64_t)((uint64_t)hi << 32) | lo;
}

/* tv, tw, tp [k, d]: the running top-k (any order); cv, cw, cp [c, d]: candidates.
   ov, ow, op [k, d]: the k entries with the largest keys of each column, largest first.
   key, src, val: work arrays of k + c entries. */
void wb_merge_top(int64_t k, int64_t c, int64_t d, const float *restrict tv, const int64_t *restrict tw,
                  const int32_t *restrict tp, const float *restrict cv, const int64_t *restrict cw,
                  const int32_t *restrict cp, float *restrict ov, int64_t *restrict ow, int32_t *restrict op,
                  int64_t *restrict key, int64_t *restrict src, float *restrict val) {
  const int64_t n = k + c;
  for (int64_t j = 0; j < d; j++) {
    int sorted = 1;
    for (int64_t i = 0; i < k; i++) {
      key[i] = key_of(tv[i * d + j], tw[i * d + j], &val[i]);
      src[i] = i;
      if (i && key[i] > key[i - 1]) sorted = 0;
    }
    for (int64_t i = 0; i < c; i++) key[k + i] = key_of(cv[i * d + j], cw[i * d + j], &val[k + i]);
    if (sorted) {  /* insert each candidate that beats the k-th entry */
      for (int64_t i = k; i < n; i++) {
        if (k == 0 || key[i] <= key[k - 1]) continue;
        int64_t r = k - 1, ki = key[i];
        while (r > 0 && key[r - 1] < ki) { key[r] = key[r - 1]; src[r] = src[r - 1]; r--; }
        key[r] = ki;
        src[r] = i;
      }
    } else {  /* insertion sort of all n */
      for (int64_t i = k; i < n; i++) src[i] = i;
      for (int64_t i = 1; i < n; i++) {
        int64_t ki = key[i], si = src[i], r = i;
        while (r > 0 && key[r - 1] < ki) { key[r] = key[r - 1]; src[r] = src[r - 1]; r--; }
        key[r] = ki;
        src[r] = si;
      }
    }
    for (int64_t r = 0; r < k; r++) {
      int64_t s = src[r];
      ov[r * d + j] = val[s];
      ow[r * d + j] = s < k ? tw[s * d + j] : cw[(s - k) * d + j];
      op[r * d + j] = s < k ? tp[s * d + j] : cp[(s - k) * d + j];
    }
  }
}
"""

_P, _I64 = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {"wb_merge_top": (None, [_I64, _I64, _I64] + [_P] * 12)}


def _lib() -> ctypes.CDLL | None:
    return native.load("top_merge", SOURCE, _SIGNATURES)


def available() -> bool:
    """Whether the kernel is built and enabled here."""
    return _lib() is not None


def merged(tv: torch.Tensor, tw: torch.Tensor, tp: torch.Tensor, values: torch.Tensor, windows: torch.Tensor,
           pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The top-k ``[k, d]`` (float32 values, int64 windows, int32 positions) after merging the
    ``[c, d]`` candidates, as new tensors; None where the kernel does not apply."""
    ts = (tv, tw, tp, values, windows, pos)
    if any(t.device.type != "cpu" or t.dim() != 2 for t in ts):
        return None
    lib = _lib()
    if lib is None:
        return None
    k, d = tv.shape
    c = values.shape[0]
    if tuple(tw.shape) != (k, d) or tuple(tp.shape) != (k, d) or any(t.shape[1] != d for t in ts[3:]) \
            or windows.shape[0] != c or pos.shape[0] != c:
        raise ValueError(f"top-k [{k}, {d}] and candidates {list(values.shape)}: shapes do not agree")
    tv, values = tv.float().contiguous(), values.float().contiguous()
    tw, windows = tw.long().contiguous(), windows.long().contiguous()
    tp, pos = tp.int().contiguous(), pos.int().contiguous()
    ov, ow, op = torch.empty(k, d), torch.empty(k, d, dtype=torch.long), torch.empty(k, d, dtype=torch.int32)
    work = torch.empty(2, k + c, dtype=torch.long)
    val = torch.empty(k + c)
    lib.wb_merge_top(k, c, d, tv.data_ptr(), tw.data_ptr(), tp.data_ptr(), values.data_ptr(), windows.data_ptr(),
                     pos.data_ptr(), ov.data_ptr(), ow.data_ptr(), op.data_ptr(), work[0].data_ptr(),
                     work[1].data_ptr(), val.data_ptr())
    return ov, ow, op
