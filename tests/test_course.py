"""The course's exercise checkers: a right answer passes, a wrong one fails with a message that says
what is off, a raising answer is reported (never raised), and the stub says "not attempted". Also
the solutions files and `fill_notebook`, on every course notebook that has exercises."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from course_helpers import crash, expect, stub
from graph_fixtures import RandomPLT

from workbench import course
from workbench.testing import tiny_model

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CLEAN, CORRUPT = "The cat sat on the mat", "A dog is on a mat"


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2)


def test_feedback_never_raises_and_escapes_html() -> None:
    fb = course.check("02.nope", None)
    expect(fb, False, "no exercise", "02.previous_token")
    f = course.Feedback("01.x", False, "<script>alert(1)</script>")
    assert "<script>" not in f._repr_html_() and "&lt;script&gt;" in f._repr_html_()


def test_expect_close_explains_shape_value_and_nan() -> None:
    with pytest.raises(course.Wrong, match=r"shape \(2,\), expected \(3,\)"):
        course.expect_close(torch.zeros(2), torch.zeros(3))
    with pytest.raises(course.Wrong, match="NaN"):
        course.expect_close(torch.tensor([math.nan, 0.0]), torch.zeros(2))
    with pytest.raises(course.Wrong, match=r"index \(1,\): expected 2, got 5"):
        course.expect_close(torch.tensor([1.0, 5.0]), torch.tensor([1.0, 2.0]))
    with pytest.raises(course.Wrong, match="should be a tensor"):
        course.expect_close("abc", torch.zeros(1))
    course.expect_close(np.ones(3), torch.ones(3))


# -- 01 ------------------------------------------------------------------------------------------
def test_top_token(model) -> None:
    right = lambda m, p: m.run(p, top_k=1).top.tokens[0][0]  # noqa: E731
    second = lambda m, p: m.run(p, top_k=2).top.tokens[0][1]  # noqa: E731
    expect(course.check("01.top_token", right, model=model), True, "3 prompts")
    expect(course.check("01.top_token", second, model=model), False, "expected")
    expect(course.check("01.top_token", lambda m, p: 3, model=model), False, "a str")
    expect(course.check("01.top_token", crash, model=model), False, "KeyError", "oops")
    expect(course.check("01.top_token", stub, model=model), False, "not attempted")


def test_neuron_mean(model) -> None:
    def right(m, p, layer, unit):
        return m.run(p, capture=[f"neurons.{layer}"])[f"neurons.{layer}"][0, :, unit].mean()

    def last_only(m, p, layer, unit):
        return m.run(p, capture=[f"neurons.{layer}"])[f"neurons.{layer}"][0, -1, unit]

    expect(course.check("01.neuron_mean", right, model=model, layer=1, unit=3), True)
    expect(course.check("01.neuron_mean", last_only, model=model, layer=1, unit=3), False, "expected")


# -- 02 ------------------------------------------------------------------------------------------
def prev(p, L):
    q = torch.arange(2, p.shape[-1])
    return p[:, :, q, q - 1].mean((0, 2))


def ind(p, L):
    q = torch.arange(1 + L, p.shape[-1])
    return p[:, :, q, q - L + 1].mean((0, 2))


def test_head_scores(model) -> None:
    expect(course.check("02.previous_token", prev, model=model), True, "head_scores")
    expect(course.check("02.induction", ind, model=model), True)
    expect(course.check("02.previous_token", ind, model=model), False, "differs")
    expect(course.check("02.induction", lambda p, L: p.mean(), model=model), False, "shape ()")
    expect(course.check("02.induction", stub, model=model), False, "not attempted")


# -- 03 ------------------------------------------------------------------------------------------
def lens_by_hand(m, prompt, layer):
    with torch.no_grad():
        r = m.run(prompt, capture=[f"resid_post.{layer}"])[f"resid_post.{layer}"][0, -1]
        hf = m.hf
        logits = hf.lm_head(hf.model.norm(r))
    return torch.log_softmax(logits.float(), -1)


def test_logit_lens(model) -> None:
    expect(course.check("03.logit_lens", lens_by_hand, model=model, layers=(0, 1)), True, "wb.logit_lens")

    def no_norm(m, prompt, layer):
        r = m.run(prompt, capture=[f"resid_post.{layer}"])[f"resid_post.{layer}"][0, -1]
        return torch.log_softmax(m.hf.lm_head(r * 7.0).float(), -1).detach()

    expect(course.check("03.logit_lens", no_norm, model=model, layers=(0, 1)), False, "top")
    raw = lambda m, p, layer: lens_by_hand(m, p, layer).exp() * 3  # noqa: E731
    expect(course.check("03.logit_lens", raw, model=model, layers=(0, 1)), False, "log_softmax")


def test_restored(model) -> None:
    from workbench.causal.patching import activation_patching

    tok = model.tokenizer
    ids = tok.encode(CLEAN)
    res = activation_patching(model, CLEAN, CORRUPT, answer=tok.decode([ids[-1]]), wrong=tok.decode([ids[0]]),
                              progress=False)
    right = lambda raw, c, k: (raw - k) / (c - k)  # noqa: E731
    flipped = lambda raw, c, k: (raw - c) / (k - c)  # noqa: E731
    expect(course.check("03.restored", right, result=res), True, "largest effect")
    expect(course.check("03.restored", flipped, result=res), False, "differs")


# -- 04 ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task(model):
    from workbench.circuits import Task

    a = torch.tensor(model.tokenizer.encode(CLEAN))[None].repeat(2, 1)
    b = torch.tensor(model.tokenizer.encode("The dog sat on the rug"))[None].repeat(2, 1)
    return Task("t", a, b[:, : a.shape[1]], torch.tensor([5, 7]), torch.tensor([6, 9]), model_name=model.name)


def test_logit_diff(model, task) -> None:
    right = lambda lg, a, w: lg[torch.arange(len(a)), a] - lg[torch.arange(len(a)), w]  # noqa: E731
    expect(course.check("04.logit_diff", right, model=model, task=task), True, "task.metric")
    expect(course.check("04.logit_diff", lambda lg, a, w: lg[:, a[0]] - lg[:, w[0]], model=model, task=task),
           False, "differs")


def test_top_edges(model, task) -> None:
    from workbench.circuits import Circuit, eap

    scores = eap(model, task, progress=False)

    def right(s, n):
        return Circuit.from_edges(s.graph, s.scores.abs().topk(n).indices)

    def signed(s, n):
        return Circuit.from_edges(s.graph, s.scores.topk(n).indices)

    expect(course.check("04.top_edges", right, scores=scores, n=20), True)
    expect(course.check("04.top_edges", signed, scores=scores, n=20), False, "absolute")
    expect(course.check("04.top_edges", lambda s, n: 5, scores=scores, n=20), False, "Circuit")


# -- 05 ------------------------------------------------------------------------------------------
def test_auroc() -> None:
    def right(a, b):
        return ((a[:, None] > b[None]).mean() + 0.5 * (a[:, None] == b[None]).mean())

    expect(course.check("05.auroc", right), True, "ties")
    expect(course.check("05.auroc", lambda a, b: (a[:, None] > b[None]).mean()), False, "ties as one half")
    expect(course.check("05.auroc", lambda a, b: [1, 2]), False, "one number")


def test_mean_difference(model) -> None:
    a, b = ["I love it", "So good"], ["I hate it", "So bad"]

    def right(m, a, b, layer):
        def mean(texts):
            return torch.stack([m.run(t, capture=[f"resid_post.{layer}"])[f"resid_post.{layer}"][0, -1] for t in texts]).mean(0)
        return mean(a) - mean(b)

    expect(course.check("05.mean_difference", right, model=model, a=a, b=b, layer=1), True)
    expect(course.check("05.mean_difference", lambda m, a_, b_, layer: right(m, b_, a_, layer), model=model,
                        a=a, b=b, layer=1), False, "differs")


# -- 07 ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph():
    from workbench.graphs import attribute

    m = tiny_model("llama", n_layers=3)
    return attribute(m, "The cat sat on the mat", RandomPLT([0, 2], m.arch.d_model, 48, seed=1), batch_size=8,
                     progress=False)


def total_effect(g, node):
    i, nf = g.index(node), g.n_features
    act = g.activations.double()
    per_unit = g.adjacency.double()[:, :nf] / torch.where(act.abs() > 0, act, torch.ones_like(act))
    x = torch.zeros(nf, dtype=torch.float64)
    x[i] = -act[i]
    free = torch.ones(nf, dtype=torch.bool)
    free[i] = False
    for _ in range(nf + 1):
        new = torch.where(free, per_unit[:nf] @ x, x)
        if torch.equal(new, x):
            break
        x = new
    return float(per_unit[g.logit_start] @ x)


def test_graph_exercises(graph) -> None:
    top = lambda g: g.node_ids[int(g.adjacency[g.logit_start].abs().argmax())]  # noqa: E731
    most_positive = lambda g: g.node_ids[int(g.adjacency[g.logit_start].argmax())]  # noqa: E731
    most_negative = lambda g: g.node_ids[int(g.adjacency[g.logit_start].argmin())]  # noqa: E731
    expect(course.check("07.top_input", top, graph=graph), True)
    # whichever sign the top edge has, an answer that looks at one sign fails (the sign-flipped copy)
    expect(course.check("07.top_input", most_positive, graph=graph), False, "expected")
    expect(course.check("07.top_input", most_negative, graph=graph), False, "expected")
    expect(course.check("07.total_effect", total_effect, graph=graph), True, "replacement model")
    direct = lambda g, n: -float(g.adjacency[g.logit_start, g.index(n)])  # noqa: E731
    # the default node is one whose indirect paths matter: the direct edge alone fails there
    expect(course.check("07.total_effect", direct, graph=graph), False, "only the direct edge")
    # a layer-0 feature reaches the logit directly and through the layer-2 features: the two differ
    node = next(n for n in graph.node_ids[: graph.n_features] if n.startswith("0_")
                and abs(direct(graph, n) - total_effect(graph, n)) > 1e-3)
    expect(course.check("07.total_effect", direct, graph=graph, node=node), False, "only the direct edge")
    expect(course.check("07.total_effect", total_effect, graph=graph, node=node), True)


# -- notebooks and solutions --------------------------------------------------------------------
def course_notebooks() -> list[Path]:
    import nbformat

    return [p for p in sorted(EXAMPLES.glob("*.ipynb"))
            if course.exercise_cells(nbformat.read(str(p), as_version=4))]


def test_every_notebook_exercise_has_a_registered_checker_and_both_solutions() -> None:
    import nbformat

    nbs = course_notebooks()
    assert nbs, "no course notebook has exercise cells"
    for path in nbs:
        nb = nbformat.read(str(path), as_version=4)
        ids = [ex for _, ex in course.exercise_cells(nb)]
        assert all(ex in course.EXERCISES for ex in ids), (path.name, ids)
        assert all(ex.startswith(path.name[:2] + ".") for ex in ids), (path.name, ids)
        blocks = course.read_solutions(course.default_solutions(path))
        assert set(blocks) == set(ids), path.name
        for kind in ("solution", "wrong"):
            filled = course.fill_notebook(path, kind)
            for index, ex in course.exercise_cells(filled):
                assert filled.cells[index].source.strip() == blocks[ex][kind].strip()
                compile(filled.cells[index].source, f"{path.name}:{ex}:{kind}", "exec")
        for index, _ in course.exercise_cells(nb):  # the notebook itself holds the stub, not a solution
            assert "NotImplementedError" in nb.cells[index].source, (path.name, index)


def test_fill_notebook_refuses_mismatched_solutions(tmp_path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("raise NotImplementedError")
    cell.metadata["exercise"] = "01.top_token"
    nb.cells = [cell]
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, path)
    (tmp_path / "solutions").mkdir()
    sol = tmp_path / "solutions" / "01_x.py"
    sol.write_text("# %% 01.top_token\nx = 1\n")
    with pytest.raises(course.SolutionsError, match="no wrong block"):
        course.fill_notebook(path)
    sol.write_text("# %% 01.top_token\nx = 1\n# %% 01.top_token wrong\nx = 2\n# %% 01.other\ny=1\n# %% 01.other wrong\ny=2\n")
    with pytest.raises(course.SolutionsError, match="01.other"):
        course.fill_notebook(path)
    sol.write_text("# %% 01.top_token\nx = 1\n# %% 01.top_token wrong\nx = 2\n")
    out = tmp_path / "filled.ipynb"
    filled = course.fill_notebook(path, "wrong", out=out)
    assert filled.cells[0].source == "x = 2" and nbformat.read(str(out), as_version=4).cells[0].source == "x = 2"
    with pytest.raises(ValueError, match="mode"):
        course.fill_notebook(path, "answers")


def test_verdicts_reads_marks() -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    c = nbformat.v4.new_code_cell("")
    c.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "✅ 02.induction: correct. x"}),
                 nbformat.v4.new_output("stream", text="❌ 02.previous_token: not yet. y\n")]
    nb.cells = [c]
    assert course.verdicts(nb) == {"02.induction": "✅", "02.previous_token": "❌"}


def test_course_command_fills_a_teachers_copy(tmp_path: Path, capsys) -> None:
    import nbformat

    from workbench.cli import main

    out = tmp_path / "teacher.ipynb"
    main(["course", str(EXAMPLES / "01_tour.ipynb"), "-o", str(out)])
    assert "2 exercise cells filled with the solution blocks" in capsys.readouterr().out
    nb = nbformat.read(str(out), as_version=4)
    sources = [nb.cells[i].source for i, _ in course.exercise_cells(nb)]
    assert all("NotImplementedError" not in s for s in sources) and "top_k=1" in sources[0]
    with pytest.raises(SystemExit):
        main(["course", str(tmp_path / "missing.ipynb"), "-o", str(out)])
