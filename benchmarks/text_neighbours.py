"""How well does an item's text embedding alone find the item a user takes next? A screen for item-text
variants (pooling, whitening, adapters) that trains nothing, before the SRS runs that take most of an hour each here.

    python benchmarks/text_neighbours.py --dataset amazon-beauty
    python benchmarks/text_neighbours.py --dataset amazon-beauty --run amazon-beauty-smollm2-scft --pca 128 --whiten

Reads the committed embeddings run (default: the dataset's untuned run) and the catalog's training interactions (each
user's sequence without its last two items, the SRS's leave-one-out split), samples `--pairs` consecutive pairs (a, b)
with a != b, and ranks every other item by cosine to a's embedding, after centering, or after PCA to `--pca`
components (`--whiten`: each scaled to unit variance, as srs.pca_whiten does). Reports HR@10, HR@50 and MRR of b, and
HR@50 on the pairs whose b is a tail item (srs.metrics.tail_items: the 80% least popular in training). Chance HR@50 is 50 / items.
The last line reads `text_neighbours: dataset=<d> run=<r> variant=<v> HR@10=<x> HR@50=<x> tailHR@50=<x> MRR=<x>`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def next_item_pairs(sequences: dict[str, list[str]], position: dict[str, int]) -> np.ndarray:
    """(a, b) item positions of consecutive training items, the last two of each sequence held out."""
    return np.array([(position[s[j]], position[s[j + 1]]) for s in sequences.values()
                     for j in range(len(s) - 3) if s[j] != s[j + 1]], dtype=np.int64).reshape(-1, 2)


def ranks(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Rank of b among all items but a, by cosine to a (0 = first)."""
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x[pairs[:, 0]] @ x.T
    sim[np.arange(len(pairs)), pairs[:, 0]] = -np.inf
    return (sim > sim[np.arange(len(pairs)), pairs[:, 1]][:, None]).sum(1)


def main(argv: list[str] | None = None) -> None:
    from catalog import load_catalog, ranked_items, user_sequences
    from cluster.config import Config, DatasetConfig
    from cluster.layout import run_name
    from cluster.storage import Store
    from llm.runs import aligned_vectors
    from srs.data import Ragged
    from srs.fusion import PCA
    from srs.metrics import tail_items

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="amazon-beauty")
    p.add_argument("--store", default="./store")
    p.add_argument("--run", help="embeddings run (default: the dataset's untuned run)")
    p.add_argument("--pca", type=int, help="reduce to this many principal components first")
    p.add_argument("--whiten", action="store_true", help="with --pca: every component at unit variance")
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.whiten and not args.pca:
        p.error("--whiten needs --pca")

    catalog = load_catalog(DatasetConfig(name=args.dataset))
    sequences = user_sequences(catalog.interactions)
    item_ids = ranked_items(catalog.items["item_id"].to_pylist(), catalog.interactions)
    run = args.run or run_name(Config(dataset=DatasetConfig(name=args.dataset)))
    x = aligned_vectors(Store(args.store), run, item_ids)
    position = {item: k for k, item in enumerate(item_ids)}
    pairs = next_item_pairs(sequences, position)
    if len(pairs) > args.pairs:
        pairs = pairs[np.random.default_rng(args.seed).choice(len(pairs), args.pairs, replace=False)]
    train = Ragged.from_rows([[position[i] + 1 for i in s[:-2]] for s in sequences.values()])   # 1-based, as the SRS
    tail = tail_items(train, len(item_ids))[1:]
    if args.pca:   # the SRS's own reduction (one scale factor beside it, which cosine ignores)
        with torch.no_grad():
            x = PCA(x, args.pca, args.whiten)(torch.from_numpy(x)).numpy()
    r = ranks(x - x.mean(0), pairs)
    t = tail[pairs[:, 1]]
    variant = f"pca{args.pca}{'-white' if args.whiten else ''}" if args.pca else "centered"
    print(f"{len(item_ids)} items, {len(pairs)} pairs ({t.sum()} to tail items); chance HR@50 {50 / len(item_ids):.4f}")
    print(f"text_neighbours: dataset={args.dataset} run={run} variant={variant} HR@10={(r < 10).mean():.4f} "
          f"HR@50={(r < 50).mean():.4f} tailHR@50={(r[t] < 50).mean():.4f} MRR={np.mean(1 / (r + 1)):.4f}")


if __name__ == "__main__":
    main()
