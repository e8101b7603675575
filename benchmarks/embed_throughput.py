"""Embedding throughput: a plain transformers loop vs the Ray Data job with 1 and N actors.

    python benchmarks/embed_throughput.py --items 2000

The same real items (amazon-beauty titles, from $DATA_ROOT), model, batch size and pooling in
all three. Start-up (Ray, engine load) is reported apart; items/s is the steady state: the loop
after its warm-up batch, the job between its first and last finished input block.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def plain_loop(prompts: list[str], batch_size: int, threads: int) -> tuple[float, float]:
    """(start-up s, steady items/s): in catalog order, one batch after another, no Ray."""
    from cluster.config import ModelConfig
    from llm.engines import HFEngine

    t0 = time.perf_counter()
    engine = HFEngine(ModelConfig(), threads=threads)
    engine.embed(prompts[:batch_size])  # warm-up
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    for start in range(batch_size, len(prompts), batch_size):
        engine.embed(prompts[start:start + batch_size])
    return startup, (len(prompts) - batch_size) / (time.perf_counter() - t1)


def ray_job(store, items_rel: str, domain: str, actors: int, threads: int, batch_size: int, block_size: int) -> dict:
    from cluster import load_config
    from llm.embed import embed_items

    cfg = load_config(None, {"embed.actors": actors, "embed.threads_per_actor": threads,
                             "embed.cpus_per_actor": 1.0 / actors, "embed.batch_size": batch_size,
                             "embed.block_size": block_size, "storage.uri": store.uri})
    return embed_items(cfg, store, items_rel, f"bench-{actors}", domain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=256)
    args = parser.parse_args()

    import ray

    from catalog import item_prompt, load_catalog
    from cluster import Store
    from cluster.config import DatasetConfig, RayConfig
    from cluster.runtime import init_ray

    cat = load_catalog(DatasetConfig(name="amazon-beauty"))
    items = cat.items.slice(0, args.items)
    prompts = [item_prompt(row, cat.domain) for row in items.to_pylist()]
    cores = os.cpu_count() or 1

    loop_start, loop_rate = plain_loop(prompts, args.batch_size, threads=cores)
    print(f"(a) plain loop, {cores} threads: start-up {loop_start:.1f} s, {loop_rate:.2f} items/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        store.write_parquet("items.parquet", items, row_group_size=args.block_size)
        t0 = time.perf_counter()
        init_ray(RayConfig(num_cpus=cores, log_to_driver=False))
        ray_start = time.perf_counter() - t0
        one = ray_job(store, "items.parquet", cat.domain, 1, cores, args.batch_size, args.block_size)
        print(f"(b) Ray Data, 1 actor x {cores} threads: ray.init {ray_start:.1f} s, start-up {one['startup_s']} s, "
              f"{one['steady_items_s']} items/s", flush=True)
        many = ray_job(store, "items.parquet", cat.domain, cores, 1, args.batch_size, args.block_size)
        print(f"(c) Ray Data, {cores} actors x 1 thread: start-up {many['startup_s']} s, "
              f"{many['steady_items_s']} items/s", flush=True)
        ray.shutdown()
    b, c = one["steady_items_s"], many["steady_items_s"]
    print(f"embed_throughput: loop_items_s={loop_rate:.2f} ray1_items_s={b:.2f} rayN_items_s={c:.2f} "
          f"ratio_1actor={b / loop_rate:.2f} ratio_N={c / loop_rate:.2f}")


if __name__ == "__main__":
    main()
