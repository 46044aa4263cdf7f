"""`neuron_weights` on the embedded model (30 layers x 1536 neurons, 49152 tokens) vs its floor.

Floor: the same matmuls done bare, one per layer: ``W_out^T @ W_U^T`` (``[1536, 49152]`` scores)
plus the two top-k calls (promoted and suppressed), nothing else. `neuron_weights` adds the
final-norm folding, the vocabulary moments (cosine statistics by default), the input-output
cosines, the class tables and decoding the listed tokens. Target: <= 1.3x the floor.
Also: the bfloat16 matmul (``dtype=torch.bfloat16``) vs float32, and a bfloat16 floor.

Timings are interleaved medians, as wall time and as process CPU time (the CPU time is the
steadier figure on a shared machine). ``--threads`` sets torch's thread count (default 1).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import workbench as wb
from workbench.neurons.weights import neuron_weights


def interleaved_both(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per call, calls interleaved so drift hits all alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = wb.load(progress=False)
    hf = model.hf
    n_layers, k = model.n_layers, args.k
    W_U = hf.lm_head.weight.detach()
    downs = [hf.model.layers[L].mlp.down_proj.weight.detach() for L in range(n_layers)]  # [d_model, d_mlp]
    W_U16 = W_U.to(torch.bfloat16)
    downs16 = [w.to(torch.bfloat16) for w in downs]

    def floor(U: torch.Tensor, ws: list[torch.Tensor]) -> None:
        with torch.inference_mode():
            for w in ws:
                s = w.T @ U.T  # [d_mlp, vocab]
                s.topk(k, dim=1)
                s.topk(k, dim=1, largest=False)

    fns = {
        "floor: bare W_out^T W_U^T + 2 top-k, fp32": lambda: floor(W_U, downs),
        "neuron_weights fp32 (cosine stats)": lambda: neuron_weights(model, k=k, progress=False),
        "neuron_weights fp32, stats_on='score'": lambda: neuron_weights(model, k=k, progress=False, stats_on="score"),
        "floor bf16": lambda: floor(W_U16, downs16),
        "neuron_weights bf16 (cosine stats)": lambda: neuron_weights(model, k=k, progress=False, dtype=torch.bfloat16),
    }
    med = interleaved_both(fns, args.repeats, args.warmup)
    base_w, base_c = med["floor: bare W_out^T W_U^T + 2 top-k, fp32"]
    print(f"\nneuron_weights vs its floor: {n_layers} layers x {model.d_mlp} neurons x {model.arch.vocab} tokens, "
          f"k={k}, {args.threads} thread(s), median of {args.repeats}")
    print(f"  {'':<44} {'wall s':>8} {'ratio':>7} {'CPU s':>8} {'ratio':>7}")
    for name, (w, c) in med.items():
        print(f"  {name:<44} {w:8.2f} {w / base_w:6.3f}x {c:8.2f} {c / base_c:6.3f}x")
    fp32 = med["neuron_weights fp32 (cosine stats)"]
    bf16 = med["neuron_weights bf16 (cosine stats)"]
    target = fp32[1] / base_c
    print(f"  target <= 1.30x the floor (CPU time): {'met' if target <= 1.3 else 'NOT met'} ({target:.3f}x)")
    print(f"  bf16 / fp32 neuron_weights: wall {bf16[0] / fp32[0]:.3f}x, CPU {bf16[1] / fp32[1]:.3f}x")


if __name__ == "__main__":
    main()
