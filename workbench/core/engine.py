"""The engine: `Model` wraps an nnsight model and compiles intervention specs into one trace.

Everything that edits or reads the model goes through `_TraceProgram`, which runs inside
an nnsight trace (or at every step of an nnsight generation): it visits the requested
sites in forward order, applies the specs, and saves reduced results. Because it is
plain nnsight code, it also runs under ``remote=True`` (NDIF) and ``remote="local"``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nnsight
import torch

from .arch import WRITABLE, ArchMap, Site
from .results import GenerationResult, RunResult, Token, TopK
from .specs import AblateHeads, Edit, Patch, Spec, Steer, spec_from_dict

Reducer = Callable[[torch.Tensor], torch.Tensor]


class GenerationCancelled(Exception):
    """Raised by `Model.generate` when its ``cancel`` event was set mid-generation."""


def _get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


@dataclass
class Batch:
    """Tokenized prompts, right-padded: main rows first, then patch-source rows."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: list[list[Token]]
    n_main: int
    sources: dict[str, int] = field(default_factory=dict)  # source prompt -> row

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]


@dataclass
class _StepState:
    """Where a generation step is: step 0 sees the whole prompt, later steps one token."""

    step: int
    lengths: list[int]


class _TraceProgram:
    """Specs and captures compiled into an ordered visit of sites (runs inside a trace)."""

    def __init__(self, model: Model, specs: Sequence[Spec], capture: dict[str, Reducer | None], batch: Batch,
                 new_tokens: int = 0):
        self.arch = model.arch
        self.batch = batch
        self._consts: dict[tuple, torch.Tensor] = {}  # spec numbers as tensors, per device/dtype
        self.new_tokens = new_tokens  # generation: positions may also name generated tokens
        self.patch_values: dict[str, dict[str, torch.Tensor]] = {}  # source -> site -> [1, s, ...]
        self.specs: dict[str, list[Spec]] = {}
        for s in specs:
            site = s.parsed_site
            self.arch.check_layer(site.layer)
            self._check_spec(s, site)
            compile_for = getattr(s, "compile_for", None)
            if compile_for is not None:
                # Specs defined elsewhere (workbench.dictionaries.features) compile into trace-time ops, one or
                # more per site ([] when they change nothing: the site is then not even visited).
                for where, op in compile_for(model):
                    self.specs.setdefault(str(Site.parse(where)), []).append(op)
                continue
            self.specs.setdefault(str(site), []).append(s)
        self.capture = {str(Site.parse(k)): v for k, v in capture.items()}
        for k in self.capture:
            self.arch.check_layer(Site.parse(k).layer)
        sites = {Site.parse(k) for k in list(self.specs) + list(self.capture)}
        self.sites = sorted(sites, key=lambda s: s.order)

    def _check_spec(self, s: Spec, site: Site) -> None:
        if s.rows is not None and max(s.rows) >= self.batch.n_main:
            raise IndexError(f"{s.describe()}: row {max(s.rows)} is out of range for {self.batch.n_main} prompt(s)")
        width = self.arch.n_heads if site.name == "z" else self.arch.size(site)
        idx = getattr(s, "heads", None) if isinstance(s, AblateHeads) else getattr(s, "indices", None)
        if idx:
            bad = [i for i in idx if not -width <= i < width]
            if bad:
                unit = "head" if site.name == "z" else "index"
                raise IndexError(f"{s.describe()}: {unit} {bad[0]} is out of range for {site} (size {width})")
        if isinstance(s, Steer) and len(s.direction) != self.arch.size(site):
            raise ValueError(f"{s.describe()}: direction has {len(s.direction)} values but {site} has width {self.arch.size(site)}")
        if isinstance(s, Edit) and isinstance(s.value, list):
            n = len(s.indices) if s.indices is not None else self.arch.size(site)
            if len(s.value) != n:
                what = "indices" if s.indices is not None else f"units of {site}"
                raise ValueError(f"{s.describe()}: {len(s.value)} values for {n} {what}")
        if isinstance(s, AblateHeads) and s.op == "mean":
            shape = tuple(torch.as_tensor(s.means).shape)
            if shape != (self.arch.n_heads, self.arch.d_head):
                raise ValueError(f"{s.describe()}: means have shape {shape}, expected [n_heads, d_head] = "
                                 f"{[self.arch.n_heads, self.arch.d_head]}")
        extra = 0 if isinstance(s, Patch) else self.new_tokens
        for p in getattr(s, "positions", None) or []:
            for L in self.batch.lengths[: self.batch.n_main]:
                if not -L <= p < L + extra:
                    raise IndexError(f"{s.describe()}: position {p} is out of range for a prompt of {L} tokens"
                                     + (f" and {extra} generated tokens" if extra else ""))
        if isinstance(s, Patch):
            n_src = self.batch.lengths[self.batch.sources[s.source]]
            src_pos = s.source_positions if s.source_positions is not None else s.positions
            for p in src_pos or []:
                if not -n_src <= p < n_src:
                    raise IndexError(f"{s.describe()}: source position {p} is out of range for a source of {n_src} tokens")
            if src_pos is None and s.positions is None and any(L != n_src for L in self.batch.lengths[: self.batch.n_main]):
                raise ValueError(f"{s.describe()}: the source has {n_src} tokens but the prompt has "
                                 f"{self.batch.lengths[0]}: give positions (and source_positions) to patch prompts "
                                 "of different lengths")
            if s.positions is None and s.source_positions is not None:
                raise ValueError(f"{s.describe()}: source_positions need target positions of the same length")

    # -- reading sites ---------------------------------------------------------------
    def _layer(self, nn: Any, i: int) -> Any:
        return _get(nn, self.arch.layers)[i]

    def _read(self, nn: Any, site: Site, cache: dict) -> torch.Tensor:
        a = self.arch
        name, L = site.name, site.layer
        if name == "embed":
            return _get(nn, a.embed).output
        if name == "final_norm":
            return _get(nn, a.final_norm).output
        if name == "logits":
            return self.logits(nn)
        layer = self._layer(nn, L)
        if name == "resid_pre":
            return layer.input
        if name in ("z", "head_out"):
            if ("z", L) not in cache:
                cache[("z", L)] = _get(layer, a.attn_o_proj).input.unflatten(-1, (a.n_heads, a.d_head))
            z = cache[("z", L)]
            if name == "z":
                return z
            proj = _get(layer, a.attn_o_proj)
            w = proj.weight
            w = w if type(proj._module).__name__ != "Conv1D" else w.T  # -> [d_model, H*d_head]
            return torch.einsum("bshd,mhd->bshm", z, w.reshape(a.d_model, a.n_heads, a.d_head))
        if name in ("attn_out", "pattern"):
            if ("attn", L) not in cache:
                cache[("attn", L)] = _get(layer, a.attn).output
            out = cache[("attn", L)]
            if name == "pattern" and out[1] is None:
                raise RuntimeError("attention probabilities are not materialized: load the model with eager attention")
            return out[0] if name == "attn_out" else out[1]
        if name == "mlp_in":
            return _get(layer, a.mlp).input
        if name == "neurons":
            return _get(layer, a.mlp_out_proj).input
        if name == "mlp_out":
            out = _get(layer, a.mlp).output
            return out[0] if isinstance(out, tuple) else out
        if name == "resid_post":
            out = layer.output
            return out[0] if isinstance(out, tuple) else out
        raise ValueError(f"unknown site {site}")

    @staticmethod
    def logits(nn: Any) -> torch.Tensor:
        """The logits the model returns (after any final softcapping, as in Gemma 2)."""
        out = nn.output
        return out.logits if hasattr(out, "logits") else out[0]

    # -- positions -----------------------------------------------------------------
    def _rows_positions(self, positions: list[int] | None, st: _StepState, seq: int,
                        rows: list[int] | None = None) -> list[tuple[int, Any]]:
        """(row, position index) pairs for the spec's rows at this step; [] when nothing applies."""
        n = self.batch.n_main
        if positions is None:
            return [(slice(0, n), slice(None))] if rows is None else [(r, slice(None)) for r in rows]
        out = []
        if st.step == 0:
            off = max(st.lengths) - seq  # > 0 when only the last positions are there (generate's logits)
            for r in range(n) if rows is None else rows:
                L = st.lengths[r]
                ps = [p + L if p < 0 else p for p in positions]
                ps = [p - off for p in ps if off <= p < L]  # p >= L: a generated token, for later steps
                if ps:
                    out.append((r, ps))
            if rows is None and len(out) == n and all(o[1] == out[0][1] for o in out):
                return [(slice(0, n), out[0][1])]
            return out
        # later generation steps: one new token at absolute position lengths[r] + step - 1
        for r in range(n) if rows is None else rows:
            absolute = st.lengths[r] + st.step - 1
            if absolute in positions:
                out.append((r, [seq - 1]))
        return out

    # -- applying specs ------------------------------------------------------------
    def _apply(self, x: torch.Tensor, s: Spec, st: _StepState) -> None:
        run_in_trace = getattr(s, "run_in_trace", None)
        if run_in_trace is not None:  # an op compiled by a spec's compile_for (see __init__)
            run_in_trace(self, x, st)
            return
        seq = x.shape[2] if s.parsed_site.name == "pattern" else x.shape[1]
        if isinstance(s, Patch):
            if st.step > 0:
                return
            pre = self.patch_values.get(s.source, {}).get(s.site)
            if pre is None:  # the source is a row of this batch
                src = self.batch.sources[s.source]
                srcx, n_src = x[src:src + 1], self.batch.lengths[src]
            else:  # recorded beforehand (generation)
                srcx, n_src = pre.to(device=x.device, dtype=x.dtype), pre.shape[1]
            src_pos = s.source_positions if s.source_positions is not None else s.positions
            for rows, pos in self._rows_positions(s.positions, st, seq, s.rows):
                spos = slice(None) if src_pos is None else [p + n_src if p < 0 else p for p in src_pos]
                if s.indices is None:
                    value = srcx[:, spos]
                    x[rows, pos] = value if isinstance(rows, slice) else value[0]
                else:
                    idx = self._const(s, "indices", s.indices, x, integer=True)
                    value = srcx[:, spos][:, :, idx]
                    self._assign(x, rows, pos, idx, value if isinstance(rows, slice) else value[0])
            return
        for rows, pos in self._rows_positions(s.positions, st, seq, s.rows):
            if isinstance(s, Steer):
                d = self._const(s, "steer", s.direction, x, scale=s.strength)
                x[rows, pos] += d
            elif isinstance(s, AblateHeads):
                idx = self._const(s, "heads", s.heads, x, integer=True)
                if s.op == "zero":
                    self._assign(x, rows, pos, idx, 0.0)
                else:
                    means = self._const(s, "means", s.means, x)[idx]
                    self._assign(x, rows, pos, idx, means)
            elif isinstance(s, Edit):
                idx = None if s.indices is None else self._const(s, "indices", s.indices, x, integer=True)
                val = None if s.value is None else self._const(s, "value", s.value, x)
                if s.op == "zero":
                    self._assign(x, rows, pos, idx, 0.0)
                elif s.op in ("set", "mean"):
                    self._assign(x, rows, pos, idx, val)
                elif s.op == "scale":
                    self._assign(x, rows, pos, idx, self._take(x, rows, pos, idx) * val)
                elif s.op == "add":
                    self._assign(x, rows, pos, idx, self._take(x, rows, pos, idx) + val)

    def _const(self, s: Spec, what: str, values: Any, x: torch.Tensor, integer: bool = False,
               scale: float | None = None) -> torch.Tensor:
        """A spec's numbers as a tensor on x's device and dtype, built once (not at every step)."""
        key = (id(s), what, x.device, x.dtype)
        t = self._consts.get(key)
        if t is None:
            t = torch.tensor(values, device=x.device, dtype=None if integer else x.dtype)
            if scale is not None:
                t = t * scale
            self._consts[key] = t
        return t

    @staticmethod
    def _key(x: torch.Tensor, rows: Any, pos: Any, idx: torch.Tensor | None) -> tuple:
        if idx is None:
            return (rows, pos)
        if isinstance(pos, list):
            p = torch.tensor(pos, device=x.device)
            return (rows, p[:, None], idx[None, :])
        return (rows, pos, idx)

    def _take(self, x: torch.Tensor, rows: Any, pos: Any, idx: torch.Tensor | None) -> torch.Tensor:
        return x[self._key(x, rows, pos, idx)]

    def _assign(self, x: torch.Tensor, rows: Any, pos: Any, idx: torch.Tensor | None, value: Any) -> None:
        x[self._key(x, rows, pos, idx)] = value

    # -- the body that runs inside the trace ----------------------------------------
    def visit(self, nn: Any, st: _StepState, saves: dict[str, list] | None = None) -> dict[str, torch.Tensor]:
        """Visit sites in forward order: apply specs, then capture. Returns saved tensors."""
        cache: dict = {}
        out: dict[str, torch.Tensor] = {}
        for site in self.sites:
            key = str(site)
            x = self._read(nn, site, cache)
            for s in self.specs.get(key, ()):
                self._apply(x, s, st)
            if key in self.capture:
                reducer = self.capture[key]
                main = x[: self.batch.n_main]
                if reducer is None and st.step == 0:  # drop padding that only longer patch sources need
                    T = max(self.batch.lengths[: self.batch.n_main])
                    main = main[:, :, :T, :T] if site.name == "pattern" else main[:, :T]
                value = main.detach().clone() if reducer is None else reducer(main)
                if saves is None:
                    out[key] = nnsight.save(value)
                else:
                    saves[key].append(value)
        return out


