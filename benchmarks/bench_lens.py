"""Logit lens over all layers and positions vs its floor (20-token prompt, embedded model).

Floor: one bare ``torch.no_grad()`` forward (every position's logits, which the lens reads for the
last layer and the KL) plus ``n_layers - 1`` bare unembeddings (final norm + lm_head on a
``[seq, d_model]`` tensor): the same work as the lens, which takes the last layer's logits from
the forward instead of unembedding it again. Timed alone. Target: ≤ 1.2x.
Also: the lens restricted to the last position. Prints medians and ratios measured in the same run.
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
    seq = batch.input_ids.shape[1]
    assert 18 <= seq <= 22, seq
    ids, mask = batch.input_ids, batch.attention_mask
    hf = model.hf
    norm, head = hf.model.norm, hf.lm_head
    hs = [torch.randn(seq, model.d_model) for _ in range(model.n_layers - 1)]  # the last layer: the forward's logits

    def floor() -> None:
        with torch.no_grad():
            hf(input_ids=ids, attention_mask=mask)
            for h in hs:
                head(norm(h))

    def lens_all() -> None:
        wb.logit_lens(model, prompt, targets=[" mat"])

    def lens_last() -> None:
        wb.logit_lens(model, prompt, targets=[" mat"], positions=[-1])

    def bare() -> None:
        with torch.no_grad():
            hf(input_ids=ids, attention_mask=mask)

    floor_name = f"floor: bare forward + {len(hs)} unembeddings"
    med = interleaved({floor_name: floor,
                       "logit_lens: all layers × positions": lens_all,
                       "logit_lens: last position only": lens_last,
                       "bare forward alone (no_grad)": bare}, repeats=20)
    report(f"Logit lens vs its floor, {seq} tokens, {model.n_layers} layers, 1 thread", med, floor_name, 1.2)


if __name__ == "__main__":
    main()
