"""Exercise checks for chapter 04 (Multi-head attention and the block): 4.1 and 4.2.

Both exercises are classes. `check_exercise("4.1", MultiHeadAttention)` builds the
learner's class with each case's arguments, copies the reference's weights into it by
`state_dict` (so the submodule names must match), runs `forward` in eval mode and
compares the output with the reference's.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from utils.checks.core import Case, Exercise, compare_tensors, format_value, register
from utils.reference.attention import (
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)
from utils.reference.block import TransformerBlock

RTOL, ATOL = 1e-5, 1e-5  # float32 layers computed in another order still match
SHOWN_KEYS = 4  # how many missing or unexpected weight names a message lists

_MHA_NAMES = (
    "name the submodules q_proj, k_proj, v_proj and out_proj, each "
    "nn.Linear(d_model, d_model) with its bias (the default)"
)
_BLOCK_NAMES = (
    "name the submodules norm1, attn, norm2 and mlp: LayerNorm(d_model), "
    "MultiHeadAttention(d_model, n_heads), LayerNorm(d_model) and MLP(d_model, d_ff), "
    "all from utils.reference"
)
# the fallback hint of each case, used when no specific mistake is recognised
_ONE_HEAD = (
    "with one head this is chapter 3's attention between q_proj(x), k_proj(x) and "
    "v_proj(x), followed by out_proj"
)
_HEADS = (
    "split D into H heads: (B, T, D) -> view (B, T, H, Dh) -> transpose(1, 2) -> "
    "(B, H, T, Dh); attend per head; undo both steps to get (B, T, D); then out_proj"
)
_MASKED = "pass the mask on to the attention: it broadcasts against (B, H, T, T)"
_SIZES = "derive head_dim = d_model // n_heads from the arguments; hard-code no sizes"
_WIRING = (
    "pre-norm wiring: x = x + self.attn(self.norm1(x), mask=mask), then "
    "x = x + self.mlp(self.norm2(x))"
)
# hints for the mistakes that 4.1 recognises
_SPLIT = (
    "the heads are split along the wrong axis: view(B, H, T, Dh) straight from "
    "(B, T, D) cuts the sequence into H pieces. View as (B, T, H, Dh), then "
    "transpose(1, 2) to (B, H, T, Dh)"
)
_ORDER = (
    "the heads are concatenated in the wrong order: from (B, H, T, Dh), "
    "transpose(1, 2) to (B, T, H, Dh), then reshape to (B, T, D), so that head h "
    "fills columns h*Dh to (h+1)*Dh"
)
_NO_OUT_PROJ = (
    "the merged heads are never mixed: apply self.out_proj to the (B, T, D) result"
)
_NO_MASK = "the mask has no effect: pass it on to the attention"
_INVERTED = "the mask is inverted: True means 'may NOT look' (blocked)"
# hints for the wiring mistakes that 4.2 recognises
_POST_NORM = (
    "this is post-norm, as in the original Transformer: you normalise after adding "
    "the branch. Pre-norm normalises only the branch's input and adds its output to "
    "x unchanged: x = x + self.attn(self.norm1(x), mask=mask)"
)
_NO_RESIDUAL = (
    "a branch replaces x instead of adding to it: the residual connection is "
    "missing. Write x = x + self.attn(...) and x = x + self.mlp(...)"
)
_STREAM_NORM = (
    "you normalise the residual stream itself (x = self.norm1(x)) and add the branch "
    "to the normalised x. Keep x as it is and normalise only the branch input: "
    "x = x + self.attn(self.norm1(x), mask=mask)"
)


class ModuleAnswer(NamedTuple):
    """What a learner's module must return on one case, and the module that did.

    Introduced in chapter 4.
    """

    reference: nn.Module  # in eval mode; its weights are copied into the learner's
    x: torch.Tensor  # (B, T, D)
    mask: torch.Tensor | None  # bool, True where a query may NOT look
    output: torch.Tensor  # (B, T, D)

    def __repr__(self) -> str:
        mask = "" if self.mask is None else f", mask {tuple(self.mask.shape)}"
        returned = format_value(self.output)
        return f"forward(x {tuple(self.x.shape)}{mask}) returns {returned}"


@dataclass(frozen=True)
class _Run:
    """The outcome of running a learner's module on a case."""

    output: Any = None  # what forward returned, when it ran
    problem: str | None = None  # why it did not run
    error: Exception | None = None  # what forward raised, if it did


