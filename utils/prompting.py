"""Talking to a pretrained causal language model: next-token probabilities, text
generation, chat, and classification by prompting.

Chapter 1 uses these to look at SmolLM2 from the outside. The sampling loop itself is
built by hand in chapter 5; here `transformers` does the decoding.
"""

import copy
import math
import numbers
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict[str, str]]


def _context_length(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048))


def check_temperature(temperature: float) -> None:
    """Reject a negative temperature with a message that says what 0 means.

    Raises:
        TypeError: `temperature` is not a number.
        ValueError: `temperature` is below 0, NaN or infinite.

    Introduced in chapter 1.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(
            "temperature must be a number such as 0.7, got "
            f"{type(temperature).__name__}"
        )
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number, got {temperature}")
    if temperature < 0:
        raise ValueError(
            f"temperature must be >= 0, got {temperature}; use 0 for greedy decoding "
            "(always the most likely token) and 1 for the model's own distribution"
        )


def encode_prompt(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Messages,
    chat: bool = False,
    room: int = 0,
) -> torch.Tensor:
    """Token ids of a prompt, checked against the model's context.

    Args:
        prompt: plain text, or a list of `{"role": ..., "content": ...}` messages.
        chat: wrap a plain-text prompt as one user message in the chat template.
        room: how many new tokens must still fit after the prompt.

    Returns:
        (1, T) token ids on the model's device.

    Raises:
        TypeError: the prompt is neither a string nor a list of messages.
        ValueError: the prompt is empty, or with `room` it exceeds the context.

    Introduced in chapter 1.
    """
    if not isinstance(prompt, (str, list)):
        raise TypeError(
            "the prompt must be a string, or a list of {'role': ..., 'content': ...} "
            f"messages; got {type(prompt).__name__}"
        )
    if isinstance(prompt, list) and not (
        prompt and all(isinstance(m, dict) and "content" in m for m in prompt)
    ):
        raise ValueError(
            "a chat prompt is a non-empty list of {'role': ..., 'content': ...} dicts"
        )
    if isinstance(prompt, str) and not prompt.strip():
        raise ValueError(
            "the prompt is empty; type at least one word for the model to continue"
        )
    if chat or not isinstance(prompt, str):
        messages = (
            [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        )
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    limit = _context_length(model)
    if ids.shape[1] + room > limit:
        raise ValueError(
            f"the prompt has {ids.shape[1]} tokens and {room} more are wanted, but the "
            f"model's context holds {limit}; shorten the prompt or ask for fewer tokens"
        )
    return ids.to(model.device)


@torch.no_grad()
def next_token_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Messages,
    chat: bool = False,
) -> torch.Tensor:
    """The model's score (logit) for every possible next token after `prompt`.

    Args:
        chat: format a plain-text prompt with the chat template first.

    Returns:
        (V,) float32 logits on the CPU.

    Raises:
        ValueError: empty prompt, or a prompt longer than the context.

    Introduced in chapter 1.
    """
    ids = encode_prompt(model, tokenizer, prompt, chat=chat, room=1)
    return model(input_ids=ids).logits[0, -1].float().cpu()  # (V,)


def probs_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of `logits / temperature` over the last axis.

    Args:
        logits: (..., V) scores.
        temperature: 0 puts all probability on the largest logit (greedy); values
            above 1 flatten the distribution, values below 1 sharpen it.

    Returns:
        (..., V) probabilities.

    Raises:
        ValueError: temperature < 0.

    Introduced in chapter 1.
    """
    check_temperature(temperature)
    if temperature == 0:
        one_hot = torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1))
        return one_hot.to(logits.dtype)
    return torch.softmax(logits / temperature, dim=-1)


def next_token_probs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Messages,
    temperature: float = 1.0,
    chat: bool = False,
) -> torch.Tensor:
    """The model's probability for every possible next token after `prompt`.

    Args:
        temperature: see `probs_from_logits`; 0 means greedy.
        chat: format a plain-text prompt with the chat template first.

    Returns:
        (V,) probabilities that sum to 1, on the CPU.

    Raises:
        ValueError: empty prompt, prompt longer than the context, temperature < 0.

    Introduced in chapter 1.
    """
    check_temperature(temperature)
    return probs_from_logits(
        next_token_logits(model, tokenizer, prompt, chat), temperature
    )


