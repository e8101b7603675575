"""Fine-tuning job: train a LoRA adapter with one objective and publish it as a peft directory.

    python -m jobs.finetune --objective scft --dataset amazon-beauty --max-steps 200 --out ./store/adapters/scft
    ray job submit --working-dir . -- python -m jobs.finetune --objective ger --out s3://bucket/adapters/ger

Objectives: scft (LLMEmb's contrastive fine-tuning), ger (GER's attribute scorer), tslrec
(TSLRec's user-level SFT; also writes the knowledge embeddings run). The adapter at --out loads
with peft and in the embedding job (`guidedrec embed --adapter name=<out>`).
"""
from __future__ import annotations

from pathlib import Path

import typer

from cluster import load_config
from jobs.runner import VERBOSE, run_job


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         objective: str = typer.Option(..., help="scft | ger | tslrec"),
         dataset: str = typer.Option(None, help="Override dataset.name"),
         max_steps: int = typer.Option(None, help="Override finetune.max_steps"),
         out: str = typer.Option(..., help="Adapter directory to write: a local path or s3://bucket/prefix"),
         resume: bool = typer.Option(False, help="Continue from the last checkpoint under --out"),
         overwrite: bool = typer.Option(False, help="Replace a committed adapter at --out"),
         verbose: bool = VERBOSE) -> None:
    """Fine-tune the configured LLM with LoRA and publish the adapter, loss curve and summary."""
    from llm.finetune import finetune

    cfg = load_config(config, {"dataset.name": dataset} if dataset else None)
    cfg.ray.verbose |= verbose
    finetune(cfg, objective, out, max_steps=max_steps, resume=resume, overwrite=overwrite)


if __name__ == "__main__":
    run_job(main)
