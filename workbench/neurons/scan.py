"""One streaming pass over a corpus: top-k exemplars and running statistics for every unit.

    store = wb.scan(model, path="scans/smol")          # every MLP neuron of every layer
    store.stats()                                        # mean, std, skew, kurtosis, ... per neuron
    store.exemplars(12, 345)                             # top windows of neuron 345 in layer 12

The corpus is cut into windows of ``window`` tokens (per text, never across texts). Each
batch of windows runs once through the model (`streaming.run_to_last_site`: the engine's trace
program, stopped after the last scanned site, so no unembedding runs), whose capture reducers
(`ScanReducer`, inside the nnsight trace, so this also works with ``remote=...``) return per
window the maximum of each unit (and its position where it can enter the top-k), plus the
batch's power sums and histogram. The client merges those into the store's O(units × k)
state, and checkpoints it: stop a scan at any time (Ctrl-C, ``cancel``) and the same call
resumes it. Shards of a corpus
(``shard=(i, n)``) scan on different machines and `ScanStore.merge` combines them.

From a terminal (progress bar with tokens/s and time left; Ctrl-C checkpoints)::

    python -m workbench scan --out scans/smol [--model PATH] [--corpus FILES] [--shard 0/4]
    python -m workbench merge scans/all scans/shard0 scans/shard1
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..core.corpus import Fingerprint, corpus_name, iter_texts
from ..core.errors import Cancelled
from ..core.fileio import atomic_tensors
from ..core.sites import SITES, TOKEN_SITES, Site
from .site_stats import SiteStats, site_stats
from .store import (
    FORMAT,
    HIST,
    VERSION,
    KeyState,
    Sample,
    ScanStore,
    Scratch,
    StoreError,
    window_priority,
    write_store,
)
from .streaming import run_to_last_site

__all__ = ["scan", "ScanCancelled", "SCAN_SITES", "ScanReducer", "Window", "iter_windows"]

#: The sites a scan reads: the per-token ``[batch, seq, width]`` sites of the site table.
SCAN_SITES = TOKEN_SITES


class ScanCancelled(Cancelled):
    """A scan stopped by its ``cancel`` event after a checkpoint; ``partial`` is the partial `ScanStore`.

    Calling `scan` again with the same arguments resumes it."""


@dataclass
class Window:
    """A slice of one text's tokens: global id, text index, first token's offset, token ids."""

    id: int
    doc: int
    start: int
    ids: list[int]


def _bos_id(tokenizer: Any) -> int | None:
    """The BOS id if the tokenizer puts one in front of every text (windows then start with it)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def iter_windows(tokenizer: Any, corpus: Any, window: int, min_tokens: int = 2,
                 text_batch: int = 128) -> Iterator[Window]:
    """Cut every text of a corpus into windows of at most ``window`` tokens, in order."""
    bos = _bos_id(tokenizer)
    body = window - (bos is not None)
    wid = 0
    texts = iter_texts(corpus)
    doc, size = 0, 1
    while True:  # tokenize in growing chunks: quick to start, batched later
        chunk = [t for _, t in zip(range(size), texts, strict=False)]
        size = min(2 * size, text_batch)
        if not chunk:
            return
        enc = tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in enc:
            for start in range(0, len(ids), body):
                piece = ([bos] if bos is not None else []) + list(ids[start : start + body])
                if len(piece) >= min_tokens:
                    yield Window(wid, doc, start, piece)
                    wid += 1
            doc += 1


def _expand_sites(model: Any, sites: str | Sequence[str]) -> list[str]:
    if isinstance(sites, str):
        sites = [sites]
    out: list[str] = []
    for s in sites:
        if s in SCAN_SITES and SITES[s].layered:  # a family: every layer
            out += [f"{s}.{L}" for L in range(model.arch.n_layers)]
            continue
        site = Site.parse(s)
        if site.name not in SCAN_SITES:
            raise ValueError(f"a scan reads [batch, seq, width] sites ({', '.join(sorted(SCAN_SITES))}), not {site.name!r}")
        model.arch.check_layer(site.layer)
        out.append(str(site))
    if not out and sites:
        raise ValueError("no sites to scan")
    return list(dict.fromkeys(out))


