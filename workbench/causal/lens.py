"""The logit lens and the tuned lens: what each layer's residual stream would predict.

    import workbench as wb
    res = wb.logit_lens(model, "The capital of France is", targets=[" Paris"])
    res.to_pandas(); res.plot(); res.show()        # table, heatmap, LogitLens widget

    lens = wb.causal.TunedLens.train(model, checkpoint="my-lens")   # CPU, a few minutes
    res = wb.tuned_lens(model, "The capital of France is", lens)

For every layer L and position p the **logit lens** applies the model's final norm and
unembedding to ``resid_post.L`` (with Gemma 2's final logit softcapping); the **tuned
lens** first maps the residual through a learned affine translator ``h + A_L h + b_L``
(the tuned-lens convention; ``A`` and ``b`` start at 0, so an untrained tuned lens *is*
the logit lens). The last layer is never translated: its lens is the model's own output
distribution. Everything is reduced inside one nnsight trace (top-k, target probabilities
and ranks, KL to the final distribution), so only small tensors leave it, also remotely.

Train longer for a better tuned lens, e.g. ``TunedLens.train(model, steps=2000,
seq_len=128, batch_size=4, corpus=my_texts, checkpoint="lens")``; ``checkpoint`` is written
every ``save_every`` steps, and ``init=TunedLens.load("lens")`` continues from a saved lens.
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nnsight
import torch

from ..core.arch import ArchMap, resolve
from ..core.errors import WorkbenchError
from ..core.fileio import atomic_folder, atomic_json, atomic_tensors
from ..core.program import TraceProgram
from ..core.sites import Site
from ..core.viewers import Showable

#: Logit chunks are at most this many elements ([layers, positions, vocab]), to bound memory.
_CHUNK_ELEMENTS = 48_000_000
FORMAT = "workbench-tuned-lens"
#: The row label of the embeddings in `LensResult.layers` (ask for it with ``layers=["embed", ...]``).
EMBED = -1


class LensFileError(WorkbenchError, ValueError):
    """A tuned-lens folder is missing, corrupt or does not fit the model."""


def _softcap(model: Any) -> float | None:
    cfg = model.hf.config
    cfg = getattr(cfg, "text_config", None) or cfg
    cap = getattr(cfg, "final_logit_softcapping", None)
    return float(cap) if cap else None


# -- results -----------------------------------------------------------------------------
@dataclass
class LensResult(Showable):
    """Per layer and position: the lens's top-k, the targets' probabilities and ranks, KL.

    Arrays are indexed ``[layer index, position index, ...]`` following ``layers`` and
    ``positions``. ``layers`` holds non-negative layer indices, and ``EMBED`` (-1, first) for the
    embeddings row when ``"embed"`` was asked for (the lens of ``resid_pre.0``). ``target_ranks`` are 1-based (1 = the lens's top prediction);
    ``kl[i, j]`` is KL(final distribution || lens distribution) in nats.
    """

    prompt: str
    tokens: list[str]  # every token of the prompt
    layers: list[int]
    positions: list[int]
    top_ids: torch.Tensor  # [n_layers, n_positions, k] int64
    top_probs: torch.Tensor  # [n_layers, n_positions, k] float32
    top_tokens: list[list[list[str]]]
    targets: list[str]
    target_ids: list[int]
    target_probs: torch.Tensor  # [n_layers, n_positions, n_targets]
    target_ranks: torch.Tensor  # [n_layers, n_positions, n_targets], 1 = top
    kl: torch.Tensor  # [n_layers, n_positions]
    kind: str = "logit"  # "logit" | "tuned"
    n_model_layers: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False, compare=False)  # for .show()
    lens: Any = field(default=None, repr=False, compare=False)  # the TunedLens of a tuned result

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[-1])

    def sites(self) -> list[str]:
        """The site each row lenses: ``resid_post.L``, and ``resid_pre.0`` for the embeddings row."""
        return ["resid_pre.0" if L == EMBED else f"resid_post.{L}" for L in self.layers]

    def to_pandas(self):
        """One row per layer, position and rank (target columns: ``p(<target>)``, ``rank(<target>)``)."""
        import pandas as pd

        rows = []
        for i, L in enumerate(self.layers):
            for j, p in enumerate(self.positions):
                for r in range(self.k):
                    row = {"layer": L, "position": p, "token": self.tokens[p], "rank": r + 1,
                           "prediction": self.top_tokens[i][j][r], "id": int(self.top_ids[i, j, r]),
                           "prob": float(self.top_probs[i, j, r]), "kl": float(self.kl[i, j])}
                    for t, name in enumerate(self.targets):
                        row[f"p({name})"] = float(self.target_probs[i, j, t])
                        row[f"rank({name})"] = int(self.target_ranks[i, j, t])
                    rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, ax: Any = None, target: str | None = None, max_chars: int = 8):
        """Heatmap (layers × positions) of the top token's probability (or a target's), labelled."""
        import matplotlib.pyplot as plt

        if target is not None:
            if target not in self.targets:
                raise ValueError(f"target {target!r} was not computed; targets: {self.targets}")
            values = self.target_probs[:, :, self.targets.index(target)]
        else:
            values = self.top_probs[:, :, 0]
        nL, nP = values.shape
        if ax is None:
            _, ax = plt.subplots(figsize=(1.0 + 0.9 * nP, 0.8 + 0.32 * nL))
        im = ax.imshow(values.numpy(), origin="lower", aspect="auto", cmap="Blues", vmin=0, vmax=1)
        for i in range(nL):
            for j in range(nP):
                text = self.top_tokens[i][j][0].replace("\n", "⏎")[:max_chars]
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if float(values[i, j]) > 0.6 else "black")
        ax.set_xticks(range(nP), [self.tokens[p].replace("\n", "⏎") for p in self.positions], rotation=60, fontsize=8)
        ax.set_yticks(range(nL), ["embed" if L == EMBED else str(L) for L in self.layers], fontsize=7)
        ax.set_xlabel("position")
        ax.set_ylabel("layer (resid_post)")
        what = f"p({target!r})" if target is not None else "top-token probability"
        ax.set_title(f"{self.kind} lens: {what}")
        ax.figure.colorbar(im, ax=ax, fraction=0.03)
        return ax

    def _repr_html_(self) -> str:
        import html

        last = self.top_tokens[-1][-1][0] if self.top_tokens else ""
        return (f"<div><b>LensResult</b> ({self.kind} lens) — {len(self.layers)} layers × {len(self.positions)} "
                f"positions, top-{self.k}; final layer, last position: <code>{html.escape(repr(last))}</code>. "
                "<code>.show()</code> opens the widget, <code>.to_pandas()</code> / <code>.plot()</code>.</div>")


# -- validation ----------------------------------------------------------------------------
def target_ids(model: Any, targets: Iterable[str | int] | None) -> tuple[list[str], list[int]]:
    """Token ids of single-token targets; a clear error for empty, unknown or multi-token ones."""
    names, ids = [], []
    for t in targets or ():
        i = model.token_id(t, "target")
        names.append(model.tokenizer.decode([i]) if isinstance(t, int) else t)
        ids.append(i)
    return names, ids


def _norm_positions(n: int, positions: Iterable[int] | None) -> list[int]:
    if positions is None:
        return list(range(n))
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"positions are integers, not {p!r}")
        if not -n <= p < n:
            raise IndexError(f"position {p} is out of range for a prompt of {n} tokens")
        out.append(p + n if p < 0 else p)
    if not out:
        raise ValueError("no positions given")
    return sorted(set(out))


def _lens_layers(arch: ArchMap, layers: Any) -> list[int]:
    """Layer indices for the lens: ``arch.layer_list`` plus ``"embed"`` (-> `EMBED`, first)."""
    if isinstance(layers, str):
        layers = [layers]
    if layers is None or isinstance(layers, int):
        return arch.layer_list(layers)
    layers = list(layers)
    embed = any(isinstance(L, str) and L == "embed" for L in layers)
    rest = [L for L in layers if not (isinstance(L, str) and L == "embed")]
    for L in rest:
        if isinstance(L, str):
            raise TypeError(f"layers are integers or 'embed' (the embeddings), not {L!r}")
    Ls = arch.layer_list(rest) if rest else []
    if not Ls and not embed:
        raise ValueError("no layers given")
    return ([EMBED] if embed else []) + Ls


# -- the program that runs inside the trace --------------------------------------------------
class _LensProgram:
    """The lens computation, run inside one nnsight trace (holds no model, no locks)."""

    def __init__(self, arch: ArchMap, layers: list[int], positions: list[int], tids: list[int], k: int,
                 softcap: float | None, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None):
        self.arch = arch
        self.layers = layers
        self.n_layers = arch.n_layers
        self.positions = torch.tensor(positions)
        self.tids = torch.tensor(tids, dtype=torch.long)
        self.k = k
        self.softcap = softcap
        self.weight = weight  # [n_layers, d, d] translators (0: embeddings, L + 1: resid_post.L) or None
        self.bias = bias
        self.lens_layers = [L for L in layers if L != arch.n_layers - 1]  # the last one is the model's output
        self.chunk = max(1, _CHUNK_ELEMENTS // max(1, len(positions) * max(1, arch.vocab)))
        self.kept = False  # set when the trace passes logits_to_keep=positions

    def stats(self, lg: torch.Tensor, logp_f: torch.Tensor, p_f: torch.Tensor, negent: torch.Tensor) -> list:
        """Top-k, target probs/ranks and KL for logits ``[c, P, V]`` (float32)."""
        lse = torch.logsumexp(lg, -1)  # [c, P]
        tv, ti = lg.topk(self.k, dim=-1)
        tp = (tv - lse[..., None]).exp()
        kl = negent - (p_f * lg).sum(-1) + lse  # sum p_f (log p_f - log q) with log q = lg - lse
        tids = self.tids.to(lg.device)
        tl = lg.index_select(-1, tids)  # [c, P, T]
        tprob = (tl - lse[..., None]).exp()
        ranks = [(lg > tl[..., j:j + 1]).sum(-1) + 1 for j in range(tids.shape[0])]
        trank = torch.stack(ranks, -1) if ranks else torch.zeros(tl.shape, dtype=torch.long, device=lg.device)
        return [ti, tp, tprob, trank, kl.clamp_min(0)]

    def run(self, nn: Any, program: TraceProgram) -> dict[str, torch.Tensor]:
        """Read the residual stream of each layer, then reduce; returns saved tensors."""
        pos = self.positions
        hs = []
        for L in self.lens_layers:
            x = program.read(nn, Site("resid_pre", 0) if L == EMBED else Site("resid_post", L))
            hs.append(x[0, pos.to(x.device)])
        final = program.logits(nn)[0]
        # the model unembedded only these positions (logits_to_keep), in this order; else every one
        final = (final if final.shape[0] == pos.numel() and self.kept else final[pos.to(final.device)]).float()
        logp_f = torch.log_softmax(final, -1)
        p_f = logp_f.exp()
        negent = (p_f * logp_f).sum(-1)
        norm, head = program.module(nn, "final_norm"), program.module(nn, "unembed")
        parts: list[list[torch.Tensor]] = []
        for c0 in range(0, len(hs), self.chunk):
            h = torch.stack(hs[c0:c0 + self.chunk])  # [c, P, d]
            if self.weight is not None:
                idx = torch.tensor(self.lens_layers[c0:c0 + self.chunk], device=h.device) + 1
                w = self.weight.to(device=h.device, dtype=h.dtype)[idx]
                b = self.bias.to(device=h.device, dtype=h.dtype)[idx]
                h = h + torch.einsum("cpd,ced->cpe", h, w) + b[:, None]
            lg = head(norm(h)).float()
            if self.softcap is not None:
                lg = torch.tanh(lg / self.softcap) * self.softcap
            parts.append(self.stats(lg, logp_f, p_f, negent))
        if len(self.lens_layers) < len(self.layers):
            parts.append(self.stats(final[None], logp_f, p_f, negent))
        names = ("top_ids", "top_probs", "target_probs", "target_ranks", "kl")
        return {n: nnsight.save(torch.cat([p[i] for p in parts]).cpu()) for i, n in enumerate(names)}


def _lens(model: Any, prompt: str, kind: str, *, targets: Sequence[str | int] | None, top_k: int,
          layers: Iterable[int] | None, positions: Iterable[int] | None, remote: bool | str | None,
          lens: TunedLens | None = None) -> LensResult:
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("the prompt is empty: give at least one token of text")
    arch = model.arch
    top_k = int(top_k)
    if not 1 <= top_k <= arch.vocab:
        raise ValueError(f"top_k must be between 1 and the vocabulary size {arch.vocab}, not {top_k}")
    names, tids = target_ids(model, targets)
    Ls = _lens_layers(arch, layers)
    batch = model.tokenize(prompt)
    tokens = [t.text for t in batch.tokens[0]]
    Ps = _norm_positions(len(tokens), positions)
    weight = bias = None
    if lens is not None:
        lens.check(model)
        weight = torch.cat([lens.embed_weight[None], lens.weight]).detach()
        bias = torch.cat([lens.embed_bias[None], lens.bias]).detach()
    program = _LensProgram(arch, Ls, Ps, tids, top_k, _softcap(model), weight, bias)
    reader, nn = model.program(batch), model.nn  # the trace body must not refer to `model` (remote runs pickle it)
    kw: dict[str, Any] = {}
    if "logits_to_keep" in inspect.signature(model.hf.forward).parameters and len(Ps) < len(tokens):
        kw["logits_to_keep"] = torch.tensor(Ps, dtype=torch.long)  # unembed the asked positions only
        program.kept = True
    with model.lock, torch.inference_mode():
        with model.trace_batch(batch, remote=remote, **kw):
            saved = nnsight.save(program.run(nn, reader))
    top_ids = saved["top_ids"].long().cpu()
    tok = model.tokenizer
    cache: dict[int, str] = {}

    def dec(i: int) -> str:
        if i not in cache:
            cache[i] = tok.decode([i])
        return cache[i]

    top_tokens = [[[dec(int(i)) for i in row] for row in layer] for layer in top_ids.tolist()]
    return LensResult(
        prompt=prompt, tokens=tokens, layers=Ls, positions=Ps, top_ids=top_ids,
        top_probs=saved["top_probs"].float().cpu(), top_tokens=top_tokens, targets=names, target_ids=tids,
        target_probs=saved["target_probs"].float().cpu(), target_ranks=saved["target_ranks"].long().cpu(),
        kl=saved["kl"].float().cpu(), kind=kind, n_model_layers=arch.n_layers,
        meta={"model": getattr(model, "name", "")}, model=model, lens=lens,
    )


def logit_lens(model: Any, prompt: str, *, targets: Sequence[str | int] | None = None, top_k: int = 5,
               layers: Iterable[int] | None = None, positions: Iterable[int] | None = None,
               remote: bool | str | None = None) -> LensResult:
    """The logit lens of one prompt: final norm + unembedding on each layer's ``resid_post``.

    ``targets``: single-token strings (e.g. ``[" Paris"]``) whose probability and rank are
    tracked; ``layers`` / ``positions`` restrict the grid (negative ones count from the end:
    ``layers=[-1]`` is the last layer). Add ``"embed"`` to ``layers`` (``layers=["embed", 0, 1]``)
    for a row for the embeddings (``resid_pre.0``, the tuned-lens ``hidden_states[0]``), labelled
    `EMBED` (-1) in ``result.layers``.
    """
    return _lens(model, prompt, "logit", targets=targets, top_k=top_k, layers=layers, positions=positions,
                 remote=remote)


def tuned_lens(model: Any, prompt: str, lens: TunedLens, *, targets: Sequence[str | int] | None = None,
               top_k: int = 5, layers: Iterable[int] | None = None, positions: Iterable[int] | None = None,
               remote: bool | str | None = None) -> LensResult:
    """The tuned lens of one prompt: ``h + A_L h + b_L`` before the final norm and unembedding.

    ``layers`` as in `logit_lens`; the ``"embed"`` row uses the lens's embedding translator.
    """
    if not isinstance(lens, TunedLens):
        raise TypeError(f"lens must be a TunedLens (TunedLens.load(folder) or TunedLens.train(model)), not {type(lens).__name__}")
    return _lens(model, prompt, "tuned", targets=targets, top_k=top_k, layers=layers, positions=positions,
                 remote=remote, lens=lens)


# -- the tuned lens --------------------------------------------------------------------------
class TunedLens:
    """Affine translators ``h -> h + A h + b``: one for ``resid_post.L`` (L < n_layers - 1), one for the embeddings.

    ``weight[L]`` is ``A_L`` as a ``[d_model, d_model]`` matrix (out × in, like ``nn.Linear``)
    and ``bias[L]`` is ``b_L``; ``embed_weight`` / ``embed_bias`` translate the embeddings
    (``resid_pre.0``, the tuned-lens project's ``hidden_states[0]``; zero, i.e. the logit lens,
    unless loaded from a lens that has one). The last layer has no translator: its lens is the
    model's output. Training (`train`) fits the layer translators and keeps the embedding one.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, n_layers: int, d_model: int,
                 meta: dict[str, Any] | None = None, *, embed_weight: torch.Tensor | None = None,
                 embed_bias: torch.Tensor | None = None):
        if tuple(weight.shape) != (n_layers - 1, d_model, d_model) or tuple(bias.shape) != (n_layers - 1, d_model):
            raise LensFileError(f"translator shapes {tuple(weight.shape)} / {tuple(bias.shape)} do not fit "
                                f"{n_layers} layers of width {d_model} (expected {(n_layers - 1, d_model, d_model)})")
        ew = torch.zeros(d_model, d_model) if embed_weight is None else embed_weight
        eb = torch.zeros(d_model) if embed_bias is None else embed_bias
        if tuple(ew.shape) != (d_model, d_model) or tuple(eb.shape) != (d_model,):
            raise LensFileError(f"embedding translator shapes {tuple(ew.shape)} / {tuple(eb.shape)} do not fit "
                                f"width {d_model}")
        self.weight = weight.float()
        self.bias = bias.float()
        self.embed_weight = ew.float()
        self.embed_bias = eb.float()
        self.n_layers = n_layers
        self.d_model = d_model
        self.meta = dict(meta or {})

    def __repr__(self) -> str:
        return f"TunedLens(n_layers={self.n_layers}, d_model={self.d_model}, model={self.meta.get('model', '')!r})"

    @classmethod
    def identity(cls, model: Any) -> TunedLens:
        """Translators at 0 (the tuned-lens initialisation): this lens equals the logit lens."""
        n, d = model.arch.n_layers, model.arch.d_model
        return cls(torch.zeros(n - 1, d, d), torch.zeros(n - 1, d), n, d, {"model": getattr(model, "name", "")})

    def check(self, model: Any) -> None:
        """Raise `LensFileError` unless this lens fits the model's layers and width."""
        a = model.arch
        if self.d_model != a.d_model:
            raise LensFileError(f"this tuned lens has d_model {self.d_model} but the model has {a.d_model}: "
                                "it was trained for another model")
        if self.n_layers != a.n_layers:
            raise LensFileError(f"this tuned lens has {self.n_layers} layers but the model has {a.n_layers}: "
                                "it was trained for another model")

    def translate(self, h: torch.Tensor, layer: int | str) -> torch.Tensor:
        """``h + A_L h + b_L`` for ``resid_post.L`` (identity for the last layer; negative L counts
        from the end); ``layer="embed"``: the embedding translator, for ``resid_pre.0``."""
        if isinstance(layer, str):
            if layer != "embed":
                raise ValueError(f"layer is an integer or 'embed', not {layer!r}")
            w, b = self.embed_weight.to(h), self.embed_bias.to(h)
            return h + h @ w.T + b
        if isinstance(layer, bool) or not isinstance(layer, int) or not -self.n_layers <= layer < self.n_layers:
            raise IndexError(f"layer {layer!r} is out of range: this lens has layers 0..{self.n_layers - 1}")
        layer %= self.n_layers
        if layer == self.n_layers - 1:
            return h
        w, b = self.weight[layer].to(h), self.bias[layer].to(h)
        return h + h @ w.T + b

    # -- files -----------------------------------------------------------------------
    def save(self, folder: str | Path, layout: str = "workbench") -> Path:
        """Write the lens to ``folder`` atomically (a complete new folder replaces the old one).

        ``layout="workbench"``: ``config.json`` and ``params.safetensors`` (never pickles).
        ``layout="tuned-lens"``: the tuned-lens project's layout, which its
        ``TunedLens.from_model_and_pretrained(model, folder)`` loads: its ``config.json``
        (``TunedLensConfig``) and ``params.pt``, a plain dict of tensors (``0.*``: the embeddings,
        ``L + 1``: ``resid_post.L``) that ``torch.load(weights_only=True)`` reads.
        """
        if layout not in ("workbench", "tuned-lens"):
            raise ValueError(f"layout is 'workbench' or 'tuned-lens', not {layout!r}")
        folder = Path(folder)
        translators = [(self.embed_weight, self.embed_bias)] + [(self.weight[L], self.bias[L])
                                                                 for L in range(self.n_layers - 1)]
        with atomic_folder(folder, owned=("config.json", "params.safetensors", "params.pt")) as tmp:
            if layout == "workbench":
                tensors = {"embed_translator.weight": self.embed_weight.detach().contiguous().cpu(),
                           "embed_translator.bias": self.embed_bias.detach().contiguous().cpu()}
                for L in range(self.n_layers - 1):
                    tensors[f"layer_translators.{L}.weight"] = self.weight[L].detach().contiguous().cpu()
                    tensors[f"layer_translators.{L}.bias"] = self.bias[L].detach().contiguous().cpu()
                atomic_tensors(tmp / "params.safetensors", tensors)
                cfg = {"format": FORMAT, "version": 2, "site": "resid_post", "n_layers": self.n_layers,
                       "d_model": self.d_model, "bias": True,
                       **{k: v for k, v in self.meta.items() if _jsonable(v) and k not in _OUR_KEYS}}
            else:
                state = {}
                for i, (w, b) in enumerate(translators):
                    state[f"{i}.weight"] = w.detach().contiguous().cpu().clone()
                    state[f"{i}.bias"] = b.detach().contiguous().cpu().clone()
                torch.save(state, tmp / "params.pt")  # inside the new folder: atomic with it
                model = self.meta.get("base_model_name_or_path", self.meta.get("model", ""))
                cfg = {"base_model_name_or_path": str(model or ""), "d_model": self.d_model,
                       "num_hidden_layers": self.n_layers, "bias": True,
                       "base_model_revision": self.meta.get("base_model_revision"), "unembed_hash": None,
                       "lens_type": "linear_tuned_lens"}
            atomic_json(tmp / "config.json", cfg)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TunedLens:
        """Load our layout (config.json + params.safetensors) or the tuned-lens project's.

        Every layout the tuned-lens package writes is read: its 0.1–0.2 ``save()`` (``config.json``
        with ``d_model`` / ``num_hidden_layers``, ``params.pt`` holding
        ``layer_translators.state_dict()``: ``0.weight``, ``0.bias``, … with translator ``i`` for
        ``hidden_states[i]``, 0 being the embeddings) and its 0.0.x one (``num_layers``,
        ``input_translator.*`` and ``layer_translators.L.*``, older ``probe`` / ``adapter`` names).
        Their translators are put on ``resid_post`` and the embeddings. ``params.pt`` is read with
        ``torch.load(weights_only=True)``; a ``params.safetensors`` with the same keys is read too.
        """
        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not folder.is_dir():
            raise LensFileError(f"{folder} is not a folder: a tuned lens is a folder with config.json and params.safetensors")
        if not cfg_path.exists():
            raise LensFileError(f"{cfg_path} is missing")
        try:
            cfg = json.loads(cfg_path.read_text())
            if not isinstance(cfg, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise LensFileError(f"{cfg_path} is not valid JSON ({e})") from None

        def ints(*keys: str) -> list[int]:
            try:
                return [int(cfg[k]) for k in keys]
            except (KeyError, TypeError, ValueError):
                raise LensFileError(f"{cfg_path} needs integer {' and '.join(keys)}") from None

        # keys[i]: the state-dict prefix of the translator of hidden_states[i] (0: the embeddings), or None
        if cfg.get("format") == FORMAT:
            n, d = ints("n_layers", "d_model")
            keys: list[str | None] = ["embed_translator"] + [f"layer_translators.{L}" for L in range(n - 1)]
            optional = {"embed_translator"}  # version 1 files have no embedding translator
            prefer = "safetensors"
        elif "num_hidden_layers" in cfg and "d_model" in cfg:  # tuned-lens >= 0.1
            d, n = ints("d_model", "num_hidden_layers")
            if cfg.get("lens_type", "linear_tuned_lens") != "linear_tuned_lens":
                raise LensFileError(f"{cfg_path}: lens_type {cfg.get('lens_type')!r} is not supported "
                                    "(only 'linear_tuned_lens')")
            keys, optional, prefer = [str(i) for i in range(n)], set(), "pt"
        elif "num_layers" in cfg and "d_model" in cfg:  # tuned-lens 0.0.x
            d, n = ints("d_model", "num_layers")
            if int(cfg.get("extra_layers") or 0):
                raise LensFileError(f"{cfg_path}: extra_layers={cfg['extra_layers']} (decoder layers inside the "
                                    "lens) is not supported")
            if not cfg.get("reuse_unembedding", True):
                raise LensFileError(f"{cfg_path}: reuse_unembedding=false (a separate unembedding per layer) "
                                    "is not supported")
            keys = ["input_translator" if cfg.get("include_input", True) else None] + \
                [f"layer_translators.{L}" for L in range(n - 1)]
            optional, prefer = set(), "pt"
        else:
            raise LensFileError(f"{cfg_path} is neither a workbench tuned lens (format={FORMAT!r}) nor a tuned-lens "
                                "config (d_model, num_hidden_layers)")
        if n < 1 or d < 1:
            raise LensFileError(f"{cfg_path}: n_layers and d_model must be positive, not {n} and {d}")
        state, src = _read_params(folder, prefer)
        state = _canonical_keys(state)
        has_bias = cfg.get("bias", True) is not False
        found = _key_list(state)
        mats = []
        for i, key in enumerate(keys):
            w = b = None
            if key is not None:
                w = state.get(f"{key}.weight")
                if w is None and key.isdigit():  # a full state dict: layer_translators.i.*
                    key = f"layer_translators.{key}"
                    w = state.get(f"{key}.weight")
                if w is None and key not in optional:
                    raise LensFileError(f"{src}: {key}.weight (the translator of hidden_states[{i}]) is missing; "
                                        f"the file has {found}")
            if w is not None:
                if tuple(w.shape) != (d, d):
                    raise LensFileError(f"{src}: {key}.weight has shape {tuple(w.shape)}, expected {(d, d)}")
                b = state.get(f"{key}.bias")
                if b is None and has_bias and key not in optional:
                    raise LensFileError(f"{src}: {key}.bias is missing (the config says bias=true); the file has {found}")
                if b is not None and tuple(b.shape) != (d,):
                    raise LensFileError(f"{src}: {key}.bias has shape {tuple(b.shape)}, expected {(d,)}")
            mats.append((torch.zeros(d, d) if w is None else w.float(), torch.zeros(d) if b is None else b.float()))
        weight = torch.stack([m[0] for m in mats[1:]]) if n > 1 else torch.zeros(0, d, d)
        bias = torch.stack([m[1] for m in mats[1:]]) if n > 1 else torch.zeros(0, d)
        meta = {k: v for k, v in cfg.items() if k not in _OUR_KEYS}
        return cls(weight, bias, n, d, meta, embed_weight=mats[0][0], embed_bias=mats[0][1])

    # -- training --------------------------------------------------------------------
    @classmethod
    def train(cls, model: Any, corpus: Iterable[str] | None = None, *, steps: int = 200, lr: float = 2e-3,
              seq_len: int = 32, batch_size: int = 1, layers_per_step: int | None = 4, seed: int = 0,
              progress: bool = True, checkpoint: str | Path | None = None, save_every: int = 100,
              init: TunedLens | None = None) -> TunedLens:
        """Train translators on CPU by minimizing KL(final || lens), averaged over layers and tokens.

        ``corpus``: texts (default: the passages of Python's ``pydoc_data.topics``), joined and
        cut into random windows of ``seq_len`` tokens. Each step trains ``layers_per_step`` layers
        drawn at random (an unbiased estimate of the mean over layers; ``None``: all), in one
        batched unembedding. The defaults take a few minutes for the embedded model on two
        cores; train longer (``steps=2000, seq_len=128, batch_size=4``) for a better lens. The
        model is not changed (gradients flow only into the translators). ``checkpoint``: a folder
        written every ``save_every`` steps and at the end. ``train_losses`` are kept in ``meta``.
        """
        arch = model.arch
        n, d = arch.n_layers, arch.d_model
        lens = init if init is not None else cls.identity(model)
        lens.check(model)
        if n < 2:
            raise ValueError("a tuned lens needs a model with at least 2 layers")
        if steps < 1 or seq_len < 2 or batch_size < 1 or (layers_per_step is not None and layers_per_step < 1):
            raise ValueError("steps, batch_size and layers_per_step must be at least 1 and seq_len at least 2")
        ids = _corpus_ids(model, corpus)
        if len(ids) < seq_len + 1:
            raise ValueError(f"the corpus has {len(ids)} tokens: fewer than seq_len={seq_len}")
        rng = random.Random(seed)
        w = lens.weight.clone().requires_grad_(True)
        b = lens.bias.clone().requires_grad_(True)
        opt = torch.optim.Adam([w, b], lr=lr)
        hf = model.hf
        dev = model.device
        blocks = resolve(hf, arch.layers)
        norm, head = resolve(hf, arch.final_norm), resolve(hf, arch.unembed)
        cap = _softcap(model)
        losses: list[float] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc="tuned lens", unit="step")
        captured: dict[int, torch.Tensor] = {}

        def hook(L: int):
            def fn(_m: Any, _inp: Any, out: Any) -> None:
                captured[L] = (out[0] if isinstance(out, tuple) else out).detach()
            return fn

        handles = [blocks[L].register_forward_hook(hook(L)) for L in range(n - 1)]
        was_training = hf.training
        hf.eval()
        try:
            for step in range(steps):
                starts = [rng.randrange(0, len(ids) - seq_len) for _ in range(batch_size)]
                x = torch.tensor([ids[s:s + seq_len] for s in starts], device=dev)
                with model.lock, torch.no_grad():
                    captured.clear()
                    out = hf(input_ids=x)
                    logp_f = torch.log_softmax(out.logits.float(), -1)
                p_f = logp_f.exp()
                opt.zero_grad()
                chosen = list(range(n - 1)) if not layers_per_step or layers_per_step >= n - 1 else \
                    sorted(rng.sample(range(n - 1), layers_per_step))
                with torch.enable_grad():
                    h = torch.stack([captured[L] for L in chosen]).to(torch.float32)  # [k, b, s, d]
                    ht = h + torch.einsum("kbsd,ked->kbse", h, w[chosen]) + b[chosen][:, None, None, :]
                    lg = head(norm(ht.to(captured[chosen[0]].dtype))).float()
                    if cap is not None:
                        lg = torch.tanh(lg / cap) * cap
                    kl = (p_f * (logp_f - torch.log_softmax(lg, -1))).sum(-1).mean(dim=(1, 2))  # [k]
                    loss = kl.mean()
                    w.grad, b.grad = torch.autograd.grad(loss, [w, b])
                total = float(loss.detach())
                opt.step()
                losses.append(total)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total:.4f}")
                if checkpoint is not None and (step + 1) % save_every == 0:
                    cls._snapshot(w, b, n, d, model, losses, lens.meta, lens).save(checkpoint)
        finally:
            for hd in handles:
                hd.remove()
            if bar is not None:
                bar.close()
            hf.train(was_training)
        result = cls._snapshot(w, b, n, d, model, losses, lens.meta, lens)
        if checkpoint is not None:
            result.save(checkpoint)
        return result

    @classmethod
    def _snapshot(cls, w: torch.Tensor, b: torch.Tensor, n: int, d: int, model: Any, losses: list[float],
                  meta: dict[str, Any], init: TunedLens | None = None) -> TunedLens:
        prev = list(meta.get("train_losses", [])) if isinstance(meta.get("train_losses"), list) else []
        m = {**meta, "model": getattr(model, "name", ""), "train_losses": prev + [round(x, 6) for x in losses]}
        ew = eb = None
        if init is not None:
            ew, eb = init.embed_weight.detach().clone(), init.embed_bias.detach().clone()
        return cls(w.detach().clone(), b.detach().clone(), n, d, m, embed_weight=ew, embed_bias=eb)


