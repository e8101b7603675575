"""Session-wide real components: one Ray instance, one S3 server, one model load per session."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

# The session S3 server's keys. Ray's workers read S3 keys from their environment only (cluster.config.SECRET_ENV),
# which the session's Ray inherits from this process; the secret is a marker test_secrets looks for everywhere.
S3_ACCESS_KEY, S3_SECRET = "guidedrec-test-key", f"guidedrec-secret-{uuid.uuid4().hex}"
os.environ.update(AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("RAY_ADDRESS", None)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    from cluster.config import DatasetConfig

    root = DatasetConfig().resolved_data_root()
    if not (root / "amazon-scientific-mini").exists():
        pytest.skip(f"real data not found under {root} (set DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def ray_local():
    """The one embedded Ray instance of the test session (2 CPUs, quiet logs)."""
    import ray

    from cluster.config import RayConfig
    from cluster.runtime import init_ray

    init_ray(RayConfig(num_cpus=2, log_to_driver=False))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS `weed mini`) on 127.0.0.1, always stopped."""
    from tests.s3_server import SeaweedServer

    with SeaweedServer(tmp_path_factory.mktemp("weed"), access_key=S3_ACCESS_KEY, secret_key=S3_SECRET) as server:
        yield server


@pytest.fixture()
def s3_store(s3_server, request):
    """A Store under a fresh prefix of the session's S3 bucket."""
    from cluster.config import S3Config
    from cluster.storage import Store

    s3 = S3Config(endpoint=s3_server.endpoint, access_key=s3_server.access_key, secret_key=s3_server.secret_key)
    return Store(f"s3://{s3_server.bucket}/{request.node.name}", s3)


@pytest.fixture(scope="session")
def hf_engine():
    """The packaged default model in the transformers engine, loaded once per session."""
    from cluster.config import ModelConfig
    from llm.engines import HFEngine

    return HFEngine(ModelConfig(), threads=1)


def make_lora_adapter(model_path: str, folder: Path, seed: int = 0) -> Path:
    """A real peft LoRA adapter with random (not zero) B weights, so it changes what the model computes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lora_adapter(tmp_path_factory) -> Path:
    from llm.checkpoints import resolve_model_path

    return make_lora_adapter(str(resolve_model_path("smollm2")), tmp_path_factory.mktemp("lora") / "tuned")


def own_processes(title: str) -> list:
    """This test process's descendants (its Ray instance's workers and what they start) whose command line
    contains `title`: never another job's processes on the machine."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if title in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # exited meanwhile
            pass
    return found


GER_ATTRIBUTES = ["durability", "price level", "ease of use"]


@pytest.fixture(scope="session")
def ger_pipeline(ray_local, tmp_path_factory):
    """`guidedrec pipeline` on a tiny synthetic catalog with the ger source (so with attribute scores),
    then `guidedrec embed --attributes --users`: the slow part, run once for every test of GER outputs."""
    import contextlib
    import io
    from types import SimpleNamespace

    import yaml

    from cluster import load_config
    from cluster.storage import Store
    from jobs.embed import run_embed
    from jobs.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("ger")
    settings = {"storage": {"uri": str(root / "store")},
                "dataset": {"name": "synthetic", "synthetic_items": 24, "synthetic_users": 80, "min_interactions": 1},
                "model": {"max_prompt_tokens": 64},
                "embed": {"batch_size": 8, "block_size": 16, "attributes": GER_ATTRIBUTES},
                "srs": {"sources": ["id", "ger"], "epochs": 2}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    cfg = load_config(path)
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_pipeline(cfg)
        users = run_embed(cfg, attributes=True, users=True)
    return SimpleNamespace(config=path, cfg=cfg, store=Store(str(root / "store")), result=result, users=users)
