"""Exercise checks for chapter 01 (What an LLM is): exercise 1.1, a parameter count."""

import numbers
from dataclasses import replace

from utils.checks.core import Case, Exercise, compare_ints, register
from utils.reference.params import (
    KNOWN_ARCHITECTURES,
    KNOWN_COUNTS,
    ArchConfig,
    count_parameters,
    norm_parameters,
    parameter_breakdown,
)

Mistake = tuple[int, str, str]  # (the total it gives, what the difference is, the fix)

# Two small configurations that mix the choices the four real models leave out.
TINY_CONFIGS: dict[str, ArchConfig] = {
    "tiny GPT, untied head": ArchConfig(
        vocab_size=97,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        d_ff=128,
        max_seq_len=16,
        positions="learned",
        mlp="gelu",
        norm="layernorm",
        bias=True,
        parallel_block=False,
        tied_embeddings=False,
        lm_head_bias=False,
    ),
    "tiny LLaMA with biases": ArchConfig(
        vocab_size=97,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=64,
        max_seq_len=16,
        positions="rope",
        mlp="swiglu",
        norm="rmsnorm",
        bias=True,
        parallel_block=False,
        tied_embeddings=True,
        lm_head_bias=False,
    ),
}


def parameter_cases() -> list[Case]:
    """Build the cases of exercise 1.1: the four real models, then two tiny ones.

    Returns:
        One case per configuration, named after the model, expecting its total.

    Introduced in chapter 1.
    """
    cases = [
        Case(name, (config,), KNOWN_COUNTS[name], _breakdown_hint(config))
        for name, config in KNOWN_ARCHITECTURES.items()
    ]
    return cases + [
        Case(name, (config,), count_parameters(config), _breakdown_hint(config))
        for name, config in TINY_CONFIGS.items()
    ]


def diagnose_count(case: Case, actual: object) -> str | None:
    """Recognise a plausible counting mistake from the difference to the right total.

    Args:
        case: the case that failed; `case.args[0]` is the ArchConfig.
        actual: the learner's count.

    Returns:
        A hint saying what the difference matches, or None when nothing matches.

    Introduced in chapter 1.
    """
    if not isinstance(actual, numbers.Integral) or isinstance(actual, bool):
        return None
    difference = int(actual) - case.expected
    for predicted, what, fix in _count_mistakes(case.args[0]):
        if actual == predicted:
            return f"the difference, {difference:+,}, matches {what}. {fix}"
    return None


def _breakdown_hint(config: ArchConfig) -> str:
    """The fallback hint: how the right total splits into components."""
    parts = ", ".join(f"{k} {v:,}" for k, v in parameter_breakdown(config).items())
    return f"compare your parts with the right split: {parts}"


def _count_mistakes(config: ArchConfig) -> list[Mistake]:
    """The totals plausible mistakes give: (count, what the difference is, the fix)."""
    mistakes = _embedding_mistakes(config) + _block_mistakes(config)
    return mistakes + _norm_mistakes(config)


def _embedding_mistakes(config: ArchConfig) -> list[Mistake]:
    """Mistakes with the token and position embeddings and the output head."""
    right = count_parameters(config)
    v, d, n_pos = config.vocab_size, config.d_model, config.max_seq_len
    head = f"the output head's matrix, vocab_size * d_model ({v:,} * {d:,})"
    positions = f"a position embedding, max_seq_len * d_model ({n_pos:,} * {d:,})"
    if config.tied_embeddings:
        fix = "This model ties its output head to the token embedding: count it once"
        found = [(right + v * d, head, fix)]
    else:
        fix = "This model's output head is not tied: it has its own matrix"
        found = [(right - v * d, head, fix)]
    if config.positions == "learned":
        fix = "This model learns one vector per position: count that table too"
        found.append((right - n_pos * d, positions, fix))
    else:
        fix = "RoPE rotates q and k by fixed angles: it has no parameters"
        found.append((right + n_pos * d, positions, fix))
    if config.lm_head_bias:
        fix = "This model's output head has a bias, one per vocabulary entry"
        found.append((right - v, f"the output head's bias, vocab_size ({v:,})", fix))
    return found


def _variant(config: ArchConfig, what: str, fix: str, **changes: object) -> Mistake:
    """The mistake of counting `config` as if its fields had the `changes`."""
    return count_parameters(replace(config, **changes)), what, fix


def _block_mistakes(config: ArchConfig) -> list[Mistake]:
    """Mistakes inside the blocks: key/value heads, MLP matrices, biases, layers."""
    found = []
    if config.n_kv_heads != config.n_heads:
        what = "k_proj and v_proj sized with n_heads instead of n_kv_heads"
        width = config.n_kv_heads * config.head_dim
        fix = f"Under grouped-query attention they map d_model to {width:,} outputs"
        found.append(_variant(config, what, fix, n_kv_heads=config.n_heads))
    if config.mlp == "swiglu":
        fix = "A SwiGLU MLP has three matrices (gate, up, down), not two"
        found.append(_variant(config, "one MLP matrix per block", fix, mlp="gelu"))
    else:
        fix = "A GELU MLP has two matrices (up, down); only SwiGLU adds a gate"
        found.append(_variant(config, "one MLP matrix per block", fix, mlp="swiglu"))
    what = "the biases of the attention and MLP linear layers"
    if config.bias:
        fix = "This model's linear layers have biases (bias=True): count them"
    else:
        fix = "This model's linear layers have no biases (bias=False)"
    found.append(_variant(config, what, fix, bias=not config.bias))
    what = f"counting one block instead of n_layers={config.n_layers}"
    fix = "Multiply the parameters of one block by n_layers"
    found.append(_variant(config, what, fix, n_layers=1))
    return found


def _norm_mistakes(config: ArchConfig) -> list[Mistake]:
    """Mistakes with the normalisation layers: missing, one too many, wrong kind."""
    right = count_parameters(config)
    all_norms = parameter_breakdown(config)["norms"]
    one_norm = norm_parameters(config)
    fix = "Count each block's norms and the final one"
    found = [(right - all_norms, "all the norms", fix)]
    fix = "Count the final norm after the last block too"
    found.append((right - one_norm, f"one norm ({one_norm:,})", fix))
    if config.parallel_block:
        fix = "In a parallel block one norm feeds both attention and the MLP"
    else:
        fix = "This model has two norms per block: before attention and before the MLP"
    what = "one norm per block"
    found.append(_variant(config, what, fix, parallel_block=not config.parallel_block))
    if config.norm == "layernorm":
        fix = "LayerNorm has a weight and a bias, d_model each"
        found.append(_variant(config, "the LayerNorm biases", fix, norm="rmsnorm"))
    else:
        fix = "RMSNorm has only a weight (d_model), no bias"
        found.append(_variant(config, "a bias per RMSNorm", fix, norm="layernorm"))
    return found


PARAMETER_COUNT = register(
    Exercise(
        id="1.1",
        title="Count the parameters",
        cases=parameter_cases,
        compare=compare_ints,
        diagnose=diagnose_count,
    )
)
