"""A GPT from scratch: the GPT-2 architecture built from the chapter 3-4 pieces.

Token ids go in, next-token logits come out:

    x = drop(tok_emb[idx] + pos_emb[0..T-1])        # (B, T, D)
    x = block(x), n_layers times                     # pre-norm, causal attention
    logits = norm_f(x) @ tok_emb.T                   # (B, T, V), the head is tied

The layout follows GPT-2 exactly (LayerNorm with eps 1e-5, biases everywhere, a 4x MLP
with tanh-GELU, a learned position table, the output head sharing the token embedding),
so `load_gpt2_weights` can copy a `transformers` GPT-2 into it and reproduce its logits.

Two switches depart from GPT-2. `positions="rope"` drops the position table and
rotates each block's queries and keys instead (chapter 2's rotary embedding, as in LLaMA
and SmolLM2). Chapter 6 trains with it, because a small model learns faster when
relative positions are built in than when it has to learn a table. `mlp_ratio` sets the
MLP's width in multiples of D (GPT-2: 4); `benchmarks/train_speed.py` trains with 1.
"""

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utils.reference.attention import MultiHeadAttention
from utils.reference.block import ACTIVATIONS, MLP, LayerNorm
from utils.reference.params import ArchConfig
from utils.reference.positions import rope_cos_sin

IGNORE_INDEX = -100  # targets equal to this are left out of the loss (torch and HF)
INIT_STD = 0.02  # GPT-2's standard deviation for every weight matrix and embedding
_ID_DTYPES = (torch.int64, torch.int32)
POSITION_KINDS = ("learned", "rope")


