"""Tests of the byte-level BPE reference: merges, training rules, round trips, files."""

import json
import os
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils import data
from utils.reference.bpe import (
    N_BYTES,
    BPETokenizer,
    encode_with_merges,
    merge,
    most_frequent_pair,
    pair_counts,
    split_text,
)

EOT = "<|endoftext|>"
# a small training text with accents, CJK and emoji, so that some learned tokens hold
# only part of a multi-byte character
TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.\n"
    "Café au lait, naïve façade, crème brûlée. 日本語の文章です。日本語!\n"
    "😀😀 grin, 😀 smile 👍🏽👍🏽 thumbs up. 12 + 34 = 46, 1234 + 1234 = 2468.\n"
) * 3


@cache
def small_tokenizer() -> BPETokenizer:
    """A tokenizer trained once on TRAIN_TEXT, with one special token."""
    tokenizer = BPETokenizer()
    tokenizer.train(TRAIN_TEXT + EOT + TRAIN_TEXT, vocab_size=400, special_tokens=[EOT])
    return tokenizer


def _naive_merges(text: str, n_merges: int) -> list[tuple[int, int]]:
    """Training without any bookkeeping: recount every pair after every merge."""
    words = [list(chunk.encode("utf-8")) for chunk in split_text(text)]
    merges = []
    for new_id in range(N_BYTES, N_BYTES + n_merges):
        counts: dict[tuple[int, int], int] = {}
        for word in words:
            for pair, n in pair_counts(word).items():
                counts[pair] = counts.get(pair, 0) + n
        ranked = sorted(counts, key=lambda p: (-counts[p], p))  # ties: smallest pair
        if not ranked or counts[ranked[0]] < 2:
            break
        words = [merge(word, ranked[0], new_id) for word in words]
        merges.append(ranked[0])
    return merges


# --- the building blocks


def test_pair_counts_counts_in_first_occurrence_order() -> None:
    counts = pair_counts([1, 2, 3, 1, 2])
    assert counts == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert list(counts) == [(1, 2), (2, 3), (3, 1)]
    assert pair_counts([7]) == {} and pair_counts([]) == {}


@pytest.mark.parametrize(
    ("ids", "pair", "expected"),
    [
        ([1, 2, 3, 1, 2], (1, 2), [9, 3, 9]),
        ([1, 1, 1], (1, 1), [9, 1]),
        ([1, 1, 1, 1], (1, 1), [9, 9]),
        ([5, 6, 5], (5, 6), [9, 5]),
        ([3, 4, 5], (4, 5), [3, 9]),
        ([3, 4, 5], (5, 4), [3, 4, 5]),
        ([], (1, 2), []),
    ],
)
def test_merge_replaces_non_overlapping_left_to_right(
    ids: list[int], pair: tuple[int, int], expected: list[int]
) -> None:
    original = list(ids)
    assert merge(ids, pair, 9) == expected
    assert ids == original  # the input list is left alone


def test_most_frequent_pair_ties_go_to_smallest_pair() -> None:
    counts = {(101, 32): 2, (32, 116): 2, (101, 100): 2, (1, 5): 1}
    assert most_frequent_pair(counts) == (32, 116)
    assert most_frequent_pair({(9, 9): 1, (200, 1): 3}) == (200, 1)
    with pytest.raises(ValueError, match="no pairs"):
        most_frequent_pair({})


def test_split_text_keeps_words_with_their_leading_space() -> None:
    assert split_text("Hello, world!") == ["Hello", ",", " world", "!"]
    assert split_text("don't  stop_now 42") == [
        "don",
        "'t",
        " ",
        " stop",
        "_",
        "now",
        " 42",
    ]


@given(st.text())
def test_split_text_chunks_join_back(text: str) -> None:
    assert "".join(split_text(text)) == text


# --- training rules


def test_train_breaks_ties_by_smallest_pair() -> None:
    # (97, 98) "ab" is seen first, but " c" (32, 99) ties with it and is smaller
    tokenizer = BPETokenizer()
    tokenizer.train("ab cd ab cd", vocab_size=N_BYTES + 1)
    assert tokenizer.merges == [(32, 99)]
    assert tokenizer.vocab_size == N_BYTES + 1


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab c\né😀", max_size=80), st.integers(0, 12))
def test_train_matches_naive_recounting(text: str, n_merges: int) -> None:
    tokenizer = BPETokenizer()
    tokenizer.train(text, vocab_size=N_BYTES + n_merges)
    assert tokenizer.merges == _naive_merges(text, n_merges)


@pytest.mark.parametrize("text", ["", "a", "ab", "abcdef"])
def test_train_without_repeated_pairs_learns_nothing(text: str) -> None:
    tokenizer = BPETokenizer()
    tokenizer.train(text, vocab_size=300, special_tokens=[EOT])
    assert tokenizer.merges == []
    assert tokenizer.vocab_size == N_BYTES + 1
    assert tokenizer.encode(text + EOT) == list(text.encode("utf-8")) + [N_BYTES]


def test_train_stops_when_no_pair_occurs_twice() -> None:
    tokenizer = BPETokenizer()
    tokenizer.train("aaaa", vocab_size=1000)  # "aa" twice, then "aa aa" only once
    assert tokenizer.merges == [(97, 97)]
    assert tokenizer.encode("aaaa") == [256, 256]


