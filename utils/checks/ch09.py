"""Exercise checks for chapter 09 (Modern LLMs and efficiency): 9.1 to 9.3.

- 9.1 `rms_norm(x, weight, eps)` against the course's `RMSNorm`.
- 9.2 `grouped_query_attention(q, k, v, is_causal)` against PyTorch's attention on
  keys and values repeated per group (`repeat_kv`).
- 9.3 `cache_update(cache_k, cache_v, k, v, start)`: the returned views are compared
  with the reference's, the buffers themselves must hold the new keys and values
  afterwards, and the results must share the buffers' memory (the point of a
  preallocated cache is that nothing else is copied).

9.1 and 9.2 must leave their inputs unchanged (`keep_inputs`); 9.3 writes into its
buffers on purpose.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from utils.checks.core import Case, Exercise, compare_tensors, format_value, register
from utils.reference.attention import causal_mask, repeat_kv
from utils.reference.block import RMSNorm
from utils.reference.llama import kv_cache_update

RTOL, ATOL = 1e-5, 1e-5  # float32 computed in another order still matches

# --- exercise 9.1: RMSNorm

_RMS = (
    "divide each row by its root mean square, sqrt(mean(x^2) + eps) over the last "
    "axis (keepdim=True), then multiply by weight"
)
_EPS = "eps goes inside the square root: x / sqrt(mean(x^2) + eps)"
_RMS_MISTAKES = {
    "centred": "you subtract the mean: that is LayerNorm. RMSNorm does not centre x",
    "eps_outside": f"eps is added after the square root; {_EPS}",
    "no_eps": f"eps is missing; {_EPS}",
    "no_weight": "the result is not multiplied by weight",
    "norm": "you divide by the length of the row, sqrt(sum(x^2)); use the mean of "
    "x^2 over the D entries, not the sum",
    "axis0": "the mean runs over the wrong axis: take it over the last one, dim=-1",
}


def rms_variant(
    x: torch.Tensor, weight: torch.Tensor, eps: float, mistake: str = ""
) -> torch.Tensor:
    """What an rms_norm with one plausible `mistake` returns.

    Introduced in chapter 9.
    """
    if mistake == "centred":
        x = x - x.mean(dim=-1, keepdim=True)
    dim = 0 if mistake == "axis0" else -1
    square = x.pow(2).sum(dim, keepdim=True) if mistake == "norm" else None
    if square is None:
        square = x.pow(2).mean(dim, keepdim=True)
    if mistake == "eps_outside":
        scale = 1 / (square.sqrt() + eps)
    else:
        scale = torch.rsqrt(square + (0.0 if mistake == "no_eps" else eps))
    return x * scale * (1.0 if mistake == "no_weight" else weight)


def _rms_case(name, shape, eps, seed, hint, scale=1.0) -> Case:
    generator = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(shape, generator=generator)
    weight = 1 + 0.5 * torch.randn(shape[-1], generator=generator)
    norm = RMSNorm(shape[-1], eps=eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
        expected = norm(x)
    return Case(name, (x, weight), expected, hint, {"eps": eps})


def rms_cases() -> list[Case]:
    """Build the cases of exercise 9.1: a toy row, a batch, small values, a big eps.

    Introduced in chapter 9.
    """
    toy = torch.tensor([[3.0, -4.0, 0.0, 1.0]])
    weight = torch.tensor([1.0, 1.0, 2.0, 0.5])
    expected = toy / math.sqrt(26 / 4 + 1e-5) * weight
    by_hand = "mean(x^2) = (9 + 16 + 0 + 1) / 4 = 6.5; x / sqrt(6.5 + eps) * weight"
    return [
        Case("one row by hand", (toy, weight), expected, by_hand, {"eps": 1e-5}),
        _rms_case("a batch (B, T, D)", (2, 3, 8), 1e-5, 1, _RMS),
        _rms_case("rows with a non-zero mean", (4, 6), 1e-5, 2, _RMS, scale=3.0),
        _rms_case("tiny values, where eps matters", (3, 5), 1e-2, 3, _EPS, 0.05),
    ]


def diagnose_rms(case: Case, actual: Any) -> str | None:
    """Recognise a plausible RMSNorm mistake from a wrong output.

    Introduced in chapter 9.
    """
    x, weight = case.args
    return _match_mistake(
        case.expected,
        actual,
        {m: rms_variant(x, weight, case.kwargs["eps"], m) for m in _RMS_MISTAKES},
        _RMS_MISTAKES,
    )


# --- exercise 9.2: grouped-query attention

_GROUPS = (
    "query head h uses key/value head h // (H // H_kv): repeat each key/value head "
    "H // H_kv times in a row (repeat_kv or repeat_interleave on dim 1), then attend "
    "as usual"
)
_CAUSAL_SHIFT = (
    "with S > T the queries are the LAST T positions: query i may look at keys "
    "0..S-T+i. Build the mask with causal_mask(T, S) from chapter 03; "
    "F.scaled_dot_product_attention's is_causal aligns it to the top-left instead"
)
_INVERTED = (
    "your mask is inverted: each query sees its future and not its past. "
    "causal_mask(T, S) is True where a query may NOT look (scores.masked_fill(mask, "
    "float('-inf'))), while F.scaled_dot_product_attention's boolean attn_mask is "
    "True where it MAY look: pass attn_mask=~causal_mask(T, S)"
)
_GQA_MISTAKES = {
    "tiled": "the key/value heads are repeated in the wrong order: k.repeat(1, n, 1, "
    "1) gives heads 0, 1, 0, 1; query heads 0 and 1 share head 0, so repeat each "
    "head in a row (repeat_interleave, or repeat_kv)",
    "no_scale": "the scores are not divided by sqrt(Dh)",
    "scale_dh": "the scores are divided by Dh; divide by sqrt(Dh), "
    "math.sqrt(q.size(-1)), so that they keep a variance near 1",
    "softmax_queries_axis": "the softmax runs over the queries (dim=-2); each query's "
    "weights over the keys must sum to 1, so use softmax(scores, dim=-1)",
    "no_causal": "is_causal is ignored: block each query's future keys",
    "mask_zero": "the blocked scores are set to 0, and exp(0) = 1 still gives those "
    "keys weight; fill them with float('-inf') so that softmax gives them 0",
    "one_too_many": "your mask also blocks each query's own position (one key too "
    "many): query i sits at position S-T+i and may look at keys 0..S-T+i, itself "
    "included. With S = T the first query then sees no key at all and softmax of a "
    "row of -inf is NaN. Block only keys after the query: causal_mask(T, S)",
    "one_too_few": "your mask lets each query see one future key: block every key "
    "after the query's own position S-T+i, causal_mask(T, S)",
    "top_left": _CAUSAL_SHIFT,
    "inverted": _INVERTED,
    "inverted_sdpa": _INVERTED,  # SDPA gives 0, not NaN, where a row sees nothing
}
_PLAIN = (
    "with H_kv = H this is ordinary multi-head attention: "
    "softmax(q @ k^T / sqrt(Dh), dim=-1) @ v"
)


def gqa_variant(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool = False,
    mistake: str = "",
) -> torch.Tensor:
    """What a grouped_query_attention with one plausible `mistake` returns.

    PyTorch's attention computes the right answer and the mistakes it can express
    (scale, mask); the others are written out by hand.

    Introduced in chapter 9.
    """
    n_rep = q.size(1) // k.size(1)
    if mistake == "tiled":
        k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
    else:
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, S, Dh)
    head_dim, seq_len, kv_len = q.size(-1), q.size(-2), k.size(-2)
    scale = {"no_scale": 1.0, "scale_dh": 1 / head_dim}.get(mistake)
    by_hand = ("mask_zero", "one_too_many", "one_too_few", "inverted")
    if mistake not in (*by_hand, "softmax_queries_axis"):
        keep = None  # True where a query may look
        if is_causal and mistake == "top_left":
            keep = ~torch.ones(seq_len, kv_len, dtype=torch.bool).triu(1)
        elif is_causal and mistake == "inverted_sdpa":
            keep = causal_mask(seq_len, kv_len)
        elif is_causal and mistake != "no_causal":
            keep = ~causal_mask(seq_len, kv_len)  # (T, S)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)  # (B, H, T, S)
    if is_causal:
        shift = {"one_too_many": 0, "one_too_few": 2}.get(mistake, 1)
        blocked = torch.ones(seq_len, kv_len, dtype=torch.bool)
        blocked = blocked.triu(kv_len - seq_len + shift)  # (T, S)
        if mistake == "inverted":
            blocked = ~blocked
        fill = 0.0 if mistake == "mask_zero" else float("-inf")
        scores = scores.masked_fill(blocked, fill)
    dim = -2 if mistake == "softmax_queries_axis" else -1
    return torch.softmax(scores, dim=dim) @ v  # (B, H, T, Dh)


def _gqa_case(name, n_heads, n_kv_heads, seq_len, kv_len, is_causal, seed, hint):
    generator = torch.Generator().manual_seed(seed)
    head_dim = 8
    q = torch.randn(2, n_heads, seq_len, head_dim, generator=generator)
    k = torch.randn(2, n_kv_heads, kv_len, head_dim, generator=generator)
    v = torch.randn(2, n_kv_heads, kv_len, head_dim, generator=generator)
    expected = gqa_variant(q, k, v, is_causal)
    return Case(name, (q, k, v), expected, hint, {"is_causal": is_causal})


def gqa_cases() -> list[Case]:
    """Build the cases of exercise 9.2: H_kv = H, groups of 2 and 3, one key/value
    head, causal masks with S = T and S > T.

    Introduced in chapter 9.
    """
    return [
        _gqa_case("H_kv = H (no sharing)", 2, 2, 3, 3, False, 0, _PLAIN),
        _gqa_case("H = 4, H_kv = 2", 4, 2, 3, 5, False, 1, _GROUPS),
        _gqa_case("H = 6, H_kv = 2, causal", 6, 2, 4, 4, True, 2, _GROUPS),
        _gqa_case("one key/value head (multi-query)", 4, 1, 2, 4, False, 3, _GROUPS),
        _gqa_case("causal, 2 new queries after 3 cached", 4, 2, 2, 5, True, 4, _GROUPS),
    ]


def diagnose_gqa(case: Case, actual: Any) -> str | None:
    """Recognise a plausible grouped-query mistake from a wrong output.

    Introduced in chapter 9.
    """
    q, k, v = case.args
    is_causal = case.kwargs["is_causal"]
    variants = {m: gqa_variant(q, k, v, is_causal, m) for m in _GQA_MISTAKES}
    return _match_mistake(case.expected, actual, variants, _GQA_MISTAKES)


_SIZES = re.compile(  # PyTorch's broadcasting error: the two sizes and the axis
    r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) at "
    r"non-singleton dimension (\d+)"
)
_EINSUM = re.compile(r"has size (\d+) for operand \d+ .* previously seen size (\d+)")


def explain_gqa_error(case: Case, err: Exception) -> str | None:
    """Recognise a shape error: key/value heads not repeated, or a (T, T) mask.

    PyTorch names the sizes and the axis that disagree: the heads are axis 1 of the
    (B, H, T, S) scores, the keys axis 3.

    Introduced in chapter 9.
    """
    q, k, _ = case.args
    n_heads, n_kv_heads = q.size(1), k.size(1)
    seq_len, kv_len = q.size(-2), k.size(-2)
    found, axis = _SIZES.search(str(err)), None
    if found is not None:
        sizes, axis = {int(found[1]), int(found[2])}, int(found[3])
    elif (found := _EINSUM.search(str(err))) is not None:
        sizes = {int(found[1]), int(found[2])}
    else:
        return None
    if n_heads != n_kv_heads and sizes == {n_heads, n_kv_heads} and axis in (1, None):
        return (
            f"q has H = {n_heads} heads but k and v have H_kv = {n_kv_heads}: repeat "
            "the key/value heads to H first (repeat_kv(k, H // H_kv))"
        )
    if kv_len != seq_len and sizes == {seq_len, kv_len} and axis in (2, 3):
        return (
            f"the scores are (T, S) = ({seq_len}, {kv_len}) per head, with S > T "
            "because earlier positions are cached, but your mask is not (T, S); a "
            "(T, T) mask only fits when nothing is cached. Build it with "
            "causal_mask(T, S) from chapter 03: the queries are the last T of the S "
            "positions"
        )
    return None


# --- exercise 9.3: the KV cache update

_WRITE = (
    "write in place: cache_k[:, :, start:start + T] = k (the same for v), then return "
    "cache_k[:, :, :start + T] and cache_v[:, :, :start + T]"
)


@dataclass
class CacheAnswer:
    """The buffers handed to the learner, and what they and the result must hold.

    Introduced in chapter 9.
    """

    cache_k: torch.Tensor = field(repr=False)  # the learner's buffers, by identity
    cache_v: torch.Tensor = field(repr=False)
    after_k: torch.Tensor = field(repr=False)  # their right contents afterwards
    after_v: torch.Tensor = field(repr=False)
    keys: torch.Tensor = field(repr=False)  # the right return values
    values: torch.Tensor = field(repr=False)

    def __repr__(self) -> str:
        return f"(keys={format_value(self.keys)}, values={format_value(self.values)})"


def cache_cases() -> list[Case]:
    """Build the cases of exercise 9.3: prefill, one decoding step, a chunk, the last
    free positions.

    Introduced in chapter 9.
    """
    specs = [
        ("prefill 3 positions into an empty cache", 0, 3, _WRITE),
        ("one decoding step after 3", 3, 1, _WRITE),
        ("a chunk of 2 after 4", 4, 2, _WRITE),
        ("the last free position", 7, 1, _WRITE),
    ]
    generator = torch.Generator().manual_seed(9)
    cases = []
    for name, start, seq_len, hint in specs:
        shape = (2, 2, 8, 4)  # (B, H_kv, S_max, Dh)
        cache_k, cache_v = torch.zeros(shape), torch.zeros(shape)
        cache_k[:, :, :start] = torch.randn(2, 2, start, 4, generator=generator)
        cache_v[:, :, :start] = torch.randn(2, 2, start, 4, generator=generator)
        k = torch.randn(2, 2, seq_len, 4, generator=generator)
        v = torch.randn(2, 2, seq_len, 4, generator=generator)
        after_k, after_v = cache_k.clone(), cache_v.clone()
        keys, values = kv_cache_update(after_k, after_v, k, v, start)
        answer = CacheAnswer(cache_k, cache_v, after_k, after_v, keys, values)
        cases.append(Case(name, (cache_k, cache_v, k, v, start), answer, hint))
    return cases


def compare_cache(expected: CacheAnswer, actual: Any) -> str | None:
    """Check the returned keys and values, then the buffers written in place.

    Introduced in chapter 9.
    """
    if not isinstance(actual, tuple | list) or len(actual) != 2:
        return f"expected a pair (keys, values), got {type(actual).__name__}"
    for name, want, got in zip(
        ("keys", "values"), (expected.keys, expected.values), actual, strict=True
    ):
        problem = compare_tensors(want, got, RTOL, ATOL)
        if problem is not None:
            return f"the returned {name}: {problem}"
    for name, want, buffer in (
        ("cache_k", expected.after_k, expected.cache_k),
        ("cache_v", expected.after_v, expected.cache_v),
    ):
        if not torch.equal(want, buffer):
            return f"the buffer {name} does not hold the new positions afterwards"
    for name, got, buffer in zip(
        ("keys", "values"), actual, (expected.cache_k, expected.cache_v), strict=True
    ):
        if not _shares_memory(got, buffer):
            return (
                f"the returned {name} are a copy: they do not share memory with the "
                f"buffer {'cache_k' if name == 'keys' else 'cache_v'}"
            )
    return None


def _shares_memory(view: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Whether `view` lives in `buffer`'s memory (a slice does, a clone does not)."""
    storage = view.untyped_storage().data_ptr()
    return storage == buffer.untyped_storage().data_ptr()


