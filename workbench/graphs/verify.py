"""Checking a graph's claims on the real model: edit nodes, rerun, compare with the prediction.

A feature edit runs through the transcoder set's specs (a `FeatureEdit` on the feature at its
position: zero, or scale by k); an error node's edit adds ``(k - 1)`` times its clean error
vector to the MLP output at its position (a `Steer` on ``mlp_out.L``), so ``k = 0`` removes the
error. The measured effect is the change of each logit node's demeaned logit on the real model,
with every nonlinearity live (attention patterns, norms, MLPs, other features); the predicted one
is `AttributionGraph.predict`, which follows the graph's linear edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..core.specs import Patch, Steer
from .errors import GraphError

if TYPE_CHECKING:
    from .graph import AttributionGraph

__all__ = ["node_edits", "intervene", "verify", "frozen_mlps", "Intervention", "Verification"]


def _need_model(graph: AttributionGraph) -> tuple[Any, Any]:
    if graph.model is None or graph.transcoders is None:
        raise GraphError("this graph has no model or transcoder set attached (a loaded or imported graph): "
                         "AttributionGraph.load(path, model=..., transcoders=...) re-attaches them")
    return graph.model, graph.transcoders


def _error_vector(graph: AttributionGraph, layer: int, pos: int) -> torch.Tensor:
    """The clean run's error vector of ``layer`` at ``pos``: its MLP output minus what the transcoder
    set reconstructs there (the whole output where the layer has no transcoder)."""
    cache = graph.__dict__.setdefault("_error_cache", {})
    if layer not in cache:
        model, tset = _need_model(graph)
        ins = list(tset.layers)
        site = {L: tset.input_site(L) if hasattr(tset, "input_site") else f"mlp_in.{L}" for L in ins}
        res = model.run(graph.prompt, capture=[f"mlp_out.{layer}"] + [site[L] for L in ins], top_k=1)
        out = res[f"mlp_out.{layer}"][0].float()
        if layer in tset.layers:
            xs = {L: res[site[L]][0].float() for L in ins}
            acts_by = {L: tset.encode(L, x).float() for L, x in xs.items()}
            has_skip = any(tset.skip(L) is not None for L in ins)
            out = out - tset.reconstruct(acts_by, xs if has_skip else None)[layer].float()
        cache[layer] = out
    return cache[layer][pos]


def node_edits(graph: AttributionGraph, nodes: dict[str | int, float]) -> list[Any]:
    """The real-model specs that multiply each node's activation by its factor (features and errors)."""
    _, tset = _need_model(graph)
    feats: dict[tuple[int, int, int], float] = {}
    specs: list[Any] = []
    for node, factor in nodes.items():
        info = graph.node(node)
        f = float(factor)
        if not torch.isfinite(torch.tensor(f)):
            raise GraphError(f"the factor for {info['id']} must be finite, not {factor!r}")
        if info["kind"] == "feature":
            feats[(info["layer"], info["pos"], info["feature"])] = f
        elif info["kind"] == "error":
            vec = _error_vector(graph, info["layer"], info["pos"])
            specs.append(Steer(f"mlp_out.{info['layer']}", vec.tolist(), f - 1.0, [info["pos"]],
                               name=f"error {info['layer']}@{info['pos']}"))
        else:
            raise GraphError(f"{info['id']} is a {info['kind']} node: only features and error nodes can be edited")
    if feats:
        specs = list(tset.edit(feats)) + specs
    return specs


@dataclass
class Intervention:
    """One edit's outcome: the top next tokens before and after on the real model, and the logit
    nodes' demeaned-logit changes measured and predicted by the graph."""

    nodes: dict[str, float]
    before: list[tuple[str, float]]
    after: list[tuple[str, float]]
    logit_tokens: list[str]
    measured: list[float]
    predicted: list[float]
    specs: list[Any] = field(default_factory=list, repr=False)

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame({"token": self.logit_tokens, "measured": self.measured, "predicted": self.predicted})


