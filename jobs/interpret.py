"""RecInterpreter job: train the linear adapter that lets the frozen LLM read a published SRS's states.

    python -m jobs.interpret --dataset ml-100k --task residual --max-steps 200
    ray job submit --working-dir . -- python -m jobs.interpret --config cluster.yaml --task recovery --out s3://bucket/adapters/x

Needs the data set's published SRS model (`guidedrec ingest` then `guidedrec train`, with srs.sources
including interpret.source, `id` by default). Runs in the fine-tuning loop (finetune.trainer) with the
LLM frozen: steps, batch size and learning rate are finetune's. The adapter (interpret_heads.safetensors)
and its manifest, committed last, are what `guidedrec describe` and the service's /describe read.
"""
from __future__ import annotations

from pathlib import Path

import typer

from cluster import store_from_config
from cluster.layout import adapter_dir
from jobs.runner import DATASET_HELP, VERBOSE, job_config

OBJECTIVE = "interpret"


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         dataset: str = typer.Option(None, help=DATASET_HELP),
         task: str = typer.Option(None, help="residual | recovery (overrides interpret.task)"),
         max_steps: int = typer.Option(None, help="Override finetune.max_steps"),
         out: str = typer.Option(None, help="Adapter directory to write: a local path or s3://bucket/prefix "
                                 "(default: adapters/<run>-interpret in the configured storage, where describe "
                                 "and the service look)"),
         resume: bool = typer.Option(False, help="Continue from the last checkpoint under --out"),
         overwrite: bool = typer.Option(False, help="Replace a committed adapter at --out"),
         verbose: bool = VERBOSE) -> None:
    """Train the RecInterpreter adapter (SRS state -> LLM input tokens) and publish it with its manifest."""
    from finetune import finetune

    overrides = {key: value for key, value in {"dataset.name": dataset, "interpret.task": task}.items() if value}
    cfg = job_config(config, verbose, overrides, out=out)
    out = out or store_from_config(cfg).full_uri(adapter_dir(cfg, OBJECTIVE))
    finetune(cfg, OBJECTIVE, out, max_steps=max_steps, resume=resume, overwrite=overwrite)


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
