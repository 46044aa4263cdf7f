"""A hermetic JupyterLab server and Playwright helpers for driving notebooks in Chromium.

`LabServer` starts ``jupyter lab`` on a free localhost port with every Jupyter/home
directory in a temp dir, no token, no news or update check, the app exposed as
``window.jupyterapp`` and a ``python3`` kernelspec that runs this interpreter with the
repository on ``PYTHONPATH``. `NotebookPage` opens a notebook, runs all cells through
the JupyterLab command registry and waits until the kernel is idle.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# User settings written into the temp settings dir: no news/update toasts, and every
# cell kept in the DOM (no virtual scrolling) so widgets below the fold exist.
USER_SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/themes": {"adaptive-theme": False, "theme": "JupyterLab Light"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}


def chromium_path() -> str | None:
    """The system Chromium (Debian's package; ``$CHROMIUM`` overrides), or None."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """``jupyter lab`` in a temp root dir, isolated from the user's Jupyter setup."""

    def __init__(self, base: Path, python: str = sys.executable, app: str = "jupyterlab") -> None:
        self.base = base
        self.python = python
        self.app = app  # "jupyterlab", or "notebook" for Jupyter Notebook 7 (same server, its own UI)
        self.root = base / "root"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = base / "jupyter.log"

    # -- setup -------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        b = self.base
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
        pythonpath = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env.update(
            HOME=str(b / "home"),
            JUPYTER_CONFIG_DIR=str(b / "config"),
            JUPYTER_DATA_DIR=str(b / "data"),
            JUPYTER_RUNTIME_DIR=str(b / "runtime"),
            JUPYTER_PLATFORM_DIRS="1",
            IPYTHONDIR=str(b / "ipython"),
            MPLCONFIGDIR=str(b / "mpl"),
            XDG_CACHE_HOME=str(b / "cache"),
            XDG_CONFIG_HOME=str(b / "xdgconfig"),
            PYTHONPATH=os.pathsep.join(dict.fromkeys(pythonpath)),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TQDM_DISABLE="1",
            PYDEVD_DISABLE_FILE_VALIDATION="1",
            QUICK="1",  # course notebooks shrink corpora and training steps (their code stays the same)
        )
        # Keep the HF cache where it was (read-only use) if the user had one configured.
        if "HF_HOME" not in env:
            env["HF_HOME"] = str(Path(os.environ.get("HOME", "/root")) / ".cache" / "huggingface")
        return env

    def _write_config(self, env: dict[str, str]) -> None:
        b = self.base
        for d in ("home", "config", "data", "runtime", "ipython", "mpl", "cache", "xdgconfig",
                  "root", "settings", "workspaces"):
            (b / d).mkdir(parents=True, exist_ok=True)
        # A python3 kernelspec that runs this interpreter (it shadows any other python3 spec).
        kdir = b / "data" / "kernels" / "python3"
        kdir.mkdir(parents=True, exist_ok=True)
        (kdir / "kernel.json").write_text(json.dumps({
            "argv": [self.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (workbench venv)",
            "language": "python",
            "env": {"PYTHONPATH": env["PYTHONPATH"]},
            "metadata": {"debugger": False},
        }))
        lab = {
            "news_url": None,
            "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
            "expose_app_in_browser": True,
            "user_settings_dir": str(b / "settings"),
            "workspaces_dir": str(b / "workspaces"),
            "extension_manager": "readonly",
        }
        server = {
            "root_dir": str(self.root),
            "open_browser": False,
            "port": self.port,
            "ip": "127.0.0.1",
            "password": "",
            "disable_check_xsrf": True,
            "port_retries": 0,
            "allow_root": True,
            "terminals_enabled": False,
        }
        # Notebook 7 gets only its own flag: LabApp's other keys in its section leave its page config's
        # exposeAppInBrowser false (measured), and the harness needs window.jupyterapp.
        cfg = {"ServerApp": server, "IdentityProvider": {"token": ""}, "LabApp": lab,
               "JupyterNotebookApp": {"expose_app_in_browser": True},
               "LanguageServerManager": {"autodetect": False},
               "MappingKernelManager": {"cull_idle_timeout": 0}}
        for name in ("jupyter_server_config.json", "jupyter_lab_config.json"):
            (b / "config" / name).write_text(json.dumps(cfg, indent=1))
        for plugin, values in USER_SETTINGS.items():
            pkg, name = plugin.rsplit("/", 1)
            path = b / "settings" / pkg / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))

    # -- lifecycle ---------------------------------------------------------------
    def start(self, timeout: float = 90) -> LabServer:
        env = self._env()
        self._write_config(env)
        cmd = [self.python, "-m", self.app, "--no-browser",
               f"--ServerApp.root_dir={self.root}", f"--ServerApp.port={self.port}",
               "--IdentityProvider.token=", "--ServerApp.password=",
               "--ServerApp.disable_check_xsrf=True"]
        if self.app == "notebook":  # Notebook 7 reads its own app class's flag, not LabApp's
            cmd.append("--JupyterNotebookApp.expose_app_in_browser=True")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"jupyter lab did not answer /api/status in {timeout}s:\n{self.log()}")

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def shutdown_kernels(self) -> None:
        """Stop every running kernel (frees the model's memory between notebooks)."""
        try:
            for k in self.api("GET", "/api/kernels"):
                self.api("DELETE", f"/api/kernels/{k['id']}")
        except OSError:
            pass

    def stop(self) -> None:
        if self.proc is None:
            return
        self.shutdown_kernels()
        if self.proc.poll() is None:
            # The server runs in its own session: signal its whole process group (kernels too).
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self._log.close()
        self.proc = None


# JS snippets run in the page (the app is exposed as window.jupyterapp).
_JS_NOTEBOOK = "window.jupyterapp.shell.currentWidget"
_JS_READY = f"""() => {{
  const w = window.jupyterapp && {_JS_NOTEBOOK};
  return !!(w && w.content && w.context && w.context.isReady && w.sessionContext
            && w.sessionContext.session && w.sessionContext.session.kernel
            && w.sessionContext.session.kernel.connectionStatus === 'connected');
}}"""
_JS_IDLE = f"""() => {{
  const w = {_JS_NOTEBOOK};
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  if (!k || k.status !== 'idle') return false;
  const prompts = Array.from(w.node.querySelectorAll('.jp-InputArea-prompt'));
  return !prompts.some(p => p.textContent.includes('*'));
}}"""


class NotebookPage:
    """One notebook open in JupyterLab in its own Playwright page (and workspace)."""

    def __init__(self, page: Any, lab: LabServer, name: str) -> None:
        self.page = page
        self.lab = lab
        self.name = name
        self.all_ran: bool | None = None
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def open(self, timeout: float = 120) -> NotebookPage:
        ws = Path(self.name).stem.replace(" ", "-")
        if self.lab.app == "notebook":  # Jupyter Notebook 7: one document per page
            url = f"{self.lab.url}/notebooks/{self.name}"
        else:
            url = f"{self.lab.url}/lab/workspaces/{ws}/tree/{self.name}?reset"
        self.page.goto(url, wait_until="domcontentloaded")
        self.page.wait_for_function(_JS_READY, timeout=timeout * 1000, polling=250)
        self.page.locator(".jp-Notebook").first.wait_for(state="visible", timeout=timeout * 1000)
        self.page.evaluate("() => window.jupyterapp.shell.collapseLeft && window.jupyterapp.shell.collapseLeft()")
        self.wait_idle(timeout)
        return self

    def run_all(self, timeout: float = 300) -> bool:
        """Run every cell (Run → Run All Cells) and wait for the kernel; True if none failed."""
        self.page.evaluate("""() => {
          window.__runAllDone = undefined;
          window.jupyterapp.commands.execute('notebook:run-all-cells').then(
            ok => { window.__runAllDone = {ok: ok !== false}; },
            err => { window.__runAllDone = {ok: false, error: String(err)}; });
        }""")
        self.page.wait_for_function("() => window.__runAllDone !== undefined",
                                    timeout=timeout * 1000, polling=500)
        self.wait_idle(timeout)
        return bool(self.page.evaluate("() => window.__runAllDone.ok"))

    def wait_idle(self, timeout: float = 120, settle: float = 0.3) -> None:
        """Wait until the kernel is idle and no cell shows ``[*]`` (twice, ``settle`` s apart)."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(1.0, deadline - time.monotonic())
            self.page.wait_for_function(_JS_IDLE, timeout=left * 1000, polling=200)
            self.page.wait_for_timeout(settle * 1000)
            if self.page.evaluate(_JS_IDLE):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("kernel did not settle to idle")

    def execute(self, code: str, timeout: float = 120) -> None:
        """Append a code cell at the end, run it and wait for the kernel."""
        self.page.evaluate("""(code) => {
          const w = window.jupyterapp.shell.currentWidget;
          const nb = w.content;
          nb.activeCellIndex = nb.widgets.length - 1;
          return window.jupyterapp.commands.execute('notebook:insert-cell-below').then(() => {
            nb.activeCell.model.sharedModel.setSource(code);
            return window.jupyterapp.commands.execute('notebook:run-cell');
          });
        }""", code)
        self.wait_idle(timeout)

    def cell_count(self) -> int:
        return self.page.evaluate(f"() => {_JS_NOTEBOOK}.content.widgets.length")

    def error_outputs(self) -> list[str]:
        """Texts of stderr/traceback outputs that look like errors."""
        texts = self.page.locator(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
        return [t for t in texts if "Error" in t or "Traceback" in t]

    def feedback(self) -> dict[str, bool]:
        """``{exercise id: passed}`` from the exercise checkers' outputs (`workbench.course.Feedback`)."""
        rows = self.page.evaluate("""() => Array.from(document.querySelectorAll('.jp-OutputArea-output .iw-feedback'))
          .map(el => [el.dataset.exercise, el.dataset.passed === 'true'])""")
        return dict(rows)

    def widget_views(self) -> int:
        """How many workbench widget views are rendered in the notebook's outputs."""
        return self.page.locator(".jp-OutputArea-output .iw-root").count()

    def cell_output(self, index: int) -> Any:
        """The output area of the index-th cell (negative counts from the end)."""
        cells = self.page.locator(".jp-Notebook .jp-Cell")
        cell = cells.nth(index) if index >= 0 else cells.nth(cells.count() + index)
        return cell.locator(".jp-OutputArea-output")

    def widget(self, css: str, index: int = 0) -> Any:
        """The index-th widget root matching ``css`` inside a notebook output."""
        return self.page.locator(f".jp-OutputArea-output {css}").nth(index)

    def wait_run_count(self, root: Any, above: int = 0, timeout: float = 120) -> int:
        """Wait until a widget root's data-run-count exceeds ``above``; return it."""
        root.wait_for(state="attached", timeout=timeout * 1000)
        handle = root.element_handle(timeout=timeout * 1000)
        self.page.wait_for_function(
            "([el, n]) => Number(el.getAttribute('data-run-count') || 0) > n",
            arg=[handle, above], timeout=timeout * 1000, polling=100)
        return run_count(root)

    def save_logs(self, name: str) -> Path:
        """Write the page's console messages and the server log next to the screenshots."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}-console.log"
        path.write_text("\n".join(self.console) + "\n\n--- jupyter server log ---\n" + self.lab.log())
        return path

    def screenshot(self, name: str, target: Any = None) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        try:
            if target is not None:
                target.scroll_into_view_if_needed(timeout=5000)
                target.screenshot(path=str(path), timeout=10000)
            else:
                self.page.screenshot(path=str(path), timeout=10000)
        except Exception:  # a screenshot must never hide the real failure
            pass
        return path


def run_count(root: Any) -> int:
    return int(root.get_attribute("data-run-count") or 0)


def new_page(browser: Any) -> Any:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    return page


def open_notebook(lab: LabServer, browser: Any, name: str) -> NotebookPage:
    return NotebookPage(new_page(browser), lab, name).open()


def open_and_run(lab: LabServer, browser: Any, name: str, timeout: float = 600) -> NotebookPage:
    """Open a notebook and Run All; ``.all_ran`` says whether every cell succeeded.

    On a timeout or crash the page is screenshotted (``<name>-setup-FAILED.png``) first.
    """
    nb = NotebookPage(new_page(browser), lab, name)
    try:
        nb.open()
        nb.all_ran = nb.run_all(timeout=timeout)
    except Exception:
        stem = f"{Path(name).stem}-setup-FAILED"
        nb.screenshot(stem)
        nb.save_logs(stem)
        close_notebook(nb)
        raise
    return nb


def close_notebook(nb: NotebookPage) -> None:
    try:
        nb.page.context.close()
    finally:
        nb.lab.shutdown_kernels()


def write_notebook(path: Path, cells: list) -> Path:
    """Write a notebook for the venv's python3 kernel; strings become code cells."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) if isinstance(c, str) else c for c in cells]
    nbformat.write(nb, path)
    return path


# Minimum widget views each course notebook renders (the ones its cells end with).
MIN_VIEWS = {
    "01_tour": 3, "02_attention": 2, "03_lens_and_tracing": 2, "04_circuits": 1, "05_neurons": 1,
    "06_dictionaries": 3, "07_attribution_graphs": 1, "08_subspaces": 2, "09_autointerp": 2,
}

def assert_course_run(nb: NotebookPage, stem: str, timeout_ms: int = 240_000) -> None:
    """A course notebook's run: every cell ran, no errors, every exercise check passed, enough widget views rendered."""
    assert nb.all_ran, "Run All stopped at a failing cell"
    assert nb.error_outputs() == []
    prompts = [t.strip() for t in nb.page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]
    assert prompts and all(p.startswith("[") and p[1:-2].strip().isdigit() for p in prompts), prompts
    import nbformat

    from workbench import course

    exercises = [ex for _, ex in course.exercise_cells(nbformat.read(str(REPO / "examples" / f"{stem}.ipynb"), as_version=4))]
    got = nb.feedback()
    assert set(got) == set(exercises) and all(got.values()), got
    want = MIN_VIEWS[stem]
    nb.page.wait_for_function("(n) => document.querySelectorAll('.jp-OutputArea-output .iw-root').length >= n",
                              arg=want, timeout=timeout_ms, polling=500)
    assert nb.widget_views() >= want
    assert nb.page.locator(".jp-OutputArea-output .iw-root .iw-error").count() == 0
