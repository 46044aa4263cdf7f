"""Dictionary interventions in `model.run`: FeatureEdit (one latent scaled) and Splice vs the bare forward.

The embedded model, a TopK dictionary on ``resid_post.9`` (random: 4608 latents, k=32, unit decoder
rows, encoder = decoder transposed; or a trained one: ``python bench_sae_splice.py PATH``), 1 thread,
calls interleaved. Two batch shapes: one 20-token prompt, and 4 windows of 64 tokens. Baseline: the
HF forward under inference mode unembedding the last position only (what ``model.run`` does for
equal-length prompts). Also shown: the same FeatureEdit as a plain PyTorch forward hook (what a user
would write by hand). Target: FeatureEdit and Splice ≤ 1.2x the bare forward.
"""

from __future__ import annotations

import sys

import torch
from _common import interleaved, report

import workbench as wb
from workbench.core.activations import token_windows
from workbench.dictionaries.dictionary import Dictionary
from workbench.dictionaries.features import FeatureEdit, Splice

LAYER = 9


def random_topk(model: wb.Model, n: int = 4608, k: int = 32, seed: int = 0) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(n, model.d_model, generator=g)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    return Dictionary(W_enc=W_dec.T.contiguous(), b_enc=torch.zeros(n), W_dec=W_dec, b_dec=torch.zeros(model.d_model),
                      architecture="topk", k=k, site=f"resid_post.{LAYER}", meta={"name": "random-topk"})


def bench_shape(model: wb.Model, d: Dictionary, label: str, batch) -> None:
    hf, block = model.hf, model.hf.model.layers[LAYER]
    ids = batch.input_ids
    x = model.run(batch, capture=[d.site]).activations[d.site]
    f = int(d.encode(x).sum((0, 1)).argmax())  # a latent that fires here
    edit, splice = FeatureEdit(d, [f], "scale", 4.0), Splice(d)

    def hook(_m, _a, out):
        acts = d.encode(out)
        return out + (acts[..., f:f + 1] * 3.0) @ d.W_dec[f:f + 1]  # scale by 4: add 3 x acts x row

    def bare():
        with torch.inference_mode():
            return hf(input_ids=ids, logits_to_keep=1).logits

    def hooked():
        h = block.register_forward_hook(hook)
        try:
            with torch.inference_mode():
                return hf(input_ids=ids, logits_to_keep=1).logits
        finally:
            h.remove()

    def run(specs):
        return lambda: model.run(batch, specs, top_k=10)

    got = model.run(batch, [edit], top_k=1).logits
    want = hooked()[:, -1]
    print(f"{label}: latent {f}; engine FeatureEdit vs hand-written hook, max |Δlogit| = "
          f"{(got - want).abs().max().item():.2e}")
    med = interleaved({"HF forward (inference mode, last position)": bare,
                       "HF forward + hand-written FeatureEdit hook": hooked,
                       "model.run, no interventions": run([]),
                       "model.run + FeatureEdit (1 latent scaled)": run([edit]),
                       "model.run + Splice": run([splice])}, repeats=15, warmup=2)
    report(f"{d.architecture} dictionary, {d.d_sae} latents (k={d.k}) on {d.site}; {label}; 1 thread", med,
           "HF forward (inference mode, last position)", 1.2)


def main() -> None:
    torch.set_num_threads(1)
    model = wb.load(progress=False)
    d = Dictionary.load(sys.argv[1], model=model) if len(sys.argv) > 1 else random_topk(model)
    wins = [w for _, w in zip(range(4), token_windows(model.tokenizer, None, 64), strict=False)]
    bench_shape(model, d, "1 prompt x 20 tokens", model.batch_from_ids([wins[0][:20]]))
    bench_shape(model, d, "4 windows x 64 tokens", model.batch_from_ids(wins))


if __name__ == "__main__":
    main()
