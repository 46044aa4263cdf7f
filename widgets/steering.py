"""SteeringPanel: sliders that add directions to the residual stream and regenerate live.

    panel = SteeringPanel(model, "I think that", max_new_tokens=24)
    panel.add_neuron(10, 1234)                                   # a neuron's output direction
    panel.add_mean_difference("love-hate", ["I love"], ["I hate"])
    panel.add_direction("mine", my_tensor, layer=12)              # any d_model vector
    panel.add_feature(sae, 123)                                   # a dictionary latent's decoder row
    panel.add_feature(nmf.to_dictionary(), 4)                     # a semi-NMF component (neurons.L)
    panel                                                         # move sliders; text streams
    panel.strengths, panel.interventions                          # read back as `wb.steer` specs

Direction vectors stay in Python; only names, layers, slider ranges and strengths are
synced. Dictionary features steer along their unit decoder row at the dictionary's write
site (`workbench.dictionaries.features.feature_direction`; entries then carry that ``site``). Generation
runs in a worker thread through `Model.generate` with `wb.steer` specs, streaming the
steered text; a newer request cancels the older one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import torch
import traitlets

import workbench as wb
from workbench.causal.directions import neuron_direction
from workbench.core.sites import TOKEN_SITES, WRITABLE

from ._base import Job, WorkbenchWidget, bundle, rpc
from ._stream import generation, keyed

#: Sites a direction can be added to: one writable vector per token (from the site table).
STEERABLE = TOKEN_SITES & WRITABLE
#: Default slider half-range, in multiples of the typical residual norm at the layer.
RANGE_FACTOR = 4.0


def nice_ceil(x: float) -> float:
    """Smallest number >= x of the form {1, 2, 2.5, 5} x 10^k (for slider bounds)."""
    if not math.isfinite(x) or x <= 0:
        return 1.0
    exp = math.floor(math.log10(x))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        v = m * 10.0**exp
        if v >= x * (1 - 1e-9):
            return float(f"{v:.6g}")
    return float(f"{10.0 ** (exp + 1):.6g}")  # pragma: no cover


class SteeringPanel(WorkbenchWidget):
    """Steer generation with named residual-stream directions, one slider each."""

    _esm = bundle("steering")

    prompt = traitlets.Unicode("").tag(sync=True)
    max_new_tokens = traitlets.Int(32).tag(sync=True)
    #: One dict per direction: name, layer, kind, min, max, strength (no vectors); plus site when
    #: it is not resid_post.<layer> (dictionary features).
    directions = traitlets.List(traitlets.Dict()).tag(sync=True)
    baseline_text = traitlets.Unicode("").tag(sync=True)
    steered_text = traitlets.Unicode("").tag(sync=True)
    default_layer = traitlets.Int(0).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)

    def __init__(self, model: wb.Model, prompt: str, max_new_tokens: int = 32, layer: int | None = None,
                 **kwargs: Any) -> None:
        if layer is None:
            layer = model.arch.n_layers // 3
        model.arch.check_layer(layer)
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        super().__init__(prompt=prompt, max_new_tokens=int(max_new_tokens), default_layer=layer,
                         n_layers=model.arch.n_layers, **kwargs)
        self.model = model
        self._vectors: dict[str, torch.Tensor] = {}
        self._norms: dict[str, torch.Tensor] = {}  # prompt -> typical residual norm per layer
        self._baseline: dict[tuple[str, int], str] = {}
        self._site_norms: dict[tuple[str, str], float] = {}  # (prompt, site) -> typical norm there
        self._state_lock = threading.RLock()

    # -- directions ------------------------------------------------------------------
    def _vector(self, name: str, vector: Any, site: str | None = None) -> torch.Tensor:
        if isinstance(vector, torch.Tensor):
            v = vector.detach().to("cpu", torch.float32)
        else:
            v = torch.as_tensor(np.asarray(vector, dtype=np.float32))
        d = self.model.arch.d_model if site is None else self.model.arch.size(wb.Site.parse(site))
        if v.dim() == 2 and 1 in v.shape:
            v = v.reshape(-1)
        if v.dim() != 1 or v.shape[0] != d:
            where = "the residual stream of this model has width d_model" if site is None else f"{site} has width"
            raise ValueError(
                f"direction {name!r} has shape {tuple(v.shape)}, but {where}={d}: give a vector of {d} values"
            )
        if not torch.isfinite(v).all():
            raise ValueError(f"direction {name!r} contains NaN or infinite values")
        if float(v.norm()) == 0.0:
            raise ValueError(f"direction {name!r} is all zeros")
        return v.contiguous()

    def resid_norm(self, layer: int) -> float:
        """Typical (median over positions, first token excluded) residual norm after ``layer``."""
        self.model.arch.check_layer(layer)
        key = self.prompt
        with self._state_lock:
            norms = self._norms.get(key)
        if norms is None:
            sites = [f"resid_post.{i}" for i in range(self.model.arch.n_layers)]
            res = self.model.run(self.prompt, capture=sites, top_k=1)
            rows = []
            for s in sites:
                x = res.activations[s][0].float()
                x = x[1:] if x.shape[0] > 1 else x
                rows.append(x.norm(dim=-1).median())
            norms = torch.stack(rows)
            with self._state_lock:
                self._norms = {key: norms}
        return float(norms[layer])

    def site_norm(self, site: str) -> float:
        """Typical (median over positions, first token excluded) activation norm at any site."""
        s = wb.Site.parse(site)
        if s.name == "resid_post":
            return self.resid_norm(s.layer)
        key = (self.prompt, str(s))
        with self._state_lock:
            hit = self._site_norms.get(key)
        if hit is None:
            x = self.model.run(self.prompt, capture=[str(s)], top_k=1).activations[str(s)][0].float()
            x = x.flatten(1) if x.dim() > 2 else x
            x = x[1:] if x.shape[0] > 1 else x
            hit = float(x.norm(dim=-1).median())
            with self._state_lock:
                self._site_norms = {k: v for k, v in self._site_norms.items() if k[0] == self.prompt}
                self._site_norms[key] = hit
        return hit

    def add_direction(self, name: str, vector: Any, layer: int | None = None, max_strength: float | None = None,
                      strength: float = 0.0, kind: str = "vector", site: str | None = None) -> SteeringPanel:
        """Add (or replace) a named direction: a tensor of width ``d_model``, steered after ``layer``.

        The slider spans ``±max_strength``; by default a few times the typical residual
        norm at that layer divided by the vector's norm (so a unit vector can reach
        ``RANGE_FACTOR`` residual norms). ``vector`` may also be ``(dictionary, latent)``
        (see `add_feature`). ``site`` steers another site than ``resid_post.<layer>``
        (a vector of that site's width; its layer is the site's).
        """
        if isinstance(vector, tuple) and len(vector) == 2 and not isinstance(vector[0], int | float):
            return self.add_feature(vector[0], vector[1], name=name, max_strength=max_strength, strength=strength)
        if not name:
            raise ValueError("a direction needs a name")
        if site is not None:
            s = wb.Site.parse(site)
            if s.name not in STEERABLE:
                raise ValueError(f"cannot steer {s}: steering adds one vector per token at "
                                 f"{', '.join(sorted(STEERABLE))}")
            site = str(s)
            layer = s.layer if s.layer is not None else (self.default_layer if layer is None else int(layer))
            if site == f"resid_post.{layer}":
                site = None
        layer = self.default_layer if layer is None else int(layer)
        self.model.arch.check_layer(layer)
        v = self._vector(name, vector, site)
        if max_strength is None:
            norm = self.resid_norm(layer) if site is None else self.site_norm(site)
            max_strength = nice_ceil(RANGE_FACTOR * norm / float(v.norm()))
        max_strength = float(max_strength)
        if not max_strength > 0:
            raise ValueError("max_strength must be positive")
        entry = {"name": name, "layer": layer, "kind": kind, "min": -max_strength, "max": max_strength,
                 "strength": float(strength)}
        if site is not None:
            entry["site"] = site
        with self._state_lock:
            self._vectors[name] = v
            dirs = [dict(d) for d in self.directions]
            names = [d["name"] for d in dirs]
            if name in names:
                dirs[names.index(name)] = entry
            else:
                dirs.append(entry)
            self.directions = dirs
        return self

    def add_neuron(self, layer: int, index: int, name: str | None = None, max_strength: float | None = None,
                   strength: float = 0.0) -> SteeringPanel:
        """Add the residual direction MLP neuron ``index`` of ``layer`` writes (`neuron_direction`)."""
        v = neuron_direction(self.model, layer, index)
        return self.add_direction(name or f"L{layer}N{index}", v, layer, max_strength, strength, kind="neuron")

    def add_subspace(self, subspace: Any, coords: Sequence[float] | None = None, name: str | None = None,
                     max_strength: float | None = None, strength: float = 0.0) -> SteeringPanel:
        """Add a direction of a `workbench.causal.Subspace` (or a DAS result's) at its site: the vector
        with ``coords`` in the subspace's basis (default: its first basis vector)."""
        sub = getattr(subspace, "subspace", subspace)  # a DASResult carries its subspace
        basis = torch.as_tensor(sub.basis).float()
        c = torch.zeros(basis.shape[0]) if coords is None else torch.as_tensor(list(coords), dtype=torch.float32)
        if coords is None:
            c[0] = 1.0
        if c.numel() != basis.shape[0]:
            raise ValueError(f"coords has {c.numel()} entries; the subspace has k={basis.shape[0]} directions")
        return self.add_direction(name or sub.name or f"{sub.site}[{basis.shape[0]}]", c @ basis, None, max_strength,
                                  strength, kind="subspace", site=sub.site)

    def add_mean_difference(self, name: str, positive_prompts: Sequence[str], negative_prompts: Sequence[str],
                            layer: int | None = None, max_strength: float | None = None,
                            strength: float = 0.0) -> SteeringPanel:
        """Add mean(positive) - mean(negative) residual activations at ``layer`` (`wb.mean_difference`)."""
        layer = self.default_layer if layer is None else int(layer)
        v = wb.mean_difference(self.model, list(positive_prompts), list(negative_prompts), layer)
        return self.add_direction(name, v, layer, max_strength, strength, kind="mean_difference")

    def add_feature(self, dictionary: Any, index: int, name: str | None = None, max_strength: float | None = None,
                    strength: float = 0.0) -> SteeringPanel:
        """Add a dictionary latent (SAE / transcoder feature, semi-NMF component): its unit decoder row
        (`workbench.dictionaries.features.feature_direction`) steered at the dictionary's write site.

        ``dictionary``: a `workbench.Dictionary`, the name of a registered one, or a semi-NMF
        result (`workbench.dictionaries.nmf.NMFResult`, made from a model site). The default name is
        ``"<dictionary name>[index]"``, as `workbench.dictionaries.features.steer_feature` names its spec.
        """
        from workbench.dictionaries.dictionary import Dictionary
        from workbench.dictionaries.features import (
            feature_direction,
            get_dictionary,
            register_dictionary,
        )
        from workbench.dictionaries.nmf import NMFResult

        if isinstance(dictionary, NMFResult):
            dictionary = dictionary.to_dictionary()
        if isinstance(dictionary, str):
            dictionary = get_dictionary(dictionary)
        if not isinstance(dictionary, Dictionary):
            raise TypeError(f"add_feature takes a workbench Dictionary (or its registered name), "
                            f"not {type(dictionary).__name__}")
        dictionary.check(self.model)
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"a latent index is an integer, not {index!r}")
        index = int(index)
        v = feature_direction(dictionary, index)
        dname = register_dictionary(dictionary)
        site = dictionary.out_site or dictionary.site
        kind = "nmf" if dictionary.architecture == "nmf" else "feature"
        return self.add_direction(name or f"{dname}[{index}]", v, None, max_strength, strength, kind=kind, site=site)

    def remove_direction(self, name: str) -> None:
        with self._state_lock:
            self._check_names([name])
            self._vectors.pop(name)
            self.directions = [dict(d) for d in self.directions if d["name"] != name]

    def vector(self, name: str) -> torch.Tensor:
        """The direction vector stored for ``name`` (a copy)."""
        self._check_names([name])
        return self._vectors[name].clone()

    # -- strengths -----------------------------------------------------------------
    def _check_names(self, names: Sequence[str]) -> None:
        known = [d["name"] for d in self.directions]
        for n in names:
            if n not in known:
                raise KeyError(f"no direction named {n!r}; directions: {known}")

    @property
    def strengths(self) -> dict[str, float]:
        """Current strength per direction name."""
        return {d["name"]: float(d["strength"]) for d in self.directions}

    @strengths.setter
    def strengths(self, values: dict[str, float]) -> None:
        self.set_strengths(values)

    def set_strengths(self, values: dict[str, float]) -> None:
        """Set some strengths (widening a slider's range when a value falls outside it)."""
        values = {str(k): float(v) for k, v in (values or {}).items()}
        for k, v in values.items():
            if not math.isfinite(v):
                raise ValueError(f"strength for {k!r} must be finite, got {v}")
        with self._state_lock:
            self._check_names(list(values))
            dirs = []
            for d in self.directions:
                d = dict(d)
                if d["name"] in values:
                    s = values[d["name"]]
                    d["strength"] = s
                    if not d["min"] <= s <= d["max"]:
                        m = nice_ceil(abs(s))
                        d["min"], d["max"] = min(d["min"], -m), max(d["max"], m)
                dirs.append(d)
            if dirs != self.directions:
                self.directions = dirs

    def set_strength(self, name: str, value: float) -> None:
        self.set_strengths({name: value})

    def reset(self) -> None:
        """Set every strength to zero."""
        self.set_strengths({d["name"]: 0.0 for d in self.directions})

    @property
    def interventions(self) -> list[wb.Steer]:
        """`wb.steer` specs for the directions with a non-zero strength."""
        with self._state_lock:
            return [
                wb.Steer(d["site"], self._vectors[d["name"]], d["strength"], name=d["name"]) if d.get("site")
                else wb.steer(d["layer"], self._vectors[d["name"]], d["strength"], name=d["name"])
                for d in self.directions if d["strength"] != 0
            ]

    # -- generation ----------------------------------------------------------------
    def _run_one(self, prompt: str, specs: list[wb.Steer], n: int, job: Job | None,
                 key: str) -> Generator[dict, None, str]:
        """Stream one generation as ``{key: text_so_far}`` partials; cache it when unsteered."""
        text: str = yield from keyed(key, generation(self.model, prompt, specs, n, job, "steering-generate"))
        if not specs:
            with self._state_lock:
                self._baseline[(prompt, n)] = text
        return text

    # -- static copy ---------------------------------------------------------------------
    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The view's first ``generate``, with the sliders' strengths."""
        return [("generate", {"strengths": self.strengths, "prompt": self.prompt})]

    @rpc(background=True)
    def rpc_generate(self, strengths: dict[str, float] | None = None, prompt: str | None = None,
                     max_new_tokens: int | None = None, job: Job | None = None) -> Generator[dict, None, dict]:
        """Generate the baseline (cached per prompt and length) and the steered text.

        ``strengths`` (name -> value) updates the sliders first; ``prompt`` and
        ``max_new_tokens`` likewise update the traits. Partial replies are
        ``{"baseline": ...}`` while an uncached baseline streams, then ``{"text": ...}``
        (steered text so far); the final reply is ``{"text", "baseline", "strengths",
        "ms", "steered"}``. With all strengths zero the steered text is the baseline.
        """
        t0 = time.perf_counter()
        if prompt is not None:
            self.prompt = str(prompt)
        if max_new_tokens is not None:
            if int(max_new_tokens) < 1:
                raise ValueError("max_new_tokens must be at least 1")
            self.max_new_tokens = int(max_new_tokens)
        if strengths:
            self.set_strengths(strengths)
        prompt, n = self.prompt, self.max_new_tokens
        if not prompt:
            raise ValueError("the prompt is empty: type some text to continue")
        with self._state_lock:
            specs = self.interventions
            used = self.strengths
            baseline = self._baseline.get((prompt, n))
        if baseline is None:
            baseline = yield from self._run_one(prompt, [], n, job, "baseline")
            yield {"baseline": baseline}
        self.baseline_text = baseline
        text = baseline
        if specs:
            text = yield from self._run_one(prompt, specs, n, job, "text")
        self.steered_text = text
        ms = (time.perf_counter() - t0) * 1000.0
        return {"text": text, "baseline": baseline, "strengths": used, "ms": round(ms, 1),
                "steered": bool(specs)}

    def generate(self, **params: Any) -> str:
        """Run `rpc_generate` synchronously from Python; return the steered text."""
        return self.call("generate", **params)["text"]
