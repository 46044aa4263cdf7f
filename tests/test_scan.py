"""The corpus scan and its store, against brute force over every activation of a tiny model."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.cli import main as scan_main
from workbench.core.corpus import default_corpus, iter_texts
from workbench.neurons.scan import ScanCancelled
from workbench.neurons.store import HIST, ScanStore, StoreError, window_priority

CORPUS = default_corpus(max_passages=12)
K, WINDOW, BATCH, SAMPLE = 4, 12, 3, 8


@pytest.fixture(scope="module")
def model(tiny):
    return tiny("llama")


def windows_by_hand(tokenizer, texts, window):
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), window):
            if len(ids[s : s + window]) >= 2:
                out.append(ids[s : s + window])
    return out


def all_acts(model, rows, site):
    """Every activation of every window (no reduction): list of [len, d] arrays."""
    out = []
    for i in range(0, len(rows), 8):
        res = model.run(model.batch_from_ids(rows[i : i + 8]), capture=[site], top_k=0, logits=None)
        for j, r in enumerate(rows[i : i + 8]):
            out.append(res.activations[site][j, : len(r)].double().numpy())
    return out


def do_scan(model, path, corpus=CORPUS, **kw):
    kw = {"k": K, "window": WINDOW, "batch_size": BATCH, "sample": SAMPLE, "progress": False, **kw}
    return wb.scan(model, corpus, path, **kw)


@pytest.fixture(scope="module")
def whole(model, tmp_path_factory):
    return do_scan(model, tmp_path_factory.mktemp("scan") / "whole", checkpoint_every=7)


def state_tensors(store):
    t = {"sample.window": store.sample.windows, "sample.priority": store.sample.priority}
    for key, st in store.states.items():
        t.update(st.tensors(key))
    return t


# -- the scan equals brute force ------------------------------------------------------------
def test_windows_tile_each_text(model, whole):
    rows = windows_by_hand(model.tokenizer, CORPUS, WINDOW)
    assert whole.n_windows == len(rows)
    assert [whole.window_tokens(w) for w in range(len(rows))] == rows
    assert whole.n_tokens == sum(len(r) - 1 for r in rows)
    assert whole.complete and whole.sites == ["neurons.0", "neurons.1"]


@pytest.mark.parametrize("layer", [0, 1])
def test_top_k_and_statistics_equal_brute_force(model, whole, layer):
    rows = windows_by_hand(model.tokenizer, CORPUS, WINDOW)
    acts = all_acts(model, rows, f"neurons.{layer}")
    d = acts[0].shape[1]
    body = np.concatenate([a[1:] for a in acts])  # position 0 is skipped
    wmax = np.stack([a[1:].max(0) for a in acts])  # [windows, d]
    wpos = np.stack([a[1:].argmax(0) + 1 for a in acts])
    st = whole.states[f"neurons.{layer}"]
    for u in range(d):
        order = sorted(range(len(rows)), key=lambda w: (-np.float32(wmax[w, u]), w))[:K]
        assert st.top_window[:, u].tolist() == order, u
        assert st.top_pos[:, u].tolist() == [int(wpos[w, u]) for w in order]
        np.testing.assert_allclose(st.top_values[:, u].numpy(), wmax[order, u], rtol=1e-5, atol=1e-6)
    df = whole.stats(layer)
    mean, std = body.mean(0), body.std(0)
    z = (body - mean) / std
    np.testing.assert_allclose(df["mean"], mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(df["std"], std, rtol=1e-4)
    np.testing.assert_allclose(df["skew"], (z**3).mean(0), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(df["kurtosis"], (z**4).mean(0) - 3, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(df["frac_active"], (body > 0).mean(0))
    np.testing.assert_allclose(df["max"], body.max(0), rtol=1e-6)
    assert (df["count"] == len(body)).all()
    for u in range(0, d, 7):
        got = whole.histogram(layer, u)[1]
        np.testing.assert_array_equal(got, hist_by_hand(body[:, u].astype(np.float32)))


def hist_by_hand(values):
    """Bin each value by comparing it with the documented edges (see SignedLogBins)."""
    pe = HIST.positive_edges().astype(np.float32)
    c = HIST.center
    out = np.zeros(HIST.n_bins, dtype=np.int64)
    for v in values:
        if v == 0:
            out[c] += 1
        elif v > 0:
            out[c + 1 + np.searchsorted(pe, v, side="right")] += 1
        else:
            out[c - 1 - np.searchsorted(pe, -v, side="right")] += 1
    return out


def test_histogram_bins_at_and_around_every_edge():
    import torch

    pe = torch.tensor(HIST.positive_edges(), dtype=torch.float32)
    vals = torch.cat([pe, torch.nextafter(pe, torch.zeros_like(pe)), torch.nextafter(pe, torch.full_like(pe, 1e9)),
                      torch.tensor([0.0, -0.0, 1e-30, 1e30, float("inf"), 1e-40, 1e-45, 2.0**-127, 2.0**-125])])
    vals = torch.cat([vals, -vals])
    got = HIST.counts(vals[:, None])[0].numpy()
    np.testing.assert_array_equal(got, hist_by_hand(vals.numpy()))
    edges = HIST.edges()
    assert len(edges) == HIST.n_bins + 1 and np.all(np.diff(edges) >= 0)


def test_sample_is_the_lowest_priority_windows(model, whole):
    rows = windows_by_hand(model.tokenizer, CORPUS, WINDOW)
    prio = window_priority(np.arange(len(rows))).numpy()
    want = np.argsort(prio, kind="stable")[:SAMPLE]
    assert whole.sample.windows.tolist() == want.tolist()
    acts = all_acts(model, [rows[w] for w in want], "neurons.1")
    st = whole.states["neurons.1"]
    np.testing.assert_allclose(st.sample_values.numpy(), np.stack([a[1:].max(0) for a in acts]), rtol=1e-5, atol=1e-6)


def test_exemplars_rerun_the_windows_exactly(model, whole):
    ex = whole.exemplars("neurons.1", 5, n=3)
    assert len(ex) == 3
    for e, (v, w, p) in zip(ex, whole.top(1, 5), strict=False):
        assert (e.window, e.position) == (w, p)
        assert e.acts[p] == pytest.approx(v, rel=1e-5, abs=1e-6)
        assert e.acts[1:].max() == pytest.approx(v, rel=1e-5, abs=1e-6)
        assert "".join(e.tokens) == model.tokenizer.decode(whole.window_tokens(w))
    groups = whole.quantile_exemplars(1, 5, groups=2, per_group=2)
    assert [g.label for g in groups] == ["q0.50–1.00", "q0.00–0.50"]
    assert groups[0].lo >= groups[1].hi
    for g in groups:
        assert all(g.lo <= e.value <= g.hi for e in g.exemplars)


# -- resume, cancel, merge -------------------------------------------------------------------
def test_interrupted_scan_resumes_to_the_same_store(model, whole, tmp_path):
    def stream():
        for i, t in enumerate(CORPUS):
            if i == 7:
                raise KeyboardInterrupt
            yield t

    with pytest.raises(KeyboardInterrupt):
        do_scan(model, tmp_path / "s", corpus=stream(), checkpoint_every=7)
    part = ScanStore.open(tmp_path / "s")
    assert not part.complete and 0 < part.n_windows < whole.n_windows
    resumed = do_scan(model, tmp_path / "s", checkpoint_every=7)
    assert resumed.complete and resumed.n_windows == whole.n_windows
    a, b = state_tensors(whole), state_tensors(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [resumed.window_tokens(w) for w in range(whole.n_windows)] == \
           [whole.window_tokens(w) for w in range(whole.n_windows)]


def test_cancel_returns_a_partial_store_that_resumes(model, whole, tmp_path):
    ev = threading.Event()
    ev.set()
    with pytest.raises(ScanCancelled) as e:
        do_scan(model, tmp_path / "c", cancel=ev)
    part = e.value.partial
    assert not part.complete and part.n_windows == BATCH
    done = do_scan(model, tmp_path / "c")
    for name, t in state_tensors(whole).items():
        assert torch.equal(t, state_tensors(done)[name]), name


def test_resume_refuses_another_corpus_or_config(model, tmp_path):
    ev = threading.Event()
    ev.set()
    with pytest.raises(ScanCancelled):
        do_scan(model, tmp_path / "r", cancel=ev)
    with pytest.raises(StoreError, match="corpus is not the one"):
        do_scan(model, tmp_path / "r", corpus=CORPUS[::-1])
    with pytest.raises(StoreError, match="different 'k'"):
        do_scan(model, tmp_path / "r", k=K + 1)
    with pytest.raises(FileExistsError):
        do_scan(model, tmp_path / "r", resume=False)
    assert do_scan(model, tmp_path / "r", k=K + 1, overwrite=True).complete


def test_merged_shards_equal_the_whole(model, whole, tmp_path):
    shards = [do_scan(model, tmp_path / f"shard{i}", shard=(i, 2)) for i in range(2)]
    assert sum(s.n_windows for s in shards) == whole.n_windows
    merged = ScanStore.merge(shards, tmp_path / "merged")
    assert merged.n_tokens == whole.n_tokens and merged.complete
    a, b = state_tensors(whole), state_tensors(merged)
    for name in a:
        if name.endswith(("/mean", "/m2", "/m3", "/m4")):
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6)  # float32 per-batch sums
        else:
            assert torch.equal(a[name], b[name]), name
    assert merged.window_tokens(5) == whole.window_tokens(5)
    with pytest.raises(StoreError, match="disjoint"):
        ScanStore.merge([shards[0], shards[0]], tmp_path / "twice")
    scan_main(["merge", str(tmp_path / "cli"), str(tmp_path / "shard0"), str(tmp_path / "shard1")])
    assert torch.equal(ScanStore.open(tmp_path / "cli").states["neurons.0"].hist, whole.states["neurons.0"].hist)


# -- other sources ---------------------------------------------------------------------------
def test_features_through_an_encoder_and_other_sites(model, tmp_path):
    torch.manual_seed(0)
    W = torch.randn(model.d_model, 5)

    def enc(x):
        return torch.relu(x.float() @ W)

    st = do_scan(model, tmp_path / "f", corpus=CORPUS[:4], sites=["resid_post.0"], features={"toy": ("resid_post.0", enc)})
    assert st.sites == ["resid_post.0", "toy"] and st.width("toy") == 5
    rows = windows_by_hand(model.tokenizer, CORPUS[:4], WINDOW)
    acts = all_acts(model, rows, "resid_post.0")
    feats = [torch.relu(torch.tensor(a, dtype=torch.float32) @ W).double().numpy() for a in acts]
    body = np.concatenate([f[1:] for f in feats])
    np.testing.assert_allclose(st.stats("toy")["mean"], body.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(st.stats("toy")["max"], body.max(0), rtol=1e-5)
    ex = st.exemplars("toy", 2, n=1)[0]
    assert ex.acts.max() == pytest.approx(body[:, 2].max(), rel=1e-5)


def test_remote_local_scan_equals_local(model, whole, tmp_path):
    st = do_scan(model, tmp_path / "rl", corpus=CORPUS[:3], remote="local")
    ref = do_scan(model, tmp_path / "l", corpus=CORPUS[:3])
    for name, t in state_tensors(ref).items():
        torch.testing.assert_close(state_tensors(st)[name], t, rtol=1e-5, atol=1e-6)


def test_interventions_change_the_scan(model, tmp_path):
    st = do_scan(model, tmp_path / "i", corpus=CORPUS[:3], interventions=[wb.zero_neurons(1, [3])])
    assert st.stats(1)["max"][3] == 0 and st.stats(1)["max"][4] != 0
    assert st.exemplars(1, 4, n=1)[0].acts.max() == pytest.approx(st.top(1, 4)[0][0], rel=1e-5)


def test_corpus_forms(tmp_path):
    import pandas as pd

    (tmp_path / "a.txt").write_text("one text")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("another")
    assert list(iter_texts(tmp_path)) == ["one text", "another"]
    assert list(iter_texts(pd.Series(["x", "y"]))) == ["x", "y"]
    assert list(iter_texts([{"text": "z"}])) == ["z"]
    with pytest.raises(TypeError, match="not one string"):
        list(iter_texts("a sentence, not a path\n"))
    passages = default_corpus()
    assert len(passages) > 500 and all(p.strip() for p in passages)


# -- bad input ---------------------------------------------------------------------------------
def test_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="no window"):
        do_scan(model, tmp_path / "e", corpus=["", "a"])
    with pytest.raises(ValueError, match="scan reads"):
        do_scan(model, tmp_path / "p", sites=["pattern.0"])
    with pytest.raises(IndexError, match="out of range"):
        do_scan(model, tmp_path / "q", sites=["neurons.9"])
    with pytest.raises(ValueError, match="shard"):
        do_scan(model, tmp_path / "s", shard=(2, 2))


def test_corrupt_stores_give_clear_errors(model, whole, tmp_path):
    import shutil

    def fresh(name):
        p = tmp_path / name
        shutil.copytree(whole.path, p)
        return p

    p = fresh("trunc")
    state = p / json.loads((p / "meta.json").read_text())["state"]
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(StoreError, match="truncated or corrupt"):
        ScanStore.open(p)
    p = fresh("json")
    (p / "meta.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        ScanStore.open(p)
    p = fresh("shape")
    meta = json.loads((p / "meta.json").read_text())
    meta["k"] = K + 3
    (p / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="has shape"):
        ScanStore.open(p)
    p = fresh("version")
    meta = json.loads((p / "meta.json").read_text())
    meta["version"] = 99
    (p / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="version 99"):
        ScanStore.open(p)
    p = fresh("chunk")
    (p / "windows" / json.loads((p / "meta.json").read_text())["chunks"][0]).write_bytes(b"\x00" * 10)
    with pytest.raises(StoreError, match="truncated or corrupt"):
        ScanStore.open(p).window_tokens(0)
    with pytest.raises(StoreError, match="not a scan store"):
        ScanStore.open(tmp_path)
    with pytest.raises(IndexError, match="out of range"):
        whole.top(0, 10_000)
    with pytest.raises(KeyError, match="no 'neurons.7'"):
        whole.top("neurons.7", 0)


# -- the engine entry points the scan uses ----------------------------------------------------
def test_batch_from_ids_and_top_k_zero(model):
    text = CORPUS[0][:80]
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = [ids, ids[:5]]
    batch = model.batch_from_ids(rows)
    assert batch.lengths == [len(ids), 5] and batch.attention_mask[1].tolist() == [1] * 5 + [0] * (len(ids) - 5)
    assert "".join(t.text for t in batch.tokens[0]) == model.tokenizer.decode(ids)
    res = model.run(batch, capture=["neurons.1"], top_k=0, logits=None)
    ref = model.run([model.tokenizer.decode(ids)], capture=["neurons.1"])
    if ref.lengths[0] == len(ids):  # same tokens when the text re-tokenizes identically
        torch.testing.assert_close(res["neurons.1"][0], ref["neurons.1"][0])
    with torch.no_grad():
        hf = model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=False)
    assert res.top.ids.shape == (2, 0) and res.logits is None and hf.logits.shape[1] == len(ids)
    top = model.run(batch, top_k=3)  # padded rows: predictions at each row's own last token
    torch.testing.assert_close(top.logits[1], hf.logits[1, 4], rtol=1e-4, atol=1e-5)
    with pytest.raises(IndexError, match="out of range"):
        model.batch_from_ids([[model.arch.vocab]])
    with pytest.raises(ValueError, match="non-empty"):
        model.batch_from_ids([[]])


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_scan_other_families_equal_brute_force(tiny, family, tmp_path):
    m = tiny(family)
    st = do_scan(m, tmp_path / family, corpus=CORPUS[:3])
    rows = windows_by_hand(m.tokenizer, CORPUS[:3], WINDOW)
    body = np.concatenate([a[1:] for a in all_acts(m, rows, "neurons.1")])
    np.testing.assert_allclose(st.stats(1)["mean"], body.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(st.stats(1)["max"], body.max(0), rtol=1e-6)


def test_terminal_scan_survives_a_real_ctrl_c(tiny, tmp_path):
    """`python -m workbench scan` in a subprocess: SIGINT mid-scan, then the same command resumes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    m = tiny("llama")
    m.hf.save_pretrained(tmp_path / "model")
    m.tokenizer.save_pretrained(tmp_path / "model")
    texts = default_corpus(max_passages=40)
    (tmp_path / "corpus.txt").write_text("\n\n".join(texts))
    cmd = [sys.executable, "-m", "workbench", "scan", "--out", str(tmp_path / "s"), "--model", str(tmp_path / "model"),
           "--corpus", str(tmp_path / "corpus.txt"), "--k", "4", "--window", "12", "--batch-size", "2",
           "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        meta = tmp_path / "s" / "meta.json"
        if meta.exists() and json.loads(meta.read_text())["n_windows"] >= 20:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "run the same call again to resume" in out, out[-2000:]
    part = ScanStore.open(tmp_path / "s")
    assert not part.complete and part.n_windows >= 20
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    resumed = ScanStore.open(tmp_path / "s")
    ref = do_scan(m, tmp_path / "ref", corpus=tmp_path / "corpus.txt", batch_size=2, sample=64)  # CLI defaults
    assert resumed.complete and resumed.n_windows == ref.n_windows
    for name, t in state_tensors(ref).items():
        assert torch.equal(state_tensors(resumed)[name], t), name


def test_ctrl_c_held_during_a_merge_counts_the_batch_once(model, whole, tmp_path, monkeypatch):
    """A Ctrl-C that arrives while a batch is merged surfaces after the merge: the cursor moved with it."""
    import contextlib
    import sys

    scan_mod = sys.modules["workbench.neurons.scan"]  # the module (wb.scan is the function)

    calls = {"n": 0}

    @contextlib.contextmanager
    def interrupt_after_fifth():
        calls["n"] += 1
        yield
        if calls["n"] == 5:  # as _deferred_interrupt does when SIGINT came in during the block
            raise KeyboardInterrupt

    monkeypatch.setattr(scan_mod, "_deferred_interrupt", interrupt_after_fifth)
    with pytest.raises(KeyboardInterrupt):
        do_scan(model, tmp_path / "k", checkpoint_every=1000)
    monkeypatch.undo()
    resumed = do_scan(model, tmp_path / "k")
    assert resumed.n_windows == whole.n_windows and resumed.n_tokens == whole.n_tokens
    for name, t in state_tensors(whole).items():
        assert torch.equal(state_tensors(resumed)[name], t), name


def test_cancel_convention_errors_and_facade(model, tmp_path):
    """ScanCancelled is a Cancelled carrying the partial store; errors derive from WorkbenchError."""
    import workbench.neurons as N
    from workbench.core.errors import Cancelled, WorkbenchError
    from workbench.core.sites import TOKEN_SITES
    from workbench.neurons.scan import SCAN_SITES

    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled, match="run the same call again") as e:
        do_scan(model, tmp_path / "x", cancel=ev)
    assert isinstance(e.value, ScanCancelled) and isinstance(e.value.partial, ScanStore)
    assert e.value.partial.n_windows == BATCH and not e.value.partial.complete
    assert issubclass(StoreError, WorkbenchError) and SCAN_SITES == TOKEN_SITES
    assert set(N.__all__) >= {"scan", "ScanStore", "StoreError", "Exemplar", "QuantileGroup", "ScanCancelled",
                              "neuron_weights", "NeuronWeights", "NeuronWeightsFileError", "contrastive_neurons",
                              "ContrastiveResult", "sparse_probe", "ProbeResult", "Hypothesis", "HypothesisResult",
                              "test_hypothesis", "stats"}
    assert all(hasattr(N, name) for name in N.__all__) and N.scan is wb.scan and N.stats.auroc is not None


def test_public_store_api(whole, model):
    store = ScanStore.open(whole.path, model)
    assert store.site_key(1) == "neurons.1" and store.site_key("blocks.1.mlp.hook_post") == "neurons.1"
    assert store.unit_index("neurons.1", 3) == 3 and sorted(store.window_index()) == list(range(whole.n_windows))
    assert store.require_model() is model and store.site_transform("neurons.1") is None
    v, w, p = store.top(1, 3)[0]
    [ex] = store.window_exemplars("neurons.1", 3, [(v, w, p)])
    assert ex.window == w and float(store.unit_activations("neurons.1", 3, [w])[0][p]) == pytest.approx(v, abs=1e-5)
    with pytest.raises(KeyError, match="has no"):
        store.site_key("resid_post.0")
    with pytest.raises(IndexError, match="out of range"):
        store.unit_index("neurons.1", 10**6)
    with pytest.raises(RuntimeError, match="model"):
        ScanStore.open(whole.path).require_model()
