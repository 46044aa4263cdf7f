"""Training checkpoints: one folder per run, ``state.json`` (the commit point) + ``state-<step>.safetensors``.

`StepCheckpoint` is what the SAE trainer and DAS resume from: the tensors are written first, then the
JSON that names them (atomically), and older states are removed, so a run killed at any moment
leaves the last complete checkpoint. `epoch_batch` is their shared, resumable batch order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from .fileio import atomic_json, atomic_tensors

__all__ = ["StepCheckpoint", "STATE_JSON"]

STATE_JSON = "state.json"


class StepCheckpoint:
    """A checkpoint folder of one kind of training (``fmt`` names it; ``error`` is raised on bad files).

    ``read()`` checks the format, the version (refusing newer ones) and the ``required`` keys, and that
    the tensors file holds the step the JSON names.
    """

    def __init__(self, path: str | Path, *, fmt: str, version: int, what: str, error: type[Exception],
                 required: tuple[str, ...] = ("state", "step")):
        self.path = Path(path)
        self.fmt, self.version, self.what, self.error, self.required = fmt, int(version), what, error, required
        if self.path.exists() and not self.path.is_dir():
            raise error(f"checkpoint {self.path} is a file; give a folder path")

    def exists(self) -> bool:
        return (self.path / STATE_JSON).exists()

    def read(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        p = self.path / STATE_JSON
        try:
            info = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self.error(f"{p} is corrupt (not JSON): {exc}") from None
        if not isinstance(info, dict) or info.get("format") != self.fmt:
            raise self.error(f"{p} is not a workbench {self.what} checkpoint")
        if int(info.get("version", 0)) > self.version:
            raise self.error(f"{p} was written by a newer workbench (version {info['version']})")
        for key in self.required:
            if key not in info:
                raise self.error(f"{p} lacks {key!r}: the checkpoint is corrupt")
        tensors, meta = self.load_tensors(self.path / str(info["state"]))
        if meta.get("step") != str(info["step"]):
            raise self.error(f"{self.path / info['state']} holds step {meta.get('step')}, but {p} says "
                             f"{info['step']}: the checkpoint is inconsistent")
        return info, tensors

    def load_tensors(self, path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
        """A safetensors file of this folder with its metadata (the error class for missing or garbled files)."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except FileNotFoundError:
            raise self.error(f"checkpoint file {path} is missing") from None
        except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
            raise self.error(f"checkpoint file {path} is corrupt: {exc}") from None

    def write(self, info: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"state-{int(info['step']):08d}.safetensors"
        atomic_tensors(self.path / name, tensors, {"step": str(info["step"]), "format": self.fmt})
        atomic_json(self.path / STATE_JSON, {**info, "format": self.fmt, "version": self.version, "state": name})
        for old in self.path.glob("state-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def clear(self) -> None:
        (self.path / STATE_JSON).unlink(missing_ok=True)
        for old in self.path.glob("state-*.safetensors"):
            old.unlink(missing_ok=True)

