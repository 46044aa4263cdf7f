"""Interp Workbench: neuron-level interpretability on nnsight, with live widgets.

    import workbench as wb
    model = wb.load()                       # the embedded SmolLM2-135M-Instruct, offline
    res = model.run("The capital of France is", capture=["neurons.10"])
    res.to_pandas()                          # top next-token predictions
    model.run("...", [wb.zero_neurons(10, [42])])
"""

from .activations import ActivationBuffer, collect_activations
from .agent import Agent, AgentResult
from .arch import SITE_NAMES, ArchMap, Site
from .autointerp import Explanation, ExplanationStore, Score, explain, explain_units, score
from .contrastive import ContrastiveResult, contrastive_neurons
from .corpus import default_corpus, iter_texts
from .dict_formats import load_dictionary, save_saelens
from .dictionary import Dictionary, DictionaryError
from .directions import mean_difference, neuron_direction
from .engine import GenerationCancelled, Model
from .features import (
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
from .hypotheses import Hypothesis, HypothesisResult, test_hypothesis
from .lens import LensFileError, LensResult, TunedLens, logit_lens, tuned_lens
from .llm import ChatClient, ChatResponse, LLMError, LocalChatClient, OpenAIClient, llm_client
from .loading import ModelLoadError, load
from .nmf import NMFResult, semi_nmf
from .patching import (
    AblationResult,
    PatchingResult,
    ablate,
    activation_patching,
    attribution_patching,
)
from .probing import ProbeResult, sparse_probe
from .results import GenerationResult, RunResult, Token, TopK
from .sae_eval import DictionaryEval, evaluate_dictionary
from .sae_train import TrainerConfig, TrainingCancelled, train_sae
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
from .weights import NeuronWeights, NeuronWeightsFileError, neuron_weights

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
