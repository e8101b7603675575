"""Read a committed embeddings run back: ids and a float32 matrix, in the run's row order."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.storage import Store


def read_run(store: Store, run: str) -> tuple[list[str], np.ndarray, dict]:
    """(item ids, [n, d] vectors, manifest) of embeddings/<run>; refuses an uncommitted or malformed run."""
    rel = f"embeddings/{run}"
    manifest = store.manifest(rel)  # StorageError unless committed
    table = store.read_parquet(rel, columns=["item_id", "embedding"])
    where = store.full_uri(rel)
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


def aligned_vectors(store: Store, run: str, item_ids: list[str]) -> np.ndarray:
    """Rows of the run reordered to `item_ids`; an item missing from the run is an error."""
    ids, vectors, _ = read_run(store, run)
    pos = {item: i for i, item in enumerate(ids)}
    missing = [i for i in item_ids if i not in pos]
    if missing:
        raise KeyError(f"embeddings run {run} lacks {len(missing)} catalog items, e.g. {missing[:3]}")
    return vectors[[pos[i] for i in item_ids]]
