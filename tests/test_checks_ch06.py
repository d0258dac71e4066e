"""Tests of the checkers of chapter 06: the learning-rate schedule (6.1) and the loss
over a whole split (6.2).

Each checker accepts the reference and a learner-style right answer, reports a stub
as not attempted, and rejects plausible wrong answers with a hint that names the
mistake. The wrong answers are written independently of the reference.
"""

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from conftest import failure_message

import utils.checks.ch06  # noqa: F401  (registers 6.1 and 6.2)
from utils.checks import EXERCISES, check_exercise
from utils.checks.ch06 import (
    _LOSS_MISTAKES,
    _LR_MISTAKES,
    case_model,
    loss_cases,
    loss_variant,
    lr_cases,
    lr_variant,
)
from utils.training import evaluate_loss, lr_at

# --- learner-style answers for 6.1


def _lr(mistake: str = "") -> Callable:
    """A learner's lr_at(step, *, max_lr, min_lr, warmup_steps, total_steps)."""

    def lr_at(step, *, max_lr, min_lr, warmup_steps, total_steps):
        if mistake != "warmup_first" and step >= total_steps:
            return min_lr
        if step <= warmup_steps:
            if mistake == "from_zero":
                return max_lr * step / warmup_steps
            return max_lr * (step + 1) / (warmup_steps + 1)
        if step >= total_steps:
            return min_lr
        ratio = (step - warmup_steps) / (total_steps - warmup_steps)
        if mistake == "linear":
            return max_lr + ratio * (min_lr - max_lr)
        if mistake == "to_zero":
            min_lr = 0.0
        if mistake == "tensor":
            return min_lr + (max_lr - min_lr) * (1 + torch.cos(torch.tensor(ratio))) / 2
        return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * ratio)) / 2

    return lr_at


def _stub_lr(step, *, max_lr, min_lr, warmup_steps, total_steps):
    raise NotImplementedError("Exercise 6.1")


# --- learner-style answers for 6.2


def _loss(mistake: str = "") -> Callable:
    """A learner's evaluate_loss(model, tokens, context_length, batch_size=64)."""

    def evaluate_loss(model, tokens, context_length, batch_size=64):
        was_training = model.training
        if mistake != "no_eval":
            model.eval()
        grad = torch.enable_grad() if mistake == "grad" else torch.no_grad()
        x = tokens[:-1]
        y = tokens[:-1] if mistake == "no_shift" else tokens[1:]
        starts = list(range(0, x.numel(), context_length))
        total, count, means = 0.0, 0, []
        with grad:
            for i in range(0, len(starts), batch_size):
                group = starts[i : i + batch_size]
                xs = [x[s : s + context_length] for s in group]
                ys = [y[s : s + context_length] for s in group]
                if xs[-1].numel() < context_length:  # the short last window
                    if mistake != "drop_last":
                        means.append(_window_loss(model, xs[-1:], ys[-1:]))
                        total += means[-1] * ys[-1].numel()
                        count += ys[-1].numel()
                    xs, ys = xs[:-1], ys[:-1]
                if xs:
                    means.append(_window_loss(model, xs, ys))
                    total += means[-1] * sum(t.numel() for t in ys)
                    count += sum(t.numel() for t in ys)
        if mistake == "stay_eval":
            pass
        elif mistake == "always_train":
            model.train()
        else:
            model.train(was_training)
        if mistake == "batch_means":
            return sum(means) / len(means)
        return torch.tensor(total / count) if mistake == "tensor" else total / count

    return evaluate_loss


def _window_loss(model, xs, ys) -> float:
    """The mean loss over one batch of equally long windows."""
    logits, _ = model(torch.stack(xs))  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), torch.stack(ys).flatten())
    return loss.item()


def _stub_loss(model, tokens, context_length, batch_size=64):
    raise NotImplementedError("Exercise 6.2")


# --- the checkers' outcomes


def test_chapter_06_exercises_are_registered() -> None:
    titles = {key: EXERCISES[key].title for key in ("6.1", "6.2")}
    assert titles == {
        "6.1": "The learning-rate schedule",
        "6.2": "The loss over a whole split",
    }


@pytest.mark.parametrize(
    ("exercise_id", "answer", "line"),
    [
        ("6.1", lr_at, "Exercise 6.1: passed 12/12 checks"),
        ("6.1", _lr(), "Exercise 6.1: passed 12/12 checks"),
        ("6.2", evaluate_loss, "Exercise 6.2: passed 7/7 checks"),
        ("6.2", _loss(), "Exercise 6.2: passed 7/7 checks"),
    ],
)
def test_check_ch06_right_answers_pass(
    capsys: pytest.CaptureFixture[str], exercise_id: str, answer: Callable, line: str
) -> None:
    assert check_exercise(exercise_id, answer) is None
    assert capsys.readouterr().out == line + "\n"


@pytest.mark.parametrize(
    ("exercise_id", "stub"), [("6.1", _stub_lr), ("6.2", _stub_loss)]
)
def test_check_ch06_stub_not_attempted(
    capsys: pytest.CaptureFixture[str], exercise_id: str, stub: Callable
) -> None:
    assert check_exercise(exercise_id, stub) is None
    assert capsys.readouterr().out == f"Exercise {exercise_id}: not attempted yet\n"


