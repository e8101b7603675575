"""A FAISS index over string item ids: FAISS stores int64 positions, `ids` maps them back.

Ids live beside the index (Parquet in a version directory), never pickled into it, so any
reader can check the map and the index bytes stay plain `faiss.serialize_index` output.
"""
from __future__ import annotations

from collections import Counter

import faiss
import numpy as np

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
HNSW_EF_SEARCH = 128   # FAISS's default of 16 loses recall at k >= 10


def _nprobe(nlist: int) -> int:
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


class ItemIndex:
    """FAISS index over catalog ids (strings) mapped to int64 positions by a stored id map."""

    def __init__(self, index: faiss.Index, ids: list[str], factory: str, metric: str):
        if index.ntotal != len(ids):
            raise ValueError(f"the FAISS index holds {index.ntotal} vectors but the id map has {len(ids)} ids")
        _check_metric(metric)
        self.index = index
        self.ids = list(ids)
        self.factory = factory
        self.metric = metric
        self._pos = {item_id: i for i, item_id in enumerate(self.ids)}

    @property
    def dims(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return len(self.ids)

    # -- build -------------------------------------------------------------------------------
    @classmethod
    def build(cls, ids: list[str], vectors: np.ndarray, factory: str = "Flat",
              metric: str = "cosine") -> "ItemIndex":
        """Index `vectors[i]` under `ids[i]`; cosine = L2-normalize, then inner product."""
        _check_metric(metric)
        x = _check_matrix(vectors, "vectors")
        ids = list(ids)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
        if not ids:
            raise ValueError("no vectors to index")
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
            x = x.copy()
            faiss.normalize_L2(x)
        index = _new_index(x.shape[1], factory, metric)
        _train(index, x, factory)
        index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.make_direct_map()   # lets vector() reconstruct by position
        return cls(index, ids, factory, metric)

    # -- search ------------------------------------------------------------------------------
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
            q = q.copy()
            faiss.normalize_L2(q)
        scores, positions = self.index.search(q, min(k, len(self)))
        scores[positions < 0] = np.nan
        return [[self.ids[p] for p in row if p >= 0] for row in positions], scores

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
            pos = self._pos[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the index") from None
        return self.index.reconstruct(pos)

    # -- bytes -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The FAISS index alone (`serialize_index`); the id map is saved separately."""
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, ids: list[str], *, factory: str, metric: str) -> "ItemIndex":
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index, ids, factory, metric)


def _new_index(d: int, factory: str, metric: str) -> faiss.Index:
    """index_factory, wrapped in IDMap2 unless it takes ids itself (IVF) or already has a map."""
    try:
        index = faiss.index_factory(d, factory, METRICS[metric])
        if faiss.try_extract_index_ivf(index) is None and not factory.startswith("IDMap"):
            index = faiss.index_factory(d, f"IDMap2,{factory}", METRICS[metric])
    except RuntimeError as e:
        raise ValueError(f"FAISS cannot build index {factory!r}: {str(e).splitlines()[-1]}") from None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = _nprobe(ivf.nlist)
        ivf = faiss.downcast_index(ivf)
        if isinstance(ivf, faiss.IndexIVFPQ):
            ivf.do_polysemous_training = False   # slow, and plain PQ search does not use it
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(base, faiss.IndexHNSW):
        base.hnsw.efSearch = HNSW_EF_SEARCH
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
