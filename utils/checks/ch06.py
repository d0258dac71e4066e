"""Exercise checks for chapter 06 (Pretraining): the learning-rate schedule (6.1) and
the loss over a whole token stream (6.2).

Exercise 6.1 calls the learner's `lr_at` at chosen steps of a few schedules and
compares each rate with the reference's. Exercise 6.2 hands the learner's
`evaluate_loss` a small GPT with dropout that records every call it receives: whether
it ran in training mode, whether gradients were on, and the shape of its input. So a
right number computed the wrong way (dropout on, gradients tracked, the mode not
restored) is caught as well as a wrong number.
"""

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utils.checks.core import Case, Exercise, register
from utils.reference.gpt import GPT, GPTConfig
from utils.training import evaluate_loss, lr_at

REL_TOL = 1e-6  # learning rates may be computed in another order
LOSS_REL_TOL = 1e-5  # float32 sums in another order differ by about 1e-7

# --- exercise 6.1: the learning-rate schedule

_WARMUP = (
    "during warm-up the rate grows linearly: max_lr * (step + 1) / (warmup_steps + 1), "
    "so step 0 is already above 0 and step == warmup_steps reaches max_lr"
)
_DECAY = (
    "after warm-up, half a cosine from max_lr down to min_lr: progress = (step - "
    "warmup_steps) / (total_steps - warmup_steps) goes from 0 to 1, and the rate is "
    "min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)"
)
_FLOOR = "at step >= total_steps the rate is min_lr"

# (name, step, (max_lr, min_lr, warmup_steps, total_steps), hint)
_SCHEDULE = (1e-3, 1e-4, 10, 100)
_LR_SPECS = [
    ("the first warm-up step", 0, _SCHEDULE, _WARMUP),
    ("the middle of the warm-up", 4, _SCHEDULE, _WARMUP),
    ("the last warm-up step", 10, _SCHEDULE, _WARMUP),
    ("the first decay step", 11, _SCHEDULE, _DECAY),
    ("a quarter into the decay", 31, _SCHEDULE, _DECAY),
    ("the middle of the decay", 55, _SCHEDULE, _DECAY),
    ("the last step of the run", 99, _SCHEDULE, _DECAY),
    ("step == total_steps", 100, _SCHEDULE, _FLOOR),
    ("past total_steps", 150, _SCHEDULE, _FLOOR),
    ("no warm-up, step 0", 0, (6e-4, 6e-5, 0, 50), _WARMUP),
    ("no warm-up, a decay step", 20, (6e-4, 6e-5, 0, 50), _DECAY),
    (
        "warm-up as long as the run",
        20,
        (1e-3, 1e-4, 20, 20),
        f"{_FLOOR}; this rule wins even over the warm-up when warmup_steps == "
        "total_steps: test step >= total_steps first",
    ),
]


def lr_cases() -> list[Case]:
    """Build the cases of exercise 6.1: warm-up, decay, the floor, edge schedules.

    Returns:
        Twelve cases, each calling lr_at(step, max_lr=..., min_lr=...,
        warmup_steps=..., total_steps=...).

    Introduced in chapter 6.
    """
    cases = []
    for name, step, (max_lr, min_lr, warmup_steps, total_steps), hint in _LR_SPECS:
        kwargs = {
            "max_lr": max_lr,
            "min_lr": min_lr,
            "warmup_steps": warmup_steps,
            "total_steps": total_steps,
        }
        cases.append(Case(name, (step,), lr_at(step, **kwargs), hint, kwargs))
    return cases


def compare_lr(expected: float, actual: Any) -> str | None:
    """Say how the learner's learning rate differs from the reference's, or None.

    Args:
        expected: the reference's rate.
        actual: what the learner's lr_at returned; it must be a Python number.

    Returns:
        A one-line description of the difference, or None.

    Introduced in chapter 6.
    """
    problem = _not_a_number(actual)
    if problem is not None:
        return problem
    if not math.isfinite(actual):
        return f"expected {expected:.4e}, got {actual}"
    if math.isclose(actual, expected, rel_tol=REL_TOL, abs_tol=1e-15):
        return None
    ratio = f" ({actual / expected:.3g} times as large)" if expected and actual else ""
    return f"expected {expected:.4e}, got {actual:.4e}{ratio}"