@pytest.mark.parametrize(
    ("mistake", "case", "keyword"),
    [
        ("from_zero", "check 1/12 (the first warm-up step)", "starts at 0"),
        ("linear", "check 4/12 (the first decay step)", "a straight line"),
        ("to_zero", "check 4/12 (the first decay step)", "decays to 0"),
        ("warmup_first", "check 12/12 (warm-up as long as the run)", "test step >="),
        ("tensor", "check 4/12 (the first decay step)", "got a tensor"),
    ],
)
def test_lr_check_rejects_wrong_answer(mistake: str, case: str, keyword: str) -> None:
    message = failure_message("6.1", _lr(mistake))
    assert f"Exercise 6.1 failed {case}" in message
    assert keyword in message


def test_lr_check_explains_an_early_max() -> None:
    def over_warmup(step, *, max_lr, min_lr, warmup_steps, total_steps):
        if step < total_steps and step <= warmup_steps:
            return max_lr * (step + 1) / warmup_steps
        return _lr()(
            step,
            max_lr=max_lr,
            min_lr=min_lr,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
        )

    message = failure_message("6.1", over_warmup)
    assert "check 1/12 (the first warm-up step)" in message
    assert "overshoots" in message


def test_lr_check_explains_a_division_by_zero() -> None:
    exercise = EXERCISES["6.1"]
    no_warmup = next(c for c in lr_cases() if c.kwargs["warmup_steps"] == 0)
    hint = exercise.explain_error(no_warmup, ZeroDivisionError("division by zero"))
    assert "warmup_steps=0" in hint and "(warmup_steps + 1)" in hint


@pytest.mark.parametrize(("mistake", "hint"), _LR_MISTAKES)
def test_lr_diagnosis_names_every_variant(mistake: str, hint: str) -> None:
    exercise = EXERCISES["6.1"]
    for case in lr_cases():
        candidate = lr_variant(*case.args, mistake=mistake, **case.kwargs)
        if candidate is not None and not math.isclose(candidate, case.expected):
            assert exercise.diagnose(case, candidate) == hint
            return
    pytest.fail(f"no case tells {mistake!r} from the right answer")


def test_lr_variants_match_the_reference() -> None:
    for case in lr_cases():
        assert math.isclose(lr_variant(*case.args, **case.kwargs), case.expected)


@pytest.mark.parametrize(
    ("mistake", "case", "keyword"),
    [
        ("no_eval", "check 1/7 (one window)", "call model.eval()"),
        ("grad", "check 1/7 (one window)", "torch.no_grad()"),
        ("stay_eval", "check 1/7 (one window)", "left in eval mode"),
        ("always_train", "check 5/7 (a model that arrives in eval", "came in eval"),
        ("no_shift", "check 1/7 (one window)", "targets equal your inputs"),
        ("drop_last", "check 3/7 (a shorter last window)", "leave out the last"),
        ("batch_means", "check 3/7 (a shorter last window)", "per-batch means"),
        ("tensor", "check 1/7 (one window)", "got a tensor"),
    ],
)
def test_loss_check_rejects_wrong_answer(mistake: str, case: str, keyword: str) -> None:
    message = failure_message("6.2", _loss(mistake))
    assert f"Exercise 6.2 failed {case}" in message
    assert keyword in message


def test_loss_check_rejects_a_model_from_elsewhere() -> None:
    other = case_model()

    def global_model(model, tokens, context_length, batch_size=64):
        return _loss()(other, tokens, context_length, batch_size)

    message = failure_message("6.2", global_model)
    assert "check 1/7 (one window)" in message and "never called" in message


def test_loss_check_explains_a_tuple_output() -> None:
    @torch.no_grad()
    def no_unpacking(model, tokens, context_length, batch_size=64):
        model.eval()
        logits = model(tokens[:-1][None])
        return F.cross_entropy(logits.flatten(0, 1), tokens[1:]).item()

    message = failure_message("6.2", no_unpacking)
    assert "raised" in message and "logits, _ = model(x)" in message


@pytest.mark.parametrize(("mistake", "hint"), _LOSS_MISTAKES)
def test_loss_diagnosis_names_every_variant(mistake: str, hint: str) -> None:
    exercise = EXERCISES["6.2"]
    for case in loss_cases():
        candidate = loss_variant(case.expected, mistake)
        if candidate is not None and not math.isclose(
            candidate, case.expected.value, rel_tol=1e-5
        ):
            evaluate_loss(*case.args, **case.kwargs)  # a call made the right way
            assert exercise.diagnose(case, candidate) == hint
            return
    pytest.fail(f"no case tells {mistake!r} from the right answer")


def test_loss_variants_match_the_reference() -> None:
    for case in loss_cases():
        assert math.isclose(
            loss_variant(case.expected), case.expected.value, rel_tol=1e-5
        )


def test_loss_cases_leave_global_random_state_alone() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    loss_cases()
    assert torch.equal(torch.get_rng_state(), state)
