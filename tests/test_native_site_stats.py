"""The scan's C kernels (`workbench.neurons.site_stats`, `top_merge`) against the torch code they replace,
and the native-kernel loader (`workbench.core.native`): cache, fallback, races, pickling."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import workbench as wb
from workbench.core import native
from workbench.core.corpus import default_corpus
from workbench.neurons import site_stats as ss
from workbench.neurons import top_merge
from workbench.neurons.scan import ScanReducer
from workbench.neurons.store import HIST, KeyState

needs_cc = pytest.mark.skipif(native.compiler() is None, reason="no C compiler here: the scan uses its torch passes")


def hard_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations with every case the bins and maxima must get right, one padded window."""
    g = torch.Generator().manual_seed(seed)
    b, s, d = 5, 9, 37
    x = torch.randn(b, s, d, generator=g) * torch.logspace(-4, 3, d)
    x[0, 2, :4] = torch.tensor([0.0, -0.0, 1e-40, -1e-40])  # zeros and subnormals (the centre bins)
    x[1, 3, 5], x[1, 4, 6], x[2, 5, 7] = float("inf"), float("-inf"), float("nan")
    x[2, 7, 8] = float("nan")  # a second NaN later in the window: the first one's position wins
    x[3, 1:, 9] = 2.5  # a tie over the whole window: the first counted position
    x[4, :, 10] = -3.0
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[:, 0] = False
    mask[3, 6:] = False  # a shorter window
    x[3, 7, :] = 1e6  # in its padding: never counted
    return x, mask, torch.tensor([3])


@needs_cc
def test_kernel_is_built_here():
    assert ss.available(), "a C compiler is installed, so the scan kernel must build"


@needs_cc
@pytest.mark.parametrize("shift", [False, True])
def test_kernel_equals_the_torch_passes(shift):
    x, mask, pad = hard_batch()
    sh = x[:, 1:].nan_to_num(0, 0, 0).mean((0, 1)) if shift else None
    r = ScanReducer(mask, pad, sh, 2, torch.zeros(0, dtype=torch.long))
    got = ss.site_stats(x, mask, sh, 1)
    assert got is not None
    torch.testing.assert_close(got.wmax, r.maxima(x), rtol=0, atol=0, equal_nan=True)
    b, _, d = x.shape
    j, u = torch.ones(b, d, dtype=torch.bool).nonzero(as_tuple=True)
    r._dense = None
    assert torch.equal(got.wpos, r.positions(x, j, u).view(b, d))
    assert got.wpos[2, 7] == 5 and got.wpos[3, 9] == 1 and got.wpos[4, 10] == 1
    assert torch.equal(got.hist, r.histogram(x))
    # The power sums against float64 sums of the float32 differences, over the counted tokens only:
    # float32 products summed in float32 over at most 64 tokens, so within 64 ulps of the sum of |y|^p.
    y = (x - sh if shift else x)[mask].double()
    finite = y.isfinite().all(0)
    for p, name in enumerate(("s1", "s2", "s3", "s4"), start=1):
        want = (y[:, finite] ** p).sum(0)
        bound = 64 * 2.0**-23 * (y[:, finite].abs() ** p).sum(0)
        assert ((getattr(got, name)[finite] - want).abs() <= bound).all(), name
        assert not getattr(got, name)[~finite].isfinite().all()


@needs_cc
def test_power_sums_of_a_long_batch_beat_float32_sums():
    """Thousands of tokens near 1: the kernel folds its float32 sums into float64 every 64 tokens,
    so its error stays at a few ulps where one float32 sum over the batch (the torch path) drifts."""
    g = torch.Generator().manual_seed(3)
    x = (1.0 + 1e-3 * torch.randn(2, 4096, 3, generator=g)).contiguous()
    mask = torch.ones(2, 4096, dtype=torch.bool)
    got = ss.site_stats(x, mask, None, 0)
    torch_sums = ScanReducer(mask, torch.zeros(0, dtype=torch.long), None, 2, torch.zeros(0, dtype=torch.long)).moments(x)
    y = x.reshape(-1, 3).double()
    for p, name in enumerate(("s1", "s2", "s3", "s4"), start=1):
        want = (y**p).sum(0)
        err = (getattr(got, name) - want).abs() / want
        assert (err < 1e-6).all(), (name, err)
        assert (err <= (torch_sums[name].double() - want).abs() / want).all(), name


