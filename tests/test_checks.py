"""Tests of the exercise checker: it accepts the references, explains wrong answers."""

from collections.abc import Callable

import pytest
import torch
from conftest import failure_message

from utils.checks import EXERCISES, Exercise, check_exercise, register
from utils.checks.core import Case, compare_ints, compare_tensors, format_value
from utils.reference import ArchConfig, count_parameters, softmax

# --- plausible wrong answers, written independently of the reference


def _softmax_no_max(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    e = torch.exp(x)  # overflows for large logits
    return e / e.sum(dim=dim, keepdim=True)


def _softmax_ignores_dim(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _softmax_exp_only(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.exp(x)


def _softmax_by_max(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.amax(dim=dim, keepdim=True)


def _softmax_no_keepdim(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim)


def _softmax_global_max(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    e = torch.exp(x - x.max())  # one max for the whole tensor, not one per row
    return e / e.sum(dim=dim, keepdim=True)


def _count_with(config: ArchConfig, mistake: str = "") -> int:
    """An independent parameter count that can make one named mistake."""
    d, f, v, n_layers = config.d_model, config.d_ff, config.vocab_size, config.n_layers
    kv_heads = config.n_heads if mistake == "kv_heads" else config.n_kv_heads
    kv = kv_heads * config.head_dim
    has_bias = config.bias and mistake != "biases"
    attention = 2 * d * d + 2 * d * kv + has_bias * (2 * d + 2 * kv)
    n_in = 2 if config.mlp == "swiglu" and mistake != "two_mlp_matrices" else 1
    mlp = (n_in + 1) * d * f + has_bias * (n_in * f + d)
    norm = (2 if config.norm == "layernorm" else 1) * d * (mistake != "norms")
    norms_per_block = 1 if config.parallel_block and mistake != "two_norms" else 2
    total = n_layers * (attention + mlp + norms_per_block * norm) + norm + v * d
    if config.positions == "learned" and mistake != "positions":
        total += config.max_seq_len * d
    if not config.tied_embeddings or mistake == "untied":
        total += v * d
    return total + config.lm_head_bias * v


def _stub(*args: object, **kwargs: object) -> None:
    raise NotImplementedError("Exercise")


# --- the checker's outcomes


@pytest.mark.parametrize(
    ("exercise_id", "fn", "line"),
    [
        ("0.1", softmax, "Exercise 0.1: passed 6/6 checks"),
        ("1.1", count_parameters, "Exercise 1.1: passed 6/6 checks"),
        ("1.1", _count_with, "Exercise 1.1: passed 6/6 checks"),
    ],
)
def test_check_exercise_reference_passes(
    capsys: pytest.CaptureFixture[str], exercise_id: str, fn: Callable, line: str
) -> None:
    assert check_exercise(exercise_id, fn) is None
    assert capsys.readouterr().out == line + "\n"


@pytest.mark.parametrize("exercise_id", ["0.1", "1.1"])
def test_check_exercise_stub_not_attempted(
    capsys: pytest.CaptureFixture[str], exercise_id: str
) -> None:
    assert check_exercise(exercise_id, _stub) is None
    assert capsys.readouterr().out == f"Exercise {exercise_id}: not attempted yet\n"


@pytest.mark.parametrize(
    ("wrong", "case", "keyword"),
    [
        (_softmax_no_max, "check 4/6 (large logits)", "Subtract the max"),
        (_softmax_ignores_dim, "check 3/6 (non-default dim)", "softmax along dim=1"),
        (_softmax_exp_only, "check 1/6 (small vector)", "without normalising"),
        (_softmax_by_max, "check 1/6 (small vector)", "not by the max"),
        (_softmax_no_keepdim, "check 2/6 (batch of rows)", "keepdim=True"),
        (
            _softmax_global_max,
            "check 5/6 (rows on different scales)",
            "one max for the whole tensor",
        ),
    ],
)
def test_softmax_check_rejects_wrong_answer(
    wrong: Callable, case: str, keyword: str
) -> None:
    with pytest.raises(AssertionError) as info:
        check_exercise("0.1", wrong)
    message = str(info.value)
    assert f"Exercise 0.1 failed {case}" in message
    assert keyword in message


def test_softmax_check_shows_expected_and_actual_values() -> None:
    with pytest.raises(AssertionError) as info:
        check_exercise("0.1", _softmax_by_max)
    message = str(info.value)
    assert "expected: tensor([0.0900, 0.2447, 0.6652])" in message
    assert "got:      tensor([0.1353, 0.3679, 1.0000])" in message


@pytest.mark.parametrize(
    ("mistake", "case", "keyword"),
    [
        ("untied", "check 1/6 (GPT-2 small)", "ties its output head"),
        ("positions", "check 1/6 (GPT-2 small)", "position embedding"),
        ("biases", "check 1/6 (GPT-2 small)", "biases"),
        ("norms", "check 1/6 (GPT-2 small)", "all the norms"),
        ("kv_heads", "check 2/6 (SmolLM2-135M)", "n_kv_heads"),
        ("two_mlp_matrices", "check 2/6 (SmolLM2-135M)", "three matrices"),
        ("two_norms", "check 4/6 (Phi-2)", "one norm feeds both"),
    ],
)
def test_count_check_rejects_wrong_answer(
    mistake: str, case: str, keyword: str
) -> None:
    with pytest.raises(AssertionError) as info:
        check_exercise("1.1", lambda config: _count_with(config, mistake))
    message = str(info.value)
    assert f"Exercise 1.1 failed {case}" in message
    assert keyword in message
    assert "the difference, " in message


def test_count_check_rejects_float_and_shows_split() -> None:
    with pytest.raises(AssertionError) as info:
        check_exercise("1.1", lambda config: float(count_parameters(config)))
    message = str(info.value)
    assert "expected an int, got a float" in message
    assert "token_embedding 38,597,376" in message


def test_check_exercise_wraps_learner_exception() -> None:
    def broken(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        raise ValueError("boom")

    with pytest.raises(AssertionError) as info:
        check_exercise("0.1", broken)
    assert "check 1/6 (small vector)" in str(info.value)
    assert "ValueError: boom" in str(info.value)
    assert 'raise ValueError("boom")' in str(info.value)  # the line that raised
    assert isinstance(info.value.learner_error, ValueError)
    assert info.value.__cause__ is None  # the report, not torch's traceback


def test_check_exercise_late_not_implemented_is_failure() -> None:
    def partial(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if dim != -1:
            raise NotImplementedError("only dim=-1")
        return softmax(x, dim)

    with pytest.raises(AssertionError, match=r"check 3/6 \(non-default dim\)"):
        check_exercise("0.1", partial)


def test_check_exercise_unknown_id_lists_known_ids() -> None:
    with pytest.raises(ValueError, match="known ids: 0.1, 1.1"):
        check_exercise("9.9", softmax)


def test_check_exercise_rejects_called_function() -> None:
    with pytest.raises(TypeError, match="the function itself"):
        check_exercise("0.1", softmax(torch.zeros(3)))


def test_register_refuses_taken_id() -> None:
    with pytest.raises(ValueError, match="already taken"):
        register(Exercise(id="0.1", title="Another", cases=lambda: []))
    assert EXERCISES["0.1"].title == "Softmax"


def test_exercises_registry_lists_ids() -> None:
    assert {"0.1", "1.1"} <= set(EXERCISES)
    for exercise_id, exercise in EXERCISES.items():
        assert exercise.id == exercise_id
        assert len(exercise.cases()) >= 4


# --- comparison and formatting helpers


@pytest.mark.parametrize(
    ("actual", "problem"),
    [
        (torch.tensor([0.5, float("nan")]), "NaN or inf at 1 of 2"),
        (torch.tensor([0.5, 0.5, 0.0]), "expected shape (2,), got shape (3,)"),
        (torch.tensor([0.5, 0.6]), "first at index (1,): expected 0.5000, got 0.6000"),
        (None, "did you forget to `return`"),
    ],
)
def test_compare_tensors_describes_difference(actual: object, problem: str) -> None:
    expected = torch.tensor([0.5, 0.5])
    assert problem in compare_tensors(expected, actual)
    assert compare_tensors(expected, expected + 1e-7) is None


@pytest.mark.parametrize(
    ("actual", "problem"),
    [
        (12, None),
        (15, "off by +3"),
        (12.0, "got a float"),
        (torch.tensor(12), ".item()"),
    ],
)
def test_compare_ints_is_exact(actual: object, problem: str | None) -> None:
    result = compare_ints(12, actual)
    if problem is None:
        assert result is None
    else:
        assert problem in result


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (torch.tensor([1000.0, 1001.0]), "tensor([1000., 1001.])"),
        (torch.tensor([[0.1, 0.9]]), "tensor([[0.1000, 0.9000]])"),
        (
            torch.zeros(4, 6),
            "tensor of shape (4, 6), starting [0., 0., 0., 0., 0., 0., ...]",
        ),
        (124439808, "124,439,808"),
    ],
)
def test_format_value_is_short(value: object, text: str) -> None:
    assert format_value(value) == text


# --- the softmax reference


@pytest.mark.parametrize(
    ("shape", "dim"),
    [((5,), 0), ((3, 4), -1), ((3, 4), 0), ((2, 3, 4), 1), ((2, 3, 4), -1)],
)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_softmax_reference_matches_torch(
    shape: tuple[int, ...], dim: int, scale: float
) -> None:
    torch.manual_seed(0)
    x = scale * torch.randn(shape)
    torch.testing.assert_close(softmax(x, dim=dim), torch.softmax(x, dim=dim))


# --- reports: types, containers, inputs edited in place


def test_compare_tensors_float_advice_is_about_tensors() -> None:
    problem = compare_tensors(torch.tensor([0.5]), 0.5)
    assert "got a Python float" in problem and "return the tensor itself" in problem
    assert "//" not in problem
    assert "//" in compare_ints(12, 12.0)  # an int exercise keeps its advice


def test_format_value_summarises_dicts_and_long_lists() -> None:
    value = {"k": torch.zeros(2, 2, 8, 4), "n": 3, "ids": list(range(500))}
    text = format_value(value)
    assert text == (
        "dict {'k': tensor of shape (2, 2, 8, 4), 'n': 3, 'ids': list of 500 items}"
    )
    assert format_value(list(range(1000, 1020))).endswith("1011, ... 8 more]")
    assert len(format_value(object.__new__(_LongRepr))) == 600


class _LongRepr:
    def __repr__(self) -> str:
        return "x" * 5000


def _toy_exercise(keep_inputs: bool) -> Exercise:
    """Doubling a tensor, with two cases, not registered (see the fixture below)."""

    def cases() -> list[Case]:
        return [
            Case("zeros", (torch.zeros(3),), torch.zeros(3), "double it"),
            Case("ones", (torch.ones(3),), 2 * torch.ones(3), "double it"),
        ]

    return Exercise("99.1", "Double", cases, keep_inputs=keep_inputs)


@pytest.fixture()
def toy(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    def install(keep_inputs: bool) -> None:
        monkeypatch.setitem(EXERCISES, "99.1", _toy_exercise(keep_inputs))

    return install


def _double_in_place(values: torch.Tensor) -> torch.Tensor:
    return values.mul_(2).add_(1)  # edits the caller's tensor, and is wrong


def test_call_line_shows_inputs_before_the_call(toy) -> None:
    toy(False)
    message = failure_message("99.1", _double_in_place)
    assert "call: _double_in_place(tensor([0., 0., 0.]))" in message
    assert "got: tensor([1., 1., 1.])" in message


def test_keep_inputs_reports_an_edited_argument(toy) -> None:
    toy(True)
    message = failure_message("99.1", _double_in_place)
    assert "changed its input values in place" in message
    assert (
        "3 of 3 values changed; first at index (0,): was 0.0000, now 1.0000" in message
    )
    assert "not values /= s" in message


def test_keep_inputs_accepts_a_fresh_result(
    toy, capsys: pytest.CaptureFixture[str]
) -> None:
    toy(True)
    check_exercise("99.1", lambda values: values * 2)
    assert capsys.readouterr().out == "Exercise 99.1: passed 2/2 checks\n"


def _softmax_in_place(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    x -= x.amax(dim=dim, keepdim=True)  # edits the caller's tensor
    x.exp_()
    return x / x.sum(dim=dim, keepdim=True)


def _top_p_in_place(logits: torch.Tensor, p: float) -> torch.Tensor:
    from utils.reference.sampling import filter_top_p

    kept = filter_top_p(logits, p)
    return logits.masked_fill_(kept == float("-inf"), float("-inf"))


@pytest.mark.parametrize(
    ("exercise_id", "answer"),
    [("0.1", _softmax_in_place), ("5.2", _top_p_in_place)],
)
def test_exercises_reject_answers_that_edit_their_inputs(
    exercise_id: str, answer: Callable
) -> None:
    import utils.checks.ch05  # noqa: F401  (registers 5.2)

    message = failure_message(exercise_id, answer)
    assert "in place" in message
