"""RAVEL cause / isolate scores vs a hand computation with plain PyTorch hooks; dataset checks; the embedded table."""

from __future__ import annotations

import math
import warnings
from operator import attrgetter

import pytest
import torch
from hf_paths import PATHS

from workbench.causal import Subspace
from workbench.causal.ravel import (
    DEFAULT_RAVEL,
    RavelDataset,
    RavelError,
    RavelPair,
    RavelWarning,
    load_ravel,
    ravel_features,
    ravel_scores,
    units_from_das,
    units_from_mean_difference,
    units_from_pca,
    units_from_probe,
    units_from_sae,
    wilson_interval,
)

TEMPLATES = {"a": ["{entity} is the", "{entity} of"], "b": ["so {entity} is", "a {entity} and"]}
SITE = "resid_post.0"


def predicted(model, prompt: str) -> tuple[int, str]:
    with torch.no_grad():
        ids = model.tokenize(prompt).input_ids
        top = int(model.hf(input_ids=ids).logits[0, -1].argmax())
    return top, model.tokenizer.decode([top])


def synthetic(model, names=None) -> dict:
    """Entities whose "answers" are the tiny model's own top-1 (first template of each attribute),
    kept where the answer re-encodes to that one token."""
    names = names or [f"{p}{c}" for p in "qxz" for c in "abcdefghijklmnoprstuvwy"]
    ents = []
    for n in names:
        e = {"name": n}
        for a, ts in TEMPLATES.items():
            top, text = predicted(model, ts[0].format(entity=n))
            e[a] = text
            if model.tokenizer(text, add_special_tokens=False)["input_ids"] != [top]:
                break
        else:
            ents.append(e)
    return {"attributes": list(TEMPLATES), "templates": TEMPLATES, "entities": ents}


@pytest.fixture(scope="module")
def llama(tiny):
    return tiny("llama")


@pytest.fixture(scope="module")
def ds(llama):
    data = synthetic(llama)
    assert len(data["entities"]) >= 6
    return load_ravel(llama, data, verbose=False)


