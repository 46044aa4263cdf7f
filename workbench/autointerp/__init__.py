"""Automated interpretability: explain a unit from its scanned exemplars with an LLM, then score it.

    store = wb.neurons.ScanStore.open("scans/smol", model)
    [ex] = wb.explain(store, "neurons.12", 345)                 # the local SmolLM2 by default
    wb.score(store, "neurons.12", 345, ex)                      # detection, fuzzing, simulation, sasc
    wb.autointerp.ExplanationStore.for_store(store).to_pandas()            # every explanation and score so far

Modules: `explaining` (`explain`, `explain_units`; the explainer methods), `scoring` (`score`;
the scorers), `records` (`Record`, `unit_records`, `holdout_split`), `prompts` (the prompt
formats and their system prompts), `parsing` (the reply parsers), `scores` (`Score`, metrics,
bootstrap intervals) and `store` (`Explanation`, `ExplanationStore`).
"""

from .explaining import METHODS, explain, explain_units
from .parsing import (
    parse_binary_list,
    parse_delphi_explanation,
    parse_numbered_list,
    parse_openai_explanation,
    parse_simulation,
)
from .prompts import (
    delphi_explain_messages,
    detection_messages,
    format_activation_records,
    fuzzing_messages,
    highlight,
    normalize_activations,
    openai_explain_messages,
    sasc_messages,
    simulation_messages,
)
from .records import HeldOut, Record, holdout_split, text_max_activations, unit_records
from .scores import (
    Score,
    auroc,
    balanced_accuracy,
    bootstrap_ci,
    classification_scores,
    correlation_score,
    f1_score,
    pearson,
    sasc_scores,
)
from .scoring import SCORERS, score
from .store import Explanation, ExplanationStore, ExplanationStoreError

__all__ = [
    "METHODS", "SCORERS", "Score", "Explanation", "ExplanationStore", "ExplanationStoreError", "HeldOut", "Record",
    "explain", "score", "explain_units", "holdout_split", "unit_records", "text_max_activations",
    "normalize_activations", "format_activation_records", "openai_explain_messages", "delphi_explain_messages",
    "detection_messages", "fuzzing_messages", "simulation_messages", "sasc_messages", "highlight",
    "parse_openai_explanation", "parse_delphi_explanation", "parse_binary_list", "parse_simulation",
    "parse_numbered_list", "balanced_accuracy", "f1_score", "auroc", "pearson", "bootstrap_ci",
    "classification_scores", "correlation_score", "sasc_scores",
]
