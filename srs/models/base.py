"""The interface every backbone shares, and the next-item losses of SASRec and GRU4Rec.

Verbs (RecBole's calculate_loss / full_sort_predict / user state): `loss(batch)`,
`score_all(seq)` -> [B, n_items + 1] with score(u, v) = <u, e_v> over the item source's table
(column 0, padding, is meaningless), and `user_vector(seq)` -> [B, d]. Sequences are
left-padded with 0, so the most recent item is the last column.

An item source with several views (LLM-ESR's ID and semantic views) has each view encoded by
the same backbone weights; the user vector and the item table are the views side by side, so a
score is the sum of the views' dot products. With `view_attention`, each view's item sequence
first attends to the other's (ViewAttention).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cluster.config import SRSConfig
from srs.data import TrainBatch
from srs.fusion import ItemEmbedding
from srs.models.transformer import attention_mask


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


class ViewAttention(nn.Module):
    """LLM-ESR's cross-attention between the two views (Liu et al. 2024, models/DualLLMSRS.py): each
    view's item sequence attends to the other view's, and the result is added to it (a residual,
    where the reference replaces the sequence, so an item keeps its own row). Next-item backbones
    attend to the past only (`causal`), else a position would read the item it must predict."""

    def __init__(self, dim: int, cfg: SRSConfig, causal: bool):
        super().__init__()
        self.num_heads, self.causal = cfg.num_heads, causal
        self.attend = nn.ModuleList(nn.MultiheadAttention(dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
                                    for _ in range(2))

    def forward(self, xs: list[torch.Tensor], pad: torch.Tensor) -> list[torch.Tensor]:
        a, b = xs
        mask = attention_mask(pad, self.causal, self.num_heads)
        return [x + attend(x, y, y, attn_mask=mask, need_weights=False)[0]
                for x, y, attend in ((a, b, self.attend[0]), (b, a, self.attend[1]))]


class SeqRecommender(nn.Module):
    """A backbone over an item source. Subclasses define `loss` and `_users` (each view's user
    vector from a sequence and the current views, computed once per call)."""

    needs_negatives = False  # whether the training batches must carry sampled negatives
    causal = True            # whether a position may read only the items before it (ViewAttention)

    def __init__(self, items: ItemEmbedding, cfg: SRSConfig):
        super().__init__()
        self.items = items
        self.max_len = cfg.max_len
        self.unseen: torch.Tensor | None = None   # items training must not score (cold-item protocol)
        self.distill_weight = cfg.distill_weight
        dual = len(items.views()) == 2   # the one source with two views, llmesr; the others ignore the option
        self.view_attention = ViewAttention(items.dim, cfg, self.causal) if cfg.view_attention and dual else None

    def embed(self, seq: torch.Tensor, tables: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Each view's item embeddings [B, w, d] of `seq`, after view attention if configured."""
        xs = [table[seq] for table in tables]
        return xs if self.view_attention is None else self.view_attention(xs, seq == 0)

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        raise NotImplementedError

    def _users(self, seq: torch.Tensor, views: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        raise NotImplementedError

    def user_vector(self, seq: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._users(seq, self.items.views()), -1)

    def score_all(self, seq: torch.Tensor) -> torch.Tensor:
        views = self.items.views()
        return torch.cat(self._users(seq, views), -1) @ self.items.scored(views).T

    def forward(self, batch: TrainBatch) -> torch.Tensor:
        """The training loss plus the item source's own term (LLMEmb's alignment) over the
        batch's items and the self-distillation term when the batch has similar rows;
        DistributedDataParallel synchronizes gradients only through forward."""
        loss = self.loss(batch)
        aux = self.items.aux_loss(batch.targets)
        if batch.similar is not None:
            loss = loss + self.distill_weight * self.distill_loss(batch.inputs, batch.similar)
        return loss if aux is None else loss + aux

    def distill_loss(self, seq: torch.Tensor, similar: torch.Tensor) -> torch.Tensor:
        """LLM-ESR's self-distillation (its `kd` variant): mean squared distance between each row's user
        vector and the mean of its similar rows' [B, k, L], which teach without receiving gradient."""
        with torch.no_grad():
            teacher = self.user_vector(similar.flatten(0, 1)).unflatten(0, similar.shape[:2]).mean(1)
        return F.mse_loss(self.user_vector(seq), teacher)


class NextItemRecommender(SeqRecommender):
    """Predicts item t + 1 from the state at t, every position at once (SASRec, GRU4Rec);
    the user vector is the state after the most recent item. Loss "bce": the SASRec paper's
    binary cross-entropy with one sampled negative per position; "ce": softmax cross-entropy
    over all items (costlier per step, usually stronger)."""

    def __init__(self, items: ItemEmbedding, cfg: SRSConfig):
        super().__init__(items, cfg)
        self.loss_kind = cfg.resolved_loss
        self.needs_negatives = self.loss_kind == "bce"

    def states(self, seq: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[B, w, d] states of `seq` [B, w] (padding trimmed: see trim_padding) from its item embeddings x [B, w, d]."""
        raise NotImplementedError

    def _view_states(self, seq: torch.Tensor, views: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        seq = trim_padding(seq)
        return [self.states(seq, x) for x in self.embed(seq, views)]

    def _users(self, seq: torch.Tensor, views: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return [h[:, -1] for h in self._view_states(seq, views)]

    def loss(self, batch: TrainBatch) -> torch.Tensor:
        """Mean over non-padding positions."""
        views = self.items.views()
        table = torch.cat(views, 1)
        h = torch.cat(self._view_states(batch.inputs, views), -1)
        targets = batch.targets[:, -h.shape[1]:]
        real = targets != 0
        if self.loss_kind == "ce":
            return full_softmax_ce(h[real], targets[real], table, self.unseen)
        negatives = batch.negatives[:, -h.shape[1]:]
        pos = (h * table[targets]).sum(-1)
        neg = (h * table[negatives]).sum(-1)
        return (F.softplus(-pos) + F.softplus(neg))[real].mean()