class ScanReducer:
    """Runs inside the trace: a batch's activations at one site -> what the store merges.

    ``mask`` ``[b, s]`` marks the counted tokens (not padding, not the first ``first``
    positions); ``shift`` is the running mean the power sums are taken around (so float32 sums
    stay accurate); ``threshold`` the k-th best value of each unit so far (NaN while a slot is
    empty): only windows above it can enter the top-k, so only theirs need a position.
    On a CPU the maxima, every window's max positions, the power sums and the histogram come
    from one pass of the C kernel `site_stats` (the same values; float64 power sums). Where it
    does not apply (no compiler, another device, ``WORKBENCH_NATIVE=0``) each part is a torch
    method (`maxima`, `positions`, `moments`, `histogram`), whose cost can be measured alone
    (benchmarks/bench_scan.py ``--profile``); each reads the batch in a few whole-tensor passes
    and none copies the counted tokens out.
    """

    def __init__(self, mask: torch.Tensor, pad_rows: torch.Tensor, shift: torch.Tensor | None, k: int,
                 sample_rows: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 first: int = 1, threshold: torch.Tensor | None = None, scratch: Scratch | None = None):
        self.mask, self.pad_rows, self.shift, self.k = mask, pad_rows, shift, k
        self.scratch = scratch if scratch is not None else Scratch()  # shared by the batch's reducers
        self.sample_rows, self.transform, self.first, self.threshold = sample_rows, transform, first, threshold
        self._dense: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, every window's max positions)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The activations as a contiguous float32 ``[b, s, d]`` tensor (after the transform)."""
        if self.transform is not None:
            x = self.transform(x)
        return x.float().contiguous()

    def maxima(self, x: torch.Tensor) -> torch.Tensor:
        """Each window's maximum of each unit over its counted tokens, ``[b, d]``."""
        wmax = x[:, self.first :].amax(dim=1)
        if len(self.pad_rows):  # windows shorter than the batch: mask their padding
            rows = self.pad_rows.to(x.device)
            m = self.mask.to(x.device)[rows, :, None]
            wmax[rows] = x[rows].masked_fill(~m, -torch.inf).amax(dim=1)
        return wmax

    def positions(self, x: torch.Tensor, rows: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Position of the (first) maximum of unit ``units[i]`` in window ``rows[i]``."""
        m = self.mask.to(x.device)
        if self._dense is not None and self._dense[0] is x:  # every window's positions, already known
            return self._dense[1][rows, units]
        if len(rows) * 4 >= x.shape[0] * x.shape[2]:  # most pairs: one dense pass, shared by every call on x
            pos = x[:, self.first :].max(dim=1).indices + self.first
            if len(self.pad_rows):
                pr = self.pad_rows.to(x.device)
                pos[pr] = x[pr].masked_fill(~m[pr, :, None], -torch.inf).max(dim=1).indices
            self._dense = (x, pos)
            return pos[rows, units]
        cols = x[rows, :, units]  # [pairs, s]
        return cols.masked_fill(~m[rows], -torch.inf).argmax(dim=1)

    def moments(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Power sums 1..4 of ``x - shift`` over the counted tokens (float32, per unit)."""
        y = self.scratch.get("moments.y", x.shape, x.dtype, x.device)
        if self.shift is not None:
            torch.sub(x, self.shift.to(x.device), out=y)
        else:
            y.copy_(x)
        if self.first:
            y[:, : self.first] = 0
        if len(self.pad_rows):
            rows = self.pad_rows.to(x.device)
            y[rows] = y[rows].masked_fill(~self.mask.to(x.device)[rows, :, None], 0)
        y2 = torch.mul(y, y, out=self.scratch.get("moments.y2", x.shape, x.dtype, x.device))
        s1, s2 = y.sum((0, 1)), y2.sum((0, 1))
        s3 = y.mul_(y2).sum((0, 1))
        s4 = y2.mul_(y2).sum((0, 1))
        return {"s1": s1, "s2": s2, "s3": s3, "s4": s4}

    def histogram(self, x: torch.Tensor) -> torch.Tensor:
        """``[d, n_bins]`` counts of the counted tokens: every token's, less the uncounted ones'."""
        d = x.shape[-1]
        hist = HIST.counts(x.view(-1, d), self.scratch)
        m = self.mask.to(x.device)
        if not bool(m.all()):
            hist -= HIST.counts(x[~m], self.scratch)
        return hist

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.prepare(x)
        dev = x.device
        fused = site_stats(x, self.mask, self.shift, self.first)
        if fused is not None:
            return self._from_kernel(fused)
        wmax = self.maxima(x)
        out = self.moments(x)
        out["hist"] = self.histogram(x)
        b, d = wmax.shape
        if b > self.k:
            tv, ti = wmax.topk(self.k, dim=0)
        else:
            tv, ti = wmax, torch.arange(b, device=dev)[:, None].expand(b, d)
        # Only windows that can enter the top-k need their position (the rest never survive a merge).
        need = ~(tv <= self.threshold.to(dev)) if self.threshold is not None else torch.ones_like(tv, dtype=torch.bool)
        j, u = need.nonzero(as_tuple=True)
        tp = torch.zeros(tv.shape, dtype=torch.long, device=dev)
        if len(j):
            tp[j, u] = self.positions(x, ti[j, u], u)
        out.update(tv=tv, tp=tp)
        if b > self.k:
            out["ti"] = ti
        if len(self.sample_rows):
            rows = self.sample_rows.to(dev)
            r = rows[:, None].expand(len(rows), d).reshape(-1)
            uu = torch.arange(d, device=dev).repeat(len(rows))
            out.update(sv=wmax[rows], sp=self.positions(x, r, uu).view(len(rows), d))
        self._dense = None
        return out

    def _from_kernel(self, f: SiteStats) -> dict[str, torch.Tensor]:
        """The same outputs as the torch passes, from the kernel's every-window maxima and positions."""
        out = {"s1": f.s1, "s2": f.s2, "s3": f.s3, "s4": f.s4, "hist": f.hist}
        b = f.wmax.shape[0]
        if b > self.k:
            tv, ti = f.wmax.topk(self.k, dim=0)
            tp = f.wpos.gather(0, ti)
            out["ti"] = ti
        else:
            tv, tp = f.wmax, f.wpos
        if self.threshold is not None:  # as the torch path: no position for a window that cannot enter
            tp = tp.masked_fill(tv <= self.threshold, 0)
        out.update(tv=tv, tp=tp)
        if len(self.sample_rows):
            out.update(sv=f.wmax[self.sample_rows], sp=f.wpos[self.sample_rows])
        return out


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C while the state is updated, so a checkpoint never sees half a batch."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[Any] = []
    old = signal.signal(signal.SIGINT, lambda *a: hit.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if hit:
            raise KeyboardInterrupt


def _model_info(model: Any) -> dict[str, Any]:
    a = model.arch
    info: dict[str, Any] = {"name": model.name, "family": a.family, "n_layers": a.n_layers, "d_model": a.d_model,
                            "d_mlp": a.d_mlp, "vocab": a.vocab}
    try:
        w = next(model.hf.parameters())
        info["checksum"] = round(float(w.detach().flatten()[:4096].double().sum()), 6) if not w.is_meta else None
    except (StopIteration, RuntimeError):
        info["checksum"] = None
    return info


class _Scan:
    """The state of one scan in progress (see `scan`)."""

    def __init__(self, model: Any, path: Path, meta: dict, states: dict[str, KeyState], sample: Sample,
                 features: dict[str, tuple[str, Callable]], interventions: list, remote: Any):
        self.model, self.path, self.meta, self.states, self.sample = model, path, meta, states, sample
        self.features, self.interventions, self.remote = features, interventions, remote
        self.pending: list[Window] = []
        self.step = int(meta.get("step", 0))

    def run_batch(self, windows: list[Window], fingerprint: str) -> int:
        """Run one batch and merge it into the state; returns the tokens counted.

        The merge and the cursor move together while Ctrl-C is held, so a checkpoint written
        on an interrupt never counts a batch twice or skips one."""
        model, meta = self.model, self.meta
        batch = model.batch_from_ids([w.ids for w in windows])
        mask = batch.attention_mask.bool()
        first = 1 if meta["skip_first"] else 0
        mask[:, :first] = False
        pad_rows = (~batch.attention_mask.bool()).any(1).nonzero().flatten()
        ids = torch.tensor([w.id for w in windows])
        prio = window_priority(ids.numpy())
        R = int(meta["n_sample"])
        cand = (prio < self.sample.threshold).nonzero().flatten() if R else torch.zeros(0, dtype=torch.long)
        k = int(meta["k"])
        caps: dict[str, Any] = {}
        reducers = {}
        scratch = Scratch()
        for key, info in meta["sites"].items():
            tr = self.features[key][1] if key in self.features else None
            st = self.states.get(key)
            shift = st.mean.float() if st is not None and st.n else None
            thr = st.threshold() if st is not None else None
            r = ScanReducer(mask, pad_rows, shift, k, cand, tr, first, thr, scratch)
            reducers[key] = r
            caps.setdefault(info["site"], []).append((key, r))
        capture = {}
        for site, pairs in caps.items():
            capture[site] = (lambda x, pairs=pairs: {key: r(x) for key, r in pairs})
        activations = run_to_last_site(model, batch, self.interventions, capture, self.remote)
        n = int(mask.sum())
        with _deferred_interrupt():
            keys, svals, spos = [], [], []
            for site, pairs in caps.items():
                outs = activations[site]
                for key, _ in pairs:
                    o = {f: v.detach().cpu() for f, v in outs[key].items()}
                    if key not in self.states:
                        width = o["s1"].shape[0]
                        self.states[key] = KeyState.empty(width, k, HIST.n_bins, R)
                        meta["sites"][key]["width"] = width
                    st = self.states[key]
                    win = ids[o["ti"]] if "ti" in o else ids[:, None].expand_as(o["tv"])
                    st.merge_top(o["tv"], win, o["tp"])
                    shift = reducers[key].shift
                    st.merge_power_sums(n, shift, o["s1"], o["s2"], o["s3"], o["s4"])
                    st.merge_hist(o["hist"])
                    if len(cand):
                        keys.append(key)
                        svals.append(o["sv"])
                        spos.append(o["sp"])
            if len(cand):
                self.sample.merge(ids[cand], prio[cand], [self.states[k_] for k_ in keys], svals, spos)
            self.pending += windows
            meta["n_tokens"] += n
            meta["n_windows"] += len(windows)
            meta["cursor"] = windows[-1].id + 1
            meta["fingerprint"] = fingerprint
        return n

    def store(self, features: dict[str, tuple[str, Callable]]) -> ScanStore:
        """The store as last checkpointed, from memory (what `ScanStore.open` would read back)."""
        store = ScanStore(self.path, self.meta, self.states, self.sample, self.model)
        store.transforms = {key: fn for key, (_, fn) in features.items()}
        return store

    def checkpoint(self) -> None:
        """Write the windows since the last checkpoint and the state; meta.json commits both."""
        with _deferred_interrupt():
            self._checkpoint()

    def _checkpoint(self) -> None:
        meta = self.meta
        if self.pending:
            W = int(meta["window"])
            ids = torch.full((len(self.pending), W), -1, dtype=torch.int32)
            for i, w in enumerate(self.pending):
                ids[i, : len(w.ids)] = torch.tensor(w.ids, dtype=torch.int32)
            name = f"{len(meta['chunks']):06d}.safetensors"
            atomic_tensors(self.path / "windows" / name, {
                "ids": ids, "window": torch.tensor([w.id for w in self.pending], dtype=torch.long),
                "doc": torch.tensor([w.doc for w in self.pending], dtype=torch.long),
                "start": torch.tensor([w.start for w in self.pending], dtype=torch.long)})
            meta["chunks"].append(name)
            self.pending = []
        self.step += 1
        meta["step"] = self.step
        write_store(self.path, meta, self.states, self.sample, self.step)


def _new_meta(model: Any, corpus: Any, sites: list[str], features: dict, k: int, window: int, n_sample: int,
              skip_first: bool, shard: tuple[int, int] | None, max_tokens: int | None, interventions: list) -> dict:
    site_info: dict[str, dict] = {s: {"site": s, "width": model.arch.size(Site.parse(s)), "transform": None} for s in sites}
    for key, (site, fn) in features.items():
        site_info[key] = {"site": str(Site.parse(site)), "width": None,
                          "transform": getattr(fn, "name", None) or type(fn).__name__}
    return {
        "format": FORMAT, "version": VERSION, "model": _model_info(model), "corpus": corpus_name(corpus),
        "sites": site_info, "k": k, "window": window, "n_sample": n_sample, "skip_first": skip_first,
        "hist": HIST.spec(), "shard": list(shard) if shard else None,
        "max_tokens": max_tokens, "interventions": [s.to_dict() for s in interventions],
        "chunks": [], "state": None, "n_tokens": 0, "n_windows": 0, "cursor": 0, "fingerprint": None,
        "complete": False, "step": 0,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


_SAME = ("sites", "k", "window", "n_sample", "skip_first", "shard", "max_tokens", "interventions")


def scan(model: Any, corpus: Any = None, path: str | Path | None = None, *, sites: str | Sequence[str] = "neurons",
         features: dict[str, tuple[str, Callable]] | None = None, k: int = 20, window: int = 64,
         batch_size: int = 16, max_tokens: int | None = None, sample: int = 64, skip_first: bool = True,
         shard: tuple[int, int] | None = None, interventions: Sequence[Any] | None = None,
         checkpoint_every: int = 256, resume: bool = True, overwrite: bool = False, progress: bool = True,
         cancel: threading.Event | None = None, remote: bool | str | None = None) -> ScanStore:
    """Scan a corpus once; return the `ScanStore` (resuming a partial scan at ``path``).

    ``sites``: ``"neurons"`` (every layer's MLP neurons, the default), a family such as
    ``"resid_post"``, or site names (``"neurons.3"``). ``features``: ``{name: (site, encoder)}``
    scans an encoder's outputs (e.g. SAE latents) computed inside the trace. ``k`` exemplars
    per unit; ``window`` tokens per window; ``sample`` windows kept at random for quantile
    exemplars; ``skip_first`` leaves each window's first token out of every statistic.
    ``max_tokens`` stops after that many counted tokens. ``shard=(i, n)`` takes windows
    ``i, i+n, ...`` (merge the shards with `ScanStore.merge`). ``checkpoint_every`` windows,
    the store is checkpointed; ``cancel`` (a `threading.Event`) stops after the current batch
    with a checkpoint and raises `ScanCancelled` (``.partial``: the partial store; the same
    call resumes); Ctrl-C checkpoints and re-raises.
    """
    from ..core.engine import Model

    if not isinstance(model, Model):
        raise TypeError("scan needs a workbench Model (workbench.load(...))")
    if k < 1 or window < 2 or batch_size < 1 or sample < 0 or checkpoint_every < 1:
        raise ValueError("k, batch_size and checkpoint_every must be >= 1, window >= 2 and sample >= 0")
    if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, not {shard!r}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    site_list = _expand_sites(model, sites) if sites else []
    features = dict(features or {})
    for key, pair in features.items():
        if not (isinstance(pair, tuple) and len(pair) == 2 and callable(pair[1])):
            raise TypeError(f"features[{key!r}] must be (site, encoder callable)")
        if key in site_list:
            raise ValueError(f"feature name {key!r} collides with a site name")
    if not site_list and not features:
        raise ValueError("nothing to scan: give sites or features")
    specs = model.specs(interventions)
    if path is None:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="workbench-scan-"))
    path = Path(path)
    meta = _new_meta(model, corpus, site_list, features, k, window, sample, skip_first, shard, max_tokens, specs)
    states: dict[str, KeyState] = {}
    smp = Sample.empty(sample)
    if (path / "meta.json").exists() and not overwrite:
        if not resume:
            raise FileExistsError(f"{path} holds a scan; pass resume=True to continue it or overwrite=True")
        old = ScanStore.open(path)
        for f in _SAME:
            if old.meta.get(f) != meta.get(f) and not (f == "sites" and _same_sites(old.meta[f], meta[f])):
                raise StoreError(f"{path} holds a scan with a different {f!r} ({old.meta.get(f)!r}); "
                                 "use another path or overwrite=True")
        om, nm = old.meta["model"], meta["model"]
        if any(om.get(f) != nm.get(f) for f in ("n_layers", "d_mlp", "vocab", "checksum")):
            raise StoreError(f"{path} was scanned with another model ({om.get('name')}, checksum {om.get('checksum')})")
        old.check_model(model)
        if old.complete:
            old.model = model
            old.transforms = {key: fn for key, (_, fn) in features.items()}
            return old
        meta, states, smp = old.meta, old.states, old.sample
        for stale in (path / "windows").glob("*.safetensors"):  # written after the last commit
            if stale.name not in meta["chunks"]:
                stale.unlink()
    else:
        if path.exists() and overwrite:
            import shutil

            shutil.rmtree(path)
        (path / "windows").mkdir(parents=True, exist_ok=True)
    for key, info in meta["sites"].items():
        if key not in states and info["width"] is not None:
            states[key] = KeyState.empty(int(info["width"]), k, HIST.n_bins, sample)
    job = _Scan(model, path, meta, states, smp, features, specs, remote)
    cursor = int(meta["cursor"])
    fp = Fingerprint()
    # The bar's total needs a tokenization pass of its own: only when there is a bar to show.
    sized = hasattr(corpus, "__len__") or corpus is None
    total = _count_tokens(model, corpus, window, skip_first, shard, max_tokens) if progress and sized else None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=min(meta["n_tokens"], total or meta["n_tokens"]), unit="tok", unit_scale=True,
               desc="scan", disable=not progress, dynamic_ncols=True)
    since = 0
    batch: list[Window] = []
    resumed_check = cursor == 0

    def flush() -> None:
        nonlocal since, batch
        n = job.run_batch(batch, fp.hexdigest())
        bar.update(n)
        bar.set_postfix(windows=meta["n_windows"], refresh=False)
        since += len(batch)
        batch = []
        if since >= checkpoint_every:
            job.checkpoint()
            since = 0

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sequence length is longer than.*")
            for w in iter_windows(model.tokenizer, corpus, window, 2 if skip_first else 1):
                if w.id < cursor:
                    fp.update(w.ids)
                    continue
                if not resumed_check:
                    if fp.hexdigest() != meta["fingerprint"]:
                        raise StoreError(f"{path}: the corpus is not the one this scan started on (its first "
                                         f"{cursor} windows differ): use another path or overwrite=True")
                    resumed_check = True
                if max_tokens is not None and meta["n_tokens"] >= max_tokens:
                    break
                fp.update(w.ids)
                if shard is not None and w.id % shard[1] != shard[0]:
                    continue
                batch.append(w)
                if len(batch) == batch_size:
                    flush()
                    if cancel is not None and cancel.is_set():
                        job.checkpoint()
                        bar.close()
                        raise ScanCancelled(f"scan cancelled after {meta['n_windows']} windows; the checkpoint is in "
                                            f"{path}: run the same call again to resume",
                                            partial=job.store(features))
            else:
                if not resumed_check and fp.hexdigest() != meta["fingerprint"]:
                    raise StoreError(f"{path}: the corpus is shorter than the one this scan started on")
            if batch:
                flush()
    except KeyboardInterrupt:
        job.checkpoint()
        bar.close()
        print(f"scan interrupted after {meta['n_windows']} windows; the checkpoint is in {path}: "
              "run the same call again to resume")
        raise
    if meta["n_windows"] == 0:
        bar.close()
        raise ValueError("the corpus gave no window of at least two tokens: nothing was scanned")
    meta["complete"] = True
    job.checkpoint()
    bar.close()
    return job.store(features)


def _same_sites(a: dict, b: dict) -> bool:
    return {k: (v["site"], v.get("transform")) for k, v in a.items()} == {k: (v["site"], v.get("transform")) for k, v in b.items()}


def _count_tokens(model: Any, corpus: Any, window: int, skip_first: bool, shard: tuple[int, int] | None,
                  max_tokens: int | None) -> int | None:
    """Tokens a scan will count (for the progress bar's time left), from a tokenization pass."""
    try:
        total = sum(len(w.ids) - skip_first for w in iter_windows(model.tokenizer, corpus, window, 2 if skip_first else 1)
                    if shard is None or w.id % shard[1] == shard[0])
    except TypeError:
        return None
    return min(total, max_tokens) if max_tokens else total