class Model:
    """A language model in the workbench: an nnsight model, its tokenizer and its architecture map.

    ``model.run(prompt, interventions=[...], capture=[...])`` and
    ``model.generate(prompt, interventions=[...])`` are the high-level API. For raw
    nnsight, ``model.nn`` is the `nnsight` model and ``model.site(name)`` returns the live
    tensor of a standard site inside your own ``with model.nn.trace(...)`` block.
    """

    def __init__(self, nn: Any, tokenizer: Any, arch: ArchMap, remote: bool | str = False, name: str = ""):
        self.nn = nn
        self.tokenizer = tokenizer
        self.arch = arch
        self.remote = remote
        self.name = name
        self._lock = threading.RLock()
        self._accepts_logits_to_keep: bool | None = None
        if getattr(tokenizer, "pad_token_id", None) is None:
            tokenizer.pad_token = tokenizer.eos_token

    # -- basic facts ---------------------------------------------------------------
    @property
    def hf(self) -> Any:
        """The underlying Hugging Face model."""
        return self.nn._module

    @property
    def n_layers(self) -> int:
        return self.arch.n_layers

    @property
    def n_heads(self) -> int:
        return self.arch.n_heads

    @property
    def d_model(self) -> int:
        return self.arch.d_model

    @property
    def d_mlp(self) -> int:
        return self.arch.d_mlp

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def __repr__(self) -> str:
        a = self.arch
        where = {True: "remote (NDIF)", "local": "remote='local'", False: str(self.device)}[self.remote]
        return (f"Model({self.name!r}, family={a.family}, layers={a.n_layers}, d_model={a.d_model}, "
                f"heads={a.n_heads}, d_mlp={a.d_mlp}, vocab={a.vocab}, on {where})")

    # -- tokens --------------------------------------------------------------------
    def tokenize(self, prompts: str | Sequence[str], sources: Iterable[str] = ()) -> Batch:
        """Tokenize prompts (right-padded), with exact character spans per token."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompt given")
        src = [s for s in dict.fromkeys(sources) if s]
        all_texts = prompts + src
        tok = self.tokenizer
        enc = tok(all_texts, return_offsets_mapping=True, add_special_tokens=True, return_special_tokens_mask=True)
        tokens: list[list[Token]] = []
        for b, text in enumerate(all_texts):
            ids = enc["input_ids"][b]
            if not ids or not text:
                raise ValueError(f"prompt {b} is empty: give at least one token of text")
            offs = enc["offset_mapping"][b]
            row = []
            prev_end = 0
            for tid, (s, e), special in zip(ids, offs, enc["special_tokens_mask"][b], strict=True):
                if special:  # e.g. BOS: no text of the prompt
                    row.append(Token(int(tid), tok.decode([tid]), int(s), int(s)))
                    continue
                # Spans tile the prompt: byte-level tokens that split one character (an emoji, "é")
                # report the same character span; the first gets it, the others an empty span.
                s, e = prev_end, max(int(e), prev_end)
                row.append(Token(int(tid), text[s:e], s, e))
                prev_end = e
            tokens.append(row)
        n = max(len(r) for r in tokens)
        pad = tok.pad_token_id
        input_ids = torch.full((len(tokens), n), pad, dtype=torch.long)
        mask = torch.zeros((len(tokens), n), dtype=torch.long)
        for b, row in enumerate(tokens):
            input_ids[b, : len(row)] = torch.tensor([t.id for t in row])
            mask[b, : len(row)] = 1
        return Batch(input_ids, mask, tokens, len(prompts), {s: len(prompts) + i for i, s in enumerate(src)})

    def batch_from_ids(self, rows: Sequence[Sequence[int]]) -> Batch:
        """A right-padded batch of token-id rows (each token's text is its own decoding)."""
        rows = [list(map(int, r)) for r in rows]
        if not rows or any(not r for r in rows):
            raise ValueError("batch_from_ids needs at least one non-empty row of token ids")
        vocab = self.arch.vocab
        bad = [i for r in rows for i in r if not 0 <= i < vocab]
        if bad:
            raise IndexError(f"token id {bad[0]} is out of range for a vocabulary of {vocab}")
        tokens: list[list[Token]] = []
        for r in rows:
            row, pos = [], 0
            for tid in r:
                text = self.tokenizer.decode([tid])
                row.append(Token(tid, text, pos, pos + len(text)))
                pos += len(text)
            tokens.append(row)
        n = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), n), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for b, r in enumerate(rows):
            input_ids[b, : len(r)] = torch.tensor(r)
            mask[b, : len(r)] = 1
        return Batch(input_ids, mask, tokens, len(rows))

    def to_str_tokens(self, prompt: str) -> list[str]:
        return [t.text for t in self.tokenize(prompt).tokens[0]]

    # -- compilation ---------------------------------------------------------------
    @staticmethod
    def _specs(interventions: Iterable[Spec | dict] | None) -> list[Spec]:
        out = []
        for s in interventions or ():
            out.append(spec_from_dict(s) if isinstance(s, dict) else s)
            if not isinstance(out[-1], Spec):
                raise TypeError(f"an intervention is a workbench spec or its dict, not {type(s).__name__}")
        return out

    @staticmethod
    def _captures(capture: Iterable[str] | dict[str, Reducer | None] | None) -> dict[str, Reducer | None]:
        if capture is None:
            return {}
        if isinstance(capture, str):
            capture = [capture]
        if isinstance(capture, dict):
            return dict(capture)
        return {c: None for c in capture}

    def _inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        dev = self.device if not self.remote else torch.device("cpu")
        return {"input_ids": batch.input_ids.to(dev), "attention_mask": batch.attention_mask.to(dev)}

    def _remote_kw(self, remote: bool | str | None) -> dict[str, Any]:
        r = self.remote if remote is None else remote
        return {"remote": r} if r else {}

    # -- running -------------------------------------------------------------------
    def run(self, prompts: str | Sequence[str] | Batch, interventions: Iterable[Spec | dict] | None = None, *,
            capture: Iterable[str] | dict[str, Reducer | None] | None = None, top_k: int = 10,
            logits: str | None = "last", remote: bool | str | None = None, grad: bool = False) -> RunResult:
        """Run prompts once with interventions; return tokens, top-k, logits and captures.

        ``prompts``: a text, a list of texts, or a `Batch` of token ids (`Model.batch_from_ids`).
        ``top_k=0`` skips next-token predictions (the unembedding then runs on one position).
        ``capture``: site names (``"neurons.3"``) or ``{site: reducer}`` where the reducer
        runs inside the trace (so only its result travels back from a remote model).
        ``logits``: ``"last"`` (each prompt's last position), ``"all"`` or ``None``.
        """
        specs = self._specs(interventions)
        caps = self._captures(capture)
        if isinstance(prompts, Batch):  # pre-tokenized windows (scans, exemplars)
            if any(isinstance(s, Patch) for s in specs):
                raise ValueError("Patch specs need their source prompt tokenized with the batch: pass text prompts")
            batch = prompts
            prompts = ["".join(t.text for t in row) for row in batch.tokens]
        else:
            batch = self.tokenize(prompts, [s.source for s in specs if isinstance(s, Patch)])
        program = _TraceProgram(self, specs, caps, batch)
        st = _StepState(0, batch.lengths)
        n = batch.n_main
        last = torch.tensor([L - 1 for L in batch.lengths[:n]])
        k = min(top_k, self.arch.vocab)
        if k < 0:
            raise ValueError(f"top_k must be at least 0, not {top_k}")
        if k == 0 and logits != "all":
            logits = None  # no predictions wanted: unembed one position only (see _last_logits_only)
        ctx = torch.enable_grad() if grad else torch.inference_mode()
        nn, inputs, rkw = self.nn, self._inputs(batch), self._remote_kw(remote)
        if self._last_logits_only(program, batch, logits, k):
            # Every prompt ends at the last padded position: unembed that position only.
            rkw = {**rkw, "logits_to_keep": 1}
            last = torch.zeros_like(last)
        with self._lock, ctx:
            with nn.trace(inputs, **rkw):
                saved = nnsight.save(program.visit(nn, st))
                lg = program.logits(nn)[:n]
                last_logits = lg[torch.arange(n), last.to(lg.device)].float()
                probs = torch.softmax(last_logits, -1)
                top = probs.topk(max(k, 1), dim=-1)
                top_p = nnsight.save(top.values)
                top_i = nnsight.save(top.indices)
                top_l = nnsight.save(last_logits.gather(-1, top.indices))
                # Always saved: nnsight drops unsaved locals (a plain None) when the trace exits.
                kept = nnsight.save(lg[:, : max(batch.lengths[:n])].detach().clone() if logits == "all" else last_logits)
        top_i = top_i.cpu()[:, :k]
        top_p, top_l = top_p[:, :k], top_l[:, :k]
        toks = [[self.tokenizer.decode([int(i)]) for i in row] for row in top_i]
        return RunResult(
            prompts=[prompts] if isinstance(prompts, str) else list(prompts),
            tokens=batch.tokens[:n],
            top=TopK(top_p.detach().cpu(), top_l.detach().cpu(), top_i, toks),
            logits=kept.detach().cpu() if logits else None,
            activations={k_: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k_, v in saved.items()},
            interventions=specs,
        )

    def _last_logits_only(self, program: _TraceProgram, batch: Batch, logits: str | None, top_k: int = 1) -> bool:
        """Whether a run needs the unembedding at the last position alone (a fifth of a forward)."""
        if logits == "all" or any(s.name == "logits" for s in program.sites):
            return False
        width = batch.input_ids.shape[1]
        if (logits is not None or top_k > 0) and any(L != width for L in batch.lengths[: batch.n_main]):
            return False
        if self._accepts_logits_to_keep is None:
            import inspect

            self._accepts_logits_to_keep = "logits_to_keep" in inspect.signature(self.hf.forward).parameters
        return self._accepts_logits_to_keep

    def generate(self, prompt: str, interventions: Iterable[Spec | dict] | None = None, *, max_new_tokens: int = 32,
                 do_sample: bool = False, temperature: float = 1.0, seed: int | None = None,
                 on_token: Callable[[int, str], None] | None = None, cancel: threading.Event | None = None,
                 remote: bool | str | None = None, **gen_kwargs: Any) -> GenerationResult:
        """Generate from one prompt with the interventions applied at every step.

        ``on_token(id, text_so_far)`` is called as each token is produced (local runs);
        setting ``cancel`` stops generation with `GenerationCancelled`.
        """
        specs = self._specs(interventions)
        batch = self.tokenize(prompt, [s.source for s in specs if isinstance(s, Patch)])
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        program = _TraceProgram(self, specs, {}, batch, new_tokens=max_new_tokens)
        tok = self.tokenizer
        produced: list[int] = []
        is_remote = bool(self.remote if remote is None else remote)

        class _Streamer:
            first = True

            def put(self, value: torch.Tensor) -> None:
                if self.first:  # the prompt itself
                    self.first = False
                    return
                if cancel is not None and cancel.is_set():
                    raise GenerationCancelled()
                produced.append(int(value.reshape(-1)[0]))
                if on_token is not None:
                    on_token(produced[-1], tok.decode(produced, skip_special_tokens=True))

            def end(self) -> None:
                pass

        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id)
        if do_sample:
            kw["temperature"] = temperature
        if not is_remote:
            kw["streamer"] = _Streamer()
        kw.update(gen_kwargs)
        if batch.sources:
            # Patch sources run first, on their own: right-padded into the prompt's batch they would
            # put padding between the prompt and the generated tokens.
            for src in batch.sources:
                sites = sorted({s.site for s in specs if isinstance(s, Patch) and s.source == src})
                res = self.run(src, capture=sites, top_k=1, logits=None, remote=remote)
                program.patch_values[src] = res.activations
            L = batch.lengths[0]
            batch = Batch(batch.input_ids[:1, :L], batch.attention_mask[:1, :L], batch.tokens[:1], 1)
        if seed is not None:
            torch.manual_seed(seed)
        lengths = batch.lengths
        nn, inputs = self.nn, self._inputs(batch)
        kw.update(self._remote_kw(remote))
        with self._lock, torch.inference_mode(), warnings.catch_warnings():
            # A step loop cut short by an end-of-sequence token is normal, not worth a warning.
            warnings.filterwarnings("ignore", message=".*was never reached: the loop asked for a step")
            with nn.generate(**kw) as tr:
                with tr.invoke(inputs):
                    if program.sites:
                        for step in tr.iter[:max_new_tokens]:
                            program.visit(nn, _StepState(step, lengths))
                with tr.invoke():  # separate, so it runs even when the loop above is cut short
                    result = nnsight.save(tr.result)
        ids = result[0, batch.input_ids.shape[1]:].tolist()
        if is_remote:
            produced = ids
        new = ids[: len(produced)] if produced else ids
        return GenerationResult(prompt, new, tok.decode(new, skip_special_tokens=True), specs)

    # -- raw nnsight ------------------------------------------------------------------
    def site(self, name: str | Site) -> torch.Tensor:
        """Inside your own ``with model.nn.trace(...)``: the live tensor at a standard site."""
        site = Site.parse(name)
        self.arch.check_layer(site.layer)
        return _TraceProgram(self, [], {}, Batch(torch.zeros(1, 1), torch.zeros(1, 1), [[]], 1))._read(self.nn, site, {})

    def trace(self, prompts: str | Sequence[str], **kwargs: Any):
        """An nnsight trace over prompts tokenized like `run` does (for inline nnsight code).

        Inside it, ``model.site(name)`` reads or writes a standard site and
        ``model.apply(specs)`` applies intervention specs at that point of the forward pass.
        """
        batch = self.tokenize(prompts)
        self._trace_batch = batch
        return self.nn.trace(self._inputs(batch), **{**self._remote_kw(None), **kwargs})

    def apply(self, interventions: Iterable[Spec | dict]) -> None:
        """Inside ``with model.trace(...)``: apply specs next to your own nnsight code.

        The specs' sites are visited in forward order, so code after this call may only
        touch later modules. Patches need their source in the batch: use `run` for those.
        """
        specs = self._specs(interventions)
        batch = getattr(self, "_trace_batch", None)
        if batch is None:
            raise RuntimeError("model.apply(...) works inside `with model.trace(prompts):`")
        if any(isinstance(s, Patch) for s in specs):
            raise ValueError("Patch specs need the source prompt in the batch: use model.run(prompt, [patch])")
        program = _TraceProgram(self, specs, {}, batch)
        program.visit(self.nn, _StepState(0, batch.lengths))

    # -- helpers used by specs and widgets ------------------------------------------
    def mean_activation(self, site: str, prompts: Sequence[str]) -> torch.Tensor:
        """Mean of a site over all real tokens of the prompts (for mean ablation)."""
        key = str(Site.parse(site))
        res = self.run(list(prompts), capture=[key], top_k=1, logits=None)
        x = res.activations[key]
        mask = torch.zeros(x.shape[:2], dtype=torch.bool)
        for b, L in enumerate(res.lengths):
            mask[b, :L] = True
        return x[mask].mean(0)

    def unembed_direction(self, direction: torch.Tensor, k: int = 10) -> list[tuple[str, float]]:
        """Tokens a residual-space direction promotes most (through the unembedding)."""
        w = _get(self.hf, self.arch.unembed).weight.detach()
        scores = w.float() @ direction.float().to(w.device)
        top = scores.topk(k)
        return [(self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices, strict=True)]


def writable_sites() -> list[str]:
    return sorted(WRITABLE)
