"""FeatureList (with its FeatureDashboard) in JupyterLab: click a token → its latents; click a latent →
the dashboard's panels; a toggle reruns the kernel and changes the predictions; custom text is
tinted; markup in the prompt, the labels and the custom text stays text.

A tiny random model, a random top-k SAE on ``resid_post.1`` and a small scan of its latents; a
standalone FeatureDashboard without a store says so and follows ``fd.next()`` from Python.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .lab import REPO, NotebookPage, close_notebook, open_and_run, run_count, write_notebook

pytestmark = pytest.mark.browser
TIMEOUT = 120
EVIL = '<img src=x onerror="window.__xss=1">'
PROMPT = f"The cat sat on the mat {EVIL}"

CELLS = [
    f"""\
import math, tempfile
import torch
import workbench as wb
from workbench.core.corpus import default_corpus
from workbench.dictionaries.dictionary import Dictionary
from workbench.testing import tiny_model
from workbench.widgets import FeatureList

model = tiny_model('llama')
EVIL = {EVIL!r}
g = torch.Generator().manual_seed(0)
d = Dictionary(W_enc=torch.randn(48, 64, generator=g) / math.sqrt(48), b_enc=torch.randn(64, generator=g) * 0.1,
               W_dec=torch.randn(64, 48, generator=g) * 0.3, b_dec=torch.zeros(48), architecture='topk', k=8,
               site='resid_post.1', labels={{i: f'L{{i}} {{EVIL}}' for i in range(64)}})
store = wb.scan(model, default_corpus(max_passages=16), tempfile.mkdtemp() + '/scan', sites=[],
                features={{'sae': (d.site, d.encode)}}, k=4, window=32, batch_size=4, sample=16, progress=False)
from workbench.autointerp import Explanation, ExplanationStore
ex = ExplanationStore.for_store(store)
for i in range(0, 64, 2):
    ex.add(Explanation(('sae', i), f'expl {{i}} {{EVIL}}', 'openai'), save=False)
