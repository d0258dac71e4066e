"""Softmax written out by hand: the warm-up exercise of chapter 00."""

import torch


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Turn scores into probabilities along one axis, without overflowing.

    Computes exp(x_i) / sum_j exp(x_j) over the slices along `dim`. Subtracting each
    slice's maximum first changes nothing mathematically (the factor exp(-max) cancels),
    but keeps every exponent at or below 0, so exp never overflows to inf and the
    result never turns into inf / inf = NaN.

    Args:
        x: scores (logits) of any shape, for example (B, T, V), floating point.
        dim: the axis to normalise over; every slice along it sums to 1.

    Returns:
        Probabilities with the same shape as `x`, each in [0, 1].

    Introduced in chapter 0.
    """
    # 1) shift each slice so that its largest score is 0
    x_max = x.amax(dim=dim, keepdim=True)  # (B, T, V) -> (B, T, 1) for dim=-1
    shifted = x - x_max  # (B, T, 1) broadcasts back to (B, T, V)

    # 2) exponentiate: every value now lies in (0, 1]
    e = torch.exp(shifted)

    # 3) normalise so that each slice sums to 1
    total = e.sum(dim=dim, keepdim=True)  # (B, T, V) -> (B, T, 1)
    return e / total
