"""Incremental update vs full build of one catalog, measured in the same run.

    python benchmarks/incremental.py [--quick]

The catalog is the synthetic one (catalog/synthetic.py) with 100k items (--quick: 10k),
published by the ingest job. Embedding 100k items with the real model is out of reach here
(a few items/s on 2 shared cores), so the base run's vectors are stand-ins: clustered 576-d
vectors written as a committed run in the run contract (an update never reads their values,
it copies them). Then 1% of the items get a new description, and:

- update_s is `run_update` end to end, timed: read + hash + diff of the whole catalog,
  embed_items on the changed rows with the real model (Ray and model start-up included), the
  byte copy of the unchanged rows, commit, index upsert with its recall check, CURRENT.
- full_s is what a full build costs: catalog size / the real model's items/s measured here on
  a sample (the job's own BlockEmbedder in this process on 256 catalog items, --quick: 128;
  model load and a warm-up block left out, so the estimate is low, never high), plus the index
  build of the whole base run as measured here (build_from_run: read, build, recall@10, save).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

DIMS = 576   # SmolLM2's hidden size: the stand-ins share the index with the model's real vectors


def write_stand_in_run(cfg, store, catalog_rel: str) -> str:
    """The base run: the catalog's ids and hashes with clustered stand-in vectors, in block-sized parts."""
    import pyarrow as pa

    from cluster.layout import run_name
    from llm.embed import commit_run
    from llm.stages import embedding_schema, part_name

    started = time.time()
    items = store.read_parquet(catalog_rel, columns=["item_id", "content_hash"])
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(items.num_rows // 1000, 1), DIMS), dtype=np.float32)
    run = run_name(cfg)
    for block, start in enumerate(range(0, items.num_rows, cfg.embed.block_size)):
        part = items.slice(start, cfg.embed.block_size)
        x = centres[rng.integers(0, len(centres), part.num_rows)]
        x += 0.3 * rng.standard_normal(x.shape, dtype=np.float32)
        n = part.num_rows
        store.write_parquet(f"embeddings/{run}/{part_name(block, None)}", pa.Table.from_arrays(
            [part["item_id"], part["content_hash"], pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIMS),
             pa.array([False] * n), pa.array([cfg.model.path] * n), pa.array([None] * n, pa.string())],
            schema=embedding_schema(DIMS)))
    commit_run(cfg, store, run, catalog_rel=catalog_rel, expected_rows=items.num_rows, started=started,
               extra={"stand_in": "clustered synthetic vectors, not the model's (benchmarks/incremental.py)"})
    return run


def embedding_rate(cfg, store, catalog_rel: str, domain: str, sample: int) -> float:
    """Steady items/s of the embedding job's block embedder on `sample` catalog items, in blocks of
    one batch (their part files written, as in the job); the model load and the first (warm-up) block
    are not timed."""
    from llm.stages import BlockEmbedder

    batch = cfg.embed.batch_size
    store.write_parquet("bench/sample.parquet", store.read_parquet(catalog_rel).slice(0, sample + batch),
                        row_group_size=batch)
    embedder = BlockEmbedder(model_cfg=cfg.model, threads=cfg.embed.threads_per_actor, store=store,
                             items_rel="bench/sample.parquet", out_rel="bench/out", domain=domain,
                             batch_size=batch, adapters={})
    embedder({"block": np.array([0]), "adapter": np.array([""])})
    t = time.perf_counter()
    done = embedder({"block": np.arange(1, sample // batch + 1), "adapter": np.array([""] * (sample // batch))})
    return done["rows"].sum() / (time.perf_counter() - t)


def changed_catalog(store, catalog_rel: str, frac: float, path: Path) -> int:
    """Write the catalog with `frac` of the items' descriptions changed to `path`; returns how many."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = store.read_parquet(catalog_rel).drop_columns(["content_hash"])
    count = round(items.num_rows * frac)
    rows = set(np.random.default_rng(1).choice(items.num_rows, count, replace=False).tolist())
    text = items["description"].to_pylist()
    text = [f"{t} Now in a new colour." if i in rows else t for i, t in enumerate(text)]
    pq.write_table(items.set_column(items.schema.get_field_index("description"), "description",
                                    pa.array(text, pa.string())), path)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k items instead of 100k")
    parser.add_argument("--frac", type=float, default=0.01, help="share of items whose text changes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="guidedrec-incremental-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work)


def measure(args: argparse.Namespace, work: Path) -> None:
    from catalog.publish import publish_catalog
    from cluster import Store, load_config
    from index import build_from_run
    from index.update import update_catalog

    n = 10_000 if args.quick else 100_000
    cfg = load_config(None, {"storage.uri": str(work / "store"), "dataset.name": "synthetic",
                             "dataset.synthetic_items": n, "dataset.synthetic_users": 2000})
    store = Store(cfg.storage.uri)
    cat_dir, _ = publish_catalog(cfg, store)
    catalog_rel = f"{cat_dir}/items.parquet"
    run = write_stand_in_run(cfg, store, catalog_rel)

    t = time.perf_counter()
    build_from_run(store, run, cfg.index)
    index_s = time.perf_counter() - t
    sample = 128 if args.quick else 256
    rate = embedding_rate(cfg, store, catalog_rel, store.manifest(cat_dir)["domain"], sample)
    changed = changed_catalog(store, catalog_rel, args.frac, work / "new_items.parquet")

    t = time.perf_counter()
    summary = update_catalog(cfg, store, work / "new_items.parquet")
    update_s = time.perf_counter() - t
    full_s = n / rate + index_s

    print(f"\ncatalog {n} items, {changed} changed ({args.frac:.0%}), index {cfg.index.factory} {cfg.index.metric}")
    print(f"update: {update_s:.1f} s end to end ({summary['method']}; {summary['counts']})")
    print(f"full build: {n} / {rate:.2f} items/s (sample of {sample}) = {n / rate:.0f} s embedding "
          f"+ {index_s:.1f} s index build = {full_s:.0f} s")
    print(f"incremental: changed_frac={args.frac} update_s={update_s:.1f} full_s={full_s:.0f} "
          f"ratio={update_s / full_s:.4f}")


if __name__ == "__main__":
    main()
