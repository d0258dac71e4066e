"""Tests of the reference GPT: equivalence with `transformers` GPT-2 on copied weights,
the tied head, the loss, dropout, initialisation, parameter counts, causality, and the
fused fast paths of attention and LayerNorm.

The GPT-2 models are built from a config (never downloaded), so the tests run offline.
"""

import io
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from utils.reference.attention import MultiHeadAttention
from utils.reference.block import LayerNorm
from utils.reference.gpt import (
    GPT,
    GPTConfig,
    gpt_config_from_hf,
    load_gpt2_weights,
)
from utils.reference.params import ArchConfig, count_parameters

D, H, L, V, T = 32, 4, 2, 97, 8  # the course's tiny sizes


@pytest.fixture
def config() -> GPTConfig:
    return GPTConfig(vocab_size=V, context_length=T, n_layers=L, n_heads=H, d_model=D)


def _hf_gpt2(**overrides):
    """A tiny random `transformers` GPT-2 in eval mode, dropout off."""
    from transformers import GPT2Config, GPT2LMHeadModel

    settings = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16)
    settings.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    settings.update(bos_token_id=99, eos_token_id=99)
    settings.update(overrides)
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**settings)).eval()


def _ids(batch_size: int = 2, seq_len: int = T, vocab_size: int = V) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch_size, seq_len))


def _assert_tied(model: GPT) -> None:
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()


# --- equivalence with transformers GPT-2


@pytest.mark.parametrize("fused", [True, False])
def test_gpt_matches_hf_gpt2_logits(fused: bool) -> None:
    hf = _hf_gpt2()
    ours = GPT(GPTConfig(**_sizes(hf), fused=fused))
    load_gpt2_weights(ours, hf).eval()
    idx = _ids(3, 16, 100)
    with torch.no_grad():
        expected = hf(idx).logits
        actual, _ = ours(idx)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def _sizes(hf) -> dict:
    """The GPTConfig sizes of a transformers GPT-2."""
    c = hf.config
    return dict(
        vocab_size=c.vocab_size,
        context_length=c.n_positions,
        n_layers=c.n_layer,
        n_heads=c.n_head,
        d_model=c.n_embd,
    )


def test_gpt_from_hf_gpt2_matches_loss_and_keeps_tie() -> None:
    hf = _hf_gpt2()
    ours = GPT.from_hf_gpt2(hf).eval()
    assert ours.config == gpt_config_from_hf(hf.config) == GPTConfig(**_sizes(hf))
    _assert_tied(ours)
    idx = _ids(2, 16, 100)
    with torch.no_grad():
        expected = hf(idx, labels=idx).loss  # transformers shifts the labels itself
        _, loss = ours(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"activation_function": "relu"}, "activation_function='relu'"),
        ({"n_inner": 64}, "n_inner=64"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings=False"),
    ],
)
def test_gpt_from_hf_rejects_other_architectures(override: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GPT.from_hf_gpt2(_hf_gpt2(**override))


def test_load_gpt2_weights_rejects_other_sizes() -> None:
    ours = GPT(GPTConfig(vocab_size=100, context_length=8, n_layers=2, n_heads=2))
    with pytest.raises(ValueError, match="configs differ.*from_hf_gpt2"):
        load_gpt2_weights(ours, _hf_gpt2())


# --- tied head and checkpoints


def test_gpt_head_is_tied_to_token_embedding(config: GPTConfig) -> None:
    model = GPT(config)
    _assert_tied(model)
    with torch.no_grad():
        model.tok_emb.weight[3].fill_(1.5)
    assert torch.all(model.lm_head.weight[3] == 1.5)


def test_gpt_state_dict_round_trip_keeps_tie(config: GPTConfig) -> None:
    torch.manual_seed(0)
    saved = GPT(config).eval()
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    torch.manual_seed(1)
    loaded = GPT(config).eval()
    loaded.load_state_dict(state)
    _assert_tied(loaded)
    idx = _ids()
    torch.testing.assert_close(loaded(idx)[0], saved(idx)[0], atol=0, rtol=0)


# --- forward: loss, dropout, causality, training


def test_gpt_forward_shapes_and_loss(config: GPTConfig) -> None:
    torch.manual_seed(0)
    model = GPT(config)
    idx, targets = _ids(3), _ids(3)
    logits, loss = model(idx)
    assert logits.shape == (3, T, V)
    assert loss is None

    targets[0, :3] = -100  # ignored positions, as in loss masking
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert loss.dim() == 0


def test_gpt_dropout_only_in_training(config: GPTConfig) -> None:
    torch.manual_seed(0)
    model = GPT(replace(config, dropout=0.5))
    idx = _ids()
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0], atol=0, rtol=0)
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])


