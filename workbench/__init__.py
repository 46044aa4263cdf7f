"""Interp Workbench: neuron-level interpretability on nnsight, with live widgets.

    import workbench as wb
    model = wb.load()                       # the embedded SmolLM2-135M-Instruct, offline
    res = model.run("The capital of France is", capture=["neurons.10"])
    res.to_pandas()                          # top next-token predictions
    model.run("...", [wb.zero_neurons(10, [42])])
"""

from .arch import SITE_NAMES, ArchMap, Site
from .directions import mean_difference, neuron_direction
from .engine import GenerationCancelled, Model
from .lens import LensFileError, LensResult, TunedLens, logit_lens, tuned_lens
from .loading import ModelLoadError, load
from .patching import (
    AblationResult,
    PatchingResult,
    ablate,
    activation_patching,
    attribution_patching,
)
from .corpus import default_corpus, iter_texts
from .results import GenerationResult, RunResult, Token, TopK
from .scan import scan
from .specs import (
    AblateHeads,
    Edit,
    Patch,
    Spec,
    Steer,
    ablate_heads,
    mean_ablate_neurons,
    scale_neurons,
    set_neurons,
    spec_from_dict,
    specs_from_json,
    specs_to_json,
    steer,
    zero_neurons,
)
from .store import Exemplar, QuantileGroup, ScanStore, StoreError

__all__ = [
    "SITE_NAMES", "ArchMap", "Site", "Model", "GenerationCancelled", "ModelLoadError", "load",
    "GenerationResult", "RunResult", "Token", "TopK", "AblateHeads", "Edit", "Patch", "Spec", "Steer",
    "ablate_heads", "mean_ablate_neurons", "scale_neurons", "set_neurons", "spec_from_dict",
    "specs_from_json", "specs_to_json", "steer", "zero_neurons", "mean_difference", "neuron_direction",
    "LensFileError", "LensResult", "TunedLens", "logit_lens", "tuned_lens",
    "AblationResult", "PatchingResult", "ablate", "activation_patching", "attribution_patching",
    "default_corpus", "iter_texts", "scan", "ScanStore", "StoreError", "Exemplar", "QuantileGroup",
]
__version__ = "0.1.0"
