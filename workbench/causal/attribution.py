"""Gradient attribution: integrated gradients, gradient × activation and input attribution.

Integrated gradients (Sundararajan et al. 2017) of a scalar metric ``f`` at a per-token site
(``"neurons.L"`` by default; any writable per-token site) attribute ``f(x) − f(x')`` to every
unit at every chosen position::

    IG_i = (x_i − x'_i) · (1/m) Σ_k ∂f/∂x_i (x' + α_k (x − x'))

``x`` is the prompt's activation at the site and ``x'`` the baseline: zeros, the site's mean
over reference prompts' tokens, the activation of a corrupted prompt (same token length), or a
tensor. Only the site is interpolated; everything before it is the prompt's own run, so
``f(x')`` is the prompt run with the site set to the baseline. The sum over ``α_k`` is a Riemann
sum, by default the **midpoint** rule ``α_k = (k + ½)/m`` (error O(1/m²)); ``rule="left"``
(``k/m``) and ``"right"`` (``(k+1)/m``) are there too. The result carries the **completeness
gap** ``Σ IG − (f(x) − f(x'))``: when it is not small against ``f(x) − f(x')``, raise ``steps``.

All ``m`` steps run as rows of one trace: the prompt runs once up to the site's layer, then the
batch grows to one row per step (plus the baseline endpoint), the site is interpolated in place,
and ``torch.autograd.grad`` of the summed metric is taken inside the trace, down to the site only
(no weight gradients, nothing before the site). Only the summed gradient travels back, so this
also runs under ``remote="local"``. Rows are chunked into several traces when ``steps`` rows
would exceed `MEMORY_BUDGET` (or ``batch``).

Mind the path. Norms are scale-invariant, so with a **zero baseline** on the residual stream, the
embeddings, or the neurons of a model whose MLP output is normalized again (Gemma 2's post-norms),
the metric is nearly constant along the path and jumps within ~sqrt(eps) of α = 0, where no
Riemann step lands: the attributions then miss most of ``f(x) − f(x')``. Moving position 0 (an
attention sink with outlier activations in many models, SmolLM2 included) makes the path very
nonlinear too. The completeness gap shows both, and a `CompletenessWarning` says so above
`GAP_WARNING`; a corrupted prompt as the baseline, or ``positions`` that leave out position 0,
converge fast (on the embedded model, 0.04–0.1% gap at m = 20 where zeros give > 100%).

Metrics read the last position's logits: ``"logit_diff"`` (``target`` − ``foil``), ``"prob"``,
``"logprob"`` and ``"logit"`` of ``target``, or a callable ``f(logits [rows, vocab]) -> [rows]``.
"""

from __future__ import annotations

import inspect
import math
import operator
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nnsight
import torch

from ..core.program import Batch, TraceProgram, check_finite
from ..core.sites import SITES, TOKEN_SITES, WRITABLE, Site
from .patching import token_id

if TYPE_CHECKING:  # pragma: no cover
    from ..core.engine import Model

__all__ = ["integrated_gradients", "gradient_x_activation", "input_attribution", "AttributionResult",
           "CompletenessWarning", "METRICS", "RULES", "MEMORY_BUDGET", "GAP_WARNING"]

METRICS = ("logit_diff", "prob", "logprob", "logit")
RULES = ("midpoint", "left", "right")
#: Bytes one trace's rows may spend on the graph kept for the backward (rows are chunked to fit).
MEMORY_BUDGET = 1 << 30
#: Sites that can be interpolated: per-token ``[b, s, width]`` and writable.
IG_SITES = tuple(n for n in SITES if n in TOKEN_SITES and n in WRITABLE)

#: `CompletenessWarning` above this relative completeness gap.
GAP_WARNING = 0.05

Metric = Callable[[torch.Tensor], torch.Tensor]


class CompletenessWarning(UserWarning):
    """Integrated gradients' attributions do not add up to the metric's change (raise ``steps``, change the baseline)."""


