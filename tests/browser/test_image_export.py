"""Images and themes, every widget: save_image from Python, the PNG/SVG buttons, dark-theme contrast.

One notebook shows all eleven widgets on tiny random models (device pixel ratio 2, so the
size check is size × dpr). A later cell calls ``w.save_image(path)`` on each; the files
appear once the kernel reads the views' answers; each PNG's header size must equal the
view's on-screen size × devicePixelRatio, and the graph widgets' SVGs must parse. The PNG
button of one view must download a PNG of the same size. In JupyterLab Light and Dark
(``apputils:change-theme``), every text element of every widget must have a contrast ratio
of at least 4.5 against what it is drawn on (computed styles).
"""

from __future__ import annotations

import json
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab import ARTIFACTS, NotebookPage, close_notebook, write_notebook

pytestmark = pytest.mark.browser
TIMEOUT = 180
DPR = 2

SETUP = """\
import math, tempfile
import torch
import workbench as wb
import workbench.circuits as C
from workbench.agent import Agent
from workbench.causal.patching import activation_patching, attribution_patching
from workbench.circuits.tasks import make_task
from workbench.core.corpus import default_corpus
from workbench.dictionaries.dictionary import Dictionary
from workbench.dictionaries.transcoders import TranscoderSet
from workbench.graphs import attribute
from workbench.llm import ChatClient
from workbench.testing import tiny_model
from workbench.widgets import (AgentTranscript, AttentionHeads, AttributionGraph, CircuitGraph, FeatureDashboard,
                               FeatureList, LogitLens, NeuronHeatmap, PatchingHeatmap, SteeringPanel)

model = tiny_model('llama')
g = torch.Generator().manual_seed(0)
d = Dictionary(W_enc=torch.randn(48, 64, generator=g) / math.sqrt(48), b_enc=torch.randn(64, generator=g) * 0.1,
               W_dec=torch.randn(64, 48, generator=g) * 0.3, b_dec=torch.zeros(48), architecture='topk', k=8,
               site='resid_post.1')
store = wb.scan(model, default_corpus(max_passages=12), tempfile.mkdtemp() + '/scan', k=4, window=64, batch_size=4,
                sample=8, progress=False)
task = make_task(model, ["The cat sat on the mat", "The cat sat on a mat"], ["A dog is on a mat", "A dog is on the mat"],
                 [" the", " the"], [" a", " a"], name="toy")
scores = C.eap(model, task)
kw = dict(answer=" the", wrong=" a", progress=False)
exact = activation_patching(model, "The cat sat on the mat", "A dog is on a mat", **kw)
attr = attribution_patching(model, "The cat sat on the mat", "A dog is on a mat", **kw)
model3 = tiny_model("llama", n_layers=3)
dm = model3.arch.d_model
tset = TranscoderSet({L: Dictionary(torch.randn(dm, 64, generator=g) / dm**0.5, torch.randn(64, generator=g) * 0.1,
                                    torch.randn(64, dm, generator=g) / 8, torch.randn(dm, generator=g) * 0.1,
                                    "relu", f"mlp_in.{L}", f"mlp_out.{L}") for L in (0, 2)})
graph = attribute(model3, "The fox jumps", tset, batch_size=32, progress=False)
agent = Agent(model, store, ('neurons.1', 3), client=ChatClient('idle', cache=None), max_steps=2, score_final=False,
              warm_start=False, progress=False)
W = {}
"""

# name: (constructor, root selector, has SVG)
WIDGETS = {
    "attention": ("AttentionHeads(model, 'The quick brown fox jumps')", ".iw-attention", False),
    "neurons": ("NeuronHeatmap(model, 'The quick brown fox jumps', layer=1, top_n=8)", ".iw-neurons", False),
    "steering": ("SteeringPanel(model, 'I think that', max_new_tokens=4)", ".iw-steering", False),
    "lens": ("LogitLens(model, 'The quick brown fox jumps', targets=[' the'])", ".iw-lens", False),
    "patching": ("PatchingHeatmap(model, exact, attr)", ".iw-patching", False),
    "neuron-dashboard": ("store.show(layer=1, unit=3)", ".iw-neuron-dashboard", False),
    "feature-list": ("FeatureList(model, d, 'The cat sat on the mat', k=6)", ".iw-feature-list", False),
    "feature-dashboard": ("FeatureDashboard(model, d, 3, text='The cat sat')", ".iw-feature-dashboard", False),
    "agent": ("AgentTranscript(agent)", ".iw-agent", False),
    "circuit": ("CircuitGraph(model, scores, k=10)", ".iw-circuit", True),
    "attribution": ("AttributionGraph(graph)", ".iw-attribution", True),
}
CELLS = [SETUP] + [f"W[{name!r}] = {ctor}\nW[{name!r}]" for name, (ctor, _, _) in WIDGETS.items()]

