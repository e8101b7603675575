"""Ranking metrics for next-item prediction (one target per case), full or sampled, overall and tail.

Full ranking (METHODS.md, RecBole's full-sort evaluation; TSLRec): every item of the catalog is
ranked; the padding index 0 and the items the user has already interacted with (the whole
history before the target: seq[:-2] for validation, seq[:-1] for test) are removed from the
ranking, except the target itself, which is always ranked (a repeat purchase still counts).

Sampled ranking (SASRec's paper, LLMEmb): the target against `SAMPLED_NEGATIVES` items drawn
uniformly, without replacement, from the items the user never interacted with (the whole
sequence, test item included). The draw uses a fixed seed independent of the training seed,
so every model and seed is ranked against the same candidates.

In both modes ties with the target count against it, so a constant scorer earns nothing.
Metrics from the 0-based rank r of the target: HR@K = [r < K], NDCG@K = [r < K] / log2(r + 2)
(one relevant item, so IDCG = 1), MRR = 1 / (r + 1); averaged over cases. "Tail" metrics
(LLMEmb, Pareto split) average over the cases whose target is among the 80% least popular
items by training-split count, reported beside the overall ones as "tail/<metric>". Under the
cold-item protocol (srs.data.cold_items) "cold/<metric>" and "warm/<metric>" average over the cases
whose target is, or is not, a cold item.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from srs.data import Ragged, build_tensors

KS = (5, 10, 20)
METRICS = tuple(f"HR@{k}" for k in KS) + tuple(f"NDCG@{k}" for k in KS) + ("MRR",)
TAIL_METRICS = tuple(f"tail/{m}" for m in METRICS)
ALL_METRICS = METRICS + TAIL_METRICS
SAMPLED_NEGATIVES = 100
CANDIDATE_SEED = 2018  # SASRec's year: fixed, and not one of the training seeds
TAIL_SHARE = 0.8
EVAL_BATCH = 256  # a [256, n_items] score block stays in cache: ranking ran 3x faster than at 1024


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """0-based full-ranking rank of each target. scores [B, n_items + 1], targets [B], seen [B, H]
    item indices to exclude (0-padded; 0 is excluded anyway). Two passes over the score matrix:
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


def sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among itself and its negatives: scores [B, n_items + 1],
    targets [B], candidates [B, N] negative item indices. A NaN target score ranks last."""
    target_scores = scores.gather(1, targets.unsqueeze(1))
    ranks = (scores.gather(1, candidates) >= target_scores).sum(1)
    return ranks.masked_fill(target_scores.squeeze(1).isnan(), candidates.shape[1])


def sample_candidates(
    history: Ragged, targets: np.ndarray, n_items: int, n: int = SAMPLED_NEGATIVES, seed: int = CANDIDATE_SEED
) -> np.ndarray:
    """[len(targets), n] distinct items in 1..n_items that are neither in the case's history nor
    its target (pass the whole sequence minus its last item as `history` and the last item as
    target: the same negatives then serve validation and test)."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(targets), n), dtype=np.int64)
    for r, target in enumerate(targets):
        interacted = np.append(history.values[history.offsets[r]:history.offsets[r + 1]], target)
        free = n_items - len(np.unique(interacted))
        if free < n:
            raise ValueError(f"case {r} has only {free} non-interacted items, fewer than {n} negatives")
        draw = rng.choice(n_items, size=min(n + len(interacted), n_items), replace=False) + 1
        out[r] = draw[~np.isin(draw, interacted)][:n]
    return out


def tail_items(train: Ragged, n_items: int, share: float = TAIL_SHARE) -> np.ndarray:
    """[n_items + 1] bool: the `share` least popular items by count in `train` (ties: higher
    index in the tail), i.e. everything but the top (1 - share) head. Index 0 is False."""
    counts = np.bincount(train.values, minlength=n_items + 1)[1:]
    head = int(round(n_items * (1 - share)))
    order = np.lexsort((np.arange(n_items), -counts))  # most popular first, then lower index
    tail = np.ones(n_items + 1, dtype=bool)
    tail[0] = False
    tail[order[:head] + 1] = False
    return tail


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


