"""Exercise checks for chapter 03 (Self-attention): exercise 3.1, attention with masks.

The learner writes `attention(q, k, v, mask=None)` returning `(output, weights)`, with
the course's mask convention: a bool mask is True where a query may NOT look.
"""

import math
from typing import Any, NamedTuple

import torch

from utils.checks.core import Case, Exercise, compare_tensors, format_value, register
from utils.reference.attention import (
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)

RTOL, ATOL = 1e-5, 1e-5  # float32 attention computed in another order still matches

# the fallback hint of each case, used when no specific mistake is recognised
_BY_HAND = (
    "scores = q @ k^T / sqrt(Dh) = [2, 0, -2] with Dh = 4; weights = softmax over "
    "the 3 keys = [0.8668, 0.1173, 0.0159]; output = weights @ v"
)
_BATCH = (
    "pair every query with every key of the same sequence: q @ k.transpose(-2, -1) "
    "gives scores (B, T, S); k.T would reverse all axes"
)
_CAUSAL = (
    "before the softmax, set the scores to -inf (or a very negative number) where the "
    "mask is True: query i then sees keys 0..i only"
)
_PADDING = (
    "the (B, 1, 1, S) mask broadcasts against scores (B, H, T, S): it blocks the "
    "padded keys for every query and every head"
)
_FULL_ROW = "query 1 may look at no key: its weights and its output must be all zeros"
_LARGE_DH = (
    "with Dh = 64, raw dot products are about sqrt(64) = 8 times larger than scaled "
    "ones and the softmax turns nearly one-hot; divide the scores by sqrt(Dh)"
)
_NAN_ROWS = (
    "your weights are right except in rows whose keys are all masked, which hold NaN: "
    "a softmax over only -inf is 0 / 0. Fill with a large negative finite number "
    "(torch.finfo(scores.dtype).min), then set the weights where mask is True to 0"
)
_UNIFORM_ROWS = (
    "your weights are right except in rows whose keys are all masked, which are "
    "uniform (1/S each): a softmax over equal scores. After the softmax, set the "
    "weights where mask is True to 0, so those rows become zeros"
)


class AttentionAnswer(NamedTuple):
    """The right `(output, weights)` of one case, shown briefly in messages.

    Introduced in chapter 3.
    """

    output: torch.Tensor  # (..., T, Dh)
    weights: torch.Tensor  # (..., T, S)

    def __repr__(self) -> str:
        output, weights = format_value(self.output), format_value(self.weights)
        return f"(output={output}, weights={weights})"


def attention_cases() -> list[Case]:
    """Build the inputs of exercise 3.1, from a hand-checkable query to edge cases.

    Returns:
        Six cases: one query by hand, a batch (B, T, Dh), a causal mask, a padding
        mask (B, 1, 1, S), a fully masked row and a large head_dim (64).

    Introduced in chapter 3.
    """
    generator = torch.Generator().manual_seed(0)
    q1 = torch.ones(1, 4)  # (T, Dh) = (1, 4)
    k1 = torch.tensor([[1.0] * 4, [0.0] * 4, [-1.0] * 4])  # (S, Dh) = (3, 4)
    v1 = torch.eye(3, 4)  # (S, Dh): value i is the unit vector i
    batch = _random_qkv(generator, (2,), seq_len=3, kv_len=5, head_dim=4)
    causal = _random_qkv(generator, (2,), seq_len=5, kv_len=5, head_dim=4)
    padded = _random_qkv(generator, (2, 2), seq_len=4, kv_len=4, head_dim=3)
    full = _random_qkv(generator, (), seq_len=3, kv_len=3, head_dim=4)
    large = _random_qkv(generator, (), seq_len=1, kv_len=3, head_dim=64)
    keep = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # (B, S): 1 = real token
    full_row = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    specs = [
        ("one query by hand", (q1, k1, v1), None, _BY_HAND),
        ("batch of sequences", batch, None, _BATCH),
        ("causal mask", causal, causal_mask(5), _CAUSAL),
        ("padding mask", padded, padding_mask(keep), _PADDING),
        ("fully masked row", full, full_row, _FULL_ROW),
        ("large head_dim", large, None, _LARGE_DH),
    ]
    return [_attention_case(*spec) for spec in specs]


