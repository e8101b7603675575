"""`guidedrec update` on real data: only new and changed items are embedded, the rest is copied byte for byte.

The base is the first 100 items of amazon-scientific-mini, embedded with the real model and
indexed through the real jobs; the update changes 5% of the texts, adds 2% (real items from
beyond the subset) and deletes 1%.
"""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from catalog import item_prompt, load_catalog
from cluster import Store, StorageError, load_config
from cluster.config import DatasetConfig
from cluster.layout import read_committed_run
from index import (build_from_run, current_version, item_titles, list_versions, load_index, similar_items,
                   version_manifest)
from catalog.changes import read_deletions
from index.update import COPY_PART
from jobs.embed import run_embed
from jobs.index import run_index
from jobs.update import run_repair, run_update

BASE, CHANGED, NEW, DELETED = 100, 5, 2, 1   # 5% changed, 2% new, 1% deleted
TEXT = ["item_id", "title", "categories", "brand"]


def vectors_by_id(store: Store, run: str, part: str | None = None) -> dict[str, bytes]:
    """item -> the raw float32 bytes of its vector, from a whole run or one of its part files."""
    table = store.read_parquet(f"embeddings/{run}" + (f"/{part}" if part else ""), columns=["item_id", "embedding"])
    flat = pc.list_flatten(table["embedding"]).to_numpy().reshape(table.num_rows, -1)
    return {item: row.tobytes() for item, row in zip(table["item_id"].to_pylist(), flat)}


