"""Does a fine-tuned GER scorer keep its teacher's per-item answers? Two committed attribute runs
compared item by item.

    python benchmarks/attribute_agreement.py amazon-beauty-smollm2-base-attrs amazon-beauty-smollm2-ger-attrs

Per attribute: each run's mean and std over the shared items (1-9 scale) and the Spearman rank
correlation between them. A tuned scorer whose std fell far below the base one's AND whose ranks
no longer follow it has collapsed to one answer (what the ger SRS source then reads after
z-scoring is noise). The last line reads
`attribute_agreement: items=<n> std_ratio=<median tuned/base> spearman=<median>`.
"""
from __future__ import annotations

import argparse
import statistics

import pandas as pd


def main(argv: list[str] | None = None) -> None:
    from cluster.storage import Store
    from llm.runs import read_attributes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="committed attribute run of the reference scorer (e.g. the base model)")
    p.add_argument("tuned", help="committed attribute run to compare with it")
    p.add_argument("--store", default="./store")
    args = p.parse_args(argv)

    store = Store(args.store)
    base_ids, base, names = read_attributes(store, args.base)
    tuned_ids, tuned, tuned_names = read_attributes(store, args.tuned)
    if names != tuned_names:
        raise SystemExit(f"attribute_agreement: the runs score different attributes: {names} vs {tuned_names}")
    where = {item: i for i, item in enumerate(tuned_ids)}
    shared = [i for i, item in enumerate(base_ids) if item in where]
    if len(shared) < 2:
        raise SystemExit(f"attribute_agreement: {len(shared)} items in both runs")
    base, tuned = base[shared], tuned[[where[base_ids[i]] for i in shared]]

    print(f"| attribute | {args.base} mean / std | {args.tuned} mean / std | std ratio | Spearman |")
    print("|---|---|---|---|---|")
    ratios, rhos = [], []
    for k, name in enumerate(names):
        ratio = tuned[:, k].std() / base[:, k].std() if base[:, k].std() > 0 else float("nan")
        rho = pd.Series(base[:, k]).rank().corr(pd.Series(tuned[:, k]).rank())  # Spearman: Pearson of the ranks
        ratios.append(ratio)
        rhos.append(rho)
        print(f"| {name} | {base[:, k].mean():.2f} / {base[:, k].std():.3f} | {tuned[:, k].mean():.2f} / "
              f"{tuned[:, k].std():.3f} | {ratio:.3f} | {rho:.3f} |")
    print(f"attribute_agreement: items={len(shared)} std_ratio={statistics.median(ratios):.3f} "
          f"spearman={statistics.median(rhos):.3f}")


if __name__ == "__main__":
    main()
