"""LoRA fine-tuning jobs on real components: the packaged model, Ray Train on the session's local
Ray, a synthetic catalog, local files and the S3 server. Each objective writes a peft adapter that
loads (peft; vLLM for SCFT) and changes what the model computes; SCFT also shows its loss falling
and a resumed run continuing the step count, optimizer and curve of the first."""
from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from cluster.config import Config, ModelConfig
from cluster.storage import Store
from llm.engines import Adapter
from finetune import FinetuneError, finetune
from finetune.recipe import Job
from finetune.scft import random_view
from tests.conftest import REPO

PROMPTS = [
    "The beauty item has the following attributes: title is OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce.",
    "The scientific item has the following attributes: title is Gorilla Original Gorilla Glue; brand is Gorilla.",
    "The product item has the following attributes: title is Trailhead ultralight tent; category is Outdoors.",
]


def make_cfg(store_root, **finetune_kw) -> Config:
    return Config.model_validate({
        "ray": {"num_cpus": 2, "log_to_driver": False},
        "storage": {"uri": str(store_root)},
        "dataset": {"name": "synthetic", "synthetic_items": 60, "synthetic_users": 80},
        "model": {"max_prompt_tokens": 32},
        "srs": {"hidden_size": 16, "max_len": 10, "num_layers": 1, "batch_size": 64, "tslrec_clusters": 4},
        "finetune": {"batch_size": 4, "threads_per_worker": 2, "checkpoint_every": 2, "log_every": 1, "lr": 1e-3,
                     **finetune_kw},
    })


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_changes_embeddings(hf_engine, path: str, name: str) -> np.ndarray:
    """The adapter passes the embedding job's check, loads through peft (HFEngine) and moves the vectors."""
    from llm.adapters import check_adapter

    check_adapter(path, ModelConfig(), name)
    base = hf_engine.embed(PROMPTS)
    tuned = hf_engine.embed(PROMPTS, Adapter(name, path))
    assert np.abs(tuned - base).max() > 1e-3, "a trained adapter changes the embeddings"
    return tuned


def read_losses(store: Store) -> list[float]:
    rows = list(csv.DictReader(io.StringIO(store.read_bytes("loss.csv").decode())))
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))
    return [float(r["loss"]) for r in rows]


# -- views and bad input (no training) -----------------------------------------------------------
def test_views_drop_clauses_or_words_and_are_never_empty():
    rng = random.Random(0)
    many = [("title", "Trail tent"), ("brand", "Pinecrest"), ("category", "Outdoors"), ("use", "hiking")]
    for _ in range(20):
        view = random_view(many, 0.5, rng)
        assert len(view) == 2 and set(view) <= {k for k, _ in many}
    title = [("title", "OPI Nail Lacquer Simmer and Shimmer 0.5 Fluid Ounce")]
    views = {random_view(title, 0.3, rng)["title"] for _ in range(20)}
    assert all(len(v.split()) == 6 for v in views) and len(views) > 1, "a single clause loses 30% of its words"
    assert random_view([("title", "Glue")], 0.9, rng) == {"title": "Glue"}, "never an empty view"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_global_batch_is_the_same_for_any_worker_count(world):
    """finetune.batch_size is per step, as srs.batch_size is: more workers split it, never grow it."""
    cfg = Config.model_validate({"finetune": {"batch_size": 8, "num_workers": world}})
    plan = Job(cfg, None, None, None, max_steps=7, resume=False, world=world).plan(20)
    size = 8 - 8 % world
    assert len(plan) == 7 and {len(b) for b in plan} == {size}
    assert all(len(set(b)) == size for b in plan), "no example twice in one step"
    single = Job(Config.model_validate({"finetune": {"batch_size": size}}), None, None, None, 7, False).plan(20)
    assert plan == single, "the same seed gives the same steps whatever the worker count"


def test_bad_inputs_are_refused_before_any_work(tmp_path):
    cfg = make_cfg(tmp_path / "store")
    out = str(tmp_path / "adapter")
    with pytest.raises(FinetuneError, match="unknown objective 'dpo'"):
        finetune(cfg, "dpo", out)
    with pytest.raises(FinetuneError, match="--max-steps must be at least 1"):
        finetune(cfg, "scft", out, max_steps=0)
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        finetune(cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"name": "nope"})}), "scft", out)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(FinetuneError, match="not a causal LM"):
        finetune(cfg.model_copy(update={"model": ModelConfig(path=str(encoder))}), "scft", out)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face checkpoint"):
        finetune(cfg.model_copy(update={"model": ModelConfig(path=str(tmp_path / "missing"))}), "scft", out)
    Store(out).commit("", {"objective": "scft"})
    with pytest.raises(FinetuneError, match="already holds a committed adapter"):
        finetune(cfg, "scft", out)
    with pytest.raises(FinetuneError, match="cannot resume it as ger"):
        finetune(cfg, "ger", out, resume=True)


