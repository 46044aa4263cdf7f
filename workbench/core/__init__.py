"""The engine layer: sites, the architecture map, specs and their trace program, the model, results.

Imports no other workbench subpackage. The extension API for new methods lives here:
`Spec` + ``compile(model) -> [TraceOp]`` for interventions, and `TraceProgram` (through
``model.program(batch)`` and ``model.trace_batch(batch)``) for in-trace code.
"""

from .activations import ActivationBuffer, collect_activations
from .arch import ArchMap, infer_arch, resolve
from .corpus import default_corpus, iter_texts
from .engine import GenerationCancelled, Model
from .errors import Cancelled, WorkbenchError
from .loading import ModelLoadError, load
from .program import Batch, Step, TraceOp, TraceProgram
from .results import GenerationResult, RunResult, Token, TopK
from .sites import SITE_NAMES, SITES, WRITABLE, Site, SiteInfo
from .specs import (
    AblateHeads,
    Edit,
    Patch,
    Spec,
    Steer,
    ablate_heads,
    mean_ablate_neurons,
    register_spec_kind,
    scale_neurons,
    set_neurons,
    spec_from_dict,
    specs_from_json,
    specs_to_json,
    steer,
    zero_neurons,
)
from .viewers import Showable, register_viewer

__all__ = [
    "Model", "load", "ModelLoadError", "ArchMap", "infer_arch", "resolve",
    "Site", "SiteInfo", "SITES", "SITE_NAMES", "WRITABLE",
    "Spec", "Edit", "Steer", "Patch", "AblateHeads", "register_spec_kind", "zero_neurons", "scale_neurons",
    "set_neurons", "mean_ablate_neurons", "ablate_heads", "steer", "spec_from_dict", "specs_to_json",
    "specs_from_json", "TraceOp", "TraceProgram", "Batch", "Step",
    "RunResult", "GenerationResult", "Token", "TopK", "WorkbenchError", "Cancelled", "GenerationCancelled",
    "default_corpus", "iter_texts", "ActivationBuffer", "collect_activations", "Showable", "register_viewer",
]
