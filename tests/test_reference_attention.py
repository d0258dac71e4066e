"""Tests of the reference attention: masks, scaled dot-product and multi-head attention.

Every variant is compared with PyTorch's own `scaled_dot_product_attention` or
`nn.MultiheadAttention`. Remember that torch's `F.scaled_dot_product_attention` reads a
boolean mask the other way round (True = keep), so it gets `~mask`.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.reference.attention import (
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    repeat_kv,
    scaled_dot_product_attention,
)

D, H, T, DH = 32, 4, 8, 8  # the course's tiny sizes: d_model, heads, seq_len, head_dim
BATCH_SHAPES = [(), (3,), (2, H)]  # no batch, (B,), (B, H)


def _qkv(batch: tuple[int, ...], seq_len: int = T, kv_len: int = T) -> tuple:
    """Random q (*batch, T, Dh), k and v (*batch, S, Dh)."""
    q = torch.randn(*batch, seq_len, DH)
    k = torch.randn(*batch, kv_len, DH)
    v = torch.randn(*batch, kv_len, DH)
    return q, k, v


def _lengths_mask(lengths: list[int], kv_len: int) -> torch.Tensor:
    """A (B, S) 1/0 keep mask with the first lengths[b] positions kept."""
    return (torch.arange(kv_len)[None, :] < torch.tensor(lengths)[:, None]).long()


# --- masks


def test_causal_mask_blocks_the_future() -> None:
    expected = torch.tensor(
        [[False, True, True], [False, False, True], [False, False, False]]
    )
    assert torch.equal(causal_mask(3), expected)
    assert causal_mask(3).dtype == torch.bool


@pytest.mark.parametrize(("seq_len", "kv_len"), [(1, 5), (2, 5), (5, 5)])
def test_causal_mask_with_cache_uses_last_rows(seq_len: int, kv_len: int) -> None:
    full = causal_mask(kv_len)
    assert torch.equal(causal_mask(seq_len, kv_len), full[-seq_len:])


def test_causal_mask_rejects_short_kv() -> None:
    with pytest.raises(ValueError, match="kv_len=3 is smaller than seq_len=5"):
        causal_mask(5, 3)


def test_padding_mask_blocks_padded_keys_only() -> None:
    keep = torch.tensor([[1, 1, 1], [1, 1, 0]])
    mask = padding_mask(keep)
    assert mask.shape == (2, 1, 1, 3)
    assert mask.dtype == torch.bool
    assert mask[:, 0, 0].tolist() == [[False, False, False], [False, False, True]]


def test_padding_mask_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\(B, S\), got \(2, 1, 3\)"):
        padding_mask(torch.ones(2, 1, 3))


# --- scaled dot-product attention against torch


@pytest.mark.parametrize("batch", BATCH_SHAPES)
@pytest.mark.parametrize("kv_len", [T, 5])
def test_sdpa_matches_torch_without_mask(batch: tuple[int, ...], kv_len: int) -> None:
    torch.manual_seed(0)
    q, k, v = _qkv(batch, T, kv_len)
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert weights.shape == (*batch, T, kv_len)
    torch.testing.assert_close(weights.sum(-1), torch.ones(*batch, T))


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_sdpa_is_causal_matches_torch(batch: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    q, k, v = _qkv(batch)
    out, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected)


def test_sdpa_is_causal_with_longer_kv_aligns_queries_last() -> None:
    torch.manual_seed(0)
    q, k, v = _qkv((2,), seq_len=3, kv_len=T)
    out, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
    # torch's is_causal aligns top-left, so spell the bottom-right mask out for it
    keep = ~causal_mask(3, T)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    )


@pytest.mark.parametrize("batch", BATCH_SHAPES)
@pytest.mark.parametrize("mask_shape", [(T, T), (1, T), (T, 1)])
def test_sdpa_bool_mask_matches_torch(
    batch: tuple[int, ...], mask_shape: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    q, k, v = _qkv(batch)
    mask = torch.rand(*mask_shape) < 0.4
    mask[..., 0] = False  # every query keeps key 0, so no row is fully blocked
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_sdpa_float_mask_matches_torch(batch: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    q, k, v = _qkv(batch)
    bias = torch.randn(T, T)
    bias[torch.rand(T, T) < 0.3] = float("-inf")
    bias[:, 0] = 0.0  # keep one key per query
    out, weights = scaled_dot_product_attention(q, k, v, mask=bias)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(out, expected)
    assert torch.all(weights[..., bias.isinf()] == 0)


@pytest.mark.parametrize("lengths", [[T, 5], [3, 1]])
def test_sdpa_padding_mask_matches_torch(lengths: list[int]) -> None:
    torch.manual_seed(0)
    q, k, v = _qkv((2, H))
    mask = padding_mask(_lengths_mask(lengths, T))  # (B, 1, 1, S)
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask)
    torch.testing.assert_close(out, expected)
    assert torch.all(weights[1, :, :, lengths[1] :] == 0)


def test_sdpa_padding_and_causal_combine() -> None:
    torch.manual_seed(0)
    q, k, v = _qkv((2, H))
    mask = padding_mask(_lengths_mask([T, 6], T))
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=True)
    keep = ~(mask | causal_mask(T))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("scale", [0.1, 1.0])
def test_sdpa_custom_scale_matches_torch(scale: float) -> None:
    torch.manual_seed(0)
    q, k, v = _qkv((2,))
    out, _ = scaled_dot_product_attention(q, k, v, scale=scale)
    expected = F.scaled_dot_product_attention(q, k, v, scale=scale)
    torch.testing.assert_close(out, expected)


# --- edge cases: fully blocked rows, padding invariance, causality


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_fully_masked_rows_give_zeros_and_zero_grads(kind: str) -> None:
    torch.manual_seed(0)
    q, k, v = (t.requires_grad_() for t in _qkv((2,)))
    blocked = torch.zeros(T, T, dtype=torch.bool)
    blocked[2] = True  # query 2 may look nowhere
    blocked[5, 3:] = True
    mask = blocked if kind == "bool" else torch.zeros(T, T).masked_fill(blocked, -1e30)
    if kind == "float":
        mask[2] = float("-inf")
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out[:, 2], torch.zeros(2, DH))
    torch.testing.assert_close(weights[:, 2], torch.zeros(2, T))
    (out.sum() + weights.sum()).backward()
    for tensor in (q, k, v):
        assert torch.isfinite(tensor.grad).all()
    torch.testing.assert_close(q.grad[:, 2], torch.zeros(2, DH))


def test_sdpa_appending_padded_keys_changes_nothing() -> None:
    torch.manual_seed(0)
    q, k, v = _qkv((2, H))
    out, _ = scaled_dot_product_attention(q, k, v)
    k_long = torch.cat([k, torch.randn(2, H, 3, DH)], dim=-2)  # (B, H, S + 3, Dh)
    v_long = torch.cat([v, torch.randn(2, H, 3, DH)], dim=-2)
    keep = torch.cat([torch.ones(2, T), torch.zeros(2, 3)], dim=1)  # (B, S + 3)
    mask = padding_mask(keep)
    out_long, _ = scaled_dot_product_attention(q, k_long, v_long, mask=mask)
    torch.testing.assert_close(out_long, out)


@pytest.mark.parametrize("t", [0, 3, T - 2])
def test_sdpa_is_causal_ignores_the_future(t: int) -> None:
    torch.manual_seed(0)
    q, k, v = _qkv((2, H))
    out, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for tensor in (q2, k2, v2):
        tensor[..., t + 1, :] = torch.randn(DH)  # change token t + 1 only
    out2, _ = scaled_dot_product_attention(q2, k2, v2, is_causal=True)
    torch.testing.assert_close(out2[..., : t + 1, :], out[..., : t + 1, :])
    assert not torch.allclose(out2[..., t + 1, :], out[..., t + 1, :])


def test_sdpa_return_weights_false_gives_none() -> None:
    torch.manual_seed(0)
    q, k, v = _qkv((2,))
    out, weights = scaled_dot_product_attention(q, k, v, return_weights=False)
    assert weights is None
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v)[0])


def test_sdpa_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    q, k, v = _qkv((2,))
    plain, _ = scaled_dot_product_attention(q, k, v)
    off, _ = scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=False)
    on, weights = scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=True)
    torch.testing.assert_close(off, plain)
    assert not torch.allclose(on, plain)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, T))  # before dropout


@pytest.mark.parametrize(
    ("shapes", "mask_shape", "named"),
    [
        (((T, DH), (T, DH + 1), (T, DH)), None, ["(8, 8)", "(8, 9)"]),
        (((T, DH), (T, DH), (T + 1, DH)), None, ["(8, 8)", "(9, 8)"]),
        (((2, T, DH), (3, T, DH), (3, T, DH)), None, ["(2, 8, 8)", "(3, 8, 8)"]),
        (((2, T, DH), (2, T, DH), (2, T, DH)), (3, T, T), ["(3, 8, 8)", "(2, 8, 8)"]),
        (((2, T, DH), (2, 5, DH), (2, 5, DH)), (T, T), ["(8, 8)", "(2, 8, 5)"]),
    ],
)
def test_sdpa_wrong_shapes_raise_value_error(
    shapes: tuple, mask_shape: tuple | None, named: list[str]
) -> None:
    q, k, v = (torch.zeros(shape) for shape in shapes)
    mask = None if mask_shape is None else torch.zeros(mask_shape, dtype=torch.bool)
    with pytest.raises(ValueError) as info:
        scaled_dot_product_attention(q, k, v, mask=mask)
    for shape in named:
        assert shape in str(info.value)


def test_sdpa_rejects_integer_mask() -> None:
    q = torch.zeros(T, DH)
    with pytest.raises(ValueError, match="padding_mask"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(T, T, dtype=torch.long))


# --- multi-head attention against torch.nn.MultiheadAttention


def _torch_mha_copy(mha: MultiHeadAttention) -> nn.MultiheadAttention:
    """A torch.nn.MultiheadAttention holding the same weights as `mha`."""
    theirs = nn.MultiheadAttention(mha.d_model, mha.n_heads, batch_first=True)
    with torch.no_grad():
        projections = (mha.q_proj, mha.k_proj, mha.v_proj)
        theirs.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        theirs.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        theirs.out_proj.weight.copy_(mha.out_proj.weight)
        theirs.out_proj.bias.copy_(mha.out_proj.bias)
    return theirs.eval()


@pytest.mark.parametrize("masking", ["none", "causal", "padding", "both"])
def test_mha_matches_torch_multihead_attention(masking: str) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H).eval()
    mha.store_weights = True
    theirs = _torch_mha_copy(mha)
    x = torch.randn(2, T, D)
    attn_mask = causal_mask(T) if masking in ("causal", "both") else None
    pad = _lengths_mask([T, 5], T) == 0 if masking in ("padding", "both") else None
    mask = attn_mask
    if pad is not None:
        mask = pad[:, None, None, :] if mask is None else mask | pad[:, None, None, :]
    out = mha(x, mask=mask)
    expected, weights = theirs(
        x, x, x, attn_mask=attn_mask, key_padding_mask=pad, average_attn_weights=False
    )
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(mha.last_weights, weights)


def test_mha_is_causal_equals_causal_mask() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H).eval()
    x = torch.randn(2, T, D)
    torch.testing.assert_close(mha(x, is_causal=True), mha(x, mask=causal_mask(T)))


def test_mha_cross_attention_matches_torch() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H).eval()
    theirs = _torch_mha_copy(mha)
    x, memory = torch.randn(2, T, D), torch.randn(2, 5, D)  # T=8 queries, S=5 keys
    out = mha(x, kv=memory)
    assert out.shape == (2, T, D)
    torch.testing.assert_close(out, theirs(x, memory, memory, need_weights=False)[0])


@pytest.mark.parametrize("t", [0, 4])
def test_mha_is_causal_ignores_the_future(t: int) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H).eval()
    x = torch.randn(2, T, D)
    x2 = x.clone()
    x2[:, t + 1] = torch.randn(D)
    out, out2 = mha(x, is_causal=True), mha(x2, is_causal=True)
    torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1])


def test_mha_gqa_with_all_kv_heads_equals_plain_mha() -> None:
    torch.manual_seed(0)
    plain = MultiHeadAttention(D, H)
    gqa = MultiHeadAttention(D, H, n_kv_heads=H)
    gqa.load_state_dict(plain.state_dict())
    x = torch.randn(2, T, D)
    torch.testing.assert_close(gqa(x, is_causal=True), plain(x, is_causal=True))


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_mha_gqa_matches_torch_enable_gqa(n_kv_heads: int) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, n_kv_heads=n_kv_heads).eval()
    assert mha.k_proj.out_features == n_kv_heads * DH
    x = torch.randn(2, T, D)
    q = mha.q_proj(x).view(2, T, H, DH).transpose(1, 2)  # (B, H, T, Dh)
    k = mha.k_proj(x).view(2, T, n_kv_heads, DH).transpose(1, 2)  # (B, H_kv, T, Dh)
    v = mha.v_proj(x).view(2, T, n_kv_heads, DH).transpose(1, 2)
    heads = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    expected = mha.out_proj(heads.transpose(1, 2).reshape(2, T, D))
    torch.testing.assert_close(mha(x, is_causal=True), expected)


def test_repeat_kv_equals_repeat_interleave() -> None:
    torch.manual_seed(0)
    k = torch.randn(2, 2, 5, DH)  # (B, H_kv, S, Dh)
    torch.testing.assert_close(repeat_kv(k, 3), k.repeat_interleave(3, dim=1))
    assert repeat_kv(k, 1) is k


@pytest.mark.parametrize(
    ("x", "n_rep", "match"),
    [
        (torch.zeros(1, 2, 5, DH), 0, r"got 0; H_kv // H gives 0"),
        (torch.zeros(1, 2, 5, DH), -1, "n_rep must be"),
        (torch.zeros(1, 2, 5, DH), 1.5, "n_rep must be"),
        (torch.zeros(2, 5, DH), 2, r"\(B, H_kv, S, Dh\), got shape \(2, 5, 8\)"),
    ],
)
def test_repeat_kv_rejects_bad_input(x: torch.Tensor, n_rep: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        repeat_kv(x, n_rep)


def test_mha_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, dropout=0.5)
    x = torch.randn(2, T, D)
    mha.eval()
    first, second = mha(x), mha(x)
    torch.testing.assert_close(first, second)
    mha.train()
    assert not torch.allclose(mha(x), first)


def test_mha_stores_weights_only_when_asked() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H)
    x = torch.randn(2, T, D)
    mha(x)
    assert mha.last_weights is None
    mha.store_weights = True
    mha(x, kv=torch.randn(2, 5, D))
    assert mha.last_weights.shape == (2, H, T, 5)
    assert not mha.last_weights.requires_grad


@pytest.mark.parametrize(
    ("x_shape", "kv_shape", "named"),
    [
        ((2, T, D + 1), None, "(2, 8, 33)"),
        ((T, D), None, "(8, 32)"),
        ((2, T, D), (3, 5, D), "(3, 5, 32)"),
        ((2, T, D), (2, 5, 16), "(2, 5, 16)"),
    ],
)
def test_mha_wrong_shapes_raise_value_error(
    x_shape: tuple, kv_shape: tuple | None, named: str
) -> None:
    mha = MultiHeadAttention(D, H)
    kv = None if kv_shape is None else torch.zeros(kv_shape)
    with pytest.raises(ValueError, match="d_model|batch size") as info:
        mha(torch.zeros(x_shape), kv=kv)
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("n_heads", "n_kv_heads", "match"),
    [(5, None, "n_heads=5 must divide d_model=32"), (4, 3, "n_kv_heads=3")],
)
def test_mha_rejects_uneven_heads(
    n_heads: int, n_kv_heads: int | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(D, n_heads, n_kv_heads=n_kv_heads)
