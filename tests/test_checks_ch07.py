"""Tests of the checker of chapter 07: the induction score (7.1).

The checker accepts the reference and a learner-style right answer, reports a stub as
not attempted, and rejects plausible wrong answers with a hint that names the
mistake. The wrong answers are written independently of the reference.
"""

import dataclasses
from collections.abc import Callable

import pytest
import torch
from conftest import failure_message

import utils.checks.ch07  # noqa: F401  (registers 7.1)
from utils.checks import EXERCISES, check_exercise
from utils.checks.ch07 import diagnose_induction, induction_cases, induction_variant
from utils.reference.interp import induction_score


def _score(mistake: str = "") -> Callable:
    """A learner's induction_score(weights, period), a loop that makes `mistake`."""

    def induction_score(weights, period):
        seq_len = weights.shape[-1]
        first_query = {
            "all_queries": period - 1,
            "from_start": period,
            "skip_first": seq_len - period + 1,
        }.get(mistake, seq_len - period)
        last_query = 2 * period - 1 if mistake == "from_start" else seq_len - 1
        queries = range(first_query, last_query + 1)
        back = {"same_token": period, "too_far": period - 2}.get(mistake, period - 1)
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
        ("too_far", "key t - period + 2, one past"),
        ("all_queries", "every query on the diagonal"),
        ("skip_first", "leave out the first query of the second copy"),
        ("from_start", "END of the sequence"),
        ("sum", "you add the weights up"),
        ("swapped", "queries are on the second-to-last axis"),
    ],
)
def test_induction_check_rejects_wrong_answer(mistake: str, keyword: str) -> None:
    message = failure_message("7.1", _score(mistake))
    assert "Exercise 7.1 failed" in message
    assert keyword in message


def test_induction_check_names_only_the_mistake_it_sees() -> None:
    # "too far" and "swapped" both score 0 on a head that only attends to the
    # previous copy; the first case must tell them apart
    message = failure_message("7.1", _score("too_far"))
    assert "check 1/6" in message and "queries are on the second" not in message
    swapped = failure_message("7.1", _score("swapped"))
    assert "check 1/6" in swapped and "one past" not in swapped


def test_induction_first_case_tells_every_mistake_apart() -> None:
    case = induction_cases()[0]
    weights, period = case.args
    scores = [case.expected.item()]
    # from_start needs a prefix and skip_first uneven queries: later cases catch them
    for mistake in set(MISTAKES) - {"from_start", "skip_first"}:
        scores.append(induction_variant(weights, period, mistake).item())
    assert len({round(score, 4) for score in scores}) == len(scores)


def test_induction_diagnosis_is_silent_when_two_mistakes_fit() -> None:
    case = induction_cases()[-1]  # period 1: "sum" and "swapped" give the same
    wrong = case.expected + 1.0
    weights, period = case.args
    ambiguous = dataclasses.replace(case, expected=wrong)
    assert (
        diagnose_induction(ambiguous, induction_variant(weights, period, "sum")) is None
    )


def test_induction_check_explains_a_missing_reduction() -> None:
    def no_mean(weights, period):
        return weights.diagonal(offset=1 - period, dim1=-2, dim2=-1)[..., -period:]

    def keepdim(weights, period):
        return no_mean(weights, period).mean(dim=-1, keepdim=True)

    assert "reduce the last axis" in failure_message("7.1", no_mean)
    assert "keepdim=True" in failure_message("7.1", keepdim)


MISTAKES = [
    "same_token", "too_far", "all_queries", "skip_first", "from_start", "sum", "swapped"
]  # fmt: skip


@pytest.mark.parametrize("mistake", MISTAKES)
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
