"""GER explanations on the pipeline's own outputs: user profiles scored by the embedding job, the
explanation's shape and its agreement with the stored scores, the CLI, the HTTP endpoints, their
errors, and the faithfulness benchmark."""
from __future__ import annotations

import re
import sys
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import yaml
from fastapi.testclient import TestClient

from catalog import history_text, profile_prompts, user_sequences
from cluster import load_config
from cluster.config import IndexConfig, ServeConfig
from cluster.layout import catalog_file, run_dir, run_name, users_run
from cluster.storage import Store
from index import build_from_run, create_app
from index.explain import Explainer, NoAttributesError, UnscoredError, explain_catalog_user
from jobs.cli import app
from jobs.runner import run
from llm.runs import read_attributes, read_profiles
from tests.conftest import GER_ATTRIBUTES


@pytest.fixture(scope="module")
def ger(ger_pipeline):
    """The pipeline's stores and what the tests compare with: stored raw scores, their runs' stats."""
    store, cfg = ger_pipeline.store, ger_pipeline.cfg
    attrs = run_name(cfg, attributes=True)
    item_ids, item_raw, _ = read_attributes(store, attrs)
    user_ids, user_raw, reasons, user_stats = read_profiles(store, users_run(attrs))
    sequences = user_sequences(store.read_parquet(catalog_file("synthetic", "interactions")))
    return ger_pipeline, {
        "attrs": attrs, "items": dict(zip(item_ids, item_raw)), "users": dict(zip(user_ids, user_raw)),
        "reasons": reasons, "item_stats": store.manifest(run_dir(attrs))["attributes"], "user_stats": user_stats,
        "sequences": sequences}


def _z(raw, stats):
    return (raw - np.array(stats["mean"])) / np.array(stats["std"])


def _check(explanation, user_raw, user_z, item_raw, item_z):
    """Each attribute's values are the stored ones; difference and support recomputed by hand."""
    rows = explanation["attributes"]
    assert [r["name"] for r in rows] == GER_ATTRIBUTES
    for k, r in enumerate(rows):
        assert r["user_score"] == pytest.approx(user_raw[k], abs=1e-5) and r["item_score"] == pytest.approx(item_raw[k], abs=1e-5)
        assert r["user"] == pytest.approx(user_z[k], abs=1e-4) and r["item"] == pytest.approx(item_z[k], abs=1e-4)
        assert r["difference"] == pytest.approx(item_z[k] - user_z[k], abs=1e-4)
        assert r["support"] == pytest.approx(item_z[k] * user_z[k], abs=1e-4)
    support = {r["name"]: r["support"] for r in rows}
    ranked = sorted(support, key=support.get, reverse=True)
    assert [r["name"] for r in explanation["supporting"]] == [n for n in ranked if support[n] > 0][:3]
    assert [r["name"] for r in explanation["opposing"]] == [n for n in ranked[::-1] if support[n] < 0][:3]
    for r in explanation["supporting"] + explanation["opposing"]:
        assert r["name"] in r["sentence"] and r["sentence"].endswith(".") and "\n" not in r["sentence"]


def test_user_profiles_are_a_committed_run_of_the_profile_prompts(ger, hf_engine):
    from llm.attributes import answer_probs, expected_scores, score_request

    pipeline, seen = ger
    store = pipeline.store
    manifest = store.manifest(run_dir(users_run(seen["attrs"])))
    assert set(seen["users"]) == set(seen["sequences"]) and manifest["rows"] == len(seen["users"])
    raw = np.stack(list(seen["users"].values()))
    assert ((raw >= 1) & (raw <= 9)).all() and raw.std(0).min() > 0, "every user scored, not all alike"
    assert np.allclose(manifest["attributes"]["mean"], raw.mean(0), atol=1e-4)
    assert manifest["attributes"]["names"] == GER_ATTRIBUTES and manifest["attributes"]["unscored"] == {}
    # The same scale as the items: the scorer's expected 1-9 values for each user's profile prompt.
    items = store.read_parquet(catalog_file("synthetic"))
    domain = store.manifest("catalog/synthetic")["domain"]
    prompts = profile_prompts(items, store.read_parquet(catalog_file("synthetic", "interactions")), domain,
                              pipeline.cfg.finetune.ger_history).to_pylist()[:2]
    asks = [score_request(hf_engine.tokenizer, p["prompt"], GER_ATTRIBUTES, 64) for p in prompts]
    direct = expected_scores(answer_probs(hf_engine, asks, GER_ATTRIBUTES))
    assert np.abs(direct - np.stack([seen["users"][p["user_id"]] for p in prompts])).max() < 1e-2


