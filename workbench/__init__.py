"""Interp Workbench: neuron-level interpretability on nnsight, with live widgets.

    import workbench as wb
    model = wb.load()                       # the embedded SmolLM2-135M-Instruct, offline
    res = model.run("The capital of France is", capture=["neurons.10"])
    res.to_pandas()                          # top next-token predictions
    model.run("...", [wb.zero_neurons(10, [42])])
"""

from .core.activations import ActivationBuffer, collect_activations
from .agent.agent import Agent, AgentResult
from .core.arch import SITE_NAMES, ArchMap, Site
from .autointerp.explain import Explanation, ExplanationStore, Score, explain, explain_units, score
from .neurons.contrastive import ContrastiveResult, contrastive_neurons
from .core.corpus import default_corpus, iter_texts
from .dictionaries.formats import load_dictionary, save_saelens
from .dictionaries.dictionary import Dictionary, DictionaryError
from .causal.directions import mean_difference, neuron_direction
from .core.engine import GenerationCancelled, Model
from .dictionaries.features import (
    FeatureEdit,
    Splice,
    add_features,
    feature_direction,
    register_dictionary,
    scale_features,
    set_features,
    steer_feature,
    zero_features,
)
from .neurons.hypotheses import Hypothesis, HypothesisResult, test_hypothesis
from .causal.lens import LensFileError, LensResult, TunedLens, logit_lens, tuned_lens
from .llm.client import ChatClient, ChatResponse, LLMError, LocalChatClient, OpenAIClient, llm_client
from .core.loading import ModelLoadError, load
from .dictionaries.nmf import NMFResult, semi_nmf
from .causal.patching import (
    AblationResult,
    PatchingResult,
    ablate,
    activation_patching,
    attribution_patching,
)
from .neurons.probing import ProbeResult, sparse_probe
from .core.results import GenerationResult, RunResult, Token, TopK
from .dictionaries.evaluate import DictionaryEval, evaluate_dictionary
from .dictionaries.train import TrainerConfig, TrainingCancelled, train_sae
from .neurons.scan import scan
from .core.specs import (
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
from .neurons.store import Exemplar, QuantileGroup, ScanStore, StoreError
from .neurons.weights import NeuronWeights, NeuronWeightsFileError, neuron_weights

__all__ = [
    "SITE_NAMES", "ArchMap", "Site", "Model", "GenerationCancelled", "ModelLoadError", "load",
    "GenerationResult", "RunResult", "Token", "TopK", "AblateHeads", "Edit", "Patch", "Spec", "Steer",
    "ablate_heads", "mean_ablate_neurons", "scale_neurons", "set_neurons", "spec_from_dict",
    "specs_from_json", "specs_to_json", "steer", "zero_neurons", "mean_difference", "neuron_direction",
    "LensFileError", "LensResult", "TunedLens", "logit_lens", "tuned_lens",
    "AblationResult", "PatchingResult", "ablate", "activation_patching", "attribution_patching",
    "default_corpus", "iter_texts", "scan", "ScanStore", "StoreError", "Exemplar", "QuantileGroup",
    "ContrastiveResult", "contrastive_neurons", "ProbeResult", "sparse_probe",
    "Dictionary", "DictionaryError", "load_dictionary", "save_saelens", "FeatureEdit", "Splice", "add_features",
    "feature_direction", "register_dictionary", "scale_features", "set_features", "steer_feature", "zero_features",
    "DictionaryEval", "evaluate_dictionary", "ActivationBuffer", "collect_activations", "NMFResult", "semi_nmf",
    "TrainerConfig", "TrainingCancelled", "train_sae", "NeuronWeights", "NeuronWeightsFileError", "neuron_weights",
    "ChatClient", "ChatResponse", "LLMError", "LocalChatClient", "OpenAIClient", "llm_client",
    "Agent", "AgentResult", "Explanation", "ExplanationStore", "Score", "explain", "explain_units", "score",
    "Hypothesis", "HypothesisResult", "test_hypothesis",
]
__version__ = "0.1.0"
