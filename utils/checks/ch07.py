"""Exercise checks for chapter 07 (Looking inside): the induction score of a head (7.1).

The cases hand the learner's `induction_score` attention maps of sequences that end
with a block of `period` tokens written twice: an induction head, a previous-token
head, and random causal maps of several shapes, with and without a prefix before the
repeated block. A wrong score is compared with the scores that plausible mistakes give
(the earlier copy itself instead of the token after it, one key too far, all queries
instead of the second copy's, the second copy without its first query, a count from
the start instead of the end, a sum instead of a mean, queries and keys swapped) to
name the mistake. A hint is given only when exactly one mistake explains the wrong
score; the first case is built so that every mistake gives a different score there.
"""

from typing import Any

import torch

from utils.checks.core import Case, Exercise, compare_tensors, register
from utils.reference.interp import induction_score

_KEY = (
    "query t (in the second copy) should attend to key t - period + 1, the token "
    "right after its earlier copy: the diagonal at offset 1 - period, "
    "weights.diagonal(offset=1 - period, dim1=-2, dim2=-1)"
)
_SECOND = (
    "average over the period queries of the second copy only, the last period "
    "entries of that diagonal"
)
_END = (
    "the repeated block sits at the END of the sequence, after any prefix: take "
    "the last period entries of the diagonal, [..., -period:]"
)
_AXES = (
    "queries are on the second-to-last axis and keys on the last: weights[..., t, s] "
    "is what query t puts on key s"
)


def causal_maps(
    shape: tuple[int, ...], seq_len: int, seed: int, sharpness: float = 2.0
) -> torch.Tensor:
    """Random causal attention maps: each row a softmax over the keys it may see.

    Args:
        shape: the leading dims, e.g. (H,) or (L, H).
        seq_len: T.
        seed: picks the scores.
        sharpness: the scores' standard deviation; larger gives peakier rows.

    Returns:
        (*shape, T, T) weights, zero above the diagonal, rows summing to 1.

    Introduced in chapter 7.
    """
    generator = torch.Generator().manual_seed(seed)
    scores = sharpness * torch.randn(*shape, seq_len, seq_len, generator=generator)
    future = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)  # (T, T)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def pattern_maps(seq_len: int, offset: int) -> torch.Tensor:
    """(1, T, T) maps of a head that puts all weight on key t + offset (offset <= 0),
    or on key 0 where that key does not exist."""
    weights = torch.zeros(1, seq_len, seq_len)
    for t in range(seq_len):
        weights[0, t, max(t + offset, 0)] = 1.0
    return weights


def induction_cases() -> list[Case]:
    """Build the cases of exercise 7.1.

    Returns:
        Six cases, each calling induction_score(weights, period).

    Introduced in chapter 7.
    """
    period = 4
    # 0.6 on the token after the earlier copy, and some weight on its neighbours
    # and on the query itself, so that each mistake scores differently
    induction = (
        0.6 * pattern_maps(8, 1 - period)
        + 0.2 * pattern_maps(8, 2 - period)
        + 0.1 * pattern_maps(8, -period)
        + 0.1 * pattern_maps(8, 0)
    )
    specs = [
        ("an induction head", induction, period, _KEY),
        ("a previous-token head", pattern_maps(8, -1), period, _KEY),
        ("random maps of 3 heads, (H, T, T)", causal_maps((3,), 10, 1), 5, _KEY),
        ("a prefix of 3 tokens before the block", causal_maps((2,), 11, 2), 4, _END),
        (
            "maps of 2 layers x 3 heads, (L, H, T, T)",
            causal_maps((2, 3), 12, 3),
            6,
            _AXES,
        ),
        ("period 1 (the token repeated once)", causal_maps((2,), 5, 4), 1, _SECOND),
    ]
    return [
        Case(name, (weights.clone(), p), induction_score(weights, p), hint)
        for name, weights, p, hint in specs
    ]


