"""Tests of chapter 02's exercise checks: BPE merge, BPE encode, rotary embedding."""

from collections.abc import Callable

import pytest
import torch

from utils.checks import EXERCISES, ch02, check_exercise
from utils.reference.bpe import encode_with_merges, merge
from utils.reference.positions import apply_rope

# --- right answers written another way than the reference


def _merge_by_index(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if ids[i : i + 2] == list(pair):  # a slice past the end is just shorter
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _encode_in_turn(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    ids = list(text.encode("utf-8"))
    for pair, new_id in merges.items():  # dict order is learned order
        ids = merge(ids, pair, new_id)
    return ids


def _rope_by_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[..., :half], sin[..., :half]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


# --- plausible wrong answers, written independently of the checker


def _merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if ids[i] == pair[0] and ids[i + 1] == pair[1]:
            return ids[:i] + [new_id] + ids[i + 2 :]
    return list(ids)


def _merge_no_skip(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        else:
            out.append(ids[i])
    return out


def _merge_from_the_right(ids, pair, new_id):
    out, i = [], len(ids) - 1
    while i >= 0:
        if i >= 1 and (ids[i - 1], ids[i]) == pair:
            out.insert(0, new_id)
            i -= 2
        else:
            out.insert(0, ids[i])
            i -= 1
    return out


def _merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_misses_last_pair(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i < len(ids) - 2 and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _encode_ord(text, merges):
    ids = [ord(c) for c in text]
    for pair, new_id in merges.items():
        ids = merge(ids, pair, new_id)
    return ids


def _encode_newest_first(text, merges):
    ids = list(text.encode("utf-8"))
    for pair, new_id in reversed(list(merges.items())):
        ids = merge(ids, pair, new_id)
    return ids


def _encode_most_frequent_first(text, merges):
    ids = list(text.encode("utf-8"))
    while True:
        counts = {}
        for pair in zip(ids, ids[1:], strict=False):
            if pair in merges:
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return ids
        best = max(counts, key=counts.get)
        ids = merge(ids, best, merges[best])


def _encode_single_step(text, merges):
    ids = list(text.encode("utf-8"))
    pairs = set(zip(ids, ids[1:], strict=False))
    best = min(pairs, key=lambda p: merges.get(p, float("inf")), default=None)
    return merge(ids, best, merges[best]) if best in merges else ids


def _encode_single_scan(text, merges):
    ids, out, i = list(text.encode("utf-8")), [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) in merges:
            out.append(merges[(ids[i], ids[i + 1])])
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _rope_interleaved(x, cos, sin):
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((-x_odd, x_even), dim=-1).reshape(x.shape)
    return x * cos + rotated * sin


def _rope_other_way(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((x[..., half:], -x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _rope_no_cos(x, cos, sin):
    half = x.shape[-1] // 2
    return x + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _rope_two_dims_only(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[:, :half], x[:, half:]  # slices dim 1, not the last dim
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _stub(*args: object, **kwargs: object) -> None:
    raise NotImplementedError("Exercise")


# --- the checker's outcomes


@pytest.mark.parametrize(
    ("exercise_id", "fn", "line"),
    [
        ("2.1", merge, "Exercise 2.1: passed 6/6 checks"),
        ("2.1", _merge_by_index, "Exercise 2.1: passed 6/6 checks"),
        ("2.2", encode_with_merges, "Exercise 2.2: passed 6/6 checks"),
        ("2.2", _encode_in_turn, "Exercise 2.2: passed 6/6 checks"),
        ("2.3", apply_rope, "Exercise 2.3: passed 4/4 checks"),
        ("2.3", _rope_by_halves, "Exercise 2.3: passed 4/4 checks"),
    ],
)
def test_check_exercise_reference_passes(
    capsys: pytest.CaptureFixture[str], exercise_id: str, fn: Callable, line: str
) -> None:
    assert check_exercise(exercise_id, fn) is None
    assert capsys.readouterr().out == line + "\n"


@pytest.mark.parametrize("exercise_id", ["2.1", "2.2", "2.3"])
def test_check_exercise_stub_not_attempted(
    capsys: pytest.CaptureFixture[str], exercise_id: str
) -> None:
    assert check_exercise(exercise_id, _stub) is None
    assert capsys.readouterr().out == f"Exercise {exercise_id}: not attempted yet\n"


@pytest.mark.parametrize(
    ("exercise_id", "wrong", "case", "keyword"),
    [
        ("2.1", _merge_first_only, "check 1/6 (two occurrences)", "first occurrence"),
        ("2.1", _merge_no_skip, "check 1/6 (two occurrences)", "move past both"),
        ("2.1", _merge_from_the_right, "check 2/6 (overlapping pair)", "left to right"),
        ("2.1", _merge_drops_last, "check 1/6 (two occurrences)", "off by one"),
        ("2.1", _merge_misses_last_pair, "check 4/6 (pair at the end)", "off by one"),
        ("2.2", _encode_ord, "check 1/6 (bytes only)", "UTF-8 bytes"),
        ("2.2", _encode_newest_first, "check 3/6 (learned order)", "lowest new id"),
        (
            "2.2",
            _encode_most_frequent_first,
            "check 3/6 (learned order)",
            "lowest new id",
        ),
        ("2.2", _encode_single_step, "check 3/6 (learned order)", "one pass"),
        ("2.2", _encode_single_scan, "check 4/6 (merge of merges)", "one pass"),
        ("2.3", _rope_interleaved, "check 2/4 (four channels)", "i + Dh/2"),
        ("2.3", _rope_other_way, "check 1/4 (one pair of channels)", "wrong way"),
        ("2.3", _rope_no_cos, "check 1/4 (one pair of channels)", "multiply x by cos"),
        ("2.3", _rope_two_dims_only, "check 3/4 (batch of heads)", "last dim only"),
    ],
)
def test_check_rejects_wrong_answer(
    exercise_id: str, wrong: Callable, case: str, keyword: str
) -> None:
    with pytest.raises(AssertionError) as info:
        check_exercise(exercise_id, wrong)
    message = str(info.value)
    assert f"Exercise {exercise_id} failed {case}" in message
    assert keyword in message


def test_merge_check_shows_expected_and_actual_ids() -> None:
    with pytest.raises(AssertionError) as info:
        check_exercise("2.1", _merge_first_only)
    message = str(info.value)
    assert "call:     _merge_first_only([1, 2, 3, 1, 2, 3], (1, 2), 99)" in message
    assert "expected: [99, 3, 99, 3]" in message
    assert "got:      [99, 3, 1, 2, 3]" in message
    assert "expected 4 ids, got 5; first difference at position 2" in message


def test_exercises_have_their_titles() -> None:
    titles = {key: EXERCISES[key].title for key in ("2.1", "2.2", "2.3")}
    assert titles == {
        "2.1": "BPE merge step",
        "2.2": "Encode with BPE",
        "2.3": "Rotary position embedding",
    }


# --- comparing lists of ids


@pytest.mark.parametrize(
    ("actual", "problem"),
    [
        (None, "forget to `return`"),
        (torch.tensor([1, 2, 3]), ".tolist()"),
        ((1, 2, 3), "got tuple"),
        ([1, 2.0, 3], "item 1 is 2.0 (float)"),
        ([1, 2], "expected 3 ids, got 2; the first 2 match, then yours lacks [3]"),
        ([1, 2, 3, 4], "the first 3 match, then yours adds [4]"),
        ([1, 5, 3], "first difference at position 1: expected 2, got 5"),
    ],
)
def test_compare_ids_describes_difference(actual: object, problem: str) -> None:
    assert problem in ch02.compare_ids([1, 2, 3], actual)
    assert ch02.compare_ids([1, 2, 3], [1, 2, 3]) is None
