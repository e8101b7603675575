"""How every job runs from the command line (`guidedrec ...` and `python -m jobs.<name>`): bad input
(usage, config, storage, data) prints one line and exits 2 instead of a traceback; Ctrl-C prints one
line saying what was kept and exits 130, so `embed && train` stops there."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from catalog.loaders import PUBLIC_DATASETS
from cluster import Config, ConfigError, StorageError, load_config
from cluster.config import export_secrets
from cluster.runtime import (alive_nodes, check_cluster_credentials, check_shared_storage, init_ray, joins_cluster,
                             under_ray_job)

DATASET_HELP = ("Catalog to use (overrides dataset.name): synthetic, ml-100k, amazon-beauty or amazon-scientific-mini "
                "(read from $DATA_ROOT), or a directory of items + interactions files (README: 'Your own catalog')")
USER_ERRORS = (ConfigError, StorageError, FileNotFoundError, ValueError, KeyError)
INTERRUPTED = 130   # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
# Every job takes it; it sets ray.verbose (see cluster.runtime.init_ray).
VERBOSE = typer.Option(False, "--verbose", help="Also show Ray's own output: worker logs, Ray Train's per-epoch "
                       "lines, Ray Data's progress bars")


class Interrupted(Exception):
    """Ctrl-C, as a job that kept resumable work reports it: the message says what it kept and how to go on."""


def job_config(config: Path | None, verbose: bool, overrides: dict | None = None, out: str | None = None) -> Config:
    """Every job's start: its config with the command line's overrides, refused here rather than halfway through
    when its storage (or `out`, a job's own output URI), data or credentials would be out of reach of where it
    runs. Returned without its credentials, which go to this process's environment (cluster.config.export_secrets)."""
    cfg = load_config(config, overrides)
    cfg.ray.verbose |= verbose
    if under_ray_job() and (paths := relative_paths(cfg, out)):
        raise ConfigError("under `ray job submit` the job runs in a temporary copy of its --working-dir, which Ray "
                          "deletes, so these relative paths would not outlive it or hold the data: "
                          + "; ".join(paths))
    if joins_cluster(cfg.ray):
        init_ray(cfg.ray)
        check_shared_storage(cfg.storage, alive_nodes())
        check_cluster_credentials(cfg.storage)
    return export_secrets(cfg)


def relative_paths(cfg: Config, out: str | None = None) -> list[str]:
    """The storage and data paths of `cfg` (and `out`) that name nothing outside the job's working dir, each
    with what to pass instead."""
    found = [f"{name} {uri!r}: pass an absolute path or s3://bucket/prefix"
             for name, uri in (("storage.uri", cfg.storage.uri), ("--out", out)) if uri and _relative(uri)]
    if cfg.dataset.name in PUBLIC_DATASETS:
        root = cfg.dataset.data_root or os.environ.get("DATA_ROOT")
        if not root or _relative(root):
            env = json.dumps({"env_vars": {"DATA_ROOT": "/abs/path/to/data"}})
            found.append(f"the data root ({repr(root) if root else 'DATA_ROOT unset: ../shared/data'}): set "
                         f"dataset.data_root to an absolute path, or pass --runtime-env-json '{env}'")
    elif cfg.dataset.name != "synthetic" and _relative(cfg.dataset.name):
        found.append(f"dataset {cfg.dataset.name!r}: pass the catalog directory's absolute path")
    return found


def _relative(path: str) -> bool:
    """A local path (not s3://) that is not absolute."""
    return not path.startswith("s3://") and not Path(path.removeprefix("file://")).expanduser().is_absolute()


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
