"""RAVEL on the embedded model, held out: fit each method's unit on half the cities, score it on the other half.

    .venv/bin/python scripts/ravel_report.py [--layer 8] [--quick] [--json out.json]

Methods (RAVEL's, at the city's last token): neurons ranked like a sparse probe (``neurons.L``), PCA,
the mean difference, SAE latents (a TopK SAE trained here at ``resid_post.L`` on the default corpus),
DAS and MDAS (``resid_post.L``). Every unit is fitted on the *fit* cities only; cause and isolate are
scored on pairs of *test* cities, which no method saw, and, for comparison, in sample on the fit
cities' pairs. Prints both tables with Wilson 95% intervals and how long each step took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import workbench as wb  # noqa: E402
from workbench.causal import (  # noqa: E402
    RavelWarning,
    load_ravel,
    ravel_features,
    ravel_scores,
    units_from_das,
    units_from_mean_difference,
    units_from_pca,
    units_from_probe,
    units_from_sae,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=8)
    ap.add_argument("--k", type=int, default=8, help="directions (or neurons, latents) per unit")
    ap.add_argument("--das-steps", type=int, default=150)
    ap.add_argument("--quick", action="store_true", help="a smaller SAE and fewer DAS steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    log = {}

    def lap(what: str) -> None:
        log[what] = round(time.perf_counter() - t0 - sum(log.values()), 1)
        print(f"[{what}: {log[what]:.0f} s]", flush=True)

    model = wb.load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RavelWarning)
        ds = load_ravel(model, max_pairs=None, seed=args.seed)
    fit, test = ds.split(0.5, seed=args.seed)
    print(f"fit: {fit}\ntest: {test}")
    lap("load")
    L, k = args.layer, args.k
    rsite, nsite = f"resid_post.{L}", f"neurons.{L}"
    rfeat, nfeat = ravel_features(model, fit, rsite), ravel_features(model, fit, nsite)
    units = {"neurons": units_from_probe(model, fit, nsite, k, features=nfeat),
             "pca": units_from_pca(model, fit, rsite, k, features=rfeat),
             "meandiff": units_from_mean_difference(model, fit, rsite, features=rfeat)}
    lap("fit neurons, pca, meandiff")
    corpus = wb.default_corpus()
    sae = wb.train_sae(model, rsite, corpus[:400], n_latents=1152, k=16, batch_size=1024,
                       data_tokens=12_000 if args.quick else 30_000, max_tokens=80_000 if args.quick else 300_000,
                       holdout_tokens=2048, progress=False)
    facts = sae.meta["training"]
    print(f"SAE at {rsite}: held-out FVU {facts['heldout_fvu']:.3f}, {facts['steps']} steps")
    units["sae"] = units_from_sae(sae, model, fit, k, features=rfeat)
    lap("train SAE")
    steps = 60 if args.quick else args.das_steps
    das_opts = {"steps": steps, "lr": 0.2, "batch_size": 16, "holdout": 0.2, "seed": args.seed}
    units["das"] = units_from_das(model, fit, rsite, k, **das_opts)
    lap("train DAS")
    units["mdas"] = units_from_das(model, fit, rsite, k, mdas=True, **das_opts)
    lap("train MDAS")
    for name in ("das", "mdas"):
        print(name, {a: round(u.meta["iia"] or 0, 2) for a, u in units[name].items()}, "(held-out pairs of fit cities)")
    held = ravel_scores(model, test, units)
    lap("score on test cities")
    insample = ravel_scores(model, fit, units)
    lap("score on fit cities")
    print(f"\nHeld out: units fitted on {fit.n_entities} cities, scored on {test.n_entities} others "
          f"({rsite} / {nsite}, k={k}, at the city's last token)")
    print(held)
    print(f"\nIn sample: the same units scored on the {fit.n_entities} fit cities")
    print(insample)
    print("\nchance (cause):", {a: round(v, 2) for a, v in held.report["chance_cause"].items()})
    print("times (s):", log)
    if args.json:
        args.json.write_text(json.dumps({"heldout": held.rows, "insample": insample.rows, "times_s": log,
                                         "fit": sorted(fit.entities), "test": sorted(test.entities),
                                         "layer": L, "k": k}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
