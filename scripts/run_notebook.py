#!/usr/bin/env python
"""Execute notebooks headlessly with nbclient, in a kernel running this interpreter.

    python scripts/run_notebook.py examples/01_tour.ipynb [--timeout 600] [--output out.ipynb]

The kernel is this Python (not whatever ``python3`` kernelspec the machine has), with the
repository on ``PYTHONPATH`` so it works before ``pip install .``. Exits non-zero and prints
the failing cell when a cell raises. Widgets are created but not rendered (no browser).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def kernel_env() -> dict[str, str]:
    """PYTHONPATH with the repository first (the package may not be installed)."""
    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def execute(path: str | os.PathLike, timeout: int = 600, cwd: str | os.PathLike | None = None,
            python: str = sys.executable) -> Any:
    """Run every cell of the notebook at ``path``; return the executed notebook.

    Raises ``nbclient.exceptions.CellExecutionError`` on the first failing cell.
    """
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    with tempfile.TemporaryDirectory(prefix="iw-kernels-") as tmp:
        kdir = Path(tmp) / "kernels" / "iw-python"
        kdir.mkdir(parents=True)
        (kdir / "kernel.json").write_text(json.dumps({
            "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python (interp-workbench)",
            "language": "python",
            "env": kernel_env(),
        }))
        ksm = KernelSpecManager(kernel_dirs=[str(Path(tmp) / "kernels")])
        km = KernelManager(kernel_name="iw-python", kernel_spec_manager=ksm)
        client = NotebookClient(
            nb, km=km, timeout=timeout, kernel_name="iw-python",
            resources={"metadata": {"path": str(cwd or Path(path).resolve().parent)}},
        )
        try:
            client.execute()
        finally:  # nbclient leaves a kernel it did not create running
            if km.has_kernel:
                km.shutdown_kernel(now=False)
    return nb


def error_outputs(nb: Any) -> list[str]:
    """Error outputs and stderr streams that mention an error, as text."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = out.get("text", "")
                if "Traceback" in text or "Error" in text:
                    found.append(f"cell {i} stderr: {text[-500:]}")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--timeout", type=int, default=600, help="per-cell timeout in seconds")
    ap.add_argument("--output", help="write the executed notebook here (one input notebook only)")
    args = ap.parse_args(argv)
    if args.output and len(args.notebooks) != 1:
        ap.error("--output needs exactly one notebook")
    from nbclient.exceptions import CellExecutionError

    status = 0
    for path in args.notebooks:
        t0 = time.perf_counter()
        try:
            nb = execute(path, timeout=args.timeout)
        except CellExecutionError as exc:
            print(f"FAILED {path}:\n{exc}", file=sys.stderr)
            status = 1
            continue
        problems = error_outputs(nb)
        took = time.perf_counter() - t0
        if problems:
            print(f"FAILED {path} ({took:.1f}s):", *problems, sep="\n  ", file=sys.stderr)
            status = 1
        else:
            print(f"ok {path} ({took:.1f}s)")
        if args.output:
            import nbformat

            nbformat.write(nb, args.output)
    return status


if __name__ == "__main__":
    sys.exit(main())