ex.save()
store""",
    f"fl = FeatureList(model, d, {PROMPT!r}, store=store, k=6)\nfl",
    "from workbench.widgets import FeatureDashboard\nfd = FeatureDashboard(model, d, 3, text='The cat sat')\nfd",
]


@pytest.fixture(scope="module")
def nb(browser, bundles, lab) -> Iterator[NotebookPage]:
    for name in ("feature-list", "feature-dashboard"):
        if not (REPO / "widgets" / "static" / f"{name}.js").exists():
            pytest.fail(f"widgets/static/{name}.js is missing: run `cd js && node build.mjs`")
    write_notebook(lab.root / "features.ipynb", CELLS)
    page = open_and_run(lab, browser, "features.ipynb", timeout=300)
    try:
        yield page
    finally:
        close_notebook(page)


def floats(loc, attr: str) -> list[float]:
    return [float(v) for v in loc.evaluate_all(f"els => els.map(e => e.getAttribute('{attr}'))")]


def test_feature_list_end_to_end(nb: NotebookPage) -> None:
    assert nb.all_ran and nb.error_outputs() == []
    page = nb.page
    root = nb.widget(".iw-feature-list")
    nb.wait_run_count(root, 0, timeout=TIMEOUT)
    assert root.locator(".iw-error").count() == 0

    # the prompt's tokens, as text (the <img> payload is literal text, tinted like any token)
    toks = root.locator("[data-role=token]")
    toks.first.wait_for(timeout=TIMEOUT * 1000)
    assert "".join(toks.all_text_contents()) == PROMPT
    assert root.get_attribute("data-tint") == "max"
    assert all(v > 0 for v in floats(toks, "data-act")), "every token has active latents (top-k SAE)"

    # click a token: its active latents, with labels (markup as text) and promoted tokens
    toks.nth(2).click()
    rows = root.locator("[data-role=latent-row]")
    rows.first.wait_for(timeout=TIMEOUT * 1000)
    assert root.get_attribute("data-position") == "2"
    assert toks.nth(2).get_attribute("data-selected") == "true"
    assert 1 <= rows.count() <= 6
    acts = floats(rows, "data-act")
    assert acts == sorted(acts, reverse=True) and acts[0] > 0
    first = rows.first
    latent = first.get_attribute("data-latent")
    assert first.locator("[data-role=latent-label]").inner_text() == f"L{latent} {EVIL}"
    for row in rows.all():  # explanations (from the scan's explanations.json) for even latents only
        i = int(row.get_attribute("data-latent"))
        expl = row.locator("[data-role=latent-explanation]")
        assert expl.all_inner_texts() == ([f"expl {i} {EVIL}"] if i % 2 == 0 else [])
    assert first.locator("[data-role=promoted] .iw-tok").count() == 5
    nb.execute("print('POS', fl.position)")
    assert "POS 2" in nb.cell_output(-1).inner_text()

    # open the latent: the dashboard's panels render from the store and the model
    first.locator("[data-action=open]").click()
    dash = root.locator("[data-role=dashboard] .iw-fd-view")
    dash.wait_for(timeout=TIMEOUT * 1000)
    page.wait_for_function("([el, l]) => el.getAttribute('data-latent') === l && el.getAttribute('data-busy') === 'false'",
                           arg=[dash.element_handle(), latent], timeout=TIMEOUT * 1000)
    assert root.get_attribute("data-latent") == latent and root.get_attribute("data-tint") == "latent"
    assert dash.locator("[data-role=title]").inner_text() == f"Latent {latent} · L{latent} {EVIL}"
    assert dash.locator("[data-role=store-note]").count() == 0
    top = dash.locator("[data-role=top-examples] .iw-exemplar")
    assert top.count() == 4
    best = top.first.locator(".iw-tok[data-max=true]")
    assert float(best.get_attribute("data-act")) == pytest.approx(float(top.first.get_attribute("data-value")), rel=1e-4)
    assert dash.locator("[data-role=intervals] [data-role=interval]").count() == 5
    assert float(dash.locator("[data-role=density]").get_attribute("data-density")) > 0
    assert dash.locator("[data-role=histogram] rect[data-count]").count() >= 1
    assert dash.locator("[data-role=logits-pos] tr[data-token]").count() == 10
    assert dash.locator("[data-role=logits-neg] tr[data-token]").count() == 10
    assert dash.locator("[data-role=nearest] tr[data-latent]").count() == 8
    custom = dash.locator("[data-role=custom-tokens]")
    page.wait_for_function("el => el.getAttribute('data-latent') !== null", arg=custom.element_handle(), timeout=TIMEOUT * 1000)
    assert "".join(custom.locator(".iw-tok").all_text_contents()) == PROMPT, "the custom text starts as the prompt"
    nb.screenshot("features-dashboard", root)

    # toggle: zero the latent → the kernel reruns with a FeatureEdit and the predictions change
    n0 = run_count(root)
    first.locator("[data-role=toggle]").select_option("zero")
    status = root.locator("[data-role=edit-status]")
    page.wait_for_function("el => el.getAttribute('data-edited') === 'true'", arg=status.element_handle(),
                           timeout=TIMEOUT * 1000)
    assert run_count(root) > n0
    assert f"zero features [{latent}]" in status.inner_text()
    pred = root.locator("[data-role=predictions] [data-role=pred-row]")
    pairs = pred.evaluate_all("els => els.map(e => [e.dataset.pBase, e.dataset.pEdit])")
    assert len(pairs) >= 10 and any(a != b for a, b in pairs), "zeroing an active latent changes the predictions"
    assert root.locator("[data-role=edits]").inner_text() == f"#{latent} zeroed"
    nb.execute("print('EDITS', fl.edits, fl.interventions[0].features)")
    out = nb.cell_output(-1).inner_text()
    assert f"'latent': {latent}, 'op': 'zero'" in out and f"[{latent}]" in out, out
    nb.screenshot("features-toggled", root)

    # custom text: run the model on it and tint its tokens by the latent
    text = f"Hello world {EVIL} the mat"
    dash.locator("[data-role=custom-input]").fill(text)
    n1 = run_count(root)
    dash.locator("[data-action=custom]").click()
    page.wait_for_function("([el, t]) => Array.from(el.querySelectorAll('.iw-tok')).map(s => s.textContent).join('') === t",
                           arg=[custom.element_handle(), text], timeout=TIMEOUT * 1000)
    assert run_count(root) > n1
    ctoks = custom.locator(".iw-tok")
    cacts = floats(ctoks, "data-act")
    assert len(cacts) == ctoks.count() and all(a >= 0 for a in cacts)
    assert max(cacts) == pytest.approx(float(custom.get_attribute("data-max")), rel=1e-5)
    if max(cacts) > 0:
        hot = ctoks.nth(cacts.index(max(cacts)))
        assert hot.evaluate("e => getComputedStyle(e).backgroundColor") not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)")
    nb.execute("print('TEXT', fl.text)")
    assert f"TEXT {text}" in nb.cell_output(-1).inner_text()

    # a nearest latent opens on click; next steps on from it
    near = dash.locator("[data-role=nearest] tr[data-latent]").first
    other = near.get_attribute("data-latent")
    near.click()
    page.wait_for_function("([el, l]) => el.getAttribute('data-latent') === l && el.getAttribute('data-busy') === 'false'",
                           arg=[dash.element_handle(), other], timeout=TIMEOUT * 1000)
    dash.locator("[data-action=next]").click()
    want = str((int(other) + 1) % 64)
    page.wait_for_function("([el, l]) => el.getAttribute('data-latent') === l && el.getAttribute('data-busy') === 'false'",
                           arg=[dash.element_handle(), want], timeout=TIMEOUT * 1000)
    nb.execute("print('OPEN', fl.latent)")
    assert f"OPEN {want}" in nb.cell_output(-1).inner_text()

    # a bad latent index shows an error in the widget, not a crash
    dash.locator("[data-role=latent-input]").fill("999")
    dash.locator("[data-action=go]").click()
    err = dash.locator("[data-role=errors] .iw-error")
    err.wait_for(timeout=10_000)
    assert "999" in err.inner_text()

    page.wait_for_timeout(500)  # time for an injected onerror handler to fire
    assert page.evaluate("() => window.__xss") is None
    assert root.locator("img, script").count() == 0
    nb.screenshot("features-list", root)


def test_standalone_dashboard_without_store(nb: NotebookPage) -> None:
    root = nb.widget(".iw-feature-dashboard")
    nb.wait_run_count(root, 0, timeout=TIMEOUT)
    assert root.get_attribute("data-latent") == "3"
    note = root.locator("[data-role=store-note]")
    assert note.count() == 1 and "No scan store" in note.inner_text()
    assert root.locator("[data-role=top-examples] .iw-exemplar").count() == 0
    assert root.locator("[data-role=logits-pos] tr[data-token]").count() == 10
    assert root.locator("[data-role=nearest] tr[data-latent]").count() == 8
    custom = root.locator("[data-role=custom-tokens]")
    nb.page.wait_for_function("el => el.getAttribute('data-latent') === '3'", arg=custom.element_handle(),
                              timeout=TIMEOUT * 1000)
    assert "".join(custom.locator(".iw-tok").all_text_contents()) == "The cat sat"
    n0 = run_count(root)
    nb.execute("fd.next()")
    nb.wait_run_count(root, n0, timeout=TIMEOUT)
    nb.page.wait_for_function("el => el.getAttribute('data-latent') === '4'", arg=root.element_handle(), timeout=TIMEOUT * 1000)
    assert root.locator("[data-role=title]").inner_text() == f"Latent 4 · L4 {EVIL}"
    assert root.locator(".iw-error").count() == 0
    nb.screenshot("features-dashboard-standalone", root)
