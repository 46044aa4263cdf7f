"""Exercise cells in course notebooks, their reference solutions, and the verdicts a run printed.

An exercise cell is a code cell whose metadata holds ``"exercise": "<id>"`` (and the tag
``exercise``); its source is the student's stub. Solutions live outside the notebook, in
``examples/solutions/<notebook stem>.py``, as blocks that start with a header line::

    # %% 02.previous_token
    def previous_token_score(pattern): ...        # the reference solution
    # %% 02.previous_token wrong
    def previous_token_score(pattern): ...        # a deliberately wrong answer (for CI)

`fill_notebook` swaps each exercise cell's source for one kind of block, so CI runs a notebook
once with every solution (every check passes) and once with the wrong answers (every check
fails with a message and the notebook carries on). `verdicts` reads the checks' outputs back.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..core.errors import WorkbenchError
from ._feedback import FAIL, PASS, TODO

MODES = ("solution", "wrong")
_HEADER = re.compile(r"^# %% (?P<id>\d\d\.[A-Za-z0-9_]+)(?: (?P<kind>wrong))?\s*$")
_VERDICT = re.compile(rf"^(?P<mark>{PASS}|{FAIL}|{TODO}) (?P<id>\d\d\.[A-Za-z0-9_]+): ")


class SolutionsError(WorkbenchError, ValueError):
    """A solutions file is malformed or does not match its notebook's exercises."""


def default_solutions(notebook: str | os.PathLike[str]) -> Path:
    """``examples/solutions/<stem>.py`` beside the notebook."""
    path = Path(notebook)
    return path.parent / "solutions" / f"{path.stem}.py"


def read_solutions(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """``{exercise id: {"solution": code, "wrong": code}}`` from a solutions file."""
    blocks: dict[str, dict[str, str]] = {}
    current: tuple[str, str] | None = None
    lines: list[str] = []

    def close() -> None:
        if current is not None:
            ex, kind = current
            if kind in blocks.setdefault(ex, {}):
                raise SolutionsError(f"{path}: block {ex} {kind} appears twice")
            blocks[ex][kind] = "\n".join(lines).strip() + "\n"

    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = _HEADER.match(line)
        if m:
            close()
            current, lines = (m["id"], m["kind"] or "solution"), []
        elif current is not None:
            lines.append(line)
    close()
    for ex, kinds in blocks.items():
        missing = [k for k in MODES if k not in kinds]
        if missing:
            raise SolutionsError(f"{path}: exercise {ex} has no {' or '.join(missing)} block")
    return blocks


def exercise_cells(nb: Any) -> list[tuple[int, str]]:
    """``(cell index, exercise id)`` of every exercise cell of a notebook (an nbformat node)."""
    return [(i, c.metadata["exercise"]) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and "exercise" in c.get("metadata", {})]


def fill_notebook(notebook: str | os.PathLike[str], mode: str = "solution",
                  solutions: str | os.PathLike[str] | None = None,
                  out: str | os.PathLike[str] | None = None) -> Any:
    """The notebook with every exercise cell's source replaced by its ``mode`` block.

    ``mode`` is ``"solution"`` or ``"wrong"``. Raises `SolutionsError` when an exercise has no
    block or a block has no exercise. With ``out`` the filled notebook is also written (atomically).
    """
    import nbformat

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    nb = nbformat.read(str(notebook), as_version=4)
    blocks = read_solutions(solutions or default_solutions(notebook))
    cells = exercise_cells(nb)
    ids = [ex for _, ex in cells]
    if not cells:
        raise SolutionsError(f"{notebook} has no exercise cells")
    unknown = sorted(set(ids) - set(blocks))
    extra = sorted(set(blocks) - set(ids))
    if unknown or extra:
        raise SolutionsError(f"{notebook}: exercises without solutions {unknown}, solutions without exercises {extra}")
    for index, ex in cells:
        nb.cells[index].source = blocks[ex][mode].rstrip("\n")
    if out is not None:
        from workbench.core.fileio import atomic_text

        atomic_text(out, nbformat.writes(nb))
    return nb


def verdicts(nb: Any) -> dict[str, str]:
    """``{exercise id: mark}`` from an executed notebook's outputs (the last verdict per id wins)."""
    found: dict[str, str] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") or output.get("data", {}).get("text/plain", "")
            for line in str(text).splitlines():
                m = _VERDICT.match(line.strip().strip("'\""))
                if m:
                    found[m["id"]] = m["mark"]
    return found
