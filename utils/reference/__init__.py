"""The course's own implementations of what the chapters build.

Each chapter writes a piece of an LLM by hand. The finished, tested version lives here:
later chapters import it instead of the learner's exercise answers, so a chapter runs
top to bottom even when earlier exercises are unsolved, and `utils.checks` compares
answers against it. Names match the chapter code, so the two can be diffed.
"""

from utils.reference.attention import (
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    repeat_kv,
    scaled_dot_product_attention,
)
from utils.reference.block import MLP, LayerNorm, RMSNorm, TransformerBlock
from utils.reference.bpe import (
    BPETokenizer,
    encode_with_merges,
    merge,
    most_frequent_pair,
    pair_counts,
    split_text,
)
from utils.reference.gpt import (
    GPT,
    GPTBlock,
    GPTConfig,
    gpt_config_from_hf,
    load_gpt2_weights,
)
from utils.reference.params import ArchConfig, count_parameters
from utils.reference.positions import apply_rope, rope_cos_sin, sinusoidal_positions
from utils.reference.sampling import (
    filter_top_k,
    filter_top_p,
    generate,
    sample_next_token,
)
from utils.reference.softmax import softmax

__all__ = [
    "ArchConfig",
    "BPETokenizer",
    "GPT",
    "GPTBlock",
    "GPTConfig",
    "LayerNorm",
    "MLP",
    "MultiHeadAttention",
    "RMSNorm",
    "TransformerBlock",
    "apply_rope",
    "causal_mask",
    "count_parameters",
    "encode_with_merges",
    "filter_top_k",
    "filter_top_p",
    "generate",
    "gpt_config_from_hf",
    "load_gpt2_weights",
    "merge",
    "most_frequent_pair",
    "padding_mask",
    "pair_counts",
    "repeat_kv",
    "rope_cos_sin",
    "sample_next_token",
    "scaled_dot_product_attention",
    "sinusoidal_positions",
    "softmax",
    "split_text",
]
