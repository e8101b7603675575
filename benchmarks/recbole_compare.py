"""Peer comparison (issue 5): RecBole 1.2.1 SASRec against ours, same split, same config, same run.

    python benchmarks/recbole_compare.py --dataset amazon-beauty --epochs 3 --seed 42
    python benchmarks/recbole_compare.py --dataset ml-100k --epochs 5 --patience 5
    python benchmarks/recbole_compare.py --dataset amazon-beauty --epochs 200 --patience 5 --dropout 0.5
    python benchmarks/recbole_compare.py --setup-only        # just create .venv-recbole

RecBole runs in its own venv, `.venv-recbole` beside this repo (RecBole 1.2.1 needs numpy<2,
pandas<2.3, setuptools<81 and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1), created here on first use
with the same local CPU torch wheel as ours (torch==2.13.0 installed first, so no CUDA build is
ever pulled) and reused while its stamp file matches. It runs benchmarks/recbole_run.py, which
imports nothing of ours.

Data: the sequences we train on (catalog.load_catalog -> user_sequences) written as RecBole
atomic files, `<name>.inter` with user_id:token, item_id:token and timestamp:float = the item's
position in its user's sequence, so RecBole's leave-one-out (eval_args split LS valid_and_test,
order TO, full ranking) cuts the same train/valid/test targets as ours; recbole_run.py checks
RecBole's counts of users, items (+1 [PAD]) and interactions against the file and reports them.

Accuracy is reported three ways: ours (full ranking, history masked except the target, ties
against the target), RecBole's own full-sort evaluator (history NOT masked: RecBole does not
mask for sequential models), and RecBole's trained model ranked under OUR protocol by
recbole_run.py (whole-sequence history masked), the apples-to-apples figure.

Time: RecBole logs training time per epoch separately from its validation; ours is
SRSResult.train_seconds_per_epoch (training alone, measured in fit(); where an older srs.train
lacks it, seconds_per_epoch minus one validation pass of the best model timed here, see
`validation_seconds`). Train+valid per epoch is reported for both as well. Both run with the
same thread count (cfg.num_workers * cfg.threads_per_worker), one after the other.
An epoch is not the same work on both sides: RecBole's is over its augmented examples (one per
prefix of each training sequence, history cut to max_len, every prefix re-encoded), ours over
one row per user (the last max_len items of its training sequence, all positions trained at
once); "train targets/epoch" in the table counts the next-item targets each sees per epoch.

Prints a side-by-side table and writes it to <out>/recbole-<dataset>.md and .csv; the last line
is the one-line summary.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

VENV = REPO / ".venv-recbole"
# Installed in this order: torch first so pip keeps the local CPU wheel and no CUDA build is pulled.
TORCH = "torch==2.13.0"
RECBOLE = ["recbole==1.2.1", "numpy<2", "pandas<2.3", "setuptools<81",
           # What RecBole 1.2.1 imports or needs at run time beyond its own requirements.
           "scipy", "scikit-learn", "colorlog==4.7.2", "colorama==0.4.4", "tensorboard", "texttable",
           "thop", "tabulate", "plotly", "psutil", "pyyaml", "tqdm"]
STAMP = VENV / ".recbole-stamp"
STAMP_TEXT = json.dumps({"torch": TORCH, "packages": RECBOLE, "python": sys.version.split()[0]})
METRICS = ("HR@10", "NDCG@10", "MRR")


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_recbole_venv() -> Path:
    """Create (or reuse, by stamp) the RecBole venv; returns its python."""
    if STAMP.exists() and STAMP.read_text() == STAMP_TEXT and venv_python().exists():
        print(f"recbole venv: reusing {VENV}", flush=True)
        return venv_python()
    started = time.perf_counter()
    if VENV.exists():
        print(f"recbole venv: {VENV} is stale or incomplete; rebuilding", flush=True)
        shutil.rmtree(VENV)
    print(f"recbole venv: creating {VENV}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    print(f"recbole venv: pip install {TORCH} (the local CPU wheel)", flush=True)
    subprocess.run([*pip, TORCH], check=True)
    print(f"recbole venv: pip install {' '.join(RECBOLE)}", flush=True)
    # TORCH again pins it: pip must not replace the CPU wheel to satisfy RecBole's torch>=1.10.
    subprocess.run([*pip, TORCH, *RECBOLE], check=True)
    check = "import torch, numpy, pandas, recbole; from recbole.quick_start import run_recbole; " \
            "print('torch', torch.__version__, 'numpy', numpy.__version__, 'pandas', pandas.__version__, " \
            "'recbole', recbole.__version__)"
    out = subprocess.run([str(venv_python()), "-c", check], check=True, capture_output=True, text=True,
                         env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    print(f"recbole venv: {out.stdout.strip()}", flush=True)
    if "+cpu" not in out.stdout:
        sys.exit(f"recbole venv: torch is not the CPU build ({out.stdout.strip()}); remove {VENV} and check pip's index")
    STAMP.write_text(STAMP_TEXT)
    size = subprocess.run(["du", "-sh", str(VENV)], capture_output=True, text=True).stdout.split()[0]
    print(f"recbole venv: ready in {time.perf_counter() - started:.0f} s, {size}", flush=True)
    return venv_python()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="amazon-beauty")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience (default: SRSConfig's)")
    p.add_argument("--dropout", type=float, default=None,
                   help="hidden and attention dropout for both (default: SRSConfig's; the Beauty baseline uses 0.5)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="runs/srs-benchmarks", help="folder for the .md/.csv results (runs/ is git-ignored)")
    p.add_argument("--setup-only", action="store_true", help="create/check the RecBole venv and exit")
    return p.parse_args(argv)


def our_config(args: argparse.Namespace):
    from cluster.config import SRSConfig

    extra = {k: v for k, v in {"patience": args.patience, "dropout": args.dropout}.items() if v is not None}
    return SRSConfig.model_validate({"model": "sasrec", "loss": "ce", "ranking": "full", "epochs": args.epochs,
                                     "seed": args.seed, **extra})


def recbole_config(cfg, threads: int, work: Path) -> dict:
    """RecBole's SASRec config matching SRSConfig `cfg` (see srs/models/transformer.py): FFN width =
    hidden size, ReLU, one dropout for hidden and attention, LayerNorm eps 1e-5 (nn.LayerNorm's)."""
    return {
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": None, "item_inter_num_interval": None, "rm_dup_inter": None,
        "MAX_ITEM_LIST_LENGTH": cfg.max_len,
        "hidden_size": cfg.hidden_size, "inner_size": cfg.hidden_size, "n_layers": cfg.num_layers,
        "n_heads": cfg.num_heads, "hidden_dropout_prob": cfg.dropout, "attn_dropout_prob": cfg.dropout,
        "hidden_act": "relu", "layer_norm_eps": 1e-5, "initializer_range": 0.02, "loss_type": "CE",
        "train_neg_sample_args": None,
        "train_batch_size": cfg.batch_size, "eval_batch_size": 256, "learning_rate": cfg.lr, "weight_decay": 0.0,
        "epochs": cfg.epochs, "eval_step": 1,
        # RecBole stops after stopping_step + 1 epochs without improvement; ours after `patience`.
        "stopping_step": cfg.patience - 1,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG", "MRR"], "topk": [10], "valid_metric": "NDCG@10",
        "seed": cfg.seed, "reproducibility": True, "use_gpu": False, "gpu_id": "", "worker": 0,
        "show_progress": False, "save_dataset": False, "save_dataloaders": False, "log_wandb": False,
        "checkpoint_dir": str(work / "saved"), "state": "INFO",
        "threads": threads,
    }


def load_data(dataset: str) -> tuple[dict[str, list[str]], list[str]]:
    """As benchmarks/srs.py: the catalog's sequences, ranked over the k-core's items."""
    from catalog import load_catalog, ranked_items, user_sequences
    from cluster.config import DatasetConfig

    catalog = load_catalog(DatasetConfig(name=dataset))
    sequences = user_sequences(catalog.interactions)
    item_ids = ranked_items(catalog.items["item_id"].to_pylist(), catalog.interactions)
    return sequences, item_ids


def write_atomic(sequences: dict[str, list[str]], item_ids: list[str], data_path: Path, name: str) -> Path:
    """<data_path>/<name>/<name>.inter: tokens u<k> (user k in sequence order) and i<j> (item_ids[j-1],
    our index), timestamp = position in the user's sequence (ties impossible, order exact)."""
    index = {item: j + 1 for j, item in enumerate(item_ids)}
    folder = data_path / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.inter"
    with open(path, "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for k, seq in enumerate(sequences.values()):
            f.writelines(f"u{k}\ti{index[v]}\t{t}\n" for t, v in enumerate(seq))
    return path


ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRAIN_LINE = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s")
VALID_LINE = re.compile(r"epoch (\d+) evaluating \[time: ([\d.]+)s")


def run_recbole(python: Path, cfg: dict, data_path: Path, name: str, work: Path, threads: int) -> dict:
    """RecBole in its venv; streams its epoch lines, keeps the whole log in <work>/recbole.log."""
    (work / "recbole-config.json").write_text(json.dumps(cfg, indent=1))
    result_path = work / "recbole-result.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [str(python), str(REPO / "benchmarks" / "recbole_run.py"), "--data-path", str(data_path),
           "--dataset", name, "--config", str(work / "recbole-config.json"), "--out", str(result_path)]
    train_log, valid_log, lines = {}, {}, []
    started = time.perf_counter()
    with subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc, \
            open(work / "recbole.log", "w") as log:
        for raw in proc.stdout:
            line = ANSI.sub("", raw.rstrip("\n"))
            log.write(line + "\n")
            lines.append(line)
            if m := TRAIN_LINE.search(line):
                train_log[int(m[1])] = float(m[2])
            if m := VALID_LINE.search(line):
                valid_log[int(m[1])] = float(m[2])
            if TRAIN_LINE.search(line) or VALID_LINE.search(line) or line.startswith("recbole_run:") \
                    or "Traceback" in line or "Error" in line:
                print(f"  recbole| {line.strip()}", flush=True)
    if proc.returncode != 0 or not result_path.exists():
        print("\n".join(lines[-40:]), file=sys.stderr)
        sys.exit(f"recbole_compare: RecBole failed (exit {proc.returncode}); full log {work / 'recbole.log'}")
    result = json.loads(result_path.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    result["train_seconds_log"] = [train_log[k] for k in sorted(train_log)]
    result["valid_seconds_log"] = [valid_log[k] for k in sorted(valid_log)]
    return result


def validation_seconds(checkpoint: str, sequences, item_ids, cfg, repeats: int = 2) -> float:
    """One validation pass of our best model as fit() runs it (srs.evaluate on the valid
    cases, full ranking, cfg.threads_per_worker threads), timed in-process: the mean of `repeats`."""
    import torch
    from safetensors.torch import load_file

    from srs import build_model, evaluate
    from srs.data import build_tensors
    from srs.metrics import tail_items

    torch.set_num_threads(cfg.threads_per_worker)
    data = build_tensors(sequences, item_ids, cfg.max_len)
    model = build_model("id", data.n_items, cfg)
    model.load_state_dict(load_file(str(Path(checkpoint) / "model.safetensors")))
    tail = tail_items(data.train_seen, data.n_items)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate(model, data.valid_inputs, data.valid_seen, data.valid_targets, tail)
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def run_ours(sequences, item_ids, cfg, work: Path) -> dict:
    from cluster.config import RayConfig
    from cluster.runtime import init_ray
    from srs import train
    from srs.data import build_tensors

    init_ray(RayConfig(num_cpus=2, log_to_driver=False))
    storage = work / "ours"
    storage.mkdir(parents=True, exist_ok=True)
    r = train(sequences, item_ids, cfg, "id", runner="ray", storage_path=str(storage))
    train_s = getattr(r, "train_seconds_per_epoch", None)  # training alone, measured in fit()
    if train_s is not None and train_s > 0:
        valid_s, how = r.seconds_per_epoch - train_s, "measured in fit()"
    else:
        valid_s, how = validation_seconds(r.checkpoint, sequences, item_ids, cfg), "estimated"
        train_s = r.seconds_per_epoch - valid_s
    data = build_tensors(sequences, item_ids, cfg.max_len)
    return {"test": r.test, "epochs": r.epochs, "best_epoch": r.best_epoch, "seconds": r.seconds,
            "epoch_s_total": r.seconds_per_epoch, "valid_epoch_s": valid_s, "train_epoch_s": train_s,
            "train_epoch_s_source": how, "valid_curve": r.valid_curve,
            "train_rows": int(len(data.train_inputs)), "train_targets": int((data.train_targets != 0).sum())}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def report(args, ours: dict, rb: dict, cfg, info: str) -> tuple[str, list[dict]]:
    rb_train = rb["train_seconds_log"] or rb["train_seconds"]
    rb_valid = rb["valid_seconds_log"] or rb["valid_seconds"]
    own, masked = rb["test_recbole"], rb["test_full_masked"]
    rows = [
        {"system": "ours", "eval": "full, history masked", "HR@10": ours["test"]["HR@10"],
         "NDCG@10": ours["test"]["NDCG@10"], "MRR": ours["test"]["MRR"], "train_epoch_s": ours["train_epoch_s"],
         "valid_epoch_s": ours["valid_epoch_s"], "epoch_s_total": ours["epoch_s_total"], "epochs": ours["epochs"],
         "best_epoch": ours["best_epoch"], "train_targets": ours["train_targets"]},
        {"system": "recbole", "eval": "full, history masked (ours)", "HR@10": masked["HR@10"],
         "NDCG@10": masked["NDCG@10"], "MRR": masked["MRR"], "train_epoch_s": mean(rb_train),
         "valid_epoch_s": mean(rb_valid), "epoch_s_total": mean(rb_train) + mean(rb_valid), "epochs": rb["epochs"],
         "best_epoch": rb["best_epoch"], "train_targets": rb["split"]["train_examples"]},
        {"system": "recbole", "eval": "RecBole's own (no history mask, MRR@10)", "HR@10": own["hit@10"],
         "NDCG@10": own["ndcg@10"], "MRR": own["mrr@10"], "train_epoch_s": mean(rb_train),
         "valid_epoch_s": mean(rb_valid), "epoch_s_total": mean(rb_train) + mean(rb_valid), "epochs": rb["epochs"],
         "best_epoch": rb["best_epoch"], "train_targets": rb["split"]["train_examples"]},
    ]
    table = ["| system | test ranking | HR@10 | NDCG@10 | MRR | train s/epoch | valid s/epoch | train+valid s/epoch "
             "| epochs | best epoch | train targets/epoch |", "|---" * 11 + "|"]
    for r in rows:
        table.append(f"| {r['system']} | {r['eval']} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} | {r['MRR']:.4f} | "
                     f"{r['train_epoch_s']:.1f} | {r['valid_epoch_s']:.1f} | {r['epoch_s_total']:.1f} | {r['epochs']} | "
                     f"{r['best_epoch']} | {r['train_targets']} |")
    return info + "\n\n" + "\n".join(table) + "\n", rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    python = ensure_recbole_venv()
    if args.setup_only:
        return
    cfg = our_config(args)
    threads = cfg.num_workers * cfg.threads_per_worker
    out = Path(args.out)
    work = (out / f"recbole-{args.dataset}-work").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()[0]

    sequences, item_ids = load_data(args.dataset)
    name = "gr-" + re.sub(r"[^A-Za-z0-9_-]", "_", Path(args.dataset).name)  # not a RecBole preset name (ml-100k has one)
    inter = write_atomic(sequences, item_ids, work / "data", name)
    n_inter = sum(len(s) for s in sequences.values())
    print(f"{args.dataset}: {len(sequences)} users, {len(item_ids)} items, {n_inter} interactions -> {inter}", flush=True)

    print(f"recbole: SASRec, {args.epochs} epochs, {threads} thread(s)", flush=True)
    rb = run_recbole(python, recbole_config(cfg, threads, work), work / "data", name, work, threads)
    split = rb["split"]
    print(f"recbole: split {'matches' if split['same_as_leave_one_out'] else 'DIFFERS FROM'} ours: "
          f"{split['users_recbole']} users, {split['items_recbole']} items (+[PAD]), "
          f"{split['train_examples']} train examples, {split['valid_cases']}/{split['test_cases']} valid/test cases, "
          f"mismatches {split['mismatches']}", flush=True)
    if split["items_recbole"] != len(item_ids) or split["users_recbole"] != len(sequences):
        print(f"recbole_compare: WARNING item/user counts differ from ours ({len(item_ids)} items, "
              f"{len(sequences)} users)", flush=True)

    print(f"ours: SASRec (id, ce, full), {args.epochs} epochs, {threads} thread(s)", flush=True)
    ours = run_ours(sequences, item_ids, cfg, work)
    load_after = os.getloadavg()[0]

    info = (f"recbole-{args.dataset}: {started}, seed {args.seed}, {args.epochs} epochs max, patience {cfg.patience}; "
            f"{len(sequences)} users, {len(item_ids)} items, {n_inter} interactions; RecBole {rb['recbole']} "
            f"(torch {rb['torch']}) vs ours, {threads} thread(s) each, run one after the other; load average "
            f"{load_before:.1f} before, {load_after:.1f} after; split check: "
            f"{'same as ours' if split['same_as_leave_one_out'] else 'DIFFERENT: ' + json.dumps(split['mismatches'])}; "
            f"config hidden {cfg.hidden_size}, inner {cfg.hidden_size}, layers {cfg.num_layers}, heads {cfg.num_heads}, "
            f"max_len {cfg.max_len}, dropout {cfg.dropout}, CE, batch {cfg.batch_size}, lr {cfg.lr}. "
            + (f"Ours' train s/epoch = seconds_per_epoch ({ours['epoch_s_total']:.1f}, train+valid) minus one "
               f"validation pass of the best model timed after training ({ours['valid_epoch_s']:.1f})"
               if ours["train_epoch_s_source"] == "estimated" else "Ours' train s/epoch measured in fit()")
            + "; RecBole's train and valid s/epoch from its log.")
    text, rows = report(args, ours, rb, cfg, info)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"recbole-{args.dataset}.md").write_text(text)
    with open(out / f"recbole-{args.dataset}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (work / "ours-result.json").write_text(json.dumps(ours, indent=1))
    print(text, flush=True)
    a, b = rows[0]["train_epoch_s"], rows[1]["train_epoch_s"]
    print(f"recbole_compare: dataset={args.dataset} ours_HR@10={rows[0]['HR@10']:.4f} "
          f"recbole_HR@10={rows[1]['HR@10']:.4f} ours_NDCG@10={rows[0]['NDCG@10']:.4f} "
          f"recbole_NDCG@10={rows[1]['NDCG@10']:.4f} ours_epoch_s={a:.1f} recbole_epoch_s={b:.1f} "
          f"epoch_ratio={a / b:.3f}", flush=True)


if __name__ == "__main__":
    main()
