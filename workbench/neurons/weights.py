"""Weight-based neuron analyses: what every MLP neuron writes to the vocabulary, and how it reads.

    import workbench as wb
    w = wb.neuron_weights(model)              # all layers, one batched pass per layer
    w.to_pandas()                             # one row per neuron (site, layer, unit, ...)
    w.unit(12, 345)                           # JSON-ready: statistics, classes, top tokens
    w.promoted(12, 345); w.suppressed(12, 345)
    w.plot(); w.save("smollm2.weights.safetensors"); wb.neurons.NeuronWeights.load(...)

No forward pass is run: everything is read from the weights.

**Vocabulary projection** (Geva et al. 2022, "Transformer Feed-Forward Layers Build Predictions
by Promoting Concepts in the Vocabulary Space"; Dar et al. 2023, "Analyzing Transformers in
Embedding Space"). A neuron's output weight vector ``w_out`` (its column of the MLP output
projection: ``down_proj`` for Llama / Gemma / Qwen, a row of GPT-2's ``Conv1D`` ``c_proj``,
``dense_4h_to_h`` for GPT-NeoX) is mapped to the vocabulary through the final norm and the
unembedding: ``scores = W_U (g * w_out)``. The final norm is *folded*: its gain ``g`` multiplies
``w_out`` (``g = weight`` for RMSNorm / LayerNorm, ``g = 1 + weight`` for Gemma's RMSNorm; the
kind is checked numerically on the module, so an unknown norm fails loudly); for LayerNorm models
``w_out`` is first centred (LayerNorm removes the mean, so this is exact). The norm's
``1 / rms`` scale (a positive number per position), LayerNorm's bias, the unembedding bias and
Gemma 2's final logit softcapping do not depend on the neuron and are left out. ``scores[v]`` is
then the neuron's direct effect on token ``v``'s logit per unit of activation at ``neurons.L``
(up to that positive scale). Top-k promoted tokens are the largest scores, suppressed the
smallest. A gated neuron's activation ``act(gate) * up`` takes both signs (mostly the sign of
``up``): "promoted" always means promoted when the ``neurons.L`` activation is positive.

**Vocabulary statistics** (Gurnee et al. 2024, "Universal Neurons in GPT2 Language Models",
TMLR, and their code ``wesg52/universal-neurons``, ``analysis/prediction_neurons.py``): mean,
standard deviation, skew and kurtosis over the vocabulary. Following the paper, by default (``stats_on="cosine"``)
they are computed over ``cos(W_U[v], w_out)`` with the final-norm gain folded into ``W_U`` and
``W_U`` centred over the vocabulary (TransformerLens' ``fold_ln`` + ``center_unembed``, which the
paper used); ``stats_on="score"`` uses the raw ``scores`` instead. Moments are population moments
(divide by the vocabulary size) and ``vocab_kurtosis`` is the **excess** kurtosis (0 for a
Gaussian). The paper calls neurons with (Pearson) kurtosis above 10, i.e. excess kurtosis above 7,
high-kurtosis and splits them by the sign of the skew: **prediction** neurons (positive skew: a
few tokens strongly promoted) and **suppression** neurons (negative skew). So the defaults are
``kurtosis_threshold=7.0`` (excess) and ``skew_threshold=0.0``; ``vocab_class`` is
``"prediction"``, ``"suppression"`` or ``""``.

**Input-output classes** (Gerstner & Schütze 2025, "Understanding Gated Neurons in Transformers
from Their Input-Output Functionality", arXiv:2505.17936, and the authors' code
``sjgerstner/RW_functionalities``). In the residual space: ``io_cos = cos(w_in, w_out)`` with
``w_in`` the linear input (``up_proj`` of a gated MLP, ``c_fc`` / ``dense_h_to_4h`` otherwise),
and for gated MLPs also ``io_cos_gate = cos(w_gate, w_out)`` and ``gate_up_cos = cos(w_gate,
w_up)`` (``io_cos_up`` equals ``io_cos``). Each cosine is rounded to -1 / 0 / +1 with the paper's
threshold ``io_threshold=0.5`` (``a(x) = +1 if x > t, -1 if x < -t, else 0``). Gated neurons get
one of 11 classes from ``(a(io_cos), |a(io_cos_gate)|, typical)`` where ``typical`` means
``a(gate_up_cos) == a(io_cos) * a(io_cos_gate)`` (always true for orthogonal output):

=========================  ==========================================================
``a(io_cos) = +1``         enrichment (|a(gate)| = 1) / conditional enrichment (0)
``a(io_cos) = 0``          proportional change (|a(gate)| = 1) / orthogonal output (0)
``a(io_cos) = -1``         depletion (|a(gate)| = 1) / conditional depletion (0)
=========================  ==========================================================

and a non-typical neuron gets the prefix ``"atypical "`` (e.g. ``"atypical depletion"``): the
paper's six classes plus the authors' code's atypical variants. Non-gated MLPs (GPT-2, GPT-NeoX) get ``enrichment`` /
``orthogonal output`` / ``depletion`` from ``a(io_cos)`` alone, as in the authors' code. (The
authors' later version renames enrichment / depletion to strengthening / weakening.) The paper
plots cosines after flipping ``(w_up, w_out)`` so that ``cos(w_gate, w_up) >= 0``; the classes do
not change under that flip, and here the cosines are reported unflipped so that they agree with
the ``neurons.L`` activations the rest of the workbench records. A neuron with an all-zero weight
vector has NaN cosines and the class ``""``.

Weights are read through the architecture map; an MLP whose input projections are not one of
``gate_proj``+``up_proj``, ``w1``+``w3``, fused ``gate_up_proj`` (gate first, as in Phi-3), or
``c_fc`` / ``dense_h_to_4h`` / ``fc1`` / ``fc_in`` fails with a message naming what it found;
declare such a layout with ``ArchMap.extra = {"mlp_gate_proj": ..., "mlp_up_proj": ...}`` (gated)
or ``{"mlp_in_proj": ...}`` (paths relative to a layer, like ``mlp_out_proj``).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.arch import ArchMap, resolve
from ..core.errors import WorkbenchError
from ..core.viewers import Showable

FORMAT = "workbench-neuron-weights"
#: Off CPU, score blocks hold at most this many elements ([neurons, vocab]), to bound peak memory.
_CHUNK_ELEMENTS = 48_000_000

PREDICTION, SUPPRESSION = "prediction", "suppression"
VOCAB_CLASSES = (PREDICTION, SUPPRESSION, "")
#: The gated taxonomy of Gerstner & Schütze, in the paper's order.
IO_CLASSES = (
    "enrichment", "atypical enrichment", "conditional enrichment", "atypical conditional enrichment",
    "proportional change", "atypical proportional change", "orthogonal output",
    "depletion", "atypical depletion", "conditional depletion", "atypical conditional depletion",
)
_MAIN_IO = ("enrichment", "conditional enrichment", "proportional change", "orthogonal output",
            "conditional depletion", "depletion")
# (a(io_cos), |a(io_cos_gate)|, typical) -> class
_COMBO = {
    (1, 1, 1): "enrichment", (1, 1, 0): "atypical enrichment",
    (1, 0, 1): "conditional enrichment", (1, 0, 0): "atypical conditional enrichment",
    (0, 1, 1): "proportional change", (0, 1, 0): "atypical proportional change",
    (0, 0, 1): "orthogonal output", (0, 0, 0): "orthogonal output",  # (0,0,0) cannot occur
    (-1, 1, 1): "depletion", (-1, 1, 0): "atypical depletion",
    (-1, 0, 1): "conditional depletion", (-1, 0, 0): "atypical conditional depletion",
}
_VANILLA = {1: "enrichment", 0: "orthogonal output", -1: "depletion"}
#: Plot colours: enrichment blues, proportional change greens, depletion reds, orthogonal grey.
_IO_COLORS = {
    "enrichment": "#08519c", "atypical enrichment": "#6baed6", "conditional enrichment": "#3182bd",
    "atypical conditional enrichment": "#c6dbef", "proportional change": "#31a354",
    "atypical proportional change": "#a1d99b", "orthogonal output": "#d9d9d9", "depletion": "#a50f15",
    "atypical depletion": "#fc9272", "conditional depletion": "#de2d26", "atypical conditional depletion": "#fee0d2",
}


class NeuronWeightsFileError(WorkbenchError, ValueError):
    """A saved `NeuronWeights` file is missing, truncated, corrupt or not of this format."""


# -- reading the weights ------------------------------------------------------------------
@dataclass
class MLPLayout:
    """How to read one layer's MLP: module paths (relative to a layer) and fused-ness."""

    gate: str | None  # gated: the gate projection (None for plain MLPs)
    up: str  # the linear input projection (up_proj / c_fc / ...)
    fused: bool  # gate and up in one module (gate = first half)
    out: str


