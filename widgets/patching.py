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
from workbench.causal.das import DASResult, DASSweep, counterfactual_pairs
from workbench.causal.patching import PatchingResult, metric_values, noise_specs, token_id
from workbench.core.sites import Site

from ._base import Job, WorkbenchWidget, bundle, rpc

_CACHE_SIZE = 16


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy().astype(np.float32, copy=False))


def _i32(xs: list[int]) -> np.ndarray:
    return np.asarray(xs, dtype=np.int32)


class _HeatmapView(WorkbenchWidget):
    """The patching heatmap's view and its state: the shown ``method``, the ``selected`` cell, ``top_k``.

    Subclasses answer the view's ``heatmap`` and ``apply`` requests.
    """

    _esm = bundle("patching")

    method = traitlets.Unicode("").tag(sync=True)
    methods = traitlets.List(traitlets.Unicode(), []).tag(sync=True)
    selected = traitlets.List(traitlets.Int(), []).tag(sync=True)
    top_k = traitlets.Int(10).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    # -- static copy ---------------------------------------------------------------------
    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The ``heatmap``, and the selected cell's ``apply`` when one is selected."""
        reqs: list[tuple[str, dict[str, Any]]] = [("heatmap", {"top_k": int(self.top_k)})]
        if len(self.selected) == 2:
            reqs.append(("apply", {"layer": int(self.selected[0]), "col": int(self.selected[1]), "top_k": int(self.top_k)}))
        return reqs


class PatchingHeatmap(_HeatmapView):
    """Heatmap of a `PatchingResult` (exact and/or attribution) with click-to-apply cells.

    ``selected`` is ``[layer, column]`` of the clicked cell (``[]`` for none);
    ``selected_specs`` its single patch; ``method`` the heatmap shown.
    """


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
        self._runs = _RunCache(model)
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
        return self._runs.run(prompt, specs, top_k)

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


