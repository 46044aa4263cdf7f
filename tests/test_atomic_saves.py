"""Crash-safe saves (issue 11, item 14): folders and files are written beside their target, fsynced,
then swapped in, so a crash mid-save leaves the previous save loadable and unchanged; the embedded
model's cache conversion is safe when two converters race."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import safetensors.torch
import torch

from workbench.agent.transcript import AgentResult
from workbench.core import fileio
from workbench.core.loading import _save_converted  # the cache conversion, on a tiny fake input
from workbench.dictionaries.dictionary import Dictionary
from workbench.neurons.weights import NeuronWeights, neuron_weights

REPO = Path(__file__).resolve().parents[1]


def make(seed: int = 1, d_in: int = 16, d_sae: int = 24) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    return Dictionary(W_enc=torch.randn(d_in, d_sae, generator=g), b_enc=torch.randn(d_sae, generator=g),
                      W_dec=torch.randn(d_sae, d_in, generator=g), b_dec=torch.randn(d_in, generator=g),
                      architecture="relu", site="resid_post.1")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


class Crash(RuntimeError):
    pass


def crash_after_first_file(monkeypatch: pytest.MonkeyPatch, *, half: bool = False) -> None:
    """The tensor writer writes one file (half of it with ``half``), then the process "dies"."""
    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):  # noqa: ANN001
        real(tensors, filename, metadata=metadata)
        if half:
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
        raise Crash("killed mid-save")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record ("fsync", path) and ("replace"/"rename", target) events in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, **kw):  # noqa: ANN001
        events.append(("replace", str(Path(dst).resolve())))
        return real_replace(src, dst, **kw)

    def rename(src, dst, **kw):  # noqa: ANN001
        events.append(("rename", str(Path(dst).resolve())))
        return real_rename(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


# -- Dictionary.save (a SAELens folder) --------------------------------------------------------------

def test_dictionary_save_crash_keeps_the_previous_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "sae"
    old = make(1)
    old.save(folder)
    (folder / "notes.txt").write_text("mine")  # a file of the user's, kept across saves
    before = snapshot(folder)
    with monkeypatch.context() as m:
        crash_after_first_file(m, half=True)
        with pytest.raises(Crash):
            make(2).save(folder)
    assert snapshot(folder) == before  # unchanged, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no partial sibling left
    assert torch.equal(Dictionary.load(folder).W_enc, old.W_enc)
    # a crash on a fresh target leaves no partial target at all
    with monkeypatch.context() as m:
        crash_after_first_file(m)
        with pytest.raises(Crash):
            make(2).save(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    # a save that completes replaces the folder, keeps the user's file, drops no SAELens file stale
    new = make(3)
    new.save(folder)
    assert torch.equal(Dictionary.load(folder).W_enc, new.W_enc)
    assert (folder / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_dictionary_save_fsyncs_before_the_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(1).save(tmp_path / "sae")
    events = record_fsyncs(monkeypatch)
    make(2).save(tmp_path / "sae")
    synced = [p for kind, p in events if kind == "fsync"]
    assert any(p.endswith("sae_weights.safetensors") for p in synced)
    assert any(p.endswith("cfg.json") for p in synced)
    swap = next(i for i, (kind, p) in enumerate(events) if kind == "rename" and p == str((tmp_path / "sae").resolve()))
    assert all(kind == "fsync" for kind, _ in events[:2]) and swap > 2  # data first, then the rename
    assert ("fsync", str(tmp_path.resolve())) in events[swap:]  # the parent folder, after the rename


def test_dictionary_save_survives_kill_9(tmp_path: Path) -> None:
    """A real SIGKILL after the first file of the second save: the first save still loads."""
    folder = tmp_path / "sae"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import safetensors.torch
        from test_atomic_saves import make
        make(1).save({str(folder)!r})
        real = safetensors.torch.save_file
        def save_file(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        safetensors.torch.save_file = save_file
        make(2).save({str(folder)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=300, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert torch.equal(Dictionary.load(folder).W_enc, make(1).W_enc)
    assert json.loads((folder / "cfg.json").read_text())["d_sae"] == 24


# -- NeuronWeights.save (one file) -------------------------------------------------------------------

def test_neuron_weights_save_crash_keeps_the_previous_file(tmp_path: Path, tiny,  # noqa: ANN001
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    res = neuron_weights(tiny("llama"), k=3, progress=False)
    path = res.save(tmp_path / "w.safetensors")
    before = path.read_bytes()
    with monkeypatch.context() as m:
        crash_after_first_file(m, half=True)
        with pytest.raises(Crash):
            res.reclassify(kurtosis_threshold=0.5).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    assert NeuronWeights.load(path).kurtosis_threshold == res.kurtosis_threshold
    events = record_fsyncs(monkeypatch)
    res.save(path)
    assert events[0][0] == "fsync" and events[1] == ("replace", str(path.resolve()))


# -- AgentResult.save and the shared writer ----------------------------------------------------------

@pytest.mark.parametrize("write", ["agent", "json", "tensors", "text"])
def test_atomic_writers_fsync_the_file_before_the_rename(write: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.bin"
    events = record_fsyncs(monkeypatch)
    if write == "agent":
        AgentResult(explanation="x", status="final").save(path)
    elif write == "json":
        fileio.atomic_json(path, {"a": 1})
    elif write == "tensors":
        fileio.atomic_tensors(path, {"a": torch.zeros(3)})
    else:
        fileio.atomic_text(path, "hello")
    kinds = [k for k, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[0][1] != str(path.resolve())  # the temporary file was synced...
    assert events[1] == ("replace", str(path.resolve()))  # ...then renamed over the target...
    assert events[2] == ("fsync", str(tmp_path.resolve()))  # ...and the folder synced
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_folder_exception_leaves_the_target(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a").write_text("old")
    with pytest.raises(Crash), fileio.atomic_folder(tmp_path / "f") as tmp:
        (tmp / "a").write_text("new")
        raise Crash
    assert (tmp_path / "f" / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


# -- the embedded model's cache conversion -----------------------------------------------------------

class FakeConfig:
    def __init__(self) -> None:
        self.quantization_config = {"q": 4}

    def save_pretrained(self, folder) -> None:  # noqa: ANN001
        (Path(folder) / "config.json").write_text(json.dumps({"model_type": "fake"}))


class FakeModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        torch.nn.init.constant_(self.lin.weight, 0.5)
        self.config = FakeConfig()


class FakeTokenizer:
    def __init__(self, gate: threading.Barrier | None = None) -> None:
        self.gate = gate

    def save_pretrained(self, folder) -> None:  # noqa: ANN001
        (Path(folder) / "tokenizer.json").write_text("{}")
        if self.gate is not None:  # both converters finish writing, then race for the rename
            self.gate.wait(timeout=30)


def valid_cache(folder: Path) -> bool:
    if not ((folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()):
        return False
    sd = safetensors.torch.load_file(str(folder / "model.safetensors"))
    return torch.equal(sd["lin.weight"], torch.full((8, 8), 0.5))


def test_cache_conversion_race_ends_with_a_valid_cache(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "SmolLM2-x"
    for stale in (False, True):
        if stale:  # a partial cache from an older, interrupted conversion
            target.mkdir(parents=True)
            (target / "config.json").write_text("{}")
        gate = threading.Barrier(2)
        errors: list[BaseException] = []

        def convert(gate: threading.Barrier = gate, errors: list[BaseException] = errors) -> None:
            try:
                _save_converted(FakeModel(), FakeTokenizer(gate), target)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=convert) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert valid_cache(target)
        assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary folder left
        for p in target.iterdir():
            p.unlink()
        target.rmdir()


def test_cache_conversion_never_deletes_a_complete_cache(tmp_path: Path) -> None:
    """A second converter that finds another's complete cache keeps it (a reader may be loading it)."""
    target = tmp_path / "SmolLM2-x"
    _save_converted(FakeModel(), FakeTokenizer(), target)
    inode = (target / "model.safetensors").stat().st_ino
    reading = open(target / "model.safetensors", "rb")  # a kernel loading the cache right now
    try:
        _save_converted(FakeModel(), FakeTokenizer(), target)
    finally:
        reading.close()
    assert valid_cache(target) and (target / "model.safetensors").stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
