"""A user submits jobs to a running Ray cluster through the Jobs SDK."""
import pytest
import yaml

from cluster.storage import Store
from tests.conftest import REPO
from tests.ray_cluster import RayCluster, run_job


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A one-node cluster's Jobs SDK client."""
    with RayCluster(tmp_path_factory.mktemp("head")) as cluster:
        yield cluster.start(num_cpus=2).client()


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
    status, logs = run_job(ray_head, config, "jobs.embed")
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

    status, logs = run_job(ray_head, REPO / "ray_config.yaml", "jobs.ingest", "--dataset", "ml-100k",
                            env={"DATA_ROOT": "data"})
    assert status == JobStatus.FAILED and "storage.uri './store': pass an absolute path" in logs, logs[-3000:]
    assert "the data root ('data')" in logs and "--runtime-env-json" in logs
    config = tmp_path / "cluster.yaml"
    config.write_text(f"storage: {{uri: {tmp_path}/store}}\n")
    status, logs = run_job(ray_head, config, "jobs.ingest", "--dataset", "ml-100k", env={"DATA_ROOT": str(data_root)})
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert f"-> {tmp_path}/store/catalog/ml-100k" in logs and Store(f"{tmp_path}/store").is_committed("catalog/ml-100k")