@dataclass(frozen=True)
class GPTConfig:
    """The sizes and switches of a GPT; the defaults are GPT-2 small (124 M).

    Raises:
        ValueError: a size or mlp_ratio that is not a whole number >= 1 (a bool
            does not count), n_heads that does not divide d_model, dropout outside
            [0, 1), or an unknown activation.

    Introduced in chapter 5.
    """

    vocab_size: int = 50257  # V, rows of the token embedding (and of the tied head)
    context_length: int = 1024  # longest sequence; sizes the position table
    n_layers: int = 12  # L, number of transformer blocks
    n_heads: int = 12  # H, attention heads per block; head_dim = d_model // n_heads
    d_model: int = 768  # D, width of the residual stream
    mlp_ratio: int = 4  # the MLP is mlp_ratio * D wide; GPT-2: 4
    dropout: float = 0.0  # one rate for embeddings, attention weights and branches
    bias: bool = True  # biases in the linear layers and LayerNorms (GPT-2: True)
    # the MLP's activation: "gelu" is GPT-2's tanh approximation; "gelu_exact" (erf)
    # differs by < 1e-3 and runs about twice as fast on a CPU, which helps training
    activation: str = "gelu"
    fused: bool = True  # PyTorch's fused attention and LayerNorm kernels (faster)
    # "learned": GPT-2's table of position vectors, added to the token vectors;
    # "rope": no table, queries and keys are rotated by their positions (chapter 2)
    positions: str = "learned"
    rope_theta: float = 10000.0  # RoPE's frequency base (only with positions="rope")

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "context_length", "n_layers", "n_heads", "d_model")
        for name in (*sizes, "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must divide d_model={self.d_model} so that "
                "every head gets head_dim = d_model // n_heads channels"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"dropout must be in [0, 1), got {self.dropout}; use 0.0 to switch "
                "it off"
            )
        if self.positions not in POSITION_KINDS:
            raise ValueError(
                f"unknown positions {self.positions!r}; choose 'learned' (GPT-2's "
                "table) or 'rope' (rotary, chapter 2)"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(
                f"positions='rope' needs an even head_dim, got d_model={self.d_model} "
                f"/ n_heads={self.n_heads} = {self.head_dim}; RoPE turns channels in "
                "pairs"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose one of "
                f"{', '.join(ACTIVATIONS)} (GPT-2 uses 'gelu')"
            )

    @property
    def head_dim(self) -> int:
        """Dh, the width of one attention head."""
        return self.d_model // self.n_heads

    @property
    def d_ff(self) -> int:
        """The hidden width of the MLP, mlp_ratio * d_model (GPT-2: 4 * d_model)."""
        return self.mlp_ratio * self.d_model

    def arch_config(self) -> ArchConfig:
        """The same architecture as chapter 1's `ArchConfig`, for counting parameters.

        Returns:
            An `ArchConfig` with this config's positions, a GELU MLP, LayerNorm and
            a tied head without bias.

        Introduced in chapter 5.
        """
        return ArchConfig(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_heads,
            d_ff=self.d_ff,
            max_seq_len=self.context_length,
            positions=self.positions,
            mlp="gelu",  # any one-matrix activation counts the same
            norm="layernorm",
            bias=self.bias,
            parallel_block=False,
            tied_embeddings=True,
            lm_head_bias=False,
        )


class GPTBlock(nn.Module):
    """GPT-2's pre-norm block: x + drop(attn(norm1(x))), then x + mlp(norm2(x)).

    The same wiring and submodule names as chapter 4's `TransformerBlock`, plus what
    GPT-2 adds: attention is always causal, and the attention branch's output goes
    through dropout too (the MLP drops its own output).

    Args:
        config: the model's sizes; `config.fused` picks PyTorch's fused kernels for
            attention and LayerNorm.

    Introduced in chapter 5.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d_model, bias, fused = config.d_model, config.bias, config.fused
        self.norm1 = LayerNorm(d_model, bias=bias, fused=fused)
        self.attn = MultiHeadAttention(
            d_model, config.n_heads, dropout=config.dropout, bias=bias, fused=fused
        )
        self.resid_dropout = nn.Dropout(config.dropout)
        self.norm2 = LayerNorm(d_model, bias=bias, fused=fused)
        self.mlp = MLP(
            d_model,
            config.d_ff,
            dropout=config.dropout,
            activation=config.activation,
            bias=bias,
        )

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Add the causal attention branch, then the MLP branch, to the stream.

        Args:
            x: the residual stream, (B, T, D).
            rope: `(cos, sin)`, each (T, Dh), to rotate queries and keys by their
                positions; None for a model with a learned position table.

        Returns:
            (B, T, D).

        Introduced in chapter 5.
        """
        x = x + self.resid_dropout(self._attention(self.norm1(x), rope))
        x = x + self.mlp(self.norm2(x))
        return x

    def _attention(
        self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """Causal self-attention of the normalised stream h, (B, T, D) -> (B, T, D)."""
        if rope is None:
            return self.attn(h, is_causal=True)
        q, k, v = self.attn.project(h)  # (B, H, T, Dh) each
        cos, signed_sin = rope
        q, k = rotate(q, cos, signed_sin), rotate(k, cos, signed_sin)  # by position
        return self.attn.attend(q, k, v, is_causal=True)


def rotate(
    x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor
) -> torch.Tensor:
    """Chapter 2's `apply_rope`, in fewer operations for training.

    `apply_rope` builds (-x2, x1) from two slices and a concatenation, whose backward
    pass fills and copies; rolling x by half a head gives (x2, x1) in one step, and
    the minus sign moves into the sines: signed_sin = (-sin_1, sin_2). The numbers
    are the same (tests compare the two).

    Args:
        x: queries or keys, (B, H, T, Dh).
        cos: (T, Dh), from `rope_cos_sin`.
        signed_sin: (T, Dh), the sines with the first half negated.

    Returns:
        The rotated tensor, (B, H, T, Dh).

    Introduced in chapter 6.
    """
    half = x.size(-1) // 2
    return x * cos + torch.roll(x, half, dims=-1) * signed_sin


class GPT(nn.Module):
    """A decoder-only transformer with GPT-2's architecture and initialisation.

    The output head `lm_head` shares its weight with the token embedding `tok_emb`
    (weight tying): one (V, D) matrix both reads tokens in and scores them out.

    Args:
        config: the sizes, see `GPTConfig`.

    Raises:
        TypeError: config is not a `GPTConfig`.

    Introduced in chapter 5.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(
                f"config must be a GPTConfig, got {type(config).__name__}; build one "
                "with GPTConfig(vocab_size=..., context_length=..., ...)"
            )
        self.config = config
        d_model, vocab_size = config.d_model, config.vocab_size
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(config.context_length, d_model)
        else:  # rotary: fixed angles, kept out of the state dict
            self.pos_emb = None
            cos, sin = rope_cos_sin(
                config.context_length, config.head_dim, theta=config.rope_theta
            )  # (context_length, Dh) each
            half = config.head_dim // 2
            signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_signed_sin", signed_sin, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.n_layers))
        self.norm_f = LayerNorm(d_model, bias=config.bias, fused=config.fused)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: the same Parameter object
        self.reset_parameters()

    @property
    def context_length(self) -> int:
        """The longest sequence the model accepts (the rows of the position table)."""
        return self.config.context_length

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights and embeddings, zero biases,
        unit LayerNorms, and N(0, 0.02 / sqrt(2 L)) for the two projections that
        write into the residual stream, so that its variance does not grow with L.

        Introduced in chapter 5.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if isinstance(module, nn.Linear | LayerNorm) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)

        # each block adds two branches to the stream: 2 L additions in all
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=residual_std)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits for every position, and the loss if targets are given.

        Args:
            idx: token ids, (B, T) int64 or int32, with 1 <= T <= context_length.
            targets: the next token at each position, (B, T); positions holding
                IGNORE_INDEX (-100) do not count.

        Returns:
            `(logits, loss)`: logits (B, T, V) and the mean cross-entropy over the
            counted positions, a scalar, or None without targets.

        Raises:
            ValueError: idx or targets is not a (B, T) tensor of integer ids in
                [0, vocab_size), T is 0 or longer than the context, or targets and
                idx differ in shape.

        Introduced in chapter 5.
        """
        self._check_ids(idx)
        seq_len = idx.size(1)

        # 1) what each token is plus where it is: rows 0..T-1 of the position table,
        # or, with RoPE, the angles that rotate queries and keys in every block
        x = self.tok_emb(idx)  # (B, T, D)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[:seq_len]  # (B, T, D) + (T, D)
        else:
            rope = (self.rope_cos[:seq_len], self.rope_signed_sin[:seq_len])  # (T, Dh)
        x = self.drop(x)

        # 2) the blocks: causal attention mixes positions, the MLP transforms each
        for block in self.blocks:
            x = block(x, rope)  # (B, T, D)

        # 3) a last LayerNorm, then score every token with the tied head
        logits = self.lm_head(self.norm_f(x))  # (B, T, D) -> (B, T, V)
        if targets is None:
            return logits, None
        targets = self._check_targets(targets, idx)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),  # (B, T, V) -> (B * T, V)
            targets.reshape(-1),  # (B, T) -> (B * T,)
            ignore_index=IGNORE_INDEX,
        )
        return logits, loss

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Count the trainable numbers, the tied matrix once.

        Args:
            exclude_embeddings: leave out the token and position tables (the
                "non-embedding" count of scaling-law papers). The tied head is the
                token table, so it goes too.

        Returns:
            The number of parameters.

        Introduced in chapter 5.
        """
        total = sum(p.numel() for p in self.parameters())  # shared ones come once
        if exclude_embeddings:
            total -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                total -= self.pos_emb.weight.numel()
        return total

    @classmethod
    def from_hf_gpt2(cls, hf_model: Any, dropout: float = 0.0) -> "GPT":
        """Build a GPT with the sizes of a `transformers` GPT-2 and copy its weights.

        Args:
            hf_model: a `GPT2LMHeadModel` (or its `GPT2Model` body).
            dropout: the dropout rate of the new model (GPT-2 trained with 0.1).

        Returns:
            A new GPT whose logits equal those of `hf_model` in eval mode.

        Raises:
            ValueError: the model is not a plain GPT-2 (see `load_gpt2_weights`).

        Introduced in chapter 5.
        """
        config = gpt_config_from_hf(hf_model.config, dropout=dropout)
        return load_gpt2_weights(cls(config), hf_model)

    def _check_ids(self, idx: torch.Tensor) -> None:
        """Raise a ValueError unless idx is (B, T) integer ids that fit the model."""
        if not isinstance(idx, torch.Tensor) or idx.dtype not in _ID_DTYPES:
            kind = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(
                f"idx must be a tensor of token ids (int64 or int32), got {kind}; "
                "did you pass embeddings or logits? Convert ids with idx.long()"
            )
        if idx.dim() != 2 or idx.numel() == 0:
            raise ValueError(
                f"idx must have shape (B, T) with B, T >= 1, got {tuple(idx.shape)}; "
                "for a single sequence use idx[None]"
            )
        if idx.size(1) > self.context_length:
            raise ValueError(
                f"sequence length T={idx.size(1)} exceeds context_length="
                f"{self.context_length}; keep the last tokens with "
                f"idx[:, -{self.context_length}:]"
            )
        low, high = torch.aminmax(idx)
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, vocab_size={self.config.vocab_size}), got "
                f"values from {int(low)} to {int(high)}; was the text encoded with "
                "another tokenizer?"
            )

    def _check_targets(self, targets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The targets as int64, after checking their shape, dtype and values."""
        if not isinstance(targets, torch.Tensor) or targets.dtype not in _ID_DTYPES:
            kind = getattr(targets, "dtype", type(targets).__name__)
            raise ValueError(
                f"targets must be a tensor of token ids (int64 or int32), got {kind}"
            )
        if targets.shape != idx.shape:
            raise ValueError(
                f"targets must have the shape of idx {tuple(idx.shape)}, got "
                f"{tuple(targets.shape)}; targets are idx shifted left by one token"
            )
        vocab_size = self.config.vocab_size
        counted = targets[targets != IGNORE_INDEX]  # (N,), the positions that count
        if counted.numel():
            low, high = torch.aminmax(counted)
            if low < 0 or high >= vocab_size:
                raise ValueError(
                    f"targets must lie in [0, vocab_size={vocab_size}) or equal "
                    f"{IGNORE_INDEX} (ignored), got values from {int(low)} to "
                    f"{int(high)}"
                )
        return targets.long()


