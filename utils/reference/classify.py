"""A classification head on a pretrained encoder, with padding-aware mean pooling.

An encoder returns one vector per token. To label a whole text we average the
vectors of the real tokens (not the padding), then a linear layer maps that average
to one score per class.
"""

import torch
from torch import nn


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors of each sequence over its real tokens only.

    Args:
        hidden: (B, T, D) token vectors.
        attention_mask: (B, T), 1 (or True) for real tokens, 0 for padding.

    Returns:
        (B, D) one vector per sequence.

    Raises:
        ValueError: shapes disagree, or a sequence has no real token.

    Introduced in chapter 8.
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"need hidden (B, T, D) and attention_mask (B, T), got "
            f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T) -> (B, T, 1)
    counts = mask.sum(dim=1)  # (B, 1)
    if bool((counts == 0).any()):
        raise ValueError("a sequence has no real token (its attention_mask is all 0)")
    return (hidden * mask).sum(dim=1) / counts  # (B, T, D) -> (B, D)


class EncoderClassifier(nn.Module):
    """An encoder, mean pooling over real tokens, dropout and a linear head.

    Args:
        encoder: a `transformers` encoder whose output has `last_hidden_state`.
        n_classes: number of labels.
        dropout: applied to the pooled vector in training.

    Introduced in chapter 8.
    """

    def __init__(self, encoder: nn.Module, n_classes: int, dropout: float = 0.1):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) token ids and mask -> (B, n_classes) logits."""
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (B, T, D)
        pooled = mean_pool(hidden, attention_mask)  # (B, D)
        return self.head(self.dropout(pooled))  # (B, n_classes)
