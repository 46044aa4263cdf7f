"""The root namespace, the old import names, `workbench.widgets` and the command line."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import workbench as wb
import workbench.widgets as W
from workbench._compat import OLD_MODULES

REPO = Path(__file__).resolve().parents[1]

#: The 0.1 root's `__all__`: every one must still resolve as ``wb.X``.
OLD_ROOT = """SITE_NAMES ArchMap Site Model GenerationCancelled ModelLoadError load GenerationResult RunResult Token
    TopK AblateHeads Edit Patch Spec Steer ablate_heads mean_ablate_neurons scale_neurons set_neurons spec_from_dict
    specs_from_json specs_to_json steer zero_neurons mean_difference neuron_direction LensFileError LensResult
    TunedLens logit_lens tuned_lens AblationResult PatchingResult ablate activation_patching attribution_patching
    default_corpus iter_texts scan ScanStore StoreError Exemplar QuantileGroup ContrastiveResult contrastive_neurons
    ProbeResult sparse_probe Dictionary DictionaryError load_dictionary save_saelens FeatureEdit Splice add_features
    feature_direction register_dictionary scale_features set_features steer_feature zero_features DictionaryEval
    evaluate_dictionary ActivationBuffer collect_activations NMFResult semi_nmf TrainerConfig TrainingCancelled
    train_sae NeuronWeights NeuronWeightsFileError neuron_weights ChatClient ChatResponse LLMError LocalChatClient
    OpenAIClient llm_client Agent AgentResult Explanation ExplanationStore Score explain explain_units score
    Hypothesis HypothesisResult test_hypothesis""".split()
HEAVY = ("workbench.agent", "workbench.llm", "workbench.autointerp", "workbench.dictionaries",
         "workbench.dictionaries.train", "workbench.neurons", "workbench.causal", "workbench.widgets")


def run_python(code: str, cwd: Path | str = REPO, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


# -- the root --------------------------------------------------------------------------------
def test_import_workbench_loads_no_capability():
    out = run_python("import json, sys, workbench; print(json.dumps(sorted(sys.modules)))")
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert "workbench" in loaded and not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_all_is_small_and_resolves_without_warnings():
    assert 25 <= len(wb.__all__) <= 50 and len(set(wb.__all__)) == len(wb.__all__)
    assert set(wb.__all__) <= set(dir(wb))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in wb.__all__:
            assert getattr(wb, name) is not None, name
    assert callable(wb.scan) and wb.Site.__module__ == "workbench.core.sites"
    assert issubclass(wb.Cancelled, wb.WorkbenchError)


@pytest.mark.parametrize("name", sorted(set(OLD_ROOT) - set(wb.__all__)))
def test_an_old_root_name_warns_with_its_new_home(name):
    with pytest.warns(DeprecationWarning, match=rf"workbench\.{name}` moved: use `(workbench\.[a-z_.]+)\.{name}`") as rec:
        value = getattr(wb, name)
    home = re.search(rf"use `([a-z_.]+)\.{name}`", str(rec[0].message)).group(1)
    assert getattr(importlib.import_module(home), name) is value
    assert rec[0].filename == __file__  # attributed to the caller


def test_every_old_root_name_resolves():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        missing = [n for n in OLD_ROOT if getattr(wb, n, None) is None]
    assert not missing
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        wb.nope  # noqa: B018
    assert wb.neurons is sys.modules["workbench.neurons"]  # subpackages load on attribute access


# -- old module paths --------------------------------------------------------------------------
@pytest.mark.parametrize("old", sorted(OLD_MODULES))
def test_an_old_module_path_is_the_new_module(old):
    sys.modules.pop(f"workbench.{old}", None)  # only the alias entry: the module itself stays loaded
    with pytest.warns(DeprecationWarning, match=f"`workbench.{old}` moved to `workbench.{OLD_MODULES[old]}`"):
        mod = importlib.import_module(f"workbench.{old}")
    assert mod is importlib.import_module(f"workbench.{OLD_MODULES[old]}")
    assert sys.modules[f"workbench.{old}"] is mod and mod.__name__ == f"workbench.{OLD_MODULES[old]}"


def test_from_old_path_import_and_the_scan_function_survives():
    for old in ("patching", "scan", "sae_train", "dict_formats"):
        sys.modules.pop(f"workbench.{old}", None)
    with pytest.warns(DeprecationWarning) as rec:
        import workbench.scan  # noqa: F401
        from workbench.dict_formats import load_dictionary
        from workbench.patching import activation_patching
        from workbench.sae_train import train_sae
        from workbench.scan import iter_windows
    assert {r.filename for r in rec} == {__file__}
    assert activation_patching is wb.activation_patching and train_sae is wb.train_sae
    assert load_dictionary is wb.load_dictionary and iter_windows.__module__ == "workbench.neurons.scan"
    assert callable(wb.scan) and wb.scan.__module__ == "workbench.neurons.scan"  # not rebound to the module


# -- workbench.widgets -----------------------------------------------------------------------
def test_old_widgets_name_gives_the_same_modules_with_a_warning():
    for name in [m for m in sys.modules if m == "widgets" or m.startswith("widgets.")]:
        sys.modules.pop(name)
    with pytest.warns(DeprecationWarning, match="now `workbench.widgets`"):
        import widgets
        from widgets import SteeringPanel
        from widgets.patching import PatchingHeatmap
    assert widgets is W and SteeringPanel is W.SteeringPanel
    assert PatchingHeatmap is sys.modules["workbench.widgets.patching"].PatchingHeatmap
    assert sys.modules["widgets.patching"] is sys.modules["workbench.widgets.patching"]
    assert W.PatchingHeatmap.__module__ == "workbench.widgets.patching"


def test_old_widgets_name_before_workbench_loads_nothing_twice(tmp_path):
    code = ("import sys, warnings\nwarnings.simplefilter('always')\nimport widgets\n"
            "from widgets.steering import SteeringPanel\nimport workbench.widgets as W\n"
            "from workbench.widgets.steering import SteeringPanel as S\n"
            "assert widgets is W and SteeringPanel is S, (widgets, W)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'widgets'))")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert "DeprecationWarning" in out.stderr and "<string>:3" in out.stderr  # attributed to the import line
    assert json.loads(out.stdout.replace("'", '"')) == ["widgets", "widgets.steering"]


def test_workbench_widgets_cannot_be_shadowed(tmp_path):
    (tmp_path / "widgets").mkdir()
    (tmp_path / "widgets" / "__init__.py").write_text("MINE = True\n")
    code = ("import warnings\nwarnings.simplefilter('error')\nimport widgets\n"
            "from workbench.widgets import SteeringPanel\nimport workbench.widgets as W\n"
            "assert widgets.MINE and widgets is not W\nprint(W.__file__)")
    out = run_python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == REPO / "widgets" / "__init__.py"


def test_viewers_entry_point_names_workbench_widgets():
    (ep,) = [e for e in entry_points(group="workbench.viewers") if e.name == "widgets"]
    assert ep.value == "workbench.widgets:register_viewers"
    assert ep.load() is W.register_viewers


# -- command line ----------------------------------------------------------------------------
def test_cli_usage_and_a_cancelled_scan(monkeypatch, capsys):
    from workbench import cli
    from workbench.core import loading
    scan_mod = importlib.import_module("workbench.neurons.scan")  # the module (the facade's `scan` is the function)

    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2 and "python -m workbench scan" in capsys.readouterr().out

    def cancelled(*a, **k):
        raise wb.Cancelled("scan cancelled", partial=None)

    monkeypatch.setattr(loading, "load", lambda *a, **k: "model")
    monkeypatch.setattr(scan_mod, "scan", cancelled)
    with pytest.raises(SystemExit) as e:
        cli.main(["scan", "--out", "somewhere"])
    assert e.value.code == 130 and "run the same command again to resume" in capsys.readouterr().err


def test_python_dash_m_workbench_without_a_command():
    out = subprocess.run([sys.executable, "-m", "workbench"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 2 and "python -m workbench merge" in out.stdout
