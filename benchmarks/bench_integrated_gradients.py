"""Integrated gradients on the embedded model: m = 20 steps against 20 bare forward+backward passes.

Same work in both arms: a batch of 20 rows of the prompt (16 tokens), the last position's logits
only (``logits_to_keep=1``), the gradient of the summed logit difference " Paris" − " Rome" taken
down to the site and no further (``torch.autograd.grad``, no weight gradients).

- bare: a plain Hugging Face forward of the 20-row batch with a forward pre-hook that keeps the
  site tensor (MLP neurons, the down projection's input), then ``autograd.grad`` of the metric
  with respect to it. No interpolation, no bookkeeping: the floor a hand-written IG cannot beat
  without sharing work between rows.
- workbench: `integrated_gradients(model, prompt, site, steps=20)`: one trace, the site
  interpolated, the baseline endpoint as a 21st row, the completeness gap computed.

Target: workbench ≤ 1.2× bare. The workbench arm runs the layers before the site once on one row
and grows the batch at the site's layer, so a late site is cheaper than the bare arm; layer 0 and
the input embeddings (where nothing is shared) are the honest worst cases and are reported too.
"""

from __future__ import annotations

import warnings

import torch
from _common import interleaved, report

import workbench as wb
from workbench.causal.attribution import input_attribution, integrated_gradients

PROMPT = "When we visited France we learned the Eiffel Tower is located in the city of"
CORRUPT = "When we visited France we learned the Colosseum is located in the city of"  # 16 tokens too
ANSWER, WRONG = " Paris", " Rome"
STEPS = 20


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # completeness warnings: the gaps are printed below
    model = wb.load(progress=False)
    hf = model.hf
    tok = model.tokenizer
    ids1 = torch.tensor([tok(PROMPT, add_special_tokens=True)["input_ids"]])
    ids = ids1.expand(STEPS, -1).contiguous()
    ans, wrong = (tok(t, add_special_tokens=False)["input_ids"][0] for t in (ANSWER, WRONG))
    print(f"prompt: {ids.shape[1]} tokens, batch {STEPS} rows, torch threads = 1")

    def bare(site: str) -> float:
        kept: dict[str, torch.Tensor] = {}
        if site == "embed":
            h = hf.model.embed_tokens.register_forward_hook(lambda m, a, out: kept.__setitem__("x", out))
        else:
            L = int(site.split(".")[1])
            h = hf.model.layers[L].mlp.down_proj.register_forward_pre_hook(lambda m, a: kept.__setitem__("x", a[0]))
        try:
            with torch.enable_grad():
                logits = hf(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()
                m = logits[:, ans] - logits[:, wrong]
                g = torch.autograd.grad(m.sum(), kept["x"])[0]
        finally:
            h.remove()
        return float(g.sum())

    kw = dict(target=ANSWER, foil=WRONG, steps=STEPS, progress=False)
    for site in ("neurons.15", "neurons.0", "embed"):
        if site == "embed":
            def ig(site: str = site) -> None:
                input_attribution(model, PROMPT, baseline="mean", **kw)
        else:
            def ig(site: str = site) -> None:
                integrated_gradients(model, PROMPT, site, **kw)
        med = interleaved({f"bare HF forward+backward, {STEPS} rows": lambda site=site: bare(site),
                           f"integrated_gradients m={STEPS}": ig}, repeats=7, warmup=1)
        report(f"{site}: IG with {STEPS} steps vs {STEPS} bare forward+backward passes (median of 7)", med,
               f"bare HF forward+backward, {STEPS} rows", target=1.2)

    # How good is m = 20 here? The completeness gap, reported with the figures.
    for site, fn in (("neurons.15", lambda m: integrated_gradients(model, PROMPT, "neurons.15", **{**kw, "steps": m})),
                     ("neurons.0 (zero baseline)", lambda m: integrated_gradients(model, PROMPT, "neurons.0",
                                                                                **{**kw, "steps": m})),
                     ("neurons.0 (corrupted baseline)", lambda m: integrated_gradients(
                         model, PROMPT, "neurons.0", baseline=CORRUPT, **{**kw, "steps": m})),
                     ("embed (mean baseline)", lambda m: input_attribution(model, PROMPT, baseline="mean",
                                                                           **{**kw, "steps": m})),
                     ("embed (corrupted baseline)", lambda m: input_attribution(model, PROMPT, baseline=CORRUPT,
                                                                                **{**kw, "steps": m}))):
        for m in (5, 20, 64):
            r = fn(m)
            print(f"  {site}, m={m}: metric {r.metric_input:.4f}, baseline {r.metric_baseline:.4f}, "
                  f"Σ attributions {r.total:.4f}, gap {r.gap:+.2e} ({r.relative_gap:.2%})")


if __name__ == "__main__":
    main()
