"""FeatureList and FeatureDashboard: the latents of a sparse dictionary (SAE, transcoder, semi-NMF).

    d = wb.load_dictionary("path/to/sae", model=model)        # any workbench `Dictionary`
    store = wb.scan(model, corpus, "scans/sae", sites=[], features={"sae": (d.site, d.encode)})
    FeatureList(model, d, "The Eiffel Tower is in", store=store)   # tokens -> active latents -> dashboard
    FeatureDashboard(model, d, 123, store=store)                   # one latent, Neuronpedia style

**FeatureList** shows the prompt's tokens; clicking one lists its most active latents (activation,
label, the tokens its decoder direction promotes). Clicking a latent opens its dashboard below;
a toggle per latent zeroes it or scales it by a factor (`workbench.dictionaries.features.FeatureEdit`, one
spec for all toggled latents) and reruns the prompt: next-token predictions baseline vs edited.

**FeatureDashboard** shows one latent: top activations and examples by activation interval from a
scan store (``wb.scan(..., features={key: (d.site, d.encode)})``; without one the panel says so),
the activation density (fraction of tokens active) and histogram of its non-zero activations,
the positive and negative logit effects, the nearest latents by decoder cosine, and a box to
try any text (tokens tinted by this latent's activation, encoded inside the model's trace).

A latent's name is its ``dictionary.labels`` entry; its explanation comes from ``explanations=``:
a mapping or callable latent -> text, an `workbench.autointerp.ExplanationStore`, or ``"auto"``
(the default: the scan store's ``explanations.json``, as `workbench.explain` writes it, reread
when it changes; the best-scoring explanation of the latent is shown).

The numbers come from `feature_facts.FeatureFacts` (definitions there).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator, Mapping
from typing import Any

import numpy as np
import torch
import traitlets

import workbench as wb
from workbench.dictionaries.dictionary import Dictionary
from workbench.dictionaries.features import (
    FeatureEdit,
    scale_features,
    zero_features,
)
from workbench.neurons.store import ScanStore

from ._base import Cancelled, Job, WorkbenchWidget, bundle, rpc
from ._payload import as_int, finite_float, predictions
from .feature_facts import Encoder, FeatureFacts

#: Latent edits a FeatureList toggle applies.
EDIT_OPS = ("zero", "scale")


def _edits(v: Any, d_sae: int) -> list[dict[str, Any]]:
    """Normalized toggle state: ``[{"latent", "op", "value"}]``, one per latent, in the order given."""
    out: dict[int, dict[str, Any]] = {}
    for e in list(v or []):
        if not isinstance(e, Mapping):
            raise ValueError(f"an edit is a dict with latent, op and value, not {e!r}")
        i = as_int("latent", e.get("latent"))
        if not 0 <= i < d_sae:
            raise IndexError(f"latent {i} is out of range for a dictionary of {d_sae} latents (0..{d_sae - 1})")
        op = e.get("op")
        if op not in EDIT_OPS:
            raise ValueError(f"a latent toggle zeroes or scales it: op is 'zero' or 'scale', not {op!r}")
        value = None
        if op == "scale":
            try:
                value = float(e.get("value"))
            except (TypeError, ValueError):
                raise ValueError(f"scaling latent {i} needs a number as value, not {e.get('value')!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"the scale factor of latent {i} must be finite, not {value}")
        out[i] = {"latent": i, "op": op, "value": value}
    return list(out.values())


def edit_spec(d: Dictionary | str, edits: list[dict[str, Any]]) -> FeatureEdit | None:
    """The one `FeatureEdit` for some toggles: ``zero`` if all zero, else ``scale`` with 0 for zeroed latents."""
    if not edits:
        return None
    latents = [e["latent"] for e in edits]
    if all(e["op"] == "zero" for e in edits):
        return zero_features(d, latents)
    return scale_features(d, latents, [0.0 if e["op"] == "zero" else float(e["value"]) for e in edits])


# -- the dashboard's kernel side, shared by both widgets --------------------------------------------
class _DashboardRpc(WorkbenchWidget):
    """``rpc_latent`` / ``rpc_custom``: what a dashboard view asks for (``self.facts`` answers)."""

    facts: FeatureFacts
    n_top = 8
    n_intervals = 5
    per_interval = 3

    def _shown(self, i: int, job: Job | None) -> None:
        raise NotImplementedError

    @rpc(background=True)
    def rpc_latent(self, latent: Any = None, job: Job | None = None) -> Generator[dict, None, dict]:
        """Show a latent: a partial reply with label, logit effects, nearest latents and the store's
        density / histogram, then the final reply with the store's exemplars (``top``, ``intervals``)."""
        i = self.facts.latent(self.latent if latent is None else latent)
        self._shown(i, job)
        part = self.facts.summary(i)
        extra = self._extra(i)
        part.update(extra)
        yield part
        out = dict(part)
        if self.facts.has_store:
            try:
                out["examples"] = self.facts.store_examples(i, self.n_top, self.n_intervals, self.per_interval, job)
            except Cancelled:
                raise
            except Exception as exc:  # shown in the examples section; the rest of the dashboard stands
                out["examples"] = {"error": f"{type(exc).__name__}: {exc}"}
        return out

    def _extra(self, i: int) -> dict[str, Any]:
        return {}

    @rpc(background=True)
    def rpc_custom(self, text: str | None = None, latent: Any = None, job: Job | None = None) -> dict[str, Any]:
        """Encode a text inside the model's trace: its tokens and latent ``latent``'s activation on each."""
        text = self.text if text is None else str(text)
        i = self.facts.latent(self.latent if latent is None else latent)
        tokens, acts = self.facts.encode_text(text)
        if job is not None:
            job.check()
        with self.hold_sync():
            self.text = text
        a = acts[:, i].numpy().astype(np.float32)
        return {"latent": i, "text": text, "tokens": tokens, "acts": np.ascontiguousarray(a),
                "max": float(a.max()) if len(a) else 0.0}