def top_tokens(
    probs: torch.Tensor, tokenizer: PreTrainedTokenizerBase, k: int = 10
) -> list[tuple[str, float]]:
    """The `k` most likely tokens as `(text, probability)` pairs, most likely first.

    Args:
        probs: (V,) probabilities from `next_token_probs`.
        k: how many; clamped to the vocabulary size.

    Introduced in chapter 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    values, ids = probs.topk(min(k, probs.numel()))
    return [
        (tokenizer.decode([i]), v)
        for i, v in zip(ids.tolist(), values.tolist(), strict=True)
    ]


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Messages,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    chat: bool = False,
    seed: int | None = 0,
) -> str:
    """Continue `prompt` and return only the new text.

    Args:
        max_new_tokens: upper bound on the tokens added; generation also stops at
            the end-of-turn token.
        temperature: 0 decodes greedily (deterministic); above 0 samples.
        chat: format a plain-text prompt with the chat template first.
        seed: seeds the sampler so that a sampled answer repeats; None leaves it.

    Returns:
        The generated text without the prompt and special tokens.

    Raises:
        TypeError: the prompt, temperature or max_new_tokens has the wrong type.
        ValueError: empty prompt, too long a prompt, temperature < 0 or NaN,
            max_new_tokens < 0.

    Introduced in chapter 1.
    """
    check_temperature(temperature)
    if isinstance(max_new_tokens, bool) or not isinstance(
        max_new_tokens, numbers.Integral
    ):
        raise TypeError(
            f"max_new_tokens must be a whole number such as 40, got {max_new_tokens!r}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    ids = encode_prompt(model, tokenizer, prompt, chat=chat, room=max_new_tokens)
    if max_new_tokens == 0:
        return ""
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    # a private random stream: the notebook's own generator is left as it was
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.eos_token_id,
            **(sampling if temperature > 0 else {"do_sample": False}),
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def few_shot_messages(
    instruction: str, examples: Sequence[tuple[str, str]], text: str
) -> Messages:
    """A chat prompt: the instruction as system message, each example as a user turn
    answered by its label, then `text` as the last user turn.

    Args:
        examples: `(label, text)` pairs; empty for zero-shot prompting.

    Introduced in chapter 1.
    """
    messages = [{"role": "system", "content": instruction}]
    for label, example in examples:
        messages.append({"role": "user", "content": example})
        messages.append({"role": "assistant", "content": label})
    messages.append({"role": "user", "content": text})
    return messages


def _shared_prefix_length(sequences: list[torch.Tensor]) -> int:
    shortest = min(len(s) for s in sequences)
    length = 0
    while length < shortest - 1 and all(
        s[length] == sequences[0][length] for s in sequences
    ):
        length += 1
    return length


@torch.no_grad()
def classify_by_prompt(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str],
    instruction: str,
    examples: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """Label each text with the label whose first token the model finds most likely
    as the start of its answer (zero-shot without `examples`, few-shot with them).

    Every prompt starts with the same instruction and examples, so we run that shared
    prefix once and reuse its key/value cache for each text.

    Args:
        texts: the inputs to classify.
        labels: the answers allowed, e.g. `("ham", "spam")`, with different first
            tokens.
        instruction: the system message, which should name the labels.
        examples: `(label, text)` demonstrations shown before each text.

    Returns:
        One label per text.

    Introduced in chapter 1.
    """
    if not texts:
        return []
    if any(not label.strip() for label in labels):
        raise ValueError(f"labels must be non-empty words, got {list(labels)}")
    first = [tokenizer.encode(label, add_special_tokens=False)[0] for label in labels]
    if len(set(first)) != len(first):
        raise ValueError(
            f"labels {list(labels)} start with the same token; reword them"
        )
    prompts = [few_shot_messages(instruction, examples, text) for text in texts]
    ids = [encode_prompt(model, tokenizer, p)[0] for p in prompts]

    # 1) run the shared prefix once; 2) per text, continue from a copy of its cache
    n = _shared_prefix_length(ids)
    prefix = model(input_ids=ids[0][None, :n], use_cache=True).cache
    answers = []
    for seq in ids:
        out = model(
            input_ids=seq[None, n:], cache=copy.deepcopy(prefix), use_cache=True
        )
        scores = out.logits[0, -1, first]  # (n_labels,)
        answers.append(labels[int(scores.argmax())])
    return answers


def accuracy(predicted: Sequence[str], expected: Sequence[str]) -> float:
    """Share of positions where `predicted` equals `expected`.

    Introduced in chapter 1.
    """
    if len(predicted) != len(expected) or not expected:
        raise ValueError(
            f"need two equal, non-empty lists, got {len(predicted)} and {len(expected)}"
        )
    return sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)
