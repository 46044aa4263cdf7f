"""What the feature widgets show about a dictionary's latents: `FeatureFacts` and the `Encoder` transform.

Definitions:

- residual direction of latent ``i``: its decoder row ``W_dec[i]`` where the dictionary writes
  (``out_site`` for a transcoder); for a dictionary over ``neurons.L`` (semi-NMF) mapped through
  the MLP output projection, over ``z.L`` through the attention output projection.
- logit effects: ``W_U (g * r)`` for that residual direction ``r`` with the final norm's gain
  ``g`` folded in (``r`` centred first for LayerNorm models), as `workbench.neurons.weights` does for
  neurons; top 10 (positive) and bottom 10 (negative). A direction written after the final norm
  (``final_norm``) goes through ``W_U`` alone.
- nearest latents: the largest cosines between ``W_dec`` rows (the latent itself excluded).
- examples by interval: ``(0, max]`` cut into equal intervals (``max``: the store's top value);
  windows of the store's random sample whose maximum falls in each, a few shown per interval.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

import workbench as wb
from workbench.core.arch import resolve
from workbench.core.sites import RESIDUAL_SITES, Site
from workbench.dictionaries.dictionary import Dictionary
from workbench.dictionaries.features import on_device, register_dictionary
from workbench.neurons.store import ScanStore

from ._base import Job
from ._payload import as_int, exemplar_payload, json_float

__all__ = ["Encoder", "FeatureFacts"]


class Encoder:
    """``x [..., d_in]`` (``z``: ``[..., H, d_head]``) -> the dictionary's latents, on x's device.

    Picklable by value with the dictionary (a plain object, no closures): usable as a scan
    transform (``features={"sae": (d.site, Encoder(d))}``) and as a capture reducer.
    """

    name = "dictionary.encode"

    def __init__(self, d: Dictionary, latent: int | None = None) -> None:
        self.d, self.latent = d, latent
        self.zsite = Site.parse(d.site).name == "z"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        d = self.d if self.d.device == x.device else on_device(self.d, x.device)
        if self.zsite:
            x = x.flatten(-2)
        acts = d.encode(x)
        if self.latent is not None:
            acts = acts[..., self.latent]
        return acts.float()


# -- the computations both widgets show ------------------------------------------------------------
class FeatureFacts:
    """What the widgets show about a dictionary's latents, computed from the model and (optionally)
    a scan store; shared by a `FeatureList` and the dashboards it opens (caches, locks)."""

    def __init__(self, model: wb.Model, dictionary: Dictionary, store: ScanStore | None = None,
                 key: str | None = None, explanations: Any = "auto", n_logits: int = 10, n_nearest: int = 8) -> None:
        if not isinstance(model, wb.Model):
            raise TypeError(f"a workbench Model is needed (workbench.load(...)), not {type(model).__name__}")
        if not isinstance(dictionary, Dictionary):
            raise TypeError(f"a workbench Dictionary is needed (workbench.load_dictionary(...)), "
                            f"not {type(dictionary).__name__}")
        dictionary.check(model)
        if store is not None and not isinstance(store, ScanStore):
            raise TypeError(f"store must be a ScanStore (wb.scan / wb.neurons.ScanStore.open), not {type(store).__name__}")
        if not (explanations is None or explanations == "auto" or isinstance(explanations, Mapping)
                or callable(explanations) or callable(getattr(explanations, "get", None))):
            raise TypeError("explanations must be 'auto', None, an ExplanationStore, a mapping latent -> text or "
                            "a callable latent -> text")
        self.model, self.d, self.explanations = model, dictionary, explanations
        self.n_logits, self.n_nearest = int(n_logits), int(n_nearest)
        self.name = register_dictionary(dictionary)
        self.store = store
        self.key = self._store_key(store, key) if store is not None else None
        self._auto: tuple[float, Any] | None = None  # (mtime, ExplanationStore) of the store's explanations.json
        self._lock = threading.RLock()
        self._store_lock = threading.Lock()
        self._unembed: dict[str, Any] | None = None
        self._resid: torch.Tensor | None = None
        self._dirs: torch.Tensor | None = None
        self._texts: dict[str, tuple[list[str], torch.Tensor]] = {}

    # -- the store ---------------------------------------------------------------------------
    def _store_key(self, store: ScanStore, key: str | None) -> str:
        """The store key holding this dictionary's latents; hooks the encoder up for exemplar reruns."""
        d = self.d
        feats = {k: info for k, info in store.meta["sites"].items() if info.get("transform") is not None}
        if key is None:
            site = Site.parse(d.site)
            cands = [k for k, info in feats.items()
                     if Site.parse(info["site"]) == site and int(info.get("width") or -1) == d.d_sae]
            if not cands:
                raise ValueError(
                    f"the store {store.path} has no scan of {d.d_sae} latents at {d.site} (its keys: "
                    f"{', '.join(store.sites[:8]) or 'none'}): scan them with wb.scan(model, corpus, path, "
                    f"sites=[], features={{'sae': (d.site, d.encode)}})")
            if len(cands) > 1:
                raise ValueError(f"the store has several scans of {d.d_sae} latents at {d.site} "
                                 f"({', '.join(cands)}): pass key=")
            key = cands[0]
        elif key not in store.meta["sites"]:
            raise KeyError(f"the store has no key {key!r}; it has {', '.join(store.sites[:8])}")
        elif key not in feats or store.width(key) != d.d_sae:
            raise ValueError(f"the store's {key!r} is not a scan of this dictionary's {d.d_sae} latents "
                             f"(width {store.width(key)}, transform {store.meta['sites'][key].get('transform')})")
        if store.model is None:
            store.check_model(self.model)
            store.model = self.model
        elif store.model is not self.model:
            raise ValueError("the store is open with another model than the one given: pass the same model")
        if store.transforms.get(key) is None:
            store.transforms[key] = Encoder(d)
        return key

    @property
    def has_store(self) -> bool:
        return self.store is not None

    # -- latents --------------------------------------------------------------------------------
    def latent(self, v: Any) -> int:
        """A latent index, checked (`IndexError` out of range)."""
        i = as_int("latent", v)
        n = self.d.d_sae
        if not 0 <= i < n:
            raise IndexError(f"latent {i} is out of range for a dictionary of {n} latents (0..{n - 1})")
        return i

    def label(self, i: int) -> str:
        return str(self.d.labels.get(int(i), ""))

    def _explanation_store(self) -> Any:
        """``explanations="auto"``: the scan store's explanations.json (`workbench.autointerp.ExplanationStore`), reread
        when it changes; None without a store or file."""
        if self.store is None:
            return None
        path = self.store.path / "explanations.json"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        with self._lock:
            if self._auto is None or self._auto[0] != mtime:
                from workbench.autointerp import ExplanationStore

                self._auto = (mtime, ExplanationStore(path))
            return self._auto[1]

    def explanation(self, i: int) -> str:
        """The latent's explanation: from ``explanations`` (a mapping or callable latent -> text), or an
        `ExplanationStore` (``"auto"``: the scan store's) holding explanations of ``(key, latent)``:
        the best-scoring one (mean of its scores), else the newest."""
        e = self.explanations
        if isinstance(e, str) and e == "auto":
            e = self._explanation_store()
        if e is None:
            return ""
        if isinstance(e, Mapping):
            v = e.get(int(i))
        elif callable(getattr(e, "get", None)):
            if self.key is None:
                return ""
            exs = list(e.get(self.key, int(i)))
            if not exs:
                return ""

            def rank(ex: Any) -> tuple[int, float, str]:
                vals = [s.value for s in getattr(ex, "score", {}).values() if math.isfinite(s.value)]
                return (len(vals) > 0, sum(vals) / len(vals) if vals else 0.0, str(getattr(ex, "created", "")))

            v = max(exs, key=rank).text
        else:
            v = e(int(i))
        return "" if v is None else str(v)

    # -- directions and the unembedding ------------------------------------------------------
    def _prep_unembed(self) -> dict[str, Any]:
        from workbench.neurons.weights import final_norm_fold, unembedding_weight

        with self._lock:
            if self._unembed is None:
                hf, arch = self.model.hf, self.model.arch
                W_U = unembedding_weight(hf, arch)
                gain, center, _ = final_norm_fold(hf, arch)
                self._unembed = {"U": W_U.float().cpu(), "g": gain.float().cpu(), "center": center}
            return self._unembed

    def _write_map(self) -> torch.Tensor | None:
        """``[d_out, d_model]``: what a vector at the write site adds to the residual (None: identity)."""
        site = Site.parse(self.d.out_site or self.d.site)
        arch = self.model.arch
        if site.name in RESIDUAL_SITES:  # a residual-stream vector already
            return None
        layer = resolve(self.model.hf, arch.layers)[site.layer]
        if site.name == "neurons":
            proj = resolve(layer, arch.mlp_out_proj)
        elif site.name == "z":
            proj = resolve(layer, arch.attn_o_proj)
        else:
            raise NotImplementedError(f"no residual direction for a dictionary writing {site}")
        w = proj.weight.detach().float().cpu()
        return w if type(proj).__name__ == "Conv1D" else w.T  # [d_in of the projection, d_model]

    def residual_directions(self) -> torch.Tensor:
        """``[d_sae, d_model]`` float32: what each latent's decoder row adds to the residual stream."""
        with self._lock:
            if self._resid is None:
                W = self.d.W_dec.detach().float().cpu()
                M = self._write_map()
                self._resid = W if M is None else W @ M
            return self._resid

    def logit_scores(self, i: int) -> torch.Tensor:
        """``W_U (g * r_i)`` over the vocabulary (float32 [vocab])."""
        p = self._prep_unembed()
        r = self.residual_directions()[i]
        if Site.parse(self.d.out_site or self.d.site).name == "final_norm":
            return p["U"] @ r
        if p["center"]:
            r = r - r.mean()
        return p["U"] @ (r * p["g"])

    def _rows(self, values: torch.Tensor, ids: torch.Tensor) -> list[dict[str, Any]]:
        tok = self.model.tokenizer
        return [{"token": tok.decode([int(i)]), "id": int(i), "score": float(s)}
                for s, i in zip(values.tolist(), ids.tolist(), strict=True)]

    def logit_effects(self, i: int, k: int | None = None) -> dict[str, list[dict[str, Any]]]:
        """The ``k`` tokens the latent promotes most (``pos``) and suppresses most (``neg``)."""
        s = self.logit_scores(i)
        k = min(self.n_logits if k is None else int(k), s.shape[0])
        top, bot = s.topk(k), s.topk(k, largest=False)
        return {"pos": self._rows(top.values, top.indices), "neg": self._rows(bot.values, bot.indices)}

    def promoted(self, i: int, n: int = 5) -> list[dict[str, Any]]:
        return self.logit_effects(i, n)["pos"]

    def unit_directions(self) -> torch.Tensor:
        with self._lock:
            if self._dirs is None:
                self._dirs = self.d.directions.detach().float().cpu()
            return self._dirs

    def nearest(self, i: int, n: int | None = None) -> list[dict[str, Any]]:
        """The ``n`` latents whose decoder rows have the largest cosine with latent ``i``'s."""
        D = self.unit_directions()
        cos = D @ D[i]
        cos[i] = -math.inf
        n = min(self.n_nearest if n is None else int(n), D.shape[0] - 1)
        top = cos.topk(n)
        return [{"latent": int(j), "cos": float(c), "label": self.label(int(j))}
                for c, j in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    # -- running the model ---------------------------------------------------------------------
    def encode_text(self, text: str) -> tuple[list[str], torch.Tensor]:
        """Tokens of ``text`` and its latents ``[seq, d_sae]`` (float32, CPU), encoded inside the trace."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the text is empty: type some text to encode")
        with self._lock:
            hit = self._texts.get(text)
        if hit is not None:
            return hit
        res = self.model.run(text, capture={self.d.site: Encoder(self.d)}, top_k=0, logits=None)
        acts = res.activations[self.d.site][0].float()
        out = ([t.text for t in res.tokens[0]], acts)
        with self._lock:
            if len(self._texts) >= 8:
                self._texts.pop(next(iter(self._texts)))
            self._texts[text] = out
        return out

    # -- the store ----------------------------------------------------------------------------------
    def store_summary(self, i: int) -> dict[str, Any]:
        """Density, statistics and histogram of latent ``i`` from the store (no model run)."""
        st, key = self.store, self.key
        assert st is not None and key is not None
        with self._store_lock:
            stats = {k: json_float(v) for k, v in st.unit_stats(key, i).items()}
            edges, counts = st.histogram(key, i)
        return {"key": key, "n_tokens": st.n_tokens, "n_windows": st.n_windows, "complete": st.complete,
                "density": stats.get("frac_active"), "stats": stats,
                "hist": {"edges": np.asarray(edges, dtype=np.float64), "counts": np.asarray(counts, dtype=np.float64),
                         "center": st.bins.center}}

    def intervals(self, i: int, n_intervals: int = 5, per_interval: int = 3) -> list[dict[str, Any]]:
        """Sampled windows by interval of their maximum over ``(0, max]``, highest interval first
        (each: ``lo``, ``hi``, ``count`` windows of the sample in it, ``windows`` shown: (value, window, pos))."""
        st, key = self.store, self.key
        assert st is not None and key is not None
        state = st.states[key]
        ok = st.sample.windows >= 0
        vals, wins, pos = state.sample_values[ok, i], st.sample.windows[ok], state.sample_pos[ok, i]
        top = st.top(key, i)
        hi = max([float(vals.max()) if len(vals) else 0.0] + [v for v, _, _ in top[:1]])
        if not hi > 0:
            return []
        order = torch.argsort(vals, descending=True, stable=True)
        vals, wins, pos = vals[order], wins[order], pos[order]
        out = []
        for j in reversed(range(n_intervals)):
            lo_, hi_ = hi * j / n_intervals, hi * (j + 1) / n_intervals
            m = (vals > lo_) & ((vals <= hi_) if j < n_intervals - 1 else torch.ones_like(vals, dtype=torch.bool))
            idx = m.nonzero().flatten().tolist()
            n = min(per_interval, len(idx))
            picks = [idx[(t * len(idx)) // n] for t in range(n)]  # evenly spread over the interval
            out.append({"lo": lo_, "hi": hi_, "count": len(idx), "n_sample": int(len(vals)),
                        "windows": [(float(vals[p]), int(wins[p]), int(pos[p])) for p in picks]})
        return out

    def store_examples(self, i: int, n_top: int = 8, n_intervals: int = 5, per_interval: int = 3,
                       job: Job | None = None) -> dict[str, Any]:
        """Top exemplars and examples by interval, rerun through the model for per-token activations."""
        st, key = self.store, self.key
        assert st is not None and key is not None
        with self._store_lock:
            if job is not None:
                job.check()
            top = st.exemplars(key, i, n=n_top)
            groups = self.intervals(i, n_intervals, per_interval)
            if job is not None:
                job.check()
            for g in groups:
                g["exemplars"] = [exemplar_payload(e) for e in st.window_exemplars(key, i, g.pop("windows"))]
            n_inactive = int((st.states[key].sample_values[st.sample.windows >= 0, i] <= 0).sum())
        # the stored maximum must be what this dictionary gives on that token (same dictionary?)
        mismatch = None
        if top:
            e = top[0]
            got = float(e.acts[e.position])
            if not math.isclose(got, e.value, rel_tol=1e-3, abs_tol=1e-4):
                mismatch = (f"the store says {e.value:.4g} at window {e.window}, token {e.position}, but this "
                            f"dictionary gives {got:.4g} there: was the store scanned with another dictionary?")
        return {"top": [exemplar_payload(e) for e in top], "intervals": groups, "n_inactive_sample": n_inactive,
                "mismatch": mismatch}

    # -- what a dashboard shows ---------------------------------------------------------------------
    def summary(self, i: int) -> dict[str, Any]:
        """Everything but the store's exemplars (the first, quick part of a dashboard reply)."""
        d = self.d
        out: dict[str, Any] = {
            "state": {"latent": i, "d_sae": d.d_sae, "site": d.site, "out_site": d.out_site,
                      "architecture": d.architecture, "dictionary": self.name},
            "label": self.label(i), "explanation": self.explanation(i),
            "decoder_norm": float(d.W_dec[i].float().norm()),
            "nearest": self.nearest(i),
        }
        try:
            out["logits"] = self.logit_effects(i)
        except (NotImplementedError, ValueError) as exc:
            out["logits"] = {"pos": [], "neg": [], "error": f"{type(exc).__name__}: {exc}"}
        if self.store is None:
            out["store"] = None
            out["store_note"] = ("No scan store: top activations, examples by interval and the density come from "
                                 "wb.scan(model, corpus, path, sites=[], features={'sae': (d.site, d.encode)}); "
                                 "pass store= to show them.")
        else:
            out["store"] = self.store_summary(i)
        return out
