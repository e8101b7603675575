"""Peak memory of each job at the default config: embed, train and every fine-tuning objective.

    python benchmarks/memory.py --dataset amazon-beauty
    python benchmarks/memory.py --dataset amazon-scientific-mini --max-steps 2 --epochs 1 --limit-gb 5   # a quick look

Each part runs as its own job (`python -m jobs.<name>`, an embedded Ray) on a fresh local store; a sampler
reads the memory of the job's whole process tree (the driver, Ray's own processes and its workers) every
0.5 s. A part's figure is the largest sum over the tree at one sample of each process's PSS: its RSS with
every shared page split among the processes that map it, so the sum is what the machine spends (summed
RSS counts torch's and Ray's libraries once per process: some 20 Ray processes make it a few GB too
high). Printed beside it: the summed RSS and the largest single process's RSS (what Ray's memory monitor
watches). The last line is the one to record:

    memory: dataset=... embed_gb=... train_gb=... scft_gb=... ger_gb=... tslrec_gb=...
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ("scft", "ger", "tslrec")
GB = 1024**3


def tree_memory(root: psutil.Process) -> tuple[int, int, int, str]:
    """(summed PSS, summed RSS, the largest RSS, its process's name) of `root` and its descendants right now."""
    pss = rss = largest = 0
    name = ""
    for p in [root, *root.children(recursive=True)]:
        try:
            info, title = p.memory_full_info(), " ".join(p.cmdline()[:1]) or p.name()
        except psutil.Error:   # exited meanwhile
            continue
        pss, rss = pss + info.pss, rss + info.rss
        if info.rss > largest:
            largest, name = info.rss, title
    return pss, rss, largest, name


def run_part(name: str, args: list[str], limit_gb: float | None) -> dict:
    """Run one job, sampling its tree; past `limit_gb` (summed PSS) the tree is stopped and the part fails."""
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peak = peak_rss = largest = 0
    largest_name, began, killed = "", time.perf_counter(), False
    while proc.poll() is None:
        pss, rss, big, title = tree_memory(root)
        peak, peak_rss = max(peak, pss), max(peak_rss, rss)
        if big > largest:
            largest, largest_name = big, title
        if limit_gb and pss > limit_gb * GB and not killed:
            os.killpg(proc.pid, 9)   # the job's own session: its driver and the Ray it started
            killed = True
        time.sleep(0.5)
    output = proc.stdout.read()
    if proc.returncode != 0:
        reason = f"stopped above --limit-gb {limit_gb}" if killed else f"exit {proc.returncode}"
        raise SystemExit(f"{name}: {reason} (peak {peak / GB:.2f} GB, largest process {largest_name} "
                         f"{largest / GB:.2f} GB)\n{output[-3000:]}")
    return {"peak_gb": peak / GB, "rss_gb": peak_rss / GB, "largest_gb": largest / GB, "largest": largest_name,
            "seconds": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--max-steps", type=int, default=None, help="Fine-tuning steps (default: the config's)")
    parser.add_argument("--epochs", type=int, default=None, help="SRS training epochs (default: the backbone's)")
    parser.add_argument("--limit-gb", type=float, default=None, help="Stop a part whose tree passes this many GB")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="guidedrec-memory-") as tmp:
        config = Path(tmp) / "config.yaml"
        settings = {"storage": {"uri": str(Path(tmp) / "store")}, "dataset": {"name": args.dataset}}
        if args.epochs:
            settings["srs"] = {"epochs": args.epochs}
        config.write_text(yaml.safe_dump(settings))
        steps = ["--max-steps", str(args.max_steps)] if args.max_steps else []
        parts = {"embed": ["jobs.embed"], "train": ["jobs.train"]}
        parts |= {o: ["jobs.finetune", "--objective", o, "--out", str(Path(tmp) / "adapters" / o), *steps]
                  for o in OBJECTIVES}
        results = {}
        for name, job in parts.items():
            results[name] = r = run_part(name, [*job, "--config", str(config)], args.limit_gb)
            print(f"{name}: peak {r['peak_gb']:.2f} GB PSS over the process tree ({r['rss_gb']:.2f} GB summed RSS), "
                  f"largest process {r['largest']} {r['largest_gb']:.2f} GB RSS, {r['seconds']:.0f} s", flush=True)
    figures = " ".join(f"{name}_gb={r['peak_gb']:.2f}" for name, r in results.items())
    print(f"memory: dataset={args.dataset} {figures}", flush=True)


if __name__ == "__main__":
    main()
