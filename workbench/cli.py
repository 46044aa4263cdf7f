"""Command line: scan a corpus into a neuron store, or merge shard stores.

    python -m workbench scan --out scans/smol [--model PATH] [--corpus FILES...] [--shard 0/4]
    python -m workbench merge scans/all scans/shard0 scans/shard1

Ctrl-C during a scan checkpoints it; running the same command again resumes.
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


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m workbench scan|merge ...``: run one command; no command prints the usage (exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("scan", "merge"):
        print(__doc__)
        raise SystemExit(2)
    (_scan if argv[0] == "scan" else _merge)(argv[1:])
