"""Crash-safe writes: a file is written beside its target, fsynced, then renamed over it.

A reader sees the old file or the new one, never half of one; checkpoints (scan stores,
SAE training) rely on this and on a JSON file written last as their commit point. Folders
(`atomic_folder`) are written into a temporary sibling, fsynced, and only then swapped in, so
a crash mid-save leaves the previous folder as it was. Temporary names are unique, so two
processes writing the same target at once never write into each other's file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_bytes", "atomic_folder", "atomic_json", "atomic_tensors", "atomic_text", "fsync_dir", "fsync_file",
           "fsync_tree"]


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike[str]) -> None:
    """fsync every file under ``folder``, then every folder, deepest first."""
    dirs = []
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_file(os.path.join(root, name))
        dirs.append(root)
    for d in reversed(dirs):
        fsync_dir(d)


def _sibling(path: Path, suffix: str) -> Path:
    """A unique hidden name beside ``path`` (per process and call; the usual permissions, unlike mkstemp)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix}")


def _tmp_name(path: Path) -> Path:
    tmp = _sibling(path, ".tmp")
    with open(tmp, "x"):
        pass
    return tmp


def _commit(tmp: Path, path: Path) -> None:
    try:
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (fsynced before the rename)."""
    atomic_bytes(path, text.encode("utf-8"))


def atomic_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsynced before the rename)."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _commit(tmp, path)


def atomic_json(path: str | os.PathLike[str], obj: Any, **dumps: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (fsynced before the rename); ``dumps`` go to `json.dumps`."""
    dumps.setdefault("indent", 1)
    atomic_text(path, json.dumps(obj, **dumps))


def atomic_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                   metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors to ``path`` atomically (fsynced before the rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _tmp_name(path)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _commit(tmp, path)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str], *, owned: Iterable[str] | None = None) -> Iterator[Path]:
    """Write a folder atomically: ``with atomic_folder(p) as tmp:`` write files into ``tmp``.

    On a clean exit the new folder is fsynced and swapped in for ``path``: the old folder is kept
    intact until the new one is complete, then moved aside and removed. On an exception nothing at
    ``path`` changes and the temporary folder is removed. Entries of the old folder the new one does
    not write are carried over (hard links where possible), except the names in ``owned``: the
    files this writer is responsible for, which are dropped when not written again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, ".tmp")
    tmp.mkdir()
    try:
        yield tmp
        owned_names = set(owned or ())
        if path.is_dir():
            for entry in path.iterdir():
                dest = tmp / entry.name
                if entry.name in owned_names or dest.exists():
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.copytree(entry, dest, symlinks=True)
                else:
                    try:
                        os.link(entry, dest, follow_symlinks=False)
                    except OSError:
                        shutil.copy2(entry, dest, follow_symlinks=False)
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = _sibling(path, ".old")
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.rename(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
