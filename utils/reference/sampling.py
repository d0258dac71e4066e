"""Turning next-token logits into text: temperature, top-k, top-p and the loop.

One step of generation reads the logits of the last position, reshapes the
distribution (temperature), cuts its tail (top-k, top-p), draws a token and appends
it; `generate` repeats that step, feeding the model at most its context length.
"""

import math
import numbers
from typing import Any

import torch
from torch import nn


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row and set the others to -inf.

    Args:
        logits: (..., V), e.g. (B, V).
        k: how many tokens survive per row; a k larger than V keeps all of them.

    Returns:
        A new tensor of the same shape: exactly k finite entries per row (ties at
        the cut are broken by `torch.topk`).

    Raises:
        ValueError: k is not a whole number >= 1.

    Introduced in chapter 5.
    """
    _check_whole(k, "top_k", "top_k=None switches the filter off")
    k = min(k, logits.size(-1))
    top_values, top_indices = torch.topk(logits, k, dim=-1)  # (..., k) each
    filtered = torch.full_like(logits, float("-inf"))
    return filtered.scatter(-1, top_indices, top_values)  # (..., V)


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose
    probabilities add up to at least p, and set the others to -inf.

    Args:
        logits: (..., V), e.g. (B, V).
        p: the probability mass to keep, in (0, 1]; 1 keeps everything.

    Returns:
        A new tensor of the same shape. The most likely token always survives, even
        when its own probability exceeds p.

    Raises:
        ValueError: p is not a number in (0, 1].

    Introduced in chapter 5.
    """
    _check_top_p(p)
    if p == 1.0:
        return logits.clone()

    # 1) sort each row from most to least likely and accumulate the probabilities
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ahead

    # 2) a token is dropped once the tokens ahead of it already reach p; the first
    # token has nothing ahead of it, so it always stays
    drop_sorted = mass_before >= p  # (..., V), in sorted order
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row from next-token logits.

    The steps run in the order of `transformers`: divide by the temperature, keep the
    top k, keep the top-p nucleus, softmax, draw.

    Args:
        logits: (B, V) for a batch, or (V,) for one sequence.
        temperature: > 1 flattens the distribution, < 1 sharpens it, 0 picks the
            most likely token (greedy decoding, no randomness).
        top_k: keep only the k most likely tokens; None keeps all.
        top_p: keep only the nucleus of probability mass p; None keeps all.
        generator: a seeded `torch.Generator` for repeatable draws.

    Returns:
        The chosen token ids, int64: (B, 1) for (B, V) logits, (1,) for (V,).

    Raises:
        ValueError: logits are not 1-D or 2-D, temperature < 0, or top_k/top_p is
            out of range.

    Introduced in chapter 5.
    """
    if logits.dim() not in (1, 2):
        raise ValueError(
            f"logits must be (B, V) or (V,), got {tuple(logits.shape)}; for model "
            "output (B, T, V) take the last position, logits[:, -1, :]"
        )
    _check_temperature(temperature)
    if temperature == 0:
        # the argmax survives any top-k or top-p filter, so they change nothing
        return logits.argmax(dim=-1, keepdim=True)

    logits = logits / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V), 0 where filtered
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend each sequence by `max_new_tokens` sampled tokens.

    Each step feeds the model only the last `context_length` tokens, so both the
    prompt and the output may be longer than the context. The model runs in eval
    mode (no dropout) without gradients; afterwards every submodule gets back the
    train/eval mode it had.

    Args:
        model: a language model whose forward takes (B, T) ids and returns logits
            (B, T, V), a tuple starting with them (our GPT), or an object with
            `.logits` (`transformers`); its context length is read from
            `model.context_length` or its config.
        idx: the prompt, (B, T) token ids with T >= 1.
        max_new_tokens: how many tokens to add; 0 returns the prompt.
        temperature: 0 decodes greedily, see `sample_next_token`.
        top_k: keep only the k most likely tokens at each step; None keeps all.
        top_p: keep only the nucleus of mass p at each step; None keeps all.
        generator: a seeded `torch.Generator` for repeatable samples.

    Returns:
        (B, T + max_new_tokens): the prompt followed by the new tokens.

    Raises:
        ValueError: idx is not (B, T) integer ids, max_new_tokens < 0, or the
            sampling settings are out of range.

    Introduced in chapter 5.
    """
    _check_prompt(idx)
    _check_whole(max_new_tokens, "max_new_tokens", "use 0 to add nothing", minimum=0)
    _check_temperature(temperature)
    if top_k is not None:
        _check_whole(top_k, "top_k", "top_k=None switches the filter off")
    if top_p is not None:
        _check_top_p(top_p)
    context_length = _context_length(model)

    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        for _ in range(max_new_tokens):
            window = idx[:, -context_length:]  # (B, T) -> (B, <= context_length)
            logits = _logits_of(model(window))[:, -1, :]  # (B, T', V) -> (B, V)
            next_id = sample_next_token(logits, temperature, top_k, top_p, generator)
            idx = torch.cat([idx, next_id.to(idx.dtype)], dim=1)  # (B, T + 1)
    finally:
        for module, training in modes.items():
            module.training = training
    return idx


def _check_whole(value: Any, name: str, hint: str, minimum: int = 1) -> None:
    """Raise a ValueError unless value is a whole number >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, got {value!r}; {hint}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}; {hint}")


def _check_top_p(p: Any) -> None:
    """Raise a ValueError unless p is a probability in (0, 1]."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 < p <= 1.0:
        raise ValueError(
            f"top_p must be a probability in (0, 1], got {p!r}; 1.0 keeps every "
            "token and top_p=None switches the filter off"
        )


def _check_temperature(temperature: Any) -> None:
    """Raise a ValueError unless temperature is a finite number >= 0."""
    is_number = isinstance(temperature, numbers.Real) and not isinstance(
        temperature, bool
    )
    if not is_number or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(
            f"temperature must be a finite number >= 0, got {temperature!r}; use 0 "
            "for greedy decoding (always the most likely token) and 1 for the "
            "model's own distribution"
        )


def _check_prompt(idx: Any) -> None:
    """Raise a ValueError unless idx is a (B, T) integer tensor with B, T >= 1."""
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
        kind = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(
            f"idx must be a tensor of token ids (int64 or int32), got {kind}; "
            "encode the text first, e.g. torch.tensor([ids])"
        )
    if idx.dim() != 2 or idx.numel() == 0:
        raise ValueError(
            f"idx must have shape (B, T) with B, T >= 1, got {tuple(idx.shape)}; "
            "for a single prompt use idx[None]"
        )


def _context_length(model: nn.Module) -> int:
    """The longest input the model takes: ours, or a `transformers` config's."""
    if hasattr(model, "context_length"):
        return int(model.context_length)
    config = getattr(model, "config", None)
    for name in ("context_length", "n_positions", "max_position_embeddings"):
        if hasattr(config, name):
            return int(getattr(config, name))
    raise ValueError(
        f"cannot tell the context length of {type(model).__name__}; give it a "
        "`context_length` attribute"
    )


def _logits_of(output: Any) -> torch.Tensor:
    """The (B, T, V) logits from a model's output: a tensor, a tuple, or `.logits`."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        return output[0]
    return output.logits
