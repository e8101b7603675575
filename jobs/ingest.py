"""Ingest: load a catalog, publish items / interactions / quarantine to storage, commit."""
from __future__ import annotations

from pathlib import Path

import typer

from catalog import Catalog, load_catalog
from cluster import Config, Store, load_config, store_from_config
from jobs.runner import VERBOSE


def catalog_dir(cfg: Config) -> str:
    return f"catalog/{Path(cfg.dataset.name).name}"


def publish_catalog(cfg: Config, store: Store) -> tuple[str, Catalog]:
    """Write the loaded catalog under catalog/<name>/ and commit it; returns the directory."""
    cat = load_catalog(cfg.dataset)
    rel = catalog_dir(cfg)
    # Row groups are the embedding job's input blocks (its unit of work and of resume).
    store.write_parquet(f"{rel}/items.parquet", cat.items, row_group_size=cfg.embed.block_size)
    store.write_parquet(f"{rel}/interactions.parquet", cat.interactions)
    store.write_parquet(f"{rel}/quarantine.parquet", cat.quarantine)
    store.commit(rel, {
        "name": cat.name, "domain": cat.domain, "items": cat.items.num_rows,
        "interactions": cat.interactions.num_rows, "users": len(set(cat.interactions["user_id"].to_pylist())),
        "quarantined": cat.quarantine.num_rows, "dropped_interactions": cat.dropped_interactions,
    })
    print(f"catalog {cat.name}: {cat.items.num_rows} items, {cat.interactions.num_rows} interactions, "
          f"{cat.quarantine.num_rows} quarantined -> {store.full_uri(rel)}", flush=True)
    return rel, cat


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help="Override dataset.name"),
         verbose: bool = VERBOSE) -> None:
    """Load and validate the catalog and publish it to storage."""
    cfg = load_config(config, {"dataset.name": dataset} if dataset else None)
    cfg.ray.verbose |= verbose
    publish_catalog(cfg, store_from_config(cfg))


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
