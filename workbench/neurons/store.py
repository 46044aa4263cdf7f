"""The scan store: per-unit exemplars and statistics from one pass over a corpus, on disk.

Format (``format: "interp-workbench/scan"``, version 2; version 1 stores still open), one folder::

    meta.json                 what was scanned and how far (the commit point of every checkpoint)
    state-<step>.safetensors  the running reductions, per key ``<site>/<field>``:
        top.values  [k, d] f32   top-k window maxima per unit, best first (ties: lower window first)
        top.window  [k, d] int   their window ids (-1: empty slot)
        top.pos     [k, d] int   position of the maximum inside the window
        n           [1]    i64   tokens counted (every unit of a site sees the same tokens)
        mean, m2, m3, m4 [d] f64 mean and central moment sums (merged with Pébay's formulas)
        hist        [d, nb'] int counts in the fixed signed-log bins of ``meta.json["hist"]``
                                 (`SignedLogBins`; the fraction active, x > 0, is read from it),
                                 bins ``hist.lo`` ([1] i64) to ``hist.lo + nb'`` only: every bin
                                 outside is empty for every unit of the key
        sample.values/sample.pos [R, d]  each unit's maximum in R sampled windows
      and, shared by all sites, ``sample.window [R] int`` / ``sample.priority [R] f64``: the R
      windows with the smallest hash priority (a deterministic sample, so shards merge exactly).

    Integer tensors ("int") are written in the smallest of uint8, int16, int32 and int64 that
    holds their values (exact); in memory they are int64 (window ids), int32 (positions) and
    int32 counts while ``n`` fits int32 (int64 after), whatever the file holds. Version 1 wrote them all as int64/int32, with every bin.
    windows/<chunk>.safetensors   token ids of scanned windows: ``ids [n, W] i32`` (-1 = padding),
                                  ``window [n] i64`` (global id), ``doc [n] i64``, ``start [n] i64``

Statistics exclude each window's first position when ``skip_first`` (an attention sink with
no context) and padding. Nothing is pickled; a corrupt or truncated store raises `StoreError`.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..core.errors import WorkbenchError
from ..core.fileio import atomic_json, atomic_tensors
from ..core.sites import Site
from ..core.viewers import Showable
from . import top_merge

FORMAT = "interp-workbench/scan"
VERSION = 2
#: Store versions this workbench opens (older ones are read into the current in-memory layout).
READABLE_VERSIONS = (1, 2)


class StoreError(WorkbenchError):
    """A scan store that cannot be read or does not fit the request (with the reason)."""


class Scratch:
    """Work tensors lent to the reductions of one batch and reused from site to site.

    On a CPU a fresh multi-megabyte tensor costs more in page faults than the pass that fills
    it, so the scan's reductions write their temporaries into these. Never pickled with its
    buffers (a remote trace gets an empty one)."""

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, tuple(shape), dtype, torch.device(device))
        buf = self._bufs.get(key)
        if buf is None:
            buf = self._bufs[key] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    def __getstate__(self) -> dict:
        return {"_bufs": {}}


class SignedLogBins:
    """Fixed histogram bins shared by every unit and model, from the float32 bit pattern.

    Bin edges are ``±2^e · (1 + i/per_octave)`` for ``lo_exp <= e < hi_exp`` (quarter-octave
    steps by default: 2^-10 ≈ 0.001 to 2^10 = 1024). In order, the bins are: ``[-inf, -2^hi]``,
    the negative bins ``(-e_{j+1}, -e_j]``, ``(-2^lo, 0)``, exact zero ``[0, 0]``,
    ``(0, 2^lo)``, the positive bins ``[e_j, e_{j+1})``, ``[2^hi, inf]``. The bin of a
    value is its float32 exponent and top mantissa bits, found with integer operations only
    (a histogram of every unit costs a few passes over the batch).
    """

    def __init__(self, lo_exp: int = -10, hi_exp: int = 10, per_octave: int = 4):
        if per_octave & (per_octave - 1) or not 1 <= per_octave <= 1 << 23 or lo_exp >= hi_exp:
            raise ValueError("per_octave must be a power of two and lo_exp < hi_exp")
        self.lo_exp, self.hi_exp, self.per_octave = lo_exp, hi_exp, per_octave
        self.shift = 23 - (per_octave.bit_length() - 1)
        self.base = (127 + lo_exp) * per_octave
        self.M = (hi_exp - lo_exp) * per_octave
        self.center = self.M + 2
        self.n_bins = 2 * self.M + 5
        self._luts: dict[torch.device, torch.Tensor] = {}

    def spec(self) -> dict[str, Any]:
        return {"kind": "signed-log-f32", "lo_exp": self.lo_exp, "hi_exp": self.hi_exp, "per_octave": self.per_octave}

    @classmethod
    def from_spec(cls, spec: dict) -> SignedLogBins:
        if not isinstance(spec, dict) or spec.get("kind") != "signed-log-f32":
            raise StoreError(f"unknown histogram bins {spec!r}")
        return cls(int(spec["lo_exp"]), int(spec["hi_exp"]), int(spec["per_octave"]))

    def positive_edges(self) -> np.ndarray:
        """``e_0 = 2^lo … e_M = 2^hi`` (float64, exactly float32 values)."""
        j = np.arange(self.M + 1)
        return 2.0 ** (self.lo_exp + j // self.per_octave) * (1 + (j % self.per_octave) / self.per_octave)

    def edges(self) -> np.ndarray:
        """All ``n_bins + 1`` edges in increasing order (the zero bin is ``[0, 0]``)."""
        pe = self.positive_edges()
        return np.concatenate([[-np.inf], -pe[::-1], [0.0, 0.0], pe, [np.inf]])

    def lut(self, device: torch.device) -> torch.Tensor:
        """The bin of every code ``bits >> shift`` (sign, exponent, top mantissa bits), indexed by the
        code modulo its range: int32 ``[2^(32 - shift)]``. Code 0 holds ``±0`` and the subnormal
        values below ``2^-128``; it maps to the zero bin, and `counts` moves the non-zero ones out."""
        lut = self._luts.get(device)
        if lut is None:
            half = 1 << (31 - self.shift)
            codes = torch.arange(-half, half, dtype=torch.int64)
            mag = codes & (half - 1)
            q = mag.clamp(self.base - 1, self.base + self.M) - (self.base - 2)
            b = torch.where(codes < 0, -q, q) + self.center
            b[mag == 0] = self.center
            lut = torch.cat([b[half:], b[:half]]).to(torch.int32).to(device)  # position = code mod 2*half
            self._luts[device] = lut
        return lut

    def counts(self, flat: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        """Histogram of each column of a float32 ``[n, d]`` tensor -> ``[d, n_bins]`` int64.

        Three passes over the tensor: the code of each value (an integer shift), its bin (a table
        lookup), the bin offset by its column, then one ``bincount``. ``scratch`` lends the two
        int32 work tensors (reused across calls: a fresh large tensor costs its page faults)."""
        flat = flat.float().contiguous()
        n, d = flat.shape
        scratch = scratch or Scratch()
        bits = flat.view(torch.int32)
        code = torch.bitwise_right_shift(bits, self.shift, out=scratch.get("hist.code", (n, d), torch.int32,
                                                                             flat.device))
        code &= (2 << (31 - self.shift)) - 1
        b = scratch.get("hist.bin", (n, d), torch.int32, flat.device)
        torch.index_select(self.lut(flat.device), 0, code.view(-1), out=b.view(-1))
        b += torch.arange(d, dtype=torch.int32, device=flat.device) * self.n_bins
        hist = torch.bincount(b.view(-1), minlength=d * self.n_bins).view(d, self.n_bins)
        if bool(hist[:, self.center].any()):  # zeros, or tiny non-zero values that share their code
            mag = bits & 0x7FFFFFFF
            tiny = (mag > 0) & (mag < (1 << self.shift))
            if bool(tiny.any()):
                rows, cols = tiny.nonzero(as_tuple=True)
                to = torch.where(bits[rows, cols] < 0, self.center - 1, self.center + 1)
                one = torch.ones_like(cols)
                hist.index_put_((cols, torch.full_like(cols, self.center)), -one, accumulate=True)
                hist.index_put_((cols, to), one, accumulate=True)
        return hist


HIST = SignedLogBins()


HIST_INT32_MAX = 2**31 - 1  # counts are held as int32 while a unit's token count is at most this


def hist_dtype(n: int) -> torch.dtype:
    """The in-memory dtype of counts of ``n`` tokens per unit: int32 while they fit, else int64."""
    return torch.int32 if n <= HIST_INT32_MAX else torch.long


def window_priority(windows: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A deterministic pseudo-random priority in [0, 1) per window id (splitmix64)."""
    x = np.asarray(windows, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return torch.from_numpy((x >> np.uint64(11)).astype(np.float64) / float(1 << 53))


# -- the running state of one key and the merge math ------------------------------------
@dataclass
class KeyState:
    """Running reductions for the units of one site (see the module docstring for fields)."""

    top_values: torch.Tensor
    top_window: torch.Tensor
    top_pos: torch.Tensor
    n: int
    mean: torch.Tensor
    m2: torch.Tensor
    m3: torch.Tensor
    m4: torch.Tensor
    hist: torch.Tensor
    sample_values: torch.Tensor
    sample_pos: torch.Tensor

    @classmethod
    def empty(cls, width: int, k: int, n_bins: int, n_sample: int) -> KeyState:
        f64 = dict(dtype=torch.float64)
        return cls(
            torch.full((k, width), -torch.inf), torch.full((k, width), -1, dtype=torch.long),
            torch.zeros((k, width), dtype=torch.int32), 0, torch.zeros(width, **f64), torch.zeros(width, **f64),
            torch.zeros(width, **f64), torch.zeros(width, **f64), torch.zeros((width, n_bins), dtype=torch.int32),
            torch.full((n_sample, width), -torch.inf), torch.zeros((n_sample, width), dtype=torch.int32))

    @property
    def width(self) -> int:
        return self.mean.shape[0]

    def threshold(self) -> torch.Tensor:
        """Each unit's k-th best value so far, NaN while its top-k has an empty slot (a later window
        enters the top-k only if its value is above this: ties keep the earlier window)."""
        return torch.where(self.top_window[-1] >= 0, self.top_values[-1], torch.nan)

    def merge_top(self, values: torch.Tensor, windows: torch.Tensor, pos: torch.Tensor) -> None:
        """Merge candidates [c, d] into the top-k: value descending, then window ascending.

        On a CPU the C kernel `top_merge.merge_into` inserts each candidate that beats a unit's
        k-th entry, in place. Otherwise only the units where some candidate reaches the current
        k-th value (or a slot is empty) are sorted; the others cannot change (late in a scan,
        most of them). Both give the same entries."""
        values, windows, pos = values.float(), windows.long(), pos.int()
        if top_merge.merge_into(self.top_values, self.top_window, self.top_pos, values, windows, pos):
            return  # the same entries from the C kernel, one insertion per entering candidate
        cols = (~(values < self.top_values[-1]) | (self.top_window[-1] < 0)).any(0)  # ties and NaN: candidates
        if not bool(cols.any()):
            return
        if bool(cols.all()):
            self.top_values, self.top_window, self.top_pos = self._merged(self.top_values, self.top_window,
                                                                          self.top_pos, values, windows, pos)
            return
        idx = cols.nonzero().flatten()
        v, w, p = self._merged(self.top_values[:, idx], self.top_window[:, idx], self.top_pos[:, idx],
                               values[:, idx], windows[:, idx], pos[:, idx])
        self.top_values, self.top_window, self.top_pos = (self.top_values.clone(), self.top_window.clone(),
                                                          self.top_pos.clone())
        self.top_values[:, idx], self.top_window[:, idx], self.top_pos[:, idx] = v, w, p

    @staticmethod
    def _merged(tv: torch.Tensor, tw: torch.Tensor, tp: torch.Tensor, values: torch.Tensor, windows: torch.Tensor,
                pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = tv.shape[0]
        v = torch.cat([tv, values]) + 0.0  # -0.0 -> +0.0: equal values tie
        v = torch.where(v.isnan(), torch.nan, v)  # one NaN, ranked first as by a float sort
        w = torch.cat([tw, windows])
        p = torch.cat([tp, pos])
        # One sort key: the value's order-preserving integer above, then the window (earlier first;
        # an empty slot, -1, after every real window of the same value). Keys are distinct: topk.
        bits = v.view(torch.int32)
        key = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long() << 32
        key |= torch.where(w < 0, 0, 0xFFFFFFFF - w)
        o = key.topk(k, dim=0).indices
        return v.gather(0, o), w.gather(0, o), p.gather(0, o)

    def merge_moments(self, n_b: int, mean: torch.Tensor, m2: torch.Tensor, m3: torch.Tensor,
                      m4: torch.Tensor) -> None:
        """Combine central moments of another set of tokens (Pébay 2008; exact in exact arithmetic)."""
        if n_b == 0:
            return
        mean, m2, m3, m4 = (t.double() for t in (mean, m2, m3, m4))
        na, nb = float(self.n), float(n_b)
        if na == 0:
            self.n, self.mean, self.m2, self.m3, self.m4 = n_b, mean, m2, m3, m4
            return
        n = na + nb
        d = mean - self.mean
        self.m4 = (self.m4 + m4 + d**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
                   + 6 * d**2 * (na * na * m2 + nb * nb * self.m2) / n**2 + 4 * d * (na * m3 - nb * self.m3) / n)
        self.m3 = self.m3 + m3 + d**3 * na * nb * (na - nb) / n**2 + 3 * d * (na * m2 - nb * self.m2) / n
        self.m2 = self.m2 + m2 + d**2 * na * nb / n
        self.mean = self.mean + d * nb / n
        self.n = int(na + nb)

    def merge_power_sums(self, n_b: int, shift: torch.Tensor | None, s1: torch.Tensor, s2: torch.Tensor,
                         s3: torch.Tensor, s4: torch.Tensor) -> None:
        """Fold in a batch given as power sums of ``x - shift`` (float32 sums, float64 here)."""
        if n_b == 0:
            return
        s1, s2, s3, s4 = (t.double() for t in (s1, s2, s3, s4))
        dl = s1 / n_b
        mean = dl + (shift.double() if shift is not None else 0.0)
        m2 = s2 - n_b * dl**2
        m3 = s3 - 3 * dl * s2 + 2 * n_b * dl**3
        m4 = s4 - 4 * dl * s3 + 6 * dl**2 * s2 - 3 * n_b * dl**4
        self.merge_moments(n_b, mean, m2.clamp_min(0), m3, m4.clamp_min(0))

    def merge_hist(self, hist: torch.Tensor) -> None:
        """Add another set of tokens' counts, in place. Call it after the moments of the same
        tokens (`merge_moments`, `merge_power_sums`): the counts stay int32, half the memory
        traffic of a merge, while ``n`` (an upper bound on every count) fits, and become int64
        before it does not."""
        if self.hist.dtype != torch.long and self.n > HIST_INT32_MAX:
            self.hist = self.hist.long()
        self.hist += hist.to(self.hist.dtype)  # exact: every count is at most n

    def merge(self, other: KeyState) -> None:
        """Fold in the state of a disjoint set of windows (sample merged by the caller)."""
        self.merge_top(other.top_values, other.top_window, other.top_pos)
        self.merge_moments(other.n, other.mean, other.m2, other.m3, other.m4)
        self.merge_hist(other.hist)

    def tensors(self, key: str) -> dict[str, torch.Tensor]:
        """The state as the store writes it: integers in their smallest exact dtype, the histogram
        cut to the bins some unit uses (``hist.lo`` is the first kept bin)."""
        used = (self.hist != 0).any(0).nonzero().flatten()
        lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
        return {f"{key}/top.values": self.top_values, f"{key}/top.window": compact_int(self.top_window),
                f"{key}/top.pos": compact_int(self.top_pos), f"{key}/n": torch.tensor([self.n]), f"{key}/mean": self.mean,
                f"{key}/m2": self.m2, f"{key}/m3": self.m3, f"{key}/m4": self.m4,
                f"{key}/hist": compact_int(self.hist[:, lo:hi].contiguous()), f"{key}/hist.lo": torch.tensor([lo]),
                f"{key}/sample.values": self.sample_values, f"{key}/sample.pos": compact_int(self.sample_pos)}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], key: str, width: int, k: int, n_bins: int,
                     n_sample: int) -> KeyState:
        """Read a key's state from a state file of any readable version (into the in-memory dtypes)."""
        lo, nb = 0, n_bins  # version 1: every bin
        lo_t, hist_t = t.get(f"{key}/hist.lo"), t.get(f"{key}/hist")
        if lo_t is not None and hist_t is not None:  # version 2: the used bins from hist.lo on
            if lo_t.shape != (1,) or hist_t.dim() != 2:
                raise StoreError(f"{key}/hist.lo or {key}/hist has the wrong shape: the store is corrupt")
            lo, nb = int(lo_t[0]), hist_t.shape[1]
            if not (0 <= lo and lo + nb <= n_bins):
                raise StoreError(f"{key}/hist covers bins {lo}..{lo + nb}, outside the {n_bins} bins of meta.json: "
                                 "the store is corrupt")
        shapes = {"top.values": (k, width), "top.window": (k, width), "top.pos": (k, width), "n": (1,),
                  "mean": (width,), "m2": (width,), "m3": (width,), "m4": (width,), "hist": (width, nb),
                  "sample.values": (n_sample, width), "sample.pos": (n_sample, width)}
        got = {}
        for f, shape in shapes.items():
            name = f"{key}/{f}"
            if name not in t:
                raise StoreError(f"the store's state has no tensor {name!r}: the file is incomplete or not a scan state")
            if tuple(t[name].shape) != shape:
                raise StoreError(f"tensor {name!r} has shape {tuple(t[name].shape)}, expected {shape} "
                                 "(from meta.json): the store is corrupt")
            got[f] = t[name]
        n = int(got["n"][0])
        hist = torch.zeros((width, n_bins), dtype=hist_dtype(n))
        hist[:, lo : lo + nb] = got["hist"]
        return cls(got["top.values"].float(), got["top.window"].long(), got["top.pos"].int(), n,
                   got["mean"].double(), got["m2"].double(), got["m3"].double(), got["m4"].double(), hist,
                   got["sample.values"].float(), got["sample.pos"].int())


