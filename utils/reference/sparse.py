"""Dense vs sparse: sliding-window attention and a mixture-of-experts feed-forward.

A dense layer uses all of its connections for every token. Two ways to use fewer:

- Sliding-window attention (Longformer, Mistral) lets each query see only the last
  `window` keys, itself included: work and KV cache stop growing with the context.
- A mixture of experts (Switch Transformer, Mixtral) holds several feed-forward
  "experts" and a router that sends each token to its top-k of them: the parameters
  grow with the number of experts, the work per token only with k.
"""

from dataclasses import dataclass

import torch
from torch import nn

from utils.reference.attention import causal_mask
from utils.reference.block import MLP
from utils.reference.params import ArchConfig, mlp_parameters, parameter_breakdown


def sliding_window_mask(
    seq_len: int,
    window: int,
    kv_len: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A causal mask that also blocks keys more than `window - 1` positions back.

    Query i (at position kv_len - seq_len + i, as in `causal_mask`) sees the keys at
    positions pos - window + 1 ... pos: `window` keys, itself included. A window of at
    least kv_len gives the plain causal mask.

    Args:
        seq_len: T, the number of queries.
        window: how many keys each query may see, itself included.
        kv_len: S, the number of keys; defaults to `seq_len`.
        device: where to build the mask.

    Returns:
        A (T, S) bool tensor, True where a query may NOT look.

    Raises:
        ValueError: `window` is not a positive int, or `kv_len` < `seq_len`.

    Introduced in chapter 9.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(
            f"window must be a positive int (keys per query, itself included), "
            f"got {window!r}"
        )
    future = causal_mask(seq_len, kv_len, device=device)  # (T, S), checks kv_len
    kv_len = future.size(-1)
    # 1) key j is too old for query i when pos_i - j >= window
    query_pos = torch.arange(seq_len, device=device)[:, None] + kv_len - seq_len
    key_pos = torch.arange(kv_len, device=device)[None, :]
    too_old = query_pos - key_pos >= window  # (T, 1) - (1, S) -> (T, S)
    return future | too_old


def load_balancing_loss(
    router_probs: torch.Tensor, expert_index: torch.Tensor, n_experts: int
) -> torch.Tensor:
    """The Switch/Mixtral auxiliary loss that pushes a router to spread its tokens.

    loss = n_experts * sum_i f_i * P_i, where f_i is the fraction of the N * k
    routing choices that went to expert i and P_i is the mean router probability of
    expert i. It is 1.0 when both are uniform and grows to n_experts when one expert
    takes everything. f_i has no gradient; P_i carries it to the router.

    Args:
        router_probs: (N, E) softmax of the router logits, one row per token.
        expert_index: (N, k) the chosen experts of each token.
        n_experts: E.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: shapes that do not fit together, or an index outside [0, E).

    Introduced in chapter 9.
    """
    if router_probs.dim() != 2 or router_probs.size(-1) != n_experts:
        raise ValueError(
            f"router_probs must be (N, n_experts={n_experts}), got "
            f"{tuple(router_probs.shape)}; flatten (B, T) into N first"
        )
    if expert_index.dim() != 2 or expert_index.size(0) != router_probs.size(0):
        raise ValueError(
            f"expert_index must be (N, k) with N={router_probs.size(0)}, got "
            f"{tuple(expert_index.shape)}"
        )
    if (
        expert_index.numel()
        and not 0 <= int(expert_index.min()) <= int(expert_index.max()) < n_experts
    ):
        raise ValueError(f"expert_index must lie in [0, {n_experts})")

    # 1) f: share of all routing choices per expert (a count: no gradient)
    counts = torch.bincount(expert_index.flatten(), minlength=n_experts)
    fraction = counts.to(router_probs.dtype) / expert_index.numel()  # (E,)

    # 2) P: mean router probability per expert (differentiable)
    mean_prob = router_probs.mean(dim=0)  # (N, E) -> (E,)
    return n_experts * (fraction * mean_prob).sum()


@dataclass
class Routing:
    """What the router decided for N tokens (see `MoEFeedForward.route`).

    Introduced in chapter 9.
    """

    probs: torch.Tensor  # (N, E) softmax over all experts
    expert_index: torch.Tensor  # (N, k) chosen experts, most probable first
    weights: torch.Tensor  # (N, k) mixing weights of the chosen experts, sum to 1


class MoEFeedForward(nn.Module):
    """A mixture-of-experts feed-forward: a router picks top-k of E expert MLPs.

    For each token x the router gives probabilities p = softmax(router(x)) over the
    experts; the k most probable are run and mixed with weights p_i / sum of the
    chosen p (Mixtral's renormalisation), so the weights sum to 1. `forward` also
    returns the load-balancing loss of this batch.

    Args:
        d_model: D, the width of the input and the output.
        d_ff: the hidden width of each expert.
        n_experts: E, how many experts.
        top_k: k, how many experts each token uses.
        activation: the experts' activation (see `MLP`).

    Raises:
        ValueError: top_k is not between 1 and n_experts.

    Introduced in chapter 9.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        n_experts: int,
        top_k: int = 2,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(
                f"top_k must be between 1 and n_experts={n_experts}, got {top_k}"
            )
        self.d_model, self.n_experts, self.top_k = d_model, n_experts, top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        # NOTE: Mixtral's experts are SwiGLU MLPs (gate, up, down); ours have two
        # matrices. The routing is the same.
        self.experts = nn.ModuleList(
            MLP(d_model, d_ff, activation=activation, bias=False)
            for _ in range(n_experts)
        )

    def route(self, x: torch.Tensor) -> Routing:
        """Choose the top-k experts of each token and their mixing weights.

        Args:
            x: (N, D) tokens.

        Returns:
            A `Routing` with probs (N, E), expert_index (N, k) and weights (N, k).

        Introduced in chapter 9.
        """
        probs = torch.softmax(self.router(x), dim=-1)  # (N, D) -> (N, E)
        top_probs, expert_index = probs.topk(self.top_k, dim=-1)  # 2 x (N, k)
        weights = top_probs / top_probs.sum(dim=-1, keepdim=True)
        return Routing(probs, expert_index, weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Send every token through its chosen experts and mix their outputs.

        Args:
            x: (..., D), e.g. (B, T, D).

        Returns:
            `(output, balance_loss)`: output (..., D) and the scalar
            `load_balancing_loss` of this batch.

        Raises:
            ValueError: the last dim is not d_model.

        Introduced in chapter 9.
        """
        if x.size(-1) != self.d_model:
            raise ValueError(
                f"last dim must be d_model={self.d_model}, got shape {tuple(x.shape)}"
            )
        flat = x.reshape(-1, self.d_model)  # (..., D) -> (N, D)
        routing = self.route(flat)
        out = torch.zeros_like(flat)

        # 1) each expert runs once, on the tokens that chose it
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(routing.expert_index == e, as_tuple=True)
            if token.numel() == 0:
                continue
            weight = routing.weights[token, slot, None]  # (n_e, 1)
            out.index_add_(0, token, weight * expert(flat[token]))  # (n_e, D)

        # 2) the auxiliary loss that keeps the experts in use
        loss = load_balancing_loss(routing.probs, routing.expert_index, self.n_experts)
        return out.reshape(x.shape), loss

    def parameter_counts(self) -> tuple[int, int]:
        """`(total, active)`: all parameters, and those one token uses (router + k).

        Introduced in chapter 9.
        """
        router = sum(p.numel() for p in self.router.parameters())
        expert = sum(p.numel() for p in self.experts[0].parameters())
        return router + self.n_experts * expert, router + self.top_k * expert


def moe_parameter_counts(
    config: ArchConfig, n_experts: int, top_k: int
) -> tuple[int, int]:
    """Total and active parameters of a model whose every MLP is a mixture of experts.

    Each block holds `n_experts` copies of the MLP of `config` plus a router (D x E,
    no bias); a token uses the router and `top_k` experts per block. Everything else
    (embeddings, attention, norms, head) is shared and always active.

    Args:
        config: the dense architecture whose MLP becomes the experts.
        n_experts: E, experts per block.
        top_k: k, experts per token.

    Returns:
        `(total, active)`.

    Raises:
        ValueError: top_k is not between 1 and n_experts.

    Introduced in chapter 9.
    """
    if not 1 <= top_k <= n_experts:
        raise ValueError(
            f"top_k must be between 1 and n_experts={n_experts}, got {top_k}"
        )
    parts = parameter_breakdown(config)
    shared = sum(parts.values()) - parts["mlp"]
    router = config.n_layers * config.d_model * n_experts
    expert = config.n_layers * mlp_parameters(config)
    return shared + router + n_experts * expert, shared + router + top_k * expert


MIXTRAL_8X7B = ArchConfig(
    vocab_size=32000,
    d_model=4096,
    n_layers=32,
    n_heads=32,
    n_kv_heads=8,
    d_ff=14336,
    max_seq_len=32768,
    positions="rope",
    mlp="swiglu",
    norm="rmsnorm",
    bias=False,
    parallel_block=False,
    tied_embeddings=False,
    lm_head_bias=False,
)
"""Mixtral-8x7B's dense skeleton; its MLPs are 8 experts, top-2."""
