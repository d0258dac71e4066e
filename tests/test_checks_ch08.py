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
            self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) * 0.01)
            init = torch.randn if mistake == "random_b" else torch.zeros
            self.lora_B = nn.Parameter(init(base.out_features, rank))
            self.scale = {"alpha": alpha, "none": 1.0, "inverse": rank / alpha}.get(
                mistake, alpha / rank
            )

        def forward(self, x):
            return self.base(x) + self.scale * (x @ self.lora_A.T @ self.lora_B.T)

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
    ],
)
def test_lora_rejects_mistakes(mistake, hint):
    assert hint in failure_message("8.2", _lora(mistake))


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


def test_lora_cases_scale_differs_from_alpha():
    scales = [c.expected.scale for c in EXERCISES["8.2"].cases()]
    alphas = [c.args[2] for c in EXERCISES["8.2"].cases()]
    assert any(not math.isclose(s, a) for s, a in zip(scales, alphas, strict=True))
