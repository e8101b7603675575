"""Publish a loaded catalog to storage: items, interactions and quarantine, committed together."""
from __future__ import annotations

from catalog.loaders import load_catalog
from catalog.schemas import Catalog
from cluster.config import Config
from cluster.layout import catalog_dir, catalog_file, catalog_name
from cluster.storage import Store


def publish_catalog(cfg: Config, store: Store) -> tuple[str, Catalog]:
    """Write the configured catalog under catalog/<name>/ and commit it; returns (directory, catalog)."""
    cat = load_catalog(cfg.dataset)
    name = catalog_name(cfg)
    # Row groups are the embedding job's input blocks (its unit of work and of resume).
    store.write_parquet(catalog_file(name, "items"), cat.items, row_group_size=cfg.embed.block_size)
    store.write_parquet(catalog_file(name, "interactions"), cat.interactions)
    store.write_parquet(catalog_file(name, "quarantine"), cat.quarantine)
    store.write_parquet(catalog_file(name, "dropped"), cat.dropped)
    rel = catalog_dir(name)
    store.commit(rel, {
        "name": cat.name, "domain": cat.domain, "items": cat.items.num_rows,
        "interactions": cat.interactions.num_rows, "users": len(set(cat.interactions["user_id"].to_pylist())),
        "quarantined": cat.quarantine.num_rows, "dropped_interactions": cat.dropped_interactions,
    })
    return rel, cat


def ensure_catalog(cfg: Config, store: Store) -> dict:
    """The manifest of the configured catalog, published first if it never was."""
    rel = catalog_dir(catalog_name(cfg))
    if not store.is_committed(rel):
        publish_catalog(cfg, store)
    return store.manifest(rel)
