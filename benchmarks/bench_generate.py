"""Steered generation of 32 tokens: the engine vs the same steering with a plain PyTorch hook.

Prints medians and ratios measured in the same run. Target: ≤ 1.05x.
"""

from __future__ import annotations

import torch
from _common import interleaved, report

import workbench as wb


def main() -> None:
    torch.set_num_threads(1)
    model = wb.load(progress=False)
    prompt = "I think that the weather today is"
    layer, strength = 10, 4.0
    direction = torch.randn(model.d_model)
    direction /= direction.norm()
    batch = model.tokenize(prompt)
    ids, mask = batch.input_ids, batch.attention_mask
    hf, tok = model.hf, model.tokenizer
    n = 32

    def hook(_mod, _inp, out):
        return out + strength * direction

    def plain() -> list[int]:
        h = hf.model.layers[layer].register_forward_hook(hook)
        try:
            with torch.inference_mode():
                out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=tok.pad_token_id)
        finally:
            h.remove()
        return out[0, ids.shape[1]:].tolist()

    spec = [wb.steer(layer, direction, strength)]

    def engine() -> list[int]:
        return model.generate(prompt, spec, max_new_tokens=n, min_new_tokens=n).token_ids

    a, b = plain(), engine()
    print(f"identical tokens: {a == b} ({len(a)} vs {len(b)} tokens)")
    med = interleaved({"plain PyTorch forward hook + hf.generate": plain, "engine generate + Steer spec": engine},
                      repeats=10, warmup=1)
    report(f"Steered generation, {n} new tokens, 1 thread", med, "plain PyTorch forward hook + hf.generate", 1.05)


if __name__ == "__main__":
    main()
