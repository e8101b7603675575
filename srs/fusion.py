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
- tslrec: TSLRec's knowledge embedding gated into the ID embedding;
- llmesr: LLM-ESR's dual view, an ID table initialised from the PCA of the LLM embeddings beside
  LLMEmb's frozen semantic table, each encoded by the same backbone (`views`).

Sources whose rows come from LLM embeddings keep the PCA they were reduced with (mean, components,
scale) in their weights, so an item the model never trained on gets its row from its text
(`add_items`): what serving does for items added after training.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cluster.config import SRSConfig
from llm.attributes import standardize


@dataclass(frozen=True)
class SourceInputs:
    """What sources are built from, beside the config. `llm`: [n_items, D] LLM item embeddings;
    `attributes`: [n_items, A] attribute scores (GER); `id_table`: [n_items, d] item embeddings
    of a pre-trained ID model (LLMEmb's alignment target, TSLRec's clustering); `warm`: which
    items training sees (the rest are cold: added after training, in the cold-item protocol)."""

    llm: np.ndarray | None = None
    attributes: np.ndarray | None = None
    id_table: np.ndarray | None = None
    warm: np.ndarray | None = None   # [n_items] bool: the items training knows (PCA is fitted on them); None: all


class ItemEmbedding(nn.Module):
    """An item table [n_items + 1, d]; row 0 is the padding item and stays zero."""

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.n_items = n_items
        self.dim = dim

    def table(self) -> torch.Tensor:
        raise NotImplementedError

    def views(self) -> tuple[torch.Tensor, ...]:
        """The tables the backbone encodes separately (with shared weights); `table` is them side by side."""
        return (self.table(),)

    def add_items(self, llm: torch.Tensor) -> None:
        """Append rows for items the model never trained on, computed from their LLM embeddings [m, D]."""
        raise ValueError(f"the {type(self).__name__} item source cannot give a row to an item it never trained on")

    def scored(self, views: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The table candidates are scored against, from this pass's `views`: the views side by side."""
        return torch.cat(views, 1)

    def after_training(self, known: torch.Tensor, tail: torch.Tensor) -> None:
        """Once the best weights are back: what a source learns from its trained table ([n_items] bool
        `known`: the items training saw, the others are cold; `tail`: the items outside the popularity head,
        srs.metrics.tail_items)."""

    def text_map_stage(self, dropout: float) -> list[nn.Parameter]:
        """Turn text dropout on (> 0: returns the parameters that map text to rows, to be trained over
        the frozen model) or off (0). Sources without such a map have nothing to train."""
        return []

    def aux_loss(self, items: torch.Tensor) -> torch.Tensor | None:
        """An extra training term over the item indices of a batch (0 = padding), or None."""
        return None


def with_padding_row(items: torch.Tensor) -> torch.Tensor:
    return torch.cat([items.new_zeros(1, items.shape[1]), items])


ID_INIT_STD = 0.02   # RecBole's N(0, 0.02) init of ID tables
RIDGE = 1e-3         # ridge penalty of the text -> ID row regression, relative to the mean eigenvalue of X'X


class PCA(nn.Module):
    """Projection on the top-k principal components of the rows it is fitted on (centered; k capped
    at min(D, n)), scaled by one constant to unit mean row norm over those rows, so what follows
    starts at the same scale whatever the LLM's hidden-state norm. With `whiten` each component is
    first scaled to unit variance (BERT-whitening, Su et al. 2021): the few directions that hold most
    of an anisotropic LLM table's variance no longer dominate its dot products. Buffers (the
    whitening folded into the components): the published model can project an item added after
    training."""

    def __init__(self, x: np.ndarray, k: int, whiten: bool = False):
        super().__init__()
        x = x.astype(np.float64)
        k = min(k, *x.shape)
        mean = x.mean(axis=0)
        _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
        vt = vt[:k]
        if whiten:
            vt = vt / np.maximum(sv[:k, None], sv[0] * 1e-6)   # a component with no variance stays ~0
        norm = np.linalg.norm((x - mean) @ vt.T, axis=1).mean()
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("components", torch.from_numpy(vt.astype(np.float32)))
        self.register_buffer("scale", torch.tensor(1.0 / norm if norm > 0 else 1.0))

    @property
    def k(self) -> int:
        return self.components.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components.T * self.scale


def fit_pca(llm: np.ndarray, k: int, warm: np.ndarray | None, whiten: bool = False) -> PCA:
    """PCA fitted on the items training knows (all when `warm` is None)."""
    return PCA(llm if warm is None else llm[warm], k, whiten)


class IDEmbedding(ItemEmbedding):
    """The plain ID table of SASRec (Kang & McAuley 2018), RecBole's N(0, 0.02) init; or, with
    `pca`, every row initialised from its item's LLM embedding (LLM-ESR's ID view; `srs.id_init:
    llm-pca`), at the random init's mean row norm.

    With `pca` the table also learns where text lands in it (`text_map`, kept in the weights), so
    that every item training never saw (cold items; `add_items`) gets the row its text predicts
    instead of an untrained initial row that no trained row's score can compete with. With
    text dropout p > 0 (DropoutNet, Volkovs et al. 2017) each forward pass gives a random share p of
    the items their text-predicted row instead of their own, so the scores learn to rank items known
    only by their text: while the model trains (`text_dropout` here), or afterwards over the frozen
    model with only the map trainable (`text_map_stage`, srs.text_map_steps), which leaves the warm
    items' ranking as trained. A map never trained is a ridge regression from the items' PCA'd text
    to their trained rows, fitted after training (measured: cold items still rank last).

    With `cold_knn` k > 0 an untrained item's row is instead the mean trained row of the k known items
    nearest to it by text (neighbour imputation): rows the trained scores already rank, not a map's
    prediction of one; no text dropout then, and no map is trained. The PCA'd text and which items were
    trained are kept in the weights, for items added after training."""

    def __init__(self, n_items: int, dim: int, llm: np.ndarray | None = None, pca: PCA | None = None,
                 text_dropout: float = 0.0, cold_knn: int = 0):
        super().__init__(n_items, dim)
        self.weight = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.weight.weight, std=ID_INIT_STD)
        self.pca = pca
        self.text_dropout = text_dropout
        self.cold_knn = cold_knn
        if pca is not None:
            if pca.k != dim:
                raise ValueError(f"the LLM embeddings allow {pca.k} principal components, the ID table needs {dim}")
            # [text, 1] @ text_map: the initial map is the PCA at the random init's scale, no offset.
            self.text_map = nn.Parameter(torch.cat([torch.eye(dim) * (ID_INIT_STD * dim ** 0.5), torch.zeros(1, dim)]),
                                         requires_grad=text_dropout > 0)
            with torch.no_grad():
                text = pca(torch.from_numpy(llm.astype(np.float32)))
                self.register_buffer("text", text, persistent=cold_knn > 0)   # else training-time only
                self.register_buffer("known", torch.ones(n_items, dtype=torch.bool), persistent=cold_knn > 0)
                self.weight.weight[1:] = self._from_text(text)
        with torch.no_grad():
            self.weight.weight[0].zero_()

    def _from_text(self, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([text, text.new_ones(len(text), 1)], 1) @ self.text_map

    def _untrained_rows(self, text: torch.Tensor) -> torch.Tensor:
        """Rows for items known only by their PCA'd text: the text map's, or with cold_knn the mean trained
        row of their nearest known items, nearest by cosine after each component is scaled to unit variance
        (whitened neighbours hold the next item more often: benchmarks/text_neighbours.py)."""
        if not self.cold_knn:
            return self._from_text(text)
        known = self.known.nonzero().squeeze(1)
        spread = self.text[known].std(0).clamp_min(1e-12)
        sim = F.normalize(text / spread, dim=1) @ F.normalize(self.text[known] / spread, dim=1).T
        nearest = known[sim.topk(min(self.cold_knn, len(known)), dim=1).indices]
        return self.weight.weight[1:][nearest].mean(1)

    def table(self) -> torch.Tensor:
        rows = self.weight.weight
        if self.training and self.text_dropout > 0:
            dropped = torch.rand(len(rows), 1, device=rows.device) < self.text_dropout
            rows = torch.where(dropped, with_padding_row(self._from_text(self.text)), rows)
        return rows

    def text_map_stage(self, dropout: float) -> list[nn.Parameter]:
        if self.pca is None or self.cold_knn:   # with cold_knn no row comes from the map: nothing to train
            return []
        self.text_dropout = dropout
        if dropout == 0:
            return []
        self.text_map.requires_grad_(True)
        return [self.text_map]

    @torch.no_grad()
    def after_training(self, known: torch.Tensor, tail: torch.Tensor) -> None:
        if self.pca is None:
            return
        if not (self.cold_knn or self.text_map.requires_grad):   # an untrained map that rows read: the ridge fit
            x = torch.cat([self.text, self.text.new_ones(len(self.text), 1)], 1).double()
            y = self.weight.weight[1:].double()
            gram = x[known].T @ x[known]
            ridge = RIDGE * gram.trace() / len(gram) * torch.eye(len(gram), dtype=x.dtype, device=x.device)
            self.text_map.copy_(torch.linalg.solve(gram + ridge, x[known].T @ y[known]))
        self.known.copy_(known)
        self.weight.weight[1:][~known] = self._untrained_rows(self.text[~known])

    def add_items(self, llm: torch.Tensor) -> None:
        if self.pca is None:
            super().add_items(llm)   # refuses: a random initial row says nothing about a new item
        text = self.pca(llm.to(self.weight.weight))
        rows = torch.cat([self.weight.weight.detach(), self._untrained_rows(text)])
        self.text = torch.cat([self.text, text])
        self.known = torch.cat([self.known, self.known.new_zeros(len(text))])
        self.weight = nn.Embedding.from_pretrained(rows, freeze=False, padding_idx=0)
        self.n_items = rows.shape[0] - 1


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
        warm: np.ndarray | None = None,
        whiten: bool = False,
    ):
        n_items = llm_embeddings.shape[0]
        super().__init__(n_items, dim)
        self.pca = fit_pca(llm_embeddings, pca_dim if adapter else dim, warm, whiten)
        with torch.no_grad():
            reduced = self.pca(torch.from_numpy(llm_embeddings.astype(np.float32)))
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

    def add_items(self, llm: torch.Tensor) -> None:
        reduced = torch.cat([self.reduced.detach(), self.pca(llm.to(self.reduced))])
        if isinstance(self.reduced, nn.Parameter):
            self.reduced = nn.Parameter(reduced)
        else:
            self.reduced = reduced
        self.n_items = reduced.shape[0]

    def aux_loss(self, items: torch.Tensor) -> torch.Tensor | None:
        if self.id_table is None or self.alpha == 0:
            return None
        rows = items.unique()
        rows = rows[rows != 0] - 1
        return self.alpha * info_nce(self.adapter(self.reduced[rows]), self.id_table[rows], self.gamma)


