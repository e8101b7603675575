"""Embeddings runs: their names, and reading a committed one back (ids and a float32 matrix, in the
run's row order); user profiles likewise (user ids, scores with NaN rows where there are none, and why)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.layout import read_committed_run, run_dir
from cluster.storage import Store
from llm.attributes import raw_scores


def _committed_rows(store: Store, run: str, adapter: str | None, columns: list[str]) -> tuple[pa.Table, dict, str]:
    """`columns` of embeddings/<run>, rows of one adapter (None: the run's only one); refuses an
    uncommitted run."""
    where = store.full_uri(run_dir(run))
    table, manifest = read_committed_run(store, run, [*columns, "adapter"])
    adapters = manifest.get("adapters") or []
    if adapter is None and len(adapters) > 1:
        raise ValueError(f"{where} holds adapters {adapters}: name one")
    if adapter is not None and adapter not in adapters:
        raise ValueError(f"{where} has no adapter {adapter!r} (it holds {adapters or 'the base model only'})")
    if adapters:
        table = table.filter(pc.equal(table["adapter"], adapter or adapters[0]))
    return table, manifest, where


def read_run(store: Store, run: str, adapter: str | None = None) -> tuple[list[str], np.ndarray, dict]:
    """(item ids, [n, d] vectors, manifest) of embeddings/<run>; refuses an uncommitted or malformed run."""
    table, manifest, where = _committed_rows(store, run, adapter, ["item_id", "embedding"])
    emb_type = table.schema.field("embedding").type
    if not pa.types.is_fixed_size_list(emb_type) or not pa.types.is_floating(emb_type.value_type):
        raise ValueError(f"{where}: embedding must be fixed_size_list<float>, got {emb_type}")
    if table.column("embedding").null_count or table.column("item_id").null_count:
        raise ValueError(f"{where}: null item_id or embedding rows")
    dims = emb_type.list_size
    if manifest.get("dims", dims) != dims:
        raise ValueError(f"{where}: manifest says {manifest['dims']} dims, Parquet holds {dims}")
    flat = pc.list_flatten(table.column("embedding")).to_numpy()
    vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, dims)
    return table.column("item_id").to_pylist(), vectors, manifest


def read_attributes(store: Store, run: str, adapter: str | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(item ids, [n, A] GER attribute scores (1-9 expected values), attribute names); refuses items
    without scores."""
    stats = store.manifest(run_dir(run)).get("attributes")
    if not stats:
        raise ValueError(f"{store.full_uri(run_dir(run))} has no attribute scores: embed with --attributes")
    table, _, where = _committed_rows(store, run, adapter, ["item_id", "attributes"])
    if table.column("attributes").null_count:
        raise ValueError(f"{where}: {table.column('attributes').null_count} items have no attribute scores")
    raw = raw_scores(table["attributes"].to_pylist(), len(stats["names"]))
    return table["item_id"].to_pylist(), raw, stats["names"]


def read_profiles(store: Store, run: str, adapter: str | None = None) -> tuple[list[str], np.ndarray, list, dict]:
    """(user ids, [n, A] raw 1-9 profile scores with NaN rows for the unscored users, each one's reason
    (None where scored), the manifest's attribute stats) of a committed user-profiles run."""
    table, manifest, _ = _committed_rows(store, run, adapter, ["user_id", "attributes", "reason"])
    stats = manifest["attributes"]
    rows = [r if r is not None else [np.nan] * len(stats["names"]) for r in table["attributes"].to_pylist()]
    return table["user_id"].to_pylist(), raw_scores(rows, len(stats["names"])), table["reason"].to_pylist(), stats


def aligned(ids: list[str], rows: np.ndarray, item_ids: list[str], run: str) -> np.ndarray:
    """`rows` (in `ids` order) reordered to `item_ids`; an item missing from the run is an error."""
    pos = {item: i for i, item in enumerate(ids)}
    missing = [i for i in item_ids if i not in pos]
    if missing:
        raise KeyError(f"embeddings run {run} lacks {len(missing)} catalog items, e.g. {missing[:3]}")
    return rows[[pos[i] for i in item_ids]]


def aligned_vectors(store: Store, run: str, item_ids: list[str]) -> np.ndarray:
    ids, vectors, _ = read_run(store, run)
    return aligned(ids, vectors, item_ids, run)


def aligned_attributes(store: Store, run: str, item_ids: list[str]) -> np.ndarray:
    ids, scores, _ = read_attributes(store, run)
    return aligned(ids, scores, item_ids, run)
