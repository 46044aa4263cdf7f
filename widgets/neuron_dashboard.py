"""NeuronDashboard: one unit of a scan store at a time, with its exemplars, statistics and effect.

    store = wb.scan(model, path="scans/smol")          # or wb.neurons.ScanStore.open(path, model)
    store.show(layer=12, unit=345)                     # the same as NeuronDashboard(store, layer=12, unit=345)
    dash = NeuronDashboard(store, model, weights=wb.neuron_weights(model), layer=12, unit=345)
    dash.next(); dash.prev(); dash.go(layer=3, unit=7)  # or the buttons
    dash.site, dash.layer, dash.unit                   # what is shown (read back from Python)

In the browser: the unit's top exemplars (every token tinted by its activation, the maximum
outlined; hover a token for its value), exemplars across the quantiles of its window maxima,
its activation histogram (the store's signed-log bins, log counts, zero marked), its
statistics, its weight-based classes and the tokens it promotes / suppresses. A prompt box
with **Ablate** (zero the unit) and **Amplify** (scale it by a factor) reruns the model: the
next-token top-k before / after with the probability changes, and ~20 generated tokens
before / after (streamed; a newer request cancels the older one).

``site`` may be any key of the store (``"neurons.3"``, ``"resid_post.2"``, a feature key):
next / previous move through the units of the keys of the same family (``neurons.0``,
``neurons.1``, ...), wrapping to the next / previous layer. Ablate / Amplify edit the model
site of the key (`wb.zero_neurons` / `wb.scale_neurons` for ``neurons.L``, `wb.Edit`
otherwise); a scanned feature (an encoder's output) cannot be edited in place.

Without ``weights`` (a `workbench.neurons.weights.NeuronWeights`), the promoted / suppressed tokens
and the classes of the neuron shown are computed from the weights for that neuron alone
(`NeuronVocab`, the same definitions as `workbench.neurons.weights.neuron_weights`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator
from typing import Any

import numpy as np
import torch
import traitlets

import workbench as wb
from workbench.core.sites import WRITABLE, Site
from workbench.neurons.store import QuantileGroup, ScanStore
from workbench.neurons.weights import (
    final_norm_fold,
    io_classes,
    layer_vectors,
    mlp_layout,
    unembedding_weight,
    vocab_classes,
)

from ._base import Cancelled, Job, WorkbenchWidget, bundle, rpc
from ._payload import as_int, exemplar_payload, finite_float, json_float, predictions
from ._stream import generation, keyed

MODES = ("ablate", "amplify")


# -- the vocabulary projection of one neuron ------------------------------------------------------
class NeuronVocab:
    """`NeuronWeights.unit` for one neuron at a time, computed from the weights on demand.

    ``scores = W_U (g * w_out)`` (final-norm gain ``g`` folded in; ``w_out`` centred for
    LayerNorm models), its top / bottom ``k`` tokens, the vocabulary moments of the cosines
    with the folded, centred unembedding, ``io_cos`` and the classes: the definitions and
    helpers of `workbench.neurons.weights` (see its docstring), for a single neuron. The unembedding
    and norm fold are prepared once per model.
    """

    def __init__(self, model: Any, k: int = 10) -> None:
        self.model = model
        self.k = int(k)
        self._prep: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _prepare(self) -> dict[str, Any]:
        with self._lock:
            if self._prep is None:
                hf, arch = self.model.hf, self.model.arch
                W_U = unembedding_weight(hf, arch)
                gain, center, _ = final_norm_fold(hf, arch)
                with torch.inference_mode():
                    U = W_U.detach().float()
                    g = gain.to(U.device)
                    Uc = U - U.mean(0)
                    tok_norm = (Uc * g).norm(dim=1)
                    inv_tok = torch.where(tok_norm > 0, 1.0 / tok_norm, torch.zeros_like(tok_norm))
                self._prep = {"U": U, "Uc": Uc, "g": g, "inv_tok": inv_tok, "center": center,
                              "layout": mlp_layout(hf, arch)}
            return self._prep

    def unit(self, layer: int, unit: int) -> dict[str, Any]:
        """Like `NeuronWeights.unit`: cosines, classes, vocabulary moments, promoted / suppressed."""
        arch = self.model.arch
        arch.check_layer(layer)
        if isinstance(unit, bool) or not isinstance(unit, int | np.integer) or not 0 <= int(unit) < arch.d_mlp:
            raise IndexError(f"unit {unit!r} is out of range: layers have {arch.d_mlp} neurons (0..{arch.d_mlp - 1})")
        u = int(unit)
        p = self._prepare()
        with torch.inference_mode():
            w_gate, w_in, w_out = layer_vectors(self.model.hf, arch, p["layout"], layer)
            wo = w_out[u].to(p["U"].device)
            io_cos = _cos(w_in[u], w_out[u])
            wc = wo - wo.mean() if p["center"] else wo
            we = wc * p["g"]
            scores = p["U"] @ we
            k = min(self.k, scores.shape[0])
            top, bot = scores.topk(k), scores.topk(k, largest=False)
            x = ((p["Uc"] @ we) * p["inv_tok"]).double()  # cosines times |w_out|
            mu = x.mean()
            m2, m3, m4 = ((x - mu) ** 2).mean(), ((x - mu) ** 3).mean(), ((x - mu) ** 4).mean()
            wn = float(wc.norm())
        inv = 1.0 / wn if wn > 0 else math.nan
        skew = float(m3 / m2**1.5) if m2 > 0 else math.nan
        kurt = float(m4 / m2**2 - 3.0) if m2 > 0 else math.nan
        row: dict[str, Any] = {"site": f"neurons.{layer}", "layer": int(layer), "unit": u, "io_cos": json_float(io_cos)}
        if w_gate is not None:
            gate_cos, gate_up = _cos(w_gate[u], w_out[u]), _cos(w_gate[u], w_in[u])
            row.update(io_cos_gate=json_float(gate_cos), io_cos_up=json_float(io_cos), gate_up_cos=json_float(gate_up))
            io_class = io_classes(np.array([io_cos]), np.array([gate_cos]), np.array([gate_up]))[0]
        else:
            io_class = io_classes(np.array([io_cos]))[0]
        row["io_class"] = str(io_class)
        row.update(vocab_mean=json_float(float(mu) * inv), vocab_std=json_float(float(m2.sqrt()) * inv), vocab_skew=json_float(skew),
                   vocab_kurtosis=json_float(kurt), vocab_class=str(vocab_classes(np.array([kurt]), np.array([skew]))[0]))
        tok = self.model.tokenizer
        row["promoted"] = [{"token": tok.decode([int(i)]), "id": int(i), "score": float(s)}
                           for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
        row["suppressed"] = [{"token": tok.decode([int(i)]), "id": int(i), "score": float(s)}
                             for s, i in zip(bot.values.tolist(), bot.indices.tolist(), strict=True)]
        return row


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float((a @ b) / (na * nb)) if na > 0 and nb > 0 else math.nan


def _group(g: QuantileGroup) -> dict[str, Any]:
    return {"label": g.label, "lo": json_float(g.lo), "hi": json_float(g.hi), "exemplars": [exemplar_payload(e) for e in g.exemplars]}


# -- the widget -------------------------------------------------------------------------------------
class NeuronDashboard(WorkbenchWidget):
    """One unit of a `ScanStore`: exemplars, histogram, statistics, vocabulary, ablate / amplify."""

    _esm = bundle("neuron-dashboard")

    site = traitlets.Unicode("").tag(sync=True)  # the store key shown
    layer = traitlets.Int(-1).tag(sync=True)  # its layer (-1: a key without one, e.g. a feature)
    unit = traitlets.Int(0).tag(sync=True)
    #: The keys next / previous move through: [{"key", "layer", "width"}].
    lane = traitlets.List(traitlets.Dict()).tag(sync=True)
    prompt = traitlets.Unicode("").tag(sync=True)
    factor = traitlets.Float(4.0).tag(sync=True)
    n_exemplars = traitlets.Int(8).tag(sync=True)
    max_new_tokens = traitlets.Int(20).tag(sync=True)
    top_k = traitlets.Int(10).tag(sync=True)
    editable = traitlets.Bool(True).tag(sync=True)  # whether Ablate / Amplify can edit this key

    def __init__(self, store: ScanStore, model: wb.Model | None = None, weights: Any = None, layer: int = 0,
                 unit: int = 0, prompt: str = "The capital of France is", site: str | None = None, *,
                 n_exemplars: int = 8, quantile_groups: int = 4, per_group: int = 2, max_new_tokens: int = 20,
                 factor: float = 4.0, top_k: int = 10, **kwargs: Any) -> None:
        if not isinstance(store, ScanStore):
            raise TypeError(f"NeuronDashboard shows a ScanStore (wb.scan / wb.neurons.ScanStore.open), not {type(store).__name__}")
        if model is None:
            model = store.model
        if model is None:
            raise ValueError("NeuronDashboard needs the model (exemplars rerun windows through it; Ablate / Amplify "
                             "run it): NeuronDashboard(store, model) or wb.neurons.ScanStore.open(path, model=model)")
        if store.model is None:
            store.check_model(model)
            store.model = model
        elif store.model is not model:
            raise ValueError("the store is open with another model than the one given: pass the same model")
        for name, v, lo in (("n_exemplars", n_exemplars, 1), ("quantile_groups", quantile_groups, 0),
                            ("per_group", per_group, 1), ("max_new_tokens", max_new_tokens, 1), ("top_k", top_k, 1)):
            if as_int(name, v) < lo:
                raise ValueError(f"{name} must be at least {lo}, not {v}")
        self.store = store
        self.lm = model
        self.weights = weights
        self.vocab = NeuronVocab(model)
        self.quantile_groups, self.per_group = int(quantile_groups), int(per_group)
        self._store_lock = threading.Lock()
        self._shown_lock = threading.Lock()
        self._gen_cache: dict[tuple[str, int], str] = {}
        key, lay, u = self._resolve(layer, unit, site)
        factor = self._factor(factor)
        super().__init__(site=key, layer=lay, unit=u, lane=self._lane(key), prompt=str(prompt), factor=factor,
                         n_exemplars=int(n_exemplars), max_new_tokens=int(max_new_tokens), top_k=int(top_k),
                         editable=self._site_of(key)[1], **kwargs)

    # -- keys, layers and units ---------------------------------------------------------------
    def _key(self, site: str) -> str:
        keys = self.store.sites
        if site in keys:
            return site
        try:
            key = str(Site.parse(site))
        except (ValueError, TypeError):
            key = None
        if key not in keys:
            raise KeyError(f"the store has no {site!r}; it has {', '.join(keys[:8])}{'…' if len(keys) > 8 else ''}")
        return key

    def _site_of(self, key: str) -> tuple[Site | None, bool]:
        """The model site of a store key and whether Ablate / Amplify can edit it (plain, writable)."""
        info = self.store.meta["sites"][key]
        try:
            site = Site.parse(info.get("site", key))
        except (ValueError, TypeError):
            return None, False
        return site, info.get("transform") is None and site.name in WRITABLE

    def _layer_of(self, key: str) -> int:
        """The layer of a plain layered key (``neurons.3`` -> 3); -1 for features and global sites."""
        site, _ = self._site_of(key)
        plain = self.store.meta["sites"][key].get("transform") is None
        return site.layer if plain and site is not None and site.layer is not None else -1

    def _family(self, name: str) -> list[dict[str, Any]]:
        """The plain keys of one site family (``neurons``) ordered by layer."""
        keys = [k for k in self.store.sites if self._layer_of(k) >= 0 and self._site_of(k)[0].name == name]
        keys.sort(key=self._layer_of)
        return [{"key": k, "layer": self._layer_of(k), "width": self.store.width(k)} for k in keys]

    def _lane(self, key: str) -> list[dict[str, Any]]:
        """The keys next / previous move through: ``key``'s family, or ``key`` alone (no layer)."""
        if self._layer_of(key) < 0:
            return [{"key": key, "layer": -1, "width": self.store.width(key)}]
        return self._family(self._site_of(key)[0].name)

    def _default_family(self) -> str:
        """The family a bare layer refers to: the current key's, else neurons (else the store's first)."""
        cur = self.site
        if cur in self.store.sites and self._layer_of(cur) >= 0:
            return self._site_of(cur)[0].name
        layered = [k for k in self.store.sites if self._layer_of(k) >= 0]
        if not layered or any(self._site_of(k)[0].name == "neurons" for k in layered):
            return "neurons"
        return self._site_of(layered[0])[0].name

    def _resolve(self, layer: Any = None, unit: Any = None, site: str | None = None) -> tuple[str, int, int]:
        """(key, layer, unit) from a store key, or a layer of the current family; clear errors."""
        if site not in (None, ""):
            key = self._key(str(site))
        else:
            if layer is None:
                raise ValueError("give a layer or a site")
            L = as_int("layer", layer)
            family = self._default_family()
            lane = self._family(family)
            key = next((e["key"] for e in lane if e["layer"] == L), None)
            if key is None:
                have = [e["layer"] for e in lane]
                if not have:
                    raise KeyError(f"the store has no layered keys: pass site= one of {', '.join(self.store.sites[:8])}")
                raise IndexError(f"layer {L} is out of range: the store has {family} at layers {min(have)}..{max(have)}")
        u = as_int("unit", unit)
        w = self.store.width(key)
        if not 0 <= u < w:
            raise IndexError(f"unit {u} is out of range for {key} (0..{w - 1})")
        return key, self._layer_of(key), u

    def neighbor(self, delta: int, site: str | None = None, unit: int | None = None) -> tuple[str, int]:
        """The (key, unit) ``delta`` (+1 / -1) units away, wrapping to the next / previous layer."""
        if delta not in (1, -1):
            raise ValueError("delta is +1 (next) or -1 (previous)")
        key = self.site if site is None else self._key(site)
        u = self.unit if unit is None else as_int("unit", unit)
        lane = self._lane(key)
        i = [e["key"] for e in lane].index(key)
        u += delta
        if u >= lane[i]["width"]:
            i, u = (i + 1) % len(lane), 0
        elif u < 0:
            i = (i - 1) % len(lane)
            u = lane[i]["width"] - 1
        return lane[i]["key"], u

    def go(self, layer: int | None = None, unit: int | None = None, site: str | None = None) -> None:
        """Show another unit (the view reruns): a layer of the current family or any store key."""
        if layer is None and site in (None, ""):
            site = self.site
        key, lay, u = self._resolve(layer, self.unit if unit is None else unit, site)
        self._set_shown(key, lay, u)

    def next(self) -> None:
        """The next unit (after the last one of a layer: unit 0 of the next layer)."""
        key, u = self.neighbor(1)
        self.go(unit=u, site=key)

    def prev(self) -> None:
        """The previous unit (before unit 0: the last unit of the previous layer)."""
        key, u = self.neighbor(-1)
        self.go(unit=u, site=key)

    def _set_shown(self, key: str, layer: int, unit: int, job: Job | None = None) -> None:
        """Set the shown unit; a superseded request never overwrites a newer one's (checked under a lock)."""
        with self._shown_lock:
            if job is not None:
                job.check()
            with self.hold_sync():
                self.site, self.layer, self.unit = key, layer, unit

    @traitlets.observe("site")
    def _on_site(self, change: dict) -> None:
        """A new key (from a reply or set in Python): its lane, layer and editability follow."""
        key = change["new"]
        if key in self.store.sites:
            self.lane = self._lane(key)
            self.layer = self._layer_of(key)
            self.editable = self._site_of(key)[1]

    # -- what is shown ------------------------------------------------------------------------------
    def unit_info(self, key: str, layer: int, unit: int) -> dict[str, Any] | None:
        """Weight-based facts of a neuron (`NeuronWeights.unit` or `NeuronVocab.unit`); None for other keys."""
        site, _ = self._site_of(key)
        if site is None or site.name != "neurons" or self.store.meta["sites"][key].get("transform") is not None:
            return None
        if self.weights is not None:
            try:
                return self.weights.unit(layer, unit)
            except IndexError:  # a layer the weights were not computed for
                pass
        return self.vocab.unit(layer, unit)

    def summary(self, key: str, layer: int, unit: int) -> dict[str, Any]:
        """Statistics, histogram and weight facts (no model run): the first partial reply."""
        stats = {k: json_float(v) for k, v in self.store.unit_stats(key, unit).items()}
        edges, counts = self.store.histogram(key, unit)
        try:
            info = self.unit_info(key, layer, unit)
        except Exception as exc:  # shown in the vocabulary section, the rest still works
            info = {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "state": {"site": key, "layer": layer, "unit": unit, "width": self.store.width(key),
                      "editable": self._site_of(key)[1]},
            "stats": stats,
            # counts as float64: exact to 2^53 (int32 would overflow on a scan of > 2^31 tokens)
            "hist": {"edges": np.asarray(edges, dtype=np.float64), "counts": np.asarray(counts, dtype=np.float64),
                     "center": self.store.bins.center},
            "info": info,
            "explanations": self.explanations(key, unit),
        }

    def explanations(self, key: str, unit: int) -> list[dict[str, Any]]:
        """Explanations of this unit in the store's ``explanations.json`` (`workbench.explain`), best first."""
        path = self.store.path / "explanations.json"
        if not path.exists():
            return []
        from workbench.autointerp import ExplanationStore

        try:
            found = ExplanationStore(path).get(key, unit)
        except Exception as exc:  # a corrupt file: say so in the panel, keep the rest working
            return [{"text": f"(explanations.json cannot be read: {exc})", "method": "error", "scores": {}}]
        out = [{"text": e.text, "method": e.method, "client": e.client,
                "scores": {k: {"value": json_float(sc.value), "lo": json_float(sc.lo), "hi": json_float(sc.hi)} for k, sc in e.score.items()}}
               for e in found]
        best = [max((v["value"] for v in o["scores"].values() if v["value"] is not None), default=-1.0) for o in out]
        return [o for _, o in sorted(zip(best, out, strict=True), key=lambda t: -t[0])]

    # -- static copy ---------------------------------------------------------------------
    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The view's first ``neuron`` request (the shown site and unit)."""
        return [("neuron", {"site": self.site, "unit": int(self.unit)})]

    @rpc(background=True)
    def rpc_neuron(self, layer: Any = None, unit: Any = None, site: str | None = None,
                   job: Job | None = None) -> Generator[dict, None, dict]:
        """Show a unit: a partial reply with statistics / histogram / vocabulary, then exemplars.

        ``site`` (a store key) or ``layer`` (of the current family) and ``unit``; the defaults
        are the traits. The final reply adds ``exemplars`` (top windows, ``acts`` float32
        buffers) and ``quantiles`` (groups of exemplars across the window-maximum quantiles).
        """
        if layer is None and site in (None, ""):
            site = self.site
        key, lay, u = self._resolve(layer, self.unit if unit is None else unit, site)
        self._set_shown(key, lay, u, job)
        part = self.summary(key, lay, u)
        yield part
        out = dict(part)
        try:
            with self._store_lock:
                if job is not None:
                    job.check()
                ex = self.store.exemplars(key, u, n=self.n_exemplars)
                if job is not None:
                    job.check()
                groups = (self.store.quantile_exemplars(key, u, self.quantile_groups, self.per_group)
                          if self.quantile_groups else [])
        except Cancelled:
            raise
        except Exception as exc:  # e.g. a feature key whose encoder was not given to the store
            out["exemplar_error"] = f"{type(exc).__name__}: {exc}"
            ex, groups = [], []
        out["exemplars"] = [exemplar_payload(e) for e in ex]
        out["quantiles"] = [_group(g) for g in groups]
        return out

    # -- ablate / amplify --------------------------------------------------------------------------
    @staticmethod
    def _factor(factor: Any) -> float:
        return finite_float("the amplify factor", factor)

    def intervention(self, mode: str = "ablate", factor: float | None = None, site: str | None = None,
                     unit: int | None = None) -> wb.Edit:
        """The spec Ablate (``wb.zero_neurons``) or Amplify (``wb.scale_neurons`` by ``factor``) applies."""
        if mode not in MODES:
            raise ValueError(f"mode is 'ablate' or 'amplify', not {mode!r}")
        key = self.site if site in (None, "") else self._key(str(site))
        u = self.unit if unit is None else as_int("unit", unit)
        if not 0 <= u < self.store.width(key):
            raise IndexError(f"unit {u} is out of range for {key} (0..{self.store.width(key) - 1})")
        f = self._factor(self.factor if factor is None else factor)
        msite, ok = self._site_of(key)
        if not ok or msite is None:
            what = self.store.meta["sites"][key].get("transform")
            raise ValueError(f"{key} is {'a feature (' + str(what) + ')' if what else 'a read-only site'}: "
                             "Ablate / Amplify edit model activations (neurons, resid_post, ...), not an encoder's outputs")
        if msite.name == "neurons":
            return wb.zero_neurons(msite.layer, [u]) if mode == "ablate" else wb.scale_neurons(msite.layer, [u], f)
        return wb.Edit(str(msite), [u], "zero") if mode == "ablate" else wb.Edit(str(msite), [u], "scale", f)

    def predictions(self, base: wb.RunResult, edit: wb.RunResult) -> dict[str, Any]:
        """Top-k before / after and, for the union of their tokens, both probabilities."""
        return predictions(base, edit)

    @rpc(background=True)
    def rpc_edit(self, mode: str = "ablate", prompt: str | None = None, factor: Any = None, site: str | None = None,
                 unit: Any = None, job: Job | None = None) -> Generator[dict, None, dict]:
        """Rerun the prompt with the unit ablated / amplified.

        Partial replies: ``{"intervention", "predictions"}`` first, then ``{"gen_base": text}``
        (while an uncached baseline streams) and ``{"gen_edit": text}``. The final reply holds
        all of them. ``prompt`` and ``factor`` update the traits.
        """
        prompt = self.prompt if prompt is None else str(prompt)
        if not prompt.strip():
            raise ValueError("the prompt is empty: type some text to run")
        spec = self.intervention(mode, factor, site, unit)
        with self.hold_sync():
            self.prompt = prompt
            if factor is not None:
                self.factor = self._factor(factor)
        base = self.lm.run(prompt, top_k=self.top_k)
        if job is not None:
            job.check()
        edit = self.lm.run(prompt, [spec], top_k=self.top_k)
        out: dict[str, Any] = {"mode": mode, "site": self.site if site in (None, "") else self._key(str(site)),
                               "unit": int(spec.indices[0]), "intervention": spec.to_dict(),
                               "describe": spec.describe(), "prompt": prompt,
                               "predictions": self.predictions(base, edit)}
        yield dict(out)
        n = self.max_new_tokens
        gen_base = self._gen_cache.get((prompt, n))
        if gen_base is None:
            gen_base = yield from keyed("gen_base", generation(self.lm, prompt, [], n, job, "dashboard-generate"))
            self._gen_cache = {(prompt, n): gen_base}
            yield {"gen_base": gen_base}
        out["gen_base"] = gen_base
        out["gen_edit"] = yield from keyed("gen_edit", generation(self.lm, prompt, [spec], n, job, "dashboard-generate"))
        return out

    def ablate(self, prompt: str | None = None) -> dict[str, Any]:
        """What the Ablate button shows, from Python (synchronously)."""
        return self.call("edit", mode="ablate", prompt=prompt)

    def amplify(self, factor: float | None = None, prompt: str | None = None) -> dict[str, Any]:
        """What the Amplify button shows, from Python (synchronously)."""
        return self.call("edit", mode="amplify", prompt=prompt, factor=factor)
