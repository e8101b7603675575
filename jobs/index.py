"""Build a FAISS index version from the live embeddings run and make it CURRENT, or prune old versions.

    python -m jobs.index --config ray_config.yaml
    python -m jobs.index --config ray_config.yaml --prune --keep 3
"""
from __future__ import annotations

from pathlib import Path

import typer

from cluster import Config, Store, store_from_config
from cluster.layout import INDEX, live_run
from index import build_from_run, prune_versions, version_manifest
from jobs.runner import DATASET_HELP, VERBOSE, job_config


def run_index(cfg: Config, store: Store | None = None) -> str:
    store = store or store_from_config(cfg)
    version = build_from_run(store, live_run(cfg, store), cfg.index)
    recall = version_manifest(store, version)["recall_at_10"]
    print(f"index {version} ({cfg.index.factory}, {cfg.index.metric}, recall@10 {recall}) is CURRENT "
          f"under {store.full_uri(INDEX)}", flush=True)
    return version


def run_prune(cfg: Config, keep: int, store: Store | None = None) -> list[str]:
    removed = prune_versions(store or store_from_config(cfg), keep)
    print(f"pruned {len(removed)} index versions (kept the newest {keep} and CURRENT)"
          + "".join(f"\n  {v}" for v in removed), flush=True)
    return removed


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help=DATASET_HELP),
         prune: bool = typer.Option(False, help="Delete old index versions instead of building one"),
         keep: int = typer.Option(3, min=0, help="With --prune: how many of the newest versions to keep"),
         verbose: bool = VERBOSE) -> None:
    """Build the nearest-item index over the embeddings run (or, with --prune, delete old versions)."""
    cfg = job_config(config, verbose, {"dataset.name": dataset} if dataset else None)
    if prune:
        run_prune(cfg, keep)
    else:
        run_index(cfg)


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
