"""Views for chapter 02: how tokenizers cut text, and how rotary positions turn vectors.

`show_tokens` encodes a text with one or more byte-level tokenizers (the course's own
`BPETokenizer` or a `transformers` one such as SmolLM2's) and shows each token on its
own background colour, as self-contained HTML with a plain-text fallback.
`plot_rope_rotation` draws pairs of channels of one vector as arrows that turn with
the position.
"""

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

# pale, clearly different backgrounds; neighbouring tokens never share one
PALETTE = ("#fde68a", "#bfdbfe", "#fecaca", "#bbf7d0", "#e9d5ff")


@cache
def _char_to_byte() -> dict[str, int]:
    """Invert GPT-2's byte-to-character table, which byte-level BPE vocabularies use.

    Printable bytes stand for themselves; the other 68 (control characters, space,
    ...) are shifted to the characters 256, 257, ... in byte order, so a space is "Ġ".
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in printable]
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Encode text without adding any special tokens at the ends.

    Args:
        tokenizer: a `BPETokenizer` or a `transformers` tokenizer.
        text: any string.

    Returns:
        Token ids, length T.

    Introduced in chapter 2.
    """
    if hasattr(tokenizer, "token_bytes"):  # the course's own BPETokenizer
        return tokenizer.encode(text)
    return tokenizer.encode(text, add_special_tokens=False)


