"""What the SRS state of a catalog user holds, in words (index.describe): the RecInterpreter adapter
reads it into the frozen LLM, and the catalog items the generated text names are listed.

    guidedrec describe --user 196 --dataset ml-100k
"""
from __future__ import annotations

from pathlib import Path

import typer

from cluster import Store, store_from_config
from index.describe import Description, describe_catalog_user
from jobs.runner import DATASET_HELP, VERBOSE, job_config


def format_description(d: Description) -> str:
    lines = [f"{d.task}: {d.text}", "names:" if d.items else "names no catalog item"]
    lines += [f"  {i.item_id}  {i.title}" + ("" if i.similarity == 1 else f"  (nearest to {i.named!r}, "
                                                                           f"similarity {i.similarity:.2f})")
              for i in d.items]
    return "\n".join(lines)


def main(user: str = typer.Option(..., help="A user id of the catalog's interactions"),
         adapter: str = typer.Option(None, help="Interpreter directory (local path or s3://): default the one "
                                     "`guidedrec interpret` writes for this data set"),
         config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help=DATASET_HELP),
         verbose: bool = VERBOSE) -> None:
    """Print the LLM's words for USER's SRS state and the catalog items they name (needs `guidedrec interpret`)."""
    cfg = job_config(config, verbose, {"dataset.name": dataset} if dataset else None)
    where = Store(adapter, cfg.storage.s3) if adapter else None
    print(format_description(describe_catalog_user(cfg, store_from_config(cfg), user, where)))


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
