"""Run many benchmarks/srs.py runs side by side and gather them into one table.

    python benchmarks/srs_grid.py --plan grid.txt --parallel 8 --deadline-s 480 --out runs/grid

Each line of the plan is the arguments of one benchmarks/srs.py run (blank lines and # comments
skipped), e.g. `--inputs beauty-base.npz --model sasrec --source llmemb --seeds 42 --in-process`.
Lines start in plan order, `--parallel` at a time; at `--deadline-s` the runs still going are
stopped and left out (listed). Every run writes its own folder under --out; the table groups the
runs by their arguments less --seeds and gives mean and std over the seeds present:
<out>/grid.md and <out>/grid.csv (one row per run and seed). A run that finished in an earlier
grid with the same --out and the same arguments is kept, not run again. The last line reads
`srs_grid: runs=<finished>/<planned> seconds=<s>`.
"""
from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parent / "srs.py"
SHOWN = ("HR@10", "NDCG@10", "MRR", "tail/HR@10", "tail/NDCG@10", "epoch_s")


def read_plan(path: str) -> list[list[str]]:
    lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    plan = [shlex.split(ln) for ln in lines if ln and not ln.startswith("#")]
    for args in plan:
        if "--out" in args:
            sys.exit(f"srs_grid: a plan line sets --out, which the grid owns: {shlex.join(args)}")
    return plan


def label(args: list[str]) -> str:
    """The run's arguments less its seeds: runs that differ only in seed share a row."""
    out, skip = [], False
    for a in args:
        if a == "--seeds":
            skip = True
            continue
        if skip and a.lstrip("-").isdigit():
            continue
        skip = False
        out.append(a)
    return shlex.join(out)


def read_rows(folder: Path, args: list[str]) -> list[dict]:
    """The rows of the run's results table, each labelled with its row of the grid table."""
    tables = list(folder.glob("*.csv"))
    if not tables:
        return []
    with open(tables[0]) as f:
        return [{"run": label(args), **row} for row in csv.DictReader(f)]


def earlier_rows(folder: Path, args: list[str]) -> list[dict]:
    """The rows an identical run left in `folder` before: a grid run again continues where it stopped."""
    done = folder / "args.txt"
    return read_rows(folder, args) if done.exists() and done.read_text() == shlex.join(args) else []


def run_grid(plan: list[list[str]], parallel: int, deadline_s: float, out: Path) -> tuple[list[dict], list[str], int]:
    """(rows of every finished run's csv, the runs stopped or never started, how many finished)."""
    started, pending, running, rows, stopped, finished = time.monotonic(), list(enumerate(plan)), {}, [], [], 0
    while pending or running:
        while pending and len(running) < parallel:
            k, args = pending.pop(0)
            folder = out / f"run-{k:03d}"
            if kept := earlier_rows(folder, args):
                rows += kept
                finished += 1
                print(f"srs_grid: run {k} kept from an earlier grid: {shlex.join(args)}", flush=True)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "args.txt").unlink(missing_ok=True)
            log = open(folder / "log.txt", "w")
            proc = subprocess.Popen([sys.executable, str(BENCHMARK), *args, "--out", str(folder)],
                                    stdout=log, stderr=subprocess.STDOUT)
            running[k] = (proc, args, folder, log)
        for k, (proc, args, folder, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[k]
            done = read_rows(folder, args) if proc.returncode == 0 else []
            if not done:
                print(f"srs_grid: run {k} failed (exit {proc.returncode}): {shlex.join(args)}; see {folder}/log.txt",
                      flush=True)
                continue
            (folder / "args.txt").write_text(shlex.join(args))
            rows += done
            finished += 1
            print(f"srs_grid: run {k} done at {time.monotonic() - started:.0f}s: {shlex.join(args)}", flush=True)
        if time.monotonic() - started > deadline_s:
            for k, (proc, args, folder, log) in running.items():
                proc.kill()
                proc.wait()
                log.close()
                stopped.append(shlex.join(args))
            stopped += [shlex.join(args) for _, args in pending]
            break
        time.sleep(1)
    return rows, stopped, finished


def write_table(rows: list[dict], stopped: list[str], out: Path) -> str:
    keys = ["run", "seed", *(k for k in rows[0] if k not in ("run", "seed"))] if rows else ["run"]
    with open(out / "grid.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| run | seeds | " + " | ".join(SHOWN) + " |", "|---|---|" + "---|" * len(SHOWN)]
    for run in dict.fromkeys(r["run"] for r in rows):
        group = sorted((r for r in rows if r["run"] == run), key=lambda r: int(r["seed"]))
        cells = []
        for k in SHOWN:
            values = [float(r[k]) for r in group]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f} ± {std:.4f}" if k != "epoch_s" else f"{statistics.fmean(values):.1f}")
        lines.append(f"| `{run}` | {','.join(r['seed'] for r in group)} | " + " | ".join(cells) + " |")
    if stopped:
        lines += ["", "Stopped at the deadline or never started:", *(f"- `{s}`" for s in stopped)]
    text = "\n".join(lines) + "\n"
    (out / "grid.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", required=True, help="file: one benchmarks/srs.py argument line per run")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--deadline-s", type=float, default=float("inf"))
    p.add_argument("--out", default="runs/srs-grid")
    args = p.parse_args(argv)
    plan = read_plan(args.plan)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows, stopped, finished = run_grid(plan, max(1, args.parallel), args.deadline_s, out)
    print(write_table(rows, stopped, out), flush=True)
    print(f"srs_grid: runs={finished}/{len(plan)} seconds={time.monotonic() - started:.0f}", flush=True)


if __name__ == "__main__":
    main()
