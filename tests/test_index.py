"""ItemIndex and index versions over committed embeddings runs, on local files and real S3."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow as pa
import pytest

from cluster.config import IndexConfig
from cluster.layout import read_parts
from cluster.storage import StorageError, Store
from index import (
    ItemIndex,
    NoIndexError,
    build_from_run,
    current_version,
    item_titles,
    list_versions,
    load_index,
    prune_versions,
    recall_at_k,
    save_version,
    set_current,
    similar_items,
    update_from_run,
    version_manifest,
)
from index.faiss_index import HNSW_EF_SEARCH
from llm.stages import embedding_schema


def random_vectors(n: int = 300, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def clustered_vectors(n: int = 2000, d: int = 32, clusters: int = 20, seed: int = 1) -> np.ndarray:
    """Tight clusters, like real item embeddings: the case approximate indexes are built for."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    points = centers[rng.integers(0, clusters, n)] + 0.15 * rng.standard_normal((n, d))
    return points.astype(np.float32)


def ids_for(n: int) -> list[str]:
    return [f"item-{i:05d}" for i in range(n)]


def write_run(store: Store, run: str, vectors: np.ndarray, *, commit: bool = True,
              ids: list[str] | None = None) -> list[str]:
    """A tiny embeddings run as the embed job writes it: two part files, a catalog, a manifest."""
    n, d = vectors.shape
    ids = ids or ids_for(n)
    catalog = f"catalog/{run}/items.parquet"
    store.write_parquet(catalog, pa.table({"item_id": ids, "title": [f"Title {i}" for i in ids]}))
    half = n // 2
    for part, rows in enumerate([slice(0, half), slice(half, n)]):
        m = len(ids[rows])
        store.write_parquet(f"embeddings/{run}/part-{part:06d}.parquet", pa.Table.from_arrays([
            pa.array(ids[rows], pa.string()), pa.array([f"h{i}" for i in ids[rows]], pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].ravel()), d),
            pa.array([False] * m), pa.array(["smollm2"] * m), pa.array([None] * m, pa.string()),
        ], schema=embedding_schema(d)))
    if commit:
        store.commit(f"embeddings/{run}", {"dims": d, "rows": n, "catalog": catalog, "parts": read_parts(store, run)[1]})
    return ids


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """FAISS's OpenMP threads spin on a shared 2-core box (5-10x slower here); these tests need no parallelism."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "store"))
    return request.getfixturevalue("s3_store")


@pytest.fixture(scope="module")
def clustered() -> tuple[list[str], np.ndarray]:
    x = clustered_vectors()
    return ids_for(len(x)), x


# -- building and searching ----------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_search_returns_self_first(metric):
    x = random_vectors()
    index = ItemIndex.build(ids_for(len(x)), x, metric=metric)
    found, scores = index.search(x, k=5)
    assert [row[0] for row in found] == index.ids
    expected_self = 1.0 if metric == "cosine" else 0.0
    np.testing.assert_allclose(scores[:, 0], expected_self, atol=1e-4)
    assert scores.shape == (len(x), 5)


def test_cosine_scores_match_numpy():
    x = random_vectors()
    index = ItemIndex.build(ids_for(len(x)), x)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit[:10] @ unit.T
    found, scores = index.search(x[:10] * 3.0, k=4)   # query scale does not matter for cosine
    for row in range(10):
        top = np.argsort(-sims[row])[:4]
        assert found[row] == [index.ids[j] for j in top]
        np.testing.assert_allclose(scores[row], sims[row, top], rtol=1e-5)


def test_inner_product_keeps_norms():
    x = np.array([[1, 0], [10, 0], [0, 1]], dtype=np.float32)
    index = ItemIndex.build(["a", "b", "c"], x, metric="ip")
    found, scores = index.search(np.array([1, 0], dtype=np.float32), k=3)
    assert found == [["b", "a", "c"]]
    np.testing.assert_allclose(scores[0], [10, 1, 0])


def test_search_items_excludes_self(clustered):
    ids, x = clustered
    index = ItemIndex.build(ids, x)
    found, scores = index.search_items(ids[:50], k=10)
    assert scores.shape == (50, 10) and not np.isnan(scores).any()
    for item, neighbours in zip(ids[:50], found):
        assert len(neighbours) == 10 and item not in neighbours
    with_self, _ = index.search_items(ids[:5], k=3, exclude_self=False)
    assert [row[0] for row in with_self] == ids[:5]


def test_k_larger_than_the_index_is_clamped():
    index = ItemIndex.build(["a", "b", "c"], random_vectors(3, 4))
    found, scores = index.search(random_vectors(2, 4, seed=5), k=10)
    assert scores.shape == (2, 3) and all(sorted(row) == ["a", "b", "c"] for row in found)
    found, scores = index.search_items(["a"], k=10)
    assert sorted(found[0]) == ["b", "c"] and scores.shape == (1, 2)


def test_vector_is_the_indexed_vector():
    x = random_vectors()
    ids = ids_for(len(x))
    index = ItemIndex.build(ids, x, metric="cosine")
    np.testing.assert_allclose(index.vector(ids[7]), x[7] / np.linalg.norm(x[7]), rtol=1e-6)
    assert index.dims == 16 and len(index) == len(x) and index.factory == "Flat"


@pytest.mark.parametrize("factory", ["HNSW32", "IVF32,Flat"])
def test_approximate_indexes_recall_on_clustered_data(clustered, factory):
    ids, x = clustered
    exact, _ = ItemIndex.build(ids, x).search_items(ids[:200], k=10)
    approx_index = ItemIndex.build(ids, x, factory=factory)
    approx, _ = approx_index.search_items(ids[:200], k=10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9, f"{factory} recall@10 {recall:.3f}"
    np.testing.assert_allclose(approx_index.vector(ids[3]), ItemIndex.build(ids, x).vector(ids[3]), rtol=1e-6)


def test_bytes_round_trip_keeps_search_settings():
    ids, x = ids_for(2000), clustered_vectors()
    built = ItemIndex.build(ids, x, factory="HNSW32")
    hnsw = ItemIndex.from_bytes(built.to_bytes(), ids, built.labels, factory="HNSW32", metric="cosine")
    assert faiss.downcast_index(hnsw.index.index).hnsw.efSearch == HNSW_EF_SEARCH
    assert hnsw.search_params == {"ef_search": HNSW_EF_SEARCH}
    ivf_index = ItemIndex.build(ids, x, factory="IVF32,Flat")
    ivf = ItemIndex.from_bytes(ivf_index.to_bytes(), ids, ivf_index.labels, factory="IVF32,Flat", metric="cosine")
    assert faiss.extract_index_ivf(ivf.index).nprobe == 8 and ivf.search_params == {"nprobe": 8}
    a, sa = ivf_index.search(x[:20], 5)
    b, sb = ivf.search(x[:20], 5)
    assert a == b and np.array_equal(sa, sb)


# -- errors ------------------------------------------------------------------------------
def test_build_rejects_bad_input():
    x = random_vectors(10, 4)
    ids = ids_for(10)
    with pytest.raises(ValueError, match="9 ids for 10 vectors"):
        ItemIndex.build(ids[:9], x)
    with pytest.raises(ValueError, match="duplicate ids.*item-00000"):
        ItemIndex.build([ids[0]] + ids[:9], x)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf.*item-00003"):
        ItemIndex.build(ids, bad)
    with pytest.raises(ValueError, match="float32, got float64"):
        ItemIndex.build(ids, x.astype(np.float64))
    with pytest.raises(ValueError, match="2-D"):
        ItemIndex.build(ids, x.ravel())
    with pytest.raises(ValueError, match="zero vectors.*item-00002"):
        ItemIndex.build(ids, np.where(np.arange(10)[:, None] == 2, 0, x).astype(np.float32))
    with pytest.raises(ValueError, match="no vectors"):
        ItemIndex.build([], np.empty((0, 4), np.float32))
    with pytest.raises(ValueError, match="unknown metric 'dot'"):
        ItemIndex.build(ids, x, metric="dot")
    with pytest.raises(ValueError, match="FAISS cannot build index 'Bogus12'"):
        ItemIndex.build(ids, x, factory="Bogus12")


def test_ivf_needs_enough_training_vectors():
    with pytest.raises(ValueError, match="'IVF64,Flat' has 64 IVF lists.*got 50"):
        ItemIndex.build(ids_for(50), random_vectors(50, 8), factory="IVF64,Flat")


def test_search_errors_name_the_problem():
    index = ItemIndex.build(ids_for(20), random_vectors(20, 8))
    with pytest.raises(ValueError, match="4 dims, the index expects 8"):
        index.search(random_vectors(2, 4), k=3)
    with pytest.raises(KeyError, match="'nope'"):
        index.search_items(["item-00001", "nope"], k=3)
    with pytest.raises(KeyError, match="'ghost'"):
        index.vector("ghost")
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search_items(["item-00001"], k=0)


# -- versions in a store -------------------------------------------------------------------
def test_save_load_round_trip(store):
    ids, x = ids_for(400), clustered_vectors(400, 16, clusters=8)
    index = ItemIndex.build(ids, x, factory="HNSW16")
    version = save_version(store, index, run="r1", extra={"catalog": "catalog/r1/items.parquet"})
    assert sorted(store.list(f"index/{version}")) == ["_manifest.json", "ids.parquet", "index.faiss"]
    loaded = load_index(store, version)
    assert loaded.ids == ids and (loaded.factory, loaded.metric, loaded.dims) == ("HNSW16", "cosine", 16)
    a, sa = index.search_items(ids[:30], k=8)
    b, sb = loaded.search_items(ids[:30], k=8)
    assert a == b and np.array_equal(sa, sb)
    manifest = version_manifest(store, version)
    assert {k: manifest[k] for k in ["run", "factory", "metric", "dims", "count", "catalog"]} == {
        "run": "r1", "factory": "HNSW16", "metric": "cosine", "dims": 16, "count": 400,
        "catalog": "catalog/r1/items.parquet"}


def test_build_from_run_and_current_switch(store):
    x = clustered_vectors(300, 16, clusters=6)
    ids = write_run(store, "run-a", x)
    with pytest.raises(NoIndexError, match="no index built yet: run `guidedrec index`"):
        current_version(store)
    first = build_from_run(store, "run-a", IndexConfig())
    assert current_version(store) == first and load_index(store).ids == ids
    second = build_from_run(store, "run-a", IndexConfig(factory="IVF8,Flat", metric="l2"))
    assert second > first and list_versions(store) == [first, second]
    assert current_version(store) == second and load_index(store).factory == "IVF8,Flat"
    assert load_index(store, first).factory == "Flat"            # old versions remain
    assert json.loads(store.read_bytes("index/CURRENT"))["version"] == second
    assert not [n for n in store.list("index") if n.startswith(".tmp")]
    set_current(store, first)                                     # roll back
    assert load_index(store).metric == "cosine"


def test_neighbours_with_titles(store):
    x = clustered_vectors(200, 8, clusters=4)
    ids = write_run(store, "run-t", x)
    version = build_from_run(store, "run-t", IndexConfig())
    neighbours = similar_items(store, ids[0], k=5)
    assert len(neighbours) == 5 and ids[0] not in [n.item_id for n in neighbours]
    assert all(n.title == f"Title {n.item_id}" for n in neighbours)
    assert neighbours[0].score >= neighbours[-1].score
    run_manifest = store.manifest("embeddings/run-t")
    assert item_titles(store, run_manifest, [ids[1], "unknown"]) == {ids[1]: f"Title {ids[1]}"}
    assert item_titles(store, version, [ids[2]]) == {ids[2]: f"Title {ids[2]}"}


def test_missing_or_uncommitted_run_is_refused(tmp_path):
    store = Store(str(tmp_path / "s"))
    with pytest.raises(StorageError, match="never committed"):
        build_from_run(store, "nope", IndexConfig())
    write_run(store, "half", random_vectors(20, 4), commit=False)
    with pytest.raises(StorageError, match="half.*never committed"):
        build_from_run(store, "half", IndexConfig())
    assert not store.exists("index")


def test_a_run_whose_parts_changed_after_commit_is_refused(tmp_path):
    """Readers read exactly the committed parts and check each against its recorded hash."""
    store = Store(str(tmp_path / "s"))
    write_run(store, "r", random_vectors(20, 4))
    store.write_bytes("embeddings/r/part-000001.parquet", store.read_bytes("embeddings/r/part-000000.parquet"))
    with pytest.raises(StorageError, match="part part-000001.parquet differs from the one committed .*--resume"):
        build_from_run(store, "r", IndexConfig())
    store.fs.delete_file(store.path("embeddings/r/part-000001.parquet"))
    with pytest.raises(StorageError, match="embeddings/r: part part-000001.parquet is missing .*--resume"):
        build_from_run(store, "r", IndexConfig())
    assert not store.exists("index")


def test_run_dims_must_match_manifest(tmp_path):
    store = Store(str(tmp_path / "s"))
    write_run(store, "r", random_vectors(20, 4))
    store.commit("embeddings/r", {**store.manifest("embeddings/r"), "dims": 5})
    with pytest.raises(ValueError, match="manifest says 5 dims, Parquet holds 4"):
        build_from_run(store, "r", IndexConfig())


def test_set_current_refuses_an_uncommitted_version(tmp_path):
    store = Store(str(tmp_path / "s"))
    store.write_bytes("index/20990101T000000000000Z-abcdef/index.faiss", b"partial")
    with pytest.raises(StorageError, match="never committed"):
        set_current(store, "20990101T000000000000Z-abcdef")
    assert list_versions(store) == []


# -- index types, recall and search knobs ----------------------------------------------------
@pytest.mark.parametrize("factory, floor", [("Flat", 1.0), ("HNSW32", 0.95), ("IVF32,Flat", 0.95),
                                            ("IVF32,PQ16", 0.5)])
def test_recall_against_exact_search(clustered, factory, floor):
    ids, x = clustered
    index = ItemIndex.build(ids, x, factory=factory)
    assert floor <= recall_at_k(index, ids, x, queries=200) <= 1.0


def test_ivf_pq_trains_without_polysemous_codes(clustered):
    ids, x = clustered
    index = ItemIndex.build(ids, x, factory="IVF16,PQ8")
    assert faiss.downcast_index(faiss.extract_index_ivf(index.index)).do_polysemous_training is False
    found, _ = index.search_items(ids[:5], k=3)
    assert all(len(row) == 3 for row in found)


def test_search_knobs_trade_recall(clustered):
    ids, x = clustered
    ivf = ItemIndex.build(ids, x, factory="IVF32,Flat", nprobe=1)
    assert ivf.search_params == {"nprobe": 1}
    narrow = recall_at_k(ivf, ids, x, queries=200)
    ivf.set_search(nprobe=500)                      # capped at the 32 lists: exhaustive, so exact
    assert ivf.search_params == {"nprobe": 32} and recall_at_k(ivf, ids, x, queries=200) == 1.0 > narrow
    assert ItemIndex.build(ids, x, factory="HNSW16", ef_search=40).search_params == {"ef_search": 40}
    assert ItemIndex.build(ids, x).search_params == {}


# -- upserts -------------------------------------------------------------------------------
def _changes(ids: list[str], x: np.ndarray):
    """Base = first 1500 items; then 10 changed (vectors of items 1500+), 50 new, 10 deleted."""
    changed, new, deleted = ids[10:20], ids[1600:1650], ids[100:110]
    vectors = np.concatenate([x[1500:1510], x[1600:1650]])
    content = dict(zip(ids[:1500], x[:1500]))
    content.update(zip(changed + new, vectors))
    for item in deleted:
        del content[item]
    return changed, new, deleted, vectors, content


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,PQ16"])
def test_upsert_gives_the_new_content_and_leaves_the_original(clustered, factory):
    ids, x = clustered
    base = ItemIndex.build(ids[:1500], x[:1500], factory=factory)
    before, _ = base.search(x[:20], 5)
    changed, new, deleted, vectors, content = _changes(ids, x)
    assert base.supports_removal
    updated = base.upsert(changed + new, vectors, delete=deleted)
    assert sorted(updated.ids) == sorted(content) and updated.index.ntotal == len(content)
    labels = dict(zip(updated.ids, updated.labels.tolist()))
    assert [labels[i] for i in changed] == list(range(10, 20))             # changed items keep their label
    assert sorted(labels[i] for i in new) == list(range(1500, 1550))       # new ones get fresh labels
    unit = vectors[0] / np.linalg.norm(vectors[0])
    np.testing.assert_allclose(updated.vector(changed[0]), unit, atol=0.1 if "PQ" in factory else 1e-6)
    with pytest.raises(KeyError):
        updated.vector(deleted[0])
    assert len(base) == 1500 and base.search(x[:20], 5)[0] == before      # the original is untouched
    assert base.vector(deleted[0]) is not None
    fresh_ids, fresh_x = list(content), np.stack(list(content.values()))
    fresh = ItemIndex.build(fresh_ids, fresh_x, factory=factory)           # as good as a rebuild
    assert recall_at_k(updated, fresh_ids, fresh_x, 200) >= recall_at_k(fresh, fresh_ids, fresh_x, 200) - 0.1
    if factory == "Flat":                                                   # exact: the same answers
        a, sa = updated.search(fresh_x[:50], 10)
        b, sb = fresh.search(fresh_x[:50], 10)
        assert a == b
        np.testing.assert_allclose(sa, sb, rtol=1e-5)


def test_upsert_refuses_what_it_cannot_do(clustered):
    ids, x = clustered
    hnsw = ItemIndex.build(ids[:100], x[:100], factory="HNSW16")
    assert not hnsw.supports_removal
    with pytest.raises(ValueError, match="'HNSW16' index cannot remove vectors: rebuild"):
        hnsw.upsert(ids[:1], x[:1])
    flat = ItemIndex.build(ids[:100], x[:100])
    with pytest.raises(KeyError, match="not in the index.*item-00500"):
        flat.upsert([], np.empty((0, 32), np.float32), delete=["item-00500"])
    with pytest.raises(ValueError, match="both upserted and deleted.*item-00001"):
        flat.upsert(ids[1:2], x[1:2], delete=ids[1:2])
    with pytest.raises(ValueError, match="4 dims, the index expects 32"):
        flat.upsert(["new"], random_vectors(1, 4))
    with pytest.raises(ValueError, match="leave the index empty"):
        flat.upsert([], np.empty((0, 32), np.float32), delete=ids[:100])


# -- versions: recall, updates, pruning ----------------------------------------------------
def test_manifest_records_recall_and_id_map(store):
    x = clustered_vectors(300, 16, clusters=6)
    ids = write_run(store, "run-r", x)
    flat = version_manifest(store, build_from_run(store, "run-r", IndexConfig()))
    assert flat["recall_at_10"] == 1.0 and flat["recall_queries"] == 300 and flat["method"] == "build"
    hnsw = version_manifest(store, build_from_run(store, "run-r", IndexConfig(factory="HNSW8", ef_search=10,
                                                                              recall_sample=50)))
    assert 0 < hnsw["recall_at_10"] <= 1 and hnsw["recall_queries"] == 50 and hnsw["ef_search"] == 10
    assert load_index(store).search_params == {"ef_search": 10}
    skipped = version_manifest(store, build_from_run(store, "run-r", IndexConfig(recall_sample=0)))
    assert skipped["recall_at_10"] is None
    id_map = store.read_parquet(f"index/{current_version(store)}/ids.parquet")
    assert id_map.column_names == ["item_id", "faiss_id"] and id_map["item_id"].to_pylist() == ids


def test_versions_without_labels_still_load(tmp_path):
    store = Store(str(tmp_path / "s"))
    write_run(store, "r", random_vectors(30, 4))
    version = build_from_run(store, "r", IndexConfig())
    ids = store.read_parquet(f"index/{version}/ids.parquet").select(["item_id"])
    store.write_parquet(f"index/{version}/ids.parquet", ids)     # the id map before upserts existed
    assert load_index(store).search_items(["item-00003"], k=2)[0][0][0] != "item-00003"


@pytest.mark.parametrize("base, cfg, method", [
    ("Flat", IndexConfig(), "upsert"),
    ("IVF8,Flat", IndexConfig(factory="IVF8,Flat"), "upsert"),
    ("HNSW16", IndexConfig(factory="HNSW16"), "rebuild"),
    ("Flat", IndexConfig(factory="IVF8,Flat"), "rebuild"),     # the config names another type
])
def test_update_from_run_upserts_or_rebuilds(tmp_path, base, cfg, method):
    store = Store(str(tmp_path / "s"))
    ids, x = ids_for(2000), clustered_vectors(2000, 16, clusters=8)
    write_run(store, "r1", x[:1500], ids=ids[:1500])
    parent = build_from_run(store, "r1", IndexConfig(factory=base))
    changed, new, deleted, _, content = _changes(ids, x)
    write_run(store, "r2", np.stack(list(content.values())), ids=list(content))
    version = update_from_run(store, "r2", cfg, upserted=changed + new, deleted=deleted)
    manifest = version_manifest(store, version)
    assert current_version(store) == version != parent
    assert (manifest["method"], manifest["parent"], manifest["run"]) == (method, parent, "r2")
    assert (manifest["factory"], manifest["upserted"], manifest["deleted"]) == (cfg.factory, 60, 10)
    assert manifest["recall_at_10"] >= 0.9
    index = load_index(store)
    assert sorted(index.ids) == sorted(content)
    np.testing.assert_allclose(index.vector(changed[0]), content[changed[0]] / np.linalg.norm(content[changed[0]]),
                               rtol=1e-5)
    assert load_index(store, parent).factory == base and len(load_index(store, parent)) == 1500


def test_update_refuses_a_run_that_does_not_match(tmp_path):
    store = Store(str(tmp_path / "s"))
    ids, x = ids_for(60), random_vectors(60, 8)
    write_run(store, "r1", x[:50], ids=ids[:50])
    parent = build_from_run(store, "r1", IndexConfig())
    write_run(store, "r2", x, ids=ids)      # 10 new items that the caller forgot to name
    with pytest.raises(RuntimeError, match="does not give the items of run r2: not published"):
        update_from_run(store, "r2", IndexConfig(), upserted=[], deleted=[])
    with pytest.raises(KeyError, match="lacks 1 upserted items.*ghost"):
        update_from_run(store, "r2", IndexConfig(), upserted=["ghost"], deleted=[])
    assert current_version(store) == parent and list_versions(store) == [parent]


def test_prune_keeps_the_newest_and_current(tmp_path):
    from jobs.index import main as index_main

    store = Store(str(tmp_path / "s"))
    write_run(store, "r", random_vectors(30, 4))
    with pytest.raises(ValueError, match="keep must be >= 0"):
        prune_versions(store, -1)
    assert prune_versions(store, 0) == []
    v1, v2, v3, v4 = (build_from_run(store, "r", IndexConfig()) for _ in range(4))
    set_current(store, v1)
    assert prune_versions(store, keep=2) == [v2]
    assert list_versions(store) == [v1, v3, v4] and not store.exists(f"index/{v2}")
    config = tmp_path / "config.yaml"
    config.write_text(f"storage:\n  uri: {store.uri}\n")
    index_main(config=config, dataset=None, prune=True, keep=0, verbose=False)   # `guidedrec index --prune --keep 0`
    assert list_versions(store) == [v1] and current_version(store) == v1 and len(load_index(store)) == 30
