"""Byte-level byte-pair encoding (BPE) from scratch: the tokenizer of chapter 02.

A token stands for a sequence of bytes. Training starts from the 256 single bytes and
repeatedly merges the most frequent adjacent pair of tokens into a new token, recording
each merge. Encoding turns text into UTF-8 bytes and replays the merges in the order
they were learned; decoding joins the tokens' bytes. Every string is a sequence of
UTF-8 bytes, so any text can be encoded, and decoding its ids gives the text back.

Training and encoding first cut the text into chunks (words with their leading space,
runs of digits, of punctuation, of whitespace) and never merge across a chunk boundary,
so that "dog" and "dog." share a token instead of learning both.
"""

import json
import operator
import re
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

Pair = tuple[int, int]  # two adjacent token ids

N_BYTES = 256  # ids 0..255 are the single bytes; learned tokens get the next ids
FILE_KIND = "llm-course byte-level BPE"  # marks files written by `BPETokenizer.save`
FILE_VERSION = 1

# A GPT-2-like pre-split written with Python's `re` alone: `re` has no \p{L} (letter)
# class, so letters are spelled [^\W\d_], "word characters that are not digits or _".
# The alternatives together match every character, so the chunks always join back into
# the text.
SPLIT_PATTERN = re.compile(
    r"'(?:[sdmt]|ll|ve|re)"  # English contractions: 's 'd 'm 't 'll 've 're
    r"| ?[^\W\d_]+"  # a run of letters, with at most one leading space
    r"| ?\d+"  # a run of digits
    r"| ?(?:[^\s\w]|_)+"  # a run of punctuation and symbols
    r"|\s+(?!\S)"  # whitespace, leaving its last space to the word that follows
    r"|\s+"  # any remaining whitespace
)


def split_text(text: str) -> list[str]:
    """Cut text into the chunks that BPE merges stay inside of.

    Args:
        text: any string.

    Returns:
        The chunks in order; joined, they give `text` back. For example
        "Hello, world!" -> ["Hello", ",", " world", "!"].

    Introduced in chapter 2.
    """
    return SPLIT_PATTERN.findall(text)


def pair_counts(ids: list[int]) -> dict[Pair, int]:
    """Count how often each pair of adjacent ids occurs.

    Args:
        ids: a sequence of token ids, length T.

    Returns:
        A dict from (left id, right id) to its count, in order of first occurrence.
        For example [1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}.

    Introduced in chapter 2.
    """
    counts: dict[Pair, int] = {}
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def most_frequent_pair(counts: dict[Pair, int]) -> Pair:
    """Pick the pair to merge next: the most frequent one, ties to the smallest pair.

    The tie rule: among pairs with the same count, the pair that is smallest as a tuple
    of ids wins, so (32, 116) beats (101, 32) and (101, 32) beats (101, 100). It makes
    training deterministic whatever order the pairs were counted in. Real tokenizers
    break ties in other ways; any fixed rule works.

    Args:
        counts: pair counts, as returned by `pair_counts`.

    Returns:
        The chosen (left id, right id).

    Raises:
        ValueError: `counts` is empty (a text of fewer than two tokens has no pairs).

    Introduced in chapter 2.
    """
    if not counts:
        raise ValueError(
            "no pairs to choose from: the ids have fewer than two tokens; "
            "stop merging when pair_counts(ids) is empty"
        )
    # min of (-count, pair): the highest count first, then the smallest pair
    return min(counts, key=lambda pair: (-counts[pair], pair))


def merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by `new_id`, scanning left to right.

    Occurrences never overlap: once a pair is replaced, the scan continues after its
    second id, so merging (1, 1) in [1, 1, 1] gives [new_id, 1].

    Args:
        ids: token ids, length T.
        pair: the (left id, right id) to replace.
        new_id: the id of the merged token.

    Returns:
        A new list, shorter than `ids` by one per replacement; `ids` is unchanged.

    Introduced in chapter 2.
    """
    merged = []
    i = 0
    while i < len(ids):
        is_match = i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair
        if is_match:
            merged.append(new_id)
            i += 2  # skip the pair's second id: it is part of the new token
        else:
            merged.append(ids[i])
            i += 1
    return merged


def encode_with_merges(text: str, merges: dict[Pair, int]) -> list[int]:
    """Encode text into token ids by applying learned merges to its UTF-8 bytes.

    Merges apply in the order they were learned. Learned order is the order of the new
    ids, so each step merges the adjacent pair with the lowest new id, everywhere it
    occurs, until no adjacent pair has a merge. This gives the same ids as applying
    every merge in turn to the whole text, but only looks at pairs that occur.

    Each step rescans the whole text, so this is slow beyond a few thousand characters;
    `BPETokenizer.encode` applies it to one short chunk at a time and remembers chunks.

    Args:
        text: any string.
        merges: (left id, right id) -> new id, for every learned merge.

    Returns:
        Token ids, at most one per UTF-8 byte of `text`; [] for "".

    Introduced in chapter 2.
    """
    ids = list(text.encode("utf-8"))  # start from bytes, 0..255
    while len(ids) >= 2:
        # the pair learned first among those present (pairs without a merge rank last)
        pair = min(pair_counts(ids), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break  # no adjacent pair has a merge: the encoding is final
        ids = merge(ids, pair, merges[pair])
    return ids


class BPETokenizer:
    """A byte-level BPE tokenizer: train it on text, then encode and decode with it.

    Ids 0..255 are single bytes; learned tokens follow in the order they were merged,
    and special tokens (whole strings such as "<|endoftext|>") come last.

    Example:
        >>> tokenizer = BPETokenizer()
        >>> tokenizer.train("low lower lowest", vocab_size=260)
        >>> tokenizer.decode(tokenizer.encode("lowest"))
        'lowest'

    Introduced in chapter 2.
    """

    def __init__(self) -> None:
        self._merges: dict[Pair, int] = {}  # pair -> new id, in learned order
        self._vocab: list[bytes] = [bytes([b]) for b in range(N_BYTES)]  # id -> bytes
        self._special: dict[str, int] = {}  # special token -> id
        self._cache: dict[str, list[int]] = {}  # chunk -> ids, since words repeat

    def train(
        self, text: str, vocab_size: int, special_tokens: Sequence[str] = ()
    ) -> None:
        """Learn merges from text until the vocabulary has `vocab_size` tokens.

        Each step merges the most frequent adjacent pair; ties go to the smallest pair
        (see `most_frequent_pair`). Merges never cross chunk boundaries (`split_text`),
        and special tokens in `text` are cut out before counting. Training stops early,
        with a smaller vocabulary, once no pair occurs twice: merging a pair seen once
        would only memorise the text. Training again replaces what was learned.

        Args:
            text: the training text; "" or a single character learns no merges.
            vocab_size: V, the wanted vocabulary size: 256 bytes + merges + specials.
            special_tokens: whole strings that get their own ids after the merges.

        Raises:
            ValueError: `vocab_size` is below 256 + len(special_tokens), or a special
                token is empty or repeated.
            TypeError: `special_tokens` is a single string instead of a sequence.

        Introduced in chapter 2.
        """
        specials = _check_special_tokens(special_tokens)
        n_merges = vocab_size - N_BYTES - len(specials)
        if n_merges < 0:
            raise ValueError(
                f"vocab_size must be at least {N_BYTES + len(specials)} (256 bytes + "
                f"{len(specials)} special tokens), got {vocab_size}; "
                f"for 100 merges pass vocab_size={N_BYTES + len(specials) + 100}"
            )
        pieces = _split_on_specials(text, specials) if specials else [text]
        chunk_counts = Counter(
            chunk
            for piece in pieces
            if piece not in specials  # special tokens never take part in merges
            for chunk in split_text(piece)
        )
        self._set_vocab(_learn_merges(chunk_counts, n_merges), specials)

    def encode(self, text: str, allowed_special: bool = True) -> list[int]:
        """Turn text into token ids.

        Args:
            text: any string.
            allowed_special: when True, a special token's string in `text` becomes its
                id; when False it is encoded as ordinary text.

        Returns:
            Token ids, length T (at most the number of UTF-8 bytes); [] for "".

        Introduced in chapter 2.
        """
        ids: list[int] = []
        specials = list(self._special) if allowed_special else []
        pieces = _split_on_specials(text, specials) if specials else [text]
        for piece in pieces:
            if piece in self._special and allowed_special:
                ids.append(self._special[piece])
                continue
            for chunk in split_text(piece):
                ids.extend(self._encode_chunk(chunk))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Turn token ids back into text.

        The tokens' bytes are joined, then decoded as UTF-8 with errors="replace": a
        byte sequence that is not valid UTF-8 on its own (one token of a multi-byte
        character, say) shows as U+FFFD instead of raising.

        Args:
            ids: token ids, length T; a list, a tuple or a 1-D integer tensor.

        Returns:
            The text.

        Raises:
            ValueError: an id outside the vocabulary; the message names it.

        Introduced in chapter 2.
        """
        data = b"".join(self.token_bytes(token_id) for token_id in ids)
        return data.decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for.

        Args:
            token_id: an id in 0..vocab_size-1.

        Returns:
            The token's bytes; a special token gives its string in UTF-8.

        Raises:
            ValueError: `token_id` is not in the vocabulary.
            TypeError: `token_id` is not an integer.

        Introduced in chapter 2.
        """
        token_id = operator.index(token_id)  # accepts numpy and 0-d tensor ids too
        if 0 <= token_id < len(self._vocab):
            return self._vocab[token_id]
        for text, special_id in self._special.items():
            if special_id == token_id:
                return text.encode("utf-8")
        raise ValueError(
            f"unknown token id {token_id}: this tokenizer has vocab_size="
            f"{self.vocab_size}, so ids run from 0 to {self.vocab_size - 1}; "
            "were the ids made by a different tokenizer?"
        )

    @property
    def vocab_size(self) -> int:
        """V: the number of ids, 256 bytes + learned merges + special tokens."""
        return len(self._vocab) + len(self._special)

    @property
    def merges(self) -> list[Pair]:
        """The learned pairs in learned order; pair k became token 256 + k."""
        return list(self._merges)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Each special token's string and its id."""
        return dict(self._special)

    def save(self, path: str | Path) -> Path:
        """Write the merges and special tokens to a JSON file.

        Args:
            path: the file to write, e.g. "data/bpe_512.json".

        Returns:
            The path written.

        Introduced in chapter 2.
        """
        path = Path(path)
        state = {
            "kind": FILE_KIND,
            "version": FILE_VERSION,
            "merges": [list(pair) for pair in self._merges],
            "special_tokens": list(self._special),
        }
        path.write_text(json.dumps(state), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Read a tokenizer written by `save`.

        Args:
            path: the JSON file.

        Returns:
            A tokenizer that encodes and decodes exactly as the saved one did.

        Raises:
            ValueError: the file was not written by `BPETokenizer.save`.

        Introduced in chapter 2.
        """
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("kind") != FILE_KIND:
            raise ValueError(
                f"{path} is not a tokenizer file written by BPETokenizer.save "
                f"(expected kind {FILE_KIND!r}); train a tokenizer and save it first"
            )
        if state.get("version") != FILE_VERSION:
            raise ValueError(
                f"{path} has format version {state.get('version')!r}, but this code "
                f"reads version {FILE_VERSION}; save the tokenizer again"
            )
        merges = [(int(a), int(b)) for a, b in state["merges"]]
        return cls.from_merges(merges, state["special_tokens"])

    @classmethod
    def from_merges(
        cls, merges: Sequence[Pair], special_tokens: Sequence[str] = ()
    ) -> "BPETokenizer":
        """Build a tokenizer from merges learned elsewhere.

        Args:
            merges: pairs in learned order; pair k becomes token 256 + k.
            special_tokens: strings that get the ids after the merges.

        Returns:
            The tokenizer.

        Raises:
            ValueError: a pair uses an id that does not exist yet at its step.

        Introduced in chapter 2.
        """
        tokenizer = cls()
        tokenizer._set_vocab(list(merges), _check_special_tokens(special_tokens))
        return tokenizer

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
            f"special_tokens={list(self._special)})"
        )

    def _set_vocab(self, merges: list[Pair], specials: list[str]) -> None:
        """Install merges and special tokens, building the id -> bytes table."""
        self._merges, self._special, self._cache = {}, {}, {}
        self._vocab = [bytes([b]) for b in range(N_BYTES)]
        for new_id, (left, right) in enumerate(merges, start=N_BYTES):
            if not (0 <= left < new_id and 0 <= right < new_id):
                raise ValueError(
                    f"merge {(left, right)} for token {new_id} uses an id that does "
                    f"not exist yet (ids so far run from 0 to {new_id - 1}); "
                    "are the merges in learned order?"
                )
            self._merges[(left, right)] = new_id
            self._vocab.append(self._vocab[left] + self._vocab[right])
        first_special = N_BYTES + len(merges)
        self._special = {text: first_special + k for k, text in enumerate(specials)}

    def _encode_chunk(self, chunk: str) -> list[int]:
        """Encode one chunk, remembering the answer: most chunks are common words."""
        if chunk not in self._cache:
            self._cache[chunk] = encode_with_merges(chunk, self._merges)
        return self._cache[chunk]


def _check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    """The special tokens as a list, checked to be distinct non-empty strings."""
    if isinstance(special_tokens, str):
        raise TypeError(
            f"special_tokens must be a sequence of strings, got the string "
            f"{special_tokens!r}; wrap it in a list: [{special_tokens!r}]"
        )
    specials = list(special_tokens)
    for text in specials:
        if not isinstance(text, str) or not text:
            raise ValueError(
                f"each special token must be a non-empty string, got {text!r}"
            )
    if len(set(specials)) != len(specials):
        raise ValueError(f"special tokens must be distinct, got {specials}")
    return specials


def _split_on_specials(text: str, specials: list[str]) -> list[str]:
    """Cut text around special tokens: ordinary pieces and specials, in order."""
    # longest first, so that "<|end|>" cannot steal the start of "<|end|><|pad|>"-like
    # tokens that contain it; the group keeps the specials in re.split's output
    ordered = sorted(specials, key=len, reverse=True)
    pattern = "(" + "|".join(re.escape(text) for text in ordered) + ")"
    return [piece for piece in re.split(pattern, text) if piece]


def _learn_merges(chunk_counts: Counter[str], n_merges: int) -> list[Pair]:
    """Learn up to `n_merges` merges from chunks and how often each occurs.

    Each distinct chunk is stored once with its count, and after a merge only the
    chunks that contained the merged pair are recounted, which makes training on
    Tiny Shakespeare take seconds instead of minutes.
    """
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # distinct chunks
    weights = list(chunk_counts.values())  # how often each chunk occurs in the text
    counts: dict[Pair, int] = {}  # pair -> occurrences in the whole text
    where: dict[Pair, set[int]] = {}  # pair -> indices of the words containing it
    for w, ids in enumerate(words):
        _add_pairs(ids, weights[w], w, counts, where)

    merges: list[Pair] = []
    while len(merges) < n_merges and counts:
        pair = most_frequent_pair(counts)
        if counts[pair] < 2:
            break  # every pair is unique: merging would only memorise the text
        new_id = N_BYTES + len(merges)
        for w in where.pop(pair):
            _add_pairs(words[w], -weights[w], w, counts, where)  # forget old pairs
            words[w] = merge(words[w], pair, new_id)
            _add_pairs(words[w], weights[w], w, counts, where)  # count the new ones
        merges.append(pair)
    return merges


def _add_pairs(
    ids: list[int],
    weight: int,
    w: int,
    counts: dict[Pair, int],
    where: dict[Pair, set[int]],
) -> None:
    """Add `weight` to the count of each pair in word `w` (negative to remove them)."""
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + weight
        if counts[pair] == 0:
            del counts[pair]  # so that `counts` holds only pairs that occur
        elif weight > 0:
            where.setdefault(pair, set()).add(w)