def mha_cases() -> list[Case]:
    """Build the cases of exercise 4.1: one head, several heads, masks, other sizes.

    Returns:
        Five cases, each building the learner's MultiHeadAttention(d_model, n_heads).

    Introduced in chapter 4.
    """
    keep = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])  # (B, S): 1 = real token
    sizes = {"d_model": 32, "n_heads": 4}
    narrow = {"d_model": 16, "n_heads": 8}  # head_dim 2
    specs = [
        ("one head", {"d_model": 8, "n_heads": 1}, (1, 4), None, _ONE_HEAD),
        ("4 heads", sizes, (2, 6), None, _HEADS),
        ("causal mask", sizes, (2, 6), causal_mask(6), _MASKED),
        ("padding mask", sizes, (2, 6), padding_mask(keep), _MASKED),
        ("8 heads of width 2", narrow, (3, 5), causal_mask(5), _SIZES),
    ]
    return [
        _module_case(MultiHeadAttention, seed, *spec) for seed, spec in enumerate(specs)
    ]


def block_cases() -> list[Case]:
    """Build the cases of exercise 4.2: no mask, a causal and a padding mask, sizes.

    Returns:
        Four cases, each building the learner's TransformerBlock(d_model, n_heads,
        d_ff), with random norm weights so that norm1 and norm2 differ.

    Introduced in chapter 4.
    """
    keep = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])  # (B, S): 1 = real token
    sizes = {"d_model": 32, "n_heads": 4, "d_ff": 64}
    other = {"d_model": 24, "n_heads": 2, "d_ff": 40}
    specs = [
        ("no mask", sizes, (2, 6), None, _WIRING),
        ("causal mask", sizes, (2, 6), causal_mask(6), _WIRING),
        ("padding mask", sizes, (2, 6), padding_mask(keep), _WIRING),
        ("other sizes", other, (1, 5), causal_mask(5), _SIZES),
    ]
    return [
        _module_case(TransformerBlock, seed, *spec) for seed, spec in enumerate(specs)
    ]


def compare_module(expected: ModuleAnswer, actual: Any) -> str | None:
    """Load the reference's weights into a learner's module, run it, compare outputs.

    Args:
        expected: the reference module, the input and the right output.
        actual: the learner's module, as built by the case's arguments.

    Returns:
        A one-line description of what went wrong, or None when the outputs match.

    Introduced in chapter 4.
    """
    run = _run_module(expected, actual)
    if run.problem is not None:
        return run.problem
    problem = compare_tensors(expected.output, run.output, rtol=RTOL, atol=ATOL)
    if problem is None:
        return None
    return f"forward's output: {problem.removeprefix('the output has ')}"


def diagnose_mha(case: Case, actual: Any) -> str | None:
    """Recognise a plausible multi-head attention mistake from a wrong module.

    Args:
        case: the case that failed.
        actual: the learner's module.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 4.
    """
    return _diagnose_module(case, actual, _MHA_NAMES, _mha_mistakes)


def diagnose_block(case: Case, actual: Any) -> str | None:
    """Recognise a plausible transformer-block mistake from a wrong module.

    Args:
        case: the case that failed.
        actual: the learner's module.

    Returns:
        A hint naming the mistake, or None when none is recognised.

    Introduced in chapter 4.
    """
    return _diagnose_module(case, actual, _BLOCK_NAMES, _block_mistakes)


