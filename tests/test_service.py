"""The HTTP query service: endpoints, errors, auth, hot swap under load, Ray Serve hosting.

Stored artefacts are real and tiny: a committed embeddings run, index versions built from it,
and SRS models published with srs.published.publish_model (random weights, except the slow test
that trains one through Ray Train).
"""
from __future__ import annotations

import contextlib
import copy
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import schemathesis
import torch
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from safetensors.torch import save as save_safetensors
from schemathesis import GenerationMode

from cluster.config import IndexConfig, ServeConfig, SRSConfig
from cluster.layout import is_version
from cluster.storage import Store
from index import Recommender, build_from_run, create_app, similar_items
from srs import build_model
from srs.data import pad_left
from srs.published import publish_model
from tests.ports import free_port
from tests.test_index import clustered_vectors, write_run

RUN = "run-a"
N_ITEMS, DIMS = 300, 16
TINY = SRSConfig(hidden_size=16, num_layers=1, num_heads=1, max_len=8, dropout=0.1, pca_dim=8)
MAX_K = 50
FUZZ_TOKEN, FUZZ_CASES = "fuzz-token", 1000   # cases per generation mode over all operations: seconds each


def publish_random_model(store: Store, run: str, source: str, item_ids: list[str], cfg: SRSConfig = TINY,
                         valid_ndcg: float = 0.0, **inputs: np.ndarray) -> torch.nn.Module:
    """An untrained model published exactly as `guidedrec train` publishes a trained one, with the
    validation NDCG@10 its training would have measured."""
    torch.manual_seed(0)
    model = build_model(source, len(item_ids), cfg, **inputs).eval()
    ckpt = f"ray-train/{run}/{source}"
    store.write_bytes(f"{ckpt}/model.safetensors", save_safetensors(model.state_dict()))
    store.write_json(f"{ckpt}/srs.json", {"source": source, "cfg": cfg.model_dump(), "metrics": {}})
    result = SimpleNamespace(checkpoint=store.path(ckpt), test={}, valid={"NDCG@10": valid_ndcg}, best_epoch=0)
    publish_model(store, run, source, result, item_ids)
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with one index version over RUN and both SRS sources published for it; the
    models cover the first 250 items, as the k-core covers part of the catalog."""
    store = Store(str(tmp_path_factory.mktemp("serve") / "store"))
    vectors = clustered_vectors(N_ITEMS, DIMS, clusters=6)
    ids = write_run(store, RUN, vectors)
    version = build_from_run(store, RUN, IndexConfig())
    model_ids = ids[:250]
    models = {"id": publish_random_model(store, RUN, "id", model_ids, valid_ndcg=0.1),
              "llmemb": publish_random_model(store, RUN, "llmemb", model_ids, valid_ndcg=0.2,
                                             item_embeddings=vectors[:250])}
    # What the service serves: the llmemb model gives the 50 items it never trained on rows from their
    # embeddings (the id model cannot, so it serves its 250).
    served = copy.deepcopy(models["llmemb"])
    served.items.add_items(torch.from_numpy(vectors[250:]))
    return SimpleNamespace(store=store, ids=ids, vectors=vectors, version=version, model_ids=model_ids, models=models,
                           served_llmemb=served)


@pytest.fixture(scope="module")
def client(world):
    return TestClient(create_app(world.store, ServeConfig(max_k=MAX_K)))


def expected_recommendations(model, model_ids: list[str], items: list[str], k: int, exclude: set[str]):
    """The top-k straight from the model: what /recommend must return."""
    index = {item: i + 1 for i, item in enumerate(model_ids)}
    with torch.no_grad():
        scores = model.score_all(torch.from_numpy(pad_left([[index[i] for i in items]], TINY.max_len)))[0]
    scores[[0] + [index[i] for i in exclude]] = -torch.inf
    top = torch.topk(scores, k)
    return [model_ids[i - 1] for i in top.indices.tolist()], top.values.tolist()


# -- endpoints -----------------------------------------------------------------------------
def test_healthz_and_openapi(client, world):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["version"] == world.version and health["count"] == N_ITEMS
    assert health["run"] == RUN and health["dims"] == DIMS and health["metric"] == "cosine"
    assert f"models/{RUN}/llmemb/" in health["model"] and health["source"] == "llmemb"   # best validation NDCG@10
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/items/{item_id}/similar", "/search", "/recommend"} <= set(paths)


def test_similar_items_match_the_index_with_titles(client, world):
    item = world.ids[7]
    body = client.get(f"/items/{item}/similar", params={"k": 5}).json()
    expected = similar_items(world.store, item, 5)
    assert body["version"] == world.version
    assert [r["item_id"] for r in body["items"]] == [n.item_id for n in expected]
    np.testing.assert_allclose([r["score"] for r in body["items"]], [n.score for n in expected], rtol=1e-6)
    assert [r["title"] for r in body["items"]] == [f"Title {n.item_id}" for n in expected]

    skip = [n.item_id for n in expected[:2]]
    filtered = client.get(f"/items/{item}/similar", params={"k": 5, "exclude": ",".join(skip)}).json()["items"]
    assert [r["item_id"] for r in filtered][:3] == [n.item_id for n in expected[2:]]
    assert len(filtered) == 5 and not set(skip) & {r["item_id"] for r in filtered}


def test_search_by_vector(client, world):
    vector = (world.vectors[3] * 2.0).tolist()   # cosine: scale does not matter
    items = client.post("/search", json={"vector": vector, "k": 4}).json()["items"]
    assert items[0]["item_id"] == world.ids[3] and items[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert items[0]["title"] == f"Title {world.ids[3]}"
    rest = client.post("/search", json={"vector": vector, "k": 3, "exclude": [world.ids[3]]}).json()["items"]
    assert [r["item_id"] for r in rest] == [r["item_id"] for r in items[1:]]


def test_recommend_returns_the_models_ranking(client, world):
    seq = world.model_ids[10:14]
    body = client.post("/recommend", json={"items": seq, "k": 6}).json()
    assert f"models/{RUN}/llmemb/" in body["model"] and body["version"] == world.version and body["source"] == "llmemb"
    ids, scores = expected_recommendations(world.served_llmemb, world.ids, seq, 6, set(seq))
    assert [r["item_id"] for r in body["items"]] == ids
    np.testing.assert_allclose([r["score"] for r in body["items"]], scores, rtol=1e-4, atol=1e-5)
    assert all(r["title"] == f"Title {r['item_id']}" for r in body["items"])

    extra = ids[:2]
    body = client.post("/recommend", json={"items": seq, "k": 6, "exclude_seen": False, "exclude": extra}).json()
    ids, _ = expected_recommendations(world.served_llmemb, world.ids, seq, 6, set(extra))
    assert [r["item_id"] for r in body["items"]] == ids


def test_items_the_model_never_trained_on_join_only_sources_that_read_text(client, world):
    """item-00290 is indexed but was not in the models' training: the llmemb model gives it a row
    from its embedding (it can be read in a history and recommended), the id model cannot."""
    body = client.post("/recommend", json={"items": ["item-00290"], "k": MAX_K}).json()
    assert body["source"] == "llmemb" and set(world.ids[250:]) & {r["item_id"] for r in body["items"]}
    id_only = TestClient(create_app(world.store, ServeConfig(model_source="id")))
    missing = id_only.post("/recommend", json={"items": ["item-00290"]})
    assert missing.status_code == 404 and "item 'item-00290' is not in the catalog of the SRS model" in missing.text


def test_recommend_with_the_configured_source(world):
    app = create_app(world.store, ServeConfig(model_source="id"))
    body = TestClient(app).post("/recommend", json={"items": world.model_ids[:3], "k": 3}).json()
    assert f"models/{RUN}/id/" in body["model"]
    ids, _ = expected_recommendations(world.models["id"], world.model_ids, world.model_ids[:3], 3, set(world.model_ids[:3]))
    assert [r["item_id"] for r in body["items"]] == ids


def test_the_served_source_follows_the_best_validation_ndcg(tmp_path):
    """With no serve.model_source, a newly published source that validated better replaces the served one."""
    store = Store(str(tmp_path / "store"))
    ids = write_run(store, RUN, clustered_vectors(40, DIMS, clusters=4))
    build_from_run(store, RUN, IndexConfig())
    publish_random_model(store, RUN, "llmemb", ids, valid_ndcg=0.05, item_embeddings=np.ones((40, DIMS), np.float32))
    app = create_app(store, ServeConfig())
    with TestClient(app) as client:
        assert client.get("/healthz").json()["source"] == "llmemb"
        publish_random_model(store, RUN, "id", ids, valid_ndcg=0.07)
        assert app.state.live.refresh()
        assert client.get("/healthz").json()["source"] == "id"
        assert client.post("/recommend", json={"items": ids[:2], "k": 2}).json()["source"] == "id"


@pytest.mark.parametrize("backbone, source", [("sasrec", s) for s in ("id", "llm-frozen", "llmemb", "ger", "tslrec", "llmesr")]
                         + [("gru4rec", "llmemb"), ("bert4rec", "id"), ("bert4rec", "llmesr")])
def test_every_source_and_backbone_is_rebuilt_from_its_weights(tmp_path, backbone, source):
    """Serving rebuilds a model from srs.json and the weights alone, with no embeddings run."""
    rng = np.random.default_rng(0)
    n, cfg = 40, TINY.model_copy(update={"model": backbone, "tslrec_clusters": 4})
    store = Store(str(tmp_path / "store"))
    trained = publish_random_model(
        store, RUN, source, [f"i{i}" for i in range(n)], cfg,
        item_embeddings=rng.standard_normal((n, 24)).astype(np.float32),
        attribute_scores=rng.uniform(1, 9, (n, 5)).astype(np.float32),
        id_item_embeddings=rng.standard_normal((n, cfg.hidden_size)).astype(np.float32))
    served = Recommender.load(store, f"models/{RUN}/{source}")
    seq = torch.from_numpy(pad_left([[3, 7, 9]], cfg.max_len))
    with torch.no_grad():
        torch.testing.assert_close(served.model.score_all(seq), trained.score_all(seq))


def test_republishing_never_changes_the_files_of_a_loaded_version(tmp_path):
    """Each publish writes a new version folder and then switches the manifest: the version a
    service is loading stays whole; the one before it is removed."""
    store = Store(str(tmp_path / "store"))
    ids = [f"i{i}" for i in range(20)]
    rel = f"models/{RUN}/id"
    publish_random_model(store, RUN, "id", ids)
    first = store.manifest(rel)["version"]
    first_weights = store.read_bytes(f"{rel}/{first}/model.safetensors")
    loaded = Recommender.load(store, rel)
    publish_random_model(store, RUN, "id", ids, TINY.model_copy(update={"hidden_size": 8}))
    second = store.manifest(rel)["version"]
    assert second != first and store.read_bytes(f"{rel}/{first}/model.safetensors") == first_weights
    assert loaded.where.endswith(first) and Recommender.load(store, rel).where.endswith(second)
    assert Recommender.load(store, rel).model.items.table().shape[1] == 8
    publish_random_model(store, RUN, "id", ids)
    assert sorted(n for n in store.list(rel) if is_version(n)) == sorted([second, store.manifest(rel)["version"]])


@pytest.mark.parametrize("method, path, payload, status, message", [
    ("get", "/items/nope/similar", None, 404, "item 'nope' is not in the index"),
    ("get", "/items/item-00001/similar?k=0", None, 422, "greater than or equal to 1"),
    ("get", f"/items/item-00001/similar?k={MAX_K + 1}", None, 422, f"less than or equal to {MAX_K}"),
    ("get", "/items/item-00001/similar?k=ten", None, 422, "valid integer"),
    ("post", "/search", {"vector": [0.1] * 4}, 409, "vector has 4 dims, index"),
    ("post", "/search", {"vector": []}, 422, "at least 1 item"),
    ("post", "/search", {"vector": [0.0] * DIMS}, 409, "zero vector has no cosine direction"),
    ("post", "/search", {"vector": [1e39] * DIMS}, 422, "less than or equal to 34028234663852886"),
    ("post", "/search", {"vector": [1.0] * DIMS, "k": 500}, 422, f"less than or equal to {MAX_K}"),
    ("post", "/search", {"vector": [1.0] * DIMS, "k": True}, 422, "valid integer"),   # was coerced to k=1
    ("post", "/search", {"vector": [1.0] * DIMS, "k": "3"}, 422, "valid integer"),
    ("post", "/search", {"vector": [1.0] * DIMS, "k": 4.5}, 422, "valid integer"),   # 4.0 is JSON's 4: accepted
    ("post", "/search", {"vector": ["1.0"] * DIMS}, 422, "valid number"),
    ("post", "/search", {"k": 3}, 422, "vector"),
    ("post", "/recommend", {"items": []}, 422, "at least 1 item"),
    ("post", "/recommend", {"items": ["item-00001", "ghost"]}, 404, "item 'ghost' is not in the catalog of the SRS model"),
    ("post", "/recommend", {"items": ["item-00001"], "k": -1}, 422, "greater than or equal to 1"),
    ("post", "/recommend", {"items": ["item-00001"], "exclude_seen": "no"}, 422, "valid boolean"),
])
def test_bad_requests_are_4xx_naming_the_problem(client, method, path, payload, status, message):
    response = client.request(method.upper(), path, json=payload)
    assert response.status_code == status, response.text
    assert message in response.text


def test_non_finite_vector_is_rejected(client):
    response = client.post("/search", content=b'{"vector": [NaN, 1.0], "k": 2}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422 and "finite" in response.text


@pytest.mark.parametrize("tiny, huge", [(1e-45, 3e38), (1e-30, 1e30)])
def test_cosine_search_ranks_extreme_vectors_by_direction(client, tiny, huge):
    """float32 squares of these underflow (a subnormal query kept its length) or overflow (scores 0.0):
    the query is normalised in float64, so only its direction counts."""
    def top(value: float) -> list[tuple[str, float]]:
        items = client.post("/search", json={"vector": [value] * DIMS, "k": 10}).json()["items"]
        return [(r["item_id"], r["score"]) for r in items]

    reference = top(0.1)
    assert reference[0][1] > 0.1
    for value in (tiny, huge):
        found = top(value)
        assert [i for i, _ in found] == [i for i, _ in reference]
        np.testing.assert_allclose([s for _, s in found], [s for _, s in reference], rtol=1e-5)


def test_openapi_states_every_error_and_the_k_limit(world):
    app = create_app(world.store, ServeConfig(max_k=MAX_K, token="t"))
    paths = TestClient(app).get("/openapi.json").json()["paths"]
    for path, method, codes in [("/search", "post", {"400", "401", "409", "413", "422", "503"}),
                                ("/recommend", "post", {"404", "409", "422"}),
                                ("/items/{item_id}/similar", "get", {"401", "404", "422"})]:
        responses = paths[path][method]["responses"]
        assert codes <= set(responses), (path, sorted(responses))
        assert responses["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    similar_k = next(p for p in paths["/items/{item_id}/similar"]["get"]["parameters"] if p["name"] == "k")
    assert similar_k["schema"]["maximum"] == MAX_K
    open_paths = TestClient(create_app(world.store, ServeConfig())).get("/openapi.json").json()["paths"]
    assert "401" not in open_paths["/search"]["post"]["responses"]


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_fuzzed_requests_meet_the_published_contract(world, mode):
    """schemathesis against /openapi.json, in process: requests to every operation generated to fit the schema
    (positive) or to break it (negative), each answer put through every built-in check (status codes, content
    types, headers and bodies as the schema states them, invalid data refused, valid data accepted, a request
    without the token refused), no failure."""
    app = create_app(world.store, ServeConfig(max_k=MAX_K, token=FUZZ_TOKEN))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @given(case=schema.as_strategy(mode))
    @settings(max_examples=FUZZ_CASES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {FUZZ_TOKEN}"})

    fuzz()


def test_body_size_is_limited(client):
    from index.service import MAX_BODY_BYTES

    big = b'{"vector": [' + b"0.1, " * (MAX_BODY_BYTES // 5) + b'0.1], "k": 1}'
    declared = client.post("/search", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and f"larger than {MAX_BODY_BYTES} bytes" in declared.text
    streamed = client.post("/search", content=iter([big[:MAX_BODY_BYTES], big[MAX_BODY_BYTES:]]),
                           headers={"content-type": "application/json"})   # chunked: no Content-Length
    assert streamed.status_code == 413
    assert client.post("/search", json={"vector": [0.1] * DIMS, "k": 1}).status_code == 200


# -- readiness, model pick-up, auth --------------------------------------------------------
def test_waits_for_an_index_then_a_model(tmp_path):
    store = Store(str(tmp_path / "store"))
    app = create_app(store, ServeConfig())
    client = TestClient(app)
    health = client.get("/healthz")
    assert health.status_code == 503 and "no index built yet: run `guidedrec index`" in health.json()["detail"]
    assert client.get("/items/item-00000/similar").status_code == 503

    ids = write_run(store, RUN, clustered_vectors(40, 8, clusters=2))
    build_from_run(store, RUN, IndexConfig())
    assert app.state.live.refresh() is True
    assert client.get("/items/item-00000/similar", params={"k": 3}).status_code == 200
    conflict = client.post("/recommend", json={"items": ids[:2]})
    assert conflict.status_code == 409
    assert conflict.json()["detail"] == f"no trained SRS model under {store.full_uri(f'models/{RUN}')}/: run `guidedrec train`"

    publish_random_model(store, RUN, "id", ids)           # trained after the index, as the pipeline does
    assert app.state.live.refresh() is True and app.state.live.refresh() is False
    assert client.post("/recommend", json={"items": ids[:2], "k": 3}).status_code == 200

    pinned = TestClient(create_app(store, ServeConfig(model_source="llmemb")))
    missing = pinned.post("/recommend", json={"items": ids[:2]})
    assert missing.status_code == 409 and "no trained 'llmemb' SRS model" in missing.text and "(published: id)" in missing.text


def test_bearer_token(world, monkeypatch):
    client = TestClient(create_app(world.store, ServeConfig(token="s3cret")))
    url = f"/items/{world.ids[0]}/similar"
    assert client.get(url).status_code == 401
    wrong = client.get(url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.get(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/search", json={"vector": [1.0] * DIMS}).status_code == 401
    assert client.get("/healthz").status_code == 200 and client.get("/openapi.json").status_code == 200

    monkeypatch.setenv("GUIDEDREC_TOKEN", "from-env")
    env_client = TestClient(create_app(world.store, ServeConfig()))
    assert env_client.get(url).status_code == 401
    assert env_client.get(url, headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_token_is_checked_before_the_body_is_read(world):
    client = TestClient(create_app(world.store, ServeConfig(token="s3cret")))
    for body in (b"{not json", b'{"vector": [1.0], "k": true}', b"x" * 100):
        response = client.post("/search", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 401, response.text   # was 422: the body was parsed first
    assert client.get("/nowhere").status_code == 401   # unknown paths reveal nothing either


def test_empty_token_is_a_startup_error(world, monkeypatch):
    monkeypatch.setenv("GUIDEDREC_TOKEN", "")
    with pytest.raises(ValueError, match="GUIDEDREC_TOKEN is set but empty: set a non-empty token or remove it"):
        create_app(world.store, ServeConfig())


def test_healthz_shows_storage_paths_only_with_the_token(world, tmp_path):
    client = TestClient(create_app(world.store, ServeConfig(token="s3cret")))
    anonymous = client.get("/healthz")
    assert anonymous.status_code == 200 and anonymous.json()["version"] == world.version
    assert world.store.root not in anonymous.text and anonymous.json()["model"] is None
    authorized = client.get("/healthz", headers={"Authorization": "Bearer s3cret"}).json()
    assert world.store.root in authorized["model"]

    empty = Store(str(tmp_path / "empty"))
    waiting = TestClient(create_app(empty, ServeConfig(token="s3cret"))).get("/healthz")
    assert waiting.status_code == 503 and waiting.json()["status"] == "no index" and empty.root not in waiting.text


def test_s3_store(s3_store):
    ids = write_run(s3_store, RUN, clustered_vectors(60, 8, clusters=3))
    version = build_from_run(s3_store, RUN, IndexConfig(factory="HNSW16"))
    client = TestClient(create_app(s3_store, ServeConfig()))
    assert client.get("/healthz").json()["version"] == version
    items = client.get(f"/items/{ids[0]}/similar", params={"k": 3}).json()["items"]
    assert len(items) == 3 and all(r["title"] == f"Title {r['item_id']}" for r in items)
    assert client.post("/recommend", json={"items": ids[:2]}).status_code == 409


def test_serve_command_hands_the_configured_app_to_uvicorn(world, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    import jobs.serve

    config = tmp_path / "ray_config.yaml"
    config.write_text(f"storage:\n  uri: {world.store.uri}\nserve:\n  port: 9999\n  max_k: 7\n")
    ran = {}
    monkeypatch.setattr(jobs.serve.uvicorn, "run", lambda app, host, port: ran.update(app=app, host=host, port=port))
    monkeypatch.setattr(jobs.serve.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(jobs.serve.faiss, "omp_set_num_threads", lambda n: None)
    cli = typer.Typer()
    cli.command()(jobs.serve.main)
    result = CliRunner().invoke(cli, ["--config", str(config), "--port", "1234"])
    assert result.exit_code == 0, result.output
    assert (ran["host"], ran["port"]) == ("127.0.0.1", 1234)
    too_many = TestClient(ran["app"]).get(f"/items/{world.ids[0]}/similar", params={"k": 8})
    assert too_many.status_code == 422 and "less than or equal to 7" in too_many.text


# -- hot swap under load, over real HTTP ---------------------------------------------------
@contextlib.contextmanager
def uvicorn_on_loopback(app):
    """uvicorn in a thread on a free 127.0.0.1 port (lifespan on, so the poller runs)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_hot_swap_under_load(tmp_path):
    store = Store(str(tmp_path / "store"))
    ids = write_run(store, "old", clustered_vectors(200, 8, clusters=4, seed=1))
    write_run(store, "new", clustered_vectors(200, 8, clusters=4, seed=2))
    old = build_from_run(store, "old", IndexConfig())
    query = f"/items/{ids[0]}/similar"
    stop = threading.Event()
    log: list[list[tuple[int, str | None, tuple]]] = [[], []]

    def hammer(url: str, out: list) -> None:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set() and len(out) < 2000 and time.monotonic() < deadline:
                r = http.get(query, params={"k": 5})
                body = r.json() if r.status_code == 200 else {}
                out.append((r.status_code, body.get("version"), tuple(i["item_id"] for i in body.get("items", []))))

    with uvicorn_on_loopback(create_app(store, ServeConfig(poll_seconds=0.1))) as url:
        workers = [threading.Thread(target=hammer, args=(url, out)) for out in log]
        for w in workers:
            w.start()
        while sum(map(len, log)) < 20:
            time.sleep(0.01)
        new = build_from_run(store, "new", IndexConfig())          # CURRENT moves mid-load
        deadline = time.monotonic() + 15
        while sum(1 for out in log for _, v, _ in out if v == new) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        for w in workers:
            w.join()

    answers = {old: tuple(n.item_id for n in similar_items(store, ids[0], 5, old)),
               new: tuple(n.item_id for n in similar_items(store, ids[0], 5, new))}
    assert answers[old] != answers[new]
    for out in log:
        assert {status for status, _, _ in out} == {200}
        versions = [v for _, v, _ in out]
        switch = versions.index(new)                               # each client sees old ... old new ... new
        assert switch > 0 and set(versions[:switch]) == {old} and set(versions[switch:]) == {new}
        assert all(found == answers[v] for _, v, found in out)


