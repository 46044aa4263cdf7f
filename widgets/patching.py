"""PatchingHeatmap: an activation-patching sweep as a layers × columns heatmap; click a cell to replay it.

    from workbench.causal.patching import activation_patching
    from workbench.widgets.patching import PatchingHeatmap
    res = activation_patching(model, clean, corrupted, answer=" Paris", wrong=" Rome")
    w = PatchingHeatmap(model, res)            # or res.show(model=model)
    w = PatchingHeatmap.run(model, clean, corrupted, answer=" Paris", wrong=" Rome")  # + attribution
    w.selected, w.selected_specs               # the clicked cell and its single patch

In the browser: rows are layers, columns are the clean prompt's token positions (or heads,
or neurons); colours are the normalized metric (0 = corrupted, 1 = clean) on a diverging
scale centred on 0; hovering a cell shows its value. Clicking a cell applies that one patch
in the kernel (``model.run(res.base_prompt, res.base_specs + res.cell_specs(layer, col))``)
and shows the patched next-token predictions beside the clean and corrupted ones. With an
attribution result too, a toggle switches the heatmap between exact and attribution values.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import traitlets

import workbench as wb
from workbench.causal.patching import PatchingResult, metric_values, noise_specs, token_id

from ._base import Job, WorkbenchWidget, bundle, rpc

_CACHE_SIZE = 16


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy().astype(np.float32, copy=False))


def _i32(xs: list[int]) -> np.ndarray:
    return np.asarray(xs, dtype=np.int32)


class PatchingHeatmap(WorkbenchWidget):
    """Heatmap of a `PatchingResult` (exact and/or attribution) with click-to-apply cells.

    ``selected`` is ``[layer, column]`` of the clicked cell (``[]`` for none);
    ``selected_specs`` its single patch; ``method`` the heatmap shown.
    """

    _esm = bundle("patching")

    method = traitlets.Unicode("exact").tag(sync=True)
    methods = traitlets.List(traitlets.Unicode(), []).tag(sync=True)
    selected = traitlets.List(traitlets.Int(), []).tag(sync=True)
    top_k = traitlets.Int(10).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, model: wb.Model, result: PatchingResult, attribution: PatchingResult | None = None, *,
                 top_k: int = 10, **kwargs: Any) -> None:
        results = {result.method: result}
        if attribution is not None:
            if attribution.method in results:
                raise ValueError(f"both results are {attribution.method!r}: pass an exact result and an "
                                 "attribution result (method='attribution')")
            if (attribution.clean, attribution.corrupted, attribution.base_prompt, attribution.site) != (
                    result.clean, result.corrupted, result.base_prompt, result.site):
                raise ValueError("the attribution result is for a different sweep (prompts or site differ)")
            results[attribution.method] = attribution
        if not 1 <= int(top_k) <= 100:
            raise ValueError(f"top_k must be between 1 and 100, not {top_k}")
        self.lm = model
        self.results: dict[str, PatchingResult] = results
        self._refs: dict[int, dict[str, Any]] = {}
        self._runs: OrderedDict[tuple, wb.RunResult] = OrderedDict()
        self._lock_runs = threading.Lock()
        methods = sorted(results, key=lambda m: (m != "exact", m))
        r = self.result
        title = (f"{r.direction} {r.site} patching, {r.metric}: clean {r.clean!r}"
                 + (f" vs corrupted {r.corrupted!r}" if r.corrupted is not None else f" vs noise {r.noise}× on the subject"))
        super().__init__(method=methods[0], methods=methods, top_k=int(top_k), title=title, **kwargs)

    @classmethod
    def run(cls, model: wb.Model, clean: str, corrupted: str | None = None, *, attribution: bool = True,
            top_k: int = 10, **kwargs: Any) -> PatchingHeatmap:
        """Run `activation_patching` (and `attribution_patching` unless ``attribution=False``) and show both."""
        from workbench.causal.patching import activation_patching, attribution_patching

        exact = activation_patching(model, clean, corrupted, **kwargs)
        attr = attribution_patching(model, clean, corrupted, **kwargs) if attribution else None
        return cls(model, exact, attr, top_k=top_k)

    @classmethod
    def from_result(cls, result: PatchingResult, model: wb.Model | None = None, **kwargs: Any) -> PatchingHeatmap:
        """The viewer of ``result.show(model=model)`` (``model`` may be left out if the result carries one)."""
        model = model if model is not None else getattr(result, "model", None)
        if model is None:
            raise ValueError("PatchingHeatmap needs the model to replay cells: call result.show(model=model) "
                             "or PatchingHeatmap(model, result)")
        return cls(model, result, **kwargs)

    # -- state ---------------------------------------------------------------------------
    @property
    def result(self) -> PatchingResult:
        """The result whose cells are applied: the exact one when there is one."""
        return self.results.get("exact") or next(iter(self.results.values()))

    @property
    def selected_specs(self) -> list[wb.Spec]:
        """The single patch of the selected cell (``[]`` when no cell is selected)."""
        if len(self.selected) != 2:
            return []
        return self.result.cell_specs(*self.selected)

    def _check_cell(self, layer: Any, col: Any) -> tuple[int, int]:
        r = self.result
        try:
            layer, col = int(layer), int(col)
        except (TypeError, ValueError):
            raise ValueError(f"a cell is [layer, {r.column_kind}] as two integers, not [{layer!r}, {col!r}]") from None
        if layer not in r.layers:
            raise IndexError(f"layer {layer} is not in this sweep: its layers are {_span(r.layers)}")
        if col not in r.columns:
            raise IndexError(f"{r.column_kind} {col} is not in this sweep: its {r.column_kind}s are {_span(r.columns)}")
        return layer, col

    # -- runs ----------------------------------------------------------------------------
    def _cached_run(self, prompt: str, specs: list[wb.Spec], top_k: int) -> wb.RunResult:
        key = (prompt, tuple(s.to_json() for s in specs), top_k)
        with self._lock_runs:
            hit = self._runs.get(key)
            if hit is not None:
                self._runs.move_to_end(key)
                return hit
        res = self.lm.run(prompt, specs, top_k=top_k)
        with self._lock_runs:
            self._runs[key] = res
            while len(self._runs) > _CACHE_SIZE:
                self._runs.popitem(last=False)
        return res

    def _corrupt_run(self, top_k: int) -> wb.RunResult:
        r = self.result
        if r.direction == "denoising":
            return self._cached_run(r.base_prompt, list(r.base_specs), top_k)
        if r.corrupted is not None:
            return self._cached_run(r.corrupted, [], top_k)
        return self._cached_run(r.clean, noise_specs(self.lm, r.clean, r.subject_positions, r.noise, r.seed), top_k)

    def _ids(self) -> tuple[int, int | None]:
        r = self.result

        def tid(t: str | None, what: str) -> int | None:
            if t is None:
                return None
            try:
                return token_id(self.lm, t, what)
            except ValueError:
                if t.isdigit():  # an int id stored as text
                    return token_id(self.lm, int(t), what)
                raise

        return tid(r.answer, "answer"), tid(r.wrong, "wrong answer")

    def _score(self, run: wb.RunResult, clean: wb.RunResult) -> float:
        r = self.result
        ans, wrong = self._ids()
        clean_logp = torch.log_softmax(clean.logits.float(), -1)
        return float(metric_values(run.logits.float(), r.metric, ans, wrong, clean_logp)[0])

    def _references(self, top_k: int) -> dict[str, Any]:
        """Clean and corrupted predictions (computed once per top_k)."""
        if top_k not in self._refs:
            clean = self._cached_run(self.result.clean, [], top_k)
            corrupt = self._corrupt_run(top_k)
            self._refs[top_k] = {"clean": clean, "corrupted": corrupt}
        return self._refs[top_k]

    @staticmethod
    def _pred(res: wb.RunResult) -> dict[str, Any]:
        return {"tokens": list(res.top.tokens[0]), "ids": res.top.ids[0].to(torch.int32),
                "probs": _f32(res.top.probs[0]), "logits": _f32(res.top.logits[0])}

    def _grid(self, res: PatchingResult) -> dict[str, Any]:
        return {"method": res.method, "values": _f32(res.values), "raw": _f32(res.raw),
                "layers": _i32(res.layers), "columns": _i32(res.columns),
                "clean_metric": float(res.clean_metric), "corrupted_metric": float(res.corrupted_metric)}

    # -- rpc -------------------------------------------------------------------------------
    # -- static copy ---------------------------------------------------------------------
    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The ``heatmap``, and the selected cell's ``apply`` when one is selected."""
        reqs: list[tuple[str, dict[str, Any]]] = [("heatmap", {"top_k": int(self.top_k)})]
        if len(self.selected) == 2:
            reqs.append(("apply", {"layer": int(self.selected[0]), "col": int(self.selected[1]), "top_k": int(self.top_k)}))
        return reqs

    @rpc()
    def rpc_heatmap(self, top_k: int | None = None) -> dict[str, Any]:
        """The heatmap(s) as float32 buffers, labels, and the clean/corrupted predictions."""
        top_k = self.top_k if top_k is None else int(top_k)
        r = self.result
        refs = self._references(top_k)
        return {
            "grids": [self._grid(self.results[m]) for m in self.methods],
            "methods": list(self.methods),
            "method": self.method,
            "column_kind": r.column_kind,
            "tokens": list(r.tokens),
            "site": r.site, "metric": r.metric, "direction": r.direction,
            "clean": r.clean, "corrupted": r.corrupted, "answer": r.answer, "wrong": r.wrong,
            "clean_metric": float(r.clean_metric), "corrupted_metric": float(r.corrupted_metric),
            "title": self.title,
            "predictions": {"clean": self._pred(refs["clean"]), "corrupted": self._pred(refs["corrupted"])},
        }

    @rpc(background=True)
    def rpc_apply(self, layer: int, col: int, top_k: int | None = None, job: Job | None = None) -> dict[str, Any]:
        """Apply one cell's patch to the base prompt, rerun, and reply with the three predictions."""
        layer, col = self._check_cell(layer, col)
        top_k = self.top_k if top_k is None else int(top_k)
        r = self.result
        specs = list(r.base_specs) + r.cell_specs(layer, col)
        refs = self._references(top_k)
        if job is not None:
            job.check()
        patched = self.lm.run(r.base_prompt, specs, top_k=top_k)
        m = self._score(patched, refs["clean"])
        denom = r.clean_metric - r.corrupted_metric
        sweep = {}
        for name, res in self.results.items():
            i, j = res.layers.index(layer), res.columns.index(col) if col in res.columns else -1
            if j >= 0:
                sweep[name] = float(res.values[i, j])
        return {
            "layer": layer, "col": col,
            "specs": [s.to_dict() for s in r.cell_specs(layer, col)],
            "predictions": {"clean": self._pred(refs["clean"]), "corrupted": self._pred(refs["corrupted"]),
                            "patched": self._pred(patched)},
            "metric": {"name": r.metric, "clean": float(r.clean_metric), "corrupted": float(r.corrupted_metric),
                       "patched": m, "normalized": (m - r.corrupted_metric) / denom if denom else float("nan")},
            "sweep": sweep,
        }

    def apply(self, layer: int, col: int) -> dict[str, Any]:
        """Select a cell from Python, apply its patch and return the reply (the view follows ``selected``)."""
        layer, col = self._check_cell(layer, col)
        self.selected = [layer, col]
        return self.call("apply", layer=layer, col=col)


def _span(xs: list[int]) -> str:
    if xs and xs == list(range(xs[0], xs[-1] + 1)):
        return f"{xs[0]}..{xs[-1]}"
    return str(xs)
