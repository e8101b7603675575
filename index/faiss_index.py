"""A FAISS index over string item ids: FAISS stores int64 labels, the id map turns them back into ids.

Ids live beside the index (Parquet in a version directory), never pickled into it, so any
reader can check the map and the index bytes stay plain `faiss.serialize_index` output.
A label belongs to one item for the life of an index: an upsert replaces a changed item's
vector under its old label and gives new items fresh ones, so a copy can be updated in place.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import faiss
import numpy as np

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
HNSW_EF_SEARCH = 128   # FAISS's default of 16 loses recall at k >= 10


def default_nprobe(nlist: int) -> int:
    """IVF lists probed per query: about 1/16 of them, at least 8 (recall over speed)."""
    return min(nlist, max(8, nlist // 16))


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {sorted(METRICS)}")


def _check_matrix(vectors: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        shape = getattr(vectors, "shape", type(vectors).__name__)
        raise ValueError(f"{what} must be a 2-D numpy array, got {shape}")
    if vectors.dtype != np.float32:
        raise ValueError(f"{what} must be float32, got {vectors.dtype}")
    return np.ascontiguousarray(vectors)


def _first_bad_ids(mask: np.ndarray, ids: list[str], limit: int = 3) -> str:
    return ", ".join(repr(ids[r]) for r in np.flatnonzero(mask)[:limit])


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, computed in float64: float32's squares underflow for tiny rows
    ([1e-45] * d) and overflow for huge ones ([3e38] * d), which faiss.normalize_L2 turns into
    wrong directions or zeros. A zero row stays zero, as faiss.normalize_L2 leaves it."""
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1, keepdims=True)
    return np.divide(x64, norms, out=np.zeros_like(x64), where=norms > 0).astype(np.float32)


