"""A LLaMA-style decoder that runs SmolLM2's weights, with a key/value cache.

From chapter 05's GPT-2 layout, a LLaMA-style model changes four pieces and keeps one:

- RMSNorm instead of LayerNorm (no centring, no bias);
- rotary positions (RoPE) on queries and keys instead of a learned position table;
- a SwiGLU MLP: down(silu(gate(x)) * up(x)), with no biases anywhere;
- grouped-query attention: H query heads share H_kv < H key/value heads;
- kept: the output head tied to the token embedding (in GPT-2 and in SmolLM2).

`from_hf` copies a `transformers` LlamaForCausalLM into `Llama`; `KVCache` keeps the
keys and values of past positions so that decoding computes one new position per step;
`generate` decodes greedily or by sampling, with or without the cache.

For speed on a CPU the model stores the q, k and v projections as one matrix (and the
gate and up projections as another), so each layer runs two large matrix products
where the textbook layout runs five. `decode_step` computes one cached step with the
same arithmetic in far fewer operations; `generate` uses it after the prompt, on the
number of threads `decode_threads` measures to be faster.
"""

import numbers
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utils.reference.attention import causal_mask
from utils.reference.block import RMSNorm
from utils.reference.positions import apply_rope, rope_cos_sin
from utils.reference.sampling import sample_next_token


@dataclass
class LlamaConfig:
    """Sizes of a LLaMA-style decoder; the defaults are SmolLM2-135M's.

    Introduced in chapter 9.
    """

    vocab_size: int = 49152  # V
    context_length: int = 8192  # the most positions one sequence may hold
    n_layers: int = 30  # L
    n_heads: int = 9  # H, query heads
    n_kv_heads: int = 3  # H_kv, key/value heads; H_kv = H is plain multi-head
    d_model: int = 576  # D
    head_dim: int = 64  # Dh; LLaMA keeps D = H * Dh
    d_ff: int = 1536  # hidden width of the SwiGLU MLP
    rope_theta: float = 100000.0  # base of the rotary frequencies
    norm_eps: float = 1e-5  # RMSNorm's epsilon
    tie_embeddings: bool = True  # the output head reuses the token embedding

    def __post_init__(self) -> None:
        _check_sizes(
            "LlamaConfig",
            vocab_size=self.vocab_size,
            context_length=self.context_length,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            d_model=self.d_model,
            head_dim=self.head_dim,
            d_ff=self.d_ff,
        )
        if not self.rope_theta > 0 or not self.norm_eps >= 0:
            raise ValueError(
                f"rope_theta must be > 0 and norm_eps >= 0, got rope_theta="
                f"{self.rope_theta} and norm_eps={self.norm_eps}; SmolLM2 uses 1e5 "
                "and 1e-5"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}: "
                "each key/value head serves a whole group of query heads"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")


_SIZE_MEANINGS = {
    "n_layers": "L, the number of blocks",
    "batch_size": "B, the rows decoded together",
    "n_kv_heads": "H_kv, the key/value heads, not the query heads",
    "max_len": "S_max, the most positions the cache holds: prompt + new tokens",
    "head_dim": "Dh, the width of one head",
}


def _check_sizes(owner: str, **sizes: Any) -> None:
    """Raise unless every size is a whole number >= 1, saying which one is wrong."""
    for name, value in sizes.items():
        meaning = _SIZE_MEANINGS.get(name, "a size")
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"{owner}: {name} ({meaning}) must be a whole number, got "
                f"{type(value).__name__} {value!r}"
            )
        if value < 1:
            raise ValueError(
                f"{owner}: {name} ({meaning}) must be at least 1, got {value}"
            )


