"""Exercise checks for chapter 08 (Fine-tuning): mean pooling that ignores padding
(8.1), a LoRA layer (8.2) and the labels of a loss on the answer only (8.3).

Exercise 8.2 passes the learner's class itself: the checker builds it around fresh
linear layers, checks that it starts equal to the base layer with only A and B
trainable, then sets A and B to known values and compares the outputs.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from utils.checks.core import Case, Exercise, compare_tensors, register
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
    """Check the learner's layer: shapes, B at zero, frozen base, then the output.

    Introduced in chapter 8.
    """
    if not isinstance(layer, nn.Module):
        return f"expected an nn.Module (your class itself), got {type(layer).__name__}"
    problem = _lora_shapes(probe, layer)
    if problem is not None:
        return problem
    with torch.no_grad():
        start = layer(probe.x)
    if compare_tensors(probe.base_out, start) is not None:
        return (
            "a fresh layer must compute exactly what the base layer computes: "
            "initialise lora_B with zeros (and lora_A randomly)"
        )
    trainable = {id(p) for p in layer.parameters() if p.requires_grad}
    if trainable != {id(layer.lora_A), id(layer.lora_B)}:
        return (
            "only lora_A and lora_B may train: freeze the base layer with "
            "base.weight.requires_grad_(False) (and its bias)"
        )
    with torch.no_grad():
        layer.lora_A.copy_(probe.lora_A)
        layer.lora_B.copy_(probe.lora_B)
        out = layer(probe.x)
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


def diagnose_lora(case: Case, layer: Any) -> str | None:
    """Recognise a LoRA scaled by alpha, by nothing, or by rank / alpha.

    Introduced in chapter 8.
    """
    probe: LoRAProbe = case.expected
    _, rank, alpha = case.args
    if not isinstance(layer, nn.Module) or _lora_shapes(probe, layer) is not None:
        return None
    with torch.no_grad():
        out = layer(probe.x)
    update = probe.expected - probe.base_out
    for factor, hint in [
        (alpha, "your update is scaled by alpha; scale it by alpha / rank"),
        (1.0, "your update is not scaled; multiply it by alpha / rank"),
        (rank / alpha, "your scale is upside down: use alpha / rank"),
    ]:
        candidate = probe.base_out + update / probe.scale * factor
        if factor != probe.scale and torch.allclose(candidate, out, atol=1e-4):
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
        cases.append(Case(name, args, answer_labels(*args), hint))
    return cases


def diagnose_labels(case: Case, actual: Any) -> str | None:
    """Recognise the pad-id mask, an off-by-one prompt, a manual shift, 0 for ignore.

    Introduced in chapter 8.
    """
    if not isinstance(actual, torch.Tensor) or actual.shape != case.expected.shape:
        return None
    ids, mask, prompts = case.args
    expected = case.expected
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
        diagnose=diagnose_labels,
    )
)
