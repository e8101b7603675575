"""Item embedding sources: where the SRS's item table e_v comes from, chosen by name.

Every source is an `ItemEmbedding` whose `table()` is [n_items + 1, d] with row 0 (padding) all
zeros; every backbone reads inputs and scores candidates from that one table (input and output
item embeddings are shared), so every source works with every backbone. A source may add a
training term through `aux_loss` (LLMEmb's collaborative alignment).

Sources are built from `SourceInputs`, whose matrices all have row i = item index i + 1:
- id: a trainable ID table (SASRec);
- llm-frozen: the LLM embeddings PCA-reduced to d, frozen, no adapter;
- llmemb: LLMEmb's RAT (PCA to d_m, frozen, 2-layer adapter) plus its alignment to a pre-trained
  ID model's items; `llmemb_adapter` / `llmemb_freeze` / `align_alpha = 0` are Table 2's
  ablations (the fourth, "no SCFT", is only which LLM embeddings are passed in);
- ger: GER's refined embedding, frozen normalized attribute scores beside a reduced ID table;
- tslrec: TSLRec's knowledge embedding gated into the ID embedding.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cluster.config import SRSConfig


@dataclass(frozen=True)
class SourceInputs:
    """What sources are built from, beside the config. `llm`: [n_items, D] LLM item embeddings;
    `attributes`: [n_items, A] attribute scores (GER); `id_table`: [n_items, d] item embeddings
    of a pre-trained ID model (LLMEmb's alignment target, TSLRec's clustering)."""

    llm: np.ndarray | None = None
    attributes: np.ndarray | None = None
    id_table: np.ndarray | None = None


class ItemEmbedding(nn.Module):
    """An item table [n_items + 1, d]; row 0 is the padding item and stays zero."""

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.n_items = n_items
        self.dim = dim

    def table(self) -> torch.Tensor:
        raise NotImplementedError

    def aux_loss(self, items: torch.Tensor) -> torch.Tensor | None:
        """An extra training term over the item indices of a batch (0 = padding), or None."""
        return None


def with_padding_row(items: torch.Tensor) -> torch.Tensor:
    return torch.cat([items.new_zeros(1, items.shape[1]), items])


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


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE over cosine similarities: row i of a and b are positives."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    labels = torch.arange(len(a), device=a.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)


class LLMEmbAdapter(ItemEmbedding):
    """LLMEmb's RAT stage (Liu et al., AAAI 2025): the LLM item embeddings, reduced by PCA to d_m
    and FROZEN (a buffer: the paper found that updating them destroys their semantics), pass
    through a trainable two-layer linear adapter e = W1 (W2 e_bar + b2) + b1, W2: d_m -> d_m/2,
    W1: d_m/2 -> d. After training the adapted table is precomputed: no serving cost.

    Ablations: `adapter=False` reduces by PCA straight to d and uses that as the table (with
    `freeze` too this is the 'llm-frozen' source and nothing item-side trains); `freeze=False`
    makes the reduced table a trainable parameter. With `id_table`, `aux_loss` adds
    alpha * L_align: symmetric in-batch InfoNCE (cosine, temperature gamma) between the adapted
    embeddings of the batch's items and the same items' pre-trained ID embeddings, which stay
    fixed (a non-persistent buffer: serving does not need them)."""

    def __init__(
        self,
        llm_embeddings: np.ndarray,
        dim: int,
        pca_dim: int,
        adapter: bool = True,
        freeze: bool = True,
        id_table: np.ndarray | None = None,
        alpha: float = 0.0,
        gamma: float = 1.0,
    ):
        n_items = llm_embeddings.shape[0]
        super().__init__(n_items, dim)
        reduced = torch.from_numpy(pca(llm_embeddings, pca_dim if adapter else dim))
        if not adapter and reduced.shape[1] != dim:
            raise ValueError(f"without an adapter PCA must reach hidden_size {dim}; the LLM table allows {reduced.shape[1]}")
        if freeze:
            self.register_buffer("reduced", reduced)
        else:
            self.reduced = nn.Parameter(reduced)
        self.adapter: nn.Module = nn.Identity()
        if adapter:
            d_m = reduced.shape[1]
            self.adapter = nn.Sequential(nn.Linear(d_m, max(d_m // 2, 1)), nn.Linear(max(d_m // 2, 1), dim))
            for layer in self.adapter:
                nn.init.zeros_(layer.bias)  # no shared offset: every item starts from its own LLM vector
        self.alpha, self.gamma = alpha, gamma
        self.register_buffer("id_table", None if id_table is None else torch.from_numpy(id_table), persistent=False)

    def table(self) -> torch.Tensor:
        return with_padding_row(self.adapter(self.reduced))

    def aux_loss(self, items: torch.Tensor) -> torch.Tensor | None:
        if self.id_table is None or self.alpha == 0:
            return None
        rows = items.unique()
        rows = rows[rows != 0] - 1
        return self.alpha * info_nce(self.adapter(self.reduced[rows]), self.id_table[rows], self.gamma)


MIN_STD = 1e-3  # a feature that varies less over the items carries no signal (1-9 attribute scale)


def zscore(x: np.ndarray) -> np.ndarray:
    """Per-column z-score over the items; a column whose std is below MIN_STD is 0 for every item
    (dividing by it would only blow rounding noise up to unit variance)."""
    std = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(std >= MIN_STD, std, 1.0)
    return np.where(std >= MIN_STD, z, 0.0).astype(np.float32)


class GuidedEmbedding(ItemEmbedding):
    """GER's refined item embedding e^r = [e^g, e^b] (guided embedding refinement): e^g the item's
    A attribute scores, z-scored over the items it ranks (not the whole catalog: on ml-100k the
    items outside the k-core vary 3-5x more) and FROZEN (one learned weight per attribute), beside
    a trainable ID embedding e^b of d - A dims, so the total matches a d-dim base-only model
    (paper: 12 + 48 versus 60). GER's trainable user-side guided embedding has no place in these
    backbones, whose user vector is the sequence encoder's output."""

    def __init__(self, attributes: np.ndarray, dim: int):
        n_items, n_attr = attributes.shape
        if n_attr >= dim:
            raise ValueError(f"ger needs fewer attribute scores ({n_attr}) than hidden_size ({dim})")
        super().__init__(n_items, dim)
        self.register_buffer("guided", torch.from_numpy(zscore(attributes)))
        # One trainable weight per attribute (not per item), starting at the ID table's init scale:
        # unit-variance scores beside N(0, 0.02) ID vectors swamped the dot products (ml-100k SASRec
        # HR@10 0.077 vs 0.190 for ID-only; 0.140 with all-zero scores).
        self.attribute_weight = nn.Parameter(torch.full((n_attr,), 0.02))
        self.base = IDEmbedding(n_items, dim - n_attr)

    def table(self) -> torch.Tensor:
        return torch.cat([with_padding_row(self.guided * self.attribute_weight), self.base.table()], dim=1)


def squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[n, k] squared Euclidean distances, without an [n, k, d] intermediate."""
    return np.maximum((x * x).sum(1)[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None], 0)


def latent_categories(x: np.ndarray, k: int, seed: int = 0, iterations: int = 25) -> np.ndarray:
    """TSLRec's step 1: k-means (k-means++ seeding, Lloyd iterations) of item embeddings;
    [n] cluster label per row."""
    rng = np.random.default_rng(seed)
    x = x.astype(np.float64)
    k = min(k, len(x))
    centers = x[[rng.integers(len(x))]]
    for _ in range(k - 1):
        d2 = squared_distances(x, centers).min(1)
        pick = rng.choice(len(x), p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(len(x))
        centers = np.vstack([centers, x[pick]])
    for _ in range(iterations):
        labels = squared_distances(x, centers).argmin(1)
        for c in np.unique(labels):
            centers[c] = x[labels == c].mean(0)
    return squared_distances(x, centers).argmin(1)


class KnowledgeGate(ItemEmbedding):
    """TSLRec's augmentation (Liu et al. 2024): a FROZEN knowledge embedding per item, linearly
    reduced to d, fused with a trainable ID embedding through a gate,
    e = g * e_id + (1 - g) * W k, g = sigmoid(W_g [e_id; W k])."""

    def __init__(self, knowledge: np.ndarray, dim: int):
        n_items = knowledge.shape[0]
        super().__init__(n_items, dim)
        self.register_buffer("knowledge", torch.from_numpy(knowledge.astype(np.float32)))
        self.id = IDEmbedding(n_items, dim)
        self.project = nn.Linear(knowledge.shape[1], dim)
        self.gate = nn.Linear(2 * dim, dim)

    def table(self) -> torch.Tensor:
        ids = self.id.table()[1:]
        known = self.project(self.knowledge)
        g = torch.sigmoid(self.gate(torch.cat([ids, known], dim=1)))
        return with_padding_row(g * ids + (1 - g) * known)


def tslrec_knowledge(llm: np.ndarray, id_table: np.ndarray, cfg: SRSConfig) -> np.ndarray:
    """The stand-in for TSLRec's knowledge embedding until its user-level SFT exists: the LLM
    item embedding (PCA-reduced to pca_dim) beside a one-hot of the item's latent category,
    k-means of the pre-trained ID model's item embeddings (the categories the SFT will predict)."""
    labels = latent_categories(id_table, cfg.tslrec_clusters, cfg.seed)
    return np.concatenate([pca(llm, cfg.pca_dim), np.eye(cfg.tslrec_clusters, dtype=np.float32)[labels]], axis=1)


