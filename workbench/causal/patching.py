"""Causal analyses: activation patching, attribution patching and ablation.

Every patched run goes through the engine's one spec mechanism: a sweep runs its cells as
rows of a few large batches (``model.run([base] * B, base_specs + [Patch(..., rows=[r]), ...])``,
the clean source being one extra row), so a cell can be replayed on its own with
``model.run(res.base_prompt, res.base_specs + res.cell_specs(layer, column))``.

Metrics are read at the last position: ``logit_diff`` (answer − wrong logit), ``prob`` (the
answer's probability) and ``kl`` (KL divergence of the run's next-token distribution from the
clean one). Normalized values are ``(m − m_corrupted) / (m_clean − m_corrupted)``: 0 means the
corrupted behaviour, 1 the clean one, in both directions and for every metric.

Corruption is a second prompt of the same token length (symmetric token replacement) or
Gaussian noise on the subject tokens' embeddings (Meng et al. 2022: ``noise=3.0`` adds
N(0, (3·σ)²) with σ the standard deviation of the embedding matrix), expressed as `Steer`
specs on ``embed`` so the same corruption is reproducible through ``base_specs``.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nnsight
import torch

from ..core.arch import resolve
from ..core.program import Step, TraceProgram
from ..core.sites import Site
from ..core.specs import AblateHeads, Edit, Patch, Spec, Steer
from ..core.viewers import Showable

if TYPE_CHECKING:  # pragma: no cover
    from ..core.engine import Model

SITES = ("resid_post", "resid_pre", "attn_out", "mlp_out", "z", "neurons")
METRICS = ("logit_diff", "prob", "kl")
DIRECTIONS = ("denoising", "noising")

__all__ = ["activation_patching", "attribution_patching", "ablate", "PatchingResult", "AblationResult",
           "noise_specs", "subject_positions"]


# -- results ---------------------------------------------------------------------------------
@dataclass
class PatchingResult(Showable):
    """A patching sweep: ``values[i, j]`` is the normalized metric (0 = corrupted, 1 = clean) when
    site ``layers[i]`` at column ``columns[j]`` (a position, head or neuron) is patched."""

    values: torch.Tensor
    raw: torch.Tensor
    layers: list[int]
    columns: list[int]
    column_kind: str
    tokens: list[str]
    site: str
    metric: str
    direction: str
    method: str
    clean: str
    corrupted: str | None
    clean_metric: float
    corrupted_metric: float
    base_prompt: str
    base_specs: list[Spec]
    # -- additions to the contract --------------------------------------------------------
    answer: str = ""
    wrong: str | None = None
    positions: list[int] | None = None  # positions patched by head/neuron cells (None: all)
    source: str | None = None  # the prompt patched from (None: values are set, see cell_specs)
    noise: float | None = None
    subject_positions: list[int] | None = None
    seed: int = 0
    # Recorded source activations per layer [s, ...], used instead of a source prompt when the
    # source is a noised run (noising with noise): cells then *set* those values.
    source_values: dict[int, torch.Tensor] | None = field(default=None, repr=False)
    #: The model the sweep ran on (so ``.show()`` can replay cells); not part of equality or repr.
    model: Any = field(default=None, repr=False, compare=False)

    def cell_specs(self, layer: int, column: int) -> list[Spec]:
        """The single patch of one cell, to apply on ``base_prompt`` after ``base_specs``."""
        if layer not in self.layers:
            raise IndexError(f"layer {layer} is not in this sweep (layers {self.layers})")
        if column not in self.columns:
            raise IndexError(f"{self.column_kind} {column} is not in this sweep ({self.column_kind}s {self.columns})")
        return _cell_specs(self.site, self.column_kind, layer, column, self.positions, self.source,
                           self.source_values, rows=None)

    @property
    def column_labels(self) -> list[str]:
        if self.column_kind == "position":
            return [f"{c}:{self.tokens[c]}" for c in self.columns]
        return [f"{'H' if self.column_kind == 'head' else 'N'}{c}" for c in self.columns]

    def to_pandas(self):
        """Normalized values as a DataFrame: rows are layers, columns positions/heads/neurons."""
        import pandas as pd

        df = pd.DataFrame(self.values.float().numpy(), index=pd.Index(self.layers, name="layer"),
                          columns=pd.Index(self.column_labels, name=self.column_kind))
        return df

    def top_cells(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` cells with the largest normalized effect, as (layer, column, value)."""
        v = self.values.float()
        flat = torch.nan_to_num(v, nan=float("-inf")).flatten()
        idx = flat.topk(min(k, flat.numel())).indices.tolist()
        w = v.shape[1]
        return [(self.layers[i // w], self.columns[i % w], float(flat[i])) for i in idx]

    def plot(self, ax: Any = None) -> Any:
        """A matplotlib heatmap (diverging colours centred on 0, layers on y)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(self.columns) + 2), max(3.0, 0.25 * len(self.layers) + 1.5)))
        v = self.values.float().numpy()
        lim = max(1.0, float(abs(v[~(v != v)]).max()) if v.size else 1.0)
        im = ax.imshow(v, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", origin="lower", interpolation="nearest")
        ax.set_xticks(range(len(self.columns)))
        ax.set_xticklabels(self.column_labels, rotation=90 if self.column_kind == "position" else 0, fontsize=8)
        ax.set_yticks(range(len(self.layers)))
        ax.set_yticklabels([str(L) for L in self.layers], fontsize=7)
        ax.set_ylabel("layer")
        ax.set_xlabel(self.column_kind)
        ax.set_title(f"{self.method} {self.direction}: {self.site}, {self.metric} (0 corrupted, 1 clean)", fontsize=9)
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        return ax

    def _repr_html_(self) -> str:
        return (f"<b>PatchingResult</b> {self.method} {self.direction} {self.site} × {len(self.layers)} layers × "
                f"{len(self.columns)} {self.column_kind}s, metric {self.metric} (clean {self.clean_metric:.4g}, "
                f"corrupted {self.corrupted_metric:.4g}); max normalized {float(self.values.max()):.3f}")


@dataclass
class AblationResult:
    """The metric before and after ablating heads/neurons (``change = after - before``)."""

    prompt: str
    answer: str
    wrong: str | None
    metric: str
    method: str
    heads: dict[int, list[int]]
    neurons: dict[int, list[int]]
    before: float
    after: float
    change: float
    specs: list[Spec]
    reference: list[str] | None = None
    resample_source: str | None = None

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([{"metric": self.metric, "method": self.method, "before": self.before,
                              "after": self.after, "change": self.change,
                              "heads": {k: list(v) for k, v in self.heads.items()},
                              "neurons": {k: list(v) for k, v in self.neurons.items()}}])

    def plot(self, ax: Any = None) -> Any:
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(3.5, 3))
        colors = ["#4477aa", "#cc6677" if self.after < self.before else "#228833"]
        ax.bar(["before", "after"], [self.before, self.after], color=colors)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel(self.metric)
        ax.set_title(f"{self.method} ablation: change {self.change:+.4g}", fontsize=9)
        return ax

    def _repr_html_(self) -> str:
        return (f"<b>AblationResult</b> {self.method} ablation of heads {self.heads} neurons {self.neurons}: "
                f"{self.metric} {self.before:.4g} → {self.after:.4g} ({self.change:+.4g})")


# -- input checks ------------------------------------------------------------------------------
def token_id(model: Model, target: str | int, what: str) -> int:
    """``model.token_id``: one token's id, with a clear error for anything else."""
    return model.token_id(target, what)


def _choice(value: str, options: tuple[str, ...], what: str) -> str:
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}: choose one of {', '.join(options)}")
    return value


def _check_indices(values: list[int] | None, size: int, what: str) -> list[int] | None:
    if values is None:
        return None
    values = [int(v) for v in values]
    bad = [v for v in values if not 0 <= v < size]
    if bad:
        raise IndexError(f"{what} {bad[0]} is out of range: valid {what}s are 0..{size - 1}")
    if not values:
        raise ValueError(f"give at least one {what}")
    return values


def _check_lengths(model: Model, clean: str, corrupted: str) -> None:
    a, b = model.tokenize(clean).tokens[0], model.tokenize(corrupted).tokens[0]
    if len(a) == len(b):
        return
    ta, tb = [t.text for t in a], [t.text for t in b]
    n = max(len(a), len(b))
    differ = [i for i in range(n) if i >= len(a) or i >= len(b) or a[i].id != b[i].id]
    raise ValueError(
        f"the clean and corrupted prompts must have the same number of tokens (symmetric token replacement), "
        f"but clean has {len(a)} and corrupted has {len(b)}.\n  clean:     {ta}\n  corrupted: {tb}\n"
        f"  positions that differ: {differ}")


def subject_positions(model: Model, prompt: str, subject: str | list[int]) -> list[int]:
    """Token positions of ``subject`` in ``prompt`` (a substring: the tokens overlapping its first occurrence)."""
    toks = model.tokenize(prompt).tokens[0]
    if not isinstance(subject, str):
        pos = [int(p) + len(toks) if int(p) < 0 else int(p) for p in subject]
        _check_indices(pos, len(toks), "subject position")
        return sorted(set(pos))
    start = prompt.find(subject)
    if not subject or start < 0:
        raise ValueError(f"subject {subject!r} is not a substring of the prompt {prompt!r}")
    end = start + len(subject)
    pos = [i for i, t in enumerate(toks) if t.end > t.start and t.start < end and t.end > start]
    if not pos:
        raise ValueError(f"subject {subject!r} covers no token of {[t.text for t in toks]}")
    return pos


def noise_specs(model: Model, prompt: str, subject: str | list[int], noise: float = 3.0, seed: int = 0) -> list[Spec]:
    """Gaussian noise on the subject's token embeddings: one `Steer` on ``embed`` per subject position.

    The noise is ``noise * std(embedding matrix) * N(0, 1)``, drawn with ``torch.Generator().manual_seed(seed)``
    as a [len(subject positions), d_model] matrix (one row per position, in position order).
    """
    pos = subject_positions(model, prompt, subject)
    w = resolve(model.hf, model.arch.embed).weight.detach()
    std = float(w.float().std())
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(len(pos), model.d_model, generator=g) * (float(noise) * std)
    return [Steer("embed", eps[i], 1.0, [p], name=f"noise@{p}") for i, p in enumerate(pos)]


# -- metrics -----------------------------------------------------------------------------------
def metric_values(logits: torch.Tensor, metric: str, ans: int, wrong: int | None,
            clean_logp: torch.Tensor | None) -> torch.Tensor:
    """The metric per row of last-position logits [B, vocab]."""
    logits = logits.float()
    if metric == "logit_diff":
        return logits[:, ans] - logits[:, wrong]
    logp = torch.log_softmax(logits, -1)
    if metric == "prob":
        return logp[:, ans].exp()
    p = clean_logp.exp()
    return (p * (clean_logp - logp)).sum(-1)


def _normalize(raw: torch.Tensor, m_clean: float, m_corr: float, metric: str) -> torch.Tensor:
    d = m_clean - m_corr
    if abs(d) < 1e-9:
        raise ValueError(f"the clean and corrupted runs give the same {metric} ({m_clean:.6g}): nothing to "
                         "normalize; choose a corruption that changes the prediction")
    return (raw - m_corr) / d


# -- cells -------------------------------------------------------------------------------------
def _cell_specs(site: str, kind: str, layer: int, col: int, positions: list[int] | None, source: str | None,
                values: dict[int, torch.Tensor] | None, rows: list[int] | None) -> list[Spec]:
    name = f"{site}.{layer}"
    if source is not None:
        if kind == "position":
            return [Patch(name, source=source, positions=[col], rows=rows)]
        return [Patch(name, source=source, positions=positions, indices=[col], rows=rows)]
    v = values[layer]  # [s, ...] recorded source activations
    ps = list(range(v.shape[0])) if positions is None else positions
    if kind == "position":
        return [Edit(name, None, "set", v[col].tolist(), [col], rows=rows)]
    if kind == "head":
        return [AblateHeads(name, [col], "mean", v[p].tolist(), [p], rows=rows) for p in ps]
    return [Edit(name, [col], "set", float(v[p, col]), [p], rows=rows) for p in ps]


@dataclass
class _Setup:
    site: str
    kind: str
    layers: list[int]
    columns: list[int]
    positions: list[int] | None
    tokens: list[str]
    ans: int
    wrong: int | None
    base_prompt: str
    base_specs: list[Spec]
    source: str | None  # a prompt to patch from, or None (noised source: source_specs)
    source_specs: list[Spec]  # specs that make the source run (noising with noise)
    clean_specs: list[Spec]
    corrupt_prompt: str
    corrupt_specs: list[Spec]
    subject_positions: list[int] | None


def _setup(model: Model, clean: str, corrupted: str | None, answer: str | int, wrong: str | int | None, site: str,
           metric: str, direction: str, noise: float | None, subject: str | list[int] | None, seed: int,
           layers: list[int] | None, positions: list[int] | None, heads: list[int] | None,
           neurons: list[int] | None) -> _Setup:
    a = model.arch
    _choice(site, SITES, "site")
    _choice(metric, METRICS, "metric")
    _choice(direction, DIRECTIONS, "direction")
    ans = token_id(model, answer, "answer")
    wid = None
    if metric == "logit_diff":
        if wrong is None:
            raise ValueError("metric 'logit_diff' needs a wrong answer (wrong=' Rome'); or use metric='prob' or 'kl'")
    if wrong is not None:
        wid = token_id(model, wrong, "wrong answer")
    toks = [t.text for t in model.tokenize(clean).tokens[0]]
    n = len(toks)
    subj = None
    if noise is None:
        if corrupted is None:
            raise ValueError("give a corrupted prompt, or noise=3.0 and a subject for Gaussian noise on its embeddings")
        _check_lengths(model, clean, corrupted)
        corrupt_prompt, corrupt_specs = corrupted, []
    else:
        if corrupted is not None:
            raise ValueError("give either a corrupted prompt or noise (with a subject), not both")
        if subject is None:
            raise ValueError("noise corruption needs subject=: a substring of the clean prompt or token positions")
        subj = subject_positions(model, clean, subject)
        corrupt_prompt, corrupt_specs = clean, noise_specs(model, clean, subj, noise, seed)
    if layers is None:
        layers = list(range(a.n_layers))
    layers = [int(L) + a.n_layers if -a.n_layers <= int(L) < 0 else int(L) for L in layers]  # -1: the last
    for L in layers:
        a.check_layer(L)
    if positions is not None:
        positions = [int(p) + n if int(p) < 0 else int(p) for p in positions]
        _check_indices(positions, n, "position")
    if site == "z":
        kind, columns = "head", _check_indices(heads, a.n_heads, "head") or list(range(a.n_heads))
    elif site == "neurons" and neurons is not None:
        kind, columns = "neuron", _check_indices(neurons, a.d_mlp, "neuron")
    else:
        kind, columns, positions = "position", positions if positions is not None else list(range(n)), None
    if direction == "denoising":
        base_prompt, base_specs = corrupt_prompt, corrupt_specs
        src, src_specs = clean, []
    else:
        base_prompt, base_specs = clean, []
        src, src_specs = corrupt_prompt, corrupt_specs
    return _Setup(site, kind, layers, columns, positions, toks, ans, wid, base_prompt, base_specs,
                  None if src_specs else src, src_specs, [], corrupt_prompt, corrupt_specs, subj)


def _reference_metrics(model: Model, s: _Setup, clean: str, metric: str) -> tuple[float, float, torch.Tensor]:
    cl = model.run(clean, top_k=1).logits.float()
    clean_logp = torch.log_softmax(cl, -1)
    co = model.run(s.corrupt_prompt, s.corrupt_specs, top_k=1).logits.float()
    m_clean = float(metric_values(cl, metric, s.ans, s.wrong, clean_logp)[0])
    m_corr = float(metric_values(co, metric, s.ans, s.wrong, clean_logp)[0])
    return m_clean, m_corr, clean_logp


def _result(s: _Setup, raw: torch.Tensor, values: torch.Tensor, method: str, clean: str, corrupted: str | None,
            metric: str, direction: str, m_clean: float, m_corr: float, answer: Any, wrong: Any, noise: float | None,
            seed: int, source_values: dict[int, torch.Tensor] | None, model: Any = None) -> PatchingResult:
    return PatchingResult(
        values=values, raw=raw, layers=s.layers, columns=s.columns, column_kind=s.kind, tokens=s.tokens,
        site=s.site, metric=metric, direction=direction, method=method, clean=clean, corrupted=corrupted,
        clean_metric=m_clean, corrupted_metric=m_corr, base_prompt=s.base_prompt, base_specs=list(s.base_specs),
        answer=answer if isinstance(answer, str) else str(answer), wrong=wrong if wrong is None or isinstance(wrong, str) else str(wrong),
        positions=s.positions, source=s.source, noise=noise, subject_positions=s.subject_positions, seed=seed,
        source_values=source_values, model=model)


def _progress(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


# -- the forked sweep ----------------------------------------------------------------------------
def _forked_sweep(model: Model, s: _Setup, cells: list[tuple[int, int]], src: dict[int, torch.Tensor]) -> torch.Tensor:
    """Last-position logits of the base run with each cell's patch, one batch row per cell.

    The trace starts with the base prompt alone (its specs applied); at the input of each
    swept layer the batch grows by one copy of the base row per cell of that layer, and the
    cell's source value is written into its row at the site. A row therefore costs only the
    layers from its own onward (about half a forward on average), and everything before is
    computed once. Each row equals replaying ``cell_specs`` through `Model.run` (tested).
    """
    nn = model.nn
    groups: dict[int, list[int]] = {}
    for L, c in cells:
        groups.setdefault(L, []).append(c)
    kw: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.hf.forward).parameters:
        kw["logits_to_keep"] = 1
    site, kind, positions = s.site, s.kind, s.positions
    with torch.inference_mode(), model.trace(s.base_prompt, **kw):
        if s.base_specs:
            model.apply(s.base_specs)
        n = 1
        for L, cols in groups.items():
            layer = model.layer(L)
            x = layer.input
            grown = torch.cat([x, x[:1].expand(len(cols), *x.shape[1:])], 0)
            if site != "resid_pre":
                layer.input = grown
                y = model.site(f"{site}.{L}")
            else:
                y = grown
            v = src[L].to(device=y.device, dtype=y.dtype)
            for k, c in enumerate(cols):
                if kind == "position":
                    y[n + k, c] = v[c]
                else:  # a head (z) or a neuron, at the chosen positions or all
                    ps = slice(None) if positions is None else positions
                    y[n + k, ps, c] = v[ps, c]
            if site == "resid_pre":
                layer.input = grown
            n += len(cols)
        out = nnsight.save(TraceProgram.logits(nn)[1:, -1].float())
    return out


# -- activation patching -------------------------------------------------------------------------
def activation_patching(model: Model, clean: str, corrupted: str | None = None, *, answer: str, wrong: str | None = None,
                        site: str = "resid_post", metric: str = "logit_diff", direction: str = "denoising",
                        noise: float | None = None, subject: str | list[int] | None = None, seed: int = 0,
                        layers: list[int] | None = None, positions: list[int] | None = None,
                        heads: list[int] | None = None, neurons: list[int] | None = None, batch_size: int = 64,
                        progress: bool = True) -> PatchingResult:
    """Patch every layer × position (or × head, × neuron) of a site, one cell per batch row.

    ``denoising`` patches clean activations into the corrupted run; ``noising`` patches
    corrupted activations into the clean run. Corruption: ``corrupted`` (a prompt with the
    same number of tokens) or ``noise`` × std(embeddings) Gaussian noise on ``subject``'s
    token embeddings (seeded). Cells run as rows of batches of at most ``batch_size`` cells,
    forked from the base run at their own layer (see `_forked_sweep`).
    """
    s = _setup(model, clean, corrupted, answer, wrong, site, metric, direction, noise, subject, seed, layers,
               positions, heads, neurons)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    m_clean, m_corr, clean_logp = _reference_metrics(model, s, clean, metric)
    # The source's activations at every swept layer, recorded once.
    caps = [f"{site}.{L}" for L in s.layers]
    rec = model.run(s.corrupt_prompt if s.source is None else s.source,
                    s.source_specs if s.source is None else [], capture=caps, top_k=1, logits=None)
    recorded = {L: rec.activations[f"{site}.{L}"][0] for L in s.layers}
    values_src = recorded if s.source is None else None  # a noised source: cells set these values
    cells = [(i, j, L, c) for i, L in enumerate(s.layers) for j, c in enumerate(s.columns)]
    raw = torch.empty(len(s.layers), len(s.columns))
    with _progress(len(cells), f"patching {site}", progress) as bar:
        for start in range(0, len(cells), batch_size):
            chunk = cells[start:start + batch_size]
            logits = _forked_sweep(model, s, [(L, c) for _, _, L, c in chunk], recorded)
            m = metric_values(logits, metric, s.ans, s.wrong, clean_logp)
            for r, (i, j, _, _) in enumerate(chunk):
                raw[i, j] = m[r]
            bar.update(len(chunk))
    values = _normalize(raw, m_clean, m_corr, metric)
    return _result(s, raw, values, "exact", clean, corrupted, metric, direction, m_clean, m_corr, answer, wrong,
                   noise, seed, values_src, model)


# -- attribution patching ------------------------------------------------------------------------
def attribution_patching(model: Model, clean: str, corrupted: str | None = None, *, answer: str,
                         wrong: str | None = None, site: str = "resid_post", metric: str = "logit_diff",
                         direction: str = "denoising", noise: float | None = None,
                         subject: str | list[int] | None = None, seed: int = 0, layers: list[int] | None = None,
                         positions: list[int] | None = None, heads: list[int] | None = None,
                         neurons: list[int] | None = None, batch_size: int = 64,
                         progress: bool = True) -> PatchingResult:
    """Gradient × difference estimate of `activation_patching` (Nanda 2023; Syed et al. 2023).

    One forward of the base and source runs (batched as two rows) and one backward of the
    metric on the base row: ``estimate = grad_base · (source − base)``, summed over the site's
    features (per position; per head over d_head and the chosen positions; per neuron over the
    chosen positions). ``raw = m_base + estimate``, normalized like the exact sweep.
    ``batch_size`` and ``progress`` are accepted for signature parity and unused.
    """
    s = _setup(model, clean, corrupted, answer, wrong, site, metric, direction, noise, subject, seed, layers,
               positions, heads, neurons)
    a = model.arch
    src_prompt = s.source if s.source is not None else s.corrupt_prompt
    # Row 0: the base run (gets the gradient); row 1: the source run.
    batch = model.tokenize([s.base_prompt, src_prompt])
    specs = [_with_rows(x, [0]) for x in s.base_specs] + [_with_rows(x, [1]) for x in s.source_specs]
    for x in specs:
        if x.parsed_site.name != "embed":
            raise NotImplementedError("attribution patching supports base specs on 'embed' only (noise corruption)")
    program = model.program(batch, specs)
    nn = model.nn
    with model.lock, torch.enable_grad():
        with model.trace_batch(batch, remote=False):
            program.visit(nn, Step(0, batch.lengths))
            found = []
            cache: dict = {}
            for L in sorted(s.layers):
                if site == "z":
                    x = program.module(nn, "attn_o_proj", L).input  # the flat [b, s, H*d_head] tensor that flows on
                else:
                    x = program.read(nn, Site(site, L), cache)
                found.append(x)
            acts = nnsight.save(found)  # unsaved locals do not survive the trace
            logits = nnsight.save(program.logits(nn)[:, -1])
    clean_logp = None
    if metric == "kl":
        clean_logp = torch.log_softmax(model.run(clean, top_k=1).logits.float(), -1)
    with torch.enable_grad():
        m = metric_values(logits, metric, s.ans, s.wrong, clean_logp)
        grads = torch.autograd.grad(m[0], acts, allow_unused=True)
    m_base, m_src = float(m[0].detach()), float(m[1].detach())
    m_clean, m_corr = (m_src, m_base) if direction == "denoising" else (m_base, m_src)
    order = {L: k for k, L in enumerate(sorted(s.layers))}
    raw = torch.empty(len(s.layers), len(s.columns))
    for i, L in enumerate(s.layers):
        x, g = acts[order[L]].detach(), grads[order[L]]
        g = torch.zeros_like(x) if g is None else g.detach()
        delta = (x[1] - x[0]).float()
        prod = g[0].float() * delta  # [s, ...]
        if site == "z":
            prod = prod.unflatten(-1, (a.n_heads, a.d_head)).sum(-1)  # [s, H]
        if s.kind == "position":
            est = prod.sum(-1)[s.columns]
        else:
            sel = prod if s.positions is None else prod[s.positions]
            est = sel.sum(0)[s.columns]
        raw[i] = m_base + est
    values = _normalize(raw, m_clean, m_corr, metric)
    return _result(s, raw.detach(), values.detach(), "attribution", clean, corrupted, metric, direction, m_clean,
                   m_corr, answer, wrong, noise, seed, None, model)


def _with_rows(spec: Spec, rows: list[int]) -> Spec:
    from ..core.specs import spec_from_dict

    d = spec.to_dict()
    d["rows"] = rows
    return spec_from_dict(d)


# -- ablation --------------------------------------------------------------------------------------
def ablate(model: Model, prompt: str, *, heads: dict[int, list[int]] | None = None,
           neurons: dict[int, list[int]] | None = None, method: str = "zero", reference: list[str] | None = None,
           answer: str, wrong: str | None = None, metric: str = "logit_diff", seed: int = 0) -> AblationResult:
    """Ablate sets of heads (``{layer: [heads]}``) and/or MLP neurons (``{layer: [neurons]}``).

    ``method``: ``"zero"``; ``"mean"`` (the mean over all token positions of the ``reference``
    prompts); ``"resample"`` (the activations of one reference prompt with the same number of
    tokens as ``prompt``, chosen with ``seed``, patched position by position). The metric is
    read at the last position (``kl``: KL from the un-ablated distribution, so ``before`` is 0).
    """
    _choice(method, ("zero", "mean", "resample"), "method")
    _choice(metric, METRICS, "metric")
    a = model.arch
    heads = {int(k): _check_indices(v, a.n_heads, "head") for k, v in (heads or {}).items()}
    neurons = {int(k): _check_indices(v, a.d_mlp, "neuron") for k, v in (neurons or {}).items()}
    if not heads and not neurons:
        raise ValueError("give heads={layer: [head, ...]} and/or neurons={layer: [neuron, ...]} to ablate")
    for L in list(heads) + list(neurons):
        a.check_layer(L)
    ans = token_id(model, answer, "answer")
    if metric == "logit_diff" and wrong is None:
        raise ValueError("metric 'logit_diff' needs a wrong answer (wrong=...); or use metric='prob' or 'kl'")
    wid = None if wrong is None else token_id(model, wrong, "wrong answer")
    if method != "zero" and not reference:
        raise ValueError(f"method {method!r} needs reference=[prompts, ...]")
    source = None
    specs: list[Spec] = []
    if method == "resample":
        n = len(model.tokenize(prompt).tokens[0])
        same = [r for r in reference if r != prompt and len(model.tokenize(r).tokens[0]) == n]
        if not same:
            lens = {r: len(model.tokenize(r).tokens[0]) for r in reference}
            raise ValueError(f"resample ablation needs a reference prompt with the same number of tokens as the "
                             f"prompt ({n}); reference lengths: {lens}")
        source = random.Random(seed).choice(same)
    for L, hs in heads.items():
        if method == "zero":
            specs.append(AblateHeads(f"z.{L}", hs, "zero"))
        elif method == "mean":
            specs.append(AblateHeads(f"z.{L}", hs, "mean", model.mean_activation(f"z.{L}", reference)))
        else:
            specs.append(Patch(f"z.{L}", source=source, indices=hs))
    for L, ns in neurons.items():
        if method == "zero":
            specs.append(Edit(f"neurons.{L}", ns, "zero"))
        elif method == "mean":
            mean = model.mean_activation(f"neurons.{L}", reference)
            specs.append(Edit(f"neurons.{L}", ns, "mean", mean[ns]))
        else:
            specs.append(Patch(f"neurons.{L}", source=source, indices=ns))
    clean = model.run(prompt, top_k=1).logits.float()
    clean_logp = torch.log_softmax(clean, -1)
    abl = model.run(prompt, specs, top_k=1).logits.float()
    before = float(metric_values(clean, metric, ans, wid, clean_logp)[0])
    after = float(metric_values(abl, metric, ans, wid, clean_logp)[0])
    return AblationResult(prompt, answer, wrong, metric, method, heads, neurons, before, after, after - before, specs,
                          list(reference) if reference else None, source)
