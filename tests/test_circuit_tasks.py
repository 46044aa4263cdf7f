"""Counterfactual tasks: generators give equal-length pairs, bad input gives clear errors, and
`evaluate_task` equals a plain forward of the Hugging Face model."""

from __future__ import annotations

import re

import pytest
import torch

from workbench.circuits.task_generators import (
    arithmetic_task,
    factual_task,
    greater_than_task,
    induction_task,
    ioi_task,
)
from workbench.circuits.tasks import Task, TaskError, evaluate_task, make_task, task_from_template


def _check_pairs(task: Task, n: int) -> None:
    assert task.n == n and task.clean_ids.shape == task.corrupted_ids.shape == (n, task.seq_len)
    assert task.answer_ids.shape == task.wrong_ids.shape == (n,)
    assert task.clean_ids.dtype == torch.long and bool((task.answer_ids != task.wrong_ids).all())
    assert not torch.equal(task.clean_ids, task.corrupted_ids)


def _retokenized(model, texts: list[str]) -> list[list[int]]:
    return [model.tokenizer(t)["input_ids"] for t in texts]


# -- tiny model ------------------------------------------------------------------------------------
def test_induction_pairs_differ_at_one_position(tiny):
    model = tiny("llama")
    task = induction_task(model, n=6, seq_len=8, seed=1)
    _check_pairs(task, 6)
    assert task.seq_len == 1 + 8 + 7
    p = task.meta["corrupted_position"]
    diff = (task.clean_ids != task.corrupted_ids).nonzero()[:, 1]
    assert diff.tolist() == [p] * 6
    assert torch.equal(task.answer_ids, task.clean_ids[:, p]) and torch.equal(task.wrong_ids, task.corrupted_ids[:, p])
    first, second = task.clean_ids[:, 1:9], task.clean_ids[:, 9:]
    assert torch.equal(first[:, :7], second)  # the second half repeats the first
    assert not bool((task.corrupted_ids[:, 9:] == task.wrong_ids[:, None]).any())  # w occurs once only
    assert torch.equal(induction_task(model, n=6, seq_len=8, seed=1).clean_ids, task.clean_ids)
    assert not torch.equal(induction_task(model, n=6, seq_len=8, seed=2).clean_ids, task.clean_ids)


def test_arithmetic_pairs_have_the_right_answers(tiny):
    model = tiny("llama")
    for op, digits in (("+", 1), ("-", 1), ("+", 2)):
        task = arithmetic_task(model, n=8, seed=0, op=op, operand_digits=digits)
        _check_pairs(task, 8)
        assert _retokenized(model, task.clean) == task.clean_ids.tolist()
        for clean, corr, ans, wrong in zip(task.clean, task.corrupted, task.answers, task.wrongs, strict=True):
            for text, tok in ((clean, ans), (corr, wrong)):
                a, b = map(int, re.findall(r"(\d+) [+-] (\d+) = $", text)[0])
                assert str(a + b if op == "+" else a - b)[0] == tok


def test_greater_than_answer_is_a_later_decade(tiny):
    model = tiny("llama")
    task = greater_than_task(model, n=8, seed=0, nouns=["class", "function"])  # single tokens in the tiny vocab
    _check_pairs(task, 8)
    for clean, corr, ans, wrong in zip(task.clean, task.corrupted, task.answers, task.wrongs, strict=True):
        start, century = re.findall(r"year (\d{4}) to the year (\d\d)$", clean)[0]
        assert start[:2] == century and int(ans) == int(start[2]) + 1 and int(wrong) == int(start[2]) - 1
        assert re.findall(r"year (\d{4}) to", corr)[0] == century + "01"


def test_ioi_pairs_on_a_tiny_tokenizer(tiny):
    model = tiny("llama")
    names = ["class", "def", "return", "value", "name", "object"]
    task = ioi_task(model, n=5, seed=0, names=names, places=["function"], objects=["the"])
    _check_pairs(task, 5)
    with pytest.raises(TaskError, match="default names are several tokens"):
        ioi_task(model, n=5)


def test_make_task_errors_are_clear(tiny):
    model = tiny("llama")
    with pytest.raises(TaskError, match="no pairs"):
        make_task(model, [], [], [], [])
    with pytest.raises(TaskError, match="2 clean prompts but 1 corrupted"):
        make_task(model, ["the value", "the name"], ["the class"], " is", " of")
    with pytest.raises(TaskError, match=r"pair 0: the clean and corrupted prompts must have the same number of tokens"
                                        r"(.|\n)*positions that differ"):
        make_task(model, ["the value is"], ["the value of the class is"], " a", " the")
    with pytest.raises(TaskError, match=r"pair 0's answer ' None' is 4 tokens \[' ', 'N', 'on', 'e'\]"):
        make_task(model, ["the value is"], ["the class is"], " None", " the")
    with pytest.raises(TaskError, match="same token"):
        make_task(model, ["the value is"], ["the class is"], " a", " a")
    with pytest.raises(TaskError, match="every pair of a task must have the same token length"):
        make_task(model, ["the value is", "the value of the class is"], ["the class is", "the class of the value is"],
                  " a", " the")
    task = make_task(model, ["the value is", "the name is", "the value of the class is"],
                     ["the class is", "the object of the class is", "the class of the value is"], " a", [" the", 5, " of"],
                     on_mismatch="drop")
    assert task.n == 1 and task.meta["dropped_unequal"] == 1 and task.meta["dropped_other_length"] == 1
    assert task.clean == ["the value is"] and task.wrong_ids.tolist() == [model.tokenizer(" the")["input_ids"][0]]