def diagnose_lr(case: Case, actual: Any) -> str | None:
    """Recognise a plausible schedule mistake from a wrong rate.

    Args:
        case: the case that failed; args (step,), the schedule in its kwargs.
        actual: what the learner's lr_at returned.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 6.
    """
    if _not_a_number(actual) is not None:
        return None
    (step,) = case.args
    for mistake, hint in _LR_MISTAKES:
        candidate = lr_variant(step, mistake=mistake, **case.kwargs)
        if candidate is None or _close(candidate, case.expected):
            continue  # this case cannot tell that mistake from the right answer
        if _close(candidate, actual):
            return hint
    return None


def explain_lr_error(case: Case, err: Exception) -> str | None:
    """Recognise a plausible schedule mistake from the exception it raised.

    Introduced in chapter 6.
    """
    if isinstance(err, ZeroDivisionError):
        if case.kwargs["warmup_steps"] == 0:
            return (
                "with warmup_steps=0 your warm-up divides by 0; the course's formula, "
                "max_lr * (step + 1) / (warmup_steps + 1), never does"
            )
        return (
            "a division by 0: when warmup_steps == total_steps the decay never runs, "
            f"because {_FLOOR} (test step >= total_steps first)"
        )
    if isinstance(err, TypeError) and "tensor" in str(err).lower():
        return "work with Python floats and math.cos; no tensors are needed"
    return None


def lr_variant(
    step: int,
    *,
    max_lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int,
    mistake: str = "",
) -> float | None:
    """The rate an lr_at with one plausible `mistake` returns at `step`.

    Args:
        step, max_lr, min_lr, warmup_steps, total_steps: as for `lr_at`.
        mistake: "" for the right schedule, or a name from `_LR_MISTAKES`.

    Returns:
        The rate, or None where that schedule would divide by zero.

    Introduced in chapter 6.
    """
    span = max_lr - min_lr
    floor_first = mistake != "warmup_wins"
    if floor_first and step >= total_steps and mistake != "no_floor":
        return min_lr
    if step <= warmup_steps and mistake != "no_warmup":
        if mistake == "zero_start":
            return None if warmup_steps == 0 else max_lr * step / warmup_steps
        if mistake == "over_warmup":
            return None if warmup_steps == 0 else max_lr * (step + 1) / warmup_steps
        return max_lr * (step + 1) / (warmup_steps + 1)
    if mistake == "warmup_wins" and step >= total_steps:
        return min_lr
    start = 0 if mistake == "no_warmup" else warmup_steps
    length = total_steps if mistake == "over_total" else total_steps - start
    if length == 0:
        return None
    progress = (step - start) / length
    if mistake == "over_total":
        progress = step / total_steps
    if mistake == "integer_division":
        progress = (step - start) // length
    if mistake == "linear":
        return max_lr - progress * span
    if mistake == "to_zero":
        return 0.5 * (1 + math.cos(math.pi * progress)) * max_lr
    if mistake == "full_cosine":
        return min_lr + 0.5 * (1 + math.cos(2 * math.pi * progress)) * span
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * span


_LR_MISTAKES = [
    (
        "zero_start",
        "your warm-up starts at 0 (max_lr * step / warmup_steps), so step 0 does not "
        f"move the weights at all; {_WARMUP}",
    ),
    (
        "over_warmup",
        "your warm-up divides by warmup_steps, so it reaches max_lr one step early "
        f"and then overshoots it; {_WARMUP}",
    ),
    (
        "over_total",
        "your cosine runs over all total_steps; it starts after the warm-up, so "
        "progress = (step - warmup_steps) / (total_steps - warmup_steps)",
    ),
    (
        "no_warmup",
        "your rate starts at max_lr: the first warmup_steps steps ramp up linearly "
        "first, and the cosine starts after them",
    ),
    (
        "to_zero",
        "your cosine decays to 0; it ends at min_lr: min_lr + 0.5 * (1 + cos(pi * "
        "progress)) * (max_lr - min_lr)",
    ),
    (
        "full_cosine",
        "the decay is half a cosine period, cos(pi * progress); with 2 * pi the rate "
        "comes back up to max_lr by the end",
    ),
    (
        "linear",
        "your decay is a straight line; the schedule follows half a cosine, "
        "0.5 * (1 + cos(pi * progress))",
    ),
    (
        "integer_division",
        "progress stays 0 during the decay: compute it with /, not //, so that it "
        "runs from 0 to 1",
    ),
    (
        "warmup_wins",
        f"when warmup_steps == total_steps, {_FLOOR}, even where the warm-up "
        "rule also applies: test step >= total_steps first",
    ),
    (
        "no_floor",
        f"past the end of the run your cosine climbs again; {_FLOOR}",
    ),
]


