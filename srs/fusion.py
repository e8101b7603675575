"""Item embedding sources: where the SRS's item table e_v comes from, chosen by name.

Every source is an `ItemEmbedding` whose `table()` is [n_items + 1, d] with row 0 (padding) all
zeros; the backbone reads inputs and scores candidates from that one table (SASRec shares the
input and output item embeddings). A new source (GER's refined embedding, TSLRec's knowledge
embedding, LLMEmb's alignment loss) is one more class registered in `SOURCES`.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cluster.config import SRSConfig


class ItemEmbedding(nn.Module):
    """An item table [n_items + 1, d]; row 0 is the padding item and stays zero."""

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.n_items = n_items
        self.dim = dim

    def table(self) -> torch.Tensor:
        raise NotImplementedError


class IDEmbedding(ItemEmbedding):
    """The plain ID table of SASRec (Kang & McAuley 2018), RecBole's N(0, 0.02) init."""

    def __init__(self, n_items: int, dim: int):
        super().__init__(n_items, dim)
        self.weight = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.weight.weight, std=0.02)
        with torch.no_grad():
            self.weight.weight[0].zero_()

    def table(self) -> torch.Tensor:
        return self.weight.weight


def pca(x: np.ndarray, k: int) -> np.ndarray:
    """Rows of x projected on their top-k principal components (centered, not whitened),
    k capped at min(D, n). Scaled by one constant to unit mean row norm, so the adapter starts
    at the same scale whatever the LLM's hidden-state norm; the geometry is unchanged."""
    k = min(k, *x.shape)
    centered = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    reduced = centered @ vt[:k].T
    norm = np.linalg.norm(reduced, axis=1).mean()
    return (reduced / norm if norm > 0 else reduced).astype(np.float32)


class LLMEmbAdapter(ItemEmbedding):
    """LLMEmb's RAT stage (Liu et al. 2025): the LLM item embeddings, reduced by PCA to d_m and
    FROZEN (a buffer, so they keep the LLM's semantics and cost no optimizer state), pass
    through a trainable two-layer linear adapter e = W1 (W2 e_bar + b2) + b1, W2: d_m -> d_m/2,
    W1: d_m/2 -> d. After training the adapted table is precomputed: no serving cost."""

    def __init__(self, llm_embeddings: np.ndarray, dim: int, pca_dim: int):
        n_items = llm_embeddings.shape[0]
        super().__init__(n_items, dim)
        self.register_buffer("reduced", torch.from_numpy(pca(llm_embeddings, pca_dim)))
        d_m = self.reduced.shape[1]
        self.adapter = nn.Sequential(nn.Linear(d_m, max(d_m // 2, 1)), nn.Linear(max(d_m // 2, 1), dim))
        for layer in self.adapter:
            nn.init.zeros_(layer.bias)  # no shared offset: every item starts from its own LLM vector

    def table(self) -> torch.Tensor:
        items = self.adapter(self.reduced)
        return torch.cat([items.new_zeros(1, self.dim), items])


def _id(n_items: int, cfg: SRSConfig, item_embeddings: np.ndarray | None) -> ItemEmbedding:
    return IDEmbedding(n_items, cfg.hidden_size)


def _llmemb(n_items: int, cfg: SRSConfig, item_embeddings: np.ndarray | None) -> ItemEmbedding:
    assert item_embeddings is not None  # check_source
    return LLMEmbAdapter(item_embeddings, cfg.hidden_size, cfg.pca_dim)


SOURCES: dict[str, Callable[[int, SRSConfig, np.ndarray | None], ItemEmbedding]] = {"id": _id, "llmemb": _llmemb}


NEEDS_EMBEDDINGS = {"llmemb"}


def check_source(source: str, n_items: int, item_embeddings: np.ndarray | None) -> None:
    """Reject an unknown source or missing/misshaped embeddings before any work starts."""
    if source not in SOURCES:
        raise ValueError(f"unknown embedding source {source!r}; known: {sorted(SOURCES)}")
    if source in NEEDS_EMBEDDINGS and (item_embeddings is None or item_embeddings.ndim != 2 or item_embeddings.shape[0] != n_items):
        got = None if item_embeddings is None else item_embeddings.shape
        raise ValueError(f"source {source!r} needs item_embeddings of shape [{n_items}, D] (row i = item i), got {got}")


def build_item_embedding(
    source: str, n_items: int, cfg: SRSConfig, item_embeddings: np.ndarray | None = None
) -> ItemEmbedding:
    """The item embedding named `source`; `item_embeddings` row i belongs to item index i + 1."""
    check_source(source, n_items, item_embeddings)
    return SOURCES[source](n_items, cfg, item_embeddings)
