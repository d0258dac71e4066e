"""The induction score of an attention head (chapter 7's exercise).

An induction head completes patterns it has seen before in the same text: at a token
A that occurred earlier as "A B", it attends to that earlier B and predicts B again.
On a random block of tokens repeated twice, each query in the second copy has exactly
one such key, the token right after its own earlier copy:

    ... r_0 r_1 ... r_{P-1} | r_0 r_1 ... r_{P-1}
              ^ key t - P + 1           ^ query t

With period P, query t looks back P - 1 positions, so the score is the mean of the
attention diagonal at offset -(P - 1), over the P queries of the second copy.
"""

import operator

import torch


def induction_score(weights: torch.Tensor, period: int) -> torch.Tensor:
    """The mean weight that second-copy queries put on the token after their first copy.

    The sequence ends with a random block of `period` tokens written twice; anything
    before it (a start token, say) is a prefix that the score ignores.

    Args:
        weights: attention weights, (..., T, T), e.g. (H, T, T) or (L, H, T, T);
            queries on the second-to-last axis, keys on the last.
        period: P, the length of the repeated block; 2 * P <= T.

    Returns:
        (...), one score per map in [0, 1]: 1 for a perfect induction head, about
        1 / (t + 1) for a head that spreads evenly over the t + 1 keys it may see.

    Raises:
        ValueError: weights has fewer than 2 dims or is not square in its last two,
            or period is not a whole number in [1, T / 2] (Python, NumPy and 0-d
            torch integers are accepted).

    Introduced in chapter 7.
    """
    if not isinstance(weights, torch.Tensor) or weights.dim() < 2:
        raise ValueError(
            "weights must be a tensor of attention maps (..., T, T), got "
            f"{getattr(weights, 'shape', type(weights).__name__)}"
        )
    seq_len = weights.size(-1)
    if weights.size(-2) != seq_len:
        raise ValueError(
            f"weights must be square in the last two dims (queries, keys), got "
            f"{tuple(weights.shape)}"
        )
    given = period
    try:  # Python, NumPy and 0-d torch integers count; bools and floats do not
        period = -1 if isinstance(period, bool) else operator.index(period)
    except TypeError:
        period = -1
    if period < 1:
        raise ValueError(f"period must be a whole number >= 1, got {given!r}")
    if 2 * period > seq_len:
        raise ValueError(
            f"two copies of period={period} need 2 * period <= T={seq_len} tokens"
        )
    # entries (t, t - P + 1) for t = P - 1 .. T - 1; the last P are the second copy
    diagonal = weights.diagonal(offset=1 - period, dim1=-2, dim2=-1)  # (..., T - P + 1)
    return diagonal[..., -period:].mean(dim=-1)  # (..., P) -> (...)