def prepare(ids: list[str], vectors: np.ndarray, metric: str) -> np.ndarray:
    """Validate (ids, vectors) and return the vectors as FAISS stores them (a unit-length copy for cosine)."""
    _check_metric(metric)
    x = _check_matrix(vectors, "vectors")
    if len(ids) != len(x):
        raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        raise ValueError(f"duplicate ids ({len(dupes)}), e.g. {dupes[:3]}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"{(~finite).sum()} vectors hold NaN or inf: {_first_bad_ids(~finite, ids)}")
    if metric == "cosine":
        zero = ~np.any(x, axis=1)
        if zero.any():
            raise ValueError(f"{zero.sum()} zero vectors have no cosine direction: {_first_bad_ids(zero, ids)}")
        x = _unit_rows(x)
    return x


class ItemIndex:
    """FAISS index over catalog ids (strings) mapped to int64 labels by a stored id map.

    `index` is the CPU index (what is saved and updated); searches go to a GPU copy when
    faiss-gpu sees a GPU, else to `index` itself.
    """

    def __init__(self, index: faiss.Index, ids: list[str], labels: np.ndarray, factory: str, metric: str):
        _check_metric(metric)
        labels = np.asarray(labels, dtype=np.int64)
        if not index.ntotal == len(ids) == len(labels):
            raise ValueError(f"the FAISS index holds {index.ntotal} vectors but the id map has "
                             f"{len(ids)} ids and {len(labels)} labels")
        self.index = index
        self.ids = list(ids)
        self.labels = labels
        self.factory = factory
        self.metric = metric
        self._label = dict(zip(self.ids, labels.tolist()))
        self._item = dict(zip(labels.tolist(), self.ids))
        if not len(self._label) == len(self._item) == len(self.ids):
            raise ValueError("the id map repeats an id or a label")
        self._searcher = _on_gpus(index)

    @property
    def dims(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return len(self.ids)

    # -- build -------------------------------------------------------------------------------
    @classmethod
    def build(cls, ids: list[str], vectors: np.ndarray, factory: str = "Flat", metric: str = "cosine", *,
              nprobe: int | None = None, ef_search: int | None = None) -> "ItemIndex":
        """Index `vectors[i]` under `ids[i]` (labels 0..n-1); cosine = L2-normalize, then inner product.

        nprobe (IVF) and ef_search (HNSW) default to default_nprobe(nlist) and HNSW_EF_SEARCH.
        """
        ids = list(ids)
        x = prepare(ids, vectors, metric)
        if not ids:
            raise ValueError("no vectors to index")
        index = _new_index(x.shape[1], factory, metric)
        _train(index, x, factory)
        labels = np.arange(len(x), dtype=np.int64)
        index.add_with_ids(x, labels)
        _hashed_direct_map(index)
        ivf = faiss.try_extract_index_ivf(index)
        built = cls(index, ids, labels, factory, metric)
        built.set_search(nprobe=nprobe or (default_nprobe(ivf.nlist) if ivf is not None else None),
                         ef_search=ef_search or HNSW_EF_SEARCH)
        return built

    # -- update ------------------------------------------------------------------------------
    @property
    def supports_removal(self) -> bool:
        """Flat-coded (Flat, PQ, SQ) and IVF indexes remove vectors in place; graphs (HNSW) cannot."""
        ivf = faiss.try_extract_index_ivf(self.index)
        return ivf is not None or isinstance(_base(self.index), faiss.IndexFlatCodes)

    def upsert(self, ids: list[str], vectors: np.ndarray, delete: Iterable[str] = ()) -> "ItemIndex":
        """A copy with `delete` removed and `ids` inserted or replaced; this index is left untouched.

        A replaced item keeps its label, a new one gets the next free label. Only for indexes that
        support removal (see supports_removal); an IVF keeps its trained lists.
        """
        if not self.supports_removal:
            raise ValueError(f"a {self.factory!r} index cannot remove vectors: rebuild it instead")
        ids, delete = list(ids), list(delete)
        x = prepare(ids, vectors, self.metric)
        if len(x) and x.shape[1] != self.dims:
            raise ValueError(f"vectors have {x.shape[1]} dims, the index expects {self.dims}")
        unknown = [i for i in delete if i not in self._label]
        if unknown:
            raise KeyError(f"cannot delete {len(unknown)} items that are not in the index, e.g. {unknown[:3]}")
        both = set(ids) & set(delete)
        if both:
            raise ValueError(f"{len(both)} items are both upserted and deleted, e.g. {sorted(both)[:3]}")
        fresh = iter(range(int(self.labels.max()) + 1, 2**62))
        new_labels = np.array([self._label.get(i) if i in self._label else next(fresh) for i in ids], dtype=np.int64)
        gone = set(delete)
        kept = [(i, label) for i, label in zip(self.ids, self.labels.tolist()) if i not in gone]
        added = [(i, label) for i, label in zip(ids, new_labels.tolist()) if i not in self._label]
        if not kept and not added:
            raise ValueError("the update would leave the index empty")
        index = faiss.clone_index(self.index)
        _hashed_direct_map(index)
        removed = np.array([self._label[i] for i in [*delete, *ids] if i in self._label], dtype=np.int64)
        if len(removed):
            ivf = faiss.try_extract_index_ivf(index) is not None   # IVF's id hashtable takes only an array
            index.remove_ids(faiss.IDSelectorArray(removed) if ivf else faiss.IDSelectorBatch(removed))
        if len(x):
            index.add_with_ids(x, new_labels)
        out_ids, out_labels = zip(*(kept + added))
        return ItemIndex(index, list(out_ids), np.array(out_labels, dtype=np.int64), self.factory, self.metric)

    # -- search ------------------------------------------------------------------------------
    def set_search(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Query-time speed/recall knobs: IVF lists probed, HNSW candidate list size (None: unchanged)."""
        ivf = faiss.try_extract_index_ivf(self.index)
        if nprobe is not None and ivf is not None:
            ivf.nprobe = min(nprobe, ivf.nlist)
        base = _base(self.index)
        if ef_search is not None and isinstance(base, faiss.IndexHNSW):
            base.hnsw.efSearch = ef_search
        if self._searcher is not self.index:
            self._searcher = _on_gpus(self.index)   # the GPU copy took the old settings

    @property
    def search_params(self) -> dict[str, int]:
        """The knobs set_search applies to this index type, with their current values."""
        ivf = faiss.try_extract_index_ivf(self.index)
        base = _base(self.index)
        if ivf is not None:
            return {"nprobe": int(ivf.nprobe)}
        if isinstance(base, faiss.IndexHNSW):
            return {"ef_search": int(base.hnsw.efSearch)}
        return {}

    def search(self, vectors: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-k ids and scores per query row (a 1-D vector is one query).

        Scores are inner products (cosine similarity for "cosine"), or squared L2 distances
        for "l2". Approximate indexes may find fewer than k: those ids are left out and their
        scores are NaN, so `scores` is always (queries, min(k, len(self))).
        """
        q = vectors.reshape(1, -1) if isinstance(vectors, np.ndarray) and vectors.ndim == 1 else vectors
        q = _check_matrix(q, "query vectors")
        if q.shape[1] != self.dims:
            raise ValueError(f"query vectors have {q.shape[1]} dims, the index expects {self.dims}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.metric == "cosine":
            q = _unit_rows(q)
        scores, labels = self._searcher.search(q, min(k, len(self)))
        scores[labels < 0] = np.nan
        item = self._item
        return [[item[label] for label in row if label >= 0] for row in labels.tolist()], scores

    def search_items(self, item_ids: list[str], k: int,
                     exclude_self: bool = True) -> tuple[list[list[str]], np.ndarray]:
        """Nearest neighbours of indexed items (themselves left out unless exclude_self=False)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.array([self.vector(i) for i in item_ids], dtype=np.float32).reshape(-1, self.dims)
        found, scores = self.search(queries, k + 1 if exclude_self else k)
        if not exclude_self:
            return found, scores
        width = min(k, len(self) - 1)
        out_ids: list[list[str]] = []
        out_scores = np.full((len(item_ids), width), np.nan, dtype=np.float32)
        for row, (self_id, ids) in enumerate(zip(item_ids, found)):
            keep = [j for j, other in enumerate(ids) if other != self_id][:width]
            out_ids.append([ids[j] for j in keep])
            out_scores[row, :len(keep)] = scores[row, keep]
        return out_ids, out_scores

    def vector(self, item_id: str) -> np.ndarray:
        """The vector as indexed (L2-normalized for cosine; approximate for compressed codes)."""
        try:
            label = self._label[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the index") from None
        return self.index.reconstruct(label)

    # -- bytes -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The FAISS index alone (`serialize_index`, search settings included); the id map is saved separately."""
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, ids: list[str], labels: np.ndarray, *, factory: str, metric: str) -> "ItemIndex":
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index, ids, labels, factory, metric)


def overlap_recall(found: list[list[str]], truth: list[list[str]]) -> float:
    """Mean share of each true neighbour list that `found` holds (recall@k for k = len(truth row))."""
    if not truth:
        raise ValueError("no queries to measure recall on")
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def recall_at_k(index: ItemIndex, ids: list[str], vectors: np.ndarray, queries: int, k: int = 10,
                seed: int = 0) -> float:
    """Recall@k of `index` against exact search over (ids, vectors), the set it indexes, with a
    random sample of `queries` of those vectors as queries: what the approximation costs."""
    x = prepare(ids, vectors, index.metric)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=min(queries, len(x)), replace=False))
    k = min(k, len(x))
    _, exact = faiss.knn(x[rows], x, k, metric=METRICS[index.metric])
    found, _ = index.search(x[rows], k)
    return overlap_recall(found, [[ids[j] for j in row] for row in exact.tolist()])


