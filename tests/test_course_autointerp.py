"""Checkers of ``09_autointerp.ipynb``: a right answer passes, the solutions file's wrong answer and common
mistakes fail with a message saying what is off, on pure data and on a tiny model with a planted neuron."""

from __future__ import annotations

import math

import numpy as np
import pytest
from course_helpers import crash, expect, stub
from planted import SITE, TOKEN, UNIT, plant

import workbench as wb
from workbench import course
from workbench.autointerp import Record, classification_scores, unit_records
from workbench.testing import tiny_model


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    model = tiny_model("llama")
    [tid] = model.tokenizer(TOKEN, add_special_tokens=False)["input_ids"]
    plant(model, tid)
    store = wb.scan(model, wb.default_corpus(max_passages=12), tmp_path_factory.mktemp("c09") / "scan", sites=[SITE],
                    k=8, window=24, batch_size=8, sample=16, progress=False)
    return model, store


# -- 09.normalize ------------------------------------------------------------------------------------------
def normalize_right(acts, max_activation):
    if not max_activation > 0:
        return [0] * len(acts)
    return [min(10, math.floor(10 * max(0.0, float(a)) / max_activation)) for a in acts]


def test_normalize_by_hand() -> None:
    # 10 * [-1, 0.05, 0.44, 0.5, 1.2] / 0.5 -> relu, floor, cap: [0, 1, 8, 10, 10]
    assert normalize_right(np.array([-1.0, 0.05, 0.44, 0.5, 1.2]), 0.5) == [0, 1, 8, 10, 10]
    recs = [Record(3, ["a", " b", " c"], np.array([0.0, 2.0, 4.0], np.float32)),
            Record(7, [" d", " e"], np.array([-1.0, 1.0], np.float32))]
    expect(course.check("09.normalize", normalize_right, records=recs), True, "2 explainer window(s)")
    expect(course.check("09.normalize", normalize_right), True, "0 explainer window(s)")


def test_normalize_mistakes_fail_with_hints() -> None:
    recs = [Record(3, ["a", " b", " c"], np.array([0.0, 2.0, 4.0], np.float32))]

    def no_relu(acts, mx):
        return [min(10, math.floor(10 * float(a) / mx)) if mx > 0 else 0 for a in acts]

    def rounded(acts, mx):
        return [min(10, round(10 * max(0.0, float(a)) / mx)) if mx > 0 else 0 for a in acts]

    def uncapped(acts, mx):
        return [math.floor(10 * max(0.0, float(a)) / mx) if mx > 0 else 0 for a in acts]

    def floats(acts, mx):
        return [10 * max(0.0, float(a)) / mx if mx > 0 else 0.0 for a in acts]

    expect(course.check("09.normalize", no_relu, records=recs), False, "relu")
    expect(course.check("09.normalize", rounded, records=recs), False, "floor")
    expect(course.check("09.normalize", uncapped, records=recs), False, "capped at 10")
    expect(course.check("09.normalize", floats, records=recs), False, "whole numbers")
    expect(course.check("09.normalize", lambda a, m: [0], records=recs), False, "1 values for 3")
    expect(course.check("09.normalize", crash, records=recs), False, "KeyError", "oops")
    expect(course.check("09.normalize", stub, records=recs), False, "not attempted")


def test_normalize_on_real_records(planted) -> None:
    _, store = planted
    recs = unit_records(store, SITE, UNIT, [w for _, w, _ in store.top(SITE, UNIT)][:3], crop=(6, 2))
    expect(course.check("09.normalize", normalize_right, records=recs), True, "3 explainer window(s)")


# -- 09.detection_score ------------------------------------------------------------------------------------
def detection_right(labels, preds):
    y, p = np.asarray(labels, bool), np.asarray(preds, bool)
    tp, fp, fn, tn = (y & p).sum(), (~y & p).sum(), (y & ~p).sum(), (~y & ~p).sum()
    return float(0.5 * (tp / (tp + fn) + tn / (tn + fp))), float(2 * tp / (2 * tp + fp + fn))


def test_detection_score_by_hand() -> None:
    # labels 1 1 1 0, preds 1 0 1 1: hit rate 2/3, correct rejections 0/1, tp 2 fp 1 fn 1
    ba, f1 = detection_right([1, 1, 1, 0], [1, 0, 1, 1])
    assert ba == pytest.approx(1 / 3) and f1 == pytest.approx(2 / 3)
    s = classification_scores("detection", [1, 1, 1, 0], [1, 0, 1, 1], n_boot=10)
    assert s["detection"].value == pytest.approx(ba) and s["detection_f1"].value == pytest.approx(f1)


