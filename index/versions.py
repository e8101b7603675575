"""Index versions in a Store: immutable `index/<version>/` directories plus a CURRENT pointer.

A build never touches an older version; readers follow CURRENT, which is replaced in one
atomic write only after the new version is committed, so a reader sees the old index or the
new one, never half of one. Each manifest records how the version was made (build, upsert or
rebuild) and its recall@10 against exact search, measured when it was made.
"""
from __future__ import annotations

import time
from collections.abc import Collection
from datetime import datetime, timezone
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster.config import IndexConfig
from cluster.layout import CURRENT, INDEX, current_version, index_dir, new_version, set_current
from cluster.storage import StorageError, Store
from index.faiss_index import ItemIndex, recall_at_k
from llm.runs import read_run

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
RECALL_K = 10


class Neighbour(NamedTuple):
    item_id: str
    score: float
    title: str | None


# -- versions ------------------------------------------------------------------------------
def save_version(store: Store, index: ItemIndex, *, run: str, extra: dict | None = None) -> str:
    """Write index/<version>/{index.faiss, ids.parquet} and commit its manifest; returns version."""
    version = new_version()
    vdir = index_dir(version)
    store.write_bytes(f"{vdir}/{INDEX_FILE}", index.to_bytes())
    store.write_parquet(f"{vdir}/{IDS_FILE}", pa.table({"item_id": pa.array(index.ids, pa.string()),
                                                        "faiss_id": pa.array(index.labels, pa.int64())}))
    store.commit(vdir, {
        **(extra or {}),
        "run": run, "factory": index.factory, "metric": index.metric, "dims": index.dims,
        "count": len(index), **index.search_params, "created": datetime.now(timezone.utc).isoformat(),
    })
    return version


def list_versions(store: Store) -> list[str]:
    """Committed versions, oldest first."""
    return [v for v in store.list(INDEX) if v != "CURRENT" and store.is_committed(index_dir(v))]


def version_manifest(store: Store, version: str | None = None) -> dict:
    """The manifest of `version` (None: CURRENT)."""
    return store.manifest(index_dir(version or current_version(store)))


def load_index(store: Store, version: str | None = None) -> ItemIndex:
    """Load `version` (None: CURRENT) and check its id map against the manifest."""
    version = version or current_version(store)
    vdir = index_dir(version)
    manifest = store.manifest(vdir)
    table = store.read_parquet(f"{vdir}/{IDS_FILE}")
    ids = table.column("item_id").to_pylist()
    if len(ids) != manifest["count"]:
        raise StorageError(f"{store.full_uri(vdir)}: manifest counts {manifest['count']} items, ids hold {len(ids)}")
    # Versions written before upserts existed store positions only: label = row.
    labels = table.column("faiss_id").to_numpy() if "faiss_id" in table.column_names else np.arange(len(ids))
    return ItemIndex.from_bytes(store.read_bytes(f"{vdir}/{INDEX_FILE}"), ids, labels,
                                factory=manifest["factory"], metric=manifest["metric"])


