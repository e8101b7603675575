"""k-core filtering, per-user sequences and the leave-one-out split used by every SRS paper we compare to."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Dense integer codes of a string column, and how many distinct values it has."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    return encoded.indices.to_numpy(zero_copy_only=False), len(encoded.dictionary)


def k_core(interactions: pa.Table, k: int) -> pa.Table:
    """Keep rows whose user and item both have >= k rows, repeated until nothing changes."""
    users, n_users = _codes(interactions["user_id"])
    items, n_items = _codes(interactions["item_id"])
    keep = np.ones(len(users), dtype=bool)
    while True:
        user_count = np.bincount(users[keep], minlength=n_users)
        item_count = np.bincount(items[keep], minlength=n_items)
        stable = keep & (user_count[users] >= k) & (item_count[items] >= k)
        if stable.sum() == keep.sum():
            return interactions.filter(pa.array(keep))
        keep = stable


def sort_interactions(interactions: pa.Table) -> pa.Table:
    """Sort by (user_id, ts); Arrow's sort is stable, so ties keep their original row order."""
    return interactions.sort_by([("user_id", "ascending"), ("ts", "ascending")])


def user_sequences(interactions: pa.Table) -> dict[str, list[str]]:
    """user -> chronological item ids (ties in ts keep their row order)."""
    ordered = sort_interactions(interactions)
    sequences: dict[str, list[str]] = {}
    for user, item in zip(ordered["user_id"].to_pylist(), ordered["item_id"].to_pylist()):
        sequences.setdefault(user, []).append(item)
    return sequences


def ranked_items(item_ids: Iterable[str], interactions: pa.Table) -> list[str]:
    """The items an SRS ranks: those of `item_ids` (in their order) that some interaction names, so the
    k-core's items, not every catalog item (an item nobody took has nothing to learn from)."""
    seen = set(interactions["item_id"].to_pylist())
    return [i for i in item_ids if i in seen]


@dataclass
class LeaveOneOut:
    """Last item = test target, second to last = validation target, the rest trains."""

    train: dict[str, list[str]]
    valid: dict[str, tuple[list[str], str]]
    test: dict[str, tuple[list[str], str]]


def leave_one_out(sequences: dict[str, list]) -> LeaveOneOut:
    """Split each sequence; users with fewer than 3 items cannot fill all three parts and are dropped."""
    split = LeaveOneOut({}, {}, {})
    for user, seq in sequences.items():
        if len(seq) < 3:
            continue
        split.train[user] = seq[:-2]
        split.valid[user] = (seq[:-2], seq[-2])
        split.test[user] = (seq[:-1], seq[-1])
    return split
