"""Jobs on a Ray cluster of two nodes (a head and a worker, separate raylets on this machine) that share
storage on the S3 server: embedding spreads over both, the index, training and fine-tuning jobs run there
with two Ray Train workers, and losing the worker node mid-embedding still commits every item once.

Each node has 1 CPU: the embedding job's two actors take half a CPU each (Ray Data spreads them over the
nodes), and two Ray Train workers of 1 CPU each can only run one per node.
"""
import time

import pytest
import yaml

from cluster.config import S3Config
from cluster.storage import Store
from tests.ray_cluster import RayCluster, run_job, submit, wait_job

RUN = "embeddings/synthetic-smollm2-base"
# Ray Data's own setting: start embedding once both engines are up. The worker node's engine starts later (its
# node first unpacks the job's working dir), and the head's alone could otherwise embed every block before it.
ENGINES_UP = {"RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "600"}
SETTINGS = {
    "ray": {"address": "auto"},
    "dataset": {"name": "synthetic", "synthetic_items": 120, "synthetic_users": 150},
    "model": {"max_prompt_tokens": 32},
    "embed": {"batch_size": 8, "block_size": 4, "actors": 2, "threads_per_actor": 1},
    "srs": {"sources": ["llmemb"], "align_alpha": 0, "num_workers": 2, "epochs": 2, "patience": 1, "hidden_size": 16, "max_len": 10,
            "num_layers": 1, "batch_size": 64},
    "finetune": {"num_workers": 2, "batch_size": 4, "threads_per_worker": 1, "max_examples": 8,
                 "checkpoint_every": 2, "lora_targets": ["q_proj", "v_proj"]},
}


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    with RayCluster(tmp_path_factory.mktemp("nodes")) as cluster:
        cluster.start(num_cpus=1, resources={"head_node": 1})
        cluster.add_node(num_cpus=1, resources={"worker_node": 1})
        yield cluster


@pytest.fixture(scope="module")
def cluster_config(s3_server, tmp_path_factory):
    """Write a job config whose storage is `prefix` in the S3 bucket; returns (its path, the Store). The keys are
    not in it: the nodes, like this process, have them in their environment (tests/conftest.py)."""
    folder = tmp_path_factory.mktemp("configs")
    s3 = {"endpoint": s3_server.endpoint}

    def write(prefix: str, items: int = 120):
        uri = f"s3://{s3_server.bucket}/nodes/{prefix}"
        dataset = {**SETTINGS["dataset"], "synthetic_items": items}
        (path := folder / f"{prefix}.yaml").write_text(yaml.safe_dump({**SETTINGS, "dataset": dataset,
                                                                       "storage": {"uri": uri, "s3": s3}}))
        return path, Store(uri, S3Config(**s3))
    return write


@pytest.fixture(scope="module")
def embedded(two_nodes, cluster_config):
    """The embedding job, submitted to the two nodes: (its config, store, manifest)."""
    from ray.job_submission import JobStatus

    config, store = cluster_config("spread")
    status, logs = run_job(two_nodes.client(), config, "jobs.embed", env=ENGINES_UP)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    return config, store, store.manifest(RUN)


@pytest.mark.slow
def test_embedding_runs_on_both_nodes_and_commits_every_item_once(two_nodes, embedded):
    _, store, manifest = embedded
    nodes = manifest["blocks_by_node"]
    assert set(nodes) == {two_nodes.node_id("head_node"), two_nodes.node_id("worker_node")}, nodes
    assert sum(nodes.values()) == len(manifest["parts"]) == 30
    assert manifest["rows"] == store.manifest("catalog/synthetic")["items"] == 120  # checked unique at commit


@pytest.mark.slow
def test_index_and_two_worker_training_jobs_run_on_the_cluster(two_nodes, embedded):
    from ray.job_submission import JobStatus
    from ray.util.state import list_actors

    config, _, _ = embedded
    status, logs = run_job(two_nodes.client(), config, "jobs.index")
    assert status == JobStatus.SUCCEEDED and "is CURRENT" in logs, logs[-3000:]
    job = submit(two_nodes.client(), config, "jobs.train")
    status, logs = wait_job(two_nodes.client(), job)
    assert status == JobStatus.SUCCEEDED and "| llmemb |" in logs, logs[-3000:]
    workers = list_actors(address=two_nodes.dashboard, filters=[("class_name", "=", "RayTrainWorker")], limit=1000)
    job_id = two_nodes.client().get_job_info(job).driver_info.id
    assert {w.node_id for w in workers if w.job_id == job_id} == {two_nodes.node_id("head_node"),
                                                                   two_nodes.node_id("worker_node")}


@pytest.mark.slow
def test_two_worker_finetuning_job(two_nodes, cluster_config):
    from ray.job_submission import JobStatus

    config, store = cluster_config("finetune")
    status, logs = run_job(two_nodes.client(), config, "jobs.finetune", "--objective", "scft", "--max-steps", "2",
                           "--out", store.full_uri("adapter"))
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    manifest = store.manifest("adapter")
    assert manifest["workers"] == 2 and manifest["steps"] == 2


@pytest.mark.slow  # last: it takes the worker node down
def test_losing_the_worker_node_mid_embedding_still_commits_every_item_once(two_nodes, cluster_config):
    """Ray Data restarts the lost engine actor on the head (half a CPU is free there) and retries the block
    it held; parts are named by block, so the retried block overwrites rather than doubles."""
    from ray.job_submission import JobStatus
    from ray.util.state import list_actors

    config, store = cluster_config("kill", items=200)
    client, worker = two_nodes.client(), two_nodes.node_id("worker_node")
    job = submit(client, config, "jobs.embed", env=ENGINES_UP)
    while not [a for a in list_actors(address=two_nodes.dashboard, filters=[("node_id", "=", worker),
                                                                           ("state", "=", "ALIVE")])
               if "BlockEmbedder" in a.class_name]:
        assert not client.get_job_status(job).is_terminal(), "the job ended before an engine ran on the worker node"
        time.sleep(0.5)
    two_nodes.raylet(1).kill()
    status, logs = wait_job(client, job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert [n.node_id for n in two_nodes.alive_nodes()] == [two_nodes.node_id("head_node")]
    manifest = store.manifest(RUN)
    assert manifest["rows"] == 200 and len(manifest["parts"]) == 50  # checked unique at commit
