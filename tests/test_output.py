"""What a user sees: a job prints its own lines and one progress bar per training run; Ray's own
output (per-epoch checkpoint and report lines, worker logs) shows only with --verbose; errors always."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

RAY_NOISE = ("Checkpoint successfully created", "Reporting training result", "(RayTrainWorker", "(TrainController",
             "core_worker.cc", "logging_progress.py")


def _job(module: str, config: Path, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", module, "--config", str(config), *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    return out.returncode, out.stdout, out.stderr


def _config(root: Path, name: str, **srs) -> Path:
    """A small synthetic catalog and one short ID-only training run, in storage under `root`."""
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "ray": {"num_cpus": 2}, "storage": {"uri": str(root / "store")},
        "dataset": {"synthetic_items": 40, "synthetic_users": 80},
        "srs": {"sources": ["id"], "epochs": 2, "hidden_size": 16, **srs},
    }))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Storage holding the published catalog that jobs.train reads."""
    root = tmp_path_factory.mktemp("output")
    code, _, err = _job("jobs.ingest", _config(root, "ingest"))
    assert code == 0, err
    return root


@pytest.mark.slow
def test_training_shows_a_bar_and_the_table_and_ray_lines_only_when_verbose(root):
    config = _config(root, "train")
    code, out, err = _job("jobs.train", config)
    assert code == 0, err
    assert "| source | HR@10" in out and "| id |" in out
    assert "train sasrec/id" in err and "2/2" in err, "one bar over the epochs, ending at the last one"
    assert not [noise for noise in RAY_NOISE if noise in out + err], out + err
    quiet = (out + err).splitlines()

    code, out, err = _job("jobs.train", config, "--verbose")
    assert code == 0, err
    assert "Reporting training result" in out + err and "(RayTrainWorker" in out + err
    assert len((out + err).splitlines()) > len(quiet) + 5


@pytest.mark.slow
def test_an_error_inside_a_training_worker_is_printed(root):
    code, out, err = _job("jobs.train", _config(root, "bad", hidden_size=15, num_heads=2))
    assert code != 0
    assert "hidden_size 15 is not divisible by num_heads 2" in out + err
