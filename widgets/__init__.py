"""Live anywidget controls for the workbench: each one calls the engine and reruns the model.

    from widgets import AttentionHeads, NeuronHeatmap, SteeringPanel
"""

from .attention import AttentionHeads
from .neurons import NeuronHeatmap
from .steering import SteeringPanel

__all__ = ["AttentionHeads", "NeuronHeatmap", "SteeringPanel", "register_viewers"]


def register_viewers() -> None:
    """Register each widget as the ``.show()`` viewer of the engine result it displays."""
    from workbench.viewers import register_viewer  # noqa: F401  (widgets add theirs below)


register_viewers()
