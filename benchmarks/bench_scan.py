"""Corpus scan throughput against forwards over the same batches; store size, merge and resume costs.

Every MLP neuron of all 30 layers of the embedded model, k=20, 64-token windows, batches of 16,
all arms under ``torch.inference_mode()`` and interleaved (best of ``--repeats``). The floor is the
model body without the unembedding (``hf.base_model(...)``, final norm included): the scan stops
after its last site, so it never unembeds. Also printed: the full forward and the one unembedding
only the last position (``logits_to_keep=1``). Targets: scan >= 0.95x the body; a cancelled and
resumed scan < 5% above an uninterrupted one. ``--profile`` times each in-trace reduction alone
on the same batches' activations and gives its share of the scan time: the C kernel
(`workbench.neurons.site_stats`) the scan uses on a CPU, and each torch pass it replaces
(``WORKBENCH_NATIVE=0`` runs the whole scan on those).

Times are the process's CPU seconds (``time.process_time``: every thread, the nnsight worker
included) by default, since on a shared machine wall time mostly measures the neighbours;
``--clock wall`` uses ``time.perf_counter``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.neurons.scan import ScanCancelled, iter_windows
from workbench.neurons.store import ScanStore

clock = time.process_time


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Samples resident memory every 20 ms in a thread."""

    def __enter__(self):
        self.peak, self._stop = rss_mb(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *a) -> None:
        self._stop.set()
        self._t.join()


