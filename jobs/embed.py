"""Embedding job: catalog items -> LLM mean-pooled embeddings, as a committed Parquet run.

    python -m jobs.embed --config ray_config.yaml
    ray job submit --working-dir . -- python -m jobs.embed --config ray_config.yaml

Ray Data reads the published catalog, a pool of actors (one engine each) embeds batches, the
part files are written under embeddings/<run>/, and the run is committed by its manifest.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import typer

from cluster import Config, Store, init_ray, load_config, store_from_config
from cluster.runtime import node_cpus
from jobs.ingest import catalog_dir, publish_catalog
from llm.engines import pick_engine
from llm.stages import EmbedStage, PromptStage


def run_name(cfg: Config) -> str:
    return cfg.embed.run or f"{Path(cfg.dataset.name).name}-{Path(cfg.model.path).name}-base"


def _actor_resources(cfg: Config) -> dict:
    """CPUs per actor, capped so read/write tasks always keep a CPU (a full pool deadlocks Ray Data)."""
    if cfg.embed.gpus_per_actor > 0:
        return {"num_gpus": cfg.embed.gpus_per_actor, "num_cpus": min(cfg.embed.cpus_per_actor, 1.0)}
    free = max(node_cpus() - 1.0, 0.5)
    return {"num_cpus": min(cfg.embed.cpus_per_actor, free / cfg.embed.actors)}


def run_embed(cfg: Config, store: Store | None = None, overwrite: bool = False) -> dict:
    """Embed the configured catalog; returns the summary (also printed). Skips a committed run."""
    store = store or store_from_config(cfg)
    run = run_name(cfg)
    out = f"embeddings/{run}"
    if store.is_committed(out) and not overwrite:
        print(f"embeddings run {store.full_uri(out)} is already committed: nothing to do", flush=True)
        return store.manifest(out)
    init_ray(cfg.ray)
    started = time.time()
    cat_dir = catalog_dir(cfg)
    if not store.is_committed(cat_dir):
        publish_catalog(cfg, store)
    cat_manifest = store.manifest(cat_dir)
    store.delete_dir(out)  # leftovers of an uncommitted attempt

    import ray

    ds = ray.data.read_parquet(store.path(f"{cat_dir}/items.parquet"), filesystem=store.fs)
    ds = ds.map_batches(PromptStage(cat_manifest["domain"]), batch_format="pyarrow", batch_size=cfg.embed.batch_size)
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={"model_cfg": cfg.model, "threads": cfg.embed.threads_per_actor,
                               "model_id": cfg.model.path},
        compute=ray.data.ActorPoolStrategy(size=cfg.embed.actors),
        batch_size=cfg.embed.batch_size,
        batch_format="pyarrow",
        **_actor_resources(cfg),
    )
    ds.write_parquet(store.path(out), filesystem=store.fs)

    parts = [n for n in store.list(out) if n.endswith(".parquet")]
    table = store.read_parquet(out)
    dims = table.schema.field("embedding").type.list_size
    seconds = time.time() - started
    summary = {
        "run": run, "uri": store.full_uri(out), "catalog": f"{cat_dir}/items.parquet", "catalog_dir": cat_dir,
        "model": cfg.model.path, "engine": pick_engine(cfg.model), "adapter": None, "parent": None,
        "rows": table.num_rows, "dims": dims, "truncated": int(sum(table["truncated"].to_pylist())),
        "quarantined": cat_manifest["quarantined"], "seconds": round(seconds, 2),
        "items_per_s": round(table.num_rows / seconds, 2), "schema": str(table.schema),
        "parts": {n: hashlib.sha256(store.read_bytes(f"{out}/{n}")).hexdigest() for n in parts},
    }
    if table.num_rows != cat_manifest["items"]:
        raise RuntimeError(f"embedding run {run} has {table.num_rows} rows for {cat_manifest['items']} items: not committed")
    store.commit(out, summary)
    print(f"embed: {summary['rows']} items ({summary['quarantined']} quarantined, {summary['truncated']} truncated) "
          f"in {summary['seconds']} s = {summary['items_per_s']} items/s -> {summary['uri']}", flush=True)
    return summary


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help="Override dataset.name"),
         overwrite: bool = typer.Option(False, help="Re-embed even if the run is committed")) -> None:
    """Embed every catalog item with the configured LLM and commit the run to storage."""
    cfg = load_config(config, {"dataset.name": dataset} if dataset else None)
    run_embed(cfg, overwrite=overwrite)


if __name__ == "__main__":
    typer.run(main)
