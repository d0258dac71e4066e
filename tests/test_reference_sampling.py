"""Tests of the reference sampling: top-k, top-p, temperature and the generation loop,
with the edge cases learners hit (k beyond the vocabulary, an empty nucleus, greedy
decoding, prompts longer than the context, train mode left switched off)."""

import pytest
import torch
from torch import nn

from utils.reference.gpt import GPT, GPTConfig
from utils.reference.sampling import (
    filter_top_k,
    filter_top_p,
    generate,
    sample_next_token,
)

D, H, L, V, T = 32, 4, 2, 97, 8  # the course's tiny sizes

# probabilities 0.5, 0.3, 0.15, 0.05, shuffled so that sorting matters
PROBS = torch.tensor([0.15, 0.5, 0.05, 0.3])
LOGITS = PROBS.log()


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=V, context_length=T, n_layers=L, n_heads=H, d_model=D)
    return GPT(config)


class Recorder(nn.Module):
    """A stand-in model: random logits, and a record of every call's mode and width."""

    context_length = 4

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, bool, int]] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled(), idx.size(1)))
        return torch.randn(idx.size(0), idx.size(1), V)


def _kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits).nonzero().flatten().tolist()


# --- top-k


def test_filter_top_k_keeps_the_k_largest() -> None:
    assert _kept(filter_top_k(LOGITS, 2)) == [1, 3]
    filtered = filter_top_k(LOGITS[None].repeat(3, 1), 3)  # (B, V)
    assert filtered.shape == (3, 4)
    assert (torch.isfinite(filtered).sum(-1) == 3).all()
    torch.testing.assert_close(filtered[0, [0, 1, 3]], LOGITS[[0, 1, 3]])


def test_filter_top_k_clamps_k_to_the_vocabulary() -> None:
    torch.testing.assert_close(filter_top_k(LOGITS, 100), LOGITS)


@pytest.mark.parametrize("k", [0, -3, 1.5, True])
def test_filter_top_k_rejects_bad_k(k) -> None:
    with pytest.raises(ValueError, match="top_k"):
        filter_top_k(LOGITS, k)


# --- top-p


@pytest.mark.parametrize(
    ("p", "kept"),
    [(0.4, [1]), (0.5, [1]), (0.75, [1, 3]), (0.9, [0, 1, 3]), (1.0, [0, 1, 2, 3])],
)
def test_filter_top_p_keeps_the_nucleus(p: float, kept: list[int]) -> None:
    assert _kept(filter_top_p(LOGITS, p)) == kept


def test_filter_top_p_always_keeps_the_top_token() -> None:
    logits = torch.randn(5, V)
    filtered = filter_top_p(logits, 1e-6)
    assert (torch.isfinite(filtered).sum(-1) == 1).all()
    assert torch.equal(filtered.argmax(-1), logits.argmax(-1))


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan"), True])
def test_filter_top_p_rejects_p_outside_0_1(p: float) -> None:
    with pytest.raises(ValueError, match=r"top_p must be a probability in \(0, 1\]"):
        filter_top_p(LOGITS, p)


# --- one sampling step


def test_sample_temperature_zero_is_argmax() -> None:
    logits = torch.randn(6, V)
    expected = logits.argmax(-1, keepdim=True)
    assert torch.equal(sample_next_token(logits, temperature=0), expected)
    assert torch.equal(sample_next_token(logits, 0.0, top_k=5, top_p=0.1), expected)


def test_sample_rejects_negative_temperature() -> None:
    with pytest.raises(ValueError, match="temperature.*>= 0.*greedy"):
        sample_next_token(LOGITS, temperature=-0.5)


def test_sample_shapes_and_filters() -> None:
    assert sample_next_token(torch.randn(3, V)).shape == (3, 1)
    assert sample_next_token(LOGITS).shape == (1,)
    generator = torch.Generator().manual_seed(0)
    hot = [
        sample_next_token(LOGITS, 5.0, top_k=2, generator=generator) for _ in range(50)
    ]
    assert {i.item() for i in hot} == {1, 3}  # a hot temperature stays inside top-k
    nucleus = [
        sample_next_token(LOGITS, top_p=0.75, generator=generator) for _ in range(50)
    ]
    assert {i.item() for i in nucleus} == {1, 3}
    # the nucleus is taken after the temperature: hotter logits widen it
    hot = sample_next_token(LOGITS.repeat(400, 1), 5.0, top_p=0.75, generator=generator)
    assert 0 in hot
    with pytest.raises(ValueError, match=r"logits\[:, -1, :\]"):
        sample_next_token(torch.randn(2, T, V))


def test_sample_seeded_generator_repeats() -> None:
    logits = torch.randn(4, V)
    first = sample_next_token(logits, generator=torch.Generator().manual_seed(7))
    again = sample_next_token(logits, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again)


# --- the generation loop


def test_generate_zero_tokens_returns_prompt(model: GPT) -> None:
    prompt = torch.randint(0, V, (2, 5))
    assert torch.equal(generate(model, prompt, max_new_tokens=0), prompt)


def test_generate_crops_to_the_context(model: GPT) -> None:
    prompt = torch.randint(0, V, (2, T + 4))  # longer than the context
    out = generate(model, prompt, max_new_tokens=T + 2)  # and runs past it
    assert out.shape == (2, 2 * T + 6)
    assert torch.equal(out[:, : T + 4], prompt)
    assert out.dtype == prompt.dtype

    recorder = Recorder()
    generate(recorder, torch.zeros(1, 2, dtype=torch.long), max_new_tokens=5)
    assert [width for _, _, width in recorder.calls] == [2, 3, 4, 4, 4]


def test_generate_runs_in_eval_mode_and_restores_modes(model: GPT) -> None:
    recorder = Recorder().train()
    generate(recorder, torch.zeros(1, 1, dtype=torch.long), max_new_tokens=2)
    assert recorder.calls[0][:2] == (False, False)  # eval mode, no gradients
    assert recorder.training

    model.train()
    model.blocks[0].eval()  # a frozen part keeps its own mode
    generate(model, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2)
    assert model.training and model.blocks[1].training
    assert not model.blocks[0].training


def test_generate_greedy_matches_argmax_loop(model: GPT) -> None:
    prompt = torch.randint(0, V, (2, 3))
    out = generate(model, prompt, max_new_tokens=4, temperature=0)
    idx = prompt
    model.eval()
    for _ in range(4):
        logits, _ = model(idx[:, -T:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)


def test_generate_seeded_generator_repeats(model: GPT) -> None:
    prompt = torch.randint(0, V, (2, 3))
    runs = [
        generate(
            model,
            prompt,
            max_new_tokens=6,
            temperature=0.8,
            top_k=20,
            top_p=0.9,
            generator=torch.Generator().manual_seed(1),
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be >= 0"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be a whole number"),
        ({"temperature": -1.0}, "greedy"),
        ({"top_k": 0}, "top_k must be >= 1"),
        ({"top_p": 0.0}, r"top_p must be a probability in \(0, 1\]"),
        ({"idx": torch.zeros(1, 3)}, "token ids"),
        ({"idx": torch.zeros(3, dtype=torch.long)}, r"idx\[None\]"),
    ],
)
def test_generate_rejects_bad_arguments(model: GPT, kwargs: dict, match: str) -> None:
    arguments = {"idx": torch.zeros(1, 3, dtype=torch.long), "max_new_tokens": 2}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate(model, **arguments)
