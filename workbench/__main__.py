"""Command line: ``python -m workbench scan ...`` and ``python -m workbench merge ...``.

    python -m workbench scan --out scans/smol [--model PATH] [--corpus FILES...] [--shard 0/4]
    python -m workbench merge scans/all scans/shard0 scans/shard1
"""

from __future__ import annotations

import sys

from .neurons.scan import main as scan_main


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("scan", "merge"):
        print(__doc__)
        raise SystemExit(2)
    scan_main(argv[1:] if argv[0] == "scan" else argv)


if __name__ == "__main__":
    main()
