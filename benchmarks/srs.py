"""SRS accuracy benchmark: one backbone x item source x ranking mode, over seeds, on a real data set.

    python benchmarks/srs.py --dataset amazon-beauty --model sasrec --source id --ranking full --seeds 42
    python benchmarks/srs.py --dataset amazon-beauty --model bert4rec --source llmemb --ranking sampled --seeds 42 43 44
    python benchmarks/srs.py --dataset /data/my-shop --source id --in-process --set epochs=20
    python benchmarks/srs.py --dataset amazon-beauty --source llmesr --cold-items 0.1 --seeds 42

The training config is the backbone's defaults (srs/defaults/<model>.yaml, the best measured)
with `--set` on top.

Data: catalog.load_catalog(DatasetConfig(name=...)), ranked over the k-core's items as jobs.train
does. LLM sources read the committed embeddings run `--run` from `--store`; ger reads the attribute
scores of the run `--attributes` (one embedded with `guidedrec embed --attributes`). Prints one line
per seed and a mean ± std table, writes <out>/<name>.md, .csv and (with matplotlib) a plot of
validation NDCG@10 per epoch (<out> defaults to runs/srs-benchmarks in this repository, whatever
the data set's path); the last line is the one-line summary of the means. `--cold-items F` runs the
cold-item protocol (srs.cold_items): a seeded share F of the items never reaches training or
validation, and cold/ and warm/ metrics (by the test target's kind) are reported beside the rest.

Training runs through Ray Train (srs.train, runner "ray") or, with --in-process, in this process on
its best device without Ray (runner "local"; each epoch's line is printed as it ends). With
RAY_ADDRESS=<head host:port> it joins that running cluster instead of starting Ray (`--set num_workers=2`:
two Ray Train workers); its checkpoints go to a local temporary folder, so the nodes must share this disk.
`--save-inputs F.npz` writes what a run reads (split sequences, item ids, the source's matrices as
float16) and exits; `--inputs F.npz` runs from such a file instead of the catalog and store:
together they run the benchmark on a machine that has neither (a lone GPU box without Ray).
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

KEYWORDS = {"llm": "item_embeddings", "attributes": "attribute_scores"}  # SourceInputs field -> srs.train keyword
OUT = Path(__file__).resolve().parents[1] / "runs" / "srs-benchmarks"  # runs/ is git-ignored
REPORTED = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR", "tail/HR@10", "tail/NDCG@10")
COLD_REPORTED = ("cold/HR@10", "cold/NDCG@10", "warm/HR@10", "warm/NDCG@10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="amazon-beauty")
    p.add_argument("--model", default="sasrec", choices=["sasrec", "gru4rec", "bert4rec"])
    p.add_argument("--source", default="id", choices=["id", "llm-frozen", "llmemb", "ger", "tslrec", "llmesr"])
    p.add_argument("--ranking", default="full", choices=["full", "sampled"])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--store", default="./store", help="storage root holding embeddings/<run> (LLM sources)")
    p.add_argument("--run", default=None, help="embeddings run (default: <dataset>-smollm2-base, as jobs.embed names it)")
    p.add_argument("--attributes", default=None,
                   help="embeddings run with attribute scores, for source ger (default: <dataset>-smollm2-base-attrs)")
    p.add_argument("--control", default=None, choices=["zero", "shuffle"],
                   help="ger ablation: all-zero attribute scores, or the items' scores shuffled among them (seed: --seeds[0])")
    p.add_argument("--cold-items", type=float, default=0.0, metavar="F",
                   help="cold-item protocol: a seeded share F of the items is never trained on (e.g. 0.1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="SRSConfig override, e.g. --set loss=ce --set epochs=50 (repeatable)")
    p.add_argument("--out", default=str(OUT), help="folder for the .md/.csv/.png results (default: runs/srs-benchmarks)")
    p.add_argument("--in-process", action="store_true", help="train in this process without Ray (GPU if present)")
    p.add_argument("--save-inputs", default=None, metavar="F.npz", help="write the run's inputs to F.npz and exit")
    p.add_argument("--inputs", default=None, metavar="F.npz", help="read the run's inputs from F.npz (--save-inputs)")
    return p.parse_args(argv)


def load_data(args: argparse.Namespace) -> tuple[dict[str, list[str]], list[str]]:
    from catalog import load_catalog, ranked_items, user_sequences
    from cluster.config import DatasetConfig

    catalog = load_catalog(DatasetConfig(name=args.dataset))
    sequences = user_sequences(catalog.interactions)
    item_ids = ranked_items(catalog.items["item_id"].to_pylist(), catalog.interactions)
    return sequences, item_ids


def source_inputs(args: argparse.Namespace, item_ids: list[str]) -> dict:
    """The keyword arguments of srs.train the source needs; exits with the reason when absent."""
    from cluster.config import Config, DatasetConfig
    from cluster.layout import run_name
    from cluster.storage import Store, StorageError
    from llm.runs import aligned_attributes, aligned_vectors
    from srs.fusion import required_inputs

    store, cfg = Store(args.store), Config(dataset=DatasetConfig(name=args.dataset))
    readers = {"llm": (args.run or run_name(cfg), aligned_vectors, "`guidedrec embed`"),
               "attributes": (args.attributes or run_name(cfg, attributes=True), aligned_attributes,
                              "`guidedrec embed --attributes`")}
    kwargs: dict = {}
    for field in required_inputs(args.source, config(args, args.seeds[0])):
        if field not in readers:
            continue  # the ID table: trained by the benchmark itself
        run, read, job = readers[field]
        try:
            kwargs[KEYWORDS[field]] = read(store, run, item_ids)
        except (StorageError, FileNotFoundError, OSError, KeyError, ValueError) as e:
            sys.exit(f"srs benchmark: source {args.source!r} needs the committed embeddings run {run!r} in "
                     f"{store.full_uri('embeddings')}/ ({e}); run {job} first or pass --store/--run/--attributes")
    return kwargs


def save_inputs(path: str, sequences: dict[str, list[str]], item_ids: list[str], kwargs: dict) -> None:
    """Sequences as item positions with offsets; matrices as float16 (half the bytes to carry)."""
    import numpy as np

    pos = {item: i for i, item in enumerate(item_ids)}
    users = sorted(sequences)
    flat = np.fromiter((pos[i] for u in users for i in sequences[u]), dtype=np.int32)
    offsets = np.cumsum([0, *(len(sequences[u]) for u in users)], dtype=np.int64)
    matrices = {k: np.asarray(v, dtype=np.float16) for k, v in kwargs.items()}
    np.savez(path, users=np.array(users), item_ids=np.array(item_ids), items=flat, offsets=offsets, **matrices)


def load_inputs(path: str, source: str, srs_cfg) -> tuple[dict[str, list[str]], list[str], dict]:
    import numpy as np

    try:
        f = np.load(path)
    except (OSError, ValueError) as e:
        sys.exit(f"srs benchmark: cannot read --inputs {path}: {e}")
    item_ids = f["item_ids"].tolist()
    items, offsets = f["items"], f["offsets"]
    sequences = {u: [item_ids[i] for i in items[offsets[k]:offsets[k + 1]]] for k, u in enumerate(f["users"].tolist())}
    from srs.fusion import required_inputs

    needed = [KEYWORDS[n] for n in required_inputs(source, srs_cfg) if n in KEYWORDS]
    missing = [n for n in needed if n not in f.files]
    if missing:
        sys.exit(f"srs benchmark: --inputs {path} has no {missing} for source {source!r} (it holds {f.files})")
    return sequences, item_ids, {n: f[n].astype(np.float32) for n in needed}


def ablated(kwargs: dict, control: str, seed: int) -> dict:
    """ger's controls: the same split table with no attribute signal ("zero"), or with each item's
    scores given to a random other item ("shuffle": the same values, no information about the item)."""
    import numpy as np

    scores = kwargs[KEYWORDS["attributes"]]
    if control == "zero":
        scores = np.zeros_like(scores)
    else:
        scores = scores[np.random.default_rng(seed).permutation(len(scores))]
    return {**kwargs, KEYWORDS["attributes"]: scores}


def config(args: argparse.Namespace, seed: int):
    from cluster.config import SRSConfig

    updates = dict(kv.split("=", 1) for kv in args.overrides)
    return SRSConfig.model_validate({**updates, "model": args.model, "ranking": args.ranking, "seed": seed,
                                     "cold_items": args.cold_items})


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def reported(args: argparse.Namespace) -> tuple[str, ...]:
    return REPORTED + (COLD_REPORTED if args.cold_items else ())


def write_results(args: argparse.Namespace, name: str, rows: list[dict], header: str) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = ["seed", *reported(args), "best_epoch", "epochs", "epoch_s"]
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = ["| metric | mean | std |", "|---|---|---|"]
    for k in (*reported(args), "epoch_s"):
        m, s = mean_std([r[k] for r in rows])
        table.append(f"| {k} | {m:.4f} | {s:.4f} |")
    (out / f"{name}.md").write_text(f"{header}\n\n" + "\n".join(table) + "\n" + boost_table(rows))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return out
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in rows:
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], label=f"seed {r['seed']}")
    ax.set(xlabel="epoch", ylabel=f"valid NDCG@10 ({args.ranking})", title=name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    plt.close(fig)
    return out


def boost_table(rows: list[dict]) -> str:
    """With semantic_boost "auto": each b's mean validation NDCG@10 and test figures over the seeds, and how
    often validation chose it ('' otherwise). Every b is scored on the same trained models."""
    if "sweep" not in rows[0]:
        return ""
    keys = ("valid/NDCG@10", "test/HR@10", "test/NDCG@10", "test/MRR", "test/tail/HR@10")
    lines = ["", "| semantic_boost | " + " | ".join(keys) + " | chosen |", "|---" * (len(keys) + 2) + "|"]
    for i, b in enumerate(row["boost"] for row in rows[0]["sweep"]):
        cells = [" ± ".join(f"{x:.4f}" for x in mean_std([r["sweep"][i][k] for r in rows])) for k in keys]
        lines.append(f"| {b:g} | " + " | ".join(cells) + f" | {sum(r['boost'] == b for r in rows)}/{len(rows)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from srs import popularity_metrics, train

    if args.inputs:
        sequences, item_ids, kwargs = load_inputs(args.inputs, args.source, config(args, args.seeds[0]))
    else:
        sequences, item_ids = load_data(args)
        kwargs = source_inputs(args, item_ids)
    if args.save_inputs:
        save_inputs(args.save_inputs, sequences, item_ids, kwargs)
        print(f"srs benchmark: inputs of {args.dataset}/{args.source} -> {args.save_inputs}", flush=True)
        return
    if args.control:
        if KEYWORDS["attributes"] not in kwargs:
            sys.exit(f"srs benchmark: --control ablates attribute scores; source {args.source!r} reads none")
        kwargs = ablated(kwargs, args.control, args.seeds[0])
    # A data set given as a directory is named by its last part: the results stay in --out.
    dataset = Path(args.dataset).resolve().name
    name = (f"{dataset}-{args.model}-{args.source}-{args.ranking}" + (f"-{args.control}" if args.control else "")
            + (f"-cold{args.cold_items:g}" if args.cold_items else ""))
    n_interactions = sum(len(s) for s in sequences.values())
    print(f"{args.dataset}: {len(sequences)} users, {len(item_ids)} items, {n_interactions} interactions", flush=True)
    pop = popularity_metrics(sequences, item_ids, ranking=args.ranking)
    print(f"popularity: HR@10={pop['HR@10']:.4f} NDCG@10={pop['NDCG@10']:.4f} tailHR@10={pop['tail/HR@10']:.4f}", flush=True)

    if args.in_process:
        # The epoch loop logs a line per epoch; shown here, or an in-process run is silent for its whole length.
        logging.basicConfig(format="%(message)s")
        logging.getLogger("srs").setLevel(logging.INFO)
    else:
        from cluster import init_ray
        from cluster.config import RayConfig

        init_ray(RayConfig(num_cpus=2, log_to_driver=False))
    rows = []
    for seed in args.seeds:
        cfg = config(args, seed)
        r = train(sequences, item_ids, cfg, args.source, runner="local" if args.in_process else "ray", **kwargs)
        row = {"seed": seed, **{k: r.test[k] for k in reported(args)}, "best_epoch": r.best_epoch, "epochs": r.epochs,
               "epoch_s": r.seconds_per_epoch, "curve": r.valid_curve}
        if r.boost_sweep:
            row["boost"], row["sweep"] = next(x["boost"] for x in r.boost_sweep if x["chosen"]), r.boost_sweep
        rows.append(row)
        print(f"seed={seed} HR@10={row['HR@10']:.4f} NDCG@10={row['NDCG@10']:.4f} MRR={row['MRR']:.4f} "
              f"tailHR@10={row['tail/HR@10']:.4f} " + cold_fields(args, row) + f"best_epoch={r.best_epoch}/{r.epochs} "
              + (f"boost={row['boost']:g} " if r.boost_sweep else "")
              + f"epoch_s={r.seconds_per_epoch:.1f} total_s={r.seconds:.0f}", flush=True)
    overrides = " ".join(f"--set {kv}" for kv in args.overrides)
    header = (f"{name}: seeds {' '.join(map(str, args.seeds))}; {len(sequences)} users, {len(item_ids)} items; "
              f"config {cfg.model_dump(exclude={'seed', 'sources'})} {overrides}".rstrip())
    out = write_results(args, name, rows, header)
    print(Path(out, f"{name}.md").read_text(), flush=True)
    means = {k: mean_std([r[k] for r in rows])[0] for k in (*reported(args), "epoch_s")}
    print(f"srs: dataset={args.dataset} model={args.model} source={args.source} ranking={args.ranking} "
          f"HR@10={means['HR@10']:.4f} NDCG@10={means['NDCG@10']:.4f} tailHR@10={means['tail/HR@10']:.4f} "
          + cold_fields(args, means) + f"epoch_s={means['epoch_s']:.1f}", flush=True)


def cold_fields(args: argparse.Namespace, m: dict) -> str:
    """The cold-item protocol's figures for a result line ('' without it)."""
    if not args.cold_items:
        return ""
    return (f"coldHR@10={m['cold/HR@10']:.4f} coldNDCG@10={m['cold/NDCG@10']:.4f} "
            f"warmHR@10={m['warm/HR@10']:.4f} warmNDCG@10={m['warm/NDCG@10']:.4f} ")


if __name__ == "__main__":
    main()