def _base(index: faiss.Index) -> faiss.Index:
    """The index inside an IDMap wrapper (or the index itself)."""
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def _on_gpus(index: faiss.Index) -> faiss.Index:
    """A GPU copy for searching when faiss-gpu sees GPUs; the index itself on CPU-only machines
    and for types without a GPU implementation (e.g. HNSW)."""
    if faiss.get_num_gpus() == 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError:
        return index


def _hashed_direct_map(index: faiss.Index) -> None:
    """IVF: an id -> entry hashtable, so vector() can reconstruct by label and upsert can remove by label."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)


def _new_index(d: int, factory: str, metric: str) -> faiss.Index:
    """index_factory, wrapped in IDMap2 unless it takes ids itself (IVF) or already has a map."""
    try:
        index = faiss.index_factory(d, factory, METRICS[metric])
        if faiss.try_extract_index_ivf(index) is None and not factory.startswith("IDMap"):
            index = faiss.index_factory(d, f"IDMap2,{factory}", METRICS[metric])
    except RuntimeError as e:
        raise ValueError(f"FAISS cannot build index {factory!r}: {str(e).splitlines()[-1]}") from None
    ivf = faiss.try_extract_index_ivf(index)
    pq = faiss.downcast_index(ivf) if ivf is not None else None
    if isinstance(pq, faiss.IndexIVFPQ):
        pq.do_polysemous_training = False   # slow, and plain PQ search does not use it
    return index


def _train(index: faiss.Index, x: np.ndarray, factory: str) -> None:
    """Train where the index needs it; too few vectors is a clear error, not a FAISS assert."""
    if index.is_trained:
        return
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and len(x) < ivf.nlist:
        raise ValueError(f"{factory!r} has {ivf.nlist} IVF lists and needs at least that many vectors "
                         f"to train, got {len(x)}: use fewer lists or Flat")
    try:
        index.train(x)
    except RuntimeError as e:
        raise ValueError(f"cannot train {factory!r} on {len(x)} vectors: {str(e).splitlines()[-1]}") from None
