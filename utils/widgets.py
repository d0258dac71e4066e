"""Interactive controls (ipywidgets) around the course's plots.

Each widget shows its controls above one figure and redraws that figure in place when
a control changes. The figure is an ordinary notebook output (a display that the
widget updates), so a stored notebook shows the initial state on GitHub and in
nbconvert output, where no widget front end runs.
"""

import numbers
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from matplotlib.figure import Figure
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils.models import attention_maps
from utils.plots import (
    plot_attention,
    plot_filtered_probs,
    plot_token_probs,
    show_token,
)
from utils.prompting import (
    check_temperature,
    next_token_logits,
    probs_from_logits,
    top_tokens,
)
from utils.reference.sampling import filter_top_k, filter_top_p

# text -> (T token strings, L attention tensors each (H, T, T))
AttentionFn = Callable[[str], tuple[list[str], Sequence[torch.Tensor]]]


class LiveFigure:
    """One figure output that later draws replace in place.

    Introduced in chapter 0.
    """

    def __init__(self) -> None:
        self._handle = None
        self.figure: Figure | None = None

    def show(self, fig: Figure) -> None:
        """Display `fig` the first time, replace the displayed figure afterwards."""
        self.figure = fig
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)  # the inline backend would otherwise show it a second time


class SanityCheck:
    """A slider that redraws a sine wave: proves that widgets work in this browser.

    Introduced in chapter 0.
    """

    def __init__(self, frequency: int = 2) -> None:
        self.slider = widgets.IntSlider(
            value=frequency,
            min=1,
            max=10,
            description="frequency",
            continuous_update=True,
        )
        self.slider.observe(lambda _: self.redraw(), names="value")
        self.live = LiveFigure()

    def draw(self) -> Figure:
        """The sine wave at the slider's frequency."""
        x = np.linspace(0, 1, 400)
        fig, ax = plt.subplots(figsize=(6, 2.4), layout="constrained")
        ax.plot(x, np.sin(2 * np.pi * self.slider.value * x))
        ax.set_xlabel("time (s)")
        ax.set_ylabel("amplitude")
        ax.set_title(f"sin(2π · {self.slider.value} · t)")
        return fig

    def redraw(self) -> None:
        """Draw again for the current slider value."""
        self.live.show(self.draw())

    def show(self) -> None:
        """Display the slider, then the figure."""
        display(self.slider)
        self.redraw()