def test_gpt_is_causal(config: GPTConfig) -> None:
    torch.manual_seed(0)
    model = GPT(config).eval()
    idx = _ids(1)
    changed = idx.clone()
    changed[0, 5] = (changed[0, 5] + 1) % V
    before, after = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=0, rtol=0)
    assert not torch.allclose(after[:, 5:], before[:, 5:])


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_gpt_overfits_one_batch(config: GPTConfig, positions: str) -> None:
    torch.manual_seed(0)
    model = GPT(replace(config, positions=positions))
    idx, targets = _ids(2), _ids(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1  # from about ln(97) = 4.6


def test_gpt_fused_matches_step_by_step(config: GPTConfig) -> None:
    torch.manual_seed(0)
    fused = GPT(config)
    plain = GPT(replace(config, fused=False))
    plain.load_state_dict(fused.state_dict())
    idx, targets = _ids(), _ids()
    _, loss_fused = fused(idx, targets)
    _, loss_plain = plain(idx, targets)
    loss_fused.backward()
    loss_plain.backward()
    torch.testing.assert_close(loss_fused, loss_plain)
    for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_gpt_store_weights_returns_causal_attention(config: GPTConfig) -> None:
    torch.manual_seed(0)
    model = GPT(config).eval()
    idx = _ids()
    fast, _ = model(idx)
    attn = model.blocks[0].attn
    attn.store_weights = True  # the step-by-step path, which keeps the weights
    slow, _ = model(idx)
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    assert attn.last_weights.shape == (2, H, T, T)
    assert torch.all(attn.last_weights.triu(diagonal=1) == 0)


# --- input checks


@pytest.mark.parametrize(
    ("idx", "match"),
    [
        (torch.randn(2, T), "token ids.*float32"),
        (torch.zeros(T, dtype=torch.long), r"shape \(B, T\).*idx\[None\]"),
        (torch.zeros(2, 0, dtype=torch.long), r"shape \(B, T\)"),
        (torch.zeros(2, T + 1, dtype=torch.long), "T=9 exceeds context_length=8"),
        (torch.full((2, T), V), r"\[0, vocab_size=97\)"),
        (torch.full((2, T), -1), r"\[0, vocab_size=97\)"),
    ],
)
def test_gpt_rejects_bad_ids(config: GPTConfig, idx: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GPT(config)(idx)


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (torch.zeros(2, T - 1, dtype=torch.long), "shape of idx"),
        (torch.full((2, T), V), "targets must lie in"),
        (torch.zeros(2, T), "token ids.*float32"),
    ],
)
def test_gpt_rejects_bad_targets(
    config: GPTConfig, targets: torch.Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        GPT(config)(_ids(), targets)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"n_heads": 5}, "n_heads=5 must divide d_model=32"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"vocab_size": 0}, "vocab_size must be a whole number >= 1"),
        ({"mlp_ratio": 0}, "mlp_ratio must be a whole number >= 1"),
        ({"mlp_ratio": 1.5}, "mlp_ratio must be a whole number >= 1"),
        ({"activation": "swish"}, "unknown activation 'swish'"),
    ],
)
def test_gpt_config_rejects_bad_values(
    config: GPTConfig, override: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        replace(config, **override)


# --- initialisation and parameter counts


def test_gpt_init_follows_gpt2() -> None:
    torch.manual_seed(0)
    n_layers = 4
    model = GPT(GPTConfig(vocab_size=512, context_length=64, n_layers=n_layers))
    residual_std = 0.02 / (2 * n_layers) ** 0.5
    block = model.blocks[0]
    stds = {
        "tok_emb": (model.tok_emb.weight, 0.02),
        "pos_emb": (model.pos_emb.weight, 0.02),
        "q_proj": (block.attn.q_proj.weight, 0.02),
        "mlp.up": (block.mlp.up.weight, 0.02),
        "out_proj": (block.attn.out_proj.weight, residual_std),
        "mlp.down": (block.mlp.down.weight, residual_std),
    }
    for name, (weight, std) in stds.items():
        assert weight.std().item() == pytest.approx(std, rel=0.05), name
        assert abs(weight.mean().item()) < std / 10, name
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(parameter == 0), name
        if "norm" in name and name.endswith("weight"):
            assert torch.all(parameter == 1), name


@pytest.mark.parametrize("bias", [True, False])
def test_gpt_parameter_count_matches_arch_config(bias: bool) -> None:
    sizes = dict(vocab_size=V, context_length=16, n_layers=3, n_heads=H, d_model=D)
    config = GPTConfig(**sizes, bias=bias)
    model = GPT(config)
    arch = ArchConfig(
        vocab_size=V,
        d_model=D,
        n_layers=3,
        n_heads=H,
        n_kv_heads=H,
        d_ff=4 * D,
        max_seq_len=16,
        positions="learned",
        mlp="gelu",
        norm="layernorm",
        bias=bias,
        parallel_block=False,
        tied_embeddings=True,
        lm_head_bias=False,
    )
    # NOTE: ArchConfig counts LayerNorm biases always; bias=False drops 2 D per norm
    norm_biases = 0 if bias else (2 * 3 + 1) * D
    assert model.num_parameters() == count_parameters(arch) - norm_biases
    assert config.arch_config() == arch
    embeddings = V * D + 16 * D
    assert model.num_parameters(exclude_embeddings=True) == (
        model.num_parameters() - embeddings
    )


@pytest.mark.parametrize("mlp_ratio", [1, 2, 4])
def test_gpt_mlp_ratio_sets_the_mlp_width(mlp_ratio: int) -> None:
    sizes = dict(vocab_size=V, context_length=16, n_layers=2, n_heads=H, d_model=D)
    config = GPTConfig(**sizes, mlp_ratio=mlp_ratio)
    model = GPT(config)
    assert config.d_ff == mlp_ratio * D
    assert model.blocks[0].mlp.up.weight.shape == (mlp_ratio * D, D)
    assert config.arch_config().d_ff == mlp_ratio * D
    assert model.num_parameters() == count_parameters(config.arch_config())


# --- the fused paths of chapter 4's modules


@pytest.mark.parametrize("n_kv_heads", [H, 2])
@pytest.mark.parametrize("is_causal", [True, False])
def test_fused_attention_matches_step_by_step(n_kv_heads: int, is_causal: bool) -> None:
    torch.manual_seed(0)
    plain = MultiHeadAttention(D, H, n_kv_heads=n_kv_heads).eval()
    fused = MultiHeadAttention(D, H, n_kv_heads=n_kv_heads, fused=True).eval()
    fused.load_state_dict(plain.state_dict())
    x, kv = torch.randn(2, T, D), torch.randn(2, T + 3, D)
    expected = plain(x, is_causal=is_causal)
    torch.testing.assert_close(fused(x, is_causal=is_causal), expected)
    # cross-attention and a causal call with S > T use the step-by-step path
    torch.testing.assert_close(
        fused(x, kv=kv, is_causal=True), plain(x, kv=kv, is_causal=True)
    )


def test_fused_attention_runs_hooks_on_projections() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, fused=True).eval()
    calls = []
    mha.q_proj.register_forward_hook(lambda module, args, out: calls.append(1))
    mha(torch.randn(2, T, D), is_causal=True)
    assert calls == [1]  # a hook (or a LoRA wrapper) turns the one-matmul path off


