"""The engine: `Model` wraps an nnsight model and compiles intervention specs into one trace.

Everything that edits or reads the model goes through `TraceProgram` (`workbench.core.program`),
which runs inside an nnsight trace (or at every step of an nnsight generation): it visits the
requested sites in forward order, applies the specs' ops, and saves reduced results. Because it
is plain nnsight code, it also runs under ``remote=True`` (NDIF) and ``remote="local"``.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import nnsight
import torch

from .arch import ArchMap, resolve
from .errors import Cancelled, WorkbenchError
from .program import Batch, Reducer, Step, TraceProgram
from .results import GenerationResult, RunResult, Token, TopK
from .sites import WRITABLE, Site
from .specs import Patch, Spec, spec_from_dict

__all__ = ["Model", "Batch", "GenerationCancelled", "writable_sites", "PromptTypeError", "ContextLengthError",
           "NonFiniteLogitsError", "AttentionMemoryWarning", "EAGER_ATTENTION_BUDGET", "TokenError", "TokenRangeError"]

#: Bytes of attention probabilities (layers x heads x tokens^2 x 4 bytes x prompts) above which a run warns.
EAGER_ATTENTION_BUDGET = 4 * 2**30


class GenerationCancelled(Cancelled):
    """Raised by `Model.generate` when its ``cancel`` event was set mid-generation."""


class PromptTypeError(WorkbenchError, TypeError):
    """A prompt is not text: `run`, `generate` and `trace` take a string or a list of strings."""


class TokenError(WorkbenchError, ValueError):
    """A text that must be one token of the model's tokenizer is not (or is not text or an id)."""


class TokenRangeError(TokenError, IndexError):
    """A token id outside the model's vocabulary."""


class ContextLengthError(WorkbenchError, ValueError):
    """A prompt (plus the tokens to generate) is longer than the model's maximum positions."""


class NonFiniteLogitsError(WorkbenchError, FloatingPointError):
    """The model produced NaN or infinite logits: there is nothing to rank."""


class AttentionMemoryWarning(UserWarning):
    """Eager attention over this many tokens needs more memory than `EAGER_ATTENTION_BUDGET`."""


