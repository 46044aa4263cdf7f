"""Quality of the default TopK SAE on the embedded model: train it (defaults), then evaluate on held-out text.

Trains ``train_sae(model, "resid_post.9")`` with every default (4608 latents, k=32, ~1M token-steps)
on the first 500 passages of the default corpus, checkpointing under ``--out`` (a rerun resumes or
reuses it), saves it in the SAELens format, and evaluates it on the remaining passages: FVU, L0,
dead and dense fractions, CE clean / spliced / zero-ablated, ΔCE, loss recovered and KL. Prints the
training wall time. ``--threads`` (default 2) sets torch's threads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.dictionaries.train import train_sae


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path.home() / ".cache" / "interp-workbench" / "sae-default-resid_post.9"))
    ap.add_argument("--site", default="resid_post.9")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-tokens", type=int, default=12_000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = wb.load(progress=False)
    passages = wb.default_corpus()
    train, held_out = passages[:500], passages[500:]
    out = Path(args.out)
    t = time.perf_counter()
    d = train_sae(model, args.site, train, checkpoint=out / "checkpoint")
    took = time.perf_counter() - t
    d.save(out / "saelens")
    tr = d.meta.get("training", {})
    print(f"\nDefault SAE on {args.site}: {d.d_sae} latents, k={d.k}; train call {took / 60:.1f} min "
          f"(a resumed or finished checkpoint takes less); training facts: {tr}")
    ev = wb.evaluate_dictionary(model, d, held_out, max_tokens=args.eval_tokens)
    print(ev.to_pandas().to_string())


if __name__ == "__main__":
    main()
