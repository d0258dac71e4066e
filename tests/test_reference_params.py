"""Tests of the parameter-count reference against the real `transformers` architectures.

Each model is built from a hand-written config on the meta device: no weights, no
network, and only a second or so per model.
"""

from functools import cache

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PhiConfig

from utils.checks.ch01 import TINY_CONFIGS
from utils.reference.params import (
    KNOWN_ARCHITECTURES,
    KNOWN_COUNTS,
    ArchConfig,
    count_parameters,
    parameter_breakdown,
)

TRANSFORMERS_CONFIGS = {
    "GPT-2 small": GPT2Config(
        vocab_size=50257,
        n_positions=1024,
        n_embd=768,
        n_layer=12,
        n_head=12,
        n_inner=3072,
    ),
    "SmolLM2-135M": LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "TinyLlama-1.1B": LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    ),
    "Phi-2": PhiConfig(
        vocab_size=51200,
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=2048,
        partial_rotary_factor=0.4,
        tie_word_embeddings=False,
    ),
    "tiny GPT, untied head": GPT2Config(
        vocab_size=97,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=128,
        tie_word_embeddings=False,
    ),
    "tiny LLaMA with biases": LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
    ),
}
ALL_CONFIGS = {**KNOWN_ARCHITECTURES, **TINY_CONFIGS}

# which component a transformers parameter belongs to, by a piece of its name
COMPONENTS = {
    "wte": "token_embedding",
    "embed_tokens": "token_embedding",
    "wpe": "position_embedding",
    "attn": "attention",
    "mlp": "mlp",
    "ln_": "norms",
    "norm": "norms",
    "lm_head": "lm_head",
}


@cache
def _transformers_counts(name: str) -> dict[str, int]:
    """Parameter counts per component of the real architecture, shared weights once."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(TRANSFORMERS_CONFIGS[name])
    counts = dict.fromkeys(parameter_breakdown(ALL_CONFIGS[name]), 0)
    for param_name, param in model.named_parameters():  # tied weights appear once
        part = next(c for key, c in COMPONENTS.items() if key in param_name)
        counts[part] += param.numel()
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    return counts


@pytest.mark.parametrize("name", list(KNOWN_COUNTS))
def test_known_counts_match_transformers(name: str) -> None:
    assert KNOWN_COUNTS[name] == sum(_transformers_counts(name).values())


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_count_parameters_matches_transformers(name: str) -> None:
    assert count_parameters(ALL_CONFIGS[name]) == sum(
        _transformers_counts(name).values()
    )


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_parameter_breakdown_matches_transformers_by_component(name: str) -> None:
    assert parameter_breakdown(ALL_CONFIGS[name]) == _transformers_counts(name)


def test_known_architectures_cover_the_chapter_models() -> None:
    expected = ["GPT-2 small", "SmolLM2-135M", "TinyLlama-1.1B", "Phi-2"]
    assert list(KNOWN_ARCHITECTURES) == expected
    assert list(KNOWN_COUNTS) == expected
    assert KNOWN_ARCHITECTURES["Phi-2"].head_dim == 80


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"positions": "alibi"}, "positions must be 'learned' or 'rope'"),
        ({"norm": "batchnorm"}, "norm must be 'layernorm' or 'rmsnorm'"),
        ({"d_model": 770}, "divisible by n_heads"),
        ({"n_kv_heads": 5}, "multiple of n_kv_heads"),
        ({"d_ff": 0}, "d_ff must be at least 1"),
    ],
)
def test_arch_config_rejects_invalid_fields(changes: dict, message: str) -> None:
    fields = {**vars(KNOWN_ARCHITECTURES["GPT-2 small"]), **changes}
    with pytest.raises(ValueError, match=message):
        ArchConfig(**fields)
