"""Credentials stay with the process that loads the config: never in what Ray is sent, records or logs, never in
the store, never printed. Ray's workers read them from their environment (cluster.config.SECRET_ENV)."""
import os
import pickle
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from cluster import Store, StorageError, load_config
from cluster.config import SECRET_ENV, export_secrets, without_secrets
from tests.conftest import REPO

# embed, train and fine-tune through job_config, as `guidedrec embed/train/finetune` run them, in one process.
JOBS = """
import sys
from finetune import finetune
from jobs.embed import run_embed
from jobs.runner import job_config
from jobs.train import run_train

cfg = job_config(sys.argv[1], verbose=False)
run_embed(cfg)
run_train(cfg)
finetune(cfg, "scft", sys.argv[2], max_steps=1)
"""


def _settings(s3_server, prefix: str, token: str) -> dict:
    return {
        "ray": {"num_cpus": 2},
        "storage": {"uri": f"s3://{s3_server.bucket}/{prefix}",
                    "s3": {"endpoint": s3_server.endpoint, "access_key": s3_server.access_key,
                           "secret_key": s3_server.secret_key}},
        "serve": {"token": token},
        "dataset": {"name": "synthetic", "synthetic_items": 40, "synthetic_users": 60},
        "model": {"max_prompt_tokens": 16},
        "srs": {"sources": ["id"], "epochs": 1, "patience": 1, "hidden_size": 16, "max_len": 10, "num_layers": 1},
        "finetune": {"batch_size": 2, "max_examples": 4, "lora_targets": ["q_proj"], "checkpoint_every": 1},
    }


def test_credentials_leave_a_config_only_for_the_environment(s3_server, tmp_path, monkeypatch):
    token = f"token-{uuid.uuid4().hex}"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_settings(s3_server, "unit", token)))
    cfg = load_config(path)
    assert s3_server.secret_key not in repr(cfg) and token not in repr(cfg)
    assert all(s3_server.secret_key not in str(v) for v in without_secrets(cfg).model_dump()["storage"]["s3"].values())
    for env in SECRET_ENV.values():   # set, then deleted: monkeypatch restores only what it saw (export_secrets
        monkeypatch.setenv(env, "")     # must not leave a token behind for the tests that follow)
        monkeypatch.delenv(env)
    public = export_secrets(cfg)
    assert public.storage.s3.secret_key is public.storage.s3.access_key is public.serve.token is None
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == s3_server.secret_key and os.environ["GUIDEDREC_TOKEN"] == token

    # A Store (and its filesystem, which Ray Train is handed) pickles without keys; the copy reads the environment.
    store = Store(cfg.storage.uri, cfg.storage.s3)
    store.write_bytes("x.bin", b"kept")
    for obj in (store, store.fs):
        assert s3_server.secret_key.encode() not in pickle.dumps(obj)
    assert pickle.loads(pickle.dumps(store)).read_bytes("x.bin") == b"kept"
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError):   # the keys did not travel: without the environment's, the copy cannot read
        pickle.loads(pickle.dumps(store)).read_bytes("x.bin")


def _files_holding(root: Path, markers: list[bytes]) -> list[str]:
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [f"{path}: {m.decode()}" for m in markers if m in data]
    return found


@pytest.mark.slow
def test_no_secret_in_ray_the_store_or_the_output(s3_server, tmp_path):
    """embed, train and fine-tune with the S3 keys and the token in the config file only (not in the environment):
    the jobs work, and neither the S3 secret nor the token is anywhere in the Ray session's files (logs, runtime
    envs, Ray Train's run state), the store (manifests, checkpoints) or what the job printed."""
    token = f"token-{uuid.uuid4().hex}"
    prefix = f"secrets-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_settings(s3_server, prefix, token)))
    adapter = f"s3://{s3_server.bucket}/{prefix}/adapters/scft"
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV.values() and k != "RAY_ADDRESS"}
    with tempfile.TemporaryDirectory(prefix="gr-ray-", dir="/tmp") as ray_tmp:   # short: Ray's socket paths
        env["RAY_TMPDIR"] = ray_tmp
        job = subprocess.run([sys.executable, "-c", JOBS, str(config), adapter], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        markers = [s3_server.secret_key.encode(), token.encode()]
        assert any(Path(ray_tmp).rglob("*.log")), "the job's Ray session wrote no logs where expected"
        assert _files_holding(Path(ray_tmp), markers) == []
    printed = job.stdout + job.stderr
    assert "finetune scft: 1 steps" in printed
    assert s3_server.secret_key not in printed and token not in printed

    client = s3_server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket,
                                                                                  Prefix=prefix)
            for o in page.get("Contents", [])]
    assert any(k.endswith("_manifest.json") for k in keys) and any("/checkpoints/" in k for k in keys)
    leaked = [k for k in keys if any(m in client.get_object(Bucket=s3_server.bucket, Key=k)["Body"].read()
                                     for m in markers)]
    assert leaked == []
