"""The interface every backbone shares, and the next-item losses of SASRec and GRU4Rec.

Verbs (RecBole's calculate_loss / full_sort_predict / user state): `loss(batch)`,
`score_all(seq)` -> [B, n_items + 1] with score(u, v) = <u, e_v> over the item source's table
(column 0, padding, is meaningless), and `user_vector(seq)` -> [B, d]. Sequences are
left-padded with 0, so the most recent item is the last column.

An item source with several views (LLM-ESR's ID and semantic views) has each view encoded by
the same backbone weights; the user vector and the item table are the views side by side, so a
score is the sum of the views' dot products.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srs.data import TrainBatch
from srs.fusion import ItemEmbedding


def trim_padding(seq: torch.Tensor) -> torch.Tensor:
    """The last w columns of `seq`, w = its longest row: all-padding leading columns cost time
    and carry nothing (every row's positions are counted from its own items, so they are unchanged)."""
    return seq[:, int((seq != 0).any(0).int().argmax()):]


def full_softmax_ce(states: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
                    unseen: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of the targets [N] over every item, from states [N, d]; the padding
    item and the `unseen` items (cold-item protocol) are never candidates."""
    logits = states @ table.T
    logits[:, 0] = -torch.inf
    if unseen is not None:
        logits[:, unseen] = -torch.inf
    return F.cross_entropy(logits, targets)


class SeqRecommender(nn.Module):
    """A backbone over an item source. Subclasses define `loss` and `_user` (the user vector
    from a sequence and the current table, computed once per call)."""

    needs_negatives = False  # whether the training batches must carry sampled negatives

    def __init__(self, items: ItemEmbedding, max_len: int):
        super().__init__()
        self.items = items
        self.max_len = max_len
        self.unseen: torch.Tensor | None = None   # items training must not score (cold-item protocol)

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        raise NotImplementedError

    def _user(self, seq: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def user_vector(self, seq: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._user(seq, view) for view in self.items.views()], -1)

    def score_all(self, seq: torch.Tensor) -> torch.Tensor:
        views = self.items.views()
        return torch.cat([self._user(seq, view) for view in views], -1) @ torch.cat(views, 1).T

    def forward(self, batch: TrainBatch) -> torch.Tensor:
        """The training loss plus the item source's own term (LLMEmb's alignment) over the
        batch's items; DistributedDataParallel synchronizes gradients only through forward."""
        loss = self.loss(batch)
        aux = self.items.aux_loss(batch.targets)
        return loss if aux is None else loss + aux


class NextItemRecommender(SeqRecommender):
    """Predicts item t + 1 from the state at t, every position at once (SASRec, GRU4Rec);
    the user vector is the state after the most recent item. Loss "bce": the SASRec paper's
    binary cross-entropy with one sampled negative per position; "ce": softmax cross-entropy
    over all items (costlier per step, usually stronger)."""

    def __init__(self, items: ItemEmbedding, max_len: int, loss: str):
        super().__init__(items, max_len)
        self.loss_kind = loss
        self.needs_negatives = loss == "bce"

    def states(self, seq: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """[B, w, d] states for the last w columns of `seq` (see trim_padding)."""
        raise NotImplementedError

    def _user(self, seq: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return self.states(seq, table)[:, -1]

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        """Mean over non-padding positions."""
        views = self.items.views()
        table = torch.cat(views, 1)
        h = torch.cat([self.states(batch.inputs, view) for view in views], -1)
        targets = batch.targets[:, -h.shape[1]:]
        real = targets != 0
        if self.loss_kind == "ce":
            return full_softmax_ce(h[real], targets[real], table, self.unseen)
        negatives = batch.negatives[:, -h.shape[1]:]
        pos = (h * table[targets]).sum(-1)
        neg = (h * table[negatives]).sum(-1)
        return (F.softplus(-pos) + F.softplus(neg))[real].mean()
