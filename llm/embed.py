"""Embed a catalog into an embeddings run: Ray Data shards the input blocks over a pool of engine
actors (llm.stages), then the run is checked and committed by its manifest. User profiles (GER's
attribute scores of each user's profile prompt) are scored and committed the same way.

The part files are keyed by input block (and adapter), so a retried block overwrites its own part
and `resume` embeds only the blocks whose part is missing.
"""
from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager

import pyarrow.compute as pc

from catalog import profile_prompts
from catalog.publish import ensure_catalog
from cluster.config import Config
from cluster.layout import (catalog_file, catalog_name, damaged_parts, read_parts, run_dir, run_name,
                            repair_hint, users_run)
from cluster.runtime import init_ray, node_cpus
from cluster.storage import StorageError, Store
from llm.adapters import check_adapter
from llm.attributes import attributes_for, raw_scores
from llm.stages import BlockEmbedder, count_blocks, part_name


def _actor_resources(cfg: Config) -> dict:
    """CPUs per actor, capped so the driver's own tasks always keep a CPU (a full pool deadlocks Ray Data)."""
    if cfg.embed.gpus_per_actor > 0:
        return {"num_gpus": cfg.embed.gpus_per_actor, "num_cpus": min(cfg.embed.cpus_per_actor, 1.0)}
    free = max(node_cpus() - 1.0, 0.5)
    return {"num_cpus": min(cfg.embed.cpus_per_actor, free / cfg.embed.actors)}