def induction_variant(weights: torch.Tensor, period: int, mistake: str) -> Any:
    """The score an induction_score with one plausible `mistake` returns.

    Args:
        weights: (..., T, T) maps.
        period: P.
        mistake: one of the names in `_MISTAKES`.

    Returns:
        The wrong score, (...), or None where that mistake cannot be computed.

    Introduced in chapter 7.
    """
    seq_len = weights.size(-1)
    diagonal = weights.diagonal(offset=1 - period, dim1=-2, dim2=-1)
    if mistake == "same_token":
        if period > seq_len // 2:
            return None
        return weights.diagonal(offset=-period, dim1=-2, dim2=-1)[..., -period:].mean(
            -1
        )
    if mistake == "too_far":
        if period < 2:
            return None  # key t + 1 is in the future
        return weights.diagonal(offset=2 - period, dim1=-2, dim2=-1)[
            ..., -period:
        ].mean(-1)
    if mistake == "all_queries":
        return diagonal.mean(dim=-1)
    if mistake == "skip_first":
        return diagonal[..., 1 - period :].mean(dim=-1) if period > 1 else None
    if mistake == "from_start":
        return diagonal[..., 1 : period + 1].mean(dim=-1)  # as if no prefix
    if mistake == "sum":
        return diagonal[..., -period:].sum(dim=-1)
    if mistake == "swapped":
        return weights.diagonal(offset=period - 1, dim1=-2, dim2=-1)[
            ..., -period:
        ].mean(-1)
    raise ValueError(f"unknown mistake {mistake!r}")


_MISTAKES = [
    (
        "same_token",
        "you score the weight on the earlier copy of the same token (key t - period); "
        "an induction head looks one further, at the token that followed it: "
        "key t - period + 1",
    ),
    (
        "too_far",
        "you score key t - period + 2, one past the token that followed the earlier "
        "copy; an induction head looks at key t - period + 1, the diagonal at "
        "offset 1 - period",
    ),
    ("all_queries", f"you average over every query on the diagonal; {_SECOND}"),
    (
        "skip_first",
        "you leave out the first query of the second copy; it counts too (at the "
        "second r_0 an induction head already looks at r_1): average over all "
        "period queries, [..., -period:]",
    ),
    ("from_start", f"you take the first period queries of the diagonal; {_END}"),
    ("sum", "you add the weights up; the score is their mean over the period queries"),
    ("swapped", f"you read the diagonal above the main one; {_AXES}"),
]


def diagnose_induction(case: Case, actual: Any) -> str | None:
    """Recognise a plausible mistake from a wrong score.

    Args:
        case: the case that failed; args (weights, period).
        actual: what the learner's induction_score returned.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 7.
    """
    expected = case.expected
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        if isinstance(actual, torch.Tensor) and actual.shape == (*expected.shape, 1):
            return "drop keepdim=True: return one score per map, shape (...)"
        if isinstance(actual, torch.Tensor) and actual.dim() == expected.dim() + 1:
            return "reduce the last axis: return one score per map, shape (...)"
        return None
    weights, period = case.args
    hints = []
    for mistake, hint in _MISTAKES:
        candidate = induction_variant(weights, period, mistake)
        if candidate is None or candidate.shape != actual.shape:
            continue
        if compare_tensors(candidate, expected) is None:
            continue  # this case cannot tell that mistake from the right answer
        if compare_tensors(candidate, actual) is None:
            hints.append(hint)
    return hints[0] if len(hints) == 1 else None  # two mistakes fit: name neither


def explain_induction_error(case: Case, err: Exception) -> str | None:
    """Recognise a plausible mistake from the exception it raised.

    Introduced in chapter 7.
    """
    if isinstance(err, IndexError | RuntimeError) and "dim" in str(err):
        return (
            "work on the last two axes whatever comes before them: "
            "diagonal(..., dim1=-2, dim2=-1) and indexing with [..., -period:]"
        )
    return None


INDUCTION_SCORE = register(
    Exercise(
        id="7.1",
        title="The induction score",
        cases=induction_cases,
        compare=compare_tensors,
        diagnose=diagnose_induction,
        explain_error=explain_induction_error,
        keep_inputs=True,  # the caller's tensors must come back unchanged
    )
)
