"""The 08.* exercise checkers (workbench.course.subspaces) on a tiny Llama: the right answer passes,
wrong ones fail with a message, a raising answer names its exception, the stub is "not attempted"."""

from __future__ import annotations

import pytest
import torch

from workbench import course

IG = {"prompt": "The cat sat on the mat", "corrupted": "The cat sat on the hat", "target": 5, "foil": 7,
      "layer": 1, "steps": 6}


@pytest.fixture(scope="module")
def model(tiny):
    return tiny("llama")


def project_out(x, B):
    return x - (x @ B.T) @ B


def interchange(base, source, B):
    return base + (source @ B.T - base @ B.T) @ B


def ig_riemann(f, x, baseline, steps):
    total = torch.zeros_like(x)
    for k in range(steps):
        z = (baseline + (k + 0.5) / steps * (x - baseline)).requires_grad_(True)
        total += torch.autograd.grad(f(z), z)[0]
    return (x - baseline) * total / steps


def ig_left(f, x, baseline, steps):
    total = torch.zeros_like(x)
    for k in range(steps):
        z = (baseline + k / steps * (x - baseline)).requires_grad_(True)
        total += torch.autograd.grad(f(z), z)[0]
    return (x - baseline) * total / steps


def grad_x_input(f, x, baseline, steps):
    z = x.clone().requires_grad_(True)
    return (x - baseline) * torch.autograd.grad(f(z), z)[0]


def stub(*args):
    raise NotImplementedError


def test_project_out(model):
    fb = course.check("08.project_out", project_out, model=model)
    assert fb.passed, fb.message
    assert "ablate_subspace" in fb.message
    fb = course.check("08.project_out", lambda x, B: (x @ B.T) @ B, model=model)
    assert not fb.passed and fb.attempted and "component inside the subspace" in fb.message
    fb = course.check("08.project_out", lambda x, B: x - x @ B.T, model=model)  # [T, k] broadcast fails
    assert not fb.passed and "RuntimeError" in fb.message
    fb = course.check("08.project_out", lambda x, B: x, model=model)
    assert not fb.passed and "unchanged" in fb.message
    fb = course.check("08.project_out", stub, model=model)
    assert not fb.passed and not fb.attempted


def test_project_out_with_a_given_subspace(model):
    from workbench.causal import Subspace

    sub = Subspace.from_directions("mlp_out.0", torch.randn(2, model.arch.d_model))
    assert course.check("08.project_out", project_out, model=model, subspace=sub).passed
    fb = course.check("08.project_out", project_out, model=model, subspace="not a subspace")
    assert not fb.passed and "Subspace" in fb.message


def test_interchange(model):
    fb = course.check("08.interchange", interchange, model=model)
    assert fb.passed, fb.message
    fb = course.check("08.interchange", lambda h, s, B: h + (s @ B.T) @ B, model=model)
    assert not fb.passed and "did not remove the base" in fb.message
    fb = course.check("08.interchange", lambda h, s, B: s, model=model)
    assert not fb.passed and "full patch" in fb.message
    fb = course.check("08.interchange", lambda h, s, B: interchange(s, h, B), model=model)
    assert not fb.passed and "swapped" in fb.message
    fb = course.check("08.interchange", lambda h, s, B: h @ B, model=model)
    assert not fb.passed and "RuntimeError" in fb.message
    fb = course.check("08.interchange", stub, model=model)
    assert not fb.passed and not fb.attempted


def test_interchange_refuses_unequal_prompts(model):
    fb = course.check("08.interchange", interchange, model=model, base="a b", source="a b c d e f g")
    assert not fb.passed and "same number of tokens" in fb.message


def test_ig(model):
    assert len(model.tokenize(IG["prompt"]).tokens[0]) == len(model.tokenize(IG["corrupted"]).tokens[0])
    fb = course.check("08.ig", ig_riemann, model=model, **IG)
    assert fb.passed, fb.message
    assert "integrated_gradients" in fb.message and "completeness gap" in fb.message
    fb = course.check("08.ig", grad_x_input, model=model, **IG)
    assert not fb.passed and fb.attempted and "one step" in fb.message
    fb = course.check("08.ig", ig_left, model=model, **IG)
    assert not fb.passed and "midpoint" in fb.message
    fb = course.check("08.ig", lambda f, x, b, m: f(x[0]), model=model, **IG)
    assert not fb.passed and "ValueError" in fb.message
    fb = course.check("08.ig", stub, model=model, **IG)
    assert not fb.passed and not fb.attempted
