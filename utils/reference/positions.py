"""Telling a transformer where each token is: sinusoidal and rotary positions.

Attention by itself ignores order. The original Transformer adds a fixed pattern of
sines and cosines to each token's embedding. Rotary position embedding (RoPE), used by
LLaMA and SmolLM2, instead rotates queries and keys by angles proportional to their
positions, so that the score between two tokens depends on how far apart they are.
"""

import torch


def sinusoidal_positions(
    seq_len: int, d_model: int, base: float = 10000.0
) -> torch.Tensor:
    """The fixed position encodings of "Attention Is All You Need" (2017).

    Channel pair (2i, 2i+1) at position p holds sin(p * w_i) and cos(p * w_i), with
    frequency w_i = base^(-2i / D): fast-turning pairs first, slow ones last.

    Args:
        seq_len: T, the number of positions (0, 1, ..., T-1).
        d_model: D, the embedding width; must be even.
        base: sets the slowest frequency; the paper uses 10000.

    Returns:
        A float32 tensor of shape (T, D), to be added to the token embeddings.

    Raises:
        ValueError: `d_model` is odd or not positive, or `seq_len` is negative.

    Introduced in chapter 2.
    """
    _check_even("d_model", d_model)
    _check_length(seq_len)
    positions = torch.arange(seq_len, dtype=torch.float32)  # (T,)
    frequencies = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    angles = torch.outer(positions, frequencies)  # (T,), (D/2,) -> (T, D/2)

    encoding = torch.empty(seq_len, d_model)  # (T, D)
    encoding[:, 0::2] = torch.sin(angles)  # even channels
    encoding[:, 1::2] = torch.cos(angles)  # odd channels
    return encoding


def rope_cos_sin(
    seq_len: int, head_dim: int, theta: float = 10000.0, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosines and sines that rotary position embedding rotates by.

    Channel i and channel i + Dh/2 form a pair that turns by the angle p * w_i at
    position p, with w_i = theta^(-2i / Dh). Both channels of a pair need the same
    angle, so the Dh/2 angles are repeated: [angles, angles]. This is the layout of
    Hugging Face LLaMA models, computed in float32 in the same order as theirs.

    Args:
        seq_len: T, the number of positions.
        head_dim: Dh, the width of one attention head; must be even.
        theta: the base of the frequencies; 10000 in LLaMA 1 and 2, 1e5 in SmolLM2.
        offset: the position of the first row, e.g. the number of cached tokens.

    Returns:
        `(cos, sin)`, each float32 of shape (T, Dh), for positions offset..offset+T-1.

    Raises:
        ValueError: `head_dim` is odd or not positive, or `seq_len` is negative.

    Introduced in chapter 2.
    """
    _check_even("head_dim", head_dim)
    _check_length(seq_len)
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (Dh/2,): w_i
    positions = torch.arange(offset, offset + seq_len, dtype=torch.float32)  # (T,)
    angles = positions[:, None] * inv_freq[None, :]  # (T, 1) * (1, Dh/2) -> (T, Dh/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, Dh/2) -> (T, Dh)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys by their positions' angles ("rotate half" pairing).

    With x1 = x[..., :Dh/2] and x2 = x[..., Dh/2:], each pair (x1_i, x2_i) turns by its
    angle a: (x1 cos a - x2 sin a, x2 cos a + x1 sin a). This pairs channel i with
    channel i + Dh/2, as Hugging Face LLaMA models (and SmolLM2's weights) expect; the
    RoPE paper pairs neighbours (2i, 2i+1), which gives other numbers for the same
    weights.

    Args:
        x: queries or keys of shape (..., T, Dh), e.g. (B, H, T, Dh).
        cos: (T, Dh) cosines from `rope_cos_sin`.
        sin: (T, Dh) sines from `rope_cos_sin`.

    Returns:
        The rotated tensor, same shape as `x`; each vector keeps its length.

    Raises:
        ValueError: Dh is odd, or `cos`/`sin` do not end in (T, Dh).

    Introduced in chapter 2.
    """
    _check_even("the last dim of x (head_dim)", x.size(-1))
    if cos.shape != sin.shape or cos.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"cos and sin must have shape (T, Dh) = {tuple(x.shape[-2:])} to match x "
            f"of shape {tuple(x.shape)}, got {tuple(cos.shape)} and "
            f"{tuple(sin.shape)}; build them with rope_cos_sin(T, Dh)"
        )
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]  # (..., T, Dh) -> 2 x (..., T, Dh/2)
    rotated = torch.cat((-x2, x1), dim=-1)  # 2 x (..., T, Dh/2) -> (..., T, Dh)
    return x * cos + rotated * sin  # (T, Dh) broadcasts over the leading dims


def _check_even(name: str, size: int) -> None:
    """Raise a ValueError unless `size` is a positive even number."""
    if size <= 0 or size % 2:
        raise ValueError(
            f"{name} must be a positive even number, got {size}; sines and cosines "
            "come in pairs of channels, so pick an even width such as 64"
        )


def _check_length(seq_len: int) -> None:
    """Raise a ValueError for a negative sequence length."""
    if seq_len < 0:
        raise ValueError(f"seq_len must be 0 or more, got {seq_len}")
