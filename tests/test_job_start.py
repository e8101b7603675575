"""What every job checks before any work: under `ray job submit` no path may point into the temporary copy
of its working dir, and a cluster of several nodes needs storage that every node reaches."""
import os
import subprocess
import sys

import pytest
import yaml

from cluster import ConfigError, load_config
from cluster.config import StorageConfig
from cluster.runtime import RAY_JOB_ENV, alive_nodes, check_shared_storage
from jobs.runner import job_config, relative_paths
from tests.conftest import REPO


def test_a_submitted_job_with_a_relative_store_stops_before_writing(tmp_path):
    """As `ray job submit --working-dir . -- python -m jobs.ingest --config ray_config.yaml` runs it: the
    supervisor's variable set, the repository's own config (storage.uri ./store) and no DATA_ROOT."""
    env = {**os.environ, RAY_JOB_ENV: "{}", "PYTHONPATH": str(REPO)}
    env.pop("DATA_ROOT", None)
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "jobs.ingest", "--config", str(REPO / "ray_config.yaml"),
                          "--dataset", "ml-100k"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "storage.uri './store': pass an absolute path or s3://bucket/prefix" in out.stderr
    assert "DATA_ROOT unset" in out.stderr and "--runtime-env-json '{\"env_vars\": {\"DATA_ROOT\"" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "store").exists()


@pytest.mark.parametrize("overrides, env, out, refused", [
    ({"storage.uri": "./store"}, {}, None, "storage.uri './store'"),
    ({"storage.uri": "file://store"}, {}, None, "storage.uri 'file://store'"),
    ({"storage.uri": "s3://bucket/prefix"}, {}, None, None),
    ({"storage.uri": "~/store"}, {}, None, None),
    ({"storage.uri": "/srv/store"}, {}, "adapters/scft", "--out 'adapters/scft'"),
    ({"storage.uri": "/srv/store", "dataset.name": "ml-100k"}, {"DATA_ROOT": "data"}, None, "the data root ('data')"),
    ({"storage.uri": "/srv/store", "dataset.name": "ml-100k", "dataset.data_root": "/data"}, {}, None, None),
    ({"storage.uri": "/srv/store", "dataset.name": "ml-100k"}, {"DATA_ROOT": "/data"}, None, None),
    ({"storage.uri": "/srv/store", "dataset.name": "my/catalog"}, {}, None, "dataset 'my/catalog'"),
    ({"storage.uri": "/srv/store", "dataset.name": "/srv/catalog"}, {}, None, None),
])
def test_relative_paths_name_each_one_and_what_to_pass(monkeypatch, overrides, env, out, refused):
    monkeypatch.delenv("DATA_ROOT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    found = relative_paths(load_config(None, overrides), out)
    assert (len(found) == 1 and found[0].startswith(refused)) if refused else found == []


def test_only_a_submitted_job_is_held_to_absolute_paths(monkeypatch):
    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    assert job_config(None, False).storage.uri == "./store"   # `guidedrec ...` on this machine: fine
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    with pytest.raises(ConfigError, match="temporary copy of its --working-dir"):
        job_config(None, False)
    assert job_config(None, False, {"storage.uri": "s3://bucket/prefix"}).storage.uri == "s3://bucket/prefix"


@pytest.mark.parametrize("uri, shared, nodes, refused", [
    ("/srv/store", False, 1, False),
    ("/srv/store", False, 2, True),
    ("file:///srv/store", False, 3, True),
    ("/mnt/efs/store", True, 2, False),
    ("s3://bucket/prefix", False, 4, False),
])
def test_a_local_store_on_several_nodes_is_refused_unless_shared(uri, shared, nodes, refused):
    storage = StorageConfig(uri=uri, shared=shared)
    if not refused:
        check_shared_storage(storage, nodes)
        return
    with pytest.raises(ConfigError) as err:
        check_shared_storage(storage, nodes)
    message = str(err.value)
    assert f"has {nodes} nodes" in message and "s3://" in message and "storage.shared: true" in message


def test_a_job_joining_a_one_node_cluster_may_write_locally(ray_local, tmp_path):
    """The node count comes from the cluster the job joined (here the session's one-node Ray)."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"ray": {"address": "auto"}, "storage": {"uri": str(tmp_path / "store")}}))
    assert alive_nodes() == 1
    assert job_config(config, False).storage.uri == str(tmp_path / "store")
