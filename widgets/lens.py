"""LogitLens: layers × positions grid of what each layer's residual stream predicts.

    from workbench.widgets import LogitLens
    w = LogitLens(model, "The capital of France is", targets=[" Paris"])
    w                      # in a notebook
    w.pinned, w.pinned_site   # the cell clicked last: [layer, position] and "resid_post.<layer>"
    wb.logit_lens(model, prompt).show()   # the same widget from a result

In the browser: each cell shows the lens's top token, coloured by its probability (or a
chosen target's, with the "colour by" selector); hover a cell for its top-k; click it to
pin that layer and position (read back from Python, e.g. to steer or patch there). With
``lens=TunedLens(...)`` the grid shows the tuned lens instead of the logit lens.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import traitlets

import workbench as wb
from workbench.causal.lens import LensResult, TunedLens, logit_lens, target_ids, tuned_lens

from ._base import Job, WorkbenchWidget, bundle, rpc


class LogitLens(WorkbenchWidget):
    """Logit lens (or tuned lens) grid: rows = layers, columns = tokens; click a cell to pin it."""

    _esm = bundle("lens")

    prompt = traitlets.Unicode("").tag(sync=True)
    targets = traitlets.List(traitlets.Unicode(), []).tag(sync=True)
    top_k = traitlets.Int(5).tag(sync=True)
    color_by = traitlets.Unicode("top").tag(sync=True)  # "top" or one of the targets
    pinned = traitlets.List(traitlets.Int(), []).tag(sync=True)  # [] or [layer, position]
    kind = traitlets.Unicode("logit").tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)

    def __init__(self, model: wb.Model, prompt: str, targets: list[str] | None = None,
                 lens: TunedLens | None = None, *, top_k: int = 5, **kwargs: Any) -> None:
        self.lm = model
        self.lens = lens
        if lens is not None:
            lens.check(model)
        self._result: LensResult | None = None
        self._result_lock = threading.Lock()
        st = self._resolve(prompt, list(targets or []), top_k)
        super().__init__(n_layers=model.arch.n_layers, kind="tuned" if lens is not None else "logit", **st, **kwargs)

    @classmethod
    def from_result(cls, model: wb.Model, result: LensResult, lens: TunedLens | None = None,
                    **kwargs: Any) -> LogitLens:
        """A widget showing an existing `LensResult` (reruns only when the prompt changes)."""
        if model is None:
            raise ValueError("this LensResult has no model: use LogitLens.from_result(model, result)")
        lens = lens if lens is not None else result.lens
        if result.kind == "tuned" and lens is None:
            raise ValueError("this is a tuned-lens result: pass lens=the TunedLens it was computed with")
        w = cls(model, result.prompt, list(result.targets), lens=lens, top_k=result.k, **kwargs)
        if result.layers == list(range(model.arch.n_layers)) and result.positions == list(range(len(result.tokens))):
            w._result = result
        return w

    # -- state -----------------------------------------------------------------------
    @property
    def pinned_site(self) -> str | None:
        """The pinned cell's site, e.g. ``"resid_post.12"`` (None when nothing is pinned)."""
        return f"resid_post.{self.pinned[0]}" if len(self.pinned) == 2 else None

    @property
    def pinned_position(self) -> int | None:
        return self.pinned[1] if len(self.pinned) == 2 else None

    @property
    def result(self) -> LensResult | None:
        """The last lens result the widget computed (or was given)."""
        return self._result

    def pin(self, layer: int, position: int) -> None:
        """Pin a cell from Python (as a click does)."""
        self.lm.arch.check_layer(int(layer))
        self.pinned = [int(layer), int(position)]

    def _resolve(self, prompt: str, targets: list[str], top_k: int) -> dict[str, Any]:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("the prompt is empty: type some text to run")
        top_k = int(top_k)
        if not 1 <= top_k <= 50:
            raise ValueError(f"top_k must be between 1 and 50, not {top_k}")
        names, _ = target_ids(self.lm, targets)  # clear errors for multi-token targets
        return {"prompt": prompt, "targets": names, "top_k": top_k}

    def _compute(self, st: dict[str, Any]) -> LensResult:
        with self._result_lock:
            cached = self._result
        if (cached is not None and cached.prompt == st["prompt"] and cached.targets == st["targets"]
                and cached.k == st["top_k"]):
            return cached
        kw = dict(targets=st["targets"], top_k=st["top_k"])
        if self.lens is not None:
            res = tuned_lens(self.lm, st["prompt"], self.lens, **kw)
        else:
            res = logit_lens(self.lm, st["prompt"], **kw)
        with self._result_lock:
            self._result = res
        return res

    @staticmethod
    def payload(res: LensResult) -> dict[str, Any]:
        """A result as a reply: arrays as float32 / int32 buffers, token texts as JSON."""
        ids = res.top_ids.numpy().astype(np.int32)
        texts: dict[str, str] = {}
        for i, layer in enumerate(res.top_tokens):
            for j, row in enumerate(layer):
                for r, t in enumerate(row):
                    texts.setdefault(str(int(ids[i, j, r])), t)
        return {
            "tokens": list(res.tokens),
            "layers": np.asarray(res.layers, dtype=np.int32),
            "positions": np.asarray(res.positions, dtype=np.int32),
            "top_ids": np.ascontiguousarray(ids),
            "top_probs": np.ascontiguousarray(res.top_probs.numpy().astype(np.float32)),
            "id_text": texts,
            "targets": list(res.targets),
            "target_ids": np.asarray(res.target_ids, dtype=np.int32),
            "target_probs": np.ascontiguousarray(res.target_probs.numpy().astype(np.float32)),
            "target_ranks": np.ascontiguousarray(res.target_ranks.numpy().astype(np.int32)),
            "kl": np.ascontiguousarray(res.kl.numpy().astype(np.float32)),
            "kind": res.kind,
        }

    # -- static copy ---------------------------------------------------------------------
    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The view's first ``run``."""
        return [("run", {"prompt": self.prompt, "targets": list(self.targets), "top_k": int(self.top_k)})]

    @rpc(background=True)
    def rpc_run(self, prompt: str | None = None, targets: list[str] | None = None, top_k: int | None = None,
                job: Job | None = None) -> dict[str, Any]:
        """Compute the lens for the prompt; reply with the grid (parameters default to the traits)."""
        st = self._resolve(self.prompt if prompt is None else prompt,
                           list(self.targets) if targets is None else list(targets),
                           self.top_k if top_k is None else top_k)
        if job is not None:
            job.check()
        res = self._compute(st)
        return {"state": st, **self.payload(res)}
