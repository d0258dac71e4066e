"""Exercise checks for chapter 02 (Tokens and embeddings): a BPE merge step (2.1),
encoding with learned merges (2.2) and rotary position embedding (2.3)."""

import numbers
from typing import Any

import torch

from utils.checks.core import Case, Exercise, register
from utils.reference.bpe import BPETokenizer, encode_with_merges, merge, pair_counts
from utils.reference.positions import apply_rope, rope_cos_sin

Pair = tuple[int, int]
MAX_LISTED = 8  # extra or missing ids listed in a message, at most

# The opening of Tiny Shakespeare: the realistic case of exercise 2.2 learns its merges
# here, so the checker needs no data file.
PASSAGE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n"
)
PASSAGE_MERGES = 24  # merges learned from PASSAGE for the realistic case of 2.2


def compare_ids(expected: list[int], actual: Any) -> str | None:
    """Say how a list of token ids differs from the expected one, or return None.

    Args:
        expected: the right ids.
        actual: what the learner's function returned; it must be a list of ints.

    Returns:
        A one-line description of the first difference, or None when equal.

    Introduced in chapter 2.
    """
    if actual is None:
        return "expected a list of ints, got None: did you forget to `return` it?"
    if isinstance(actual, torch.Tensor):
        return "expected a list of ints, got a tensor; call .tolist() on it"
    if not isinstance(actual, list):
        return f"expected a list of ints, got {type(actual).__name__}; use list(...)"
    for position, value in enumerate(actual):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return (
                f"expected a list of ints, but item {position} is {value!r} "
                f"({type(value).__name__})"
            )
    if actual == expected:
        return None
    return _first_id_difference(expected, actual)


def merge_cases() -> list[Case]:
    """Build the cases of exercise 2.1, from checkable by hand to a real line of text.

    Returns:
        Six cases of `merge(ids, pair, new_id)`, each expecting the reference's answer.

    Introduced in chapter 2.
    """
    line = list(b"to be, or not to be: that is the question")  # UTF-8 bytes
    specs = [
        ("two occurrences", [1, 2, 3, 1, 2, 3], (1, 2), 99, _EVERY),
        ("overlapping pair", [1, 1, 1], (1, 1), 9, _OVERLAP),
        ("last id left alone", [5, 6, 5], (5, 6), 7, _LAST),
        ("pair at the end", [3, 4, 5], (4, 5), 8, _LAST),
        ("no occurrence", [3, 4, 5], (5, 4), 8, _NONE),
        ("a line of Hamlet", line, (116, 104), 256, _REAL),
    ]
    return [
        Case(name, (ids, pair, new_id), merge(ids, pair, new_id), hint)
        for name, ids, pair, new_id, hint in specs
    ]


def diagnose_merge(case: Case, actual: object) -> str | None:
    """Recognise a plausible mistake in a merge step from its wrong output.

    Args:
        case: the case that failed; its args are (ids, pair, new_id).
        actual: what the learner's merge returned.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 2.
    """
    ids, pair, new_id = case.args
    for mistake, hint in _MERGE_MISTAKES:
        if actual == mistake(ids, pair, new_id):
            return hint
    if actual == ids:
        return "the ids came back unchanged: replace each occurrence of the pair"
    return None


def encode_cases() -> list[Case]:
    """Build the cases of exercise 2.2: hand-made merges first, then learned ones.

    Returns:
        Six cases of `encode(text, merges)`, each expecting `encode_with_merges`.

    Introduced in chapter 2.
    """
    tokenizer = BPETokenizer()
    tokenizer.train(PASSAGE, vocab_size=256 + PASSAGE_MERGES)
    learned = {pair: new_id for new_id, pair in enumerate(tokenizer.merges, 256)}
    specs = [
        ("bytes only", "café", {}, _BYTES),
        ("one merge", "abab", {(97, 98): 256}, _ONE),
        ("learned order", "abcbc", {(97, 98): 256, (98, 99): 257}, _ORDER),
        ("merge of merges", "aaaa", {(97, 97): 256, (256, 256): 257}, _REPEAT),
        ("empty text", "", {(97, 97): 256}, _EMPTY),
        ("merges learned from Shakespeare", "First, you are citizens.", learned, _REAL),
    ]
    return [
        Case(name, (text, merges), encode_with_merges(text, merges), hint)
        for name, text, merges, hint in specs
    ]


