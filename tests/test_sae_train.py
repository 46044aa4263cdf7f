"""TopK SAE / transcoder training (workbench.dictionaries.train) and activation streaming (workbench.core.activations)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import torch

from workbench.core.activations import (
    ActivationBuffer,
    ActivationStream,
    collect_activations,
    token_windows,
)
from workbench.core.corpus import default_corpus
from workbench.core.errors import Cancelled, WorkbenchError
from workbench.dictionaries.dictionary import Dictionary
from workbench.dictionaries.train import (
    CheckpointError,
    TopKTrainer,
    TrainerConfig,
    TrainingCancelled,
    geometric_median,
    train_sae,
)

CORPUS = default_corpus(max_passages=20)
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def planted(n: int = 20_000, d: int = 32, m: int = 64, active: int = 3, seed: int = 0, d_out: int | None = None):
    """Sparse non-negative codes over a dictionary of unit vectors (optionally a second one for outputs)."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(m, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, m)
    idx = torch.rand(n, m, generator=g).argsort(1)[:, :active]
    codes.scatter_(1, idx, torch.rand(n, active, generator=g) * 2 + 0.5)
    if d_out is None:
        return codes @ D, D
    D_out = torch.randn(m, d_out, generator=g)
    return codes @ D, codes @ D_out, D


def same_weights(a: Dictionary, b: Dictionary) -> bool:
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in PARAMS)


