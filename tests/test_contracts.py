"""Package-wide contracts: one root exception, one cancellation convention, viewers for every `.show()`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import workbench
from workbench.core.errors import Cancelled, WorkbenchError
from workbench.core.viewers import Showable, registered_viewers


def _modules():
    mods = []
    for info in pkgutil.walk_packages(workbench.__path__, "workbench."):
        if info.name.startswith("workbench.widgets") or info.name.endswith("__main__"):
            continue
        mods.append(importlib.import_module(info.name))
    return mods


def _defined_classes(base: type):
    seen = {}
    for mod in _modules():
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, base) and obj.__module__ == mod.__name__:
                seen[f"{mod.__name__}.{name}"] = obj
    return seen


def test_every_project_exception_derives_from_workbench_error():
    excs = {k: v for k, v in _defined_classes(BaseException).items() if not k.rsplit(".", 1)[1].startswith("_")}
    assert len(excs) >= 10, sorted(excs)
    stray = sorted(k for k, v in excs.items() if not issubclass(v, WorkbenchError) and not issubclass(v, Warning))
    assert not stray, f"exceptions outside the WorkbenchError tree: {stray}"


def test_standard_bases_are_kept_where_they_help():
    from workbench.dictionaries import DictionaryError

    assert issubclass(DictionaryError, ValueError) and issubclass(DictionaryError, WorkbenchError)


@pytest.mark.parametrize("path", ["workbench.core.engine.GenerationCancelled", "workbench.neurons.scan.ScanCancelled",
                                  "workbench.dictionaries.train.TrainingCancelled",
                                  "workbench.agent.AgentCancelled"])
def test_every_cancellation_is_a_cancelled(path):
    mod, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(mod), name)
    assert issubclass(cls, Cancelled)
    assert cls("stopped", partial=42).partial == 42 if "partial" in inspect.signature(cls).parameters else True


def test_every_showable_result_has_a_viewer():
    import workbench.widgets  # noqa: F401  (registers the built-in viewers)

    viewers = registered_viewers()
    showable = {k: v for k, v in _defined_classes(Showable).items() if v is not Showable}
    assert len(showable) >= 6, sorted(showable)
    missing = sorted(k for k, cls in showable.items() if not any(c in viewers for c in cls.__mro__))
    assert not missing, f".show() without a registered viewer: {missing}"


def test_ablation_results_have_no_show():
    from workbench.causal.patching import AblationResult

    assert not hasattr(AblationResult, "show")