class FeatureDashboard(_DashboardRpc):
    """One latent of a dictionary, in the shape of SAEDashboard / Neuronpedia (see the module docstring)."""

    _esm = bundle("feature-dashboard")

    latent = traitlets.Int(0).tag(sync=True)
    d_sae = traitlets.Int(0).tag(sync=True)
    text = traitlets.Unicode("").tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    has_store = traitlets.Bool(False).tag(sync=True)

    def __init__(self, model: wb.Model, dictionary: Dictionary, latent: int = 0, store: ScanStore | None = None, *,
                 key: str | None = None, text: str = "The capital of France is Paris.", explanations: Any = "auto",
                 facts: FeatureFacts | None = None, **kwargs: Any) -> None:
        if facts is None:
            facts = FeatureFacts(model, dictionary, store, key, explanations)
        elif facts.d is not dictionary or facts.model is not model:
            raise ValueError("facts belong to another model or dictionary")
        self.facts = facts
        i = facts.latent(latent)
        d = facts.d
        where = d.site + (f" → {d.out_site}" if d.out_site else "")
        super().__init__(latent=i, d_sae=d.d_sae, text=str(text), has_store=facts.has_store,
                         title=f"{facts.name} · {d.architecture} · {where}", **kwargs)

    # -- static copy ---------------------------------------------------------------------
    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The shown latent's ``latent`` request, then its ``custom`` run of the text box's text."""
        reqs: list[tuple[str, dict[str, Any]]] = [("latent", {"latent": int(self.latent)})]
        if self.text.strip():  # the view encodes its custom text as soon as the latent is shown
            reqs.append(("custom", {"text": self.text, "latent": int(self.latent)}))
        return reqs

    @property
    def dictionary(self) -> Dictionary:
        return self.facts.d

    def _shown(self, i: int, job: Job | None) -> None:
        if job is not None:
            job.check()
        self.latent = i

    def go(self, latent: int) -> None:
        """Show another latent (the view reruns)."""
        self.latent = self.facts.latent(latent)

    def next(self) -> None:
        """The next latent (after the last: latent 0)."""
        self.latent = (self.latent + 1) % self.d_sae

    def prev(self) -> None:
        """The previous latent (before latent 0: the last)."""
        self.latent = (self.latent - 1) % self.d_sae

    def show_latent(self, latent: int | None = None) -> dict[str, Any]:
        """What the dashboard shows for a latent, from Python (synchronously)."""
        return self.call("latent", latent=latent)


class FeatureList(_DashboardRpc):
    """A prompt's tokens -> each token's most active latents -> a latent's dashboard; toggles edit latents."""

    _esm = bundle("feature-list")

    prompt = traitlets.Unicode("").tag(sync=True)
    k = traitlets.Int(10).tag(sync=True)
    position = traitlets.Int(-1).tag(sync=True)  # the token clicked (-1: none)
    latent = traitlets.Int(-1).tag(sync=True)  # the latent whose dashboard is open (-1: none)
    #: The toggles: [{"latent", "op": "zero" | "scale", "value"}] (small JSON).
    edits = traitlets.List(traitlets.Dict()).tag(sync=True)
    factor = traitlets.Float(4.0).tag(sync=True)  # the default scale factor of a new toggle
    d_sae = traitlets.Int(0).tag(sync=True)
    text = traitlets.Unicode("").tag(sync=True)  # the dashboard's custom text
    title = traitlets.Unicode("").tag(sync=True)
    has_store = traitlets.Bool(False).tag(sync=True)
    top_k = traitlets.Int(10).tag(sync=True)  # next-token predictions shown

    def __init__(self, model: wb.Model, dictionary: Dictionary, prompt: str, store: ScanStore | None = None,
                 k: int = 10, *, key: str | None = None, factor: float = 4.0, top_k: int = 10,
                 explanations: Any = "auto", **kwargs: Any) -> None:
        self.facts = FeatureFacts(model, dictionary, store, key, explanations)
        d = self.facts.d
        k = as_int("k", k)
        if not 1 <= k <= d.d_sae:
            raise ValueError(f"k must be between 1 and d_sae={d.d_sae}, not {k}")
        if not 1 <= as_int("top_k", top_k) <= 100:
            raise ValueError(f"top_k must be between 1 and 100, not {top_k}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: give some text")
        where = d.site + (f" → {d.out_site}" if d.out_site else "")
        super().__init__(prompt=prompt, k=k, factor=self._factor(factor), d_sae=d.d_sae, text=prompt,
                         has_store=self.facts.has_store, top_k=int(top_k),
                         title=f"{self.facts.name} · {d.architecture} · {where}", **kwargs)
        self._edit_lock = threading.Lock()

    @property
    def dictionary(self) -> Dictionary:
        return self.facts.d

    @property
    def model(self) -> wb.Model:
        return self.facts.model

    @staticmethod
    def _factor(v: Any) -> float:
        return finite_float("the scale factor", v)

    # -- the prompt's latents -----------------------------------------------------------------------
    def _prompt(self, prompt: Any) -> str:
        p = self.prompt if prompt is None else str(prompt)
        if not p.strip():
            raise ValueError("the prompt is empty: type some text to run")
        return p

    # -- static copy ---------------------------------------------------------------------
    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """``run`` of the prompt, the clicked token's ``token``, the ``edit`` predictions, the open latent
        (and its dashboard's ``custom`` run)."""
        reqs: list[tuple[str, dict[str, Any]]] = [("run", {"prompt": self.prompt})]
        if self.position >= 0:
            reqs.append(("token", {"position": int(self.position), "prompt": self.prompt}))
        reqs.append(("edit", {"edits": [dict(e) for e in self.edits], "prompt": self.prompt}))
        if self.latent >= 0:
            reqs.append(("latent", {"latent": int(self.latent)}))
            if self.text.strip():  # the open dashboard encodes its custom text once the latent is shown
                reqs.append(("custom", {"text": self.text, "latent": int(self.latent)}))
        return reqs

    @rpc(background=True)
    def rpc_run(self, prompt: str | None = None, job: Job | None = None) -> dict[str, Any]:
        """Encode the prompt: its tokens, each token's ``k`` largest latents (``top_idx`` / ``top_val``
        [seq, k], descending), the number of active latents and the largest activation per token."""
        p = self._prompt(prompt)
        tokens, acts = self.facts.encode_text(p)
        if job is not None:
            job.check()
        k = min(self.k, acts.shape[1])
        top = acts.topk(k, dim=-1)
        with self.hold_sync():
            if p != self.prompt:
                self.prompt = p
                self.position = -1
        return {"prompt": p, "tokens": tokens, "k": k,
                "top_idx": top.indices.to(torch.int32).numpy(), "top_val": top.values.numpy().astype(np.float32),
                "n_active": (acts > 0).sum(-1).to(torch.int32).numpy(),
                "max_act": acts.max(-1).values.numpy().astype(np.float32)}

    def token_latents(self, position: int, prompt: str | None = None) -> list[dict[str, Any]]:
        """The active latents among the ``k`` largest at a token: latent, act, label, explanation, promoted."""
        p = self._prompt(prompt)
        tokens, acts = self.facts.encode_text(p)
        pos = as_int("position", position)
        if not -len(tokens) <= pos < len(tokens):
            raise IndexError(f"position {pos} is out of range for a prompt of {len(tokens)} tokens")
        pos %= len(tokens)
        top = acts[pos].topk(min(self.k, acts.shape[1]))
        rows = []
        for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            if not v > 0:
                break
            try:
                promoted = self.facts.promoted(int(i))
            except (NotImplementedError, ValueError):
                promoted = []
            rows.append({"latent": int(i), "act": float(v), "label": self.facts.label(int(i)),
                         "explanation": self.facts.explanation(int(i)), "promoted": promoted})
        return rows

    @rpc(background=True)
    def rpc_token(self, position: Any, prompt: str | None = None, job: Job | None = None) -> dict[str, Any]:
        """A token's most active latents (see `token_latents`); selects the token."""
        p = self._prompt(prompt)
        rows = self.token_latents(position, p)
        tokens, _ = self.facts.encode_text(p)
        pos = as_int("position", position) % len(tokens)
        if job is not None:
            job.check()
        self.position = pos
        return {"position": pos, "token": tokens[pos], "latents": rows}

    # -- the dashboard of a latent -------------------------------------------------------------------
    def _shown(self, i: int, job: Job | None) -> None:
        if job is not None:
            job.check()
        self.latent = i

    def _extra(self, i: int) -> dict[str, Any]:
        _, acts = self.facts.encode_text(self.prompt)
        return {"prompt_acts": np.ascontiguousarray(acts[:, i].numpy().astype(np.float32))}

    def open_dashboard(self, latent: int) -> None:
        """Open a latent's dashboard in the widget (as clicking it does)."""
        self.latent = self.facts.latent(latent)

    def dashboard(self, latent: int | None = None, **kwargs: Any) -> FeatureDashboard:
        """A separate `FeatureDashboard` of a latent (default: the open one), sharing this list's caches."""
        i = self.latent if latent is None else latent
        if i is None or i < 0:
            raise ValueError("no latent is open: dashboard(latent)")
        kwargs.setdefault("text", self.prompt)
        return FeatureDashboard(self.facts.model, self.facts.d, i, self.facts.store, facts=self.facts, **kwargs)

    # -- toggles and the edited run -------------------------------------------------------------------
    def toggle(self, latent: int, op: str | None = "zero", value: float | None = None) -> FeatureList:
        """Set a latent's toggle: ``"zero"``, ``"scale"`` (by ``value``, default the factor) or None (off)."""
        i = self.facts.latent(latent)
        with self._edit_lock:
            edits = [dict(e) for e in self.edits if e["latent"] != i]
            if op is not None:
                edits.append({"latent": i, "op": op, "value": (self.factor if value is None else value)
                              if op == "scale" else None})
            self.edits = _edits(edits, self.facts.d.d_sae)
        return self

    def clear(self) -> None:
        """Turn every toggle off."""
        self.edits = []

    @property
    def interventions(self) -> list[FeatureEdit]:
        """The spec the toggles apply (``[]`` when none is on)."""
        spec = edit_spec(self.facts.name, _edits(self.edits, self.facts.d.d_sae))
        return [] if spec is None else [spec]

    @rpc(background=True)
    def rpc_edit(self, edits: list[dict] | None = None, prompt: str | None = None,
                 job: Job | None = None) -> dict[str, Any]:
        """Rerun the prompt with the toggles (``edits`` updates them): next-token predictions baseline vs edited."""
        p = self._prompt(prompt)
        norm = _edits(self.edits if edits is None else edits, self.facts.d.d_sae)
        spec = edit_spec(self.facts.name, norm)
        base = self.facts.model.run(p, top_k=self.top_k)
        if job is not None:
            job.check()
        edit = self.facts.model.run(p, [spec], top_k=self.top_k) if spec is not None else base
        if job is not None:
            job.check()
        with self.hold_sync():
            self.edits = norm
            if p != self.prompt:
                self.prompt = p
        return {"prompt": p, "edits": norm, "edited": spec is not None,
                "intervention": None if spec is None else spec.to_dict(),
                "describe": "no latent edited" if spec is None else spec.describe(),
                "predictions": predictions(base, edit)}

    def rerun(self) -> dict[str, Any]:
        """The edited run for the current toggles, from Python (synchronously)."""
        return self.call("edit")


__all__ = ["FeatureList", "FeatureDashboard", "FeatureFacts", "Encoder", "edit_spec", "predictions"]
