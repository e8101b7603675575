"""BERT4Rec: sequential recommendation with bidirectional encoder representations from
transformer (Sun et al., CIKM 2019).

Bidirectional self-attention, trained with the cloze task: each item of a training sequence is
replaced by a learned [mask] embedding with probability mask_prob and predicted back by a
softmax over every item (a sequence that drew no mask gets its last item masked, which is
also the inference case). Inference appends [mask] after the history (dropping the oldest item
if the window is full) and reads the user vector at that position.

The encoder block is SASRec's (srs.models.transformer, pre-LN, ReLU FFN of width d) rather than
the paper's post-LN GELU block with a 4d FFN: the two backbones then differ only in attention
direction and objective. Scores use the shared item table without the paper's output bias.
"""
from __future__ import annotations

import torch
from torch import nn

from cluster.config import SRSConfig
from srs.data import TrainBatch
from srs.fusion import ItemEmbedding
from srs.models.base import SeqRecommender, full_softmax_ce, trim_padding
from srs.models.transformer import TransformerEncoder


class BERT4Rec(SeqRecommender):
    causal = False

    def __init__(self, items: ItemEmbedding, cfg: SRSConfig):
        super().__init__(items, cfg)
        self.mask_prob = cfg.mask_prob
        self.mask_index = items.n_items + 1  # one past the table: looked up in `mask` instead
        self.mask = nn.Parameter(torch.randn(items.dim) * 0.02)
        self.encoder = TransformerEncoder(items.dim, cfg, causal=False)

    def _encode(self, seq: torch.Tensor, views: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Each view's states of `seq` (which may hold mask_index, read from `mask`)."""
        seq = trim_padding(seq)
        return [self.encoder(x, seq == 0) for x in self.embed(seq, [torch.cat([v, self.mask[None]]) for v in views])]

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        """Cloze CE over the masked positions of the full training sequences (the last
        max_len items of seq[:-2], which are the batch's `targets` rows); masks from torch's
        global generator, seeded by the training loop."""
        seq = trim_padding(batch.targets)
        real = seq != 0
        masked = real & (torch.rand(seq.shape, device=seq.device) < self.mask_prob)
        masked[:, -1] |= ~masked.any(1)
        views = self.items.views()
        h = torch.cat(self._encode(seq.masked_fill(masked, self.mask_index), views), -1)
        return full_softmax_ce(h[masked], seq[masked], torch.cat(views, 1), self.unseen)

    def _users(self, seq: torch.Tensor, views: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        history = seq[:, -(self.max_len - 1):]
        with_mask = torch.cat([history, torch.full_like(seq[:, :1], self.mask_index)], dim=1)
        return [h[:, -1] for h in self._encode(with_mask, views)]
