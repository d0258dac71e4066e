"""Tests of the checkers of chapter 08: mean pooling (8.1), the LoRA layer (8.2) and
the answer-only labels (8.3).

Each checker accepts the reference and a learner-style right answer, reports a stub
as not attempted, and rejects plausible wrong answers with a hint that names the
mistake. The wrong answers are written independently of the reference.
"""

import math

import pytest
import torch
from conftest import failure_message
from torch import nn

import utils.checks.ch08  # noqa: F401  (registers 8.1, 8.2 and 8.3)
from utils.checks import EXERCISES, check_exercise
from utils.finetune import answer_labels
from utils.reference.classify import mean_pool
from utils.reference.lora import LoRALinear

# --- 8.1


def _pool(mistake: str = ""):
    def pool(hidden, attention_mask):
        m = attention_mask.float().unsqueeze(-1)
        if mistake == "plain":
            return hidden.mean(dim=1)
        if mistake == "over_t":
            return (hidden * m).sum(1) / hidden.size(1)
        if mistake == "first":
            return hidden[:, 0]
        return (hidden * m).sum(1) / m.sum(1)

    return pool


def _stub(*args):
    raise NotImplementedError("Exercise 8.x")


def test_exercises_registered():
    assert {"8.1", "8.2", "8.3"} <= set(EXERCISES)


@pytest.mark.parametrize("answer", [mean_pool, _pool()])
def test_pool_accepts_right_answers(answer, capsys):
    check_exercise("8.1", answer)
    assert capsys.readouterr().out.strip() == "Exercise 8.1: passed 4/4 checks"


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("plain", "padding included"),
        ("over_t", "you divide by T"),
        ("first", "first token"),
    ],
)
def test_pool_rejects_mistakes(mistake, hint):
    assert hint in failure_message("8.1", _pool(mistake))


@pytest.mark.parametrize("exercise_id", ["8.1", "8.2", "8.3"])
def test_stub_not_attempted(exercise_id, capsys):
    check_exercise(exercise_id, _stub)
    assert (
        capsys.readouterr().out.strip() == f"Exercise {exercise_id}: not attempted yet"
    )


# --- 8.2


def _lora(mistake: str = ""):
    class MyLoRA(nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            self.base = base
            if mistake != "trainable_base":
                base.requires_grad_(False)
            scale_a = 0.0 if mistake == "zero_a" else 0.01
            self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) * scale_a)
            init = torch.randn if mistake == "random_b" else torch.zeros
            self.lora_B = nn.Parameter(init(base.out_features, rank))
            self.scale = {"alpha": alpha, "none": 1.0, "inverse": rank / alpha}.get(
                mistake, alpha / rank
            )

        def forward(self, x):
            a, b = self.lora_A, self.lora_B
            products = {
                "b_not_transposed": lambda: x @ a.T @ b,
                "b_before_a": lambda: x @ b.T @ a.T,
                "delta_not_transposed": lambda: x @ (b @ a),
            }
            update = products.get(mistake, lambda: x @ a.T @ b.T)()
            if mistake == "forward_stub":
                raise NotImplementedError("Exercise 8.2")
            if mistake == "no_bias":
                return x @ self.base.weight.T + self.scale * update
            if mistake == "update_only":
                return self.scale * update
            return self.base(x) + self.scale * update

    return MyLoRA


@pytest.mark.parametrize("answer", [LoRALinear, _lora()])
def test_lora_accepts_right_answers(answer, capsys):
    check_exercise("8.2", answer)
    assert capsys.readouterr().out.strip() == "Exercise 8.2: passed 4/4 checks"


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("alpha", "scaled by alpha; scale it by alpha / rank"),
        ("none", "not scaled"),
        ("inverse", "upside down"),
        ("random_b", "initialise lora_B with zeros"),
        ("trainable_base", "freeze the base layer"),
        ("zero_a", "neither ever gets a gradient"),
        ("no_bias", "drops the base layer's bias"),
        ("update_only", "you return only the update"),
    ],
)
def test_lora_rejects_mistakes(mistake, hint):
    assert hint in failure_message("8.2", _lora(mistake))


