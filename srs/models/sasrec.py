"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Causal self-attention over the item sequence with learned position embeddings; the state at
the last position is the user vector and score(u, v) = <u, e_v> with the input item table
shared as the output layer (the paper's choice: fewer parameters, better on sparse data).
Blocks are pre-LayerNorm as in the paper, g(x) = x + Dropout(g(LayerNorm(x))), with a point-
wise two-layer FFN of width d and a final LayerNorm. Training is the paper's BCE with one
sampled negative per position, all positions at once.

Verbs shared by every backbone (RecBole's calculate_loss / full_sort_predict / user state):
`loss(batch)`, `score_all(seq)`, `user_vector(seq)`. Sequences are left-padded with 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srs.data import TrainBatch
from srs.fusion import ItemEmbedding


class SASRec(nn.Module):
    def __init__(self, items: ItemEmbedding, max_len: int, num_layers: int, num_heads: int, dropout: float):
        super().__init__()
        d = items.dim
        if d % num_heads:
            raise ValueError(f"hidden_size {d} is not divisible by num_heads {num_heads}")
        self.items = items
        self.max_len = max_len
        self.num_heads = num_heads
        self.position = nn.Embedding(max_len, d)
        nn.init.normal_(self.position.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d, num_heads, dim_feedforward=d, dropout=dropout, activation="relu", batch_first=True, norm_first=True
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d)

    def _encode(self, seq: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, w, d] for the last w columns of `seq`, w = the longest row in the
        batch: all-padding leading columns are dropped (short sequences cost less). Positions
        count from the right, so trimming does not change what a position means."""
        seq = seq[:, int((seq != 0).any(0).int().argmax()):]
        w = seq.shape[1]
        positions = torch.arange(self.max_len - w, self.max_len, device=seq.device)
        x = self.dropout(table[seq] * self.items.dim**0.5 + self.position(positions))
        pad = seq == 0
        # True = may not attend: future positions and padding keys; a position always sees
        # itself, so padding rows stay finite (their outputs are never used).
        mask = torch.ones(w, w, dtype=torch.bool, device=seq.device).triu(1) | pad.unsqueeze(1)
        mask &= ~torch.eye(w, dtype=torch.bool, device=seq.device)
        mask = mask.repeat_interleave(self.num_heads, dim=0)
        for layer in self.layers:
            x = layer(x, src_mask=mask)
        return self.norm(x)

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        """Mean over non-padding positions of -log s(<h_t, e_pos>) - log(1 - s(<h_t, e_neg>))."""
        table = self.items.table()
        h = self._encode(batch.inputs, table)
        w = h.shape[1]
        targets, negatives = batch.targets[:, -w:], batch.negatives[:, -w:]
        pos = (h * table[targets]).sum(-1)
        neg = (h * table[negatives]).sum(-1)
        per_position = F.softplus(-pos) + F.softplus(neg)
        return per_position[targets != 0].mean()

    def forward(self, batch: TrainBatch) -> torch.Tensor:
        """The training loss: DistributedDataParallel synchronizes gradients only through forward."""
        return self.loss(batch)

    def user_vector(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, d]: the state after the most recent item."""
        return self._encode(seq, self.items.table())[:, -1]

    def score_all(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, n_items + 1] scores for full ranking; column 0 (padding) is meaningless."""
        table = self.items.table()
        return self._encode(seq, table)[:, -1] @ table.T
