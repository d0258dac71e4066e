"""Tests of the position encodings: sinusoidal values and RoPE against transformers."""

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from utils.reference.positions import apply_rope, rope_cos_sin, sinusoidal_positions


def test_sinusoidal_positions_by_hand() -> None:
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],  # position 0: sin 0, cos 0 in each pair
            [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],  # w = 1, 0.01
        ]
    )
    torch.testing.assert_close(sinusoidal_positions(2, 4), expected)


def test_sinusoidal_positions_match_the_paper_formula() -> None:
    seq_len, d_model, base = 7, 10, 100.0
    expected = torch.zeros(seq_len, d_model)
    for pos in range(seq_len):
        for i in range(d_model // 2):
            angle = pos / base ** (2 * i / d_model)
            expected[pos, 2 * i] = math.sin(angle)
            expected[pos, 2 * i + 1] = math.cos(angle)
    actual = sinusoidal_positions(seq_len, d_model, base=base)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("theta", [1e4, 1e5])
def test_apply_rope_matches_transformers_llama(theta: float) -> None:
    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,  # head_dim 16
        num_key_value_heads=4,
        max_position_embeddings=64,
        rope_theta=theta,
    )
    rotary = LlamaRotaryEmbedding(config)
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 10, 16)  # (B, H, T, Dh)
    position_ids = torch.arange(3, 13).expand(2, 10)  # (B, T), starting at 3
    cos_hf, sin_hf = rotary(q, position_ids)  # (B, T, Dh) each
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos_hf, sin_hf)

    cos, sin = rope_cos_sin(10, 16, theta=theta, offset=3)  # (T, Dh) each
    torch.testing.assert_close(cos, cos_hf[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, sin_hf[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_rope(q, cos, sin), q_hf, atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_rope(k, cos, sin), k_hf, atol=1e-6, rtol=0)


def test_rope_offset_continues_the_positions() -> None:
    cos_all, sin_all = rope_cos_sin(12, 8)
    cos_late, sin_late = rope_cos_sin(4, 8, offset=8)
    torch.testing.assert_close(cos_late, cos_all[8:])
    torch.testing.assert_close(sin_late, sin_all[8:])


def test_apply_rope_preserves_norms_and_position_zero() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 32)  # (B, H, T, Dh)
    rotated = apply_rope(x, *rope_cos_sin(20, 32))
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotated[..., 0, :], x[..., 0, :])  # angle 0


@pytest.mark.parametrize("theta", [1e4, 1e5])
@pytest.mark.parametrize("distance", [0, 1, 5, 17])
def test_rope_scores_depend_only_on_distance(theta: float, distance: int) -> None:
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)  # (Dh,)
    cos, sin = rope_cos_sin(48, 16, theta=theta)
    q_at = apply_rope(q.expand(48, 16), cos, sin)  # q placed at every position
    k_at = apply_rope(k.expand(48, 16), cos, sin)
    scores = torch.stack(
        [q_at[m] @ k_at[m - distance] for m in range(distance, 48, 5)]
    )  # query at m, key at n = m - distance
    torch.testing.assert_close(scores, scores[:1].expand_as(scores), atol=1e-4, rtol=0)
    if distance == 0:
        torch.testing.assert_close(scores[0], q @ k, atol=1e-5, rtol=0)


def test_rope_scores_change_with_distance() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    cos, sin = rope_cos_sin(8, 16)
    q_at, k_at = (
        apply_rope(q.expand(8, 16), cos, sin),
        apply_rope(k.expand(8, 16), cos, sin),
    )
    assert not torch.allclose(q_at[4] @ k_at[3], q_at[4] @ k_at[1])


@pytest.mark.parametrize(
    "call",
    [
        lambda: sinusoidal_positions(4, 5),
        lambda: rope_cos_sin(4, 7),
        lambda: rope_cos_sin(4, 0),
        lambda: apply_rope(torch.zeros(4, 5), torch.zeros(4, 5), torch.zeros(4, 5)),
    ],
)
def test_odd_widths_raise(call) -> None:
    with pytest.raises(ValueError, match="positive even number"):
        call()


def test_apply_rope_rejects_mismatched_cos_sin() -> None:
    cos, sin = rope_cos_sin(6, 8)
    with pytest.raises(ValueError, match=r"must have shape \(T, Dh\) = \(5, 8\)"):
        apply_rope(torch.zeros(2, 5, 8), cos, sin)
    with pytest.raises(ValueError, match="seq_len must be 0 or more"):
        rope_cos_sin(-1, 8)
