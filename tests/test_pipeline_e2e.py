"""The whole pipeline on real data through a real S3 server: ingest, embed, index, train, query, summary."""
import contextlib
import io
import subprocess
import sys

import pytest
import yaml

from catalog import load_catalog
from cluster import load_config
from index import load_index
from jobs.pipeline import run_pipeline
from llm.runs import read_run
from tests.conftest import REPO


@pytest.fixture(scope="module")
def e2e(s3_server, ray_local, data_root, tmp_path_factory):
    settings = {
        "storage": {"uri": f"s3://{s3_server.bucket}/e2e",
                    "s3": {"endpoint": s3_server.endpoint, "access_key": s3_server.access_key,
                           "secret_key": s3_server.secret_key}},
        "dataset": {"name": "amazon-scientific-mini", "data_root": str(data_root)},
        "model": {"max_prompt_tokens": 64},  # half the CPU of the default 128; the checks do not depend on it
        "embed": {"batch_size": 32},
        "srs": {"epochs": 40, "patience": 5},
    }
    path = tmp_path_factory.mktemp("e2e") / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    cfg = load_config(path)
    from cluster import store_from_config

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_pipeline(cfg)
    return path, cfg, store_from_config(cfg), result, printed.getvalue()


@pytest.mark.slow
def test_every_item_has_exactly_one_embedding(e2e):
    _, cfg, store, result, _ = e2e
    cat = load_catalog(cfg.dataset)
    ids, vectors, manifest = read_run(store, result["embed"]["run"])
    assert sorted(ids) == sorted(cat.items["item_id"].to_pylist())
    assert len(set(ids)) == len(ids) == manifest["rows"]
    assert not set(ids) & set(cat.quarantine["item_id"].to_pylist())
    assert vectors.shape == (len(ids), 576) and (vectors != 0).any(axis=1).all()
    assert store.uri.startswith("s3://")


@pytest.mark.slow
def test_index_answers_for_every_item(e2e):
    _, _, store, result, _ = e2e
    ids, _, _ = read_run(store, result["embed"]["run"])
    index = load_index(store)
    found, scores = index.search_items(ids, k=10)
    assert len(found) == len(ids)
    assert all(len(f) == 10 and q not in f for q, f in zip(ids, found))
    assert (scores[:, :-1] >= scores[:, 1:] - 1e-6).all(), "neighbours come best first"


@pytest.mark.slow
def test_trained_models_beat_popularity(e2e):
    _, cfg, _, result, _ = e2e
    metrics = result["metrics"]
    pop = metrics["popularity"]["HR@10"]
    for source in cfg.srs.sources:
        assert metrics[source]["HR@10"] > pop, (source, metrics)


@pytest.mark.slow
def test_pipeline_ends_with_table_sentence_and_where_outputs_are(e2e):
    _, cfg, store, result, printed = e2e
    summary = printed[printed.rindex("== summary"):].splitlines()
    assert summary[1] == "| source | HR@10 | NDCG@10 | MRR | tail/HR@10 |"
    rows = [line.split("|")[1].strip() for line in summary[3:] if line.startswith("| ")]
    assert rows == ["popularity", *sorted(cfg.srs.sources, key=lambda s: s != "id")]
    hr = {source: m["HR@10"] for source, m in result["metrics"].items()}
    best = max(cfg.srs.sources, key=hr.get)
    sentence = summary[3 + len(rows)]
    assert sentence.startswith(f"{'ID-only' if best == 'id' else best} is best on HR@10"), sentence
    assert f"{hr[best]:.1%}" in sentence and f"popularity ({hr['popularity']:.1%})" in sentence
    assert "ID-only" in sentence or best == "id"
    assert set(result["outputs"]) == {"catalog", "embeddings", "index", "report", *(f"model {s}" for s in cfg.srs.sources)}
    root = store.full_uri()
    for name, shown in result["outputs"].items():
        assert any(name in line and shown in line for line in summary), (name, summary)
        rel = shown.split()[0].removeprefix(root + "/")
        assert shown.startswith(root) and store.exists(rel), (name, shown)
    assert summary[-1].startswith("pipeline finished in ")


@pytest.mark.slow
def test_cli_query_prints_titles(e2e):
    path, _, store, result, _ = e2e
    item = read_run(store, result["embed"]["run"])[0][0]
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "query", "--item", item, "-k", "3", "--config", str(path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith(f"nearest to {item}") and len(lines) == 4
    assert all(len(line.split()) >= 3 for line in lines[1:]), "each neighbour has a title"
    bad = subprocess.run([sys.executable, "-m", "jobs.cli", "query", "--item", "no-such-item", "--config", str(path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no-such-item" in bad.stderr and "Traceback" not in bad.stderr
