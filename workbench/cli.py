"""Command line: scan a corpus into a neuron store, merge shard stores, train a transcoder set, export a static page,
fill a course notebook with its solutions.

    python -m workbench scan --out scans/smol [--model PATH] [--corpus FILES...] [--shard 0/4]
    python -m workbench merge scans/all scans/shard0 scans/shard1
    python -m workbench train-transcoders --layers 0-5 --out runs/tc [--model PATH] [--k 32] [--expansion 4]
    python -m workbench export-html NOTEBOOK [-o OUT] [--no-execute] [--timeout 600]
    python -m workbench course NOTEBOOK -o OUT [--mode solution|wrong]

Ctrl-C during a scan or a training checkpoints it; running the same command again resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _scan_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench scan",
                                description="One streaming pass over a corpus: top-k exemplars and running "
                                            "statistics for every unit.")
    p.add_argument("--out", required=True, help="store folder (an existing partial scan resumes)")
    p.add_argument("--model", default=None, help="model name or path (default: the embedded SmolLM2)")
    p.add_argument("--corpus", nargs="*", default=None, help=".txt files or folders (default: pydoc_data.topics)")
    p.add_argument("--sites", nargs="*", default=["neurons"])
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--shard", default=None, help="i/n: this job's shard")
    p.add_argument("--checkpoint-every", type=int, default=256, help="windows between checkpoints")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    return p


def _merge(argv: Sequence[str]) -> None:
    from .neurons.store import ScanStore

    p = argparse.ArgumentParser(prog="python -m workbench merge", description="merge shard stores")
    p.add_argument("out")
    p.add_argument("stores", nargs="+")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    print(ScanStore.merge(a.stores, a.out, overwrite=a.overwrite))


def _scan(argv: Sequence[str]) -> None:
    from .core.errors import Cancelled
    from .core.loading import load
    from .neurons.scan import scan

    a = _scan_parser().parse_args(argv)
    model = load(a.model, device=a.device, **({"dtype": a.dtype} if a.dtype else {}))
    shard = tuple(int(x) for x in a.shard.split("/")) if a.shard else None
    corpus = [Path(c) for c in a.corpus] if a.corpus else None
    try:
        store = scan(model, corpus, a.out, sites=a.sites, k=a.k, window=a.window, batch_size=a.batch_size,
                     max_tokens=a.max_tokens, shard=shard, checkpoint_every=a.checkpoint_every)  # type: ignore[arg-type]
    except Cancelled as e:  # only a set cancel event raises this (Ctrl-C stays a KeyboardInterrupt)
        print(f"scan cancelled: {e}; the checkpoint is in {a.out}: run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(130) from None
    print(store)


def _load_model(a: argparse.Namespace) -> object:
    from .core.loading import load

    return load(a.model, device=a.device, **({"dtype": a.dtype} if a.dtype else {}))


def _train_transcoders(argv: Sequence[str]) -> None:
    from .dictionaries.train import TrainingCancelled
    from .dictionaries.transcoders import TRANSCODER_DEFAULTS, train_transcoders

    p = argparse.ArgumentParser(prog="python -m workbench train-transcoders",
                                description="Train a per-layer transcoder set (mlp_in.L -> mlp_out.L), resumable per "
                                            "layer: one SAELens folder per layer plus transcoders.json in --out.")
    p.add_argument("--layers", default=None, help="e.g. 0-5 or 0,3,7-9 (default: every layer)")
    p.add_argument("--out", required=True, help="set folder (a partial run there resumes)")
    p.add_argument("--model", default=None, help="model name or path (default: the embedded SmolLM2)")
    p.add_argument("--corpus", nargs="*", default=None, help=".txt files or folders (default: pydoc_data.topics)")
    for name, typ in (("n-latents", int), ("expansion", int), ("k", int), ("batch-size", int), ("max-tokens", int),
                      ("data-tokens", int), ("holdout-tokens", int), ("lr", float), ("seed", int),
                      ("checkpoint-every", int), ("context", int)):
        key = name.replace("-", "_")
        p.add_argument(f"--{name}", type=typ, default=None,
                       help=f"default {TRANSCODER_DEFAULTS[key]}" if key in TRANSCODER_DEFAULTS else None)
    p.add_argument("--restart", action="store_true", help="retrain every layer (resume=False)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    a = p.parse_args(argv)
    model = _load_model(a)
    keys = ("n_latents", "expansion", "k", "batch_size", "max_tokens", "data_tokens", "holdout_tokens", "lr", "seed",
            "checkpoint_every", "context")
    opts = {k: getattr(a, k) for k in keys if getattr(a, k) is not None}
    corpus = [Path(c) for c in a.corpus] if a.corpus else None
    try:
        tset = train_transcoders(model, a.layers, corpus, a.out, resume=not a.restart, progress=not a.no_progress,
                                 device=a.device, **opts)
    except TrainingCancelled as e:
        print(f"training cancelled: {e}; run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    print(tset)
    for L, s in tset.meta.get("stats", {}).items():
        print(f"layer {L}: heldout FVU {s.get('heldout_fvu')}, L0 {s.get('l0')}, dead {s.get('dead_fraction')}, "
              f"{s.get('wall_s')} s")


def _export_html(argv: Sequence[str]) -> None:
    import time

    from .widgets.export import StaticExportError, export_html

    p = argparse.ArgumentParser(prog="python -m workbench export-html",
                                description="A static HTML copy of a notebook whose widgets show their last state "
                                            "with no kernel and no network.")
    p.add_argument("notebook")
    p.add_argument("-o", "--out", default=None, help="the page (default: the notebook's path with .html)")
    p.add_argument("--no-execute", action="store_true", help="use the widget state saved in the notebook")
    p.add_argument("--timeout", type=int, default=600, help="per-cell timeout in seconds")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = export_html(a.notebook, a.out, execute=not a.no_execute, timeout=a.timeout)
    except (StaticExportError, FileNotFoundError) as e:
        print(f"export-html: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"{out} ({out.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s)")


def _course(argv: Sequence[str]) -> None:
    from .course import SolutionsError, exercise_cells, fill_notebook

    p = argparse.ArgumentParser(prog="python -m workbench course",
                                description="Fill a course notebook's exercise cells with the reference solutions "
                                            "(a teacher's copy) or with the deliberately wrong answers.")
    p.add_argument("notebook")
    p.add_argument("-o", "--out", required=True, help="where to write the filled notebook")
    p.add_argument("--mode", choices=("solution", "wrong"), default="solution")
    p.add_argument("--solutions", default=None, help="the solutions file (default: solutions/<stem>.py beside it)")
    a = p.parse_args(argv)
    try:
        nb = fill_notebook(a.notebook, a.mode, a.solutions, out=a.out)
    except (SolutionsError, FileNotFoundError) as e:
        print(f"course: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"{a.out}: {len(exercise_cells(nb))} exercise cells filled with the {a.mode} blocks")


_COMMANDS = {"scan": _scan, "merge": _merge, "train-transcoders": _train_transcoders, "export-html": _export_html,
             "course": _course}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m workbench scan|merge|train-transcoders|export-html|course ...``: run one command; no command prints the usage (exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in _COMMANDS:
        print(__doc__)
        raise SystemExit(2)
    _COMMANDS[argv[0]](argv[1:])