def diagnose_encode(case: Case, actual: object) -> str | None:
    """Recognise a plausible BPE encoding mistake from its wrong output.

    Args:
        case: the case that failed; its args are (text, merges).
        actual: what the learner's encode returned.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 2.
    """
    text, merges = case.args
    for mistake, hint in _ENCODE_MISTAKES:
        if actual == mistake(text, merges):
            return hint
    return None


def rope_cases() -> list[Case]:
    """Build the cases of exercise 2.3, from one pair of channels to SmolLM2's heads.

    Returns:
        Four cases of `apply_rope(x, cos, sin)`, each expecting the reference's answer.

    Introduced in chapter 2.
    """
    # a rotation with cos 0.6 and sin 0.8 (a 3-4-5 triangle) is easy to check by hand
    one_pair = torch.tensor([[1.0, 0.0]])  # (T=1, Dh=2)
    cos_one, sin_one = torch.tensor([[0.6, 0.6]]), torch.tensor([[0.8, 0.8]])
    four = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # (T=1, Dh=4)
    cos_four = torch.tensor([[0.6, 0.0, 0.6, 0.0]])  # channel pairs (0, 2) and (1, 3)
    sin_four = torch.tensor([[0.8, 1.0, 0.8, 1.0]])
    generator = torch.Generator().manual_seed(0)
    heads = torch.randn(2, 2, 3, 4, generator=generator)  # (B, H, T, Dh)
    smol = torch.randn(1, 3, 8, 64, generator=generator)  # (B, H, T, Dh)
    specs = [
        ("one pair of channels", one_pair, (cos_one, sin_one), _TURN),
        ("four channels", four, (cos_four, sin_four), _HALVES),
        ("batch of heads", heads, rope_cos_sin(3, 4), _LEADING),
        ("SmolLM2-sized heads", smol, rope_cos_sin(8, 64, theta=1e5), _REAL_ROPE),
    ]
    return [
        Case(name, (x, cos, sin), apply_rope(x, cos, sin), hint)
        for name, x, (cos, sin), hint in specs
    ]


def diagnose_rope(case: Case, actual: object) -> str | None:
    """Recognise a plausible rotary-embedding mistake from its wrong output.

    Args:
        case: the case that failed; its args are (x, cos, sin).
        actual: what the learner's apply_rope returned.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 2.
    """
    x, cos, sin = case.args
    if not isinstance(actual, torch.Tensor):
        return None
    if actual.shape != x.shape:
        return "apply_rope returns a tensor of the same shape as x, (..., T, Dh)"
    for mistake, hint in _ROPE_MISTAKES:
        candidate = mistake(x, cos, sin)
        got = actual.detach().cpu().double()
        if torch.allclose(got, candidate.double(), rtol=1e-4, atol=1e-5):
            return hint
    return None


def explain_rope_error(case: Case, err: Exception) -> str | None:
    """Recognise a plausible rotary-embedding mistake from the exception it raised.

    Args:
        case: the case that failed.
        err: what the learner's apply_rope raised.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 2.
    """
    if "must match the size" in str(err) or "Sizes of tensors" in str(err):
        return (
            "split and join along the last dim only: x[..., :half], x[..., half:] and "
            "torch.cat(..., dim=-1), so that leading dims such as (B, H) pass through"
        )
    return None


# --- 2.1: the fallback hints of the cases, and plausible wrong merges

_EVERY = "replace every occurrence of the pair: [1, 2, 3, 1, 2, 3] -> [99, 3, 99, 3]"
_OVERLAP = (
    "occurrences do not overlap: scanning left to right, [1, 1, 1] -> [9, 1], "
    "because the first two ids are used up by the first replacement"
)
_LAST = "look at the last id and the pair at the very end of the list too"
_NONE = "when the pair does not occur, the ids come back unchanged (as a list)"
_REAL = "compare a hand-made case first; the realistic case follows the same rules"


