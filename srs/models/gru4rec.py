"""GRU4Rec: session-based recommendations with recurrent neural networks (Hidasi et al., ICLR
2016), in the form the SRS literature compares against (RecBole's GRU4Rec): item embedding ->
dropout -> multi-layer GRU -> linear to d; the last state is the user vector, scored against
the shared item table, trained on every position (BCE with one negative, or full-softmax CE).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cluster.config import SRSConfig
from srs.fusion import ItemEmbedding
from srs.models.base import NextItemRecommender


class GRU4Rec(NextItemRecommender):
    def __init__(self, items: ItemEmbedding, cfg: SRSConfig):
        super().__init__(items, cfg)
        d = items.dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(d, d, num_layers=cfg.num_layers, batch_first=True)
        self.out = nn.Linear(d, d)

    def states(self, seq: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The GRU must start at each row's first real item, not at the padding in front of it:
        rows are rotated to right-padding, packed, run, and rotated back."""
        w = seq.shape[1]
        lengths = (seq != 0).sum(1)
        cols = torch.arange(w, device=seq.device)
        to_right = ((cols + (w - lengths)[:, None]) % w).unsqueeze(-1)  # right[k] = left[k + w - n]
        x = self.dropout(x).gather(1, to_right.expand(-1, -1, x.shape[2]))
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=w)
        to_left = ((cols + lengths[:, None]) % w).unsqueeze(-1)  # left[j] = right[j + n - w]
        return self.out(out.gather(1, to_left.expand(-1, -1, out.shape[2])))
