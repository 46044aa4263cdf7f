"""A subspace interchange inside `run` vs a bare forward doing the same work (embedded model).

`run(target, [interchange_subspace(sub, source)])` runs the target and its source as one
two-row batch and unembeds the last position only, so the baseline is a bare ``torch.no_grad()``
forward of the same two rows with ``logits_to_keep=1``. The subspace is k=8 random orthonormal
directions at ``resid_post.15``. A plain-PyTorch forward hook doing the same interchange, and a
one-row bare forward, are shown for reference. Prints medians and ratios measured in the same
run. Target: ≤ 1.05x.
"""

from __future__ import annotations

import torch
from _common import interleaved, report

import workbench as wb
from workbench.causal import Subspace, interchange_subspace

TARGET = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"
SOURCE = "The slow green frog hops under the busy dog while the old bird sings on the cold roof"
SITE, K = "resid_post.15", 8


def main() -> None:
    torch.set_num_threads(1)
    model = wb.load(progress=False)
    batch = model.tokenize(TARGET, [SOURCE])
    lengths = batch.lengths
    assert lengths[0] == lengths[1] and 18 <= lengths[0] <= 22, lengths
    ids, mask = batch.input_ids, batch.attention_mask
    hf = model.hf
    q, _ = torch.linalg.qr(torch.randn(model.d_model, K, generator=torch.Generator().manual_seed(0)))
    sub = Subspace(SITE, q.T)
    every = [interchange_subspace(sub, SOURCE)]
    last = [interchange_subspace(sub, SOURCE, positions=[-1])]
    layer = int(SITE.split(".")[1])
    block = hf.model.layers[layer]
    b = sub.basis

    def hook(_m, _args, out):  # the same interchange as a hand-written hook on the two-row batch
        h = out[0] if isinstance(out, tuple) else out
        h[:1] += (h[1:2] @ b.T - h[:1] @ b.T) @ b
        return out

    def bare() -> None:
        with torch.no_grad():
            hf(input_ids=ids, attention_mask=mask, logits_to_keep=1)

    def bare_one_row() -> None:
        with torch.no_grad():
            hf(input_ids=ids[:1], attention_mask=mask[:1], logits_to_keep=1)

    def hooked() -> None:
        handle = block.register_forward_hook(hook)
        try:
            with torch.no_grad():
                hf(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        finally:
            handle.remove()

    # the workbench result equals the hook's
    with torch.no_grad():
        handle = block.register_forward_hook(hook)
        try:
            want = hf(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[0, -1]
        finally:
            handle.remove()
    got = model.run(TARGET, every, top_k=1, logits="last").logits[0]
    assert torch.allclose(got, want.float(), atol=1e-3, rtol=1e-3), (got - want).abs().max()

    base = "bare forward, 2 rows, logits_to_keep=1"
    refs = {"hook interchange, 2 rows": hooked, "bare forward, target row only": bare_one_row}
    med = interleaved({base: bare, f"run(): interchange k={K}, every position": lambda: model.run(TARGET, every),
                       f"run(): interchange k={K}, last position": lambda: model.run(TARGET, last),
                       **refs}, repeats=30)
    shown = {k: med.pop(k) for k in refs}
    report(f"Subspace interchange @ {SITE} overhead, {lengths[0]} tokens x 2 rows (target + source), 1 thread",
           med, base, 1.05)
    for k, v in shown.items():
        print(f"  {k + ' (reference)':<48} {v * 1000:9.2f} ms   {v / med[base]:5.3f}x")


if __name__ == "__main__":
    main()
