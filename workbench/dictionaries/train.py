"""Train TopK sparse autoencoders and transcoders on a model's activations (Gao et al. 2024).

    sae = wb.train_sae(model, "resid_post.9")                          # defaults: 10-25 min on 2 CPU cores
    tc = wb.train_sae(model, "mlp_in.9", out_site="mlp_out.9")        # a transcoder
    sae = wb.train_sae(model, "resid_post.9", checkpoint="runs/sae9")  # Ctrl-C, then the same call resumes
    cfg = wb.dictionaries.TrainerConfig(k=64, expansion=16, max_tokens=4_000_000)  # every setting, in one object
    sae = wb.train_sae(model, "resid_post.9", config=cfg, seed=1)       # keywords override its fields

The recipe. ``x`` is an activation of ``site`` and ``y`` the target (``x`` itself for an SAE,
the activation of ``out_site`` for a transcoder)::

    pre  = (x - b_dec) @ W_enc + b_enc        # SAE; a transcoder encodes x as is (no b_pre)
    acts = relu(topk(pre, k))                  # the k largest pre-activations, the rest zero
    y^   = acts @ W_dec + b_dec                # decoder rows have unit norm
    loss = FVU + auxk_alpha * AuxK             # FVU = |y - y^|^2 / |y - mean(y)|^2 over the batch

AuxK (dead latents): a latent that has not fired in the last ``dead_tokens`` training tokens is
dead; the top ``k_aux`` (default ``d_in // 2``) dead pre-activations must reconstruct the residual
``y - y^`` (its loss is scaled by ``min(n_dead / k_aux, 1)``, as in sparsify), which pulls dead
latents back towards the data. Decoder rows start as random unit vectors, ``W_enc`` as
``W_dec^T``, ``b_dec`` as the geometric median of the first batch (transcoders: the mean of the
targets); every step removes the gradient component parallel to each decoder row, takes an Adam
step and renormalizes the rows. The learning rate is constant, then decays linearly to zero over
the last ``lr_decay`` fraction of steps. The encoder's backward pass scatters the gradients of
the selected latents only, and decoding is a sparse ``embedding_bag``: a step costs about two
dense ``[batch, d_in] x [d_in, n_latents]`` matmuls.

Data. By default the activations are collected once (``data_tokens`` at most; the default corpus
gives about 106k tokens with 64-token windows) and kept in memory, and training makes several
epochs over them (``max_tokens`` token-steps in all, a fresh permutation per epoch): collecting
is the slow part on a CPU (the forward pass up to ``site``), training reuses it. The last
``holdout_tokens`` of the collection (the last texts of the corpus) are held out to report a
held-out FVU. ``buffer_tokens=N`` streams instead: the corpus is read again as needed through an
`ActivationBuffer` of ``N`` tokens (for corpora that do not fit in memory).

Defaults, for the embedded SmolLM2-135M (d_model 576) on this 2-core CPU: ``n_latents = 8 * d_in``
(4608), ``k = 32``, batch 4096, ``max_tokens = 1M`` token-steps (~10 epochs of the default
corpus), ``lr = 8e-4 / sqrt(n_latents / 2**14)`` (the usual ``2e-4 / sqrt(n / 2**14)`` scaling
with the constant calibrated here: 1.5e-3 at 4608 latents reached held-out FVU 0.13 after 1.1M
token-steps, where the plain rule is tuned for runs a thousand times longer), ``dead_tokens =
max_tokens / 5`` (clipped to [batch_size, 10M]). Epochs over a small collection keep helping:
with only 42k tokens of ``resid_post.9`` (4608 latents, k=32) the held-out FVU went 0.49, 0.25,
0.19, 0.17 after 1, 4, 7 and 12 epochs. Time: collecting ``resid_post.9`` reads 10 of the 30
layers (the trace stops there); measured here while other jobs shared the 2 cores, collection
ran at 150-400 tokens/s and training at 1.1k-1.8k tokens/s, so the defaults take 10-25 minutes.

Checkpoints (``checkpoint=folder``): every ``checkpoint_every`` steps, on Ctrl-C and on
``cancel``, the parameters, Adam moments and dead-latent counters go to a safetensors file and
the step, settings and history to ``state.json`` (written last, atomically: the commit point).
Collected activations are cached in the same folder. Every random choice is a function of
``seed`` and the step (initialization from ``seed``; epoch ``e``'s permutation from ``(seed,
e)``), so ``train_sae(..., resume=True)`` after an interruption gives the same weights as a run
that never stopped.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.activations import (
    ActivationBuffer,
    ActivationStream,
    parse_sites,
    prefix_ids,
    token_windows,
)
from ..core.checkpoints import StepCheckpoint
from ..core.corpus import Fingerprint, corpus_name
from ..core.errors import Cancelled, WorkbenchError
from ..core.fileio import atomic_tensors
from ..core.sites import Site
from .architectures import TopK
from .dictionary import Dictionary

__all__ = ["train_sae", "TrainerConfig", "TopKTrainer", "TrainingCancelled", "CheckpointError", "geometric_median"]

FORMAT = "workbench-sae-train"
VERSION = 1
DATA_FILE = "activations.safetensors"


class CheckpointError(WorkbenchError, ValueError):
    """A training checkpoint is unreadable, corrupt or inconsistent."""


class TrainingCancelled(Cancelled):
    """Raised by `train_sae` when its ``cancel`` event was set: ``.step``, ``.checkpoint`` (folder or
    None) and ``.dictionary`` (the dictionary as trained so far, or None while collecting), which is
    also ``.partial``. The same call resumes from the checkpoint."""

    def __init__(self, step: int, checkpoint: Path | None, dictionary: Dictionary | None):
        where = f"; resume from {checkpoint}" if checkpoint else ""
        super().__init__(f"training cancelled at step {step}{where}", partial=dictionary)
        self.step, self.checkpoint, self.dictionary = step, checkpoint, dictionary


# -- settings --------------------------------------------------------------------------------------
#: The fields of `TrainerConfig` that define the trained weights: a checkpoint resumes only with the same ones.
RECIPE = ("n_latents", "k", "batch_size", "max_tokens", "lr", "lr_decay", "auxk_alpha", "k_aux", "dead_tokens",
          "b_dec_init", "betas", "eps", "seed", "transcoder")


@dataclass
class TrainerConfig:
    """Every setting of a TopK SAE / transcoder run (``None`` fields are filled by `resolved`).

    The recipe (`RECIPE`): ``n_latents`` (None: ``expansion * d_in``), ``k``, ``batch_size``,
    ``max_tokens`` (training token-steps), ``lr`` (None: ``8e-4 / sqrt(n_latents / 2**14)``),
    ``lr_decay``, ``auxk_alpha``, ``k_aux``, ``dead_tokens``, ``b_dec_init``, Adam's ``betas`` and
    ``eps``, ``seed``, ``transcoder`` (set by `train_sae` from ``out_site``). The data (part of a
    checkpoint's data signature): ``data_tokens`` (collected once and reused over epochs; None: the
    whole corpus), ``holdout_tokens``, ``buffer_tokens`` (stream through a shuffling buffer
    instead), ``context``, ``collect_batch_size``, ``via``. The run: ``checkpoint_every`` (steps),
    ``device``.
    """

    n_latents: int | None = None
    k: int = 32
    batch_size: int = 4096
    max_tokens: int = 1_000_000
    lr: float | None = None
    lr_decay: float = 0.2
    auxk_alpha: float = 1 / 32
    k_aux: int | None = None
    dead_tokens: int | None = None
    b_dec_init: str = "median"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0
    transcoder: bool = False
    expansion: int = 8
    data_tokens: int | None = 250_000
    holdout_tokens: int = 8192
    buffer_tokens: int | None = None
    context: int = 64
    collect_batch_size: int = 16
    via: str = "auto"
    checkpoint_every: int = 50
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if isinstance(self.device, torch.device):
            self.device = str(self.device)
        ints = {"k": 1, "batch_size": 1, "max_tokens": 1, "expansion": 1}
        if self.n_latents is not None:
            ints = {"n_latents": 1, **ints}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, not {v!r}")
        if self.n_latents is not None and self.k > self.n_latents:
            raise ValueError(f"k={self.k} is larger than n_latents={self.n_latents}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, not {self.lr!r}")
        if not 0 <= self.lr_decay <= 1:
            raise ValueError(f"lr_decay is the fraction of steps with a decaying lr, in [0, 1]; got {self.lr_decay}")
        if not (math.isfinite(self.auxk_alpha) and self.auxk_alpha >= 0):
            raise ValueError(f"auxk_alpha must be >= 0, not {self.auxk_alpha!r}")
        for name in ("k_aux", "dead_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, not {v!r}")
        if self.b_dec_init not in ("median", "mean", "zero"):
            raise ValueError(f"b_dec_init must be 'median', 'mean' or 'zero', not {self.b_dec_init!r}")
        if self.buffer_tokens is not None and self.buffer_tokens < self.batch_size:
            raise ValueError(f"buffer_tokens ({self.buffer_tokens}) must be at least batch_size ({self.batch_size})")
        if self.checkpoint_every < 1 or self.collect_batch_size < 1 or self.holdout_tokens < 0:
            raise ValueError("checkpoint_every and collect_batch_size must be >= 1, holdout_tokens >= 0")
        if self.data_tokens is not None and self.data_tokens < 1:
            raise ValueError(f"data_tokens must be at least 1 (or None for the whole corpus), not {self.data_tokens}")

    @property
    def steps(self) -> int:
        return -(-self.max_tokens // self.batch_size)

    def resolved(self, d_in: int) -> TrainerConfig:
        """A copy with the defaults that depend on sizes filled in (see the module docstring)."""
        n = self.n_latents if self.n_latents is not None else self.expansion * d_in
        lr = self.lr if self.lr is not None else 8e-4 / math.sqrt(n / 2**14)
        k_aux = self.k_aux if self.k_aux is not None else max(1, d_in // 2)
        dead = self.dead_tokens if self.dead_tokens is not None else min(10_000_000, max(self.batch_size, self.max_tokens // 5))
        return replace(self, n_latents=int(n), lr=float(lr), k_aux=int(k_aux), dead_tokens=int(dead))

    def recipe(self) -> dict[str, Any]:
        """The `RECIPE` fields (what a checkpoint stores and must match to resume)."""
        d = self.to_dict()
        return {k: d[k] for k in RECIPE}

    def lr_at(self, step: int) -> float:
        """The learning rate at a step: constant, then a linear decay to 0 over the last ``lr_decay`` of steps."""
        assert self.lr is not None
        n = self.steps
        start = n - int(round(self.lr_decay * n))
        if step < start or n == start:
            return self.lr
        return self.lr * (n - step) / (n - start)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainerConfig:
        return cls(**{**d, "betas": tuple(d.get("betas", (0.9, 0.999)))})


# -- the model -----------------------------------------------------------------------------------
class _GatherPre(torch.autograd.Function):
    """Encoder pre-activations at chosen latents, values computed beforehand; the backward pass
    scatters the gradients of those latents only: ``dW_enc = x_c^T G``, ``db_enc = sum G`` and, with
    a tied input bias (``x_c = x - b_pre``), ``db_pre = -W_enc sum G``. ``buf`` is a zero
    ``[B, n_latents]`` scratch tensor, left zero again afterwards (no refill every step)."""

    @staticmethod
    def forward(ctx: Any, vals: Tensor, xc: Tensor, W_enc: Tensor, b_enc: Tensor, b_pre: Tensor | None,
                idx: Tensor, buf: Tensor) -> Tensor:
        ctx.save_for_backward(xc, W_enc, idx)
        ctx.tied, ctx.buf = b_pre is not None, buf
        return vals.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        xc, W_enc, idx = ctx.saved_tensors
        G = ctx.buf
        G.scatter_add_(1, idx, g)
        gW = xc.T @ G
        G.scatter_(1, idx, 0.0)
        gb = torch.zeros(W_enc.shape[1], dtype=g.dtype, device=g.device).index_add_(0, idx.flatten(), g.flatten())
        gpre = -(W_enc @ gb) if ctx.tied else None
        return None, None, gW, gb, gpre, None, None


def geometric_median(x: Tensor, iters: int = 100, tol: float = 1e-7) -> Tensor:
    """The geometric median of the rows of ``x`` (Weiszfeld's algorithm, float64)."""
    xd = x.double()
    m = xd.mean(0)
    for _ in range(iters):
        w = 1.0 / (xd - m).norm(dim=1).clamp_min(1e-12)
        new = (w[:, None] * xd).sum(0) / w.sum()
        done = (new - m).norm() <= tol * max(float(m.norm()), 1e-12)
        m = new
        if done:
            break
    return m.to(x.dtype)


_ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")
_PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


class TopKTrainer:
    """A TopK SAE (or transcoder) and its Adam state; `step` trains on one batch.

    Use it to train from your own batches (e.g. an `ActivationBuffer`); `train_sae` wraps it
    with data collection, progress, checkpoints and resumption.
    """

    def __init__(self, cfg: TrainerConfig, d_in: int, d_out: int | None = None,
                 device: str | torch.device | None = None):
        self.cfg = cfg.resolved(d_in)
        self.d_in, self.d_out = d_in, d_out if d_out is not None else d_in
        if not self.cfg.transcoder and self.d_out != d_in:
            raise ValueError(f"an SAE reconstructs its input: d_out={self.d_out} must equal d_in={d_in}")
        self.device = torch.device(self.cfg.device if device is None else device)
        n = self.cfg.n_latents
        g = torch.Generator().manual_seed(int(self.cfg.seed))
        W_dec = torch.randn(n, self.d_out, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if self.d_out == d_in:
            W_enc = W_dec.T.clone()
        else:
            W_enc = torch.randn(d_in, n, generator=g) / math.sqrt(d_in)
        self.W_enc = torch.nn.Parameter(W_enc.contiguous().to(self.device))
        self.b_enc = torch.nn.Parameter(torch.zeros(n, device=self.device))
        self.W_dec = torch.nn.Parameter(W_dec.to(self.device))
        self.b_dec = torch.nn.Parameter(torch.zeros(self.d_out, device=self.device))
        self.opt = torch.optim.Adam(self.params, lr=self.cfg.lr, betas=self.cfg.betas, eps=self.cfg.eps)
        self.since_fired = torch.zeros(n, dtype=torch.long, device=self.device)
        self.fire_count = torch.zeros(n, dtype=torch.long, device=self.device)
        self.fire_tokens = 0
        self.step_count = 0
        self.initialized = False
        self.fvu_ema: float | None = None
        self.history: list[float] = []
        self._buf: Tensor | None = None  # backward scratch, see _GatherPre

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [self.W_enc, self.b_enc, self.W_dec, self.b_dec]

    @property
    def tied(self) -> bool:
        """Whether the input is centred by ``b_dec`` before encoding (SAEs, not transcoders)."""
        return not self.cfg.transcoder

    def init_from(self, x: Tensor, y: Tensor) -> None:
        """Set ``b_dec`` from the first batch (geometric median or mean of the targets)."""
        with torch.no_grad():
            y = y.to(self.device, torch.float32)
            how = "mean" if self.cfg.transcoder and self.cfg.b_dec_init == "median" else self.cfg.b_dec_init
            if how == "median":
                self.b_dec.copy_(geometric_median(y))
            elif how == "mean":
                self.b_dec.copy_(y.mean(0))
        self.initialized = True

    def _check(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"inputs must be [batch, {self.d_in}], got {list(x.shape)}")
        if y.dim() != 2 or y.shape != (x.shape[0], self.d_out):
            raise ValueError(f"targets must be [{x.shape[0]}, {self.d_out}], got {list(y.shape)}")
        return x.to(self.device, torch.float32), y.to(self.device, torch.float32)

    def encode_topk(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_c, pre [B, n], values [B, k], indices [B, k])`` without gradients (``x_c``: centred input)."""
        with torch.no_grad():
            xc = x - self.b_dec if self.tied else x
            pre = xc @ self.W_enc
            pre += self.b_enc  # (addmm would first copy the bias into all B x n entries)
            vals, idx = pre.topk(self.cfg.k, dim=1, sorted=False)
        return xc, pre, vals, idx

    def reconstruct(self, x: Tensor) -> Tensor:
        """The reconstruction of a batch (no gradients)."""
        with torch.no_grad():
            _, _, vals, idx = self.encode_topk(x.to(self.device, torch.float32))
            return F.embedding_bag(idx, self.W_dec, per_sample_weights=vals.relu(), mode="sum") + self.b_dec

    def step(self, x: Tensor, y: Tensor | None = None, lr: float | None = None) -> dict[str, float]:
        """One training step on a batch (``y``: transcoder targets). Returns its statistics."""
        cfg = self.cfg
        x, y = self._check(x, x if y is None else y)
        if not self.initialized:
            self.init_from(x, y)
        B, k = x.shape[0], cfg.k
        xc, pre, vals, idx = self.encode_topk(x)
        with torch.no_grad():
            dead = self.since_fired >= cfg.dead_tokens
            n_dead = int(dead.sum())
            use_aux = cfg.auxk_alpha > 0 and n_dead > 0
            if use_aux:
                dead_idx = dead.nonzero().squeeze(1)
                aux_vals, j = pre[:, dead_idx].topk(min(cfg.k_aux, n_dead), dim=1, sorted=False)
                aux_idx = dead_idx[j]
                all_vals, all_idx = torch.cat([vals, aux_vals], 1), torch.cat([idx, aux_idx], 1)
            else:
                all_vals, all_idx = vals, idx
            y_var = (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)
        del pre
        for p in self.params:
            p.grad = None
        if self._buf is None or self._buf.shape[0] != B:
            self._buf = torch.zeros(B, cfg.n_latents, device=self.device)
        v = _GatherPre.apply(all_vals, xc, self.W_enc, self.b_enc, self.b_dec if self.tied else None, all_idx,
                             self._buf)
        acts = v[:, :k].relu()
        err = F.embedding_bag(idx, self.W_dec, per_sample_weights=acts, mode="sum") + self.b_dec - y
        fvu = err.pow(2).sum() / y_var
        loss = fvu
        auxk = torch.zeros(())
        if use_aux:
            e_hat = F.embedding_bag(aux_idx, self.W_dec, per_sample_weights=v[:, k:].relu(), mode="sum")
            auxk = (e_hat + err.detach()).pow(2).sum() / y_var * min(n_dead / cfg.k_aux, 1.0)
            loss = loss + cfg.auxk_alpha * auxk
        loss.backward()
        with torch.no_grad():
            Wd, g = self.W_dec, self.W_dec.grad
            g -= (g * Wd).sum(1, keepdim=True) * Wd  # keep the rows' norm: no radial gradient
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr_at(self.step_count) if lr is None else lr
            self.opt.step()
            Wd /= Wd.norm(dim=1, keepdim=True).clamp_min(1e-12)
            a = acts.detach()
            fired = idx[a > 0]
            self.since_fired += B
            self.since_fired[fired] = 0
            if self.step_count >= cfg.steps - max(1, cfg.steps // 4):  # firing density over the last quarter
                self.fire_count += torch.bincount(fired, minlength=cfg.n_latents)
                self.fire_tokens += B
            l0 = float((a > 0).sum(1).float().mean())
            n_dead_after = int((self.since_fired >= cfg.dead_tokens).sum())
        f = float(fvu.detach())
        self.fvu_ema = f if self.fvu_ema is None else 0.9 * self.fvu_ema + 0.1 * f
        self.history.append(round(f, 6))
        self.step_count += 1
        return {"step": self.step_count, "fvu": f, "fvu_ema": self.fvu_ema, "auxk": float(auxk.detach()), "l0": l0,
                "n_dead": n_dead_after, "dead_fraction": n_dead_after / cfg.n_latents,
                "lr": self.opt.param_groups[0]["lr"]}

    def fvu(self, x: Tensor, y: Tensor | None = None, chunk: int = 4096) -> float:
        """Fraction of variance unexplained over a whole set (no gradients)."""
        y = x if y is None else y
        num, den = 0.0, 0.0
        mean = y.double().mean(0)
        for i in range(0, len(x), chunk):
            yb = y[i:i + chunk].to(self.device, torch.float32)
            num += float((self.reconstruct(x[i:i + chunk]) - yb).double().pow(2).sum())
            den += float((yb.double() - mean.to(self.device)).pow(2).sum())
        return num / max(den, 1e-300)

    # -- state ---------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {n: getattr(self, n).detach().cpu() for n in _PARAMS}
        for n in _PARAMS:
            st = self.opt.state.get(getattr(self, n), {})
            for key in _ADAM_KEYS:
                if key in st:
                    out[f"adam.{n}.{key}"] = torch.as_tensor(st[key]).detach().cpu().reshape(-1)
        out["since_fired"] = self.since_fired.cpu()
        out["fire_count"] = self.fire_count.cpu()
        return out

    def state_info(self) -> dict[str, Any]:
        return {"step": self.step_count, "initialized": self.initialized, "fvu_ema": self.fvu_ema,
                "fire_tokens": self.fire_tokens, "history": self.history}

    def load_state(self, tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
        n = self.cfg.n_latents
        want = {"W_enc": (self.d_in, n), "b_enc": (n,), "W_dec": (n, self.d_out), "b_dec": (self.d_out,),
                "since_fired": (n,), "fire_count": (n,)}
        for name, shape in want.items():
            t = tensors.get(name)
            if t is None or tuple(t.shape) != shape:
                raise CheckpointError(f"checkpoint tensor {name!r} is missing or has shape "
                                      f"{None if t is None else list(t.shape)}, expected {list(shape)}")
        with torch.no_grad():
            for name in _PARAMS:
                getattr(self, name).copy_(tensors[name].to(self.device))
        self.since_fired = tensors["since_fired"].to(self.device, torch.long).clone()
        self.fire_count = tensors["fire_count"].to(self.device, torch.long).clone()
        self.opt.state.clear()
        for name in _PARAMS:
            p = getattr(self, name)
            keys = [f"adam.{name}.{key}" for key in _ADAM_KEYS]
            if all(key in tensors for key in keys):
                ea, eas, st = (tensors[key] for key in keys)
                if ea.numel() != p.numel() or eas.numel() != p.numel():
                    raise CheckpointError(f"checkpoint Adam state of {name} has the wrong size")
                self.opt.state[p] = {"step": st.reshape(()).clone(), "exp_avg": ea.reshape(p.shape).to(self.device).clone(),
                                     "exp_avg_sq": eas.reshape(p.shape).to(self.device).clone()}
        self.step_count = int(info["step"])
        self.initialized = bool(info["initialized"])
        self.fvu_ema = info.get("fvu_ema")
        self.fire_tokens = int(info.get("fire_tokens", 0))
        self.history = [float(h) for h in info.get("history", [])]

    def to_dictionary(self, site: str, out_site: str | None = None, meta: dict[str, Any] | None = None) -> Dictionary:
        """The trained weights as a `Dictionary` (architecture ``"topk"``, on the CPU)."""
        t = {n: getattr(self, n).detach().cpu().clone() for n in _PARAMS}
        meta = dict(meta or {})
        if self.fire_tokens:
            meta["sparsity"] = torch.log10(self.fire_count.cpu().double() / self.fire_tokens + 1e-10).float()
        return Dictionary(W_enc=t["W_enc"], b_enc=t["b_enc"], W_dec=t["W_dec"], b_dec=t["b_dec"], architecture=TopK.name,
                          site=site, out_site=out_site, k=self.cfg.k, b_pre=t["b_dec"].clone() if self.tied else None,
                          meta=meta)


# -- checkpoints ------------------------------------------------------------------------------------
def _checkpoint(path: str | Path) -> StepCheckpoint:
    """An SAE training folder: ``state.json`` (commit point) + ``state-<step>.safetensors`` (+ cached data)."""
    return StepCheckpoint(path, fmt=FORMAT, version=VERSION, what="SAE training", error=CheckpointError,
                          required=("state", "step", "config", "data", "trainer"))


# -- data -------------------------------------------------------------------------------------------
class _EpochBatches:
    """Batches from in-memory data: epoch ``e`` is the permutation drawn from ``(seed, e)``; batch ``s``
    is tokens ``[s*B, (s+1)*B)`` of the epochs laid end to end (a function of seed and step)."""

    def __init__(self, data: tuple[Tensor, ...], batch_size: int, seed: int):
        self.data, self.B, self.seed = data, batch_size, seed
        self.n = len(data[0])
        self._perm: tuple[int, Tensor] | None = None

    def perm(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def batch(self, step: int) -> tuple[Tensor, ...]:
        pos, need, parts = step * self.B, self.B, []
        while need:
            e, off = divmod(pos, self.n)
            take = min(need, self.n - off)
            parts.append(self.perm(e)[off:off + take])
            pos, need = pos + take, need - take
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)
        return tuple(t[idx] for t in self.data)


class _Interrupts:
    """While active (main thread), Ctrl-C sets a flag that the loop checks between steps; a second
    Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._handle)
            except ValueError:
                self._old = None
        return self

    def _handle(self, *args: Any) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _data_signature(model: Any, sites: list[str], corpus: Any, context: int, data_tokens: int | None,
                    holdout_tokens: int, buffer_tokens: int | None, activations: Any) -> dict[str, Any]:
    if activations is not None:
        ts = activations if isinstance(activations, tuple) else (activations,)
        return {"source": "activations", "sites": sites, "shapes": [list(t.shape) for t in ts],
                "checksum": [round(float(t[:4096].double().sum()), 4) for t in ts]}
    return {"source": "corpus", "sites": sites, "model": getattr(model, "name", ""), "corpus": corpus_name(corpus),
            "context": context, "skip_first": 1, "data_tokens": data_tokens, "holdout_tokens": holdout_tokens,
            "buffer_tokens": buffer_tokens}


def _collect_cached(model: Any, sites: list[str], corpus: Any, ck: StepCheckpoint | None, sig: dict[str, Any], *,
                    context: int, data_tokens: int | None, batch_size: int, via: str, progress: bool,
                    stop: Callable[[], str | None]) -> tuple[Tensor, ...]:
    """The activations for in-memory training, from the checkpoint's cache when it matches; a partial
    cache (interrupted collection) is continued. ``stop()`` says why to stop ('interrupt'/'cancel')."""
    sig_json = json.dumps(sig, sort_keys=True)
    have: list[tuple[Tensor, ...]] = []
    start, fp = 0, None
    path = ck.path / DATA_FILE if ck is not None else None
    if path is not None and path.exists():
        tensors, meta = ck.load_tensors(path)  # type: ignore[union-attr]
        if meta.get("signature") == sig_json and all(f"x{i}" in tensors for i in range(len(sites))):
            data = tuple(tensors[f"x{i}"] for i in range(len(sites)))
            start, fp = int(meta.get("windows", -1)), meta.get("fingerprint")
            if _windows_fingerprint(model.tokenizer, corpus, context, start) != fp:
                raise CheckpointError(f"{path}: the cached activations came from other token windows (the corpus "
                                      "or tokenizer changed); delete the file (or use another folder) to collect again")
            if meta.get("complete") == "1":
                return data
            have = [data]
    remaining = None if data_tokens is None else data_tokens - sum(len(h[0]) for h in have)
    stream = ActivationStream(model, sites, corpus, context=context, batch_size=batch_size,
                              max_tokens=remaining if remaining is None or remaining > 0 else 1,
                              start_window=start, via=via, progress=progress, desc=f"collect {'+'.join(sites)}")

    def save(complete: bool) -> tuple[Tensor, ...]:
        cols = tuple(torch.cat([h[i] for h in have]) for i in range(len(sites)))
        if path is not None:
            ck.path.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            atomic_tensors(path, {f"x{i}": c for i, c in enumerate(cols)},
                            {"signature": sig_json, "complete": "1" if complete else "0",
                             "windows": str(stream.windows), "fingerprint": stream.fingerprint.hexdigest()})
        return cols

    if remaining is None or remaining > 0:
        for out in stream:
            have.append((out,) if isinstance(out, Tensor) else out)
            why = stop()
            if why:
                save(False)
                raise _Stop(why)
    if not have:
        raise ValueError("the corpus gave no tokens (is it empty?)")
    if remaining is not None and remaining <= 0:
        stream.windows = start
        stream.fingerprint = _Hex(fp)
    return save(True)


def _windows_fingerprint(tokenizer: Any, corpus: Any, context: int, n: int) -> str | None:
    """The `Fingerprint` of the first ``n`` token windows of a corpus (None if it has fewer)."""
    if n < 0:
        return None
    fp, count = Fingerprint(), 0
    for w in token_windows(tokenizer, corpus, context):
        if count == n:
            break
        fp.update(w)
        count += 1
    return fp.hexdigest() if count == n else None


class _Hex:
    """A finished fingerprint (what `Fingerprint.hexdigest` returned before)."""

    def __init__(self, h: str | None):
        self.h = h or ""

    def hexdigest(self) -> str:
        return self.h


class _Stop(Exception):
    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def _stream_batches(model: Any, sites: list[str], corpus: Any, *, context: int, buffer_tokens: int,
                    batch_size: int, seed: int, via: str, collect_batch_size: int,
                    resume: tuple[dict[str, Any], tuple[Tensor, ...] | None] | None) -> ActivationBuffer:
    start = 0
    if resume is not None and resume[0].get("source_position") is not None:
        start = int(resume[0]["source_position"])
    stream = ActivationStream(model, sites, corpus, context=context, batch_size=collect_batch_size, cycle=True,
                              start_window=start, via=via, progress=False)
    if resume is not None:
        return ActivationBuffer.resume(stream, resume[0], resume[1], drop_last=True)
    return ActivationBuffer(stream, buffer_tokens, batch_size, seed, drop_last=True)


# -- the entry point ---------------------------------------------------------------------------------
_CALL_OPTIONS = ("out_site", "activations", "checkpoint", "resume", "cancel", "on_step", "progress")


def _config(config: TrainerConfig | None, options: dict[str, Any]) -> TrainerConfig:
    """``config`` (default: `TrainerConfig()`) with the keyword ``options`` overriding its fields."""
    if config is not None and not isinstance(config, TrainerConfig):
        raise TypeError(f"config must be a TrainerConfig, not {type(config).__name__}")
    names = {f.name for f in fields(TrainerConfig)} - {"transcoder"}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"train_sae() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; valid: "
                        f"{', '.join(sorted(names | set(_CALL_OPTIONS)))}")
    return replace(config, **options) if config is not None else TrainerConfig(**options)


