"""Tests of the checkers of chapters 03 and 04: attention, multi-head attention, block.

Each checker accepts the reference and a learner-style right answer, reports a stub
as not attempted, and rejects plausible wrong answers with a hint that names the
mistake. The wrong answers are written independently of the reference.
"""

import math
from collections.abc import Callable

import pytest
import torch
from conftest import failure_message
from torch import nn

import utils.checks.ch03  # noqa: F401  (registers 3.1)
import utils.checks.ch04  # noqa: F401  (registers 4.1 and 4.2)
from utils.checks import EXERCISES, check_exercise
from utils.checks.ch04 import block_cases, mha_cases
from utils.reference.attention import MultiHeadAttention, scaled_dot_product_attention
from utils.reference.block import MLP, TransformerBlock

# --- learner-style answers for 3.1, each able to make one named mistake


def _attention(mistake: str = "") -> Callable:
    """A learner's attention(q, k, v, mask=None) that makes `mistake`."""

    def attention(q, k, v, mask=None):
        head_dim = q.size(-1)
        divisor = {"no_scale": 1.0, "by_dh": head_dim}.get(mistake, math.sqrt(head_dim))
        scores = q @ k.transpose(-2, -1) / divisor
        blocked = _learner_mask(mistake, mask, scores)
        fill = -1e9 if mistake == "uniform_rows" else float("-inf")
        if blocked is not None:
            scores = scores.masked_fill(blocked, fill)
        weights = torch.softmax(scores, dim=-2 if mistake == "dim" else -1)
        if blocked is not None and mistake not in ("nan_rows", "uniform_rows"):
            weights = weights.masked_fill(blocked, 0.0)
        output = weights @ v
        if mistake == "output_only":
            return output
        return (weights, output) if mistake == "swapped" else (output, weights)

    return attention


def _learner_mask(mistake: str, mask, scores):
    """The blocked positions a learner's attention uses, mistakes included."""
    if mask is None or mistake == "ignore_mask":
        return None
    ones = torch.ones(scores.shape[-2:], dtype=torch.bool)
    own = {"diagonal": ones.triu(0), "future": ones.triu(2)}  # own, shifted masks
    if mistake in own:
        return own[mistake]
    if mistake == "inverted":
        return ~mask
    return mask.transpose(-2, -1) if mistake == "transposed" else mask


# --- learner-style answers for 4.1 and 4.2


class _LearnerMHA(nn.Module):
    """Multi-head attention as a learner writes it; `mistake` picks one error."""

    mistake = ""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        batch_size, seq_len, d_model = x.shape
        heads, width = self.n_heads, self.head_dim

        def split(t):
            if self.mistake == "view":
                return t.view(batch_size, heads, seq_len, width)
            return t.view(batch_size, seq_len, heads, width).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scale = d_model if self.mistake == "sqrt_d_model" else width
        scores = q @ k.transpose(-2, -1) / math.sqrt(scale)
        if mask is not None and self.mistake != "ignore_mask":
            scores = scores.masked_fill(mask, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # (B, H, T, Dh)
        if self.mistake == "interleave":
            out = out.permute(0, 2, 3, 1)  # (B, T, Dh, H)
        elif self.mistake != "merge_reshape":
            out = out.transpose(1, 2)  # (B, T, H, Dh)
        out = out.reshape(batch_size, seq_len, d_model)
        return out if self.mistake == "no_out_proj" else self.out_proj(out)


class _LearnerBlock(nn.Module):
    """A pre-norm block as a learner wires it (with torch's own LayerNorm)."""

    mistake = ""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff)

    def forward(self, x, mask=None):
        def attn(h):
            return self.attn(h, mask=None if self.mistake == "ignore_mask" else mask)

        if self.mistake == "post_norm":
            x = self.norm1(x + attn(x))
            return self.norm2(x + self.mlp(x))
        if self.mistake == "stream_norm":
            x = self.norm1(x)
            x = x + attn(x)
            x = self.norm2(x)
            return x + self.mlp(x)
        h = attn(self.norm1(x))
        x = h if self.mistake == "no_residual" else x + h
        second = self.norm1 if self.mistake == "same_norm" else self.norm2
        return x + self.mlp(second(x))


