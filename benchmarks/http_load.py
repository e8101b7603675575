"""HTTP load on the query service: item -> similar items over a synthetic index.

    python benchmarks/http_load.py --items 100000 --dims 64 --requests 3000 --concurrency 8

Writes a committed run of clustered random vectors (with a catalog, so responses carry titles)
to a temporary store, builds the index version, starts `python -m jobs.serve` on a free
127.0.0.1 port in its own process, then an asyncio + httpx client keeps `--concurrency`
requests in flight for `--requests` requests or `--seconds`, whichever ends first. Latency is
per request, as the client sees it; the client shares the machine's cores with the server.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_index(store_dir: Path, n: int, dims: int, factory: str) -> list[str]:
    """A committed embeddings run of n clustered vectors, its catalog, and the CURRENT index."""
    from cluster.config import IndexConfig
    from cluster.storage import Store
    from cluster.layout import read_parts
    from index import build_from_run
    from llm.stages import embedding_schema

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((max(n // 100, 1), dims))
    vectors = (centers[rng.integers(0, len(centers), n)] + 0.3 * rng.standard_normal((n, dims))).astype(np.float32)
    ids = [f"item-{i:07d}" for i in range(n)]
    store = Store(str(store_dir))
    catalog = "catalog/bench/items.parquet"
    store.write_parquet(catalog, pa.table({"item_id": ids, "title": [f"Synthetic item {i}" for i in range(n)]}))
    store.write_parquet("embeddings/bench/part-000000.parquet", pa.table({
        "item_id": ids, "content_hash": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dims),
        "truncated": pa.repeat(False, n), "model": pa.repeat("synthetic", n), "adapter": pa.nulls(n, pa.string()),
    }, schema=embedding_schema(dims)))
    store.commit("embeddings/bench", {"dims": dims, "rows": n, "catalog": catalog, "parts": read_parts(store, "bench")[1]})
    build_from_run(store, "bench", IndexConfig(factory=factory))
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s")


async def load(url: str, ids: list[str], k: int, requests: int, seconds: float, concurrency: int) -> tuple[list[float], float, int]:
    """(latencies in s, wall seconds, errors): `concurrency` workers share one request budget."""
    rng = np.random.default_rng(1)
    queries = [ids[i] for i in rng.integers(0, len(ids), requests)]
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while queries and time.monotonic() < deadline:
            item = queries.pop()
            t0 = time.perf_counter()
            r = await client.get(f"/items/{item}/similar", params={"k": k})
            latencies.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        await client.get(f"/items/{ids[0]}/similar", params={"k": k})   # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return latencies, time.perf_counter() - t0, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="http-load-") as tmp:
        t0 = time.perf_counter()
        ids = write_index(Path(tmp) / "store", args.items, args.dims, args.factory)
        print(f"index: {args.items} x {args.dims} {args.factory} built in {time.perf_counter() - t0:.1f} s", flush=True)
        port = free_port()
        config = Path(tmp) / "serve.yaml"
        config.write_text(yaml.safe_dump({"storage": {"uri": str(Path(tmp) / "store")},
                                          "serve": {"host": "127.0.0.1", "port": port, "max_k": max(args.k, 100)}}))
        server_log = Path(tmp) / "server.log"
        with server_log.open("wb") as log:
            server = subprocess.Popen([sys.executable, "-m", "jobs.serve", "--config", str(config)], cwd=REPO,
                                      stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            t0 = time.perf_counter()
            try:
                wait_ready(url, server)
            except (RuntimeError, TimeoutError):
                print(server_log.read_text()[-3000:], file=sys.stderr)
                raise
            print(f"server: ready in {time.perf_counter() - t0:.1f} s (pid {server.pid})", flush=True)
            latencies, wall, errors = asyncio.run(load(url, ids, args.k, args.requests, args.seconds, args.concurrency))
        finally:
            server.terminate()
            server.wait(10)
    ms = np.asarray(latencies) * 1000
    rps = len(ms) / wall
    print(f"{len(ms)} requests, {errors} errors, concurrency {args.concurrency}, k={args.k}, {wall:.1f} s")
    print(f"http: n={args.items} rps={rps:.0f} p50_ms={np.percentile(ms, 50):.1f} p99_ms={np.percentile(ms, 99):.1f}")


if __name__ == "__main__":
    main()