def test_profile_prompts_read_recent_training_items_and_null_scores_keep_their_reason(tmp_path):
    from llm.embed import commit_run
    from llm.stages import WritePart, profile_schema

    items = pa.table({"item_id": [f"i{k}" for k in range(6)], "title": [f"Thing {k}" for k in range(6)]})
    inter = pa.table({"user_id": ["a"] * 6 + ["b"] * 2, "item_id": [f"i{k}" for k in range(6)] + ["i0", "i1"],
                      "ts": list(range(6)) + [0, 1]})
    rows = {r["user_id"]: r for r in profile_prompts(items, inter, "product", history=3).to_pylist()}
    # a's last two items are validation and test; the profile reads the three before them, oldest first.
    assert rows["a"]["prompt"] == history_text([{"item_id": f"i{k}", "title": f"Thing {k}"} for k in (1, 2, 3)], "product")
    assert rows["b"]["prompt"] is None and "2 interactions" in rows["b"]["reason"]
    store = Store(str(tmp_path))
    WritePart(store, "embeddings/p", profile_schema(2))({
        "block": [0, 0], "user_id": ["a", "b"], "attributes": np.array([[2.0, 7.0], [np.nan, np.nan]], np.float32),
        "reason": [None, rows["b"]["reason"]], "model": ["m", "m"], "adapter": [None, None]})
    manifest = commit_run(load_config(None), store, "p", catalog_rel="x", expected_rows=2, started=0.0,
                          extra={"attribute_names": ["x", "y"]})
    assert manifest["attributes"]["mean"] == [2.0, 7.0] and manifest["attributes"]["unscored"] == {rows["b"]["reason"]: 1}
    ids, raw, reasons, _ = read_profiles(store, "p")
    assert ids == ["a", "b"] and np.isnan(raw[1]).all() and reasons == [None, rows["b"]["reason"]]