def _merge_first_only(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replaces the first occurrence and stops."""
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2 :]
    return list(ids)


def _merge_no_skip(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Emits new_id at each match but then steps by one instead of two."""
    out = []
    for i, left in enumerate(ids):
        is_match = i + 1 < len(ids) and (left, ids[i + 1]) == pair
        out.append(new_id if is_match else left)
    return out


def _merge_right_to_left(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Scans from the end, so overlapping matches resolve the other way."""
    reversed_pair = (pair[1], pair[0])
    return merge(ids[::-1], reversed_pair, new_id)[::-1]


def _merge_drops_last(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Stops the scan one early, losing a final id that is not part of a match."""
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_misses_last_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Never tests the pair formed by the last two ids."""
    return merge(ids[:-1], pair, new_id) + ids[-1:]


_MERGE_MISTAKES = [
    (
        _merge_first_only,
        "only the first occurrence was replaced: keep scanning after a match so that "
        "every occurrence of the pair becomes new_id",
    ),
    (
        _merge_no_skip,
        "after replacing a pair, move past both of its ids (i += 2): its second id is "
        "now part of the new token and must be neither kept nor matched again",
    ),
    (
        _merge_right_to_left,
        "overlapping matches resolve left to right: in [1, 1, 1] the first two ids "
        "form the pair, giving [new_id, 1], not [1, new_id]",
    ),
    (
        _merge_drops_last,
        "the last id went missing (off by one at the end): when the scan reaches the "
        "final id, which has no right neighbour, keep it",
    ),
    (
        _merge_misses_last_pair,
        "the pair formed by the last two ids was not merged (off by one at the end): "
        "the last pair to test is (ids[-2], ids[-1])",
    ),
]


def _first_id_difference(expected: list[int], actual: list[int]) -> str:
    """Describe where two different lists of ids first part."""
    sizes = ""
    if len(actual) != len(expected):
        sizes = f"expected {_count_ids(len(expected))}, got {len(actual)}; "
    for position, (want, got) in enumerate(zip(expected, actual, strict=False)):
        if want != got:
            where = f"first difference at position {position}"
            return f"{sizes}{where}: expected {want}, got {got}"
    shared = min(len(expected), len(actual))
    if len(actual) < len(expected):
        missing = _short_list(expected[shared:])
        return f"{sizes}the first {shared} match, then yours lacks {missing}"
    extra = _short_list(actual[shared:])
    return f"{sizes}the first {shared} match, then yours adds {extra}"


def _count_ids(n: int) -> str:
    """'1 id', '2 ids'."""
    return f"{n} id" if n == 1 else f"{n} ids"


def _short_list(ids: list[int]) -> str:
    """A list of ids, cut after MAX_LISTED of them."""
    if len(ids) <= MAX_LISTED:
        return str(ids)
    return "[" + ", ".join(str(i) for i in ids[:MAX_LISTED]) + ", ...]"


# --- 2.2: the fallback hints of the cases, and plausible wrong encoders

_BYTES = (
    'start from the UTF-8 bytes, list(text.encode("utf-8")): "é" is one character '
    "but two bytes, 195 and 169"
)
_ONE = "replace every occurrence of a pair that has a merge, not only the first one"
_ORDER = "apply the merges in the order they were learned: lowest new id first"
_REPEAT = "a merged token can be merged again: (256, 256) -> 257 needs 256s to exist"
_EMPTY = "the empty string has no bytes, so it encodes to []"


def _apply_in_turn(ids: list[int], pairs: list[Pair], merges: dict) -> list[int]:
    """Applies the given pairs' merges once each, in the given order."""
    for pair in pairs:
        ids = merge(ids, pair, merges[pair])
    return ids


def _encode_characters(text: str, merges: dict[Pair, int]) -> list[int]:
    """Starts from code points (ord) instead of UTF-8 bytes."""
    return _apply_in_turn(
        [ord(c) for c in text], sorted(merges, key=merges.get), merges
    )


def _encode_reversed(text: str, merges: dict[Pair, int]) -> list[int]:
    """Applies the newest merge first."""
    newest_first = sorted(merges, key=merges.get, reverse=True)
    return _apply_in_turn(list(text.encode("utf-8")), newest_first, merges)


def _encode_by_frequency(text: str, merges: dict[Pair, int]) -> list[int]:
    """Merges the most frequent pair that has a merge, again and again."""
    ids = list(text.encode("utf-8"))
    while True:
        known = {p: n for p, n in pair_counts(ids).items() if p in merges}
        if not known:
            return ids
        pair = max(known, key=known.get)
        ids = merge(ids, pair, merges[pair])


def _encode_one_merge(text: str, merges: dict[Pair, int]) -> list[int]:
    """Applies the earliest merge that fits, once, and stops."""
    ids = list(text.encode("utf-8"))
    present = [p for p in pair_counts(ids) if p in merges]
    if not present:
        return ids
    pair = min(present, key=merges.get)
    return merge(ids, pair, merges[pair])


def _encode_one_sweep(text: str, merges: dict[Pair, int]) -> list[int]:
    """One left-to-right scan that merges any pair with a merge, never revisiting."""
    ids, out, i = list(text.encode("utf-8")), [], 0
    while i < len(ids):
        pair = tuple(ids[i : i + 2])
        if pair in merges:
            out.append(merges[pair])
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


_ORDER_HINT = (
    "the merges were applied out of order: apply them in the order they were "
    "learned, lowest new id first, however often a pair occurs in this text"
)
_PASS_HINT = (
    "one pass is not enough: a token made by one merge can take part in a later "
    "merge, so keep merging until no adjacent pair of ids has a merge"
)
_ENCODE_MISTAKES = [
    (
        _encode_characters,
        'start from the UTF-8 bytes, list(text.encode("utf-8")), not ord() of each '
        "character: outside ASCII a character is several bytes (é is 195, 169)",
    ),
    # the one-pass mistakes come first: on "aaaa" applying the merges newest first
    # looks the same as one pass, and that answer has already failed "learned order"
    (_encode_one_merge, _PASS_HINT),
    (_encode_one_sweep, _PASS_HINT),
    (_encode_reversed, _ORDER_HINT),
    (_encode_by_frequency, _ORDER_HINT),
]


# --- 2.3: the fallback hints of the cases, and plausible wrong rotations

_TURN = (
    "with x1 = 1, x2 = 0, cos 0.6 and sin 0.8 the pair turns to "
    "(x1*cos - x2*sin, x2*cos + x1*sin) = (0.6, 0.8)"
)
_HALVES = "channel i pairs with channel i + Dh/2: here channels (0, 2) and (1, 3)"
_LEADING = (
    "x can have any leading dims, (B, H, T, Dh) here: slice the last dim with `...`, "
    "as in x[..., :half]"
)
_REAL_ROPE = "the same formula as the small cases; compare them first"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dim."""
    half = x.size(-1) // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_interleaved(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Pairs neighbours (2i, 2i+1) with the cos/sin layout as given."""
    rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


def _rope_interleaved_halves(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Pairs neighbours (2i, 2i+1), taking pair i's angle from cos[..., i]."""
    half = x.size(-1) // 2
    c, s = cos[..., :half], sin[..., :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    pairs = (even * c - odd * s, odd * c + even * s)
    return torch.stack(pairs, dim=-1).flatten(-2)  # (..., Dh/2, 2) -> (..., Dh)


def _rope_wrong_sign(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Turns by minus the angle."""
    return x * cos - _rotate_half(x) * sin


def _rope_no_cos(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Adds the rotated half without scaling x by cos."""
    return x + _rotate_half(x) * sin


def _rope_sin_term_only(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Keeps only the rotated half's sin term."""
    return _rotate_half(x) * sin


_NO_COS_HINT = (
    "multiply x by cos: the rotation is x * cos + rotate_half(x) * sin, where "
    "rotate_half(x) = (-x2, x1)"
)
_ROPE_MISTAKES = [
    (
        _rope_interleaved,
        "you paired neighbouring channels (2i, 2i+1), as the RoPE paper does; "
        "LLaMA-style models pair channel i with channel i + Dh/2 (rotate half): "
        "split x into x1 = x[..., :Dh/2] and x2 = x[..., Dh/2:]",
    ),
    (
        _rope_interleaved_halves,
        "you paired neighbouring channels (2i, 2i+1); here channel i pairs with "
        "channel i + Dh/2 (rotate half), and cos and sin are already laid out for that",
    ),
    (
        _rope_wrong_sign,
        "your vectors turn the wrong way (by minus the angle): the first half gets "
        "x1*cos - x2*sin and the second half x2*cos + x1*sin",
    ),
    (_rope_no_cos, _NO_COS_HINT),
    (_rope_sin_term_only, _NO_COS_HINT),
]


MERGE_STEP = register(
    Exercise(
        id="2.1",
        title="BPE merge step",
        cases=merge_cases,
        compare=compare_ids,
        diagnose=diagnose_merge,
    )
)
ENCODE = register(
    Exercise(
        id="2.2",
        title="Encode with BPE",
        cases=encode_cases,
        compare=compare_ids,
        diagnose=diagnose_encode,
    )
)
ROTARY = register(
    Exercise(
        id="2.3",
        title="Rotary position embedding",
        cases=rope_cases,
        diagnose=diagnose_rope,
        explain_error=explain_rope_error,
        keep_inputs=True,  # the caller's tensors must come back unchanged
    )
)
