"""LoRA (low-rank adaptation): train a small update B @ A next to a frozen weight.

A linear layer computes y = x W^T + b with W of shape (out, in). LoRA keeps W frozen
and learns two thin matrices, A (r, in) and B (out, r), with r much smaller than in
and out. The layer then computes

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T

B starts at zero, so the wrapped layer starts out equal to the original. After
training, the update can be merged into W (no extra cost at inference) and unmerged
again to recover the original weight.
"""

import math
import numbers
import re
from collections.abc import Sequence

import torch
from torch import nn

_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")  # "model.layers.12.self_attn..."


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update scaled by alpha / rank.

    Args:
        base: the layer to adapt; its weight and bias are frozen in place.
        rank: r, the inner width of the update (a positive int).
        alpha: scales the update by alpha / r, so that changing r does not change
            how large the update starts out for a given learning rate.
        dropout: probability of zeroing inputs of the update path in training.

    Raises:
        TypeError: `base` is not an `nn.Linear`.
        ValueError: rank below 1, alpha not positive, dropout outside [0, 1).

    Introduced in chapter 8.
    """

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0
    ) -> None:
        super().__init__()
        _check_lora_args(base, rank, alpha, dropout)
        self.base = base
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        self.merged = False
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features).to(weight))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank).to(weight))
        # A random (as nn.Linear's default init), B zero: the update starts at 0
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to the base weight: scale * B @ A, (out, in)."""
        return self.scale * (self.lora_B @ self.lora_A)  # (out, r) @ (r, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out).

        Raises:
            TypeError: `x` is not a tensor.
            ValueError: the last dimension of `x` is not the base layer's `in`.
        """
        _check_input(x, self.base.in_features)
        y = self.base(x)
        if self.merged:
            return y  # the update already sits inside base.weight
        update = (
            self.dropout(x) @ self.lora_A.T @ self.lora_B.T
        )  # (..., r) -> (..., out)
        return y + self.scale * update

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight, so forward costs one matmul."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged; unmerge() first")
        self.base.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again, restoring the original base weight."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged; nothing to unmerge")
        self.base.weight -= self.delta_weight()
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scale={self.scale:g}"


def _check_input(x: torch.Tensor, in_features: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"LoRALinear needs a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.size(-1) != in_features:
        raise ValueError(
            f"the input's last dim must be in={in_features}, the base layer's "
            f"in_features, got shape {tuple(x.shape)}; is this the layer you meant "
            "to wrap, and is the feature dim last?"
        )


def _check_lora_args(base: nn.Module, rank: int, alpha: float, dropout: float) -> None:
    if not isinstance(base, nn.Linear):
        raise TypeError(
            f"LoRALinear wraps an nn.Linear, got {type(base).__name__}; pick a linear "
            "layer such as model.layers[0].self_attn.q_proj"
        )
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"rank must be a whole number >= 1, got {rank!r}")
    if not isinstance(alpha, numbers.Real) or not alpha > 0:
        raise ValueError(
            f"alpha must be a positive number (often 2 * rank), got {alpha!r}"
        )
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def inject_lora(
    model: nn.Module,
    target_modules: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    layers: Sequence[int] | None = None,
) -> list[str]:
    """Freeze `model` and wrap chosen linear layers in `LoRALinear`, in place.

    A module is chosen when the last part of its name is in `target_modules` (e.g.
    "q_proj" matches "model.layers.3.self_attn.q_proj") and, if `layers` is given,
    its name contains `layers.<i>.` with i in `layers`. This follows `peft`'s
    `target_modules` and `layers_to_transform`.

    Args:
        model: any module; every parameter it has is frozen first.
        target_modules: short names of the linear layers to adapt.
        rank, alpha, dropout: passed to each `LoRALinear`.
        layers: indices of the blocks to adapt; None adapts every block.

    Returns:
        The full names of the wrapped modules, in model order.

    Raises:
        ValueError: no module matched (the message lists some linear layer names).

    Introduced in chapter 8.
    """
    model.requires_grad_(False)
    chosen = []
    for name, module in model.named_modules():
        if (
            not isinstance(module, nn.Linear)
            or name.split(".")[-1] not in target_modules
        ):
            continue
        found = _LAYER_INDEX.search(name)
        if layers is not None and (found is None or int(found.group(1)) not in layers):
            continue
        chosen.append(name)
    if not chosen:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(
            f"no nn.Linear named {list(target_modules)} (layers={layers}) in the "
            f"model; its linear layers include {linear[:4]}"
        )
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return chosen


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    """Every `LoRALinear` inside `model`, in model order.

    Introduced in chapter 8.
    """
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer of `model` into its base weight.

    Introduced in chapter 8.
    """
    for layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo `merge_lora`, restoring the base weights.

    Introduced in chapter 8.
    """
    for layer in lora_layers(model):
        layer.unmerge()


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """Count the parameters that train and all parameters (tied weights once).

    Returns:
        `(trainable, total)`.

    Introduced in chapter 8.
    """
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, total