def diagnose_cache(case: Case, actual: Any) -> str | None:
    """Recognise a plausible cache-update mistake.

    Introduced in chapter 9.
    """
    answer: CacheAnswer = case.expected
    start, seq_len = case.args[4], case.args[2].size(-2)
    if isinstance(actual, tuple | list) and len(actual) == 2:
        got = actual[0]
        if isinstance(got, torch.Tensor) and got.dim() == 4:
            if got.size(-2) == answer.cache_k.size(-2) != start + seq_len:
                return (
                    "you return the whole buffer, empty positions included; slice "
                    "the filled part, cache_k[:, :, :start + T]"
                )
            if got.size(-2) == seq_len != start + seq_len:
                return "you return only the new keys; attention needs every cached one"
    k = case.args[2]
    got = actual[0] if isinstance(actual, tuple | list) and actual else None
    copied = isinstance(got, torch.Tensor) and not _shares_memory(got, answer.cache_k)
    if not answer.cache_k[:, :, start : start + seq_len].any():
        return (
            "the buffers are unchanged: torch.cat and .clone() build new tensors and "
            f"leave the cache as it was; {_WRITE}"
        )
    if got is k:
        return (
            "you return only the new keys, k itself; attention needs every cached "
            "one: return cache_k[:, :, :start + T], a view of the buffer"
        )
    if copied:
        return (
            "return views of the buffers, not copies: a slice such as "
            "cache_k[:, :, :start + T] shares the buffer's memory, while .clone(), "
            ".contiguous() or torch.cat copy every cached position at every step"
        )
    late = answer.cache_k[:, :, start + 1 : start + 1 + seq_len]
    if late.shape == k.shape and torch.equal(late, k):
        return "the new keys land one position late: write them at start, not start + 1"
    return None


