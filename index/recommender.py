"""Recommend from a published SRS model: a user's item sequence in, the top-k next items out.

`guidedrec train` publishes models/<run>/<source>/<version>/ (model.safetensors, srs.json,
items.parquet), then the manifest of models/<run>/<source> naming that version. The model is rebuilt from srs.json's config and the weights alone: every source
keeps the table it derives from its frozen inputs (LLMEmb's PCA-reduced LLM embeddings, GER's
attribute scores, TSLRec's knowledge) in the weights, so serving reads no embeddings run.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from cluster.config import SRSConfig
from cluster.storage import Store
from srs import build_model
from srs.data import pad_left

PREFERRED_SOURCES = ("llmemb", "id")   # LLM-guided first (what this project is for), then any other


class NoModelError(LookupError):
    """No trained model is published for the run; the message says what to run."""


def find_model(store: Store, run: str, source: str | None = None) -> str:
    """The committed models/<run>/<source> directory; None picks llmemb if published, else id,
    else any published source."""
    root = f"models/{run}"
    published = [s for s in store.list(root) if store.is_committed(f"{root}/{s}")]
    for candidate in [source] if source else [*PREFERRED_SOURCES, *published]:
        if candidate in published:
            return f"{root}/{candidate}"
    if source:
        raise NoModelError(f"no trained {source!r} SRS model under {store.full_uri(root)}/ (published: "
                           f"{', '.join(published) or 'none'}): run `guidedrec train` with srs.sources including {source}")
    raise NoModelError(f"no trained SRS model under {store.full_uri(root)}/: run `guidedrec train`")


def stand_in_inputs(source: str, n_items: int, cfg: SRSConfig, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """build_model's input matrices as zeros of the widths that make `source` build tensors of
    the saved shapes; load_state_dict then overwrites everything derived from them."""
    def zeros(width: int) -> np.ndarray:
        return np.zeros((n_items, width), dtype=np.float32)

    if source in ("llmemb", "llm-frozen"):
        return {"item_embeddings": zeros(state["items.reduced"].shape[1])}
    if source == "ger":
        return {"attribute_scores": zeros(state["items.guided"].shape[1])}
    if source == "tslrec":   # knowledge = [PCA(LLM embeddings), one-hot of the ID model's clusters]
        return {"item_embeddings": zeros(state["items.knowledge"].shape[1] - cfg.tslrec_clusters),
                "id_item_embeddings": zeros(cfg.hidden_size)}
    return {}


class Recommender:
    """A trained SRS model (any backbone) in eval mode plus the map between catalog ids and its item indices."""

    def __init__(self, model: torch.nn.Module, max_len: int, item_ids: list[str], where: str):
        self.model = model.eval()
        self.max_len = max_len
        self.item_ids = item_ids
        self.where = where
        self._index = {item: i + 1 for i, item in enumerate(item_ids)}   # 0 is padding

    @classmethod
    def load(cls, store: Store, rel: str) -> "Recommender":
        """Rebuild the model published at `rel` (its manifest's version) from its config and weights."""
        version = store.manifest(rel).get("version")
        rel = f"{rel}/{version}" if version else rel   # a model published before versions: files in rel
        meta = store.read_json(f"{rel}/srs.json")
        cfg = SRSConfig.model_validate(meta["cfg"])
        state = load_safetensors(store.read_bytes(f"{rel}/model.safetensors"))
        item_ids = store.read_parquet(f"{rel}/items.parquet", columns=["item_id"]).column("item_id").to_pylist()
        model = build_model(meta["source"], len(item_ids), cfg, **stand_in_inputs(meta["source"], len(item_ids), cfg, state))
        model.load_state_dict(state)
        return cls(model, cfg.max_len, item_ids, store.full_uri(rel))

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
        banned = [0] + [self._index[i] for i in exclude if i in self._index]
        scores[banned] = -torch.inf
        top = torch.topk(scores, min(k, len(self.item_ids)))
        keep = torch.isfinite(top.values)
        return ([self.item_ids[i - 1] for i in top.indices[keep].tolist()], top.values[keep].tolist())
