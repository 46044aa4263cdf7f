"""Self-checking exercises for the course notebooks in ``examples/``.

A notebook's exercise cell defines the student's function; the next cell calls
``course.check("02.previous_token", previous_token_score, model=model)``, which compares the answer
with the workbench's own method on the same inputs and returns a `Feedback` (✅ or ❌ with what was
expected). A wrong or crashing answer never raises into the notebook.

Reference solutions live outside the notebooks (``examples/solutions/<notebook>.py``);
`fill_notebook` puts them (or deliberately wrong answers) into the exercise cells, which is how CI
checks every exercise both ways.
"""

from __future__ import annotations

from . import attention as attention  # noqa: F401  (each module registers its exercises)
from . import autointerp as autointerp  # noqa: F401
from . import basics as basics  # noqa: F401
from . import circuits as circuits  # noqa: F401
from . import dictionaries as dictionaries  # noqa: F401
from . import graphs as graphs  # noqa: F401
from . import lens as lens  # noqa: F401
from . import neurons as neurons  # noqa: F401
from . import subspaces as subspaces  # noqa: F401
from ._feedback import Feedback, NotAttempted, Wrong, attempt, expect_close, expect_equal
from ._notebooks import (
    SolutionsError,
    default_solutions,
    exercise_cells,
    fill_notebook,
    read_solutions,
    verdicts,
)
from ._registry import EXERCISES, Exercise, check, exercise

__all__ = [
    "EXERCISES", "Exercise", "Feedback", "NotAttempted", "SolutionsError", "Wrong", "attempt", "check",
    "default_solutions", "exercise", "exercise_cells", "expect_close", "expect_equal", "fill_notebook",
    "read_solutions", "verdicts",
]