def _module_case(
    cls: type[nn.Module],
    seed: int,
    name: str,
    sizes: dict[str, int],
    batch_and_len: tuple[int, int],
    mask: torch.Tensor | None,
    hint: str,
) -> Case:
    """One case: a seeded reference module, a random input and the right output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # leave the learner's random state alone
        torch.manual_seed(seed)
        reference = _randomise_norms(cls(**sizes), generator).eval()
    x = 2 * torch.randn(*batch_and_len, sizes["d_model"], generator=generator) + 1
    with torch.no_grad():
        output = reference(x, mask=mask)
    return Case(name, (), ModuleAnswer(reference, x, mask, output), hint, dict(sizes))


def _randomise_norms(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every norm random weights and biases, so that no two norms are alike."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.startswith("norm"):
                noise = torch.randn(parameter.shape, generator=generator)
                base = 1.0 if name.endswith("weight") else 0.0
                parameter.copy_(base + 0.5 * noise)
    return module


def _run_module(expected: ModuleAnswer, module: Any) -> _Run:
    """Copy the reference's weights into `module` and run it on the case's input."""
    if not isinstance(module, nn.Module):
        name = type(module).__name__
        return _Run(problem=f"expected an nn.Module instance, got {name}")
    problem = _load_weights(expected.reference, module)
    if problem is not None:
        return _Run(problem=problem)
    module.eval()
    kwargs = {} if expected.mask is None else {"mask": expected.mask}
    try:
        with torch.no_grad():
            output = module(expected.x.clone(), **kwargs)
    except Exception as err:
        return _Run(problem=f"forward raised {type(err).__name__}: {err}", error=err)
    return _Run(output=output)


def _load_weights(reference: nn.Module, module: nn.Module) -> str | None:
    """Load the reference's state_dict into `module`, or say why the names differ."""
    want, have = reference.state_dict(), module.state_dict()
    missing = [key for key in want if key not in have]
    extra = [name for name, _ in module.named_parameters() if name not in want]
    if missing or extra:
        parts = [f"missing {_few(missing)}"] if missing else []
        parts += [f"unexpected {_few(extra)}"] if extra else []
        return f"the weights' names do not match: {'; '.join(parts)}"
    wrong = [
        f"{key} is {tuple(have[key].shape)}, expected {tuple(value.shape)}"
        for key, value in want.items()
        if have[key].shape != value.shape
    ]
    if wrong:
        return f"weights of the wrong shape: {_few(wrong)}"
    module.load_state_dict(want, strict=False)  # extra buffers (a saved mask) may stay
    return None


def _few(items: list[str]) -> str:
    """The first SHOWN_KEYS items, and how many more there are."""
    shown = ", ".join(items[:SHOWN_KEYS])
    more = len(items) - SHOWN_KEYS
    return f"{shown} and {more} more" if more > 0 else shown


def _diagnose_module(
    case: Case,
    actual: Any,
    names_hint: str,
    mistakes: Callable[[ModuleAnswer], list[tuple[torch.Tensor, str]]],
) -> str | None:
    """The shared diagnosis of 4.1 and 4.2: set-up problems, then known mistakes."""
    run = _run_module(case.expected, actual)
    if run.problem is not None:
        return _setup_hint(run, names_hint)
    if isinstance(run.output, tuple | list):
        return (
            "forward returns a tuple; return only the output (B, T, D). The reference "
            "attention returns (output, weights): unpack it, `out, _ = ...`"
        )
    if not isinstance(run.output, torch.Tensor):
        return None
    for candidate, hint in mistakes(case.expected):
        right = _close(case.expected.output, candidate)
        if not right and _close(run.output, candidate):
            return hint
    if not torch.isfinite(run.output).all():
        return "the output has NaN or inf; is a row of the mask fully blocked?"
    return None


def _setup_hint(run: _Run, names_hint: str) -> str | None:
    """A hint for a module whose weights could not be loaded or whose forward raised."""
    if run.error is None:
        return names_hint if "weights" in (run.problem or "") else None
    if isinstance(run.error, NotImplementedError):
        return "forward still raises NotImplementedError: write forward as well"
    if "view size is not compatible" in str(run.error):
        return (
            "after a transpose the tensor is no longer contiguous in memory: use "
            ".reshape(...) instead of .view(...) to merge the heads"
        )
    if isinstance(run.error, TypeError) and "argument" in str(run.error):
        return "keep the stub's signature: forward(self, x, mask=None)"
    return "the traceback of this error is lost here: call forward yourself to see it"


def _close(actual: torch.Tensor, candidate: torch.Tensor) -> bool:
    """Whether two outputs agree within a loose tolerance."""
    if actual.shape != candidate.shape:
        return False
    got, want = actual.detach().cpu().double(), candidate.detach().double()
    return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5))


def _mha_variant(
    ref: MultiHeadAttention,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    split: str = "transpose",
    scale: float | None = None,
    out_proj: bool = True,
    merge: str = "transpose",
) -> torch.Tensor:
    """The reference's multi-head attention, or one of its plausible mistakes."""
    batch_size, seq_len, d_model = x.shape
    shape = (batch_size, seq_len, ref.n_heads, ref.head_dim)

    def heads(t: torch.Tensor) -> torch.Tensor:
        if split == "view":  # the mistake: cuts the sequence into H pieces
            return t.reshape(batch_size, ref.n_heads, seq_len, ref.head_dim)
        return t.reshape(shape).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)

    q, k, v = heads(ref.q_proj(x)), heads(ref.k_proj(x)), heads(ref.v_proj(x))
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask, scale=scale)
    if merge == "reshape":  # the mistake: (B, H, T, Dh) read as (B, T, D)
        out = out.reshape(batch_size, seq_len, d_model)
    elif merge == "interleave":  # the mistake: (B, T, Dh, H), heads interleaved
        out = out.permute(0, 2, 3, 1).reshape(batch_size, seq_len, d_model)
    else:
        out = out.transpose(1, 2).reshape(batch_size, seq_len, d_model)  # -> (B, T, D)
    return ref.out_proj(out) if out_proj else out


