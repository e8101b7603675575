"""Embedding job: catalog items -> LLM mean-pooled embeddings, as a committed Parquet run.

    python -m jobs.embed --config ray_config.yaml
    ray job submit --working-dir . -- python -m jobs.embed --config ray_config.yaml

Ray Data reads the published catalog, a pool of actors (one engine each) embeds batches, the
part files are written under embeddings/<run>/, and the run is committed by its manifest.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import typer

from cluster import Config, Store, init_ray, load_config, store_from_config
from cluster.runtime import node_cpus
from jobs.ingest import catalog_dir, publish_catalog
from jobs.runner import VERBOSE
from llm.engines import pick_engine
from llm.adapters import check_adapter
from llm.attributes import attributes_for, raw_scores
from llm.runs import run_name
from llm.stages import BlockEmbedder, count_blocks, part_name


def _actor_resources(cfg: Config) -> dict:
    """CPUs per actor, capped so the driver's own tasks always keep a CPU (a full pool deadlocks Ray Data)."""
    if cfg.embed.gpus_per_actor > 0:
        return {"num_gpus": cfg.embed.gpus_per_actor, "num_cpus": min(cfg.embed.cpus_per_actor, 1.0)}
    free = max(node_cpus() - 1.0, 0.5)
    return {"num_cpus": min(cfg.embed.cpus_per_actor, free / cfg.embed.actors)}


def parse_adapters(specs: list[str] | None) -> dict[str, str]:
    """`name=path` pairs (or a bare path, named after its folder) -> {name: path}, checked before any work."""
    adapters: dict[str, str] = {}
    for spec in specs or []:
        name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"adapter name {name!r} in {spec!r}: use letters, digits, '-' or '_'")
        if name in adapters:
            raise ValueError(f"adapter name {name!r} is given twice")
        adapters[name] = path
    return adapters


def embed_items(cfg: Config, store: Store, items_rel: str, out_rel: str, domain: str,
                adapters: dict[str, str] | None = None, resume: bool = False,
                attributes: list[str] | None = None) -> dict:
    """Embed every row of the items Parquet at `items_rel` (once per adapter, or with the base model)
    into part files under `out_rel`, one per input block; not committed. With `resume`, blocks
    whose part file exists are skipped, otherwise the directory starts empty.

    Returns timings: start-up (until the first block is done, less its compute) apart from the
    steady-state items/s measured between block completions."""
    import ray
    from tqdm import tqdm

    init_ray(cfg.ray)
    adapters = adapters or {}
    for name, path in adapters.items():
        check_adapter(path, cfg.model, name)
    if not resume:
        store.delete_dir(out_rel)
    done = set(store.list(out_rel))
    blocks = count_blocks(store, items_rel)
    names = sorted(adapters) or [""]
    tasks = [{"block": b, "adapter": a} for b in range(len(blocks)) for a in names
             if part_name(b, a or None) not in done]
    total = sum(blocks) * len(names)
    if not tasks:
        return {"embedded": 0, "startup_s": 0.0, "steady_items_s": None}
    started = time.perf_counter()
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    ds = ds.map_batches(
        BlockEmbedder,
        fn_constructor_kwargs={"model_cfg": cfg.model, "threads": cfg.embed.threads_per_actor, "store": store,
                               "items_rel": items_rel, "out_rel": out_rel, "domain": domain,
                               "batch_size": cfg.embed.batch_size, "adapters": adapters,
                               "attributes": attributes},
        compute=ray.data.ActorPoolStrategy(size=min(cfg.embed.actors, len(tasks))),
        batch_size=1,  # Ray Data replaces a dead actor and retries its block: parts are overwritten, never doubled
        **_actor_resources(cfg),
    )
    initial = total - sum(blocks[t["block"]] for t in tasks)
    arrivals, rows, first_compute = [], [], 0.0
    with tqdm(total=total, initial=initial, unit="item", desc="embed", mininterval=2, smoothing=0.1) as bar:
        for row in ds.iter_rows():
            arrivals.append(time.perf_counter())
            rows.append(int(row["rows"]))
            first_compute = first_compute or float(row["seconds"])
            bar.update(rows[-1])
    # From when the first block began computing to the last result: never shorter than one block's work,
    # so blocks finishing together cannot inflate the rate.
    compute_started = arrivals[0] - first_compute
    steady = sum(rows) / (arrivals[-1] - compute_started)
    return {"embedded": sum(rows), "startup_s": round(compute_started - started, 2),
            "steady_items_s": round(steady, 2)}


