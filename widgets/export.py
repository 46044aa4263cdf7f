"""A static HTML copy of a notebook: every widget shows its last state, with no kernel and no network.

    import workbench as wb
    wb.export_html("examples/01_tour.ipynb")            # runs it, writes examples/01_tour.html
    wb.export_html("analysis.ipynb", execute=False)     # from the widget state saved in the notebook

    python -m workbench export-html NOTEBOOK [-o OUT] [--no-execute]

A workbench widget's data does not live in its widget state: the view asks the kernel for it
(``rpc_<method>`` replies). So before the notebook's widget state is taken, every open widget
records the replies its view asks for on its first render (`WorkbenchWidget.snapshot`, into its
``_static`` trait; arrays as binary buffers, which the saved state keeps as base64). With
``execute=True`` the notebook runs headless (nbclient) with one extra, final cell that calls
`snapshot_widgets`; the page leaves that cell out. The page is nbconvert's ``lab`` HTML without
require.js, the widgets' html-manager, MathJax or Mermaid from a CDN (nothing that points to
``http(s)`` stays): instead an inlined runtime (``static/static-runtime.js``) renders each view
from the saved state and replays the recorded replies. A control that needs new data shows
"static copy: open the notebook to rerun".
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from workbench.core.fileio import atomic_text

from ._base import WorkbenchWidget, bundle

__all__ = ["export_html", "snapshot_widgets", "static_html", "execute_with_snapshots", "StaticExportError"]

STATE_MIME = "application/vnd.jupyter.widget-state+json"
VIEW_MIME = "application/vnd.jupyter.widget-view+json"
#: Marks the cell `execute_with_snapshots` appends (removed again before the page is built).
SNAPSHOT_TAG = "iw-static-snapshot"
SNAPSHOT_SOURCE = "import workbench.widgets.export as _iw_export\n_iw_export.snapshot_widgets();"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

# nbconvert's lab template, less everything it loads from a CDN; the runtime is added after rendering.
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
# what a browser would fetch from the network: scripts, stylesheets, images, frames; remote CSS urls
_REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//[^>]*>\s*</script>", re.IGNORECASE)
_REMOTE_TAG = re.compile(r"<(?:link|img|iframe|source|audio|video|embed)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//[^>]*>",
                         re.IGNORECASE)
_REMOTE_CSS = re.compile(r"@import\s+(?:url\()?[\"']?(?:https?:)?//[^;]*;|url\(\s*[\"']?(?:https?:)?//[^)]*\)", re.IGNORECASE)


class StaticExportError(RuntimeError):
    """The notebook cannot be exported as a static page (no widget state, a failing cell, ...)."""


def snapshot_widgets() -> int:
    """Record the first-render replies of every open workbench widget (see `WorkbenchWidget.snapshot`).

    Call it as a notebook's last cell before saving the notebook with its widget state, or let
    `export_html` do it. Returns how many widgets were recorded.
    """
    return WorkbenchWidget.snapshot_all()


def _kernel_env() -> dict[str, str]:
    """PYTHONPATH with the folder that holds this `workbench` first (it may not be installed)."""
    import workbench

    root = str(Path(workbench.__file__).resolve().parents[1])
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def execute_with_snapshots(nb: Any, cwd: str | os.PathLike[str], timeout: int = 600,
                           python: str = sys.executable) -> Any:
    """Run every cell of `nb` (in place) in a kernel of `python`, then `snapshot_widgets`; keep the widget state.

    The appended snapshot cell is removed again. Raises `StaticExportError` when a cell fails.
    """
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    cell = nbformat.v4.new_code_cell(SNAPSHOT_SOURCE, metadata={"tags": [SNAPSHOT_TAG]})
    nb.cells.append(cell)
    try:
        with tempfile.TemporaryDirectory(prefix="iw-kernels-") as tmp:
            kdir = Path(tmp) / "kernels" / "iw-python"
            kdir.mkdir(parents=True)
            (kdir / "kernel.json").write_text(json.dumps({
                "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python (interp-workbench)", "language": "python", "env": _kernel_env(),
            }))
            km = KernelManager(kernel_name="iw-python", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(Path(tmp) / "kernels")]))
            client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="iw-python", store_widget_state=True,
                                    resources={"metadata": {"path": str(cwd)}})
            try:
                client.execute()
            except CellExecutionError as exc:
                raise StaticExportError(f"a cell failed while running the notebook for its static copy:\n{exc}") from None
            finally:  # nbclient leaves a kernel it did not create running
                if km.has_kernel:
                    km.shutdown_kernel(now=True)
    finally:
        nb.cells = [c for c in nb.cells if SNAPSHOT_TAG not in c.get("metadata", {}).get("tags", [])]
    nb.metadata["kernelspec"] = dict(KERNELSPEC)  # the temporary kernel's name is not the notebook's
    return nb


def widget_state(nb: Any) -> dict[str, Any]:
    """The notebook's saved widget models (``{model_id: model}``), or a `StaticExportError` saying how to save them."""
    state = (nb.metadata.get("widgets") or {}).get(STATE_MIME, {}).get("state")
    if not state:
        raise StaticExportError(
            "this notebook has no saved widget state, so its widgets cannot be shown without a kernel: "
            "export it with execute=True (`python -m workbench export-html NOTEBOOK`, which runs it), or in "
            "JupyterLab run `workbench.widgets.export.snapshot_widgets()` last, then Settings → Save Widget State "
            "Automatically, and save the notebook")
    return dict(state)


