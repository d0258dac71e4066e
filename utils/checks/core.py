"""The exercise checker: run a learner's function on small cases, explain a miss.

Each chapter's module (`ch00`, `ch01`, ...) describes its exercises as `Exercise`s and
adds them with `register`; notebooks call `check_exercise("0.1", softmax)`.
"""

import inspect
import linecache
import math
import numbers
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

MAX_SHOWN = 12  # tensors with more elements are shown by shape and first values
WIDTH = 88  # messages wrap at the course's line length
LABEL = 12  # width of the "expected: " column in failure messages


@dataclass(frozen=True)
class Case:
    """One input to try a learner's function on, with the answer it should give.

    Introduced in chapter 0.
    """

    name: str  # short label shown in messages, e.g. "large logits"
    args: tuple[Any, ...]  # positional arguments for the learner's function
    expected: Any  # the reference answer for these arguments
    hint: str  # shown when no more specific diagnosis applies
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments


def compare_tensors(
    expected: torch.Tensor, actual: Any, rtol: float = 1.3e-6, atol: float = 1e-5
) -> str | None:
    """Say how `actual` differs from `expected`, or return None when they match.

    Floating-point values match within `torch.testing.assert_close`'s float32
    tolerances; NaN or inf where a finite value is expected always counts as wrong.
    Other dtypes (int, bool) must match exactly.

    Args:
        expected: the reference answer, any shape.
        actual: what the learner's function returned.
        rtol: relative tolerance for floating-point values.
        atol: absolute tolerance for floating-point values.

    Returns:
        A one-line description of the first difference, or None.

    Introduced in chapter 0.
    """
    if not isinstance(actual, torch.Tensor):
        return _wrong_type(actual, "a torch.Tensor")
    if actual.shape != expected.shape:
        return (
            f"expected shape {tuple(expected.shape)}, got shape {tuple(actual.shape)}"
        )
    if not expected.is_floating_point():
        if actual.dtype != expected.dtype:
            return f"expected dtype {expected.dtype}, got dtype {actual.dtype}"
        return _first_difference(expected, actual, actual.cpu() == expected.cpu())
    got = actual.detach().cpu().double()
    want = expected.detach().cpu().double()
    broken = ~torch.isfinite(got) & torch.isfinite(want)
    if broken.any():
        n_broken = int(broken.sum())
        first = tuple(int(i) for i in broken.nonzero()[0])
        return (
            f"the output has NaN or inf at {n_broken} of {got.numel()} positions "
            f"where a finite value is expected; first at index {first}: expected "
            f"{_format_scalar(want[first].item())}, got {got[first].item()}"
        )
    close = torch.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    return _first_difference(want, got, close)


def compare_ints(expected: int, actual: Any) -> str | None:
    """Say how `actual` differs from the integer `expected`, or return None if equal.

    Args:
        expected: the right answer.
        actual: what the learner's function returned; it must be an int, exactly equal.

    Returns:
        A one-line description of the difference, or None.

    Introduced in chapter 1.
    """
    if isinstance(actual, bool) or not isinstance(actual, numbers.Integral):
        return _wrong_type(actual, "an int")
    if actual != expected:
        return f"off by {int(actual) - expected:+,}"
    return None


Comparer = Callable[[Any, Any], str | None]  # (expected, actual) -> difference or None
Diagnoser = Callable[[Case, Any], str | None]  # (case, wrong output) -> hint or None
ErrorExplainer = Callable[[Case, Exception], str | None]  # (case, error) -> hint


@dataclass(frozen=True)
class Exercise:
    """An exercise the checker knows: how to build its cases and judge the answers.

    Introduced in chapter 0.
    """

    id: str  # "chapter.number" as in the notebook heading, e.g. "3.2"
    title: str  # as in the notebook heading, e.g. "Causal mask"
    # builds fresh cases on every check, so an answer that edits its input in place
    # cannot spoil the next run
    cases: Callable[[], list[Case]]
    compare: Comparer = compare_tensors
    diagnose: Diagnoser | None = None  # recognises a plausible mistake in an output
    explain_error: ErrorExplainer | None = None  # the same for a raised exception
    # True: the learner's function must leave its tensor arguments as they were; an
    # answer that edits one in place (x /= ..., x.sub_(...)) fails with that reason.
    # Off where writing into an argument is the task (a KV cache update).
    keep_inputs: bool = False


EXERCISES: dict[str, Exercise] = {}  # every registered exercise, by id


