"""Exercise checks for chapter 08 (Fine-tuning): mean pooling that ignores padding
(8.1), a LoRA layer (8.2) and the labels of a loss on the answer only (8.3).

Exercise 8.2 passes the learner's class itself: the checker builds it around fresh
linear layers, checks that it starts equal to the base layer (B zero, A not) with only
A and B trainable, then sets A and B to known values and compares the outputs. The
layer's forward runs inside the checker, which turns its errors into reports.
Exercise 8.3 also rejects an answer that edits its input tensors in place.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from utils.checks.core import (
    Case,
    Exercise,
    _raising_line,
    compare_tensors,
    format_value,
    register,
)
from utils.finetune import IGNORE_INDEX, answer_labels
from utils.reference.classify import mean_pool

# --- exercise 8.1: mean pooling over real tokens


def _hidden(batch: int, seq_len: int, d_model: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq_len, d_model, generator=gen)


def pool_cases() -> list[Case]:
    """Cases of exercise 8.1: no padding, right and left padding, a bool mask.

    Introduced in chapter 8.
    """
    hint = (
        "multiply the vectors by the mask (as (B, T, 1) floats), sum over T, and "
        "divide by the number of real tokens of each row, mask.sum(dim=1)"
    )
    specs = [
        ("no padding", _hidden(2, 3, 4, 0), torch.ones(2, 3, dtype=torch.long)),
        (
            "right padding",
            _hidden(2, 4, 3, 1),
            torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
        ),
        (
            "left padding",
            _hidden(3, 4, 2, 2),
            torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]),
        ),
        (
            "a bool mask",
            _hidden(2, 3, 2, 3),
            torch.tensor([[True, False, False], [True, True, False]]),
        ),
    ]
    return [
        Case(name, (hidden, mask), mean_pool(hidden, mask), hint)
        for name, hidden, mask in specs
    ]


def diagnose_pool(case: Case, actual: Any) -> str | None:
    """Recognise plain averaging, dividing by T, or the first token.

    Introduced in chapter 8.
    """
    if not isinstance(actual, torch.Tensor) or actual.shape != case.expected.shape:
        return None
    hidden, mask = case.args
    m = mask.float().unsqueeze(-1)  # (B, T, 1)
    mistakes = [
        (
            hidden.mean(dim=1),
            "you average over all T positions, padding included; "
            "weight the sum by the mask and divide by the real-token count",
        ),
        (
            (hidden * m).sum(dim=1) / hidden.size(1),
            "you divide by T, the padded "
            "length; divide by the number of real tokens, mask.sum(dim=1)",
        ),
        ((hidden * m).sum(dim=1), "you return the sum; divide by the real-token count"),
        (hidden[:, 0], "you take the first token; average the real tokens instead"),
    ]
    for candidate, hint in mistakes:
        if torch.allclose(candidate, actual, atol=1e-5) and not torch.allclose(
            candidate, case.expected, atol=1e-5
        ):
            return hint
    return None


# --- exercise 8.2: the LoRA layer


@dataclass(frozen=True)
class LoRAProbe:
    """What the checker of 8.2 feeds a learner's layer and what it expects back."""

    x: torch.Tensor  # (..., in) input
    lora_A: torch.Tensor  # (r, in) values to load into the layer
    lora_B: torch.Tensor  # (out, r)
    base_out: torch.Tensor  # the base layer's output on x
    expected: torch.Tensor  # the reference LoRA output with these A and B
    scale: float  # alpha / rank

    def __repr__(self) -> str:
        return f"LoRA output of shape {tuple(self.expected.shape)}"


def lora_cases() -> list[Case]:
    """Cases of exercise 8.2: LoRALinear(base, rank, alpha) for several sizes.

    Introduced in chapter 8.
    """
    specs = [  # (name, in, out, rank, alpha, bias, x shape prefix)
        ("rank 4, alpha 8", 6, 5, 4, 8.0, True, (3,)),
        ("rank 8, alpha 4 (scale 0.5)", 10, 7, 8, 4.0, True, (2, 3)),
        ("rank 2, alpha 6, no bias", 5, 4, 2, 6.0, False, (4,)),
        ("rank 1, alpha 1", 3, 3, 1, 1.0, True, (2,)),
    ]
    cases = []
    for seed, (name, d_in, d_out, rank, alpha, bias, prefix) in enumerate(specs):
        gen = torch.Generator().manual_seed(80 + seed)
        base = nn.Linear(d_in, d_out, bias=bias)
        with torch.no_grad():
            base.weight.copy_(torch.randn(d_out, d_in, generator=gen))
            if bias:
                base.bias.copy_(torch.randn(d_out, generator=gen))
        x = torch.randn(*prefix, d_in, generator=gen)
        a = torch.randn(rank, d_in, generator=gen)
        b = torch.randn(d_out, rank, generator=gen)
        with torch.no_grad():
            base_out = base(x)
            expected = base_out + (alpha / rank) * (x @ a.T @ b.T)
        probe = LoRAProbe(x, a, b, base_out, expected, alpha / rank)
        hint = "y = base(x) + (alpha / rank) * x @ A.T @ B.T"
        cases.append(Case(name, (base, rank, alpha), probe, hint))
    return cases


