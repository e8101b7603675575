"""A Ray cluster for tests: `ray start --block` nodes (a head, and optionally more raylets) on loopback,
each in its own process group so stopping them stops only them (never `ray stop`: other Ray instances
run on this machine), and jobs submitted to it through the Jobs SDK with this repository as working dir.

Every port is a free one: another Ray instance on the machine already holds the dashboard agent's
default 52365, and an agent that cannot bind it stays up without its HTTP server, so every submission
then fails with "No available agent".
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

import psutil
import requests

from tests.conftest import REPO
from tests.ports import free_ports

RAY = str(Path(sys.executable).with_name("ray"))


class RayCluster:
    """A head (`start`) and worker nodes (`add_node`) sharing one temp dir; use as a context manager."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
        self.nodes: list[subprocess.Popen] = []
        self.node_logs: list[Path] = []
        self.gcs = self.dashboard = ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.nodes):
            stop_group(proc)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def start(self, num_cpus: int, resources: dict | None = None, system_config: dict | None = None) -> Self:
        port, dash = free_ports(2)
        extra = [f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
        if system_config:
            extra.append(f"--system-config={json.dumps(system_config)}")
        self._start_node("head", ["--head", *extra], num_cpus, resources)
        self.gcs, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
        self.client()  # waits until the head answers
        return self

    def add_node(self, num_cpus: int, resources: dict | None = None) -> None:
        """Another raylet joining the head; returns once the cluster counts it alive."""
        self._start_node(f"node{len(self.nodes)}", [f"--address={self.gcs}"], num_cpus, resources)
        self.wait_for_nodes(len(self.nodes))

    def _start_node(self, name: str, args: list[str], num_cpus: int, resources: dict | None) -> None:
        agent_http, agent_grpc, runtime_env, metrics = free_ports(4)
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        self.node_logs.append(self.logs / f"{name}.log")
        with open(self.node_logs[-1], "w") as log:
            self.nodes.append(subprocess.Popen(
                [RAY, "start", "--block", *args, "--node-ip-address=127.0.0.1",
                 f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
                 f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
                 f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources or {})}",
                 "--object-store-memory=200000000", "--disable-usage-stats", f"--temp-dir={self.temp_dir}"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _check_running(self) -> None:
        for proc, log in zip(self.nodes, self.node_logs):
            if proc.poll() is not None:
                raise RuntimeError(f"a Ray node exited: {log.read_text()[-2000:]}")

    def client(self, timeout: float = 120):
        """A JobSubmissionClient for the head's dashboard."""
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + timeout
        while True:
            try:
                return JobSubmissionClient(self.dashboard)
            except Exception:
                self._check_running()
                if time.time() > deadline:
                    raise
                time.sleep(2)

    def alive_nodes(self) -> list[dict]:
        """The State API's alive nodes: node_id, resources_total, ..."""
        from ray.util.state import list_nodes

        return [n for n in list_nodes(address=self.dashboard, raise_on_missing_output=False)
                if n.state == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float = 120) -> list:
        deadline = time.time() + timeout
        while len(alive := self.alive_nodes()) != count:
            self._check_running()
            if time.time() > deadline:
                raise RuntimeError(f"{len(alive)} alive Ray nodes, {count} expected")
            time.sleep(1)
        return alive

    def node_id(self, resource: str) -> str:
        """The id of the alive node that has the custom resource `resource`."""
        (node,) = [n.node_id for n in self.alive_nodes() if resource in n.resources_total]
        return node

    def raylet(self, index: int) -> psutil.Process:
        """The raylet process of node `index` (0: the head), a child of its `ray start --block`."""
        (raylet,) = [p for p in psutil.Process(self.nodes[index].pid).children(recursive=True)
                     if p.name() == "raylet"]
        return raylet


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL if it outlives 5 s (`ray start --block` often does)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def submit(client, config: Path, module: str, *args: str, env: dict | None = None) -> str:
    """Submit `python -m <module> --config <config> ...` with this repository as the working dir; the job id."""
    deadline = time.time() + 120
    while True:  # the dashboard answers before the node's job agent has registered
        try:
            return client.submit_job(
                entrypoint=f"{sys.executable} -m {module} --config {config} {' '.join(args)}",  # the head's venv
                runtime_env={"working_dir": str(REPO), "excludes": [".venv", ".git", "store", "runs"],
                             "env_vars": {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", **(env or {})}},
            )
        except (RuntimeError, requests.ConnectionError) as e:  # a busy dashboard drops connections too
            if ("No available agent" not in str(e) and not isinstance(e, requests.ConnectionError)) \
                    or time.time() > deadline:
                raise
            time.sleep(2)


def wait_job(client, job: str, timeout: float = 400) -> tuple[object, str]:
    """(final status, logs) of `job`."""
    from ray.job_submission import JobStatus

    deadline, status = time.time() + timeout, None
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, "job did not finish in time"
        time.sleep(3)
        try:
            status = client.get_job_status(job)
        except requests.ConnectionError:
            continue
    return status, client.get_job_logs(job)


def run_job(client, config: Path, module: str, *args: str, env: dict | None = None) -> tuple[object, str]:
    """Submit and wait: (status, logs)."""
    return wait_job(client, submit(client, config, module, *args, env=env))
