"""Tests of the checker of chapter 07: the induction score (7.1).

The checker accepts the reference and a learner-style right answer, reports a stub as
not attempted, and rejects plausible wrong answers with a hint that names the
mistake. The wrong answers are written independently of the reference.
"""

from collections.abc import Callable

import pytest
import torch
from conftest import failure_message

import utils.checks.ch07  # noqa: F401  (registers 7.1)
from utils.checks import EXERCISES, check_exercise
from utils.checks.ch07 import induction_cases, induction_variant
from utils.reference.interp import induction_score


def _score(mistake: str = "") -> Callable:
    """A learner's induction_score(weights, period), a loop that makes `mistake`."""

    def induction_score(weights, period):
        seq_len = weights.shape[-1]
        start = period if mistake == "from_start" else seq_len - period
        queries = range(period - 1, seq_len) if mistake == "all_queries" else None
        queries = queries or range(start, start + period)
        back = period if mistake == "same_token" else period - 1
        picked = [
            weights[..., t - back, t]
            if mistake == "swapped"
            else weights[..., t, t - back]
            for t in queries
        ]
        total = torch.stack(picked, dim=-1).sum(dim=-1)
        return total if mistake == "sum" else total / len(picked)

    return induction_score


def _stub(weights, period):
    raise NotImplementedError("Exercise 7.1")


def test_chapter_07_exercise_is_registered() -> None:
    assert EXERCISES["7.1"].title == "The induction score"


@pytest.mark.parametrize("answer", [induction_score, _score()])
def test_check_ch07_right_answers_pass(
    capsys: pytest.CaptureFixture[str], answer: Callable
) -> None:
    assert check_exercise("7.1", answer) is None
    assert capsys.readouterr().out == "Exercise 7.1: passed 6/6 checks\n"


def test_check_ch07_stub_not_attempted(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_exercise("7.1", _stub) is None
    assert capsys.readouterr().out == "Exercise 7.1: not attempted yet\n"


@pytest.mark.parametrize(
    ("mistake", "keyword"),
    [
        ("same_token", "key t - period + 1"),
        ("all_queries", "every query on the diagonal"),
        ("from_start", "END of the sequence"),
        ("sum", "you add the weights up"),
        ("swapped", "queries are on the second-to-last axis"),
    ],
)
def test_induction_check_rejects_wrong_answer(mistake: str, keyword: str) -> None:
    message = failure_message("7.1", _score(mistake))
    assert "Exercise 7.1 failed" in message
    assert keyword in message


def test_induction_check_explains_a_missing_reduction() -> None:
    def no_mean(weights, period):
        return weights.diagonal(offset=1 - period, dim1=-2, dim2=-1)[..., -period:]

    assert "one score per map" in failure_message("7.1", no_mean)


@pytest.mark.parametrize(
    "mistake", ["same_token", "all_queries", "from_start", "sum", "swapped"]
)
def test_induction_variants_match_the_loop_answers(mistake: str) -> None:
    for case in induction_cases():
        weights, period = case.args
        variant = induction_variant(weights, period, mistake)
        if variant is not None:
            torch.testing.assert_close(variant, _score(mistake)(weights, period))


def test_induction_cases_leave_the_inputs_alone() -> None:
    first, second = induction_cases(), induction_cases()
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a.args[0], b.args[0])
        torch.testing.assert_close(a.expected, b.expected)