def test_cli_prints_one_line_errors(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run([sys.executable, "-m", "jobs.finetune", "--objective", "dpo", "--out", str(tmp_path / "a")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == "error: unknown objective 'dpo': use one of scft, ger, tslrec, interpret"


# -- SCFT: 4 steps, then resumed to 8, on a fixed set of 4 items ---------------------------------
@pytest.fixture(scope="module")
def scft_runs(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("scft")
    cfg = make_cfg(root / "store", max_examples=4)
    out = str(root / "adapter")
    first = finetune(cfg, "scft", out, max_steps=4)
    first_losses = read_losses(Store(out))
    second = finetune(cfg, "scft", out, max_steps=8, resume=True)
    return out, first, first_losses, second


def test_scft_writes_a_committed_peft_adapter_and_loss_curve(scft_runs):
    out, first, _, second = scft_runs
    store = Store(out)
    manifest = store.manifest("")
    assert manifest["objective"] == "scft" and manifest["steps"] == 8 and manifest["lora"]["r"] == 8
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert store.read_bytes("loss_curve.png")[:4] == b"\x89PNG"
    config = json.loads(store.read_bytes("adapter_config.json"))
    assert config["peft_type"] == "LORA" and set(config["target_modules"]) >= {"q_proj", "down_proj"}
    assert not store.exists("scft_heads.safetensors"), "the temperature is training state, not part of the adapter"


def test_scft_resume_continues_from_the_checkpoint(scft_runs):
    out, first, first_losses, second = scft_runs
    assert first["steps"] == 4 and first["resumed_from"] is None
    assert second["steps"] == 8 and second["resumed_from"] == 4
    losses = read_losses(Store(out))
    assert len(losses) == 8 and losses[:4] == first_losses, "the curve continues, the first 4 steps are not redone"


def test_scft_loss_goes_down(scft_runs):
    losses = read_losses(Store(scft_runs[0]))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_scft_adapter_loads_in_peft(scft_runs, hf_engine):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llm.checkpoints import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2"), dtype=torch.float32)
    PeftModel.from_pretrained(base, scft_runs[0])
    assert_changes_embeddings(hf_engine, scft_runs[0], "scft-test")


def test_rerun_without_overwrite_is_refused(scft_runs):
    cfg = make_cfg("unused")
    with pytest.raises(FinetuneError, match="--overwrite"):
        finetune(cfg, "scft", scft_runs[0], max_steps=2)


@pytest.mark.slow
def test_scft_adapter_in_vllm_matches_peft(scft_runs, hf_engine, tmp_path_factory):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm-cache")))
    from llm.engines import VLLMEngine

    adapter = Adapter("scft-vllm", scft_runs[0])
    vllm = VLLMEngine(ModelConfig())
    try:
        got, want = vllm.embed(PROMPTS, adapter), hf_engine.embed(PROMPTS, adapter)
    finally:
        vllm.close()
    assert _cosine(got, want).min() >= 0.99
    assert _cosine(got, hf_engine.embed(PROMPTS)).min() < _cosine(got, want).min(), "vLLM applied the adapter"


# -- GER, written to S3 ---------------------------------------------------------------------------
def test_ger_trains_an_attribute_scorer_into_s3(ray_local, s3_store, tmp_path, hf_engine):
    from llm.attributes import answer_probs, score_request

    names = ["quality", "price level", "durability"]
    cfg = make_cfg(tmp_path / "store", batch_size=2, ger_history=3)
    cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"s3": s3_store.s3}),
                                 "embed": cfg.embed.model_copy(update={"attributes": names})})
    summary = finetune(cfg, "ger", s3_store.uri, max_steps=2)
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    assert s3_store.manifest("")["objective"] == "ger"
    assert s3_store.exists("ger_teacher.parquet") and s3_store.exists("ger_heads.safetensors")
    local = tmp_path / "ger-adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        local.mkdir(exist_ok=True)
        (local / name).write_bytes(s3_store.read_bytes(name))
    assert_changes_embeddings(hf_engine, str(local), "ger-test")
    asks = [score_request(hf_engine.tokenizer, p, names, hf_engine.cfg.max_prompt_tokens) for p in PROMPTS]
    tuned = answer_probs(hf_engine, asks, names, Adapter("ger-test", str(local)))
    assert np.abs(tuned - answer_probs(hf_engine, asks, names)).max() > 1e-3, "the adapter moves the scores"


# -- TSLRec ---------------------------------------------------------------------------------------
def test_tslrec_trains_and_writes_knowledge_embeddings(ray_local, tmp_path, hf_engine, capsys):
    from llm.runs import read_run

    cfg = make_cfg(tmp_path / "store", tslrec_history=5, tslrec_srs_epochs=1)
    out = str(tmp_path / "adapter")
    summary = finetune(cfg, "tslrec", out, max_steps=2)
    bar = capsys.readouterr().err
    assert "finetune tslrec" in bar and "2/2" in bar and "computing outputs" in bar, \
        "the driver's bar reaches the last step before the knowledge pass, and says what the run does then"
    assert summary["steps"] == 2 and summary["categories"] == 4
    assert Store(out).exists("tslrec_heads.safetensors") and Store(out).exists("tslrec_id_items.safetensors")
    assert_changes_embeddings(hf_engine, out, "tslrec-test")
    store = Store(str(tmp_path / "store"))
    ids, vectors, manifest = read_run(store, summary["embeddings_run"])
    assert vectors.shape == (len(ids), 576) and np.isfinite(vectors).all() and manifest["adapters"] == ["tslrec"]
    dists = np.array(store.read_parquet(f"embeddings/{summary['embeddings_run']}")["categories"].to_pylist())
    assert dists.shape == (len(ids), 4) and np.allclose(dists.sum(1), 1, atol=1e-4)
