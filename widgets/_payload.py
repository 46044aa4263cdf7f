"""Small helpers shared by the widgets: browser parameters in, JSON-ready payloads out."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

import workbench as wb
from workbench.core.program import finite_number
from workbench.neurons.store import Exemplar

__all__ = ["as_int", "finite_float", "json_float", "exemplar_payload", "predictions"]


def as_int(name: str, v: Any) -> int:
    """An integer parameter (from Python or the browser: a float with an integral value is fine)."""
    if v is None or isinstance(v, bool):
        raise ValueError(f"{name} must be an integer, not {v!r}")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(f"{name} must be an integer, not {v!r}")
        v = int(v)
    if not isinstance(v, int | np.integer):
        raise ValueError(f"{name} must be an integer, not {v!r}")
    return int(v)


def finite_float(what: str, v: Any) -> float:
    """A finite number parameter; ``what`` names it in the error (``"the scale factor"``)."""
    return finite_number(what, v)


def json_float(v: Any) -> float | None:
    """A JSON-ready float: NaN / infinity become None."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def exemplar_payload(e: Exemplar) -> dict[str, Any]:
    """One exemplar window for the browser (its per-token activations as a float32 buffer)."""
    return {"window": int(e.window), "position": int(e.position), "value": json_float(e.value),
            "tokens": list(e.tokens), "acts": np.ascontiguousarray(e.acts, dtype=np.float32)}


def predictions(base: wb.RunResult, edit: wb.RunResult) -> dict[str, Any]:
    """Top-k before / after and, for the union of their tokens, both probabilities."""
    pb = torch.softmax(base.logits[0].double(), -1)
    pe = torch.softmax(edit.logits[0].double(), -1)
    brows, erows = base.top.as_rows(0), edit.top.as_rows(0)
    seen: dict[int, str] = {}
    for r in brows + erows:
        seen.setdefault(r["id"], r["token"])
    rows = [{"token": t, "id": i, "p_base": float(pb[i]), "p_edit": float(pe[i])} for i, t in seen.items()]
    return {"base": brows, "edit": erows, "rows": rows}