def _with(cls: type, mistake: str) -> type:
    """A subclass of a learner-style class that makes `mistake`."""
    return type(f"{cls.__name__}_{mistake}", (cls,), {"mistake": mistake})


class _StubMHA(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        raise NotImplementedError("Exercise 4.1")


class _StubBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        raise NotImplementedError("Exercise 4.2")


class _ForwardStubMHA(_LearnerMHA):
    def forward(self, x, mask=None):
        raise NotImplementedError("Exercise 4.1")


class _TupleMHA(_LearnerMHA):
    def forward(self, x, mask=None):
        return super().forward(x, mask), None


class _MisnamedMHA(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)


class _MisnamedBlock(_LearnerBlock):
    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__(d_model, n_heads, d_ff)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model))


def _reference_attention(q, k, v, mask=None):
    return scaled_dot_product_attention(q, k, v, mask=mask)


def _stub_attention(q, k, v, mask=None):
    raise NotImplementedError("Exercise 3.1")


# --- the checkers' outcomes


def test_chapter_03_04_exercises_are_registered() -> None:
    titles = {key: EXERCISES[key].title for key in ("3.1", "4.1", "4.2")}
    assert titles == {
        "3.1": "Scaled dot-product attention",
        "4.1": "Multi-head attention",
        "4.2": "A pre-norm transformer block",
    }


@pytest.mark.parametrize(
    ("exercise_id", "answer", "line"),
    [
        ("3.1", _reference_attention, "Exercise 3.1: passed 6/6 checks"),
        ("3.1", _attention(), "Exercise 3.1: passed 6/6 checks"),
        ("4.1", MultiHeadAttention, "Exercise 4.1: passed 5/5 checks"),
        ("4.1", _LearnerMHA, "Exercise 4.1: passed 5/5 checks"),
        ("4.2", TransformerBlock, "Exercise 4.2: passed 4/4 checks"),
        ("4.2", _LearnerBlock, "Exercise 4.2: passed 4/4 checks"),
    ],
)
def test_check_ch03_ch04_right_answers_pass(
    capsys: pytest.CaptureFixture[str], exercise_id: str, answer: Callable, line: str
) -> None:
    assert check_exercise(exercise_id, answer) is None
    assert capsys.readouterr().out == line + "\n"


@pytest.mark.parametrize(
    ("exercise_id", "stub"),
    [("3.1", _stub_attention), ("4.1", _StubMHA), ("4.2", _StubBlock)],
)
def test_check_ch03_ch04_stub_not_attempted(
    capsys: pytest.CaptureFixture[str], exercise_id: str, stub: Callable
) -> None:
    assert check_exercise(exercise_id, stub) is None
    assert capsys.readouterr().out == f"Exercise {exercise_id}: not attempted yet\n"


@pytest.mark.parametrize(
    ("mistake", "case", "keyword"),
    [
        ("no_scale", "check 1/6 (one query by hand)", "not scaled"),
        ("by_dh", "check 1/6 (one query by hand)", "divide the scores by Dh = 4"),
        ("dim", "check 1/6 (one query by hand)", "runs over the queries"),
        ("output_only", "check 1/6 (one query by hand)", "as a tuple"),
        ("swapped", "check 1/6 (one query by hand)", "order (output, weights)"),
        ("diagonal", "check 3/6 (causal mask)", "blocks the diagonal"),
        ("future", "check 3/6 (causal mask)", "one future token"),
        ("transposed", "check 3/6 (causal mask)", "wrong axis"),
        ("inverted", "check 3/6 (causal mask)", "inverted"),
        ("ignore_mask", "check 3/6 (causal mask)", "no effect"),
        ("nan_rows", "check 5/6 (fully masked row)", "NaN"),
        ("uniform_rows", "check 5/6 (fully masked row)", "uniform"),
    ],
)
def test_attention_check_rejects_wrong_answer(
    mistake: str, case: str, keyword: str
) -> None:
    message = failure_message("3.1", _attention(mistake))
    assert f"Exercise 3.1 failed {case}" in message
    assert keyword in message