@pytest.mark.parametrize("bias", [True, False])
def test_fused_layernorm_matches_step_by_step(bias: bool) -> None:
    torch.manual_seed(0)
    plain = LayerNorm(D, bias=bias)
    fused = LayerNorm(D, bias=bias, fused=True)
    with torch.no_grad():
        plain.weight.normal_()
    fused.load_state_dict(plain.state_dict())
    x = 3 * torch.randn(2, T, D) + 1
    torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="d_model=32"):
        fused(torch.randn(2, T, D + 1))


# --- rotary positions (positions="rope")


@pytest.fixture
def rope_config(config: GPTConfig) -> GPTConfig:
    return replace(config, positions="rope")


def test_rope_gpt_has_no_position_table(rope_config: GPTConfig) -> None:
    model = GPT(rope_config)
    learned = GPT(replace(rope_config, positions="learned"))
    assert model.pos_emb is None
    assert model.num_parameters() == learned.num_parameters() - T * D
    assert model.num_parameters() == count_parameters(rope_config.arch_config())
    assert model.num_parameters(exclude_embeddings=True) == (
        model.num_parameters() - V * D
    )
    assert not any("rope" in key for key in model.state_dict())  # rebuilt, not saved


def test_rope_gpt_block_rotates_queries_and_keys(rope_config: GPTConfig) -> None:
    from utils.reference.attention import scaled_dot_product_attention
    from utils.reference.positions import apply_rope, rope_cos_sin

    torch.manual_seed(0)
    model = GPT(replace(rope_config, n_layers=1)).eval()
    idx = _ids()
    block, attn = model.blocks[0], model.blocks[0].attn
    cos, sin = rope_cos_sin(T, D // H)

    # the same computation written out with chapter 2-4 pieces
    x = model.tok_emb(idx)  # (B, T, D), no position table
    h = block.norm1(x)
    q, k, v = (
        proj(h).view(2, T, H, D // H).transpose(1, 2)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
    )  # (B, H, T, Dh) each
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out, _ = scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + attn.out_proj(out.transpose(1, 2).reshape(2, T, D))
    x = x + block.mlp(block.norm2(x))
    expected = model.lm_head(model.norm_f(x))

    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], expected, atol=1e-5, rtol=1e-5)