def test_task_from_template(tiny):
    model = tiny("llama")
    values = {"X": ["class", "def", "value", "name"], "Y": ["class", "def", "value", "name"]}
    task = task_from_template(model, "the {X} and the {Y} is", "the {Y} and the {X} is", " {X}", " {Y}", values,
                              n=6, seed=2)
    _check_pairs(task, 6)
    for clean, ans, wrong in zip(task.clean, task.answers, task.wrongs, strict=True):
        x, y = re.findall(r"the (\w+) and the (\w+) is", clean)[0]
        assert x != y and ans == " " + x and wrong == " " + y
    values["X"] = ["class", "Bartholomew"]
    with pytest.raises(TaskError, match=r"answer value 'Bartholomew' of slot 'X'.*is \d+ tokens"):
        task_from_template(model, "the {X} and the {Y} is", "the {Y} and the {X} is", " {X}", " {Y}", values)
    with pytest.raises(TaskError, match="slot"):
        task_from_template(model, "the {Z} is", "the {X} is", " {X}", " {Y}", values)


def test_task_contract_is_checked():
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(TaskError, match="same shape"):
        Task("t", ids, torch.zeros(2, 4, dtype=torch.long), torch.zeros(2), torch.ones(2))
    with pytest.raises(TaskError, match="no pairs"):
        Task("t", ids[:0], ids[:0], torch.zeros(0), torch.zeros(0))
    with pytest.raises(TaskError, match=r"\[n\]"):
        Task("t", ids, ids, torch.zeros(3), torch.zeros(2))
    t = Task("t", ids, ids + 1, torch.tensor([1, 2]), torch.tensor([3, 4]))
    sub = t.subset([1])
    assert sub.n == 1 and sub.answer_ids.tolist() == [2] and t.subset(slice(0, 1)).wrong_ids.tolist() == [3]
    logits = torch.arange(10.0).repeat(2, 1)
    assert t.metric(logits).tolist() == [-2.0, -2.0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_evaluate_task_equals_a_plain_forward(tiny, family):
    model = tiny(family)
    task = induction_task(model, n=5, seq_len=6, seed=0)
    report = evaluate_task(model, task, batch_size=2)
    with torch.no_grad():
        lc = model.hf(input_ids=task.clean_ids).logits[:, -1]
        lk = model.hf(input_ids=task.corrupted_ids).logits[:, -1]
    rows = torch.arange(5)
    dc = lc[rows, task.answer_ids] - lc[rows, task.wrong_ids]
    dk = lk[rows, task.answer_ids] - lk[rows, task.wrong_ids]
    torch.testing.assert_close(report.clean_diffs, dc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(report.corrupted_diffs, dk, rtol=1e-4, atol=1e-4)
    assert report.accuracy == pytest.approx(float((dc > 0).float().mean()))
    assert report.mean_logit_diff == pytest.approx(float(dc.mean()), abs=1e-4)
    assert report.std_logit_diff == pytest.approx(float(dc.std()), abs=1e-4)
    assert report.answer_rank.tolist() == (lc > lc[rows, task.answer_ids][:, None]).sum(1).tolist()
    df = report.to_pandas()
    assert len(df) == 5 and {"clean", "answer", "wrong", "logit_diff", "corrupted_logit_diff", "correct"} <= set(df)
    assert report.summary()["n"] == 5 and "TaskReport" in report._repr_html_()


# -- the embedded model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded():
    import workbench as wb

    return wb.load(progress=False)


@pytest.mark.embedded
def test_generators_give_equal_length_pairs_for_smollm2(embedded):
    model = embedded
    for task in (ioi_task(model, n=10), factual_task(model, n=10), greater_than_task(model, n=10),
                 arithmetic_task(model, n=10), induction_task(model, n=4)):
        _check_pairs(task, task.n)
        if task.clean and task.name != "induction":
            assert _retokenized(model, task.clean) == task.clean_ids.tolist()
            assert _retokenized(model, task.corrupted) == task.corrupted_ids.tolist()
    ioi = ioi_task(model, n=10, seed=3)
    for clean, corr, a, b in zip(ioi.clean, ioi.corrupted, ioi.answers, ioi.wrongs, strict=True):
        assert clean.count(a.strip()) == 1 and clean.count(b.strip()) == 2
        assert a.strip() not in corr and b.strip() not in corr  # ABC: three new names
    assert "When" in ioi.clean[0] and ioi.meta["corruption"] == "ABC"


@pytest.mark.embedded
def test_multi_token_names_are_rejected(embedded):
    with pytest.raises(TaskError, match=r"name 'Bartholomew': ' Bartholomew' is 3 tokens \[' Barth', 'olome', 'w'\]"):
        ioi_task(embedded, names=["Mary", "John", "Alice", "Bob", "Tom", "Bartholomew"])
    with pytest.raises(TaskError, match="attribute 'Buenos Aires'"):
        factual_task(embedded, facts=[("France", "Paris"), ("Argentina", "Buenos Aires")])


@pytest.mark.embedded
def test_embedded_model_does_the_tasks(embedded):
    # Measured at n=40 (see the report): every task's accuracy is >= 0.97, the corrupted runs' far lower.
    for make in (ioi_task, factual_task, greater_than_task, arithmetic_task, induction_task):
        report = evaluate_task(embedded, make(embedded, n=12, seed=5))
        assert report.accuracy >= 0.8, report.summary()
        assert report.mean_logit_diff > 1.5, report.summary()
        assert report.corrupted_mean_logit_diff < report.mean_logit_diff - 1.5, report.summary()
