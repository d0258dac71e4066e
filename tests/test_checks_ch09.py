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
from utils.reference.attention import causal_mask
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


def test_rms_norm_checker_rejects_editing_x_in_place():
    def rms_norm(x, weight, eps=1e-5):
        x /= torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)  # right values
        return x * weight

    message = failure_message("9.1", rms_norm)
    assert "changed its input x in place" in message
    assert "call: rms_norm(tensor([[3., -4., 0., 1.]])" in message  # as passed


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
        if mistake == "scale_dh":
            scores = scores / q.size(-1)
        elif mistake != "no_scale":
            scores = scores / math.sqrt(q.size(-1))
        if is_causal:
            seq_len, kv_len = q.size(-2), k.size(-2)
            shift = {
                "top_left": 1,
                "one_too_many": kv_len - seq_len,
                "one_too_few": kv_len - seq_len + 2,
            }.get(mistake, kv_len - seq_len + 1)
            if mistake == "square_mask":  # (T, T), as if nothing were cached
                kv_len = seq_len
            blocked = torch.ones(seq_len, kv_len, dtype=torch.bool).triu(shift)
            if mistake == "inverted":
                blocked = ~blocked
            fill = 0.0 if mistake == "mask_zero" else float("-inf")
            scores = scores.masked_fill(blocked, fill)
        dim = -2 if mistake == "softmax_dim2" else -1
        return torch.softmax(scores, dim=dim) @ v

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
        ("mask_zero", "fill them with float('-inf')"),
        ("one_too_many", "one key too many"),
        ("one_too_few", "one future key"),
        ("square_mask", "causal_mask(T, S)"),
        ("softmax_dim2", "softmax(scores, dim=-1)"),
        ("scale_dh", "divided by Dh; divide by sqrt(Dh)"),
        ("inverted", "your mask is inverted"),
    ],
)
def test_gqa_checker_names_mistake(mistake, phrase):
    assert phrase in failure_message("9.2", _gqa(mistake))


def test_gqa_checker_tells_the_square_mask_from_unrepeated_heads():
    message = failure_message("9.2", _gqa("square_mask"))
    assert "check 5/5" in message and "(T, S) = (2, 5)" in message
    assert "repeat the key/value heads" not in message
    assert "(T, T) mask" not in failure_message("9.2", _gqa("no_repeat"))


def test_gqa_checker_names_an_inverted_sdpa_mask():
    def grouped_query_attention(q, k, v, is_causal=False):
        n_rep = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
        mask = causal_mask(q.size(-2), k.size(-2)) if is_causal else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    assert "attn_mask=~causal_mask(T, S)" in failure_message(
        "9.2", grouped_query_attention
    )


def test_gqa_checker_names_the_nan_of_a_fully_blocked_row():
    message = failure_message("9.2", _gqa("one_too_many"))
    assert "NaN" in message and "check 3/5" in message


def test_gqa_checker_rejects_scaling_q_in_place():
    def grouped_query_attention(q, k, v, is_causal=False):
        q /= math.sqrt(q.size(-1))
        return _gqa()(q * math.sqrt(q.size(-1)), k, v, is_causal)

    assert "changed its input q in place" in failure_message(
        "9.2", grouped_query_attention
    )


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
        if mistake == "clone":
            return cache_k[:, :, :end].clone(), cache_v[:, :, :end].clone()
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
        ("clone", "return views of the buffers, not copies"),
    ],
)
def test_cache_checker_names_mistake(mistake, phrase):
    assert phrase in failure_message("9.3", _update(mistake))


def test_cache_checker_rejects_writing_into_a_copy():
    def cache_update(cache_k, cache_v, k, v, start):
        return _update()(cache_k.clone(), cache_v.clone(), k, v, start)

    message = failure_message("9.3", cache_update)
    assert "buffer cache_k does not hold the new positions" in message
    assert ".clone() build new tensors" in message


def test_cache_checker_shows_the_buffers_as_passed():
    message = failure_message("9.3", _update("late"))
    # the call line shows the empty cache of check 1, not the one the answer wrote
    assert (
        "call: cache_update(tensor of shape (2, 2, 8, 4), starting [0., 0., 0., "
        "0., 0., 0., ...]" in message
    )


def test_cache_checker_summarises_a_dict():
    def cache_update(cache_k, cache_v, k, v, start):
        return {"keys": kv_cache_update(cache_k, cache_v, k, v, start)[0]}

    message = failure_message("9.3", cache_update)
    assert "got: dict {'keys': tensor of shape (2, 2, 3, 4)}" in message
    assert "expected a pair (keys, values), got dict" in message


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
