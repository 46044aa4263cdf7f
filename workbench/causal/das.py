"""Distributed alignment search (DAS): learn the subspace where a model keeps a causal variable.

``train_das(model, "resid_post.6", pairs, k=1)`` learns ``k`` orthonormal directions ``B`` at a
site such that the interchange intervention ``h + ((h_source - h) @ B.T) @ B`` (a
`SubspaceInterchange`: the base run takes the source run's coordinates) makes the model predict
the source's answer; the loss is the cross-entropy of that answer at the last position
(Geiger et al., "Finding alignments between interpretable causal variables and distributed
neural representations"). The basis is the QR orthonormalization of a free ``[k, width]``
matrix (signs fixed), trained with Adam. The score is the interchange intervention accuracy
(**IIA**): the share of held-out pairs whose argmax after the interchange is the source answer.

Pairs are ``(base, source, base_answer, source_answer)`` tuples (or dicts with those keys):
prompts as text or token-id lists, answers as single-token text (``" Paris"``) or token ids;
base and source of one pair must have the same token length (positions line up). A circuits
`Task` gives them with `CounterfactualPairs.from_task` when the corrupted prompt's answer is the
task's wrong token. ``isolate=`` adds RAVEL's multi-task objective (MDAS): pairs on which the
same interchange must keep the *base* answer (another attribute stays put).

Speed: the site's inputs are cached with one forward of every base and source prompt; a
training step then runs only the layers above the site: the decoder layers below it are
swapped, for that forward only, for stubs that return the cached residual stream, and a plain
forward hook edits the site (exact: a test compares it with `Model.run` and the spec on every
family). Only the positions whose logits are scored are unembedded.

``boundless=True`` (Boundless DAS, Wu et al.) learns a full rotation ``R`` and a sigmoid boundary
mask over its coordinates, ``m_i = sigmoid((b - i - 1/2) / T)``, with the temperature annealed
geometrically and a penalty on the boundary ``b``; the learned subspace is the first
``round(b)`` rows of ``R`` (the mask's effective size), and its IIA is measured with that hard subspace.

At an MLP's hidden site (``neurons.L``) every result carries `illusion_check` (Makelov et al.,
"Is this the subspace you are looking for?"): how much of the subspace lies in the row space of
the MLP's output weights and whether the interchange still works with only that component.

Checkpoints (``checkpoint=folder``) follow the SAE trainer: the parameters and Adam moments go to a
safetensors file and the step, settings and history to ``state.json`` (written last, atomically);
every random choice is a function of ``seed`` and the step, so a resumed run ends with the same
basis as one that never stopped. ``cancel`` (a `threading.Event`) checkpoints and raises
`DASCancelled`.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.arch import resolve
from ..core.checkpoints import StepCheckpoint
from ..core.errors import Cancelled, WorkbenchError
from ..core.fileio import atomic_tensors
from ..core.sites import TOKEN_SITES, WRITABLE, Site
from ..core.viewers import Showable
from .subspaces import Subspace, SubspaceInterchange

__all__ = ["train_das", "das_sweep", "illusion_check", "interchange_logits", "interchange_accuracy", "counterfactual_pairs", "CounterfactualPairs", "DASResult",
           "DASSweep", "IllusionReport", "DASError", "DASCancelled", "ILLUSION_MIN_GAIN", "ILLUSION_KEEP"]

FORMAT = "workbench-das-train"
VERSION = 1

#: The illusion rule: the full subspace's IIA gain over no intervention is at least this much ...
ILLUSION_MIN_GAIN = 0.2
#: ... and the row-space component alone keeps less than this share of that gain.
ILLUSION_KEEP = 0.5


class DASError(WorkbenchError, ValueError):
    """Pairs, a site or settings that DAS cannot work with, or an unusable checkpoint."""


class DASCancelled(Cancelled):
    """Raised by `train_das` when its ``cancel`` event was set: ``.step``, ``.checkpoint`` and
    ``.partial`` (a `DASResult` of the basis so far). The same call resumes from the checkpoint."""

    def __init__(self, step: int, checkpoint: Path | None, partial: DASResult | None):
        where = f"; resume from {checkpoint}" if checkpoint else ""
        super().__init__(f"DAS training cancelled at step {step}{where}", partial=partial)
        self.step, self.checkpoint = step, checkpoint


# -- pairs ---------------------------------------------------------------------------------------
@dataclass
class CounterfactualPairs:
    """Token ids of counterfactual pairs: base and source prompts (equal lengths per pair) and answers."""

    base: list[list[int]]
    source: list[list[int]]
    base_answers: list[int]
    source_answers: list[int]

    def __len__(self) -> int:
        return len(self.base)

    @classmethod
    def from_task(cls, task: Any) -> CounterfactualPairs:
        """A circuits `Task` as DAS pairs: the corrupted prompt is the base (its answer the task's
        wrong token) and the clean prompt the source (its answer the task's answer), so a working
        interchange moves the base to the clean answer. Right for tasks whose corrupted prompt's
        answer is the wrong token (factual recall, greater-than, arithmetic); not for IOI's ABC
        corruption, whose corrupted prompt names neither."""
        for name in ("clean_ids", "corrupted_ids", "answer_ids", "wrong_ids"):
            if not hasattr(task, name):
                raise DASError(f"from_task needs a circuits Task (with {name}), not {type(task).__name__}")
        return cls(task.corrupted_ids.tolist(), task.clean_ids.tolist(), task.wrong_ids.tolist(),
                   task.answer_ids.tolist())

    def subset(self, idx: Sequence[int]) -> CounterfactualPairs:
        return CounterfactualPairs([self.base[i] for i in idx], [self.source[i] for i in idx],
                                   [self.base_answers[i] for i in idx], [self.source_answers[i] for i in idx])

    def __add__(self, other: CounterfactualPairs) -> CounterfactualPairs:
        return CounterfactualPairs(self.base + other.base, self.source + other.source,
                                   self.base_answers + other.base_answers, self.source_answers + other.source_answers)

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.base, self.source, self.base_answers, self.source_answers]).encode())
        return h.hexdigest()[:16]


def _ids(model: Any, prompt: Any, what: str) -> list[int]:
    if isinstance(prompt, str):
        return [t.id for t in model.tokenize(prompt).tokens[0]]
    if isinstance(prompt, Tensor):
        prompt = prompt.tolist()
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        bad = [i for i in prompt if not 0 <= i < model.arch.vocab]
        if bad:
            raise DASError(f"{what}: token id {bad[0]} is out of range for a vocabulary of {model.arch.vocab}")
        return list(prompt)
    raise DASError(f"{what} must be text or a non-empty list of token ids, not {prompt!r:.60}")


def _answer(model: Any, a: Any, what: str) -> int:
    if isinstance(a, Tensor) and a.numel() == 1:
        a = int(a)
    if isinstance(a, int) and not isinstance(a, bool):
        if not 0 <= a < model.arch.vocab:
            raise DASError(f"{what}: token id {a} is out of range for a vocabulary of {model.arch.vocab}")
        return a
    if isinstance(a, str):
        ids = model.tokenizer(a, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [model.tokenizer.decode([i]) for i in ids]
            raise DASError(f"{what} {a!r} is {len(ids)} tokens ({pieces}): DAS scores one next token, so answers must "
                           "be single tokens (a leading space often makes one)")
        return int(ids[0])
    raise DASError(f"{what} must be single-token text or a token id, not {a!r:.60}")


def counterfactual_pairs(model: Any, pairs: Any) -> CounterfactualPairs:
    """Check and tokenize ``pairs``: ``(base, source, base_answer, source_answer)`` tuples or dicts with those keys.

    Prompts are text or token-id lists; answers single-token text or ids. Raises `DASError` for no
    pairs, a pair whose base and source differ in token length, or an answer of several tokens.
    """
    if isinstance(pairs, CounterfactualPairs):
        return pairs
    if pairs is None or isinstance(pairs, (str, bytes)):
        raise DASError(f"pairs must be a list of (base, source, base_answer, source_answer), not {pairs!r:.60}")
    pairs = list(pairs)
    if not pairs:
        raise DASError("no pairs given: DAS needs counterfactual pairs (base, source, base_answer, source_answer)")
    out = CounterfactualPairs([], [], [], [])
    for i, p in enumerate(pairs):
        if isinstance(p, dict):
            try:
                p = (p["base"], p["source"], p["base_answer"], p["source_answer"])
            except KeyError as e:
                raise DASError(f"pair {i} lacks {e}: a pair dict has base, source, base_answer, source_answer") from None
        if not isinstance(p, (tuple, list)) or len(p) != 4:
            raise DASError(f"pair {i} must be (base, source, base_answer, source_answer), not {p!r:.80}")
        b, s = _ids(model, p[0], f"pair {i} base"), _ids(model, p[1], f"pair {i} source")
        if len(b) != len(s):
            raise DASError(f"pair {i}: the base has {len(b)} tokens and the source {len(s)}: the interchange works "
                           "position by position, so both need the same token length (pick same-length fillers)")
        out.base.append(b)
        out.source.append(s)
        out.base_answers.append(_answer(model, p[2], f"pair {i} base answer"))
        out.source_answers.append(_answer(model, p[3], f"pair {i} source answer"))
    return out


# -- where the site is, in plain torch modules ----------------------------------------------------
def _hidden_of(args: tuple, kwargs: dict) -> tuple[Tensor, Callable[[Tensor], tuple[tuple, dict]]]:
    """The first tensor argument of a module call and a function putting a replacement in its place."""
    if args:
        return args[0], lambda t: ((t, *args[1:]), kwargs)
    for key in ("hidden_states", "x", "input"):
        if key in kwargs:
            return kwargs[key], lambda t, key=key: (args, {**kwargs, key: t})
    raise DASError("cannot find the hidden states in the module's arguments")


class _Plan:
    """How a training forward reaches ``site``: stub layers ``0..n_stub-1`` (the last returns the cached
    stream ``cache_site``), then edit the site in the last stub (``hook is None``) or by a hook on a module."""

    def __init__(self, model: Any, site: Site):
        a, hf, L = model.arch, model.hf, site.layer
        self.layers = resolve(hf, a.layers)
        self.hook: tuple[Any, str, Any] | None = None  # (module, "pre"/"post", tuple index or None)
        name = site.name
        if name == "resid_post" or (name == "resid_pre" and L > 0):
            j = L if name == "resid_post" else L - 1
            self.n_stub, self.cache_site = j + 1, f"resid_post.{j}"
            return
        if name == "embed":
            self.n_stub, self.cache_site = 0, None
            self.hook = (resolve(hf, a.embed), "post", None)
            return
        if name == "final_norm":
            self.n_stub, self.cache_site = a.n_layers, f"resid_post.{a.n_layers - 1}"
            self.hook = (resolve(hf, a.final_norm), "post", None)
            return
        self.n_stub, self.cache_site = L, (f"resid_post.{L - 1}" if L > 0 else None)
        layer = self.layers[L]
        self.hook = {"resid_pre": (layer, "pre", None), "attn_out": (resolve(layer, a.attn), "post", 0),
                     "mlp_in": (resolve(layer, a.mlp), "pre", None),
                     "neurons": (resolve(layer, a.mlp_out_proj), "pre", None),
                     "mlp_out": (resolve(layer, a.mlp), "post", 0)}[name]


class _Swap:
    """Swap the forwards of the first layers for stubs (the last returns ``value()``) and hook the site."""

    def __init__(self, plan: _Plan, value: Callable[[], Tensor], edit: Callable[[Tensor], Tensor]):
        self.plan, self.value, self.edit = plan, value, edit
        self.saved: list[tuple[Any, Any]] = []
        self.handle: Any = None

    def __enter__(self) -> _Swap:
        p = self.plan
        for i in range(p.n_stub):
            layer = p.layers[i]
            self.saved.append((layer, layer.__dict__.get("forward", _MISSING)))
            last = i == p.n_stub - 1
            layer.forward = self._last if last else _identity
        if p.hook is not None:
            module, when, index = p.hook
            if when == "pre":
                def pre(_m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                    h, put = _hidden_of(args, kwargs)
                    return put(self.edit(h))
                self.handle = module.register_forward_pre_hook(pre, with_kwargs=True)
            else:
                def post(_m: Any, _args: Any, out: Any) -> Any:
                    if isinstance(out, tuple):
                        i = index or 0
                        return (*out[:i], self.edit(out[i]), *out[i + 1:])
                    return self.edit(out)
                self.handle = module.register_forward_hook(post)
        return self

    def _last(self, *args: Any, **kwargs: Any) -> Tensor:
        v = self.value()
        return v if self.plan.hook is not None else self.edit(v)

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.remove()
        for layer, fwd in self.saved:
            if fwd is _MISSING:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = fwd


_MISSING = object()


def _identity(*args: Any, **kwargs: Any) -> Tensor:
    return _hidden_of(args, kwargs)[0]


class _Runner:
    """Cached site inputs of a pair set and fast forwards of the layers above the site."""

    def __init__(self, model: Any, site: str, pairs: CounterfactualPairs, positions: list[int], batch_size: int,
                 progress: bool = False):
        if getattr(model, "remote", False):
            raise DASError("DAS trains on a local model (its steps call the model's layers directly): load it "
                           "without remote=")
        self.model, self.site = model, Site.parse(site)
        self.width = model.arch.size(self.site)
        self.plan = _Plan(model, self.site)
        n = len(pairs)
        self.lengths = torch.tensor([len(b) for b in pairs.base])
        pos = []
        for i, L in enumerate(self.lengths.tolist()):
            ps = [p + L if p < 0 else p for p in positions]
            if any(not 0 <= p < L for p in ps):
                raise DASError(f"positions {positions} are out of range for pair {i}, whose prompts have {L} tokens")
            pos.append(ps)
        self.pos = torch.tensor(pos, dtype=torch.long)  # [n, P]
        S = int(self.lengths.max())
        pad = model.tokenizer.pad_token_id or 0
        self.ids = torch.full((n, S), pad, dtype=torch.long)
        for i, b in enumerate(pairs.base):
            self.ids[i, :len(b)] = torch.tensor(b)
        self.mask = (torch.arange(S)[None] < self.lengths[:, None]).long()
        self.base_answers = torch.tensor(pairs.base_answers)
        self.source_answers = torch.tensor(pairs.source_answers)
        key = str(self.site)
        self.stream: Tensor | None = None
        chunks_b, chunks_s, preds_b, preds_s = [], [], [], []
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            caps = [self.plan.cache_site] if self.plan.cache_site else []
            rb = model.run(model.batch_from_ids(pairs.base[sl]), capture=caps, top_k=1)
            rs = model.run(model.batch_from_ids(pairs.source[sl]), capture=[key], top_k=1)
            if caps:
                x = rb.activations[caps[0]]
                chunks_b.append(F.pad(x, (0, 0, 0, S - x.shape[1])))
            xs = rs.activations[key].float()
            chunks_s.append(xs[torch.arange(xs.shape[0])[:, None], self.pos[sl]])
            preds_b.append(rb.top.ids[:, 0])
            preds_s.append(rs.top.ids[:, 0])
        if chunks_b:
            self.stream = torch.cat(chunks_b)
        self.source_acts = torch.cat(chunks_s)  # [n, P, width]
        self.base_pred, self.source_pred = torch.cat(preds_b), torch.cat(preds_s)
        self.device = model.device
        self.dtype = next(model.hf.parameters()).dtype
        self._keep_ok = True

    def logits(self, idx: Tensor, edit_rows: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """Last-position logits ``[len(idx), vocab]`` of the base prompts ``idx`` with the site's rows at the
        pairs' positions replaced by ``edit_rows(h_rows [m, width], source_rows [m, width])``."""
        dev = self.device
        S = int(self.lengths[idx].max())
        ids, mask = self.ids[idx, :S].to(dev), self.mask[idx, :S].to(dev)
        P = self.pos.shape[1]
        rows = torch.arange(len(idx)).repeat_interleave(P).to(dev)
        cols = self.pos[idx].reshape(-1).to(dev)
        src = self.source_acts[idx].reshape(-1, self.width).to(dev)

        def edit(h: Tensor) -> Tensor:
            new = edit_rows(h[rows, cols], src.to(h.dtype))
            return h.index_put((rows, cols), new.to(h.dtype))

        def value() -> Tensor:
            return self.stream[idx, :S].to(device=dev)

        last = (self.lengths[idx] - 1).to(dev)
        keep, inv = torch.unique(last, return_inverse=True)
        with _Swap(self.plan, value, edit):
            if self._keep_ok:
                try:
                    out = self.model.hf(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep)
                    lg = out.logits
                    return lg[torch.arange(len(idx), device=lg.device), inv].float()
                except TypeError:
                    self._keep_ok = False
            lg = self.model.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return lg[torch.arange(len(idx), device=lg.device), last].float()

    def accuracy(self, idx: Tensor, edit_rows: Callable[[Tensor, Tensor], Tensor], targets: Tensor,
                 batch_size: int) -> float | None:
        """Share of pairs ``idx`` whose argmax after the edit equals ``targets[idx]`` (None when idx is empty)."""
        if len(idx) == 0:
            return None
        hits = 0
        with torch.no_grad():
            for i in range(0, len(idx), batch_size):
                part = idx[i:i + batch_size]
                hits += int((self.logits(part, edit_rows).argmax(-1).cpu() == targets[part]).sum())
        return hits / len(idx)


def _interchange(basis: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    def f(h: Tensor, s: Tensor) -> Tensor:
        b = basis.to(device=h.device, dtype=h.dtype)
        return h + ((s - h) @ b.T) @ b
    return f


def _orth(w: Tensor) -> Tensor:
    """Orthonormal rows spanning the rows of ``w`` (QR, signs fixed so that R has a positive diagonal)."""
    q, r = torch.linalg.qr(w.T)
    d = torch.sign(torch.diagonal(r))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return (q * d).T


# -- the illusion check ---------------------------------------------------------------------------
@dataclass
class IllusionReport:
    """The interpretability-illusion check of a subspace at ``neurons.L`` (Makelov et al.).

    ``row_fraction``/``null_fraction``: the share of the subspace's squared norm (``|P B|_F^2 / k``)
    in the row space of the MLP's output weights / in their null space. ``iia_full``,
    ``iia_row``, ``iia_null``: IIA when the whole subspace, only its row-space component
    (renormalized), or only its null-space component is interchanged; ``baseline``: the share of
    pairs already giving the source answer without intervention. ``illusion`` follows `rule`.
    """

    layer: int
    k: int
    row_fraction: float
    null_fraction: float
    iia_full: float
    iia_row: float | None
    iia_null: float | None
    baseline: float
    n_pairs: int
    illusion: bool
    rule: str = (f"illusion when the full subspace's IIA gain over no intervention is at least {ILLUSION_MIN_GAIN} "
                 f"and its row-space component alone keeps less than {ILLUSION_KEEP:.0%} of that gain")

    def summary(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f}"
        return (f"illusion check @ neurons.{self.layer}: {self.row_fraction:.0%} row space / "
                f"{self.null_fraction:.0%} null space; IIA full {f(self.iia_full)}, row-space only "
                f"{f(self.iia_row)}, null-space only {f(self.iia_null)} (no intervention {f(self.baseline)}) "
                f"-> {self.verdict}")

    @property
    def verdict(self) -> str:
        """One line: an illusion, no illusion, or no effect to explain (a gain under `ILLUSION_MIN_GAIN`)."""
        if self.illusion:
            return "ILLUSION: the effect needs the null-space component (a dormant pathway)"
        if self.iia_full - self.baseline < ILLUSION_MIN_GAIN:
            return (f"no effect to explain: the subspace's IIA gain {self.iia_full - self.baseline:+.2f} is under "
                    f"{ILLUSION_MIN_GAIN}")
        return "no illusion: the row-space component carries the effect"


def _row_space(model: Any, layer: int) -> Tensor:
    """An orthonormal basis ``[r, d_mlp]`` of the row space of layer ``layer``'s MLP output weights."""
    a = model.arch
    proj = resolve(resolve(model.hf, a.layers)[layer], a.mlp_out_proj)
    w = proj.weight.detach().double().cpu()
    w = w if type(proj).__name__ != "Conv1D" else w.T  # -> [d_model, d_mlp]
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = int((s > s.max() * max(w.shape) * torch.finfo(torch.float32).eps).sum())
    return vh[:r]


def _span(m: Tensor) -> Tensor | None:
    """Orthonormal rows spanning the rows of ``m`` (None when they are all ~0)."""
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    if float(s.max()) < 1e-6:
        return None
    return vh[: int((s > s.max() * 1e-6).sum())].float()


def _illusion(model: Any, runner: _Runner, basis: Tensor, idx: Tensor, batch_size: int) -> IllusionReport:
    L = runner.site.layer
    b = basis.double()
    v = _row_space(model, L)
    row = (b @ v.T) @ v
    null = b - row
    k = b.shape[0]
    t = runner.source_answers

    def iia(x: Tensor | None) -> float | None:
        return None if x is None else runner.accuracy(idx, _interchange(x), t, batch_size)

    full = iia(b.float())
    base = float((runner.base_pred[idx] == t[idx]).float().mean())
    r_iia, n_iia = iia(_span(row)), iia(_span(null))
    gain = full - base
    illusion = gain >= ILLUSION_MIN_GAIN and ((r_iia if r_iia is not None else base) - base) < ILLUSION_KEEP * gain
    return IllusionReport(L, k, float(row.pow(2).sum() / k), float(null.pow(2).sum() / k), full, r_iia, n_iia, base,
                          len(idx), bool(illusion))


def illusion_check(model: Any, result_or_subspace: DASResult | Subspace, pairs: Any, layer: int | None = None, *,
                   positions: int | Sequence[int] | None = None, batch_size: int = 32) -> IllusionReport:
    """The interpretability-illusion check (Makelov et al.) of a subspace at ``neurons.<layer>``.

    Splits the subspace into its components in the row space of the layer's MLP output weights
    (``down_proj`` / ``c_proj`` / ``dense_4h_to_h``, found through ``model.arch.mlp_out_proj``)
    and in their null space, and measures the IIA on ``pairs`` of the full subspace, of the
    row-space component alone (renormalized: an orthonormal basis of its span) and of the
    null-space component alone. ``illusion`` is True when the full subspace's IIA gain over no
    intervention is at least `ILLUSION_MIN_GAIN` and the row-space component keeps less than
    `ILLUSION_KEEP` of it: the patch then works by pushing activations along a direction the model
    never uses (a dormant pathway) rather than by changing what the MLP writes. ``positions``
    default to the result's (``-1`` for a bare subspace).
    """
    sub = result_or_subspace.subspace if isinstance(result_or_subspace, DASResult) else result_or_subspace
    if not isinstance(sub, Subspace):
        raise TypeError(f"illusion_check takes a DASResult or a Subspace, not {type(result_or_subspace).__name__}")
    site = Site.parse(sub.site)
    if site.name != "neurons":
        raise DASError(f"the illusion check is for a subspace at an MLP's hidden layer (neurons.L), not {site}")
    if layer is not None and layer != site.layer:
        raise DASError(f"layer {layer} does not match the subspace's site {site}")
    if positions is None:
        positions = result_or_subspace.positions if isinstance(result_or_subspace, DASResult) else [-1]
    pos = _positions(positions)
    p = counterfactual_pairs(model, pairs)
    with model.lock:
        runner = _Runner(model, str(site), p, pos, batch_size)
        return _illusion(model, runner, sub.basis, torch.arange(len(p)), batch_size)


def interchange_logits(model: Any, subspace: Subspace, pairs: Any, positions: int | Sequence[int] = -1, *,
                       batch_size: int = 32) -> Tensor:
    """Last-position logits ``[n_pairs, vocab]`` of each base prompt with ``subspace`` interchanged from its source.

    The same fast path DAS trains with (cached site inputs, only the layers above the site run);
    equal to `Model.run` with ``SubspaceInterchange(subspace, source, positions)`` per pair.
    """
    pos = _positions(positions)
    p = counterfactual_pairs(model, pairs)
    with model.lock:
        runner = _Runner(model, subspace.site, p, pos, batch_size)
        if subspace.width != runner.width:
            raise DASError(f"the subspace is {subspace.width} wide but {subspace.site} has width {runner.width}")
        out = []
        with torch.no_grad():
            for i in range(0, len(p), batch_size):
                out.append(runner.logits(torch.arange(i, min(i + batch_size, len(p))), _interchange(subspace.basis)))
    return torch.cat(out).cpu()


def interchange_accuracy(model: Any, subspace: Subspace, pairs: Any, positions: int | Sequence[int] = -1, *,
                         batch_size: int = 32) -> float:
    """The IIA of any subspace (a neuron, a PCA or probe direction, a DAS result's) on ``pairs``."""
    p = counterfactual_pairs(model, pairs)
    lg = interchange_logits(model, subspace, p, positions, batch_size=batch_size)
    return float((lg.argmax(-1) == torch.tensor(p.source_answers)).float().mean())


# -- the result -----------------------------------------------------------------------------------
@dataclass
class DASResult:
    """A learned subspace and how well it works: IIA on held-out and on training pairs.

    ``baseline``: the share of held-out pairs whose base run already gives the source answer (what
    IIA is compared with); ``model_accuracy``: the share of all base prompts the model answers
    right unintervened. ``illusion`` is the `IllusionReport` at a ``neurons.L`` site (else None);
    ``boundless`` the boundary, temperature and soft size of a Boundless DAS run; ``isolate_accuracy``
    the held-out share of MDAS isolate pairs that keep their base answer.
    """

    subspace: Subspace
    positions: list[int]
    iia: float | None
    train_iia: float
    baseline: float | None
    model_accuracy: float
    n_train: int
    n_heldout: int
    history: list[dict[str, float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    illusion: IllusionReport | None = None
    boundless: dict[str, float] | None = None
    isolate_accuracy: float | None = None

    @property
    def site(self) -> str:
        return self.subspace.site

    @property
    def k(self) -> int:
        return self.subspace.k

    def spec(self, source: str, positions: int | Sequence[int] | None = None) -> SubspaceInterchange:
        """The interchange spec of this subspace from ``source`` (at the trained positions unless given)."""
        return SubspaceInterchange(self.subspace, source, _positions(self.positions if positions is None else positions))

    def summary(self) -> dict[str, Any]:
        out = {"site": self.site, "positions": self.positions, "k": self.k, "iia": self.iia,
               "train_iia": self.train_iia, "baseline": self.baseline, "model_accuracy": self.model_accuracy,
               "n_train": self.n_train, "n_heldout": self.n_heldout, "steps": len(self.history)}
        if self.isolate_accuracy is not None:
            out["isolate_accuracy"] = self.isolate_accuracy
        if self.illusion is not None:
            out.update({f"illusion_{k}": v for k, v in self.illusion.summary().items() if k not in ("rule", "layer")})
        return out

    def to_pandas(self) -> Any:
        """The training history: one row per step (step, loss, batch accuracy, and for Boundless DAS boundary and temperature)."""
        import pandas as pd

        return pd.DataFrame(self.history)

    def __repr__(self) -> str:
        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"
        s = (f"DASResult(site={self.site}, positions={self.positions}, k={self.k}, IIA={f(self.iia)} held-out "
             f"({self.n_heldout}), train IIA={f(self.train_iia)}, no intervention={f(self.baseline)})")
        return s + (f"\n  {self.illusion}" if self.illusion is not None else "")

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>"

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the result to one safetensors file (the basis as a tensor, the rest as JSON metadata), atomically."""
        meta = {"format": "workbench-das", "version": str(VERSION), "subspace": json.dumps(
            {"site": self.subspace.site, "name": self.subspace.name, "meta": self.subspace.meta}),
            "result": json.dumps({"positions": self.positions, "iia": self.iia, "train_iia": self.train_iia,
                                  "baseline": self.baseline, "model_accuracy": self.model_accuracy,
                                  "n_train": self.n_train, "n_heldout": self.n_heldout, "history": self.history,
                                  "settings": self.settings, "boundless": self.boundless,
                                  "isolate_accuracy": self.isolate_accuracy,
                                  "illusion": None if self.illusion is None else asdict(self.illusion)})}
        atomic_tensors(path, {"basis": self.subspace.basis}, meta)

    @classmethod
    def load(cls, path: str | Path) -> DASResult:
        """Read a file `save` wrote."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                md = f.metadata() or {}
                basis = f.get_tensor("basis") if "basis" in f.keys() else None  # noqa: SIM118
        except FileNotFoundError:
            raise DASError(f"{path} does not exist") from None
        except Exception as e:  # safetensors' own errors for garbled files
            raise DASError(f"{path} is no readable safetensors file: {e}") from None
        if md.get("format") != "workbench-das" or basis is None:
            raise DASError(f"{path} is no saved DAS result (format {md.get('format')!r})")
        s, r = json.loads(md["subspace"]), json.loads(md["result"])
        ill = r.pop("illusion")
        sub = Subspace(s["site"], basis, s["name"], s["meta"], non_orthonormal="raise")
        return cls(sub, illusion=IllusionReport(**ill) if ill else None, **r)


def _positions(positions: Any) -> list[int]:
    if isinstance(positions, int) and not isinstance(positions, bool):
        return [positions]
    ps = list(positions) if isinstance(positions, (list, tuple)) else None
    if not ps or any(isinstance(p, bool) or not isinstance(p, int) for p in ps):
        raise DASError(f"positions must be an int or a non-empty list of ints (negative counts from the end), "
                       f"not {positions!r}")
    if len(set(ps)) != len(ps):
        raise DASError(f"positions list a position twice: {ps}")
    return ps


# -- training -------------------------------------------------------------------------------------
def _checkpoint(path: str | Path) -> StepCheckpoint:
    """A DAS training folder: ``state.json`` (commit point) + ``state-<step>.safetensors``."""
    return StepCheckpoint(path, fmt=FORMAT, version=VERSION, what="DAS training", error=DASError)


def _batch(n: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Examples of step ``step``: epochs of permutations drawn from ``(seed, epoch)`` laid end to end."""
    pos, need, parts = step * batch_size, min(batch_size, n), []
    while need:
        e, off = divmod(pos, n)
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + e)
        perm = torch.randperm(n, generator=g)
        take = min(need, n - off)
        parts.append(perm[off:off + take])
        pos, need = pos + take, need - take
    return torch.cat(parts)


class _Params(torch.nn.Module):
    """The trainable parameters: a free ``[k, width]`` matrix (or a full ``[width, width]`` one and a boundary)."""

    def __init__(self, width: int, k: int, boundless: bool, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        rows = width if boundless else k
        self.w = torch.nn.Parameter(torch.randn(rows, width, generator=g, dtype=torch.float32))
        self.boundless = boundless
        if boundless:
            self.boundary = torch.nn.Parameter(torch.tensor(float(width) / 2))

    def mask(self, temperature: float) -> Tensor:
        i = torch.arange(self.w.shape[1], dtype=torch.float32)
        return torch.sigmoid((self.boundary - i - 0.5) / temperature)

    def k_eff(self) -> int:
        return int(min(max(round(float(self.boundary.detach())), 1), self.w.shape[1]))

    def hard_basis(self) -> Tensor:
        b = _orth(self.w.detach())
        return b[: self.k_eff()] if self.boundless else b


def train_das(model: Any, site: str, pairs: Any, k: int = 1, *, positions: int | Sequence[int] = -1, steps: int = 200,
              lr: float = 1e-2, batch_size: int = 32, holdout: float = 0.2, seed: int = 0,
              checkpoint: str | Path | None = None, resume: bool = True, cancel: threading.Event | None = None,
              progress: bool = True, boundless: bool = False, isolate: Any = None, isolate_weight: float = 1.0,
              temperature: tuple[float, float] | None = None, boundary_penalty: float = 1.0,
              checkpoint_every: int = 50, on_step: Callable[[dict[str, float]], None] | None = None,
              heldout: Any = None) -> DASResult:
    """Learn ``k`` orthonormal directions at ``site`` whose interchange gives the source's answer (DAS).

    ``pairs``: ``(base, source, base_answer, source_answer)`` tuples or dicts (see the module
    docstring; `counterfactual_pairs` checks them). ``positions``: the token position(s) of the
    interchange (negative from each prompt's end; base and source share them). A share
    ``holdout`` of the pairs (drawn with ``seed``) is held out for the IIA; ``heldout``: instead,
    pairs of their own to measure it on (for example pairs of entities the training pairs never
    name), and every pair of ``pairs`` trains. ``isolate``: MDAS
    isolate pairs, whose interchange must keep the base answer (weight ``isolate_weight``).
    ``boundless``: Boundless DAS (``k`` is ignored: the result's k is the learned mask's size; ``temperature`` =
    (start, end), default ``(width / 4, 0.1)``; ``boundary_penalty`` times ``boundary / width`` joins
    the loss). ``checkpoint``: a folder to checkpoint into every ``checkpoint_every`` steps and to
    resume from (``resume=False`` starts over); ``cancel`` checkpoints and raises `DASCancelled`;
    Ctrl-C checkpoints and re-raises `KeyboardInterrupt`.
    ``on_step(stats)`` is called after every step. Returns a `DASResult`.
    """
    s = Site.parse(site)
    if s.name not in TOKEN_SITES or s.name not in WRITABLE:
        raise DASError(f"DAS needs a writable per-token site, not {s}: use one of {sorted(TOKEN_SITES & WRITABLE)}")
    model.arch.check_layer(s.layer)
    width = model.arch.size(s)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= width:
        raise DASError(f"k={k!r} is out of range: k must be an integer between 1 and the site's width {width}")
    for name, v, lo in (("steps", steps, 0), ("batch_size", batch_size, 1), ("checkpoint_every", checkpoint_every, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise DASError(f"{name} must be an integer >= {lo}, not {v!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise DASError(f"lr must be a positive number, not {lr!r}")
    if not (isinstance(holdout, (int, float)) and 0 <= holdout < 1):
        raise DASError(f"holdout must be a share in [0, 1), not {holdout!r}")
    pos = _positions(positions)
    cause = counterfactual_pairs(model, pairs)
    held = counterfactual_pairs(model, heldout) if heldout is not None else None
    n_fit = len(cause)
    if held is not None:
        cause = cause + held
    iso = counterfactual_pairs(model, isolate) if isolate is not None else None
    n_c = len(cause)
    allp = cause if iso is None else cause + iso
    targets = torch.tensor(cause.source_answers + (iso.base_answers if iso else []))
    is_iso = torch.arange(len(allp)) >= n_c

    def split(n: int, salt: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(int(seed) * 7919 + salt)
        perm = torch.randperm(n, generator=g)
        n_hold = int(round(holdout * n)) if n > 1 else 0
        if holdout > 0 and n > 1:
            n_hold = min(max(n_hold, 1), n - 1)
        return perm[n_hold:].sort().values, perm[:n_hold].sort().values

    if held is None:
        tr_c, ho_c = split(n_c, 1)
    else:
        tr_c, ho_c = torch.arange(n_fit), torch.arange(n_fit, n_c)
    tr_i, ho_i = split(len(iso), 2) if iso else (torch.zeros(0, dtype=torch.long),) * 2
    train_idx = torch.cat([tr_c, tr_i + n_c])
    if boundless:
        t0, t1 = temperature if temperature is not None else (max(width / 4, 1.0), 0.1)
        if not (t0 > 0 and t1 > 0):
            raise DASError(f"temperature must be two positive numbers (start, end), not {temperature!r}")
    settings = {"site": str(s), "positions": pos, "k": k, "steps": steps, "lr": float(lr), "batch_size": batch_size,
                "holdout": float(holdout) if held is None else f"pairs {held.fingerprint()}", "seed": seed,
                "boundless": boundless, "isolate_weight": float(isolate_weight),
                "n_isolate": len(iso) if iso else 0, "boundary_penalty": float(boundary_penalty),
                "temperature": [t0, t1] if boundless else None,
                "pairs": allp.fingerprint(), "model": getattr(model, "name", "")}
    params = _Params(width, k, boundless, seed)
    groups: list[dict[str, Any]] = [{"params": [params.w], "lr": lr}]
    if boundless:  # the boundary moves in coordinate units: a larger step
        groups.append({"params": [params.boundary], "lr": lr * max(width / 8, 1.0)})
    opt = torch.optim.Adam(groups)
    history: list[dict[str, float]] = []
    ck = _checkpoint(checkpoint) if checkpoint is not None else None
    step = 0
    if ck is not None and ck.exists():
        if resume:
            info, tensors = ck.read()
            diff = [f"{key}: {info['settings'].get(key)!r} there, {v!r} now" for key, v in settings.items()
                    if info["settings"].get(key) != (list(v) if isinstance(v, tuple) else v)]
            if diff:
                raise DASError(f"the checkpoint in {ck.path} was made with other settings ({'; '.join(diff)}); "
                               "pass resume=False to start over, or another checkpoint folder")
            with torch.no_grad():
                params.w.copy_(tensors["w"])
                if boundless:
                    params.boundary.copy_(tensors["boundary"])
            st = opt.state_dict()
            st["state"] = {i: {"step": tensors[f"adam.{i}.step"], "exp_avg": tensors[f"adam.{i}.exp_avg"],
                               "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"]}
                           for i in range(len(list(params.parameters()))) if f"adam.{i}.step" in tensors}
            opt.load_state_dict(st)
            step, history = int(info["step"]), list(info["history"])
        else:
            ck.clear()

    def save() -> None:
        if ck is None:
            return
        ts = {"w": params.w.detach().clone()}
        if boundless:
            ts["boundary"] = params.boundary.detach().clone()
        for i, p in enumerate(params.parameters()):
            for key, v in opt.state.get(p, {}).items():
                ts[f"adam.{i}.{key}"] = v.detach().clone() if isinstance(v, Tensor) else torch.tensor(float(v))
        ck.write({"step": step, "settings": settings, "history": history}, ts)

    with model.lock:
        runner = _Runner(model, str(s), allp, pos, batch_size)

        def temp(i: int) -> float:
            return t0 * (t1 / t0) ** (min(i, max(steps - 1, 1)) / max(steps - 1, 1))

        def edit_fn(i: int) -> Callable[[Tensor, Tensor], Tensor]:
            b = _orth(params.w)
            if not boundless:
                return _interchange(b)
            m = params.mask(temp(i))

            def f(h: Tensor, src: Tensor) -> Tensor:
                bb, mm = b.to(h.dtype), m.to(h.dtype)
                return h + (((src - h) @ bb.T) * mm) @ bb
            return f

        def result(partial: bool = False) -> DASResult:
            basis = params.hard_basis()
            sub = Subspace(str(s), basis, f"das{basis.shape[0]}@{s}",
                           {"method": "boundless_das" if boundless else "das", "positions": pos},
                           non_orthonormal="fix")
            ed = _interchange(sub.basis)
            if partial:
                tr_iia = ho_iia = iso_acc = None
            else:
                tr_iia = runner.accuracy(train_idx[~is_iso[train_idx]], ed, targets, batch_size)
                ho_iia = runner.accuracy(ho_c, ed, targets, batch_size)
                iso_acc = runner.accuracy(ho_i + n_c, ed, targets, batch_size) if iso else None
            hc = ho_c if len(ho_c) else tr_c
            baseline = float((runner.base_pred[hc] == runner.source_answers[hc]).float().mean())
            acc = float((runner.base_pred[:n_c] == runner.base_answers[:n_c]).float().mean())
            ill = None
            if s.name == "neurons" and not partial:
                ill = _illusion(model, runner, sub.basis, hc, batch_size)
            bl = None
            if boundless:
                bl = {"boundary": float(params.boundary.detach()), "temperature": temp(step),
                      "soft_size": float(params.mask(temp(step)).detach().sum()), "k": sub.k}
            return DASResult(sub, pos, ho_iia, tr_iia, baseline, acc, int((~is_iso[train_idx]).sum()), len(ho_c),
                             history, settings, ill, bl, iso_acc)

        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=step, desc=f"DAS {s}", disable=not progress, leave=False)
        w_iso = torch.where(is_iso, float(isolate_weight), 1.0)
        t_start = time.time()
        in_step = False
        try:
            while step < steps:
                if cancel is not None and cancel.is_set():
                    save()
                    raise DASCancelled(step, ck.path if ck else None, result(partial=True))
                in_step = True
                idx = train_idx[_batch(len(train_idx), batch_size, seed, step)]
                lg = runner.logits(idx, edit_fn(step))
                tgt = targets[idx].to(lg.device)
                ce = F.cross_entropy(lg, tgt, reduction="none")
                wts = w_iso[idx].to(lg.device)
                loss = (ce * wts).sum() / wts.sum()
                if boundless:
                    loss = loss + boundary_penalty * params.boundary / width
                opt.zero_grad(set_to_none=True)
                loss.backward(inputs=list(params.parameters()))
                opt.step()
                if boundless:
                    with torch.no_grad():
                        params.boundary.clamp_(0.5, float(width))
                step += 1
                in_step = False
                stats = {"step": step, "loss": float(loss.detach()), "accuracy": float((lg.argmax(-1) == tgt).float().mean())}
                if boundless:
                    stats.update(boundary=float(params.boundary.detach()), temperature=temp(step - 1))
                history.append(stats)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['accuracy']:.2f}", refresh=False)
                if on_step is not None:
                    on_step(stats)
                if step % checkpoint_every == 0 and step < steps:
                    save()
        except KeyboardInterrupt:  # Ctrl-C: checkpoint (unless mid-step) and re-raise
            if not in_step:
                save()
            raise
        finally:
            bar.close()
        settings_time = time.time() - t_start
        save()
        out = result()
        out.settings = {**settings, "train_time_s": round(settings_time, 3)}
        return out


# -- sweeps ---------------------------------------------------------------------------------------
@dataclass
class DASSweep(Showable):
    """DAS over sites x positions (x k): ``results[(site, position, k)]`` and the IIA grid.

    ``sweep.show(model, pair)`` opens the IIA heatmap widget, whose cells replay their interchange on
    ``pair`` (``(base, source, base_answer, source_answer)``, text prompts)."""

    sites: list[str]
    positions: list[int]
    ks: list[int]
    results: dict[tuple[str, int, int], DASResult]

    def grid(self, k: int | None = None, train: bool = False) -> Tensor:
        """The IIA ``[sites, positions]`` for one ``k`` (default: the first; ``train``: training IIA)."""
        k = self.ks[0] if k is None else k
        if k not in self.ks:
            raise DASError(f"k={k} was not swept; the sweep has k in {self.ks}")
        g = torch.full((len(self.sites), len(self.positions)), float("nan"))
        for i, s in enumerate(self.sites):
            for j, p in enumerate(self.positions):
                r = self.results[(s, p, k)]
                v = r.train_iia if train else r.iia
                g[i, j] = float("nan") if v is None else v
        return g

    def to_pandas(self) -> Any:
        """One row per (site, position, k): IIA, training IIA, baseline and the illusion flag."""
        import pandas as pd

        rows = []
        for (s, p, k), r in self.results.items():
            rows.append({"site": s, "position": p, "k": k, "iia": r.iia, "train_iia": r.train_iia,
                         "baseline": r.baseline, "illusion": None if r.illusion is None else r.illusion.illusion})
        return pd.DataFrame(rows)

    def plot(self, k: int | None = None, ax: Any = None) -> Any:
        """A heatmap of the IIA grid (matplotlib)."""
        import matplotlib.pyplot as plt

        g = self.grid(k)
        if ax is None:
            _, ax = plt.subplots(figsize=(1 + 0.8 * len(self.positions), 1 + 0.4 * len(self.sites)))
        im = ax.imshow(g.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(self.positions)), [str(p) for p in self.positions])
        ax.set_yticks(range(len(self.sites)), self.sites)
        ax.set_xlabel("position")
        ax.set_title(f"DAS IIA (k={self.ks[0] if k is None else k})")
        ax.figure.colorbar(im, ax=ax)
        return ax


def das_sweep(model: Any, sites: Sequence[str], positions: int | Sequence[int], pairs: Any,
              k: int | Sequence[int] = 1, *, checkpoint: str | Path | None = None, progress: bool = True,
              **train: Any) -> DASSweep:
    """`train_das` at every site x position (x k); ``train`` goes to each call (steps, lr, seed, ...).

    ``checkpoint``: a folder holding one checkpoint folder per cell, so an interrupted sweep resumes.
    """
    sites = [str(Site.parse(x)) for x in ([sites] if isinstance(sites, str) else sites)]
    ps = _positions(positions)
    ks = [k] if isinstance(k, int) else list(k)
    if not sites or not ks:
        raise DASError("das_sweep needs at least one site and one k")
    cp = counterfactual_pairs(model, pairs)
    results: dict[tuple[str, int, int], DASResult] = {}
    for si in sites:
        for p in ps:
            for kk in ks:
                ck = None if checkpoint is None else Path(checkpoint) / f"{si}_pos{p}_k{kk}"
                results[(si, p, kk)] = train_das(model, si, cp, kk, positions=p, checkpoint=ck, progress=progress,
                                                 **train)
    return DASSweep(sites, ps, ks, results)
