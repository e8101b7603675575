"""Nearest items of a catalog item, with titles, from the CURRENT index version.

    guidedrec query --item 50 -k 10 --config ray_config.yaml
"""
from __future__ import annotations

from pathlib import Path

import typer

from cluster import store_from_config
from index import Neighbour, similar_items
from jobs.runner import DATASET_HELP, VERBOSE, job_config


def format_neighbours(item_id: str, found: list[Neighbour], title: str | None = None) -> str:
    lines = [f"nearest to {item_id}" + (f" ({title})" if title else "") + ":"]
    lines += [f"  {n.score:7.4f}  {n.item_id:>12}  {n.title or ''}" for n in found]
    return "\n".join(lines)


def main(item: str = typer.Option(..., help="A catalog item id"),
         k: int = typer.Option(10, "-k", help="How many neighbours"),
         config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help=DATASET_HELP),
         verbose: bool = VERBOSE) -> None:
    """Print the k nearest items of ITEM with scores and titles."""
    cfg = job_config(config, verbose, {"dataset.name": dataset} if dataset else None)
    if k <= 0:
        raise typer.BadParameter("k must be at least 1", param_hint="-k")
    print(format_neighbours(item, similar_items(store_from_config(cfg), item, k)))


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