def _id(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> ItemEmbedding:
    return IDEmbedding(n_items, cfg.hidden_size)


def _llm_frozen(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> ItemEmbedding:
    return LLMEmbAdapter(inputs.llm, cfg.hidden_size, cfg.hidden_size, adapter=False, freeze=True)


def _llmemb(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> ItemEmbedding:
    return LLMEmbAdapter(inputs.llm, cfg.hidden_size, cfg.pca_dim, cfg.llmemb_adapter, cfg.llmemb_freeze,
                         inputs.id_table, cfg.align_alpha, cfg.align_gamma)


def _ger(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> ItemEmbedding:
    return GuidedEmbedding(inputs.attributes, cfg.hidden_size)


def _tslrec(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> ItemEmbedding:
    return KnowledgeGate(tslrec_knowledge(inputs.llm, inputs.id_table, cfg), cfg.hidden_size)


SOURCES: dict[str, Callable[[int, SRSConfig, SourceInputs], ItemEmbedding]] = {
    "id": _id, "llm-frozen": _llm_frozen, "llmemb": _llmemb, "ger": _ger, "tslrec": _tslrec,
}
NEEDS_EMBEDDINGS = {"llm-frozen", "llmemb", "tslrec"}


def required_inputs(source: str, cfg: SRSConfig) -> tuple[str, ...]:
    """The SourceInputs fields `source` needs to train under `cfg`."""
    if source not in SOURCES:
        raise ValueError(f"unknown embedding source {source!r}; known: {sorted(SOURCES)}")
    needs = ("llm",) if source in NEEDS_EMBEDDINGS else ()
    if source == "ger":
        needs = ("attributes",)
    if source == "tslrec" or (source == "llmemb" and cfg.align_alpha > 0):
        needs += ("id_table",)
    return needs


def check_source(source: str, n_items: int, cfg: SRSConfig, inputs: SourceInputs, needs: tuple[str, ...] | None = None) -> None:
    """Reject an unknown source or missing/misshaped inputs before any work starts. `needs`
    defaults to everything training needs; serving passes only what rebuilding needs."""
    needs = required_inputs(source, cfg) if needs is None else needs
    widths = {"id_table": cfg.hidden_size}
    for name in needs:
        x = getattr(inputs, name)
        if x is None or x.ndim != 2 or x.shape[0] != n_items or x.shape[1] != widths.get(name, x.shape[1]):
            got = None if x is None else x.shape
            raise ValueError(f"source {source!r} needs {name} of shape [{n_items}, {widths.get(name, 'D')}] "
                             f"(row i = item i), got {got}")


def build_item_embedding(source: str, n_items: int, cfg: SRSConfig, inputs: SourceInputs = SourceInputs()) -> ItemEmbedding:
    """The item embedding named `source`. Without `id_table` LLMEmb is built without its
    alignment term (what serving needs); srs.train always supplies one when alpha > 0."""
    needs = tuple(n for n in required_inputs(source, cfg) if not (source == "llmemb" and n == "id_table"))
    check_source(source, n_items, cfg, inputs, needs)
    return SOURCES[source](n_items, cfg, inputs)
