"""RecBole 1.2.1 SASRec on prepared atomic files: runs INSIDE .venv-recbole, imports nothing of ours.

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 .venv-recbole/bin/python benchmarks/recbole_run.py \\
        --data-path DIR --dataset NAME --config config.json --out result.json

DIR/NAME/NAME.inter holds user_id:token, item_id:token, timestamp:float (the item's position
in its user's sequence). `config.json` is RecBole's config dict plus "threads". Besides
training and RecBole's own test evaluation this script

- checks RecBole's split against the leave-one-out one the sequences imply (every valid/test
  case's user, history and target; the multiset of training (user, target) pairs; the counts
  of users and items, RecBole's [PAD] item aside) and reports it as "split";
- ranks the test cases again with RecBole's best model under the comparison's protocol: all
  items, the user's whole history before the target masked except the target itself, ties
  counted against the target, MRR untruncated ("test_full_masked"). RecBole's own full-sort
  evaluator masks no history for sequential models ("test_recbole", MRR@10 truncated);
- times every training and validation epoch (its own perf_counter around RecBole's
  _train_epoch/_valid_epoch, beside RecBole's logged times, which the caller parses).

Writes everything as JSON to --out.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

KS = (5, 10, 20)


def read_sequences(path: Path) -> dict[str, list[str]]:
    """user token -> item tokens ordered by the timestamp column (positions)."""
    rows: dict[str, list[tuple[float, str]]] = defaultdict(list)
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        u, i, t = (header.index(c) for c in ("user_id:token", "item_id:token", "timestamp:float"))
        for row in reader:
            rows[row[u]].append((float(row[t]), row[i]))
    return {user: [item for _, item in sorted(seq)] for user, seq in rows.items()}


def tokens(dataset, field: str, ids) -> list[str]:
    return [str(x) for x in dataset.id2token(field, ids)]


def check_split(dataset, train, valid, test, sequences: dict[str, list[str]], max_len: int) -> dict:
    """Compare RecBole's split with leave-one-out on `sequences`; returns counts and mismatches."""
    uid, iid = dataset.uid_field, dataset.iid_field
    seq_field, len_field = dataset.item_id_list_field, dataset.item_list_length_field
    out = {
        "users_file": len(sequences),
        "items_file": len({v for s in sequences.values() for v in s}),
        "interactions_file": sum(len(s) for s in sequences.values()),
        "users_recbole": dataset.user_num - 1,  # minus [PAD]
        "items_recbole": dataset.item_num - 1,
        "train_examples": len(train.inter_feat),
        "valid_cases": len(valid.inter_feat),
        "test_cases": len(test.inter_feat),
    }
    eligible = {u: s for u, s in sequences.items() if len(s) >= 3}
    out["train_examples_expected"] = sum(len(s) - 3 for s in eligible.values())
    out["eval_cases_expected"] = len(eligible)
    mismatches = {}
    for name, part, drop in (("valid", valid, 2), ("test", test, 1)):
        feat = part.inter_feat
        users = tokens(dataset, uid, feat[uid].numpy())
        targets = tokens(dataset, iid, feat[iid].numpy())
        hist, lens = feat[seq_field].numpy(), feat[len_field].numpy()
        bad, seen = 0, set()
        for r, user in enumerate(users):
            seq = sequences[user]
            history = tokens(dataset, iid, hist[r, :lens[r]])
            if targets[r] != seq[-drop] or history != seq[:-drop][-max_len:] or user in seen:
                bad += 1
            seen.add(user)
        mismatches[name] = bad + len(set(eligible) - seen)
    feat = train.inter_feat
    got = Counter(zip(tokens(dataset, uid, feat[uid].numpy()), tokens(dataset, iid, feat[iid].numpy())))
    want = Counter((u, v) for u, s in eligible.items() for v in s[1:-2])
    mismatches["train"] = sum(((got - want) + (want - got)).values())
    out["mismatches"] = mismatches
    out["same_as_leave_one_out"] = (
        not any(mismatches.values()) and out["users_recbole"] == out["users_file"]
        and out["items_recbole"] == out["items_file"] and out["train_examples"] == out["train_examples_expected"]
        and out["valid_cases"] == out["test_cases"] == out["eval_cases_expected"])
    return out


