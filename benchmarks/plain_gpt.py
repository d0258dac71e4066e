"""A plain PyTorch GPT and training step, the yardstick of `train_speed.py --baseline`.

Written the way most tutorials and nanoGPT-style repositories write it: one linear
layer for q, k and v, PyTorch's scaled_dot_product_attention, nn.LayerNorm, exact
GELU, a tied head, AdamW with its default multi-tensor kernel, batches stacked row by
row, and the loss read back every step. Same sizes and optimizer settings as the
benchmark (4 layers, 4 heads, width 128, context 64, batch 12), so the two time the
same arithmetic.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

N_LAYERS, N_HEADS, D_MODEL, CONTEXT, BATCH = 4, 4, 128, 64, 12


class PlainAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL, bias=False)
        self.proj = nn.Linear(D_MODEL, D_MODEL, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = x.shape
        q, k, v = self.qkv(x).split(D_MODEL, dim=2)  # 3 x (B, T, D)
        q, k, v = (
            t.view(batch_size, seq_len, N_HEADS, -1).transpose(1, 2) for t in (q, k, v)
        )  # (B, H, T, Dh) each
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(batch_size, seq_len, D_MODEL)  # (B, T, D)
        return self.proj(y)


class PlainBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL, bias=False)
        self.attn = PlainAttention()
        self.ln2 = nn.LayerNorm(D_MODEL, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(D_MODEL, 4 * D_MODEL, bias=False),
            nn.GELU(),
            nn.Linear(4 * D_MODEL, D_MODEL, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PlainGPT(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, D_MODEL)
        self.pos = nn.Embedding(CONTEXT, D_MODEL)
        self.blocks = nn.ModuleList(PlainBlock() for _ in range(N_LAYERS))
        self.ln_f = nn.LayerNorm(D_MODEL, bias=False)
        self.head = nn.Linear(D_MODEL, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.size(1), device=idx.device)
        x = self.tok(idx) + self.pos(positions)  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def make_step(tokens: torch.Tensor, vocab_size: int) -> Callable[[], float]:
    """One training step of a fresh PlainGPT per call; each call returns the loss."""
    model = PlainGPT(vocab_size)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.1},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=1e-3,
        betas=(0.9, 0.99),
    )

    def step() -> float:
        starts = torch.randint(tokens.numel() - CONTEXT, (BATCH,))
        x = torch.stack([tokens[i : i + CONTEXT] for i in starts])  # (B, T)
        y = torch.stack([tokens[i + 1 : i + 1 + CONTEXT] for i in starts])  # (B, T)
        loss = model(x, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step