class NextTokenExplorer:
    """Type a prompt, move the temperature: the model's next-token distribution.

    The model runs once per prompt; moving the temperature only rescales its logits.

    Introduced in chapter 1.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompt: str = "The capital of France is",
        temperature: float = 1.0,
        k: int = 10,
    ) -> None:
        self.model, self.tokenizer, self.k = model, tokenizer, k
        self.prompt = widgets.Text(
            value=prompt,
            description="prompt",
            continuous_update=False,
            layout=widgets.Layout(width="60%"),
        )
        self.temperature = widgets.FloatSlider(
            value=temperature, min=0.0, max=3.0, step=0.1, description="temperature"
        )
        self.chat = widgets.Checkbox(value=False, description="use the chat template")
        self.message = widgets.HTML()
        for control in (self.prompt, self.temperature, self.chat):
            control.observe(lambda _: self.redraw(), names="value")
        self.controls = widgets.VBox(
            [self.prompt, widgets.HBox([self.temperature, self.chat]), self.message]
        )
        self.live = LiveFigure()
        self._logits: dict[tuple[str, bool], torch.Tensor] = {}

    def draw(self) -> Figure:
        """The top-k bar chart for the current controls.

        Raises:
            ValueError: the prompt is empty or too long.
        """
        key = (self.prompt.value, self.chat.value)
        if key not in self._logits:
            self._logits[key] = next_token_logits(
                self.model, self.tokenizer, key[0], chat=key[1]
            )
        probs = probs_from_logits(self._logits[key], self.temperature.value)
        pairs = top_tokens(probs, self.tokenizer, self.k)
        prompt = self.prompt.value
        tail = prompt if len(prompt) <= 40 else "…" + prompt[-39:]
        title = f"after “{tail}”, temperature {self.temperature.value:.1f}"
        return plot_token_probs(pairs, title)

    def redraw(self) -> None:
        """Draw again; a bad prompt shows its message instead of a stack trace."""
        try:
            fig = self.draw()
        except ValueError as err:
            self.message.value = f"<b style='color:#b00'>{err}</b>"
            return
        self.message.value = ""
        self.live.show(fig)

    def show(self) -> None:
        """Display the controls, then the figure."""
        display(self.controls)
        self.redraw()


def hf_attention_fn(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_tokens: int = 32
) -> AttentionFn:
    """Adapt a `transformers` model loaded with `attn_weights=True` for the explorer.

    Args:
        max_tokens: longer texts are cut to this many tokens, to keep maps readable.

    Returns:
        A function: text -> (tokens, L tensors of shape (H, T, T)).

    Introduced in chapter 4.
    """

    def run(text: str) -> tuple[list[str], list[torch.Tensor]]:
        if not text.strip():
            raise ValueError("the text is empty; type a sentence to look at")
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :max_tokens]
        maps = attention_maps(model, ids.to(model.device))
        tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
        return tokens, [m[0].float().cpu() for m in maps]  # L x (H, T, T)

    return run


class AttentionExplorer:
    """Pick a text, a layer, a head and a query token: see where that query looks.

    Left: the head's full attention map with the query's row outlined. Right: that
    row as bars, one per key token.

    Introduced in chapter 3.
    """

    def __init__(
        self,
        attention_fn: AttentionFn,
        text: str,
        layer: int = 0,
        head: int = 0,
        query: int = -1,
        title: str = "attention",
    ) -> None:
        self.attention_fn, self.title = attention_fn, title
        self.text = widgets.Text(
            value=text,
            description="text",
            continuous_update=False,
            layout=widgets.Layout(width="70%"),
        )
        self.layer = widgets.IntSlider(min=0, max=0, description="layer")
        self.head = widgets.IntSlider(min=0, max=0, description="head")
        self.query = widgets.IntSlider(value=0, min=0, max=0, description="query")
        self.message = widgets.HTML()
        self.live = LiveFigure()
        self._load(text, query)
        self.layer.value, self.head.value = layer, head  # sliders now have their range
        self.text.observe(lambda _: self._on_text(), names="value")
        for control in (self.layer, self.head, self.query):
            control.observe(lambda _: self.redraw(), names="value")
        self.controls = widgets.VBox(
            [self.text, widgets.HBox([self.layer, self.head, self.query]), self.message]
        )

    def _load(self, text: str, query: int = -1) -> None:
        """Run the model on `text` and fit the sliders' ranges to its output.

        Raises:
            ValueError: the text is empty or gives no tokens; the sliders and the
                current map are left as they were.
        """
        if not text.strip():
            raise ValueError("the text is empty; type a sentence to look at")
        tokens, maps = self.attention_fn(text)
        if not tokens or not maps:
            raise ValueError(f"{text!r} gives no tokens to look at; type a sentence")
        self.tokens, self.maps = tokens, maps
        self.layer.max, self.head.max = len(maps) - 1, maps[0].shape[0] - 1
        self.query.max = len(tokens) - 1
        self.query.value = query % len(tokens)

    def _on_text(self) -> None:
        try:
            self._load(self.text.value)
        except ValueError as err:
            self.message.value = f"<b style='color:#b00'>{err}</b>"
            return
        self.redraw()

    def draw(self) -> Figure:
        """The map of the chosen layer and head, and the chosen query's row."""
        weights = self.maps[self.layer.value][self.head.value]  # (T, T)
        q = self.query.value
        fig, (left, right) = plt.subplots(
            1, 2, figsize=(12, 5), layout="constrained", width_ratios=(1.1, 1)
        )
        where = f"layer {self.layer.value}, head {self.head.value}"
        plot_attention(weights, self.tokens, f"{self.title}: {where}", q, ax=left)
        labels = [show_token(t) for t in self.tokens]
        right.bar(range(len(labels)), weights[q].tolist(), color="tab:red")
        right.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
        right.set_ylim(0, 1)
        right.set_xlabel("key (attended to)")
        right.set_ylabel("attention weight")
        right.set_title(f"where “{labels[q]}” (query {q}) looks")
        return fig

    def redraw(self) -> None:
        """Draw again for the current controls."""
        self.message.value = ""
        self.live.show(self.draw())

    def show(self) -> None:
        """Display the controls, then the figure."""
        display(self.controls)
        self.redraw()