def rank_full_masked(model, test_data, dataset, sequences: dict[str, list[str]], device) -> dict[str, float]:
    """Test metrics of `model` with the whole history before the target masked (target kept)."""
    import torch

    uid, iid = dataset.uid_field, dataset.iid_field
    history = {}
    for user, seq in sequences.items():
        if len(seq) >= 3:
            history[int(dataset.token2id(uid, user))] = torch.as_tensor(dataset.token2id(iid, seq[:-1]), dtype=torch.int64)
    ranks = []
    model.eval()
    with torch.no_grad():
        for interaction, _, _, positive_i in test_data:
            interaction = interaction.to(device)
            scores = model.full_sort_predict(interaction).view(len(positive_i), -1).float()
            scores[:, 0] = -math.inf  # [PAD]
            targets = positive_i.to(device)
            target_scores = scores.gather(1, targets.unsqueeze(1))
            for r, u in enumerate(interaction[uid].tolist()):
                scores[r, history[u]] = -math.inf
            scores.scatter_(1, targets.unsqueeze(1), target_scores)  # the target is always ranked
            ranks.append((scores >= target_scores).sum(1) - 1)
    r = torch.cat(ranks).double()
    out = {f"HR@{k}": float((r < k).double().mean()) for k in KS}
    out.update({f"NDCG@{k}": float(((r < k).double() / torch.log2(r + 2)).mean()) for k in KS})
    out["MRR"] = float((1.0 / (r + 1)).mean())
    out["cases"] = int(len(r))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-path", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--config", required=True, help="JSON: RecBole config dict plus 'threads'")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    threads = int(cfg.pop("threads", 1))

    import torch

    torch.set_num_threads(threads)
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    started = time.perf_counter()
    config = Config(model="SASRec", dataset=args.dataset, config_dict={**cfg, "data_path": args.data_path})
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    sequences = read_sequences(Path(args.data_path, args.dataset, f"{args.dataset}.inter"))
    split = check_split(dataset, train_data._dataset, valid_data._dataset, test_data._dataset, sequences,
                        config["MAX_ITEM_LIST_LENGTH"])
    print(f"recbole_run: split {json.dumps(split)}", flush=True)
    data_s = time.perf_counter() - started

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)
    train_s: list[float] = []
    valid_s: list[float] = []
    curve: list[float] = []

    def timed(fn, into):
        def run(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                into.append(time.perf_counter() - t0)
        return run

    trainer._train_epoch = timed(trainer._train_epoch, train_s)
    trainer._valid_epoch = timed(trainer._valid_epoch, valid_s)
    fit_started = time.perf_counter()
    best_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                                         callback_fn=lambda epoch, score: curve.append(float(score)))
    fit_s = time.perf_counter() - fit_started
    # RecBole keeps the last epoch reaching the best score (it updates on >=).
    best_epoch = max(i for i, s in enumerate(curve) if s == max(curve)) + 1 if curve else 0
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    masked = rank_full_masked(trainer.model, test_data, dataset, sequences, config["device"])
    result = {
        "recbole": recbole.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "split": split,
        "train_seconds": train_s,
        "valid_seconds": valid_s,
        "valid_curve": curve,
        "epochs": len(train_s),
        "best_epoch": best_epoch,
        "best_valid": {k: float(v) for k, v in (best_valid or {}).items()},
        "test_recbole": {k: float(v) for k, v in test.items()},
        "test_full_masked": masked,
        "data_seconds": data_s,
        "fit_seconds": fit_s,
        "seconds": time.perf_counter() - started,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"recbole_run: wrote {args.out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