# -- hosting through Ray Serve; a model trained through Ray Train -------------------------
@pytest.mark.slow
def test_ray_serve_hosts_the_same_app(ray_local, world):
    from ray import serve

    from cluster.config import Config
    from jobs.serve import ray_serve_app

    port = free_port()
    cfg = Config.model_validate({"storage": {"uri": world.store.uri}, "serve": {"host": "127.0.0.1", "port": port}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(ray_serve_app(cfg), name="guidedrec-test", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.get("/healthz").json()["version"] == world.version
            item = world.ids[7]
            body = http.get(f"/items/{item}/similar", params={"k": 5}).json()
            assert [r["item_id"] for r in body["items"]] == [n.item_id for n in similar_items(world.store, item, 5)]
            assert http.post("/recommend", json={"items": ["ghost"]}).status_code == 404
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_ray_serve_replica_without_the_token_refuses_to_start(ray_local, world):
    """The token never goes to Ray inside the app: a replica reads $GUIDEDREC_TOKEN, which this session's Ray
    does not have, so it refuses to start rather than serve without auth."""
    from ray import serve

    from cluster.config import Config
    from jobs.serve import DEPLOYMENT, ray_serve_app

    cfg = Config.model_validate({"storage": {"uri": world.store.uri}, "serve": {"token": "s3cret"}})
    try:
        with pytest.raises(RuntimeError, match="Deploying application guidedrec-no-token failed"):
            serve.run(ray_serve_app(cfg), name="guidedrec-no-token", route_prefix="/")
        why = serve.status().applications["guidedrec-no-token"].deployments[DEPLOYMENT].message
        assert "this Ray Serve replica has no $GUIDEDREC_TOKEN" in why
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_trained_model_recommends_the_next_item(ray_local, tmp_path):
    """End to end with a real model: SASRec+LLMEmb trained on users who walk the catalog in a
    cycle recommends the item after the sequence."""
    from srs import train
    from tests.test_srs import SMALL, cycle_embeddings, cyclic_sequences

    store = Store(str(tmp_path / "store"))
    sequences, cycle_ids = cyclic_sequences()
    ids = write_run(store, "cyc", cycle_embeddings())
    rename = dict(zip(cycle_ids, ids))
    sequences = {user: [rename[i] for i in seq] for user, seq in sequences.items()}
    build_from_run(store, "cyc", IndexConfig())
    cfg = SMALL.model_copy(update={"align_alpha": 0.0})   # no alignment: no ID model to pre-train first
    result = train(sequences, ids, cfg, "llmemb", runner="ray", item_embeddings=cycle_embeddings(),
                   storage_path=store.path("ray-train/cyc"), storage_filesystem=store.fs)
    publish_model(store, "cyc", "llmemb", result, ids)

    body = TestClient(create_app(store, ServeConfig())).post("/recommend", json={"items": ids[5:8], "k": 10}).json()
    assert "models/cyc/llmemb/" in body["model"]
    assert ids[8] in [r["item_id"] for r in body["items"]]
