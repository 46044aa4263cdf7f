"""Stream a site's activations over a corpus: what SAE training, held-out evaluation and NMF read.

    for x in ActivationStream(model, "resid_post.9", corpus):       # x: [n_tokens, d_model] per batch
        ...
    X = collect_activations(model, "resid_post.9", corpus, 50_000)  # one [50_000, d_model] tensor
    X, Y = collect_activations(model, ("mlp_in.9", "mlp_out.9"))     # transcoder pairs, row-aligned
    for xb in ActivationBuffer(ActivationStream(...), size=2**17, batch_size=4096):  # shuffled batches
        ...

Windows. The corpus's texts are tokenized and packed into one token stream, texts separated
by the tokenizer's end-of-text token; the stream is cut into windows of ``context`` tokens
(each begins with BOS when the tokenizer puts one in front of a text), so every window but the
last has the same length and batches carry no padding. Each window's first ``skip_first``
positions (default 1: position 0 is an attention sink with outlier norms, see the notes) and
any padding are dropped by a reducer that runs inside the nnsight trace.

Two ways to run a batch: ``via="run"`` calls `Model.run` on the token windows with that
reducer as the capture (works with remote models: only the kept rows travel back);
``via="trace"`` (the default for local models) reads the same sites inside one nnsight trace
and stops the forward pass after the last site it needs, so the layers above it and the
unembedding never run (about 3x faster for ``resid_post.9`` of the 30-layer embedded model).
Both give identical activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .corpus import Fingerprint, iter_texts
from .sites import TOKEN_SITES, Site

Acts = Tensor | tuple[Tensor, ...]


def parse_sites(model: Any, site: str | Sequence[str]) -> list[str]:
    """Standard names of one site or a list of sites, checked against the model (layers, shape)."""
    sites = [site] if isinstance(site, str | Site) else list(site)
    if not sites:
        raise ValueError("no site given")
    out = []
    for s in sites:
        parsed = Site.parse(s)
        if parsed.name not in TOKEN_SITES:
            raise ValueError(f"site {parsed} is not a [batch, seq, width] activation; activations are read from "
                             f"{', '.join(sorted(TOKEN_SITES))}")
        if model is not None:
            model.arch.check_layer(parsed.layer)
        out.append(str(parsed))
    if len(set(out)) != len(out):
        raise ValueError(f"site listed twice: {out}")
    return out


def prefix_ids(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts in front of every text (BOS for Llama/Gemma; often none)."""
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    n = len(with_sp) - len(without)
    if n > 0 and with_sp[n:n + len(without)] == without:
        return list(with_sp[:n])
    return []


def token_windows(tokenizer: Any, corpus: Any = None, context: int = 64, text_batch: int = 64) -> Iterator[list[int]]:
    """Pack a corpus into one token stream and cut it into windows of ``context`` token ids.

    Texts are joined with the end-of-text token (when the tokenizer has one); each window
    starts with the tokenizer's own prefix (BOS) if it adds one. The last window may be shorter;
    windows of fewer than 2 tokens are dropped.
    """
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens, not {context}")
    prefix = prefix_ids(tokenizer)
    body = context - len(prefix)
    if body < 1:
        raise ValueError(f"context {context} leaves no room after the tokenizer's {len(prefix)} prefix tokens")
    sep = getattr(tokenizer, "eos_token_id", None)
    buf: list[int] = []
    texts = iter_texts(corpus)
    started = False
    while True:
        chunk = [t for _, t in zip(range(text_batch), texts, strict=False)]
        if not chunk:
            break
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            if not ids:
                continue
            if started and sep is not None:
                buf.append(int(sep))
            started = True
            buf.extend(int(i) for i in ids)
            while len(buf) >= body:
                yield prefix + buf[:body]
                del buf[:body]
    if buf and len(prefix) + len(buf) >= 2:
        yield prefix + buf


