"""Why an item suits a catalog user, by GER's attributes (index.explain): per attribute the user's and
the item's z-scores and GER's normalized difference, then the attributes that most support and most
oppose the item, in words.

    guidedrec explain --user 196 --item 242 --plot why.png --config ray_config.yaml
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

from cluster import store_from_config
from index.explain import Explanation, explain_catalog_user, plot
from jobs.runner import DATASET_HELP, VERBOSE, job_config


def format_explanation(e: Explanation) -> str:
    width = max(len(a.name) for a in e.attributes)
    lines = [f"why {e.item_id} (user profile: {e.profile}); z-scores:",
             f"  {'attribute':<{width}}    user    item   diff"]
    lines += [f"  {a.name:<{width}}  {a.user:+6.2f}  {a.item:+6.2f}  {a.difference:+6.2f}" for a in e.attributes]
    for title, reasons in (("supports it", e.supporting), ("opposes it", e.opposing)):
        lines += [f"{title}:", *([f"  {r.sentence}" for r in reasons] or ["  (no attribute)"])]
    return "\n".join(lines)


def main(user: str = typer.Option(..., help="A user id of the catalog's interactions"),
         item: str = typer.Option(..., help="A catalog item id"),
         plot_to: Path = typer.Option(None, "--plot", help="Also draw the scores as a bar chart (PNG) here"),
         config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help=DATASET_HELP),
         verbose: bool = VERBOSE) -> None:
    """Print why ITEM suits USER by the GER attribute scores (needs `guidedrec embed --attributes`)."""
    cfg = job_config(config, verbose, {"dataset.name": dataset} if dataset else None)
    if plot_to and importlib.util.find_spec("matplotlib") is None:
        raise typer.BadParameter("drawing needs matplotlib, which is not installed: pip install matplotlib",
                                 param_hint="--plot")
    explanation = explain_catalog_user(cfg, store_from_config(cfg), user, item)
    print(format_explanation(explanation))
    if plot_to:
        plot(explanation, plot_to)
        print(f"plot -> {plot_to}")


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
