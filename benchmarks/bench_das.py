"""DAS training throughput (steps/s) vs a minimal hand-written PyTorch loop on the same cached activations.

Embedded model (SmolLM2-135M, 30 layers), site ``resid_post.15``, k=4, the last position, 32
counterfactual pairs (a colour recalled: "My car is red. What colour is my car? It is" -> " red"),
batch 16, 1 thread. `train_das` caches the base's residual stream at the site and the source's
site values once, then each step runs only layers 16-29 (the layers below are stubbed), the final
norm and the unembedding of the last position, backward to the basis, and an Adam step.

The reference does the same work by hand, written for the Llama layout: the cached residual at
``resid_post.15`` with the interchange at the last position, then ``layers[16:]`` called
directly with the rotary embeddings and a causal mask, the final norm, ``lm_head`` on the last
position, cross-entropy, ``backward``, Adam. Both start from the same basis and draw the same
batches, so their first losses must agree (checked). The figure is the training loop alone
(``settings["train_time_s"]``), caching and the final IIA excluded. Target: DAS >= 0.9x the
reference's steps/s.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

import workbench as wb
from workbench.causal import counterfactual_pairs, train_das

SITE, LAYER, K, STEPS, BATCH, SEED, LR = "resid_post.15", 15, 4, 20, 16, 0, 1e-2
OBJECTS = ["car", "bag", "hat", "cup", "ball", "pen", "bike", "door"]
COLOURS = [" red", " blue", " green", " black"]


def make_pairs(model) -> list[tuple[str, str, str, str]]:
    out = []
    for i, obj in enumerate(OBJECTS):
        for j, c in enumerate(COLOURS):
            c2 = COLOURS[(j + 1 + i) % len(COLOURS)]
            if c2 == c:
                continue
            base = f"My {obj} is{c}. What colour is my {obj}? It is"
            src = f"My {obj} is{c2}. What colour is my {obj}? It is"
            if len(model.to_str_tokens(base)) == len(model.to_str_tokens(src)):
                out.append((base, src, c, c2))
    return out[:32]


def batch_idx(n: int, step: int) -> torch.Tensor:
    """The batches `train_das` draws with holdout=0 (epochs of permutations from (seed, epoch))."""
    pos, need, parts = step * BATCH, min(BATCH, n), []
    while need:
        e, off = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(SEED * 1_000_003 + e))
        take = min(need, n - off)
        parts.append(perm[off:off + take])
        pos, need = pos + take, need - take
    return torch.cat(parts)


def reference(model, pairs) -> tuple[float, list[float]]:
    """The hand-written loop: (seconds for STEPS steps, losses)."""
    p = counterfactual_pairs(model, pairs)
    hf = model.hf
    base = torch.tensor(p.base)
    src = torch.tensor(p.source)
    with torch.no_grad():  # the same cache: base stream and source values at the site
        hb = hf(input_ids=base, output_hidden_states=True).hidden_states[LAYER + 1]
        hs = hf(input_ids=src, output_hidden_states=True).hidden_states[LAYER + 1][:, -1]
    tgt = torch.tensor(p.source_answers)
    w = torch.nn.Parameter(torch.randn(K, model.d_model, generator=torch.Generator().manual_seed(SEED)))
    opt = torch.optim.Adam([w], lr=LR)
    S = base.shape[1]
    pos_ids = torch.arange(S)[None]
    mask = torch.full((S, S), float("-inf")).triu(1)[None, None]
    layers = hf.model.layers[LAYER + 1:]
    losses = []
    t = time.perf_counter()
    for step in range(STEPS):
        idx = batch_idx(len(base), step)
        q, r = torch.linalg.qr(w.T)
        b = (q * torch.sign(torch.diagonal(r))).T
        h = hb[idx].clone()
        h[:, -1] = h[:, -1] + ((hs[idx] - h[:, -1]) @ b.T) @ b
        pe = hf.model.rotary_emb(h, pos_ids)
        for layer in layers:
            h = layer(h, attention_mask=mask, position_embeddings=pe, position_ids=pos_ids)
        logits = hf.lm_head(hf.model.norm(h[:, -1]))
        loss = F.cross_entropy(logits.float(), tgt[idx])
        opt.zero_grad()
        loss.backward(inputs=[w])
        opt.step()
        losses.append(float(loss.detach()))
    return time.perf_counter() - t, losses


def main() -> None:
    torch.set_num_threads(1)
    model = wb.load(progress=False)
    pairs = make_pairs(model)
    print(f"{len(pairs)} pairs of {len(model.to_str_tokens(pairs[0][0]))} tokens; site {SITE}, k={K}, batch {BATCH}, "
          f"{STEPS} steps, 1 thread")
    ours, refs = [], []
    for _ in range(3):  # interleaved
        res = train_das(model, SITE, pairs, K, steps=STEPS, lr=LR, batch_size=BATCH, holdout=0.0, seed=SEED,
                        progress=False)
        ours.append(res.settings["train_time_s"])
        t, losses = reference(model, pairs)
        refs.append(t)
        got = [h["loss"] for h in res.history]
        assert abs(got[0] - losses[0]) < 1e-3 * max(1.0, abs(losses[0])), (got[:3], losses[:3])
    a, b = statistics.median(ours), statistics.median(refs)
    print(f"  train_das           {STEPS / a:7.2f} steps/s ({a / STEPS * 1000:7.1f} ms/step)")
    print(f"  hand-written loop   {STEPS / b:7.2f} steps/s ({b / STEPS * 1000:7.1f} ms/step)")
    ratio = b / a
    print(f"  ratio {ratio:.3f}x of the reference's throughput (target >= 0.9x: {'met' if ratio >= 0.9 else 'NOT met'})")
    print(f"  first losses: train_das {got[:3]}, reference {losses[:3]}; train IIA after {STEPS} steps "
          f"{res.train_iia:.2f} (no intervention {res.baseline:.2f}, model accuracy {res.model_accuracy:.2f})")


if __name__ == "__main__":
    main()