def test_attention_check_shows_values_by_hand() -> None:
    message = failure_message("3.1", _attention("no_scale"))
    assert "tensor([[0.8668, 0.1173, 0.0159]])" in message
    assert "output: 3 of 4 values differ; first at index (0, 0)" in message


def test_attention_check_catches_padding_on_queries() -> None:
    def queries_masked(q, k, v, mask=None):
        if mask is not None and mask.dim() == 4:  # (B, 1, 1, S) -> (B, 1, S, 1)
            mask = mask.transpose(-2, -1)
        return _attention()(q, k, v, mask)

    message = failure_message("3.1", queries_masked)
    assert "check 4/6 (padding mask)" in message
    assert "wrong axis" in message


@pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")
@pytest.mark.parametrize(
    ("line", "keyword"),
    [("if mask:", "is not None"), ("k.T", "transpose(-2, -1)")],
)
def test_attention_check_explains_errors(line: str, keyword: str) -> None:
    def broken(q, k, v, mask=None):
        if line == "if mask:" and mask:
            pass
        keys_t = k.T if line == "k.T" else k.transpose(-2, -1)
        weights = torch.softmax(q @ keys_t / math.sqrt(q.size(-1)), dim=-1)
        return weights @ v, weights

    message = failure_message("3.1", broken)
    assert keyword in message


@pytest.mark.parametrize(
    ("mistake", "case", "keyword"),
    [
        ("view", "check 2/5 (4 heads)", "split along the wrong axis"),
        ("sqrt_d_model", "check 2/5 (4 heads)", "1/sqrt(head_dim) = 1/sqrt(8)"),
        ("no_out_proj", "check 1/5 (one head)", "self.out_proj"),
        ("interleave", "check 2/5 (4 heads)", "concatenated in the wrong order"),
        ("merge_reshape", "check 2/5 (4 heads)", "concatenated in the wrong order"),
        ("ignore_mask", "check 3/5 (causal mask)", "no effect"),
    ],
)
def test_mha_check_rejects_wrong_answer(mistake: str, case: str, keyword: str) -> None:
    message = failure_message("4.1", _with(_LearnerMHA, mistake))
    assert f"Exercise 4.1 failed {case}" in message
    assert keyword in message


@pytest.mark.parametrize(
    ("answer", "keywords"),
    [
        (
            _MisnamedMHA,
            ["missing q_proj.weight", "q_proj, k_proj, v_proj and out_proj"],
        ),
        (_ForwardStubMHA, ["NotImplementedError", "write forward as well"]),
        (_TupleMHA, ["got tuple", "out, _ = ..."]),
    ],
)
def test_mha_check_explains_setup_problems(answer: type, keywords: list[str]) -> None:
    message = failure_message("4.1", answer)
    assert "check 1/5 (one head)" in message
    for keyword in keywords:
        assert keyword in message


@pytest.mark.parametrize(
    ("mistake", "case", "keyword"),
    [
        ("post_norm", "check 1/4 (no mask)", "post-norm"),
        ("no_residual", "check 1/4 (no mask)", "residual connection is missing"),
        ("stream_norm", "check 1/4 (no mask)", "residual stream itself"),
        ("same_norm", "check 1/4 (no mask)", "each branch has its own norm"),
        ("ignore_mask", "check 2/4 (causal mask)", "no effect"),
    ],
)
def test_block_check_rejects_wrong_answer(
    mistake: str, case: str, keyword: str
) -> None:
    message = failure_message("4.2", _with(_LearnerBlock, mistake))
    assert f"Exercise 4.2 failed {case}" in message
    assert keyword in message


def test_block_check_names_expected_submodules() -> None:
    message = failure_message("4.2", _MisnamedBlock)
    assert "missing mlp.up.weight" in message
    assert "unexpected mlp.0.weight" in message
    assert "norm1, attn, norm2 and mlp" in message


def test_module_cases_leave_global_random_state_alone() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    mha_cases()
    block_cases()
    assert torch.equal(torch.get_rng_state(), state)
