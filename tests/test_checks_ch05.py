"""Tests of the checkers of chapter 05: the generation loop (5.1) and top-p (5.2).

Each checker accepts the reference and a learner-style right answer, reports a stub
as not attempted, and rejects plausible wrong answers with a hint that names the
mistake. The wrong answers are written independently of the reference.
"""

from collections.abc import Callable

import pytest
import torch
from conftest import failure_message

import utils.checks.ch05  # noqa: F401  (registers 5.1 and 5.2)
from utils.checks import EXERCISES, check_exercise
from utils.checks.ch05 import (
    MODEL_SEED,
    SeededGenerator,
    case_model,
    generation_cases,
    generation_variant,
    top_p_cases,
    top_p_variant,
)
from utils.reference.sampling import filter_top_k, filter_top_p, generate

# --- learner-style answers for 5.1, each able to make one named mistake


def _generate(mistake: str = "") -> Callable:
    """A learner's generate(...) that makes `mistake`."""

    @torch.no_grad()
    def generate(
        model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None
    ):
        for _ in range(max_new_tokens):
            window = idx if mistake == "no_crop" else idx[:, -model.context_length :]
            logits, _ = model(window)
            logits = logits[:, -1, :]
            greedy = temperature == 0 and mistake != "sample_at_0"
            if greedy or mistake == "always_argmax":
                next_id = torch.argmax(logits, dim=-1, keepdim=True)
            else:
                next_id = _draw(logits, temperature, top_k, generator, mistake)
            idx = torch.cat((idx, next_id), dim=0 if mistake == "axis_0" else 1)
        return idx[:, -max_new_tokens:] if mistake == "new_only" else idx

    return generate


def _draw(logits, temperature, top_k, generator, mistake):
    """One sampled id per row, (B, 1), as the learner's loop draws it."""
    if mistake != "no_temperature":
        logits = logits / temperature  # inf or nan at temperature 0
    if top_k is not None:
        values, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < values[:, [-1]], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if mistake == "no_generator":
        return torch.multinomial(probs, 1)
    return torch.multinomial(probs, 1, generator=generator)


def _stub_generate(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None
):
    raise NotImplementedError("Exercise 5.1")


def _reference_generate(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None
):
    return generate(model, idx, max_new_tokens, temperature, top_k, None, generator)


# --- learner-style answers for 5.2


def _top_p(mistake: str = "") -> Callable:
    """A learner's filter_top_p(logits, p) that makes `mistake`."""

    def filter_top_p(logits, p):
        if mistake == "unsorted":
            sorted_logits, order = logits, None
        else:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=0 if mistake == "dim_0" else -1)
        running = probs.cumsum(dim=-1)
        if mistake == "drop_crossing":
            remove = running > p
        elif mistake == "strictly_below":
            remove = ~(running < p)
        else:
            remove = running - probs >= p
        if mistake == "sorted_order":
            return sorted_logits.masked_fill(remove, float("-inf"))
        if order is not None:
            remove = remove.scatter(-1, order, remove)
        fill = 0.0 if mistake == "zero" else float("-inf")
        out = logits.masked_fill(remove, fill)
        return out.softmax(dim=-1) if mistake == "probs" else out

    return filter_top_p


def _stub_top_p(logits, p):
    raise NotImplementedError("Exercise 5.2")


# --- the checkers' outcomes


def test_chapter_05_exercises_are_registered() -> None:
    titles = {key: EXERCISES[key].title for key in ("5.1", "5.2")}
    assert titles == {"5.1": "The generation loop", "5.2": "Top-p filtering"}


@pytest.mark.parametrize(
    ("exercise_id", "answer", "line"),
    [
        ("5.1", _reference_generate, "Exercise 5.1: passed 7/7 checks"),
        ("5.1", _generate(), "Exercise 5.1: passed 7/7 checks"),
        ("5.2", filter_top_p, "Exercise 5.2: passed 6/6 checks"),
        ("5.2", _top_p(), "Exercise 5.2: passed 6/6 checks"),
    ],
)
def test_check_ch05_right_answers_pass(
    capsys: pytest.CaptureFixture[str], exercise_id: str, answer: Callable, line: str
) -> None:
    assert check_exercise(exercise_id, answer) is None
    assert capsys.readouterr().out == line + "\n"


@pytest.mark.parametrize(
    ("exercise_id", "stub"), [("5.1", _stub_generate), ("5.2", _stub_top_p)]
)
def test_check_ch05_stub_not_attempted(
    capsys: pytest.CaptureFixture[str], exercise_id: str, stub: Callable
) -> None:
    assert check_exercise(exercise_id, stub) is None
    assert capsys.readouterr().out == f"Exercise {exercise_id}: not attempted yet\n"


