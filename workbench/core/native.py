"""Small C kernels for hot loops, compiled on first use with the system C compiler and cached.

    lib = native.load("site_stats", SOURCE, {"wb_site_stats": (None, [ctypes.c_void_p, ...])})
    if lib is None: ...                                  # no compiler, or disabled: the torch path

A kernel is plain C99 (no Python or torch headers, so it builds in well under a second),
called through `ctypes` with tensors' data pointers; `ctypes` releases the GIL for the call.
The shared object is cached under ``$WORKBENCH_CACHE/native/`` (default
``~/.cache/interp-workbench/native``), keyed by a hash of the source, the compiler, its flags
and the CPU's feature flags (``-march=native`` code is only reused on the CPU it was built for),
and written atomically, so two processes building at once both end with a whole file.

Every caller keeps a torch implementation of the same reduction and falls back to it when
`load` returns None: when no compiler is found, the build fails, or ``WORKBENCH_NATIVE=0``.
Tests check that both give the same values.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Kernel", "load", "enabled", "compiler", "clear"]

_FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC", "-fno-math-errno")


class _Loaded:
    """The kernels this process has loaded. Pickled empty (a trace sent with ``remote=...``
    carries the code that calls a kernel; the far side loads its own)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.libs: dict[str, ctypes.CDLL | None] = {}

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


_LOADED = _Loaded()


def enabled() -> bool:
    """False when ``WORKBENCH_NATIVE`` is ``0``/``false``/``off``: every kernel then uses its torch path."""
    return os.environ.get("WORKBENCH_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


def compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH (None if none)."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or (cc if Path(cc).is_file() else None)
    return next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    from .loading import cache_root

    return cache_root() / "native"


def _build(cc: str, source: str, out: Path) -> None:
    """Compile ``source`` to the shared object ``out`` (atomically); ``-march=native`` when the compiler takes it."""
    from .fileio import atomic_bytes

    with tempfile.TemporaryDirectory(prefix="wb-native-") as tmp:
        src, so = Path(tmp) / "k.c", Path(tmp) / "k.so"
        src.write_text(source)
        err = ""
        for extra in (("-march=native",), ()):
            proc = subprocess.run([cc, *_FLAGS, *extra, "-o", str(so), str(src), "-lm"], capture_output=True,
                                  text=True, timeout=120)
            if proc.returncode == 0:
                atomic_bytes(out, so.read_bytes())
                return
            err = proc.stderr.strip()
        raise RuntimeError(f"{cc} failed: {err[-2000:]}")


def clear() -> None:
    """Forget the kernels loaded in this process: the next `load` reads the cache (or builds) again."""
    with _LOADED.lock:
        _LOADED.libs.clear()


def load(name: str, source: str, signatures: dict[str, tuple[Any, Sequence[Any]]]) -> ctypes.CDLL | None:
    """The compiled kernel library ``name`` with its functions' ``(restype, argtypes)`` set, or None.

    None (and one warning per process, naming the reason) when the build fails; None without a
    warning when native kernels are disabled or no compiler is installed."""
    if not enabled():
        return None
    with _LOADED.lock:
        if name in _LOADED.libs:
            return _LOADED.libs[name]
        lib = None
        cc = compiler()
        if cc is not None:
            try:
                st = os.stat(cc)  # the compiler's identity, without running it
                key = hashlib.sha256("\0".join([source, os.path.realpath(cc), str(st.st_size), str(st.st_mtime_ns),
                                                 " ".join(_FLAGS), _cpu_flags()]).encode())
                path = _cache_dir() / f"{name}-{key.hexdigest()[:20]}.so"
                if not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _build(cc, source, path)
                try:
                    lib = ctypes.CDLL(str(path))
                except OSError:  # a damaged cached file: build it again
                    path.unlink(missing_ok=True)
                    _build(cc, source, path)
                    lib = ctypes.CDLL(str(path))
                for fn, (restype, argtypes) in signatures.items():
                    f = getattr(lib, fn)
                    f.restype, f.argtypes = restype, list(argtypes)
            except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
                warnings.warn(f"native kernel {name!r} unavailable ({e}); using the torch implementation",
                              RuntimeWarning, stacklevel=2)
                lib = None
        _LOADED.libs[name] = lib
        return lib


class Kernel:
    """One kernel library by name: ``lib()`` is `load`'s result (None: use the torch path).

    Holds only its name, source and signatures, so it pickles with the code that calls it."""

    def __init__(self, name: str, source: str, signatures: dict[str, tuple[Any, Sequence[Any]]]):
        self.name, self.source, self.signatures = name, source, signatures

    def lib(self) -> ctypes.CDLL | None:
        return load(self.name, self.source, self.signatures)

    def available(self) -> bool:
        """Whether the kernel is built and enabled here."""
        return self.lib() is not None
