"""Corpus scan throughput vs a bare no_grad forward over the same batches; merge and resume costs.

Every MLP neuron of all 30 layers of the embedded model, k=20, 64-token windows, batches of 16.
Prints tokens/s and the ratio to (a) a bare ``hf(input_ids, attention_mask)`` forward and (b) the
same forward unembedding one position (``logits_to_keep=1``; a scan needs no logits). Target:
scan ≥ 0.85x the bare forward. Also: peak resident memory, merge time, and a resumed scan vs an
uninterrupted one. ``--batches N`` sets the size (default 12 batches ≈ 12k tokens).
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = wb.load(progress=False)
    B, W = 16, 64
    wins = []
    for w in iter_windows(model.tokenizer, None, W):
        if len(w.ids) == W:  # full windows: the same work in both arms
            wins.append(w)
        if len(wins) == B * args.batches:
            break
    texts_tokens = [w.ids for w in wins]
    n_tok = sum(len(r) for r in texts_tokens)  # tokens through the model, position 0 included
    batches = [model.batch_from_ids(texts_tokens[i : i + B]) for i in range(0, len(wins), B)]
    hf = model.hf
    tmp = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    corpus = [model.tokenizer.decode(r) for r in texts_tokens]  # re-tokenizes to (nearly) the same windows

    def bare(keep: bool) -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                hf(input_ids=b.input_ids, attention_mask=b.attention_mask, **({"logits_to_keep": 1} if keep else {}))
        return time.perf_counter() - t

    def do_scan(name: str, **kw) -> tuple[float, wb.neurons.ScanStore]:
        shutil.rmtree(tmp / name, ignore_errors=True)
        t = time.perf_counter()
        st = wb.scan(model, corpus, tmp / name, k=20, window=W, batch_size=B, progress=False, **kw)
        return time.perf_counter() - t, st

    bare(True)
    times: dict[str, list[float]] = {"bare": [], "bare1": [], "scan": []}
    peak = 0.0
    for _ in range(2):
        times["bare"].append(bare(False))
        times["bare1"].append(bare(True))
        with PeakRSS() as p:
            dt, store = do_scan("whole")
        peak = max(peak, p.peak)
        times["scan"].append(dt)
    base_rss = rss_mb()
    tb, tb1, ts = min(times["bare"]), min(times["bare1"]), min(times["scan"])
    s_tok = store.n_tokens + store.n_windows  # every token through the model (position 0 is not counted in stats)
    rb, rb1, rs = n_tok / tb, n_tok / tb1, s_tok / ts
    print(f"\nScan of {store.n_windows} windows of <= {W} tokens ({s_tok} tokens; bare arms {n_tok}), "
          f"30 layers x {model.d_mlp} neurons, k=20, batch {B}, {args.threads} thread(s); best of 2")
    print(f"  bare forward (no_grad, full logits)   {tb:7.2f} s   {rb:7.0f} tok/s   1.000x")
    print(f"  bare forward (logits_to_keep=1)       {tb1:7.2f} s   {rb1:7.0f} tok/s   {rb1 / rb:5.3f}x")
    print(f"  wb.scan (all reductions + store)      {ts:7.2f} s   {rs:7.0f} tok/s   {rs / rb:5.3f}x "
          f"(target >= 0.85x: {'met' if rs / rb >= 0.85 else 'NOT met'}); vs logits_to_keep=1: {rs / rb1:5.3f}x")
    print(f"  peak RSS during scan {peak:.0f} MB (after: {base_rss:.0f} MB); "
          f"store on disk {sum(f.stat().st_size for f in (tmp / 'whole').rglob('*') if f.is_file()) / 1e6:.1f} MB")

    # shards + merge vs the whole
    t0, s0 = do_scan("s0", shard=(0, 2))
    t1, s1 = do_scan("s1", shard=(1, 2))
    t = time.perf_counter()
    wb.neurons.ScanStore.merge([s0, s1], tmp / "merged", overwrite=True)
    tm = time.perf_counter() - t
    print(f"  two shards {t0:.2f} s + {t1:.2f} s; merge {tm:.2f} s ({tm / ts * 100:.1f}% of the whole scan)")

    # interrupted at half (cancel) + resumed vs uninterrupted
    shutil.rmtree(tmp / "r", ignore_errors=True)
    ev = threading.Event()
    half = len(batches) // 2

    class Stop(list):
        def __iter__(self):
            for i, x in enumerate(list.__iter__(self)):
                if i == half * B:
                    ev.set()
                yield x

    t = time.perf_counter()
    try:
        wb.scan(model, Stop(corpus), tmp / "r", k=20, window=W, batch_size=B, progress=False, cancel=ev)
    except ScanCancelled:
        pass  # the checkpoint is written; the next call resumes
    wb.scan(model, corpus, tmp / "r", k=20, window=W, batch_size=B, progress=False)
    tr = time.perf_counter() - t
    print(f"  cancelled at half + resumed: {tr:.2f} s vs uninterrupted {ts:.2f} s ({(tr / ts - 1) * 100:+.1f}%)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
