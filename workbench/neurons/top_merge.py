"""Merging candidates into a running top-k per unit, as a small C kernel.

`KeyState.merge_top` keeps, for every unit, the k best (value, window, position) entries in the
order value descending, then window ascending (an empty slot, window -1, after every real
window of the same value; one NaN above every number; -0.0 equal to +0.0). Its torch version
sorts every column a candidate could enter: at the start of a scan, when every column can,
that sort costs more than the scan's reductions of the batch. `merge_into` gives the same
entries in place, with one insertion per candidate that beats a column's k-th entry (`merged`
on copies). It returns False (and the torch version runs) when the kernel cannot be built
(`workbench.core.native`) or is disabled (``WORKBENCH_NATIVE=0``), or for tensors that are
not on the CPU or not in the state's dtypes.
"""

from __future__ import annotations

import ctypes

import torch

from ..core import native

__all__ = ["merge_into", "merged", "available", "SOURCE"]

SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* The canonical value (-0.0 -> +0.0, one NaN) and its sort key, as KeyState._merged builds
   them: the value's order-preserving integer above, the window below (earlier first, an empty
   slot -1 last). */
static inline float canon(float v) {
  v = v + 0.0f;
  if (v != v) { uint32_t u = 0x7FC00000u; memcpy(&v, &u, 4); }
  return v;
}
static inline int64_t key_of(float v, int64_t w) {
  int32_t b;
  memcpy(&b, &v, 4);
  int64_t hi = b < 0 ? (int64_t)(b ^ 0x7FFFFFFF) : (int64_t)b;
  int64_t lo = w < 0 ? 0 : 0xFFFFFFFFLL - w;
  return (int64_t)((uint64_t)hi << 32) | lo;
}

/* Column j of an unsorted top-k: insertion sort of its k entries and the c candidates, the k
   largest kept. key, src, val: work arrays of k + c entries. */
static void sort_column(int64_t k, int64_t c, int64_t d, int64_t j, float *restrict tv, int64_t *restrict tw,
                        int32_t *restrict tp, const float *restrict cv, const int64_t *restrict cw,
                        const int32_t *restrict cp, int64_t *restrict key, int64_t *restrict src,
                        float *restrict val, int64_t *restrict ow, int32_t *restrict op) {
  const int64_t n = k + c;
  for (int64_t i = 0; i < n; i++) {
    val[i] = i < k ? tv[i * d + j] : canon(cv[(i - k) * d + j]);
    ow[i] = i < k ? tw[i * d + j] : cw[(i - k) * d + j];
    op[i] = i < k ? tp[i * d + j] : cp[(i - k) * d + j];
    key[i] = key_of(val[i], ow[i]);
    src[i] = i;
  }
  for (int64_t i = 1; i < n; i++) {
    int64_t ki = key[i], si = src[i], r = i;
    while (r > 0 && key[r - 1] < ki) { key[r] = key[r - 1]; src[r] = src[r - 1]; r--; }
    key[r] = ki;
    src[r] = si;
  }
  for (int64_t r = 0; r < k; r++) {
    tv[r * d + j] = val[src[r]];
    tw[r * d + j] = ow[src[r]];
    tp[r * d + j] = op[src[r]];
  }
}

/* tv, tw, tp [k, d]: the running top-k, updated in place; cv, cw, cp [c, d]: candidates.
   Afterwards each column holds its k largest keys, largest first, in canonical values.
   The existing entries and the candidates are read a row at a time (passes over [k, d] and
   [c, d] that vectorize) to find each column's k-th key and the columns some candidate beats.
   Only those are merged, in local arrays: a column already in order (as every merge leaves
   it) takes each candidate that beats its k-th entry by one insertion; one that is not is
   sorted whole. kth [d] int64, flag [d] uint8 (1: out of order, 2: a candidate beats the k-th)
   and key, src, val, ow, op (k + c entries each): work arrays. */
