"""The scan does only the work it needs (no unembedding, no layer above its last site), its store is
compact and exact (version 2), version-1 stores still open, and positions are found only where needed."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import workbench as wb
from workbench.core.arch import resolve
from workbench.core.corpus import default_corpus
from workbench.neurons.scan import ScanCancelled, ScanReducer
from workbench.neurons.store import HIST, KeyState, ScanStore, StoreError, compact_int

CORPUS = default_corpus(max_passages=12)
K, WINDOW, BATCH, SAMPLE = 4, 12, 3, 8


@pytest.fixture(scope="module")
def model(tiny):
    return tiny("llama")


def do_scan(model, path, corpus=CORPUS, **kw):
    kw = {"k": K, "window": WINDOW, "batch_size": BATCH, "sample": SAMPLE, "progress": False, **kw}
    return wb.scan(model, corpus, path, **kw)


def state_tensors(store):
    t = {"sample.window": store.sample.windows, "sample.priority": store.sample.priority}
    for key, st in store.states.items():
        t.update({f"{key}/{f}": v for f, v in st.__dict__.items() if isinstance(v, torch.Tensor)})
        t[f"{key}/n"] = torch.tensor([st.n])
    return t


def assert_same_state(a, b):
    ta, tb = state_tensors(a), state_tensors(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), name


class Calls:
    """Counts calls into modules (plain PyTorch pre-hooks, removed on exit)."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.modules, self.n = modules, dict.fromkeys(modules, 0)

    def __enter__(self):
        self.handles = [m.register_forward_pre_hook(lambda *a, name=name: self.n.__setitem__(name, self.n[name] + 1))
                        for name, m in self.modules.items()]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_the_scan_stops_before_the_unembedding(model, tmp_path):
    hf, a = model.hf, model.arch
    mods = {"lm_head": resolve(hf, a.unembed), "final_norm": resolve(hf, a.final_norm),
            "layer1": resolve(hf, a.layers)[1], "layer0": resolve(hf, a.layers)[0]}
    with Calls(mods) as c:
        st = do_scan(model, tmp_path / "all", corpus=CORPUS[:3])
    assert st.n_windows > 0 and c.n["layer1"] > 0
    assert c.n["lm_head"] == 0 and c.n["final_norm"] == 0, c.n
    with Calls(mods) as c:  # only layer 0's neurons: layer 1 never runs either
        do_scan(model, tmp_path / "l0", corpus=CORPUS[:3], sites=["neurons.0"])
    assert c.n["layer0"] > 0 and c.n["layer1"] == 0 and c.n["lm_head"] == 0, c.n
    with Calls(mods) as c:  # the control: a run that predicts does unembed
        model.run(CORPUS[0][:40], top_k=1)
    assert c.n["lm_head"] == 1


def test_scan_with_an_intervention_above_the_last_site_still_stops(model, tmp_path):
    """An edit at layer 1 while scanning layer 0: layer 0's numbers equal a plain scan of it."""
    plain = do_scan(model, tmp_path / "p", corpus=CORPUS[:3], sites=["neurons.0"])
    edited = do_scan(model, tmp_path / "e", corpus=CORPUS[:3], sites=["neurons.0"],
                     interventions=[wb.zero_neurons(1, [0])])
    assert_same_state(plain, edited)
    below = do_scan(model, tmp_path / "b", corpus=CORPUS[:3], sites=["neurons.1"],
                    interventions=[wb.zero_neurons(1, [0])])
    assert below.stats(1)["max"][0] == 0


def test_the_store_is_compact_and_reads_back_exactly(model, tmp_path):
    st = do_scan(model, tmp_path / "s")
    reopened = ScanStore.open(tmp_path / "s", model)
    assert_same_state(st, reopened)  # the store the scan returns (from memory) is the one on disk
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["version"] == 2
    t = load_file(str(tmp_path / "s" / meta["state"]))
    for key in st.sites:  # counts of a few hundred tokens and window ids < 256+: small integers on disk
        assert t[f"{key}/hist"].dtype in (torch.uint8, torch.int16), t[f"{key}/hist"].dtype
        assert t[f"{key}/top.pos"].dtype == torch.uint8 and t[f"{key}/sample.pos"].dtype == torch.uint8
        assert t[f"{key}/top.window"].dtype in (torch.int16, torch.uint8)
        lo = int(t[f"{key}/hist.lo"][0])
        full = st.states[key].hist
        assert torch.equal(full[:, lo : lo + t[f"{key}/hist"].shape[1]], t[f"{key}/hist"].long())
        assert int(full.sum()) == int(t[f"{key}/hist"].long().sum())  # nothing outside the kept bins
    v1 = sum(v.numel() * v.element_size() for v in version1_tensors(st).values())
    v2 = sum(v.numel() * v.element_size() for v in t.values())
    assert v2 * 2.5 < v1, (v1, v2)


