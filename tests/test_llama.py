"""Tests of the LLaMA-style decoder of chapter 09 (`utils.reference.llama`).

Fast tests run a tiny random `transformers` LlamaForCausalLM and our copy of it; the
slow ones load SmolLM2-135M-Instruct once per module and compare logits and greedy
tokens with `transformers`.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from utils.reference.attention import repeat_kv
from utils.reference.llama import (
    GroupedQueryAttention,
    LlamaConfig,
    SwiGLU,
    from_hf,
    generate,
    kv_bytes_per_token,
    llama_config_from_hf,
)
from utils.reference.positions import rope_cos_sin


def tiny_hf(n_kv_heads: int = 2, context: int = 64, tied: bool = True):
    """A random 2-layer LLaMA: D=32, H=4, V=97."""
    torch.manual_seed(0)
    config = HFLlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=context,
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm weights, so that a mix-up shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def test_llama_config_from_hf_reads_sizes():
    config = llama_config_from_hf(tiny_hf().config)
    assert (config.d_model, config.n_heads, config.n_kv_heads) == (32, 4, 2)
    assert (config.head_dim, config.d_ff, config.n_layers) == (8, 64, 2)
    assert (config.rope_theta, config.context_length) == (1000.0, 64)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("tied", [True, False])
def test_llama_logits_match_transformers_tiny(n_kv_heads, tied):
    hf = tiny_hf(n_kv_heads, tied=tied)
    ours = from_hf(hf)
    idx = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_llama_head_is_tied_to_embedding():
    ours = from_hf(tiny_hf())
    assert ours.lm_head.weight is ours.tok_emb.weight


def test_llama_is_causal():
    ours = from_hf(tiny_hf())
    idx = torch.randint(0, 97, (1, 10))
    changed = idx.clone()
    changed[0, 6] = (idx[0, 6] + 1) % 97
    with torch.no_grad():
        a, b = ours(idx), ours(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_swiglu_matches_formula():
    torch.manual_seed(0)
    mlp = SwiGLU(8, 12)
    x = torch.randn(2, 3, 8)
    gate_w, up_w = mlp.gate_up.weight.split(12)
    expected = mlp.down(F.silu(x @ gate_w.T) * (x @ up_w.T))
    torch.testing.assert_close(mlp(x), expected)


def test_gqa_matches_repeat_kv_attention():
    torch.manual_seed(0)
    attn = GroupedQueryAttention(d_model=24, n_heads=6, n_kv_heads=2, head_dim=4)
    x = torch.randn(2, 5, 24)
    cos, sin = rope_cos_sin(5, 4)
    q, k, v = attn.qkv(x).split(attn.sizes, dim=-1)
    q = q.view(2, 5, 6, 4).transpose(1, 2)
    k = k.view(2, 5, 2, 4).transpose(1, 2)
    v = v.view(2, 5, 2, 4).transpose(1, 2)
    from utils.reference.positions import apply_rope

    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = repeat_kv(k, 3), repeat_kv(v, 3)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = attn.out_proj(out.transpose(1, 2).reshape(2, 5, 24))
    torch.testing.assert_close(attn(x, cos, sin), expected)


def test_llama_config_rejects_bad_groups():
    with pytest.raises(ValueError, match="must divide n_heads"):
        LlamaConfig(n_heads=9, n_kv_heads=2)


@pytest.mark.parametrize(
    ("sizes", "error", "match"),
    [
        ({"n_kv_heads": 0}, ValueError, r"n_kv_heads \(H_kv.*at least 1, got 0"),
        ({"n_heads": -3}, ValueError, "n_heads .* at least 1"),
        ({"d_model": 0}, ValueError, "d_model"),
        ({"vocab_size": 0}, ValueError, "vocab_size"),
        ({"d_ff": 1536.0}, TypeError, "d_ff .* whole number, got float"),
        ({"rope_theta": 0.0}, ValueError, "rope_theta must be > 0"),
    ],
)
def test_llama_config_rejects_bad_sizes(sizes, error, match):
    with pytest.raises(error, match=match):
        LlamaConfig(**sizes)


@pytest.mark.parametrize(
    ("idx", "match"),
    [
        (torch.zeros(5, dtype=torch.long), r"\(B, T\) integer"),
        (torch.zeros(1, 5), r"\(B, T\) integer"),
        (torch.zeros(1, 5, dtype=torch.bool), r"\(B, T\) integer"),
        (torch.zeros(1, 65, dtype=torch.long), "exceed the limit of 64"),
        (torch.zeros(1, 0, dtype=torch.long), "no tokens"),
        (torch.zeros(0, 4, dtype=torch.long), "no tokens"),
        (torch.tensor([[1, 97]]), r"0\.\.96 .* from 1 to 97"),
        (torch.tensor([[5, -100]]), "from -100 to 5"),
    ],
)
def test_llama_rejects_bad_input(idx, match):
    with pytest.raises(ValueError, match=match):
        from_hf(tiny_hf())(idx)


def test_generate_rejects_too_long():
    with pytest.raises(ValueError, match="exceeds the context of 64"):
        generate(from_hf(tiny_hf()), torch.zeros(1, 60, dtype=torch.long), 5)


@pytest.mark.parametrize(
    ("max_new_tokens", "error", "match"),
    [
        (-3, ValueError, "must be >= 0, got -3"),
        (3.0, TypeError, "whole number, got float 3.0"),
        (True, TypeError, "whole number, got bool"),
    ],
)
def test_generate_rejects_bad_max_new_tokens(max_new_tokens, error, match):
    with pytest.raises(error, match=match):
        generate(
            from_hf(tiny_hf()), torch.zeros(1, 4, dtype=torch.long), max_new_tokens
        )


def test_generate_zero_new_tokens_returns_the_prompt():
    idx = torch.randint(0, 97, (2, 4))
    assert torch.equal(generate(from_hf(tiny_hf()), idx, 0), idx)


def test_generate_rejects_out_of_vocab_prompt():
    with pytest.raises(ValueError, match="token ids must lie in 0..96"):
        generate(from_hf(tiny_hf()), torch.tensor([[3, 200]]), 2)


def test_swiglu_rejects_wrong_width():
    with pytest.raises(ValueError, match=r"d_model=8, got shape \(2, 3, 12\)"):
        SwiGLU(8, 12)(torch.randn(2, 3, 12))


def test_kv_bytes_per_token_smollm2():
    config = LlamaConfig()
    assert kv_bytes_per_token(config) == 2 * 30 * 3 * 64 * 4 == 46_080
    assert kv_bytes_per_token(config, n_kv_heads=9) == 3 * 46_080
    for bad, match in [(0, ">= 1, got 0"), (2.0, ">= 1, got 2.0"), (2, "divide")]:
        with pytest.raises(ValueError, match=match):
            kv_bytes_per_token(config, n_kv_heads=bad)


def test_generate_greedy_matches_transformers_tiny():
    hf = tiny_hf()
    idx = torch.randint(0, 97, (2, 4))
    ours = generate(from_hf(hf), idx, 12)
    theirs = hf.generate(
        idx, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert torch.equal(ours, theirs)


def test_generate_sampling_is_seeded_and_cache_free_agrees():
    ours = from_hf(tiny_hf())
    idx = torch.randint(0, 97, (1, 3))
    runs = [
        generate(
            ours,
            idx,
            10,
            temperature=1.0,
            top_k=20,
            use_cache=cached,
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        for cached in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (1, 13)


# --- SmolLM2 (slow: one load per module)

PROMPTS = ["The capital of France is", "Once upon a time, there", "def add(a, b):"]


@pytest.fixture(scope="module")
def smollm2():
    from utils.models import load_smollm2

    hf, tokenizer = load_smollm2()
    return hf, from_hf(hf), tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_llama_logits_match_smollm2(smollm2, prompt):
    hf, ours, tokenizer = smollm2
    idx = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_llama_greedy_tokens_match_smollm2(smollm2):
    hf, ours, tokenizer = smollm2
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    idx = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.inference_mode():
        theirs = hf.generate(idx, max_new_tokens=16, do_sample=False)
    ours_ids = generate(ours, idx, 16, eos_token_id=tokenizer.eos_token_id)
    assert torch.equal(ours_ids, theirs)
    assert "Paris" in tokenizer.decode(ours_ids[0, idx.size(1) :])
