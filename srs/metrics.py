"""Full-ranking metrics for next-item prediction (one target per case).

Protocol (METHODS.md, RecBole's full-sort evaluation): every item of the catalog is ranked;
the padding index 0 and the items the user has already interacted with (the whole history
before the target: seq[:-2] for validation, seq[:-1] for test) are removed from the ranking,
except the target itself, which is always ranked (a repeat purchase still counts). Ties with
the target count against it, so a constant scorer earns nothing.

Metrics from the 0-based rank r of the target: HR@K = [r < K], NDCG@K = [r < K] / log2(r + 2)
(one relevant item, so IDCG = 1), MRR = 1 / (r + 1) over the full list; averaged over cases.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from srs.data import Ragged

KS = (5, 10, 20)
METRICS = tuple(f"HR@{k}" for k in KS) + tuple(f"NDCG@{k}" for k in KS) + ("MRR",)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target. scores [B, n_items + 1], targets [B], seen [B, H] item
    indices to exclude (0-padded; 0 is excluded anyway). Two passes over the score matrix:
    count the items scoring >= the target, then subtract the excluded ones among them (each
    distinct excluded item once). A NaN target score ranks last."""
    target_scores = scores.gather(1, targets.unsqueeze(1))
    at_or_above = (scores >= target_scores).sum(1)
    excluded, _ = torch.cat([seen, torch.zeros_like(seen[:, :1])], dim=1).sort(dim=1)
    distinct = torch.ones_like(excluded, dtype=torch.bool)
    distinct[:, 1:] = excluded[:, 1:] != excluded[:, :-1]
    counted = distinct & (excluded != targets.unsqueeze(1)) & (scores.gather(1, excluded) >= target_scores)
    ranks = at_or_above - 1 - counted.sum(1)
    return ranks.masked_fill(target_scores.squeeze(1).isnan(), scores.shape[1] - 1)


def summarize(ranks: torch.Tensor) -> dict[str, float]:
    """HR@K, NDCG@K (K = 5, 10, 20) and MRR, averaged over the cases' ranks."""
    if ranks.numel() == 0:
        raise ValueError("no evaluation cases")
    r = ranks.double()
    out: dict[str, float] = {}
    for k in KS:
        out[f"HR@{k}"] = float((r < k).double().mean())
    for k in KS:
        out[f"NDCG@{k}"] = float(((r < k).double() / torch.log2(r + 2)).mean())
    out["MRR"] = float((1.0 / (r + 1)).mean())
    return out


def popularity_baseline(
    train_sequences: Sequence[Sequence[int]] | Ragged,
    seen: Ragged,
    targets: np.ndarray,
    n_items: int,
    batch_size: int = 256,
) -> dict[str, float]:
    """Rank every item by its count in the training sequences (ties: lower index first) and
    evaluate it with the same masking and metrics as a model."""
    if not isinstance(train_sequences, Ragged):
        train_sequences = Ragged.from_rows(train_sequences)
    counts = torch.from_numpy(np.bincount(train_sequences.values, minlength=n_items + 1)).double()
    # A tie-break below 1 that decreases with the index: integer counts keep their order.
    scores = counts + 0.5 * (1 - torch.arange(n_items + 1, dtype=torch.float64) / (n_items + 1))
    targets_t = torch.as_tensor(targets, dtype=torch.int64)
    ranks = []
    for start in range(0, len(targets_t), batch_size):
        stop = min(start + batch_size, len(targets_t))
        batch_seen = torch.from_numpy(seen.padded(np.arange(start, stop)))
        ranks.append(target_ranks(scores.expand(stop - start, -1), targets_t[start:stop], batch_seen))
    return summarize(torch.cat(ranks) if ranks else torch.empty(0))

