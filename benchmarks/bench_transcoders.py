"""Training a transcoder set on the embedded model: time per layer, FVU, L0 and dead fraction per layer.

    python benchmarks/bench_transcoders.py                          # layers 0 and 15 at the defaults
    python benchmarks/bench_transcoders.py --layers 0-5 --max-tokens 100000 --data-tokens 20000

Runs `wb.train_transcoders` (defaults: `TRANSCODER_DEFAULTS`) into a temporary folder, or ``--out``
(then a rerun resumes). Per layer it prints the wall time (activation collection + training), the
training-loop time, the held-out FVU, the L0 over the last steps and the dead fraction, then an
extrapolation to every layer of the model: collection costs a forward pass up to the layer, so it
grows with the layer index, while the training loop costs the same at every layer.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="0,15")
    p.add_argument("--out", default=None, help="set folder (default: a temporary folder)")
    p.add_argument("--max-tokens", type=int, default=None, help="training token-steps per layer")
    p.add_argument("--data-tokens", type=int, default=None, help="collected tokens per layer")
    p.add_argument("--expansion", type=int, default=None)
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()

    import torch

    import workbench as wb
    from workbench.dictionaries import TRANSCODER_DEFAULTS

    if a.threads:
        torch.set_num_threads(a.threads)
    opts = {k: v for k, v in (("max_tokens", a.max_tokens), ("data_tokens", a.data_tokens),
                              ("expansion", a.expansion), ("k", a.k)) if v is not None}
    print("settings:", {**TRANSCODER_DEFAULTS, **opts})
    model = wb.load(progress=False)
    n_layers = model.arch.n_layers
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        tset = wb.train_transcoders(model, layers=a.layers, folder=a.out or tmp, progress=True, **opts)
        total = time.perf_counter() - t
    print(f"\n{'layer':>5} {'wall s':>8} {'train s':>8} {'collect s':>9} {'FVU(held)':>9} {'FVU(ema)':>9} "
          f"{'L0':>6} {'dead':>6}")
    rows = []
    for L in tset.layers:
        s = tset.meta["stats"][str(L)]
        wall, train = s.get("wall_s") or 0.0, s.get("train_time_s") or 0.0
        rows.append((L, wall, train, wall - train))
        print(f"{L:>5} {wall:8.1f} {train:8.1f} {wall - train:9.1f} {s.get('heldout_fvu') or float('nan'):9.3f} "
              f"{s.get('fvu') or float('nan'):9.3f} {s.get('l0') or float('nan'):6.1f} "
              f"{(s.get('dead_fraction') or 0.0):6.1%}")
    print(f"total {total:.0f} s for {len(tset.layers)} layer(s)")
    fresh = [r for r in rows if r[1] > 0]
    if fresh:
        train = sum(r[2] for r in fresh) / len(fresh)
        per_layer_fwd = sum(r[3] / (r[0] + 1) for r in fresh) / len(fresh)  # collection ~ (layer + 1) layers
        est = sum(train + per_layer_fwd * (L + 1) for L in range(n_layers))
        print(f"extrapolated to all {n_layers} layers: {est / 60:.0f} min (training {train:.0f} s per layer, "
              f"collection {per_layer_fwd:.1f} s per layer traversed)")


if __name__ == "__main__":
    main()