@pytest.mark.parametrize(
    ("vocab_size", "specials", "error", "message"),
    [
        (255, (), ValueError, "at least 256"),
        (257, [EOT, "<|pad|>"], ValueError, "at least 258.*vocab_size=358"),
        (300, EOT, TypeError, "wrap it in a list"),
        (300, [""], ValueError, "non-empty string"),
        (300, [EOT, EOT], ValueError, "distinct"),
    ],
)
def test_train_validates_arguments(
    vocab_size: int, specials: object, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        BPETokenizer().train("some text", vocab_size, specials)


def test_train_ignores_special_tokens_in_the_text() -> None:
    tokenizer = BPETokenizer()
    tokenizer.train((EOT + "xy") * 20, vocab_size=300, special_tokens=[EOT])
    assert tokenizer.merges == [(120, 121)]  # nothing learned from "<|endoftext|>"
    assert tokenizer.special_tokens == {EOT: 257}


# --- encoding and decoding


@given(st.text())
def test_decode_encode_round_trip(text: str) -> None:
    tokenizer = small_tokenizer()
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode(text, allowed_special=False)) == text


@given(st.text(alphabet="ab c\né😀", max_size=60))
def test_encode_equals_merges_applied_in_turn(text: str) -> None:
    tokenizer = small_tokenizer()
    learned = {pair: new_id for new_id, pair in enumerate(tokenizer.merges, N_BYTES)}
    ids = list(text.encode("utf-8"))
    for pair, new_id in learned.items():  # every merge once, in learned order
        ids = merge(ids, pair, new_id)
    assert encode_with_merges(text, learned) == ids
    chunks = [encode_with_merges(chunk, learned) for chunk in split_text(text)]
    assert tokenizer.encode(text) == [i for chunk in chunks for i in chunk]


def test_encode_empty_text_is_empty() -> None:
    assert small_tokenizer().encode("") == []
    assert encode_with_merges("", {(97, 97): 256}) == []
    assert small_tokenizer().decode([]) == ""


def test_decode_single_tokens_of_emoji_never_raises() -> None:
    tokenizer = small_tokenizer()
    text = "🙂🎉"  # unseen emoji that share their first bytes with the trained ones
    ids = tokenizer.encode(text)
    pieces = [tokenizer.decode([token_id]) for token_id in ids]
    assert len(ids) < len(text.encode("utf-8"))  # some tokens span several bytes
    assert any("\ufffd" in piece for piece in pieces)  # a token is part of a character
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_encode_maps_special_tokens_to_their_ids() -> None:
    tokenizer = small_tokenizer()
    eot_id = tokenizer.special_tokens[EOT]
    ids = tokenizer.encode(f"fox{EOT}dog{EOT}")
    assert eot_id == tokenizer.vocab_size - 1
    assert ids == tokenizer.encode("fox") + [eot_id] + tokenizer.encode("dog") + [
        eot_id
    ]
    plain = tokenizer.encode(EOT, allowed_special=False)
    assert eot_id not in plain and len(plain) > 1
    assert tokenizer.decode(plain) == EOT == tokenizer.decode([eot_id])


def test_decode_unknown_id_raises() -> None:
    tokenizer = small_tokenizer()
    size = tokenizer.vocab_size
    with pytest.raises(ValueError, match=f"unknown token id {size}: .*={size}"):
        tokenizer.decode([65, size])
    with pytest.raises(ValueError, match="unknown token id -1"):
        tokenizer.decode([-1])


def test_token_bytes_of_merged_tokens_join_their_parts() -> None:
    tokenizer = small_tokenizer()
    for new_id, (left, right) in enumerate(tokenizer.merges, N_BYTES):
        joined = tokenizer.token_bytes(left) + tokenizer.token_bytes(right)
        assert tokenizer.token_bytes(new_id) == joined
    assert tokenizer.token_bytes(65) == b"A"


# --- files


def test_save_load_round_trip(tmp_path) -> None:
    tokenizer = small_tokenizer()
    path = tokenizer.save(tmp_path / "bpe.json")
    loaded = BPETokenizer.load(path)
    state = json.loads(path.read_text(encoding="utf-8"))
    assert state["merges"][0] == list(tokenizer.merges[0])  # plain JSON lists
    assert loaded.merges == tokenizer.merges
    assert loaded.special_tokens == tokenizer.special_tokens
    assert loaded.encode(TRAIN_TEXT + EOT) == tokenizer.encode(TRAIN_TEXT + EOT)


def test_load_rejects_other_files(tmp_path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"vocab": {}}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a tokenizer file"):
        BPETokenizer.load(path)


def test_from_merges_rejects_pairs_out_of_order() -> None:
    with pytest.raises(ValueError, match="learned order"):
        BPETokenizer.from_merges([(256, 97), (97, 97)])


# --- Tiny Shakespeare, from the data mirror


@pytest.mark.skipif(
    not os.environ.get(data.MIRROR_ENV),
    reason=f"set {data.MIRROR_ENV} to a folder with the real data files",
)
def test_shakespeare_tokenizer_compresses_shakespeare() -> None:
    text = data.load_shakespeare()
    train, held_out = text[:100_000], text[-100_000:]
    tokenizer = BPETokenizer()
    tokenizer.train(train, vocab_size=1024)
    # training is greedy, so the first 256 merges are what vocab_size=512 learns
    smaller = BPETokenizer.from_merges(tokenizer.merges[:256])
    ids = tokenizer.encode(held_out)
    n_bytes = len(held_out.encode("utf-8"))

    assert tokenizer.vocab_size == 1024
    assert tokenizer.decode(ids) == held_out
    assert n_bytes / len(smaller.encode(held_out)) > 1.6  # about 1.8 bytes per token
    assert len(ids) < len(smaller.encode(held_out))  # more merges, fewer tokens
