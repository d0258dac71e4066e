"""The transformer block: normalisation, the MLP, and the pre-norm wiring around them.

A block keeps a residual stream x of shape (B, T, D) and adds two branches to it:
attention, which mixes positions, and an MLP, which transforms each position on its
own. Pre-norm (GPT-2 and every later LLM) normalises each branch's input and leaves the
stream itself untouched:

    x = x + attn(norm1(x))
    x = x + mlp(norm2(x))
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from utils.reference.attention import MultiHeadAttention

# The MLP's activations by name. "gelu" is GPT-2's tanh approximation (its "gelu_new"),
# so that copied GPT-2 weights reproduce its outputs; BERT-style models use the exact,
# erf-based "gelu_exact".
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": partial(F.gelu, approximate="tanh"),
    "gelu_exact": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}
NORMS = ("layernorm", "rmsnorm")


class LayerNorm(nn.Module):
    """Normalise each position to mean 0 and variance 1, then scale and shift.

    y = (x - mean) / sqrt(var + eps) * weight + bias, with the mean and the (biased)
    variance taken over the last axis, D.

    Args:
        d_model: D, the size of the last axis.
        eps: added to the variance so that a constant input does not divide by 0.
        bias: whether to learn the shift `bias` (GPT-2: yes; some newer models: no).
        fused: compute the same thing with PyTorch's one-kernel `F.layer_norm`,
            which is faster in training; chapter 5's GPT turns it on.

    Introduced in chapter 4.
    """

    def __init__(
        self, d_model: int, eps: float = 1e-5, bias: bool = True, fused: bool = False
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        self.fused = fused
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise over the last axis.

        Args:
            x: (..., D), e.g. (B, T, D).

        Returns:
            The same shape as x.

        Raises:
            ValueError: the last axis of x is not d_model.

        Introduced in chapter 4.
        """
        _check_width(x, self.d_model)
        if self.fused:
            return F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps)

        mean = x.mean(dim=-1, keepdim=True)  # (B, T, D) -> (B, T, 1)
        centred = x - mean
        var = centred.pow(2).mean(dim=-1, keepdim=True)  # (B, T, D) -> (B, T, 1)
        y = centred * torch.rsqrt(var + self.eps)
        y = y * self.weight
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        fused = ", fused=True" if self.fused else ""
        return f"{self.d_model}, eps={self.eps}, bias={self.bias is not None}{fused}"


class RMSNorm(nn.Module):
    """Scale each position to root-mean-square 1, then by a learned weight.

    y = x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centring and without a
    bias, as in LLaMA and SmolLM2.

    Args:
        d_model: D, the size of the last axis.
        eps: added to the mean square so that a zero input does not divide by 0.

    Introduced in chapter 4.
    """

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise over the last axis.

        Args:
            x: (..., D), e.g. (B, T, D).

        Returns:
            The same shape as x.

        Raises:
            ValueError: the last axis of x is not d_model.

        Introduced in chapter 4.
        """
        _check_width(x, self.d_model)
        mean_square = x.pow(2).mean(dim=-1, keepdim=True)  # (B, T, D) -> (B, T, 1)
        return x * torch.rsqrt(mean_square + self.eps) * self.weight

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


class MLP(nn.Module):
    """The per-position feed-forward branch: widen, activate, narrow back.

    y = dropout(down(activation(up(x)))).

    Args:
        d_model: D, the width of the input and the output.
        d_ff: the hidden width, usually 4 * D.
        dropout: dropout on the output, active in training mode only.
        activation: one of `ACTIVATIONS`: "gelu" (tanh approximation, as GPT-2),
            "gelu_exact" (erf, as BERT), "relu", "silu".
        bias: whether `up` and `down` have biases.

    Raises:
        ValueError: the activation is unknown.

    Introduced in chapter 4.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "gelu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of "
                f"{', '.join(ACTIVATIONS)}"
            )
        self.activation = activation
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform each position on its own.

        Args:
            x: (B, T, D).

        Returns:
            (B, T, D).

        Introduced in chapter 4.
        """
        hidden = ACTIVATIONS[self.activation](self.up(x))  # (B, T, D) -> (B, T, d_ff)
        return self.dropout(self.down(hidden))  # (B, T, d_ff) -> (B, T, D)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class TransformerBlock(nn.Module):
    """A pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)).

    Each branch reads a normalised copy of the residual stream and adds its result
    back; the stream itself is never normalised, so gradients reach early layers
    through the plain additions.

    Args:
        d_model: D, the width of the residual stream.
        n_heads: H, the number of attention heads.
        d_ff: the MLP's hidden width; defaults to 4 * d_model.
        dropout: dropout on the attention weights and on the MLP's output.
        norm: "layernorm" (GPT-2) or "rmsnorm" (LLaMA).
        bias: whether the linear layers (and LayerNorm) have biases.

    Raises:
        ValueError: the norm is unknown, or n_heads does not divide d_model.

    Introduced in chapter 4.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int | None = None,
        dropout: float = 0.0,
        norm: str = "layernorm",
        bias: bool = True,
    ) -> None:
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.norm1 = _make_norm(norm, d_model, bias)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias)
        self.norm2 = _make_norm(norm, d_model, bias)
        self.mlp = MLP(d_model, d_ff, dropout=dropout, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Add the attention branch, then the MLP branch, to the residual stream.

        Args:
            x: the residual stream, (B, T, D).
            mask: broadcastable to (B, H, T, T), True (bool) where a query may NOT
                look, or float added to the scores.
            is_causal: block each query's future.

        Returns:
            (B, T, D).

        Raises:
            ValueError: x is not (B, T, D) or the mask does not fit.

        Introduced in chapter 4.
        """
        # NOTE: GPT-2 also applies dropout to the attention branch's output; we drop
        # attention weights and the MLP's output only.
        x = x + self.attn(self.norm1(x), mask=mask, is_causal=is_causal)
        x = x + self.mlp(self.norm2(x))
        return x


def _make_norm(norm: str, d_model: int, bias: bool) -> nn.Module:
    """LayerNorm or RMSNorm by name (RMSNorm has no bias either way)."""
    if norm == "layernorm":
        return LayerNorm(d_model, bias=bias)
    if norm == "rmsnorm":
        return RMSNorm(d_model)
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def _check_width(x: torch.Tensor, d_model: int) -> None:
    """Raise a ValueError unless the last axis of x is d_model."""
    if x.dim() == 0 or x.size(-1) != d_model:
        raise ValueError(
            f"the last dim must be d_model={d_model}, got shape {tuple(x.shape)}"
        )