@pytest.mark.parametrize(
    ("mistake", "case", "keyword"),
    [
        ("sample_at_0", "check 1/7 (greedy)", "temperature 0 means greedy"),
        ("always_argmax", "check 2/7 (sampling at temperature 1)", "argmax is for"),
        ("no_generator", "check 2/7 (sampling at temperature 1)", "generator=gen"),
        (
            "no_temperature",
            "check 3/7 (a batch of 2, temperature 2)",
            "do not follow the temp",
        ),
        ("axis_0", "check 1/7 (greedy)", "along the time axis"),
        ("new_only", "check 1/7 (greedy)", "not the new ids alone"),
        ("no_crop", "check 5/7 (prompt longer than the context)", "last context_len"),
    ],
)
def test_generation_check_rejects_wrong_answer(
    mistake: str, case: str, keyword: str
) -> None:
    message = failure_message("5.1", _generate(mistake))
    assert f"Exercise 5.1 failed {case}" in message
    assert keyword in message


def test_generation_check_explains_a_tuple_output() -> None:
    def no_unpacking(model, idx, max_new_tokens, temperature=1.0, top_k=None, **_):
        logits = model(idx)[:, -1, :]  # the model returns (logits, loss)
        return torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)

    message = failure_message("5.1", no_unpacking)
    assert "raised TypeError" in message and "logits, _ = model(idx)" in message


@pytest.mark.parametrize(
    ("mistake", "keyword"),
    [
        ("crop_first", "keep the last ones"),
        ("first_position", "logits[:, -1, :]"),
        ("multiply", "divide them by it"),
        ("no_top_k", "ignore top_k=3"),
        ("softmax_dim_0", "over the batch axis"),
    ],
)
def test_generation_diagnosis_names_variant(mistake: str, keyword: str) -> None:
    """Mistakes that are awkward to write as a loop: check the diagnosis directly."""
    exercise = EXERCISES["5.1"]
    for case in generation_cases():
        candidate = generation_variant(case.expected, mistake)
        if candidate is not None and not torch.equal(candidate, case.expected.output):
            assert keyword in exercise.diagnose(case, candidate)
            return
    pytest.fail(f"no case tells {mistake!r} from the right answer")


def test_generation_variants_match_the_reference() -> None:
    for case in generation_cases():
        assert torch.equal(generation_variant(case.expected), case.expected.output)


def test_generation_cases_leave_global_random_state_alone() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    generation_cases()
    case_model(MODEL_SEED)
    assert torch.equal(torch.get_rng_state(), state)


def test_seeded_generator_repeats_and_shows_its_seed() -> None:
    generator = SeededGenerator(4)
    assert repr(generator) == "torch.Generator().manual_seed(4)"
    draws = torch.rand(3, generator=generator)
    assert torch.equal(draws, torch.rand(3, generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize(
    ("mistake", "case", "keyword"),
    [
        ("drop_crossing", "check 1/6 (by hand, p = 0.75)", "BEFORE it is below p"),
        ("strictly_below", "check 1/6 (by hand, p = 0.75)", "up to p or past it"),
        ("unsorted", "check 1/6 (by hand, p = 0.75)", "descending=True"),
        ("dim_0", "check 3/6 (a batch of rows)", "softmax over dim=-1"),
        ("sorted_order", "check 1/6 (by hand, p = 0.75)", "vocabulary order"),
        ("zero", "check 1/6 (by hand, p = 0.75)", "-inf, not 0"),
        ("probs", "check 1/6 (by hand, p = 0.75)", "not probabilities"),
    ],
)
def test_top_p_check_rejects_wrong_answer(
    mistake: str, case: str, keyword: str
) -> None:
    message = failure_message("5.2", _top_p(mistake))
    assert f"Exercise 5.2 failed {case}" in message
    assert keyword in message


def test_top_p_check_says_a_row_lost_every_token() -> None:
    def empty_rows(logits, p):
        out = _top_p("strictly_below")(logits, p)
        return out if p != 0.75 else filter_top_p(logits, p)  # pass check 1 only

    message = failure_message("5.2", empty_rows)
    assert "check 2/6 (the top token alone exceeds p)" in message
    assert "a row has no token left" in message


def test_top_p_variants_match_the_reference() -> None:
    for case in top_p_cases():
        torch.testing.assert_close(top_p_variant(*case.args), case.expected)


def test_top_k_filter_in_learner_style_matches_reference() -> None:
    """The learner's masked_fill top-k in `_draw` is the reference's filter_top_k."""
    logits = torch.randn(3, 10)
    values, _ = torch.topk(logits, 4)
    ours = logits.masked_fill(logits < values[:, [-1]], float("-inf"))
    torch.testing.assert_close(ours, filter_top_k(logits, 4))


def test_generation_check_rejects_float_ids() -> None:
    def as_floats(model, idx, max_new_tokens, temperature=1.0, top_k=None, **_):
        return _generate()(model, idx, max_new_tokens, temperature, top_k).float()

    message = failure_message("5.1", as_floats)
    assert "check 1/7 (greedy)" in message and "got dtype torch.float32" in message
    assert "keep the ids integers" in message
