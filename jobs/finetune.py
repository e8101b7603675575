"""Fine-tuning job: train a LoRA adapter with one objective and publish it as a peft directory.

    python -m jobs.finetune --objective scft --dataset amazon-beauty --max-steps 200 --out ./store/adapters/scft
    ray job submit --working-dir . -- python -m jobs.finetune --config cluster.yaml --objective ger --out s3://bucket/adapters/ger

Objectives: scft (LLMEmb's contrastive fine-tuning), ger (GER's attribute scorer), tslrec
(TSLRec's user-level SFT; also writes the knowledge embeddings run), interpret (RecInterpreter's
adapter over a frozen LLM: see jobs.interpret). A LoRA adapter at --out loads
with peft and in the embedding job (`guidedrec embed --adapter name=<out>`).
"""
from __future__ import annotations

from pathlib import Path

import typer

from cluster import store_from_config
from cluster.layout import adapter_dir
from jobs.runner import DATASET_HELP, VERBOSE, job_config, run_job


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         objective: str = typer.Option(..., help="scft | ger | tslrec | interpret (jobs.interpret: the same, with --task)"),
         dataset: str = typer.Option(None, help=DATASET_HELP),
         max_steps: int = typer.Option(None, help="Override finetune.max_steps"),
         out: str = typer.Option(None, help="Adapter directory to write: a local path or s3://bucket/prefix "
                                 "(default: adapters/<dataset>-<objective> in the configured storage)"),
         resume: bool = typer.Option(False, help="Continue from the last checkpoint under --out"),
         overwrite: bool = typer.Option(False, help="Replace a committed adapter at --out"),
         verbose: bool = VERBOSE) -> None:
    """Fine-tune the configured LLM with LoRA and publish the adapter, loss curve and summary."""
    from finetune import finetune

    cfg = job_config(config, verbose, {"dataset.name": dataset} if dataset else None, out=out)
    out = out or store_from_config(cfg).full_uri(adapter_dir(cfg, objective))
    finetune(cfg, objective, out, max_steps=max_steps, resume=resume, overwrite=overwrite)


if __name__ == "__main__":
    run_job(main)
