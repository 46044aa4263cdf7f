"""Crash-safe writes: a file is written beside its target, flushed, then renamed over it.

A reader sees the old file or the new one, never half of one; checkpoints (scan stores,
SAE training) rely on this and on a JSON file written last as their commit point.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def atomic_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (fsynced before the rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors to ``path`` atomically."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
