"""One vs two Ray Train workers for the SRS, on a real two-node Ray cluster on this machine.

    DATA_ROOT=../shared/data python benchmarks/two_nodes.py --dataset ml-100k --seeds 42 43 --set patience=40

Starts a head and a second raylet (one CPU each, as tests/test_cluster_nodes.py does), then runs
benchmarks/srs.py joined to that cluster (RAY_ADDRESS) with `num_workers=1` and `num_workers=2`.
Each worker asks for one CPU, so the two workers of the second run sit on different nodes and
average their gradients over gloo across them (DDP, each worker its shard of the users at the
same per-worker batch: the global batch doubles). Prints one line per run and, last,
`two_nodes: dataset=... 1w_HR@10=... 2w_HR@10=... ...` (means over the seeds).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.ray_cluster import RayCluster  # the cluster helper the two-node tests use

SEED_LINE = re.compile(r"^seed=(\d+) HR@10=([\d.]+) NDCG@10=([\d.]+) MRR=([\d.]+) tailHR@10=([\d.]+) .*"
                       r"best_epoch=(\d+)/(\d+) epoch_s=([\d.]+)")


def run_srs(args: argparse.Namespace, address: str, workers: int) -> list[dict]:
    """benchmarks/srs.py on the cluster with `workers` Ray Train workers; one dict per seed."""
    command = [sys.executable, str(REPO / "benchmarks" / "srs.py"), "--dataset", args.dataset, "--model", args.model,
               "--source", "id", "--seeds", *map(str, args.seeds), "--out", str(Path(args.out) / f"{workers}w"),
               "--set", f"num_workers={workers}", *(x for kv in args.overrides for x in ("--set", kv))]
    env = {**os.environ, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "disabled"}
    rows = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            for line in proc.stdout:
                if m := SEED_LINE.match(line):
                    seed, hr, ndcg, mrr, tail, best, epochs, epoch_s = m.groups()
                    rows.append({"seed": int(seed), "HR@10": float(hr), "NDCG@10": float(ndcg), "MRR": float(mrr),
                                 "tail/HR@10": float(tail), "best": int(best), "epochs": int(epochs),
                                 "epoch_s": float(epoch_s)})
                    print(f"workers={workers} {line.strip()}", flush=True)
        except BaseException:   # interrupted: stop the run too, or leaving the `with` waits for it
            proc.kill()
            raise
    if proc.returncode:
        sys.exit(f"two_nodes: srs.py with {workers} worker(s) failed (exit {proc.returncode})")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--model", default="sasrec", choices=["sasrec", "gru4rec", "bert4rec"])
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="srs config override for both runs")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Train worker counts to run")
    p.add_argument("--out", default=str(REPO / "runs" / "two-nodes"))
    args = p.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # a kill stops the cluster's nodes as Ctrl-C does
    means = {}
    with tempfile.TemporaryDirectory() as logs, RayCluster(Path(logs)) as cluster:
        cluster.start(num_cpus=1, resources={"head_node": 1})
        cluster.add_node(num_cpus=1, resources={"worker_node": 1})
        print(f"cluster: {len(cluster.alive_nodes())} nodes at {cluster.gcs}, 1 CPU each", flush=True)
        for workers in args.workers:
            rows = run_srs(args, cluster.gcs, workers)
            means[workers] = {k: statistics.fmean(r[k] for r in rows) for k in ("HR@10", "NDCG@10", "tail/HR@10", "epoch_s")}
    print(f"two_nodes: dataset={args.dataset} model={args.model} seeds={len(args.seeds)} "
          + " ".join(f"{w}w_{k.replace('tail/', 'tail')}={v:.4f}" for w in args.workers for k, v in means[w].items()
                     if k != "epoch_s")
          + "".join(f" {w}w_epoch_s={means[w]['epoch_s']:.1f}" for w in args.workers), flush=True)


if __name__ == "__main__":
    main()