def compare_attention(expected: AttentionAnswer, actual: Any) -> str | None:
    """Say how a learner's `(output, weights)` differs from the right one, or None.

    Args:
        expected: the reference answer.
        actual: what the learner's attention returned.

    Returns:
        A one-line description of the first difference, or None.

    Introduced in chapter 3.
    """
    if isinstance(actual, torch.Tensor):
        return "expected a tuple (output, weights), got a single tensor"
    if not isinstance(actual, tuple | list) or len(actual) != 2:
        return f"expected a tuple (output, weights), got {_describe(actual)}"
    for name, want, got in zip(("output", "weights"), expected, actual, strict=True):
        problem = compare_tensors(want, got, rtol=RTOL, atol=ATOL)
        if problem is not None:
            # "the output has NaN ..." would misname the weights
            return f"{name}: {problem.removeprefix('the output has ')}"
    return None


def diagnose_attention(case: Case, actual: Any) -> str | None:
    """Recognise a plausible attention mistake from a wrong `(output, weights)`.

    Args:
        case: the case that failed; its args are (q, k, v), its kwargs may hold mask.
        actual: what the learner's attention returned.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 3.
    """
    if isinstance(actual, torch.Tensor):
        return "return both results as a tuple: `return output, weights`"
    if not _is_pair(actual):
        return None
    shape_hint = _shape_hint(case.expected, actual)
    if shape_hint is not None:
        return shape_hint
    q, k, _ = case.args
    mask = case.kwargs.get("mask")
    output, weights = actual
    if _matches(weights, _weights_with(q, k, mask)):
        return _right_weights_hint(case.expected, output, weights)
    for candidate, hint in _mistakes(q, k, mask):
        differs = not _matches(case.expected.weights, candidate)
        if differs and _matches(weights, candidate):
            return hint
    if not (torch.isfinite(output).all() and torch.isfinite(weights).all()):
        return "the result has NaN or inf; look for a division by 0 or exp overflowing"
    return None


def explain_attention_error(case: Case, err: Exception) -> str | None:
    """Recognise a plausible attention mistake from the exception it raised.

    Args:
        case: the case that failed.
        err: what the learner's attention raised.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 3.
    """
    text = str(err)
    if "Boolean value of Tensor" in text:
        return "write `if mask is not None:`; `if mask:` asks if a whole tensor is true"
    if "must match the size" in text or "cannot be multiplied" in text:
        return (
            "transpose only the last two axes of k, k.transpose(-2, -1), so that batch "
            "and head axes stay in front; the mask broadcasts against (..., T, S)"
        )
    return None


def _attention_case(
    name: str, qkv: tuple[torch.Tensor, ...], mask: torch.Tensor | None, hint: str
) -> Case:
    """One case of exercise 3.1 with the reference's answer."""
    kwargs = {} if mask is None else {"mask": mask}
    output, weights = scaled_dot_product_attention(*qkv, **kwargs)
    return Case(name, qkv, AttentionAnswer(output, weights), hint, kwargs)


