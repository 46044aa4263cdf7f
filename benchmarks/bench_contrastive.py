"""Contrastive neurons on the embedded model: 64 prose + 64 code texts from Python's docs.

Floor: bare ``torch.inference_mode()`` forwards of the Hugging Face model's body over the very same
batches (the texts sorted by length, ``batch_size`` 8), stopping before the unembedding
(``hf.base_model``), as the streaming pass does (it needs no logits); the forwards unembedding
the last position (``logits_to_keep=1``) and every position are shown too. Compared: ``contrastive_neurons``
over all 30 layers × 1536 neurons without the permutation test (the streaming pass: per-text
reductions inside the nnsight trace), the permutation test alone (1000 shuffles of 128 labels,
46,080 neurons), and the whole call with it. Prints medians and ratios measured in the same run.
"""

from __future__ import annotations

import re
import time

import torch
from _common import interleaved, report

import workbench as wb
from workbench.neurons.contrastive import contrastive_neurons
from workbench.neurons.stats import auroc_and_pvalues
from workbench.neurons.streaming import length_batches, token_lengths


def texts(n: int = 64) -> tuple[list[str], list[str]]:
    """Short prose sentences and short code lines from `pydoc_data.topics`."""
    from pydoc_data.topics import topics

    prose, code = [], []
    for v in topics.values():
        for line in v.splitlines():
            s = line.strip()
            if line.startswith("   ") and (">>>" in s or "=" in s or s.startswith(("def ", "class ", "for ", "if "))):
                s = s.removeprefix(">>> ").strip()
                if 15 < len(s) < 80 and s.isascii() and s not in code:
                    code.append(s)
        for s in re.split(r"(?<=[.!?])\s+", " ".join(v.split())):
            if 40 < len(s) < 120 and s.isascii() and s not in prose and ">>>" not in s:
                prose.append(s)
    return prose[:n], code[:n]


def main() -> None:
    torch.set_num_threads(1)
    model = wb.load(progress=False)
    prose, code = texts()
    sets = {"prose": prose, "code": code}
    all_texts = prose + code
    lengths = token_lengths(model, all_texts)
    batches = [model.tokenize([all_texts[i] for i in b]) for b in length_batches(lengths, 8)]
    print(f"{len(prose)} + {len(code)} texts, {sum(lengths)} tokens (mean {sum(lengths) / len(lengths):.1f}), "
          f"{len(batches)} batches of 8")
    hf = model.hf

    def floor() -> None:  # the body alone: the streaming pass stops before the unembedding
        with torch.inference_mode():
            for b in batches:
                hf.base_model(input_ids=b.input_ids, attention_mask=b.attention_mask)

    def forward_last_logits() -> None:
        with torch.inference_mode():
            for b in batches:
                hf(input_ids=b.input_ids, attention_mask=b.attention_mask, logits_to_keep=1)

    def forward_all_logits() -> None:
        with torch.inference_mode():
            for b in batches:
                hf(input_ids=b.input_ids, attention_mask=b.attention_mask)

    def stream() -> None:
        contrastive_neurons(model, sets, permutations=0, progress=False)

    med = interleaved({"floor: bare forwards over the same batches": floor,
                       "contrastive_neurons, permutations=0": stream,
                       "bare forwards, logits_to_keep=1": forward_last_logits,
                       "bare forwards with logits at every position": forward_all_logits}, repeats=5, warmup=1)
    report(f"Contrastive neurons (streaming pass) vs bare forwards, {model.n_layers} layers × {model.d_mlp}, "
           "1 thread", med, "floor: bare forwards over the same batches")

    res = contrastive_neurons(model, sets, permutations=0, progress=False)
    flat = res.values.reshape(len(all_texts), -1)
    in_set = res.labels == 0
    times = []
    for _ in range(3):
        t = time.perf_counter()
        auroc_and_pvalues(flat, in_set, permutations=1000, seed=0)
        times.append(time.perf_counter() - t)
    print(f"\nPermutation test alone: 1000 shuffles × {flat.shape[1]} neurons × {flat.shape[0]} texts: "
          f"{min(times) * 1000:.0f} ms (best of 3)")
    t = time.perf_counter()
    full = contrastive_neurons(model, sets, permutations=1000, progress=False)
    print(f"Whole call with permutations=1000: {time.perf_counter() - t:.2f} s")
    sig = int(((full.p_value[0] < 0.01) & (full.auroc[0] > 0.5)).sum())
    print(f"{sig} neurons higher on prose with p < 0.01; best by AUROC:")
    print(full.top(5, set="code").to_string())


if __name__ == "__main__":
    main()
