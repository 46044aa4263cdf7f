"""Interp Workbench: neuron-level interpretability on nnsight, with live widgets.

    import workbench as wb
    model = wb.load()                       # the embedded SmolLM2-135M-Instruct, offline
    res = model.run("The capital of France is", capture=["neurons.10"])
    res.to_pandas()                          # top next-token predictions
    model.run("...", [wb.zero_neurons(10, [42])])

The root holds the everyday names (`__all__`); each capability's full API is in its subpackage:
`workbench.core` (model, sites, specs, results), `workbench.causal` (patching, lenses, directions),
`workbench.neurons` (scans, weights, contrastive sets, probes, hypotheses), `workbench.dictionaries`
(SAEs and transcoder sets: load, splice, train, evaluate), `workbench.circuits` (tasks, EAP, edge and path patching,
faithfulness, head scores), `workbench.graphs` (attribution graphs over transcoders), `workbench.llm`, `workbench.autointerp`, `workbench.agent`,
and the widgets in `workbench.widgets`. Names load on first use, so ``import workbench`` is cheap.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import Any

from ._compat import OLD_MODULES as _OLD_MODULES
from ._compat import install

__version__ = "0.1.0"

#: The root's names -> the module (under ``workbench.``) that defines each, or the subpackage whose facade has it.
_EXPORTS = {
    # model, sites, results
    "load": "core.loading", "Model": "core.engine",
    "Site": "core.sites", "SITE_NAMES": "core.sites", "ArchMap": "core.arch",
    "RunResult": "core.results",
    "WorkbenchError": "core.errors", "Cancelled": "core.errors", "default_corpus": "core.corpus",
    # interventions
    "Spec": "core.specs", "Edit": "core.specs", "Steer": "core.specs", "Patch": "core.specs",
    "AblateHeads": "core.specs", "zero_neurons": "core.specs", "scale_neurons": "core.specs",
    "set_neurons": "core.specs", "mean_ablate_neurons": "core.specs", "ablate_heads": "core.specs",
    "steer": "core.specs", "specs_to_json": "core.specs",
    "specs_from_json": "core.specs",
    # one entry point per capability
    "logit_lens": "causal.lens", "tuned_lens": "causal.lens", "activation_patching": "causal.patching",
    "attribution_patching": "causal.patching", "ablate": "causal.patching", "mean_difference": "causal.directions",
    "integrated_gradients": "causal.attribution",
    "Subspace": "causal.subspaces",
    "scan": "neurons.scan", "neuron_weights": "neurons.weights",
    "contrastive_neurons": "neurons.contrastive", "sparse_probe": "neurons.probing",
    "test_hypothesis": "neurons.hypotheses",
    "load_dictionary": "dictionaries.formats", "train_sae": "dictionaries.train",
    "evaluate_dictionary": "dictionaries.evaluate",
    "train_transcoders": "dictionaries.transcoders", "load_transcoders": "dictionaries.transcoders",
    "TranscoderSet": "dictionaries.transcoders",
    "explain": "autointerp", "score": "autointerp", "Agent": "agent", "llm_client": "llm",
    "eap": "circuits.attribution", "head_scores": "circuits.heads",
    "attribute": "graphs.attribute", "import_graph": "graphs.importing",
    # a static HTML copy of a notebook, its widgets included
    "export_html": "widgets.export",
}
#: Names the 0.1 root exported that now live only in their subpackage (a DeprecationWarning, then the object).
_MOVED = {
    "neuron_direction": "causal.directions", "zero_features": "dictionaries.features", "scale_features": "dictionaries.features", "set_features": "dictionaries.features", "steer_feature": "dictionaries.features", "Splice": "dictionaries.features", "Hypothesis": "neurons.hypotheses", "ScanStore": "neurons.store", "spec_from_dict": "core.specs", "ModelLoadError": "core.loading",
    "ActivationBuffer": "core.activations", "collect_activations": "core.activations",
    "iter_texts": "core.corpus", "GenerationCancelled": "core.engine", "GenerationResult": "core.results",
    "Token": "core.results", "TopK": "core.results", "Dictionary": "dictionaries.dictionary",
    "FeatureEdit": "dictionaries.features", "LensFileError": "causal.lens", "LensResult": "causal.lens",
    "TunedLens": "causal.lens", "AblationResult": "causal.patching", "PatchingResult": "causal.patching",
    "ContrastiveResult": "neurons.contrastive", "HypothesisResult": "neurons.hypotheses",
    "ProbeResult": "neurons.probing", "Exemplar": "neurons.store", "QuantileGroup": "neurons.store",
    "StoreError": "neurons.store", "NeuronWeights": "neurons.weights", "NeuronWeightsFileError": "neurons.weights",
    "DictionaryError": "dictionaries.dictionary", "save_saelens": "dictionaries.formats",
    "add_features": "dictionaries.features",
    "feature_direction": "dictionaries.features", "register_dictionary": "dictionaries.features",
    "DictionaryEval": "dictionaries.evaluate", "NMFResult": "dictionaries.nmf", "semi_nmf": "dictionaries.nmf",
    "TrainerConfig": "dictionaries.train", "TrainingCancelled": "dictionaries.train",
    "ChatClient": "llm", "ChatResponse": "llm", "LLMError": "llm", "LocalChatClient": "llm", "OpenAIClient": "llm",
    "AgentResult": "agent", "Explanation": "autointerp", "ExplanationStore": "autointerp", "Score": "autointerp",
    "explain_units": "autointerp",
}
_SUBPACKAGES = frozenset({"core", "causal", "neurons", "dictionaries", "llm", "autointerp", "circuits", "graphs", "agent",
                          "widgets", "cli", "testing"})

__all__ = list(_EXPORTS)


def _resolve(name: str, where: str) -> Any:
    """The object `name` from its module ``where`` (or its subpackage's facade, if it is not there)."""
    package = f"{__name__}.{where.split('.')[0]}"
    if "." in where:
        try:
            value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
        except (ModuleNotFoundError, AttributeError):
            pass
        else:
            return value
    return getattr(importlib.import_module(package), name)


def _home(name: str, module: str) -> str:
    """Where to import `name` from now: its subpackage when the facade exports it, else its module."""
    package = sys.modules.get(f"{__name__}.{module.split('.')[0]}")
    return package.__name__ if name in getattr(package, "__all__", ()) or "." not in module else f"{__name__}.{module}"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = globals()[name] = _resolve(name, _EXPORTS[name])
        return value
    if name in _MOVED:
        value = _resolve(name, _MOVED[name])
        warnings.warn(f"`workbench.{name}` moved: use `{_home(name, _MOVED[name])}.{name}` "
                      "(the root name goes in 0.2)", DeprecationWarning, stacklevel=2)
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *_SUBPACKAGES, *(k for k in globals() if k.startswith("__"))})


class _Root(types.ModuleType):
    """The package module: an old module path (``import workbench.scan``) must not rebind the root's name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (name in _EXPORTS and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{_OLD_MODULES.get(name)}"):
            return  # the import system binding the aliased module ``workbench.scan`` over the function `scan`
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Root
install()
del install  # keep the root namespace to its exports