def report(ranks: torch.Tensor, targets: np.ndarray, tail: np.ndarray, cold: np.ndarray | None = None) -> dict[str, float]:
    """Overall metrics plus "tail/" ones over the cases whose target is a tail item, and with
    `cold` "cold/" and "warm/" ones (NaN for a group without cases)."""
    groups = {"tail": tail} if cold is None else {"tail": tail, "cold": cold, "warm": ~cold}
    out = summarize(ranks)
    for name, members in groups.items():
        on = torch.from_numpy(members[targets])
        part = summarize(ranks[on]) if bool(on.any()) else dict.fromkeys(METRICS, float("nan"))
        out |= {f"{name}/{k}": v for k, v in part.items()}
    return out


def rank_cases(
    score_all: Callable[[torch.Tensor], torch.Tensor],
    inputs: np.ndarray,
    seen: Ragged,
    targets: np.ndarray,
    candidates: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The target's rank for every case, full ranking or (with `candidates`) sampled, in
    batches of EVAL_BATCH cases of similar history length (short batches cost less); the
    ranks come back in case order."""
    order = np.argsort((inputs != 0).sum(1), kind="stable")
    ranks = torch.empty(len(order), dtype=torch.int64)
    for start in range(0, len(order), EVAL_BATCH):
        rows = order[start:start + EVAL_BATCH]
        scores = score_all(torch.from_numpy(inputs[rows]).to(device))
        batch_targets = torch.from_numpy(targets[rows]).to(device)
        if candidates is None:
            batch = target_ranks(scores, batch_targets, torch.from_numpy(seen.padded(rows)).to(device))
        else:
            batch = sampled_ranks(scores, batch_targets, torch.from_numpy(candidates[rows]).to(device))
        ranks[torch.from_numpy(rows)] = batch.cpu()
    return ranks


def popularity_baseline(
    train_sequences: Sequence[Sequence[int]] | Ragged,
    seen: Ragged,
    targets: np.ndarray,
    n_items: int,
    candidates: np.ndarray | None = None,
) -> dict[str, float]:
    """Rank every item by its count in the training sequences (ties: lower index first) and
    evaluate it with the same masking and metrics as a model (tail by the same counts)."""
    if not isinstance(train_sequences, Ragged):
        train_sequences = Ragged.from_rows(train_sequences)
    counts = torch.from_numpy(np.bincount(train_sequences.values, minlength=n_items + 1)).double()
    # A tie-break below 1 that decreases with the index: integer counts keep their order.
    scores = counts + 0.5 * (1 - torch.arange(n_items + 1, dtype=torch.float64) / (n_items + 1))
    targets = np.asarray(targets, dtype=np.int64)
    inputs = np.zeros((len(targets), 1), dtype=np.int64)  # popularity reads no history
    ranks = rank_cases(lambda seq: scores.expand(len(seq), -1), inputs, seen, targets, candidates)
    return report(ranks, targets, tail_items(train_sequences, n_items))


def popularity_metrics(
    sequences: Mapping[str, Sequence[str]], item_ids: Sequence[str] | None = None, ranking: str = "full"
) -> dict[str, float]:
    """Test metrics (overall and tail) of the training-popularity ranking on the same split and
    protocol as srs.train. Without `item_ids` the candidates are the items in `sequences`."""
    if item_ids is None:
        item_ids = sorted({v for seq in sequences.values() for v in seq})
    data = build_tensors(sequences, item_ids, max_len=1)
    candidates = sample_candidates(data.test_seen, data.test_targets, data.n_items) if ranking == "sampled" else None
    return popularity_baseline(data.train_seen, data.test_seen, data.test_targets, data.n_items, candidates)
