"""Incremental update: a new catalog -> a new embeddings run and index version, embedding only what changed.

    guidedrec update --catalog new_items.parquet --config ray_config.yaml      # the whole new catalog
    guidedrec update --catalog changes.jsonl --delta --delete gone.txt         # a change feed
    python -m jobs.update --catalog catalog_dir/ --config ray_config.yaml
    guidedrec update --repair <update run>                                    # mend one that lost or changed parts
"""
from __future__ import annotations

from pathlib import Path

import typer

from catalog.changes import read_deletions
from cluster import Config, Store, store_from_config
from index.update import repair_update_run, update_catalog
from jobs.runner import VERBOSE, job_config


def run_update(cfg: Config, catalog: Path | None, store: Store | None = None, delta: bool = False,
               deleted: list[str] = ()) -> dict:
    """Bring the live run and index up to `catalog`; returns the summary (also printed)."""
    summary = update_catalog(cfg, store or store_from_config(cfg), catalog, delta, deleted)
    counts = summary["counts"]
    if summary["method"] is None:
        print(f"update: the catalog matches run {summary['run']} ({counts['unchanged']} items): nothing to do",
              flush=True)
        return summary
    print(f"update {summary['parent']} -> {summary['run']}: {counts}\n"
          f"update: run {summary['run']} committed ({summary['manifest']['rows']} rows, {counts['embedded']} embedded, "
          f"{summary['manifest']['quarantined']} quarantined); index {summary['version']} ({summary['method']}) "
          f"is CURRENT; {summary['seconds']} s", flush=True)
    return summary


def run_repair(cfg: Config, run: str, store: Store | None = None) -> dict:
    """Mend update run `run` (index.update.repair_update_run); returns the summary (also printed)."""
    summary = repair_update_run(cfg, store or store_from_config(cfg), run)
    if summary["repaired"]:
        print(f"update: run {run} repaired ({len(summary['repaired'])} parts: {', '.join(summary['repaired'])}) "
              f"and committed again ({summary['manifest']['rows']} rows)", flush=True)
    else:
        print(f"update: run {run} is intact: nothing to repair", flush=True)
    return summary


def main(catalog: Path = typer.Option(None, help="The new catalog: an items file (.parquet/.csv/.jsonl) or a "
                                      "directory holding one; items missing from it are deleted (unless --delta)"),
         delta: bool = typer.Option(False, help="--catalog holds only new and changed items; the rest stay"),
         delete: Path = typer.Option(None, help="With --delta: a file of item ids to delete, one per line"),
         repair: str = typer.Option(None, help="Instead of updating: mend this committed update run, whose parts "
                                    "were lost or changed, from its stored catalogs and its parent"),
         config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         verbose: bool = VERBOSE) -> None:
    """Re-embed only new and changed items, copy the rest, and publish a new index version."""
    if delete is not None and not delta:
        raise ValueError("--delete needs --delta (without it, items missing from --catalog are deleted)")
    if repair and (catalog or delta):
        raise ValueError("--repair mends a committed run and takes no --catalog or --delta")
    cfg = job_config(config, verbose)
    if repair:
        run_repair(cfg, repair)
        return
    run_update(cfg, catalog, delta=delta, deleted=read_deletions(delete))


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