@contextmanager
def _ctrl_c_remembered():
    """An Event set by Ctrl-C (which still raises KeyboardInterrupt): the block loop checks it too, so a
    KeyboardInterrupt caught inside Ray Data's iterator can never let the run commit after Ctrl-C."""
    pressed = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield pressed   # only the main thread gets signals
        return

    def handler(signum, frame):
        pressed.set()
        (previous if callable(previous) else signal.default_int_handler)(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def embed_items(cfg: Config, store: Store, items_rel: str, run: str, domain: str,
                adapters: dict[str, str] | None = None, resume: bool = False,
                attributes: list[str] | None = None, users: bool = False) -> dict:
    """Embed every row of the items Parquet at `items_rel` (once per adapter, or with the base model)
    into part files of embeddings run `run`, one per input block; not committed. With `resume`, blocks
    whose part file exists are skipped, otherwise the run's directory starts empty. With `users`, the
    rows are user profile prompts (catalog.profile_prompts), of which only the `attributes` are scored.

    Returns timings: start-up (until the first block is done, less its compute) apart from the
    steady-state items/s measured between block completions; how many blocks each Ray node embedded, and
    with which engine (the actors' choice: on a cluster the driver's node may have no GPU)."""
    import ray
    from tqdm import tqdm

    init_ray(cfg.ray)
    adapters = adapters or {}
    for name, path in adapters.items():
        check_adapter(path, cfg.model, name)
    out_rel = run_dir(run)
    if not resume:
        store.delete_dir(out_rel)
    done = set(store.list(out_rel))
    blocks = count_blocks(store, items_rel)
    names = sorted(adapters) or [""]
    tasks = [{"block": b, "adapter": a} for b in range(len(blocks)) for a in names
             if part_name(b, a or None) not in done]
    total = sum(blocks) * len(names)
    if not tasks:
        return {"embedded": 0, "startup_s": 0.0, "steady_items_s": None, "blocks_by_node": {}, "engine": None}
    started = time.perf_counter()
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    ds = ds.map_batches(
        BlockEmbedder,
        fn_constructor_kwargs={"model_cfg": cfg.model, "threads": cfg.embed.threads_per_actor, "store": store,
                               "items_rel": items_rel, "out_rel": out_rel, "domain": domain,
                               "batch_size": cfg.embed.batch_size, "adapters": adapters,
                               "attributes": attributes, "users": users},
        compute=ray.data.ActorPoolStrategy(size=min(cfg.embed.actors, len(tasks))),
        batch_size=1,  # Ray Data replaces a dead actor and retries its block: parts are overwritten, never doubled
        **_actor_resources(cfg),
    )
    initial = total - sum(blocks[t["block"]] for t in tasks)
    arrivals, rows, first_compute, nodes, engines = [], [], 0.0, Counter(), set()
    with (_ctrl_c_remembered() as pressed,
          tqdm(total=total, initial=initial, unit="item", desc="embed", mininterval=2, smoothing=0.1) as bar):
        for row in ds.iter_rows():
            if pressed.is_set():
                raise KeyboardInterrupt
            arrivals.append(time.perf_counter())
            rows.append(int(row["rows"]))
            first_compute = first_compute or float(row["seconds"])
            nodes[row["node"]] += 1
            engines.add(row["engine"])
            bar.update(rows[-1])
        if pressed.is_set():
            raise KeyboardInterrupt
    # From when the first block began computing to the last result: never shorter than one block's work,
    # so blocks finishing together cannot inflate the rate.
    compute_started = arrivals[0] - first_compute
    steady = sum(rows) / (arrivals[-1] - compute_started)
    return {"embedded": sum(rows), "startup_s": round(compute_started - started, 2),
            "steady_items_s": round(steady, 2), "blocks_by_node": dict(nodes), "engine": ",".join(sorted(engines))}


def commit_run(cfg: Config, store: Store, run: str, *, catalog_rel: str, expected_rows: int, started: float,
               parent: str | None = None, extra: dict | None = None) -> dict:
    """Check the run's part files hold each (item, adapter) exactly once (each (user, adapter) for user
    profiles), then write its manifest (the commit).

    `extra` adds caller fields; one that would replace a computed field (say `rows`) is refused, so a caller's
    per-pass figure can never pass for the run's."""
    extra = extra or {}
    table, parts = read_parts(store, run)
    key = "item_id" if "item_id" in table.column_names else "user_id"
    keys = set(zip(table[key].to_pylist(), table["adapter"].to_pylist()))
    if table.num_rows != expected_rows or len(keys) != expected_rows:
        raise RuntimeError(f"embeddings run {run} holds {table.num_rows} rows ({len(keys)} unique) "
                           f"for {expected_rows} expected: not committed")
    seconds = time.time() - started
    summary = {
        "run": run, "uri": store.full_uri(run_dir(run)), "catalog": catalog_rel, "model": cfg.model.path,
        "adapters": sorted({a for a in table["adapter"].to_pylist() if a}),
        "parent": parent, "rows": table.num_rows, "seconds": round(seconds, 2),
        f"{key.removesuffix('_id')}s_per_s": round(table.num_rows / seconds, 2), "parts": parts,
    }
    if "embedding" in table.column_names:
        summary |= {"dims": table.schema.field("embedding").type.list_size,
                    "truncated": int(sum(table["truncated"].to_pylist()))}
    if "attributes" in table.column_names:
        summary["attributes"] = _attribute_stats(table, extra["attribute_names"])
    if clash := sorted(summary.keys() & extra.keys()):
        raise ValueError(f"embeddings run {run}: extra manifest fields {clash} would replace computed ones: "
                         "not committed")
    summary |= extra
    store.commit(run_dir(run), summary)
    return summary


def _attribute_stats(table, names: list[str]) -> dict:
    """Per-attribute mean/std over the run's scored rows (what its scores are z-scored with), and why
    the others have none."""
    scored = pc.is_valid(table["attributes"])
    raw = raw_scores(table.filter(scored)["attributes"].to_pylist(), len(names))
    unscored = Counter(table.filter(pc.invert(scored))["reason"].to_pylist()) if "reason" in table.column_names else {}
    return {"names": names, "mean": raw.mean(0).tolist(), "std": raw.std(0).tolist(), "unscored": dict(unscored)}


def _needs_embedding(store: Store, run: str, overwrite: bool, resume: bool) -> bool:
    """False for a committed run whose parts are all as committed. A committed run that lost or changed
    parts is refused, or with `resume` repaired: its changed parts are deleted, and only the missing
    blocks are embedded again before it is committed anew."""
    rel = run_dir(run)
    if overwrite or not store.is_committed(rel):
        return True
    damaged = damaged_parts(store, run)
    if damaged and not resume:
        raise StorageError(f"embeddings run {store.full_uri(rel)} is committed, but its part {damaged[0]} is missing "
                           f"or changed ({len(damaged)} damaged): {repair_hint(run, store.manifest(rel))}")
    for name in damaged:
        if store.exists(f"{rel}/{name}"):
            store.delete_file(f"{rel}/{name}")
    return bool(damaged)


def embed_catalog(cfg: Config, store: Store, overwrite: bool = False, adapters: dict[str, str] | None = None,
                  resume: bool = False, attributes: bool = False) -> tuple[dict, bool]:
    """Embed the configured catalog (publishing it first if needed; with `attributes`, also score the
    GER attributes) and commit the run. Returns (its manifest, whether it was embedded now): a
    committed run is left as it is unless `overwrite`, or repaired with `resume` (_needs_embedding)."""
    run = run_name(cfg, adapters, attributes)
    if not _needs_embedding(store, run, overwrite, resume):
        return store.manifest(run_dir(run)), False
    started = time.time()
    cat = ensure_catalog(cfg, store)
    items = catalog_file(catalog_name(cfg))
    names = attributes_for(cat["domain"], cfg.embed.attributes) if attributes else None
    timing = embed_items(cfg, store, items, run, cat["domain"], adapters, resume=resume and not overwrite,
                         attributes=names)
    summary = commit_run(cfg, store, run, catalog_rel=items, expected_rows=cat["items"] * max(len(adapters or {}), 1),
                         started=started, extra={"quarantined": cat["quarantined"], "attribute_names": names, **timing})
    return summary, True


def embed_users(cfg: Config, store: Store, overwrite: bool = False, adapters: dict[str, str] | None = None,
                resume: bool = False) -> tuple[dict, bool]:
    """Score every user's GER profile prompt (catalog.profile_prompts, over finetune.ger_history recent
    training items) on the attributes, as run <attributes run>-users; same as embed_catalog otherwise.
    A user with no training items gets null scores and the reason."""
    run = users_run(run_name(cfg, adapters, attributes=True))
    if not _needs_embedding(store, run, overwrite, resume):
        return store.manifest(run_dir(run)), False
    started = time.time()
    cat = ensure_catalog(cfg, store)
    name = catalog_name(cfg)
    items, interactions = (store.read_parquet(catalog_file(name, kind)) for kind in ("items", "interactions"))
    prompts = profile_prompts(items, interactions, cat["domain"], cfg.finetune.ger_history)
    rel = catalog_file(name, "profiles")
    store.write_parquet(rel, prompts, row_group_size=cfg.embed.block_size)  # row groups: the job's blocks
    names = attributes_for(cat["domain"], cfg.embed.attributes)
    timing = embed_items(cfg, store, rel, run, cat["domain"], adapters, resume=resume and not overwrite,
                         attributes=names, users=True)
    summary = commit_run(cfg, store, run, catalog_rel=rel, expected_rows=prompts.num_rows * max(len(adapters or {}), 1),
                         started=started, extra={"attribute_names": names, **timing})
    return summary, True
