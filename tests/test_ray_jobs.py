"""A user submits jobs to a running Ray cluster through the Jobs SDK."""
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


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
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
    log_path = tmp_path_factory.mktemp("head") / "head.log"
    log = open(log_path, "w")
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
                    raise RuntimeError(f"Ray head did not start: {log_path.read_text()[-2000:]}")
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


def _run_job(client, config: Path, module: str, *args: str, env: dict | None = None) -> tuple[object, str]:
    """Submit `python -m <module> --config <config> ...` with this repository as the working dir; (status, logs)."""
    from ray.job_submission import JobStatus

    job, deadline = None, time.time() + 120
    while job is None:  # the dashboard answers before the node's job agent has registered
        try:
            job = client.submit_job(
                entrypoint=f"{sys.executable} -m {module} --config {config} {' '.join(args)}",  # the head's venv
                runtime_env={"working_dir": str(REPO), "excludes": [".venv", ".git", "store"],
                             "env_vars": {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", **(env or {})}},
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
            status = client.get_job_status(job)
        except requests.ConnectionError:
            continue
    return status, client.get_job_logs(job)


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
    status, logs = _run_job(ray_head, config, "jobs.embed")
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    store = Store(str(store_dir))
    runs = store.list("embeddings")
    assert len(runs) == 1 and store.is_committed(f"embeddings/{runs[0]}")
    manifest = store.manifest(f"embeddings/{runs[0]}")
    assert manifest["rows"] == store.manifest("catalog/synthetic")["items"] > 0
    assert "embed:" in logs and f"-> {store_dir}/embeddings/{runs[0]}" in logs


@pytest.mark.slow
def test_a_submitted_job_refuses_relative_paths_then_runs_as_the_readme_says(ray_head, tmp_path, data_root):
    """`ray job submit --working-dir . -- python -m jobs.ingest --config ray_config.yaml` (here with a relative
    DATA_ROOT) stops before writing into Ray's temporary copy of the working dir; with an absolute store and
    DATA_ROOT (--runtime-env-json's env_vars) it publishes there."""
    from ray.job_submission import JobStatus

    status, logs = _run_job(ray_head, REPO / "ray_config.yaml", "jobs.ingest", "--dataset", "ml-100k",
                            env={"DATA_ROOT": "data"})
    assert status == JobStatus.FAILED and "storage.uri './store': pass an absolute path" in logs, logs[-3000:]
    assert "the data root ('data')" in logs and "--runtime-env-json" in logs
    config = tmp_path / "cluster.yaml"
    config.write_text(f"storage: {{uri: {tmp_path}/store}}\n")
    status, logs = _run_job(ray_head, config, "jobs.ingest", "--dataset", "ml-100k", env={"DATA_ROOT": str(data_root)})
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert f"-> {tmp_path}/store/catalog/ml-100k" in logs and Store(f"{tmp_path}/store").is_committed("catalog/ml-100k")