def _runtime_script() -> str:
    js = bundle("static-runtime").read_text(encoding="utf-8")
    return '<script type="module" data-iw-static-runtime>\n' + js.replace("</script", "<\\/script") + "\n</script>\n"


def strip_remote(html: str) -> str:
    """Remove every script, stylesheet, image or frame the page would fetch over the network, and remote CSS urls."""
    html = _REMOTE_SCRIPT.sub("", html)
    html = _REMOTE_TAG.sub("", html)
    return _REMOTE_CSS.sub(lambda m: "" if m.group(0).startswith("@") else "url()", html)


def static_html(nb: Any, name: str = "notebook") -> str:
    """The static page of a notebook that carries its widget state (see the module docstring)."""
    import jinja2
    from nbconvert import HTMLExporter

    models = widget_state(nb)
    unrecorded = [m for m in models.values() if "_static" in m.get("state", {}) and not m["state"]["_static"]]
    if unrecorded:
        warnings.warn(f"{len(unrecorded)} workbench widget(s) in the saved state recorded no replies, so their "
                      "views will be empty: run `workbench.widgets.export.snapshot_widgets()` before saving, "
                      "or export with execute=True", stacklevel=2)
    exporter = HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({"iw_static.html.j2": _TEMPLATE})])
    exporter.template_file = "iw_static.html.j2"
    html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": name}})
    html = strip_remote(html)
    at = html.rfind("</html>")
    runtime = _runtime_script()
    return html[:at] + runtime + html[at:] if at >= 0 else html + runtime


def export_html(notebook: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, execute: bool = True,
                timeout: int = 600) -> Path:
    """Write a static HTML copy of `notebook` (default: beside it, ``.html``) whose widgets show their last state.

    ``execute=True`` runs the notebook first (nbclient; each cell within `timeout` seconds) and records
    every widget's replies; ``execute=False`` uses the widget state saved in the notebook (a clear
    error if there is none). The page needs no kernel and makes no network request. Returns its path.
    """
    import nbformat

    src = Path(notebook)
    if not src.is_file():
        raise FileNotFoundError(f"no notebook at {src}")
    dest = Path(out) if out is not None else src.with_suffix(".html")
    nb = nbformat.read(str(src), as_version=4)
    if execute:
        execute_with_snapshots(nb, cwd=src.resolve().parent, timeout=timeout)
    html = static_html(nb, name=src.stem)
    atomic_text(dest, html)
    return dest
