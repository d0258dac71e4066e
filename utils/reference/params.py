"""Counting a decoder-only transformer's parameters from its configuration.

Chapter 01 counts the parameters of GPT-2, SmolLM2, TinyLlama and Phi-2 by hand. This
module holds their configurations, their true totals and the course's reference count.
"""

from dataclasses import dataclass
from typing import Literal

POSITION_KINDS = ("learned", "rope")
MLP_KINDS = ("gelu", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")
_SIZES = (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_ff",
    "max_seq_len",
)


@dataclass(frozen=True)
class ArchConfig:
    """The sizes and design choices that fix a decoder-only transformer's parameters.

    Every field is spelled out (no defaults), so that a configuration reads as the
    complete list of choices that decide the count.

    Raises:
        ValueError: an unknown choice for `positions`, `mlp` or `norm`, a size that is
            not positive, or head counts that do not divide evenly.

    Introduced in chapter 1.
    """

    vocab_size: int  # V, rows of the token embedding
    d_model: int  # D, width of the residual stream
    n_layers: int  # L, number of transformer blocks
    n_heads: int  # H, query heads; head_dim = d_model // n_heads
    n_kv_heads: int  # key/value heads (grouped-query attention); = n_heads for MHA
    d_ff: int  # hidden width of the MLP
    max_seq_len: int  # longest context; only sizes learned position embeddings
    positions: Literal["learned", "rope"]  # "learned": a table; "rope": no parameters
    mlp: Literal["gelu", "swiglu"]  # "gelu": up, down; "swiglu": gate, up, down
    norm: Literal["layernorm", "rmsnorm"]  # LayerNorm: weight + bias; RMSNorm: weight
    bias: bool  # the attention and MLP linear layers have biases
    parallel_block: bool  # one norm feeds attention and MLP side by side (Phi-2)
    tied_embeddings: bool  # the output head reuses the token embedding matrix
    lm_head_bias: bool  # the output head adds a bias of size vocab_size

    def __post_init__(self) -> None:
        _check_choice("positions", self.positions, POSITION_KINDS)
        _check_choice("mlp", self.mlp, MLP_KINDS)
        _check_choice("norm", self.norm, NORM_KINDS)
        for name in _SIZES:
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be at least 1, got {getattr(self, name)}"
                )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}; "
                "each head gets d_model // n_heads channels"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must be a multiple of "
                f"n_kv_heads={self.n_kv_heads}; each key/value head serves a group"
            )

    @property
    def head_dim(self) -> int:
        """Dh, the width of one attention head: d_model // n_heads."""
        return self.d_model // self.n_heads


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise a ValueError unless `value` is one of `allowed`."""
    if value not in allowed:
        options = " or ".join(repr(option) for option in allowed)
        raise ValueError(f"{name} must be {options}, got {value!r}")


def attention_parameters(config: ArchConfig) -> int:
    """Count the parameters of one attention layer: its q, k, v and output projections.

    Args:
        config: the architecture.

    Returns:
        The number of weights and biases in one block's attention.

    Introduced in chapter 1.
    """
    d = config.d_model
    q_width = config.n_heads * config.head_dim  # = D
    kv_width = config.n_kv_heads * config.head_dim  # smaller than D under GQA

    # q, k and v read the D-wide residual stream; o maps the heads back to D
    weights = d * q_width + 2 * d * kv_width + q_width * d
    biases = q_width + 2 * kv_width + d if config.bias else 0
    return weights + biases


def mlp_parameters(config: ArchConfig) -> int:
    """Count the parameters of one MLP: up (and gate, for SwiGLU) then down.

    Args:
        config: the architecture.

    Returns:
        The number of weights and biases in one block's MLP.

    Introduced in chapter 1.
    """
    d, f = config.d_model, config.d_ff
    n_in = 2 if config.mlp == "swiglu" else 1  # SwiGLU adds a gate beside the up matrix

    # n_in matrices widen D -> d_ff, one matrix narrows d_ff -> D
    weights = n_in * d * f + f * d
    biases = n_in * f + d if config.bias else 0
    return weights + biases


def norm_parameters(config: ArchConfig) -> int:
    """Count the parameters of one normalisation layer.

    Args:
        config: the architecture.

    Returns:
        d_model for RMSNorm (a scale per channel), 2 * d_model for LayerNorm (a scale
        and a shift per channel).

    Introduced in chapter 1.
    """
    per_channel = 2 if config.norm == "layernorm" else 1
    return per_channel * config.d_model


def parameter_breakdown(config: ArchConfig) -> dict[str, int]:
    """Split a model's parameter count into its components.

    Args:
        config: the architecture.

    Returns:
        Counts keyed by component: "token_embedding", "position_embedding",
        "attention" and "mlp" (all blocks together), "norms" (all blocks plus the final
        norm) and "lm_head" (0 when tied to the token embedding, plus any bias).

    Introduced in chapter 1.
    """
    v, d, n_layers = config.vocab_size, config.d_model, config.n_layers

    # 1) inputs: a D-wide vector per token id and, if learned, per position
    token_embedding = v * d
    position_embedding = config.max_seq_len * d if config.positions == "learned" else 0

    # 2) the blocks: attention, MLP and their norms, repeated n_layers times
    attention = n_layers * attention_parameters(config)
    mlp = n_layers * mlp_parameters(config)
    norms_per_block = 1 if config.parallel_block else 2

    # 3) one final norm after the last block
    norms = (n_layers * norms_per_block + 1) * norm_parameters(config)

    # 4) the output head: a tied head shares the token embedding's matrix
    lm_head = 0 if config.tied_embeddings else v * d
    lm_head += v if config.lm_head_bias else 0
    return {
        "token_embedding": token_embedding,
        "position_embedding": position_embedding,
        "attention": attention,
        "mlp": mlp,
        "norms": norms,
        "lm_head": lm_head,
    }


def count_parameters(config: ArchConfig) -> int:
    """Count every trainable parameter of a decoder-only transformer, shared ones once.

    Args:
        config: the architecture.

    Returns:
        The total, the sum of `parameter_breakdown(config)`.

    Introduced in chapter 1.
    """
    return sum(parameter_breakdown(config).values())


KNOWN_ARCHITECTURES: dict[str, ArchConfig] = {
    "GPT-2 small": ArchConfig(
        vocab_size=50257,
        d_model=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        d_ff=3072,
        max_seq_len=1024,
        positions="learned",
        mlp="gelu",
        norm="layernorm",
        bias=True,
        parallel_block=False,
        tied_embeddings=True,
        lm_head_bias=False,
    ),
    "SmolLM2-135M": ArchConfig(
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_ff=1536,
        max_seq_len=8192,
        positions="rope",
        mlp="swiglu",
        norm="rmsnorm",
        bias=False,
        parallel_block=False,
        tied_embeddings=True,
        lm_head_bias=False,
    ),
    "TinyLlama-1.1B": ArchConfig(
        vocab_size=32000,
        d_model=2048,
        n_layers=22,
        n_heads=32,
        n_kv_heads=4,
        d_ff=5632,
        max_seq_len=2048,
        positions="rope",
        mlp="swiglu",
        norm="rmsnorm",
        bias=False,
        parallel_block=False,
        tied_embeddings=False,
        lm_head_bias=False,
    ),
    # NOTE: Phi-2 rotates only the first 40 % of each head's channels (partial RoPE);
    # rotations have no parameters either way, so "rope" counts it right.
    "Phi-2": ArchConfig(
        vocab_size=51200,
        d_model=2560,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        d_ff=10240,
        max_seq_len=2048,
        positions="rope",
        mlp="gelu",
        norm="layernorm",
        bias=True,
        parallel_block=True,
        tied_embeddings=False,
        lm_head_bias=True,
    ),
}

# The totals the released models report (verified against `transformers` in the tests).
KNOWN_COUNTS: dict[str, int] = {
    "GPT-2 small": 124_439_808,
    "SmolLM2-135M": 134_515_008,
    "TinyLlama-1.1B": 1_100_048_384,
    "Phi-2": 2_779_683_840,
}
