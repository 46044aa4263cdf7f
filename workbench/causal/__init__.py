"""Causal analyses: the logit and tuned lens, activation and attribution patching, ablation, directions,
subspace interventions, distributed alignment search (DAS) with the illusion check, RAVEL-style cause and
isolate scores, integrated gradients and gradient attribution.

Imports only `workbench.core`; every intervention goes through the core's specs.
"""

from .attribution import (
    AttributionResult,
    CompletenessWarning,
    gradient_x_activation,
    input_attribution,
    integrated_gradients,
)
from .das import (
    CounterfactualPairs,
    DASCancelled,
    DASError,
    DASResult,
    DASSweep,
    IllusionReport,
    counterfactual_pairs,
    das_sweep,
    illusion_check,
    interchange_accuracy,
    interchange_logits,
    train_das,
)
from .directions import mean_difference, neuron_direction
from .lens import LensFileError, LensResult, TunedLens, logit_lens, tuned_lens
from .patching import (
    AblationResult,
    PatchingResult,
    ablate,
    activation_patching,
    attribution_patching,
    metric_values,
    noise_specs,
    token_id,
)
from .ravel import (
    RavelDataset,
    RavelError,
    RavelResult,
    RavelWarning,
    load_ravel,
    ravel_features,
    ravel_scores,
    units_from_das,
    units_from_mean_difference,
    units_from_pca,
    units_from_probe,
    units_from_sae,
)
from .subspaces import (
    Subspace,
    SubspaceAblate,
    SubspaceError,
    SubspaceInterchange,
    SubspaceSet,
    SubspaceSteer,
    SubspaceWarning,
    ablate_subspace,
    interchange_subspace,
    set_subspace,
    steer_subspace,
)

__all__ = [
    "logit_lens", "tuned_lens", "TunedLens", "LensResult", "LensFileError",
    "activation_patching", "attribution_patching", "ablate", "PatchingResult", "AblationResult",
    "metric_values", "noise_specs", "token_id", "mean_difference", "neuron_direction",
    "Subspace", "SubspaceInterchange", "SubspaceAblate", "SubspaceSteer", "SubspaceSet", "SubspaceError",
    "SubspaceWarning", "interchange_subspace", "ablate_subspace", "steer_subspace", "set_subspace",
    "integrated_gradients", "gradient_x_activation", "input_attribution", "AttributionResult", "CompletenessWarning",
    "train_das", "das_sweep", "illusion_check", "interchange_logits", "interchange_accuracy", "counterfactual_pairs",
    "CounterfactualPairs", "DASResult", "DASSweep", "IllusionReport", "DASError", "DASCancelled",
    "load_ravel", "ravel_scores", "ravel_features", "units_from_probe", "units_from_pca", "units_from_mean_difference",
    "units_from_sae", "units_from_das", "RavelDataset", "RavelResult", "RavelError", "RavelWarning",
]