def _not_a_number(actual: Any) -> str | None:
    """A description of a return value that is not a real number, else None."""
    if actual is None:
        return "expected a float, got None: did you forget to `return` the rate?"
    if isinstance(actual, torch.Tensor):
        return (
            "expected a Python float, got a tensor; use math.cos on floats (or "
            "call .item())"
        )
    if isinstance(actual, bool) or not isinstance(actual, numbers.Real):
        return f"expected a float, got {type(actual).__name__}"
    return None


def _close(a: float, b: Any) -> bool:
    return math.isclose(a, float(b), rel_tol=REL_TOL, abs_tol=1e-15)


# --- exercise 6.2: the loss over a whole token stream

VOCAB = 16  # V of the checker's model
CONTEXT = 8  # the checker's model reads at most 8 tokens
DROPOUT = 0.5  # large, so that dropout left on changes the loss clearly
WEIGHT_STD = 0.4  # large weights: sharp logits, so that each mistake shows
MODEL_SEED = 6


@dataclass(frozen=True)
class ModelCall:
    """What the checker's model saw in one forward call.

    Introduced in chapter 6.
    """

    dropout_on: bool  # some dropout module was in training mode
    grad_enabled: bool  # torch.is_grad_enabled() during the call
    shape: tuple[int, ...]  # of the input ids


class RecordingGPT(GPT):
    """A GPT that records every forward call in `calls` (see `ModelCall`).

    Introduced in chapter 6.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        self.calls: list[ModelCall] = []

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Record the call, then run `GPT.forward`."""
        dropout_on = any(
            m.training for m in self.modules() if isinstance(m, nn.Dropout)
        )
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else ()
        self.calls.append(ModelCall(dropout_on, torch.is_grad_enabled(), shape))
        return super().forward(idx, targets)


def case_model(training: bool = True, seed: int = MODEL_SEED) -> RecordingGPT:
    """The checker's GPT: 2 layers, D=16, V=16, context 8, dropout 0.5.

    Its weights are N(0, 0.4^2), so that its logits are sharp and the loss differs
    clearly from window to window.

    Args:
        training: the mode the model is handed to the learner in.
        seed: picks the weights.

    Returns:
        A `RecordingGPT` with no calls recorded yet.

    Introduced in chapter 6.
    """
    config = GPTConfig(
        vocab_size=VOCAB,
        context_length=CONTEXT,
        n_layers=2,
        n_heads=2,
        d_model=16,
        dropout=DROPOUT,
    )
    with torch.random.fork_rng(devices=[]):  # leave the learner's random state alone
        torch.manual_seed(seed)
        model = RecordingGPT(config)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(WEIGHT_STD * torch.randn(parameter.shape))
    return model.train(training)


@dataclass(frozen=True)
class LossAnswer:
    """The model of one case of exercise 6.2, its mode, and the loss to return.

    Introduced in chapter 6.
    """

    model: RecordingGPT  # the model the learner gets
    training: bool  # its mode before the call, to be restored
    tokens: torch.Tensor = field(repr=False)  # (N,) the stream
    context_length: int
    batch_size: int
    value: float  # the reference's loss

    def __repr__(self) -> str:
        return f"{self.value:.6f}"


def loss_cases() -> list[Case]:
    """Build the cases of exercise 6.2, from one window to several uneven batches.

    Returns:
        Seven cases of evaluate_loss(model, tokens, context_length, batch_size), each
        with a fresh recording model.

    Introduced in chapter 6.
    """
    # name, N, context_length, batch_size, training, hint
    specs = [
        ("one window", CONTEXT + 1, CONTEXT, 64, True, _SHIFT),
        ("three windows in one batch", 3 * CONTEXT + 1, CONTEXT, 64, True, _SHIFT),
        ("a shorter last window", 2 * CONTEXT + 6, CONTEXT, 64, True, _LAST),
        ("batches of 3, 3 and 1 windows", 7 * 6 + 1, 6, 3, True, _WEIGHTS),
        ("a model that arrives in eval mode", 30, CONTEXT, 2, False, _RESTORE),
        ("windows shorter than the model's context", 23, 4, 4, True, _LAST),
        ("a longer stream", 301, CONTEXT, 5, True, _WEIGHTS),
    ]
    generator = torch.Generator().manual_seed(0)
    cases = []
    for name, n, context_length, batch_size, training, hint in specs:
        tokens = torch.randint(0, VOCAB, (n,), generator=generator)
        model = case_model(training)
        value = evaluate_loss(model, tokens, context_length, batch_size)
        model.calls.clear()  # only the learner's calls count
        answer = LossAnswer(model, training, tokens, context_length, batch_size, value)
        args = (model, tokens.clone(), context_length)
        cases.append(Case(name, args, answer, hint, {"batch_size": batch_size}))
    return cases