def _random_qkv(
    generator: torch.Generator,
    batch: tuple[int, ...],
    seq_len: int,
    kv_len: int,
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q (*batch, T, Dh), k and v (*batch, S, Dh)."""
    q = torch.randn(*batch, seq_len, head_dim, generator=generator)
    k = torch.randn(*batch, kv_len, head_dim, generator=generator)
    v = torch.randn(*batch, kv_len, head_dim, generator=generator)
    return q, k, v


def _weights_with(
    q: torch.Tensor,
    k: torch.Tensor,
    blocked: torch.Tensor | None,
    scale: float | None = None,
    dim: int = -1,
) -> torch.Tensor:
    """Attention weights as a variant computes them; NaN marks fully blocked slices."""
    scale = 1 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q.double() @ k.double().transpose(-2, -1)) * scale  # (..., T, S)
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    return torch.softmax(scores, dim=dim)


def _mistakes(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None
) -> list[tuple[torch.Tensor, str]]:
    """Weights of plausible wrong attentions on this case, each with its hint."""
    head_dim = q.size(-1)
    found = [
        (
            _weights_with(q, k, mask, scale=1.0),
            f"the scores are not scaled: multiply q @ k^T by 1/sqrt(Dh) = "
            f"1/sqrt({head_dim}) before the softmax, so that they do not grow with Dh",
        ),
        (
            _weights_with(q, k, mask, scale=1.0 / head_dim),
            f"you divide the scores by Dh = {head_dim}; divide by sqrt(Dh) instead",
        ),
        (
            _weights_with(q, k, mask, dim=-2),
            "your softmax runs over the queries (dim=-2): each query's weights over "
            "the keys must sum to 1, so take the softmax over the last axis (dim=-1)",
        ),
    ]
    if mask is not None:
        found += _mask_mistakes(q, k, mask)
    return found


def _mask_mistakes(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor
) -> list[tuple[torch.Tensor, str]]:
    """Weights of plausible mask mistakes, each with its hint."""
    seq_len, kv_len = q.size(-2), k.size(-2)
    found = [
        (
            _weights_with(q, k, None),
            "the mask has no effect on your weights: fill the scores where mask is "
            "True with -inf (or a very negative number) before the softmax",
        ),
        (
            _weights_with(q, k, ~mask),
            "your mask is inverted: True means 'may NOT look' (blocked), but you keep "
            "the keys where mask is True. Fill the scores where mask is True",
        ),
    ]
    flipped = mask.transpose(-2, -1)  # (..., T, S) -> (..., S, T)
    if mask.dim() >= 2 and _broadcasts(flipped.shape, q.shape[:-1] + (kv_len,)):
        hint = (
            "the mask is applied along the wrong axis: it blocks keys (the last axis "
            "of the scores, S), but yours blocks queries. Use it as given, without "
            "transposing: it broadcasts against scores (..., T, S)"
        )
        found.append((_weights_with(q, k, flipped), hint))
    if mask.shape == (seq_len, kv_len) and torch.equal(mask, causal_mask(seq_len)):
        found += _off_by_one(q, k)
    return found


def _off_by_one(q: torch.Tensor, k: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
    """Weights under causal masks shifted by one diagonal, each with its hint."""
    ones = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool)
    diagonal = (
        "your causal mask is off by one: it also blocks the diagonal, but each "
        "position may look at itself. Use the mask you are given; it is True strictly "
        "above the diagonal, torch.triu(ones, diagonal=1)"
    )
    future = (
        "your causal mask is off by one: it lets each query see one future token. "
        "Use the mask you are given; it is True strictly above the diagonal, "
        "torch.triu(ones, diagonal=1)"
    )
    return [
        (_weights_with(q, k, ones.triu(diagonal=0)), diagonal),
        (_weights_with(q, k, ones.triu(diagonal=2)), future),
    ]


def _right_weights_hint(
    expected: AttentionAnswer, output: torch.Tensor, weights: torch.Tensor
) -> str:
    """The hint when the weights are right, apart from fully masked rows maybe."""
    if _matches(weights, expected.weights.double()):
        return (
            "your weights are right, but the output is not: it is weights @ v, "
            "(..., T, S) @ (..., S, Dh) -> (..., T, Dh)"
        )
    if not torch.isfinite(weights).all():
        return _NAN_ROWS
    if torch.isfinite(output).all():
        return _UNIFORM_ROWS
    return _NAN_ROWS


def _shape_hint(expected: AttentionAnswer, actual: tuple) -> str | None:
    """A hint when the output or weights have the wrong shape, else None."""
    output, weights = actual
    out_shape, weights_shape = (
        tuple(expected.output.shape),
        tuple(expected.weights.shape),
    )
    swapped = output.shape == weights_shape and weights.shape == out_shape
    if swapped and out_shape != weights_shape:
        return "return the two results in the order (output, weights)"
    if weights.shape != weights_shape:
        return (
            f"weights should have shape (..., T, S) = {weights_shape}: one row per "
            "query, one column per key"
        )
    if output.shape != out_shape:
        return f"output should have shape (..., T, Dh) = {out_shape}, like q"
    return None


def _matches(actual: torch.Tensor, candidate: torch.Tensor) -> bool:
    """Whether `actual` equals `candidate` wherever the candidate is not NaN.

    NaN in a candidate marks rows whose keys are all blocked: any answer counts there.
    """
    got = actual.detach().cpu().double()
    if got.shape != candidate.shape:
        return False
    care = ~torch.isnan(candidate)
    close = torch.isclose(got, candidate, rtol=1e-4, atol=1e-5)
    return bool(care.any()) and bool(close[care].all())


def _broadcasts(shape: torch.Size, target: tuple[int, ...]) -> bool:
    """Whether `shape` broadcasts to exactly `target`."""
    try:
        return torch.broadcast_shapes(shape, target) == torch.Size(target)
    except RuntimeError:
        return False


def _is_pair(actual: Any) -> bool:
    """Whether actual is a tuple or list of two tensors."""
    return (
        isinstance(actual, tuple | list)
        and len(actual) == 2
        and all(isinstance(part, torch.Tensor) for part in actual)
    )


def _describe(actual: Any) -> str:
    """A few words on a return value of the wrong kind."""
    if actual is None:
        return "None: did you forget to `return` the result?"
    if isinstance(actual, tuple | list):
        return f"a {type(actual).__name__} of {len(actual)} items"
    return type(actual).__name__


ATTENTION = register(
    Exercise(
        id="3.1",
        title="Scaled dot-product attention",
        cases=attention_cases,
        compare=compare_attention,
        diagnose=diagnose_attention,
        explain_error=explain_attention_error,
        keep_inputs=True,  # the caller's tensors must come back unchanged
    )
)
