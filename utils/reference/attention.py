"""Attention by hand: masks, scaled dot-product attention and multi-head attention.

Mask convention, used across the whole course: a boolean mask is True where a query
may NOT look (the key is blocked) and False where it may. This is the convention of
`torch.nn.MultiheadAttention`, and the opposite of the boolean `attn_mask` of
`torch.nn.functional.scaled_dot_product_attention` (where True means "keep"): pass
`~mask` there. A float mask is added to the scores instead: 0 keeps a key, -inf blocks
it.

Masks broadcast against the scores, shape (..., T, S): a causal mask is (T, S), a
padding mask (B, 1, 1, S), a mask per example and head (B, H, T, S).
"""

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(
    seq_len: int, kv_len: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Block every key that lies in a query's future.

    With `kv_len` larger than `seq_len` the queries are the LAST `seq_len` positions of
    the `kv_len` keys, as in cached generation: query i sits at position
    kv_len - seq_len + i and sees the keys up to and including that position.

    Args:
        seq_len: T, the number of queries.
        kv_len: S, the number of keys; defaults to `seq_len`.
        device: where to build the mask.

    Returns:
        A (T, S) bool tensor, True where a query may NOT look (strictly above the
        shifted diagonal).

    Raises:
        ValueError: `kv_len` is smaller than `seq_len`.

    Introduced in chapter 3.
    """
    kv_len = seq_len if kv_len is None else kv_len
    if kv_len < seq_len:
        raise ValueError(
            f"kv_len={kv_len} is smaller than seq_len={seq_len}; the queries must be "
            "the last seq_len of the kv_len positions, so pass kv_len >= seq_len"
        )
    ones = torch.ones(seq_len, kv_len, dtype=torch.bool, device=device)  # (T, S)
    # query i sits at position (S - T + i): block keys after it
    return ones.triu(diagonal=kv_len - seq_len + 1)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Turn a 1/0 "keep" mask (Hugging Face style) into a blocked-keys mask.

    Only keys are masked: a padded query still attends to the real keys, and its
    output is simply ignored later (by the loss or by pooling).

    Args:
        attention_mask: (B, S), 1 (or True) for a real token, 0 for padding.

    Returns:
        A (B, 1, 1, S) bool tensor, True at padded keys; it broadcasts against scores
        of shape (B, H, T, S).

    Raises:
        ValueError: `attention_mask` is not 2-D.

    Introduced in chapter 3.
    """
    if attention_mask.dim() != 2:
        raise ValueError(
            "attention_mask should have shape (B, S), got "
            f"{tuple(attention_mask.shape)}; pass one row of 1/0 per sequence"
        )
    blocked = attention_mask == 0  # (B, S), True at padding
    return blocked[:, None, None, :]  # (B, S) -> (B, 1, 1, S)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head `n_rep` times, for grouped-query attention.

    Head j of the result is head j // n_rep of `x`, so consecutive query heads share
    one key/value head (the order of `torch.repeat_interleave`).

    Args:
        x: keys or values, (B, H_kv, S, Dh).
        n_rep: how many query heads share one key/value head, H / H_kv.

    Returns:
        (B, H_kv * n_rep, S, Dh); `x` itself when n_rep is 1.

    Raises:
        ValueError: x is not 4-D, or n_rep is not a whole number >= 1.

    Introduced in chapter 4.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x)
        raise ValueError(
            f"x must be keys or values of shape (B, H_kv, S, Dh), got {got}; for "
            "one sequence add the batch axis, x[None]"
        )
    if isinstance(n_rep, bool) or not isinstance(n_rep, numbers.Integral) or n_rep < 1:
        swapped = "; H_kv // H gives 0, so divide H by H_kv" if n_rep == 0 else ""
        raise ValueError(
            f"n_rep must be a whole number >= 1, H // H_kv (query heads per "
            f"key/value head), got {n_rep!r}{swapped}"
        )
    if n_rep == 1:
        return x
    batch_size, n_kv_heads, kv_len, head_dim = x.shape
    x = x[:, :, None].expand(batch_size, n_kv_heads, n_rep, kv_len, head_dim)
    # (B, H_kv, n_rep, S, Dh) -> (B, H, S, Dh)
    return x.reshape(batch_size, n_kv_heads * n_rep, kv_len, head_dim)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    return_weights: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mix the values by how well each query matches each key.

    Computes softmax(q @ k^T * scale + mask) @ v. A query whose keys are all blocked
    gets zero weights and a zero output (not NaN), and zero gradients.

    Args:
        q: queries, (..., T, Dh).
        k: keys, (..., S, Dh); leading dims broadcast with those of q.
        v: values, (..., S, Dh).
        mask: broadcastable to (..., T, S). Bool: True where a query may NOT look.
            Float: added to the scores (0 keeps, -inf blocks).
        is_causal: also block keys in each query's future; with S > T the queries
            are the last T positions (see `causal_mask`).
        scale: factor for the scores; defaults to 1 / sqrt(Dh).
        dropout_p: probability of zeroing a weight, applied only when `training`.
        training: whether dropout is active.
        return_weights: return the weights too, or None in their place.

    Returns:
        `(output, weights)`: output (..., T, Dh) and weights (..., T, S), the softmax
        before dropout (each row sums to 1, or to 0 when fully blocked).

    Raises:
        ValueError: q and k differ in Dh, k and v differ in S, the leading dims do not
            broadcast, the mask does not broadcast to (..., T, S) or is not bool/float.

    Introduced in chapter 3.
    """
    scores_shape = _check_attention_inputs(q, k, v, mask)
    seq_len, kv_len = scores_shape[-2], scores_shape[-1]
    blocked, bias = _split_mask(mask)
    if is_causal:
        future = causal_mask(seq_len, kv_len, device=q.device)  # (T, S)
        blocked = future if blocked is None else blocked | future

    # 1) similarity of every query with every key, scaled by 1/sqrt(Dh)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    keys_t = k.transpose(-2, -1)  # (..., S, Dh) -> (..., Dh, S)
    scores = (q @ keys_t) * scale  # (..., T, Dh) @ (..., Dh, S) -> (..., T, S)
    if bias is not None:
        scores = scores + bias

    # 2) blocked keys get the lowest finite score: -inf would give NaN in full rows
    if blocked is not None:
        scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)

    # 3) softmax over the keys, then zero the blocked entries (whole rows if need be)
    weights = torch.softmax(scores, dim=-1)
    if blocked is not None:
        weights = weights.masked_fill(blocked, 0.0)

    # 4) dropout on the weights, then the weighted sum of the values
    dropped = weights
    if training and dropout_p > 0.0:
        dropped = F.dropout(weights, p=dropout_p, training=True)
    output = dropped @ v  # (..., T, S) @ (..., S, Dh) -> (..., T, Dh)
    return output, (weights if return_weights else None)


class MultiHeadAttention(nn.Module):
    """H attention heads of width Dh = D / H, run in parallel and mixed by out_proj.

    With `n_kv_heads` < `n_heads` this is grouped-query attention: k_proj and v_proj
    produce only `n_kv_heads` heads, and each serves n_heads / n_kv_heads query heads.
    Set `store_weights = True` to keep the last attention weights in `last_weights`,
    (B, H, T, S), for plotting.

    With `fused=True` two shortcuts give the same result faster. Self-attention
    computes q, k and v with one matmul (while the three projections are plain
    `nn.Linear`s without hooks), and the heads run through PyTorch's fused
    `F.scaled_dot_product_attention` (no (T, S) weights kept in memory) when no weights
    are stored, no explicit mask is given, and a causal call has as many queries as
    keys. Otherwise, and always with `fused=False` (the default), the step-by-step
    code runs.

    Args:
        d_model: D, the width of the input and the output.
        n_heads: H, the number of query heads; must divide d_model.
        dropout: dropout on the attention weights, active in training mode only.
        bias: whether the four projections have biases.
        n_kv_heads: the number of key/value heads; defaults to n_heads and must
            divide it.
        fused: use PyTorch's fused attention kernel where possible (see above);
            chapter 5's GPT turns it on for training speed.

    Raises:
        ValueError: n_heads does not divide d_model, or n_kv_heads does not divide
            n_heads.

    Introduced in chapter 4.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        n_kv_heads: int | None = None,
        fused: bool = False,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        _check_head_counts(d_model, n_heads, n_kv_heads)
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        kv_width = n_kv_heads * self.head_dim  # narrower than D under GQA
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_width, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_width, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.fused = fused  # PyTorch's fused kernel where possible (no weights)
        self.store_weights = False  # set True to keep last_weights for plots
        self.last_weights: torch.Tensor | None = None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from every position of x to every position of x (or of kv).

        Args:
            x: the queries' sequence, (B, T, D).
            mask: broadcastable to (B, H, T, S), e.g. (T, S) or (B, 1, 1, S); bool
                True where a query may NOT look, or float added to the scores.
            is_causal: block each query's future (see `causal_mask`).
            kv: another sequence (B, S, D) for cross-attention; defaults to x.

        Returns:
            (B, T, D).

        Raises:
            ValueError: x or kv is not (B, *, D), or their batch sizes differ.

        Introduced in chapter 4.
        """
        q, k, v = self.project(x, kv)
        return self.attend(q, k, v, mask=mask, is_causal=is_causal)

    def project(
        self, x: torch.Tensor, kv: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project to queries, keys and values, split into heads.

        Chapter 9 inserts rotary positions and a KV cache between `project` and
        `attend`.

        Args:
            x: (B, T, D), the sequence the queries come from.
            kv: (B, S, D), the sequence the keys and values come from; defaults to x.

        Returns:
            q (B, H, T, Dh), k and v (B, H_kv, S, Dh), with H_kv = n_kv_heads.

        Raises:
            ValueError: x or kv is not (B, *, D), or their batch sizes differ.

        Introduced in chapter 4.
        """
        source = x if kv is None else kv
        self._check_input(x, "x")
        self._check_input(source, "kv")
        if source.size(0) != x.size(0):
            raise ValueError(
                f"x and kv need the same batch size, got x {tuple(x.shape)} and "
                f"kv {tuple(source.shape)}"
            )
        kv_heads = self.n_kv_heads  # H_kv, equal to H unless grouped-query
        if kv is None and self._can_fuse_projections():
            q, k, v = self._fused_projections(x)
        else:
            q, k, v = self.q_proj(x), self.k_proj(source), self.v_proj(source)
        q = self._split_heads(q, self.n_heads)  # (B, T, D) -> (B, H, T, Dh)
        k = self._split_heads(k, kv_heads)  # (B, S, H_kv * Dh) -> (B, H_kv, S, Dh)
        v = self._split_heads(v, kv_heads)  # (B, S, H_kv * Dh) -> (B, H_kv, S, Dh)
        return q, k, v

    def _can_fuse_projections(self) -> bool:
        """Whether q, k and v may run as one matmul: fused mode, and all three are
        plain nn.Linear layers without hooks (a LoRA wrapper or a hook must run)."""
        if not self.fused:
            return False
        projections = (self.q_proj, self.k_proj, self.v_proj)
        return all(
            type(p) is nn.Linear and not p._forward_hooks and not p._forward_pre_hooks
            for p in projections
        )

    def _fused_projections(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v from one (D, D + 2 H_kv Dh) matmul: the numbers of the three
        separate projections, with less overhead per training step."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight for p in projections])  # (D + 2 H_kv Dh, D)
        bias = None
        if self.q_proj.bias is not None:
            bias = torch.cat([p.bias for p in projections])
        qkv = F.linear(x, weight, bias)  # (B, T, D) -> (B, T, D + 2 H_kv Dh)
        widths = [p.out_features for p in projections]
        q, k, v = qkv.split(widths, dim=-1)  # (B, T, D), 2 x (B, T, H_kv Dh)
        return q, k, v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Run attention per head, merge the heads and mix them with out_proj.

        Args:
            q: (B, H, T, Dh).
            k: (B, H_kv, S, Dh).
            v: (B, H_kv, S, Dh).
            mask: broadcastable to (B, H, T, S), True (bool) where a query may NOT
                look, or float added to the scores.
            is_causal: block each query's future.

        Returns:
            (B, T, D).

        Raises:
            ValueError: the shapes do not fit together (see
                `scaled_dot_product_attention`).

        Introduced in chapter 4.
        """
        n_rep = self.n_heads // self.n_kv_heads
        k = repeat_kv(k, n_rep)  # (B, H_kv, S, Dh) -> (B, H, S, Dh)
        v = repeat_kv(v, n_rep)  # (B, H_kv, S, Dh) -> (B, H, S, Dh)
        if self._can_fuse(q, k, v, mask, is_causal):
            # torch's is_causal aligns the mask top-left, ours bottom-right: they
            # agree only when T == S, which _can_fuse checks
            dropout_p = self.dropout if self.training else 0.0
            out = _fused_attention(q, k, v, dropout_p, is_causal)  # (B, H, T, Dh)
        else:
            out, weights = scaled_dot_product_attention(
                q,
                k,
                v,
                mask=mask,
                is_causal=is_causal,
                dropout_p=self.dropout,
                training=self.training,
                return_weights=self.store_weights,
            )
            if self.store_weights:
                self.last_weights = weights.detach()  # (B, H, T, S)
        batch_size, _, seq_len, _ = q.shape
        out = out.transpose(1, 2)  # (B, H, T, Dh) -> (B, T, H, Dh)
        out = out.reshape(batch_size, seq_len, self.d_model)  # -> (B, T, D)
        return self.out_proj(out)

    def _can_fuse(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
    ) -> bool:
        """Whether the fused kernel computes exactly what the hand-written path does."""
        if not self.fused or self.store_weights or mask is not None:
            return False
        if q.shape[:-2] != k.shape[:-2] or q.size(-1) != k.size(-1):
            return False  # let the hand-written path raise its clear error
        if v.shape[:-1] != k.shape[:-1]:
            return False
        return not is_causal or q.size(-2) == k.size(-2)

    def _split_heads(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        """(B, T, n_heads * Dh) -> (B, n_heads, T, Dh): each head gets its own slice."""
        batch_size, seq_len, _ = x.shape
        x = x.view(batch_size, seq_len, n_heads, self.head_dim)  # -> (B, T, H, Dh)
        return x.transpose(1, 2)  # (B, T, H, Dh) -> (B, H, T, Dh)

    def _check_input(self, x: torch.Tensor, name: str) -> None:
        """Raise a ValueError unless x is (B, *, D)."""
        if x.dim() != 3 or x.size(-1) != self.d_model:
            raise ValueError(
                f"{name} should have shape (B, T, D) with D=d_model={self.d_model}, "
                f"got {tuple(x.shape)}; did you pass token ids instead of embeddings?"
            )

    def extra_repr(self) -> str:
        kv = (
            f", n_kv_heads={self.n_kv_heads}" if self.n_kv_heads != self.n_heads else ""
        )
        fused = ", fused=True" if self.fused else ""
        return f"d_model={self.d_model}, n_heads={self.n_heads}{kv}{fused}"


def _fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float,
    is_causal: bool,
) -> torch.Tensor:
    """PyTorch's fused attention; under autocast on a CPU, in float32 all the same.

    Under bfloat16 autocast the projections around attention run in bfloat16, but
    PyTorch's CPU attention kernel is several times slower backwards in bfloat16
    than in float32 (measured at chapter 6's size), so it gets float32 inputs.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(
                q.float(),
                k.float(),
                v.float(),
                dropout_p=dropout_p,
                is_causal=is_causal,
            )
    return F.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout_p, is_causal=is_causal
    )


