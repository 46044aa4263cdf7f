"""Hatch build hook: bundle js/ with esbuild into widgets/static before packaging."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class JSBuildHook(BuildHookInterface):
    """Run `npm ci` (when needed) and `node build.mjs` in js/."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        root = Path(self.root)
        js = root / "js"
        out = root / "widgets" / "static"
        if os.environ.get("WORKBENCH_SKIP_JS") == "1" or not (js / "package.json").exists():
            return
        npm = shutil.which("npm")
        node = shutil.which("node")
        if not npm or not node:
            if any(out.glob("*.js")):
                return
            raise RuntimeError("Building interp-workbench needs Node.js and npm to bundle js/.")
        if not (js / "node_modules" / "esbuild").exists():
            cmd = "ci" if (js / "package-lock.json").exists() else "install"
            subprocess.run([npm, cmd, "--no-audit", "--no-fund"], cwd=js, check=True)
        subprocess.run([node, "build.mjs"], cwd=js, check=True)
