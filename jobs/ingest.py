"""Ingest: load a catalog, publish items / interactions / quarantine to storage, commit."""
from __future__ import annotations

from pathlib import Path

import typer

from catalog import Catalog
from catalog.publish import publish_catalog
from cluster import Config, Store, store_from_config
from jobs.runner import DATASET_HELP, VERBOSE, job_config


def run_ingest(cfg: Config, store: Store) -> tuple[str, Catalog]:
    rel, cat = publish_catalog(cfg, store)
    print(f"catalog {cat.name}: {cat.items.num_rows} items, {cat.interactions.num_rows} interactions, "
          f"{cat.quarantine.num_rows} quarantined -> {store.full_uri(rel)}", flush=True)
    return rel, cat


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help=DATASET_HELP),
         verbose: bool = VERBOSE) -> None:
    """Load and validate the catalog and publish it to storage."""
    cfg = job_config(config, verbose, {"dataset.name": dataset} if dataset else None)
    run_ingest(cfg, store_from_config(cfg))


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
