"""How good is a dictionary? Reconstruction, sparsity and downstream loss on held-out text.

    ev = wb.evaluate_dictionary(model, d)                 # 20k tokens of the default corpus
    ev.fvu, ev.l0, ev.delta_ce, ev.loss_recovered
    ev.to_pandas(); ev.plot()                              # firing-frequency histogram

The corpus is cut into windows of ``context`` tokens (`workbench.core.activations.token_windows`:
texts packed into one stream, each window starting with the tokenizer's BOS if it uses one).
Every window runs three times in one batch: clean, with `Splice(d)` (the site, or a
transcoder's ``out_site``, replaced by the reconstruction) and with the same positions
zero-ablated. Positions before ``skip_first`` (default 1: position 0 is an attention sink with
outlier norms) are neither spliced nor ablated nor counted. Over the counted tokens
(``skip_first <= p < len``):

- ``fvu = sum ||y - y_hat||^2 / sum ||y - mean(y)||^2`` (``y`` the site's activation, a
  transcoder's target ``out_site``), ``explained_variance = 1 - fvu``, ``mse`` per element;
- ``l0``: mean number of active latents per token; ``dead_fraction``: latents never active on
  these tokens; ``dense_fraction``: latents active on more than ``dense_threshold`` of them;
- over next-token predictions at ``skip_first <= p < len - 1``: mean cross-entropy clean,
  spliced and zero-ablated, ``delta_ce = ce_splice - ce_clean``, ``loss_recovered =
  (ce_zero - ce_splice) / (ce_zero - ce_clean)``, and ``kl``: mean KL(clean || spliced).

Everything is reduced inside the trace (capture reducers return a few sums per batch), so a
remote model sends back numbers, not activations or logits.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.activations import token_windows
from ..core.sites import Site
from ..core.specs import Edit
from .dictionary import Dictionary
from .features import Splice, register_dictionary

__all__ = ["DictionaryEval", "evaluate_dictionary"]


class _ReadReducer:
    """At the read site (clean rows): encode, and sum what the metrics need. An SAE also compares
    its reconstruction with the input here; a transcoder keeps it for `_TargetReducer`."""

    def __init__(self, d: Dictionary, n_rows: int, skip_first: int, zsite: bool, target_here: bool):
        self.d, self.n_rows, self.skip, self.zsite, self.target_here = d, n_rows, skip_first, zsite, target_here
        self.y_hat: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        d = self.d
        if d.device != x.device:
            d = self.d = d.to(x.device)
        x = x[: self.n_rows, self.skip:]
        if self.zsite:
            x = x.flatten(-2)
        x = x.reshape(-1, x.shape[-1])
        y_hat, acts = d.forward(x)
        active = acts > 0
        n = torch.tensor([float(x.shape[0]), float(active.sum())], dtype=torch.float64, device=x.device)
        fires = active.sum(0).to(torch.float64)
        if self.target_here:
            return torch.cat([n, _target_sums(x, y_hat), fires])
        self.y_hat = y_hat
        return torch.cat([n, fires])


class _TargetReducer:
    """At a transcoder's out_site (clean rows): compare the target with the read site's prediction."""

    def __init__(self, reader: _ReadReducer):
        self.reader = reader

    def __call__(self, y: Tensor) -> Tensor:
        r = self.reader
        y = y[: r.n_rows, r.skip:]
        y = y.reshape(-1, y.shape[-1])
        out = _target_sums(y, r.y_hat)
        r.y_hat = None
        return out


def _target_sums(y: Tensor, y_hat: Tensor) -> Tensor:
    """[sum ||y - y_hat||^2, sum ||y||^2, sum y (per unit)] in float64."""
    y64 = y.to(torch.float64)
    err = ((y_hat.to(torch.float64) - y64) ** 2).sum()
    return torch.cat([torch.stack([err, (y64 ** 2).sum()]), y64.sum(0)])


class _LossReducer:
    """At the logits (all rows: clean, spliced, ablated): summed cross-entropies and KL(clean || spliced)."""

    def __init__(self, targets: Tensor, skip_first: int):
        self.targets, self.skip = targets, skip_first  # targets [B, L - 1 - skip]: tokens skip+1 .. L-1

    def __call__(self, logits: Tensor) -> Tensor:
        B, P = self.targets.shape
        tgt = self.targets.to(logits.device)[..., None]
        lp = [torch.log_softmax(logits[g * B:(g + 1) * B, self.skip:self.skip + P].float(), -1) for g in (0, 1)]
        ce = [-(lp[g].gather(-1, tgt)).to(torch.float64).sum() for g in (0, 1)]
        kl = (lp[0].exp() * (lp[0] - lp[1])).sum(-1).to(torch.float64).sum()
        del lp
        lz = torch.log_softmax(logits[2 * B:3 * B, self.skip:self.skip + P].float(), -1)
        ce.append(-(lz.gather(-1, tgt)).to(torch.float64).sum())
        n = torch.tensor(float(B * P), dtype=torch.float64, device=logits.device)
        return torch.stack([ce[0], ce[1], ce[2], kl, n])


@dataclass
class DictionaryEval:
    """Metrics of one dictionary on held-out windows (see `evaluate_dictionary`)."""

    dictionary: str
    site: str
    out_site: str | None
    architecture: str
    d_sae: int
    n_tokens: int
    n_predictions: int
    n_windows: int
    context: int
    skip_first: int
    fvu: float
    explained_variance: float
    mse: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    dense_threshold: float
    ce_clean: float
    ce_splice: float
    ce_zero: float
    delta_ce: float
    loss_recovered: float
    kl: float
    frequencies: Tensor = field(repr=False)  # [d_sae] fraction of counted tokens each latent fires on

    METRICS = ("fvu", "explained_variance", "mse", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_splice",
               "ce_zero", "delta_ce", "loss_recovered", "kl")

    @property
    def n_dead(self) -> int:
        return int((self.frequencies == 0).sum())

    @property
    def n_dense(self) -> int:
        return int((self.frequencies > self.dense_threshold).sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready scalars (the per-latent ``frequencies`` are left out: see the attribute)."""
        out = {k: getattr(self, k) for k in ("dictionary", "site", "out_site", "architecture", "d_sae", "n_tokens",
                                             "n_predictions", "n_windows", "context", "skip_first", "dense_threshold")}
        out.update({k: _num(getattr(self, k)) for k in self.METRICS})
        out.update(n_dead=self.n_dead, n_dense=self.n_dense)
        return out

    def to_pandas(self):
        """One row per metric: ``metric``, ``value``, ``meaning``."""
        import pandas as pd

        rows = [(k, getattr(self, k), _MEANING[k]) for k in self.METRICS]
        rows += [("n_dead", self.n_dead, "latents never active"), ("n_dense", self.n_dense,
                 f"latents active on > {self.dense_threshold:g} of tokens"),
                 ("n_tokens", self.n_tokens, "tokens counted (reconstruction)"),
                 ("n_predictions", self.n_predictions, "next-token predictions counted (loss)")]
        return pd.DataFrame(rows, columns=["metric", "value", "meaning"])

    def plot(self, ax: Any = None):
        """Histogram of log10 firing frequency per latent (dead latents counted in the title)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        f = self.frequencies.double()
        live = f[f > 0]
        if len(live):
            ax.hist(torch.log10(live).numpy(), bins=50, color="#4c72b0")
        ax.axvline(math.log10(self.dense_threshold), color="#c44e52", ls="--", lw=1)
        ax.set_xlabel("log10 firing frequency")
        ax.set_ylabel("latents")
        ax.set_title(f"{self.dictionary}: L0 {self.l0:.1f}, {self.n_dead} dead, {self.n_dense} dense")
        return ax

    def __repr__(self) -> str:
        return (f"DictionaryEval({self.dictionary}: FVU {self.fvu:.4f}, L0 {self.l0:.2f}, dead {self.dead_fraction:.1%}, "
                f"ΔCE {self.delta_ce:+.4f}, recovered {self.loss_recovered:.1%}, KL {self.kl:.4f}; "
                f"{self.n_tokens} tokens)")

    def _repr_html_(self) -> str:
        where = self.site + (f" → {self.out_site}" if self.out_site else "")
        head = (f"<b>DictionaryEval</b> {html.escape(self.dictionary)} ({html.escape(self.architecture)}, "
                f"{self.d_sae} latents, {html.escape(where)}) on {self.n_tokens} tokens")
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{_fmt(getattr(self, k))}</td>"
                       f"<td>{html.escape(_MEANING[k])}</td></tr>" for k in self.METRICS)
        return f"<div>{head}<table>{body}</table></div>"


_MEANING = {
    "fvu": "fraction of variance unexplained", "explained_variance": "1 - FVU",
    "mse": "mean squared error per element", "l0": "mean active latents per token",
    "dead_fraction": "latents never active", "dense_fraction": "latents active on more than the threshold",
    "ce_clean": "cross-entropy, clean (nats)", "ce_splice": "cross-entropy, dictionary spliced in",
    "ce_zero": "cross-entropy, site zero-ablated", "delta_ce": "ce_splice - ce_clean",
    "loss_recovered": "(ce_zero - ce_splice) / (ce_zero - ce_clean)", "kl": "mean KL(clean || spliced) per token",
}


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _fmt(v: float) -> str:
    return html.escape(f"{v:.5g}")


def _batches(tokenizer: Any, corpus: Any, context: int, batch_size: int, max_tokens: int | None,
             skip_first: int) -> Iterator[list[list[int]]]:
    """Batches of equal-length windows; the window that reaches ``max_tokens`` is cut to fit."""
    counted, batch = 0, []
    for w in token_windows(tokenizer, corpus, context):
        if max_tokens is not None and counted + len(w) - skip_first > max_tokens:
            w = w[: skip_first + max_tokens - counted]
        if len(w) <= skip_first:
            if max_tokens is not None and counted >= max_tokens:
                break
            continue
        if batch and len(w) != len(batch[0]):
            yield batch
            batch = []
        batch.append(w)
        counted += len(w) - skip_first
        if len(batch) == batch_size:
            yield batch
            batch = []
        if max_tokens is not None and counted >= max_tokens:
            break
    if batch:
        yield batch


def evaluate_dictionary(model: Any, d: Dictionary, corpus: Any = None, max_tokens: int | None = 20_000,
                        context: int = 64, batch_size: int = 8, progress: bool = True, *,
                        dense_threshold: float = 0.1, skip_first: int = 1) -> DictionaryEval:
    """Reconstruction, sparsity and loss metrics of ``d`` on held-out text (see the module docstring).

    ``corpus``: anything `workbench.iter_texts` reads (default: the Python reference manual);
    ``max_tokens``: counted tokens to evaluate (``None``: the whole corpus).
    """
    from tqdm.auto import tqdm

    if not isinstance(d, Dictionary):
        raise TypeError(f"evaluate_dictionary needs a workbench Dictionary, not {type(d).__name__}")
    d.check(model)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, not {max_tokens}")
    if not 0 <= skip_first < context - 1:
        raise ValueError(f"skip_first must be in 0..context-2, not {skip_first}")
    if not 0 < dense_threshold < 1:
        raise ValueError(f"dense_threshold is a fraction of tokens in (0, 1), not {dense_threshold}")
    name = register_dictionary(d)
    site, write = d.site, d.out_site or d.site
    zsite = Site.parse(site).name == "z"
    transcoder = Site.parse(write) != Site.parse(site)
    d_out = d.d_out
    sums = torch.zeros(4, dtype=torch.float64)  # tokens, active latents, sum ||y - y_hat||^2, sum ||y||^2
    ysum = torch.zeros(d_out, dtype=torch.float64)
    fires = torch.zeros(d.d_sae, dtype=torch.float64)
    loss = torch.zeros(5, dtype=torch.float64)  # CE clean, spliced, zeroed; KL; predictions
    n_windows = 0
    bar = tqdm(total=max_tokens, unit="tok", unit_scale=True, desc=f"evaluate {name}", disable=not progress,
               leave=False)
    try:
        for rows in _batches(model.tokenizer, corpus, context, batch_size, max_tokens, skip_first):
            B, L = len(rows), len(rows[0])
            P = None if skip_first == 0 else list(range(skip_first, L))
            specs = [Splice(d, positions=P, rows=list(range(B, 2 * B))),
                     Edit(write, None, "zero", positions=P, rows=list(range(2 * B, 3 * B)))]
            reader = _ReadReducer(d, B, skip_first, zsite, not transcoder)
            caps: dict[str, Any] = {site: reader, "logits": _LossReducer(torch.tensor(rows)[:, skip_first + 1:], skip_first)}
            if transcoder:
                caps[write] = _TargetReducer(reader)
            res = model.run(model.batch_from_ids(rows * 3), specs, capture=caps, top_k=0, logits=None)
            r = res.activations[site].to(torch.float64).cpu()
            sums[0] += r[0]
            sums[1] += r[1]
            if transcoder:
                t = res.activations[write].to(torch.float64).cpu()
                fires += r[2:]
            else:  # [n, active, err2, sum y^2, sum y (d_out), fires (d_sae)]
                t = r[2:]
                fires += t[2 + d_out:]
            sums[2] += t[0]
            sums[3] += t[1]
            ysum += t[2:2 + d_out]
            loss += res.activations["logits"].to(torch.float64).cpu()
            n_windows += B
            bar.update(B * (L - skip_first))
    finally:
        bar.close()
    n = float(sums[0])
    if n == 0:
        raise ValueError("the corpus gave no tokens to evaluate (is it empty, or are its texts shorter than "
                         f"skip_first + 1 = {skip_first + 1} tokens?)")
    total = float(sums[3] - (ysum ** 2).sum() / n)  # sum ||y - mean y||^2
    fvu = float(sums[2]) / total if total > 0 else math.nan
    n_pred = float(loss[4])
    ce = [float(loss[i]) / n_pred if n_pred else math.nan for i in range(3)]
    kl = float(loss[3]) / n_pred if n_pred else math.nan
    gap = ce[2] - ce[0]
    freq = (fires / n).float()
    return DictionaryEval(
        dictionary=name, site=site, out_site=d.out_site, architecture=d.architecture, d_sae=d.d_sae,
        n_tokens=int(n), n_predictions=int(n_pred), n_windows=n_windows, context=context, skip_first=skip_first,
        fvu=fvu, explained_variance=1.0 - fvu, mse=float(sums[2]) / (n * d_out), l0=float(sums[1]) / n,
        dead_fraction=float((freq == 0).double().mean()), dense_fraction=float((freq > dense_threshold).double().mean()),
        dense_threshold=float(dense_threshold), ce_clean=ce[0], ce_splice=ce[1], ce_zero=ce[2], delta_ce=ce[1] - ce[0],
        loss_recovered=(ce[2] - ce[1]) / gap if gap != 0 else math.nan, kl=kl, frequencies=freq,
    )
