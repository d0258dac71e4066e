"""The course's plots: each has a title, labelled axes, and a colorbar on heatmaps.

Every function draws on a new figure (or on `ax` when given) and returns the figure, so
a widget can redraw it and a notebook cell can end with `plt.show()`.
"""

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def show_token(text: str) -> str:
    """Make a token's text readable in a plot: spaces as ␣, newlines as ⏎.

    Introduced in chapter 1.
    """
    return text.replace(" ", "␣").replace("\n", "⏎") or "∅"


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def plot_token_probs(
    pairs: Sequence[tuple[str, float]], title: str, ax: Axes | None = None
) -> Figure:
    """Horizontal bars of the most likely next tokens, the most likely on top.

    Args:
        pairs: `(token_text, probability)`, most likely first (see `top_tokens`).
        title: the figure's title.
        ax: draw here instead of on a new figure.

    Introduced in chapter 1.
    """
    fig, ax = _axes(ax, (6, 0.35 * len(pairs) + 1.2))
    labels = [show_token(text) for text, _ in pairs][::-1]
    values = [p for _, p in pairs][::-1]
    bars = ax.barh(labels, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=3, fontsize=8)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("probability of being the next token")
    ax.set_ylabel("token (␣ = space)")
    ax.set_title(title)
    return fig


def plot_heatmap(
    matrix: torch.Tensor | np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    colorbar_label: str = "",
    ax: Axes | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = False,
) -> Figure:
    """A labelled heatmap with a colorbar (similarities, attention weights, ...).

    Args:
        matrix: (R, C) values.
        row_labels: R labels, shown on the y axis.
        col_labels: C labels, shown on the x axis.
        title: the figure's title.
        colorbar_label: what the colours mean.
        ax: draw here instead of on a new figure.
        vmin: value of the lowest colour; defaults to the data's minimum.
        vmax: value of the highest colour; defaults to the data's maximum.
        annotate: write each value in its cell (for small matrices).

    Introduced in chapter 1.
    """
    values = np.asarray(matrix.detach().cpu() if torch.is_tensor(matrix) else matrix)
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix has shape {values.shape} but there are {len(row_labels)} row "
            f"labels and {len(col_labels)} column labels"
        )
    width = min(3.0 + 0.75 * len(col_labels), 12.0)
    height = min(2.0 + 0.5 * len(row_labels), 10.0)
    fig, ax = _axes(ax, (width, height))
    image = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    if annotate:
        for (r, c), v in np.ndenumerate(values):
            # dark text on the bright half of the colour scale, vmin/vmax included
            colour = "black" if image.norm(v) > 0.5 else "white"
            ax.text(
                c, r, f"{v:.2f}", ha="center", va="center", color=colour, fontsize=8
            )
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set_title(title)
    return fig


def plot_bars(
    values: dict[str, float],
    title: str,
    ylabel: str,
    ax: Axes | None = None,
    reference: tuple[str, float] | None = None,
    fmt: str = "{:.2f}",
    log: bool = False,
) -> Figure:
    """Vertical bars, one per named value, each labelled with its value.

    Args:
        values: bar name -> height.
        title: the figure's title.
        ylabel: what the heights measure.
        ax: draw here instead of on a new figure.
        reference: `(label, height)` of a dashed horizontal line, e.g. chance level.
        fmt: format of the numbers written on the bars.
        log: use a logarithmic y axis.

    Introduced in chapter 1.
    """
    fig, ax = _axes(ax, (1.2 + 1.3 * len(values), 3.6))
    bars = ax.bar(list(values), list(values.values()), color="tab:blue")
    ax.bar_label(bars, labels=[fmt.format(v) for v in values.values()], padding=2)
    if reference is not None:
        label, height = reference
        ax.axhline(height, color="grey", linestyle="--", label=label)
        ax.legend(loc="lower right")
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)
    return fig