def gpt_config_from_hf(hf_config: Any, dropout: float = 0.0) -> GPTConfig:
    """Translate a `transformers` `GPT2Config` into a `GPTConfig`.

    Args:
        hf_config: the `config` of a GPT-2 model from `transformers`.
        dropout: the dropout rate of our model.

    Returns:
        The matching `GPTConfig` (biases on, fused kernels on).

    Raises:
        ValueError: the config uses a feature our GPT does not have (another
            activation, MLP width or LayerNorm eps, untied embeddings, cross-attention,
            scaled attention variants).

    Introduced in chapter 5.
    """
    d_model = hf_config.n_embd
    # every setting that changes the maths, with the value our GPT hard-codes
    expected = {
        "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
        "n_inner": (None, 4 * d_model),
        "layer_norm_epsilon": (1e-5,),
        "scale_attn_weights": (True,),
        "scale_attn_by_inverse_layer_idx": (False,),
        "add_cross_attention": (False,),
        "tie_word_embeddings": (True,),
    }
    for name, allowed in expected.items():
        value = getattr(hf_config, name, allowed[0])
        if value not in allowed:
            raise ValueError(
                f"this GPT-2 has {name}={value!r}, but our GPT supports only "
                f"{' or '.join(repr(a) for a in allowed)}"
            )
    return GPTConfig(
        vocab_size=hf_config.vocab_size,
        context_length=hf_config.n_positions,
        n_layers=hf_config.n_layer,
        n_heads=hf_config.n_head,
        d_model=d_model,
        dropout=dropout,
        bias=True,
    )


