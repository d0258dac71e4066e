"""Tests of the reference block: hand-written norms, the MLP and the pre-norm block."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.reference.attention import causal_mask
from utils.reference.block import MLP, LayerNorm, RMSNorm, TransformerBlock

D, H, T = 32, 4, 8  # the course's tiny sizes: d_model, heads, seq_len


def _randomise(module: nn.Module) -> nn.Module:
    """Give every parameter random values, so that no weight is a neutral 1 or 0."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5 + 0.1)
    return module


def _torch_encoder_layer(block: TransformerBlock) -> nn.TransformerEncoderLayer:
    """PyTorch's pre-norm encoder layer holding the same weights as `block`."""
    d_ff = block.mlp.up.out_features
    theirs = nn.TransformerEncoderLayer(
        D,
        H,
        dim_feedforward=d_ff,
        dropout=0.0,
        activation=lambda t: F.gelu(t, approximate="tanh"),
        batch_first=True,
        norm_first=True,
    )
    attn = block.attn
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    with torch.no_grad():
        theirs.self_attn.in_proj_weight.copy_(
            torch.cat([p.weight for p in projections])
        )
        theirs.self_attn.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
    theirs.self_attn.out_proj.load_state_dict(attn.out_proj.state_dict())
    theirs.linear1.load_state_dict(block.mlp.up.state_dict())
    theirs.linear2.load_state_dict(block.mlp.down.state_dict())
    theirs.norm1.load_state_dict(block.norm1.state_dict())
    theirs.norm2.load_state_dict(block.norm2.state_dict())
    return theirs.eval()


# --- norms


@pytest.mark.parametrize("shape", [(D,), (2, T, D), (3, 2, T, D)])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    ours = _randomise(LayerNorm(D, bias=bias))
    theirs = nn.LayerNorm(D, bias=bias)
    theirs.load_state_dict(ours.state_dict())
    x = 3 * torch.randn(shape) + 1
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(D,), (2, T, D), (3, 2, T, D)])
def test_rmsnorm_matches_torch(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    ours = _randomise(RMSNorm(D))
    theirs = nn.RMSNorm(D, eps=1e-6)
    theirs.load_state_dict(ours.state_dict())
    x = 3 * torch.randn(shape) + 1
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=1e-6)


def test_norms_have_the_expected_parameters() -> None:
    assert set(LayerNorm(D).state_dict()) == {"weight", "bias"}
    assert set(LayerNorm(D, bias=False).state_dict()) == {"weight"}
    assert set(RMSNorm(D).state_dict()) == {"weight"}


@pytest.mark.parametrize("norm", [LayerNorm(D), RMSNorm(D)])
def test_norms_reject_wrong_width(norm: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"d_model=32, got shape \(2, 8, 16\)"):
        norm(torch.zeros(2, T, 16))


# --- MLP


@pytest.mark.parametrize(
    ("activation", "fn"),
    [
        ("gelu", lambda t: F.gelu(t, approximate="tanh")),
        ("gelu_exact", F.gelu),
        ("relu", F.relu),
        ("silu", F.silu),
    ],
)
def test_mlp_is_up_activation_down(activation: str, fn) -> None:
    torch.manual_seed(0)
    mlp = MLP(D, 4 * D, activation=activation)
    x = torch.randn(2, T, D)
    expected = mlp.down(fn(mlp.up(x)))
    torch.testing.assert_close(mlp(x), expected)


def test_mlp_rejects_unknown_activation() -> None:
    with pytest.raises(ValueError, match="gelu, gelu_exact, relu, silu"):
        MLP(D, 4 * D, activation="swish")


# --- the transformer block


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_block_keeps_shape_with_finite_outputs_and_grads(norm: str) -> None:
    torch.manual_seed(0)
    block = TransformerBlock(D, H, norm=norm)
    x = torch.randn(2, T, D, requires_grad=True)
    out = block(x, is_causal=True)
    assert out.shape == (2, T, D)
    assert torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, parameter in block.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name


def test_block_defaults_d_ff_to_four_times_d_model() -> None:
    block = TransformerBlock(D, H)
    assert block.mlp.up.out_features == 4 * D
    assert [name for name, _ in block.named_children()] == [
        "norm1",
        "attn",
        "norm2",
        "mlp",
    ]


@pytest.mark.parametrize("masking", ["none", "causal"])
def test_block_matches_torch_pre_norm_encoder_layer(masking: str) -> None:
    torch.manual_seed(0)
    block = _randomise(TransformerBlock(D, H, d_ff=64)).eval()
    theirs = _torch_encoder_layer(block)
    x = torch.randn(2, T, D)
    mask = causal_mask(T) if masking == "causal" else None
    with torch.no_grad():
        expected = theirs(x, src_mask=mask)
        torch.testing.assert_close(block(x, mask=mask), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t", [0, 3, T - 2])
def test_block_causal_ignores_the_future(t: int) -> None:
    torch.manual_seed(0)
    block = TransformerBlock(D, H).eval()
    x = torch.randn(2, T, D)
    x2 = x.clone()
    x2[:, t + 1] = torch.randn(D)
    out, out2 = block(x, is_causal=True), block(x2, is_causal=True)
    torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1])
    assert not torch.allclose(out2[:, t + 1], out[:, t + 1])


def test_block_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(D, H, dropout=0.3)
    x = torch.randn(2, T, D)
    block.eval()
    first, second = block(x), block(x)
    torch.testing.assert_close(first, second)
    block.train()
    assert not torch.allclose(block(x), first)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_block_with_zeroed_branch_outputs_is_identity(norm: str) -> None:
    torch.manual_seed(0)
    block = _randomise(TransformerBlock(D, H, norm=norm))
    for layer in (block.attn.out_proj, block.mlp.down):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    x = torch.randn(2, T, D)
    torch.testing.assert_close(block(x, is_causal=True), x)


def test_block_rejects_unknown_norm_and_wrong_width() -> None:
    with pytest.raises(ValueError, match="layernorm, rmsnorm"):
        TransformerBlock(D, H, norm="batchnorm")
    with pytest.raises(ValueError, match=r"got shape \(2, 8, 16\)"):
        TransformerBlock(D, H)(torch.zeros(2, T, 16))
