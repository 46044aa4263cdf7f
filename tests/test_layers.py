"""The package's import rules, checked on the source (AST, function-level imports included).

(a) No module uses a private name (``_x``, not dunder) of another module: ``from .store import _key``,
    ``from workbench.x import _y``, or ``store._key(...)`` / ``ScanStore._open(...)`` on a name imported
    from another workbench module. Private *modules* (``widgets/_base.py``) are fine; their public names are.
(b) Layers: core imports no sibling subpackage; causal, neurons, dictionaries and llm import only core;
    autointerp imports core, neurons and llm; graphs imports core and dictionaries; course (the exercise
    checkers) any engine layer but not the widgets or the agent; agent, the command line, the widgets and the root package
    anything; ``testing.py`` only core. Subpackages take nothing but dunder names (``__version__``) from
    the root, whose names are for users.
(c) No import cycles between modules (runtime imports, lazy ones inside functions included;
    ``if TYPE_CHECKING:`` imports count for the layers, not for cycles).

`check` works on a ``{dotted module: source}`` dict (packages as ``pkg.__init__``), so the tests below
also prove it catches each kind of violation. Dynamic imports (``importlib.import_module(f"...")``)
are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT = "workbench"
ALLOWED = {  # layer -> layers it may import (besides itself)
    "core": set(),
    "causal": {"core"}, "neurons": {"core"}, "dictionaries": {"core"}, "llm": {"core"},
    "autointerp": {"core", "neurons", "llm"},
    "circuits": {"core", "causal", "neurons"},
    "graphs": {"core", "dictionaries"},
    "course": {"core", "causal", "neurons", "dictionaries", "llm", "autointerp", "circuits", "graphs"},
    "testing": {"core"},
    "agent": None, "cli": None, "widgets": None, "root": None,  # None: anything
}


def source_tree() -> dict[str, str]:
    """``{module: source}`` for workbench/ and widgets/ (imported as ``workbench.widgets``)."""
    out = {}
    for folder, prefix in ((REPO / "workbench", ["workbench"]), (REPO / "widgets", ["workbench", "widgets"])):
        for py in sorted(folder.rglob("*.py")):
            if "__pycache__" in py.parts:
                continue
            rel = py.relative_to(folder).with_suffix("").parts
            if folder.name == "workbench" and rel[:1] == ("widgets",):
                continue  # a wheel-style copy would be the same modules
            out[".".join(prefix + list(rel))] = py.read_text()
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def layer(module: str) -> str:
    """The layer of a module: its subpackage under workbench, or root/cli/testing/widgets."""
    parts = module.split(".")
    if parts[0] != ROOT:
        return "external"
    if len(parts) == 1 or parts[1] == "_compat":
        return "root"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1]


class _Imports(ast.NodeVisitor):
    """Every import of one module: (line, target module, imported name or None, type-only), and private uses."""

    def __init__(self, module: str, is_pkg: bool, modules: set[str]) -> None:
        self.module, self.is_pkg, self.modules = module, is_pkg, modules
        self.found: list[tuple[int, str, str | None, bool]] = []
        self.aliases: dict[str, str] = {}  # local name -> dotted project module / object it was imported as
        self.attrs: list[tuple[int, ast.Attribute]] = []
        self.type_only = False

    def _absolute(self, level: int, target: str | None) -> str:
        base = self.module.split(".")
        if not self.is_pkg:
            base = base[:-1]
        if level > 1:
            base = base[: len(base) - (level - 1)]
        return ".".join(base + ([target] if target else []))

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            self.type_only, old = True, self.type_only
            for child in node.body:
                self.visit(child)
            self.type_only = old
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.found.append((node.lineno, a.name, None, self.type_only))
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                self.aliases.setdefault(a.name.split(".")[0], a.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node.level, node.module) if node.level else (node.module or "")
        for a in node.names:
            sub = f"{base}.{a.name}"
            if sub in self.modules:  # `from pkg import submodule`
                self.found.append((node.lineno, sub, None, self.type_only))
            else:
                self.found.append((node.lineno, base, a.name, self.type_only))
            self.aliases[a.asname or a.name] = sub

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _private(node.attr):
            self.attrs.append((node.lineno, node))
        self.generic_visit(node)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path a -> ... -> a) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    out = []
    for comp in comps:  # a shortest path from the first module back to itself, inside the component
        start, inside = comp[0], set(comp)
        prev: dict[str, str | None] = {start: None}
        queue, path = [start], None
        while queue and path is None:
            v = queue.pop(0)
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    break
                if w in inside and w not in prev:
                    prev[w] = v
                    queue.append(w)
        out.append([*reversed(path), start])
    return out


def check(sources: dict[str, str]) -> list[str]:
    """Every violation of rules (a)-(c) in ``{module: source}`` (packages keyed ``pkg.__init__``)."""
    names = {m.removesuffix(".__init__"): m.endswith(".__init__") for m in sources}
    modules = set(names)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for key, src in sorted(sources.items()):
        mod = key.removesuffix(".__init__")
        v = _Imports(mod, names[mod], modules)
        v.visit(ast.parse(src))
        mine = layer(mod)
        for line, target, name, type_only in v.found:
            if not (target == ROOT or target.startswith(ROOT + ".")):
                continue
            where = f"{mod}:{line}"
            if name is not None and _private(name):
                problems.append(f"private: {where} imports {name} from {target}")
            theirs = layer(target)
            if theirs == "root" and mine not in ("root", "cli", "agent", "widgets"):
                if target != ROOT or name is None or not name.startswith("__"):
                    problems.append(f"layer: {where} ({mine}) imports {target}"
                                    f"{'.' + name if name else ''} from the root package")
            elif theirs != mine and ALLOWED.get(mine, set()) is not None and theirs not in ALLOWED.get(mine, set()):
                problems.append(f"layer: {where} ({mine}) imports {target} ({theirs})")
            if target in modules and target != mod and not type_only:
                graph[mod].add(target)
        for line, node in v.attrs:  # `store._key(...)` on a name bound to another workbench module or object
            dotted = _dotted(node.value)
            if dotted is None:
                continue
            head, _, rest = dotted.partition(".")
            bound = v.aliases.get(head)
            if bound is None or not bound.startswith(ROOT):
                continue
            owner = f"{bound}.{rest}" if rest else bound
            if owner != mod:
                problems.append(f"private: {mod}:{line} uses {node.attr} of {owner}")
    problems += [f"cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return problems


# -- the checker catches each kind of violation ----------------------------------------------
def test_checker_reports_a_private_cross_import():
    src = {"workbench.core.__init__": "", "workbench.core.a": "def f():\n    from .b import _helper\n",
           "workbench.core.b": "_helper = 1\n"}
    assert check(src) == ["private: workbench.core.a:2 imports _helper from workbench.core.b"]
    src["workbench.core.a"] = "from workbench.core.b import _helper as helper\n"
    assert check(src) == ["private: workbench.core.a:1 imports _helper from workbench.core.b"]


def test_checker_reports_private_attribute_use_of_another_module():
    src = {"workbench.neurons.__init__": "", "workbench.neurons.store": "class ScanStore: ...\n",
           "workbench.neurons.scan": "from . import store\nfrom .store import ScanStore\n"
                                     "def f(s):\n    store._key(s)\n    return ScanStore._open(s), s._fine\n"}
    assert check(src) == ["private: workbench.neurons.scan:4 uses _key of workbench.neurons.store",
                          "private: workbench.neurons.scan:5 uses _open of workbench.neurons.store.ScanStore"]


def test_checker_reports_an_upward_import():
    src = {"workbench.core.engine": "def f():\n    from ..neurons.store import ScanStore\n",
           "workbench.neurons.store": "class ScanStore: ...\n",
           "workbench.causal.lens": "import workbench.dictionaries.train\n",
           "workbench.dictionaries.train": "",
           "workbench.testing": "from workbench.neurons.store import ScanStore\n"}
    assert check(src) == [
        "layer: workbench.causal.lens:1 (causal) imports workbench.dictionaries.train (dictionaries)",
        "layer: workbench.core.engine:2 (core) imports workbench.neurons.store (neurons)",
        "layer: workbench.testing:1 (testing) imports workbench.neurons.store (neurons)"]


def test_checker_reports_a_cycle_through_a_lazy_import():
    src = {"workbench.core.a": "from .b import x\n", "workbench.core.b": "x = 1\ndef f():\n    from .c import y\n",
           "workbench.core.c": "from .a import z\n"}
    assert check(src) == ["cycle: workbench.core.a -> workbench.core.b -> workbench.core.c -> workbench.core.a"]
    src["workbench.core.c"] = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import z\n"
    assert check(src) == []  # a type-only import is no runtime cycle


def test_checker_allows_what_the_rules_allow():
    src = {"workbench.__init__": "from . import _compat\n__version__ = '1'\n",
           "workbench._compat": "import importlib\n", "workbench.cli": "from .neurons.scan import Model\n",
           "workbench.core.__init__": "from .engine import Model\n",
           "workbench.core.engine": "from .. import __version__\nclass Model: ...\n",
           "workbench.neurons.scan": "from ..core.engine import Model\nfrom workbench.core import Model as M\n",
           "workbench.autointerp.explain": "from ..neurons.scan import Model\nfrom ..llm.client import c\n",
           "workbench.llm.client": "import torch\nc = torch._C\n",
           "workbench.agent.loop": "from ..autointerp.explain import Model\nfrom ..causal import lens\n",
           "workbench.causal.lens": "", "workbench.causal.__init__": "",
           "workbench.widgets.__init__": "from ._base import Job\nfrom workbench.neurons.scan import Model\n",
           "workbench.widgets._base": "class Job:\n    def f(self):\n        return self._x\n"}
    assert check(src) == []
    src["workbench.widgets.__init__"] = "from ._base import _helper\n"
    assert check(src) == ["private: workbench.widgets:1 imports _helper from workbench.widgets._base"]
    src["workbench.widgets.__init__"] = "from ._base import Job\n"
    src["workbench.core.engine"] = "from .. import load\n"
    assert check(src) == ["layer: workbench.core.engine:1 (core) imports workbench.load from the root package"]


# -- the real tree ---------------------------------------------------------------------------
def test_the_source_tree_obeys_the_import_rules():
    tree = source_tree()
    assert {"workbench", "workbench.core.engine", "workbench.widgets"} <= {m.removesuffix(".__init__") for m in tree}
    problems = check(tree)
    if problems:
        pytest.fail("\n".join(problems))