def version1_tensors(store):
    """The state as version 1 wrote it: every bin, int64 counts and window ids, int32 positions."""
    t = {"sample.window": store.sample.windows.long(), "sample.priority": store.sample.priority}
    for key, st in store.states.items():
        t.update({f"{key}/top.values": st.top_values, f"{key}/top.window": st.top_window.long(),
                  f"{key}/top.pos": st.top_pos.int(), f"{key}/n": torch.tensor([st.n]), f"{key}/mean": st.mean,
                  f"{key}/m2": st.m2, f"{key}/m3": st.m3, f"{key}/m4": st.m4, f"{key}/hist": st.hist.long(),
                  f"{key}/sample.values": st.sample_values, f"{key}/sample.pos": st.sample_pos.int()})
    return t


def test_version_1_stores_open_and_resume(model, tmp_path):
    ref = do_scan(model, tmp_path / "ref", corpus=CORPUS[:6])
    ev = threading.Event()
    ev.set()
    with pytest.raises(ScanCancelled) as e:
        do_scan(model, tmp_path / "old", corpus=CORPUS[:6], cancel=ev)
    p = tmp_path / "old"  # rewrite the partial store in the version-1 layout
    meta = json.loads((p / "meta.json").read_text())
    save_file(version1_tensors(e.value.partial), str(p / meta["state"]))
    meta["version"] = 1
    (p / "meta.json").write_text(json.dumps(meta))
    old = ScanStore.open(p)
    assert_same_state(old, e.value.partial)
    assert old.states["neurons.0"].hist.dtype == torch.int32 and old.states["neurons.0"].top_pos.dtype == torch.int32
    done = do_scan(model, p, corpus=CORPUS[:6])  # resumes the old store; writes version 2
    assert_same_state(done, ref)
    assert json.loads((p / "meta.json").read_text())["version"] == 2
    meta["version"] = 3
    (p / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"version 3 is not supported .*versions 1, 2"):
        ScanStore.open(p)


def test_compact_int_is_exact_at_every_edge():
    for vals, dt in (([0, 255], torch.uint8), ([-1, 255], torch.int16), ([0, 256], torch.int16),
                     ([-32768, 32767], torch.int16), ([0, 32768], torch.int32), ([-1, 2**31 - 1], torch.int32),
                     ([0, 2**31], torch.int64), ([-(2**40), 5], torch.int64)):
        t = torch.tensor(vals, dtype=torch.long)
        c = compact_int(t)
        assert c.dtype == dt and torch.equal(c.long(), t), (vals, c.dtype)
    big = torch.zeros(2, HIST.n_bins, dtype=torch.long)
    big[0, 3] = 2**33  # a bin past int32 stays int64 on disk
    assert compact_int(big).dtype == torch.int64


def test_corrupt_compact_histogram_is_refused(model, tmp_path):
    do_scan(model, tmp_path / "c", corpus=CORPUS[:3])
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    t = load_file(str(tmp_path / "c" / meta["state"]))
    t["neurons.0/hist.lo"] = torch.tensor([HIST.n_bins - 1])
    save_file(t, str(tmp_path / "c" / meta["state"]))
    with pytest.raises(StoreError, match="outside the .* bins"):
        ScanStore.open(tmp_path / "c")


@pytest.mark.parametrize("k", [2, 5])
def test_top_k_when_batches_are_larger_than_k(model, tmp_path, k):
    """Batches of 6 windows: the in-trace top-k path, with thresholds, equals brute force."""
    st = do_scan(model, tmp_path / f"k{k}", corpus=CORPUS[:8], k=k, batch_size=6)
    rows = []
    for text in CORPUS[:8]:
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        rows += [ids[s : s + WINDOW] for s in range(0, len(ids), WINDOW) if len(ids[s : s + WINDOW]) >= 2]
    acts = []
    for i in range(0, len(rows), 8):
        res = model.run(model.batch_from_ids(rows[i : i + 8]), capture=["neurons.1"], top_k=0, logits=None)
        acts += [res.activations["neurons.1"][j, 1 : len(r)].numpy() for j, r in enumerate(rows[i : i + 8])]
    wmax = np.stack([a.max(0) for a in acts])
    wpos = np.stack([a.argmax(0) + 1 for a in acts])
    s = st.states["neurons.1"]
    for u in range(wmax.shape[1]):
        order = sorted(range(len(rows)), key=lambda w: (-wmax[w, u], w))[:k]
        assert s.top_window[:, u].tolist() == order, u
        assert s.top_pos[:, u].tolist() == [int(wpos[w, u]) for w in order], u


def test_positions_sparse_and_dense_agree_with_ties_and_padding():
    torch.manual_seed(0)
    b, s, d = 5, 9, 40
    x = torch.randint(-3, 4, (b, s, d)).float()  # many ties: the first maximum counts
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[:, 0] = False
    mask[3, 6:] = False  # a shorter window
    x[3, 7] = 100.0  # in the padding: never the maximum
    pad = torch.tensor([3])
    r = ScanReducer(mask, pad, None, 4, torch.zeros(0, dtype=torch.long))
    want_v = torch.stack([x[i][mask[i]].amax(0) for i in range(b)])
    want_p = torch.stack([torch.nonzero(mask[i])[x[i][mask[i]].argmax(0), 0] for i in range(b)])
    assert torch.equal(r.maxima(x), want_v)
    j, u = torch.ones(b, d, dtype=torch.bool).nonzero(as_tuple=True)
    assert torch.equal(r.positions(x, j, u).view(b, d), want_p)  # dense path (every pair)
    few = torch.tensor([0, 7, 33, 120, 199])
    assert torch.equal(r.positions(x, j[few], u[few]), want_p.view(-1)[few])  # sparse path


