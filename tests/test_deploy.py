"""cluster/deploy: each manifest is one the KubeRay operator accepts (its CRD schemas, with unknown fields
refused as `kubectl apply` refuses them), runs a real command of this project on storage every node
reaches, and takes its credentials from Kubernetes secrets."""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from cluster import load_config
from cluster.runtime import check_shared_storage
from cluster.config import TOKEN_ENV
from jobs.runner import relative_paths
from tests.conftest import REPO

DEPLOY = REPO / "cluster" / "deploy"
# ../shared/k8s/kuberay-crds beside the repository (see its README); never copied into it.
CRDS = Path(os.environ.get("KUBERAY_CRDS", REPO.parent / "shared" / "k8s" / "kuberay-crds"))
LAUNCHER = DEPLOY / "cluster-launcher.yaml"


def _documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(DEPLOY.glob("*.yaml")) if path != LAUNCHER
            for doc in yaml.safe_load_all(path.read_text())]


def _of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in _documents() if doc["kind"] == kind]


def _one(kind: str) -> dict:
    (_, doc), = _of_kind(kind)
    return doc


def _strict(schema: dict) -> dict:
    """The schema with every object that lists its fields closed to others: the API server drops (and
    `kubectl apply` refuses) unknown fields, so a misspelt one must fail here too."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_strict(sub) for sub in out[key]]
    return out


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, tuple[str, dict]]:
    """kind -> (apiVersion, strict v1 schema) of each KubeRay CRD."""
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (set KUBERAY_CRDS)")
    schemas = {}
    for path in CRDS.glob("ray.io_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schemas[crd["spec"]["names"]["kind"]] = (f"{crd['spec']['group']}/v1", _strict(v1["schema"]["openAPIV3Schema"]))
    return schemas


@pytest.fixture(scope="module")
def cluster_config(tmp_path_factory) -> Path:
    """The ray_config.yaml of configmap.yaml, as a file."""
    path = tmp_path_factory.mktemp("deploy") / "ray_config.yaml"
    path.write_text(_one("ConfigMap")["data"]["ray_config.yaml"])
    return path


def _pod_specs(doc: dict) -> list[dict]:
    cluster = doc["spec"].get("rayClusterConfig", doc["spec"])
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [group["template"]["spec"] for group in groups]


def _config_mount(doc: dict) -> str:
    """Where every pod of `doc` mounts the guidedrec-config ConfigMap (the same path in all of them)."""
    mounts = set()
    for pod in _pod_specs(doc):
        volumes = {v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == "guidedrec-config"}
        mounts |= {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", []) if m["name"] in volumes}
        assert volumes, f"a {doc['kind']} pod without the config"
    (mount,) = mounts
    return mount


@pytest.mark.parametrize("name, doc", [d for d in _documents() if d[1]["kind"] != "ConfigMap"],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_validates_against_the_kuberay_crd(crd_schemas, name, doc):
    api_version, schema = crd_schemas[doc["kind"]]
    assert doc["apiVersion"] == api_version
    jsonschema.validate(doc, schema)


def test_a_misspelt_field_is_refused(crd_schemas):
    doc = _of_kind("RayJob")[0][1]
    bad = {**doc, "spec": {**doc["spec"], "entrypont": doc["spec"]["entrypoint"]}}
    with pytest.raises(jsonschema.ValidationError, match="entrypont"):
        jsonschema.validate(bad, crd_schemas["RayJob"][1])


def test_manifests_run_the_ray_of_this_project():
    clusters = [_one("RayCluster")["spec"], _one("RayService")["spec"]["rayClusterConfig"]]
    assert [c["rayVersion"] for c in clusters] == [ray.__version__] * 2
    assert yaml.safe_load(LAUNCHER.read_text())["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")


@pytest.mark.parametrize("name, doc", _of_kind("RayJob"), ids=lambda v: v if isinstance(v, str) else "")
def test_each_job_runs_a_real_command_on_the_cluster_and_its_config(name, doc, cluster_config):
    """The entrypoint with --help: rc 0 only if the module is a job and takes every option given."""
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs.")
    help_run = subprocess.run([sys.executable, *argv[1:], "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
    assert help_run.returncode == 0, help_run.stdout + help_run.stderr
    cluster = _one("RayCluster")
    assert doc["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert argv[argv.index("--config") + 1] == f"{_config_mount(cluster)}/ray_config.yaml"


def test_the_cluster_config_names_storage_every_node_reaches(cluster_config, monkeypatch):
    monkeypatch.delenv("DATA_ROOT", raising=False)
    cfg = load_config(cluster_config, {"dataset.name": "ml-100k"})
    assert cfg.storage.uri.startswith("s3://") and relative_paths(cfg) == []
    workers = sum(group["maxReplicas"] for group in _one("RayCluster")["spec"]["workerGroupSpecs"])
    check_shared_storage(cfg.storage, 1 + workers)
    assert cfg.embed.gpus_per_actor == 1


def test_the_query_service_builds_from_its_serve_config(ray_local, cluster_config):
    """serveConfigV2 is a Serve config Ray accepts, whose import path builds the query app from the
    mounted config, and whose deployment (autoscaled) is the app's."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    service = _one("RayService")
    (app,) = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"])).applications
    module, _, attr = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert app.args == {"config": f"{_config_mount(service)}/ray_config.yaml"}
    assert isinstance(builder({"config": str(cluster_config)}), serve.Application)
    (deployment,) = app.deployments
    assert deployment.name == importlib.import_module(module).DEPLOYMENT
    assert deployment.autoscaling_config["max_replicas"] > deployment.autoscaling_config["min_replicas"] >= 1


def test_credentials_come_from_secrets_only(cluster_config):
    secret = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.I)
    for name, doc in _documents():
        for pod in _pod_specs(doc) if doc["kind"] in ("RayCluster", "RayService") else []:
            for env in (e for c in pod["containers"] for e in c.get("env", [])):
                if secret.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], (name, env["name"])
    service_env = {e["name"] for c in _pod_specs(_one("RayService"))[0]["containers"] for e in c["env"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", TOKEN_ENV} <= service_env
    cfg = load_config(cluster_config)
    assert cfg.storage.s3.access_key is cfg.storage.s3.secret_key is cfg.serve.token is None


def test_the_cluster_launcher_starts_a_cpu_head_and_gpu_workers_with_the_gpu_extra():
    launcher = yaml.safe_load(LAUNCHER.read_text())
    ray_schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(launcher, ray_schema)
    assert launcher["provider"]["type"] == "aws"
    types = launcher["available_node_types"]
    gpu_family = re.compile(r"^(g|p)\d")   # the EC2 families with NVIDIA GPUs
    assert not gpu_family.match(types[launcher["head_node_type"]]["node_config"]["InstanceType"])
    workers = [t for name, t in types.items() if name != launcher["head_node_type"]]
    assert workers and all(gpu_family.match(t["node_config"]["InstanceType"]) for t in workers)
    (remote,) = [path for path, local in launcher["file_mounts"].items() if local == "."]
    assert "gpu" in importlib.metadata.metadata("guidedrec").get_all("Provides-Extra")
    assert any(f'pip install "{remote}[gpu]"' in command for command in launcher["setup_commands"])
