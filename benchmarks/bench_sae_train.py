"""TopK SAE training throughput: `train_sae(activations=...)` vs a minimal hand-written PyTorch loop.

Both train on the same cached activations: 50k tokens of ``resid_post.9`` of the embedded model
(collected once, cached under ~/.cache/workbench-bench/), or ``--random`` data of the same shape.
Shape of the default run: d_in 576, 4608 latents, k = 32, batch 4096. The hand-written loop is
the textbook minimum: encode, top-k, scatter into a dense code, dense decode, MSE, Adam (no
decoder normalization, no AuxK, no dead-latent bookkeeping). `train_sae` does all of those, with
a sparse decode and a sparse encoder backward. Runs alternate (A, B, A, B, ...); the report gives
median tokens/s of each and the ratio (target: train_sae >= 0.9x the minimal loop).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def cached_activations(n_tokens: int, random: bool) -> torch.Tensor:
    if random:
        g = torch.Generator().manual_seed(0)
        return torch.randn(n_tokens, 576, generator=g) * 3 + torch.randn(576, generator=g)
    from safetensors.torch import load_file, save_file

    path = Path.home() / ".cache" / "workbench-bench" / f"resid_post9_{n_tokens}.safetensors"
    if path.exists():
        return load_file(str(path))["x"]
    import workbench as wb
    from workbench.core.activations import collect_activations

    model = wb.load(progress=False)
    t = time.perf_counter()
    x = collect_activations(model, "resid_post.9", None, n_tokens, progress=True)
    dt = time.perf_counter() - t
    print(f"collected {len(x)} tokens of resid_post.9 in {dt:.0f} s ({len(x) / dt:.0f} tokens/s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"x": x.contiguous()}, str(path))
    return x


def minimal_loop(X: torch.Tensor, steps: int, B: int, n: int, k: int, lr: float, seed: int = 0) -> float:
    """Encode, top-k, decode, MSE, Adam: the plainest TopK SAE loop. Returns the last loss."""
    g = torch.Generator().manual_seed(seed)
    d = X.shape[1]
    W_dec = torch.randn(n, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.T.clone().requires_grad_()
    W_dec.requires_grad_()
    b_enc = torch.zeros(n, requires_grad=True)
    b_dec = X[:B].mean(0).clone().requires_grad_()
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr)
    perm = torch.randperm(len(X), generator=g)
    loss = torch.zeros(())
    for s in range(steps):
        idx = perm[(s * B) % len(X):][:B]
        if len(idx) < B:
            idx = torch.cat([idx, perm[: B - len(idx)]])
        x = X[idx]
        pre = (x - b_dec) @ W_enc + b_enc
        v, i = pre.topk(k, dim=1)
        acts = torch.zeros_like(pre).scatter(1, i, v.relu())
        recon = acts @ W_dec + b_dec
        loss = (recon - x).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--random", action="store_true", help="random data instead of the embedded model's activations")
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--steps", type=int, default=8, help="training steps per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from workbench.dictionaries.train import train_sae

    X = cached_activations(args.tokens, args.random)
    B, n, k = 4096, 4608, 32
    lr = 1.5e-3
    tokens = args.steps * B

    def ours() -> float:
        sae = train_sae(None, "resid_post.9", activations=X, n_latents=n, k=k, batch_size=B, max_tokens=tokens,
                        lr=lr, progress=False)
        return sae.meta["training"]["fvu_last"]

    def plain() -> float:
        return minimal_loop(X, args.steps, B, n, k, lr)

    ours()  # warm-up (allocator, thread pool)
    times: dict[str, list[float]] = {"train_sae": [], "minimal loop": []}
    for _ in range(args.repeats):
        for name, fn in (("train_sae", ours), ("minimal loop", plain)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(v) for name, v in times.items()}
    src = "random data" if args.random else "resid_post.9 activations of the embedded model"
    print(f"\nTopK SAE training, {len(X)} cached tokens ({src}), d_in {X.shape[1]}, {n} latents, k={k}, batch {B}, "
          f"{args.steps} steps per run, {args.threads} threads, median of {args.repeats}")
    for name, v in med.items():
        print(f"  {name:<14} {tokens / v:9.0f} tokens/s   ({v:.2f} s per run; all: {', '.join(f'{t:.2f}' for t in times[name])})")
    ratio = med["minimal loop"] / med["train_sae"]
    print(f"  train_sae / minimal loop throughput: {ratio:.2f}x (target >= 0.9x: {'met' if ratio >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
