"""Live anywidget controls for the workbench: each one calls the engine and reruns the model.

    from widgets import AttentionHeads, NeuronHeatmap, SteeringPanel, LogitLens, PatchingHeatmap
"""

from .attention import AttentionHeads
from .lens import LogitLens
from .neurons import NeuronHeatmap
from .patching import PatchingHeatmap
from .steering import SteeringPanel

__all__ = ["AttentionHeads", "LogitLens", "NeuronHeatmap", "PatchingHeatmap", "SteeringPanel", "register_viewers"]


def register_viewers() -> None:
    """Register each widget as the ``.show()`` viewer of the engine result it displays."""
    from workbench.lens import LensResult
    from workbench.patching import PatchingResult
    from workbench.viewers import register_viewer

    register_viewer(PatchingResult, lambda res, **kw: PatchingHeatmap.from_result(res, **kw))
    register_viewer(LensResult, lambda res, **kw: LogitLens.from_result(res.model, res, **kw))


register_viewers()
