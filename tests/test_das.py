"""DAS, Boundless DAS, MDAS, sweeps and the illusion check on tiny models with planted mechanisms.

The planted models are tiny Llamas with their weights edited by hand: attention writes nothing,
so the last token alone decides the answer, and a known direction carries the variable (the
class of the last token: token ids 10..59 answer token 1, ids 60..109 answer token 2).

- ``resid``: the class lives along ``e_var`` of the residual stream; the unembedding reads ``e_var``;
- ``neuron``: one neuron of layer 1 (7) reads ``e_var`` and alone writes the readout direction ``e_out``;
- ``illusion``: neuron 0 carries the class but its output weights are zero (null space); neuron 1 is
  dormant (always 0) and writes ``e_out``; the unembedding reads ``e_var`` (the model's own pathway)
  and ``e_out``. Interchanging along ``(e_0 + e_1)/sqrt(2)`` flips the answer only through both.

References are plain PyTorch forward hooks on the HF modules (no nnsight, no workbench code), and
`Model.run` with the `SubspaceInterchange` spec for the fast training path.
"""

from __future__ import annotations

import threading

import pytest
import torch

from workbench.causal import (
    DASCancelled,
    DASError,
    DASResult,
    Subspace,
    SubspaceInterchange,
    counterfactual_pairs,
    das_sweep,
    illusion_check,
    interchange_accuracy,
    interchange_logits,
    train_das,
)
from workbench.core.loading import load
from workbench.testing import tiny_hf_model, tiny_tokenizer

D, DM = 48, 96
A, B = 1, 2
PLUS, MINUS = list(range(10, 60)), list(range(60, 110))
FILL = list(range(200, 500))
NEURON = 7