def compact_int(t: torch.Tensor) -> torch.Tensor:
    """An integer tensor in the smallest of uint8, int16, int32, int64 that holds its values exactly."""
    if t.numel() == 0:
        return t
    lo, hi = int(t.min()), int(t.max())
    for dt in (torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return t.to(dt) if t.dtype != dt else t
    return t.long()


@dataclass
class Sample:
    """The shared window sample: the R windows with the smallest priority seen so far."""

    windows: torch.Tensor  # [R] i64, -1 for empty
    priority: torch.Tensor  # [R] f64, inf for empty

    @classmethod
    def empty(cls, n: int) -> Sample:
        return cls(torch.full((n,), -1, dtype=torch.long), torch.full((n,), torch.inf, dtype=torch.float64))

    @property
    def threshold(self) -> float:
        return float(self.priority.max()) if len(self.priority) else -1.0

    def merge(self, windows: torch.Tensor, priority: torch.Tensor, states: Sequence[KeyState],
              values: Sequence[torch.Tensor], pos: Sequence[torch.Tensor]) -> None:
        """Offer candidate windows (and each state's values for them); keep the R smallest priorities."""
        R = len(self.windows)
        if R == 0 or len(windows) == 0:
            return
        w = torch.cat([self.windows, windows.long()])
        pr = torch.cat([self.priority, priority.double()])
        order = torch.argsort(pr, stable=True)[:R]
        if torch.equal(order, torch.arange(R)):  # no candidate enters: the sample and its values stay as they are
            return
        self.windows, self.priority = w[order], pr[order]
        for st, v, p in zip(states, values, pos, strict=True):
            st.sample_values = torch.cat([st.sample_values, v.float()])[order]
            st.sample_pos = torch.cat([st.sample_pos, p.int()])[order]


def write_store(path: Path, meta: dict, states: dict[str, KeyState], sample: Sample, step: int) -> None:
    """Write the state file, then meta.json (the commit point), then drop older state files."""
    tensors: dict[str, torch.Tensor] = {"sample.window": compact_int(sample.windows), "sample.priority": sample.priority}
    for key, st in states.items():
        tensors.update(st.tensors(key))
    name = f"state-{step:08d}.safetensors"
    atomic_tensors(path / name, tensors)
    meta["version"] = VERSION  # the state file is in this version's layout (a resumed old store is upgraded)
    meta["state"] = name
    meta["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_json(path / "meta.json", meta)
    for old in path.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


# -- reading helpers ---------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise StoreError(f"{path.parent} is not a scan store: {path.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is corrupt (not valid JSON: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StoreError(f"{path} is not a scan store's metadata (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") not in READABLE_VERSIONS:
        raise StoreError(f"{path}: store version {meta.get('version')!r} is not supported (this workbench reads "
                         f"versions {', '.join(map(str, READABLE_VERSIONS))}; a newer workbench wrote it?)")
    required = ("sites", "k", "window", "n_sample", "hist", "state", "chunks", "n_tokens", "n_windows", "cursor")
    missing = [r for r in required if r not in meta]
    if missing:
        raise StoreError(f"{path} is missing {', '.join(missing)}: the store is corrupt")
    return meta


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise StoreError(f"{path} is missing: the store is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise StoreError(f"{path} cannot be read ({e}): the file is truncated or corrupt") from None


# -- results -------------------------------------------------------------------------------
@dataclass
class Exemplar:
    """One window of text and a unit's activation on each of its tokens."""

    window: int
    position: int
    value: float
    tokens: list[str]
    acts: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "position": self.position, "value": self.value, "tokens": self.tokens,
                "acts": [float(a) for a in self.acts]}

    def _repr_html_(self) -> str:
        top = max(float(np.nanmax(np.abs(self.acts))) if len(self.acts) else 0.0, 1e-9)
        spans = "".join(
            f"<span title='{a:.3f}' style='background:rgba(255,120,0,{max(0.0, a) / top:.2f})'>{html.escape(t)}</span>"
            for t, a in zip(self.tokens, self.acts.tolist(), strict=True))
        return f"<div style='font-family:monospace;white-space:pre-wrap'><b>{self.value:.3f}</b> {spans}</div>"


@dataclass
class QuantileGroup:
    """Exemplars whose window maximum lies in one quantile range of a unit's sampled windows."""

    label: str
    lo: float
    hi: float
    exemplars: list[Exemplar]


class ScanStore(Showable):
    """A scan on disk: top-k exemplars, moments, histograms and a window sample per unit.

    ``ScanStore.open(path, model)``; ``store.stats()`` is a table of every unit;
    ``store.exemplars(site, unit)`` reruns the top windows through the model to tint each
    token; ``store.show(layer=, unit=)`` opens the neuron dashboard.
    """

    def __init__(self, path: Path, meta: dict, states: dict[str, KeyState], sample: Sample, model: Any = None):
        self.path = Path(path)
        self.meta = meta
        self.states = states
        self.sample = sample
        self.model = model
        self.bins = SignedLogBins.from_spec(meta["hist"])
        self._windows: dict[int, tuple[str, int]] | None = None
        self._chunk_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._acts_cache: dict[tuple, np.ndarray] = {}
        self.transforms: dict[str, Any] = {}  # feature key -> encoder, to rerun exemplars of scanned features

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, model: Any = None) -> ScanStore:
        """Open a store folder (model: to rerun exemplar windows; optional)."""
        path = Path(path)
        meta = _read_json(path / "meta.json")
        t = _load_tensors(path / meta["state"])
        k, R, nb = int(meta["k"]), int(meta["n_sample"]), SignedLogBins.from_spec(meta["hist"]).n_bins
        states = {key: KeyState.from_tensors(t, key, int(info["width"]), k, nb, R)
                  for key, info in meta["sites"].items() if info.get("width") is not None}
        for name in ("sample.window", "sample.priority"):
            if name not in t or tuple(t[name].shape) != (R,):
                raise StoreError(f"{path / meta['state']}: tensor {name!r} is missing or has the wrong shape")
        store = cls(path, meta, states, Sample(t["sample.window"].long(), t["sample.priority"].double()), model)
        if model is not None:
            store.check_model(model)
        return store

    def check_model(self, model: Any) -> None:
        """Raise `StoreError` when a model does not fit this store (widths, vocabulary)."""
        want = self.meta.get("model", {})
        a = model.arch
        for key, info in self.meta["sites"].items():
            site = Site.parse(info.get("site", key))
            if site.layer is not None and site.layer >= a.n_layers:
                raise StoreError(f"the store has {key} but the model has {a.n_layers} layers")
            if info.get("transform") is None and a.size(site) != int(info["width"]):
                raise StoreError(f"the store's {key} has {info['width']} units but the model's has {a.size(site)}: "
                                 f"the store was made with another model ({want.get('name', '?')})")
        if want.get("vocab") not in (None, a.vocab):
            raise StoreError(f"the store's tokens come from a {want['vocab']}-token vocabulary, the model has {a.vocab}")

    # -- facts -----------------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return list(self.meta["sites"])

    def width(self, site: str) -> int:
        return int(self.meta["sites"][self.site_key(site)]["width"])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def n_windows(self) -> int:
        return int(self.meta["n_windows"])

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    def site_key(self, site: str | int) -> str:
        """The store's key of a site: ``3`` -> ``"neurons.3"``, ``"blocks.3.mlp.hook_post"`` -> ``"neurons.3"``.

        Raises `KeyError` naming the store's sites when it has no such site."""
        if isinstance(site, int):  # a layer: the MLP neurons there
            site = f"neurons.{site}"
        if site in self.meta["sites"]:
            return site
        try:
            key = str(Site.parse(site))
        except (ValueError, TypeError):
            key = site
        if key not in self.meta["sites"]:
            raise KeyError(f"the store has no {site!r}; it has {', '.join(self.sites[:6])}{'…' if len(self.sites) > 6 else ''}")
        return key

    def unit_index(self, key: str, unit: int) -> int:
        """``unit`` as an int after checking it is in range for ``key`` (else `IndexError` naming the range)."""
        w = self.width(key)
        if not isinstance(unit, int | np.integer) or not 0 <= unit < w:
            raise IndexError(f"unit {unit!r} is out of range for {key} (0..{w - 1})")
        return int(unit)

    # -- statistics --------------------------------------------------------------------------
    def _moments(self, key: str) -> dict[str, torch.Tensor]:
        st = self.states[key]
        n = max(st.n, 1)
        var = st.m2 / n
        std = var.sqrt()
        with np.errstate(divide="ignore", invalid="ignore"):
            skew = torch.where(st.m2 > 0, (n**0.5) * st.m3 / st.m2.clamp_min(1e-300) ** 1.5, torch.nan)
            kurt = torch.where(st.m2 > 0, n * st.m4 / st.m2.clamp_min(1e-300) ** 2 - 3.0, torch.nan)
        return {"count": torch.full_like(st.mean, st.n), "mean": st.mean, "std": std, "skew": skew,
                "kurtosis": kurt, "frac_active": st.hist[:, self.bins.center + 1 :].sum(1).double() / n,
                "max": st.top_values[0].double()}

    def stats(self, site: str | int | None = None):
        """Per-unit statistics (excess kurtosis) as a pandas DataFrame."""
        import pandas as pd

        keys = [self.site_key(site)] if site is not None else self.sites
        frames = []
        for key in keys:
            m = self._moments(key)
            info = self.meta["sites"][key]
            try:
                layer = Site.parse(info.get("site", key)).layer
            except (ValueError, TypeError):
                layer = None
            df = pd.DataFrame({name: v.numpy() for name, v in m.items()})
            df.insert(0, "unit", np.arange(self.width(key)))
            df.insert(0, "layer", layer)
            df.insert(0, "site", key)
            df["count"] = df["count"].astype(np.int64)
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    def unit_stats(self, site: str | int, unit: int) -> dict[str, float]:
        key = self.site_key(site)
        u = self.unit_index(key, unit)
        return {name: float(v[u]) for name, v in self._moments(key).items()}

    def histogram(self, site: str | int, unit: int) -> tuple[np.ndarray, np.ndarray]:
        key = self.site_key(site)
        return self.bins.edges(), self.states[key].hist[self.unit_index(key, unit)].numpy().copy()

    def top(self, site: str | int, unit: int) -> list[tuple[float, int, int]]:
        """The top windows of a unit: (value, window id, position), best first."""
        key = self.site_key(site)
        u = self.unit_index(key, unit)
        st = self.states[key]
        return [(float(v), int(w), int(p)) for v, w, p in
                zip(st.top_values[:, u], st.top_window[:, u], st.top_pos[:, u], strict=True) if w >= 0]

    # -- windows and exemplars -----------------------------------------------------------------
    def window_index(self) -> dict[int, tuple[str, int]]:
        """Every scanned window id -> ``(chunk file, row)`` (read once, then cached)."""
        if self._windows is None:
            idx: dict[int, tuple[str, int]] = {}
            for chunk in self.meta["chunks"]:
                t = self._chunk(chunk)
                for row, w in enumerate(t["window"].tolist()):
                    idx[int(w)] = (chunk, row)
            self._windows = idx
        return self._windows

    def _chunk(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._chunk_cache:
            t = _load_tensors(self.path / "windows" / name)
            for f in ("ids", "window", "doc", "start"):
                if f not in t:
                    raise StoreError(f"{self.path / 'windows' / name} has no tensor {f!r}: the store is corrupt")
            if len(self._chunk_cache) > 64:
                self._chunk_cache.clear()
            self._chunk_cache[name] = t
        return self._chunk_cache[name]

    def window_tokens(self, window: int) -> list[int]:
        """Token ids of a scanned window."""
        try:
            chunk, row = self.window_index()[int(window)]
        except KeyError:
            raise KeyError(f"window {window} is not in this store") from None
        ids = self._chunk(chunk)["ids"][row]
        return [int(i) for i in ids[ids >= 0]]

    def window_info(self, window: int) -> dict[str, int]:
        chunk, row = self.window_index()[int(window)]
        t = self._chunk(chunk)
        return {"window": int(window), "doc": int(t["doc"][row]), "start": int(t["start"][row])}

    def require_model(self) -> Any:
        """The store's model, or a `RuntimeError` saying how to attach one."""
        if self.model is None:
            raise RuntimeError("exemplar activations rerun the windows through the model: "
                               "ScanStore.open(path, model=model) or store.model = model")
        return self.model

    def unit_activations(self, key: str, unit: int, windows: Sequence[int]) -> list[np.ndarray]:
        """A unit's activation on every token of some windows (rerun through the model, cached)."""
        todo = [w for w in dict.fromkeys(windows) if (key, unit, w) not in self._acts_cache]
        if todo:
            model = self.require_model()
            site = self.meta["sites"][key].get("site", key)
            transform = self.site_transform(key)
            rows = [self.window_tokens(w) for w in todo]

            def pick(x: torch.Tensor, transform=transform, unit=unit) -> torch.Tensor:
                if transform is not None:
                    x = transform(x)
                return x[..., unit].float()

            for i in range(0, len(rows), 16):
                batch = model.batch_from_ids(rows[i : i + 16])
                res = model.run(batch, self.meta.get("interventions") or None, capture={site: pick}, top_k=0,
                                logits=None)
                acts = res.activations[site]
                for j, w in enumerate(todo[i : i + 16]):
                    self._acts_cache[(key, unit, w)] = acts[j, : len(rows[i + j])].numpy()
        return [self._acts_cache[(key, unit, w)] for w in windows]

    def site_transform(self, key: str) -> Any:
        """The encoder ``key`` was scanned through (None for a plain site); `RuntimeError` when it is not set."""
        if self.meta["sites"][key].get("transform") is None:
            return None
        fn = self.transforms.get(key)
        if fn is None:
            raise RuntimeError(f"{key} was scanned through a transform ({self.meta['sites'][key]['transform']}): "
                               f"set store.transforms[{key!r}] to it to rerun exemplars")
        return fn

    def window_exemplars(self, key: str, unit: int, picks: Sequence[tuple[float, int, int]]) -> list[Exemplar]:
        """Exemplars of a unit for chosen ``(value, window, position)`` picks (needs the model)."""
        acts = self.unit_activations(key, unit, [w for _, w, _ in picks])
        tok = self.require_model().tokenizer
        out = []
        for (v, w, p), a in zip(picks, acts, strict=True):
            out.append(Exemplar(w, p, v, [tok.decode([i]) for i in self.window_tokens(w)], a))
        return out

    def exemplars(self, site: str | int, unit: int, n: int = 10) -> list[Exemplar]:
        """The top-n windows of a unit with its activation on every token (needs the model)."""
        key = self.site_key(site)
        u = self.unit_index(key, unit)
        return self.window_exemplars(key, u, self.top(key, u)[:n])

    def quantile_exemplars(self, site: str | int, unit: int, groups: int = 4, per_group: int = 2) -> list[QuantileGroup]:
        """Exemplars across the quantiles of a unit's window maxima in the random window sample.

        The sample's maxima are sorted and cut into ``groups`` equal-count ranges (highest
        first); ``per_group`` windows are taken evenly from each range.
        """
        key = self.site_key(site)
        u = self.unit_index(key, unit)
        st = self.states[key]
        ok = self.sample.windows >= 0
        vals, wins, pos = st.sample_values[ok, u], self.sample.windows[ok], st.sample_pos[ok, u]
        if len(vals) == 0:
            return []
        order = torch.argsort(vals, descending=True, stable=True)
        vals, wins, pos = vals[order], wins[order], pos[order]
        out = []
        n = len(vals)
        for g in range(groups):
            a, b = (g * n) // groups, ((g + 1) * n) // groups
            if b <= a:
                continue
            idx = sorted({a + (i * (b - a)) // per_group for i in range(per_group)})
            picks = [(float(vals[i]), int(wins[i]), int(pos[i])) for i in idx]
            hi_q, lo_q = 1 - g / groups, 1 - (g + 1) / groups
            out.append(QuantileGroup(f"q{lo_q:.2f}–{hi_q:.2f}", float(vals[b - 1]), float(vals[a]),
                                     self.window_exemplars(key, u, picks)))
        return out

    # -- merging --------------------------------------------------------------------------------
    @classmethod
    def merge(cls, stores: Sequence[ScanStore | str | Path], path: str | Path, overwrite: bool = False) -> ScanStore:
        """Merge stores of disjoint shards of one corpus into a new store at ``path``."""
        stores = [s if isinstance(s, ScanStore) else cls.open(s) for s in stores]
        if len(stores) < 2:
            raise ValueError("merge needs at least two stores")
        first = stores[0]
        for s in stores[1:]:
            for f in ("k", "window", "n_sample", "hist", "skip_first", "sites", "model", "interventions"):
                if s.meta.get(f) != first.meta.get(f):
                    raise StoreError(f"cannot merge {s.path} into {first.path}: they differ in {f!r}")
        seen: dict[int, Path] = {}
        for s in stores:
            for w in s.window_index():
                if w in seen:
                    raise StoreError(f"window {w} is in both {seen[w]} and {s.path}: merge needs disjoint shards")
                seen[w] = s.path
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
            shutil.rmtree(path)
        (path / "windows").mkdir(parents=True)
        states = {key: KeyState(**{f: (v.clone() if isinstance(v, torch.Tensor) else v) for f, v in st.__dict__.items()})
                  for key, st in first.states.items()}
        sample = Sample(first.sample.windows.clone(), first.sample.priority.clone())
        chunks: list[str] = []
        for i, s in enumerate(stores):
            if i > 0:
                for key, st in states.items():
                    st.merge(s.states[key])
                ok = s.sample.windows >= 0
                keys = list(states)
                sample.merge(s.sample.windows[ok], s.sample.priority[ok], [states[k] for k in keys],
                             [s.states[k].sample_values[ok] for k in keys], [s.states[k].sample_pos[ok] for k in keys])
            for chunk in s.meta["chunks"]:
                name = f"s{i}-{chunk}"
                shutil.copyfile(s.path / "windows" / chunk, path / "windows" / name)
                chunks.append(name)
        meta = dict(first.meta)
        meta.update(chunks=chunks, n_tokens=sum(s.n_tokens for s in stores), n_windows=sum(s.n_windows for s in stores),
                    complete=all(s.complete for s in stores), shard=None, merged_from=[str(s.path) for s in stores],
                    cursor=None, fingerprint=None)
        write_store(path, meta, states, sample, step=0)
        return cls.open(path, first.model)

    # -- display --------------------------------------------------------------------------------
    def plot(self, site: str | int, unit: int, ax: Any = None):
        """The unit's activation histogram (signed-log bins) with its top activation marked."""
        import matplotlib.pyplot as plt

        edges, counts = self.histogram(site, unit)
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 2.5))
        nz = np.nonzero(counts)[0]
        lo, hi = (nz[0], nz[-1] + 1) if len(nz) else (0, len(counts))
        labels = [f"{edges[i]:.2g}" for i in range(lo, hi)]
        ax.bar(range(hi - lo), counts[lo:hi], width=1.0, color="#e67e22")
        ax.set_yscale("log")
        step = max(1, (hi - lo) // 8)
        ax.set_xticks(range(0, hi - lo, step), labels[::step], rotation=45)
        ax.set_xlabel("activation (bin lower edge, signed log bins)")
        ax.set_ylabel("tokens")
        ax.set_title(f"{self.site_key(site)} unit {unit}")
        return ax.figure

    def __repr__(self) -> str:
        state = "complete" if self.complete else "partial"
        return (f"ScanStore({str(self.path)!r}, {len(self.sites)} sites, {self.n_windows} windows, "
                f"{self.n_tokens} tokens, k={self.k}, {state})")

    def _repr_html_(self) -> str:
        m = self.meta
        return (f"<div><b>ScanStore</b> {html.escape(str(self.path))}: {len(self.sites)} sites "
                f"({html.escape(', '.join(self.sites[:3]))}{'…' if len(self.sites) > 3 else ''}), "
                f"{self.n_windows} windows of ≤{m['window']} tokens, {self.n_tokens} tokens counted, top-{self.k}, "
                f"{'complete' if self.complete else 'partial (resumable)'}; corpus: {html.escape(str(m.get('corpus', '')))}"
                "</div>")
