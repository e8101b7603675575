"""Sequence data for SRS training: leave-one-out split, padded tensors, negative sampling.

Item i of the catalog's `item_ids` is index i + 1; index 0 is padding. Every sequence tensor is
LEFT-padded to `max_len`, so the most recent item is always the last column (the position the
user vector is read from) and a position embedding counted from the right means the same
thing for every row.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from catalog import leave_one_out


def pad_left(rows: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
    """[len(rows), max_len] int64: the last max_len entries of each row, zeros in front."""
    out = np.zeros((len(rows), max_len), dtype=np.int64)
    for r, row in enumerate(rows):
        tail = row[-max_len:]
        if len(tail):
            out[r, max_len - len(tail):] = tail
    return out


@dataclass(frozen=True)
class Ragged:
    """Variable-length int rows as one flat array plus offsets (row r = values[offsets[r]:offsets[r+1]])."""

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]]) -> "Ragged":
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = np.fromiter((v for r in rows for v in r), dtype=np.int64, count=int(offsets[-1]))
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def padded(self, rows: np.ndarray) -> np.ndarray:
        """The given rows, right-padded with 0 to the longest of them (at least 1 column)."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        width = max(int(lengths.max(initial=0)), 1)
        cols = np.arange(width)
        keep = cols < lengths[:, None]
        out = np.zeros((len(rows), width), dtype=np.int64)
        out[keep] = self.values[(starts[:, None] + cols)[keep]]
        return out


@dataclass(frozen=True)
class SeqTensors:
    """Everything one SRS run needs, as numpy arrays (cheap to ship to Ray workers).

    train_inputs/train_targets: one row per user with >= 2 training items (RecBole/SASRec
    style): the last max_len items of seq[:-2] shifted by one, so every position is trained at
    once. valid_*/test_*: one case per user; `inputs` is the history the model reads (the last
    max_len items), `seen` the whole history, masked in full ranking (see srs.metrics). With
    `cold`, those items appear only as test targets: as with items added after training.
    """

    n_items: int
    train_inputs: np.ndarray
    train_targets: np.ndarray
    train_seen: Ragged
    valid_inputs: np.ndarray
    valid_targets: np.ndarray
    test_inputs: np.ndarray
    test_seen: Ragged
    test_targets: np.ndarray
    cold: np.ndarray | None = None   # [n_items + 1] bool: items training never sees (cold-item protocol)
    train_similar: np.ndarray | None = None   # [rows, k]: each training row's most similar others (similar_rows)

    @property
    def warm(self) -> np.ndarray | None:
        """[n_items] bool: the items training sees (None: all)."""
        return None if self.cold is None else ~self.cold[1:]

    @property
    def valid_seen(self) -> Ragged:
        return self.train_seen


def encode(sequences: Mapping[str, Sequence[str]], item_ids: Sequence[str]) -> dict[str, list[int]]:
    """Item ids to indices: item_ids[i] -> i + 1 (0 is padding)."""
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    try:
        return {u: [index[v] for v in seq] for u, seq in sequences.items()}
    except KeyError as e:
        raise ValueError(f"sequence item {e.args[0]!r} is not in item_ids") from None


def training_windows(seq: Sequence[int], max_len: int) -> list[tuple[Sequence[int], Sequence[int]]]:
    """(inputs, next items) rows of one training sequence, cut from its end into max_len windows,
    so every next item of a sequence longer than max_len is a target (not only the last max_len)."""
    inputs, targets = seq[:-1], seq[1:]
    return [(inputs[max(0, end - max_len):end], targets[max(0, end - max_len):end])
            for end in range(len(inputs), 0, -max_len)]


def cold_items(n_items: int, share: float, seed: int) -> np.ndarray | None:
    """[n_items + 1] bool: a seeded random `share` of the items (None when share is 0)."""
    if not share:
        return None
    cold = np.zeros(n_items + 1, dtype=bool)
    cold[np.random.default_rng(seed).choice(n_items, size=max(round(share * n_items), 1), replace=False) + 1] = True
    return cold


def build_tensors(sequences: Mapping[str, Sequence[str]], item_ids: Sequence[str], max_len: int,
                  cold: np.ndarray | None = None) -> SeqTensors:
    """Encode, split leave-one-out and pad. With `cold` (see cold_items), cold items are removed
    from every sequence but its last item (the test target): training and validation never see them."""
    encoded = encode(sequences, item_ids)
    if cold is not None:
        encoded = {u: [v for v in seq[:-1] if not cold[v]] + seq[-1:] for u, seq in encoded.items()}
    split = leave_one_out(encoded)
    users = list(split.train)
    train = [split.train[u] for u in users]
    valid_targets = [split.valid[u][1] for u in users]
    windows = [w for s in train for w in training_windows(s, max_len)]
    test_history = [s + [v] for s, v in zip(train, valid_targets)]
    return SeqTensors(
        n_items=len(item_ids),
        train_inputs=pad_left([inputs for inputs, _ in windows], max_len),
        train_targets=pad_left([targets for _, targets in windows], max_len),
        train_seen=Ragged.from_rows(train),
        valid_inputs=pad_left(train, max_len),
        valid_targets=np.asarray(valid_targets, dtype=np.int64),
        test_inputs=pad_left(test_history, max_len),
        test_seen=Ragged.from_rows(test_history),
        test_targets=np.asarray([split.test[u][1] for u in users], dtype=np.int64),
        cold=cold,
    )


def similar_rows(rows: np.ndarray, llm: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """[R, k] for padded rows [R, L] of item indices: the k other rows whose mean LLM item
    embedding (llm [n_items, D], row i = item i + 1) is nearest by cosine, most similar first:
    LLM-ESR's similar users, retrieved by their items' text."""
    if len(rows) <= k:
        raise ValueError(f"srs.distill_users {k}: only {len(rows)} training rows")
    table = torch.from_numpy(np.vstack([np.zeros((1, llm.shape[1]), np.float32), llm.astype(np.float32)]))
    seq = torch.from_numpy(rows)
    users = table[seq].sum(1) / (seq != 0).sum(1, keepdim=True).clamp(min=1)
    users = torch.nn.functional.normalize(users, dim=1)
    out = []
    for start in range(0, len(users), chunk):
        sim = users[start:start + chunk] @ users.T
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -torch.inf   # never itself
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out).numpy()


class TrainBatch(NamedTuple):
    """Inputs, next-item targets and (for BCE) one sampled negative per position, all [B, L],
    0 = pad. `targets` rows are also the full training sequences (BERT4Rec's cloze input).
    `similar` [B, k, L]: each row's most similar training rows (self-distillation)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    negatives: torch.Tensor | None = None
    similar: torch.Tensor | None = None


def sample_negatives(
    inputs: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator, tries: int = 5
) -> torch.Tensor:
    """One uniform negative per target position from `candidates` (the items training knows),
    redrawn (a few times, vectorized) when it hits an item of the user's training sequence, as in
    SASRec's sampler; 0 where the target is pad."""
    seen = torch.cat([inputs, targets[:, -1:]], dim=1)  # inputs plus the last target = the whole sequence

    def draw(shape) -> torch.Tensor:
        return candidates[torch.randint(0, len(candidates), shape, generator=generator, device=targets.device)]

    neg = draw(targets.shape)
    for _ in range(tries):
        clash = (neg.unsqueeze(-1) == seen.unsqueeze(1)).any(-1)
        n_clash = int(clash.sum())
        if n_clash == 0:
            break
        neg[clash] = draw((n_clash,))
    return neg.masked_fill(targets == 0, 0)
