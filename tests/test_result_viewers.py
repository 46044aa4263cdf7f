"""Result tables open the neuron dashboard with .show(store, ...) on the neuron they rank."""

from __future__ import annotations

import pytest

import workbench as wb
from workbench.widgets import NeuronDashboard


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    model = tiny("llama")
    store = wb.scan(model, wb.default_corpus(max_passages=3), tmp_path_factory.mktemp("v") / "s", k=3, window=12,
                    batch_size=4, progress=False)
    return model, store


def test_weights_show_opens_the_dashboard_with_the_weights(setup):
    model, store = setup
    w = wb.neuron_weights(model, progress=False)
    dash = w.show(store, layer=1, unit=3)
    assert isinstance(dash, NeuronDashboard) and (dash.layer, dash.unit) == (1, 3) and dash.weights is w


def test_contrastive_show_opens_the_ranked_neuron(setup):
    model, store = setup
    a = ["the cat sat on the mat", "a dog ran in the park", "the sun is hot today"]
    b = ["def f(x): return x", "for i in range(3): pass", "import os, sys"]
    res = wb.contrastive_neurons(model, {"prose": a, "code": b}, permutations=20, progress=False)
    for rank in (0, 2):
        row = res.top(rank + 1, set="code").iloc[rank]
        dash = res.show(store, set="code", rank=rank)
        assert (dash.layer, dash.unit) == (int(row["layer"]), int(row["unit"]))


def test_probe_show_opens_a_selected_neuron(setup):
    model, store = setup
    texts = [f"item {i} is {'red' if i % 2 else 'blue'} and round" for i in range(20)]
    probe = wb.sparse_probe(model, texts, [i % 2 for i in range(20)], ks=(1, 2), level="text", progress=False)
    dash = probe.show(store, k=2, rank=1)
    assert (dash.layer, dash.unit) == probe.selected[2][1]
    with pytest.raises(TypeError):
        probe.show()  # the dashboard needs the scan store
