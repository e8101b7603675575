"""The main job: ingest -> embed -> index -> train -> example queries -> summary (metrics, a sentence
reading them, where the outputs are).

    guidedrec pipeline --config ray_config.yaml
    ray job submit --working-dir . -- python -m jobs.pipeline --config cluster.yaml   # README: "On a cluster"
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import typer

from cluster import Config, init_ray, store_from_config
from cluster.layout import INDEX, model_dir, report_file
from index import similar_items
from jobs.embed import run_embed
from jobs.index import run_index
from jobs.ingest import run_ingest
from jobs.query import format_neighbours
from jobs.runner import DATASET_HELP, VERBOSE, job_config
from jobs.train import format_table, run_train
from srs.catalog_training import wants_attributes


def run_pipeline(cfg: Config, examples: int = 3) -> dict:
    started = time.time()
    store = store_from_config(cfg)
    init_ray(cfg.ray)
    stage = _stages(5)
    stage("ingest")
    catalog, cat = run_ingest(cfg, store)
    stage("embed")
    summary = run_embed(cfg, store)
    if wants_attributes(cfg):  # the ger source reads attribute scores from a run of their own
        run_embed(cfg, store, attributes=True)
    stage("index")
    version = run_index(cfg, store)
    stage("train")
    results = run_train(cfg, store)
    stage("query")
    titles = dict(zip(cat.items["item_id"].to_pylist(), cat.items["title"].to_pylist()))
    popular = [item for item, _ in Counter(cat.interactions["item_id"].to_pylist()).most_common(examples)]
    for item in popular:
        print(format_neighbours(item, similar_items(store, item, k=5), titles.get(item)), flush=True)
    outputs = {"catalog": store.full_uri(catalog), "embeddings": summary["uri"],
               "index": f"{store.full_uri(INDEX)} (CURRENT: {version})",
               **{f"model {source}": store.full_uri(model_dir(summary["run"], source)) for source in cfg.srs.sources},
               "report": store.full_uri(report_file(summary["run"]))}
    seconds = time.time() - started
    print(summary_block(results, outputs, seconds), flush=True)
    return {"embed": summary, "metrics": results, "outputs": outputs, "seconds": seconds}


def _stages(total: int):
    count = iter(range(1, total + 1))

    def stage(name: str) -> None:
        print(f"\n== [{next(count)}/{total}] {name}", flush=True)

    return stage


def summary_block(metrics: dict[str, dict[str, float]], outputs: dict[str, str], seconds: float) -> str:
    """What the run ends with: the metrics table, a sentence reading it, and where everything went."""
    width = max(map(len, outputs))
    return "\n".join(["\n== summary", format_table(metrics), read_table(metrics), "outputs:",
                      *(f"  {name:<{width}}  {uri}" for name, uri in outputs.items()),
                      f"pipeline finished in {seconds:.0f} s"])


def read_table(metrics: dict[str, dict[str, float]]) -> str:
    """The table in one sentence: the best trained source on HR@10 against popularity and ID-only
    (against the best other source when ID-only is the best)."""
    hr = {source: m["HR@10"] for source, m in metrics.items() if source != "popularity"}
    best = max(hr, key=hr.get)
    rivals = sorted((s for s in hr if s != best), key=lambda s: (s != "id", -hr[s]))[:1]
    versus = [_versus(hr[best], "popularity", metrics["popularity"]["HR@10"])]
    versus += [_versus(hr[best], _label(s), hr[s]) for s in rivals]
    return (f"{_label(best)} {'is best on' if rivals else 'scores'} HR@10: its top 10 holds the held-out next item "
            f"for {hr[best]:.1%} of test users, {' and '.join(versus)}.")


def _label(source: str) -> str:
    return "ID-only" if source == "id" else source


def _versus(value: float, name: str, other: float) -> str:
    if other <= 0:
        return f"against 0% for {name}"
    if value >= 2 * other:
        return f"{value / other:.1f}x {name} ({other:.1%})"
    return f"{value / other - 1:+.0%} vs {name} ({other:.1%})"


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help=DATASET_HELP),
         verbose: bool = VERBOSE) -> None:
    """Run the whole pipeline on the configured catalog."""
    cfg = job_config(config, verbose, {"dataset.name": dataset} if dataset else None)
    run_pipeline(cfg)


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
