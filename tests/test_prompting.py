"""Tests of utils.prompting: probabilities, top tokens, prompts, generation and
classification by prompting.

Fast tests use plain tensors or a tiny random LLaMA with a one-character-per-token
stand-in tokenizer (see conftest.py); tests marked slow use the real SmolLM2.
"""

import pytest
import torch

from utils.prompting import (
    _shared_prefix_length,
    accuracy,
    check_temperature,
    classify_by_prompt,
    encode_prompt,
    few_shot_messages,
    generate,
    next_token_logits,
    next_token_probs,
    probs_from_logits,
    top_tokens,
)

CAPITAL_QUESTION = "What is the capital of France?"
SPAM_INSTRUCTION = "Classify the message as ham or spam. Answer with one word."
SENTIMENT_INSTRUCTION = (
    "Classify the sentiment of the review as positive or negative. "
    "Answer with one word."
)
REVIEWS = [
    "I loved this film, wonderful acting!",
    "Terrible food and rude staff.",
    "What a fantastic day at the beach",
    "The product broke after one day, awful.",
]
REVIEW_EXAMPLES = [
    ("positive", "Great service, I will come back."),
    ("negative", "The worst purchase I ever made."),
]


def _entropy(probs: torch.Tensor) -> float:
    return float(-(probs * probs.clamp_min(1e-30).log()).sum())


# --- probs_from_logits, check_temperature


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 2.0])
def test_probs_from_logits_sums_to_one(temperature: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 97) * 4

    probs = probs_from_logits(logits, temperature)

    assert probs.shape == (3, 97)
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_probs_from_logits_temperature_zero_is_one_hot_at_argmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 97)

    probs = probs_from_logits(logits, temperature=0)

    expected = torch.zeros(4, 97)
    expected[torch.arange(4), logits.argmax(-1)] = 1.0
    torch.testing.assert_close(probs, expected, atol=0, rtol=0)


def test_probs_from_logits_temperature_one_is_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(97)

    torch.testing.assert_close(probs_from_logits(logits), torch.softmax(logits, -1))


@pytest.mark.parametrize("temperature", [-0.1, -1.0])
def test_probs_from_logits_negative_temperature_raises(temperature: float) -> None:
    with pytest.raises(ValueError, match="greedy"):
        probs_from_logits(torch.zeros(5), temperature)


@pytest.mark.parametrize(
    ("temperature", "error", "match"),
    [
        (float("nan"), ValueError, "finite"),
        (float("inf"), ValueError, "finite"),
        ("0.7", TypeError, "number"),
        (None, TypeError, "number"),
        (True, TypeError, "number"),
    ],
)
def test_check_temperature_rejects_non_numbers(
    temperature: object, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        check_temperature(temperature)


def test_check_temperature_accepts_zero_and_positive() -> None:
    for temperature in (0, 0.0, 0.7, 3):
        assert check_temperature(temperature) is None


def test_probs_from_logits_higher_temperature_higher_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(97) * 3

    entropies = [_entropy(probs_from_logits(logits, t)) for t in (0.25, 0.5, 1, 2, 4)]

    assert entropies == sorted(entropies)
    assert len(set(entropies)) == len(entropies)
    assert entropies[-1] < torch.log(torch.tensor(97.0)).item()  # below uniform


# --- top_tokens, accuracy, few_shot_messages


def test_top_tokens_most_likely_first(tiny_llama) -> None:
    _, tokenizer = tiny_llama
    probs = torch.tensor([0.1, 0.6, 0.0, 0.3])

    pairs = top_tokens(probs, tokenizer, k=2)

    assert [text for text, _ in pairs] == [tokenizer.decode([1]), tokenizer.decode([3])]
    assert [p for _, p in pairs] == pytest.approx([0.6, 0.3])


def test_top_tokens_clamps_k_above_vocabulary(tiny_llama) -> None:
    _, tokenizer = tiny_llama
    probs = torch.softmax(torch.arange(5.0), -1)

    pairs = top_tokens(probs, tokenizer, k=50)

    assert len(pairs) == 5
    assert [p for _, p in pairs] == sorted((p for _, p in pairs), reverse=True)


@pytest.mark.parametrize("k", [0, -3])
def test_top_tokens_rejects_k_below_one(tiny_llama, k: int) -> None:
    _, tokenizer = tiny_llama
    with pytest.raises(ValueError, match="at least 1"):
        top_tokens(torch.ones(5) / 5, tokenizer, k=k)


def test_accuracy_counts_matches() -> None:
    assert accuracy(["a", "b", "a", "b"], ["a", "b", "b", "b"]) == 0.75
    assert accuracy(["spam"], ["spam"]) == 1.0
    assert accuracy(("x", "y"), ("y", "x")) == 0.0


@pytest.mark.parametrize(
    "predicted, expected", [([], []), (["a"], ["a", "b"]), (["a", "b"], ["a"])]
)
def test_accuracy_rejects_unequal_or_empty(predicted: list, expected: list) -> None:
    with pytest.raises(ValueError, match="equal, non-empty"):
        accuracy(predicted, expected)


def test_few_shot_messages_structure() -> None:
    examples = [("spam", "Win money"), ("ham", "Lunch at 1?")]

    messages = few_shot_messages("Label it.", examples, "Free prize!")

    assert messages == [
        {"role": "system", "content": "Label it."},
        {"role": "user", "content": "Win money"},
        {"role": "assistant", "content": "spam"},
        {"role": "user", "content": "Lunch at 1?"},
        {"role": "assistant", "content": "ham"},
        {"role": "user", "content": "Free prize!"},
    ]


def test_few_shot_messages_zero_shot_has_system_and_user() -> None:
    messages = few_shot_messages("Label it.", [], "Free prize!")

    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[-1]["content"] == "Free prize!"


def test_shared_prefix_length_leaves_one_token_per_sequence() -> None:
    a, b = torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 9])

    assert _shared_prefix_length([a, b]) == 2
    assert _shared_prefix_length([a, a.clone()]) == 3  # not 4: one token must remain
    assert _shared_prefix_length([b]) == 2
    assert _shared_prefix_length([a, torch.tensor([7, 2])]) == 0