# -- the trainer ------------------------------------------------------------------------------------
def test_recovers_planted_sparse_features():
    X, D = planted()
    sae = train_sae(None, "resid_post.0", activations=X, n_latents=128, k=4, batch_size=512, max_tokens=200_000,
                    progress=False)
    cos = (D @ sae.directions.T).max(1).values  # best decoder row for each true feature
    assert cos.median() > 0.9
    assert (cos > 0.9).float().mean() > 0.9
    assert sae.architecture == "topk" and sae.k == 4 and sae.d_sae == 128 and sae.site == "resid_post.0"
    assert sae.meta["training"]["fvu"] < 0.15
    # the Dictionary computes what the trainer trained: b_pre = b_dec is subtracted before encoding
    x = X[:500]
    rec, acts = sae.forward(x)
    assert ((acts > 0).sum(1) <= 4).all()
    fvu = float((rec - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 0.2


def dense_reference_step(trainer: TopKTrainer, x: torch.Tensor, lr: float, dead: torch.Tensor | None) -> dict:
    """One step written the plain way: dense codes, autograd, Adam, projection, renormalisation."""
    cfg = trainer.cfg
    P = {n: getattr(trainer, n).detach().clone().requires_grad_() for n in PARAMS}
    opt = torch.optim.Adam(list(P.values()), lr=lr, betas=cfg.betas, eps=cfg.eps)
    pre = (x - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
    v, i = pre.topk(cfg.k, dim=1)
    acts = torch.zeros_like(pre).scatter(1, i, v.relu())
    recon = acts @ P["W_dec"] + P["b_dec"]
    var = (x - x.mean(0)).pow(2).sum()
    loss = (recon - x).pow(2).sum() / var
    if dead is not None:
        ka = min(cfg.k_aux, int(dead.sum()))
        va, ia = pre.masked_fill(~dead, -torch.inf).topk(ka, dim=1)
        aux = torch.zeros_like(pre).scatter(1, ia, va.relu())
        e_hat = aux @ P["W_dec"]
        scale = min(int(dead.sum()) / cfg.k_aux, 1.0)
        loss = loss + cfg.auxk_alpha * (e_hat - (x - recon).detach()).pow(2).sum() / var * scale
    loss.backward()
    with torch.no_grad():
        W, g = P["W_dec"], P["W_dec"].grad
        g -= (g * W).sum(1, keepdim=True) * W
        opt.step()
        W /= W.norm(dim=1, keepdim=True)
    return {n: t.detach() for n, t in P.items()}


@pytest.mark.parametrize("with_dead", [False, True])
def test_step_matches_dense_autograd_reference(with_dead):
    X, _ = planted(n=512)
    cfg = TrainerConfig(n_latents=64, k=4, batch_size=256, max_tokens=10_000, lr=1e-2, dead_tokens=100, seed=3)
    tr = TopKTrainer(cfg, 32)
    tr.step(X[:256])  # initialise b_dec, fill Adam state
    dead = None
    if with_dead:
        tr.since_fired[::3] = 10**6  # every third latent counts as dead
        dead = tr.since_fired >= tr.cfg.dead_tokens
    # the reference continues from the same parameters with a fresh Adam: give ours a fresh one too
    tr.opt = torch.optim.Adam(tr.params, lr=1e-2, betas=cfg.betas, eps=cfg.eps)
    ref = dense_reference_step(tr, X[256:], 1e-2, dead)
    stats = tr.step(X[256:], lr=1e-2)
    for n in PARAMS:
        torch.testing.assert_close(getattr(tr, n).detach(), ref[n], rtol=1e-4, atol=1e-5, msg=n)
    assert (stats["auxk"] > 0) == with_dead


def test_parallel_gradient_removed_and_rows_unit_norm():
    X, _ = planted(n=4096)
    tr = TopKTrainer(TrainerConfig(n_latents=64, k=4, batch_size=512, max_tokens=4096, lr=5e-2), 32)
    seen = []
    step = tr.opt.step

    def spy(*a, **kw):
        g, W = tr.W_dec.grad, tr.W_dec.detach()
        seen.append(float((g * W).sum(1).abs().max() / g.norm(dim=1).max()))
        return step(*a, **kw)

    tr.opt.step = spy
    for i in range(0, 4096, 512):
        tr.step(X[i:i + 512])
        torch.testing.assert_close(tr.W_dec.norm(dim=1), torch.ones(64), rtol=0, atol=1e-5)
    assert len(seen) == 8 and max(seen) < 1e-5  # no component along the rows went into Adam


def test_auxk_revives_dead_latents():
    X, _ = planted(n=30_000, seed=1)

    def run(alpha: float) -> list[dict]:
        cfg = TrainerConfig(n_latents=128, k=4, batch_size=512, max_tokens=30_000, lr=1e-2, auxk_alpha=alpha,
                            dead_tokens=1024, lr_decay=0.0)
        tr = TopKTrainer(cfg, 32)
        with torch.no_grad():  # half the latents: weak encoders, never in the top k -> dead
            tr.W_enc[:, 64:] *= 0.01
        return [tr.step(X[i:i + 512]) for i in range(0, 30_000 - 511, 512)]

    with_aux, without = run(1 / 32), run(0.0)
    assert with_aux[3]["n_dead"] >= 55 and without[3]["n_dead"] >= 55  # dead after dead_tokens
    assert min(s["n_dead"] for s in without[3:]) >= 60  # nothing revives them
    assert max(s["auxk"] for s in with_aux[:5]) > 0 and all(s["auxk"] == 0 for s in without)
    # AuxK pulls them back into use (later, latents the 64 planted features do not need fade again)
    assert min(s["n_dead"] for s in with_aux[3:]) < 20
    assert with_aux[-1]["fvu"] < without[-1]["fvu"]


def test_geometric_median_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g)
    x[:20] += 100  # outliers move the mean, not the median
    m = geometric_median(x)
    d = lambda c: float((x.double() - c.double()).norm(dim=1).sum())  # noqa: E731
    assert d(m) <= d(x.mean(0)) and d(m) <= d(x.median(0).values)
    for _ in range(20):  # a local minimum of the sum of distances
        assert d(m) <= d(m + 0.01 * torch.randn(5, generator=g)) + 1e-9


def test_transcoder_learns_sparse_map():
    X, Y, _ = planted(n=24_000, d=24, m=48, seed=2, d_out=16)
    tc = train_sae(None, "mlp_in.0", out_site="mlp_out.0", activations=(X[:20_000], Y[:20_000]), n_latents=96, k=3,
                   batch_size=512, max_tokens=200_000, progress=False)
    assert tc.is_transcoder and tc.d_in == 24 and tc.d_out == 16 and tc.b_pre is None
    xt, yt = X[20_000:], Y[20_000:]
    pred, _ = tc.forward(xt)
    var = (yt - yt.mean(0)).pow(2).sum()
    fvu = float((pred - yt).pow(2).sum() / var)
    # the best affine map x -> y (least squares on the training rows) for comparison
    ones = torch.ones(20_000, 1)
    W = torch.linalg.lstsq(torch.cat([X[:20_000], ones], 1), Y[:20_000]).solution
    linear = float((torch.cat([xt, ones[:len(xt)]], 1) @ W - yt).pow(2).sum() / var)
    assert fvu < 0.15 and fvu < 0.3 * linear  # held out; predicting the mean gives 1.0, linear ~0.5


def test_lr_default_and_schedule():
    cfg = TrainerConfig(n_latents=4608, max_tokens=4096 * 100).resolved(576)
    assert math.isclose(cfg.lr, 8e-4 / math.sqrt(4608 / 2**14)) and abs(cfg.lr - 1.5e-3) < 1e-5
    assert cfg.k_aux == 288 and cfg.dead_tokens == 4096 * 100 // 5
    assert cfg.lr_at(0) == cfg.lr_at(79) == cfg.lr
    assert cfg.lr_at(90) == pytest.approx(cfg.lr * 0.5) and cfg.lr_at(99) == pytest.approx(cfg.lr / 20)
    assert TrainerConfig.from_dict(cfg.to_dict()) == cfg


def test_config_object_and_keyword_overrides():
    X, _ = planted(n=3000)
    cfg = TrainerConfig(n_latents=64, k=4, batch_size=256, max_tokens=4096, seed=2)
    a = train_sae(None, "resid_post.0", activations=X, config=cfg, progress=False)
    b = train_sae(None, "resid_post.0", activations=X, n_latents=64, k=4, batch_size=256, max_tokens=4096, seed=2,
                  progress=False)
    assert same_weights(a, b)
    c = train_sae(None, "resid_post.0", None, cfg, activations=X, seed=3, progress=False)  # a keyword overrides
    assert c.meta["training"]["seed"] == 3 and not same_weights(a, c) and cfg.seed == 2
    e = train_sae(None, "resid_post.0", activations=X, expansion=3, k=4, batch_size=256, max_tokens=1024,
                  progress=False)
    assert e.d_sae == 3 * 32
    with pytest.raises(TypeError, match=r"'n_latent'; valid: .*n_latents"):
        train_sae(None, "resid_post.0", activations=X, n_latent=64)
    with pytest.raises(TypeError, match="TrainerConfig"):
        train_sae(None, "resid_post.0", None, {"k": 4}, activations=X)


def test_errors_follow_the_contract():
    assert issubclass(CheckpointError, WorkbenchError) and issubclass(CheckpointError, ValueError)
    assert issubclass(TrainingCancelled, Cancelled)
    e = TrainingCancelled(3, None, None)
    assert e.partial is None and e.step == 3 and "step 3" in str(e)


# -- checkpoints and resumption ------------------------------------------------------------------------
def test_resume_after_cancel_equals_uninterrupted(tmp_path):
    X, _ = planted(n=6000)
    kw = dict(activations=X, n_latents=64, k=4, batch_size=256, max_tokens=15_000, progress=False, seed=5,
              checkpoint_every=7)
    ref = train_sae(None, "resid_post.0", **kw)
    ev = threading.Event()
    with pytest.raises(TrainingCancelled) as info:
        train_sae(None, "resid_post.0", checkpoint=tmp_path / "ck", cancel=ev,
                  on_step=lambda s: ev.set() if s["step"] == 23 else None, **kw)
    assert info.value.step == 23 and info.value.dictionary is not None
    assert isinstance(info.value, Cancelled) and info.value.partial is info.value.dictionary
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert state["step"] == 23 and not state["complete"]
    assert (tmp_path / "ck" / state["state"]).exists() and len(list((tmp_path / "ck").glob("state-*"))) == 1
    out = train_sae(None, "resid_post.0", checkpoint=tmp_path / "ck", **kw)
    assert same_weights(ref, out)
    assert out.meta["training"]["steps"] == ref.meta["training"]["steps"] == 59
    assert out.meta["training"]["fvu_history"] == ref.meta["training"]["fvu_history"]
    # a finished checkpoint just gives the result back
    assert same_weights(train_sae(None, "resid_post.0", checkpoint=tmp_path / "ck", **kw), ref)


def test_keyboard_interrupt_checkpoints_tiny_model(tiny, tmp_path):
    model = tiny("llama")
    kw = dict(n_latents=96, k=8, batch_size=256, max_tokens=12_000, holdout_tokens=512, progress=False)
    ref = train_sae(model, "resid_post.1", CORPUS, **kw)

    def boom(s):
        if s["step"] == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae(model, "resid_post.1", CORPUS, checkpoint=tmp_path, on_step=boom, **kw)
    assert json.loads((tmp_path / "state.json").read_text())["step"] == 17
    assert (tmp_path / "activations.safetensors").exists()
    out = train_sae(model, "resid_post.1", CORPUS, checkpoint=tmp_path, **kw)
    assert same_weights(ref, out)
    other = CORPUS[1:] + CORPUS[:1]  # same length, other order: the cached activations do not fit it
    with pytest.raises(CheckpointError, match="other token windows"):
        train_sae(model, "resid_post.1", other, checkpoint=tmp_path, resume=False, **kw)
    assert out.meta["training"]["heldout_fvu"] == ref.meta["training"]["heldout_fvu"] < 1.0


def test_cancel_during_collection_then_resume(tiny, tmp_path):
    model = tiny("llama")
    kw = dict(n_latents=96, k=8, batch_size=256, max_tokens=5000, holdout_tokens=0, collect_batch_size=4,
              progress=False)
    ref = train_sae(model, "resid_post.1", CORPUS, **kw)
    ev = threading.Event()
    ev.set()  # stops after the first batch of windows
    with pytest.raises(TrainingCancelled) as info:
        train_sae(model, "resid_post.1", CORPUS, checkpoint=tmp_path, cancel=ev, **kw)
    assert info.value.step == 0 and info.value.dictionary is None
    from safetensors import safe_open

    with safe_open(str(tmp_path / "activations.safetensors"), "pt") as f:
        assert f.metadata()["complete"] == "0" and f.metadata()["windows"] == "4"
    out = train_sae(model, "resid_post.1", CORPUS, checkpoint=tmp_path, **kw)
    assert same_weights(ref, out)


def test_streaming_transcoder_resume(tiny, tmp_path):
    model = tiny("llama")
    kw = dict(out_site="mlp_out.1", n_latents=96, k=8, batch_size=256, max_tokens=10_000, buffer_tokens=2000,
              progress=False)
    ref = train_sae(model, "mlp_in.1", CORPUS, **kw)
    assert ref.is_transcoder and ref.out_site == "mlp_out.1" and ref.b_pre is None

    def boom(s):
        if s["step"] == 19:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae(model, "mlp_in.1", CORPUS, checkpoint=tmp_path, on_step=boom, **kw)
    first = json.loads((tmp_path / "state.json").read_text())["buffer"]
    assert first["fill"] >= 1 and first["source_position"] > 0
    stop_now = threading.Event()
    stop_now.set()  # resumed, then cancelled before any step: the checkpoint must not lose the buffer
    with pytest.raises(TrainingCancelled):
        train_sae(model, "mlp_in.1", CORPUS, checkpoint=tmp_path, cancel=stop_now, **kw)
    assert json.loads((tmp_path / "state.json").read_text())["buffer"] == first

    def boom2(s):
        if s["step"] == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # interrupted again, within the same fill
        train_sae(model, "mlp_in.1", CORPUS, checkpoint=tmp_path, on_step=boom2, **kw)
    second = json.loads((tmp_path / "state.json").read_text())["buffer"]
    assert second["fill"] == first["fill"] and second["source_fingerprint"] == first["source_fingerprint"]
    # the same settings but other texts (the corpus looks alike from outside: a list of 20 texts)
    other = CORPUS[1:] + CORPUS[:1]
    with pytest.raises(ValueError, match="corpus or tokenizer changed"):
        train_sae(model, "mlp_in.1", other, checkpoint=tmp_path, **kw)
    out = train_sae(model, "mlp_in.1", CORPUS, checkpoint=tmp_path, **kw)
    assert same_weights(ref, out)


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    X, _ = planted(n=2000)
    kw = dict(activations=X, n_latents=64, k=4, batch_size=256, max_tokens=2048, progress=False)
    train_sae(None, "resid_post.0", checkpoint=tmp_path, **kw)
    with pytest.raises(ValueError, match="resume=False"):
        train_sae(None, "resid_post.0", checkpoint=tmp_path, **{**kw, "k": 5})
    state = json.loads((tmp_path / "state.json").read_text())
    tensors = tmp_path / state["state"]
    tensors.write_bytes(tensors.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt"):
        train_sae(None, "resid_post.0", checkpoint=tmp_path, **kw)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not JSON"):
        train_sae(None, "resid_post.0", checkpoint=tmp_path, **kw)
    (tmp_path / "state.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="not a workbench"):
        train_sae(None, "resid_post.0", checkpoint=tmp_path, **kw)
    # resume=False starts over instead of reading the broken state
    out = train_sae(None, "resid_post.0", checkpoint=tmp_path, resume=False, **kw)
    assert same_weights(out, train_sae(None, "resid_post.0", **kw))


# -- end to end on a tiny model -------------------------------------------------------------------------
def test_tiny_model_end_to_end(tiny, tmp_path, capsys):
    model = tiny("llama")
    sae = train_sae(model, "resid_post.1", CORPUS, n_latents=96, k=8, batch_size=256, max_tokens=20_000,
                    holdout_tokens=512, progress=True)
    t = sae.meta["training"]
    assert isinstance(sae, Dictionary) and sae.architecture == "topk" and sae.k == 8 and sae.d_in == 48
    assert t["steps"] == 79 and t["tokens"] == 79 * 256 and t["lr"] > 0 and 0 <= t["dead_fraction"] <= 1
    assert t["heldout_tokens"] == 512 and 0 < t["heldout_fvu"] < 0.8 and t["fvu"] < 0.8
    assert t["epochs"] == pytest.approx(79 * 256 / t["data_tokens"], abs=0.01)
    assert sae.meta["cfg"]["metadata"]["context_size"] == 64 and sae.meta["sparsity"].shape == (96,)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(96), rtol=0, atol=1e-5)
    err = capsys.readouterr().err
    assert "fvu=" in err and "L0=" in err and "dead=" in err and "tok" in err
    # what the SAE sees on fresh text, through the model
    x = collect_activations(model, "resid_post.1", ["An entirely different text about sorting lists."], progress=False)
    rec, acts = sae.forward(x)
    assert ((acts > 0).sum(1) <= 8).all() and float((rec - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()) < 1.0
    sae.save(tmp_path / "sae")  # the SAELens layout round-trips
    back = Dictionary.load(tmp_path / "sae")
    assert back.architecture == "topk" and back.k == 8 and torch.allclose(back.W_dec, sae.W_dec)


# -- activations -------------------------------------------------------------------------------------------
def test_collect_matches_per_window_reference(tiny):
    model = tiny("llama")
    texts = CORPUS[:6]
    wins = list(token_windows(model.tokenizer, texts, 32))
    ref = []
    for w in wins:
        res = model.run(model.batch_from_ids([w]), capture=["resid_post.0", "mlp_out.1"], top_k=0, logits=None)
        ref.append((res.activations["resid_post.0"][0, 1:], res.activations["mlp_out.1"][0, 1:]))
    ref_x, ref_y = torch.cat([r[0] for r in ref]), torch.cat([r[1] for r in ref])
    for via in ("trace", "run"):
        x = collect_activations(model, "resid_post.0", texts, None, context=32, batch_size=5, via=via, progress=False)
        torch.testing.assert_close(x, ref_x, rtol=1e-5, atol=1e-5)
        x, y = collect_activations(model, ["resid_post.0", "mlp_out.1"], texts, None, context=32, batch_size=5,
                                   via=via, progress=False)
        torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    x = collect_activations(model, "resid_post.0", texts, 100, context=32, progress=False)
    assert torch.equal(x, collect_activations(model, "resid_post.0", texts, None, context=32, progress=False)[:100])


class _CharTok:
    """A fake tokenizer: one id per character (ord), BOS=1 in front with special tokens, EOS=2."""

    eos_token_id = 2
    pad_token_id = 0

    def __call__(self, texts, add_special_tokens=True, **kw):
        one = isinstance(texts, str)
        rows = [([1] if add_special_tokens else []) + [ord(c) for c in t] for t in ([texts] if one else texts)]
        return {"input_ids": rows[0] if one else rows}


def test_token_windows_pack_texts():
    wins = list(token_windows(_CharTok(), ["abcdef", "", "ghij"], context=4))
    # stream: a b c d e f EOS g h i j, cut into bodies of 3 after the BOS prefix
    assert wins == [[1, 97, 98, 99], [1, 100, 101, 102], [1, 2, 103, 104], [1, 105, 106]]
    with pytest.raises(ValueError, match="context"):
        list(token_windows(_CharTok(), ["abc"], context=1))


class _Chunks:
    """A source of 7-row chunks whose rows are their own global indices; counts chunks as windows."""

    def __init__(self, n_chunks: int, start: int = 0):
        self.n, self.windows = n_chunks, start

    def __iter__(self):
        for c in range(self.windows, self.n):
            self.windows = c + 1
            rows = torch.arange(c * 7, c * 7 + 7, dtype=torch.float32)[:, None]
            yield rows, rows * 10


def test_activation_buffer_shuffles_and_resumes():
    batches = list(ActivationBuffer(_Chunks(30), size=50, batch_size=16, seed=1))
    seen = torch.cat([b[0][:, 0] for b in batches])
    assert sorted(seen.tolist()) == list(range(210))  # every token exactly once
    assert all(torch.equal(b[1], b[0] * 10) for b in batches)  # pairs stay aligned
    assert all(len(b[0]) == 16 for b in batches[:-1])
    first = batches[0][0][:, 0]
    assert first.max() - first.min() > 16  # mixed across chunks, not a contiguous run
    again = list(ActivationBuffer(_Chunks(30), size=50, batch_size=16, seed=1))
    other = list(ActivationBuffer(_Chunks(30), size=50, batch_size=16, seed=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, other, strict=False))
    # resume after 5 batches from the recorded fill start
    buf = ActivationBuffer(_Chunks(30), size=50, batch_size=16, seed=1)
    for _ in range(5):
        next(buf)
    state, rest = buf.state()
    state = json.loads(json.dumps(state))
    resumed = ActivationBuffer.resume(_Chunks(30, start=state["source_position"]), state, rest)
    tail = list(resumed)
    assert len(tail) == len(batches) - 5
    assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, batches[5:], strict=True))
    assert len(list(ActivationBuffer(_Chunks(30), size=50, batch_size=16, drop_last=True))) == 210 // 16


def test_stream_counts_and_skips(tiny):
    model = tiny("llama")
    s = ActivationStream(model, "resid_post.0", CORPUS[:4], context=32, batch_size=3, progress=False)
    parts = list(s)
    n_windows = len(list(token_windows(model.tokenizer, CORPUS[:4], 32)))
    assert s.windows == n_windows and s.tokens == sum(len(p) for p in parts)
    s2 = ActivationStream(model, "resid_post.0", CORPUS[:4], context=32, batch_size=3, start_window=3, progress=False)
    assert torch.equal(torch.cat(list(s2)), torch.cat(parts[1:]))
    assert s2.resume_fingerprint != s2.fingerprint.hexdigest()


# -- bad input ---------------------------------------------------------------------------------------------
def test_bad_input(tiny, tmp_path):
    model = tiny("llama")
    X, _ = planted(n=1000)
    with pytest.raises(ValueError, match="unknown site"):
        train_sae(model, "resid_postt.1", CORPUS)
    with pytest.raises(IndexError, match="out of range"):
        train_sae(model, "resid_post.7", CORPUS)
    with pytest.raises(ValueError, match="batch, seq, width"):
        train_sae(model, "pattern.0", CORPUS)
    with pytest.raises(ValueError, match="k=200 is larger than n_latents=96"):
        train_sae(model, "resid_post.1", CORPUS, n_latents=96, k=200)
    with pytest.raises(ValueError, match="no tokens"):
        train_sae(model, "resid_post.1", [], n_latents=96, k=8, progress=False)
    with pytest.raises(ValueError, match="no tokens"):
        collect_activations(model, "resid_post.1", ["", ""], progress=False)
    with pytest.raises(ValueError, match="widths"):
        train_sae(model, "resid_post.1", activations=X)
    with pytest.raises(ValueError, match="expected 2 tensor"):
        train_sae(None, "mlp_in.0", out_site="mlp_out.0", activations=X)
    with pytest.raises(ValueError, match="model"):
        train_sae(None, "resid_post.0")
    with pytest.raises(ValueError, match="buffer_tokens"):
        train_sae(model, "resid_post.1", CORPUS, batch_size=512, buffer_tokens=100)
    with pytest.raises(ValueError, match="lr"):
        train_sae(None, "resid_post.0", activations=X, lr=-1.0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="folder"):
        train_sae(None, "resid_post.0", activations=X, n_latents=64, checkpoint=tmp_path / "file")
    tr = TopKTrainer(TrainerConfig(n_latents=64, k=4, batch_size=8), 32)
    with pytest.raises(ValueError, match=r"\[batch, 32\]"):
        tr.step(torch.zeros(8, 31))
    with pytest.raises(ValueError, match="b_dec_init"):
        TrainerConfig(n_latents=64, b_dec_init="geometric")
    with pytest.raises(ValueError, match="via"):
        ActivationStream(model, "resid_post.0", CORPUS, via="fast")
    assert Path(tmp_path / "file").read_text() == "x"


def test_trace_and_run_agree_on_every_family(model):
    texts = CORPUS[:3]
    a = collect_activations(model, ["mlp_in.1", "mlp_out.1"], texts, None, context=32, via="trace", progress=False)
    b = collect_activations(model, ["mlp_in.1", "mlp_out.1"], texts, None, context=32, via="run", progress=False)
    n = sum(len(w) - 1 for w in token_windows(model.tokenizer, texts, 32))
    for x, y in zip(a, b, strict=True):
        assert x.shape == (n, model.d_model)
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