def compare_lora(probe: LoRAProbe, layer: Any) -> str | None:
    """Check the learner's layer: shapes, starting values, frozen base, then outputs.

    The layer's forward runs here, outside `check_exercise`'s own error handling,
    so any exception it raises becomes a report rather than a traceback.

    Introduced in chapter 8.
    """
    if not isinstance(layer, nn.Module):
        return f"expected an nn.Module (your class itself), got {type(layer).__name__}"
    for check in (_lora_shapes, _lora_start):
        problem = check(probe, layer)
        if problem is not None:
            return problem
    problem = _lora_trainable(layer)
    if problem is not None:
        return problem
    start, err = _forward(layer, probe.x)
    if err is not None:
        return _forward_problem(layer, err)
    problem = compare_tensors(probe.base_out, start)
    if problem is not None:
        return (
            f"with lora_B at zero a fresh layer must compute exactly base(x): {problem}"
        )
    with torch.no_grad():
        layer.lora_A.copy_(probe.lora_A)
        layer.lora_B.copy_(probe.lora_B)
    out, err = _forward(layer, probe.x)
    if err is not None:
        return _forward_problem(layer, err)
    return compare_tensors(probe.expected, out, atol=1e-4, rtol=1e-5)


def _lora_shapes(probe: LoRAProbe, layer: nn.Module) -> str | None:
    for name, want in (("lora_A", probe.lora_A), ("lora_B", probe.lora_B)):
        got = getattr(layer, name, None)
        if not isinstance(got, nn.Parameter):
            shape = tuple(want.shape)
            return f"the layer needs an nn.Parameter named {name}, shape {shape}"
        if got.shape != want.shape:
            return (
                f"{name} should have shape {tuple(want.shape)} (A is (rank, in), B is "
                f"(out, rank)), got {tuple(got.shape)}"
            )
    return None


def _lora_start(probe: LoRAProbe, layer: nn.Module) -> str | None:
    """B must start at zero (the layer starts equal to its base), A must not."""
    if bool((layer.lora_B != 0).any()):
        return (
            "a fresh layer must compute exactly what the base layer computes: "
            "initialise lora_B with zeros (and lora_A small and random)"
        )
    if not bool((layer.lora_A != 0).any()):
        return (
            "lora_A starts at zero too: with A and B both zero neither ever gets a "
            "gradient (B's gradient is proportional to A, A's to B), so the update "
            "stays zero; start lora_A small and random, e.g. torch.randn(rank, in) * "
            "0.01, and only lora_B at zero"
        )
    return None


def _lora_trainable(layer: nn.Module) -> str | None:
    if not (layer.lora_A.requires_grad and layer.lora_B.requires_grad):
        return "lora_A and lora_B must train: leave their requires_grad at True"
    trainable = {id(p) for p in layer.parameters() if p.requires_grad}
    if trainable != {id(layer.lora_A), id(layer.lora_B)}:
        return (
            "only lora_A and lora_B may train: freeze the base layer with "
            "base.requires_grad_(False) (its weight and bias)"
        )
    return None


def _forward(layer: nn.Module, x: torch.Tensor) -> tuple[Any, Exception | None]:
    """Run the learner's forward; return (output, None) or (None, the exception)."""
    try:
        with torch.no_grad():
            return layer(x), None
    except Exception as err:  # the learner's code may raise anything
        return None, err


def _forward_problem(layer: nn.Module, err: Exception) -> str:
    """What went wrong when the learner's forward raised `err`."""
    if isinstance(err, NotImplementedError):
        return (
            "forward is not attempted yet: it still raises NotImplementedError "
            "(__init__ passed the checks of shapes, starting values and frozen base)"
        )
    where = _raising_line(type(layer).forward, err)  # `line 12: return ...`
    at = f" at {where}" if where else ""
    return f"forward raised {type(err).__name__}{at}: {err}"


