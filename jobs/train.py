"""Train the sequential recommender with Ray Train over each configured embedding source.

    python -m jobs.train --config ray_config.yaml

Trains `srs.model` once per source (id, llmemb, ...) on the published catalog and the live
embeddings run, evaluates on each user's held-out last item, publishes each model for the
service and prints the metrics table beside a popularity baseline.
"""
from __future__ import annotations

from pathlib import Path

import typer

from cluster import Config, Store, store_from_config
from jobs.runner import DATASET_HELP, VERBOSE, job_config
from srs.catalog_training import train_catalog

REPORT_METRICS = ["HR@10", "NDCG@10", "MRR", "tail/HR@10"]


def run_train(cfg: Config, store: Store | None = None) -> dict[str, dict[str, float]]:
    """Metrics per source (plus 'popularity')."""
    out = train_catalog(cfg, store or store_from_config(cfg))
    print(f"train: {cfg.srs.model} over {out['items']} items (those of the {out['catalog_items']} catalog items "
          f"with interactions left after the {cfg.dataset.min_interactions}-core filter) -> {out['report']}", flush=True)
    return out["metrics"]


def format_table(results: dict[str, dict[str, float]]) -> str:
    head = "| source | " + " | ".join(REPORT_METRICS) + " |"
    rows = [head, "|" + "---|" * (len(REPORT_METRICS) + 1)]
    for source, m in results.items():
        rows.append(f"| {source} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in REPORT_METRICS) + " |")
    return "\n".join(rows)


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help=DATASET_HELP),
         verbose: bool = VERBOSE) -> None:
    """Train the sequential recommender per embedding source and print HR@10 / NDCG@10 / MRR / tail HR@10."""
    cfg = job_config(config, verbose, {"dataset.name": dataset} if dataset else None)
    print(format_table(run_train(cfg)), flush=True)


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
