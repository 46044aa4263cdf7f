"""Shared fixtures: a session-wide cache of tiny random models (built from configs, no downloads)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

# Tiny models: one thread is fastest, and avoids OpenMP spin-waits on a busy 2-core machine
# (a forward pass goes from ~200 ms to ~4 ms of CPU time).
torch.set_num_threads(1)

#: Families the engine tests run on (Gemma2 adds softcapping and extra norms, still cheap).
FAMILIES = ("llama", "gpt2", "gpt_neox", "gemma2", "qwen2")

_CACHE: dict[tuple, object] = {}


@pytest.fixture(scope="session")
def tiny() -> Callable[..., object]:
    """``tiny("llama")`` -> a cached `workbench.Model` (2 layers, d_model 48, 4 heads).

    Tests must not leave hooks or edits on the shared model (use try/finally for hooks).
    Keyword arguments (e.g. ``remote="local"``) give a separately cached model.
    """
    from workbench.testing import tiny_model

    def get(family: str = "llama", **kwargs: object) -> object:
        key = (family, tuple(sorted(kwargs.items())))
        if key not in _CACHE:
            _CACHE[key] = tiny_model(family, **kwargs)
        return _CACHE[key]

    return get


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    """Each tiny model family in turn."""
    return request.param


@pytest.fixture
def model(tiny: Callable[..., object], family: str) -> object:
    """The cached tiny model of the current ``family``."""
    return tiny(family)
