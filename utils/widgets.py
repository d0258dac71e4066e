"""Interactive controls (ipywidgets) around the course's plots.

Each widget shows its controls above one figure and redraws that figure in place when
a control changes. The figure is an ordinary notebook output (a display that the
widget updates), so a stored notebook shows the initial state on GitHub and in
nbconvert output, where no widget front end runs.
"""

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from matplotlib.figure import Figure
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from utils.plots import plot_token_probs
from utils.prompting import next_token_logits, probs_from_logits, top_tokens


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
        tail = self.prompt.value[-40:]
        title = f"after “…{tail}”, temperature {self.temperature.value:.1f}"
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