void wb_merge_top(int64_t k, int64_t c, int64_t d, float *restrict tv, int64_t *restrict tw,
                  int32_t *restrict tp, const float *restrict cv, const int64_t *restrict cw,
                  const int32_t *restrict cp, int64_t *restrict kth, uint8_t *restrict flag,
                  int64_t *restrict key, int64_t *restrict src, float *restrict val, int64_t *restrict ow,
                  int32_t *restrict op) {
  if (k == 0) return;
  for (int64_t j = 0; j < d; j++) {
    tv[j] = canon(tv[j]);
    kth[j] = key_of(tv[j], tw[j]);
    flag[j] = 0;
  }
  for (int64_t r = 1; r < k; r++)
    for (int64_t j = 0; j < d; j++) {
      float v = canon(tv[r * d + j]);
      tv[r * d + j] = v;
      int64_t kr = key_of(v, tw[r * d + j]);
      flag[j] |= kr > kth[j];
      kth[j] = kr;
    }
  for (int64_t i = 0; i < c; i++)
    for (int64_t j = 0; j < d; j++)
      flag[j] |= (key_of(canon(cv[i * d + j]), cw[i * d + j]) > kth[j]) << 1;
  for (int64_t j = 0; j < d; j++) {
    if (flag[j] & 1) { sort_column(k, c, d, j, tv, tw, tp, cv, cw, cp, key, src, val, ow, op); continue; }
    if (!flag[j]) continue;
    for (int64_t r = 0; r < k; r++) {  /* the column, in order: insert the candidates that enter */
      val[r] = tv[r * d + j];
      ow[r] = tw[r * d + j];
      op[r] = tp[r * d + j];
      key[r] = key_of(val[r], ow[r]);
      src[r] = r;
    }
    for (int64_t i = 0; i < c; i++) {
      float v = canon(cv[i * d + j]);
      int64_t ki = key_of(v, cw[i * d + j]);
      if (ki <= key[k - 1]) continue;
      val[k + i] = v;
      ow[k + i] = cw[i * d + j];
      op[k + i] = cp[i * d + j];
      int64_t r = k - 1;
      while (r > 0 && key[r - 1] < ki) { key[r] = key[r - 1]; src[r] = src[r - 1]; r--; }
      key[r] = ki;
      src[r] = k + i;
    }
    for (int64_t r = 0; r < k; r++) {
      if (src[r] == r) continue;
      tv[r * d + j] = val[src[r]];
      tw[r * d + j] = ow[src[r]];
      tp[r * d + j] = op[src[r]];
    }
  }
}
"""

_P, _I64 = ctypes.c_void_p, ctypes.c_int64
KERNEL = native.Kernel("top_merge", SOURCE, {"wb_merge_top": (None, [_I64, _I64, _I64] + [_P] * 13)})


def available() -> bool:
    """Whether the kernel is built and enabled here."""
    return KERNEL.available()


def merge_into(tv: torch.Tensor, tw: torch.Tensor, tp: torch.Tensor, values: torch.Tensor, windows: torch.Tensor,
               pos: torch.Tensor) -> bool:
    """Merge the ``[c, d]`` candidates into the top-k ``[k, d]`` in place (contiguous float32
    values, int64 windows, int32 positions on the CPU); False, untouched, where the kernel does
    not apply."""
    ts = (tv, tw, tp, values, windows, pos)
    if any(t.device.type != "cpu" or t.dim() != 2 for t in ts):
        return False
    if (tv.dtype, tw.dtype, tp.dtype) != (torch.float32, torch.int64, torch.int32) \
            or not all(t.is_contiguous() for t in ts[:3]):
        return False
    lib = KERNEL.lib()
    if lib is None:
        return False
    k, d = tv.shape
    c = values.shape[0]
    if tuple(tw.shape) != (k, d) or tuple(tp.shape) != (k, d) or any(t.shape[1] != d for t in ts[3:]) \
            or windows.shape[0] != c or pos.shape[0] != c:
        raise ValueError(f"top-k [{k}, {d}] and candidates {list(values.shape)}: shapes do not agree")
    values, windows, pos = values.float().contiguous(), windows.long().contiguous(), pos.int().contiguous()
    kth, flag = torch.empty(d, dtype=torch.long), torch.empty(d, dtype=torch.uint8)
    work = torch.empty(3, k + c, dtype=torch.long)
    val, op = torch.empty(k + c), torch.empty(k + c, dtype=torch.int32)
    lib.wb_merge_top(k, c, d, tv.data_ptr(), tw.data_ptr(), tp.data_ptr(), values.data_ptr(), windows.data_ptr(),
                     pos.data_ptr(), kth.data_ptr(), flag.data_ptr(), work[0].data_ptr(), work[1].data_ptr(),
                     val.data_ptr(), work[2].data_ptr(), op.data_ptr())
    return True


def merged(tv: torch.Tensor, tw: torch.Tensor, tp: torch.Tensor, values: torch.Tensor, windows: torch.Tensor,
           pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The top-k ``[k, d]`` (float32 values, int64 windows, int32 positions) after merging the
    ``[c, d]`` candidates, as new tensors; None where the kernel does not apply."""
    ov, ow, op = tv.float().contiguous().clone(), tw.long().contiguous().clone(), tp.int().contiguous().clone()
    return (ov, ow, op) if merge_into(ov, ow, op, values, windows, pos) else None