@torch.no_grad()
def load_gpt2_weights(ours: GPT, hf_model: Any) -> GPT:
    """Copy the weights of a `transformers` GPT-2 into our GPT, in place.

    GPT-2's linear layers are `Conv1D`s that store their weight as (in, out), the
    transpose of `nn.Linear`'s (out, in); its `c_attn` holds q, k and v side by side,
    which we split into our three projections.

    Args:
        ours: a GPT with the same sizes as `hf_model`, bias=True and
            activation="gelu".
        hf_model: a `GPT2LMHeadModel` (or its `GPT2Model` body).

    Returns:
        `ours`, with every parameter overwritten; the head stays tied.

    Raises:
        ValueError: the configs differ, or `hf_model` is not a plain GPT-2.

    Introduced in chapter 5.
    """
    mine = ours.config
    theirs = gpt_config_from_hf(hf_model.config, dropout=mine.dropout)
    if replace(theirs, fused=mine.fused) != mine:
        raise ValueError(
            f"configs differ: ours is {mine}, the GPT-2 needs {theirs}; build ours "
            "with GPT.from_hf_gpt2(hf_model)"
        )
    body = getattr(hf_model, "transformer", hf_model)
    head = getattr(hf_model, "lm_head", None)
    if head is not None and not torch.equal(head.weight, body.wte.weight):
        raise ValueError("this GPT-2's lm_head is not tied to wte; ours always is")

    ours.tok_emb.weight.copy_(body.wte.weight)  # also the head: they are one tensor
    ours.pos_emb.weight.copy_(body.wpe.weight)
    for block, hf_block in zip(ours.blocks, body.h, strict=True):
        _copy_norm(block.norm1, hf_block.ln_1)
        _copy_norm(block.norm2, hf_block.ln_2)
        attn, c_attn = block.attn, hf_block.attn.c_attn
        weights = c_attn.weight.split(mine.d_model, dim=1)  # (D, 3D) -> 3 x (D, D)
        biases = c_attn.bias.split(mine.d_model)  # (3D,) -> 3 x (D,)
        for linear, weight, bias in zip(
            (attn.q_proj, attn.k_proj, attn.v_proj), weights, biases, strict=True
        ):
            _copy_conv1d(linear, weight, bias)
        _copy_conv1d(
            attn.out_proj, hf_block.attn.c_proj.weight, hf_block.attn.c_proj.bias
        )
        _copy_conv1d(block.mlp.up, hf_block.mlp.c_fc.weight, hf_block.mlp.c_fc.bias)
        _copy_conv1d(
            block.mlp.down, hf_block.mlp.c_proj.weight, hf_block.mlp.c_proj.bias
        )
    _copy_norm(ours.norm_f, body.ln_f)
    return ours


def _copy_conv1d(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Copy a Conv1D's (in, out) weight into an nn.Linear's (out, in) one."""
    linear.weight.copy_(weight.t())  # (in, out) -> (out, in)
    linear.bias.copy_(bias)


def _copy_norm(ours: LayerNorm, theirs: nn.LayerNorm) -> None:
    """Copy a LayerNorm's scale and shift."""
    ours.weight.copy_(theirs.weight)
    ours.bias.copy_(theirs.bias)