def register(exercise: Exercise) -> Exercise:
    """Add an exercise to `EXERCISES` so that `check_exercise` can find it.

    Args:
        exercise: the exercise; reloading the module that defines it replaces it.

    Returns:
        The same exercise.

    Raises:
        ValueError: another module already registered an exercise with this id.

    Introduced in chapter 0.
    """
    known = EXERCISES.get(exercise.id)
    if known is not None and known.cases.__module__ != exercise.cases.__module__:
        raise ValueError(
            f"exercise id {exercise.id!r} is already taken by {known.title!r} "
            f"(from {known.cases.__module__}); pick the next free number"
        )
    EXERCISES[exercise.id] = exercise
    return exercise


def check_exercise(exercise_id: str, fn: Callable[..., Any]) -> None:
    """Run `fn` on the exercise's cases and report on it.

    Prints `Exercise 0.1: not attempted yet` when `fn` raises NotImplementedError on
    the first case, and `Exercise 0.1: passed n/n checks` when every case is right.

    Args:
        exercise_id: the id from the exercise's heading, such as "0.1".
        fn: the learner's function, passed itself (not called).

    Raises:
        AssertionError: a wrong answer, or an exception raised by `fn`; the message
            names the first failing case, the line of `fn` that raised (if any) and
            gives a hint. The learner's exception is kept in `learner_error` rather
            than chained, so the notebook shows the report, not torch's internals.
        ValueError: `exercise_id` is unknown; the message lists the known ids.
        TypeError: `fn` is not callable.

    Introduced in chapter 0.
    """
    exercise = _lookup(exercise_id)
    if not callable(fn):
        raise TypeError(
            f"check_exercise needs the function itself, got {type(fn).__name__}; "
            f'write check_exercise("{exercise.id}", my_function) without calling it'
        )
    cases = exercise.cases()
    for number, case in enumerate(cases, start=1):
        where = f"check {number}/{len(cases)} ({case.name})"
        call = _call_text(fn, case)  # before the call, which may edit the inputs
        before = _snapshot(case) if exercise.keep_inputs else {}
        try:
            actual = fn(*case.args, **case.kwargs)
        except Exception as err:
            if number == 1 and isinstance(err, NotImplementedError):
                print(f"Exercise {exercise.id}: not attempted yet")
                return None
            failure = AssertionError(
                _error_report(exercise, fn, case, where, err, call)
            )
            failure.learner_error = err
            raise failure from None
        edited = _edited_input(fn, case, before)
        if edited is not None:
            report = _edited_report(exercise, case, where, actual, call, edited)
            raise AssertionError(report)
        problem = exercise.compare(case.expected, actual)
        if problem is not None:
            report = _wrong_report(exercise, case, where, actual, problem, call)
            raise AssertionError(report)
    print(f"Exercise {exercise.id}: passed {len(cases)}/{len(cases)} checks")
    return None


def format_value(value: Any) -> str:
    """Show a value briefly: tensors rounded to 4 decimals, long ones by shape.

    Tuples and lists show their items (the first few of a long one), dicts their
    keys with a short summary of each value; any other repr is cut at 600 characters.

    Args:
        value: a tensor, a number, a container of them, or anything with a repr.

    Returns:
        One line of text, e.g. `tensor([0.0900, 0.2447, 0.6652])` or `124,439,808`.

    Introduced in chapter 0.
    """
    if isinstance(value, torch.Tensor):
        return _format_tensor(value.detach().cpu())
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.6g}"  # same digits for expected and got: 2.98776, 0.00055
    if isinstance(value, tuple | list):
        return _format_sequence(value)
    if isinstance(value, dict):
        return _format_dict(value)
    if isinstance(value, torch.nn.Module):
        children = ", ".join(name for name, _ in value.named_children())
        return f"{type(value).__name__}({children})"
    return _shorten(repr(value))


def _lookup(exercise_id: str) -> Exercise:
    """The registered exercise with this id, or a ValueError listing the known ids."""
    if exercise_id not in EXERCISES:
        known = ", ".join(sorted(EXERCISES, key=_id_order))
        raise ValueError(
            f"unknown exercise id {exercise_id!r}; known ids: {known}. "
            'Ids are strings such as "0.1", as in the exercise heading.'
        )
    return EXERCISES[exercise_id]


def _id_order(exercise_id: str) -> tuple[int, ...]:
    """Sort key that puts "1.2" before "1.10"."""
    return tuple(int(part) for part in exercise_id.split(".") if part.isdigit())