# -- the result ----------------------------------------------------------------------------------
@dataclass(repr=False)
class AttributionResult:
    """Attributions of a metric to the units of one site at the chosen positions.

    ``attributions[p, i]`` belongs to unit ``i`` at position ``positions[p]``; ``per_unit`` sums
    over positions, ``per_token`` over units. ``gap`` is the completeness gap
    ``Σ attributions − (metric_input − metric_baseline)`` and ``relative_gap`` divides it by
    ``|metric_input − metric_baseline|``.
    """

    attributions: torch.Tensor  # [P, width]
    activations: torch.Tensor  # [P, width] the prompt's values at the site
    baseline_values: torch.Tensor  # [P, width]
    positions: list[int]
    tokens: list[str]  # every token of the prompt
    prompt: str
    site: str
    metric: str
    method: str  # "integrated_gradients" | "gradient_x_activation"
    baseline: str  # "zero", "mean", "tensor" or "corrupted"
    steps: int
    rule: str
    metric_input: float
    metric_baseline: float
    target: str | None = None
    foil: str | None = None
    corrupted: str | None = None
    kind: str = "units"  # "units" (rank units) or "tokens" (input attribution: rank positions)
    extra: dict[str, Any] = field(default_factory=dict)

    # -- derived --------------------------------------------------------------------------------
    @property
    def layer(self) -> int | None:
        return Site.parse(self.site).layer

    @property
    def total(self) -> float:
        """Σ attributions (over positions and units)."""
        return float(self.attributions.double().sum())

    @property
    def delta(self) -> float:
        """``metric_input − metric_baseline``: what the attributions should add up to."""
        return self.metric_input - self.metric_baseline

    @property
    def gap(self) -> float:
        """The completeness gap ``Σ attributions − (metric_input − metric_baseline)``."""
        return self.total - self.delta

    @property
    def relative_gap(self) -> float:
        """``|gap| / |metric_input − metric_baseline|`` (inf when the metric did not move)."""
        d = abs(self.delta)
        return abs(self.gap) / d if d > 0 else (0.0 if self.gap == 0 else math.inf)

    @property
    def per_unit(self) -> torch.Tensor:
        """``[width]``: attributions summed over the positions."""
        return self.attributions.sum(0)

    @property
    def per_token(self) -> torch.Tensor:
        """``[P]``: attributions summed over the units (per-token input attribution)."""
        return self.attributions.sum(1)

    # -- tables and plots -------------------------------------------------------------------------
    def to_pandas(self, n: int | None = None, per: str | None = None):
        """The ranking as a DataFrame, largest |attribution| first (``n``: the first n rows).

        ``per="unit"`` (default for sites): one row per unit summed over positions; ``"cell"``:
        one row per (position, unit); ``"token"`` (default for input attribution): one row per position.
        """
        import pandas as pd

        per = per or ("token" if self.kind == "tokens" else "unit")
        if per not in ("unit", "cell", "token"):
            raise ValueError(f"unknown per={per!r}: choose 'unit', 'cell' or 'token'")
        A, X, B = self.attributions.float(), self.activations.float(), self.baseline_values.float()
        if per == "token":
            v = A.sum(1)
            order = v.abs().argsort(descending=True)[: n]
            rows = [{"position": self.positions[p], "token": self.tokens[self.positions[p]],
                     "attribution": float(v[p]), "share": float(v[p]) / self.delta if self.delta else math.nan}
                    for p in order.tolist()]
        elif per == "unit":
            v = A.sum(0)
            order = v.abs().argsort(descending=True)[: n]
            peak = A.abs().argmax(0)
            rows = [{"layer": self.layer, "unit": i, "attribution": float(v[i]),
                     "share": float(v[i]) / self.delta if self.delta else math.nan,
                     "peak_position": self.positions[int(peak[i])], "peak_token": self.tokens[self.positions[int(peak[i])]],
                     "activation": float(X[int(peak[i]), i]), "baseline": float(B[int(peak[i]), i])}
                    for i in order.tolist()]
        else:
            flat = A.flatten()
            order = flat.abs().argsort(descending=True)[: n]
            w = A.shape[1]
            rows = [{"layer": self.layer, "position": self.positions[k // w], "token": self.tokens[self.positions[k // w]],
                     "unit": k % w, "attribution": float(flat[k]), "activation": float(X[k // w, k % w]),
                     "baseline": float(B[k // w, k % w])} for k in order.tolist()]
        return pd.DataFrame(rows)

    def top(self, n: int = 10, per: str | None = None):
        """The ``n`` largest |attributions| as a DataFrame (see `to_pandas`)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        return self.to_pandas(n, per)

    def plot(self, n: int = 20, ax: Any = None, per: str | None = None) -> Any:
        """A bar chart of the ``n`` largest attributions (signed), gap in the title."""
        import matplotlib.pyplot as plt

        df = self.to_pandas(n, per)
        if "unit" in df and "position" in df:
            labels = [f"{t!r}@{p} N{u}" for t, p, u in zip(df["token"], df["position"], df["unit"], strict=True)]
        elif "unit" in df:
            labels = [f"N{u}" for u in df["unit"]]
        else:
            labels = [f"{p}:{t!r}" for p, t in zip(df["position"], df["token"], strict=True)]
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(df) + 2), 3.2))
        vals = df["attribution"].to_numpy()
        ax.bar(range(len(vals)), vals, color=["#cc6677" if v < 0 else "#4477aa" for v in vals])
        ax.set_xticks(range(len(vals)))
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel(f"attribution to {self.metric}")
        ax.set_title(f"{self.method} at {self.site} ({self.baseline} baseline, {self.steps} steps): "
                     f"Δ {self.delta:.4g}, gap {self.gap:+.2g} ({self.relative_gap:.1%})", fontsize=8)
        return ax

    def summary(self) -> str:
        return (f"{self.method} of {self.metric} at {self.site} over {len(self.positions)} position(s), "
                f"{self.baseline} baseline, {self.steps} {self.rule} step(s): metric {self.metric_input:.4g} "
                f"(baseline {self.metric_baseline:.4g}), Σ attributions {self.total:.4g}, completeness gap "
                f"{self.gap:+.3g} ({self.relative_gap:.2%} of Δ)")

    def __repr__(self) -> str:
        return f"AttributionResult({self.summary()})"

    def _repr_html_(self) -> str:
        import html

        return f"<b>AttributionResult</b> {html.escape(self.summary())}"


# -- input checks ----------------------------------------------------------------------------------
def _check_site(model: Model, site: str) -> Site:
    s = Site.parse(site)
    if s.name not in IG_SITES:
        why = "is read-only" if s.name not in WRITABLE else "has no single [batch, tokens, width] vector per token"
        raise ValueError(f"site {str(s)!r} {why}: integrated gradients interpolate a writable per-token site "
                         f"({', '.join(IG_SITES)})")
    model.arch.check_layer(s.layer)
    return s


def _metric_fn(model: Model, metric: str | Metric, target: str | int | None,
               foil: str | int | None) -> tuple[Metric, str]:
    """The metric as a function of last-position logits ``[rows, vocab] -> [rows]`` and its name."""
    if callable(metric):
        probe = torch.zeros(2, model.arch.vocab)
        try:
            out = metric(probe)
        except Exception as exc:  # noqa: BLE001 - say which call failed
            raise ValueError(f"the metric callable failed on logits of shape [2, {model.arch.vocab}]: {exc}") from exc
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2,):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"a metric callable must map last-position logits [rows, vocab] to one value per row "
                             f"[rows]; on [2, {model.arch.vocab}] it returned {got}")
        return metric, getattr(metric, "__name__", "custom")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {', '.join(METRICS)} or pass a callable "
                         "f(logits [rows, vocab]) -> [rows]")
    if target is None:
        raise ValueError(f"metric {metric!r} needs a target token (target=' Paris')")
    t = token_id(model, target, "target")
    if metric == "logit_diff":
        if foil is None:
            raise ValueError("metric 'logit_diff' needs a foil token (foil=' Rome'); or use metric='prob', "
                             "'logprob' or 'logit'")
        f = token_id(model, foil, "foil")
        return _LogitDiff(t, f), metric
    return _Named(metric, t), metric


class _LogitDiff:
    """``logits[:, target] − logits[:, foil]`` (plain data: remote runs pickle it)."""

    def __init__(self, target: int, foil: int):
        self.target, self.foil = target, foil

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, self.target] - logits[:, self.foil]


class _Named:
    def __init__(self, name: str, target: int):
        self.name, self.target = name, target

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.name == "logit":
            return logits[:, self.target]
        logp = torch.log_softmax(logits, -1)[:, self.target]
        return logp if self.name == "logprob" else logp.exp()


def _positions(positions: Sequence[int] | None, n: int) -> list[int]:
    if positions is None:
        return list(range(n))
    if isinstance(positions, int):
        positions = [positions]
    out = []
    for p in positions:
        try:
            if isinstance(p, bool):
                raise TypeError
            p = operator.index(p)
        except TypeError:
            raise TypeError(f"positions are token indices (ints), not {p!r}") from None
        q = p + n if p < 0 else p
        if not 0 <= q < n:
            raise IndexError(f"position {p} is out of range for a prompt of {n} tokens (0..{n - 1}, or negative)")
        out.append(q)
    if not out:
        raise ValueError("give at least one position (positions=None: every position)")
    return sorted(set(out))


def _check_same_length(model: Model, prompt: str, corrupted: str) -> None:
    a, b = model.tokenize(prompt).tokens[0], model.tokenize(corrupted).tokens[0]
    if len(a) != len(b):
        raise ValueError(
            f"a corrupted baseline prompt must have as many tokens as the prompt (the site is interpolated "
            f"position by position), but the prompt has {len(a)} and the corrupted prompt {len(b)}:\n"
            f"  prompt:    {[t.text for t in a]}\n  corrupted: {[t.text for t in b]}")


def _baseline(model: Model, site: Site, prompt: str, baseline: Any, n: int, width: int,
              reference: Sequence[str] | None) -> tuple[str, torch.Tensor, str | None]:
    """(kind, baseline values [n, width], the corrupted prompt or None)."""
    if isinstance(baseline, torch.Tensor):
        check_finite("the baseline tensor", baseline)
        b = baseline.detach().float().cpu()
        if b.shape == (width,):
            b = b.expand(n, width)
        if tuple(b.shape) != (n, width):
            raise ValueError(f"a baseline tensor for {site} on this prompt is [{width}] or [{n}, {width}] "
                             f"(tokens, width), not {list(baseline.shape)}")
        return "tensor", b.clone(), None
    if not isinstance(baseline, str) or not baseline:
        raise TypeError(f"baseline must be 'zero', 'mean', a corrupted prompt (text) or a tensor, not {baseline!r}")
    if baseline == "zero":
        return "zero", torch.zeros(n, width), None
    if baseline == "mean":
        refs = [prompt] if reference is None else list(reference)
        if not refs or not all(isinstance(r, str) and r for r in refs):
            raise ValueError("reference must be a non-empty list of prompts (the 'mean' baseline averages the site "
                             "over their tokens)")
        mean = model.mean_activation(str(site), refs).float().cpu()
        return "mean", mean.expand(n, width).clone(), None
    _check_same_length(model, prompt, baseline)
    key = str(site)  # the corrupted prompt's own run, recorded once (the trace then holds one prompt row)
    rec = model.run(baseline, capture=[key], top_k=1, logits=None).activations[key][0]
    return "corrupted", rec.float().cpu(), baseline


def _trace_kwargs(model: Model) -> dict[str, Any]:
    kw: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.hf.forward).parameters:
        kw["logits_to_keep"] = 1  # every row has the prompt's length: the metric reads the last position only
    return kw


def _rows_per_trace(model: Model, site: Site, n_tokens: int, budget: int) -> int:
    """How many interpolation rows one trace holds within ``budget`` bytes of saved activations (estimate)."""
    a = model.arch
    after = a.n_layers - (site.layer or 0) if site.name != "final_norm" else 0
    if site.name == "embed":
        after = a.n_layers
    elt = max(torch.finfo(next(model.hf.parameters()).dtype).bits // 8, 2) if not model.remote else 4
    per_layer = 12 * a.d_model + 4 * a.d_mlp + 2 * a.n_heads * n_tokens
    per_row = elt * (n_tokens * (after * per_layer + 4 * a.d_model) + 3 * a.vocab)
    return max(1, int(budget // max(per_row, 1)))


def _alphas(steps: int, rule: str) -> torch.Tensor:
    k = torch.arange(steps, dtype=torch.float64)
    return {"midpoint": (k + 0.5) / steps, "left": k / steps, "right": (k + 1) / steps}[rule]


# -- the trace ---------------------------------------------------------------------------------------
def _chunk(model: Model, batch: Any, site: Site, pos: list[int], alphas: torch.Tensor, endpoint: bool,
           fixed: torch.Tensor, metric: Metric) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One trace: the prompt (row 0) runs to the site's layer, the batch grows to one row per alpha
    (plus the baseline endpoint, alpha 0, when ``endpoint``), the site is interpolated between the
    prompt's values and ``fixed`` (the baseline ``[P, width]``), and the gradient of the summed metric
    is taken at the site. Returns that gradient summed over the alpha rows ``[P, width]``, the metric
    per row and the prompt's values at the site ``[P, width]``."""
    n0 = 1  # row 0: the prompt itself (alpha 1); a grown batch broadcasts its one-row attention mask
    k = len(alphas)
    extra = k + (1 if endpoint else 0)
    if site.name == "embed":  # nothing runs before the site: the rows are there from the start
        ids, mask = batch.input_ids, batch.attention_mask
        batch = Batch(torch.cat([ids, ids[:1].expand(extra, -1)]), torch.cat([mask, mask[:1].expand(extra, -1)]),
                      batch.tokens + batch.tokens[:1] * extra, n0 + extra)
    program = TraceProgram(model, [], {}, batch)
    nn = model.nn
    a_all = torch.cat([alphas, torch.zeros(1, dtype=alphas.dtype)]) if endpoint else alphas
    name, L = site.name, site.layer
    p_idx = torch.tensor(pos)
    kw = _trace_kwargs(model)
    with model.lock, torch.enable_grad():
        with model.trace_batch(batch, **kw):
            if name == "embed":
                y = program.module(nn, "embed").output
            elif name == "final_norm":
                mod = program.module(nn, "final_norm")
                x = mod.input
                mod.input = torch.cat([x, x[:1].expand(extra, *x.shape[1:])], 0)
                y = mod.output
            else:
                layer = program.layer(nn, L)
                x = layer.input
                grown = torch.cat([x, x[:1].expand(extra, *x.shape[1:])], 0)
                if name == "resid_pre":
                    y = grown
                else:
                    layer.input = grown
                    y = program.read(nn, site, {})
            ix = p_idx.to(y.device)
            x0 = y[0].index_select(0, ix).detach().float()
            bl = fixed.to(y.device)
            a = a_all.to(device=y.device, dtype=torch.float32)[:, None, None]
            y[n0:, ix] = (bl + a * (x0 - bl)).to(y.dtype)
            if name == "resid_pre":
                layer.input = y
            logits = program.logits(nn)[:, -1].float()
            m = metric(logits)
            if tuple(m.shape) != (logits.shape[0],):
                raise ValueError(f"the metric returned shape {list(m.shape)}, not one value per row [{logits.shape[0]}]")
            g = torch.autograd.grad(m[n0:n0 + k].sum(), y)[0]
            gsum = nnsight.save(g[n0:n0 + k].index_select(1, ix).float().sum(0))
            values = nnsight.save(m.detach())
            xs = nnsight.save(x0)
    return gsum, values, xs


def _attribute(model: Model, prompt: str, site: str, metric: str | Metric, target: Any, foil: Any, baseline: Any,
               steps: int, rule: str, positions: Sequence[int] | None, batch: int | None, reference: Sequence[str] | None,
               progress: bool, method: str, kind: str) -> AttributionResult:
    if not isinstance(prompt, str) or not prompt:
        raise TypeError(f"prompt must be a non-empty string, not {prompt!r}")
    s = _check_site(model, site)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer of at least 1, not {steps!r}")
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch (rows per trace) must be a positive integer or None, not {batch!r}")
    fn, mname = _metric_fn(model, metric, target, foil)
    toks = model.tokenize(prompt).tokens[0]
    n = len(toks)
    model.check_length(n)
    pos = _positions(positions, n)
    width = model.d_mlp if s.name == "neurons" else model.d_model
    bkind, fixed, corrupted = _baseline(model, s, prompt, baseline, n, width, reference)
    b = model.tokenize(prompt)
    bl = fixed[pos].contiguous()
    alphas = _alphas(steps, rule)
    rows = batch or _rows_per_trace(model, s, n, MEMORY_BUDGET)
    chunks = [alphas[i:i + rows] for i in range(0, steps, rows)]
    from tqdm.auto import tqdm

    gsum = None
    m_in = m_bl = 0.0
    x0 = None
    with tqdm(total=steps, desc=f"{method} {s}", disable=not progress, leave=False) as bar:
        for j, al in enumerate(chunks):
            g, values, xs = _chunk(model, b, s, pos, al, j == 0, bl, fn)
            gsum = g if gsum is None else gsum + g
            if j == 0:
                m_in, m_bl, x0 = float(values[0]), float(values[-1]), xs.cpu()
            bar.update(len(al))
    grad = gsum.cpu() / steps
    attr = (x0 - bl) * grad
    check_finite(f"the {method} attributions (gradients of the metric)", attr)
    res = AttributionResult(
        attributions=attr, activations=x0, baseline_values=bl, positions=pos, tokens=[t.text for t in toks],
        prompt=prompt, site=str(s), metric=mname, method=method, baseline=bkind, steps=steps, rule=rule,
        metric_input=m_in, metric_baseline=m_bl, target=None if target is None else str(target),
        foil=None if foil is None else str(foil), corrupted=corrupted, kind=kind, extra={"rows_per_trace": rows})
    if method == "integrated_gradients" and res.relative_gap > GAP_WARNING:
        hint = ""
        if bkind == "zero":
            hint += (" The path from a zero baseline may pass next to a norm's singularity at 0 (norms are "
                     "scale-invariant, so the metric jumps near alpha = 0): try baseline='mean' or a corrupted prompt.")
        if 0 in pos and bkind != "corrupted":
            hint += (" Moving position 0 (often an attention sink with outlier activations) makes the path very "
                     "nonlinear: try positions=range(1, n) or a corrupted prompt as the baseline.")
        warnings.warn(f"the integrated-gradients completeness gap is {res.relative_gap:.1%} of the metric's change "
                      f"({res.gap:+.3g} of {res.delta:+.3g}) with {steps} steps: raise steps.{hint}",
                      CompletenessWarning, stacklevel=3)
    return res


# -- the API --------------------------------------------------------------------------------------------
def integrated_gradients(model: Model, prompt: str, site: str, *, metric: str | Metric = "logit_diff",
                         target: str | int | None = None, foil: str | int | None = None, baseline: Any = "zero",
                         steps: int = 20, rule: str = "midpoint", positions: Sequence[int] | None = None,
                         reference: Sequence[str] | None = None, batch: int | None = None,
                         progress: bool = True) -> AttributionResult:
    """Integrated gradients of a last-position metric with respect to every unit of ``site``.

    ``site``: a writable per-token site (``"neurons.L"``, ``"resid_post.L"``, ``"mlp_out.L"``,
    ``"embed"``, ...). ``metric``: ``"logit_diff"`` (``target`` − ``foil``), ``"prob"``,
    ``"logprob"``, ``"logit"`` (of ``target``), or ``f(logits [rows, vocab]) -> [rows]``.
    ``baseline``: ``"zero"``; ``"mean"`` (the site's mean over the tokens of ``reference``
    prompts, by default the prompt's own); another string is a corrupted prompt with the same
    number of tokens (its activations at the site); or a tensor ``[width]`` / ``[tokens, width]``.
    ``positions``: the positions interpolated and attributed (default all; the others keep the
    prompt's values). ``steps`` Riemann steps by ``rule`` (``"midpoint"``), batched as rows of one
    trace (``batch``: at most this many rows per trace; default from `MEMORY_BUDGET`).

    The result's ``gap`` is the completeness gap Σ IG − (f(x) − f(x')); ``relative_gap`` divides by |f(x) − f(x')|.
    """
    return _attribute(model, prompt, site, metric, target, foil, baseline, steps, rule, positions, batch, reference,
                      progress, "integrated_gradients", "units")


def gradient_x_activation(model: Model, prompt: str, site: str, *, metric: str | Metric = "logit_diff",
                          target: str | int | None = None, foil: str | int | None = None, baseline: Any = "zero",
                          positions: Sequence[int] | None = None, reference: Sequence[str] | None = None,
                          progress: bool = False) -> AttributionResult:
    """The one-step estimate ``∂f/∂x (x) · (x − x')`` (zero baseline: gradient × activation).

    One forward and one backward (to the site); its completeness gap shows how far the
    first-order estimate is from ``f(x) − f(x')``. Arguments as in `integrated_gradients`.
    """
    return _attribute(model, prompt, site, metric, target, foil, baseline, 1, "right", positions, None, reference,
                      progress, "gradient_x_activation", "units")


def input_attribution(model: Model, prompt: str, *, metric: str | Metric = "logit_diff", target: str | int | None = None,
                      foil: str | int | None = None, method: str = "integrated_gradients", baseline: Any = "zero",
                      steps: int = 20, rule: str = "midpoint", positions: Sequence[int] | None = None,
                      reference: Sequence[str] | None = None, batch: int | None = None,
                      progress: bool = True) -> AttributionResult:
    """Per-token attribution of the metric to the input embeddings (the ``embed`` site).

    ``method``: ``"integrated_gradients"`` (``steps``, ``rule``, ``baseline`` as in
    `integrated_gradients`) or ``"gradient_x_input"`` (one step: ∂f/∂e · (e − e')).
    ``per_token`` (and ``to_pandas()``) sum each token's attribution over the embedding dimensions.
    """
    if method == "integrated_gradients":
        return _attribute(model, prompt, "embed", metric, target, foil, baseline, steps, rule, positions, batch,
                          reference, progress, method, "tokens")
    if method == "gradient_x_input":
        return _attribute(model, prompt, "embed", metric, target, foil, baseline, 1, "right", positions, None,
                          reference, progress, method, "tokens")
    raise ValueError(f"unknown method {method!r}: choose 'integrated_gradients' or 'gradient_x_input'")

