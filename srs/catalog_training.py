"""Train one SRS per configured embedding source on the published catalog, publish each model and
write the metrics table: what `guidedrec train` does.

Training follows the live embeddings run (after `guidedrec update`, the updated one): its items
that have interactions are ranked, the literature's protocol (the k-core's items, not every
embedded catalog item); interactions with items the update deleted are dropped.
"""
from __future__ import annotations

import pyarrow.compute as pc

from catalog import ranked_items, user_sequences
from cluster.config import Config
from cluster.layout import (catalog_file, catalog_name, live_catalog_file, live_run, report_file, run_name,
                            train_runs_dir)
from cluster.runtime import init_ray
from cluster.storage import Store
from llm.runs import aligned_attributes, aligned_vectors
from srs.fusion import required_inputs
from srs.metrics import popularity_metrics
from srs.published import publish_model
from srs.runners import train


def wants_attributes(cfg: Config) -> bool:
    """Whether a configured source reads GER attribute scores (from the run embedded with --attributes)."""
    return any("attributes" in required_inputs(source, cfg.srs) for source in cfg.srs.sources)


def train_catalog(cfg: Config, store: Store) -> dict:
    """Metrics per source (plus 'popularity'), also written to reports/<lineage>/metrics.json, and
    `items` / `catalog_items`: how many items were ranked, of how many in the live catalog."""
    init_ray(cfg.ray)
    run = live_run(cfg, store)
    catalog_items = store.read_parquet(live_catalog_file(cfg, store), columns=["item_id"])["item_id"]
    interactions = store.read_parquet(catalog_file(catalog_name(cfg), "interactions"))
    interactions = interactions.filter(pc.is_in(interactions["item_id"], value_set=catalog_items))
    sequences = user_sequences(interactions)
    item_ids = ranked_items(catalog_items.to_pylist(), interactions)
    results: dict[str, dict[str, float]] = {"popularity": popularity_metrics(sequences)}
    id_items = None  # the ID model's item table: LLMEmb's alignment target, so it is not trained twice
    for source in sorted(cfg.srs.sources, key=lambda s: s != "id"):
        needs = required_inputs(source, cfg.srs)
        vectors = aligned_vectors(store, run, item_ids) if "llm" in needs else None
        scores = aligned_attributes(store, run_name(cfg, attributes=True), item_ids) if "attributes" in needs else None
        result = train(sequences, item_ids, cfg.srs, source, runner="ray", item_embeddings=vectors,
                       attribute_scores=scores, id_item_embeddings=id_items if source != "id" else None,
                       storage_path=store.path(train_runs_dir(run)), storage_filesystem=store.fs)
        if source == "id":
            id_items = result.item_table
        publish_model(store, run, source, result, item_ids)
        results[source] = {**result.test, "epochs": result.epochs, "seconds": round(result.seconds, 1)}
    store.write_json(report_file(run), results)
    return {"metrics": results, "run": run, "items": len(item_ids), "catalog_items": len(catalog_items),
            "report": store.full_uri(report_file(run))}