def _demeaned(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    lg = logits.float()
    return lg[ids] - lg.mean()


def intervene(graph: AttributionGraph, nodes: dict[str | int, float], top_k: int = 5) -> Intervention:
    """Edit ``nodes`` (``{node: factor}``) on the real model; compare with the graph's prediction."""
    model, _ = _need_model(graph)
    if not nodes:
        raise GraphError("no nodes to edit: give {node id: factor}, 0 to zero a node")
    specs = node_edits(graph, nodes)
    clean = model.run(graph.prompt, top_k=top_k)
    edited = model.run(graph.prompt, specs, top_k=top_k)
    ids = graph.logit_ids
    measured = (_demeaned(edited.logits[0], ids) - _demeaned(clean.logits[0], ids)).tolist()
    predicted = graph.predict(nodes).tolist()
    pairs = lambda r: [(t, float(p)) for t, p in zip(r.top.tokens[0], r.top.probs[0].tolist(), strict=True)]  # noqa: E731
    return Intervention({graph.node(n)["id"]: float(f) for n, f in nodes.items()}, pairs(clean), pairs(edited),
                        list(graph.logit_tokens), measured, predicted, specs)


@dataclass
class Verification:
    """Predicted against measured effects of editing each of the top nodes alone.

    ``rows``: one dict per node (id, kind, influence, predicted and measured change of the top
    logit node); ``correlation``: Pearson's r over those nodes (top logit); ``correlation_all``:
    over every (node, logit node) pair.
    """

    factor: float
    rows: list[dict[str, Any]]
    correlation: float
    correlation_all: float
    frozen: bool = False

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)

    def __repr__(self) -> str:
        how = ", uncovered MLPs frozen" if self.frozen else ""
        return (f"Verification({len(self.rows)} nodes, factor {self.factor:g}{how}: r = {self.correlation:.3f} on the "
                f"top logit, {self.correlation_all:.3f} over all logit nodes)")


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den > 0 else float("nan")


def frozen_mlps(graph: AttributionGraph, after: int) -> list[Any]:
    """Specs holding every MLP without a transcoder above layer ``after`` at its clean output (a `Patch`
    from the prompt itself): the real model with what the graph treats as fixed error nodes fixed."""
    covered = set(graph.covered_layers)
    return [Patch(f"mlp_out.{L}", source=graph.prompt) for L in range(after + 1, graph.n_layers) if L not in covered]


def verify(graph: AttributionGraph, top: int = 20, factor: float = 0.0, kinds: tuple[str, ...] = ("feature", "error"),
           progress: bool = True, freeze_uncovered: bool = False) -> Verification:
    """Edit each of the ``top`` most influential feature/error nodes alone (``factor``: 0 zeroes it)
    on the real model and correlate the measured logit changes with the graph's predictions.

    ``freeze_uncovered``: hold the MLPs without a transcoder above the edited node at their clean
    outputs while measuring (`frozen_mlps`), as the graph holds their error nodes; the gap between
    the two correlations is what those MLPs' responses contribute."""
    from tqdm.auto import tqdm

    model, _ = _need_model(graph)
    top = int(top)
    if top < 2:
        raise GraphError(f"verify needs at least 2 nodes to correlate, not top={top}")
    inf = graph.influence()
    cand = [i for i in torch.argsort(inf, descending=True).tolist() if graph.kind(i) in kinds][:top]
    if len(cand) < 2:
        raise GraphError(f"the graph has {len(cand)} node(s) of kinds {kinds}: nothing to correlate")
    clean = _demeaned(model.run(graph.prompt, top_k=1).logits[0], graph.logit_ids)
    rows, pred_all, meas_all = [], [], []
    for i in tqdm(cand, desc="verify", disable=not progress, leave=False):
        nodes = {i: factor}
        extra = frozen_mlps(graph, graph.node(i)["layer"]) if freeze_uncovered else []
        edited = model.run(graph.prompt, node_edits(graph, nodes) + extra, top_k=1)
        meas = _demeaned(edited.logits[0], graph.logit_ids) - clean
        pred = graph.predict(nodes)
        info = graph.node(i)
        rows.append({"id": info["id"], "kind": info["kind"], "layer": info["layer"], "pos": info["pos"],
                     "influence": float(inf[i]), "predicted": float(pred[0]), "measured": float(meas[0])})
        pred_all.append(pred)
        meas_all.append(meas)
    p, m = torch.stack(pred_all), torch.stack(meas_all)
    return Verification(float(factor), rows, _pearson(p[:, 0], m[:, 0]), _pearson(p.flatten(), m.flatten()),
                        bool(freeze_uncovered))