def _mha_mistakes(answer: ModuleAnswer) -> list[tuple[torch.Tensor, str]]:
    """Outputs of plausible wrong multi-head attentions, each with its hint."""
    ref, x, mask = answer.reference, answer.x, answer.mask
    scale = (
        f"you scale by 1/sqrt(d_model) = 1/sqrt({ref.d_model}); each head's scores "
        f"are dot products of width head_dim, so scale by 1/sqrt(head_dim) = "
        f"1/sqrt({ref.head_dim})"
    )
    specs = [
        ({"split": "view"}, _SPLIT),
        ({"split": "view", "merge": "reshape"}, _SPLIT),
        ({"scale": 1 / math.sqrt(ref.d_model)}, scale),
        ({"out_proj": False}, _NO_OUT_PROJ),
        ({"merge": "reshape"}, _ORDER),
        ({"merge": "interleave"}, _ORDER),
    ]
    if mask is not None:
        specs += [({"mask": None}, _NO_MASK), ({"mask": ~mask}, _INVERTED)]
    with torch.no_grad():
        return [
            (_mha_variant(ref, x, **{"mask": mask, **kwargs}), hint)
            for kwargs, hint in specs
        ]


def _block_mistakes(answer: ModuleAnswer) -> list[tuple[torch.Tensor, str]]:
    """Outputs of plausible wrong block wirings, each with its hint."""
    ref, x, mask = answer.reference, answer.x, answer.mask
    norm1, norm2, mlp = ref.norm1, ref.norm2, ref.mlp

    def attn(h: torch.Tensor) -> torch.Tensor:
        return ref.attn(h, mask=mask)

    with torch.no_grad():
        post = norm1(x + attn(x))  # post-norm: normalise after adding
        post = norm2(post + mlp(post))
        no_attn_res = attn(norm1(x))
        stream = norm1(x)  # pre-norm applied to the stream itself
        stream = stream + attn(stream)
        stream = norm2(stream)
        found = [
            (post, _POST_NORM),
            (no_attn_res + mlp(norm2(no_attn_res)), _NO_RESIDUAL),
            (mlp(norm2(x + attn(norm1(x)))), _NO_RESIDUAL),
            (mlp(norm2(no_attn_res)), _NO_RESIDUAL),
            (stream + mlp(stream), _STREAM_NORM),
        ]
        found += _norm_mix_ups(ref, x, mask)
    return found


def _norm_mix_ups(
    ref: TransformerBlock, x: torch.Tensor, mask: torch.Tensor | None
) -> list[tuple[torch.Tensor, str]]:
    """Outputs of blocks that use the wrong norm, ignore the mask or swap branches."""

    def wired(first: nn.Module, second: nn.Module, mask: torch.Tensor | None) -> Any:
        h = x + ref.attn(first(x), mask=mask)
        return h + ref.mlp(second(h))

    same = (
        "you use the same norm before both branches; each branch has its own norm: "
        "norm1 before attention, norm2 before the MLP"
    )
    found = [
        (wired(ref.norm1, ref.norm1, mask), same),
        (wired(ref.norm2, ref.norm2, mask), same),
        (wired(ref.norm2, ref.norm1, mask), "norm1 and norm2 are swapped: " + same),
    ]
    if mask is not None:
        hint = f"{_NO_MASK}: self.attn(self.norm1(x), mask=mask)"
        found.append((wired(ref.norm1, ref.norm2, None), hint))
    h = x + ref.mlp(ref.norm2(x))
    order = "the MLP runs before attention: attention comes first, then the MLP"
    found.append((h + ref.attn(ref.norm1(h), mask=mask), order))
    return found


MULTI_HEAD_ATTENTION = register(
    Exercise(
        id="4.1",
        title="Multi-head attention",
        cases=mha_cases,
        compare=compare_module,
        diagnose=diagnose_mha,
    )
)
TRANSFORMER_BLOCK = register(
    Exercise(
        id="4.2",
        title="A pre-norm transformer block",
        cases=block_cases,
        compare=compare_module,
        diagnose=diagnose_block,
    )
)