def test_moments_and_histogram_leave_the_live_tensor_alone():
    x = torch.randn(3, 5, 7)
    keep = x.clone()
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, 0] = False
    r = ScanReducer(mask, torch.zeros(0, dtype=torch.long), torch.zeros(7), 4, torch.zeros(0, dtype=torch.long))
    out = r(x)
    assert torch.equal(x, keep)
    body = x[:, 1:].reshape(-1, 7).double()
    torch.testing.assert_close(out["s2"].double(), (body**2).sum(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(out["hist"], HIST.counts(x[:, 1:].reshape(-1, 7)))


def test_streaming_passes_stop_before_the_unembedding(model):
    """contrastive_neurons and sparse_probe stream through `run_to_last_site`: no lm_head, same values."""
    from workbench.neurons.streaming import run_reduced

    texts = [CORPUS[0][:60], CORPUS[1][:90]]
    head = resolve(model.hf, model.arch.unembed)
    with Calls({"lm_head": head}) as c:
        got = run_reduced(model, texts, [0, 1], lambda x: x.float().amax(1), None)
        wb.contrastive_neurons(model, {"a": [CORPUS[2][:50], CORPUS[3][:40]], "b": [CORPUS[4][:70], CORPUS[5][:30]]},
                               permutations=0, progress=False)
    assert c.n["lm_head"] == 0
    ref = model.run(texts, capture=["neurons.0", "neurons.1"], top_k=0, logits=None)
    for L in (0, 1):
        mask = model.tokenize(texts).attention_mask.bool()
        want = ref.activations[f"neurons.{L}"].masked_fill(~mask[..., None], -torch.inf).amax(1)
        pad_free = torch.tensor([bool(m.all()) for m in mask])
        torch.testing.assert_close(got[L][pad_free], want[pad_free])


def test_a_patch_spec_is_refused_with_a_clear_error(model, tmp_path):
    with pytest.raises(ValueError, match="Patch specs need their source prompt"):
        do_scan(model, tmp_path / "patch", corpus=CORPUS[:2], interventions=[wb.Patch("resid_post.0", source="a b c")])


def test_top_k_merge_equals_a_sort_by_value_then_window():
    """Ties (and -0.0 against 0.0) keep the earlier window; empty slots come after every real window."""
    from workbench.neurons.store import KeyState

    g = torch.Generator().manual_seed(3)
    k, d = 6, 9
    st = KeyState.empty(d, k, 4, 0)
    merged: list[list[tuple[float, int, int]]] = [[] for _ in range(d)]
    for step in range(5):
        vals = torch.randint(-2, 3, (4, d), generator=g).float()
        vals[vals == 0] = -0.0 if step % 2 else 0.0
        if step == 2:
            vals[:, 0] = -torch.inf
        wins = torch.arange(10 * step, 10 * step + 4)[:, None].expand(4, d)
        pos = torch.randint(0, 50, (4, d), generator=g)
        st.merge_top(vals, wins, pos)
        for u in range(d):
            merged[u] += [(float(vals[i, u]), int(wins[i, u]), int(pos[i, u])) for i in range(4)]
    for u in range(d):
        want = sorted(merged[u], key=lambda t: (-t[0], t[1]))[:k]
        got = list(zip(st.top_values[:, u].tolist(), st.top_window[:, u].tolist(), st.top_pos[:, u].tolist(),
                       strict=True))
        assert got == want, u


def test_counts_become_int64_before_int32_would_overflow():
    """Counts are int32 in memory while a unit's token count fits; the merge that would pass
    2^31 - 1 widens them first, so no count wraps."""
    st = KeyState.empty(3, 2, HIST.n_bins, 0)
    assert st.hist.dtype == torch.int32
    big = 2**31 - 5
    st.hist[:, HIST.center] = big
    st.n = big
    batch = torch.zeros(3, HIST.n_bins, dtype=torch.int32)
    batch[:, HIST.center] = 10
    st.merge_power_sums(10, None, *(torch.zeros(3, dtype=torch.float64) for _ in range(4)))
    st.merge_hist(batch)
    assert st.hist.dtype == torch.int64
    assert (st.hist[:, HIST.center] == big + 10).all()
    small = KeyState.empty(3, 2, HIST.n_bins, 0)
    small.merge_power_sums(10, None, *(torch.zeros(3, dtype=torch.float64) for _ in range(4)))
    small.merge_hist(batch.long())  # the torch path's int64 counts into int32 ones
    assert small.hist.dtype == torch.int32 and (small.hist[:, HIST.center] == 10).all()