def test_explanation_of_a_stored_profile_matches_the_stored_scores(ger):
    pipeline, seen = ger
    user = sorted(seen["users"])[0]
    item = next(i for i in sorted(seen["items"]) if i not in seen["sequences"][user])
    explanation = explain_catalog_user(pipeline.cfg, pipeline.store, user, item).model_dump()
    assert explanation["item_id"] == item and explanation["profile"] == "stored"
    user_raw, item_raw = seen["users"][user], seen["items"][item]
    _check(explanation, user_raw, _z(user_raw, seen["user_stats"]), item_raw, _z(item_raw, seen["item_stats"]))


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`guidedrec ...` in this process, through the same runner as the console script."""
    monkeypatch.setattr(sys, "argv", ["guidedrec", *args])
    code = 0
    try:
        run(app)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_prints_the_explanation_and_draws_it(ger, monkeypatch, capsys, tmp_path):
    pipeline, seen = ger
    user = sorted(seen["users"])[1]
    item = sorted(seen["items"])[-1]
    code, out, err = _cli(monkeypatch, capsys, "explain", "--user", user, "--item", item, "--config",
                          str(pipeline.config), "--plot", str(tmp_path / "why.png"))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"why {item} (user profile: stored); z-scores:"
    assert [line.split()[0] for line in lines[2:2 + 3]] == ["durability", "price", "ease"]
    assert "supports it:" in lines and "opposes it:" in lines and lines[-1] == f"plot -> {tmp_path / 'why.png'}"
    assert (tmp_path / "why.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line_naming_the_problem(ger, monkeypatch, capsys, tmp_path):
    pipeline, seen = ger
    user, item = sorted(seen["users"])[0], sorted(seen["items"])[0]
    config = ["--config", str(pipeline.config)]
    for args, said in ((["--user", "nobody", "--item", item], "user 'nobody' is not in the interactions"),
                       (["--user", user, "--item", "no-such-item"], "item 'no-such-item' is not in the catalog")):
        code, _, err = _cli(monkeypatch, capsys, "explain", *args, *config)
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    settings = yaml.safe_load(pipeline.config.read_text()) | {"embed": {"run": "never-scored"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(settings))
    code, _, err = _cli(monkeypatch, capsys, "explain", "--user", user, "--item", item, "--config", str(tmp_path / "config.yaml"))
    assert code == 2 and "run `guidedrec embed --attributes`" in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def client(ger):
    return TestClient(create_app(ger[0].store, ServeConfig()))


def test_explain_endpoint_profiles_the_history(ger, client):
    _, seen = ger
    history = seen["sequences"][sorted(seen["users"])[2]][:5]
    item = next(i for i in sorted(seen["items"]) if i not in history)
    r = client.post("/explain", json={"items": history, "item": item})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["run"] == seen["attrs"] and body["explanation"]["profile"] == "history of 5 items"
    user_raw = np.mean([seen["items"][i] for i in history], axis=0)
    user_z = np.mean([_z(seen["items"][i], seen["item_stats"]) for i in history], axis=0)
    _check(body["explanation"], user_raw, user_z, seen["items"][item], _z(seen["items"][item], seen["item_stats"]))


def test_recommend_explains_each_item_when_asked(ger, client):
    _, seen = ger
    history = seen["sequences"][sorted(seen["users"])[3]][:4]
    plain = client.post("/recommend", json={"items": history, "k": 3}).json()
    asked = client.post("/recommend", json={"items": history, "k": 3, "explain": True}).json()
    assert [i["item_id"] for i in asked["items"]] == [i["item_id"] for i in plain["items"]] and asked["source"] == "ger"
    assert all(i["explanation"] is None for i in plain["items"])
    for scored in asked["items"]:
        single = client.post("/explain", json={"items": history, "item": scored["item_id"]}).json()
        assert scored["explanation"] == single["explanation"]


def test_explain_errors(ger, client, tmp_path):
    _, seen = ger
    history = seen["sequences"][sorted(seen["users"])[0]][:3]
    r = client.post("/explain", json={"items": history, "item": "no-such-item"})
    assert r.status_code == 404 and "no-such-item" in r.json()["detail"]
    r = client.post("/explain", json={"items": ["nope", *history], "item": history[0]})
    assert r.status_code == 404 and "'nope'" in r.json()["detail"]
    assert client.post("/explain", json={"items": [], "item": history[0]}).status_code == 422
    # An item the served catalog holds but the scores do not (added since they were scored): 422 naming why.
    live = client.app.state.live
    before = live.snapshot
    grown = Explainer(before.explainer.names, before.explainer.items, before.explainer.users,
                      before.explainer.known | {"item-added-later"})
    live.snapshot = replace(before, explainer=grown)
    try:
        r = client.post("/explain", json={"items": history, "item": "item-added-later"})
        assert r.status_code == 422 and "does not hold it" in r.json()["detail"]
        r = client.post("/explain", json={"items": ["item-added-later"], "item": history[0]})
        assert r.status_code == 422 and "none of the 1 history items has attribute scores" in r.json()["detail"]
    finally:
        live.snapshot = before
    with pytest.raises(UnscoredError, match="item-added-later"):
        grown.explain(grown.history_profile(history), "item-added-later")
    # A served run without attribute scores: 409 saying what to run.
    from tests.test_index import clustered_vectors, write_run

    bare = Store(str(tmp_path / "bare"))
    write_run(bare, "plain", clustered_vectors(20, 8, clusters=2))
    build_from_run(bare, "plain", IndexConfig())
    r = TestClient(create_app(bare, ServeConfig())).post("/explain", json={"items": ["item-00001"], "item": "item-00002"})
    assert r.status_code == 409 and "guidedrec embed --attributes" in r.json()["detail"]
    with pytest.raises(NoAttributesError, match="guidedrec embed --attributes"):
        Explainer.load(bare, "plain", [])


def test_faithfulness_benchmark_runs_on_the_pipeline_output(ger, capsys):
    from benchmarks.faithfulness import main

    pipeline, _ = ger
    main(["--config", str(pipeline.config), "-n", "30"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(r"faithfulness: dataset=synthetic run=(\S+) top_drop=(\S+) random_drop=(\S+) share=(\S+) "
                     r"cases=(\d+)", last)
    assert m, last
    assert m[1] == run_name(pipeline.cfg) and 0 < int(m[5]) <= 30 and 0 <= float(m[4]) <= 1
    assert np.isfinite([float(m[2]), float(m[3])]).all()