def token_bytes(tokenizer: Any, ids: Sequence[int]) -> list[bytes]:
    """The bytes each token stands for.

    Args:
        tokenizer: a `BPETokenizer`, or a byte-level BPE tokenizer from `transformers`
            (GPT-2, SmolLM2, LLaMA 3, ...).
        ids: token ids, length T.

    Returns:
        T byte strings; joined, they give the encoded text's UTF-8 bytes.

    Raises:
        ValueError: a token is not written in GPT-2's byte alphabet, so `tokenizer`
            is not a byte-level BPE tokenizer (WordPiece or SentencePiece, say).

    Introduced in chapter 2.
    """
    ids = [int(i) for i in ids]
    if hasattr(tokenizer, "token_bytes"):
        return [tokenizer.token_bytes(i) for i in ids]
    added = tokenizer.get_added_vocab()  # special tokens are stored as plain text
    table = _char_to_byte()
    pieces = []
    for token in tokenizer.convert_ids_to_tokens(ids):
        if token in added:
            pieces.append(token.encode("utf-8"))
        elif all(c in table for c in token):
            pieces.append(bytes(table[c] for c in token))
        else:
            raise ValueError(
                f"token {token!r} is not written in GPT-2's byte alphabet; "
                "token_bytes needs a byte-level BPE tokenizer such as SmolLM2's"
            )
    return pieces


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token's text, for display.

    A token that holds only part of a multi-byte character shows those bytes as
    escapes, so the four tokens of an emoji read "\\xf0", "\\x9f", ... instead of
    four identical replacement characters.

    Args:
        tokenizer: as for `token_bytes`.
        ids: token ids, length T.

    Returns:
        T strings.

    Introduced in chapter 2.
    """
    pieces = token_bytes(tokenizer, ids)
    return [piece.decode("utf-8", errors="backslashreplace") for piece in pieces]


@dataclass
class TokenView:
    """One text cut into tokens by several tokenizers; shows as coloured HTML.

    Jupyter draws `_repr_html_`: one row per tokenizer, each token on its own
    background colour, its id shown on hover. Elsewhere `repr` lists the tokens
    separated by "|".

    Introduced in chapter 2.
    """

    text: str
    rows: dict[str, list[tuple[int, str]]]  # tokenizer name -> (id, text) per token

    def _repr_html_(self) -> str:
        blocks = []
        for name, tokens in self.rows.items():
            per_token = len(self.text) / max(len(tokens), 1)
            caption = (
                f"<div style='font-family:sans-serif;font-size:90%;margin:6px 0 2px'>"
                f"<b>{html.escape(name)}</b>: {len(tokens)} tokens, "
                f"{per_token:.2f} characters per token</div>"
            )
            spans = "".join(
                _token_span(token_id, text, PALETTE[k % len(PALETTE)])
                for k, (token_id, text) in enumerate(tokens)
            )
            body = (
                "<div style='font-family:monospace;white-space:pre-wrap;"
                f"line-height:1.9;color:#111'>{spans}</div>"
            )
            blocks.append(caption + body)
        return "<div>" + "".join(blocks) + "</div>"

    def __repr__(self) -> str:
        lines = []
        for name, tokens in self.rows.items():
            joined = "|".join(text for _, text in tokens)
            lines.append(f"{name} ({len(tokens)} tokens): {joined!r}")
        return "\n".join(lines)


def _token_span(token_id: int, text: str, colour: str) -> str:
    """One token as an HTML span; a newline shows as ⏎ and still breaks the line."""
    shown = html.escape(text).replace("\n", "⏎\n")
    return (
        f"<span title='id {token_id}' style='background:{colour};"
        f"border-radius:3px;padding:1px 0'>{shown}</span>"
    )


def show_tokens(text: str, tokenizers: Mapping[str, Any]) -> TokenView:
    """Encode `text` with each tokenizer and show where its tokens begin and end.

    Args:
        text: any string.
        tokenizers: display name -> tokenizer (see `token_bytes` for the kinds).

    Returns:
        A `TokenView`; as the last value of a notebook cell it draws itself.

    Introduced in chapter 2.
    """
    rows = {}
    for name, tokenizer in tokenizers.items():
        ids = encode_plain(tokenizer, text)
        rows[name] = list(zip(ids, token_texts(tokenizer, ids), strict=True))
    return TokenView(text, rows)


def plot_rope_rotation(
    points: torch.Tensor,
    pairs: Sequence[int],
    frequencies: Sequence[float],
    title: str,
) -> Figure:
    """Arrows of channel pairs turning with the position, one panel per pair.

    Args:
        points: (P, T, 2): for each of P pairs, its two channels (i, i + Dh/2) at
            positions 0..T-1.
        pairs: P pair indices i, for the panel titles.
        frequencies: P angles per position w_i, in radians, for the panel titles.
        title: the figure's title.

    Returns:
        The figure; arrows are coloured by position, the dashed circle is the
        length of the vector at position 0.

    Introduced in chapter 2.
    """
    points = points.detach().cpu().float()
    n_pairs, seq_len = points.shape[:2]
    fig, axes = plt.subplots(
        1, n_pairs, figsize=(4.2 * n_pairs + 1.2, 4.4), layout="constrained"
    )
    axes = [axes] if n_pairs == 1 else list(axes)
    colours = plt.get_cmap("viridis")
    norm = Normalize(0, seq_len - 1)
    for ax, xy, pair, w in zip(axes, points, pairs, frequencies, strict=True):
        radius = float(xy[0].norm())
        ax.add_patch(plt.Circle((0, 0), radius, fill=False, ls="--", color="grey"))
        for p, (x1, x2) in enumerate(xy.tolist()):
            colour = colours(norm(p))
            ax.annotate(
                "", (x1, x2), (0, 0), arrowprops={"arrowstyle": "->", "color": colour}
            )
            ax.text(1.12 * x1, 1.12 * x2, f"{p}", ha="center", va="center")
        limit = 1.3 * radius
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.axhline(0, color="lightgrey", lw=0.8)
        ax.axvline(0, color="lightgrey", lw=0.8)
        ax.set_title(f"pair i={pair}: turns {w:g} rad per position")
        ax.set_xlabel(f"channel {pair}")
        ax.set_ylabel(f"channel {pair} + Dh/2")
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=colours)
    fig.colorbar(mappable, ax=axes, label="position p", shrink=0.8)
    fig.suptitle(title)
    return fig