_SHIFT = (
    "the targets are the inputs shifted left by one: inputs = tokens[:-1], "
    "targets = tokens[1:], each cut into windows of context_length"
)
_LAST = (
    "when context_length does not divide N - 1, the last window is shorter; run it "
    "through the model on its own, so that every one of the N - 1 targets counts once"
)
_WEIGHTS = (
    "add up the loss of every prediction, F.cross_entropy(..., reduction='sum'), and "
    "divide once by N - 1 at the end; a mean of batch means gives a smaller last "
    "batch too much weight"
)
_RESTORE = (
    "give the model back in the mode it came in: was_training = model.training, "
    "then model.train(was_training) at the end"
)
_NO_GRAD = (
    "evaluation needs no gradients: decorate the function with @torch.no_grad() or "
    "wrap the loop in `with torch.no_grad():`"
)
_EVAL = (
    "call model.eval() before the loop, so that dropout is off, and give the model "
    "back its mode at the end"
)
_ELSEWHERE = "use the `model` argument, not a model from elsewhere in the notebook"


def compare_loss(expected: LossAnswer, actual: Any) -> str | None:
    """Judge how the learner computed the loss, then the number itself.

    Checks, in order: the model was called, without gradients, in eval mode; it is
    back in the mode it came in; the answer is a float equal to the reference's.

    Args:
        expected: the case's model, its mode before the call, and the right loss.
        actual: what the learner's evaluate_loss returned.

    Returns:
        A one-line description of the first problem, or None.

    Introduced in chapter 6.
    """
    wrong_way = _behaviour(expected)
    if wrong_way is not None:
        return wrong_way[0]
    if isinstance(actual, torch.Tensor):
        return "expected a Python float, got a tensor; call .item() on the sum"
    if actual is None:
        return "expected a float, got None: did you forget to `return` the loss?"
    if isinstance(actual, bool) or not isinstance(actual, numbers.Real):
        return f"expected a float, got {type(actual).__name__}"
    if math.isclose(actual, expected.value, rel_tol=LOSS_REL_TOL):
        return None
    return f"expected {expected.value:.6f}, got {actual:.6f}"


def diagnose_loss(case: Case, actual: Any) -> str | None:
    """Recognise a plausible evaluation mistake from a wrong loss.

    Args:
        case: the case that failed; its expected value is a `LossAnswer`.
        actual: what the learner's evaluate_loss returned.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 6.
    """
    answer: LossAnswer = case.expected
    wrong_way = _behaviour(answer)
    if wrong_way is not None:
        return wrong_way[1]
    if isinstance(actual, bool) or not isinstance(actual, numbers.Real):
        return None
    calls = answer.model.calls
    if calls and any(call.shape[-1:] == (answer.context_length + 1,) for call in calls):
        return (
            "your windows hold context_length + 1 inputs; cut inputs = tokens[:-1] "
            "into windows of context_length, and targets = tokens[1:] the same way"
        )
    for mistake, hint in _LOSS_MISTAKES:
        candidate = loss_variant(answer, mistake)
        if candidate is None or _loss_close(candidate, answer.value):
            continue  # this case cannot tell that mistake from the right answer
        if _loss_close(candidate, actual):
            return hint
    return None


def explain_loss_error(case: Case, err: Exception) -> str | None:
    """Recognise a plausible evaluation mistake from the exception it raised.

    Introduced in chapter 6.
    """
    text = str(err)
    if "tuple" in text:
        return "the course's GPT returns (logits, loss): write logits, _ = model(x)"
    if "exceeds context_length" in text:
        return (
            "a window is longer than the model's context: cut the inputs into windows "
            "of context_length tokens"
        )
    if "batch_size" in text or "Expected input batch" in text or "shape" in text:
        return (
            "flatten before the cross-entropy: logits (B, T, V) -> (B * T, V) and "
            "targets (B, T) -> (B * T,)"
        )
    if "view size is not compatible" in text:
        return "use .reshape instead of .view on a slice of the stream"
    return None


