"""Are GER explanations faithful to the model? For the published `ger` SRS model of a catalog, over N
test recommendations: zeroing the recommended item's top supporting attribute (index.explain) must
lower the model's score of it more than zeroing a random other attribute of it.

    python benchmarks/faithfulness.py --dataset ml-100k [--config ray_config.yaml] [-n 1000] [--seed 42]

A test recommendation: a test user's (leave-one-out: all items but the last as history) top-ranked
item, the history excluded (more per user when there are fewer test users than N). The attribute
scores are the model's own: its frozen z-scored table (so the z-scoring over the items it ranks);
the user's profile is the mean of the history items' rows, as index.explain builds one from a
history. Zeroing sets one attribute of the item's row to 0 (the attribute's mean) and rescores.
A recommendation with no supporting attribute (no positive support) is skipped and counted. The
last line reads
`faithfulness: dataset=<name> run=<run> top_drop=<mean> random_drop=<mean> share=<top > random> cases=<n>`.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository's packages, not benchmarks/srs.py


def main(argv: list[str] | None = None) -> None:
    from catalog import leave_one_out, user_sequences
    from cluster import load_config, store_from_config
    from cluster.layout import catalog_file, catalog_name, live_run, run_dir
    from index import Recommender
    from index.explain import explain, scores_run
    from srs.data import pad_left
    from srs.published import find_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="ray_config.yaml (default: built-in defaults)")
    p.add_argument("--dataset", help="overrides dataset.name")
    p.add_argument("-n", type=int, default=1000, help="test recommendations")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)

    cfg = load_config(args.config, {"dataset.name": args.dataset} if args.dataset else None)
    store = store_from_config(cfg)
    run = live_run(cfg, store)
    rec = Recommender.load(store, find_model(store, run, "ger"))
    names = store.manifest(run_dir(scores_run(store, run)))["attributes"]["names"]
    guided = rec.model.items.guided   # [n_items, A], row i = model item i + 1
    if guided.shape[1] != len(names):
        raise SystemExit(f"faithfulness: the model holds {guided.shape[1]} attribute scores, its run {len(names)}")
    sequences = user_sequences(store.read_parquet(catalog_file(catalog_name(cfg), "interactions")))
    known = set(rec.item_ids)
    tests = [history for history, _ in leave_one_out(sequences).test.values() if known.issuperset(history)]
    rng = np.random.default_rng(args.seed)
    users = [tests[i] for i in rng.permutation(len(tests))]
    per_user = math.ceil(args.n / max(len(users), 1))

    @torch.no_grad()
    def score(seq: torch.Tensor, index: int, attribute: int | None = None) -> float:
        """The model's score of item `index` after `seq`, with one of the item's attribute scores zeroed."""
        kept = guided[index - 1].clone()
        if attribute is not None:
            guided[index - 1, attribute] = 0.0
        value = float(rec.model.score_all(seq)[0, index])
        guided[index - 1] = kept
        return value

    top_drops, random_drops, skipped = [], [], 0
    for history in users:
        rows = rec.encode(history)
        seq = torch.from_numpy(pad_left([rows], rec.max_len))
        profile = guided[[r - 1 for r in rows]].mean(0).numpy()
        for item in rec.recommend(history, per_user, exclude=history)[0]:
            if len(top_drops) + skipped >= args.n:
                break
            index = rec.encode([item])[0]
            why = explain(item, names, profile, guided[index - 1].numpy(), "history")
            if not why.supporting:
                skipped += 1
                continue
            top = names.index(why.supporting[0].name)
            other = int(rng.choice([k for k in range(len(names)) if k != top]))
            base = score(seq, index)
            top_drops.append(base - score(seq, index, top))
            random_drops.append(base - score(seq, index, other))
    if not top_drops:
        raise SystemExit(f"faithfulness: no recommendation of the {skipped} has a supporting attribute")
    top, random = np.asarray(top_drops), np.asarray(random_drops)
    print(f"{len(top)} recommendations ({skipped} without a supporting attribute skipped) of model {rec.where}:")
    print(f"  zeroing the top supporting attribute lowers the score by {top.mean():.4f} on average, "
          f"a random other attribute by {random.mean():.4f}; top > random in {(top > random).mean():.1%}")
    print(f"faithfulness: dataset={catalog_name(cfg)} run={run} top_drop={top.mean():.4f} "
          f"random_drop={random.mean():.4f} share={(top > random).mean():.3f} cases={len(top)}")


if __name__ == "__main__":
    main()