_GATED_PAIRS = (("gate_proj", "up_proj"), ("w1", "w3"))
_FUSED = ("gate_up_proj",)
_PLAIN = ("c_fc", "dense_h_to_4h", "fc1", "fc_in")


def mlp_layout(hf: Any, arch: ArchMap) -> MLPLayout:
    """Find the MLP input projections of this model (or raise a clear error)."""
    layer0 = resolve(hf, arch.layers)[0]
    ex = arch.extra or {}
    if "mlp_up_proj" in ex or "mlp_in_proj" in ex:
        up = ex.get("mlp_up_proj") or ex["mlp_in_proj"]
        gate = ex.get("mlp_gate_proj")
        for p in (up, gate):
            if p is not None:
                try:
                    resolve(layer0, p)
                except AttributeError:
                    raise NotImplementedError(f"ArchMap.extra names the MLP projection {p!r}, which layer 0 "
                                              f"({type(layer0).__name__}) does not have") from None
        return MLPLayout(gate, up, False, arch.mlp_out_proj)
    try:
        mlp = resolve(layer0, arch.mlp)
    except AttributeError:
        raise NotImplementedError(f"layer 0 has no MLP module at {arch.mlp!r}") from None
    names = {n for n, _ in mlp.named_children()}
    for g, u in _GATED_PAIRS:
        if g in names and u in names:
            return MLPLayout(f"{arch.mlp}.{g}", f"{arch.mlp}.{u}", False, arch.mlp_out_proj)
    for f in _FUSED:
        if f in names:
            return MLPLayout(None, f"{arch.mlp}.{f}", True, arch.mlp_out_proj)
    for p in _PLAIN:
        if p in names:
            return MLPLayout(None, f"{arch.mlp}.{p}", False, arch.mlp_out_proj)
    raise NotImplementedError(
        f"cannot read the MLP layout of {type(mlp).__name__} (children: {sorted(names) or 'none'}): "
        "neuron_weights knows gate_proj+up_proj, w1+w3, fused gate_up_proj, c_fc, dense_h_to_4h, fc1 and fc_in "
        "(a mixture-of-experts MLP has no single neuron basis). Declare the input projections with "
        "ArchMap.extra={'mlp_gate_proj': 'mlp.<gate>', 'mlp_up_proj': 'mlp.<up>'} (gated) or "
        "{'mlp_in_proj': 'mlp.<in>'}, paths relative to a layer."
    )


