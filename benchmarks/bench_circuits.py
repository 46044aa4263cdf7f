"""Circuits on the embedded model: edge attribution, exact edge patching and faithfulness curves.

Task: IOI (20 pairs, ABC corruption, `ioi_task`), metric logit difference (indirect object −
subject), graph without q/k/v split (SmolLM2-135M: 392 nodes, 57,511 edges).

- EAP (one corrupted forward, one clean forward + backward) against one forward + one backward of
  the same clean batch (plain HF, gradient w.r.t. the input embeddings only). Target ≤ 1.5×.
- EAP-IG, m = 5 steps batched, against EAP. Target ≤ 1.2 × (m + 1) = 7.2×.
- Exact patching of the top 200 edges (by |EAP-IG|), batched, against one `patch_edges` call per edge
  (same recorded corrupted run). The per-edge loop is timed on a sample and extrapolated (said so).
  Target ≥ 10× faster.
- Spearman rank correlation of EAP and EAP-IG scores with the exact effects of those 200 edges.
- A 20-point faithfulness curve against 20 bare forwards of the same batch. Target ≤ 1.5×.

Run: ``python benchmarks/bench_circuits.py`` (about 20-40 minutes on a loaded 2-core CPU).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workbench as wb  # noqa: E402
from workbench.circuits import ComputationGraph, eap, faithfulness_curve, patch_edges  # noqa: E402
from workbench.circuits.edges import record_outputs  # noqa: E402

SAMPLE = 6  # per-edge forwards timed for the extrapolation
REPEATS = 3


def ioi(model):
    try:
        from workbench.circuits.task_generators import ioi_task

        return ioi_task(model, n=20, seed=0)
    except ImportError:  # pragma: no cover - before the task generators landed
        from workbench.circuits import Task

        names = [" Mary", " John", " Alice", " Bob", " Tom", " James", " Sarah", " Emma", " Anna", " Paul"]
        tok = model.tokenizer
        clean, corr, ans, wrong = [], [], [], []
        for i in range(20):
            a, b = names[i % 10], names[(i + 3) % 10]
            c1, c2, c3 = names[(i + 5) % 10], names[(i + 6) % 10], names[(i + 7) % 10]
            clean.append(tok(f"When{a} and{b} went to the store,{b} gave a drink to")["input_ids"])
            corr.append(tok(f"When{c1} and{c2} went to the store,{c3} gave a drink to")["input_ids"])
            ans.append(tok(a)["input_ids"][0])
            wrong.append(tok(b)["input_ids"][0])
        return Task("ioi", torch.tensor(clean), torch.tensor(corr), torch.tensor(ans), torch.tensor(wrong),
                    model_name=model.name)


def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def median_of(f, n=REPEATS):
    ts = []
    out = None
    for _ in range(n):
        t, out = timed(f)
        ts.append(t)
    return statistics.median(ts), out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main(sections: tuple[str, ...] = ("attribution", "patching", "curve")) -> None:
    """Run the sections named on the command line (default: all)."""
    torch.manual_seed(0)
    model = wb.load(progress=False)
    task = ioi(model)
    graph = ComputationGraph.from_model(model)
    n, s = task.clean_ids.shape
    print(f"model {model.name}: graph {graph.n_nodes} nodes, {graph.n_edges} edges "
          f"({graph.n_senders} senders, {graph.n_receivers} receivers); split_qkv: "
          f"{ComputationGraph.from_model(model, split_qkv=True).n_edges} edges")
    print(f"task {task.name}: {n} pairs x {s} tokens; torch threads {torch.get_num_threads()}")
    hf = model.hf
    emb_mod = hf.get_input_embeddings()
    ids = task.clean_ids

    def fwd_bwd():
        with torch.enable_grad():
            e = emb_mod(ids).detach().requires_grad_()
            lg = hf(inputs_embeds=e, use_cache=False, logits_to_keep=1).logits[:, -1]
            torch.autograd.grad(task.metric(lg.float()).sum(), e)

    def bare():
        with torch.inference_mode():
            hf(input_ids=ids, use_cache=False, logits_to_keep=1)

    # -- EAP and EAP-IG ---------------------------------------------------------------------------------
    eap(model, task)  # warm-up (weights cache, nnsight)
    if "attribution" not in sections:
        s_eap, s_ig = eap(model, task), eap(model, task, "eap-ig", steps=5)
    else:
        s_eap, s_ig = attribution(model, task, fwd_bwd, bare)
    if "patching" in sections:
        patching(model, task, graph, s_eap, s_ig, bare)
    if "curve" in sections:
        curve(model, task, graph, s_eap, s_ig, bare)


def attribution(model, task, fwd_bwd, bare):
    t_fb, t_fw, t_eap, t_ig = [], [], [], []
    for _ in range(REPEATS):  # interleaved
        t_fb.append(timed(fwd_bwd)[0])
        t_fw.append(timed(bare)[0])
        t, s_eap = timed(lambda: eap(model, task))
        t_eap.append(t)
        t, s_ig = timed(lambda: eap(model, task, "eap-ig", steps=5))
        t_ig.append(t)
    fb, fw, te, ti = (statistics.median(x) for x in (t_fb, t_fw, t_eap, t_ig))
    print("\nEdge attribution (medians of interleaved runs)")
    print(f"  forward + backward (plain HF)      {fb:8.2f} s")
    print(f"  EAP's own floor: + one bare forward of the corrupted prompts ({fw:.2f} s) = {fw + fb:.2f} s = "
          f"{(fw + fb) / fb:.2f}x fwd+bwd before any edge is scored; EAP is {te / (fw + fb):.2f}x that floor")
    print(f"  EAP                                {te:8.2f} s   {te / fb:5.2f}x fwd+bwd  (target <= 1.5x: "
          f"{'met' if te / fb <= 1.5 else 'NOT met'})")
    print(f"  EAP-IG m=5                         {ti:8.2f} s   {ti / te:5.2f}x EAP      (target <= 7.2x: "
          f"{'met' if ti / te <= 7.2 else 'NOT met'})")
    print(f"  clean metric {s_eap.clean_metric:.3f}, corrupted {s_eap.corrupted_metric:.3f}")
    return s_eap, s_ig


def patching(model, task, graph, s_eap, s_ig, bare):

    # -- exact patching of the top 200 edges ---------------------------------------------------------------
    top = s_ig.order()[:200]
    rec, _ = record_outputs(model, graph, task.corrupted_ids)
    sets = [[int(e)] for e in top]
    t_batch, exact = timed(lambda: patch_edges(model, task, sets, graph=graph, source=rec, progress=True))
    per = []
    for e in top[:SAMPLE]:
        per.append(timed(lambda e=e: patch_edges(model, task, [[int(e)]], graph=graph, source=rec))[0])
    t_one = statistics.median(per)
    naive = t_one * len(sets)
    print("\nExact patching of the top 200 edges (by |EAP-IG|)")
    print(f"  one patch_edges call per edge      {t_one:8.2f} s/edge, x200 = {naive:8.1f} s (extrapolated from "
          f"{SAMPLE} edges)")
    print(f"  batched                            {t_batch:8.2f} s   {naive / t_batch:5.2f}x faster (target >= 10x: "
          f"{'met' if naive / t_batch >= 10 else 'NOT met'})")
    # the layers each way runs, where cost follows the arithmetic: a set into the logits needs no layer, a set
    # whose earliest receiver is at layer L runs layers L.. once the clean run (every layer) is recorded
    n_layers = graph.n_layers
    first = graph.receiver_layers[graph.edge_receiver[top]]
    runs = torch.where(first < n_layers, n_layers - first, torch.zeros_like(first))
    batched_layers = n_layers + int(runs.sum())
    naive_layers = int((runs + torch.where(first > 0, n_layers, 0)).sum())
    print(f"  layer forwards: per edge {naive_layers}, batched {batched_layers} (the clean run once): on a machine "
          f"whose time follows the arithmetic, batching can gain at most {naive_layers / batched_layers:.2f}x here; "
          f"{int((first == n_layers).sum())} of the 200 edges enter the logits")
    t_bare = median_of(bare)[0]
    print(f"  bare forward of the 20 pairs       {t_bare:8.2f} s (x200 = {t_bare * 200:.1f} s)")
    clean_m = s_eap.clean_metric
    effect = exact - clean_m
    print(f"  Spearman with exact effects: EAP {spearman(s_eap.scores[top], effect):.3f}, "
          f"EAP-IG {spearman(s_ig.scores[top], effect):.3f}")



def curve(model, task, graph, s_eap, s_ig, bare):
    # -- a 20-point faithfulness curve --------------------------------------------------------------------------
    sizes = sorted({int(round(float(x))) for x in torch.logspace(0, torch.log10(torch.tensor(float(graph.n_edges))), 20)})
    while len(sizes) < 20:
        sizes = sorted(set(sizes) | {sizes[-1] - len(sizes)})
    t_curve, curves = timed(lambda: faithfulness_curve(model, task, [s_eap, s_ig], sizes=sizes, progress=True))
    t_curve_one, _ = timed(lambda: faithfulness_curve(model, task, s_ig, sizes=sizes, progress=True))
    t20 = sum(timed(bare)[0] for _ in range(20))
    print(f"\nFaithfulness curve, {len(sizes)} sizes")
    print(f"  20 bare forwards                   {t20:8.2f} s")
    print(f"  one curve (EAP-IG)                 {t_curve_one:8.2f} s   {t_curve_one / t20:5.2f}x (target <= 1.5x: "
          f"{'met' if t_curve_one / t20 <= 1.5 else 'NOT met'})")
    print(f"  two curves (EAP, EAP-IG)           {t_curve:8.2f} s")
    for c in curves:
        print(f"  {c.method:7s} AUC {c.auc:.3f}; 0.8 reached at {c.min_edges(0.8)} edges; values "
              + " ".join(f"{v:.2f}" for v in c.values.tolist()))
    print(f"  sizes {sizes}")


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ("attribution", "patching", "curve"))