def _compare(expected: torch.Tensor, actual: Any) -> str | None:
    return compare_tensors(expected, actual, RTOL, ATOL)


def _match_mistake(
    expected: torch.Tensor,
    actual: Any,
    variants: dict[str, torch.Tensor],
    hints: dict[str, str],
) -> str | None:
    """The hint of the first variant that differs from the answer and matches."""
    if not isinstance(actual, torch.Tensor):
        return None
    for mistake, candidate in variants.items():
        if candidate.shape != actual.shape or _close(candidate, expected):
            continue  # this case cannot tell that mistake from the right answer
        if _close(candidate, actual):
            return hints[mistake]
    return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    close = torch.isclose(a, b.detach().to(a.dtype), RTOL, ATOL, equal_nan=True)
    return bool(close.all())


RMS_NORM = register(
    Exercise(
        id="9.1",
        title="RMSNorm",
        cases=rms_cases,
        compare=_compare,
        diagnose=diagnose_rms,
        keep_inputs=True,
    )
)
GROUPED_QUERY_ATTENTION = register(
    Exercise(
        id="9.2",
        title="Grouped-query attention",
        cases=gqa_cases,
        compare=_compare,
        diagnose=diagnose_gqa,
        explain_error=explain_gqa_error,
        keep_inputs=True,
    )
)
CACHE_UPDATE = register(
    Exercise(
        id="9.3",
        title="The KV cache update",
        cases=cache_cases,
        compare=compare_cache,
        diagnose=diagnose_cache,
    )
)