def hand_top1(model, base: str, source: str, B: torch.Tensor, pos: int) -> int:
    """Top-1 of ``base`` with the layer-0 output's projection on B at ``pos`` replaced by the source's (plain hooks)."""
    block = attrgetter(PATHS["llama"]["layers"])(model.hf)[0]
    rec = {}

    def record(m, args, out):
        rec["h"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    P = B.T @ B

    def patch(m, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[0, pos] = h[0, pos] - h[0, pos] @ P + rec["h"][0, pos] @ P
        return (h, *out[1:]) if isinstance(out, tuple) else h

    with torch.no_grad():
        hd = block.register_forward_hook(record)
        try:
            model.hf(input_ids=model.tokenize(source).input_ids)
        finally:
            hd.remove()
        hd = block.register_forward_hook(patch)
        try:
            return int(model.hf(input_ids=model.tokenize(base).input_ids).logits[0, -1].argmax())
        finally:
            hd.remove()


def test_dataset_keeps_what_the_model_gets_right(llama, ds):
    assert ds.n_entities >= 6 and ds.report["n_kept"] == ds.n_entities
    for a in ds.attributes:
        assert ds.pairs[a], a
        for p in ds.pairs[a]:
            assert ds.entities[p.base][a] != ds.entities[p.source][a]
            assert p.template in ds.correct[a][p.base] and p.template in ds.correct[a][p.source]
            assert len(llama.tokenize(p.base_prompt).tokens[0]) == len(llama.tokenize(p.source_prompt).tokens[0])
        for n, ts in ds.correct[a].items():  # every kept template really is right
            for t in ts:
                assert predicted(llama, t.format(entity=n))[0] == ds.answer_ids[a][ds.entities[n][a]]


@pytest.mark.parametrize("positions", ["entity", "last"])
def test_cause_and_isolate_equal_a_hand_computation(llama, ds, positions):
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(llama.arch.d_model, 8, generator=g, dtype=torch.float64))
    sub = Subspace(SITE, q.T.float(), "r")
    res = ravel_scores(llama, ds, {"rand": {"a": sub}}, positions=positions, batch_size=5)
    row = res.rows[0]
    hits_c, hits_i = [], []
    for p in ds.pairs["a"]:
        pos = p.entity_position if positions == "entity" else p.length - 1
        top = hand_top1(llama, p.base_prompt, p.source_prompt, sub.basis, pos)
        hits_c.append(top == ds.answer_ids["a"][ds.entities[p.source]["a"]])
    for p in ds.pairs["b"]:
        pos = p.entity_position if positions == "entity" else p.length - 1
        top = hand_top1(llama, p.base_prompt, p.source_prompt, sub.basis, pos)
        hits_i.append(top == ds.answer_ids["b"][ds.entities[p.base]["b"]])
    assert (row["n_cause"], row["n_isolate"]) == (len(hits_c), len(hits_i))
    assert row["cause"] == pytest.approx(sum(hits_c) / len(hits_c))
    assert row["isolate"] == pytest.approx(sum(hits_i) / len(hits_i))
    assert row["cause_lo"] <= row["cause"] <= row["cause_hi"]
    assert 0 < row["cause"] < 1 or 0 < row["isolate"] < 1  # a non-trivial case
    # the whole last layer interchanged at the last position: the output is the source's
    full = Subspace("resid_post.1", torch.eye(llama.arch.d_model))
    r = ravel_scores(llama, ds, {"full": {"a": full, "b": full}}, positions="last").to_pandas()
    assert (r["cause"] == 1.0).all() and (r["isolate"] == 0.0).all()


def test_wilson_interval_by_hand():
    z = 1.959963984540054
    s, n = 7, 20
    p = s / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = wilson_interval(s, n)
    assert lo == pytest.approx(c - h, abs=1e-6) and hi == pytest.approx(c + h, abs=1e-6)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_unit_builders_shapes(llama, ds):
    feats = ravel_features(llama, ds, SITE)
    pca = units_from_pca(llama, ds, SITE, 3, features=feats)
    assert pca["a"] is pca["b"] and pca["a"].k == 3
    md = units_from_mean_difference(llama, ds, SITE, features=feats)
    assert all(md[a].k == len(ds.values(a)) - 1 for a in ds.attributes if len(ds.values(a)) <= llama.arch.d_model)
    nf = ravel_features(llama, ds, "neurons.0")
    pr = units_from_probe(llama, ds, "neurons.0", 4, features=nf)
    # the probe's units are the top correlation ratios, computed here by hand
    names = nf[1]
    y = torch.tensor([ds.values("a").index(ds.entities[n]["a"]) for n in names])
    x = nf[0]
    tot = ((x - x.mean(0)) ** 2).sum(0)
    btw = sum((y == c).sum() * (x[y == c].mean(0) - x.mean(0)) ** 2 for c in y.unique())
    assert set(pr["a"].meta["units"]) == set((btw / tot).nan_to_num(0).topk(4).indices.tolist())
    assert torch.equal(pr["a"].basis.abs().sum(1), torch.ones(4))
    with pytest.raises(RavelError, match="k=0"):
        units_from_pca(llama, ds, SITE, 0, features=feats)


def test_units_from_sae_pick_correlated_latents(llama, ds):
    class Identity:  # an "SAE" whose latents are the site's dimensions
        site, out_site = SITE, None
        W_dec = torch.eye(llama.arch.d_model)

        def encode(self, x):
            return x

    feats = ravel_features(llama, ds, SITE)
    sae = units_from_sae(Identity(), llama, ds, 5, features=feats)
    probe = units_from_probe(llama, ds, SITE, 5, features=feats)
    assert set(sae["a"].meta["latents"]) == set(probe["a"].meta["units"])


def test_multi_token_answers_are_dropped_with_a_message(llama):
    data = synthetic(llama)
    data["entities"].append({"name": "qx", "a": " hippopotamus", "b": data["entities"][0]["b"]})
    with pytest.warns(RavelWarning, match=r"multi-token answers.*hippopotamus.*tokens, qx"):
        ds = load_ravel(llama, data, verbose=False)
    assert "qx" not in ds.entities and ds.report["n_single_token"] == len(data["entities"]) - 1


def test_attribute_with_only_multi_token_answers_is_an_error(llama):
    data = synthetic(llama)
    for e in data["entities"]:
        e["b"] = " hippopotamus"
    with pytest.raises(RavelError, match=r"attribute 'b': every answer is several tokens long"):
        load_ravel(llama, data, verbose=False)


def test_scores_refuse_multi_token_answers_and_unequal_pairs(llama, ds):
    sub = Subspace(SITE, torch.eye(llama.arch.d_model)[:2])
    e = next(iter(ds.entities))
    bad = RavelDataset(ds.attributes, ds.templates, {**ds.entities, "zz": {"a": " hippopotamus", "b": " x"}},
                       {}, ds.correct, {"a": [RavelPair("a", "{entity} of", e, "zz", f"{e} of", "zz of", 1, 3)],
                                        "b": []}, {})
    with pytest.raises(RavelError, match=r"attribute 'a': the answer ' hippopotamus' is \d+ tokens long"):
        ravel_scores(llama, bad, {"m": {"a": sub}})
    uneq = RavelPair("a", "{entity} of", e, "zz", f"{e} of", "hippopotamus of", 1, 3)
    bad.pairs["a"] = [uneq]
    with pytest.raises(RavelError, match="equal length"):
        ravel_scores(llama, bad, {"m": {"a": sub}})


def test_unequal_length_pairs_are_dropped(llama):
    data = synthetic(llama)
    longer = synthetic(llama, [f"{p}{c}q{c}{p}" for p in "xz" for c in "abdefghiklmnoprstuvw"])["entities"]
    assert len(longer) >= 2
    data["entities"] += longer
    ds = load_ravel(llama, data, verbose=False, max_pairs=None)
    assert sum(ds.report["unequal_length_dropped"].values()) > 0
    for ps in ds.pairs.values():
        for p in ps:
            assert len(llama.tokenize(p.base_prompt).tokens[0]) == len(llama.tokenize(p.source_prompt).tokens[0])


def test_bad_input(llama, ds):
    with pytest.raises(RavelError, match="unknown attribute"):
        load_ravel(llama, synthetic(llama), attributes=["colour"], verbose=False)
    with pytest.raises(RavelError, match="positions must be one of"):
        ravel_scores(llama, ds, {"m": {"a": Subspace(SITE, torch.eye(llama.arch.d_model)[:1])}}, positions="first")
    with pytest.raises(RavelError, match="names attribute 'c'"):
        ravel_scores(llama, ds, {"m": {"c": Subspace(SITE, torch.eye(llama.arch.d_model)[:1])}})


def test_shipped_dataset_is_valid_json():
    import json

    d = json.loads(DEFAULT_RAVEL.read_text())
    assert set(d["attributes"]) == {"country", "continent", "language"}
    assert 40 <= len(d["entities"]) <= 80
    assert all(t.count("{entity}") == 1 for ts in d["templates"].values() for t in ts)


# -- the embedded model --------------------------------------------------------------------------
@pytest.mark.embedded
def test_embedded_cause_isolate_table_in_sample_and_held_out():
    """Units fitted on half the cities: scored on those cities (in sample) and on the other half (held out).

    What holds on the embedded model (see scripts/ravel_report.py for the full table): in sample the mean
    difference and DAS cause the country far above chance; held out, on cities no unit was fitted on,
    no method's country cause reaches chance."""
    import workbench as wb

    model = wb.load(progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RavelWarning)
        ds = load_ravel(model, max_pairs=None, batch_size=64, verbose=False)
    assert ds.n_entities >= 8
    fit, test = ds.split(0.5, seed=0)
    assert not set(fit.entities) & set(test.entities)
    layer, attr = 8, "country"
    site = f"resid_post.{layer}"
    feats = ravel_features(model, fit, site, batch_size=64)
    units = {
        "neurons": units_from_probe(model, fit, f"neurons.{layer}", 8, attributes=[attr]),
        "pca": units_from_pca(model, fit, site, 8, attributes=[attr], features=feats),
        "mean_diff": units_from_mean_difference(model, fit, site, None, attributes=[attr], features=feats),
    }
    # a small TopK SAE on every token of the fit cities' prompts
    r = model.run([t.format(entity=n) for n, _, t in fit.prompts()], capture=[site], top_k=0, logits=None)
    X = torch.cat([r.activations[site][i, 1:L] for i, L in enumerate(r.lengths)]).float()
    sae = wb.train_sae(None, site, activations=X, n_latents=512, k=16, max_tokens=20_000, batch_size=256,
                       progress=False)
    units["sae"] = units_from_sae(sae, model, fit, 8, attributes=[attr], features=feats)
    units["das"] = units_from_das(model, fit, site, 8, attributes=[attr], steps=40, lr=0.2, batch_size=16)
    inside = ravel_scores(model, fit, units, max_pairs=24, batch_size=64)
    held = ravel_scores(model, test, units, max_pairs=24, batch_size=64)
    print("in sample\n", inside, "\nheld out\n", held)
    chance = held.report["chance_cause"][attr]
    for res in (inside, held):
        df = res.to_pandas()
        for key in ("cause", "isolate"):
            assert df[key].between(0, 1).all()
            assert ((df[f"{key}_lo"] <= df[key] + 1e-12) & (df[key] <= df[f"{key}_hi"] + 1e-12)).all()
    ins = inside.to_pandas().set_index("method")
    assert ins.loc["mean_diff", "cause_lo"] > chance and ins.loc["das", "cause_lo"] > chance, ins
    assert (held.to_pandas()["cause"] < chance).all(), held


def test_a_batch_of_pairs_with_different_lengths_scores_each_pair_by_hand(llama, ds):
    """Pairs of several prompt lengths share a batch (the shipped "language" templates do): each pair's
    interchange sits at its own positions, and the scores equal the hand computation."""
    import dataclasses

    mixed = dataclasses.replace(ds, pairs={"a": ds.pairs["b"][:6] + ds.pairs["a"][:6], "b": ds.pairs["b"][6:12]})
    assert len({p.length for p in mixed.pairs["a"]}) == 2
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(llama.arch.d_model, 8, generator=g, dtype=torch.float64))
    sub = Subspace(SITE, q.T.float(), "r")
    for positions in ("entity", "last"):
        row = ravel_scores(llama, mixed, {"r": {"a": sub}}, positions=positions, batch_size=64).rows[0]
        hits = []
        for p in mixed.pairs["a"]:
            pos = p.entity_position if positions == "entity" else p.length - 1
            top = hand_top1(llama, p.base_prompt, p.source_prompt, sub.basis, pos)
            hits.append(top == mixed.answer_ids[p.attribute][mixed.entities[p.source][p.attribute]])
        assert row["cause"] == pytest.approx(sum(hits) / len(hits)), positions


def test_das_pairs_share_the_entity_offset(llama, ds):
    attr = ds.attributes[0]
    pairs, offset = ds.das_pairs(attr)
    offsets = [p.entity_position - p.length for p in ds.pairs[attr]]
    assert offset == max(sorted(set(offsets)), key=offsets.count) and offset < 0
    assert len(pairs) == offsets.count(offset)
    ids = ds.answer_ids[attr]
    for (b, s, ab, as_), p in zip(pairs, [p for p in ds.pairs[attr] if p.entity_position - p.length == offset],
                                  strict=True):
        assert (b, s) == (p.base_prompt, p.source_prompt)
        assert (ab, as_) == (ids[ds.entities[p.base][attr]], ids[ds.entities[p.source][attr]]) and ab != as_
        # the offset names the entity's last token in both prompts
        toks = llama.tokenize(b).tokens[0]
        assert len(toks) + offset == p.entity_position
    every, none = ds.das_pairs(attr, None)
    assert none is None and len(every) == len(ds.pairs[attr])
    with pytest.raises(RavelError, match="no pair has its entity at offset"):
        ds.das_pairs(attr, -999)
    with pytest.raises(RavelError, match="unknown attribute"):
        ds.das_pairs("colour")