def test_lora_bias_dropped_is_not_blamed_on_b():
    assert "initialise lora_B" not in failure_message("8.2", _lora("no_bias"))


def test_lora_forward_stub_is_reported_not_raised():
    message = failure_message("8.2", _lora("forward_stub"))
    assert "forward is not attempted yet" in message
    assert "now write forward" in message


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("b_not_transposed", "lora_B is (out, rank): transpose it"),
        ("b_before_a", "lora_B is applied before lora_A"),
        ("delta_not_transposed", "x @ (lora_B @ lora_A).T"),
    ],
)
def test_lora_shape_bugs_are_reported_with_hint(mistake, hint):
    message = failure_message("8.2", _lora(mistake))
    assert "forward raised RuntimeError" in message
    assert "at line" in message  # the learner's own line that raised
    assert hint in message


def test_lora_dtype_error_is_not_blamed_on_shapes():
    class Double(_lora()):
        def __init__(self, base, rank, alpha):
            super().__init__(base, rank, alpha)
            self.lora_A = nn.Parameter(self.lora_A.double())

    message = failure_message("8.2", Double)
    assert "share a dtype" in message
    assert "transpose" not in message


def test_lora_other_forward_error_is_reported():
    class Typo(_lora()):
        def forward(self, x):
            return self.base(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)

    message = failure_message("8.2", Typo)
    assert "forward raised AttributeError" in message
    assert "scaling" in message


def test_lora_rejects_wrong_shapes():
    class Transposed(nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            self.base = base.requires_grad_(False)
            self.lora_A = nn.Parameter(torch.zeros(base.in_features, rank))
            self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features))

        def forward(self, x):
            return self.base(x) + x @ self.lora_A @ self.lora_B

    assert "A is (rank, in)" in failure_message("8.2", Transposed)


# --- 8.3


def _labels(mistake: str = ""):
    def labels(input_ids, attention_mask, prompt_lengths):
        t = torch.arange(input_ids.size(1))[None, :]
        start = prompt_lengths[:, None]
        keep = t > start if mistake == "off_by_one" else t >= start
        if mistake == "pad_id":
            keep = keep & (input_ids != 2)
        elif mistake != "no_padding":
            keep = keep & (attention_mask == 1)
        fill = 0 if mistake == "zero" else -100
        out = input_ids.masked_fill(~keep, fill)
        if mistake == "shift":
            out = torch.cat([out[:, 1:], torch.full_like(out[:, :1], -100)], dim=1)
        return out

    return labels


def _labels_in_place(input_ids, attention_mask, prompt_lengths):
    t = torch.arange(input_ids.size(1))[None, :]
    keep = (t >= prompt_lengths[:, None]) & (attention_mask == 1)
    return input_ids.masked_fill_(~keep, -100)  # right values, but input_ids is lost


@pytest.mark.parametrize("answer", [answer_labels, _labels()])
def test_labels_accept_right_answers(answer, capsys):
    check_exercise("8.3", answer)
    assert capsys.readouterr().out.strip() == "Exercise 8.3: passed 4/4 checks"


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("off_by_one", "off by one"),
        ("pad_id", "by the pad id"),
        ("no_padding", "padding positions must be ignored"),
        ("zero", "not 0"),
        ("shift", "do not shift"),
    ],
)
def test_labels_reject_mistakes(mistake, hint):
    assert hint in failure_message("8.3", _labels(mistake))


def test_labels_reject_an_edit_in_place():
    message = failure_message("8.3", _labels_in_place)
    assert "changed its argument input_ids in place" in message
    assert "clone()" in message


def test_lora_cases_scale_differs_from_alpha():
    scales = [c.expected.scale for c in EXERCISES["8.2"].cases()]
    alphas = [c.args[2] for c in EXERCISES["8.2"].cases()]
    assert any(not math.isclose(s, a) for s, a in zip(scales, alphas, strict=True))
