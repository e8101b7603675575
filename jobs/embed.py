"""Embedding job: catalog items -> LLM mean-pooled embeddings, as a committed Parquet run (with
--attributes, the GER attribute scores too; with --attributes --users, each user's profile scores).

    python -m jobs.embed --config ray_config.yaml
    ray job submit --working-dir . -- python -m jobs.embed --config cluster.yaml   # README: "On a cluster"
"""
from __future__ import annotations

from pathlib import Path

import typer

from cluster import Config, Store, store_from_config
from cluster.layout import run_dir, run_name, users_run
from jobs.runner import DATASET_HELP, VERBOSE, Interrupted, job_config
from llm.adapters import parse_adapters
from llm.embed import embed_catalog, embed_users


def run_embed(cfg: Config, store: Store | None = None, overwrite: bool = False,
              adapters: dict[str, str] | None = None, resume: bool = False, attributes: bool = False,
              users: bool = False) -> dict:
    """Embed the configured catalog, or score its users' profiles (skipped when the run is committed);
    returns the run's manifest. Ctrl-C raises Interrupted, saying which part files are kept and that
    --resume embeds only the rest."""
    store = store or store_from_config(cfg)
    try:
        if users:
            summary, embedded = embed_users(cfg, store, overwrite, adapters, resume)
        else:
            summary, embedded = embed_catalog(cfg, store, overwrite, adapters, resume, attributes)
    except KeyboardInterrupt:
        run = run_name(cfg, adapters, attributes or users)
        rel = run_dir(users_run(run) if users else run)
        parts = sum(name.endswith(".parquet") for name in store.list(rel))
        raise Interrupted(f"embeddings run {store.full_uri(rel)} not committed; its {parts} finished part files "
                          "are kept: run `guidedrec embed --resume` with the same options to embed only the rest "
                          "(without --resume they are deleted)") from None
    if not embedded:
        print(f"embeddings run {summary['uri']} is already committed: nothing to do", flush=True)
        return summary
    if users:
        print(f"embed: {summary['rows']} user profiles, {sum(summary['attributes']['unscored'].values())} without "
              f"scores, {summary['seconds']} s -> {summary['uri']}", flush=True)
        return summary
    print(f"embed: {summary['rows']} rows ({summary['embedded']} embedded now), {summary['quarantined']} quarantined, "
          f"{summary['truncated']} truncated, {summary['seconds']} s ({summary['startup_s']} s start-up, "
          f"steady {summary['steady_items_s']} items/s) -> {summary['uri']}", flush=True)
    return summary


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help=DATASET_HELP),
         adapter: list[str] = typer.Option(None, help="LoRA adapter as name=path (repeatable); rows record it"),
         resume: bool = typer.Option(False, help="Keep the part files of an interrupted run and embed only the rest; "
                                     "of a committed run, re-embed only its missing or changed parts"),
         attributes: bool = typer.Option(False, help="Also score the GER attributes (embed.attributes or the domain's list)"),
         users: bool = typer.Option(False, help="With --attributes: score user profiles, not items"),
         overwrite: bool = typer.Option(False, help="Re-embed even if the run is committed"),
         verbose: bool = VERBOSE) -> None:
    """Embed every catalog item with the configured LLM and commit the run to storage."""
    cfg = job_config(config, verbose, {"dataset.name": dataset} if dataset else None)
    if users and not attributes:
        raise typer.BadParameter("user profiles are attribute scores: add --attributes", param_hint="--users")
    run_embed(cfg, overwrite=overwrite, adapters=parse_adapters(adapter), resume=resume, attributes=attributes,
              users=users)


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