def _check_head_counts(d_model: int, n_heads: int, n_kv_heads: int) -> None:
    """Raise a ValueError unless the heads split d_model and the kv heads evenly."""
    if n_heads <= 0 or d_model % n_heads != 0:
        raise ValueError(
            f"n_heads={n_heads} must divide d_model={d_model} so that every head "
            "gets the same width head_dim = d_model / n_heads"
        )
    if n_kv_heads <= 0 or n_heads % n_kv_heads != 0:
        raise ValueError(
            f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}: each key/value "
            "head serves the same number of query heads"
        )


def _check_attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> tuple[int, ...]:
    """Raise a ValueError naming both shapes if q, k, v, mask don't fit; else the
    shape of the scores, (..., T, S)."""
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if min(q.dim(), k.dim(), v.dim()) < 2:
        raise ValueError(f"q, k and v need at least 2 dims (..., T, Dh); got {shapes}")
    if q.size(-1) != k.size(-1):
        raise ValueError(
            f"q and k must have the same last dim Dh, got q {tuple(q.shape)} and "
            f"k {tuple(k.shape)}"
        )
    if k.size(-2) != v.size(-2):
        raise ValueError(
            f"k and v must have the same length S (dim -2), got k {tuple(k.shape)} "
            f"and v {tuple(v.shape)}"
        )
    try:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the leading (batch, head) dims do not broadcast: {shapes}; under "
            "grouped-query attention repeat the k and v heads first (repeat_kv)"
        ) from None
    scores_shape = (*batch, q.size(-2), k.size(-2))
    if mask is not None:
        _check_mask(mask, scores_shape)
    return scores_shape


def _check_mask(mask: torch.Tensor, scores_shape: tuple[int, ...]) -> None:
    """Raise a ValueError unless mask is bool or float and broadcasts to the scores."""
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(
            f"mask must be bool (True = blocked) or float (added to the scores), got "
            f"{mask.dtype}; for a 1/0 keep mask of shape (B, S) use padding_mask()"
        )
    try:
        fits = torch.broadcast_shapes(mask.shape, scores_shape) == scores_shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' "
            f"shape (..., T, S) = {scores_shape}; a causal mask is (T, S), a padding "
            "mask (B, 1, 1, S): build one from a (B, S) mask with padding_mask()"
        )


def _split_mask(
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(blocked, bias): a bool mask is all blocking; a float mask is a bias whose
    -inf entries also count as blocked, so fully blocked rows become zeros."""
    if mask is None:
        return None, None
    if mask.dtype == torch.bool:
        return mask, None
    blocked = torch.isneginf(mask)
    return blocked, mask.masked_fill(blocked, 0.0)