def _wrong_type(actual: Any, wanted: str) -> str:
    """Describe a return value of the wrong type, with the usual cause.

    `wanted` is "an int" or "a torch.Tensor"; the advice differs between the two.
    """
    if actual is None:
        return f"expected {wanted}, got None: did you forget to `return` the result?"
    if wanted == "an int":
        if isinstance(actual, float):
            return f"expected {wanted}, got a float; use // (not /) or int(...)"
        if isinstance(actual, torch.Tensor):
            return f"expected {wanted}, got a tensor; call .item() on it"
    elif isinstance(actual, numbers.Number):
        return (
            f"expected {wanted}, got a Python {type(actual).__name__}; return the "
            "tensor itself: .item(), float(...) and int(...) turn a tensor into a "
            "plain number"
        )
    elif isinstance(actual, tuple):
        return f"expected {wanted}, got tuple of {len(actual)} items; return one tensor"
    elif isinstance(actual, list):
        return (
            f"expected {wanted}, got list of {len(actual)} items; build one tensor "
            "(torch.stack or torch.tensor) and return it"
        )
    elif type(actual).__module__ == "numpy":
        return (
            f"expected {wanted}, got a numpy array; stay in torch, or torch.tensor(...)"
        )
    return f"expected {wanted}, got {type(actual).__name__}"


def _first_difference(
    expected: torch.Tensor, actual: torch.Tensor, equal: torch.Tensor
) -> str | None:
    """Describe where `equal` is first False, or None when all entries are True."""
    if bool(equal.all()):
        return None
    wrong = ~equal
    index = tuple(wrong.nonzero()[0].tolist())
    want = _format_scalar(expected[index].item())
    got = _format_scalar(actual[index].item())
    where = f"index {index}" if index else "the only entry"
    return (
        f"{int(wrong.sum())} of {wrong.numel()} values differ; first at {where}: "
        f"expected {want}, got {got}"
    )