def _explain_forward_error(layer: nn.Module, x: torch.Tensor, err: Exception) -> str:
    """Name the likely mistake behind an exception raised by the learner's forward.

    A shape bug is found by redoing the usual wrong products with the layer's own
    A and B: the one that fails with the same message is most likely the learner's.
    """
    if isinstance(err, NotImplementedError):
        return "now write forward: base(x) + (alpha / rank) * x @ lora_A.T @ lora_B.T"
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    first_b = (
        "lora_B is applied before lora_A: first x @ lora_A.T, which is (..., rank), "
        "then @ lora_B.T, which is (..., out)"
    )
    mistakes = [
        (lambda: x @ a.T @ b, "lora_B is (out, rank): transpose it, @ lora_B.T"),
        (lambda: x @ a @ b.T, "lora_A is (rank, in): transpose it, x @ lora_A.T"),
        (lambda: x @ a @ b, "transpose both: x @ lora_A.T @ lora_B.T"),
        (lambda: x @ b.T @ a.T, first_b),
        (lambda: x @ b @ a, first_b),
        (lambda: x @ b, first_b),
        (
            lambda: x @ (b @ a),
            "the update's weight lora_B @ lora_A is (out, in), like base.weight: "
            "transpose it, x @ (lora_B @ lora_A).T",
        ),
    ]
    if _raises(lambda: x @ a.T @ b.T) is None:  # else the error is not about shapes
        for mistake, hint in mistakes:
            if str(_raises(mistake)) == str(err):
                return hint
    if isinstance(err, RuntimeError) and "dtype" in str(err):
        return (
            "lora_A, lora_B and x must share a dtype (float32 here): create A and B "
            "without a dtype= argument, or with base.weight.dtype"
        )
    if isinstance(err, RuntimeError) and "shape" in str(err):
        return (
            "a shape mismatch: x is (..., in), x @ lora_A.T is (..., rank) and that "
            "@ lora_B.T is (..., out); print the shape after each step"
        )
    return "read the error and the line of your forward that raised it"


def _raises(fn: Callable[[], Any]) -> Exception | None:
    """The exception `fn()` raises, or None."""
    try:
        fn()
    except Exception as err:  # any failure counts; the caller compares messages
        return err
    return None


def diagnose_lora(case: Case, layer: Any) -> str | None:
    """Recognise a forward that raises, drops the bias or the base output, or
    scales the update by alpha, by nothing or by rank / alpha.

    The candidates use the layer's current A and B, so this works both on a fresh
    layer and after the checker has loaded its own values.

    Introduced in chapter 8.
    """
    probe: LoRAProbe = case.expected
    base, rank, alpha = case.args
    if not isinstance(layer, nn.Module) or _lora_shapes(probe, layer) is not None:
        return None
    out, err = _forward(layer, probe.x)
    if err is not None:
        return _explain_forward_error(layer, probe.x, err)
    if not isinstance(out, torch.Tensor) or out.shape != probe.expected.shape:
        return None
    out = out.detach().float()  # a layer built in float64 is compared all the same
    a, b = layer.lora_A.detach().float(), layer.lora_B.detach().float()
    update = probe.x @ a.T @ b.T  # (..., in) -> (..., r) -> (..., out)
    no_bias = probe.x @ base.weight.detach().T  # (..., out)
    right = probe.base_out + (alpha / rank) * update
    mistakes = [
        (
            no_bias + (alpha / rank) * update,
            "your forward drops the base layer's bias: call self.base(x), which "
            "adds it, rather than x @ weight.T",
        ),
        ((alpha / rank) * update, "you return only the update; add self.base(x)"),
        (
            probe.base_out + alpha * update,
            "your update is scaled by alpha; scale it by alpha / rank",
        ),
        (
            probe.base_out + update,
            "your update is not scaled; multiply it by alpha / rank",
        ),
        (
            probe.base_out + (rank / alpha) * update,
            "your scale is upside down: use alpha / rank",
        ),
    ]
    for candidate, hint in mistakes:
        if torch.allclose(candidate, out, atol=1e-4) and not torch.allclose(
            candidate, right, atol=1e-4
        ):
            return hint
    return None


# --- exercise 8.3: the labels of an instruction example


def label_cases() -> list[Case]:
    """Cases of exercise 8.3: prompt positions and padding get IGNORE_INDEX.

    The pad id is the end-of-turn id (2), as in SmolLM2, and every answer ends
    with that token, so masking by pad id would lose it.

    Introduced in chapter 8.
    """
    hint = (
        f"a position keeps its token id when it is at or after prompt_length and "
        f"attention_mask is 1; everything else becomes IGNORE_INDEX ({IGNORE_INDEX})"
    )
    specs = [
        ("one row, no padding", [[5, 6, 7, 8, 9, 2]], [[1] * 6], [4]),
        (
            "right padding with pad id == end-of-turn id",
            [[5, 6, 7, 8, 2, 2, 2], [5, 6, 7, 9, 8, 9, 2]],
            [[1, 1, 1, 1, 1, 0, 0], [1] * 7],
            [3, 4],
        ),
        (
            "three rows of different lengths",
            [[7, 8, 9, 10, 2, 2], [7, 8, 2, 2, 2, 2], [7, 8, 9, 10, 11, 2]],
            [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1] * 6],
            [2, 2, 5],
        ),
        (
            "a one-token answer",
            [[4, 3, 2, 2], [4, 3, 6, 2]],
            [[1, 1, 1, 0], [1] * 4],
            [2, 3],
        ),
    ]
    cases = []
    for name, ids, mask, prompts in specs:
        args = (torch.tensor(ids), torch.tensor(mask), torch.tensor(prompts))
        probe = LabelsProbe(answer_labels(*args), args, tuple(a.clone() for a in args))
        cases.append(Case(name, args, probe, hint))
    return cases


