"""A user submits the embedding job to a running Ray cluster through the Jobs SDK."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from cluster.storage import Store
from tests.conftest import REPO
from tests.ports import free_ports


@pytest.fixture()
def ray_head(tmp_path):
    """`ray start --head --block` on loopback in its own process group: stopping it stops only it.

    Every port is a free one: the session's local Ray instance already holds the dashboard agent's
    default 52365, and an agent that cannot bind it stays up without its HTTP server, so every
    submission then fails with "No available agent".
    """
    port, dash, agent_http, agent_grpc, runtime_env, metrics = free_ports(6)
    temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    log = open(tmp_path / "head.log", "w")
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}", "--num-cpus=2",
         "--object-store-memory=300000000", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 120
        while True:
            try:
                yield JobSubmissionClient(address)
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"Ray head did not start: {(tmp_path / 'head.log').read_text()[-2000:]}")
                time.sleep(2)
    finally:
        _stop_group(proc)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.slow
def test_embed_job_submitted_through_jobs_sdk(ray_head, tmp_path):
    from ray.job_submission import JobStatus

    store_dir = tmp_path / "store"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "ray": {"address": "auto"},
        "storage": {"uri": str(store_dir)},
        "dataset": {"name": "synthetic", "synthetic_items": 60, "synthetic_users": 120},
        "embed": {"batch_size": 16, "cpus_per_actor": 1.0},
    }))
    job, deadline = None, time.time() + 120
    while job is None:  # the dashboard answers before the node's job agent has registered
        try:
            job = ray_head.submit_job(
                entrypoint=f"{sys.executable} -m jobs.embed --config {config}",  # the venv that started the head
                runtime_env={"working_dir": str(REPO), "excludes": [".venv", ".git", "store"],
                             "env_vars": {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}},
            )
        except (RuntimeError, requests.ConnectionError) as e:  # a busy dashboard drops connections too
            if ("No available agent" not in str(e) and not isinstance(e, requests.ConnectionError)) \
                    or time.time() > deadline:
                raise
            time.sleep(2)
    deadline = time.time() + 400
    status = None
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, "job did not finish in time"
        time.sleep(3)
        try:
            status = ray_head.get_job_status(job)
        except requests.ConnectionError:
            continue
    logs = ray_head.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    store = Store(str(store_dir))
    runs = store.list("embeddings")
    assert len(runs) == 1 and store.is_committed(f"embeddings/{runs[0]}")
    manifest = store.manifest(f"embeddings/{runs[0]}")
    assert manifest["rows"] == store.manifest("catalog/synthetic")["items"] > 0
    assert "embed:" in logs