def test_detection_score_right_and_wrong() -> None:
    y = [1] * 6 + [0] * 4
    p = [1, 1, 1, 0, 0, 0, 1, 0, 0, 0]
    score = classification_scores("detection", y, p, n_boot=10)["detection"]
    expect(course.check("09.detection_score", detection_right, score=score), True, "4 sets", "notebook's run")
    expect(course.check("09.detection_score", detection_right), True, "3 sets")

    def plain_accuracy(labels, preds):
        y, p = np.asarray(labels, bool), np.asarray(preds, bool)
        return float((y == p).mean()), detection_right(labels, preds)[1]

    def precision_as_f1(labels, preds):
        y, p = np.asarray(labels, bool), np.asarray(preds, bool)
        return detection_right(labels, preds)[0], float((y & p).sum() / p.sum())

    expect(course.check("09.detection_score", plain_accuracy, score=score), False, "plain accuracy")
    expect(course.check("09.detection_score", precision_as_f1, score=score), False, "precision")
    expect(course.check("09.detection_score", lambda y, p: 0.5, score=score), False, "two numbers")
    expect(course.check("09.detection_score", detection_right, score=1.0), False, "detection Score")
    expect(course.check("09.detection_score", crash), False, "KeyError", "oops")
    expect(course.check("09.detection_score", stub), False, "not attempted")


def test_detection_score_uses_the_notebooks_counts() -> None:
    """An answer right only on the checker's own cases still fails on the notebook's run."""
    y = [1] * 5 + [0] * 5
    p = [1, 1, 1, 1, 0, 1, 0, 0, 0, 0]
    score = classification_scores("detection", y, p, n_boot=10)["detection"]
    target = (round(score.value, 6), round(classification_scores("detection", y, p, n_boot=1)["detection_f1"].value, 6))

    def off_on_that_run(labels, preds):
        ba, f1 = detection_right(labels, preds)
        return (ba + 0.1, f1) if (round(ba, 6), round(f1, 6)) == target else (ba, f1)

    expect(course.check("09.detection_score", off_on_that_run), True)
    expect(course.check("09.detection_score", off_on_that_run, score=score), False, "notebook's detection run")


# -- 09.hypothesis -----------------------------------------------------------------------------------------
def test_hypothesis_right_and_wrong(planted) -> None:
    _, store = planted
    right = lambda toks, i: toks[i] == TOKEN  # noqa: E731
    fb = course.check("09.hypothesis", right, store=store, site=SITE, unit=UNIT)
    expect(fb, True, "F1 1.000", "precision 1.000", "recall 1.000")
    r = wb.test_hypothesis(store, SITE, UNIT, right, progress=False)
    assert f"{r.tp} tokens predicted" in str(fb) and f"of {r.n_tokens})" in str(fb)

    broad = lambda toks, i: toks[i].startswith(" ")  # noqa: E731  (the solutions file's wrong answer)
    expect(course.check("09.hypothesis", broad, store=store, site=SITE, unit=UNIT), False, "too broad", repr(TOKEN))
    no_space = lambda toks, i: toks[i] == TOKEN.strip()  # noqa: E731
    expect(course.check("09.hypothesis", no_space, store=store, site=SITE, unit=UNIT), False, "never fires",
           "leading space", repr(TOKEN))
    r_next = wb.test_hypothesis(store, SITE, UNIT, lambda toks, i: i > 0 and toks[i - 1] == TOKEN, progress=False)
    assert r_next.f1 < 0.7  # the token after the planted one: a different set of positions
    expect(course.check("09.hypothesis", right, store=store, site=SITE, unit=UNIT, min_f1=1.01), False,
           "at least 1.01")


def test_hypothesis_bad_answers_are_reported(planted) -> None:
    _, store = planted
    expect(course.check("09.hypothesis", lambda toks, i: None, store=store, site=SITE, unit=UNIT), False,
           "bool or a number")
    expect(course.check("09.hypothesis", crash, store=store, site=SITE, unit=UNIT), False, "KeyError", "oops")
    expect(course.check("09.hypothesis", stub, store=store, site=SITE, unit=UNIT), False, "not attempted")
    expect(course.check("09.hypothesis", "the", store=store, site=SITE, unit=UNIT), False, "should be a function")


def test_solutions_file_answers_pass_and_fail(planted) -> None:
    """The solutions file's right and wrong answers, on the tiny model (09.hypothesis for ' only' becomes ' the')."""
    from pathlib import Path

    blocks = course.read_solutions(Path(__file__).resolve().parents[1] / "examples" / "solutions" / "09_autointerp.py")
    recs = [Record(3, ["a", " b", " c", " d"], np.array([-0.5, 0.3, 2.0, 4.0], np.float32))]
    y, p = [1] * 6 + [0] * 4, [1, 1, 1, 0, 0, 0, 1, 0, 0, 0]
    score = classification_scores("detection", y, p, n_boot=10)["detection"]
    for kind, passed in (("solution", True), ("wrong", False)):
        ns: dict = {}
        exec(blocks["09.normalize"][kind], ns)
        expect(course.check("09.normalize", ns["normalize"], records=recs), passed)
        exec(blocks["09.detection_score"][kind], ns)
        expect(course.check("09.detection_score", ns["detection_score"], score=score), passed)
        exec(blocks["09.hypothesis"][kind].replace('" only"', repr(TOKEN)), ns)
        _, store = planted
        expect(course.check("09.hypothesis", ns["my_hypothesis"], store=store, site=SITE, unit=UNIT), passed)