# Contrast of every visible text element against the colour under it (its own background, else
# its ancestors', composited); data tints (an inline background set from values, with an ink
# chosen for it) are the data's colours, the same in both themes, and are left out, as are
# disabled controls (exempt in WCAG).
CONTRAST_JS = """(root) => {
  const parse = (s) => { const m = /rgba?\\(([^)]*)\\)/.exec(s); if (!m) return null;
    const p = m[1].split(/[\\s,/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const over = (t, b) => [0, 1, 2].map((i) => t[i] * t[3] + b[i] * (1 - t[3])).concat(1);
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const bgOf = (n) => { const layers = [];
    for (; n; n = n.parentElement) { const c = parse(getComputedStyle(n).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
    let bg = [255, 255, 255, 1]; for (let i = layers.length - 1; i >= 0; i--) bg = over(layers[i], bg); return bg; };
  const tinted = (n) => { for (; n && n !== root.parentElement; n = n.parentElement)
    if (n.style && n.style.backgroundColor) return true; return false; };
  const out = { checked: 0, worst: 99, bad: [], rootColor: getComputedStyle(root).color, rootBg: bgOf(root) };
  for (const e of root.querySelectorAll('*')) {
    const own = Array.from(e.childNodes).some((c) => c.nodeType === 3 && c.textContent.trim());
    if (!own || tinted(e) || e.closest('svg') || e.matches(':disabled')) continue;  // WCAG exempts disabled controls
    const r = e.getBoundingClientRect(), cs = getComputedStyle(e);
    if (r.width === 0 || r.height === 0 || cs.visibility === 'hidden' || Number(cs.opacity) === 0) continue;
    const bg = bgOf(e), fg = over(parse(cs.color), bg), k = ratio(fg, bg);
    out.checked++; out.worst = Math.min(out.worst, k);
    if (k < 4.5) out.bad.push(`${e.tagName.toLowerCase()}.${e.className}: ${cs.color} on rgb(${bg.slice(0, 3).map(Math.round)}) = ${k.toFixed(2)} "${e.textContent.trim().slice(0, 30)}"`);
  }
  return out;
}"""


@pytest.fixture(scope="module")
def nb(browser, bundles, lab) -> Iterator[NotebookPage]:
    write_notebook(lab.root / "images.ipynb", CELLS)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=DPR, accept_downloads=True)
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    nbp = NotebookPage(page, lab, "images.ipynb")
    try:
        nbp.open()
        nbp.all_ran = nbp.run_all(timeout=600)
        yield nbp
    finally:
        close_notebook(nbp)


def roots(nb: NotebookPage) -> dict:
    out = {}
    for name, (_, css, _) in WIDGETS.items():
        root = nb.widget(css)
        assert nb.page.locator(f".jp-OutputArea-output {css}").count() == 1, name
        out[name] = root
    return out


def wait_rendered(nb: NotebookPage) -> dict:
    rs = roots(nb)
    for name, root in rs.items():
        if name in ("steering", "agent"):  # no kernel round trip needed to show them
            root.wait_for(state="attached", timeout=TIMEOUT * 1000)
        else:
            nb.wait_run_count(root, 0, timeout=TIMEOUT)
    nb.page.wait_for_timeout(500)
    return rs


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def kernel_json(nb: NotebookPage, expr: str) -> object:
    nb.execute(f"import json as _j\nprint('<<' + _j.dumps({expr}) + '>>')")
    out = nb.cell_output(-1).inner_text()
    assert "<<" in out, out
    return json.loads(out[out.index("<<") + 2:out.rindex(">>")])


