"""Build a FAISS index version from the committed embeddings run and make it CURRENT.

    python -m jobs.index --config ray_config.yaml
"""
from __future__ import annotations

from pathlib import Path

import typer

from cluster import Config, Store, load_config, store_from_config
from index import build_from_run
from jobs.embed import run_name


def run_index(cfg: Config, store: Store | None = None) -> str:
    store = store or store_from_config(cfg)
    version = build_from_run(store, run_name(cfg), cfg.index)
    print(f"index {version} ({cfg.index.factory}, {cfg.index.metric}) is CURRENT under {store.full_uri('index')}", flush=True)
    return version


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help="Override dataset.name")) -> None:
    """Build the nearest-item index over the embeddings run."""
    cfg = load_config(config, {"dataset.name": dataset} if dataset else None)
    run_index(cfg)


if __name__ == "__main__":
    typer.run(main)