def plot_attention(
    weights: torch.Tensor,
    tokens: Sequence[str],
    title: str,
    query: int | None = None,
    ax: Axes | None = None,
    key_tokens: Sequence[str] | None = None,
) -> Figure:
    """One attention map: rows are queries, columns are the keys they attend to.

    Args:
        weights: (T, S) attention weights; each row sums to 1.
        tokens: T labels for the queries; also the keys' labels when `key_tokens`
            is None (the last S of them, as in cached generation).
        title: the figure's title.
        query: outline this query's row.
        ax: draw here instead of on a new figure.
        key_tokens: S labels for the keys, e.g. the encoder's tokens in
            cross-attention.

    Introduced in chapter 3.
    """
    labels = [show_token(t) for t in tokens]
    size = min(3.0 + 0.5 * len(labels), 12.0)
    fig, ax = _axes(ax, (size + 1.0, size))
    keys = (
        labels[-weights.shape[1] :]
        if key_tokens is None
        else [show_token(t) for t in key_tokens]
    )
    plot_heatmap(
        weights, labels, keys, title, "attention weight", ax=ax, vmin=0, vmax=1
    )
    if query is not None:
        box = plt.Rectangle(
            (-0.5, query - 0.5), weights.shape[1], 1, fill=False, ec="red", lw=2
        )
        ax.add_patch(box)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    return fig