def test_save_image_every_widget(nb: NotebookPage, lab) -> None:
    assert nb.all_ran and nb.error_outputs() == [], nb.error_outputs()
    rs = wait_rendered(nb)
    assert nb.page.evaluate("() => devicePixelRatio") == DPR
    sizes = {n: r.evaluate("(el) => { const b = el.getBoundingClientRect(); return [b.width, b.height]; }")
             for n, r in rs.items()}
    out = lab.root / "img"
    nb.execute("import pathlib\nout = pathlib.Path('img'); out.mkdir(exist_ok=True)\n"
               "H = {n: w.save_image(out / f'{n}.png') for n, w in W.items()}\n"
               "H['circuit-svg'] = W['circuit'].save_image(out / 'circuit.svg')\n"
               "H['attribution-svg'] = W['attribution'].save_image(out / 'attribution.svg')\n"
               "print('asked', len(H))")
    assert "asked 13" in nb.cell_output(-1).inner_text()
    want = [out / f"{n}.png" for n in WIDGETS] + [out / "circuit.svg", out / "attribution.svg"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not all(p.exists() for p in want):
        time.sleep(0.5)
    # a later cell: every handle is done, its file exists, is non-empty, and is as large as the view
    state = kernel_json(nb, "{n: dict(done=h.done, error=h.error, w=h.width, h=h.height, n=h.nbytes, "
                            "ms=h.render_ms, s=h.seconds, exists=h.path.exists(), size=h.path.stat().st_size "
                            "if h.path.exists() else 0) for n, h in H.items()}")
    failed = {n: st for n, st in state.items() if not st["done"]}
    assert not failed, failed
    report = {}
    for name in WIDGETS:
        st = state[name]
        assert st["done"] and not st["error"] and st["exists"] and st["size"] > 1000, (name, st)
        w, h = png_size((out / f"{name}.png").read_bytes())
        ew, eh = sizes[name][0] * DPR, sizes[name][1] * DPR
        assert abs(w - ew) <= 3 and abs(h - eh) <= 3, (name, (w, h), (ew, eh))
        assert (st["w"], st["h"]) == (w, h)
        report[name] = {"png": [w, h], "bytes": st["size"], "render_ms": round(st["ms"]), "round_trip_s": round(st["s"], 2)}
    for name in ("circuit", "attribution"):
        st = state[f"{name}-svg"]
        assert st["done"] and not st["error"] and st["size"] > 500, (name, st)
        svg = ET.parse(out / f"{name}.svg").getroot()
        assert svg.tag == "{http://www.w3.org/2000/svg}svg", svg.tag
        shapes = [e for e in svg.iter() if e.tag.split("}")[-1] in ("path", "circle", "rect")]
        assert len(shapes) >= 5, (name, len(shapes))
        report[f"{name}-svg"] = {"bytes": st["size"], "render_ms": round(st["ms"]), "shapes": len(shapes)}
    # the circuit view's SVG is also kept as w.svg (its old export path)
    assert kernel_json(nb, "W['circuit'].svg.startswith('<svg')") is True
    (ARTIFACTS / "images").mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():
        shutil.copy(p, ARTIFACTS / "images" / p.name)
    (ARTIFACTS / "image-export-sizes.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


def test_png_button_downloads(nb: NotebookPage, tmp_path: Path) -> None:
    rs = wait_rendered(nb)
    for name in ("lens", "circuit"):
        root = rs[name]
        w, h = root.evaluate("(el) => { const b = el.getBoundingClientRect(); return [b.width, b.height]; }")
        with nb.page.expect_download(timeout=60_000) as dl:
            root.locator("[data-testid=export-png]").click()
        assert dl.value.suggested_filename == f"{name}.png"
        path = tmp_path / f"{name}.png"
        dl.value.save_as(path)
        pw, ph = png_size(path.read_bytes())
        assert abs(pw - w * DPR) <= 3 and abs(ph - h * DPR) <= 3, (name, (pw, ph), (w, h))
        print(name, "button PNG", (pw, ph), "rendered in", root.get_attribute("data-snapshot-ms"), "ms", root.get_attribute("data-snapshot-phases"))
    with nb.page.expect_download() as dl:
        rs["circuit"].locator("[data-testid=export-svg]").click()
    assert dl.value.suggested_filename == "circuit.svg"
    assert rs["lens"].locator("[data-testid=export-svg]").count() == 0  # no vectors to save there
    nb.page.wait_for_timeout(500)
    # the button's image reached the kernel too
    assert kernel_json(nb, "[W['circuit'].last_image.format, W['circuit'].last_image.done]") == ["svg", True]


def set_theme(nb: NotebookPage, theme: str) -> None:
    light = "true" if "Light" in theme else "false"
    nb.page.evaluate("(t) => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})", theme)
    nb.page.wait_for_function("(l) => document.body.dataset.jpThemeLight === l", arg=light, timeout=30_000)
    nb.page.wait_for_timeout(1500)  # the theme's stylesheet swaps in


@pytest.mark.parametrize("theme", ["JupyterLab Dark", "JupyterLab Light"])
def test_theme_contrast(nb: NotebookPage, theme: str, lab) -> None:
    from PIL import Image

    rs = wait_rendered(nb)
    set_theme(nb, theme)
    dark = "Dark" in theme
    bad, checked = {}, 0
    for name, root in rs.items():
        r = root.evaluate(CONTRAST_JS)
        checked += r["checked"]
        bg_lum = sum(r["rootBg"][:3]) / 3
        assert (bg_lum < 80) if dark else (bg_lum > 200), (name, theme, r["rootBg"])
        assert r["checked"] >= 3, (name, r)
        if r["bad"]:
            bad[name] = r["bad"][:5]
    assert not bad, f"{theme}: text below contrast 4.5:\n" + json.dumps(bad, indent=1)
    assert checked >= 100
    # an image saved in this theme is drawn on the theme's background
    nb.execute(f"h_theme = W['lens'].save_image('lens-{'dark' if dark else 'light'}.png')")
    path = lab.root / f"lens-{'dark' if dark else 'light'}.png"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not path.exists():
        time.sleep(0.3)
    im = Image.open(path).convert("RGB")
    px = im.getpixel((im.width - 3, 2))  # top right: the view's background (the controls sit left)
    assert (sum(px) / 3 < 80) if dark else (sum(px) / 3 > 200), (theme, px)
    nb.screenshot(f"image-export-{'dark' if dark else 'light'}")