# --- encode_prompt, next_token_logits, generate on the tiny model


def test_next_token_logits_shape_and_values(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    torch.manual_seed(0)

    logits = next_token_logits(model, tokenizer, "hello")

    assert logits.shape == (97,)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    ids = tokenizer("hello")["input_ids"]
    torch.testing.assert_close(logits, model(input_ids=ids).logits[0, -1].detach())


def test_encode_prompt_counts_room_against_context(tiny_llama) -> None:
    model, tokenizer = tiny_llama  # context of 64 positions

    ids = encode_prompt(model, tokenizer, "x" * 60, room=4)

    assert ids.shape == (1, 60)
    with pytest.raises(ValueError, match="has 60 tokens and 5 more.*holds 64"):
        encode_prompt(model, tokenizer, "x" * 60, room=5)


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_encode_prompt_rejects_empty_prompt(tiny_llama, prompt: str) -> None:
    model, tokenizer = tiny_llama
    with pytest.raises(ValueError, match="empty"):
        encode_prompt(model, tokenizer, prompt)


def test_generate_rejects_bad_arguments_before_running(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    with pytest.raises(ValueError, match="greedy"):
        generate(model, tokenizer, "hi", temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tokenizer, "hi", max_new_tokens=-1)
    with pytest.raises(ValueError, match="greedy"):
        next_token_probs(None, None, "hi", temperature=-0.5)  # model never touched
    with pytest.raises(TypeError, match="whole number"):
        generate(model, tokenizer, "hi", max_new_tokens=2.5)
    with pytest.raises(TypeError, match="number"):
        generate(model, tokenizer, "hi", temperature="hot")


@pytest.mark.parametrize(
    ("prompt", "error"),
    [(None, TypeError), (42, TypeError), ([], ValueError), (["hi"], ValueError)],
)
def test_encode_prompt_rejects_prompts_of_the_wrong_kind(
    tiny_llama, prompt: object, error: type
) -> None:
    model, tokenizer = tiny_llama
    with pytest.raises(error, match="prompt"):
        encode_prompt(model, tokenizer, prompt)


def test_generate_greedy_on_tiny_model_is_deterministic(tiny_llama) -> None:
    model, tokenizer = tiny_llama

    first = generate(model, tokenizer, "abc", max_new_tokens=6)
    second = generate(model, tokenizer, "abc", max_new_tokens=6)

    assert first == second
    assert 0 < len(first) <= 6


# --- the real SmolLM2 (slow)


@pytest.mark.slow
@pytest.mark.parametrize("chat", [False, True])
def test_next_token_logits_empty_prompt_raises(smollm2, chat: bool) -> None:
    model, tokenizer = smollm2
    with pytest.raises(ValueError, match="empty"):
        next_token_logits(model, tokenizer, "  ", chat=chat)


@pytest.mark.slow
def test_generate_prompt_longer_than_context_raises(smollm2) -> None:
    model, tokenizer = smollm2
    prompt = "word " * 9000
    n_tokens = len(tokenizer(prompt)["input_ids"])
    assert n_tokens > 8192

    with pytest.raises(ValueError) as info:
        generate(model, tokenizer, prompt, max_new_tokens=5)

    assert f"{n_tokens} tokens" in str(info.value)
    assert "8192" in str(info.value)


@pytest.mark.slow
def test_encode_prompt_accepts_exactly_full_context(smollm2) -> None:
    model, tokenizer = smollm2
    prompt = "word " * 100
    n_tokens = len(tokenizer(prompt)["input_ids"])

    ids = encode_prompt(model, tokenizer, prompt, room=8192 - n_tokens)

    assert ids.shape == (1, n_tokens)
    with pytest.raises(ValueError, match="8192"):
        encode_prompt(model, tokenizer, prompt, room=8193 - n_tokens)


@pytest.mark.slow
def test_generate_zero_new_tokens_returns_empty(smollm2) -> None:
    model, tokenizer = smollm2
    assert generate(model, tokenizer, "Hello", max_new_tokens=0) == ""


@pytest.mark.slow
def test_generate_greedy_chat_answers_paris(smollm2) -> None:
    model, tokenizer = smollm2

    answer = generate(model, tokenizer, CAPITAL_QUESTION, chat=True)

    assert answer == "The capital of France is Paris."


@pytest.mark.slow
def test_generate_greedy_repeats_and_seeds_control_sampling(smollm2) -> None:
    model, tokenizer = smollm2
    prompt, n = "Once upon a time", 12

    greedy = [generate(model, tokenizer, prompt, n, temperature=0) for _ in range(2)]
    seed_1 = [generate(model, tokenizer, prompt, n, 1.0, seed=1) for _ in range(2)]
    seed_2 = generate(model, tokenizer, prompt, n, 1.0, seed=2)

    assert greedy[0] == greedy[1]
    assert seed_1[0] == seed_1[1]
    assert seed_1[0] != seed_2


@pytest.mark.slow
def test_next_token_probs_temperature_zero_is_one_hot(smollm2) -> None:
    model, tokenizer = smollm2

    probs = next_token_probs(model, tokenizer, "The capital of France is", 0)
    logits = next_token_logits(model, tokenizer, "The capital of France is")

    assert probs.shape == (model.config.vocab_size,)
    assert probs.sum().item() == 1.0 and probs.max().item() == 1.0
    assert int(probs.argmax()) == int(logits.argmax())
    assert top_tokens(probs, tokenizer, k=1) == [(" Paris", 1.0)]


class _LogitRecorder:
    """Wraps a model and keeps the last position's logits of every call."""

    def __init__(self, model) -> None:
        self.model, self.last_logits = model, []

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, **kwargs):
        out = self.model(**kwargs)
        self.last_logits.append(out.logits[0, -1])  # (V,)
        return out


def _full_prompt_logits(model, tokenizer, texts, instruction, examples):
    """Reference: one full forward pass per prompt, no shared-prefix cache."""
    logits = []
    for text in texts:
        messages = few_shot_messages(instruction, examples, text)
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits[0, -1])  # (V,)
    return torch.stack(logits)  # (N, V)