def _check_prompts(prompts: Any, arg: str, one: bool = False) -> list[str]:
    """``prompts`` as a list of strings, or `PromptTypeError` naming ``arg`` and the accepted types."""
    accepted = "a string" if one else "a string or a list of strings"
    if isinstance(prompts, str):
        return [prompts]
    if one or prompts is None or isinstance(prompts, (bytes, dict)) or not isinstance(prompts, Iterable):
        raise PromptTypeError(f"{arg} must be {accepted}, not {type(prompts).__name__}")
    out = list(prompts)
    bad = [p for p in out if not isinstance(p, str)]
    if bad:
        raise PromptTypeError(f"{arg} must be {accepted}: item {out.index(bad[0])} is a {type(bad[0]).__name__}")
    return out


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


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
        self.lock = threading.RLock()  # one trace at a time on this model
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

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model takes (config ``max_position_embeddings`` / ``n_positions``), if known."""
        cfg = getattr(self.hf, "config", None)
        for attr in ("max_position_embeddings", "n_positions"):
            n = getattr(cfg, attr, None)
            if isinstance(n, int) and n > 0:
                return n
        return None

    def check_length(self, n_tokens: int, new_tokens: int = 0, rows: int = 1) -> None:
        """Refuse sequences beyond `max_positions` (`ContextLengthError`); warn when eager attention's
        probabilities (layers x heads x tokens^2 x 4 bytes x rows) would exceed `EAGER_ATTENTION_BUDGET`."""
        total = n_tokens + new_tokens
        limit = self.max_positions
        if limit is not None and total > limit:
            what = (f"the prompt has {n_tokens} tokens + max_new_tokens={new_tokens} = {total}" if new_tokens
                    else f"the prompt has {n_tokens} tokens")
            raise ContextLengthError(f"{what}, more than the model's maximum of {limit} positions: shorten the prompt")
        if getattr(getattr(self.hf, "config", None), "_attn_implementation", "eager") == "eager":
            need = self.arch.n_layers * self.arch.n_heads * total * total * 4 * rows
            if need > EAGER_ATTENTION_BUDGET:
                warnings.warn(f"eager attention over {total} tokens x {rows} prompt(s) needs about {_size(need)} of "
                              f"attention probabilities ({self.arch.n_layers} layers x {self.arch.n_heads} heads x "
                              f"{total}^2 x 4 bytes), above the budget of {_size(EAGER_ATTENTION_BUDGET)}: this may "
                              "be slow or run out of memory; shorten the prompt", AttentionMemoryWarning, stacklevel=3)

    # -- tokens --------------------------------------------------------------------
    def token_id(self, text: str | int, what: str = "target") -> int:
        """The id of ``text`` as exactly one token (no special tokens added), or a checked id.

        The one place single-token answers, targets and names are resolved: a `TokenError` shows how
        the tokenizer splits a longer text (mind the leading space: ``" Paris"`` is not ``"Paris"``),
        and a `TokenRangeError` (also an IndexError) refuses an id beyond the vocabulary.
        """
        if isinstance(text, int) and not isinstance(text, bool):
            if not 0 <= text < self.arch.vocab:
                raise TokenRangeError(f"{what} token id {text} is out of range for a vocabulary of {self.arch.vocab}")
            return int(text)
        if not isinstance(text, str) or not text:
            raise TokenError(f"{what} must be a non-empty string (one token) or a token id, not {text!r}")
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            hint = f"did you mean its first token {pieces[0]!r}? " if pieces else ""
            raise TokenError(f"{what} {text!r} is {len(ids)} tokens {pieces} (ids {ids}), not one: it must be one "
                             f"token, and targets must be single tokens ({hint}mind the leading space: ' Paris' is "
                             "not 'Paris')")
        return int(ids[0])

    def tokenize(self, prompts: str | Sequence[str], sources: Iterable[str] = ()) -> Batch:
        """Tokenize prompts (right-padded), with exact character spans per token."""
        prompts = _check_prompts(prompts, "prompts")
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
    def specs(interventions: Iterable[Spec | dict] | None) -> list[Spec]:
        """Specs (or their dicts) as a checked list of `Spec` objects."""
        out = []
        for s in interventions or ():
            out.append(spec_from_dict(s) if isinstance(s, dict) else s)
            if not isinstance(out[-1], Spec):
                raise TypeError(f"an intervention is a workbench spec or its dict, not {type(s).__name__}")
        return out

    @staticmethod
    def captures(capture: Iterable[str] | dict[str, Reducer | None] | None) -> dict[str, Reducer | None]:
        """Site names (or ``{site: reducer}``) as ``{site: reducer or None}``."""
        if capture is None:
            return {}
        if isinstance(capture, str):
            capture = [capture]
        if isinstance(capture, dict):
            return dict(capture)
        return {c: None for c in capture}

    def inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """A batch as the model's keyword inputs, on the model's device (the CPU for remote models)."""
        dev = self.device if not self.remote else torch.device("cpu")
        return {"input_ids": batch.input_ids.to(dev), "attention_mask": batch.attention_mask.to(dev)}

    def remote_kwargs(self, remote: bool | str | None = None) -> dict[str, Any]:
        """The nnsight ``remote=`` keyword for a call (``None``: the model's own setting)."""
        r = self.remote if remote is None else remote
        return {"remote": r} if r else {}

    def trace_batch(self, batch: Batch, *, remote: bool | str | None = None, **kwargs: Any) -> Any:
        """An nnsight trace of a tokenized batch: ``with model.lock, torch.inference_mode():`` then
        ``with model.trace_batch(batch):`` (nnsight reads the ``with`` block's source, so it must be
        your own ``with`` statement). Remote when the model, or ``remote``, says so.
        """
        return self.nn.trace(self.inputs(batch), **{**self.remote_kwargs(remote), **kwargs})

    def program(self, batch: Batch, interventions: Iterable[Spec | dict] | None = None,
                capture: Iterable[str] | dict[str, Reducer | None] | None = None) -> TraceProgram:
        """The `TraceProgram` of specs and captures over a batch (run it inside `trace_batch`)."""
        return TraceProgram(self, self.specs(interventions), self.captures(capture), batch)

    def layer(self, i: int) -> Any:
        """Decoder layer ``i`` of the nnsight model (an envoy: ``.input``/``.output`` inside a trace)."""
        self.arch.check_layer(i)
        return resolve(self.nn, self.arch.layers)[i]

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

        Raises `ContextLengthError` for prompts beyond the model's positions, `PromptTypeError` for
        prompts that are not text, and `NonFiniteLogitsError` when the model's last-position logits
        hold NaN or inf (unless nothing is ranked or returned: ``top_k=0, logits=None``).
        """
        specs = self.specs(interventions)
        caps = self.captures(capture)
        if isinstance(prompts, Batch):  # pre-tokenized windows (scans, exemplars)
            if any(isinstance(s, Patch) for s in specs):
                raise ValueError("Patch specs need their source prompt tokenized with the batch: pass text prompts")
            batch = prompts
            prompts = ["".join(t.text for t in row) for row in batch.tokens]
        else:
            prompts = prompts if isinstance(prompts, str) else _check_prompts(prompts, "prompts")
            batch = self.tokenize(prompts, [s.source for s in specs if isinstance(s, Patch)])
        self.check_length(batch.input_ids.shape[1], rows=batch.input_ids.shape[0])
        program = TraceProgram(self, specs, caps, batch)
        st = Step(0, batch.lengths)
        n = batch.n_main
        last = torch.tensor([L - 1 for L in batch.lengths[:n]])
        k = min(top_k, self.arch.vocab)
        if k < 0:
            raise ValueError(f"top_k must be at least 0, not {top_k}")
        if k == 0 and logits != "all":
            logits = None  # no predictions wanted: unembed one position only (see _last_logits_only)
        ctx = torch.enable_grad() if grad else torch.inference_mode()
        nn, inputs, rkw = self.nn, self.inputs(batch), self.remote_kwargs(remote)
        if self._last_logits_only(program, batch, logits, k):
            # Every prompt ends at the last padded position: unembed that position only.
            rkw = {**rkw, "logits_to_keep": 1}
            last = torch.zeros_like(last)
        with self.lock, ctx:
            with nn.trace(inputs, **rkw):
                saved = nnsight.save(program.visit(nn, st))
                lg = program.logits(nn)[:n]
                last_logits = lg[torch.arange(n), last.to(lg.device)].float()
                probs = torch.softmax(last_logits, -1)
                top = probs.topk(max(k, 1), dim=-1)
                top_p = nnsight.save(top.values)
                top_i = nnsight.save(top.indices)
                top_l = nnsight.save(last_logits.gather(-1, top.indices))
                bad = nnsight.save((~torch.isfinite(last_logits)).sum(-1))
                # Always saved: nnsight drops unsaved locals (a plain None) when the trace exits.
                kept = nnsight.save(lg[:, : max(batch.lengths[:n])].detach().clone() if logits == "all" else last_logits)
        bad = bad.cpu()
        if (k > 0 or logits is not None) and bool(bad.any()):  # only where logits are ranked or returned
            rows_ = [int(r) for r in torch.nonzero(bad).reshape(-1)]
            ints = "; ".join(s.describe() for s in specs) or "none"
            raise NonFiniteLogitsError(
                f"the model produced NaN or infinite logits at the last position of {len(rows_)} of {n} prompt(s) "
                f"(rows {rows_[:10]}, {int(bad.sum())} logits in all): nothing to rank. Interventions: {ints}; "
                f"check them and the model's dtype ({self.hf.dtype if hasattr(self.hf, 'dtype') else '?'})")
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

    def _last_logits_only(self, program: TraceProgram, batch: Batch, logits: str | None, top_k: int = 1) -> bool:
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
        specs = self.specs(interventions)
        if not isinstance(prompt, str):
            _check_prompts(prompt, "prompt", one=not isinstance(prompt, (list, tuple)))
        batch = self.tokenize(prompt, [s.source for s in specs if isinstance(s, Patch)])
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        self.check_length(batch.lengths[0], max_new_tokens)
        program = TraceProgram(self, specs, {}, batch, new_tokens=max_new_tokens)
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
        nn, inputs = self.nn, self.inputs(batch)
        kw.update(self.remote_kwargs(remote))
        with self.lock, torch.inference_mode(), warnings.catch_warnings():
            # A step loop cut short by an end-of-sequence token is normal, not worth a warning.
            warnings.filterwarnings("ignore", message=".*was never reached: the loop asked for a step")
            with nn.generate(**kw) as tr:
                with tr.invoke(inputs):
                    if program.sites:
                        for step in tr.iter[:max_new_tokens]:
                            program.visit(nn, Step(step, lengths))
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
        return TraceProgram(self, [], {}, Batch(torch.zeros(1, 1), torch.zeros(1, 1), [[]], 1)).read(self.nn, site, {})

    def trace(self, prompts: str | Sequence[str], **kwargs: Any):
        """An nnsight trace over prompts tokenized like `run` does (for inline nnsight code).

        Inside it, ``model.site(name)`` reads or writes a standard site and
        ``model.apply(specs)`` applies intervention specs at that point of the forward pass.
        Use it as ``with model.trace(prompts):``: the block holds ``model.lock`` from the call
        until it ends, so a `run` or `generate` from another thread (a widget's rerun) waits.
        """
        batch = self.tokenize(prompts)
        self.check_length(batch.input_ids.shape[1], rows=batch.input_ids.shape[0])
        tracer = self.nn.trace(self.inputs(batch), **{**self.remote_kwargs(None), **kwargs})
        from nnsight.tracing.tracer import WithBlockNotFoundError

        try:
            # Find the caller's `with` block now (capture() looks two frames up: this method's
            # caller, as when the tracer's own __enter__ calls it); nnsight reuses it on enter.
            tracer.capture()
        except WithBlockNotFoundError:
            self._trace_batch = batch
            return tracer  # not a `with` block: nnsight says so when it is used
        body = getattr(tracer, "node", None)
        if body is not None and body.body and type(body.body[0]).__name__ in ("Try", "TryStar"):
            self._trace_batch = batch
            return tracer  # nnsight refuses this block on enter, before any exit could release a lock
        self.lock.acquire()
        self._trace_batch = batch
        try:
            tracer.__class__ = _locked_tracer(type(tracer))
            _TRACE_LOCKS[id(tracer)] = self.lock  # not on the tracer: remote runs pickle it
        except BaseException:
            self.lock.release()
            raise
        return tracer

    def apply(self, interventions: Iterable[Spec | dict]) -> None:
        """Inside ``with model.trace(...)``: apply specs next to your own nnsight code.

        The specs' sites are visited in forward order, so code after this call may only
        touch later modules. Patches need their source in the batch: use `run` for those.
        """
        specs = self.specs(interventions)
        batch = getattr(self, "_trace_batch", None)
        if batch is None:
            raise RuntimeError("model.apply(...) works inside `with model.trace(prompts):`")
        if any(isinstance(s, Patch) for s in specs):
            raise ValueError("Patch specs need the source prompt in the batch: use model.run(prompt, [patch])")
        program = TraceProgram(self, specs, {}, batch)
        program.visit(self.nn, Step(0, batch.lengths))

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
        w = resolve(self.hf, self.arch.unembed).weight.detach()
        scores = w.float() @ direction.float().to(w.device)
        top = scores.topk(k)
        return [(self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices, strict=True)]


#: id(tracer) -> the model lock its `Model.trace` call holds until the tracer's ``__exit__``.
_TRACE_LOCKS: dict[int, Any] = {}


def _release_trace_lock(tracer: Any) -> None:
    lock = _TRACE_LOCKS.pop(id(tracer), None)
    if lock is not None:
        lock.release()


@functools.cache
def _locked_tracer(cls: type) -> type:
    """``cls`` whose ``__exit__`` releases the model lock `Model.trace` took (``__enter__`` is untouched:
    nnsight reads the caller's frame from it)."""

    class Locked(cls):  # type: ignore[misc, valid-type]
        def __exit__(self, *exc: Any) -> Any:
            try:
                return super().__exit__(*exc)
            finally:
                _release_trace_lock(self)

    Locked.__name__ = Locked.__qualname__ = cls.__name__
    return Locked


def writable_sites() -> list[str]:
    return sorted(WRITABLE)
