"""Tests of sliding-window masks and the mixture-of-experts feed-forward."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from transformers import MixtralConfig, MixtralForCausalLM
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from utils.reference.attention import causal_mask, scaled_dot_product_attention
from utils.reference.sparse import (
    MIXTRAL_8X7B,
    MoEFeedForward,
    load_balancing_loss,
    moe_parameter_counts,
    sliding_window_mask,
)


def test_sliding_window_mask_edges():
    mask = sliding_window_mask(5, 2)
    visible = [row.nonzero().flatten().tolist() for row in ~mask]
    assert visible == [[0], [0, 1], [1, 2], [2, 3], [3, 4]]
    assert sliding_window_mask(4, 1).equal(~torch.eye(4, dtype=torch.bool))


@pytest.mark.parametrize(("seq_len", "kv_len"), [(6, 6), (3, 6), (1, 9)])
def test_sliding_window_wide_equals_causal(seq_len, kv_len):
    expected = causal_mask(seq_len, kv_len)
    for window in (kv_len, kv_len + 5):
        assert sliding_window_mask(seq_len, window, kv_len).equal(expected)


def test_sliding_window_with_cache_sees_last_keys():
    mask = sliding_window_mask(2, 3, kv_len=6)  # queries at positions 4 and 5
    assert (~mask).nonzero().tolist() == [
        [0, 2],
        [0, 3],
        [0, 4],
        [1, 3],
        [1, 4],
        [1, 5],
    ]


def test_sliding_window_attention_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 7, 8).unbind(0)
    mask = sliding_window_mask(7, 3)
    ours, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, ~mask))


@pytest.mark.parametrize("window", [0, -2, 1.5, True])
def test_sliding_window_bad_window_explains(window):
    with pytest.raises(ValueError, match="positive int"):
        sliding_window_mask(4, window)


def test_balance_loss_known_values():
    n_experts = 4
    uniform = torch.full((8, n_experts), 0.25)
    spread = torch.arange(8).remainder(n_experts)[:, None]  # (8, 1)
    assert load_balancing_loss(uniform, spread, n_experts).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0, 0, 0]]).repeat(8, 1)
    all_zero = torch.zeros(8, 2, dtype=torch.long)
    assert load_balancing_loss(collapsed, all_zero, 4).item() == pytest.approx(4.0)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_balance_loss_is_mixtral_loss_over_k(top_k):
    torch.manual_seed(0)
    logits = torch.randn(20, 5)
    probs = logits.softmax(-1)
    ours = load_balancing_loss(probs, probs.topk(top_k, dim=-1).indices, 5)
    theirs = load_balancing_loss_func((logits,), 5, top_k)
    torch.testing.assert_close(ours * top_k, theirs)


def test_balance_loss_bad_inputs_explain():
    with pytest.raises(ValueError, match="n_experts=4"):
        load_balancing_loss(torch.rand(5, 3), torch.zeros(5, 1, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        load_balancing_loss(torch.rand(5, 4), torch.full((5, 1), 4), 4)
    with pytest.raises(ValueError, match="N=5"):
        load_balancing_loss(torch.rand(5, 4), torch.zeros(6, 1, dtype=torch.long), 4)


@pytest.fixture
def moe():
    torch.manual_seed(0)
    return MoEFeedForward(d_model=8, d_ff=16, n_experts=4, top_k=2)


def test_moe_routing_picks_top_k_with_weights_summing_to_one(moe):
    x = torch.randn(10, 8)
    routing = moe.route(x)
    assert routing.expert_index.shape == routing.weights.shape == (10, 2)
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(10))
    top = routing.probs.topk(2, dim=-1).indices
    assert routing.expert_index.equal(top)


def test_moe_forward_equals_token_by_token_mix(moe):
    x = torch.randn(2, 5, 8)
    out, loss = moe(x)
    routing = moe.route(x.reshape(-1, 8))
    expected = torch.stack(
        [
            sum(w * moe.experts[int(e)](token) for w, e in zip(ws, es, strict=True))
            for token, ws, es in zip(
                x.reshape(-1, 8), routing.weights, routing.expert_index, strict=True
            )
        ]
    ).reshape(2, 5, 8)
    torch.testing.assert_close(out, expected)
    assert loss.dim() == 0 and loss.item() >= 1.0 - 1e-6


def test_moe_router_gets_gradients(moe):
    out, loss = moe(torch.randn(6, 8))
    (out.pow(2).mean() + loss).backward()
    assert moe.router.weight.grad.abs().sum() > 0


def test_moe_parameter_counts(moe):
    total, active = moe.parameter_counts()
    expert = 2 * 8 * 16  # up and down, no biases
    assert (total, active) == (8 * 4 + 4 * expert, 8 * 4 + 2 * expert)
    assert total == sum(p.numel() for p in moe.parameters())


def test_moe_bad_inputs_explain(moe):
    with pytest.raises(ValueError, match="d_model=8"):
        moe(torch.randn(3, 7))
    with pytest.raises(ValueError, match="top_k"):
        MoEFeedForward(8, 16, n_experts=2, top_k=3)


def test_moe_model_counts_match_transformers_mixtral():
    config = replace(
        MIXTRAL_8X7B, vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2
    )
    config = replace(config, d_ff=48)
    hf_config = MixtralConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = MixtralForCausalLM(hf_config)
    total, _ = moe_parameter_counts(config, n_experts=4, top_k=2)
    assert total == sum(p.numel() for p in model.parameters())


def test_mixtral_8x7b_total_and_active():
    total, active = moe_parameter_counts(MIXTRAL_8X7B, n_experts=8, top_k=2)
    assert (total, active) == (46_702_792_704, 12_879_925_248)  # "47B", "13B" active
    with pytest.raises(ValueError, match="top_k"):
        moe_parameter_counts(MIXTRAL_8X7B, n_experts=8, top_k=0)