def _rows(module: Any, what: str, n: int, d: int, *, out: bool) -> torch.Tensor:
    """The module's weight as ``[n, d]`` rows (one per neuron, in the residual space), float32.

    ``out=False``: an input projection residual -> neurons; ``out=True``: neurons -> residual.
    ``nn.Linear`` stores ``[out_features, in_features]``, GPT-2's ``Conv1D`` ``[in, out]``.
    """
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise NotImplementedError(f"{what} ({type(module).__name__}) has no weight tensor to read")
    if w.device.type == "meta":
        raise ValueError(f"{what} has no weights in memory (meta device): load the model locally to read its weights")
    conv = type(module).__name__ == "Conv1D"
    w = w.detach()
    rows = (w if conv else w.T) if out else (w.T if conv else w)
    if tuple(rows.shape) != (n, d):
        raise NotImplementedError(f"{what} ({type(module).__name__}) has weight shape {tuple(w.shape)}: "
                                  f"expected {n} neurons x d_model {d}")
    return rows.float()


def layer_vectors(hf: Any, arch: ArchMap, lay: MLPLayout, L: int) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """``(w_gate or None, w_in, w_out)`` of layer ``L`` as ``[d_mlp, d_model]`` float32 rows."""
    layer = resolve(hf, arch.layers)[L]
    n, d = arch.d_mlp, arch.d_model
    w_out = _rows(resolve(layer, lay.out), f"layer {L} {lay.out}", n, d, out=True)
    if lay.fused:
        both = _rows(resolve(layer, lay.up), f"layer {L} {lay.up}", 2 * n, d, out=False)
        return both[:n], both[n:], w_out
    gate = None if lay.gate is None else _rows(resolve(layer, lay.gate), f"layer {L} {lay.gate}", n, d, out=False)
    return gate, _rows(resolve(layer, lay.up), f"layer {L} {lay.up}", n, d, out=False), w_out


def unembedding_weight(hf: Any, arch: ArchMap) -> torch.Tensor:
    """The unembedding matrix ``[vocab, d_model]`` (detached), or a clear error (missing / meta weights)."""
    W_U = getattr(resolve(hf, arch.unembed), "weight", None)
    if not isinstance(W_U, torch.Tensor) or W_U.dim() != 2 or W_U.shape[1] != arch.d_model:
        raise NotImplementedError(f"the unembedding {arch.unembed!r} has no [vocab, d_model] weight")
    if W_U.device.type == "meta":
        raise ValueError("the unembedding has no weights in memory (meta device): load the model locally")
    return W_U.detach()


def final_norm_fold(hf: Any, arch: ArchMap) -> tuple[torch.Tensor, bool, str]:
    """The final norm's gain ``g`` (float32 [d]), whether it centres (LayerNorm), and its kind.

    The kind is tested on the module itself with a large random input (so ``eps`` is
    negligible): ``weight * x / rms(x)``, ``(1 + weight) * x / rms(x)`` (Gemma) or
    ``weight * (x - mean) / std + bias`` (LayerNorm).
    """
    norm = resolve(hf, arch.final_norm)
    d = arch.d_model
    w = getattr(norm, "weight", None)
    w = w.detach().float().cpu() if isinstance(w, torch.Tensor) and tuple(w.shape) == (d,) else torch.ones(d)
    b = getattr(norm, "bias", None)
    b = b.detach().float().cpu() if isinstance(b, torch.Tensor) and tuple(b.shape) == (d,) else torch.zeros(d)
    p = next(iter(norm.parameters()), None)
    dtype = p.dtype if p is not None else torch.float32
    dev = p.device if p is not None else torch.device("cpu")
    if dev.type == "meta":
        raise ValueError("the final norm has no weights in memory (meta device): load the model locally")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, d, generator=gen, dtype=torch.float64) * 100 + 30  # non-zero mean: LN != RMS
    with torch.no_grad():
        y = norm(x.to(device=dev, dtype=dtype)).double().cpu()
    x = x.to(dtype).double()  # what the norm saw
    rms = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    xc = x - x.mean(-1, keepdim=True)
    ln = xc / xc.pow(2).mean(-1, keepdim=True).sqrt()
    wd, bd = w.double(), b.double()
    candidates = [
        ("rmsnorm", wd, False, wd * rms),
        ("rmsnorm (1 + weight)", 1 + wd, False, (1 + wd) * rms),
        ("layernorm", wd, True, wd * ln + bd),
    ]
    scale = y.abs().max().clamp_min(1e-12)
    tol = 1e-3 if dtype == torch.float32 or dtype == torch.float64 else 3e-2
    errs = []
    for kind, g, center, expect in candidates:
        err = float((y - expect).abs().max() / scale)
        errs.append(f"{kind}: {err:.2g}")
        if err < tol:
            return g.float(), center, kind
    raise NotImplementedError(
        f"cannot fold the final norm {type(norm).__name__} at {arch.final_norm!r}: its output is neither "
        f"weight * x / rms(x), (1 + weight) * x / rms(x) nor a LayerNorm (relative errors {', '.join(errs)})")


# -- classes --------------------------------------------------------------------------------
def _approx(x: np.ndarray, t: float) -> np.ndarray:
    return (x > t).astype(np.int8) - (x < -t).astype(np.int8)


def io_classes(io_cos: np.ndarray, io_cos_gate: np.ndarray | None = None, gate_up_cos: np.ndarray | None = None,
               threshold: float = 0.5) -> np.ndarray:
    """Gerstner & Schütze classes of neurons from their cosines (arrays of equal shape).

    Plain MLPs: pass only ``io_cos``. NaN cosines (zero weight vectors) give ``""``.
    """
    io_cos = np.asarray(io_cos, dtype=np.float64)
    lin = _approx(io_cos, threshold)
    if io_cos_gate is None:
        out = np.array([_VANILLA[int(v)] for v in lin.ravel()], dtype=object).reshape(lin.shape)
        bad = np.isnan(io_cos)
    else:
        io_cos_gate, gate_up_cos = np.asarray(io_cos_gate, np.float64), np.asarray(gate_up_cos, np.float64)
        gate = _approx(io_cos_gate, threshold)
        gl = _approx(gate_up_cos, threshold)
        typical = (gl == lin * gate) | ((lin == 0) & (gate == 0))
        code = (lin.astype(np.int64) + 1) * 4 + np.abs(gate).astype(np.int64) * 2 + typical.astype(np.int64)
        table = np.empty(12, dtype=object)
        for (a, g, t), name in _COMBO.items():
            table[(a + 1) * 4 + g * 2 + t] = name
        out = table[code]
        bad = np.isnan(io_cos) | np.isnan(io_cos_gate) | np.isnan(gate_up_cos)
    out = np.where(bad, "", out).astype(object)
    return out


