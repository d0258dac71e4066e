"""Exercise checks for chapter 00 (Start here): exercise 0.1, a softmax."""

import torch

from utils.checks.core import Case, Exercise, format_value, register
from utils.reference.softmax import softmax

OVERFLOW_AT = 88.0  # exp(x) overflows float32 above about 88.7

# the fallback hint of each case, used when no specific mistake is recognised
_SMALL = "exp(1), exp(2), exp(3), each divided by their sum: 0.0900, 0.2447, 0.6652"
_ROWS = "with the default dim=-1, each row is its own distribution and sums to 1"
_DIM = "normalise along `dim`: with dim=0 each column sums to 1"
_LARGE = "subtract the max along `dim` before exp: softmax(x - c) equals softmax(x)"
_SCALES = (
    "each row needs its own max: subtract x.amax(dim, keepdim=True), one value per "
    "row, not one max for the whole tensor"
)
_SUMS = (
    "every row of the output is a probability distribution: entries in [0, 1], sum 1"
)


def softmax_cases() -> list[Case]:
    """Build the inputs of exercise 0.1, from checkable by hand to numerically hard.

    Returns:
        Six cases: a 1-D vector, a (2, 4) batch, a (2, 3) input with dim=0,
        logits near 1000, two rows on very different scales and a random (4, 6)
        batch.

    Introduced in chapter 0.
    """
    columns = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])  # (2, 3)
    generator = torch.Generator().manual_seed(0)
    random_rows = 3 * torch.randn(4, 6, generator=generator)  # (4, 6)
    # one max for the whole tensor would push the second row to exp(-2002) = 0
    scales = torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -999.0, -998.0]])
    specs = [
        ("small vector", torch.tensor([1.0, 2.0, 3.0]), {}, _SMALL),
        ("batch of rows", torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0] * 4]), {}, _ROWS),
        ("non-default dim", columns, {"dim": 0}, _DIM),
        ("large logits", torch.tensor([1000.0, 1001.0, 1002.0]), {}, _LARGE),
        ("rows on different scales", scales, {}, _SCALES),
        ("rows sum to 1", random_rows, {}, _SUMS),
    ]
    return [
        Case(name, (x,), softmax(x, **kwargs), hint, kwargs)
        for name, x, kwargs, hint in specs
    ]


def diagnose_softmax(case: Case, actual: object) -> str | None:
    """Recognise a plausible softmax mistake from a wrong output.

    Args:
        case: the case that failed; `case.args[0]` is the input x.
        actual: what the learner's softmax returned.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 0.
    """
    x, dim = case.args[0], case.kwargs.get("dim", -1)
    if not isinstance(actual, torch.Tensor):
        return None
    if actual.shape != x.shape:
        return "softmax returns a tensor of the same shape as its input x"
    if not torch.isfinite(actual).all():
        if x.dim() > 1 and _matches(actual, _softmax_global_max(x, dim)):
            return (
                "you subtract one max for the whole tensor, so a row far below it "
                "becomes exp(-2002) = 0 everywhere and 0 / 0 is NaN. " + _SCALES
            )
        return _nan_hint(x)
    for candidate, hint in _softmax_mistakes(x, dim):
        if _matches(actual, candidate):
            return hint
    sums = actual.double().sum(dim)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        return (
            f"slices along dim={dim} must sum to 1; yours sum to {format_value(sums)}"
        )
    return None


def explain_softmax_error(case: Case, err: Exception) -> str | None:
    """Recognise a plausible softmax mistake from the exception it raised.

    Args:
        case: the case that failed.
        err: what the learner's softmax raised.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 0.
    """
    if "must match the size" in str(err):
        return (
            "a sum or max over `dim` drops that axis, so it no longer lines up with x; "
            "pass keepdim=True to keep it as size 1 so that it broadcasts"
        )
    return None


def _nan_hint(x: torch.Tensor) -> str:
    """Explain NaN or inf in the output, naming overflow when the input is large."""
    largest = float(x.abs().max())
    if largest > OVERFLOW_AT:
        return (
            f"exp({largest:g}) overflows float32 to inf, and inf / inf is NaN. "
            "Subtract the max along `dim` before exp: softmax(x - c) equals "
            "softmax(x), and with c = max every exponent is at most 0"
        )
    return "the output has NaN or inf; look for a division by 0 or a log of 0"


def _softmax_mistakes(x: torch.Tensor, dim: int) -> list[tuple[torch.Tensor, str]]:
    """Outputs of plausible wrong softmaxes on x, each with its explaining hint."""
    mistakes = [
        (torch.exp(x), "these are exp(x) without normalising: divide by their sum"),
        (
            torch.exp(x - x.amax(dim=dim, keepdim=True)),
            "these are exp(x - max): the largest entry is 1 but the slice does not "
            "sum to 1. Divide by the sum along `dim`, not by the max",
        ),
    ]
    for other in range(x.dim()):
        if other != dim % x.dim():
            hint = (
                f"your output is a softmax along dim={other}, not dim={dim}: "
                "use the `dim` argument in both the max and the sum"
            )
            mistakes.append((softmax(x, dim=other), hint))
    if x.dim() > 1:
        whole = softmax(x.flatten(), dim=0).reshape(x.shape)  # (N,) -> shape of x
        hint = "you normalise over the whole tensor; normalise along `dim` only"
        mistakes.append((whole, hint))
    return mistakes


def _softmax_global_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """A softmax that subtracts the max of the whole tensor, not of each slice."""
    shifted = torch.exp(x - x.max())
    return shifted / shifted.sum(dim=dim, keepdim=True)


def _matches(actual: torch.Tensor, candidate: torch.Tensor) -> bool:
    """Whether a wrong output equals a candidate mistake, within a loose tolerance."""
    got, want = actual.detach().cpu().double(), candidate.double()
    return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-6, equal_nan=True))


SOFTMAX = register(
    Exercise(
        id="0.1",
        title="Softmax",
        cases=softmax_cases,
        diagnose=diagnose_softmax,
        explain_error=explain_softmax_error,
        keep_inputs=True,  # the caller's tensors must come back unchanged
    )
)