@dataclass(frozen=True)
class LabelsProbe:
    """The labels exercise 8.3 expects, the inputs handed to the learner's function
    and copies of them taken before the call, to catch edits in place.

    Introduced in chapter 8.
    """

    labels: torch.Tensor  # (B, T) reference labels
    passed: tuple[torch.Tensor, ...]  # the very tensors the learner's function gets
    before: tuple[torch.Tensor, ...]  # copies of them, made before the call

    def __repr__(self) -> str:
        return format_value(self.labels)


INPUT_NAMES = ("input_ids", "attention_mask", "prompt_lengths")  # 8.3's arguments


def compare_labels(probe: LabelsProbe, actual: Any) -> str | None:
    """Check that the inputs are unchanged, then compare the labels.

    Introduced in chapter 8.
    """
    changed = _changed_input(probe)
    if changed is not None:
        name, n_changed, n_total = changed
        return (
            f"your function changed its argument {name} in place ({n_changed} of "
            f"{n_total} values differ from what was passed); the caller still needs "
            "its inputs: the model reads input_ids after the labels are made"
        )
    return compare_tensors(probe.labels, actual)


def _changed_input(probe: LabelsProbe) -> tuple[str, int, int] | None:
    """(name, values changed, values) of the first input edited in place, or None."""
    for name, now, before in zip(INPUT_NAMES, probe.passed, probe.before, strict=True):
        if now.shape != before.shape:
            return name, before.numel(), before.numel()
        if not torch.equal(now, before):
            return name, int((now != before).sum()), before.numel()
    return None


def diagnose_labels(case: Case, actual: Any) -> str | None:
    """Recognise an edit of the inputs in place, the pad-id mask, an off-by-one
    prompt, a manual shift, 0 for ignore.

    Introduced in chapter 8.
    """
    probe: LabelsProbe = case.expected
    changed = _changed_input(probe)
    if changed is not None:
        return (
            f"leave {changed[0]} as it is: build a new tensor, e.g. with "
            "torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE_INDEX)), "
            "or copy first, labels = input_ids.clone(), and edit the copy"
        )
    expected = probe.labels
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return None
    ids, mask, prompts = probe.before
    ignore = torch.full_like(ids, IGNORE_INDEX)
    t = torch.arange(ids.size(1))[None, :]
    mistakes = [
        (
            torch.where(expected == IGNORE_INDEX, torch.zeros_like(ids), expected),
            f"ignored positions must hold IGNORE_INDEX ({IGNORE_INDEX}), not 0: "
            "cross_entropy skips that value only",
        ),
        (
            torch.where((t >= prompts[:, None]) & (ids != 2), ids, ignore),
            "you find padding by the pad id; the pad id is also the end-of-turn token "
            "the answer ends with: use attention_mask",
        ),
        (
            torch.where(t >= prompts[:, None], ids, ignore),
            "padding positions must be ignored too: use attention_mask",
        ),
        (
            torch.where((t > prompts[:, None]) & mask.bool(), ids, ignore),
            "off by one: position prompt_length is the answer's first token and keeps "
            "its label",
        ),
        (
            torch.where((t >= prompts[:, None] - 1) & mask.bool(), ids, ignore),
            "off by one: the last prompt token gets IGNORE_INDEX too",
        ),
        (
            torch.cat([expected[:, 1:], ignore[:, :1]], dim=1),
            "do not shift the labels yourself; they sit under their own tokens and "
            "the loss shifts them",
        ),
    ]
    for candidate, hint in mistakes:
        if torch.equal(candidate, actual) and not torch.equal(candidate, expected):
            return hint
    return None


MEAN_POOL = register(
    Exercise(
        id="8.1",
        title="Mean pooling that ignores padding",
        cases=pool_cases,
        diagnose=diagnose_pool,
        keep_inputs=True,  # the caller's tensors must come back unchanged
    )
)
LORA_LAYER = register(
    Exercise(
        id="8.2",
        title="A LoRA layer",
        cases=lora_cases,
        compare=compare_lora,
        diagnose=diagnose_lora,
    )
)
ANSWER_LABELS = register(
    Exercise(
        id="8.3",
        title="Labels for the answer only",
        cases=label_cases,
        compare=compare_labels,
        diagnose=diagnose_labels,
    )
)
