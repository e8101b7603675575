"""Fine-tuning job: train a LoRA adapter with one objective and publish it as a peft directory.

    python -m jobs.finetune --objective scft --dataset amazon-beauty --max-steps 200 --out ./store/adapters/scft
    ray job submit --working-dir . -- python -m jobs.finetune --objective ger --out s3://bucket/adapters/ger

Objectives: scft (LLMEmb's contrastive fine-tuning), ger (GER's attribute scorer), tslrec
(TSLRec's user-level SFT; also writes the knowledge embeddings run). The adapter at --out loads
with peft and in the embedding job (`guidedrec embed --adapter name=<out>`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import typer

from cluster import ConfigError, StorageError, load_config


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         objective: str = typer.Option(..., help="scft | ger | tslrec"),
         dataset: str = typer.Option(None, help="Override dataset.name"),
         max_steps: int = typer.Option(None, help="Override finetune.max_steps"),
         out: str = typer.Option(..., help="Adapter directory to write: a local path or s3://bucket/prefix"),
         resume: bool = typer.Option(False, help="Continue from the last checkpoint under --out"),
         overwrite: bool = typer.Option(False, help="Replace a committed adapter at --out")) -> None:
    """Fine-tune the configured LLM with LoRA and publish the adapter, loss curve and summary."""
    from llm.finetune import finetune

    cfg = load_config(config, {"dataset.name": dataset} if dataset else None)
    finetune(cfg, objective, out, max_steps=max_steps, resume=resume, overwrite=overwrite)


def cli() -> None:
    """`python -m jobs.finetune`: bad input prints one line and exits 2, as `guidedrec` does."""
    app = typer.Typer(add_completion=False)
    app.command()(main)
    try:
        app(standalone_mode=False)
    except click.ClickException as e:  # usage errors: click's own message
        e.show()
        sys.exit(e.exit_code)
    except (ConfigError, StorageError, FileNotFoundError, ValueError, KeyError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    cli()