def plot_attention_grid(
    maps: Sequence[torch.Tensor],
    tokens: Sequence[str],
    title: str,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> Figure:
    """A layer x head grid of small attention maps.

    Args:
        maps: L tensors, each (1, H, T, T) or (H, T, T), as models return them.
        tokens: T labels, shown on the first column and the last row.
        title: the figure's title.
        layers: which layers to show (rows); all by default.
        heads: which heads to show (columns); all by default.

    Introduced in chapter 4.
    """
    maps = [m[0] if m.dim() == 4 else m for m in maps]  # (1, H, T, T) -> (H, T, T)
    layers = list(layers if layers is not None else range(len(maps)))
    heads = list(heads if heads is not None else range(maps[0].shape[0]))
    fig, axes = plt.subplots(
        len(layers),
        len(heads),
        figsize=(1.6 * len(heads) + 1.5, 1.6 * len(layers) + 0.8),
        squeeze=False,
        layout="constrained",
    )
    labels = [show_token(t) for t in tokens]
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            image = ax.imshow(maps[layer][head].detach().cpu(), vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.6)
    fig.suptitle(f"{title} ({len(labels)} tokens; rows: queries, columns: keys)")
    return fig


def plot_loss_curves(
    history: dict[str, list],
    title: str = "training and validation loss",
    ax: Axes | None = None,
) -> Figure:
    """Loss against step from a `utils.training.train` history.

    Args:
        history: with "step" and "train_loss" (means over each log interval) and
            "eval_step", "eval_train_loss" and "val_loss" (the estimates at each
            evaluation); missing or empty entries are left out.
        title: the figure's title.
        ax: draw here instead of on a new figure.

    Introduced in chapter 6.
    """
    fig, ax = _axes(ax, (7, 3.6))
    if history.get("step"):
        ax.plot(
            history["step"],
            history["train_loss"],
            color="tab:blue",
            alpha=0.35,
            lw=1,
            label="train (mean over each log interval)",
        )
    if history.get("eval_step"):
        for key, color, label in (
            ("eval_train_loss", "tab:blue", "train (estimate)"),
            ("val_loss", "tab:orange", "validation (estimate)"),
        ):
            ax.plot(history["eval_step"], history[key], "o-", color=color, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right")
    return fig


class LiveLossPlot:
    """A loss curve that each `update` redraws in place, as training runs.

    Like `utils.widgets.LiveFigure`, the figure is one notebook output that later
    draws replace, so the stored notebook keeps the last curve. Outside a Jupyter
    kernel (a script, pytest) `update` only draws into `self.figure`.

    Introduced in chapter 6.
    """

    def __init__(self, title: str = "training and validation loss") -> None:
        self.title = title
        self.figure: Figure | None = None
        self._handle = None

    def update(self, history: dict[str, list]) -> None:
        """Draw the curves of `history` and replace the displayed figure."""
        from IPython import get_ipython
        from IPython.display import display

        if self.figure is not None:
            plt.close(self.figure)
        self.figure = plot_loss_curves(history, self.title)
        if getattr(get_ipython(), "kernel", None) is None:
            return  # no front end to show it in
        if self._handle is None:
            self._handle = display(self.figure, display_id=True)
        else:
            self._handle.update(self.figure)
        plt.close(self.figure)  # the inline backend would otherwise show it again


def plot_lines(
    series: dict[str, Sequence[float]],
    title: str,
    xlabel: str,
    ylabel: str,
    ax: Axes | None = None,
    log: bool = False,
) -> Figure:
    """One line per named series, drawn against 0, 1, 2, ... (layers, steps, ...).

    Args:
        series: line label -> values.
        title: the figure's title.
        xlabel: what the positions 0, 1, 2, ... count.
        ylabel: what the values measure.
        ax: draw here instead of on a new figure.
        log: use a logarithmic y axis.

    Introduced in chapter 5.
    """
    fig, ax = _axes(ax, (7, 3.6))
    for label, values in series.items():
        ax.plot(range(len(values)), list(values), "o-", markersize=3, label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


def plot_filtered_probs(
    labels: Sequence[str],
    before: torch.Tensor,
    after: torch.Tensor,
    title: str,
    ax: Axes | None = None,
) -> Figure:
    """A next-token distribution before and after temperature or filtering.

    Grey bars show the probabilities as they were, blue bars the reshaped ones,
    labelled with their values; tokens a filter removed (probability 0) get a cross.

    Args:
        labels: V token texts, one per bar.
        before: (V,) probabilities, e.g. softmax(logits).
        after: (V,) probabilities after temperature, top-k or top-p.
        title: the figure's title.
        ax: draw here instead of on a new figure.

    Raises:
        ValueError: `before`, `after` and `labels` differ in length.

    Introduced in chapter 5.
    """
    before = torch.as_tensor(before).detach().flatten().cpu().float()
    after = torch.as_tensor(after).detach().flatten().cpu().float()
    if not len(labels) == before.numel() == after.numel():
        raise ValueError(
            f"need one label per probability: got {len(labels)} labels, "
            f"{before.numel()} probabilities before and {after.numel()} after"
        )
    fig, ax = _axes(ax, (1.5 + 0.7 * len(labels), 3.6))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, before.tolist(), 0.4, color="lightgrey", label="before")
    bars = ax.bar(x + 0.2, after.tolist(), 0.4, color="tab:blue", label="after")
    shown = [f"{p:.2f}" if p > 0 else "" for p in after.tolist()]
    ax.bar_label(bars, labels=shown, padding=2, fontsize=8)
    removed = x[(after == 0).numpy()]
    if len(removed):
        ax.plot(
            removed + 0.2, [0.03] * len(removed), "x", color="tab:red", label="removed"
        )
    ax.set_xticks(x, [show_token(t) for t in labels], rotation=45, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("token")
    ax.set_ylabel("probability")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_lr_schedule(
    lrs: Sequence[float],
    warmup_steps: int,
    title: str = "learning-rate schedule",
    ax: Axes | None = None,
) -> Figure:
    """The learning rate of every step, with the end of warm-up marked.

    Args:
        lrs: the rate of step 0, 1, 2, ...
        warmup_steps: where warm-up ends; a dotted line marks it (none for 0).
        title: the figure's title.
        ax: draw here instead of on a new figure.

    Introduced in chapter 6.
    """
    fig, ax = _axes(ax, (7, 3.2))
    ax.plot(range(len(lrs)), list(lrs), color="tab:blue", label="learning rate")
    if 0 < warmup_steps < len(lrs):
        ax.axvline(warmup_steps, color="grey", ls=":", label="end of warm-up")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


def plot_scaling(
    lengths: Sequence[int],
    series: dict[str, Sequence[float]],
    title: str,
    ylabel: str,
    xlabel: str = "sequence length T",
    ax: Axes | None = None,
) -> Figure:
    """How a cost grows with the input size: one line per method, log-log axes.

    On log-log axes a cost proportional to T^p is a straight line of slope p, so
    linear and quadratic growth are easy to tell apart.

    Args:
        lengths: the sizes measured, e.g. [256, 512, 1024].
        series: method name -> one value per length.
        title: the figure's title.
        ylabel: what the values measure.
        xlabel: what the lengths count.
        ax: draw here instead of on a new figure.

    Raises:
        ValueError: a series has a different number of values than `lengths`.

    Introduced in chapter 9.
    """
    fig, ax = _axes(ax, (6, 3.8))
    for label, values in series.items():
        if len(values) != len(lengths):
            raise ValueError(
                f"series {label!r} has {len(values)} values for {len(lengths)} lengths"
            )
        ax.plot(list(lengths), list(values), "o-", markersize=4, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(lengths), [str(n) for n in lengths])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best")
    return fig