def zscore(x: np.ndarray) -> np.ndarray:
    """Per-column z-score over the items (llm.attributes.standardize over their own mean and std)."""
    return standardize(x, x.mean(axis=0), x.std(axis=0))


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


def kmeans_pp_centres(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability proportional to its squared
    distance from the nearest centre so far."""
    centres = x[[rng.integers(len(x))]]
    for _ in range(k - 1):
        d2 = np.maximum((x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None], 0).min(1)
        pick = rng.choice(len(x), p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(len(x))
        centres = np.vstack([centres, x[pick]])
    return centres


def latent_categories(x: np.ndarray, k: int, seed: int = 0, iterations: int = 25) -> np.ndarray:
    """TSLRec's step 1: k-means of item embeddings (faiss, which splits a large cluster when one
    empties), from k-means++ centres; [n] cluster label per row."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    k = min(k, len(x))
    kmeans = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, max_points_per_centroid=len(x),
                          min_points_per_centroid=1)
    centres = kmeans_pp_centres(x.astype(np.float64), k, np.random.default_rng(seed))
    kmeans.train(x, init_centroids=centres.astype(np.float32))
    return kmeans.index.search(x, 1)[1][:, 0]


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


class DualView(ItemEmbedding):
    """LLM-ESR's dual-view item embedding (Liu et al., NeurIPS 2024): an ID view, a trainable ID
    table initialised from the PCA of the LLM embeddings, and a semantic view, the frozen LLM
    embeddings through LLMEmb's adapter. The backbone encodes each view with the same weights; the
    user vector and the item table are the two side by side (2d wide), so an item scores by the sum
    of both views' dot products: the ID view learns the collaborative signal, the semantic view
    keeps what the text says, which is all a tail or new item has.

    With `semantic_boost` b > 0 the trained model trusts the semantic view more where the ID view learnt
    little: at inference the semantic score of a tail item (outside the 20% most popular in training,
    srs.metrics.tail_items) or of an item added after training is weighted by 1 + b. Training and its
    early stopping are unchanged (the run's recorded validation metrics are the boosted model's); the weights
    are set once trained (`boost`; srs.loop chooses b on validation with semantic_boost "auto") and kept in
    the published weights. (A smooth weight, 1 + b * m / (m + n) over training counts n with median m,
    traded more HR@10 for less tail on Beauty: benchmarks/NOTEBOOK.md "Session 27".)"""

    def __init__(self, ids: IDEmbedding, semantic: LLMEmbAdapter, semantic_boost: float | str = 0.0):
        super().__init__(ids.n_items, ids.dim)
        self.ids, self.semantic = ids, semantic
        self.semantic_boost = semantic_boost
        self.register_buffer("semantic_weight", torch.ones(ids.n_items + 1), persistent=semantic_boost != 0)

    def views(self) -> tuple[torch.Tensor, ...]:
        return self.ids.table(), self.semantic.table()

    def table(self) -> torch.Tensor:
        return torch.cat(self.views(), 1)

    def scored(self, views: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat([views[0], views[1] * self.semantic_weight[:, None]], 1)

    def add_items(self, llm: torch.Tensor) -> None:
        self.ids.add_items(llm)
        self.semantic.add_items(llm)
        # a new item weighs as a tail item does: 1 + b (1 without a boost)
        self.semantic_weight = torch.cat([self.semantic_weight, self.semantic_weight.max().expand(len(llm))])
        self.n_items = self.ids.n_items

    @torch.no_grad()
    def after_training(self, known: torch.Tensor, tail: torch.Tensor) -> None:
        self.ids.after_training(known, tail)
        self.tail = tail
        self.boost(0.0 if self.semantic_boost == "auto" else self.semantic_boost)

    @torch.no_grad()
    def boost(self, b: float) -> None:
        """Weight the trained tail items' semantic scores by 1 + b (after_training gave the tail)."""
        self.semantic_weight[1:] = 1 + b * self.tail.to(self.semantic_weight)

    def text_map_stage(self, dropout: float) -> list[nn.Parameter]:
        return self.ids.text_map_stage(dropout)


def tslrec_knowledge(llm: np.ndarray, id_table: np.ndarray, cfg: SRSConfig) -> np.ndarray:
    """The stand-in for TSLRec's knowledge embedding until its user-level SFT exists: the LLM
    item embedding (PCA-reduced to pca_dim) beside a one-hot of the item's latent category,
    k-means of the pre-trained ID model's item embeddings (the categories the SFT will predict)."""
    labels = latent_categories(id_table, cfg.tslrec_clusters, cfg.seed)
    with torch.no_grad():
        reduced = PCA(llm, cfg.pca_dim, cfg.pca_whiten)(torch.from_numpy(llm.astype(np.float32))).numpy()
    return np.concatenate([reduced, np.eye(cfg.tslrec_clusters, dtype=np.float32)[labels]], axis=1)


def joint_text_dropout(cfg: SRSConfig) -> float:
    """Text dropout while the model trains; none when the map is trained afterwards (text_map_steps) or
    unused (cold_knn)."""
    return cfg.text_dropout if cfg.text_map_steps == 0 and not cfg.cold_knn else 0.0


def _text_initialised_ids(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> IDEmbedding:
    """The ID table initialised from the PCA of the LLM embeddings (id_init llm-pca; llmesr's ID view)."""
    return IDEmbedding(n_items, cfg.hidden_size, inputs.llm,
                       fit_pca(inputs.llm, cfg.hidden_size, inputs.warm, cfg.pca_whiten), joint_text_dropout(cfg),
                       cfg.cold_knn)


def _id(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> IDEmbedding:
    if cfg.id_init == "random":
        return IDEmbedding(n_items, cfg.hidden_size)
    return _text_initialised_ids(n_items, cfg, inputs)


def _llm_frozen(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> ItemEmbedding:
    return LLMEmbAdapter(inputs.llm, cfg.hidden_size, cfg.hidden_size, adapter=False, freeze=True, warm=inputs.warm,
                         whiten=cfg.pca_whiten)


def _llmemb(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> LLMEmbAdapter:
    return LLMEmbAdapter(inputs.llm, cfg.hidden_size, cfg.pca_dim, cfg.llmemb_adapter, cfg.llmemb_freeze,
                         inputs.id_table, cfg.align_alpha, cfg.align_gamma, inputs.warm, cfg.pca_whiten)


def _llmesr(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> ItemEmbedding:
    ids = _text_initialised_ids(n_items, cfg, inputs)   # first: the RNG order of published runs
    semantic = LLMEmbAdapter(inputs.llm, cfg.hidden_size, cfg.pca_dim, warm=inputs.warm, whiten=cfg.pca_whiten)
    return DualView(ids, semantic, cfg.semantic_boost)


def _ger(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> ItemEmbedding:
    return GuidedEmbedding(inputs.attributes, cfg.hidden_size)


def _tslrec(n_items: int, cfg: SRSConfig, inputs: SourceInputs) -> ItemEmbedding:
    return KnowledgeGate(tslrec_knowledge(inputs.llm, inputs.id_table, cfg), cfg.hidden_size)


SOURCES: dict[str, Callable[[int, SRSConfig, SourceInputs], ItemEmbedding]] = {
    "id": _id, "llm-frozen": _llm_frozen, "llmemb": _llmemb, "ger": _ger, "tslrec": _tslrec, "llmesr": _llmesr,
}
NEEDS_EMBEDDINGS = {"llm-frozen", "llmemb", "tslrec", "llmesr"}


def required_inputs(source: str, cfg: SRSConfig) -> tuple[str, ...]:
    """The SourceInputs fields `source` needs to train under `cfg`."""
    if source not in SOURCES:
        raise ValueError(f"unknown embedding source {source!r}; known: {sorted(SOURCES)}")
    needs = ("llm",) if source in NEEDS_EMBEDDINGS or (source == "id" and cfg.id_init == "llm-pca") else ()
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