@pytest.fixture(scope="module")
def world(ray_local, data_root, tmp_path_factory):
    """Base catalog, run and Flat index built by the real jobs; then the update."""
    root = tmp_path_factory.mktemp("update")
    full = load_catalog(DatasetConfig(name="amazon-scientific-mini", data_root=str(data_root)))
    items = full.items.select(TEXT)
    base_dir = root / f"sci{BASE}"
    base_dir.mkdir()
    base = items.slice(0, BASE)
    pq.write_table(base, base_dir / "items.parquet")
    known = pc.is_in(full.interactions["item_id"], value_set=base["item_id"])
    pq.write_table(full.interactions.filter(known), base_dir / "interactions.parquet")
    (base_dir / "catalog.json").write_text(json.dumps({"domain": full.domain}))
    cfg = load_config(None, {"storage.uri": str(root / "store"), "dataset.name": str(base_dir),
                             "embed.batch_size": 16, "index.factory": "Flat"})
    store = Store(cfg.storage.uri)
    base_run = run_embed(cfg, store)["run"]
    base_version = run_index(cfg, store)

    rows = base.to_pylist()
    changed = [rows[i]["item_id"] for i in range(5, BASE, BASE // CHANGED)][:CHANGED]
    deleted = [rows[i]["item_id"] for i in range(7, BASE, BASE // DELETED)][:DELETED]
    base_hashes = set(full.items.slice(0, BASE)["content_hash"].to_pylist())
    extra = [r for r in full.items.slice(BASE).to_pylist() if r["content_hash"] not in base_hashes][:NEW]
    new_rows = []
    for row in rows:
        if row["item_id"] in deleted:
            continue
        if row["item_id"] in changed:
            row = {**row, "title": f"{row['title']} (2nd edition, revised)"}
        new_rows.append(row)
    new_rows += [{c: r[c] for c in TEXT} for r in extra]
    new_rows.append({"item_id": "NO-TEXT", "title": None, "categories": None, "brand": None})   # quarantined
    new_file = root / "new_items.parquet"
    pq.write_table(pa.Table.from_pylist(new_rows, schema=base.schema), new_file)
    summary = run_update(cfg, new_file, store)
    return {"cfg": cfg, "store": store, "root": root, "base_run": base_run, "base_version": base_version,
            "base_ids": base["item_id"].to_pylist(),
            "changed": changed, "new": [r["item_id"] for r in extra], "deleted": deleted,
            "new_ids": [r["item_id"] for r in new_rows[:-1]], "new_rows": new_rows[:-1], "summary": summary}


@pytest.mark.slow
def test_index_holds_exactly_the_new_catalog(world):
    store, summary = world["store"], world["summary"]
    assert current_version(store) == summary["version"]
    index = load_index(store)
    assert sorted(index.ids) == sorted(world["new_ids"]) and "NO-TEXT" not in index.ids
    manifest = version_manifest(store)
    assert (manifest["method"], manifest["parent"]) == ("upsert", world["base_version"])
    assert manifest["run"] == summary["run"]
    assert manifest["recall_at_10"] == 1.0 and manifest["count"] == len(world["new_ids"])
    assert sorted(load_index(store, world["base_version"]).ids) == sorted(world["base_ids"])   # old version intact


@pytest.mark.slow
def test_only_new_and_changed_items_were_embedded(world):
    store, summary = world["store"], world["summary"]
    counts = {"new": NEW, "changed": CHANGED, "deleted": DELETED, "unchanged": BASE - CHANGED - DELETED,
              "embedded": NEW + CHANGED, "reused": 0}
    run_manifest = store.manifest(f"embeddings/{summary['run']}")
    assert summary["counts"] == counts and run_manifest["counts"] == counts
    assert run_manifest["parent"] == world["base_run"] and run_manifest["rows"] == len(world["new_ids"])
    assert run_manifest["quarantined"] == 1
    old = vectors_by_id(store, world["base_run"])
    new = vectors_by_id(store, summary["run"])
    fresh = {i for i, v in new.items() if old.get(i) != v}
    assert fresh == set(world["changed"]) | set(world["new"])           # which rows got new vectors
    parts = [n for n in store.list(f"embeddings/{summary['run']}") if n.startswith("part-")]
    embedded = set().union(*(vectors_by_id(store, summary["run"], p) for p in parts))
    assert embedded == fresh                                              # the model saw only those
    copied = vectors_by_id(store, summary["run"], COPY_PART)
    assert set(copied) == set(world["new_ids"]) - fresh
    assert all(copied[i] == old[i] for i in copied)                      # unchanged: byte-identical


@pytest.mark.slow
def test_changed_vectors_are_the_models_vectors_of_the_new_text(world, hf_engine):
    store, summary = world["store"], world["summary"]
    rows = {r["item_id"]: r for r in world["new_rows"]}
    items = world["changed"][:3] + world["new"][:1]
    direct = hf_engine.embed([item_prompt(rows[i], "scientific") for i in items])
    new = vectors_by_id(store, summary["run"])
    got = np.stack([np.frombuffer(new[i], np.float32) for i in items])
    cos = (direct * got).sum(1) / np.linalg.norm(direct, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.999


@pytest.mark.slow
def test_titles_come_from_the_published_catalog(world):
    store, summary = world["store"], world["summary"]
    cat = store.manifest(f"catalog/{summary['run']}")
    assert (cat["domain"], cat["items"], cat["quarantined"]) == ("scientific", len(world["new_ids"]), 1)
    changed = world["changed"][0]
    neighbours = similar_items(store, world["new"][0], k=3)
    assert len(neighbours) == 3 and all(n.title for n in neighbours)
    assert item_titles(store, summary["version"], [changed])[changed].endswith("(2nd edition, revised)")
    quarantine = store.read_parquet(f"catalog/{summary['run']}/quarantine.parquet")
    assert quarantine["item_id"].to_pylist() == ["NO-TEXT"] and quarantine["reason"].to_pylist() == ["no text"]


@pytest.mark.slow
def test_hnsw_takes_the_rebuild_path_and_renamed_items_reuse_vectors(world):
    cfg, store, run = world["cfg"], world["store"], world["summary"]["run"]
    hnsw_cfg = cfg.model_copy(update={"index": cfg.index.model_copy(update={"factory": "HNSW16"})})
    parent = build_from_run(store, run, hnsw_cfg.index)
    rows = store.read_parquet(f"catalog/{run}/items.parquet").select(TEXT).to_pylist()
    renamed = rows[3]["item_id"]
    rows[3] = {**rows[3], "item_id": f"{renamed}-v2"}                    # same text under a new id
    path = world["root"] / "renamed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:-1]))        # and the last item deleted
    summary = run_update(hnsw_cfg, path, store)
    assert summary["method"] == "rebuild" and version_manifest(store)["parent"] == parent
    assert summary["counts"] == {"new": 1, "changed": 0, "deleted": 2, "unchanged": len(rows) - 2,
                                 "embedded": 0, "reused": 1}
    old, new = vectors_by_id(store, run), vectors_by_id(store, summary["run"])
    assert new[f"{renamed}-v2"] == old[renamed] and not [p for p in store.list(f"embeddings/{summary['run']}")
                                                          if p.startswith("part-")]
    index = load_index(store)
    assert index.factory == "HNSW16" and sorted(index.ids) == sorted(r["item_id"] for r in rows[:-1])
    assert summary["run"].startswith(world["base_run"] + "-u") and summary["run"].count("-u2") == 1


@pytest.mark.slow
def test_an_unchanged_catalog_commits_nothing(world):
    cfg, store = world["cfg"], world["store"]
    run = version_manifest(store)["run"]
    path = world["root"] / "same.parquet"
    pq.write_table(store.read_parquet(f"catalog/{run}/items.parquet"), path)
    runs, versions = store.list("embeddings"), list_versions(store)
    summary = run_update(cfg, path, store)
    assert summary["method"] is None and summary["run"] == run and summary["counts"]["embedded"] == 0
    assert store.list("embeddings") == runs and list_versions(store) == versions


@pytest.mark.slow
def test_repair_mends_an_update_run_that_lost_parts(world, tmp_path, monkeypatch, capsys):
    """A damaged update run used to send users to `embed --resume`, which never reaches an update run.
    `update --repair` re-embeds its lost block and re-derives its copy part from the parent, back to the
    bytes committed; a damaged parent stops it before anything is touched."""
    shutil.copytree(world["root"] / "store", tmp_path / "store")
    store = Store(str(tmp_path / "store"))
    cfg = world["cfg"].model_copy(update={"storage": world["cfg"].storage.model_copy(
        update={"uri": str(tmp_path / "store")})})
    run, base = world["summary"]["run"], world["base_run"]
    committed = store.manifest(f"embeddings/{run}")["parts"]
    embedded = sorted(set(committed) - {COPY_PART})[0]
    store.write_bytes(f"embeddings/{run}/{COPY_PART}", store.read_bytes(f"embeddings/{run}/{embedded}"))
    store.delete_file(f"embeddings/{run}/{embedded}")
    with pytest.raises(StorageError, match=f"part {embedded} is missing.*`guidedrec update --repair {run}`"):
        read_committed_run(store, run)

    base_part = sorted(store.manifest(f"embeddings/{base}")["parts"])[0]
    base_bytes = store.read_bytes(f"embeddings/{base}/{base_part}")
    store.delete_file(f"embeddings/{base}/{base_part}")
    with pytest.raises(StorageError, match=f"{base}: part {base_part} is missing.*guidedrec embed --resume"):
        run_repair(cfg, run, store)
    assert {p for p in store.list(f"embeddings/{run}") if p.endswith(".parquet")} == set(committed) - {embedded}
    store.write_bytes(f"embeddings/{base}/{base_part}", base_bytes)

    summary = run_repair(cfg, run, store)
    assert sorted(summary["repaired"]) == sorted([embedded, COPY_PART])
    assert summary["manifest"]["parts"] == committed and summary["manifest"]["parent"] == base
    assert read_committed_run(store, run)[0].num_rows == world["summary"]["manifest"]["rows"]
    with pytest.raises(ValueError, match=f"run {base} was not written by an update"):
        run_repair(cfg, base, store)

    from jobs import cli

    config = tmp_path / "config.yaml"
    config.write_text(f"storage:\n  uri: {store.uri}\n")
    monkeypatch.setattr(sys, "argv", ["guidedrec", "update", "--repair", run, "--config", str(config)])
    cli.main()
    assert f"update: run {run} is intact: nothing to repair" in capsys.readouterr().out
    assert store.manifest(f"embeddings/{run}") == summary["manifest"], "an intact run is left as committed"


def _bad_inputs(root):
    no_id = root / "no_id.csv"
    no_id.write_text("title,brand\nA lamp,Acme\n")
    empty = root / "empty.jsonl"
    empty.write_text('{"item_id": "x1"}\n{"item_id": "x2", "title": "  "}\n')
    return [
        (root / "missing.parquet", FileNotFoundError, "catalog not found: .*missing.parquet"),
        (root / "missing_dir", FileNotFoundError, "catalog not found"),
        (no_id, ValueError, r"no_id.csv: missing column 'item_id' \(found: \['title', 'brand'\]\)"),
        (empty, ValueError, r"empty.jsonl: no valid items \(2 rows quarantined\)"),
    ]


@pytest.mark.slow
def test_bad_input_fails_clearly_and_commits_nothing(world, monkeypatch, capsys):
    cfg, store, root = world["cfg"], world["store"], world["root"]
    before = (store.list("embeddings"), store.list("catalog"), list_versions(store), current_version(store))
    for path, error, message in _bad_inputs(root):
        with pytest.raises(error, match=message):
            run_update(cfg, path, store)
    other_model = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": "/models/other"})})
    good = world["root"] / "new_items.parquet"
    with pytest.raises(ValueError, match="embedded with 'smollm2', the config names '/models/other'"):
        run_update(other_model, good, store)
    assert (store.list("embeddings"), store.list("catalog"), list_versions(store), current_version(store)) == before

    from jobs import cli

    config = root / "config.yaml"
    config.write_text(f"storage:\n  uri: {store.uri}\n")
    monkeypatch.setattr(sys, "argv", ["guidedrec", "update", "--catalog", str(root / "nope.csv"),
                                      "--config", str(config)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error: catalog not found" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_change_feed_touches_only_its_items(world):
    cfg, store, root = world["cfg"], world["store"], world["root"]
    parent = version_manifest(store)["run"]
    live = store.read_parquet(f"catalog/{parent}/items.parquet")
    rows = live.select(TEXT).to_pylist()
    changed, gone = rows[0], rows[1]["item_id"]
    feed = root / "feed.jsonl"
    feed.write_text(json.dumps({**changed, "title": changed["title"] + " (refill)"}) + "\n")
    deletions = root / "gone.txt"
    deletions.write_text(f"# discontinued\n{gone}\n")
    for deleted, message in (([gone, "NOT-AN-ITEM"], r"cannot delete 1 item\(s\) .*\['NOT-AN-ITEM'\]"),
                             ([changed["item_id"]], r"both updated and deleted")):
        with pytest.raises(ValueError, match=message):
            run_update(cfg, feed, store, delta=True, deleted=deleted)
    assert version_manifest(store)["run"] == parent                      # refused before any write
    summary = run_update(cfg, feed, store, delta=True, deleted=read_deletions(deletions))
    assert summary["counts"] == {"new": 0, "changed": 1, "deleted": 1, "unchanged": live.num_rows - 2,
                                 "embedded": 1, "reused": 0}
    items = store.read_parquet(f"catalog/{summary['run']}/items.parquet")
    assert sorted(items["item_id"].to_pylist()) == sorted(set(live["item_id"].to_pylist()) - {gone})
    kept = {r["item_id"]: r for r in items.to_pylist()}
    assert kept[changed["item_id"]]["title"].endswith("(refill)")
    assert kept[rows[2]["item_id"]]["content_hash"] == live["content_hash"][2].as_py()   # the rest as they were
    assert sorted(load_index(store).ids) == sorted(kept)


@pytest.mark.slow
def test_rebuilding_the_index_after_an_update_keeps_the_updated_items(world):
    cfg, store = world["cfg"], world["store"]
    served = version_manifest(store)["run"]
    assert served != world["base_run"]
    version = run_index(cfg.model_copy(update={"index": cfg.index.model_copy(update={"factory": "HNSW16"})}), store)
    assert version_manifest(store, version)["run"] == served
    assert sorted(load_index(store).ids) == sorted(store.read_parquet(f"catalog/{served}/items.parquet")["item_id"]
                                                   .to_pylist())


@pytest.mark.slow
def test_recommend_keeps_its_model_across_updates(world):
    """Training after an update reads the updated run and publishes under the lineage; the service
    then finds that model for every later update of the lineage, with no 409 in between."""
    from fastapi.testclient import TestClient

    from catalog.publish import publish_catalog
    from cluster.config import ServeConfig
    from index import create_app
    from jobs.train import run_train

    store, root = world["store"], world["root"]
    cfg = world["cfg"].model_copy(update={
        "srs": world["cfg"].srs.model_copy(update={"sources": ["id"], "epochs": 2, "hidden_size": 16, "max_len": 8}),
        "dataset": world["cfg"].dataset.model_copy(update={"min_interactions": 1})})
    publish_catalog(cfg, store)   # the 100-item subset keeps no 5-core: train on every interaction of its items
    served = version_manifest(store)["run"]
    metrics = run_train(cfg, store)
    assert set(metrics) == {"popularity", "id"}
    published = store.manifest(f"models/{world['base_run']}/id")
    model_items = store.read_parquet(f"models/{world['base_run']}/id/{published['version']}/items.parquet")
    model_items = model_items["item_id"].to_pylist()
    assert published["run"] == served and not set(world["deleted"]) & set(model_items)

    app = create_app(store, ServeConfig())
    history = model_items[:3]
    with TestClient(app) as client:
        before = client.post("/recommend", json={"items": history, "k": 5})
        assert before.status_code == 200, before.text
        feed = root / "recommend-feed.jsonl"
        row = world["new_rows"][10]
        feed.write_text(json.dumps({**row, "title": row["title"] + " (new pack)"}) + "\n")
        update = run_update(cfg, feed, store, delta=True)
        assert app.state.live.refresh() and app.state.live.snapshot.version == update["version"]
        after = client.post("/recommend", json={"items": history, "k": 5})
        assert after.status_code == 200, after.text
        assert after.json()["model"] == before.json()["model"] and after.json()["version"] == update["version"]


@pytest.mark.slow
def test_items_added_after_training_are_recommended_without_retraining(world):
    """An llmesr model trained before an update serves the items the update adds, from their text:
    a new item worded like the model's first pick for a history comes back for that history."""
    from fastapi.testclient import TestClient

    from catalog.publish import publish_catalog
    from cluster.config import ServeConfig
    from index import create_app
    from jobs.train import run_train

    store, root = world["store"], world["root"]
    cfg = world["cfg"].model_copy(update={
        "srs": world["cfg"].srs.model_copy(update={"sources": ["llmesr"], "epochs": 5, "hidden_size": 16,
                                                   "max_len": 8, "pca_dim": 16}),
        "dataset": world["cfg"].dataset.model_copy(update={"min_interactions": 1})})
    publish_catalog(cfg, store)
    run_train(cfg, store)
    rel = f"models/{world['base_run']}/llmesr"
    history = store.read_parquet(f"{rel}/{store.manifest(rel)['version']}/items.parquet")["item_id"].to_pylist()[:3]
    app = create_app(store, ServeConfig(model_source="llmesr"))
    with TestClient(app) as client:
        first = client.post("/recommend", json={"items": history, "k": 1}).json()["items"][0]["item_id"]
        live = store.read_parquet(f"catalog/{version_manifest(store)['run']}/items.parquet").to_pylist()
        row = next(r for r in live if r["item_id"] == first)
        feed = root / "twin.jsonl"
        feed.write_text(json.dumps({c: row[c] for c in TEXT} | {"item_id": "NEW-TWIN", "title": row["title"] + " (twin pack)"}) + "\n")
        update = run_update(cfg, feed, store, delta=True)
        assert app.state.live.refresh() and app.state.live.snapshot.version == update["version"]
        body = client.post("/recommend", json={"items": history, "k": 10}).json()
        assert "NEW-TWIN" in [r["item_id"] for r in body["items"]], body
        assert client.post("/recommend", json={"items": ["NEW-TWIN"], "k": 3}).status_code == 200   # and read in a history
