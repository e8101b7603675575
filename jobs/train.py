"""Train the sequential recommender with Ray Train over each configured embedding source.

    python -m jobs.train --config ray_config.yaml

Reads the published catalog and the committed embeddings run from storage (ger: the run embedded
with --attributes), trains SASRec once per source (id, llmemb, ...), evaluates on the held-out
last item with full ranking, and writes the table to reports/<run>/metrics.json beside a
popularity baseline.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import pyarrow as pa
import typer

from catalog import user_sequences
from cluster import Config, Store, init_ray, load_config, store_from_config
from jobs.ingest import catalog_dir
from jobs.runner import VERBOSE
from llm.runs import aligned_attributes, aligned_vectors, run_name
from srs import popularity_metrics, train_srs
from srs.fusion import required_inputs

REPORT_METRICS = ["HR@10", "NDCG@10", "MRR", "tail/HR@10"]


def run_train(cfg: Config, store: Store | None = None) -> dict[str, dict[str, float]]:
    """Metrics per source (plus 'popularity'), also written to reports/<run>/metrics.json."""
    store = store or store_from_config(cfg)
    init_ray(cfg.ray)
    cat_dir = catalog_dir(cfg)
    interactions = store.read_parquet(f"{cat_dir}/interactions.parquet")
    sequences = user_sequences(interactions)
    # Rank over the k-core's items (the literature's protocol), not every embedded catalog item.
    seen = set(interactions["item_id"].to_pylist())
    item_ids = [i for i in store.read_parquet(f"{cat_dir}/items.parquet")["item_id"].to_pylist() if i in seen]
    run = run_name(cfg)
    results: dict[str, dict[str, float]] = {"popularity": popularity_metrics(sequences)}
    id_items = None  # the ID model's item table: LLMEmb's alignment target, so it is not trained twice
    for source in sorted(cfg.srs.sources, key=lambda s: s != "id"):
        needs = required_inputs(source, cfg.srs)
        vectors = aligned_vectors(store, run, item_ids) if "llm" in needs else None
        scores = aligned_attributes(store, run_name(cfg, attributes=True), item_ids) if "attributes" in needs else None
        result = train_srs(sequences, item_ids, cfg.srs, source, item_embeddings=vectors, attribute_scores=scores,
                           id_item_embeddings=id_items if source != "id" else None,
                           storage_path=store.path(f"ray-train/{run}"), storage_filesystem=store.fs)
        if source == "id":
            id_items = result.item_table
        publish_model(store, model_dir(run, source), result, item_ids)
        results[source] = {**result.test, "epochs": result.epochs, "seconds": round(result.seconds, 1)}
    store.write_json(report_file(run), results)
    return results


def model_dir(run: str, source: str) -> str:
    return f"models/{run}/{source}"


def report_file(run: str) -> str:
    return f"reports/{run}/metrics.json"


def wants_attributes(cfg: Config) -> bool:
    """Whether a configured source reads GER attribute scores (from the run embedded with --attributes)."""
    return any("attributes" in required_inputs(source, cfg.srs) for source in cfg.srs.sources)


def publish_model(store: Store, rel: str, result, item_ids: list[str]) -> str:
    """Copy the best checkpoint to a new version folder under `rel`, then point `rel`'s manifest
    at it: a service loading meanwhile reads the previous version whole, never a mix of two. Keeps
    the previous version (it may be loading right now) and removes older ones. Returns the version."""
    previous = store.manifest(rel).get("version") if store.is_committed(rel) else None
    version = f"v{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    for name in ("model.safetensors", "srs.json"):
        with store.fs.open_input_stream(f"{result.checkpoint}/{name}") as f:
            store.write_bytes(f"{rel}/{version}/{name}", f.read())
    store.write_parquet(f"{rel}/{version}/items.parquet", pa.table({"item_id": pa.array(item_ids, pa.string())}))
    store.commit(rel, {"version": version, "test": result.test, "valid": result.valid, "best_epoch": result.best_epoch,
                       "items": len(item_ids), "files": ["model.safetensors", "srs.json", "items.parquet"]})
    for name in store.list(rel):
        if name.startswith("v") and name not in (version, previous):
            store.delete_dir(f"{rel}/{name}")
    return version


def format_table(results: dict[str, dict[str, float]]) -> str:
    head = "| source | " + " | ".join(REPORT_METRICS) + " |"
    rows = [head, "|" + "---|" * (len(REPORT_METRICS) + 1)]
    for source, m in results.items():
        rows.append(f"| {source} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in REPORT_METRICS) + " |")
    return "\n".join(rows)


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help="Override dataset.name"),
         verbose: bool = VERBOSE) -> None:
    """Train the sequential recommender per embedding source and print HR@10 / NDCG@10 / MRR / tail HR@10."""
    cfg = load_config(config, {"dataset.name": dataset} if dataset else None)
    cfg.ray.verbose |= verbose
    print(format_table(run_train(cfg)), flush=True)


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
