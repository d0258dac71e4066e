"""Shape checks with messages that say what was expected."""

from collections.abc import Sequence

import torch


def check_shape(
    x: torch.Tensor, expected: Sequence[int | None], name: str = "tensor"
) -> None:
    """Raise a clear error unless `x` has the `expected` shape.

    Args:
        x: the tensor to check.
        expected: one size per dimension; `None` accepts any size there.
        name: how the message refers to `x`.

    Raises:
        ValueError: the rank or a size differs, naming both shapes.

    Introduced in chapter 0.
    """
    actual = tuple(x.shape)
    expected = tuple(expected)
    same_rank = len(actual) == len(expected)
    if same_rank and all(
        e is None or a == e for a, e in zip(actual, expected, strict=True)
    ):
        return
    shown = tuple("*" if e is None else e for e in expected)
    raise ValueError(f"{name} should have shape {shown}, got {actual}")
