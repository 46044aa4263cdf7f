"""The tour notebook in JupyterLab: it runs clean, and its three widgets respond to the mouse.

The notebook (and the embedded model) is loaded once for the module; the tests run in
file order on the same page: first the clean run, then one interaction per widget.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .lab import NotebookPage, assert_course_run, close_notebook, open_and_run, run_count

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

TOUR = "01_tour.ipynb"
WIDGETS = {"attention": ".iw-attention", "neurons": ".iw-neurons", "steering": ".iw-steering"}
REPLY_TIMEOUT = 240  # seconds for a widget's first kernel reply (2 shared CPU cores)


@pytest.fixture(scope="module")
def tour(browser, bundles, lab) -> Iterator[NotebookPage]:
    nb = open_and_run(lab, browser, TOUR, timeout=600)
    try:
        yield nb
    finally:
        close_notebook(nb)


def texts(locator) -> list[str]:
    return [t.strip() for t in locator.all_inner_texts()]


def test_tour_runs_clean_and_widgets_render(tour: NotebookPage) -> None:
    assert tour.all_ran, "Run All stopped at a failing cell"
    assert tour.error_outputs() == []
    assert_course_run(tour, "01_tour")
    # every code cell ran (no [ ] prompts left)
    prompts = texts(tour.page.locator(".jp-CodeCell .jp-InputArea-prompt"))
    assert prompts and all(p.startswith("[") and p[1:-2].strip().isdigit() for p in prompts), prompts
    for name, css in WIDGETS.items():
        root = tour.widget(css)
        assert tour.wait_run_count(root, 0, timeout=REPLY_TIMEOUT) >= 1, name
        assert root.locator(".iw-error").count() == 0, f"{name}: {root.locator('.iw-error').first.inner_text()}"
        assert "iw-root" in (root.get_attribute("class") or "")
        tour.screenshot(f"tour-{name}", root)
    att = tour.widget(WIDGETS["attention"])
    assert att.get_attribute("data-rendered") == "true"
    assert int(att.get_attribute("data-render-ms") or -1) >= 0


def test_neuron_click_reruns_and_changes_predictions(tour: NotebookPage) -> None:
    root = tour.widget(WIDGETS["neurons"])
    tour.wait_run_count(root, 0, timeout=REPLY_TIMEOUT)
    preds = root.locator("[data-testid=predictions]")
    assert preds.locator("[data-testid=prediction-row]").count() >= 5
    current = preds.locator("[data-testid=prediction-row] [data-testid=prob-current]")
    before_current = texts(current)
    before_rows = texts(preds.locator("[data-testid=prediction-row]"))
    n0 = run_count(root)

    col = root.locator("[data-testid=neuron]").first
    neuron = col.get_attribute("data-neuron")
    col.scroll_into_view_if_needed()
    col.click()
    n1 = tour.wait_run_count(root, n0, timeout=REPLY_TIMEOUT)
    assert n1 > n0
    root.locator(f"[data-testid=neuron][data-neuron='{neuron}'][data-ablated=true]").wait_for()
    after_current = texts(preds.locator("[data-testid=prediction-row] [data-testid=prob-current]"))
    assert after_current != before_current, (before_rows, texts(preds.locator("[data-testid=prediction-row]")))
    # the baseline column does not move
    assert root.locator(".iw-error").count() == 0
    tour.screenshot("neurons-after-click", root)

    # Python reads back what was clicked
    tour.execute("print('ABLATED', heat.ablated, [s.describe() for s in heat.interventions])")
    out = tour.cell_output(-1).inner_text()
    assert f"ABLATED [{neuron}]" in out, out


def test_neuron_colour_by_attribution_reruns_in_the_kernel(tour: NotebookPage) -> None:
    root = tour.widget(WIDGETS["neurons"])
    n0 = tour.wait_run_count(root, 0, timeout=REPLY_TIMEOUT)
    assert root.locator("[data-testid=heatmap]").get_attribute("data-color-by") == "activation"
    colors = lambda: root.locator("[data-testid=cell]").evaluate_all("els => els.map(e => e.style.backgroundColor)")  # noqa: E731
    before = colors()
    root.locator("[data-testid=color-by]").select_option("attribution")
    n1 = tour.wait_run_count(root, n0, timeout=REPLY_TIMEOUT)
    table = root.locator("[data-testid=heatmap][data-color-by=attribution]")
    table.wait_for(timeout=REPLY_TIMEOUT * 1000)
    attrs = [float(a) for a in root.locator("[data-testid=cell]").evaluate_all("els => els.map(e => e.dataset.attr)")]
    assert attrs and any(a != 0 for a in attrs)
    assert colors() != before  # the view changed: coloured by attribution now
    assert "attribution to the logit of" in root.locator("[data-testid=legend]").inner_text()
    assert root.locator(".iw-error").count() == 0
    tour.screenshot("neurons-attribution", root)
    tour.execute("print('COLOR', heat.color_by)")
    assert "COLOR attribution" in tour.cell_output(-1).inner_text()
    root.locator("[data-testid=color-by]").select_option("activation")
    tour.wait_run_count(root, n1, timeout=REPLY_TIMEOUT)


def test_steering_slider_drag_changes_steered_text(tour: NotebookPage) -> None:
    root = tour.widget(WIDGETS["steering"])
    tour.wait_run_count(root, 0, timeout=REPLY_TIMEOUT)
    baseline = root.locator("[data-testid=baseline-text]")
    steered = root.locator("[data-testid=steered-text]")
    base0, steer0 = baseline.inner_text(), steered.inner_text()
    assert base0.strip(), "baseline text is empty"
    n0 = run_count(root)

    slider = root.locator("input[type=range][data-testid=slider][data-direction='0']")
    slider.scroll_into_view_if_needed()
    value0 = float(slider.input_value())
    box = slider.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    start_x = box["x"] + box["width"] / 2  # a symmetric range: the thumb starts in the middle
    page = tour.page
    page.mouse.move(start_x, y)
    page.mouse.down()
    for i in range(1, 11):  # drag to 3/4 of the track in small steps, like a hand would
        page.mouse.move(start_x + i * box["width"] / 40, y)
    page.mouse.up()
    assert float(slider.input_value()) > value0, "dragging the slider did not move it"

    tour.wait_run_count(root, n0, timeout=REPLY_TIMEOUT)
    page.wait_for_function(
        "([el]) => !el.querySelector('[data-testid=steered-text]').classList.contains('stale')",
        arg=[root.element_handle()], timeout=REPLY_TIMEOUT * 1000)
    base1, steer1 = baseline.inner_text(), steered.inner_text()
    assert base1 == base0, "the baseline should not change when steering"
    assert steer1 != steer0
    assert steer1 != base1
    assert root.locator(".iw-error").count() == 0
    tour.screenshot("steering-after-drag", root)

    # reset puts every slider back to 0, and Python sees the strengths
    n1 = run_count(root)
    root.locator("[data-testid=reset]").click()
    tour.wait_run_count(root, n1, timeout=REPLY_TIMEOUT)
    assert float(slider.input_value()) == 0.0
    tour.execute("print('STRENGTHS', panel.strengths)")
    out = tour.cell_output(-1).inner_text()
    assert "STRENGTHS" in out


def test_attention_grid_detail_and_token_hover(tour: NotebookPage) -> None:
    root = tour.widget(WIDGETS["attention"])
    tour.wait_run_count(root, 0, timeout=REPLY_TIMEOUT)
    assert root.get_attribute("data-rendered") == "true"
    thumbs = root.locator("[data-testid=head-thumb]")
    n_layers, n_heads = 30, 9  # SmolLM2-135M
    assert thumbs.count() == n_layers * n_heads
    detail = root.locator("[data-testid=head-detail]")
    assert not detail.is_visible()

    thumb = root.locator("[data-testid=head-thumb][data-layer='3'][data-head='2']")
    thumb.scroll_into_view_if_needed()
    thumb.click()
    detail.wait_for(state="visible")
    tour.page.wait_for_function(  # the head's full pattern is a request of its own
        "(d) => d.dataset.state === 'done' && d.dataset.shown === '3:2'",
        arg=detail.element_handle(), timeout=REPLY_TIMEOUT * 1000)
    tokens = detail.locator("[data-testid=token]")
    assert tokens.count() >= 10
    assert "Mary" in "".join(texts(tokens))

    def tints() -> list[str]:
        return detail.evaluate(
            "(d) => Array.from(d.querySelectorAll('[data-pos]'))"
            ".filter(e => e.dataset.testid !== 'token').map(e => e.style.background)")

    before = tints()
    last = tokens.count() - 1
    tokens.nth(last).hover()
    page = tour.page
    page.wait_for_timeout(200)
    after_last = tints()
    assert after_last != before
    assert any(t for t in after_last), "hovering a token tinted nothing"
    tokens.nth(last // 2).hover()
    page.wait_for_timeout(200)
    assert tints() != after_last
    tour.screenshot("attention-detail-hover", root)
    tour.execute("print('SELECTED', heads.selection)")
    out = tour.cell_output(-1).inner_text()
    assert "SELECTED (3, 2)" in out, out
