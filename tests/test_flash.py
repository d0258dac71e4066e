"""Tests of the flash-style (online softmax, tiled) attention reference."""

import pytest
import torch
import torch.nn.functional as F

from utils.reference.attention import scaled_dot_product_attention
from utils.reference.flash import online_softmax, peak_tensor_bytes, tiled_attention


@pytest.mark.parametrize("block_size", [1, 3, 8, 50])
def test_online_softmax_equals_softmax(block_size):
    torch.manual_seed(0)
    x = torch.randn(4, 5, 37) * 10
    torch.testing.assert_close(online_softmax(x, block_size), torch.softmax(x, -1))


def test_online_softmax_handles_huge_scores_and_masked_entries():
    x = torch.tensor([[1000.0, 999.0, -float("inf"), 1001.0, 0.0]])
    torch.testing.assert_close(online_softmax(x, 2), torch.softmax(x, -1))


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize(
    ("seq_len", "kv_len", "block_size", "query_block_size"),
    [(8, 8, 4, None), (13, 13, 5, 3), (7, 19, 4, 6), (1, 9, 2, None), (10, 10, 64, 64)],
)
def test_tiled_attention_equals_naive_and_sdpa(
    is_causal, seq_len, kv_len, block_size, query_block_size
):
    torch.manual_seed(0)
    q = torch.randn(2, 3, seq_len, 16)
    k, v = torch.randn(2, 3, kv_len, 16), torch.randn(2, 3, kv_len, 16)
    out = tiled_attention(q, k, v, block_size, query_block_size, is_causal=is_causal)
    naive, _ = scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(out, naive, atol=1e-5, rtol=1e-5)
    if not is_causal or seq_len == kv_len:  # SDPA aligns causal masks top-left
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_tiled_attention_value_width_and_scale():
    torch.manual_seed(0)
    q, k, v = torch.randn(5, 8), torch.randn(9, 8), torch.randn(9, 3)
    out = tiled_attention(q, k, v, block_size=4, scale=0.5)
    expected = F.scaled_dot_product_attention(q[None], k[None], v[None], scale=0.5)
    torch.testing.assert_close(out, expected[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": torch.randn(6, 5)}, "share Dh"),
        ({"v": torch.randn(5, 4)}, "same"),
        ({"block_size": 0}, "positive int"),
        ({"query_block_size": 2.5}, "positive int"),
        ({"k": torch.randn(3, 4), "v": torch.randn(3, 4), "is_causal": True}, "S=3"),
    ],
)
def test_tiled_attention_bad_inputs_explain(kwargs, message):
    args = {"q": torch.randn(6, 4), "k": torch.randn(6, 4), "v": torch.randn(6, 4)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        tiled_attention(**args)


def test_online_softmax_bad_inputs_explain():
    with pytest.raises(ValueError, match="floating point"):
        online_softmax(torch.arange(4))
    with pytest.raises(ValueError, match="positive int"):
        online_softmax(torch.randn(4), block_size=-1)


def test_peak_tensor_bytes_counts_live_tensors():
    def two_at_once():
        a = torch.zeros(1000)  # 4000 bytes
        b = torch.ones(500)  # 2000 bytes, while a is alive
        del a
        return b * 2  # 2000 more while b is alive

    assert peak_tensor_bytes(two_at_once) == 6000
    with pytest.raises(TypeError, match="callable"):
        peak_tensor_bytes(42)


def test_tiled_attention_holds_less_than_naive():
    q = k = v = torch.randn(1, 1, 512, 16)
    naive = peak_tensor_bytes(scaled_dot_product_attention, q, k, v)
    tiled = peak_tensor_bytes(tiled_attention, q, k, v, 64)
    assert naive >= 2 * 512 * 512 * 4  # scores and weights, (T, S) each
    assert tiled < naive / 10


def test_plot_scaling_draws_one_line_per_method():
    import matplotlib.pyplot as plt

    from utils.plots import plot_scaling

    fig = plot_scaling([256, 512], {"a": [1.0, 4.0], "b": [1.0, 2.0]}, "t", "MiB")
    assert len(fig.axes[0].lines) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="2 lengths"):
        plot_scaling([256, 512], {"a": [1.0]}, "t", "MiB")