@needs_cc
def test_kernel_counts_every_bin_like_the_torch_histogram():
    """Every float32 bit pattern class: a sweep of magnitudes over all bins, both signs."""
    e = torch.linspace(-140, 140, 4001)
    v = torch.cat([2.0**e, -(2.0**e), torch.tensor([0.0, -0.0, float("inf"), -float("inf")])])
    x = v[: (len(v) // 8) * 8].view(1, -1, 8).contiguous()
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    got = ss.site_stats(x, mask, None, 0)
    assert torch.equal(got.hist, HIST.counts(x.view(-1, 8)))
    assert int(got.hist.sum()) == x.numel()


@needs_cc
def test_reducer_gives_the_same_with_and_without_the_kernel(monkeypatch):
    x, mask, pad = hard_batch(1)
    x = x.nan_to_num(0.0, 0.0, 0.0)
    shift = x[:, 1:].mean((0, 1))
    thr = torch.full((2, x.shape[-1]), float("nan"))
    rows = torch.tensor([0, 2])

    def reduce() -> dict[str, torch.Tensor]:
        return ScanReducer(mask, pad, shift, 2, rows, threshold=thr)(x)

    fast = reduce()
    monkeypatch.setenv("WORKBENCH_NATIVE", "0")
    slow = reduce()
    assert fast.keys() == slow.keys()
    for k in fast:
        if k.startswith("s") and k[1:].isdigit():
            torch.testing.assert_close(fast[k].double(), slow[k].double(), rtol=2e-4, atol=1e-3)
        else:
            assert torch.equal(fast[k], slow[k]), k


@needs_cc
def test_scan_with_the_kernel_equals_the_torch_scan(tiny, tmp_path, monkeypatch):
    model = tiny("llama")
    corpus = default_corpus(max_passages=6)
    kw = {"k": 4, "window": 12, "batch_size": 3, "sample": 8, "progress": False}
    fast = wb.scan(model, corpus, tmp_path / "fast", **kw)
    monkeypatch.setenv("WORKBENCH_NATIVE", "0")
    slow = wb.scan(model, corpus, tmp_path / "slow", **kw)
    for key, a in fast.states.items():
        bst = slow.states[key]
        assert a.n == bst.n
        for f in ("top_values", "top_window", "top_pos", "hist"):
            assert torch.equal(getattr(a, f), getattr(bst, f)), (key, f)
        for f in ("mean", "m2", "m3", "m4"):
            torch.testing.assert_close(getattr(a, f), getattr(bst, f), rtol=1e-4, atol=1e-5)
    assert torch.equal(fast.sample.windows, slow.sample.windows)


def test_non_cpu_or_other_dtypes_take_the_torch_path():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    assert ss.site_stats(x, torch.ones(2, 3, dtype=torch.bool), None, 0) is None
    assert ss.site_stats(torch.randn(2, 4, 3).transpose(1, 2), torch.ones(2, 4, dtype=torch.bool), None, 0) is None


@needs_cc
def test_bad_shapes_are_named():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"mask must be \[batch, seq\] = \[2, 3\]"):
        ss.site_stats(x, torch.ones(3, 2, dtype=torch.bool), None, 0)
    with pytest.raises(ValueError, match=r"shift must be \[4\]"):
        ss.site_stats(x, torch.ones(2, 3, dtype=torch.bool), torch.zeros(5), 0)


SRC = "int wb_add(int a, int b) { return a + b; }\n"
SIG = {"wb_add": (native.ctypes.c_int, [native.ctypes.c_int, native.ctypes.c_int])}


def fresh(monkeypatch, tmp_path) -> None:
    """An empty kernel cache and no kernel loaded in this process."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    native.clear()


@needs_cc
def test_loader_builds_caches_and_rebuilds_a_damaged_file(monkeypatch, tmp_path):
    fresh(monkeypatch, tmp_path)
    lib = native.load("t_add", SRC, SIG)
    assert lib is not None and lib.wb_add(2, 40) == 42
    (so,) = (tmp_path / "cache" / "native").glob("t_add-*.so")
    assert not list(so.parent.glob("*.tmp*"))  # written atomically: no temporary left
    so.unlink()  # a damaged cache entry (a new file: the loaded library keeps its own)
    so.write_bytes(b"\x7fELF truncated")
    native.clear()
    lib = native.load("t_add", SRC, SIG)
    assert lib is not None and lib.wb_add(1, 2) == 3


def test_loader_without_a_compiler_or_disabled_gives_none(monkeypatch, tmp_path):
    fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert native.compiler() is None
    assert native.load("t_add", SRC, SIG) is None
    monkeypatch.setenv("WORKBENCH_NATIVE", "0")
    assert not native.enabled() and native.load("t_add", SRC, SIG) is None


@needs_cc
def test_a_failing_build_warns_and_falls_back(monkeypatch, tmp_path):
    fresh(monkeypatch, tmp_path)
    with pytest.warns(RuntimeWarning, match="native kernel 't_bad' unavailable .*error"):
        assert native.load("t_bad", "this is not C;", {}) is None
    assert native.load("t_bad", "this is not C;", {}) is None  # remembered: one warning per process


@needs_cc
def test_two_processes_building_at_once_both_load(tmp_path):
    code = textwrap.dedent(f"""
        from workbench.core import native
        lib = native.load("t_race", {SRC!r} + "/* race */", {{"wb_add": (native.ctypes.c_int,
                          [native.ctypes.c_int, native.ctypes.c_int])}})
        print(lib.wb_add(20, 22))
    """)
    env = {**os.environ, "WORKBENCH_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == ["42"] * 3 and all(p.returncode == 0 for p in procs)
    assert len(list((tmp_path / "cache" / "native").glob("t_race-*.so"))) == 1


def torch_merge(tv, tw, tp, values, windows, pos):
    """`KeyState.merge_top`'s torch path: every column sorted by `KeyState._merged`."""
    return KeyState._merged(tv, tw, tp.int(), values.float(), windows.long(), pos.int())


def hard_top(seed: int, k: int, c: int, d: int = 11, sort_existing: bool = True):
    """A running top-k and candidates with ties, NaNs, signed zeros, infinities and empty slots."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor([0.0, -0.0, 1.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), 2.0, 1e-40])
    tv = pool[torch.randint(len(pool), (k, d), generator=g)]
    tw = torch.randperm(10 * k * d + 1, generator=g)[: k * d].view(k, d)
    tv[k // 2 :, : d // 3] = -torch.inf  # empty slots, as `KeyState.empty` leaves them
    tw[k // 2 :, : d // 3] = -1
    tp = torch.randint(64, (k, d), generator=g, dtype=torch.int32)
    tp[tw < 0] = 0
    if sort_existing:
        tv, tw, tp = torch_merge(tv, tw, tp, tv[:0], tw[:0], tp[:0])
    values = pool[torch.randint(len(pool), (c, d), generator=g)]
    windows = 10 * k * d + 1 + torch.randperm(10 * c * d + 1, generator=g)[: c * d].view(c, d)
    pos = torch.randint(64, (c, d), generator=g, dtype=torch.int32)
    return tv, tw, tp, values, windows, pos


@needs_cc
@pytest.mark.parametrize("k,c", [(4, 9), (20, 16), (8, 3), (1, 5), (6, 0)])
@pytest.mark.parametrize("sort_existing", [True, False])
def test_top_merge_kernel_equals_the_torch_sort(k, c, sort_existing):
    for seed in range(5):
        args = hard_top(seed, k, c, sort_existing=sort_existing)
        fast = top_merge.merged(*args)
        slow = torch_merge(*args)
        for a, b, name in zip(fast, slow, ("values", "windows", "pos"), strict=True):
            assert a.dtype == b.dtype, name
            assert torch.equal(a.view(torch.int32) if a.is_floating_point() else a,
                               b.view(torch.int32) if b.is_floating_point() else b), (seed, name)


@needs_cc
def test_merge_top_uses_the_kernel_and_agrees_when_disabled(monkeypatch):
    tv, tw, tp, values, windows, pos = hard_top(7, 20, 16, d=300)
    states = []
    for native_on in ("1", "0"):
        monkeypatch.setenv("WORKBENCH_NATIVE", native_on)
        st = KeyState.empty(300, 20, HIST.n_bins, 0)
        st.merge_top(tv, tw, tp)
        st.merge_top(values, windows[:, :1].expand_as(windows), pos)  # one window per row, as the scan gives
        states.append(st)
    assert top_merge.available() is False  # WORKBENCH_NATIVE=0 is still set
    for f in ("top_values", "top_window", "top_pos"):
        a, b = getattr(states[0], f), getattr(states[1], f)
        assert torch.equal(a.view(torch.int32) if a.is_floating_point() else a,
                           b.view(torch.int32) if b.is_floating_point() else b), f


def test_top_merge_refuses_shapes_that_disagree():
    if not top_merge.available():
        pytest.skip("no C compiler here")
    tv, tw, tp, values, windows, pos = hard_top(0, 4, 3)
    with pytest.raises(ValueError, match="shapes do not agree"):
        top_merge.merged(tv, tw, tp, values[:, :5], windows, pos)
