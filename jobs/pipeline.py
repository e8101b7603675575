"""The main job: ingest -> embed -> index -> train -> report -> example queries.

    guidedrec pipeline --config ray_config.yaml
    ray job submit --working-dir . -- python -m jobs.pipeline --config ray_config.yaml
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import typer

from cluster import Config, init_ray, load_config, store_from_config
from jobs.embed import run_embed
from jobs.index import run_index
from index import similar_items
from jobs.ingest import run_ingest
from jobs.query import format_neighbours
from jobs.runner import DATASET_HELP
from jobs.train import run_train
from srs.catalog_training import wants_attributes


def run_pipeline(cfg: Config, examples: int = 3) -> dict:
    started = time.time()
    store = store_from_config(cfg)
    init_ray(cfg.ray)
    stage = _stages(5)
    stage("ingest")
    _, cat = run_ingest(cfg, store)
    stage("embed")
    summary = run_embed(cfg, store)
    if wants_attributes(cfg):  # the ger source reads attribute scores from a run of their own
        run_embed(cfg, store, attributes=True)
    stage("index")
    run_index(cfg, store)
    stage("train")
    results = run_train(cfg, store)
    stage("query")
    titles = dict(zip(cat.items["item_id"].to_pylist(), cat.items["title"].to_pylist()))
    popular = [item for item, _ in Counter(cat.interactions["item_id"].to_pylist()).most_common(examples)]
    for item in popular:
        print(format_neighbours(item, similar_items(store, item, k=5), titles.get(item)), flush=True)
    seconds = time.time() - started
    print(f"pipeline finished in {seconds:.0f} s; outputs under {store.full_uri()}", flush=True)
    return {"embed": summary, "metrics": results, "seconds": seconds}


def _stages(total: int):
    count = iter(range(1, total + 1))

    def stage(name: str) -> None:
        print(f"\n== [{next(count)}/{total}] {name}", flush=True)

    return stage


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help=DATASET_HELP)) -> None:
    """Run the whole pipeline on the configured catalog."""
    cfg = load_config(config, {"dataset.name": dataset} if dataset else None)
    run_pipeline(cfg)


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