class IIAHeatmap(_HeatmapView):
    """A `DASSweep`'s IIA grid on the patching heatmap's view; click a cell to replay its interchange.

    Rows are the swept sites, columns the swept positions (labelled by the pair's base tokens), one
    heatmap per ``k`` (the view's toggle). Clicking a cell runs the pair's base prompt with that
    cell's learned `SubspaceInterchange` from the source prompt and shows the base, source and
    patched next-token predictions, with the logit difference (source answer − base answer).

        sweep = wb.das_sweep(model, ["resid_post.4", "resid_post.8"], [-2, -1], pairs, k=[1, 2])
        IIAHeatmap(model, sweep, pairs[0])          # or sweep.show(model, pairs[0])

    ``pair`` is ``(base, source, base_answer, source_answer)`` with text prompts of equal token length.
    ``selected`` is ``[row id, position]`` (the row id is the site's layer when the sites' layers
    differ, else its index); ``method`` is the shown ``"k=…"``.
    """


    def __init__(self, model: wb.Model, sweep: DASSweep, pair: Any, *, top_k: int = 10, **kwargs: Any) -> None:
        if not isinstance(sweep, DASSweep):
            raise TypeError(f"IIAHeatmap shows a DASSweep (from das_sweep), not {type(sweep).__name__}")
        if not isinstance(pair, (tuple, list)) or len(pair) != 4 or not all(isinstance(p, str) for p in pair[:2]):
            raise ValueError("pair must be (base, source, base_answer, source_answer) with text prompts")
        if not 1 <= int(top_k) <= 100:
            raise ValueError(f"top_k must be between 1 and 100, not {top_k}")
        cp = counterfactual_pairs(model, [tuple(pair)])  # equal lengths, single-token answers
        self.lm, self.sweep = model, sweep
        self.base, self.source = str(pair[0]), str(pair[1])
        self.base_answer, self.source_answer = cp.base_answers[0], cp.source_answers[0]
        n = len(cp.base[0])
        bad = [p for p in sweep.positions if not -n <= p < n]
        if bad:
            raise IndexError(f"the sweep's positions {bad} do not fit the pair's {n} tokens")
        self._cols = [p % n for p in sweep.positions]  # absolute, for the token labels
        if len(set(self._cols)) != len(self._cols):
            raise ValueError(f"the sweep's positions {sweep.positions} name the same token twice for a {n}-token pair")
        layers = [Site.parse(s).layer for s in sweep.sites]
        self._rows = layers if None not in layers and len(set(layers)) == len(layers) else list(range(len(sweep.sites)))
        self._runs = _RunCache(model)
        methods = [f"k={k}" for k in sweep.ks]
        title = f"DAS IIA over {len(sweep.sites)} sites × {len(sweep.positions)} positions: base {self.base!r}, source {self.source!r}"
        super().__init__(method=methods[0], methods=methods, top_k=int(top_k), title=title, **kwargs)

    # -- cells ---------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """The ``k`` of the heatmap shown."""
        return self.sweep.ks[self.methods.index(self.method)] if self.method in self.methods else self.sweep.ks[0]

    def _cell(self, row: Any, col: Any) -> tuple[str, int]:
        try:
            row, col = int(row), int(col)
        except (TypeError, ValueError):
            raise ValueError(f"a cell is [row, position] as two integers, not [{row!r}, {col!r}]") from None
        if row not in self._rows:
            raise IndexError(f"row {row} is not in this sweep: its rows are {self._rows} ({self.sweep.sites})")
        if col not in self._cols:
            raise IndexError(f"position {col} is not in this sweep: its positions are {self._cols}")
        return self.sweep.sites[self._rows.index(row)], self.sweep.positions[self._cols.index(col)]

    def result_at(self, row: int, col: int, k: int | None = None) -> DASResult:
        """The `DASResult` of a cell (``k``: the shown one unless given)."""
        site, pos = self._cell(row, col)
        return self.sweep.results[(site, pos, self.k if k is None else int(k))]

    @property
    def selected_specs(self) -> list[wb.Spec]:
        """The selected cell's interchange spec (``[]`` when no cell is selected)."""
        if len(self.selected) != 2:
            return []
        return [self.result_at(*self.selected).spec(self.source)]

    def _logit_diff(self, res: wb.RunResult) -> float:
        last = res.logits[0, -1].float() if res.logits.dim() == 3 else res.logits[0].float()
        return float(last[self.source_answer] - last[self.base_answer])


    # -- rpc -------------------------------------------------------------------------------
    @rpc()
    def rpc_heatmap(self, top_k: int | None = None) -> dict[str, Any]:
        """One IIA grid per k as float32 buffers (raw: training IIA), the row labels, base and source predictions."""
        top_k = self.top_k if top_k is None else int(top_k)
        base, source = self._runs.run(self.base, [], top_k), self._runs.run(self.source, [], top_k)
        mb, ms = self._logit_diff(base), self._logit_diff(source)
        grids = [{"method": m, "values": _f32(self.sweep.grid(k)), "raw": _f32(self.sweep.grid(k, train=True)),
                  "layers": _i32(self._rows), "columns": _i32(self._cols), "clean_metric": ms, "corrupted_metric": mb}
                 for m, k in zip(self.methods, self.sweep.ks, strict=True)]
        return {
            "grids": grids, "methods": list(self.methods), "method": self.method, "column_kind": "position",
            "tokens": [t.text for t in self.lm.tokenize(self.base).tokens[0]],
            "site": ", ".join(self.sweep.sites), "metric": "logit diff (source − base answer)", "direction": "DAS IIA",
            "clean": self.source, "corrupted": self.base, "answer": self.lm.tokenizer.decode([self.source_answer]),
            "wrong": self.lm.tokenizer.decode([self.base_answer]), "clean_metric": ms, "corrupted_metric": mb,
            "title": self.title, "names": {"clean": "source", "corrupted": "base"}, "row_labels": list(self.sweep.sites),
            "help": "Each cell is the held-out IIA of the subspace DAS learned there (raw: training IIA). "
                    "Click a cell to run the base prompt with that interchange from the source.",
            "predictions": {"clean": PatchingHeatmap._pred(source), "corrupted": PatchingHeatmap._pred(base)},
        }

    @rpc(background=True)
    def rpc_apply(self, layer: int, col: int, top_k: int | None = None, job: Job | None = None) -> dict[str, Any]:
        """Run the base prompt with one cell's interchange from the source; the three predictions and metrics."""
        site, pos = self._cell(layer, col)
        top_k = self.top_k if top_k is None else int(top_k)
        spec = self.sweep.results[(site, pos, self.k)].spec(self.source)
        base, source = self._runs.run(self.base, [], top_k), self._runs.run(self.source, [], top_k)
        if job is not None:
            job.check()
        patched = self.lm.run(self.base, [spec], top_k=top_k)
        mb, ms, mp = self._logit_diff(base), self._logit_diff(source), self._logit_diff(patched)
        sweep = {m: float(self.sweep.grid(k)[self.sweep.sites.index(site), self.sweep.positions.index(pos)])
                 for m, k in zip(self.methods, self.sweep.ks, strict=True)}
        return {
            "layer": int(layer), "col": int(col), "specs": [spec.to_dict()],
            "predictions": {"clean": PatchingHeatmap._pred(source), "corrupted": PatchingHeatmap._pred(base),
                            "patched": PatchingHeatmap._pred(patched)},
            "metric": {"name": "logit diff", "clean": ms, "corrupted": mb, "patched": mp,
                       "normalized": (mp - mb) / (ms - mb) if ms != mb else float("nan")},
            "sweep": sweep,
        }

    def apply(self, row: int, col: int) -> dict[str, Any]:
        """Select a cell from Python, run its interchange and return the reply (the view follows ``selected``)."""
        self._cell(row, col)
        self.selected = [int(row), int(col)]
        return self.call("apply", layer=int(row), col=int(col))


class _RunCache:
    """The last few ``model.run(prompt, specs, top_k)`` results, keyed by their JSON (thread-safe)."""

    def __init__(self, model: wb.Model, size: int = _CACHE_SIZE) -> None:
        self.model, self.size = model, size
        self._runs: OrderedDict[tuple, wb.RunResult] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, prompt: str, specs: list[wb.Spec], top_k: int) -> wb.RunResult:
        key = (prompt, tuple(s.to_json() for s in specs), top_k)
        with self._lock:
            hit = self._runs.get(key)
            if hit is not None:
                self._runs.move_to_end(key)
                return hit
        res = self.model.run(prompt, specs, top_k=top_k)
        with self._lock:
            self._runs[key] = res
            while len(self._runs) > self.size:
                self._runs.popitem(last=False)
        return res
