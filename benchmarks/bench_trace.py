"""Trace with captures and interventions vs a bare torch.no_grad() forward (20-token prompt).

`run()` unembeds the last position only, so the baseline is a bare forward that does the same
(`logits_to_keep=1`); a bare forward with every position's logits is shown for reference.
Prints medians and ratios measured in the same run. Target: ≤ 1.05x.
"""

from __future__ import annotations

import torch
from _common import interleaved, report

import workbench as wb


def main() -> None:
    torch.set_num_threads(1)
    model = wb.load(progress=False)
    prompt = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"
    batch = model.tokenize(prompt)
    assert 18 <= batch.input_ids.shape[1] <= 22, batch.input_ids.shape
    ids, mask = batch.input_ids, batch.attention_mask
    hf = model.hf
    specs = [wb.zero_neurons(10, [1, 2, 3]), wb.steer(12, torch.randn(model.d_model), 2.0), wb.ablate_heads(5, [0])]
    capture = ["neurons.10", "resid_post.20"]

    def bare() -> None:
        with torch.no_grad():
            hf(input_ids=ids, attention_mask=mask, logits_to_keep=1)

    def bare_all_logits() -> None:
        with torch.no_grad():
            hf(input_ids=ids, attention_mask=mask)

    def traced() -> None:
        model.run(prompt, specs, capture=capture)

    def traced_plain() -> None:
        model.run(prompt)

    base, ref = "bare forward (no_grad, logits_to_keep=1)", "bare forward, every position's logits"
    med = interleaved({base: bare, "run(): 3 interventions + 2 captures + top-k": traced,
                       "run(): no interventions": traced_plain, ref: bare_all_logits}, repeats=40)
    full = med.pop(ref)
    report(f"Trace overhead, {ids.shape[1]} tokens, 1 thread", med, base, 1.05)
    print(f"  {ref + ' (reference, not judged)':<48} {full * 1000:9.2f} ms   {full / med[base]:5.3f}x")


if __name__ == "__main__":
    main()
