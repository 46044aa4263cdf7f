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
a mapping or callable latent -> text, an `workbench.autointerp.explain.ExplanationStore`, or ``"auto"``
(the default: the scan store's ``explanations.json``, as `workbench.explain` writes it, reread
when it changes; the best-scoring explanation of the latent is shown).

Definitions (`FeatureFacts`):

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
from collections.abc import Generator, Mapping
from typing import Any

import numpy as np
import torch
import traitlets

import workbench as wb
from workbench.core.arch import Site
from workbench.dictionaries.dictionary import Dictionary
from workbench.dictionaries.features import (
    FeatureEdit,
    on_device,
    register_dictionary,
    scale_features,
    zero_features,
)
from workbench.neurons.store import Exemplar, ScanStore

from ._base import Cancelled, Job, WorkbenchWidget, bundle, rpc

#: Latent edits a FeatureList toggle applies.
EDIT_OPS = ("zero", "scale")
#: Sites whose vectors are residual-stream vectors (a decoder row there goes straight to the norm).
_RESIDUAL = frozenset({"embed", "resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_in"})


def _int(name: str, v: Any) -> int:
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


def _num(v: Any) -> float | None:
    """A JSON-ready float: NaN / infinity become None."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _exemplar(e: Exemplar) -> dict[str, Any]:
    return {"window": int(e.window), "position": int(e.position), "value": _num(e.value), "tokens": list(e.tokens),
            "acts": np.ascontiguousarray(e.acts, dtype=np.float32)}


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
            raise TypeError(f"store must be a ScanStore (wb.scan / wb.ScanStore.open), not {type(store).__name__}")
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
        i = _int("latent", v)
        n = self.d.d_sae
        if not 0 <= i < n:
            raise IndexError(f"latent {i} is out of range for a dictionary of {n} latents (0..{n - 1})")
        return i

    def label(self, i: int) -> str:
        return str(self.d.labels.get(int(i), ""))

    def _explanation_store(self) -> Any:
        """``explanations="auto"``: the scan store's explanations.json (`workbench.autointerp.explain`), reread
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
                from workbench.autointerp.explain import ExplanationStore

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
        if site.name in _RESIDUAL or site.name == "final_norm":
            return None
        layer = _get(self.model.hf, arch.layers)[site.layer]
        if site.name == "neurons":
            proj = _get(layer, arch.mlp_out_proj)
        elif site.name == "z":
            proj = _get(layer, arch.attn_o_proj)
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
            stats = {k: _num(v) for k, v in st.unit_stats(key, i).items()}
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
                g["exemplars"] = [_exemplar(e) for e in st._exemplars(key, i, g.pop("windows"))]
            n_inactive = int((st.states[key].sample_values[st.sample.windows >= 0, i] <= 0).sum())
        # the stored maximum must be what this dictionary gives on that token (same dictionary?)
        mismatch = None
        if top:
            e = top[0]
            got = float(e.acts[e.position])
            if not math.isclose(got, e.value, rel_tol=1e-3, abs_tol=1e-4):
                mismatch = (f"the store says {e.value:.4g} at window {e.window}, token {e.position}, but this "
                            f"dictionary gives {got:.4g} there: was the store scanned with another dictionary?")
        return {"top": [_exemplar(e) for e in top], "intervals": groups, "n_inactive_sample": n_inactive,
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


def _edits(v: Any, d_sae: int) -> list[dict[str, Any]]:
    """Normalized toggle state: ``[{"latent", "op", "value"}]``, one per latent, in the order given."""
    out: dict[int, dict[str, Any]] = {}
    for e in list(v or []):
        if not isinstance(e, Mapping):
            raise ValueError(f"an edit is a dict with latent, op and value, not {e!r}")
        i = _int("latent", e.get("latent"))
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
        k = _int("k", k)
        if not 1 <= k <= d.d_sae:
            raise ValueError(f"k must be between 1 and d_sae={d.d_sae}, not {k}")
        if not 1 <= _int("top_k", top_k) <= 100:
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
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"the scale factor must be a number, not {v!r}") from None
        if not math.isfinite(f):
            raise ValueError(f"the scale factor must be finite, not {v!r}")
        return f

    # -- the prompt's latents -----------------------------------------------------------------------
    def _prompt(self, prompt: Any) -> str:
        p = self.prompt if prompt is None else str(prompt)
        if not p.strip():
            raise ValueError("the prompt is empty: type some text to run")
        return p

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
        pos = _int("position", position)
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
        pos = _int("position", position) % len(tokens)
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
