"""Explain + score throughput with the local back end, a cached rerun, and the detection score it earns.

The embedded SmolLM2-135M-Instruct is both the subject model and the explainer/judge
(`LocalChatClient` on the same weights, greedy). Steps:

1. scan ~20k tokens of the default corpus (every MLP neuron of all 30 layers; reused when the
   store at ``--scan`` is complete);
2. pick ``--units`` neurons with the clearest exemplars: the highest ratio of the top activation
   to the standard deviation over the scan (at most ``--per-layer`` per layer), among neurons
   with enough held-out windows for detection;
3. first run: explain each (``--method``, Bills et al. format by default) and score detection
   (Delphi) with a fresh reply cache; units per minute;
4. cached reruns: (a) the explanations file answers (``reuse=True``), (b) the explanations file
   is bypassed and every request is served by the client's SQLite reply cache;
5. a control: each unit scored with another unit's explanation (a judge that ignores the
   explanation scores the same; chance is 0.5).

Prints a table and the mean detection balanced accuracy with the share of units whose 95%
interval lies above 0.5; ``--out results.json`` keeps everything.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

import workbench as wb
from workbench import autointerp as A
from workbench.llm import LocalChatClient


def pick_units(store: wb.neurons.ScanStore, n: int, per_layer: int) -> list[tuple[str, int]]:
    df = store.stats()
    df = df[(df["std"] > 0) & np.isfinite(df["kurtosis"])]
    df = df.assign(ratio=df["max"] / df["std"]).sort_values("ratio", ascending=False)
    out: list[tuple[str, int]] = []
    taken: dict[str, int] = {}
    for site, unit in zip(df["site"], df["unit"], strict=True):
        if taken.get(site, 0) >= per_layer:
            continue
        split = A.holdout_split(store, site, int(unit))
        if len(split.positive) < 4 or len(split.negative) < 4:
            continue
        out.append((site, int(unit)))
        taken[site] = taken.get(site, 0) + 1
        if len(out) == n:
            break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scan", default=str(Path(tempfile.gettempdir()) / "workbench-bench-autointerp" / "scan"))
    p.add_argument("--tokens", type=int, default=20_000)
    p.add_argument("--units", type=int, default=20)
    p.add_argument("--per-layer", type=int, default=2)
    p.add_argument("--method", default="openai", choices=A.METHODS)
    p.add_argument("--per-prompt", type=int, default=5, help="detection examples per prompt")
    p.add_argument("--attempts", type=int, default=2, help="tries per prompt before it is skipped")
    p.add_argument("--no-control", action="store_true")
    p.add_argument("--work", default=None, help="folder for the reply cache and explanations (default: a new temporary "
                   "folder; an existing one makes the 'first run' a cached rerun)")
    p.add_argument("--out", default=None)
    a = p.parse_args()

    t0 = time.perf_counter()
    model = wb.load(progress=False)
    print(f"model loaded in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    store = wb.scan(model, wb.default_corpus(), a.scan, k=20, window=64, batch_size=16, sample=128,
                    max_tokens=a.tokens, progress=False)
    print(f"{store} ({time.perf_counter() - t0:.1f} s)")
    units = pick_units(store, a.units, a.per_layer)
    print(f"{len(units)} units: {', '.join(f'{s}[{u}]' for s, u in units)}")

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench-autointerp-"))
    client = LocalChatClient(model, cache=work / "llm")
    es = A.ExplanationStore(work / "explanations.json")
    score_kw = {"on_error": "skip", "n_boot": 1000, "per_prompt": a.per_prompt, "attempts": a.attempts}

    def run(label: str, explain_kw: dict, score_kw: dict):
        client.reset_usage()
        t = time.perf_counter()
        df = A.explain_units(store, units, client, method=a.method, scorers=("detection",), progress=False,
                             explain_kw=explain_kw, score_kw=score_kw)
        dt = time.perf_counter() - t
        u = client.usage
        print(f"{label:<34} {dt:8.1f} s  {60 * len(units) / dt:8.2f} units/min   requests {u['requests']:4d}  "
              f"cache hits {u['cache_hits']:4d}  tokens {u['prompt_tokens']}+{u['completion_tokens']}")
        return df, dt, u

    print("\nexplain + detection score")
    first, t_first, u_first = run("first run", {"explanations": es}, {"explanations": es, **score_kw})
    _, t_store, u_store = run("rerun (explanations file)", {"explanations": es}, {"explanations": es, **score_kw})
    _, t_cache, u_cache = run("rerun (reply cache only)", {"explanations": None}, {"explanations": None, **score_kw})

    ba = first["detection"].to_numpy(float)
    lo = first["detection_lo"].to_numpy(float)
    ok = np.isfinite(ba)
    print("\nper unit (first run):")
    for _, r in first.iterrows():
        print(f"  {r['site']:>11}[{r['unit']:4d}]  det {r['detection']:.3f} [{r['detection_lo']:.3f}, "
              f"{r['detection_hi']:.3f}]  failed prompts {int(r.get('detection_failed', 0))}  {r['text'][:70]!r}")
    summary = {"units": len(units), "scored": int(ok.sum()), "mean_detection": float(np.nanmean(ba)) if ok.any() else math.nan,
               "above_chance": int((lo[ok] > 0.5).sum()), "first_s": t_first, "rerun_store_s": t_store,
               "rerun_cache_s": t_cache, "units_per_min_first": 60 * len(units) / t_first,
               "units_per_min_rerun_store": 60 * len(units) / t_store, "units_per_min_rerun_cache": 60 * len(units) / t_cache,
               "usage_first": u_first, "usage_rerun_store": u_store, "usage_rerun_cache": u_cache}
    print(f"\nmean detection balanced accuracy {summary['mean_detection']:.3f} over {summary['scored']} units; "
          f"95% interval above 0.5 for {summary['above_chance']}/{summary['scored']}")

    if not a.no_control:
        texts = list(first["text"])
        ctrl = []
        t = time.perf_counter()
        for i, (site, unit) in enumerate(units):
            other = texts[(i + len(units) // 2) % len(texts)]
            s = A.score(store, site, unit, other, ["detection"], client, explanations=None, **score_kw)
            ctrl.append(s["detection"].value)
        ctrl = np.array(ctrl, float)
        summary["control_mean_detection"] = float(np.nanmean(ctrl))
        summary["control_s"] = time.perf_counter() - t
        print(f"control (another unit's explanation): mean detection {summary['control_mean_detection']:.3f} "
              f"({summary['control_s']:.0f} s)")
        paired = np.isfinite(ctrl) & ok
        if paired.any():
            d = ba[paired] - ctrl[paired]
            summary["paired_diff"] = float(d.mean())
            print(f"  own minus other explanation, paired over {int(paired.sum())} units: {d.mean():+.3f} "
                  f"(own better on {int((d > 0).sum())}, worse on {int((d < 0).sum())})")
    if a.out:
        Path(a.out).write_text(json.dumps({"summary": summary, "units": first.to_dict(orient="records")}, indent=1,
                                          default=str))
        print(f"written {a.out}")


if __name__ == "__main__":
    main()
