"""Live anywidget controls for the workbench: each one calls the engine and reruns the model.

    from workbench.widgets import AttentionHeads, NeuronHeatmap, SteeringPanel, LogitLens, PatchingHeatmap
    from workbench.widgets import NeuronDashboard, FeatureList, FeatureDashboard
    from workbench.widgets import IIAHeatmap           # a DAS sweep's IIA grid (das_sweep(...).show(model, pair))
    from workbench.widgets import export_html          # a static HTML copy of a notebook, widgets included

The source lives in the top-level ``widgets/`` folder; its import name is `workbench.widgets`
(a wheel installs it there; ``import workbench`` maps it in a source checkout). The old name
``widgets`` still works until 0.2, with a DeprecationWarning, and gives these same modules.
"""

if __name__ == "widgets":  # run under the old name: hand over to workbench.widgets, so nothing loads twice
    from workbench._compat import adopt_old_widgets_name

    adopt_old_widgets_name(__name__)
else:
    from .agent import AgentTranscript
    from .attention import AttentionHeads
    from .attribution import AttributionGraph
    from .circuit import CircuitGraph
    from .export import export_html, snapshot_widgets
    from .features import FeatureDashboard, FeatureList
    from .lens import LogitLens
    from .neuron_dashboard import NeuronDashboard
    from .neurons import NeuronHeatmap
    from .patching import IIAHeatmap, PatchingHeatmap
    from .steering import SteeringPanel

__all__ = ["AgentTranscript", "AttentionHeads", "FeatureDashboard", "FeatureList", "LogitLens", "NeuronDashboard", "NeuronHeatmap",
           "PatchingHeatmap", "SteeringPanel", "register_viewers"]
__all__ += ["CircuitGraph", "AttributionGraph", "IIAHeatmap", "export_html", "snapshot_widgets"]


def register_viewers() -> None:
    """Register each widget as the ``.show()`` viewer of the engine result it displays."""
    import workbench.circuits as circuits
    import workbench.graphs as graphs
    from workbench.causal.das import DASSweep
    from workbench.causal.lens import LensResult
    from workbench.causal.patching import PatchingResult
    from workbench.circuits import EdgeScores
    from workbench.core.viewers import register_viewer
    from workbench.neurons.contrastive import ContrastiveResult
    from workbench.neurons.probing import ProbeResult
    from workbench.neurons.store import ScanStore
    from workbench.neurons.weights import NeuronWeights

    register_viewer(PatchingResult, lambda res, **kw: PatchingHeatmap.from_result(res, **kw))
    register_viewer(DASSweep, lambda sweep, model, pair, **kw: IIAHeatmap(model, sweep, pair, **kw))
    register_viewer(LensResult, lambda res, **kw: LogitLens.from_result(res.model, res, **kw))
    register_viewer(ScanStore, lambda store, **kw: NeuronDashboard(store, **kw))
    register_viewer(NeuronWeights, _weights_dashboard)
    register_viewer(ContrastiveResult, _contrastive_dashboard)
    register_viewer(ProbeResult, _probe_dashboard)
    register_viewer(EdgeScores, lambda res, **kw: CircuitGraph.from_scores(res, **kw))
    register_viewer(circuits.PathPatchingResult, _path_patching_graph)
    head_scores_cls = getattr(circuits, "HeadScores", None)
    if head_scores_cls is None:  # until the facade exports it
        from workbench.circuits.heads import HeadScores as head_scores_cls
    register_viewer(head_scores_cls, lambda res, **kw: CircuitGraph.from_head_scores(res, **kw))
    register_viewer(graphs.AttributionGraph, lambda g, *a, **kw: AttributionGraph(g, *a, **kw))
    register_viewer(graphs.PrunedGraph, lambda pg, **kw: AttributionGraph.from_pruned(pg, **kw))


def _path_patching_graph(res, **kw):
    """``path_patching(...).show()``: the sender -> receiver edges, weighted by the metric's change."""
    g = res.graph
    names = list(dict.fromkeys([*res.senders, *res.receivers]))
    nodes = []
    for n in names:
        i = g.node(n)
        nodes.append({"id": n, "layer": g.node_layer[i], "kind": g.node_kind[i], "index": max(g.node_head[i], 0)})
    change = res.change
    edges = [(s, r, float(change[i, j])) for i, s in enumerate(res.senders) for j, r in enumerate(res.receivers)
             if change[i, j] == change[i, j]]  # NaN: no such edge
    return CircuitGraph.from_graph(nodes, edges, **kw)


def _weights_dashboard(w, store, layer: int = 0, unit: int = 0, **kw):
    """``weights.show(store, layer, unit)``: the neuron dashboard with these weight classes."""
    return NeuronDashboard(store, weights=w, layer=layer, unit=unit, **kw)


def _contrastive_dashboard(res, store, set: str | None = None, rank: int = 0, by: str = "auroc", **kw):
    """``result.show(store, set=, rank=)``: the dashboard on the rank-th most contrastive neuron."""
    row = res.top(rank + 1, set=set, by=by).iloc[rank]
    return NeuronDashboard(store, layer=int(row["layer"]), unit=int(row["unit"]), **kw)


def _probe_dashboard(res, store, k: int | None = None, rank: int = 0, **kw):
    """``probe.show(store, k=, rank=)``: the dashboard on a neuron the k-sparse probe selected."""
    k = min(res.selected) if k is None else k
    layer, unit = res.selected[k][rank]
    return NeuronDashboard(store, layer=int(layer), unit=int(unit), **kw)


if __name__ != "widgets":
    register_viewers()
