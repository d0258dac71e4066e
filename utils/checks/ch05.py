"""Exercise checks for chapter 05 (A GPT from scratch): the generation loop (5.1) and
top-p filtering (5.2).

Exercise 5.1 runs the learner's `generate` on a small random GPT whose logits are far
from uniform, with a seeded generator: greedy runs must give the reference's tokens,
and sampled runs the reference's draws, since both draw with `torch.multinomial` from
the same probabilities and the same generator state.
"""

from dataclasses import dataclass
from typing import Any

import torch

from utils.checks.core import Case, Exercise, compare_tensors, format_value, register
from utils.reference.gpt import GPT, GPTConfig
from utils.reference.sampling import filter_top_k, filter_top_p, generate

CONTEXT = 6  # the checker's model reads at most 6 tokens, so crops show quickly
VOCAB = 16  # V of the checker's model
WEIGHT_STD = 0.4  # every weight of the checker's model: large enough for sharp logits
# with this seed, each plausible mistake changes the ids of at least one case
MODEL_SEED = 3

_CROP = (
    "feed the model only the last context_length tokens at every step: "
    "window = idx[:, -model.context_length:]. The output itself may grow longer"
)
_NEW_AXIS = (
    "append each step's ids, shape (B, 1), along the time axis: "
    "idx = torch.cat([idx, next_id], dim=1). argmax(dim=-1, keepdim=True) and "
    "torch.multinomial(probs, num_samples=1) both give (B, 1)"
)
_GREEDY = (
    "temperature 0 means greedy decoding: take logits.argmax(dim=-1, keepdim=True) "
    "instead of dividing by 0 and sampling"
)
_GENERATOR = (
    "pass the generator on, torch.multinomial(probs, num_samples=1, "
    "generator=generator), so that a seeded run repeats"
)
_SAMPLE = (
    "with temperature > 0, draw from softmax(logits / temperature) with "
    f"torch.multinomial; {_GENERATOR}"
)
_TOP_K = "apply filter_top_k(logits, top_k) after dividing by the temperature"
_NUCLEUS = (
    "sort the probabilities in decreasing order, add them up, and keep a token "
    "while the mass of the tokens before it is below p"
)
_BY_HAND = (
    "sorted, the probabilities are 0.5, 0.3, 0.15, 0.05 with running sums 0.5, 0.8, "
    "0.95, 1.0: the nucleus for p = 0.75 is {0.5, 0.3}, ids 1 and 3, because the "
    "token that crosses p stays"
)
_TOP_STAYS = "the most likely token always stays, even when its own probability > p"
_LAST_AXIS = (
    "work along the last axis throughout: torch.sort(..., dim=-1), softmax and cumsum "
    "over dim=-1, and scatter back along dim=-1"
)


class SeededGenerator(torch.Generator):
    """A `torch.Generator` that shows how it was seeded in the checker's messages.

    Introduced in chapter 5.
    """

    def __new__(cls, seed: int) -> "SeededGenerator":
        # torch.Generator.__new__ reads its first argument as a device
        return super().__new__(cls)

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.manual_seed(seed)

    def __repr__(self) -> str:
        return f"torch.Generator().manual_seed({self.seed})"


@dataclass(frozen=True)
class GenerationAnswer:
    """The settings of one case of exercise 5.1 and the ids it must return.

    Introduced in chapter 5.
    """

    model: GPT  # in eval mode, context_length = CONTEXT
    prompt: torch.Tensor  # (B, T) int64
    max_new_tokens: int
    temperature: float
    top_k: int | None
    seed: int  # the seed of the case's generator
    output: torch.Tensor  # (B, T + max_new_tokens) int64, the reference's answer

    def __repr__(self) -> str:
        return format_value(self.output)


def generation_cases() -> list[Case]:
    """Build the cases of exercise 5.1: greedy, sampling, filters, long prompts.

    Returns:
        Seven cases, each calling generate(model, idx, max_new_tokens,
        temperature=..., top_k=..., generator=...) with a fresh seeded generator.

    Introduced in chapter 5.
    """
    specs = [
        # seed, name, (B, T), max_new_tokens, temperature, top_k, hint
        (1, "greedy", (1, 3), 3, 0.0, None, _GREEDY),
        (2, "sampling at temperature 1", (1, 2), 4, 1.0, None, _SAMPLE),
        (4, "a batch of 2, temperature 2", (2, 2), 4, 2.0, None, _SAMPLE),
        (3, "temperature 0.5, top-k 3", (1, 3), 3, 0.5, 3, _TOP_K),
        (5, "prompt longer than the context", (1, 8), 3, 0.0, None, _CROP),
        (6, "running past the context", (2, 4), 6, 1.5, 5, _CROP),
        (7, "no new tokens", (2, 3), 0, 1.0, None, "return the prompt unchanged"),
    ]
    model = case_model(MODEL_SEED)
    return [_generation_case(model, *spec) for spec in specs]