def prune_versions(store: Store, keep: int) -> list[str]:
    """Delete committed versions older than the newest `keep`, never CURRENT; returns those deleted."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    versions = list_versions(store)
    live = current_version(store) if store.exists(CURRENT) else None
    doomed = [v for v in versions[:max(len(versions) - keep, 0)] if v != live]
    for version in doomed:
        store.delete_dir(index_dir(version))
    return doomed


# -- building and updating -----------------------------------------------------------------
def _publish(store: Store, index: ItemIndex, run: str, run_manifest: dict, ids: list[str], vectors: np.ndarray,
             cfg: IndexConfig, extra: dict) -> str:
    """Measure recall@10 on the indexed vectors, save the version with it, make it CURRENT."""
    recall = round(recall_at_k(index, ids, vectors, cfg.recall_sample, RECALL_K), 4) if cfg.recall_sample else None
    version = save_version(store, index, run=run, extra={
        **extra, "catalog": run_manifest.get("catalog"), f"recall_at_{RECALL_K}": recall,
        "recall_queries": min(cfg.recall_sample, len(ids)),
    })
    set_current(store, version)
    return version


def _build(ids: list[str], vectors: np.ndarray, cfg: IndexConfig) -> ItemIndex:
    return ItemIndex.build(ids, vectors, factory=cfg.factory, metric=cfg.metric,
                           nprobe=cfg.nprobe, ef_search=cfg.ef_search)


def build_from_run(store: Store, run: str, cfg: IndexConfig) -> str:
    """Index a committed embeddings run, save it as a new version, make it CURRENT."""
    ids, vectors, run_manifest = read_run(store, run)
    started = time.perf_counter()
    index = _build(ids, vectors, cfg)
    seconds = round(time.perf_counter() - started, 3)
    return _publish(store, index, run, run_manifest, ids, vectors, cfg, {"method": "build", "seconds": seconds})


def update_from_run(store: Store, run: str, cfg: IndexConfig, *, upserted: Collection[str],
                    deleted: Collection[str]) -> str:
    """A new CURRENT version for `run`, made from CURRENT by replacing what changed.

    `upserted` are the run's items whose vectors are new or changed, `deleted` the items of
    CURRENT that the run no longer holds. Where CURRENT is of the configured type and can
    remove vectors (Flat, IVF) a copy of it is upserted; otherwise (HNSW, or a config that
    names another type) the run is indexed from scratch. The manifest says which ("method").
    """
    parent = current_version(store)
    current = load_index(store, parent)
    ids, vectors, run_manifest = read_run(store, run)
    started = time.perf_counter()
    same_type = (current.factory, current.metric, current.dims) == (cfg.factory, cfg.metric, vectors.shape[1])
    if same_type and current.supports_removal:
        pos = {item: i for i, item in enumerate(ids)}
        missing = [i for i in upserted if i not in pos]
        if missing:
            raise KeyError(f"embeddings run {run} lacks {len(missing)} upserted items, e.g. {missing[:3]}")
        rows = [pos[i] for i in upserted]
        index, method = current.upsert(list(upserted), vectors[rows], delete=deleted), "upsert"
        index.set_search(nprobe=cfg.nprobe, ef_search=cfg.ef_search)
        if set(index.ids) != set(ids):
            raise RuntimeError(f"upserting {parent} does not give the items of run {run}: not published")
    else:
        index, method = _build(ids, vectors, cfg), "rebuild"
    seconds = round(time.perf_counter() - started, 3)
    return _publish(store, index, run, run_manifest, ids, vectors, cfg, {
        "method": method, "seconds": seconds, "parent": parent,
        "upserted": len(upserted), "deleted": len(deleted),
    })


# -- titles for people ---------------------------------------------------------------------
def item_titles(store: Store, source: dict | str, ids: list[str]) -> dict[str, str]:
    """Titles of `ids` from the catalog a manifest names (a run's or an index version's manifest,
    or an index version name); ids missing from the catalog are left out."""
    manifest = version_manifest(store, source) if isinstance(source, str) else source
    catalog = manifest.get("catalog")
    if not catalog:
        raise StorageError("the manifest names no catalog, so there are no titles to show")
    try:
        table = pq.read_table(store.path(catalog), filesystem=store.fs, columns=["item_id", "title"],
                              filters=pc.field("item_id").isin(list(ids)))
    except (OSError, pa.ArrowInvalid) as e:
        raise StorageError(f"cannot read titles from {store.full_uri(catalog)}: {e}") from None
    return dict(zip(table.column("item_id").to_pylist(), table.column("title").to_pylist()))


def similar_items(store: Store, item_id: str, k: int, version: str | None = None) -> list[Neighbour]:
    """The k nearest items of `item_id` with titles: what `guidedrec query --item` prints."""
    version = version or current_version(store)
    found, scores = load_index(store, version).search_items([item_id], k)
    titles = item_titles(store, version, found[0])
    return [Neighbour(i, float(s), titles.get(i)) for i, s in zip(found[0], scores[0])]
