"""RecInterpreter on real components: a tiny synthetic catalog ingested and an ID SASRec trained by the
train job, the interpret job (Ray Train on the session's Ray, the packaged SmolLM2, frozen) through the
CLI, `guidedrec describe` and POST /describe over what it wrote, their errors, and the benchmark."""
from __future__ import annotations

import contextlib
import hashlib
import io
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from catalog import user_sequences
from cluster import load_config
from cluster.config import IndexConfig, ModelConfig, ServeConfig
from cluster.layout import catalog_file, interpreter_dir, model_dir, run_name
from cluster.storage import Store
from index import build_from_run, create_app
from index.describe import Interpreter, InterpreterMismatch, TitleMatcher, describe_catalog_user
from index.recommender import Recommender
from jobs.cli import app
from jobs.runner import run
from tests.test_index import write_run

SETTINGS = {
    "ray": {"num_cpus": 2, "log_to_driver": False},
    "dataset": {"name": "synthetic", "synthetic_items": 40, "synthetic_users": 60},
    "srs": {"sources": ["id"], "hidden_size": 16, "max_len": 10, "num_layers": 1, "epochs": 1, "batch_size": 64},
    "finetune": {"batch_size": 4, "threads_per_worker": 2, "checkpoint_every": 2, "log_every": 1, "lr": 1e-3,
                 "max_examples": 64},
    "interpret": {"tokens": 2, "max_new_tokens": 12},
}


