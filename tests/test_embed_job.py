"""The Ray Data embedding job on the embedded Ray: one row per item, exactly what the engine computes."""
import numpy as np
import pyarrow as pa
import pytest

from catalog import item_prompt
from cluster import Store, load_config
from jobs.embed import run_embed
from llm.runs import read_run


@pytest.fixture(scope="module")
def embedded(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    cfg = load_config(None, {"storage.uri": str(root), "dataset.synthetic_items": 40, "dataset.synthetic_users": 80,
                             "embed.batch_size": 8})
    store = Store(str(root))
    store.write_bytes("embeddings/synthetic-smollm2-base/stale.parquet", b"left by a crashed attempt")
    return cfg, store, run_embed(cfg, store)


def test_one_row_per_item_with_the_contract_schema(embedded):
    cfg, store, summary = embedded
    items = store.read_parquet("catalog/synthetic/items.parquet")
    ids, vectors, manifest = read_run(store, summary["run"])
    assert sorted(ids) == sorted(items["item_id"].to_pylist()) and len(ids) == items.num_rows
    assert manifest["rows"] == items.num_rows and manifest["dims"] == 576
    table = store.read_parquet(f"embeddings/{summary['run']}")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 576)
    assert set(table["model"].to_pylist()) == {"smollm2"} and set(table["adapter"].to_pylist()) == {None}
    assert "stale.parquet" not in store.list(f"embeddings/{summary['run']}")


def test_vectors_equal_the_engine_on_the_same_prompts(embedded, hf_engine):
    _, store, summary = embedded
    items = store.read_parquet("catalog/synthetic/items.parquet").to_pylist()[:6]
    ids, vectors, _ = read_run(store, summary["run"])
    pos = {item: i for i, item in enumerate(ids)}
    direct = hf_engine.embed([item_prompt(row, "product") for row in items])
    got = vectors[[pos[row["item_id"]] for row in items]]
    cos = (direct * got).sum(1) / np.linalg.norm(direct, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.999


def test_rerun_of_a_committed_run_does_nothing(embedded):
    cfg, store, summary = embedded
    before = store.read_bytes(f"embeddings/{summary['run']}/_manifest.json")
    again = run_embed(cfg, store)
    assert again["parts"] == summary["parts"]
    assert store.read_bytes(f"embeddings/{summary['run']}/_manifest.json") == before
