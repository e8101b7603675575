"""Recommend from a published SRS model (srs.published): a user's item sequence in, the top-k next items out.

The model follows the live catalog: items deleted since training are never recommended, and items
added since (by `guidedrec update`) get their rows from their LLM embeddings where the model's
source can compute them (llmesr, llmemb, llm-frozen, id with id_init llm-pca), so they can be
recommended, and read in a history, without retraining.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from cluster.storage import Store
from llm.runs import read_run
from srs.data import pad_left
from srs.published import load_model

log = logging.getLogger(__name__)


class Recommender:
    """A trained SRS model (any backbone) in eval mode plus the map between catalog ids and its item indices."""

    def __init__(self, model: torch.nn.Module, max_len: int, item_ids: list[str], source: str, where: str):
        self.model = model
        self.max_len = max_len
        self.item_ids = item_ids
        self.source = source
        self.where = where
        self._index = {item: i + 1 for i, item in enumerate(item_ids)}   # 0 is padding
        self.retired: list[int] = []   # indices of items the live catalog no longer holds

    @classmethod
    def load(cls, store: Store, rel: str, run: str | None = None) -> "Recommender":
        """The model published at `rel` (its manifest's version), following the items of embeddings
        run `run` (the live one) when given."""
        model, cfg, item_ids, source, where = load_model(store, rel)
        recommender = cls(model, cfg.max_len, item_ids, source, where)
        if run is not None:
            recommender.follow(store, run)
        return recommender

    def follow(self, store: Store, run: str) -> None:
        """Retire the items `run` no longer holds; give its new items rows from their LLM embeddings
        when the model's source can (else they stay unknown to it)."""
        ids, vectors, _ = read_run(store, run)
        live = set(ids)
        self.retired = [index for item, index in self._index.items() if item not in live]
        new = [row for row, item in enumerate(ids) if item not in self._index]
        if not new:
            return
        try:
            self.model.items.add_items(torch.from_numpy(vectors[new]))
        except ValueError as e:
            log.info("%d items added since training stay unknown to %s: %s", len(new), self.where, e)
            return
        for row in new:
            self.item_ids.append(ids[row])
            self._index[ids[row]] = len(self.item_ids)

    def encode(self, items: Iterable[str]) -> list[int]:
        """Model indices of catalog ids; an id the model never saw is a KeyError naming it."""
        try:
            return [self._index[i] for i in items]
        except KeyError as e:
            raise KeyError(f"item {e.args[0]!r} is not in the catalog of the SRS model {self.where}") from None

    @torch.inference_mode()
    def recommend(self, items: list[str], k: int, exclude: Iterable[str] = ()) -> tuple[list[str], list[float]]:
        """The k best next items after `items` (oldest first) by the model's score <u, e_v>;
        ids in `exclude` never come back (ids unknown to the model are ignored there)."""
        if not items:
            raise ValueError("the item sequence is empty")
        seq = torch.from_numpy(pad_left([self.encode(items)], self.max_len))
        scores = self.model.score_all(seq)[0]
        banned = [0, *self.retired] + [self._index[i] for i in exclude if i in self._index]
        scores[banned] = -torch.inf
        top = torch.topk(scores, min(k, len(self.item_ids)))
        keep = torch.isfinite(top.values)
        return ([self.item_ids[i - 1] for i in top.indices[keep].tolist()], top.values[keep].tolist())
