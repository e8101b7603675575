"""How every job runs from the command line (`guidedrec ...` and `python -m jobs.<name>`): bad input
(usage, config, storage, data) prints one line and exits 2 instead of a traceback; Ctrl-C prints one
line saying what was kept and exits 130, so `embed && train` stops there."""
from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from cluster import ConfigError, StorageError

DATASET_HELP = ("Catalog to use (overrides dataset.name): synthetic, ml-100k, amazon-beauty or amazon-scientific-mini "
                "(read from $DATA_ROOT), or a directory of items + interactions files (README: 'Your own catalog')")
USER_ERRORS = (ConfigError, StorageError, FileNotFoundError, ValueError, KeyError)
INTERRUPTED = 130   # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
# Every job takes it; it sets ray.verbose (see cluster.runtime.init_ray).
VERBOSE = typer.Option(False, "--verbose", help="Also show Ray's own output: worker logs, Ray Train's per-epoch "
                       "lines, Ray Data's progress bars")


class Interrupted(Exception):
    """Ctrl-C, as a job that kept resumable work reports it: the message says what it kept and how to go on."""


def run(app: typer.Typer) -> None:
    try:
        # Without standalone mode typer answers a KeyboardInterrupt by *returning* 130: exit with it.
        code = app(standalone_mode=False)
    except Interrupted as e:
        typer.secho(f"interrupted: {e}", fg="yellow", err=True)
        sys.exit(INTERRUPTED)
    except typer.TyperException as e:  # usage errors (typer's vendored click): its own message and exit code
        e.show()
        sys.exit(e.exit_code)
    except USER_ERRORS as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    if code == INTERRUPTED:
        typer.secho("interrupted: outputs committed before Ctrl-C are kept, the one in progress was not committed; "
                    "run the command again", fg="yellow", err=True)
        sys.exit(INTERRUPTED)


def run_job(main: Callable) -> None:
    """`python -m jobs.<name>`: the job's typer function as a one-command app."""
    app = typer.Typer(add_completion=False)
    app.command()(main)
    run(app)
