"""NeuronHeatmap: tokens × the top MLP neurons of a layer; click a neuron to ablate it.

    from workbench.widgets import NeuronHeatmap
    w = NeuronHeatmap(model, "The capital of France is", layer=10)
    w                      # in a notebook
    w.ablated, w.interventions, w.selected_neuron   # read back what was clicked

In the browser:

- **click a neuron's column header** to ablate it (zero it, or scale it by ``factor`` in
  ``"scale"`` mode); click again to restore it. Ablated columns are struck through and
  hatched, and the kernel reruns the prompt with `wb.zero_neurons` / `wb.scale_neurons`.
- **shift-click a header, or click any cell of a column**, to tint the prompt text by that
  neuron's (unablated) activation; do it again to clear the tint.
- **colour by attribution** (``color_by="attribution"``) reruns in the kernel and colours each
  cell by that neuron's attribution to the ``target`` token's logit (blank: the top prediction)
  on the unablated run: gradient × activation by default, or integrated gradients
  (``attribution="integrated_gradients"``, ``steps``). Columns are then the ``top_n`` neurons
  with the largest attribution (max |·| over tokens); the legend gives Σ attributions against
  the logit's change.

Columns are the ``top_n`` neurons with the largest activation (max over the prompt's
tokens) in the *unablated* run, so they stay put while you toggle. The predictions table
compares the next-token top-k without interventions (baseline) and with them (current).
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import traitlets

import workbench as wb
from workbench.causal.attribution import (
    AttributionResult,
    gradient_x_activation,
    integrated_gradients,
)
from workbench.core.specs import Edit

from ._base import Job, WorkbenchWidget, bundle, rpc

MODES = ("zero", "scale")
COLOR_BY = ("activation", "attribution")
ATTRIBUTIONS = ("gradient_x_activation", "integrated_gradients")
_CACHE_SIZE = 8


def spec_dict(spec: Edit) -> dict[str, Any]:
    """A spec as a JSON-ready dict that `wb.core.spec_from_dict` rebuilds (fields are normalized)."""
    return {**asdict(spec), "kind": spec.kind}


class NeuronHeatmap(WorkbenchWidget):
    """Heatmap of MLP neuron activations (tokens × top-N neurons) with click-to-ablate.

    Click a column header to ablate that neuron; shift-click a header or click a cell to
    tint the prompt by the neuron's activation. ``ablated`` / ``interventions`` /
    ``selected_neuron`` read back the current choices.
    """

    _esm = bundle("neurons")

    prompt = traitlets.Unicode("").tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    d_mlp = traitlets.Int(0).tag(sync=True)
    top_n = traitlets.Int(24).tag(sync=True)
    top_k = traitlets.Int(10).tag(sync=True)
    mode = traitlets.Unicode("zero").tag(sync=True)
    factor = traitlets.Float(0.0).tag(sync=True)
    selected_neuron = traitlets.Int(-1).tag(sync=True)
    ablated = traitlets.List(traitlets.Int(), []).tag(sync=True)
    color_by = traitlets.Unicode("activation").tag(sync=True)  # "activation" | "attribution"
    target = traitlets.Unicode("").tag(sync=True)  # the attribution's target token ("": the top prediction)

    def __init__(self, model: wb.Model, prompt: str, layer: int = 0, top_n: int = 24,
                 mode: str = "zero", factor: float = 0.0, *, top_k: int = 10,
                 ablated: list[int] | None = None, color_by: str = "activation", target: str = "",
                 attribution: str = "gradient_x_activation", steps: int = 16, **kwargs: Any) -> None:
        self.lm = model
        if attribution not in ATTRIBUTIONS:
            raise ValueError(f"attribution must be one of {ATTRIBUTIONS}, not {attribution!r}")
        if int(steps) < 1:
            raise ValueError(f"steps must be at least 1, not {steps}")
        self.attribution, self.steps = attribution, int(steps)
        self._cache: OrderedDict[tuple, wb.RunResult] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._attr_cache: OrderedDict[tuple, AttributionResult] = OrderedDict()
        self._last: tuple[tuple, wb.RunResult] | None = None
        st = self._resolve(prompt, layer, top_n, top_k, mode, factor, ablated or [], -1, color_by, target)
        chosen = st.pop("ablated")
        super().__init__(n_layers=model.arch.n_layers, d_mlp=model.arch.d_mlp, **st, **kwargs)
        self.ablated = chosen  # after `layer`, whose observer clears ablations

    # -- state ---------------------------------------------------------------------
    @traitlets.observe("layer")
    def _layer_changed(self, change: dict) -> None:
        # ablations and the tint refer to neurons of one layer
        if change["old"] != change["new"]:
            self.ablated = []
            self.selected_neuron = -1

    @property
    def interventions(self) -> list[Edit]:
        """The workbench specs for the current ablations (empty when nothing is ablated)."""
        return self._specs(self.layer, self.mode, self.factor, list(self.ablated))

    @staticmethod
    def _specs(layer: int, mode: str, factor: float, ablated: list[int]) -> list[Edit]:
        if not ablated:
            return []
        if mode == "scale":
            return [wb.scale_neurons(layer, list(ablated), factor)]
        return [wb.zero_neurons(layer, list(ablated))]

    def _resolve(self, prompt: str, layer: int, top_n: int, top_k: int, mode: str, factor: float,
                 ablated: list[int], selected: int, color_by: str = "activation", target: str = "") -> dict[str, Any]:
        """Validate a full view state; clear errors for anything out of range."""
        arch = self.lm.arch
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("the prompt is empty: type some text to run")
        try:
            layer = int(layer)
        except (TypeError, ValueError):
            raise ValueError(f"layer must be an integer, not {layer!r}") from None
        arch.check_layer(layer)
        top_n = int(top_n)
        if top_n < 1:
            raise ValueError(f"top_n must be at least 1, not {top_n}")
        top_n = min(top_n, arch.d_mlp)
        top_k = int(top_k)
        if not 1 <= top_k <= 100:
            raise ValueError(f"top_k must be between 1 and 100, not {top_k}")
        if mode not in MODES:
            raise ValueError(f"mode must be 'zero' or 'scale', not {mode!r}")
        factor = float(factor)
        if not math.isfinite(factor):
            raise ValueError(f"the scale factor must be a finite number, not {factor}")
        idx = sorted({int(i) for i in ablated})
        bad = [i for i in idx if not 0 <= i < arch.d_mlp]
        if bad:
            raise IndexError(f"neuron {bad[0]} is out of range: layer {layer} has neurons 0..{arch.d_mlp - 1}")
        selected = int(selected)
        if not -1 <= selected < arch.d_mlp:
            raise IndexError(f"neuron {selected} is out of range: layer {layer} has neurons 0..{arch.d_mlp - 1}")
        if color_by not in COLOR_BY:
            raise ValueError(f"color_by must be 'activation' or 'attribution', not {color_by!r}")
        if not isinstance(target, str):
            raise ValueError(f"the target is a token's text (blank: the top prediction), not {target!r}")
        return {"prompt": prompt, "layer": layer, "top_n": top_n, "top_k": top_k, "mode": mode,
                "factor": factor, "ablated": idx, "selected_neuron": selected, "color_by": color_by, "target": target}

    # -- runs ----------------------------------------------------------------------
    def _baseline(self, prompt: str, layer: int, top_k: int) -> wb.RunResult:
        """The unablated run (cached per prompt, layer and top_k)."""
        key = (prompt, layer, top_k)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        res = self.lm.run(prompt, capture=[f"neurons.{layer}"], top_k=top_k)
        with self._cache_lock:
            self._cache[key] = res
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return res

    def _attribute(self, base: wb.RunResult, layer: int, target: str) -> tuple[AttributionResult, str]:
        """Each neuron's attribution to the target token's last-position logit (cached), and the token's text."""
        tid = int(base.top.ids[0, 0]) if not target else self.lm.token_id(target, "the attribution target")
        key = (base.prompts[0], layer, tid, self.attribution, self.steps)
        with self._cache_lock:
            hit = self._attr_cache.get(key)
        if hit is None:
            kw: dict[str, Any] = {"metric": "logit", "target": tid, "progress": False}
            if self.attribution == "integrated_gradients":
                hit = integrated_gradients(self.lm, base.prompts[0], f"neurons.{layer}", steps=self.steps, **kw)
            else:
                hit = gradient_x_activation(self.lm, base.prompts[0], f"neurons.{layer}", **kw)
            with self._cache_lock:
                self._attr_cache[key] = hit
                while len(self._attr_cache) > _CACHE_SIZE:
                    self._attr_cache.popitem(last=False)
        return hit, self.lm.tokenizer.decode([tid])

    @staticmethod
    def _acts(res: wb.RunResult, layer: int) -> np.ndarray:
        """Neuron activations of prompt 0 at a layer as float32 ``[tokens, d_mlp]``."""
        return res[f"neurons.{layer}"][0].float().numpy().astype(np.float32, copy=False)

    @staticmethod
    def rank(acts: np.ndarray, top_n: int) -> np.ndarray:
        """Indices of the ``top_n`` neurons with the largest max-over-tokens activation (ties: lower index)."""
        peak = acts.max(axis=0)
        return np.argsort(-peak, kind="stable")[:top_n]

    @staticmethod
    def _changes(base: wb.RunResult, cur: wb.RunResult) -> list[dict[str, Any]]:
        """Union of both top-k lists with baseline and current probabilities and their change."""
        pb = torch.softmax(base.logits[0].float(), -1)
        pc = pb if cur is base else torch.softmax(cur.logits[0].float(), -1)
        brank = {int(i): r + 1 for r, i in enumerate(base.top.ids[0])}
        crank = {int(i): r + 1 for r, i in enumerate(cur.top.ids[0])}
        names = dict(zip((int(i) for i in base.top.ids[0]), base.top.tokens[0], strict=True))
        names.update(zip((int(i) for i in cur.top.ids[0]), cur.top.tokens[0], strict=True))
        rows = []
        for tid in dict.fromkeys(list(brank) + list(crank)):
            b, c = float(pb[tid]), float(pc[tid])
            rows.append({"token": names[tid], "id": tid, "base": b, "cur": c, "delta": c - b,
                         "base_rank": brank.get(tid), "cur_rank": crank.get(tid)})
        rows.sort(key=lambda r: (-max(r["base"], r["cur"]), r["id"]))
        return rows

    def _tint(self, base: wb.RunResult, cur: wb.RunResult | None, layer: int, neuron: int) -> dict[str, Any]:
        values = self._acts(base, layer)[:, neuron]
        out: dict[str, Any] = {"neuron": neuron, "layer": layer, "prompt": base.prompts[0], "tokens": base.token_texts(0),
                               "values": np.ascontiguousarray(values),
                               "max_abs": float(np.abs(values).max()) if values.size else 0.0}
        if cur is not None:
            out["current"] = np.ascontiguousarray(self._acts(cur, layer)[:, neuron])
        return out

    # -- static copy ---------------------------------------------------------------------
    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The view's first ``run`` (its reply carries the selected neuron's tint), as `runParams` sends it."""
        return [("run", {"prompt": self.prompt, "layer": int(self.layer), "top_n": int(self.top_n),
                         "top_k": int(self.top_k), "mode": "scale" if self.mode == "scale" else "zero",
                         "factor": float(self.factor), "ablated": sorted(set(self.ablated)),
                         "selected_neuron": int(self.selected_neuron), "color_by": self.color_by,
                         "target": self.target})]

    @rpc(background=True)
    def rpc_run(self, prompt: str | None = None, layer: int | None = None, top_n: int | None = None,
                top_k: int | None = None, mode: str | None = None, factor: float | None = None,
                ablated: list[int] | None = None, selected_neuron: int | None = None,
                color_by: str | None = None, target: str | None = None, job: Job | None = None) -> dict[str, Any]:
        """Run the prompt with the ablations; reply with the heatmap, predictions and tint.

        Parameters left out come from the traits (the browser always sends all of them;
        this method never writes traits, so stale replies cannot undo newer clicks).
        """
        layer_given = layer is not None and layer != self.layer
        st = self._resolve(
            self.prompt if prompt is None else prompt,
            self.layer if layer is None else layer,
            self.top_n if top_n is None else top_n,
            self.top_k if top_k is None else top_k,
            self.mode if mode is None else mode,
            self.factor if factor is None else factor,
            ([] if layer_given else list(self.ablated)) if ablated is None else ablated,
            (-1 if layer_given else self.selected_neuron) if selected_neuron is None else selected_neuron,
            self.color_by if color_by is None else color_by,
            self.target if target is None else target,
        )
        L = st["layer"]
        specs = self._specs(L, st["mode"], st["factor"], st["ablated"])
        runs = 0
        key = (st["prompt"], L, st["top_k"])
        with self._cache_lock:
            cached = key in self._cache
        if job is not None:
            job.check()
        base = self._baseline(st["prompt"], L, st["top_k"])
        runs += 0 if cached else 1
        if specs:
            if job is not None:
                job.check()
            cur = self.lm.run(st["prompt"], specs, capture=[f"neurons.{L}"], top_k=st["top_k"])
            runs += 1
        else:
            cur = base
        self._last = ((*key, json.dumps([spec_dict(s) for s in specs])), cur)

        base_acts, cur_acts = self._acts(base, L), self._acts(cur, L)
        attr = None
        if st["color_by"] == "attribution":
            if job is not None:
                job.check()
            res, token = self._attribute(base, L, st["target"])
            attr_mat = res.attributions.float().numpy().astype(np.float32, copy=False)  # [tokens, d_mlp]
            cols = self.rank(np.abs(attr_mat), st["top_n"])
            shown = np.ascontiguousarray(attr_mat[:, cols])
            attr = {"matrix": shown, "scale": float(np.abs(shown).max()) if shown.size else 0.0,
                    "method": res.method, "metric": f"the logit of {token!r}", "target": token, "foil": None,
                    "total": res.total, "delta": res.delta, "gap": res.gap, "steps": res.steps}
        else:
            cols = self.rank(base_acts, st["top_n"])
        base_mat = np.ascontiguousarray(base_acts[:, cols])
        sel = st["selected_neuron"]
        return {
            "state": st,
            "n_layers": self.lm.arch.n_layers,
            "d_mlp": self.lm.arch.d_mlp,
            "tokens": base.token_texts(0),
            "neurons": cols.astype(np.int32),
            "neuron_max": base_acts.max(axis=0)[cols].astype(np.float32),
            "matrix": np.ascontiguousarray(cur_acts[:, cols]),
            "baseline_matrix": base_mat,
            "scale": float(np.abs(base_mat).max()) if base_mat.size else 0.0,
            "baseline": base.top.as_rows(0),
            "current": cur.top.as_rows(0),
            "changes": self._changes(base, cur),
            "interventions": [spec_dict(s) for s in specs],
            "tint": self._tint(base, cur, L, sel) if sel >= 0 else None,
            "runs": runs,
            "attribution": attr,
        }

    @rpc()
    def rpc_neuron(self, neuron: int, prompt: str | None = None, layer: int | None = None,
                   top_k: int | None = None) -> dict[str, Any]:
        """One neuron's activation over the prompt's tokens (float32), for tinting the text.

        ``values`` come from the unablated run; ``current`` (when the last run matches)
        from the run with the ablations. ``neuron=-1`` clears the tint.
        """
        prompt = self.prompt if prompt is None else prompt
        layer = self.layer if layer is None else int(layer)
        top_k = self.top_k if top_k is None else int(top_k)
        st = self._resolve(prompt, layer, 1, top_k, "zero", 0.0, [], neuron)
        n = st["selected_neuron"]
        if n < 0:
            return {"neuron": -1, "layer": st["layer"]}
        base = self._baseline(st["prompt"], st["layer"], st["top_k"])
        last = self._last
        cur = last[1] if last is not None and last[0][:3] == (st["prompt"], st["layer"], st["top_k"]) else None
        return self._tint(base, cur, st["layer"], n)

    @rpc()
    def rpc_toggle(self, neuron: int) -> dict[str, Any]:
        """Toggle one neuron's ablation (updates ``ablated``) and rerun; for Python callers."""
        neuron = int(neuron)
        d = self.lm.arch.d_mlp
        if not 0 <= neuron < d:
            raise IndexError(f"neuron {neuron} is out of range: layer {self.layer} has neurons 0..{d - 1}")
        now = set(self.ablated)
        now.symmetric_difference_update({neuron})
        self.ablated = sorted(now)
        return self.call("run")

    def toggle(self, neuron: int) -> dict[str, Any]:
        """Toggle a neuron's ablation from Python and return the rerun's reply."""
        return self.call("toggle", neuron=neuron)
