"""Causal analyses: the logit and tuned lens, activation and attribution patching, ablation, directions.

Imports only `workbench.core`; every intervention goes through the core's specs.
"""

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

__all__ = [
    "logit_lens", "tuned_lens", "TunedLens", "LensResult", "LensFileError",
    "activation_patching", "attribution_patching", "ablate", "PatchingResult", "AblationResult",
    "metric_values", "noise_specs", "token_id", "mean_difference", "neuron_direction",
]