def train_sae(model: Any, site: str, corpus: Any = None, config: TrainerConfig | None = None, *,
              out_site: str | None = None, activations: Tensor | tuple[Tensor, Tensor] | None = None,
              checkpoint: str | Path | None = None, resume: bool = True, cancel: threading.Event | None = None,
              on_step: Callable[[dict[str, float]], None] | None = None, progress: bool = True,
              **options: Any) -> Dictionary:
    """Train a TopK SAE on ``site`` (a transcoder ``site -> out_site`` when ``out_site`` is given).

    The settings are a `TrainerConfig` (see it and the module docstring for the recipe and the
    defaults); any of its fields may also be given as a keyword, overriding ``config``:
    ``train_sae(model, site, corpus, n_latents=4608, k=32, max_tokens=2_000_000, lr=1e-3, seed=1,
    batch_size=4096, data_tokens=..., buffer_tokens=..., device="cuda")``. ``activations``:
    pre-collected ``[n, d_in]`` inputs (or ``(inputs, targets)`` for a transcoder) instead of a
    corpus; ``model`` may then be None. ``on_step(stats)`` is called after every step with
    ``step, fvu, fvu_ema, auxk, l0, n_dead, dead_fraction, lr``. ``checkpoint``: a folder to
    checkpoint into and resume from (``resume=False`` starts over). ``cancel`` (a
    `threading.Event`) stops after the current step with a checkpoint and raises
    `TrainingCancelled` (``.partial``: the dictionary so far); Ctrl-C checkpoints and re-raises
    `KeyboardInterrupt`. Returns a `Dictionary` (architecture ``"topk"``) with training facts in
    ``meta["training"]``.
    """
    base = _config(config, options)
    context, data_tokens, holdout_tokens = base.context, base.data_tokens, base.holdout_tokens
    buffer_tokens, collect_batch_size, via = base.buffer_tokens, base.collect_batch_size, base.via
    sites = [site] + ([out_site] if out_site is not None else [])
    sites = parse_sites(model, sites)
    site_s, out_s = sites[0], (sites[1] if out_site is not None else None)
    if activations is None and model is None:
        raise ValueError("give a model (and a corpus) or pre-collected activations")
    data: tuple[Tensor, ...] | None = None
    if activations is not None:
        data = tuple(activations) if isinstance(activations, tuple | list) else (activations,)
        if len(data) != len(sites):
            raise ValueError(f"activations: expected {len(sites)} tensor(s) ({', '.join(sites)}), got {len(data)}")
        if any(not isinstance(t, Tensor) or t.dim() != 2 for t in data):
            raise ValueError("activations must be 2-D tensors [n_tokens, width]")
        if len({len(t) for t in data}) != 1 or len(data[0]) == 0:
            raise ValueError(f"activations must be non-empty and row-aligned, got {[list(t.shape) for t in data]}")
        data = tuple(t.detach().float().cpu() for t in data)
        widths = [t.shape[1] for t in data]
        if model is not None:
            want = [model.arch.size(Site.parse(s)) for s in sites]
            if widths != want:
                raise ValueError(f"activations have widths {widths} but {', '.join(sites)} have {want} in this model")
    else:
        widths = [model.arch.size(Site.parse(s)) for s in sites]
    d_in, d_out = widths[0], widths[-1]
    cfg = replace(base, transcoder=out_s is not None).resolved(d_in)
    sig = _data_signature(model, sites, corpus, context, data_tokens, holdout_tokens, buffer_tokens, activations)
    ck = _checkpoint(checkpoint) if checkpoint is not None else None
    info: dict[str, Any] | None = None
    tensors: dict[str, Tensor] = {}
    if ck is not None and ck.exists():
        if resume:
            info, tensors = ck.read()
            diff = [f"{key}: {info['config'].get(key)!r} there, {v!r} now" for key, v in cfg.recipe().items()
                    if info["config"].get(key) != v]
            diff += [f"data {key}: {info['data'].get(key)!r} there, {v!r} now" for key, v in sig.items()
                     if info["data"].get(key) != v]
            if diff:
                raise ValueError(f"the checkpoint in {ck.path} was made with other settings ({'; '.join(diff)}); "
                                 "pass resume=False to start over, or another checkpoint folder")
        else:
            ck.clear()
    trainer = TopKTrainer(cfg, d_in, d_out)
    extra: dict[str, Any] = dict(info.get("extra", {})) if info else {"time_s": 0.0}
    if info is not None:
        trainer.load_state(tensors, info["trainer"])

    def meta() -> dict[str, Any]:
        prefix = bool(prefix_ids(model.tokenizer)) if model is not None else None
        training = {"trainer": "topk", "steps": trainer.step_count, "tokens": trainer.step_count * cfg.batch_size,
                    "batch_size": cfg.batch_size, "n_latents": cfg.n_latents, "k": cfg.k, "lr": cfg.lr,
                    "lr_decay": cfg.lr_decay, "auxk_alpha": cfg.auxk_alpha, "k_aux": cfg.k_aux,
                    "dead_tokens": cfg.dead_tokens, "seed": cfg.seed, "fvu": trainer.fvu_ema,
                    "fvu_last": trainer.history[-1] if trainer.history else None,
                    "dead_fraction": float((trainer.since_fired >= cfg.dead_tokens).float().mean()),
                    "data_tokens": extra.get("data_tokens"), "heldout_tokens": extra.get("heldout_tokens"),
                    "heldout_fvu": extra.get("heldout_fvu"), "epochs": extra.get("epochs"),
                    "time_s": round(extra.get("time_s", 0.0), 1), "fvu_history": trainer.history[:: max(1, len(trainer.history) // 100)]}
        out = {"format": "workbench", "model_name": getattr(model, "name", None) if model is not None else None,
               "training": training}
        if activations is None:
            out["cfg"] = {"metadata": {"context_size": context, "prepend_bos": prefix, "dataset_path": corpus_name(corpus)}}
        return out

    if info is not None and info.get("complete"):
        return trainer.to_dictionary(site_s, out_s, meta())

    cancel_ev = cancel
    with _Interrupts() as intr:
        def stop() -> str | None:
            if intr.hit:
                return "interrupt"
            if cancel_ev is not None and cancel_ev.is_set():
                return "cancel"
            return None

        buf_resume = None
        if info is not None and info.get("buffer") is not None:
            rest = tuple(tensors[f"buffer.rest{i}"] for i in range(len(sites))) if "buffer.rest0" in tensors else None
            buf_resume = (info["buffer"], rest)
        holdout: tuple[Tensor, ...] | None = None
        source: Any
        try:
            if data is None and buffer_tokens is None:
                data = _collect_cached(model, sites, corpus, ck, sig, context=context, data_tokens=data_tokens,
                                       batch_size=collect_batch_size, via=via, progress=progress, stop=stop)
                n = len(data[0])
                if holdout_tokens and n >= 4 * holdout_tokens:
                    holdout = tuple(t[n - holdout_tokens:] for t in data)
                    data = tuple(t[: n - holdout_tokens] for t in data)
            if data is not None:
                source = _EpochBatches(data, cfg.batch_size, cfg.seed)
                extra["data_tokens"] = len(data[0])
                extra["epochs"] = round(cfg.steps * cfg.batch_size / len(data[0]), 2)
            else:
                source = _stream_batches(model, sites, corpus, context=context, buffer_tokens=buffer_tokens,
                                         batch_size=cfg.batch_size, seed=cfg.seed, via=via,
                                         collect_batch_size=collect_batch_size, resume=buf_resume)
        except _Stop as s:
            if s.why == "cancel":
                raise TrainingCancelled(trainer.step_count, ck.path if ck else None, None) from None
            raise KeyboardInterrupt from None

        def next_batch(step: int) -> tuple[Tensor, ...]:
            if isinstance(source, _EpochBatches):
                return source.batch(step)
            try:
                b = next(source)
            except StopIteration:
                raise ValueError("the corpus ran out of tokens") from None
            return (b,) if isinstance(b, Tensor) else b

        buf_state: dict[str, Any] | None = None
        buf_rest: tuple[Tensor, ...] | None = None
        if isinstance(source, ActivationBuffer):  # where the buffer stands (a resumed one: mid-fill)
            buf_state, buf_rest = source.state()

        def save(complete: bool = False) -> None:
            if ck is None:
                return
            ts = trainer.state_tensors()
            st = {"step": trainer.step_count, "config": cfg.recipe(), "data": sig, "trainer": trainer.state_info(),
                  "extra": {**extra, "time_s": extra.get("time_s", 0.0) + (time.time() - t_start)},
                  "complete": complete, "buffer": None, "site": site_s, "out_site": out_s}
            if buf_state is not None:
                st["buffer"] = buf_state
                for i, t in enumerate(buf_rest or ()):
                    ts[f"buffer.rest{i}"] = t
            ck.write(st, ts)

        from tqdm.auto import tqdm

        t_start = time.time()
        bar = tqdm(total=cfg.steps * cfg.batch_size, initial=trainer.step_count * cfg.batch_size, unit="tok",
                   unit_scale=True, desc=f"train {site_s}" + (f"→{out_s}" if out_s else ""), disable=not progress)
        in_step = False
        try:
            while trainer.step_count < cfg.steps:
                why = stop()
                if why == "cancel":
                    save()
                    raise TrainingCancelled(trainer.step_count, ck.path if ck else None,
                                            trainer.to_dictionary(site_s, out_s, meta()))
                if why:
                    raise KeyboardInterrupt  # checkpointed below
                in_step = True
                b = next_batch(trainer.step_count)
                if isinstance(source, ActivationBuffer):
                    buf_state, buf_rest = source.state()
                stats = trainer.step(b[0], b[-1] if cfg.transcoder else None)
                in_step = False
                bar.update(cfg.batch_size)
                bar.set_postfix(fvu=f"{trainer.fvu_ema:.3f}", L0=f"{stats['l0']:.1f}",
                                dead=f"{stats['dead_fraction']:.1%}", refresh=False)
                if on_step is not None:
                    on_step(stats)
                if trainer.step_count % cfg.checkpoint_every == 0 and trainer.step_count < cfg.steps:
                    save()
        except KeyboardInterrupt:
            if not in_step:
                save()
            raise
        finally:
            bar.close()
        extra["time_s"] = extra.get("time_s", 0.0) + (time.time() - t_start)
        t_start = time.time()
        if holdout is not None:
            extra["heldout_fvu"] = round(trainer.fvu(holdout[0], holdout[-1] if cfg.transcoder else None), 6)
            extra["heldout_tokens"] = len(holdout[0])
        save(complete=True)
    return trainer.to_dictionary(site_s, out_s, meta())