class ScalingExplorer:
    """Random queries and keys of width Dh: see the softmax saturate without scaling.

    Controls: the head width Dh, whether scores are divided by sqrt(Dh), and a
    temperature that divides the scores further. The figure shows the (T, T) weights
    and the largest weight per query.

    Introduced in chapter 3.
    """

    def __init__(self, seq_len: int = 8, head_dim: int = 64, seed: int = 0) -> None:
        self.seq_len, self.seed = seq_len, seed
        self.head_dim = widgets.SelectionSlider(
            options=[2, 4, 8, 16, 32, 64, 128, 256, 512],
            value=head_dim,
            description="Dh",
        )
        self.scaled = widgets.Checkbox(value=True, description="divide by √Dh")
        self.temperature = widgets.FloatLogSlider(
            value=1.0, base=10, min=-1, max=1, step=0.1, description="temperature"
        )
        for control in (self.head_dim, self.scaled, self.temperature):
            control.observe(lambda _: self.redraw(), names="value")
        self.controls = widgets.HBox([self.head_dim, self.scaled, self.temperature])
        self.live = LiveFigure()

    def weights(self) -> torch.Tensor:
        """(T, T) attention weights for the current controls."""
        generator = torch.Generator().manual_seed(self.seed)
        d = self.head_dim.value
        q = torch.randn(self.seq_len, d, generator=generator)  # (T, Dh)
        k = torch.randn(self.seq_len, d, generator=generator)  # (T, Dh)
        scores = q @ k.T  # (T, T), each entry has variance Dh
        if self.scaled.value:
            scores = scores / d**0.5  # back to variance 1
        return torch.softmax(scores / self.temperature.value, dim=-1)

    def draw(self) -> Figure:
        """Heatmap of the weights, and the largest weight of each query."""
        weights = self.weights()
        tokens = [f"t{i}" for i in range(self.seq_len)]
        fig, (left, right) = plt.subplots(
            1, 2, figsize=(11, 4.2), layout="constrained", width_ratios=(1.2, 1)
        )
        scaling = "scaled" if self.scaled.value else "NOT scaled"
        temperature = self.temperature.value
        title = f"Dh={self.head_dim.value}, {scaling}, temperature {temperature:.2g}"
        plot_attention(weights, tokens, title, ax=left)
        right.bar(tokens, weights.max(dim=-1).values.tolist(), color="tab:purple")
        right.axhline(1 / self.seq_len, color="grey", ls="--", label="uniform")
        right.set_ylim(0, 1.05)
        right.set_xlabel("query")
        right.set_ylabel("largest weight in the row")
        right.set_title("1.0 means the softmax has saturated")
        right.legend(loc="upper right")
        return fig

    def redraw(self) -> None:
        """Draw again for the current controls."""
        self.live.show(self.draw())

    def show(self) -> None:
        """Display the controls, then the figure."""
        display(self.controls)
        self.redraw()