def _cli(*args) -> tuple[int, str, str]:
    """`guidedrec ...` in this process, through the same runner as the console script: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["guidedrec", *args])
        try:
            run(app)
            code = 0
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def _config(root, **sections) -> tuple:
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({**SETTINGS, "storage": {"uri": str(root / "store")}, **sections}))
    return path, load_config(path)


@pytest.fixture(scope="module")
def published(ray_local, tmp_path_factory):
    """Ingest + train (ID SASRec, 1 epoch) on a tiny catalog, an index over it (vectors written directly: the
    interpreter needs no LLM embeddings), then `guidedrec interpret --max-steps 2` through the CLI."""
    from jobs.ingest import run_ingest
    from jobs.train import run_train

    root = tmp_path_factory.mktemp("interpret")
    path, cfg = _config(root)
    store = Store(str(root / "store"))
    with contextlib.redirect_stdout(io.StringIO()):
        _, cat = run_ingest(cfg, store)
        run_train(cfg, store)
    lineage = run_name(cfg)
    ids = cat.items["item_id"].to_pylist()
    write_run(store, lineage, np.random.default_rng(0).standard_normal((len(ids), 8)).astype(np.float32), ids=ids)
    store.write_parquet(f"catalog/{lineage}/items.parquet", cat.items)   # the run's catalog: the real titles
    build_from_run(store, lineage, IndexConfig())
    code, printed, err = _cli("interpret", "--config", str(path), "--max-steps", "2")
    assert code == 0, err
    sequences = user_sequences(store.read_parquet(catalog_file("synthetic", "interactions")))
    titles = dict(zip(ids, cat.items["title"].to_pylist()))
    return SimpleNamespace(config=path, cfg=cfg, store=store, run=lineage, adapter=store.sub(interpreter_dir(lineage)),
                           sequences=sequences, titles=titles, printed=printed)


def test_interpret_job_commits_the_adapter_and_its_manifest(published):
    adapter, store = published.adapter, published.store
    manifest = adapter.manifest("")
    srs = store.manifest(model_dir(published.run, "id"))
    assert manifest["objective"] == "interpret" and manifest["task"] == "residual" and manifest["steps"] == 2
    assert manifest["model"] == "smollm2" and manifest["tokens"] == 2 and manifest["max_new_tokens"] == 12
    assert manifest["srs"]["dir"] == model_dir(published.run, "id") and manifest["srs"]["version"] == srs["version"]
    assert manifest["srs"]["source"] == "id" and manifest["srs"]["dims"] == 16 and manifest["lora"] is None
    assert set(manifest["files"]) == {"interpret_heads.safetensors"}, "the LLM is frozen: no LoRA files"
    assert not adapter.exists("adapter_model.safetensors")
    payload = adapter.read_bytes("interpret_heads.safetensors")
    assert hashlib.sha256(payload).hexdigest() == manifest["files"]["interpret_heads.safetensors"]
    from safetensors.numpy import load

    weights = load(payload)
    assert weights["project.weight"].shape == (2 * 576, 16) and weights["mean"].shape == (16,)
    assert np.isfinite(manifest["final_loss"]) and "finetune interpret: 2 steps" in published.printed


def test_only_the_adapter_learns_and_the_target_loss_falls():
    """The training step of the objective, in process: the frozen LLM gets no gradient, the adapter does."""
    import torch

    from finetune.interpret import target_loss, target_tokens
    from llm.causal import frozen_lm
    from llm.soft_prompt import StateAdapter, prompt_embeddings, prompt_pieces

    torch.manual_seed(0)
    lm, tokenizer = frozen_lm(ModelConfig(), "cpu")
    adapter = StateAdapter(16, 2, lm.config.hidden_size)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    names = [tokenizer(" " + t, add_special_tokens=False)["input_ids"] for t in ("Star Wars", "Toy Story")]
    states, losses = torch.randn(2, 2, 16), []
    for _ in range(4):
        prompt = prompt_embeddings(lm, prompt_pieces(tokenizer, "residual"), adapter(states))
        loss = target_loss(lm, prompt, [target_tokens(names, [i], [], tokenizer.eos_token_id, 12) for i in (0, 1)],
                           tokenizer.pad_token_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is None for p in lm.parameters()) and adapter.project.weight.grad.abs().sum() > 0
    assert losses[-1] < losses[0], losses


def test_title_matcher_prefers_exact_titles_then_the_nearest():
    matcher = TitleMatcher({"a": "Star Wars (1977)", "b": "Contact", "c": "Star Trek: Generations", "d": "Contact"})
    found = matcher.match("star wars 1977; Star Trek Generatoins; nothing like any title at all; CONTACT")
    assert [(n.item_id, n.similarity) for n in found][:1] == [("a", 1.0)]
    assert found[1].item_id == "c" and 0.6 <= found[1].similarity < 1 and found[1].named == "Star Trek Generatoins"
    assert [n.item_id for n in found] == ["a", "c", "b"], "an unmatched part names nothing; shared titles: the first"
    assert matcher.match("") == [] and matcher.match(";;") == []


def test_describe_cli_prints_the_text_and_the_items_it_names(published):
    user = sorted(published.sequences)[0]
    code, out, err = _cli("describe", "--user", user, "--config", str(published.config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("residual: ") and lines[1] in ("names:", "names no catalog item")
    described = describe_catalog_user(published.cfg, published.store, user)
    assert described.task == "residual" and f"residual: {described.text}" == lines[0], "greedy: the same text"
    for item in described.items:
        assert published.titles[item.item_id] == item.title and 0.6 <= item.similarity <= 1 and item.named


def test_describe_endpoint_answers_with_text_and_named_items(published):
    client = TestClient(create_app(published.store, ServeConfig()))
    history = published.sequences[sorted(published.sequences)[1]][:6]
    r = client.post("/describe", json={"items": history})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["interpreter"] == published.adapter.uri and body["description"]["task"] == "residual"
    assert isinstance(body["description"]["text"], str)
    for item in body["description"]["items"]:
        assert set(item) == {"item_id", "title", "named", "similarity"} and item["item_id"] in published.titles
    same = client.post("/describe", json={"items": history}).json()
    assert same["description"] == body["description"], "the interpreter is loaded once and greedy"
    r = client.post("/describe", json={"items": [history[0], "no-such-item"]})
    assert r.status_code == 404 and "'no-such-item'" in r.json()["detail"]
    r = client.post("/describe", json={"items": history[:1]})
    assert r.status_code == 422 and "at least 2 items" in r.json()["detail"]
    assert client.post("/describe", json={"items": []}).status_code == 422


def test_describe_errors_are_one_line_or_4xx(published, tmp_path):
    config = ["--config", str(published.config)]
    code, _, err = _cli("describe", "--user", "nobody", *config)
    assert code == 2 and "user 'nobody' is not in the interactions" in err and len(err.strip().splitlines()) == 1
    user = sorted(published.sequences)[0]
    code, _, err = _cli("describe", "--user", user, "--adapter", str(tmp_path / "none"), *config)
    assert code == 2 and "no interpreter adapter at" in err and "guidedrec interpret" in err, err
    assert len(err.strip().splitlines()) == 1
    # A served index whose run has no interpreter: 409 saying what to run.
    bare = Store(str(tmp_path / "bare"))
    write_run(bare, "plain", np.ones((4, 8), np.float32))
    build_from_run(bare, "plain", IndexConfig())
    r = TestClient(create_app(bare, ServeConfig())).post("/describe", json={"items": ["item-00001", "item-00002"]})
    assert r.status_code == 409 and "guidedrec interpret" in r.json()["detail"]


def test_interpret_without_a_published_srs_says_what_to_run(ray_local, tmp_path):
    path, _ = _config(tmp_path)
    code, _, err = _cli("interpret", "--config", str(path), "--max-steps", "2")
    assert code == 2 and "guidedrec train" in err and "guidedrec ingest" in err, err
    assert len(err.strip().splitlines()) == 1


def test_an_adapter_for_another_srs_or_llm_width_is_refused(published, tmp_path):
    """The interpreter's width checks, with real models of other widths: an SRS (untrained) and a tiny Llama."""
    from safetensors.torch import load as load_safetensors
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llm.causal import frozen_lm
    from llm.soft_prompt import StateAdapter
    from llm.checkpoints import resolve_model_path
    from srs import build_model

    manifest = published.adapter.manifest("")
    adapter = StateAdapter.from_weights(load_safetensors(published.adapter.read_bytes("interpret_heads.safetensors")),
                                        manifest["tokens"])
    lm, tokenizer = frozen_lm(ModelConfig(), "cpu")
    narrow = build_model("id", 40, published.cfg.srs.model_copy(update={"hidden_size": 8}))
    with pytest.raises(InterpreterMismatch, match="reads 16-dim SRS states, the SRS model x gives 8"):
        Interpreter(manifest, adapter, Recommender(narrow.eval(), 10, [], "id", "x"), lm, tokenizer, "a")
    small = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=lm.config.vocab_size))
    srs = build_model("id", 40, published.cfg.srs)
    with pytest.raises(InterpreterMismatch, match="writes 576-wide token embeddings, the LLM smollm2 takes 32"):
        Interpreter(manifest, adapter, Recommender(srs.eval(), 10, [], "id", "x"), small.eval(),
                    AutoTokenizer.from_pretrained(resolve_model_path("smollm2")), "a")


def test_benchmark_runs_the_recovery_task_on_the_published_srs(published, capsys, tmp_path):
    from benchmarks.interpret import main

    main(["--config", str(published.config), "--task", "recovery", "--max-steps", "2", "--users", "8",
          "--out", str(tmp_path / "recovery")])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(r"interpret: task=recovery dataset=synthetic samples=8 recovered=(\S+) over5=(\S+) "
                     r"nearest_recovered=(\S+) nearest_over5=(\S+) chance=(\S+)", last)
    assert m, last
    assert all(np.isfinite(float(x)) for x in m.groups())