def test_rope_gpt_is_causal_and_fused_matches_plain(rope_config: GPTConfig) -> None:
    torch.manual_seed(0)
    fused = GPT(rope_config).eval()
    plain = GPT(replace(rope_config, fused=False)).eval()
    plain.load_state_dict(fused.state_dict())
    idx = _ids(1)
    changed = idx.clone()
    changed[0, 5] = (changed[0, 5] + 1) % V
    before, after = fused(idx)[0], fused(changed)[0]
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=0, rtol=0)
    torch.testing.assert_close(plain(idx)[0], before, atol=1e-5, rtol=1e-5)


def test_rotate_equals_apply_rope() -> None:
    from utils.reference.gpt import rotate
    from utils.reference.positions import apply_rope, rope_cos_sin

    cos, sin = rope_cos_sin(T, 16)
    signed_sin = torch.cat((-sin[:, :8], sin[:, 8:]), dim=-1)
    x = torch.randn(2, H, T, 16)
    torch.testing.assert_close(rotate(x, cos, signed_sin), apply_rope(x, cos, sin))


def test_load_gpt2_weights_rejects_rope_model() -> None:
    hf = _hf_gpt2()
    ours = GPT(GPTConfig(**_sizes(hf), positions="rope"))
    with pytest.raises(ValueError, match="configs differ"):
        load_gpt2_weights(ours, hf)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"positions": "alibi"}, "unknown positions 'alibi'"),
        ({"positions": "rope", "n_heads": 32, "d_model": 96}, "even head_dim"),
    ],
)
def test_gpt_config_rejects_bad_positions(
    config: GPTConfig, override: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        replace(config, **override)