def store_mb(path: Path) -> dict[str, float]:
    """Bytes on disk by part: the state file's fields (top, sample, hist, moments) and the windows."""
    from safetensors import safe_open

    meta = ScanStore.open(path).meta
    parts = {"top": 0.0, "sample": 0.0, "hist": 0.0, "other": 0.0}
    with safe_open(str(path / meta["state"]), "pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            field = name.rsplit("/", 1)[-1]
            kind = next((p for p in ("top", "sample", "hist") if field.startswith(p)), "other")
            parts[kind] += t.numel() * t.element_size() / 1e6
    parts["windows"] = sum(f.stat().st_size for f in (path / "windows").glob("*")) / 1e6
    parts["total"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    return parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="time each reduction alone (adds a few minutes)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    model = wb.load(progress=False)
    B, W, K = 16, 64, 20
    wins = []
    for w in iter_windows(model.tokenizer, None, W):
        if len(w.ids) == W:  # full windows: the same work in every arm
            wins.append(w)
        if len(wins) == B * args.batches:
            break
    rows = [w.ids for w in wins]
    n_tok = sum(len(r) for r in rows)  # tokens through the model, position 0 included
    batches = [model.batch_from_ids(rows[i : i + B]) for i in range(0, len(rows), B)]
    hf = model.hf
    tmp = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    corpus = [model.tokenizer.decode(r) for r in rows]  # re-tokenizes to (nearly) the same windows

    def forward(kind: str) -> float:
        t = clock()
        with torch.inference_mode():
            for b in batches:
                kw = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
                if kind == "body":
                    hf.base_model(**kw)
                else:
                    hf(**kw, **({"logits_to_keep": 1} if kind == "keep1" else {}))
        return clock() - t

    def do_scan(name: str, **kw) -> tuple[float, wb.neurons.ScanStore]:
        shutil.rmtree(tmp / name, ignore_errors=True)
        t = clock()
        st = wb.scan(model, corpus, tmp / name, k=K, window=W, batch_size=B, progress=False, **kw)
        return clock() - t, st

    half = len(batches) // 2
    ev = threading.Event()

    class Stop(list):
        """The corpus; sets the cancel event once the scan has read half of it."""

        def __iter__(self):
            for i, x in enumerate(list.__iter__(self)):
                if i == half * B:
                    ev.set()
                yield x

    def resumed() -> float:
        shutil.rmtree(tmp / "r", ignore_errors=True)
        ev.clear()
        t = clock()
        try:
            wb.scan(model, Stop(corpus), tmp / "r", k=K, window=W, batch_size=B, progress=False, cancel=ev)
        except ScanCancelled:
            pass  # the checkpoint is written; the next call resumes
        wb.scan(model, corpus, tmp / "r", k=K, window=W, batch_size=B, progress=False)
        return clock() - t

    forward("keep1")  # warm-up
    times: dict[str, list[float]] = {"full": [], "keep1": [], "body": [], "scan": [], "resumed": []}
    peak = 0.0
    for _ in range(args.repeats):
        for kind in ("full", "keep1", "body"):
            times[kind].append(forward(kind))
        with PeakRSS() as p:
            dt, store = do_scan("whole")
        peak = max(peak, p.peak)
        times["scan"].append(dt)
        times["resumed"].append(resumed())
    base_rss = rss_mb()
    best = {k: min(v) for k, v in times.items()}
    s_tok = store.n_tokens + store.n_windows  # every token through the model (position 0 is not counted in stats)
    rate = {k: n_tok / best[k] for k in ("full", "keep1", "body")}
    rate["scan"] = s_tok / best["scan"]
    print(f"\nScan of {store.n_windows} windows of <= {W} tokens ({s_tok} tokens; forward arms {n_tok}), "
          f"30 layers x {model.d_mlp} neurons, k={K}, batch {B}, {args.threads} thread(s); best of {args.repeats}, {args.clock} time")
    for k, label in (("full", "forward, full logits"), ("keep1", "forward, logits_to_keep=1"),
                     ("body", "body, no unembedding (floor)"), ("scan", "wb.scan (all reductions + store)")):
        print(f"  {label:<34} {best[k]:7.2f} s   {rate[k]:7.0f} tok/s   {rate[k] / rate['body']:5.3f}x body")
    r = rate["scan"] / rate["body"]
    print(f"  scan vs body {r:5.3f}x (target >= 0.95x: {'met' if r >= 0.95 else 'NOT met'}); "
          f"vs logits_to_keep=1 {rate['scan'] / rate['keep1']:5.3f}x; vs full logits {rate['scan'] / rate['full']:5.3f}x")
    mb = store_mb(tmp / "whole")
    print(f"  peak RSS during scan {peak:.0f} MB (after: {base_rss:.0f} MB); store on disk {mb['total']:.1f} MB "
          f"(top {mb['top']:.1f}, sample {mb['sample']:.1f}, hist {mb['hist']:.1f}, moments/other {mb['other']:.2f}, "
          f"windows {mb['windows']:.2f})")
    over = best["resumed"] / best["scan"] - 1
    print(f"  cancelled at half + resumed: {best['resumed']:.2f} s vs uninterrupted {best['scan']:.2f} s "
          f"({over * 100:+.1f}%; target < 5%: {'met' if over < 0.05 else 'NOT met'})")

    t0, s0 = do_scan("s0", shard=(0, 2))
    t1, s1 = do_scan("s1", shard=(1, 2))
    t = clock()
    wb.neurons.ScanStore.merge([s0, s1], tmp / "merged", overwrite=True)
    tm = clock() - t
    print(f"  two shards {t0:.2f} s + {t1:.2f} s; merge {tm:.2f} s ({tm / best['scan'] * 100:.1f}% of the whole scan)")
    if args.profile:
        profile(model, batches, store, best["scan"] / len(batches), tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def profile(model, batches, store, per_batch: float, tmp: Path) -> None:
    """Each reduction alone on real activations of every layer, as a share of the scan's time per batch."""
    from workbench.core.fileio import atomic_tensors

    def timed(f, n=3) -> float:
        f()
        best = float("inf")
        for _ in range(n):
            t = clock()
            f()
            best = min(best, clock() - t)
        return best

    L = model.arch.n_layers
    parts: dict[str, float] = {}
    for b in batches[:2]:
        res = model.run(b, capture=[f"neurons.{i}" for i in range(L)], top_k=0, logits=None)
        mask = b.attention_mask.bool().clone()
        mask[:, :1] = False
        for i in range(L):
            x = res.activations[f"neurons.{i}"].float().contiguous()
            for name, v in profile_layer(x, store.states[f"neurons.{i}"], mask, store.k, timed).items():
                parts[name] = parts.get(name, 0.0) + v / 2
    rows = [store.window_tokens(w) for w in range(16)]
    parts["batch_from_ids (per-token decode)"] = timed(lambda: model.batch_from_ids(rows))
    tensors = {}
    for key, s in store.states.items():
        tensors.update(s.tensors(key))
    parts["checkpoint state write (once per 256 windows)"] = timed(lambda: atomic_tensors(tmp / "p.safetensors", tensors), 1) / 16
    print(f"\nProfile: each part alone, all {L} layers, per batch of 16 windows; share of the scan's "
          f"{per_batch * 1000:.0f} ms per batch")
    for name, v in parts.items():
        print(f"  {name:<48} {v * 1000:8.1f} ms   {v / per_batch * 100:5.1f}%")


def profile_layer(x: torch.Tensor, st, mask: torch.Tensor, k: int, timed) -> dict[str, float]:
    """Seconds of each part on one layer's batch: cold (first batch) and warm (end of scan) thresholds."""
    from workbench.neurons import site_stats
    from workbench.neurons.scan import ScanReducer

    pad = torch.zeros(0, dtype=torch.long)
    cold = ScanReducer(mask, pad, st.mean.float(), k, pad, None, 1, None)
    warm = ScanReducer(mask, pad, st.mean.float(), k, pad, None, 1, st.threshold())
    j, u = (~(warm.maxima(x) <= st.threshold())).nonzero(as_tuple=True)
    jc, uc = torch.ones(x.shape[0], x.shape[2], dtype=torch.bool).nonzero(as_tuple=True)
    o = warm(x)

    def fresh_positions(r, rows, units):
        r._dense = None  # each call finds the positions again
        return r.positions(x, rows, units)

    parts = {}
    if site_stats.available():
        parts["C kernel: maxima, positions, power sums, histogram"] = timed(
            lambda: site_stats.site_stats(x, mask, st.mean.float(), 1))
    parts.update({
        "torch path: window maxima (amax)": timed(lambda: warm.maxima(x)),
        "torch path: positions, first batch (every window)": timed(lambda: fresh_positions(cold, jc, uc)),
        "torch path: positions, end of scan (above the k-th)": timed(lambda: fresh_positions(warm, j, u)),
        "torch path: power sums 1..4": timed(lambda: warm.moments(x)),
        "torch path: histogram": timed(lambda: warm.histogram(x)),
        "whole reducer, end of scan (as the scan runs it)": timed(lambda: warm(x)),
        "client merge (top-k, moments, hist)": timed(lambda: merge(st, o, warm))})
    return parts


def merge(st, o: dict, r) -> None:
    """The client side of one batch (on a copy of the state)."""
    from workbench.neurons.store import KeyState

    c = KeyState(**{f: (v.clone() if isinstance(v, torch.Tensor) else v) for f, v in st.__dict__.items()})
    c.merge_top(o["tv"], torch.arange(10**6, 10**6 + o['tv'].shape[0])[:, None].expand_as(o["tv"]), o["tp"])
    c.merge_power_sums(int(r.mask.sum()), r.shift, o["s1"], o["s2"], o["s3"], o["s4"])
    c.merge_hist(o["hist"])


if __name__ == "__main__":
    main()
