"""Import names that keep working: the 0.1 module paths, and `workbench.widgets` from a source checkout.

- The flat modules of 0.1 moved into subpackages (`workbench.engine` is `workbench.core.engine`,
  `workbench.sae_train` is `workbench.dictionaries.train`, ...). Importing an old path warns
  (`DeprecationWarning`) and gives the new module itself, not a copy. The old paths go in 0.2.
- The widgets' source is the top-level ``widgets/`` folder. A wheel installs it as
  ``workbench/widgets``; in a source or editable checkout the finder here imports that folder
  under the name `workbench.widgets`, so the import name cannot be shadowed by another ``widgets``.
- ``import widgets`` (the old name) warns and gives the `workbench.widgets` modules themselves, so
  nothing loads twice and classes are identical. A different package called ``widgets`` earlier
  on ``sys.path`` is left alone.

`install` (run by ``import workbench``) puts the finder first on `sys.meta_path`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

__all__ = ["OLD_MODULES", "WIDGETS", "install", "widgets_folder", "adopt_old_widgets_name"]

#: 0.1 module path (under ``workbench.``) -> its new home. ``llm``, ``autointerp`` and ``agent``
#: are packages now whose facades export the old names, so they need no alias.
OLD_MODULES = {
    "arch": "core.arch", "specs": "core.specs", "engine": "core.engine", "results": "core.results",
    "loading": "core.loading", "corpus": "core.corpus", "fileio": "core.fileio", "viewers": "core.viewers",
    "activations": "core.activations",
    "patching": "causal.patching", "lens": "causal.lens", "directions": "causal.directions",
    "scan": "neurons.scan", "store": "neurons.store", "weights": "neurons.weights",
    "contrastive": "neurons.contrastive", "probing": "neurons.probing", "hypotheses": "neurons.hypotheses",
    "dictionary": "dictionaries.dictionary", "dict_formats": "dictionaries.formats",
    "features": "dictionaries.features", "sae_train": "dictionaries.train", "sae_eval": "dictionaries.evaluate",
    "nmf": "dictionaries.nmf",
}
#: The widgets' import name.
WIDGETS = "workbench.widgets"

_PKG = os.path.dirname(os.path.abspath(__file__))
_WHEEL_WIDGETS = os.path.join(_PKG, "widgets")  # a wheel: workbench/widgets/
_SOURCE_WIDGETS = os.path.join(os.path.dirname(_PKG), "widgets")  # a checkout: widgets/ beside workbench/
_WIDGETS_MOVED = ("the `widgets` package is now `workbench.widgets`: write `from workbench.widgets import ...` "
                  "(the old name goes in 0.2)")


def widgets_folder() -> str | None:
    """The folder `workbench.widgets` loads from (the wheel's ``workbench/widgets`` or a checkout's ``widgets/``)."""
    for folder in (_WHEEL_WIDGETS, _SOURCE_WIDGETS):
        if os.path.isfile(os.path.join(folder, "__init__.py")):
            return folder
    return None


def _warn(message: str) -> None:
    """A DeprecationWarning attributed to the code that wrote the import (not to the import machinery)."""
    here = {os.path.normcase(__file__), os.path.normcase(os.path.join(_SOURCE_WIDGETS, "__init__.py"))}
    frame, level = sys._getframe(1), 2
    while frame is not None:
        file = frame.f_code.co_filename
        if "importlib" in file and "_bootstrap" in file:  # warnings skips these frames itself
            frame = frame.f_back
        elif os.path.normcase(file) in here or frame.f_globals.get("__name__") == "importlib":
            frame, level = frame.f_back, level + 1
        else:
            break
    warnings.warn(message, DeprecationWarning, stacklevel=level)


class _Alias:
    """Loads an old name as the module of its new name: the same object, registered under both."""

    def __init__(self, target: str, message: str | None) -> None:
        self.target, self.message = target, message

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a throwaway module; exec_module replaces it in sys.modules

    def exec_module(self, module: ModuleType) -> None:
        if self.message:
            _warn(self.message)
        sys.modules[module.__name__] = importlib.import_module(self.target)


def _is_source_widgets(spec: importlib.machinery.ModuleSpec | None) -> bool:
    origin = getattr(spec, "origin", None)
    return bool(origin) and os.path.realpath(origin) == os.path.realpath(os.path.join(_SOURCE_WIDGETS, "__init__.py"))


class _Finder:
    """The old module paths, `workbench.widgets` from a checkout, and the old ``widgets`` name."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name.startswith("workbench."):
            rest = name[len("workbench."):]
            if rest in OLD_MODULES:
                new = f"workbench.{OLD_MODULES[rest]}"
                return importlib.util.spec_from_loader(name, _Alias(new, f"`{name}` moved to `{new}` (the old path goes in 0.2)"))
            if rest == "widgets" and widgets_folder() == _SOURCE_WIDGETS:
                return importlib.util.spec_from_file_location(name, os.path.join(_SOURCE_WIDGETS, "__init__.py"),
                                                              submodule_search_locations=[_SOURCE_WIDGETS])
            return None
        if name == "widgets":
            found = importlib.machinery.PathFinder.find_spec(name)  # what sys.path alone would import
            if (found is None or _is_source_widgets(found)) and widgets_folder() is not None:
                return importlib.util.spec_from_loader(name, _Alias(WIDGETS, _WIDGETS_MOVED))
            return None
        if name.startswith("widgets.") and sys.modules.get("widgets") is sys.modules.get(WIDGETS) is not None:
            return importlib.util.spec_from_loader(name, _Alias(f"workbench.{name}", None))
        return None


def install() -> None:
    """Put the finder first on `sys.meta_path` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def adopt_old_widgets_name(name: str = "widgets") -> ModuleType:
    """``widgets/__init__.py`` run as ``widgets`` (before ``import workbench``): become `workbench.widgets`."""
    _warn(_WIDGETS_MOVED)
    install()
    sys.modules[name] = module = importlib.import_module(WIDGETS)
    return module