#: Config keys of our format that are not lens metadata.
_OUR_KEYS = ("format", "version", "n_layers", "d_model", "bias", "site")


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _canonical_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """tuned-lens 0.0.x renamed its translators twice: ``probe`` -> ``adapter`` -> ``translator``."""
    out = {}
    for k, v in state.items():
        for old in ("probe", "adapter"):
            k = k.replace(f"{old}s.", "translators.").replace(f"input_{old}.", "input_translator.")
        out[k] = v
    return out


def _key_list(state: dict[str, torch.Tensor], limit: int = 12) -> str:
    keys = sorted(state, key=lambda k: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in k.split(".")])
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f", … ({len(keys)} keys in all)" if len(keys) > limit else ""
    return f"keys [{shown}{more}]" if keys else "no keys"


def _read_params(folder: Path, prefer: str = "safetensors") -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of ``params.safetensors`` or ``params.pt`` (``prefer`` decides when both exist)."""
    st, pt = folder / "params.safetensors", folder / "params.pt"
    order = [st, pt] if prefer == "safetensors" else [pt, st]
    for path in order:
        if not path.exists():
            continue
        if path is st:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                return load_file(str(st)), st
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                raise LensFileError(f"{st} is not a valid safetensors file ({e})") from None
        try:
            state = torch.load(str(pt), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise LensFileError(f"{pt} could not be read as plain tensors with torch.load(weights_only=True) ({e})") from None
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise LensFileError(f"{pt} does not hold a state dict of tensors")
        return state, pt
    raise LensFileError(f"{folder} has no params.safetensors (or tuned-lens params.pt)")


def _corpus_ids(model: Any, corpus: Iterable[str] | None) -> list[int]:
    if corpus is None:
        from pydoc_data.topics import topics

        corpus = [topics[k] for k in sorted(topics)]
    if isinstance(corpus, str):
        corpus = [corpus]
    texts = [t for t in corpus if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("the corpus is empty: give some texts")
    tok = model.tokenizer
    ids: list[int] = []
    eos = tok.eos_token_id
    for t in texts:
        ids.extend(tok.encode(t, add_special_tokens=False))
        if eos is not None:
            ids.append(int(eos))
    return ids


__all__ = ["LensResult", "LensFileError", "TunedLens", "logit_lens", "tuned_lens", "target_ids"]
