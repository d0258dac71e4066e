"""Tests of utils.tokens_view: token bytes for both kinds of tokenizer, the coloured
HTML view of token boundaries, and the RoPE rotation plot."""

from functools import cache

import matplotlib.pyplot as plt
import pytest
import torch

from utils.reference import BPETokenizer
from utils.tokens_view import (
    PALETTE,
    TokenView,
    _char_to_byte,
    encode_plain,
    plot_rope_rotation,
    show_tokens,
    token_bytes,
    token_texts,
)

EOT = "<|endoftext|>"
TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler 🙂"


@cache
def small_tokenizer() -> BPETokenizer:
    """A BPE tokenizer trained once on a few repeats of TEXT, with one special."""
    tokenizer = BPETokenizer()
    tokenizer.train(TEXT * 4, vocab_size=300, special_tokens=[EOT])
    return tokenizer


class FakeByteLevel:
    """A stand-in for a `transformers` byte-level tokenizer: one token per byte,
    written in GPT-2's byte alphabet, plus one added special token."""

    def __init__(self) -> None:
        self.to_char = {b: c for c, b in _char_to_byte().items()}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [] if not add_special_tokens else [256]  # a BOS the view must skip
        return ids + list(text.encode("utf-8"))

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [EOT if i == 256 else self.to_char[i] for i in ids]

    def get_added_vocab(self) -> dict[str, int]:
        return {EOT: 256}


def test_char_to_byte_covers_every_byte_once() -> None:
    table = _char_to_byte()
    assert sorted(table.values()) == list(range(256))
    assert table["Ġ"] == ord(" ") and table["Ċ"] == ord("\n") and table["A"] == 65


@pytest.mark.parametrize("make", [small_tokenizer, FakeByteLevel], ids=["ours", "hf"])
def test_token_bytes_join_to_the_text(make) -> None:
    tokenizer = make()
    ids = encode_plain(tokenizer, TEXT)
    assert b"".join(token_bytes(tokenizer, ids)) == TEXT.encode("utf-8")


def test_token_bytes_keeps_special_tokens_as_text() -> None:
    assert token_bytes(FakeByteLevel(), [256, 65]) == [EOT.encode(), b"A"]
    tokenizer = small_tokenizer()
    ids = tokenizer.encode("a" + EOT)
    assert token_bytes(tokenizer, ids)[-1] == EOT.encode()


def test_token_bytes_rejects_tokenizers_that_are_not_byte_level() -> None:
    class WordPiece(FakeByteLevel):
        def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
            return ["日本" for _ in ids]

    with pytest.raises(ValueError, match="byte-level"):
        token_bytes(WordPiece(), [1])


def test_token_texts_escape_parts_of_a_character() -> None:
    texts = token_texts(FakeByteLevel(), list("🙂".encode()))
    assert texts == ["\\xf0", "\\x9f", "\\x99", "\\x82"]
    assert token_texts(FakeByteLevel(), list("é a".encode())) == [
        "\\xc3",
        "\\xa9",
        " ",
        "a",
    ]


def test_show_tokens_html_escapes_text_and_alternates_colours() -> None:
    view = show_tokens("<i>&</i>\nx", {"bytes": FakeByteLevel()})
    page = view._repr_html_()
    assert "<i>" not in page and "&lt;" in page and "&amp;" in page
    assert "⏎\n" in page and "http" not in page  # self-contained, newline marked
    colours = [page.count(f"background:{c}") for c in PALETTE]
    assert colours == [2, 2, 2, 2, 2]  # 10 tokens cycle through the 5 colours
    assert "10 tokens" in page


def test_show_tokens_one_row_per_tokenizer_and_plain_repr() -> None:
    tokenizers = {"ours": small_tokenizer(), "bytes": FakeByteLevel()}
    view = show_tokens("to be", tokenizers)
    assert isinstance(view, TokenView) and list(view.rows) == ["ours", "bytes"]
    assert [text for _, text in view.rows["bytes"]] == list("to be")
    lines = repr(view).splitlines()
    assert lines[1] == "bytes (5 tokens): 't|o| |b|e'"
    assert "".join(text for _, text in view.rows["ours"]) == "to be"


def test_plot_rope_rotation_draws_one_panel_per_pair() -> None:
    angles = torch.arange(6)[:, None] * torch.tensor([1.0, 0.1])  # (T, P)
    points = torch.stack((angles.cos(), angles.sin()), dim=-1).transpose(0, 1)
    fig = plot_rope_rotation(points, [0, 1], [1.0, 0.1], "rotation")
    panels = [ax for ax in fig.axes if ax.get_title().startswith("pair")]
    assert len(panels) == 2 and len(fig.axes) == 3  # two panels and a colorbar
    assert panels[1].get_title() == "pair i=1: turns 0.1 rad per position"
    labels = [t.get_text() for t in panels[0].texts if t.get_text()]
    assert labels == ["0", "1", "2", "3", "4", "5"]  # one label per arrow
    plt.close(fig)


@pytest.mark.slow
def test_token_bytes_of_smollm2_join_to_the_text() -> None:
    from utils.models import load_smollm2_tokenizer

    tokenizer = load_smollm2_tokenizer()
    text = "<|im_start|>user\nWherefore art thou, naïve café? 🙂🚀 12"
    ids = encode_plain(tokenizer, text)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert b"".join(token_bytes(tokenizer, ids)) == text.encode("utf-8")