def llama_config_from_hf(hf_config: Any) -> LlamaConfig:
    """Read our `LlamaConfig` from a `transformers` LlamaConfig.

    Args:
        hf_config: `model.config` of a `transformers` LLaMA model.

    Returns:
        The same sizes under the course's names.

    Introduced in chapter 9.
    """
    rope = getattr(hf_config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    n_heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None)
    return LlamaConfig(
        vocab_size=hf_config.vocab_size,
        context_length=hf_config.max_position_embeddings,
        n_layers=hf_config.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=hf_config.num_key_value_heads or n_heads,
        d_model=hf_config.hidden_size,
        head_dim=head_dim or hf_config.hidden_size // n_heads,
        d_ff=hf_config.intermediate_size,
        rope_theta=float(theta),
        norm_eps=float(hf_config.rms_norm_eps),
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
    )


def kv_cache_update(
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    start: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write new keys and values into preallocated buffers, in place.

    Args:
        cache_k: the key buffer, (B, H_kv, S_max, Dh); positions 0..start-1 are filled.
        cache_v: the value buffer, same shape.
        k: keys of the T new positions, (B, H_kv, T, Dh).
        v: values of the T new positions, same shape.
        start: the position of the first new token (how many are cached already).

    Returns:
        `(keys, values)`: views of the buffers for positions 0..start+T-1, each
        (B, H_kv, start + T, Dh). Nothing is copied besides the T new positions.

    Raises:
        ValueError: start is negative, k and v differ in shape, or the new keys do
            not fit the buffer.

    Introduced in chapter 9.
    """
    if isinstance(start, bool) or not isinstance(start, numbers.Integral) or start < 0:
        raise ValueError(
            f"start must be a whole number >= 0 (how many positions are cached "
            f"already), got {start!r}"
        )
    if k.dim() != 4 or k.shape != v.shape or cache_k.shape != cache_v.shape:
        raise ValueError(
            f"k and v must both be (B, H_kv, T, Dh) and cache_k and cache_v both "
            f"(B, H_kv, S_max, Dh); got k {tuple(k.shape)}, v {tuple(v.shape)}, "
            f"cache_k {tuple(cache_k.shape)}, cache_v {tuple(cache_v.shape)}"
        )
    end = start + k.size(-2)
    if end > cache_k.size(-2):
        raise ValueError(
            f"the cache holds {cache_k.size(-2)} positions, but {start} are filled and "
            f"{k.size(-2)} more arrive; build a longer KVCache or reset() it"
        )
    if k.shape[:2] + k.shape[3:] != cache_k.shape[:2] + cache_k.shape[3:]:
        raise ValueError(
            f"new keys {tuple(k.shape)} do not match the cache {tuple(cache_k.shape)}"
            " in (B, H_kv, _, Dh)"
        )
    cache_k[:, :, start:end] = k  # write the T new positions, nothing else moves
    cache_v[:, :, start:end] = v
    return cache_k[:, :, :end], cache_v[:, :, :end]  # (B, H_kv, start + T, Dh)


class KVCache:
    """Keys and values of every layer for the positions seen so far.

    The buffers are allocated once, (L, B, H_kv, S_max, Dh) each, and written in
    place, so a decoding step never copies the past. `length` is the number of
    cached positions: the position offset of the next token.

    Args:
        n_layers: L.
        batch_size: B.
        n_kv_heads: H_kv, the number of key/value heads (not query heads).
        max_len: S_max, the most positions the cache can hold.
        head_dim: Dh.
        dtype: of the buffers.
        device: where to allocate them.

    Raises:
        ValueError: a size is below 1.
        TypeError: a size is not a whole number.

    Introduced in chapter 9.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        sizes = {
            "n_layers": n_layers,
            "batch_size": batch_size,
            "n_kv_heads": n_kv_heads,
            "max_len": max_len,
            "head_dim": head_dim,
        }
        _check_sizes("KVCache", **sizes)
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # cached positions; the next token sits at this position

    @classmethod
    def for_model(cls, model: "Llama", batch_size: int = 1, max_len: int | None = None):
        """A cache sized for `model`, holding up to `max_len` (default: its context).

        Introduced in chapter 9.
        """
        c = model.config
        max_len = c.context_length if max_len is None else max_len
        weight = model.tok_emb.weight
        return cls(
            c.n_layers, batch_size, c.n_kv_heads, max_len, c.head_dim,
            dtype=weight.dtype, device=weight.device,
        )  # fmt: skip

    @property
    def max_len(self) -> int:
        return self.keys.size(-2)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer `layer`'s new keys and values at positions length..length+T-1.

        Args:
            layer: which layer's buffers to write.
            k, v: (B, H_kv, T, Dh) for the T new positions.

        Returns:
            The layer's keys and values for all positions so far, each
            (B, H_kv, length + T, Dh). `length` itself moves on in `advance`, once
            every layer has written.

        Introduced in chapter 9.
        """
        return kv_cache_update(self.keys[layer], self.values[layer], k, v, self.length)

    def advance(self, n_new: int) -> None:
        """Count `n_new` more cached positions (called once per forward pass)."""
        self.length += n_new

    def reset(self) -> None:
        """Empty the cache for a new sequence; the buffers are kept and zeroed."""
        self.length = 0
        self.keys.zero_()
        self.values.zero_()

    def bytes_per_token(self) -> int:
        """Memory one cached position takes over all layers: 2 * L * B * H_kv * Dh."""
        n_layers, batch_size, n_kv_heads, _, head_dim = self.keys.shape
        return 2 * n_layers * batch_size * n_kv_heads * head_dim * self.keys.itemsize

    def __repr__(self) -> str:
        return f"KVCache(length={self.length}, shape={tuple(self.keys.shape)})"


class SwiGLU(nn.Module):
    """The gated MLP of LLaMA: down(silu(gate(x)) * up(x)), without biases.

    `gate_up` holds the gate and up matrices stacked, (2 * d_ff, D), so that one
    matrix product computes both.

    Introduced in chapter 9.
    """

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.d_ff = d_ff
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        if x.size(-1) != self.gate_up.in_features:
            raise ValueError(
                f"last dim must be d_model={self.gate_up.in_features}, got shape "
                f"{tuple(x.shape)}; this SwiGLU was built for SwiGLU("
                f"{self.gate_up.in_features}, {self.d_ff}): pass (B, T, D) activations"
            )
        gate, up = self.gate_up(x).split(self.d_ff, dim=-1)  # 2 x (B, T, d_ff)
        return self.down(F.silu(gate) * up)  # (B, T, d_ff) -> (B, T, D)


class GroupedQueryAttention(nn.Module):
    """Causal attention where groups of H / H_kv query heads share one key/value head.

    Queries and keys are rotated by RoPE before the scores. With a `KVCache`, the new
    keys and values are stored and the queries attend to every cached position.

    Args:
        d_model: D.
        n_heads: H, query heads.
        n_kv_heads: H_kv, key/value heads; must divide H.
        head_dim: Dh.

    Introduced in chapter 9.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.sizes = (n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim)
        self.qkv = nn.Linear(d_model, sum(self.sizes), bias=False)  # q, k, v stacked
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Attend from the T new positions to themselves and everything cached.

        Args:
            x: (B, T, D), normalised.
            cos, sin: (T, Dh), the rotary angles of the T new positions.
            cache: keys and values of earlier positions, or None.
            layer: this layer's index in the cache.

        Returns:
            (B, T, D).

        Introduced in chapter 9.
        """
        batch_size, seq_len, _ = x.shape
        q, k, v = self.qkv(x).split(self.sizes, dim=-1)  # (B, T, H*Dh), 2x(B,T,Hkv*Dh)
        q = q.view(batch_size, seq_len, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch_size, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch_size, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # chapter 02's RoPE

        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H_kv, S, Dh), S = cached + T
        out = _causal_gqa(q, k, v)  # (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(batch_size, seq_len, -1)  # (B, T, H*Dh)
        return self.out_proj(out)


def _causal_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of the last T of S positions, keys shared by head groups."""
    batch_size, n_heads, seq_len, head_dim = q.shape
    n_kv_heads, kv_len = k.size(1), k.size(-2)
    if seq_len == 1:
        # one new query sees every cached key, so no mask: fold each group's query
        # heads into the query axis and attend once per key/value head, with no
        # repeated keys in memory
        grouped = q.view(batch_size, n_kv_heads, n_heads // n_kv_heads, head_dim)
        with _one_thread():
            out = F.scaled_dot_product_attention(grouped, k, v)  # (B, H_kv, H/H_kv, Dh)
        return out.view(batch_size, n_heads, 1, head_dim)  # -> (B, H, 1, Dh)
    if seq_len == kv_len:  # a fresh prompt: the plain lower-triangular mask
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    # a chunk after cached positions: SDPA's is_causal would align the mask top-left
    keep = ~causal_mask(seq_len, kv_len, device=q.device)  # (T, S), True = may look
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)


@contextmanager
def _one_thread():
    """Run a tiny op on one thread, then restore PyTorch's thread count.

    One query per head is a few thousand multiply-adds: too little to share. Sharing
    it still makes the threads meet once per layer, and on a busy machine that meeting
    waits for a time slice of the other core (milliseconds, against microseconds of
    work). The large matrix products keep every thread.
    """
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


_ID_DTYPES = (torch.int64, torch.int32)  # what nn.Embedding accepts as indices
_DECODE_THREADS: dict[int, int] = {}  # PyTorch's thread count -> decoding's, measured


def decode_threads(model: "Llama") -> int:
    """How many threads cached decoding uses: 1 or all of PyTorch's, the faster here.

    A decoding step multiplies one row by each matrix: the time goes into reading
    the weights from memory, not into arithmetic. Whether a second thread reads
    faster depends on the machine's memory system: on the 2-core machines the
    course is tested on, one thread streams as fast as two, and it never waits for
    the other core at the ~450 small operations of a step (under load such a wait
    costs milliseconds each time). So this times the largest matrix, the output
    head, with one thread and with all, once per process, and keeps the faster.

    Introduced in chapter 9.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        return 1
    if threads not in _DECODE_THREADS:
        weight = model.lm_head.weight.detach()
        row = torch.randn(1, weight.size(1), dtype=weight.dtype, device=weight.device)

        def best_time(n_threads: int) -> float:
            torch.set_num_threads(n_threads)
            times = []
            for _ in range(4):  # the first read may include page faults
                start = time.perf_counter()
                F.linear(row, weight)
                times.append(time.perf_counter() - start)
            return min(times[1:])

        try:
            one, all_ = best_time(1), best_time(threads)
        finally:
            torch.set_num_threads(threads)
        _DECODE_THREADS[threads] = 1 if one <= all_ else threads
    return _DECODE_THREADS[threads]


class LlamaBlock(nn.Module):
    """A pre-norm LLaMA block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    Introduced in chapter 9.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        c = config
        self.norm1 = RMSNorm(c.d_model, eps=c.norm_eps)
        self.attn = GroupedQueryAttention(
            c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
        )
        self.norm2 = RMSNorm(c.d_model, eps=c.norm_eps)
        self.mlp = SwiGLU(c.d_model, c.d_ff)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); see `GroupedQueryAttention.forward`."""
        x = x + self.attn(self.norm1(x), cos, sin, cache, layer)
        return x + self.mlp(self.norm2(x))


class Llama(nn.Module):
    """A LLaMA-style decoder: embedding, L blocks, RMSNorm, tied output head.

    Args:
        config: the sizes; `LlamaConfig()` is SmolLM2-135M.

    Introduced in chapter 9.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.context_length = config.context_length
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(LlamaBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos, sin = rope_cos_sin(
            config.context_length, config.head_dim, theta=config.rope_theta
        )
        self.register_buffer("rope_cos", cos, persistent=False)  # (context, Dh)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits for the next token after each position.

        Args:
            idx: (B, T) token ids. With a cache they follow the `cache.length`
                positions already stored, and are added to it.
            cache: a `KVCache` to read and extend, or None to treat idx as the whole
                sequence.
            last_only: compute the logits of the last position only (decoding
                needs no others); the head is the largest matrix product.

        Returns:
            (B, T, V), or (B, 1, V) with `last_only`.

        Raises:
            ValueError: idx is not (B, T) ids within the vocabulary, the sequence
                would exceed the context (the model does not crop: pass fewer
                tokens), or the cache was built for another model or batch size.
            TypeError: cache is not a `KVCache`.

        Introduced in chapter 9.
        """
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(
                f"cache must be a KVCache, got {type(cache).__name__}; build one "
                "with KVCache.for_model(model, batch_size)"
            )
        start = 0 if cache is None else cache.length
        self._check_input(idx, start, cache)
        self._check_ids(idx)
        seq_len = idx.size(1)
        cos = self.rope_cos[start : start + seq_len]  # (T, Dh), positions offset
        sin = self.rope_sin[start : start + seq_len]

        x = self.tok_emb(idx)  # (B, T) -> (B, T, D)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, layer)
        if cache is not None:
            cache.advance(seq_len)
        if last_only:
            x = x[:, -1:]  # (B, T, D) -> (B, 1, D)
        return self.lm_head(self.norm(x))  # (B, T, D) -> (B, T, V)

    def _check_input(
        self, idx: torch.Tensor, start: int, cache: KVCache | None
    ) -> None:
        """Cheap checks (shapes and dtypes only): decoding runs them every token."""
        if (
            not isinstance(idx, torch.Tensor)
            or idx.dim() != 2
            or idx.dtype not in _ID_DTYPES
        ):
            got = (
                f"shape {tuple(idx.shape)}, {idx.dtype}"
                if isinstance(idx, torch.Tensor)
                else type(idx).__name__
            )
            raise ValueError(
                f"idx must be (B, T) integer token ids (int64), got {got}; for one "
                "prompt pass ids[None], and convert with .long()"
            )
        if idx.size(0) == 0 or idx.size(1) == 0:
            raise ValueError(
                f"idx holds no tokens: shape {tuple(idx.shape)}; pass at least one "
                "token id per row, e.g. the tokenizer's BOS id"
            )
        end = start + idx.size(1)
        limit = (
            self.context_length
            if cache is None
            else min(self.context_length, cache.max_len)
        )
        if end > limit:
            raise ValueError(
                f"{start} cached + {idx.size(1)} new positions exceed the limit of "
                f"{limit} (context {self.context_length}); crop the prompt, e.g. "
                f"idx[:, -{max(limit - start, 1)}:], or reset() the cache"
            )
        if cache is not None and cache.keys.size(1) != idx.size(0):
            raise ValueError(
                f"the cache was built for batch size {cache.keys.size(1)}, but idx "
                f"has {idx.size(0)} rows; build it with KVCache.for_model(model, "
                f"batch_size={idx.size(0)})"
            )
        if cache is not None:
            self._check_cache(cache)

    def _check_cache(self, cache: KVCache) -> None:
        """The cache's layers, heads, head width, dtype and device fit this model."""
        c, keys, weight = self.config, cache.keys, self.tok_emb.weight
        sizes = (keys.size(0), keys.size(2), keys.size(4))  # L, H_kv, Dh
        if sizes != (c.n_layers, c.n_kv_heads, c.head_dim):
            raise ValueError(
                f"the cache holds (L, B, H_kv, S_max, Dh) = {tuple(keys.shape)}, but "
                f"this model has L={c.n_layers}, H_kv={c.n_kv_heads}, "
                f"Dh={c.head_dim}; build it with KVCache.for_model(model, batch_size)"
            )
        if keys.dtype != weight.dtype or keys.device != weight.device:
            raise ValueError(
                f"the cache holds {keys.dtype} on {keys.device}, the model "
                f"{weight.dtype} on {weight.device}; KVCache.for_model(model, "
                "batch_size) matches both"
            )

    def _check_ids(self, idx: torch.Tensor) -> None:
        """Every id indexes the embedding: 0 <= id < V (one min/max over (B, T))."""
        low, high = (int(value) for value in torch.aminmax(idx))
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(
                f"token ids must lie in 0..{self.config.vocab_size - 1} (the "
                f"vocabulary), got ids from {low} to {high}; were they made by "
                "another tokenizer, or do they hold a padding label such as -100?"
            )


def from_hf(hf_model: nn.Module) -> Llama:
    """Build our `Llama` with the weights of a `transformers` LlamaForCausalLM.

    The q, k and v projections are stacked into one matrix, and so are the gate and
    up projections; every other weight is copied as it is.

    Args:
        hf_model: e.g. SmolLM2 from `utils.models.load_smollm2()`.

    Returns:
        A `Llama` in eval mode, on the same device and dtype as `hf_model`.

    Raises:
        ValueError: the model has biases in attention or the MLP (ours has none).

    Introduced in chapter 9.
    """
    hf_config = hf_model.config
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", 0):
        raise ValueError("models with attention or MLP biases are not supported")
    config = llama_config_from_hf(hf_config)
    weight = hf_model.get_input_embeddings().weight
    model = Llama(config).to(device=weight.device, dtype=weight.dtype)
    inner = hf_model.model
    with torch.no_grad():
        model.tok_emb.weight.copy_(weight)
        for block, hf_layer in zip(model.blocks, inner.layers, strict=True):
            attn, mlp = hf_layer.self_attn, hf_layer.mlp
            qkv = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
            block.attn.qkv.weight.copy_(torch.cat(qkv, dim=0))
            block.attn.out_proj.weight.copy_(attn.o_proj.weight)
            gate_up = [mlp.gate_proj.weight, mlp.up_proj.weight]
            block.mlp.gate_up.weight.copy_(torch.cat(gate_up, dim=0))
            block.mlp.down.weight.copy_(mlp.down_proj.weight)
            block.norm1.weight.copy_(hf_layer.input_layernorm.weight)
            block.norm2.weight.copy_(hf_layer.post_attention_layernorm.weight)
        model.norm.weight.copy_(inner.norm.weight)
        if not config.tie_embeddings:
            model.lm_head.weight.copy_(hf_model.get_output_embeddings().weight)
    if weight.device.type == "cpu":
        _store_for_decoding(model)
    return model.eval()


def _store_for_decoding(model: Llama) -> None:
    """Keep each weight matrix in memory as its transpose, (in, out), row by row.

    The values and shapes do not change: `weight` stays an (out, in) tensor, now a
    transposed view. Decoding multiplies one row vector by each matrix, and the time
    goes into reading the matrix from memory. PyTorch's CPU kernels read an (in, out)
    layout at about twice the speed for the head and a third faster for the blocks'
    q/k/v, output and gate/up matrices (measured on two cores), and the results equal
    the plain layout's up to float rounding. The MLP's down matrix, 1536 wide and 576
    tall, is the exception: its usual (out, in) layout reads about a fifth faster, so
    it stays. The tied embedding shares the head's layout; a lookup reads
    one strided column per token, which costs nothing next to a matrix.
    """
    downs = {id(block.mlp.down) for block in model.blocks}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for linear in linears:
            if linear is model.lm_head and model.config.tie_embeddings:
                continue
            if id(linear) in downs:  # (out, in) reads faster for this shape
                continue
            linear.weight = nn.Parameter(linear.weight.t().contiguous().t())
        if model.config.tie_embeddings:
            model.tok_emb.weight = nn.Parameter(
                model.tok_emb.weight.t().contiguous().t()
            )
            model.lm_head.weight = model.tok_emb.weight


@torch.inference_mode()
def decode_step(model: Llama, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One cached decoding step, written for speed: the logits after `token`.

    The arithmetic of `model(token, cache=cache, last_only=True)`, in about 15
    PyTorch operations per block instead of about 100. With one position, a step
    reads the 538 MB of weights once and does little else, so every operation's
    fixed cost (a few microseconds of Python and dispatch) adds up: 30 blocks x 100
    operations is several milliseconds per token. What changes:

    - the modules are skipped: the loop reads each block's weights directly;
    - RMSNorm is `F.rms_norm`, one call with the weight;
    - RoPE rotates the queries and keys of all heads at once, and the rotate-half
      step becomes a roll by Dh/2 against sines with the first half negated; the
      1/sqrt(Dh) of attention is folded into the queries' cosines and sines, which
      are shared by every block;
    - attention of one query is two small matrix products and a softmax, with each
      group of query heads against its key/value head (no mask: every cached
      position is in the past);
    - each residual add is folded into its matrix product (`torch.addmm`).

    `tests/test_llama.py` checks that the logits and the cache equal the module
    path's within float rounding.

    Args:
        model: a `Llama`.
        token: (B, 1), the newest token of each row.
        cache: the `KVCache` holding the earlier positions; the new keys and values
            are written at position `cache.length`, which then moves on by 1.

    Returns:
        (B, V) logits for the next token.

    Raises:
        ValueError: token is not (B, 1) ids, or the cache is full or built for
            another batch size.

    Introduced in chapter 9.
    """
    if not isinstance(token, torch.Tensor) or token.dim() != 2 or token.size(1) != 1:
        shape = tuple(token.shape) if isinstance(token, torch.Tensor) else type(token)
        raise ValueError(f"token must be (B, 1) ids, got {shape}")
    pos = cache.length
    model._check_input(token, pos, cache)
    c = model.config
    n_qk, half = c.n_heads + c.n_kv_heads, c.head_dim // 2
    batch_size = token.size(0)

    # the rotation of position `pos`, one row per query or key head: (H + H_kv, Dh)
    cos, sin = model.rope_cos[pos], model.rope_sin[pos]  # (Dh,) each
    sin = torch.cat((-sin[:half], sin[half:]))  # rotate_half(x) * sin, as a roll
    scale = cos.new_ones(n_qk, 1)
    scale[: c.n_heads] = c.head_dim**-0.5  # queries carry attention's 1/sqrt(Dh)
    cos, sin = cos * scale, sin * scale

    x = model.tok_emb(token[:, 0])  # (B, D)
    for layer, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        h = F.rms_norm(x, (c.d_model,), block.norm1.weight, c.norm_eps)
        qkv = F.linear(h, attn.qkv.weight)  # (B, (H + 2 H_kv) Dh)
        qk = qkv[:, : n_qk * c.head_dim].view(batch_size, n_qk, c.head_dim)
        qk = torch.addcmul(qk * cos, qk.roll(half, dims=-1), sin)  # RoPE, all heads
        v = qkv[:, n_qk * c.head_dim :].view(batch_size, c.n_kv_heads, c.head_dim)
        cache.keys[layer, :, :, pos] = qk[:, c.n_heads :]  # (B, H_kv, Dh)
        cache.values[layer, :, :, pos] = v
        keys = cache.keys[layer, :, :, : pos + 1]  # (B, H_kv, S, Dh)
        values = cache.values[layer, :, :, : pos + 1]
        q = qk[:, : c.n_heads].view(batch_size, c.n_kv_heads, -1, c.head_dim)
        weights = torch.softmax(q @ keys.transpose(-1, -2), dim=-1)  # (B, H_kv, G, S)
        out = (weights @ values).view(batch_size, -1)  # (B, H_kv, G, Dh) -> (B, H Dh)
        x = torch.addmm(x, out, attn.out_proj.weight.t())  # x + out_proj(out)
        h = F.rms_norm(x, (c.d_model,), block.norm2.weight, c.norm_eps)
        gate_up = F.linear(h, mlp.gate_up.weight)  # (B, 2 d_ff)
        hidden = F.silu(gate_up[:, : mlp.d_ff]) * gate_up[:, mlp.d_ff :]
        x = torch.addmm(x, hidden, mlp.down.weight.t())  # x + down(hidden)
    cache.advance(1)
    x = F.rms_norm(x, (c.d_model,), model.norm.weight, c.norm_eps)
    return F.linear(x, model.lm_head.weight)  # (B, V)


@torch.inference_mode()
def generate(
    model: Llama,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend each sequence by up to `max_new_tokens` tokens.

    With the cache, the prompt runs once (prefill) and each later step feeds only the
    newest token, through `decode_step` on `decode_threads(model)` threads. Without
    it, every step recomputes the whole sequence.

    Args:
        model: a `Llama`.
        idx: the prompt, (B, T) token ids.
        max_new_tokens: how many tokens to add at most.
        temperature: 0 (the default) decodes greedily; see `sample_next_token`.
        top_k, top_p: sampling filters; None keeps every token.
        use_cache: decode with a `KVCache` (fast) or recompute everything (slow).
        eos_token_id: stop early once every row has produced this token.
        generator: a seeded `torch.Generator` for repeatable samples.

    Returns:
        (B, T + n) with n <= max_new_tokens new tokens.

    Raises:
        ValueError: the prompt plus the new tokens exceed the context (the model
            does not crop, so shorten the prompt or ask for fewer tokens), or
            max_new_tokens is negative.
        TypeError: max_new_tokens is not a whole number.

    Introduced in chapter 9.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(
        max_new_tokens, numbers.Integral
    ):
        raise TypeError(
            f"max_new_tokens must be a whole number, got "
            f"{type(max_new_tokens).__name__} {max_new_tokens!r}; e.g. 20"
        )
    if max_new_tokens < 0:
        raise ValueError(
            f"max_new_tokens must be >= 0, got {max_new_tokens}; 0 returns the "
            "prompt unchanged"
        )
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.numel() == 0:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx)
        raise ValueError(
            f"idx must be (B, T) token ids with B, T >= 1, got {shape}; for one "
            "prompt pass ids[None]"
        )
    batch_size, prompt_len = idx.shape
    total = prompt_len + max_new_tokens
    if total > model.context_length:
        raise ValueError(
            f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) = {total} "
            f"exceeds the context of {model.context_length} positions; shorten the "
            "prompt or ask for fewer tokens"
        )
    cache = KVCache.for_model(model, batch_size, max_len=total) if use_cache else None
    out = torch.empty(batch_size, total, dtype=torch.long, device=idx.device)
    out[:, :prompt_len] = idx
    step_input, length = idx, prompt_len
    threads = torch.get_num_threads()  # the prompt runs on all of them
    step_threads = decode_threads(model) if use_cache else threads
    try:
        for step in range(max_new_tokens):
            if use_cache and step > 0:  # one new token: the fast path, same arithmetic
                logits = decode_step(model, step_input, cache)  # (B, V)
            else:  # the prompt (prefill), or everything again without a cache
                logits = model(step_input, cache=cache, last_only=True)[:, -1]
            next_id = sample_next_token(logits, temperature, top_k, top_p, generator)
            out[:, length : length + 1] = next_id  # (B, 1)
            length += 1
            if eos_token_id is not None and bool((next_id == eos_token_id).all()):
                break
            step_input = next_id if use_cache else out[:, :length]
            if step == 0:
                torch.set_num_threads(step_threads)  # see `decode_threads`
    finally:
        torch.set_num_threads(threads)
    return out[:, :length]


def kv_bytes_per_token(config: LlamaConfig, n_kv_heads: int | None = None) -> int:
    """Bytes of float32 cache one position needs: 2 (k and v) * L * H_kv * Dh * 4.

    Args:
        config: the model's sizes.
        n_kv_heads: override H_kv, e.g. `config.n_heads` for plain multi-head.

    Raises:
        ValueError: n_kv_heads is not a whole number >= 1 that divides n_heads.

    Introduced in chapter 9.
    """
    n_kv = config.n_kv_heads if n_kv_heads is None else n_kv_heads
    if isinstance(n_kv, bool) or not isinstance(n_kv, int) or n_kv < 1:
        raise ValueError(f"n_kv_heads must be a whole number >= 1, got {n_kv!r}")
    if config.n_heads % n_kv:
        raise ValueError(
            f"n_kv_heads={n_kv} must divide n_heads={config.n_heads}: each key/value "
            "head serves the same number of query heads"
        )
    return 2 * config.n_layers * n_kv * config.head_dim * 4


__all__ = [
    "GroupedQueryAttention",
    "KVCache",
    "Llama",
    "LlamaBlock",
    "LlamaConfig",
    "SwiGLU",
    "decode_step",
    "decode_threads",
    "from_hf",
    "generate",
    "kv_bytes_per_token",
    "kv_cache_update",
    "llama_config_from_hf",
]