def _format_scalar(value: float | int | bool) -> str:
    """A number as a tensor print would show it, with 4 decimals for floats."""
    if isinstance(value, bool | int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and not 1e-4 <= abs(value) < 1e6:
        return f"{value:.4e}"
    return f"{value:.4f}"


def _format_whole(value: float) -> str:
    """A whole float the way torch prints it: `1000.`."""
    return f"{value:.0f}."


def _format_tensor(values: torch.Tensor) -> str:
    """A CPU tensor in full when small, else its shape and first values."""
    finite = bool(torch.isfinite(values).all()) if values.is_floating_point() else False
    whole = finite and bool((values == values.round()).all())
    show = _format_whole if whole else _format_scalar
    if values.numel() <= MAX_SHOWN:
        return f"tensor({_format_nested(values.tolist(), show)})"
    first = ", ".join(show(v) for v in values.flatten()[:6].tolist())
    return f"tensor of shape {tuple(values.shape)}, starting [{first}, ...]"


def _format_nested(values: Any, show: Callable[[Any], str]) -> str:
    """Nested lists of numbers as `[[0.1000, 0.9000], ...]`."""
    if isinstance(values, list):
        return "[" + ", ".join(_format_nested(v, show) for v in values) + "]"
    return show(values)


def _format_sequence(values: tuple | list) -> str:
    """`(tensor([1.]), 2)` or `[...]`; only the first MAX_SHOWN items of a long one."""
    shown = [_format_item(item) for item in values[:MAX_SHOWN]]
    if len(values) > MAX_SHOWN:
        shown.append(f"... {len(values) - MAX_SHOWN:,} more")
    if isinstance(values, tuple):
        return "(" + ", ".join(shown) + ("," if len(values) == 1 else "") + ")"
    return "[" + ", ".join(shown) + "]"


def _format_item(value: Any) -> str:
    """An item of a list or tuple: whole numbers without separators, [256, 1000]."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    return format_value(value)


def _format_dict(values: dict) -> str:
    """`dict {'k': tensor of shape (2, 3), 'n': 4}`: keys, each value in brief."""
    items = [f"{_shorten(repr(key), 40)}: {_summary(v)}" for key, v in values.items()]
    if len(items) > MAX_SHOWN:
        items = items[:MAX_SHOWN] + [f"... {len(items) - MAX_SHOWN:,} more"]
    return "dict {" + ", ".join(items) + "}"


def _summary(value: Any) -> str:
    """A few words for one value inside a container: shapes, not contents."""
    if isinstance(value, torch.Tensor):
        dtype = "" if value.dtype == torch.float32 else f", {value.dtype}"
        return f"tensor of shape {tuple(value.shape)}{dtype}"
    if isinstance(value, numbers.Number | str | None):
        return _shorten(format_value(value), 40)
    if isinstance(value, tuple | list | dict):
        return f"{type(value).__name__} of {len(value):,} items"
    return type(value).__name__


def _shorten(text: str, limit: int = 600) -> str:
    """`text`, cut to `limit` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _snapshot(case: Case) -> dict[str, torch.Tensor]:
    """Copies of the case's tensor arguments, by position ("0") or keyword."""
    named = {str(i): arg for i, arg in enumerate(case.args)} | case.kwargs
    return {
        key: value.detach().clone()
        for key, value in named.items()
        if isinstance(value, torch.Tensor)
    }


def _edited_input(
    fn: Callable[..., Any], case: Case, before: dict[str, torch.Tensor]
) -> tuple[str, str] | None:
    """(argument name, what changed) for the first tensor argument fn edited."""
    for key, old in before.items():
        new = case.args[int(key)] if key.isdigit() else case.kwargs[key]
        new = new.detach().cpu()
        if new.shape != old.shape:
            change = f"its shape went from {tuple(old.shape)} to {tuple(new.shape)}"
            return _argument_name(fn, key), change
        changed = new != old.cpu()
        if new.is_floating_point():
            changed &= ~(new.isnan() & old.cpu().isnan())
        if bool(changed.any()):
            index = tuple(changed.nonzero()[0].tolist())
            was = _format_scalar(old[index].item())
            now = _format_scalar(new[index].item())
            change = (
                f"{int(changed.sum())} of {changed.numel()} values changed; first at "
                f"index {index}: was {was}, now {now}"
            )
            return _argument_name(fn, key), change
    return None


def _argument_name(fn: Callable[..., Any], key: str) -> str:
    """The name fn gives to argument `key` ("0", "1", ... or a keyword)."""
    if not key.isdigit():
        return key
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        names = []
    return names[int(key)] if int(key) < len(names) else f"number {int(key) + 1}"


def _call_text(fn: Callable[..., Any], case: Case) -> str:
    """The call that failed, as code: `softmax(tensor([1.0000]), dim=0)`."""
    parts = [format_value(arg) for arg in case.args]
    parts += [f"{key}={format_value(value)}" for key, value in case.kwargs.items()]
    return f"{getattr(fn, '__name__', 'fn')}({', '.join(parts)})"


def _field(label: str, text: str) -> str:
    """One labelled line of a report, wrapped under its label."""
    return textwrap.fill(
        text,
        width=WIDTH,
        initial_indent=f"  {label + ':':<{LABEL - 2}}",
        subsequent_indent=" " * LABEL,
        break_on_hyphens=False,
    )


def _wrong_report(
    exercise: Exercise,
    case: Case,
    where: str,
    actual: Any,
    problem: str,
    call: str,
) -> str:
    """The message for a wrong answer: case, values, difference, hint."""
    hint = exercise.diagnose(case, actual) if exercise.diagnose else None
    lines = [
        f"Exercise {exercise.id} failed {where}.",
        _field("call", call),
        _field("expected", format_value(case.expected)),
        _field("got", format_value(actual)),
        _field("problem", problem),
        _field("hint", hint or case.hint),
    ]
    return "\n".join(lines)


def _edited_report(
    exercise: Exercise,
    case: Case,
    where: str,
    actual: Any,
    call: str,
    edited: tuple[str, str],
) -> str:
    """The message for an answer that changed one of its tensor arguments."""
    name, change = edited
    lines = [
        f"Exercise {exercise.id} failed {where}.",
        _field("call", call),
        _field("expected", format_value(case.expected)),
        _field("got", format_value(actual)),
        _field("problem", f"your function changed its input {name} in place: {change}"),
        _field(
            "hint",
            f"leave {name} as it was: the caller may still need it. Compute into a "
            f"new tensor (y = {name} / s, not {name} /= s; no {name}[...] = ..., "
            "no in-place methods ending in _ such as .mul_())",
        ),
    ]
    return "\n".join(lines)


def _error_report(
    exercise: Exercise,
    fn: Callable[..., Any],
    case: Case,
    where: str,
    err: Exception,
    call: str,
) -> str:
    """The message for an exception raised by the learner's function."""
    hint = exercise.explain_error(case, err) if exercise.explain_error else None
    if hint is None and isinstance(err, TypeError) and "argument" in str(err):
        hint = "keep the signature of the exercise's stub (names and defaults)"
    name = getattr(fn, "__name__", "your function")
    line = _raising_line(fn, err)
    lines = [
        f"Exercise {exercise.id} failed {where}: {name} raised {type(err).__name__}.",
        _field("call", call),
        _field("error", f"{type(err).__name__}: {err}"),
    ]
    if line:
        lines.append(_field("at", line))
    lines.append(_field("hint", hint or "read the error and the line that raised it"))
    return "\n".join(lines)


def _raising_line(fn: Callable[..., Any], err: Exception) -> str | None:
    """`line 7: scores = q @ k`, the last line of fn's own file in err's traceback."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    found = None
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == code.co_filename:
            found = tb
        tb = tb.tb_next
    if found is None:
        return None
    number = found.tb_lineno
    source = linecache.getline(code.co_filename, number, found.tb_frame.f_globals)
    return f"line {number}: {source.strip()}" if source.strip() else f"line {number}"