class _Keep:
    """Reducer run inside the trace: keep the non-padding positions from ``skip_first`` on, as rows."""

    def __init__(self, mask: Tensor):
        self.mask = mask

    def __call__(self, x: Tensor) -> Tensor:
        return x[self.mask.to(x.device)]


def _run_batch(model: Any, rows: list[list[int]], sites: list[str], skip_first: int, via: str) -> list[Tensor]:
    """Activations at each site for the kept positions of token-id rows: one [n_kept, width] tensor per site."""
    S = max(len(r) for r in rows)
    mask = torch.zeros(len(rows), S, dtype=torch.bool)
    for b, r in enumerate(rows):
        mask[b, skip_first:len(r)] = True
    keep = _Keep(mask)
    if via == "run":
        res = model.run(model.batch_from_ids(rows), capture={s: keep for s in sites}, top_k=0, logits=None)
        return [res.activations[s] for s in sites]
    import nnsight

    pad = model.tokenizer.pad_token_id
    ids = torch.full((len(rows), S), pad if pad is not None else 0, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
    dev = model.device
    inputs = {"input_ids": ids.to(dev), "attention_mask": (torch.arange(S)[None] < torch.tensor([len(r) for r in rows])[:, None]).long().to(dev)}
    order = sorted(sites, key=lambda s: Site.parse(s).order)
    lock = getattr(model, "lock", None) or contextlib.nullcontext()
    saved: dict[str, Tensor] = {}  # filled inside the trace (a dict made outside survives it)
    with lock, torch.inference_mode():
        with model.nn.trace(inputs) as tr:
            for s in order:
                saved[s] = nnsight.save(keep(model.site(s)))
            tr.stop()  # nothing above the last site is needed: skip the rest of the forward pass
    out = []
    for s in sites:
        out.append(saved[s].detach())
    return out


class ActivationStream:
    """Activations of one site (or several, row-aligned) over a corpus, one batch of windows at a time.

    Iterating yields a ``[n_tokens, width]`` float tensor per batch of ``batch_size`` windows (a
    tuple of them, one per site, when ``site`` is a list such as ``("mlp_in.9", "mlp_out.9")``).
    ``max_tokens`` stops after that many tokens (the last batch is cut). ``start_window`` skips
    windows without running the model (resuming); ``cycle`` starts the corpus over when it ends.
    Attributes ``windows`` and ``tokens`` count what has been yielded (``windows`` counts from
    the corpus start, skipped windows included); ``fingerprint`` hashes the windows' token ids.
    """

    def __init__(self, model: Any, site: str | Sequence[str], corpus: Any = None, *, context: int = 64,
                 batch_size: int = 16, max_tokens: int | None = None, skip_first: int = 1, start_window: int = 0,
                 cycle: bool = False, via: str = "auto", dtype: torch.dtype = torch.float32, progress: bool = True,
                 desc: str | None = None):
        if via not in ("auto", "run", "trace"):
            raise ValueError(f"via must be 'auto', 'run' or 'trace', not {via!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, not {max_tokens}")
        if not 0 <= skip_first < context:
            raise ValueError(f"skip_first must be in 0..context-1, not {skip_first}")
        self.model = model
        self.sites = parse_sites(model, site)
        self.single = isinstance(site, str | Site)
        self.corpus = corpus
        self.context, self.batch_size, self.max_tokens, self.skip_first = context, batch_size, max_tokens, skip_first
        self.start_window, self.cycle, self.dtype, self.progress = start_window, cycle, dtype, progress
        self.via = ("run" if getattr(model, "remote", False) else "trace") if via == "auto" else via
        self.desc = desc or f"activations {'+'.join(self.sites)}"
        self.windows = start_window
        self.tokens = 0
        self.epoch = 0
        self.fingerprint = Fingerprint()
        self.resume_fingerprint: str | None = None  # hash of the skipped windows (set when iteration starts)

    def _windows(self) -> Iterator[list[int]]:
        while True:
            n = 0
            for w in token_windows(self.model.tokenizer, self.corpus, self.context):
                n += 1
                yield w
            if n == 0:
                raise ValueError("the corpus gave no tokens (is it empty?)")
            if not self.cycle:
                return
            self.epoch += 1

    def __iter__(self) -> Iterator[Acts]:
        from tqdm.auto import tqdm

        self.windows, self.tokens, self.epoch, self.fingerprint = self.start_window, 0, 0, Fingerprint()
        wins = self._windows()
        for _ in range(self.start_window):  # resume: tokenization only
            try:
                self.fingerprint.update(next(wins))
            except StopIteration:
                return
        self.resume_fingerprint = self.fingerprint.hexdigest()
        bar = tqdm(total=self.max_tokens, unit="tok", unit_scale=True, desc=self.desc, disable=not self.progress,
                   leave=False)
        try:
            while self.max_tokens is None or self.tokens < self.max_tokens:
                rows = [w for _, w in zip(range(self.batch_size), wins, strict=False)]
                if not rows:
                    return
                outs = [o.to(self.dtype) for o in _run_batch(self.model, rows, self.sites, self.skip_first, self.via)]
                for r in rows:
                    self.fingerprint.update(r)
                self.windows += len(rows)
                if self.max_tokens is not None and self.tokens + len(outs[0]) > self.max_tokens:
                    outs = [o[: self.max_tokens - self.tokens] for o in outs]
                self.tokens += len(outs[0])
                bar.update(len(outs[0]))
                yield outs[0] if self.single else tuple(outs)
        finally:
            bar.close()


def collect_activations(model: Any, site: str | Sequence[str], corpus: Any = None, max_tokens: int | None = 100_000,
                        *, context: int = 64, batch_size: int = 16, skip_first: int = 1, via: str = "auto",
                        dtype: torch.dtype = torch.float32, progress: bool = True) -> Acts:
    """All activations of a site over a corpus (up to ``max_tokens``) as one ``[n_tokens, width]`` tensor.

    Rows are in corpus order (windows as `ActivationStream` cuts them, first position of each
    window dropped). A list of sites gives a tuple of row-aligned tensors (transcoder data).
    """
    stream = ActivationStream(model, site, corpus, context=context, batch_size=batch_size, max_tokens=max_tokens,
                              skip_first=skip_first, via=via, dtype=dtype, progress=progress)
    parts: list[tuple[Tensor, ...]] = []
    for out in stream:
        parts.append((out,) if isinstance(out, Tensor) else out)
    if not parts:
        raise ValueError("the corpus gave no tokens (is it empty?)")
    cols = [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]
    return cols[0] if stream.single else tuple(cols)


def _as_tuple(x: Acts) -> tuple[Tensor, ...]:
    return (x,) if isinstance(x, Tensor) else tuple(x)


class ActivationBuffer:
    """A shuffling buffer over an activation stream: batches that mix many texts.

    The buffer pulls batches from ``source`` (an `ActivationStream` or any iterable of
    ``[n, d]`` tensors or tuples of them) until it holds ``size`` tokens, shuffles them, and
    yields ``batch_size``-token batches; when fewer than ``batch_size`` are left it refills
    (the leftover tokens join the new fill) and shuffles again. Fill ``f`` is shuffled by a
    generator seeded with ``(seed, f)``, so the batches are a function of the data and the seed.
    When the source ends, the last tokens come out as a smaller batch (``drop_last=False``) or
    are dropped.

    Resuming: `state` describes the current fill (its index, the source position where it
    started, the tokens carried over into it, the batches drawn since); `ActivationBuffer.resume`
    rebuilds the same fill from a source restarted at that position and continues exactly.
    """

    def __init__(self, source: Iterable[Acts], size: int = 2**17, batch_size: int = 4096, seed: int = 0,
                 drop_last: bool = False):
        if batch_size < 1 or size < batch_size:
            raise ValueError(f"need 1 <= batch_size <= size, got batch_size={batch_size}, size={size}")
        self.source = source
        self._it = iter(source)
        self.size, self.batch_size, self.seed, self.drop_last = size, batch_size, seed, drop_last
        self.fill = -1  # index of the current fill
        self.drawn = 0  # batches drawn from the current fill
        self._data: tuple[Tensor, ...] | None = None
        self._pos = 0
        self._rest: tuple[Tensor, ...] | None = None
        self._fill_start: tuple[int | None, tuple[Tensor, ...] | None] = (None, None)
        self._fill_fingerprint: str | None = None
        self._exhausted = False
        self._single: bool | None = None  # whether the source yields bare tensors (set by the first chunk)

    def __len__(self) -> int:
        """Tokens currently held (not yet yielded)."""
        return 0 if self._data is None else len(self._data[0]) - self._pos

    def _refill(self, fill: int) -> None:
        rest = self._rest
        fp = getattr(self.source, "fingerprint", None)
        self._fill_start = (getattr(self.source, "windows", None), rest)
        self._fill_fingerprint = fp.hexdigest() if hasattr(fp, "hexdigest") else None
        parts: list[tuple[Tensor, ...]] = [rest] if rest is not None and len(rest[0]) else []
        n = sum(len(p[0]) for p in parts)
        while n < self.size and not self._exhausted:
            try:
                chunk = next(self._it)
            except StopIteration:
                self._exhausted = True
                break
            self._single = isinstance(chunk, Tensor)
            chunk = _as_tuple(chunk)
            if len(chunk[0]):
                parts.append(chunk)
                n += len(chunk[0])
        self.fill, self.drawn, self._pos = fill, 0, 0
        if self._single is None and parts:
            self._single = len(parts[0]) == 1
        if not parts:
            self._data = None
            return
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + fill)
        perm = torch.randperm(n, generator=g)
        self._data = tuple(torch.cat([p[i] for p in parts])[perm] for i in range(len(parts[0])))

    def __iter__(self) -> ActivationBuffer:
        return self

    def __next__(self) -> Acts:
        B = self.batch_size
        if len(self) < B and not self._exhausted:
            self._rest = None if self._data is None else tuple(t[self._pos:] for t in self._data)
            self._refill(self.fill + 1)
        have = len(self)
        if have == 0 or (have < B and self.drop_last):
            raise StopIteration
        take = min(B, have)
        out = tuple(t[self._pos:self._pos + take] for t in self._data)  # type: ignore[union-attr]
        self._pos += take
        self.drawn += 1
        return out[0] if self._single else out

    def state(self) -> tuple[dict[str, Any], tuple[Tensor, ...] | None]:
        """(JSON-ready position of the current fill, the tokens carried into it) for `resume`."""
        pos, rest = self._fill_start
        return {"fill": self.fill, "drawn": self.drawn, "source_position": pos, "seed": self.seed,
                "size": self.size, "batch_size": self.batch_size, "source_fingerprint": self._fill_fingerprint}, rest

    @classmethod
    def resume(cls, source: Iterable[Acts], state: dict[str, Any], rest: tuple[Tensor, ...] | None,
               drop_last: bool = False) -> ActivationBuffer:
        """A buffer continuing where `state` left off; ``source`` must restart at ``state["source_position"]``."""
        buf = cls(source, int(state["size"]), int(state["batch_size"]), int(state["seed"]), drop_last)
        if int(state["fill"]) < 0:
            return buf
        buf._rest = rest
        buf._refill(int(state["fill"]))
        want = state.get("source_fingerprint")
        have = getattr(source, "resume_fingerprint", None)  # an ActivationStream's hash of the windows it skipped
        if want is not None and have is not None and want != have:
            raise ValueError("the source does not restart where the buffer's fill began (its data differs): "
                             "was the corpus or tokenizer changed?")
        buf._fill_fingerprint = want
        for _ in range(int(state["drawn"])):
            buf._pos = min(buf._pos + buf.batch_size, len(buf._data[0]) if buf._data is not None else 0)
            buf.drawn += 1
        return buf
