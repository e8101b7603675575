"""Can the frozen LLM read a SASRec state? RecInterpreter (issue 29 item 5) on a catalog's test users,
beside what needs no LLM.

    python benchmarks/interpret.py --dataset ml-100k --task residual --max-steps 2000 --lr 1e-3
    python benchmarks/interpret.py --dataset ml-100k --task recovery --adapter store/adapters/<run>-interpret

Trains the interpreter (jobs.interpret's job, over the data set's published `interpret.source` SRS,
`guidedrec ingest` + `guidedrec train` first) into --out, or reads a trained one (--adapter), then
generates greedily for each test user (leave-one-out: history = all items but the last, target = the
last) and names items as `guidedrec describe` does (index.describe: exact normalized title, else the
nearest). Items sharing a title count as the same item.
- residual: the states before and after the target is appended -> the named item must be the target.
  Baselines: chance (1 / items), and the item whose SRS embedding is nearest (cosine) to the state
  difference (after - before).
- recovery: the state after the history -> the items named among its `history` most recent ones
  (the adapter's manifest): mean count, and the share of samples with more than 5 (the paper's figure).
  Baselines: the `history` items nearest (cosine) to the state, and chance (naming that many items at
  random: history^2 / items expected).
The last line reads
`interpret: task=residual dataset=<name> samples=<n> residual_acc=<x> nearest_item_acc=<x> chance=<x>` or
`interpret: task=recovery dataset=<name> samples=<n> recovered=<mean> over5=<share> nearest_recovered=<mean>
nearest_over5=<share> chance=<mean>` (one line).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository's packages, not benchmarks/srs.py

PAPER = {"residual": "97.89% (DreamRec states, LLaMA-7B)", "recovery": "> 5 items for over 35% (SASRec, LLaMA-7B)"}


def main(argv: list[str] | None = None) -> None:
    from catalog import leave_one_out, user_sequences
    from cluster import Store, load_config, store_from_config
    from cluster.layout import catalog_file, catalog_name, interpreter_dir, run_name
    from finetune import finetune
    from index.describe import Interpreter, TitleMatcher, catalog_titles, normalize
    from srs.published import srs_states

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="ray_config.yaml (default: built-in defaults)")
    p.add_argument("--dataset", help="overrides dataset.name")
    p.add_argument("--task", choices=["residual", "recovery"], default="residual")
    p.add_argument("--max-steps", type=int, help="training steps (default finetune.max_steps)")
    p.add_argument("--lr", type=float, help="overrides finetune.lr")
    p.add_argument("--out", help="where the trained adapter goes (default adapters/<run>-interpret-<task>-bench)")
    p.add_argument("--adapter", help="evaluate this trained interpreter instead of training one")
    p.add_argument("--users", type=int, help="test users to evaluate, a seeded sample (default: all)")
    p.add_argument("--batch", type=int, default=16, help="samples generated at once")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)

    overrides = {"interpret.task": args.task, **({"dataset.name": args.dataset} if args.dataset else {}),
                 **({"finetune.lr": args.lr} if args.lr else {})}
    cfg = load_config(args.config, overrides)
    store = store_from_config(cfg)
    run = run_name(cfg)
    where = args.adapter
    if where is None:
        where = args.out or store.full_uri(f"{interpreter_dir(run)}-{args.task}-bench")
        finetune(cfg, "interpret", where, max_steps=args.max_steps, overwrite=True, store=store)
    interpreter = Interpreter.load(Store(where, cfg.storage.s3), store, run, cfg.model)
    if interpreter.task != args.task:
        raise SystemExit(f"interpret: {where} was trained for {interpreter.task}, not {args.task}")
    torch.set_num_threads(cfg.finetune.threads_per_worker)

    srs = interpreter.srs
    titles = catalog_titles(cfg, store)
    matcher = TitleMatcher({i: titles.get(i, i) for i in srs.item_ids})
    same = {i: normalize(matcher.titles[i]) for i in srs.item_ids}   # items sharing a title are one item
    known = set(srs.item_ids)
    sequences = user_sequences(store.read_parquet(catalog_file(catalog_name(cfg), "interactions")))
    tests = [(h, t) for h, t in leave_one_out(sequences).test.values() if known.issuperset(h) and t in known]
    order = np.random.default_rng(args.seed).permutation(len(tests))
    tests = [tests[i] for i in order[:args.users]]
    history = interpreter.history
    with torch.no_grad():
        table = torch.nn.functional.normalize(torch.cat(srs.model.items.views(), 1)[1:], dim=-1)

    def states(histories: list[list[str]]) -> torch.Tensor:
        return torch.from_numpy(srs_states(srs.model, srs.max_len, [srs.encode(h) for h in histories]))

    def nearest(vectors: torch.Tensor, k: int) -> list[list[str]]:
        top = (torch.nn.functional.normalize(vectors, dim=-1) @ table.T).topk(k, dim=-1).indices
        return [[srs.item_ids[i] for i in row] for row in top.tolist()]

    hits, baseline = [], []
    for start in range(0, len(tests), args.batch):
        batch = tests[start:start + args.batch]
        if args.task == "residual":
            before, after = states([h for h, _ in batch]), states([h + [t] for h, t in batch])
            texts = interpreter.read(torch.stack([before, after], 1))
            for (_, target), text, near in zip(batch, texts, nearest(after - before, 1)):
                named = matcher.match(text)
                hits.append(bool(named) and same[named[0].item_id] == same[target])
                baseline.append(same[near[0]] == same[target])
        else:
            after = states([h for h, _ in batch])
            texts = interpreter.read(after.unsqueeze(1))
            for (h, _), text, near in zip(batch, texts, nearest(after, history)):
                recent = {same[i] for i in h[-history:]}
                hits.append(len({same[n.item_id] for n in matcher.match(text)} & recent))
                baseline.append(len({same[i] for i in near} & recent))
        print(f"interpret: {min(start + args.batch, len(tests))}/{len(tests)} samples; e.g. {texts[0]!r}", flush=True)

    n, items = len(tests), len(srs.item_ids)
    hits, baseline = np.asarray(hits, float), np.asarray(baseline, float)
    print(f"\n| {args.task} on {cfg.dataset.name} ({n} test users) | value |\n|---|---|")
    if args.task == "residual":
        figures = {"residual_acc": hits.mean(), "nearest_item_acc": baseline.mean(), "chance": 1 / items}
        print(f"| RecInterpreter ({cfg.model.path}, {cfg.interpret.source} {srs.model.__class__.__name__}) | "
              f"{figures['residual_acc']:.4f} |\n| nearest item to the state difference (no LLM) | "
              f"{figures['nearest_item_acc']:.4f} |\n| chance | {figures['chance']:.4f} |\n"
              f"| paper | {PAPER['residual']} |")
    else:
        chance = float(np.mean([min(history, len(h)) ** 2 / items for h, _ in tests]))
        figures = {"recovered": hits.mean(), "over5": (hits > 5).mean(), "nearest_recovered": baseline.mean(),
                   "nearest_over5": (baseline > 5).mean(), "chance": chance}
        print(f"| RecInterpreter: items recovered (of {history}) / share > 5 | {figures['recovered']:.2f} / "
              f"{figures['over5']:.4f} |\n| {history} items nearest the state (no LLM) | "
              f"{figures['nearest_recovered']:.2f} / {figures['nearest_over5']:.4f} |\n| chance | {chance:.2f} / 0 |\n"
              f"| paper | {PAPER['recovery']} |")
    print(f"interpret: task={args.task} dataset={cfg.dataset.name} samples={n} "
          + " ".join(f"{k}={v:.4f}" for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()
