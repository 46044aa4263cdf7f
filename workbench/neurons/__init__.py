"""Neuron-level analyses: corpus scans and their store, weight-based classes, contrastive
neurons, sparse probes, executable hypotheses, and the shared statistics (`stats`).

Imports only `workbench.core`. Note that ``workbench.neurons.scan`` is the `scan` function
here; the module is ``sys.modules["workbench.neurons.scan"]`` (``from workbench.neurons.scan
import ...`` works as usual).
"""

from . import stats
from .contrastive import ContrastiveResult, contrastive_neurons
from .hypotheses import Hypothesis, HypothesisResult, test_hypothesis
from .probing import ProbeResult, sparse_probe
from .scan import ScanCancelled, scan
from .store import Exemplar, QuantileGroup, ScanStore, StoreError
from .weights import NeuronWeights, NeuronWeightsFileError, neuron_weights

__all__ = [
    "scan", "ScanStore", "StoreError", "Exemplar", "QuantileGroup", "ScanCancelled",
    "neuron_weights", "NeuronWeights", "NeuronWeightsFileError",
    "contrastive_neurons", "ContrastiveResult", "sparse_probe", "ProbeResult",
    "Hypothesis", "HypothesisResult", "test_hypothesis", "stats",
]