def commit_run(cfg: Config, store: Store, run: str, *, catalog_rel: str, expected_rows: int, started: float,
               parent: str | None = None, extra: dict | None = None) -> dict:
    """Check the run's part files hold each (item, adapter) exactly once, then write its manifest (the commit).

    `extra` adds caller fields; one that would replace a computed field (say `rows`) is refused, so a caller's
    per-pass figure can never pass for the run's."""
    extra = extra or {}
    out = f"embeddings/{run}"
    parts = [n for n in store.list(out) if n.endswith(".parquet")]
    table = store.read_parquet(out)
    keys = set(zip(table["item_id"].to_pylist(), table["adapter"].to_pylist()))
    if table.num_rows != expected_rows or len(keys) != expected_rows:
        raise RuntimeError(f"embeddings run {run} holds {table.num_rows} rows ({len(keys)} unique) "
                           f"for {expected_rows} expected: not committed")
    seconds = time.time() - started
    summary = {
        "run": run, "uri": store.full_uri(out), "catalog": catalog_rel, "model": cfg.model.path,
        "engine": pick_engine(cfg.model), "adapters": sorted({a for a in table["adapter"].to_pylist() if a}),
        "parent": parent, "rows": table.num_rows, "dims": table.schema.field("embedding").type.list_size,
        "truncated": int(sum(table["truncated"].to_pylist())), "seconds": round(seconds, 2),
        "items_per_s": round(table.num_rows / seconds, 2),
        "parts": {n: hashlib.sha256(store.read_bytes(f"{out}/{n}")).hexdigest() for n in parts},
    }
    if "attributes" in table.column_names:
        summary["attributes"] = _attribute_stats(table, extra["attribute_names"])
    if clash := sorted(summary.keys() & extra.keys()):
        raise ValueError(f"embeddings run {run}: extra manifest fields {clash} would replace computed ones: "
                         "not committed")
    summary |= extra
    store.commit(out, summary)
    return summary


def _attribute_stats(table, names: list[str]) -> dict:
    """Per-attribute mean/std over the run: a glance at whether the scorer discriminates at all."""
    raw = raw_scores(table["attributes"].to_pylist(), len(names))
    return {"names": names, "mean": raw.mean(0).tolist(), "std": raw.std(0).tolist()}


def run_embed(cfg: Config, store: Store | None = None, overwrite: bool = False,
              adapters: dict[str, str] | None = None, resume: bool = False, attributes: bool = False) -> dict:
    """Embed the configured catalog (and with `attributes`, score the GER attributes); returns the
    summary (also printed). Skips a committed run."""
    store = store or store_from_config(cfg)
    run = run_name(cfg, adapters, attributes)
    out = f"embeddings/{run}"
    if store.is_committed(out) and not overwrite:
        print(f"embeddings run {store.full_uri(out)} is already committed: nothing to do", flush=True)
        return store.manifest(out)
    started = time.time()
    cat_dir = catalog_dir(cfg)
    if not store.is_committed(cat_dir):
        publish_catalog(cfg, store)
    cat = store.manifest(cat_dir)
    names = attributes_for(cat["domain"], cfg.embed.attributes) if attributes else None
    timing = embed_items(cfg, store, f"{cat_dir}/items.parquet", out, cat["domain"], adapters,
                         resume=resume and not overwrite, attributes=names)
    summary = commit_run(cfg, store, run, catalog_rel=f"{cat_dir}/items.parquet",
                         expected_rows=cat["items"] * max(len(adapters or {}), 1), started=started,
                         extra={"quarantined": cat["quarantined"], "attribute_names": names, **timing})
    print(f"embed: {summary['rows']} rows ({summary['embedded']} embedded now), {summary['quarantined']} quarantined, "
          f"{summary['truncated']} truncated, {summary['seconds']} s ({summary['startup_s']} s start-up, "
          f"steady {summary['steady_items_s']} items/s) -> {summary['uri']}", flush=True)
    return summary


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help="Override dataset.name"),
         adapter: list[str] = typer.Option(None, help="LoRA adapter as name=path (repeatable); rows record it"),
         resume: bool = typer.Option(False, help="Keep the part files of an interrupted run; embed only the rest"),
         attributes: bool = typer.Option(False, help="Also score the GER attributes (embed.attributes or the domain's list)"),
         overwrite: bool = typer.Option(False, help="Re-embed even if the run is committed"),
         verbose: bool = VERBOSE) -> None:
    """Embed every catalog item with the configured LLM and commit the run to storage."""
    cfg = load_config(config, {"dataset.name": dataset} if dataset else None)
    cfg.ray.verbose |= verbose
    run_embed(cfg, overwrite=overwrite, adapters=parse_adapters(adapter), resume=resume, attributes=attributes)


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
