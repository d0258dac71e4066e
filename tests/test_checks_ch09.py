"""Tests of the checkers of chapter 09: RMSNorm (9.1), grouped-query attention (9.2)
and the KV cache update (9.3).

Each checker accepts the reference and a learner-style right answer, reports a stub
as not attempted, and rejects plausible wrong answers with a hint naming the mistake.
The learner-style answers are written independently of the reference.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import failure_message

import utils.checks.ch09  # noqa: F401  (registers 9.1 to 9.3)
from utils.checks import EXERCISES, check_exercise
from utils.checks.ch09 import gqa_variant
from utils.reference.block import RMSNorm
from utils.reference.llama import kv_cache_update

# --- 9.1


def _rms_norm(mistake: str = ""):
    def rms_norm(x, weight, eps=1e-5):
        if mistake == "centred":
            x = x - x.mean(dim=-1, keepdim=True)
        mean_square = (x * x).mean(dim=-1, keepdim=True)
        if mistake == "eps_outside":
            return x / (mean_square.sqrt() + eps) * weight
        if mistake == "no_weight":
            return x / torch.sqrt(mean_square + eps)
        if mistake == "norm":
            return x / torch.sqrt((x * x).sum(-1, keepdim=True) + eps) * weight
        return x / torch.sqrt(mean_square + eps) * weight

    return rms_norm


def _reference_rms_norm(x, weight, eps=1e-5):
    norm = RMSNorm(x.size(-1), eps=eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
    return norm(x)


def test_rms_norm_checker_accepts_reference_and_learner(capsys):
    check_exercise("9.1", _reference_rms_norm)
    check_exercise("9.1", _rms_norm())
    assert capsys.readouterr().out.count("Exercise 9.1: passed 4/4 checks") == 2


@pytest.mark.parametrize(
    ("mistake", "phrase"),
    [
        ("centred", "that is LayerNorm"),
        ("eps_outside", "eps goes inside the square root"),
        ("no_weight", "not multiplied by weight"),
        ("norm", "not the sum"),
    ],
)
def test_rms_norm_checker_names_mistake(mistake, phrase):
    assert phrase in failure_message("9.1", _rms_norm(mistake))


# --- 9.2


def _gqa(mistake: str = ""):
    def grouped_query_attention(q, k, v, is_causal=False):
        n_rep = q.size(1) // k.size(1)
        if mistake == "tiled":
            k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
        elif mistake != "no_repeat":
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
        scores = q @ k.transpose(-2, -1)
        if mistake != "no_scale":
            scores = scores / math.sqrt(q.size(-1))
        if is_causal:
            seq_len, kv_len = q.size(-2), k.size(-2)
            shift = 1 if mistake == "top_left" else kv_len - seq_len + 1
            blocked = torch.ones(seq_len, kv_len, dtype=torch.bool).triu(shift)
            scores = scores.masked_fill(blocked, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    return grouped_query_attention


def test_gqa_checker_accepts_reference_and_learner(capsys):
    check_exercise("9.2", gqa_variant)
    check_exercise("9.2", _gqa())
    assert capsys.readouterr().out.count("Exercise 9.2: passed 5/5 checks") == 2


@pytest.mark.parametrize(
    ("mistake", "phrase"),
    [
        ("tiled", "wrong order"),
        ("no_scale", "sqrt(Dh)"),
        ("top_left", "LAST T positions"),
        ("no_repeat", "repeat the key/value heads"),
    ],
)
def test_gqa_checker_names_mistake(mistake, phrase):
    assert phrase in failure_message("9.2", _gqa(mistake))


def test_gqa_reference_matches_torch_enable_gqa():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 6, 4, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(_gqa()(q, k, v, is_causal=True), expected)


# --- 9.3


def _update(mistake: str = ""):
    def cache_update(cache_k, cache_v, k, v, start):
        end = start + k.size(-2)
        if mistake == "cat":
            return (
                torch.cat([cache_k[:, :, :start], k], dim=2),
                torch.cat([cache_v[:, :, :start], v], dim=2),
            )
        at = start + 1 if mistake == "late" else start
        cache_k[:, :, at : at + k.size(-2)] = k
        cache_v[:, :, at : at + k.size(-2)] = v
        if mistake == "whole":
            return cache_k, cache_v
        if mistake == "new_only":
            return k, v
        return cache_k[:, :, :end], cache_v[:, :, :end]

    return cache_update


def test_cache_checker_accepts_reference_and_learner(capsys):
    check_exercise("9.3", kv_cache_update)
    check_exercise("9.3", _update())
    assert capsys.readouterr().out.count("Exercise 9.3: passed 4/4 checks") == 2


@pytest.mark.parametrize(
    ("mistake", "phrase"),
    [
        ("cat", "buffers are unchanged"),
        ("late", "one position late"),
        ("whole", "whole buffer"),
        ("new_only", "only the new keys"),
    ],
)
def test_cache_checker_names_mistake(mistake, phrase):
    assert phrase in failure_message("9.3", _update(mistake))


@pytest.mark.parametrize("exercise_id", ["9.1", "9.2", "9.3"])
def test_ch09_stub_is_not_attempted(exercise_id, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError(f"Exercise {exercise_id}")

    check_exercise(exercise_id, stub)
    assert (
        capsys.readouterr().out.strip() == f"Exercise {exercise_id}: not attempted yet"
    )


def test_ch09_titles():
    assert EXERCISES["9.1"].title == "RMSNorm"
    assert EXERCISES["9.2"].title == "Grouped-query attention"
    assert EXERCISES["9.3"].title == "The KV cache update"
