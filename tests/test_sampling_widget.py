"""Tests of the sampling explorer, `sampling_probs`, and the two plots chapter 05 adds
to `utils.plots`: the bars follow the sliders, the figure is redrawn in place, and the
distribution is the one `sample_next_token` draws from."""

import matplotlib.pyplot as plt
import pytest
import torch

from utils.plots import plot_filtered_probs, plot_lines
from utils.reference.sampling import sample_next_token
from utils.widgets import SamplingExplorer, sampling_probs

LABELS = ["mat", "sofa", "floor", "bed", "roof", "moon"]
LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, -0.5, -2.0])  # (V,) with V = 6


def _kept(probs: torch.Tensor) -> list[int]:
    return (probs > 0).nonzero().flatten().tolist()


def test_sampling_probs_defaults_are_the_softmax() -> None:
    torch.testing.assert_close(sampling_probs(LOGITS), torch.softmax(LOGITS, -1))


def test_sampling_probs_filters_and_temperature() -> None:
    assert _kept(sampling_probs(LOGITS, top_k=2)) == [0, 1]
    assert _kept(sampling_probs(LOGITS, top_p=0.5)) == [0, 1]
    assert _kept(sampling_probs(LOGITS, temperature=0.0)) == [0]
    assert sampling_probs(LOGITS, temperature=0.0)[0] == 1.0
    hot, cold = sampling_probs(LOGITS, 3.0), sampling_probs(LOGITS, 0.3)
    assert hot.max() < torch.softmax(LOGITS, -1).max() < cold.max()
    torch.testing.assert_close(
        sampling_probs(LOGITS, 0.7, 4, 0.9).sum(), torch.tensor(1.0)
    )


def test_sampling_probs_is_what_sample_next_token_draws_from() -> None:
    generator = torch.Generator().manual_seed(0)
    settings = {"temperature": 1.5, "top_k": 4, "top_p": 0.8}
    draws = sample_next_token(
        LOGITS.repeat(4000, 1), **settings, generator=generator
    ).flatten()
    frequencies = torch.bincount(draws, minlength=6) / len(draws)
    expected = sampling_probs(LOGITS, **settings)
    torch.testing.assert_close(frequencies, expected, atol=0.03, rtol=0)
    assert frequencies[expected == 0].sum() == 0


def test_sampling_explorer_sliders_redraw_in_place(displayed) -> None:
    explorer = SamplingExplorer(LOGITS, LABELS)
    explorer.show()
    first = explorer.live.figure
    assert "6 of 6 tokens kept" in first.axes[0].get_title()

    explorer.top_k.value = 3
    explorer.top_p.value = 0.6  # of the renormalised top 3: 0.51, 0.31, 0.19

    assert _kept(explorer.probs()) == [0, 1]
    title = explorer.live.figure.axes[0].get_title()
    assert "top-k 3" in title and "top-p 0.60" in title and "2 of 6" in title
    assert displayed[0][0] is explorer.controls
    assert len(displayed) == 2  # the controls, then one figure updated in place
    updates = displayed[1][2].updates  # two slider moves, two updates
    assert len(updates) == 2 and updates[-1] is explorer.live.figure
    assert displayed[1][0] is first


def test_sampling_explorer_temperature_zero_is_greedy(displayed) -> None:
    explorer = SamplingExplorer(LOGITS, LABELS, temperature=0.0)
    probs = explorer.probs()
    assert _kept(probs) == [0] and probs[0] == 1.0
    fig = explorer.draw()
    labels = [tick.get_text() for tick in fig.axes[0].get_xticklabels()]
    assert labels == LABELS
    plt.close(fig)


def test_sampling_explorer_start_values_set_sliders() -> None:
    explorer = SamplingExplorer(LOGITS, LABELS, temperature=0.8, top_k=5, top_p=0.9)
    assert (explorer.temperature.value, explorer.top_k.value) == (0.8, 5)
    assert explorer.top_p.value == 0.9
    off = SamplingExplorer(LOGITS, LABELS)
    assert (off.top_k.value, off.top_p.value) == (6, 1.0)  # both filters off


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logits": LOGITS[None]}, r"1-D tensor \(V,\).*logits\[0, -1\]"),
        ({"logits": [1.0, 2.0]}, "1-D tensor"),
        ({"logits": torch.tensor([1.0, float("-inf")])}, "finite"),
        ({"labels": LABELS[:4]}, "one label per logit"),
        ({"labels": "abcdef"}, "list of 6 strings"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_k": 0}, r"top_k must be in \[1, 6\]"),
        ({"top_k": 2.5}, "whole number"),
        ({"top_p": 0.0}, r"top_p must be a number in \(0, 1\]"),
    ],
)
def test_sampling_explorer_rejects_bad_input(kwargs: dict, match: str) -> None:
    arguments = {"logits": LOGITS, "labels": LABELS, **kwargs}
    with pytest.raises(ValueError, match=match):
        SamplingExplorer(**arguments)


# --- the plots behind the explorer and chapter 05's figures


def test_plot_filtered_probs_marks_removed_tokens() -> None:
    before = torch.softmax(LOGITS, -1)
    after = sampling_probs(LOGITS, top_k=2)
    fig = plot_filtered_probs(LABELS, before, after, "top-k 2")
    ax = fig.axes[0]
    heights = [round(bar.get_height(), 4) for bar in ax.patches]
    assert heights[:6] == [round(p, 4) for p in before.tolist()]  # grey: before
    assert heights[6:] == [round(p, 4) for p in after.tolist()]  # blue: after
    crosses = [line for line in ax.lines if line.get_label() == "removed"]
    assert list(crosses[0].get_xdata()) == pytest.approx([2.2, 3.2, 4.2, 5.2])
    assert ax.get_title() == "top-k 2" and ax.get_xlabel() and ax.get_ylabel()
    plt.close(fig)


def test_plot_filtered_probs_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="one label per probability"):
        plot_filtered_probs(LABELS[:3], torch.ones(6) / 6, torch.ones(6) / 6, "x")


def test_plot_lines_draws_one_line_per_series() -> None:
    fig = plot_lines({"a": [1.0, 2.0, 3.0], "b": [0.5, 0.5]}, "t", "layer", "std")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["a", "b"]
    assert list(ax.lines[1].get_xdata()) == [0, 1]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("t", "layer", "std")
    plt.close(fig)