def vocab_classes(kurtosis: np.ndarray, skew: np.ndarray, kurtosis_threshold: float = 7.0,
                  skew_threshold: float = 0.0) -> np.ndarray:
    """Gurnee et al. classes: ``"prediction"`` (excess kurtosis > threshold, skew > s),
    ``"suppression"`` (kurtosis > threshold, skew < -s), else ``""``."""
    k, s = np.asarray(kurtosis, np.float64), np.asarray(skew, np.float64)
    high = k > kurtosis_threshold
    out = np.full(k.shape, "", dtype=object)
    out[high & (s > skew_threshold)] = PREDICTION
    out[high & (s < -skew_threshold)] = SUPPRESSION
    return out


def _cos_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine; NaN where a row is all zeros."""
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    c = (a * b).sum(-1) / (na * nb)
    return torch.where((na > 0) & (nb > 0), c, torch.full_like(c, float("nan")))


# -- the result -----------------------------------------------------------------------------
@dataclass(eq=False)
class NeuronWeights(Showable):
    """Weight-based facts about every MLP neuron of the analysed layers (see the module docstring).

    Arrays are indexed ``[i, unit]`` where ``layers[i]`` is the layer; ``promoted_ids[i, unit]``
    are the top-k token ids, best first (``suppressed_*``: most negative first). Classes are
    derived from the stored numbers and thresholds (`reclassify` gives other thresholds).
    """

    layers: list[int]
    gated: bool
    io_cos: torch.Tensor  # [nL, d_mlp] cos(w_in, w_out); w_in = up_proj for gated MLPs
    io_cos_gate: torch.Tensor | None  # [nL, d_mlp] cos(w_gate, w_out) (gated only)
    gate_up_cos: torch.Tensor | None  # [nL, d_mlp] cos(w_gate, w_up) (gated only)
    vocab_mean: torch.Tensor  # [nL, d_mlp]
    vocab_std: torch.Tensor
    vocab_skew: torch.Tensor
    vocab_kurtosis: torch.Tensor  # excess kurtosis
    promoted_ids: torch.Tensor  # [nL, d_mlp, k] int64
    promoted_scores: torch.Tensor  # [nL, d_mlp, k] float32
    suppressed_ids: torch.Tensor
    suppressed_scores: torch.Tensor
    token_text: dict[int, str]  # tokenizer.decode([id]) of every listed id
    io_threshold: float = 0.5
    kurtosis_threshold: float = 7.0
    skew_threshold: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    # -- shape and lookup ------------------------------------------------------------------
    @property
    def d_mlp(self) -> int:
        return int(self.io_cos.shape[1])

    @property
    def k(self) -> int:
        return int(self.promoted_ids.shape[-1])

    def _row(self, layer: int, unit: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer must be an integer, not {layer!r}")
        if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)):
            raise TypeError(f"unit must be an integer, not {unit!r}")
        if int(layer) not in self.layers:
            raise IndexError(f"layer {layer} was not analysed; layers: {self.layers}")
        if not 0 <= int(unit) < self.d_mlp:
            raise IndexError(f"unit {unit} is out of range: layers have {self.d_mlp} neurons (0..{self.d_mlp - 1})")
        return self.layers.index(int(layer))

    # -- classes ---------------------------------------------------------------------------
    @property
    def io_class(self) -> np.ndarray:
        """``[nL, d_mlp]`` object array of input-output class names."""
        gate = None if self.io_cos_gate is None else self.io_cos_gate.numpy()
        gu = None if self.gate_up_cos is None else self.gate_up_cos.numpy()
        return io_classes(self.io_cos.numpy(), gate, gu, self.io_threshold)

    @property
    def vocab_class(self) -> np.ndarray:
        """``[nL, d_mlp]`` object array: ``"prediction"``, ``"suppression"`` or ``""``."""
        return vocab_classes(self.vocab_kurtosis.numpy(), self.vocab_skew.numpy(),
                             self.kurtosis_threshold, self.skew_threshold)

    def reclassify(self, *, io_threshold: float | None = None, kurtosis_threshold: float | None = None,
                   skew_threshold: float | None = None) -> NeuronWeights:
        """The same numbers with other class thresholds (nothing is recomputed)."""
        return replace(
            self,
            io_threshold=self.io_threshold if io_threshold is None else float(io_threshold),
            kurtosis_threshold=self.kurtosis_threshold if kurtosis_threshold is None else float(kurtosis_threshold),
            skew_threshold=self.skew_threshold if skew_threshold is None else float(skew_threshold),
        )

    # -- per neuron ------------------------------------------------------------------------
    def _tokens(self, ids: torch.Tensor, scores: torch.Tensor, i: int, unit: int) -> list[dict[str, Any]]:
        return [{"token": self.token_text.get(int(t), ""), "id": int(t), "score": float(s)}
                for t, s in zip(ids[i, unit].tolist(), scores[i, unit].tolist(), strict=True)]

    def promoted(self, layer: int, unit: int) -> list[dict[str, Any]]:
        """The k tokens whose logits the neuron raises most, ``[{"token", "id", "score"}]`` best first."""
        i = self._row(layer, unit)
        return self._tokens(self.promoted_ids, self.promoted_scores, i, int(unit))

    def suppressed(self, layer: int, unit: int) -> list[dict[str, Any]]:
        """The k tokens whose logits the neuron lowers most (most negative score first)."""
        i = self._row(layer, unit)
        return self._tokens(self.suppressed_ids, self.suppressed_scores, i, int(unit))

    def unit(self, layer: int, unit: int) -> dict[str, Any]:
        """Everything about one neuron, JSON-ready (non-finite numbers become ``None``)."""
        i = self._row(layer, unit)
        u = int(unit)

        def num(t: torch.Tensor | None) -> float | None:
            v = float(t[i, u])
            return v if math.isfinite(v) else None

        row: dict[str, Any] = {"site": f"neurons.{self.layers[i]}", "layer": self.layers[i], "unit": u,
                               "io_cos": num(self.io_cos)}
        if self.gated:
            row.update(io_cos_gate=num(self.io_cos_gate), io_cos_up=num(self.io_cos), gate_up_cos=num(self.gate_up_cos))
        row["io_class"] = str(self.io_class[i, u])
        row.update(vocab_mean=num(self.vocab_mean), vocab_std=num(self.vocab_std), vocab_skew=num(self.vocab_skew),
                   vocab_kurtosis=num(self.vocab_kurtosis), vocab_class=str(self.vocab_class[i, u]))
        row["promoted"] = self._tokens(self.promoted_ids, self.promoted_scores, i, u)
        row["suppressed"] = self._tokens(self.suppressed_ids, self.suppressed_scores, i, u)
        return row

    # -- tables and views ------------------------------------------------------------------
    def to_pandas(self):
        """One row per neuron: site, layer, unit, cosines, io_class, vocab statistics, vocab_class,
        and the first promoted / suppressed token (``top_promoted`` / ``top_suppressed``)."""
        import pandas as pd

        nL, n = len(self.layers), self.d_mlp
        layer = np.repeat(np.asarray(self.layers, dtype=np.int64), n)
        cols: dict[str, Any] = {"site": np.array([f"neurons.{L}" for L in self.layers], dtype=object).repeat(n),
                                "layer": layer, "unit": np.tile(np.arange(n, dtype=np.int64), nL),
                                "io_cos": self.io_cos.numpy().ravel()}
        if self.gated:
            cols["io_cos_gate"] = self.io_cos_gate.numpy().ravel()
            cols["io_cos_up"] = self.io_cos.numpy().ravel()
            cols["gate_up_cos"] = self.gate_up_cos.numpy().ravel()
        cols["io_class"] = self.io_class.ravel()
        for name in ("vocab_mean", "vocab_std", "vocab_skew", "vocab_kurtosis"):
            cols[name] = getattr(self, name).numpy().ravel()
        cols["vocab_class"] = self.vocab_class.ravel()
        text = self.token_text
        cols["top_promoted"] = np.array([text.get(t, "") for t in self.promoted_ids[..., 0].ravel().tolist()], dtype=object)
        cols["top_suppressed"] = np.array([text.get(t, "") for t in self.suppressed_ids[..., 0].ravel().tolist()], dtype=object)
        return pd.DataFrame(cols)

    def class_counts(self) -> dict[str, dict[int, int]]:
        """``{"vocab": {class: {layer: count}}, "io": {class: {layer: count}}}`` (empty class left out)."""
        out: dict[str, Any] = {"vocab": {}, "io": {}}
        for kind, arr, names in (("vocab", self.vocab_class, (PREDICTION, SUPPRESSION)),
                                 ("io", self.io_class, IO_CLASSES if self.gated else tuple(_VANILLA.values()))):
            for name in names:
                out[kind][name] = {L: int((arr[i] == name).sum()) for i, L in enumerate(self.layers)}
        return out

    def plot(self, figsize: tuple[float, float] | None = None, bins: int = 40):
        """Three panels: vocabulary kurtosis vs skew coloured by class; ``io_cos`` histogram per
        layer (layers x bins heatmap); input-output class counts per layer. Returns the Figure."""
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=figsize or (15, 4.5))
        ax = axes[0]
        sk, ku, vc = self.vocab_skew.numpy().ravel(), self.vocab_kurtosis.numpy().ravel(), self.vocab_class.ravel()
        colors = {"": "#bbbbbb", PREDICTION: "tab:blue", SUPPRESSION: "tab:red"}
        for name in ("", PREDICTION, SUPPRESSION):
            m = vc == name
            ax.scatter(sk[m], ku[m], s=4, c=colors[name], alpha=0.6, linewidths=0,
                       label=f"{name or 'other'} ({int(m.sum())})")
        ax.axhline(self.kurtosis_threshold, color="k", lw=0.6, ls="--")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("vocabulary skew")
        ax.set_ylabel("vocabulary excess kurtosis")
        ax.set_title(f"W_U w_out statistics ({self.meta.get('stats_on', 'cosine')})")
        ax.legend(fontsize=7, markerscale=3)

        ax = axes[1]
        edges = np.linspace(-1, 1, bins + 1)
        cos = self.io_cos.numpy()
        hist = np.stack([np.histogram(np.nan_to_num(c, nan=0.0), bins=edges)[0] for c in cos])
        im = ax.imshow(hist, aspect="auto", origin="lower", cmap="viridis", extent=(-1, 1, -0.5, len(self.layers) - 0.5))
        ax.set_yticks(range(len(self.layers)), [str(L) for L in self.layers], fontsize=6)
        for t in (-self.io_threshold, self.io_threshold):
            ax.axvline(t, color="w", lw=0.6, ls="--")
        ax.set_xlabel("cos(w_up, w_out)" if self.gated else "cos(w_in, w_out)")
        ax.set_ylabel("layer")
        ax.set_title("input-output cosine per layer")
        fig.colorbar(im, ax=ax, fraction=0.04, label="neurons")

        ax = axes[2]
        counts = self.class_counts()["io"]
        names = [c for c in (IO_CLASSES if self.gated else tuple(_VANILLA.values())) if sum(counts[c].values())]
        bottom = np.zeros(len(self.layers))
        for name in names:
            vals = np.array([counts[name][L] for L in self.layers], dtype=float)
            ax.bar(range(len(self.layers)), vals, bottom=bottom, color=_IO_COLORS[name], label=name, width=0.9)
            bottom += vals
        step = max(1, len(self.layers) // 10)
        ax.set_xticks(range(0, len(self.layers), step), [str(L) for L in self.layers[::step]])
        ax.set_xlabel("layer")
        ax.set_ylabel("neurons")
        ax.set_title(f"input-output classes (|cos| > {self.io_threshold:g})")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        e = html.escape
        counts = self.class_counts()
        io_names = [c for c in (_MAIN_IO if self.gated else tuple(_VANILLA.values()))]
        head = "".join(f"<th>{e(c)}</th>" for c in (PREDICTION, SUPPRESSION, *io_names))
        rows = []
        for L in self.layers:
            cells = [counts["vocab"][c][L] for c in (PREDICTION, SUPPRESSION)] + [counts["io"][c][L] for c in io_names]
            rows.append(f"<tr><td>{L}</td>" + "".join(f"<td>{v}</td>" for v in cells) + "</tr>")
        model = self.meta.get("model", "")
        return (f"<div><b>NeuronWeights</b> {e(str(model))} — {len(self.layers)} layers × {self.d_mlp} neurons, "
                f"top-{self.k} tokens; {'gated' if self.gated else 'plain'} MLP. Thresholds: excess kurtosis &gt; "
                f"{self.kurtosis_threshold:g}, |skew| &gt; {self.skew_threshold:g}, |cos| &gt; {self.io_threshold:g}. "
                "<code>.to_pandas()</code>, <code>.unit(layer, unit)</code>, <code>.plot()</code>."
                f"<table><tr><th>layer</th>{head}</tr>{''.join(rows)}</table></div>")

    def __repr__(self) -> str:
        return (f"NeuronWeights(model={self.meta.get('model', '')!r}, layers={len(self.layers)}, d_mlp={self.d_mlp}, "
                f"k={self.k}, gated={self.gated})")

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (tensors; the rest as JSON in its metadata), atomically. Never pickles."""
        from ..core.fileio import atomic_tensors

        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder: give a file path, e.g. {path / 'neuron_weights.safetensors'}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).detach().contiguous().cpu() for name in _TENSORS
                   if getattr(self, name) is not None}
        ids = sorted(self.token_text)
        tensors["token_ids"] = torch.tensor(ids, dtype=torch.int64)
        info = {"format": FORMAT, "version": 1, "layers": self.layers, "gated": self.gated,
                "io_threshold": self.io_threshold, "kurtosis_threshold": self.kurtosis_threshold,
                "skew_threshold": self.skew_threshold, "meta": self.meta,
                "token_text": [self.token_text[i] for i in ids]}
        atomic_tensors(path, tensors, metadata={"format": FORMAT, "json": json.dumps(info)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> NeuronWeights:
        """Read a file written by `save`; a missing, truncated or corrupt file raises
        `NeuronWeightsFileError` naming it."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise NeuronWeightsFileError(f"{path} does not exist or is not a file")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise NeuronWeightsFileError(f"{path} is not a readable safetensors file ({err})") from None
        if header.get("format") != FORMAT:
            raise NeuronWeightsFileError(f"{path} is not a NeuronWeights file (format {header.get('format')!r})")
        try:
            info = json.loads(header["json"])
            layers = [int(x) for x in info["layers"]]
            gated = bool(info["gated"])
            text = [str(t) for t in info["token_text"]]
        except (KeyError, TypeError, ValueError) as err:
            raise NeuronWeightsFileError(f"{path}: its JSON metadata is corrupt ({err})") from None
        need = [n for n in _TENSORS if n not in ("io_cos_gate", "gate_up_cos") or gated] + ["token_ids"]
        missing = [n for n in need if n not in tensors]
        if missing:
            raise NeuronWeightsFileError(f"{path} lacks the tensors {missing}")
        nL = len(layers)
        base = tuple(tensors["io_cos"].shape)
        if len(base) != 2 or base[0] != nL:
            raise NeuronWeightsFileError(f"{path}: io_cos has shape {base}, expected ({nL}, d_mlp)")
        for n in need[:-1]:
            shape = tuple(tensors[n].shape)
            ok = shape[:2] == base and len(shape) == (3 if n.startswith(("promoted", "suppressed")) else 2)
            if not ok:
                raise NeuronWeightsFileError(f"{path}: {n} has shape {shape}, which does not fit {base}")
        ids = tensors["token_ids"].tolist()
        if len(ids) != len(text):
            raise NeuronWeightsFileError(f"{path}: {len(ids)} token ids but {len(text)} token texts")
        return cls(
            layers=layers, gated=gated,
            io_cos=tensors["io_cos"].float(), io_cos_gate=tensors.get("io_cos_gate"),
            gate_up_cos=tensors.get("gate_up_cos"),
            vocab_mean=tensors["vocab_mean"].float(), vocab_std=tensors["vocab_std"].float(),
            vocab_skew=tensors["vocab_skew"].float(), vocab_kurtosis=tensors["vocab_kurtosis"].float(),
            promoted_ids=tensors["promoted_ids"].long(), promoted_scores=tensors["promoted_scores"].float(),
            suppressed_ids=tensors["suppressed_ids"].long(), suppressed_scores=tensors["suppressed_scores"].float(),
            token_text=dict(zip(ids, text, strict=True)),
            io_threshold=float(info.get("io_threshold", 0.5)),
            kurtosis_threshold=float(info.get("kurtosis_threshold", 7.0)),
            skew_threshold=float(info.get("skew_threshold", 0.0)),
            meta=dict(info.get("meta") or {}),
        )


_TENSORS = ("io_cos", "io_cos_gate", "gate_up_cos", "vocab_mean", "vocab_std", "vocab_skew", "vocab_kurtosis",
            "promoted_ids", "promoted_scores", "suppressed_ids", "suppressed_scores")


# -- the computation --------------------------------------------------------------------------
def _block_sizes(device: torch.device, n: int, V: int, chunk_size: int | None) -> tuple[int, int]:
    """(neurons, vocabulary entries) per score block.

    On CPU small blocks stay in cache, so top-k and the moment sums cost little next to the
    matmul (and the blocked matmul itself is faster than one large one); elsewhere one block
    holds up to ~48M scores.
    """
    if device.type == "cpu":
        c, b = _CPU_BLOCK
    else:
        c, b = n, max(1, _CHUNK_ELEMENTS // max(1, n))
    return min(n, chunk_size or c), min(V, b)


#: CPU score block: neurons x vocabulary entries (12 MB of float32: cache-friendly).
_CPU_BLOCK = (384, 8192)


def _central(s1: torch.Tensor, s2: torch.Tensor, s3: torch.Tensor, s4: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """Mean, std, skew, excess kurtosis from float64 power sums of ``n`` values (population moments)."""
    mu = s1 / n
    e2, e3, e4 = s2 / n, s3 / n, s4 / n
    m2 = (e2 - mu * mu).clamp_min(0)
    m3 = e3 - 3 * mu * e2 + 2 * mu ** 3
    m4 = e4 - 4 * mu * e3 + 6 * mu * mu * e2 - 3 * mu ** 4
    std = m2.sqrt()
    return mu, std, m3 / m2.pow(1.5), m4 / (m2 * m2) - 3.0


def _merge_top(parts: list[tuple[torch.Tensor, torch.Tensor]], k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over blocks: ``parts`` are per-block (values, global ids)."""
    vals = torch.cat([p[0] for p in parts], dim=1)
    ids = torch.cat([p[1] for p in parts], dim=1)
    v, j = vals.topk(k, dim=1, largest=largest)
    return v, ids.gather(1, j)


def _layer_vocab(we: torch.Tensor, Uc: torch.Tensor, ubar: torch.Tensor, inv_tok: torch.Tensor | None,
                 w_norm: torch.Tensor, k: int, c: int, b: int) -> dict[str, torch.Tensor]:
    """Top-k scores and vocabulary moments of one layer's folded output vectors ``we`` [n, d].

    ``Uc`` is the vocabulary-centred unembedding (same dtype as ``we``) and ``ubar`` its mean
    row (float32): ``scores = we @ Uc.T + we @ ubar``, the second term a constant per neuron, so
    top-k can be taken on the centred block and the moments accumulate without cancellation.
    """
    n, V = we.shape[0], Uc.shape[0]
    shift = we.float() @ ubar  # [n] the mean score of each neuron over the vocabulary
    out: dict[str, list[torch.Tensor]] = {name: [] for name in _TENSORS[3:]}
    bufs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for c0 in range(0, n, c):
        w = we[c0:c0 + c]
        rows = w.shape[0]
        sums = torch.zeros(4, rows, dtype=torch.float64, device=we.device)
        tops: list[tuple[torch.Tensor, torch.Tensor]] = []
        bots: list[tuple[torch.Tensor, torch.Tensor]] = []
        for v0 in range(0, V, b):
            ub = Uc[v0:v0 + b]
            key = (rows, ub.shape[0])
            if key not in bufs:  # reused blocks: no allocation (and no page faults) per block
                bufs = {key: (torch.empty(key, dtype=we.dtype, device=we.device),
                              torch.empty(key, device=we.device), torch.empty(key, device=we.device))}
            xb, fb, x2 = bufs[key]
            x = torch.mm(w, ub.T, out=xb)  # [rows, B] centred scores
            kb = min(k, x.shape[1])
            tv, ti = x.topk(kb, dim=1)
            bv, bi = x.topk(kb, dim=1, largest=False)
            tops.append((tv.float(), ti + v0))
            bots.append((bv.float(), bi + v0))
            if x.dtype != torch.float32:
                x = fb.copy_(x)
            if inv_tok is not None:
                x.mul_(inv_tok[v0:v0 + b])  # cosines times |w_out|
            torch.mul(x, x, out=x2)
            sums[0] += x.sum(1)
            sums[1] += x2.sum(1)
            sums[2] += torch.linalg.vecdot(x2, x)
            sums[3] += torch.linalg.vecdot(x2, x2)
        tv, ti = _merge_top(tops, k, True)
        bv, bi = _merge_top(bots, k, False)
        sh = shift[c0:c0 + c, None]
        out["promoted_ids"].append(ti.cpu())
        out["promoted_scores"].append((tv + sh).cpu())
        out["suppressed_ids"].append(bi.cpu())
        out["suppressed_scores"].append((bv + sh).cpu())
        mean, std, skew, kurt = _central(*sums, V)
        if inv_tok is not None:  # divide the cosines by |w_out|: a scale, skew and kurtosis do not change
            wn = w_norm[c0:c0 + c].double()
            inv = torch.where(wn > 0, 1.0 / wn, torch.full_like(wn, float("nan")))
            mean, std = mean * inv, std * inv
        else:
            mean = mean + sh[:, 0].double()
        for name, t in zip(("vocab_mean", "vocab_std", "vocab_skew", "vocab_kurtosis"), (mean, std, skew, kurt),
                           strict=True):
            out[name].append(t.float().cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def neuron_weights(model: Any, k: int = 10, layers: Iterable[int] | int | None = None, progress: bool = True,
                   dtype: torch.dtype = torch.float32, *, stats_on: str = "cosine", io_threshold: float = 0.5,
                   kurtosis_threshold: float = 7.0, skew_threshold: float = 0.0,
                   chunk_size: int | None = None) -> NeuronWeights:
    """Vocabulary projections, vocabulary statistics and input-output cosines of every MLP neuron.

    One batched pass per layer: ``W_U @ (g * W_out)`` in score blocks of ``chunk_size``
    neurons (CPU default 384) by a slice of the vocabulary, with top-k and the moment sums taken
    per block, so peak memory stays a few blocks whatever the model size. ``dtype`` is the matmul
    precision (``torch.bfloat16`` is faster on some hardware; moments are always accumulated in
    float32 / float64). ``stats_on``: ``"cosine"`` (Gurnee et al.) or ``"score"``. Thresholds:
    ``kurtosis_threshold`` (excess kurtosis; default 7 = the paper's kurtosis 10),
    ``skew_threshold`` (0) and ``io_threshold`` (0.5, Gerstner & Schütze). See the module
    docstring for the definitions and citations.
    """
    arch: ArchMap = model.arch
    hf = model.hf
    if getattr(model, "remote", False) is True:
        raise ValueError("neuron_weights reads the weights: it needs a model loaded locally, not remote=True")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= arch.vocab:
        raise ValueError(f"k must be an integer between 1 and the vocabulary size {arch.vocab}, not {k!r}")
    if stats_on not in ("cosine", "score"):
        raise ValueError(f"stats_on must be 'cosine' or 'score', not {stats_on!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype, not {dtype!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, not {chunk_size!r}")
    Ls = arch.layer_list(layers)
    lay = mlp_layout(hf, arch)
    gain, center, norm_kind = final_norm_fold(hf, arch)
    unembed = resolve(hf, arch.unembed)
    W_U = getattr(unembed, "weight", None)
    if not isinstance(W_U, torch.Tensor) or W_U.dim() != 2 or W_U.shape[1] != arch.d_model:
        raise NotImplementedError(f"the unembedding {arch.unembed!r} has no [vocab, d_model] weight")
    if W_U.device.type == "meta":
        raise ValueError("the unembedding has no weights in memory (meta device): load the model locally")
    dev = W_U.device
    V, n = W_U.shape[0], arch.d_mlp
    k = min(k, V)
    c, b = _block_sizes(dev, n, V, chunk_size)

    with torch.inference_mode():
        Uf = W_U.detach().float()
        ubar = Uf.mean(0)
        Uc = Uf - ubar
        g = gain.to(dev)
        inv_tok = None
        if stats_on == "cosine":
            tok_norm = (Uc * g).norm(dim=1)  # rows of the folded, vocabulary-centred unembedding
            inv_tok = torch.where(tok_norm > 0, 1.0 / tok_norm, torch.zeros_like(tok_norm))
        Uc = Uc.to(dtype)
        del Uf
        outs: dict[str, list[torch.Tensor]] = {name: [] for name in _TENSORS}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(Ls), desc="neuron weights", unit="layer")
        try:
            for L in Ls:
                w_gate, w_in, w_out = layer_vectors(hf, arch, lay, L)
                outs["io_cos"].append(_cos_rows(w_in, w_out).cpu())
                if w_gate is not None:
                    outs["io_cos_gate"].append(_cos_rows(w_gate, w_out).cpu())
                    outs["gate_up_cos"].append(_cos_rows(w_gate, w_in).cpu())
                wo = w_out.to(dev)
                if center:
                    wo = wo - wo.mean(1, keepdim=True)
                we = (wo * g).to(dtype)
                for name, t in _layer_vocab(we, Uc, ubar, inv_tok, wo.norm(dim=1), k, c, b).items():
                    outs[name].append(t)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    def stack(name: str) -> torch.Tensor | None:
        return torch.stack(outs[name]) if outs[name] else None

    promoted_ids, suppressed_ids = stack("promoted_ids"), stack("suppressed_ids")
    ids = torch.unique(torch.cat([promoted_ids.ravel(), suppressed_ids.ravel()])).tolist()
    tok = model.tokenizer
    texts = tok.batch_decode([[i] for i in ids]) if hasattr(tok, "batch_decode") else [tok.decode([i]) for i in ids]
    meta = {"model": getattr(model, "name", ""), "family": arch.family, "n_layers": arch.n_layers,
            "d_model": arch.d_model, "vocab": V, "stats_on": stats_on, "final_norm": norm_kind,
            "centered_w_out": center, "dtype": str(dtype).replace("torch.", ""),
            "mlp": {"gate": lay.gate, "in": lay.up, "fused_gate_up": lay.fused, "out": lay.out}}
    return NeuronWeights(
        layers=Ls, gated=lay.gate is not None or lay.fused,
        io_cos=stack("io_cos"), io_cos_gate=stack("io_cos_gate"), gate_up_cos=stack("gate_up_cos"),
        vocab_mean=stack("vocab_mean"), vocab_std=stack("vocab_std"), vocab_skew=stack("vocab_skew"),
        vocab_kurtosis=stack("vocab_kurtosis"), promoted_ids=promoted_ids,
        promoted_scores=stack("promoted_scores"), suppressed_ids=suppressed_ids,
        suppressed_scores=stack("suppressed_scores"), token_text=dict(zip(ids, texts, strict=True)),
        io_threshold=float(io_threshold), kurtosis_threshold=float(kurtosis_threshold),
        skew_threshold=float(skew_threshold), meta=meta,
    )


__all__ = ["NeuronWeights", "NeuronWeightsFileError", "neuron_weights", "final_norm_fold", "unembedding_weight",
           "io_classes", "vocab_classes", "IO_CLASSES", "VOCAB_CLASSES", "MLPLayout", "mlp_layout", "layer_vectors"]
