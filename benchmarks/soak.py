"""Soak: consecutive catalog updates on a live server under query load.

    python benchmarks/soak.py [--updates 20] [--items 200]

The store is built by the pipeline job on the first --items items of amazon-scientific-mini (real model,
`id` and `llmesr` SRS models). `python -m jobs.serve` then serves it from its own process (poll every
second), and one client thread per endpoint keeps asking GET /items/{id}/similar, POST /search and POST
/recommend about items no update touches, while this process runs `run_update` --updates times in a row:
each adds two real items from beyond the subset, retitles two others and deletes one that an earlier
update added. A failure is any answer but 200, or no answer. The server's RSS (its whole process) is
read after a warm-up and again once it serves the last update; the last line is the one to record:

    soak: updates=20 requests=... failed=0 rss_start_mb=... rss_end_mb=... rss_growth=...%
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from http_load import free_port, wait_ready

TEXT = ["item_id", "title", "categories", "brand"]
STABLE = 40    # the first items of the subset: queried, never touched by an update


def subset_catalog(folder: Path, n: int) -> list[dict]:
    """The first `n` items of amazon-scientific-mini with their interactions, as a catalog folder;
    returns the items beyond them (what the updates add)."""
    import pyarrow.compute as pc

    from catalog import load_catalog
    from cluster.config import DatasetConfig

    full = load_catalog(DatasetConfig(name="amazon-scientific-mini"))
    base = full.items.select(TEXT).slice(0, n)
    folder.mkdir(parents=True)
    pq.write_table(base, folder / "items.parquet")
    known = pc.is_in(full.interactions["item_id"], value_set=base["item_id"])
    pq.write_table(full.interactions.filter(known), folder / "interactions.parquet")
    (folder / "catalog.json").write_text(json.dumps({"domain": full.domain}))
    return full.items.select(TEXT).slice(n).to_pylist()


class Client(threading.Thread):
    """Asks one endpoint again and again until stopped, counting answers by status."""

    def __init__(self, url: str, ask, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.ask, self.stop, self.statuses, self.failures = url, ask, stop, Counter(), []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                try:
                    r = self.ask(http)
                    status, text = r.status_code, r.text
                except httpx.TransportError as e:
                    status, text = "no answer", repr(e)
                self.statuses[status] += 1
                if status != 200 and len(self.failures) < 5:
                    self.failures.append(f"{status}: {text[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--items", type=int, default=200, help="Items of the base catalog")
    args = parser.parse_args()

    from cluster import load_config
    from cluster.layout import read_committed_run
    from cluster.storage import Store
    from index import version_manifest
    from jobs.pipeline import run_pipeline
    from jobs.update import run_update

    with tempfile.TemporaryDirectory(prefix="guidedrec-soak-") as tmp:
        tmp = Path(tmp)
        extra = subset_catalog(tmp / "sci", args.items)
        settings = {"storage": {"uri": str(tmp / "store")}, "dataset": {"name": str(tmp / "sci"), "min_interactions": 1},
                    "index": {"factory": "Flat"}, "serve": {"poll_seconds": 1.0},
                    "srs": {"sources": ["id", "llmesr"], "epochs": 5, "hidden_size": 16, "max_len": 8, "pca_dim": 16}}
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump(settings))
        cfg = load_config(config)
        run_pipeline(cfg, examples=0)
        store = Store(cfg.storage.uri)
        table, _ = read_committed_run(store, version_manifest(store)["run"], columns=["item_id", "embedding"])
        embedded = dict(zip(table["item_id"].to_pylist(), table["embedding"].to_pylist()))
        base = [row for row in pq.read_table(tmp / "sci" / "items.parquet").to_pylist() if row["item_id"] in embedded]
        stable = [row["item_id"] for row in base[:STABLE]]
        history = [item for item, _ in Counter(pq.read_table(tmp / "sci" / "interactions.parquet")["item_id"]
                                                .to_pylist()).most_common() if item in stable][:3]
        vector = embedded[stable[0]]

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "jobs.serve", "--config", str(config), "--port", str(port)],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stop = threading.Event()
        clients = [
            Client(url, lambda h: h.get(f"/items/{stable[int(time.time() * 1000) % STABLE]}/similar"), stop),
            Client(url, lambda h: h.post("/search", json={"vector": vector, "k": 10}), stop),
            Client(url, lambda h: h.post("/recommend", json={"items": history, "k": 10}), stop),
        ]
        try:
            wait_ready(url, server)
            for c in clients:
                c.start()
            time.sleep(15)   # warm-up: the server's caches and allocator settle
            rss_start = psutil.Process(server.pid).memory_info().rss
            added: list[str] = []
            for u in range(args.updates):
                new = extra[2 * u: 2 * u + 2]
                changed = [{**row, "title": f"{row['title']} (rev {u + 1})"}
                           for row in base[STABLE + 2 * (u % 10): STABLE + 2 * (u % 10) + 2]]
                feed = tmp / f"feed-{u}.jsonl"
                feed.write_text("".join(json.dumps(row) + "\n" for row in new + changed))
                summary = run_update(cfg, feed, store, delta=True, deleted=added[:1])
                added = added[1:] + [r["item_id"] for r in new]
                print(f"soak: update {u + 1}/{args.updates} -> {summary['version']}", flush=True)
            deadline = time.time() + 60
            while httpx.get(f"{url}/healthz", timeout=10).json().get("version") != summary["version"]:
                assert time.time() < deadline, "the server never swapped to the last update"
                time.sleep(0.5)
            time.sleep(15)   # the same load again on the last version
            rss_end = psutil.Process(server.pid).memory_info().rss
        finally:
            stop.set()
            server.terminate()
            err = server.communicate(timeout=60)[1]
        statuses = sum((c.statuses for c in clients), Counter())
        failed = sum(n for status, n in statuses.items() if status != 200)
        for c in clients:
            for failure in c.failures:
                print(f"soak: failed: {failure}", flush=True)
        if failed and err:
            print(err[-3000:], flush=True)
    growth = 100 * (rss_end / rss_start - 1)
    print(f"soak: updates={args.updates} requests={sum(statuses.values())} failed={failed} "
          f"rss_start_mb={rss_start / 2**20:.0f} rss_end_mb={rss_end / 2**20:.0f} rss_growth={growth:.1f}%", flush=True)


if __name__ == "__main__":
    main()
