"""The 06.* exercise checkers (workbench.course.dictionaries) on a tiny Llama with a random TopK SAE:
the right answer passes, wrong ones fail with a message, a raising answer names its exception,
the stub is "not attempted"."""

from __future__ import annotations

import math

import pytest
import torch

from workbench import course
from workbench.dictionaries.dictionary import Dictionary

SITE = "resid_post.1"


def topk_sae(d_model: int = 48, d_sae: int = 64, k: int = 6, seed: int = 0) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    return Dictionary(W_enc=torch.randn(d_model, d_sae, generator=g) / math.sqrt(d_model),
                      b_enc=torch.randn(d_sae, generator=g) * 0.1, W_dec=torch.randn(d_sae, d_model, generator=g) * 0.3,
                      b_dec=torch.randn(d_model, generator=g) * 0.1, b_pre=torch.randn(d_model, generator=g) * 0.1,
                      architecture="topk", k=k, site=SITE)


@pytest.fixture(scope="module")
def model(tiny):
    return tiny("llama")


@pytest.fixture(scope="module")
def sae(model):
    d = topk_sae(d_model=model.arch.d_model)
    d.check(model)
    return d


def encode(x, sae):
    pre = (x - sae.b_pre) @ sae.W_enc + sae.b_enc
    vals, idx = torch.topk(pre, sae.k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))


def relu_only(x, sae):
    return torch.relu((x - sae.b_pre) @ sae.W_enc + sae.b_enc)


def no_centring(x, sae):
    return encode(x + sae.b_pre, sae)


def fvu(x, x_hat):
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def fvu_uncentred(x, x_hat):
    return float(((x - x_hat) ** 2).sum() / (x ** 2).sum())


def stub(*args):
    raise NotImplementedError


def test_encode_right_answer_passes(model, sae):
    fb = course.check("06.encode", encode, model=model, dictionary=sae)
    assert fb.passed, fb.message
    assert "match sae.encode" in fb.message


def test_encode_wrong_answers_fail_with_a_message(model, sae):
    fb = course.check("06.encode", relu_only, model=model, dictionary=sae)
    assert not fb.passed and fb.attempted
    assert f"k={sae.k} largest" in fb.message
    fb = course.check("06.encode", no_centring, model=model, dictionary=sae)
    assert not fb.passed and "b_pre" in fb.message
    fb = course.check("06.encode", lambda x, sae: encode(x, sae)[:, :-1], model=model, dictionary=sae)
    assert not fb.passed and "shape" in fb.message


def test_encode_raising_answer_and_stub(model, sae):
    fb = course.check("06.encode", lambda x, sae: x @ sae.W_dec, model=model, dictionary=sae)
    assert not fb.passed and fb.attempted and "RuntimeError" in fb.message
    fb = course.check("06.encode", stub, model=model, dictionary=sae)
    assert not fb.passed and not fb.attempted and "not attempted" in str(fb)


def test_fvu_right_answer_matches_evaluate_dictionary(model, sae):
    fb = course.check("06.fvu", fvu, model=model, dictionary=sae)
    assert fb.passed, fb.message
    assert "evaluate_dictionary" in fb.message


def test_fvu_wrong_answers_fail_with_a_message(model, sae):
    fb = course.check("06.fvu", fvu_uncentred, model=model, dictionary=sae)
    assert not fb.passed and fb.attempted and "subtract x.mean(0)" in fb.message
    fb = course.check("06.fvu", lambda x, h: ((x - h) ** 2).sum(-1), model=model, dictionary=sae)
    assert not fb.passed and "one number" in fb.message


def test_fvu_raising_answer_and_stub(model, sae):
    fb = course.check("06.fvu", lambda x, h: x.foo(), model=model, dictionary=sae)
    assert not fb.passed and "AttributeError" in fb.message
    fb = course.check("06.fvu", stub, model=model, dictionary=sae)
    assert not fb.passed and not fb.attempted


def test_checker_refuses_a_missing_dictionary(model):
    fb = course.check("06.encode", encode, model=model, dictionary=None)
    assert not fb.passed and "dictionary=" in fb.message
