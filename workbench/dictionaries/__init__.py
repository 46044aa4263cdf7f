"""Sparse dictionaries (SAEs, transcoders, semi-NMF): load, save, edit features, evaluate, train.

    d = load_dictionary("path/to/sae", model=model)     # SAELens, sparsify, dictionary_learning
    model.run(prompt, [scale_features(d, [123], 4.0)])
    ev = evaluate_dictionary(model, d)
    sae = train_sae(model, "resid_post.9", config=TrainerConfig(k=32))
    tset = train_transcoders(model, layers="0-5", folder="runs/tc")   # or load_transcoders(folder / config)
    clt = CrossLayerTranscoder.load("path/to/clt")                     # cross-layer transcoders

Architectures are registered classes (`architectures`); `register_architecture` adds one.
Activation collection (`ActivationBuffer`, `collect_activations`) lives in `workbench.core.activations`.
"""

from .architectures import (
    ARCHITECTURES,
    NMF,
    Architecture,
    Gated,
    JumpReLU,
    ReLU,
    TopK,
    get_architecture,
    register_architecture,
)
from .clt import CLTFeatureEdit, CrossLayerTranscoder, get_clt, register_clt, registered_clts
from .dictionary import Dictionary
from .errors import DictionaryError, DictionaryWarning
from .evaluate import DictionaryEval, evaluate_dictionary
from .features import (
    FEATURE_OPS,
    DictionarySpec,
    FeatureEdit,
    Splice,
    add_features,
    feature_delta,
    feature_direction,
    get_dictionary,
    register_dictionary,
    registered_dictionaries,
    scale_features,
    set_features,
    steer_feature,
    unregister_dictionary,
    zero_features,
)
from .formats import detect_format, hook_to_site, load_dictionary, save_saelens, site_to_hook
from .nmf import NMFResult, semi_nmf
from .train import CheckpointError, TopKTrainer, TrainerConfig, TrainingCancelled, train_sae
from .transcoders import TRANSCODER_DEFAULTS, TranscoderSet, load_transcoders, train_transcoders

__all__ = [
    "Dictionary", "DictionaryError", "DictionaryWarning",
    "Architecture", "ARCHITECTURES", "register_architecture", "get_architecture", "ReLU", "TopK", "JumpReLU",
    "Gated", "NMF",
    "load_dictionary", "save_saelens", "detect_format", "hook_to_site", "site_to_hook",
    "DictionarySpec", "FeatureEdit", "Splice", "FEATURE_OPS", "zero_features", "scale_features", "set_features",
    "add_features", "feature_delta", "feature_direction", "steer_feature", "register_dictionary", "get_dictionary",
    "unregister_dictionary", "registered_dictionaries",
    "DictionaryEval", "evaluate_dictionary", "NMFResult", "semi_nmf",
    "train_sae", "TrainerConfig", "TopKTrainer", "TrainingCancelled", "CheckpointError",
    "TranscoderSet", "CrossLayerTranscoder", "CLTFeatureEdit", "load_transcoders", "train_transcoders",
    "TRANSCODER_DEFAULTS", "register_clt", "get_clt", "registered_clts",
]
