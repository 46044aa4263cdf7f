"""Activation patching on the embedded model: the batched sweep vs one patched forward per cell,
and attribution patching vs the exact sweep.

Sweep: residual stream (resid_post) × 30 layers × a 16-token prompt, corrupted by a prompt
with the subject replaced (same token count), denoising, logit difference " Paris" − " Rome".

- naive: one `model.run(corrupted, [Patch(resid_post.L, source=clean, positions=[p])])` per
  cell. It is measured on a sample of cells and extrapolated per cell to the full sweep (the
  output says so). Target: the batched sweep ≥ 4× faster. Also reported: a stricter naive loop
  (clean activations cached once, one 1-row forward with a plain PyTorch hook per cell). Every
  arm unembeds the last position only (``logits_to_keep=1``: the metric reads nothing else), as
  `model.run` and the sweep do.
- sweep: `activation_patching`, whose rows fork from the base run at their own layer.
- attribution: one forward of clean + corrupted (two rows) and one backward. Targets: ≥ 20×
  faster than the exact sweep; the Spearman rank correlation of the two heatmaps is reported.
"""

from __future__ import annotations

import random
import statistics
import time

import torch

import workbench as wb
from workbench.causal.patching import activation_patching, attribution_patching

CLEAN = "When we visited France we learned the Eiffel Tower is located in the city of"
CORRUPT = "When we visited France we learned the Colosseum is located in the city of"
ANSWER, WRONG = " Paris", " Rome"
SAMPLE = 40


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    def ranks(x: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(x)
        r[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
        return r
    ra, rb = ranks(a.flatten().double()), ranks(b.flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> None:
    torch.set_num_threads(1)
    model = wb.load(progress=False)
    n = len(model.to_str_tokens(CLEAN))
    assert n == 16 == len(model.to_str_tokens(CORRUPT)), (model.to_str_tokens(CLEAN), model.to_str_tokens(CORRUPT))
    kw = dict(answer=ANSWER, wrong=WRONG, progress=False)
    cells = [(L, p) for L in range(model.n_layers) for p in range(n)]
    print(f"resid_post sweep: {model.n_layers} layers × {n} positions = {len(cells)} cells, torch threads = 1")

    # warm-up
    activation_patching(model, CLEAN, CORRUPT, layers=[0], positions=[0, 1], **kw)
    attribution_patching(model, CLEAN, CORRUPT, **kw)

    def naive_cell(L: int, p: int) -> None:
        model.run(CORRUPT, [wb.Patch(f"resid_post.{L}", source=CLEAN, positions=[p])], top_k=1)

    sample = random.Random(0).sample(cells, SAMPLE)
    naive_cell(*sample[0])
    t = time.perf_counter()
    for L, p in sample:
        naive_cell(L, p)
    per_cell = (time.perf_counter() - t) / SAMPLE
    naive_total = per_cell * len(cells)

    # The stricter naive loop: clean activations cached once, then one 1-row forward per cell
    # with a plain PyTorch hook writing the clean value (what a hand-written loop would do).
    hf, layers = model.hf, model.hf.model.layers
    ids = model.tokenize(CORRUPT).input_ids
    clean_ids = model.tokenize(CLEAN).input_ids
    cache: dict[int, torch.Tensor] = {}
    hooks = [layers[i].register_forward_hook(lambda m, a, o, i=i: cache.__setitem__(i, o.detach().clone()))
             for i in range(model.n_layers)]
    with torch.inference_mode():
        hf(input_ids=clean_ids)
    for h in hooks:
        h.remove()

    def hook_cell(L: int, p: int) -> None:
        def write(_m, _a, out):
            out[:, p] = cache[L][:, p]
            return out
        h = layers[L].register_forward_hook(write)
        try:
            with torch.inference_mode():
                hf(input_ids=ids, logits_to_keep=1)  # the last position's logits: all the metric reads
        finally:
            h.remove()

    hook_cell(*sample[0])
    t = time.perf_counter()
    for L, p in sample:
        hook_cell(L, p)
    hook_total = (time.perf_counter() - t) / SAMPLE * len(cells)

    batched, attrib = [], []
    exact = approx = None
    for _ in range(2):
        t = time.perf_counter()
        exact = activation_patching(model, CLEAN, CORRUPT, batch_size=64, **kw)
        batched.append(time.perf_counter() - t)
        t = time.perf_counter()
        approx = attribution_patching(model, CLEAN, CORRUPT, **kw)
        attrib.append(time.perf_counter() - t)
    for _ in range(3):
        t = time.perf_counter()
        attribution_patching(model, CLEAN, CORRUPT, **kw)
        attrib.append(time.perf_counter() - t)
    b, a = min(batched), statistics.median(attrib)

    print(f"\nnaive loop: one patched forward per cell, measured on {SAMPLE} random cells: "
          f"{per_cell * 1000:.1f} ms/cell, extrapolated to {len(cells)} cells: {naive_total:.2f} s")
    print(f"stricter naive loop: clean cached once, one 1-row forward + PyTorch hook per cell: "
          f"{hook_total / len(cells) * 1000:.1f} ms/cell, extrapolated: {hook_total:.2f} s")
    speed = naive_total / b
    print(f"batched sweep (batch_size 64, best of 2): {b:.2f} s   -> {speed:.1f}x faster than naive "
          f"(target ≥ 4x: {'met' if speed >= 4 else 'NOT met'}); {hook_total / b:.1f}x faster than the stricter loop")
    ratio = b / a
    print(f"attribution patching (median of 5): {a * 1000:.1f} ms   -> {ratio:.1f}x faster than the exact sweep "
          f"(target ≥ 20x: {'met' if ratio >= 20 else 'NOT met'})")
    rho = spearman(exact.values, approx.values)
    rho_raw = spearman(exact.raw, approx.raw)
    print(f"Spearman rank correlation attribution vs exact heatmap: {rho:.3f} (normalized values; raw {rho_raw:.3f})")
    print(f"clean logit diff {exact.clean_metric:.3f}, corrupted {exact.corrupted_metric:.3f}")


if __name__ == "__main__":
    main()
