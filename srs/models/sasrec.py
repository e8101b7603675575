"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Causal self-attention over the item sequence (srs.models.transformer); the state at the last
position is the user vector and score(u, v) = <u, e_v> with the input item table shared as the
output layer (the paper's choice: fewer parameters, better on sparse data). Trained on every
position at once with the paper's BCE and one sampled negative, or full-softmax CE.
"""
from __future__ import annotations

import torch

from cluster.config import SRSConfig
from srs.fusion import ItemEmbedding
from srs.models.base import NextItemRecommender
from srs.models.transformer import TransformerEncoder


class SASRec(NextItemRecommender):
    def __init__(self, items: ItemEmbedding, cfg: SRSConfig):
        super().__init__(items, cfg)
        self.encoder = TransformerEncoder(items.dim, cfg, causal=True)

    def states(self, seq: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, seq == 0)
