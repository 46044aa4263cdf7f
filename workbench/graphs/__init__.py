"""Attribution graphs over transcoders: the feature circuit of one prompt, traced, pruned, verified.

    tset = wb.load_transcoders("runs/plt")                       # or wb.train_transcoders(model, layers=...)
    g = wb.attribute(model, "The capital of France is", tset)    # AttributionGraph
    pg = g.prune(node_threshold=0.8, edge_threshold=0.98)       # circuit-tracer's pruning
    g.scores(), pg.scores()                                     # replacement and completeness
    g.verify(top=20)                                            # predicted vs measured edits, on the real model
    g.intervene({"12_301_4": 0.0})                              # one edit: top tokens before and after
    g.export("france.json")                                     # Anthropic / Neuronpedia graph JSON
    wb.graphs.import_graph("neuronpedia.json").show()           # view someone else's graph

The replacement model (`replacement`) freezes attention patterns and norm denominators and
turns every MLP's output into its transcoder's features plus an error term, so the edges are
exact direct effects (`attribute`). Supernode proposals cluster features (`supernodes`).
"""

from .attribute import DEFAULT_MAX_TOKENS, attribute, estimate_memory
from .errors import GraphError
from .export import FEATURE_TYPES, cumulative_influence, export_graph, from_json_id, to_json_id
from .graph import GRAPH_FORMAT, AttributionGraph, PrunedGraph
from .importing import import_graph
from .pruning import GraphScores, PruneMasks, graph_scores, node_influence, prune_masks
from .replacement import RowPlan, UnsupportedModelError, attribution_rows, check_supported
from .supernodes import feature_similarity, propose_supernodes
from .verify import Intervention, Verification, frozen_mlps, intervene, node_edits, verify

__all__ = [
    "attribute", "estimate_memory", "DEFAULT_MAX_TOKENS", "AttributionGraph", "PrunedGraph", "GraphError",
    "GRAPH_FORMAT", "export_graph", "import_graph", "to_json_id", "from_json_id", "cumulative_influence",
    "FEATURE_TYPES", "GraphScores", "PruneMasks", "graph_scores", "node_influence", "prune_masks",
    "RowPlan", "UnsupportedModelError", "check_supported", "attribution_rows",
    "Intervention", "Verification", "intervene", "node_edits", "verify", "frozen_mlps", "propose_supernodes", "feature_similarity",
]