def sampling_probs(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The distribution that `sample_next_token` draws from, for plotting.

    The same steps in the same order: divide by the temperature, keep the top k,
    keep the top-p nucleus, softmax. Temperature 0 puts all mass on the argmax.

    Args:
        logits: (..., V) next-token scores.
        temperature: >= 0; 0 means greedy.
        top_k: keep only the k most likely tokens; None keeps all.
        top_p: keep only the nucleus of mass p, in (0, 1]; None keeps all.

    Returns:
        (..., V) probabilities, exactly 0 for the tokens that were filtered out.

    Raises:
        TypeError: temperature is not a number.
        ValueError: temperature < 0, or top_k / top_p out of range.

    Introduced in chapter 5.
    """
    check_temperature(temperature)
    if temperature == 0:
        return probs_from_logits(logits, 0.0)  # one-hot on the argmax
    scaled = logits / temperature
    if top_k is not None:
        scaled = filter_top_k(scaled, top_k)
    if top_p is not None:
        scaled = filter_top_p(scaled, top_p)
    return torch.softmax(scaled.float(), dim=-1)


class SamplingExplorer:
    """Move temperature, top-k and top-p: see how each reshapes a distribution.

    Grey bars: the probabilities at temperature 1 without filters; blue bars: the
    distribution that sampling draws from with the current settings (see
    `sampling_probs`). A top-k of V and a top-p of 1 switch those filters off.

    Args:
        logits: (V,) next-token scores, e.g. a hand-made example or a model's output.
        labels: V token texts, one per logit.
        temperature: the start value, in [0, 3].
        top_k: the start value, in [1, V]; None starts at V (off).
        top_p: the start value, in (0, 1]; None starts at 1 (off).

    Raises:
        ValueError: logits are not a finite 1-D tensor of at least 2 values, the
            labels do not match them, or a start value is out of range.

    Introduced in chapter 5.
    """

    def __init__(
        self,
        logits: torch.Tensor,
        labels: Sequence[str],
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> None:
        self.logits = _check_logits(logits, labels)
        self.labels = [str(label) for label in labels]
        vocab_size = len(self.labels)
        top_k = vocab_size if top_k is None else top_k
        top_p = 1.0 if top_p is None else top_p
        _check_sampling_start(temperature, top_k, top_p, vocab_size)
        self.temperature = widgets.FloatSlider(
            value=temperature, min=0.0, max=3.0, step=0.05, description="temperature"
        )
        self.top_k = widgets.IntSlider(
            value=top_k, min=1, max=vocab_size, description="top-k"
        )
        self.top_p = widgets.FloatSlider(
            value=top_p, min=0.01, max=1.0, step=0.01, description="top-p"
        )
        for control in (self.temperature, self.top_k, self.top_p):
            control.observe(lambda _: self.redraw(), names="value")
        self.controls = widgets.HBox([self.temperature, self.top_k, self.top_p])
        self.live = LiveFigure()

    def probs(self) -> torch.Tensor:
        """(V,) the distribution sampling draws from with the current settings."""
        return sampling_probs(
            self.logits, self.temperature.value, self.top_k.value, self.top_p.value
        )

    def draw(self) -> Figure:
        """Bars before and after, with the settings and the number kept in the title."""
        after = self.probs()
        kept = int((after > 0).sum())
        title = (
            f"temperature {self.temperature.value:.2f}, top-k {self.top_k.value}, "
            f"top-p {self.top_p.value:.2f}: {kept} of {len(self.labels)} tokens kept"
        )
        before = torch.softmax(self.logits, dim=-1)
        return plot_filtered_probs(self.labels, before, after, title)

    def redraw(self) -> None:
        """Draw again for the current controls."""
        self.live.show(self.draw())

    def show(self) -> None:
        """Display the controls, then the figure."""
        display(self.controls)
        self.redraw()


def _check_logits(logits: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
    """The logits as a float CPU tensor, or a ValueError saying what is wrong."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 1 or len(logits) < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else None
        raise ValueError(
            f"logits must be a 1-D tensor (V,) with V >= 2, got "
            f"{shape or type(logits).__name__}; for model output (B, T, V) pass "
            "logits[0, -1]"
        )
    logits = logits.detach().float().cpu()
    if not torch.isfinite(logits).all():
        raise ValueError("logits must be finite; pass the scores before any filter")
    if isinstance(labels, str) or len(labels) != len(logits):
        raise ValueError(
            f"need one label per logit: {len(logits)} logits, but labels is "
            f"{labels!r}; pass a list of {len(logits)} strings"
        )
    return logits


def _check_sampling_start(
    temperature: float, top_k: int, top_p: float, vocab_size: int
) -> None:
    """Raise a ValueError unless the start values fit the sliders."""
    if not _is_number(temperature) or not 0.0 <= temperature <= 3.0:
        raise ValueError(
            f"temperature must be a number in [0, 3] (the slider's range), got "
            f"{temperature!r}; 0 means greedy decoding"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise ValueError(f"top_k must be a whole number or None, got {top_k!r}")
    if not 1 <= top_k <= vocab_size:
        raise ValueError(
            f"top_k must be in [1, {vocab_size}] (the number of tokens), got {top_k}; "
            "None switches it off"
        )
    if not _is_number(top_p) or not 0.0 < top_p <= 1.0:
        raise ValueError(
            f"top_p must be a number in (0, 1], got {top_p!r}; None or 1.0 switches "
            "it off"
        )


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