@pytest.mark.slow
@pytest.mark.parametrize("examples", [[], REVIEW_EXAMPLES], ids=["zero", "few"])
def test_classify_by_prompt_cache_matches_full_prompts(smollm2, examples) -> None:
    model, tokenizer = smollm2
    labels = ("positive", "negative")
    first = [tokenizer.encode(label, add_special_tokens=False)[0] for label in labels]
    recorder = _LogitRecorder(model)

    got = classify_by_prompt(
        recorder, tokenizer, REVIEWS, labels, SENTIMENT_INSTRUCTION, examples
    )

    full = _full_prompt_logits(
        model, tokenizer, REVIEWS, SENTIMENT_INSTRUCTION, examples
    )
    cached = torch.stack(recorder.last_logits[1:])  # call 0 ran the shared prefix
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    expected = [labels[i] for i in full[:, first].argmax(-1).tolist()]
    assert got == expected
    assert set(expected) == set(labels)  # both labels occur, so order matters


@pytest.mark.slow
def test_classify_by_prompt_rejects_labels_with_same_first_token(smollm2) -> None:
    model, tokenizer = smollm2
    with pytest.raises(ValueError, match="same token"):
        classify_by_prompt(
            model, tokenizer, ["Win now"], ("spam", "spaghetti"), SPAM_INSTRUCTION
        )