def case_model(seed: int = MODEL_SEED) -> GPT:
    """The checker's GPT: 2 layers, D=16, V=16, context 6, weights N(0, 0.4^2).

    Large random weights give sharp, position-dependent logits, so that mistakes
    (no temperature, the wrong position, the wrong crop) change the tokens.

    Introduced in chapter 5.
    """
    config = GPTConfig(
        vocab_size=VOCAB, context_length=CONTEXT, n_layers=2, n_heads=2, d_model=16
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # leave the learner's random state alone
        torch.manual_seed(seed)
        model = GPT(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(WEIGHT_STD * noise)
    return model


def compare_generation(expected: GenerationAnswer, actual: Any) -> str | None:
    """Say how the learner's ids differ from the reference's, or return None.

    Args:
        expected: the case's settings and the right ids.
        actual: what the learner's generate returned.

    Returns:
        A one-line description of the first difference, or None.

    Introduced in chapter 5.
    """
    if isinstance(actual, torch.Tensor) and actual.is_floating_point():
        return f"expected token ids (torch.int64), got dtype {actual.dtype}"
    return compare_tensors(expected.output, actual)


def diagnose_generation(case: Case, actual: Any) -> str | None:
    """Recognise a plausible generation-loop mistake from wrong ids.

    Args:
        case: the case that failed; its expected value is a `GenerationAnswer`.
        actual: what the learner's generate returned.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 5.
    """
    answer: GenerationAnswer = case.expected
    if not isinstance(actual, torch.Tensor):
        return None
    if actual.is_floating_point():
        return "keep the ids integers: argmax and torch.multinomial give int64 ids"
    shape_hint = _generation_shape_hint(answer, actual)
    if shape_hint is not None:
        return shape_hint
    actual = actual.detach().cpu().long()
    prompt_len = answer.prompt.size(1)
    if not torch.equal(actual[:, :prompt_len], answer.prompt):
        return "return the prompt followed by the new ids; the prompt comes unchanged"
    for mistake, hint in _GENERATION_MISTAKES:
        candidate = generation_variant(answer, mistake)
        if candidate is None or torch.equal(candidate, answer.output):
            continue  # this case cannot tell that mistake from the right answer
        if torch.equal(candidate, actual):
            return hint.format(t=answer.temperature, k=answer.top_k)
    sampled = answer.temperature > 0 and answer.max_new_tokens > 0
    untouched = torch.Generator().manual_seed(answer.seed).get_state()
    if sampled and torch.equal(case.kwargs["generator"].get_state(), untouched):
        return f"your loop never draws from the generator it is given: {_GENERATOR}"
    return None


def explain_generation_error(case: Case, err: Exception) -> str | None:
    """Recognise a plausible generation-loop mistake from the exception it raised.

    Args:
        case: the case that failed.
        err: what the learner's generate raised.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 5.
    """
    text = str(err)
    answer: GenerationAnswer = case.expected
    if "exceeds context_length" in text:
        return _CROP
    if "must match" in text or "same number of dimensions" in text:
        return _NEW_AXIS
    if answer.temperature == 0 and (
        isinstance(err, ZeroDivisionError) or "probability tensor" in text
    ):
        return _GREEDY
    if "tuple" in text:
        return "the course's GPT returns (logits, loss): write logits, _ = model(idx)"
    if "prob_dist must be 1 or 2 dim" in text:
        return (
            "take the last position's logits, logits[:, -1, :] with shape (B, V), "
            "before the softmax and the draw"
        )
    if "token ids" in text:
        return "keep the ids integers: argmax and torch.multinomial give int64 ids"
    return None


def generation_variant(
    answer: GenerationAnswer, mistake: str = ""
) -> torch.Tensor | None:
    """The ids a generation loop with one plausible `mistake` returns on a case.

    Args:
        answer: the case's settings.
        mistake: "" for the right loop, or one of the names in `_GENERATION_MISTAKES`.

    Returns:
        (B, T + max_new_tokens) int64 ids, or None when that loop would raise (a
        softmax over the wrong axis can leave a row of NaN to draw from).

    Introduced in chapter 5.
    """
    try:
        return _generation_loop(answer, mistake)
    except RuntimeError:
        return None


def _generation_loop(answer: GenerationAnswer, mistake: str) -> torch.Tensor:
    """The loop of `generation_variant`."""
    idx = answer.prompt.clone()
    generator = torch.Generator().manual_seed(answer.seed)
    with torch.no_grad():
        for _ in range(answer.max_new_tokens):
            if mistake == "crop_first":
                window = idx[:, :CONTEXT]
            else:
                window = idx[:, -CONTEXT:]  # (B, <= context_length)
            logits, _ = answer.model(window)  # (B, T', V)
            logits = logits[:, 0 if mistake == "first_position" else -1]  # (B, V)
            next_id = _pick(logits, answer, mistake, generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)  # (B, T + 1)
    return idx


def _pick(
    logits: torch.Tensor,
    answer: GenerationAnswer,
    mistake: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """One step's ids, (B, 1), as a loop with `mistake` chooses them."""
    temperature = answer.temperature
    if mistake == "always_argmax" or (temperature == 0 and mistake != "sample_at_0"):
        return logits.argmax(dim=-1, keepdim=True)
    temperature = temperature or 1.0  # "sample_at_0": sampling as if at 1
    if mistake == "multiply":
        logits = logits * temperature
    elif mistake != "no_temperature":
        logits = logits / temperature
    if answer.top_k is not None and mistake != "no_top_k":
        logits = filter_top_k(logits, answer.top_k)
    probs = torch.softmax(logits.float(), dim=0 if mistake == "softmax_dim_0" else -1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


_GENERATION_MISTAKES = [
    (
        "always_argmax",
        "you take the argmax although the temperature is {t}: argmax is for "
        "temperature 0 only; otherwise sample with torch.multinomial",
    ),
    ("sample_at_0", _GREEDY),
    (
        "crop_first",
        "you keep the first context_length tokens; keep the last ones, "
        "idx[:, -model.context_length:], which end where the next token goes",
    ),
    (
        "first_position",
        "you use the logits of the first position; the next token is scored by the "
        "last one, logits[:, -1, :]",
    ),
    (
        "no_temperature",
        "your draws do not follow the temperature ({t}): divide the logits by it "
        "before the softmax, not the probabilities after it",
    ),
    (
        "multiply",
        "you multiply the logits by the temperature ({t}); divide them by it",
    ),
    (
        "no_top_k",
        "your draws ignore top_k={k}: apply filter_top_k(logits, top_k) before the "
        "softmax",
    ),
    (
        "softmax_dim_0",
        "your softmax runs over the batch axis (dim=0); each row of the (B, V) logits "
        "is one distribution: softmax over dim=-1",
    ),
]


def _generation_case(
    model: GPT,
    seed: int,
    name: str,
    batch_and_len: tuple[int, int],
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    hint: str,
) -> Case:
    """One case of exercise 5.1 with the reference's answer."""
    prompt = torch.randint(0, VOCAB, batch_and_len, generator=_seeded(100 + seed))
    output = generate(
        model,
        prompt,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        generator=_seeded(seed),
    )
    answer = GenerationAnswer(
        model, prompt, max_new_tokens, temperature, top_k, seed, output
    )
    kwargs = {
        "temperature": temperature,
        "top_k": top_k,
        "generator": SeededGenerator(seed),
    }
    return Case(name, (model, prompt.clone(), max_new_tokens), answer, hint, kwargs)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _generation_shape_hint(
    answer: GenerationAnswer, actual: torch.Tensor
) -> str | None:
    """A hint when the returned ids have the wrong shape, else None."""
    batch_size, prompt_len = answer.prompt.shape
    n_new = answer.max_new_tokens
    if actual.shape == answer.output.shape:
        return None
    if actual.shape == (batch_size, n_new):
        return "return the prompt followed by the new ids, not the new ids alone"
    if actual.dim() == 2 and actual.size(0) == batch_size + n_new:
        return f"the new ids went onto the batch axis: {_NEW_AXIS}"
    if actual.shape == (batch_size, prompt_len):
        return "the prompt came back without new ids: append each step's ids to idx"
    return (
        f"the output should have shape (B, T + max_new_tokens) = "
        f"{tuple(answer.output.shape)}"
    )


# --- exercise 5.2: top-p filtering


def top_p_cases() -> list[Case]:
    """Build the cases of exercise 5.2, from a by-hand example to (B, T, V) logits.

    Returns:
        Six cases of filter_top_p(logits, p).

    Introduced in chapter 5.
    """
    generator = _seeded(0)
    by_hand = torch.tensor([0.15, 0.5, 0.05, 0.3]).log()  # shuffled: sorting matters
    batch = 2 * torch.randn(3, 6, generator=generator)
    peaked_and_flat = torch.stack(
        [torch.linspace(6, 0, 10), torch.linspace(0.5, 0, 10)]
    )[:, torch.randperm(10, generator=generator)]
    three_d = 2 * torch.randn(2, 2, 8, generator=generator)
    specs = [
        ("by hand, p = 0.75", by_hand, 0.75, _BY_HAND),
        ("the top token alone exceeds p", by_hand, 0.4, _TOP_STAYS),
        ("a batch of rows", batch, 0.7, "each row has its own nucleus"),
        ("p = 1 keeps everything", batch, 1.0, "with p = 1 every token stays"),
        ("a peaked and a flat row", peaked_and_flat, 0.9, _NUCLEUS),
        ("logits (B, T, V)", three_d, 0.6, _LAST_AXIS),
    ]
    return [
        Case(name, (logits, p), filter_top_p(logits, p), hint)
        for name, logits, p, hint in specs
    ]


def diagnose_top_p(case: Case, actual: Any) -> str | None:
    """Recognise a plausible top-p mistake from a wrong output.

    Args:
        case: the case that failed; its args are (logits, p).
        actual: what the learner's filter_top_p returned.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 5.
    """
    logits, p = case.args
    expected = case.expected
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return "return a tensor of the same shape as logits (..., V)"
    actual = actual.detach().cpu().float()
    if torch.isneginf(actual).all(dim=-1).any():
        return f"a row has no token left: {_TOP_STAYS}"
    if _same(actual, expected.masked_fill(expected.isneginf(), 0.0)):
        return "set the removed logits to -inf, not 0: softmax(0) is not 0"
    finite = torch.isfinite(actual).all()
    if finite and actual.min() >= 0 and actual.max() <= 1 and (logits < 0).any():
        return "return filtered logits (with -inf), not probabilities"
    for mistake, hint in _TOP_P_MISTAKES:
        candidate = top_p_variant(logits, p, mistake)
        if not _same(candidate, expected) and _same(actual, candidate):
            return hint
    return None


def top_p_variant(logits: torch.Tensor, p: float, mistake: str = "") -> torch.Tensor:
    """What filter_top_p with one plausible `mistake` returns.

    Args:
        logits: (..., V).
        p: the nucleus mass.
        mistake: "" for the right answer, or one of the names in `_TOP_P_MISTAKES`.

    Returns:
        (..., V) logits with -inf outside the (mistaken) nucleus.

    Introduced in chapter 5.
    """
    if mistake == "unsorted":
        order = torch.arange(logits.size(-1)).expand(logits.shape)
        sorted_logits = logits
    else:
        descending = mistake != "ascending"
        sorted_logits, order = torch.sort(logits, dim=-1, descending=descending)
    probs = torch.softmax(sorted_logits, dim=0 if mistake == "softmax_dim_0" else -1)
    total = torch.cumsum(probs, dim=-1)
    if mistake == "crossing_dropped":
        drop = total > p
    elif mistake == "inverted":
        drop = (total - probs) < p
    else:
        drop = (total - probs) >= p  # mass of the tokens before reaches p
    if mistake == "sorted_order":
        return sorted_logits.masked_fill(drop, float("-inf"))
    drop = torch.zeros_like(drop).scatter(-1, order, drop)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


_TOP_P_MISTAKES = [
    (
        "crossing_dropped",
        "you drop the token whose probability carries the running sum up to p or past "
        "it; that token stays: keep a token while the mass of the tokens BEFORE it is "
        "below p, (cumsum - probs) < p",
    ),
    (
        "unsorted",
        "the running sum must go over the tokens sorted from most to least likely: "
        "torch.sort(logits, dim=-1, descending=True) first",
    ),
    (
        "ascending",
        "you sort from least to most likely; the nucleus holds the MOST likely "
        "tokens: torch.sort(..., descending=True)",
    ),
    (
        "softmax_dim_0",
        "your softmax runs over dim=0; each row over the last axis is one "
        "distribution: softmax over dim=-1",
    ),
    (
        "sorted_order",
        "you return the logits in sorted order; put them back in vocabulary order: "
        "scatter the sorted mask with the permutation torch.sort returned",
    ),
    (
        "inverted",
        "your mask is inverted: you keep the tail and remove the nucleus",
    ),
]


def _same(actual: torch.Tensor, candidate: torch.Tensor) -> bool:
    """Whether two filtered logits agree, -inf included."""
    if actual.shape != candidate.shape:
        return False
    got, want = actual.double(), candidate.double()
    return bool(torch.isclose(got, want, rtol=1e-4, atol=1e-5).all())


GENERATION_LOOP = register(
    Exercise(
        id="5.1",
        title="The generation loop",
        cases=generation_cases,
        compare=compare_generation,
        diagnose=diagnose_generation,
        explain_error=explain_generation_error,
    )
)
TOP_P = register(
    Exercise(
        id="5.2",
        title="Top-p filtering",
        cases=top_p_cases,
        diagnose=diagnose_top_p,
        keep_inputs=True,  # the caller's tensors must come back unchanged
    )
)
