"""Tests of utils.widgets: figures are redrawn in place, controls redraw them, and
the next-token explorer reruns its model only when the prompt changes."""

import matplotlib.pyplot as plt
import pytest
import torch

import utils.widgets as uw
from utils.widgets import (
    AttentionExplorer,
    LiveFigure,
    NextTokenExplorer,
    SanityCheck,
    ScalingExplorer,
)


@pytest.fixture
def model_calls(monkeypatch) -> list:
    """Count the explorer's model runs by wrapping `next_token_logits`."""
    calls, real = [], uw.next_token_logits

    def counting(model, tokenizer, prompt, chat=False):
        calls.append((prompt, chat))
        return real(model, tokenizer, prompt, chat=chat)

    monkeypatch.setattr(uw, "next_token_logits", counting)
    return calls


def _title(fig) -> str:
    return fig.axes[0].get_title()


def test_live_figure_show_twice_updates_in_place(displayed) -> None:
    live = LiveFigure()
    first, second = plt.figure(), plt.figure()

    live.show(first)
    live.show(second)

    assert len(displayed) == 1  # one output, not two
    obj, kwargs, handle = displayed[0]
    assert obj is first and kwargs == {"display_id": True}
    assert handle.updates == [second]
    assert live.figure is second


def test_sanity_check_title_names_frequency() -> None:
    fig = SanityCheck(frequency=3).draw()

    assert "3" in _title(fig)
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    plt.close(fig)


def test_sanity_check_slider_change_redraws(displayed) -> None:
    check = SanityCheck(frequency=2)
    check.show()
    before = check.live.figure

    check.slider.value = 7

    assert check.live.figure is not before
    assert "7" in _title(check.live.figure) and "2" in _title(before)
    handle = displayed[-1][2]  # the figure's display, after the slider's
    assert handle.updates == [check.live.figure]
    assert displayed[0][0] is check.slider


def test_next_token_explorer_temperature_reuses_logits(
    tiny_llama, displayed, model_calls
) -> None:
    model, tokenizer = tiny_llama
    explorer = NextTokenExplorer(model, tokenizer, prompt="abc", k=5)
    explorer.show()
    before = explorer.live.figure

    explorer.temperature.value = 0.5
    explorer.temperature.value = 2.0

    assert model_calls == [("abc", False)]  # the model ran once
    assert explorer.live.figure is not before
    assert "temperature 2.0" in _title(explorer.live.figure)
    explorer.prompt.value = "abcd"
    assert model_calls == [("abc", False), ("abcd", False)]


def test_next_token_explorer_empty_prompt_sets_message(tiny_llama, displayed) -> None:
    model, tokenizer = tiny_llama
    explorer = NextTokenExplorer(model, tokenizer, prompt="abc")
    explorer.show()
    before = explorer.live.figure

    explorer.prompt.value = "   "  # would raise ValueError in draw()

    assert "empty" in explorer.message.value
    assert explorer.live.figure is before  # the last good figure stays
    explorer.prompt.value = "abc"
    assert explorer.message.value == ""


@pytest.mark.slow
def test_next_token_explorer_smollm2_shows_paris(
    smollm2, displayed, model_calls
) -> None:
    model, tokenizer = smollm2
    explorer = NextTokenExplorer(model, tokenizer, k=5)
    explorer.show()

    explorer.temperature.value = 0.0
    bars = explorer.live.figure.axes[0].get_yticklabels()

    assert len(model_calls) == 1
    assert bars[-1].get_text() == "␣Paris"  # most likely on top, spaces shown as ␣
    assert "temperature 0.0" in _title(explorer.live.figure)


def _fake_attention(text: str) -> tuple[list[str], list[torch.Tensor]]:
    """Two layers, three heads, uniform causal weights over the words of `text`."""
    if not text.strip():
        raise ValueError("the text is empty")
    tokens = text.split()
    n = len(tokens)
    weights = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    return tokens, [weights.expand(3, n, n).clone() for _ in range(2)]


def test_attention_explorer_fits_sliders_to_model(displayed) -> None:
    explorer = AttentionExplorer(_fake_attention, "a b c d", layer=1, head=2, query=-1)
    assert (explorer.layer.max, explorer.head.max, explorer.query.max) == (1, 2, 3)
    assert (explorer.layer.value, explorer.head.value, explorer.query.value) == (
        1,
        2,
        3,
    )
    explorer.show()
    explorer.text.value = "x y"
    assert explorer.query.max == 1
    assert len(displayed) == 2  # the controls, then one figure updated in place


def test_attention_explorer_empty_text_sets_message(displayed) -> None:
    explorer = AttentionExplorer(_fake_attention, "a b c")
    explorer.show()
    explorer.text.value = "   "
    assert "empty" in explorer.message.value
    assert explorer.tokens == ["a", "b", "c"]


def _lenient_attention(text: str) -> tuple[list[str], list[torch.Tensor]]:
    """Like `_fake_attention`, but returns no tokens for an empty text."""
    tokens = text.split()
    return tokens, [torch.ones(3, len(tokens), len(tokens)) for _ in range(2)] * bool(
        tokens
    )


@pytest.mark.parametrize("text", ["", "   "])
def test_attention_explorer_rejects_empty_text_before_touching_sliders(
    displayed, text: str
) -> None:
    explorer = AttentionExplorer(_lenient_attention, "a b c", query=-1)
    explorer.show()
    explorer.text.value = text
    assert "empty" in explorer.message.value
    assert (explorer.query.max, explorer.query.value) == (2, 2)
    with pytest.raises(ValueError, match="empty"):
        AttentionExplorer(_lenient_attention, text)


def test_scaling_explorer_saturates_without_scale() -> None:
    explorer = ScalingExplorer(seq_len=8, head_dim=512)
    scaled_max = explorer.weights().max(dim=-1).values.mean()
    explorer.scaled.value = False
    raw_max = explorer.weights().max(dim=-1).values.mean()
    assert raw_max > 0.9 > scaled_max
    torch.testing.assert_close(explorer.weights().sum(-1), torch.ones(8))
