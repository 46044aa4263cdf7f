"""Live anywidget controls for the workbench: each one calls the engine and reruns the model.

    from widgets import AttentionHeads, NeuronHeatmap, SteeringPanel
"""

from .attention import AttentionHeads
from .neurons import NeuronHeatmap
from .steering import SteeringPanel

__all__ = ["AttentionHeads", "NeuronHeatmap", "SteeringPanel"]
