"""`guidedrec`: one CLI whose subcommands are the jobs (each also runs as `python -m jobs.<name>`)."""
from __future__ import annotations

import typer

from jobs import describe, embed, explain, finetune, index, ingest, interpret, pipeline, query, serve, train, update
from jobs.runner import run

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="LLM-guided item embeddings for sequential recommendation, as Ray jobs.")
app.command("ingest")(ingest.main)
app.command("embed")(embed.main)
app.command("index")(index.main)
app.command("train")(train.main)
app.command("query")(query.main)
app.command("explain")(explain.main)
app.command("pipeline")(pipeline.main)
app.command("serve")(serve.main)
app.command("update")(update.main)
app.command("finetune")(finetune.main)
app.command("interpret")(interpret.main)
app.command("describe")(describe.main)


def main() -> None:
    """Console entry point: usage, config and input errors print one clear line, not a traceback."""
    run(app)


if __name__ == "__main__":
    main()
