"""How every job runs from the command line (`guidedrec ...` and `python -m jobs.<name>`): bad input
(usage, config, storage, data) prints one line and exits 2 instead of a traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from cluster import ConfigError, StorageError

DATASET_HELP = ("Catalog to use (overrides dataset.name): synthetic, ml-100k, amazon-beauty or amazon-scientific-mini "
                "(read from $DATA_ROOT), or a directory of items + interactions files (README: 'Your own catalog')")
USER_ERRORS = (ConfigError, StorageError, FileNotFoundError, ValueError, KeyError)
# Every job takes it; it sets ray.verbose (see cluster.runtime.init_ray).
VERBOSE = typer.Option(False, "--verbose", help="Also show Ray's own output: worker logs, Ray Train's per-epoch "
                       "lines, Ray Data's progress bars")


def run(app: typer.Typer) -> None:
    try:
        app(standalone_mode=False)
    except typer.TyperException as e:  # usage errors (typer's vendored click): its own message and exit code
        e.show()
        sys.exit(e.exit_code)
    except USER_ERRORS as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


def run_job(main: Callable) -> None:
    """`python -m jobs.<name>`: the job's typer function as a one-command app."""
    app = typer.Typer(add_completion=False)
    app.command()(main)
    run(app)