def unit(g: torch.Generator, avoid: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    v = torch.randn(D, generator=g)
    for a in avoid:
        v -= (v @ a) * a
    return v / v.norm()


def planted(kind: str, seed: int = 0):
    hf = tiny_hf_model("llama", seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    e_var = unit(g)
    e_const = unit(g, (e_var,))
    e_out = unit(g, (e_var, e_const))
    with torch.no_grad():
        E = hf.model.embed_tokens.weight
        E.mul_(1.5)
        for a in (e_var, e_const):
            E -= (E @ a)[:, None] * a
        E[MINUS] = E[PLUS]  # the same noise in both classes: they differ only along e_var
        E += 3.0 * e_const
        E[PLUS] += 3.0 * e_var
        E[MINUS] -= 3.0 * e_var
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        H = hf.lm_head.weight
        H.zero_()
        mlp = hf.model.layers[1].mlp
        if kind == "resid":
            H[A], H[B] = 0.5 * e_var, -0.5 * e_var
            mlp.down_proj.weight.normal_(0, 0.02)
        else:
            W = mlp.down_proj.weight  # [D, DM]
            W.normal_(0, 0.05)
            W -= e_out[:, None] * (e_out @ W)[None]  # no other neuron writes the readout
            for M in (mlp.gate_proj.weight, mlp.up_proj.weight):  # no other neuron reads the variable
                M -= (M @ e_var)[:, None] * e_var
            if kind == "neuron":
                mlp.gate_proj.weight[NEURON] = e_const
                mlp.up_proj.weight[NEURON] = e_var
                W[:, NEURON] = e_out
                H[A], H[B] = 0.5 * e_out, -0.5 * e_out
            else:
                mlp.gate_proj.weight[0] = e_const  # neuron 0: the class, disconnected
                mlp.up_proj.weight[0] = e_var
                W[:, 0] = 0
                mlp.gate_proj.weight[1] = 0  # neuron 1: dormant (silu(0) = 0), writes e_out
                W[:, 1] = 3 * e_out
                H[A], H[B] = 2 * e_var + 2 * e_out, -2 * e_var - 2 * e_out
    return load(hf, tokenizer=tiny_tokenizer()), {"e_var": e_var, "e_out": e_out}


def make_pairs(n: int, seed: int = 0, last: bool = True) -> list[tuple]:
    """Token-id pairs: a quarter each of (+,-), (-,+), (+,+), (-,-) classes of the last token."""
    g = torch.Generator().manual_seed(seed)

    def prompt(s: int) -> list[int]:
        f = [FILL[int(x)] for x in torch.randint(len(FILL), (2,), generator=g)]
        cls = PLUS if s > 0 else MINUS
        return f + [cls[int(torch.randint(len(cls), (1,), generator=g))]]

    out = []
    for i in range(n):
        sb, ss = [(1, -1), (-1, 1), (1, 1), (-1, -1)][i % 4]
        out.append((prompt(sb), prompt(ss), A if sb > 0 else B, A if ss > 0 else B))
    return out


@pytest.fixture(scope="module")
def resid_model():
    return planted("resid")


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(128)


# -- the plain-PyTorch reference ----------------------------------------------------------------
def hook_iia(model, module, basis: torch.Tensor, pairs: list[tuple], pre: bool = False) -> float:
    """IIA by hand: record the source's value at ``module`` (output, or input when ``pre``), then rerun
    the base with ``h[-1] += ((h_src - h[-1]) @ B.T) @ B`` and compare the argmax with the source answer."""
    hf, b = model.hf, basis.float().reshape(-1, basis.shape[-1])
    hits = 0
    for base, src, _, ans in pairs:
        rec = {}

        def grab(_m, args, out=None, rec=rec):
            rec["h"] = (args[0] if pre else out)[0, -1].detach().clone()

        def put(_m, args, out=None, rec=rec):
            h = (args[0] if pre else out).clone()
            h[0, -1] += ((rec["h"] - h[0, -1]) @ b.T) @ b
            return (h, *args[1:]) if pre else h

        for fn, ids in ((grab, src), (put, base)):
            hd = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
            try:
                with torch.no_grad():
                    logits = hf(input_ids=torch.tensor([ids])).logits[0, -1]
            finally:
                hd.remove()
        hits += int(int(logits.argmax()) == ans)
    return hits / len(pairs)


# -- the fast path is exact -----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_fast_path_matches_run_with_the_spec(tiny, family):
    m = tiny(family)
    base, src = "The cat sat on the mat", "A dog is on a mat"
    before = m.run(base, logits="last").logits
    pairs = counterfactual_pairs(m, [(base, src, 1, 2), (src, base, 2, 1)])
    for site in ("embed", "resid_pre.0", "resid_pre.1", "attn_out.1", "mlp_in.1", "neurons.0", "mlp_out.1",
                 "resid_post.0", "resid_post.1", "final_norm"):
        w = m.d_mlp if site.startswith("neurons") else m.d_model
        q, _ = torch.linalg.qr(torch.randn(w, 3, generator=torch.Generator().manual_seed(1)))
        sub = Subspace(site, q.T)
        fast = interchange_logits(m, sub, pairs, [-1, 2])
        ref = torch.stack([m.run(b, [SubspaceInterchange(sub, s, [-1, 2])], logits="last").logits[0]
                           for b, s in ((base, src), (src, base))])
        torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5, msg=f"{family} {site}")
        assert (ref[0] - before[0]).abs().max() > 1e-4, f"{site}: the interchange changed nothing"
    torch.testing.assert_close(m.run(base, logits="last").logits, before)  # the stubs and hooks are gone


# -- planted mechanisms --------------------------------------------------------------------------
def test_das_recovers_a_planted_direction(resid_model, pairs):
    m, d = resid_model
    res = train_das(m, "resid_post.0", pairs, 1, steps=200, lr=5e-2, batch_size=32, progress=False)
    cos = float(res.subspace.basis[0] @ d["e_var"])
    assert abs(cos) > 0.99, cos
    assert res.iia >= 0.95 and res.train_iia >= 0.95, res
    assert 0.3 < res.baseline < 0.7 and res.model_accuracy == 1.0
    assert res.n_heldout == round(0.2 * 128) and res.n_train == 128 - res.n_heldout
    assert res.illusion is None  # not an MLP hidden site
    # the IIA by hand (plain hooks on the HF layer) on every pair agrees with DAS's own evaluation
    by_hand = hook_iia(m, m.hf.model.layers[0], res.subspace.basis, pairs)
    mine = interchange_accuracy(m, res.subspace, pairs, res.positions)
    assert by_hand == pytest.approx(mine) and by_hand >= 0.95
    # a random direction does nothing
    rnd = Subspace.from_directions("resid_post.0", torch.randn(D, generator=torch.Generator().manual_seed(3)))
    assert hook_iia(m, m.hf.model.layers[0], rnd.basis, pairs) < 0.7


def test_explicit_heldout_pairs_measure_the_iia(resid_model, pairs):
    """``heldout=``: every given pair trains, and the IIA is measured on the held-out pairs alone."""
    m, _ = resid_model
    fit, held = pairs[:96], pairs[96:]
    res = train_das(m, "resid_post.0", fit, 1, steps=60, lr=5e-2, batch_size=32, progress=False, heldout=held)
    assert res.n_train == 96 and res.n_heldout == 32
    assert res.iia == pytest.approx(hook_iia(m, m.hf.model.layers[0], res.subspace.basis, held))
    assert res.train_iia == pytest.approx(interchange_accuracy(m, res.subspace, fit, res.positions))
    with pytest.raises(DASError, match="no pairs"):
        train_das(m, "resid_post.0", fit, 1, steps=1, progress=False, heldout=[])


def test_single_neuron_das_agrees_with_neuron_interchange(pairs):
    m, _ = planted("neuron")
    res = train_das(m, "neurons.1", pairs, 1, steps=200, lr=5e-2, batch_size=32, progress=False)
    b = res.subspace.basis[0]
    assert int(b.abs().argmax()) == NEURON and abs(float(b[NEURON])) > 0.95, b.abs().topk(3)
    one = torch.zeros(DM)
    one[NEURON] = 1
    down = m.hf.model.layers[1].mlp.down_proj
    neuron_iia = hook_iia(m, down, one, pairs, pre=True)  # the neuron's own interchange, by hand
    assert neuron_iia >= 0.95 and res.iia >= 0.95 and res.iia == pytest.approx(neuron_iia, abs=0.05)
    # both pass the illusion check: the neuron writes the readout itself
    assert res.illusion is not None and not res.illusion.illusion
    rep = illusion_check(m, Subspace("neurons.1", one), pairs)
    assert not rep.illusion and rep.iia_row >= 0.95 and rep.row_fraction == pytest.approx(1.0, abs=1e-4)
    assert rep.verdict.startswith("no illusion"), str(rep)


def test_planted_illusion_is_flagged(pairs):
    m, _ = planted("illusion")
    v = torch.zeros(DM)
    v[0] = v[1] = 2 ** -0.5
    down = m.hf.model.layers[1].mlp.down_proj
    full = hook_iia(m, down, v, pairs, pre=True)
    assert full >= 0.95  # the direction "works"
    rep = illusion_check(m, Subspace("neurons.1", v), pairs, layer=1)
    assert rep.illusion, str(rep)
    assert rep.row_fraction == pytest.approx(0.5, abs=1e-3) and rep.null_fraction == pytest.approx(0.5, abs=1e-3)
    assert rep.iia_full == pytest.approx(full)
    assert rep.iia_row == pytest.approx(rep.baseline) and rep.iia_null == pytest.approx(rep.baseline)
    # each component alone, by hand, does nothing either
    e0, e1 = torch.eye(DM)[0], torch.eye(DM)[1]
    assert hook_iia(m, down, e0, pairs, pre=True) == pytest.approx(rep.baseline)
    assert hook_iia(m, down, e1, pairs, pre=True) == pytest.approx(rep.baseline)
    assert "ILLUSION" in str(rep)
    # a direction that does nothing is "no effect to explain", not "no illusion"
    idle = illusion_check(m, Subspace("neurons.1", e1), pairs, layer=1)
    assert not idle.illusion and idle.verdict.startswith("no effect to explain"), str(idle)
    # DAS at the site finds the illusory direction, and its result says so
    res = train_das(m, "neurons.1", pairs, 1, steps=150, lr=5e-2, batch_size=32, progress=False)
    assert res.iia >= 0.95 and res.illusion.illusion and "ILLUSION" in repr(res)
    with pytest.raises(DASError, match="neurons.L"):
        illusion_check(m, Subspace("resid_post.1", torch.eye(D)[0]), pairs)
    with pytest.raises(DASError, match="does not match"):
        illusion_check(m, Subspace("neurons.1", v), pairs, layer=0)


# -- training mechanics ----------------------------------------------------------------------------
def test_resume_after_cancel_matches_an_uninterrupted_run(resid_model, pairs, tmp_path):
    m, _ = resid_model
    kw = dict(steps=30, lr=5e-2, batch_size=16, progress=False, checkpoint_every=4, seed=3)
    full = train_das(m, "resid_post.0", pairs, 2, **kw)
    ev = threading.Event()

    def stop_at(stats):
        if stats["step"] == 11:
            ev.set()

    with pytest.raises(DASCancelled) as ei:
        train_das(m, "resid_post.0", pairs, 2, checkpoint=tmp_path / "ck", cancel=ev, on_step=stop_at, **kw)
    assert ei.value.step == 11 and isinstance(ei.value.partial, DASResult)
    again = train_das(m, "resid_post.0", pairs, 2, checkpoint=tmp_path / "ck", **kw)
    assert torch.equal(again.subspace.basis, full.subspace.basis)
    assert [h["loss"] for h in again.history] == [h["loss"] for h in full.history]
    assert again.iia == full.iia
    with pytest.raises(DASError, match="other settings"):
        train_das(m, "resid_post.0", pairs, 2, checkpoint=tmp_path / "ck", **{**kw, "lr": 1e-3})
    fresh = train_das(m, "resid_post.0", pairs, 2, checkpoint=tmp_path / "ck", resume=False, **kw)
    assert torch.equal(fresh.subspace.basis, full.subspace.basis)


def test_save_load_spec_and_table(resid_model, pairs, tmp_path):
    m, _ = resid_model
    res = train_das(m, "resid_post.0", pairs, 1, steps=20, lr=5e-2, progress=False, positions=[-1])
    res.save(tmp_path / "das.safetensors")
    back = DASResult.load(tmp_path / "das.safetensors")
    assert back.subspace == res.subspace and back.iia == res.iia and back.history == res.history
    spec = res.spec("The cat sat")
    assert isinstance(spec, SubspaceInterchange) and spec.positions == [-1] and spec.subspace == res.subspace
    df = res.to_pandas()
    assert list(df["step"]) == list(range(1, 21)) and {"loss", "accuracy"} <= set(df.columns)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(DASError, match="no readable"):
        DASResult.load(tmp_path / "junk.safetensors")


def test_sweep_grid(resid_model, pairs):
    m, _ = resid_model
    sw = das_sweep(m, ["resid_pre.0", "resid_post.0"], [0, -1], pairs[:64], k=1, steps=80, lr=5e-2,
                   progress=False)
    g = sw.grid()
    assert g.shape == (2, 2)
    assert g[1, 1] >= 0.9 and g[0, 1] >= 0.9  # the last token carries the class at both sites
    assert g[0, 0] < 0.8 and g[1, 0] < 0.8  # a filler position carries nothing (attention is off)
    df = sw.to_pandas()
    assert len(df) == 4 and set(df["site"]) == {"resid_pre.0", "resid_post.0"}
    with pytest.raises(DASError, match="not swept"):
        sw.grid(k=3)


def test_boundless_das_finds_a_small_subspace(resid_model, pairs):
    m, d = resid_model
    res = train_das(m, "resid_post.0", pairs, steps=300, lr=5e-2, batch_size=32, boundless=True, progress=False)
    assert res.iia >= 0.95 and 1 <= res.k <= 6, res.boundless
    assert float((res.subspace.basis @ d["e_var"]).norm()) > 0.95  # the planted direction lies in the span
    assert res.boundless["k"] == res.k and res.to_pandas()["temperature"].iloc[-1] == pytest.approx(0.1)


def test_mdas_isolate_objective(resid_model, pairs):
    m, _ = resid_model
    same = [p for p in make_pairs(64, seed=5) if p[2] == p[3]]  # the interchange must keep the base answer
    res = train_das(m, "resid_post.0", pairs[:64], 1, steps=60, lr=5e-2, isolate=same, progress=False)
    assert res.isolate_accuracy is not None and res.isolate_accuracy >= 0.9 and res.iia >= 0.9
    assert res.settings["n_isolate"] == len(same)


# -- bad input -------------------------------------------------------------------------------------
def test_bad_input_is_refused_clearly(tiny):
    m = tiny("llama")
    ok = ("The cat is", "The cat the", " the", " is")
    assert len(m.tokenize(ok[0]).tokens[0]) == len(m.tokenize(ok[1]).tokens[0])
    with pytest.raises(DASError, match="same token length"):
        train_das(m, "resid_post.0", [("The cat sat on the mat", "A dog", " the", " is")], progress=False)
    with pytest.raises(DASError, match="single tokens"):
        train_das(m, "resid_post.0", [(*ok[:2], " the", "zzqx")], progress=False)
    with pytest.raises(DASError, match="k=49 is out of range"):
        train_das(m, "resid_post.0", [ok], k=49, progress=False)
    with pytest.raises(DASError, match="k=0 is out of range"):
        train_das(m, "resid_post.0", [ok], k=0, progress=False)
    with pytest.raises(DASError, match="no pairs"):
        train_das(m, "resid_post.0", [], progress=False)
    with pytest.raises(DASError, match="writable per-token site"):
        train_das(m, "logits", [ok], progress=False)
    with pytest.raises(DASError, match="out of range for pair 0"):
        train_das(m, "resid_post.0", [ok], positions=[40], steps=1, progress=False)
    with pytest.raises(DASError, match="base, source, base_answer, source_answer"):
        train_das(m, "resid_post.0", [("a", "b")], progress=False)
    with pytest.raises(DASError, match="holdout"):
        train_das(m, "resid_post.0", [ok], holdout=1.0, progress=False)
    with pytest.raises(IndexError):
        train_das(m, "resid_post.7", [ok], progress=False)
    res = train_das(m, "resid_post.0", [ok] * 4, steps=2, progress=False)
    assert res.n_train == 3 and res.n_heldout == 1  # text pairs and text answers work


def test_pairs_from_a_circuits_task(tiny):
    from workbench.causal import CounterfactualPairs
    from workbench.circuits import Task

    model = tiny("llama")
    task = Task("t", torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]]), torch.tensor([[1, 11, 6, 7], [1, 12, 9, 10]]),
                torch.tensor([20, 21]), torch.tensor([22, 23]), model_name=model.name)
    pairs = CounterfactualPairs.from_task(task)
    assert pairs.base == [[1, 11, 6, 7], [1, 12, 9, 10]] and pairs.source == [[1, 5, 6, 7], [1, 8, 9, 10]]
    assert pairs.base_answers == [22, 23] and pairs.source_answers == [20, 21]
    res = train_das(model, "resid_post.0", pairs, k=1, steps=2, heldout=pairs, progress=False)
    assert 0.0 <= res.iia <= 1.0
    with pytest.raises(DASError, match="from_task needs a circuits Task"):
        CounterfactualPairs.from_task([("a", "b", "c", "d")])