def loss_variant(answer: LossAnswer, mistake: str = "") -> float | None:
    """The loss an evaluate_loss with one plausible `mistake` returns on a case.

    Args:
        answer: the case's model, stream and sizes.
        mistake: "" for the right answer, or a name from `_LOSS_MISTAKES`.

    Returns:
        The loss, or None where that mistake leaves nothing to average.

    Introduced in chapter 6.
    """
    tokens, context_length = answer.tokens, answer.context_length
    if mistake == "chunks_of_t_plus_1":
        chunks = [
            tokens[i : i + context_length + 1]
            for i in range(0, tokens.numel() - 1, context_length + 1)
        ]
        windows = [(c[:-1], c[1:]) for c in chunks if c.numel() > 1]
    else:
        x, y = tokens[:-1], (tokens[:-1] if mistake == "no_shift" else tokens[1:])
        windows = [
            (x[i : i + context_length], y[i : i + context_length])
            for i in range(0, x.numel(), context_length)
        ]
        if mistake == "drop_last":
            windows = [w for w in windows if w[0].numel() == context_length]
    if not windows:
        return None
    sums = _window_sums(answer.model, windows)  # [(summed loss, count)]
    if mistake == "window_means":
        return sum(s / n for s, n in sums) / len(sums)
    if mistake == "batch_means":
        return _mean_of_batch_means(sums, context_length, answer.batch_size)
    total, count = sum(s for s, _ in sums), sum(n for _, n in sums)
    return total / (count + 1 if mistake == "divide_by_n" else count)


def _window_sums(
    model: GPT, windows: list[tuple[torch.Tensor, torch.Tensor]]
) -> list[tuple[float, int]]:
    """(summed cross-entropy, number of targets) of each window, in eval mode."""
    modes = [(m, m.training) for m in model.modules()]
    calls = list(model.calls) if isinstance(model, RecordingGPT) else None
    model.eval()
    sums = []
    with torch.no_grad():
        for x, y in windows:
            logits, _ = model(x[None])  # (1, T) -> (1, T, V)
            loss = F.cross_entropy(logits[0].double(), y, reduction="sum")
            sums.append((loss.item(), y.numel()))
    for module, training in modes:
        module.training = training
    if calls is not None:
        model.calls[:] = calls  # the checker's own calls are not the learner's
    return sums


def _mean_of_batch_means(
    sums: list[tuple[float, int]], context_length: int, batch_size: int
) -> float:
    """The mean over batches of each batch's mean loss; a short last window goes in a
    batch of its own, as a learner who runs it separately would do."""
    full = [s for s in sums if s[1] == context_length]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[s] for s in sums if s[1] != context_length]
    means = [sum(s for s, _ in b) / sum(n for _, n in b) for b in batches]
    return sum(means) / len(means)


_LOSS_MISTAKES = [
    ("no_shift", f"your targets equal your inputs; {_SHIFT}"),
    (
        "drop_last",
        "you leave out the last, shorter window, so some targets are never scored; "
        f"{_LAST}",
    ),
    ("batch_means", f"you average per-batch means; {_WEIGHTS}"),
    ("window_means", f"you average per-window means; {_WEIGHTS}"),
    (
        "divide_by_n",
        "you divide by N, but a stream of N tokens holds N - 1 predictions (the "
        "first token has no target)",
    ),
    (
        "chunks_of_t_plus_1",
        "you cut the stream into chunks of context_length + 1 tokens, so the target "
        "at each chunk boundary is never scored; cut inputs = tokens[:-1] and "
        "targets = tokens[1:] into windows of context_length instead",
    ),
]


def _behaviour(answer: LossAnswer) -> tuple[str, str] | None:
    """(problem, hint) when the model was used the wrong way, else None."""
    model, calls = answer.model, answer.model.calls
    if not calls:
        return "the model passed in was never called", _ELSEWHERE
    if any(call.grad_enabled for call in calls):
        return "the model ran with gradient tracking on", _NO_GRAD
    if any(call.dropout_on for call in calls):
        problem = "the model ran in training mode: dropout zeroed random activations"
        return problem, _EVAL
    if {m.training for m in model.modules()} != {answer.training}:
        came, left = _mode_name(answer.training), _mode_name(model.training)
        return f"the model came in {came} mode and was left in {left} mode", _RESTORE
    return None


def _loss_close(a: float, b: Any) -> bool:
    return math.isclose(a, float(b), rel_tol=LOSS_REL_TOL)


def _mode_name(training: bool) -> str:
    return "train" if training else "eval"


LR_SCHEDULE = register(
    Exercise(
        id="6.1",
        title="The learning-rate schedule",
        cases=lr_cases,
        compare=compare_lr,
        diagnose=diagnose_lr,
        explain_error=explain_lr_error,
    )
)
EVALUATE_LOSS = register(
    Exercise(
        id="6.2",
        title="The loss over a whole split",
        cases=loss_cases,
        compare=compare_loss,
        diagnose=diagnose_loss,
        explain_error=explain_loss_error,
    )
)
