"""Flash-style attention: softmax and attention computed block by block.

Naive attention builds the whole (T, S) score matrix before its softmax. The online
softmax (Milakov and Gimelshein, 2018) visits the scores a block at a time and keeps
two running numbers per row, the largest score so far `m` and the sum of
exp(score - m) so far `row_sum`; when a larger score turns up, the old sum is
rescaled by exp(m_old - m_new). FlashAttention (Dao et al., 2022) applies the same
rescaling to a running weighted sum of the values, so no (T, S) matrix ever exists:
memory grows with T, not with T * S.

`peak_tensor_bytes` measures what a function holds at once, for the memory plot.
"""

import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def online_softmax(x: torch.Tensor, block_size: int = 128) -> torch.Tensor:
    """Softmax over the last dim, with its normaliser gathered one block at a time.

    Pass 1 walks the blocks and keeps, per row, the running max `m` and the running
    sum `row_sum` of exp(x - m); pass 2 writes exp(x - m) / row_sum. Equal to
    `torch.softmax(x, dim=-1)` up to rounding.

    Args:
        x: scores, (..., S).
        block_size: how many scores each step of pass 1 reads.

    Returns:
        (..., S) probabilities; each row sums to 1.

    Raises:
        ValueError: `block_size` is not a positive int, or `x` is not floating point.

    Introduced in chapter 9.
    """
    _check_block_size("block_size", block_size)
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}; call x.float()")
    m = torch.full(x.shape[:-1] + (1,), -math.inf, dtype=x.dtype, device=x.device)
    row_sum = torch.zeros_like(m)  # (..., 1)

    # 1) one pass over the blocks: rescale the old sum whenever the max grows
    for start in range(0, x.size(-1), block_size):
        block = x[..., start : start + block_size]  # (..., <= block_size)
        m_new = torch.maximum(m, block.amax(dim=-1, keepdim=True))
        row_sum = row_sum * torch.exp(m - m_new) + torch.exp(block - m_new).sum(
            -1, keepdim=True
        )
        m = m_new

    # 2) normalise with the final max and sum
    return torch.exp(x - m) / row_sum


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int = 128,
    query_block_size: int | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention over key/value blocks with a running max and sum (flash-style).

    For each block of queries, the key/value blocks arrive one after another. Each
    block's scores update the running max `m`, the running sum `row_sum` and the
    running output `acc` (a weighted sum of values, rescaled alike); the output is
    acc / row_sum.
    Only a (query block, key block) tile of scores exists at any time. With
    `is_causal`, key blocks entirely in the future are skipped.

    Args:
        q: queries, (..., T, Dh).
        k: keys, (..., S, Dh), same leading dims as q.
        v: values, (..., S, Dv).
        block_size: keys per block.
        query_block_size: queries per block; defaults to `block_size`.
        is_causal: block keys after each query; with S > T the queries are the last
            T positions, as in `causal_mask`.
        scale: factor for the scores; defaults to 1 / sqrt(Dh).

    Returns:
        (..., T, Dv), equal to softmax(q k^T * scale) v up to rounding.

    Raises:
        ValueError: shapes that do not fit together, a block size that is not a
            positive int, or is_causal with S < T.

    Introduced in chapter 9.
    """
    seq_len, kv_len = _check_qkv(q, k, v, is_causal)
    _check_block_size("block_size", block_size)
    query_block_size = block_size if query_block_size is None else query_block_size
    _check_block_size("query_block_size", query_block_size)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    offset = kv_len - seq_len  # query i sits at position offset + i
    out = q.new_empty(q.shape[:-1] + (v.size(-1),))  # (..., T, Dv)

    for q0 in range(0, seq_len, query_block_size):
        q1 = min(q0 + query_block_size, seq_len)
        q_block = q[..., q0:q1, :] * scale  # (..., Tq, Dh)
        m = q.new_full(q_block.shape[:-1] + (1,), -math.inf)  # (..., Tq, 1)
        row_sum = torch.zeros_like(m)  # (..., Tq, 1)
        acc = q.new_zeros(q_block.shape[:-1] + (v.size(-1),))  # (..., Tq, Dv)
        for k0 in range(0, kv_len, block_size):
            if is_causal and k0 > offset + q1 - 1:
                break  # 1) this block and all later ones lie in every query's future
            k1 = min(k0 + block_size, kv_len)
            scores = q_block @ k[..., k0:k1, :].transpose(-2, -1)  # (..., Tq, Tk)
            if is_causal and k1 - 1 > offset + q0:
                scores = scores.masked_fill(
                    _tile_future(q0, q1, k0, k1, offset), -math.inf
                )

            # 2) new running max; rescale the old sum and output to it
            m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
            p = torch.exp(scores - m_new)  # (..., Tq, Tk), unnormalised weights
            correction = torch.exp(m - m_new)  # (..., Tq, 1), 0 on the first block
            row_sum = row_sum * correction + p.sum(dim=-1, keepdim=True)
            acc = acc * correction + p @ v[..., k0:k1, :]  # (..., Tq, Dv)
            m = m_new

        # 3) divide by the sum once, at the end
        out[..., q0:q1, :] = acc / row_sum
    return out


def _tile_future(q0: int, q1: int, k0: int, k1: int, offset: int) -> torch.Tensor:
    """(Tq, Tk) bool, True where key k0 + j lies after query offset + q0 + i."""
    query_pos = torch.arange(q0, q1)[:, None] + offset
    key_pos = torch.arange(k0, k1)[None, :]
    return key_pos > query_pos


def _check_block_size(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool
) -> tuple[int, int]:
    """Validate shapes for attention and return (T, S)."""
    if q.dim() < 2 or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(
            "q, k and v need the same number of dims, at least 2 (..., T, Dh); got "
            f"{tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.size(-1) != k.size(-1):
        raise ValueError(
            f"q and k must share Dh, got {q.size(-1)} and {k.size(-1)}; "
            "did you swap the last two dims of k?"
        )
    same_lead = q.shape[:-2] == k.shape[:-2] == v.shape[:-2]
    if k.size(-2) != v.size(-2) or not same_lead:
        raise ValueError(
            f"k and v must have the same (..., S) and q the same leading dims; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not q.is_floating_point():
        raise ValueError(f"q, k and v must be floating point, got {q.dtype}")
    seq_len, kv_len = q.size(-2), k.size(-2)
    if is_causal and kv_len < seq_len:
        raise ValueError(
            f"is_causal needs kv_len >= seq_len, got S={kv_len} < T={seq_len}; the "
            "queries are the last T of the S positions"
        )
    return seq_len, kv_len


class _TensorMeter(TorchDispatchMode):
    """Adds up the bytes of every tensor an operator returns, until it is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, n_bytes: int) -> None:
        self.live -= n_bytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, n_bytes = storage.data_ptr(), storage.nbytes()
            if n_bytes == 0 or key in self._seen:
                continue  # a view of memory we already count
            self._seen.add(key)
            self.live += n_bytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._free, key, n_bytes)
        return out


def peak_tensor_bytes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The most bytes of new tensors that `fn(*args, **kwargs)` holds at one time.

    Every tensor an operator returns is counted from its creation until Python frees
    it (views of counted memory are not counted twice); the inputs are not counted.
    Scratch memory that a fused kernel keeps inside itself is invisible here.

    Args:
        fn: the function to measure; its result is dropped.
        *args: positional arguments for `fn`.
        **kwargs: keyword arguments for `fn`.

    Returns:
        The peak, in bytes.

    Raises:
        TypeError: `fn` is not callable.

    Introduced in chapter 9.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    meter = _TensorMeter()
    with meter:
        result = fn(*args, **kwargs)
    del result
    return meter.peak
