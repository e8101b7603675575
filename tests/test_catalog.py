"""catalog: real data sets, the generic directory loader, quarantine, prompts, splits, synthetic data."""
from __future__ import annotations

import csv
import gzip
import json
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog import (
    KNOWN_DATASETS, content_hash, item_prompt, k_core, leave_one_out, load_catalog, prompt_columns, user_sequences,
)
from catalog.datasets import split_scientific_text
from catalog.loaders import _PUBLIC
from cluster.config import DatasetConfig


@pytest.fixture(scope="module")
def real(data_root: Path):
    """Load each public set once per module."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_catalog(DatasetConfig(name=name, data_root=str(data_root)))
        return cache[name]

    return get


def _counts(catalog) -> tuple[int, int, int]:
    inter = catalog.interactions
    return len(set(inter["user_id"].to_pylist())), len(set(inter["item_id"].to_pylist())), inter.num_rows


def _assert_well_formed(catalog) -> None:
    inter = catalog.interactions
    assert inter.schema == pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("ts", pa.int64())])
    assert catalog.items.column_names[0] == "item_id" and catalog.items.column_names[-1] == "content_hash"
    assert set(inter["item_id"].to_pylist()) <= set(catalog.items["item_id"].to_pylist())
    keys = list(zip(inter["user_id"].to_pylist(), inter["ts"].to_pylist()))
    assert keys == sorted(keys)
    assert catalog.quarantine.column_names == ["item_id", "reason", "raw"]
    for row in catalog.items.to_pylist():
        assert row["content_hash"] == content_hash(row)
        assert row.get("title") is None or row["title"] in item_prompt(row, catalog.domain)
        if not any(v for k, v in row.items() if k not in ("item_id", "content_hash")):
            assert item_prompt(row, catalog.domain).endswith(f"id is {row['item_id']}.")


# ---------------------------------------------------------------- public data sets


@pytest.mark.parametrize("name, users, items, interactions, catalog_items, quarantined, dropped", [
    # item 267 ("unkonwn unkonwn unknown") has no text -> quarantined, its 9 ratings dropped
    ("ml-100k", 943, 1348, 99278, 1681, 1, 9),
    # the literature's split: the 7 items with an empty title stay (prompted by their ASIN)
    ("amazon-beauty", 22363, 12101, 198502, 12101, 0, 0),
    ("amazon-scientific-mini", 2928, 1585, 19712, 1585, 0, 0),
])
def test_public_counts(real, name, users, items, interactions, catalog_items, quarantined, dropped):
    catalog = real(name)
    assert _counts(catalog) == (users, items, interactions)
    assert catalog.items.num_rows == catalog_items
    assert catalog.quarantine.num_rows == quarantined
    assert set(catalog.quarantine["reason"].to_pylist()) <= {"no text"}
    assert catalog.dropped_interactions == dropped
    _assert_well_formed(catalog)
    assert k_core(catalog.interactions, 5).num_rows == interactions  # already stable


def test_ml100k_text_and_chronology(real, data_root):
    catalog = real("ml-100k")
    assert catalog.domain == "movie" and prompt_columns(catalog.items) == ["title", "genres", "year"]
    toy_story = catalog.items.filter(pa.compute.equal(catalog.items["item_id"], "1")).to_pylist()[0]
    assert item_prompt(toy_story, catalog.domain) == (
        "The movie item has the following attributes: title is Toy Story; genres is Animation, Children's, Comedy; "
        "year is 1995.")
    assert catalog.quarantine.to_pylist()[0]["item_id"] == "267"
    # Sequences = the raw file sorted stably by timestamp (ties in file order), restricted to kept items.
    kept = set(catalog.interactions["item_id"].to_pylist())
    raw: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with gzip.open(data_root / "ml-100k" / "ml-100k.inter.gz", "rt", encoding="utf-8") as f:
        next(f)
        for line in f:
            user, item, _, stamp = line.rstrip("\n").split("\t")
            if item in kept:
                raw[user].append((int(float(stamp)), item))
    expected = {u: [i for _, i in sorted(rows, key=lambda r: r[0])] for u, rows in raw.items()}
    assert user_sequences(catalog.interactions) == expected


def test_beauty_ids_are_asins(real):
    catalog = real("amazon-beauty")
    assert catalog.domain == "beauty" and prompt_columns(catalog.items) == ["title"]
    # sequences.txt line 1 is "1 1 2 3 4 5"; items 1 and 2 are these ASINs in items.tsv.
    assert user_sequences(catalog.interactions)["1"][:2] == ["B004756YJA", "B004ZT0SSG"]
    assert all(re.fullmatch(r"[0-9A-Z]{10}", i) for i in catalog.items["item_id"].to_pylist())


def test_scientific_text_split(real):
    catalog = real("amazon-scientific-mini")
    items = {r["item_id"]: r for r in catalog.items.to_pylist()}
    assert items["B0000223UV"] | {"content_hash": None} == {
        "item_id": "B0000223UV",
        "title": "Gorilla Original Gorilla Glue, Waterproof Polyurethane Glue, 8 ounce Bottle, Brown",
        "categories": "Industrial & Scientific Tapes, Adhesives & Sealants Urethane Adhesives",
        "brand": "Gorilla",
        "content_hash": None,
    }
    assert "S.O.L. Survive Outdoors Longer" in {r["brand"] for r in items.values()}
    assert all(r["categories"] is None or r["categories"].startswith("Industrial & Scientific") for r in items.values())
    # user index 0 = A1AXCV2WYDA4PD, test row "0 1 2 3 -> 4"; item indices 0..2 are these ASINs.
    assert user_sequences(catalog.interactions)["A1AXCV2WYDA4PD"][:3] == ["B00O47ILVA", "B006ATU73A", "B00CJ5EO2E"]
    split = leave_one_out(user_sequences(catalog.interactions))
    assert len(split.test) == 2928


@pytest.mark.parametrize("text, expected", [
    ("Glue, 8 oz. Industrial & Scientific Tapes. Gorilla. ", ("Glue, 8 oz", "Industrial & Scientific Tapes", "Gorilla")),
    ("Kimwipes 4.4 in. 1-ply. . Kimberly-Clark. ", ("Kimwipes 4.4 in. 1-ply", None, "Kimberly-Clark")),
    ("Eyewear, Clear. . . ", ("Eyewear, Clear", None, None)),
    ("Wheel. Industrial & Scientific Abrasives. Norton - St. Gobain. ",
     ("Wheel", "Industrial & Scientific Abrasives", "Norton - St. Gobain")),
    ("A. B. C. ", ("A", "B", "C")),  # no anchor: split from the right
])
def test_split_scientific_text(text, expected):
    fields = split_scientific_text(text)
    assert tuple(fields[k] or None for k in ("title", "categories", "brand")) == expected


def test_bad_rows_in_public_format(tmp_path):
    """The ml-100k loader quarantines bad rows of its own TSV format and drops their interactions."""
    root = tmp_path / "ml-100k"
    root.mkdir()
    item_lines = [b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
                  b"1\tGood Movie\t1995\tDrama", b"2\tCaf\xe9 Latin-1\t1996\tComedy", b"3\tToo Few Fields",
                  b"1\tGood Movie Again\t1995\tDrama", b"4\t \t\tunknown"]
    with gzip.open(root / "ml-100k.item.gz", "wb") as f:
        f.write(b"\n".join(item_lines) + b"\n")
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"u{u}\t{i}\t5\t{100 + u}" for u in range(3) for i in (1, 2, 3, 4)] + ["u0\t1\t5\tnot-a-time"]
    with gzip.open(root / "ml-100k.inter.gz", "wt") as f:
        f.write("\n".join(inter) + "\n")
    catalog = load_catalog(DatasetConfig(name="ml-100k", data_root=str(tmp_path), min_interactions=1))
    reasons = {r["item_id"]: r["reason"] for r in catalog.quarantine.to_pylist()}
    assert reasons["2"] == "invalid utf-8"
    assert reasons["3"].startswith("malformed row: expected 4")
    assert reasons["4"] == "no text"
    assert catalog.quarantine.filter(pa.compute.equal(catalog.quarantine["item_id"], "1"))["reason"].to_pylist() \
        == ["duplicate item_id"]
    assert catalog.items["item_id"].to_pylist() == ["1"]
    assert catalog.interactions.num_rows == 3 and catalog.dropped_interactions == 10


# ---------------------------------------------------------------- generic directories

_ITEMS = [
    {"item_id": "a", "title": "Red Tent", "product_type": "tent", "description": "Sleeps two."},
    {"item_id": "b", "title": "Blue Stove", "product_type": "stove", "description": None},
    {"item_id": "c", "title": "Green Lamp", "product_type": None, "description": "Bright."},
]
_INTERACTIONS = [  # u1 interacted with b first (ts), then a, then c
    {"user_id": "u1", "item_id": "a", "ts": 20}, {"user_id": "u1", "item_id": "b", "ts": 10},
    {"user_id": "u1", "item_id": "c", "ts": 30}, {"user_id": "u2", "item_id": "c", "ts": 5},
]


def _write(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_generic_directory(tmp_path, ext):
    _write(tmp_path / f"items.{ext}", _ITEMS)
    _write(tmp_path / f"interactions.{ext}", _INTERACTIONS)
    (tmp_path / "catalog.json").write_text(json.dumps({"domain": "outdoor gear"}))
    catalog = load_catalog(DatasetConfig(name=str(tmp_path), min_interactions=1))
    assert catalog.name == tmp_path.name and catalog.domain == "outdoor gear"
    assert prompt_columns(catalog.items) == ["title", "product_type", "description"]
    items = {r["item_id"]: r for r in catalog.items.to_pylist()}
    assert item_prompt(items["b"], catalog.domain) == (
        "The outdoor gear item has the following attributes: title is Blue Stove; product type is stove.")
    assert user_sequences(catalog.interactions) == {"u1": ["b", "a", "c"], "u2": ["c"]}
    assert catalog.quarantine.num_rows == 0 and catalog.dropped_interactions == 0
    _assert_well_formed(catalog)


def test_generic_without_ts_uses_file_order(tmp_path):
    _write(tmp_path / "items.jsonl", _ITEMS)
    _write(tmp_path / "interactions.csv", [{"user_id": r["user_id"], "item_id": r["item_id"]} for r in _INTERACTIONS])
    catalog = load_catalog(DatasetConfig(name=str(tmp_path), min_interactions=1))
    assert catalog.domain == "product"
    assert user_sequences(catalog.interactions) == {"u1": ["a", "b", "c"], "u2": ["c"]}


def test_generic_iso_dates(tmp_path):
    _write(tmp_path / "items.csv", _ITEMS)
    _write(tmp_path / "interactions.jsonl", [
        {"user_id": "u", "item_id": "a", "ts": "2020-01-02"}, {"user_id": "u", "item_id": "b", "ts": "2020-01-01T12:00"},
        {"user_id": "u", "item_id": "c", "ts": "yesterday"},
    ])
    catalog = load_catalog(DatasetConfig(name=str(tmp_path), min_interactions=1))
    assert user_sequences(catalog.interactions) == {"u": ["b", "a"]}
    assert catalog.dropped_interactions == 1


def test_quarantine_reasons_csv(tmp_path):
    (tmp_path / "items.csv").write_bytes(
        b"item_id,title,brand\n"
        b"a,Red Tent,Acme\n"
        b"b,  ,\n"                      # no text
        b"a,Red Tent Copy,Acme\n"       # duplicate of a
        b"c,Caf\xe9 Stove,Acme\n"       # latin-1 byte: invalid utf-8
        b"d,Lamp\n"                     # too few fields
        b',"Unnamed, but titled",Acme\n'  # no item_id
        b"e,Green Lamp,Acme\n")
    _write(tmp_path / "interactions.csv", [{"user_id": "u", "item_id": i} for i in "abcdexe"])
    catalog = load_catalog(DatasetConfig(name=str(tmp_path), min_interactions=1))
    rows = catalog.quarantine.to_pylist()
    assert [(r["item_id"], r["reason"]) for r in rows] == [
        ("b", "no text"), ("a", "duplicate item_id"), ("c", "invalid utf-8"),
        ("d", "malformed row: expected 3 fields, got 2"), (None, "malformed row: no item_id"),
    ]
    assert rows[1]["raw"] == "a,Red Tent Copy,Acme"
    assert rows[2]["raw"] == "c,Caf\\xe9 Stove,Acme"
    assert catalog.items["item_id"].to_pylist() == ["a", "e"]
    assert catalog.items["title"].to_pylist() == ["Red Tent", "Green Lamp"]
    # interactions on b, c, d, x (unknown) are dropped and counted
    assert user_sequences(catalog.interactions) == {"u": ["a", "e", "e"]}
    assert catalog.dropped_interactions == 4
    pq.write_table(catalog.quarantine, tmp_path / "quarantine.parquet")  # storable as valid UTF-8


def test_quarantine_reasons_jsonl(tmp_path):
    (tmp_path / "items.jsonl").write_bytes(
        b'{"item_id": "a", "title": "Tent", "tags": ["camping", " ", "two person"]}\n'
        b'{"item_id": "b", "title": \n'
        b'["not", "an", "object"]\n'
        b'{"item_id": "c", "title": "Caf\xe9"}\n'
        b'{"item_id": 7, "title": "  ", "tags": []}\n')
    _write(tmp_path / "interactions.jsonl", [{"user_id": "u", "item_id": "a"}])
    catalog = load_catalog(DatasetConfig(name=str(tmp_path), min_interactions=1))
    assert [r["reason"] for r in catalog.quarantine.to_pylist()] == [
        "malformed row: invalid JSON (Expecting value)", "malformed row: not a JSON object", "invalid utf-8", "no text",
    ]
    assert catalog.items.to_pylist()[0]["tags"] == "camping, two person"


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'nope'.*ml-100k"):
        load_catalog(DatasetConfig(name="nope"))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        load_catalog(DatasetConfig(name=str(tmp_path / "missing")))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "ml-100k"))):
        load_catalog(DatasetConfig(name="ml-100k", data_root=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="no items file"):
        load_catalog(DatasetConfig(name=str(tmp_path)))
    _write(tmp_path / "items.csv", [{"id": "a", "title": "Tent"}])
    _write(tmp_path / "interactions.csv", [{"user_id": "u", "item_id": "a"}])
    with pytest.raises(ValueError, match=r"items\.csv: missing column 'item_id'"):
        load_catalog(DatasetConfig(name=str(tmp_path)))
    assert KNOWN_DATASETS == ("synthetic", "ml-100k", "amazon-beauty", "amazon-scientific-mini")
    assert set(KNOWN_DATASETS) == {"synthetic", *_PUBLIC}


@pytest.mark.parametrize("stamp", ["99999999999999999999", "1e30", "-1e30", "-99999999999999999999", "inf"])
def test_out_of_range_timestamps_are_dropped_with_their_reason(tmp_path, stamp):
    """They raised OverflowError from pyarrow's int64 column, a traceback out of `guidedrec ingest`."""
    _write(tmp_path / "items.csv", _ITEMS)
    (tmp_path / "interactions.csv").write_text(f"user_id,item_id,ts\nu1,a,10\nu1,b,{stamp}\nu1,c,30\n")
    catalog = load_catalog(DatasetConfig(name=str(tmp_path), min_interactions=1))
    assert user_sequences(catalog.interactions) == {"u1": ["a", "c"]}
    assert catalog.dropped.to_pylist() == [
        {"user_id": "u1", "item_id": "b", "reason": f"ts {stamp!r} is out of range", "raw": f"u1,b,{stamp}"}]
    big = tmp_path / "big"
    big.mkdir()
    _write(big / "items.jsonl", _ITEMS)
    _write(big / "interactions.jsonl", [{"user_id": "u", "item_id": "a", "ts": 10**20},
                                        {"user_id": "u", "item_id": "b", "ts": 1e30},
                                        {"user_id": "u", "item_id": "c", "ts": 2**63 - 1}])
    catalog = load_catalog(DatasetConfig(name=str(big), min_interactions=1))
    assert catalog.interactions["item_id"].to_pylist() == ["c"]
    assert [r["reason"] for r in catalog.dropped.to_pylist()] == ["ts 100000000000000000000 is out of range",
                                                                   "ts 1e+30 is out of range"]


@pytest.mark.parametrize("content", ["item_id,title\n", "item_id,title\n  ,  \n"])
def test_items_file_without_a_valid_row_is_refused(tmp_path, content):
    """A header-only file was committed as a catalog of 0 items; embedding it then crashed inside Ray."""
    (tmp_path / "items.csv").write_text(content)
    _write(tmp_path / "interactions.csv", [{"user_id": "u", "item_id": "a"}])
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'items.csv'}: no valid items (")):
        load_catalog(DatasetConfig(name=str(tmp_path)))


def test_ingest_of_an_empty_items_file_is_one_line_and_commits_nothing(tmp_path, monkeypatch, capsys):
    import sys

    from jobs import cli

    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "items.csv").write_text("item_id,title\n")
    _write(folder / "interactions.csv", [{"user_id": "u", "item_id": "a"}])
    store = tmp_path / "store"
    (tmp_path / "c.yaml").write_text(f"storage:\n  uri: {store}\n")
    argv = ["guidedrec", "ingest", "--config", str(tmp_path / "c.yaml"), "--dataset", str(folder)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "no valid items (0 rows quarantined)" in err
    assert not store.exists()


def test_json_object_text_is_stored_as_json(tmp_path):
    _write(tmp_path / "items.jsonl", [{"item_id": "a", "title": {"en": "Tent", "de": "Zelt"}},
                                      {"item_id": "b", "title": "Stove", "specs": {}}])
    _write(tmp_path / "interactions.jsonl", [{"user_id": "u", "item_id": "a"}])
    items = load_catalog(DatasetConfig(name=str(tmp_path), min_interactions=1)).items.to_pylist()
    assert json.loads(items[0]["title"]) == {"en": "Tent", "de": "Zelt"} and items[1]["specs"] is None


def test_a_named_run_keeps_its_attribute_scores_beside_it():
    """With embed.run set, the embeddings and the attribute scores were committed as one run name."""
    from cluster.config import load_config
    from cluster.layout import run_name, users_run

    cfg = load_config(None, {"embed.run": "shop-v2"})
    assert run_name(cfg) == "shop-v2" and run_name(cfg, attributes=True) == "shop-v2-attrs"
    assert users_run(run_name(cfg, attributes=True)) == "shop-v2-attrs-users"


def test_folders_of_the_same_name_are_different_catalogs(tmp_path, monkeypatch):
    """/a/shop and /b/shop shared catalog/shop and every run made from it."""
    from cluster.config import load_config
    from cluster.layout import catalog_name, run_name

    def name_of(dataset: str) -> str:
        return catalog_name(load_config(None, {"dataset.name": dataset}))

    a, b = tmp_path / "a" / "shop", tmp_path / "b" / "shop"
    assert name_of(str(a)).startswith("shop-") and name_of(str(a)) != name_of(str(b))
    assert run_name(load_config(None, {"dataset.name": str(a)})).startswith(f"{name_of(str(a))}-")
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert name_of("shop") == name_of("./shop") == name_of(str(a))   # one folder, however it is named
    for name in KNOWN_DATASETS:   # stored runs and benchmarks use these names
        assert name_of(name) == name

    from catalog.publish import publish_catalog
    from cluster.storage import Store

    store = Store(str(tmp_path / "store"))
    for folder, title in ((a, "Tent"), (b, "Stove")):
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder / "items.csv", [{"item_id": "x", "title": title}])
        _write(folder / "interactions.csv", [{"user_id": "u", "item_id": "x"}])
        rel, _ = publish_catalog(load_config(None, {"dataset.name": str(folder), "dataset.min_interactions": 1}), store)
        assert store.read_parquet(f"{rel}/items.parquet")["title"].to_pylist() == [title]
    assert len(store.list("catalog")) == 2


# ---------------------------------------------------------------- prompts and hashes


def test_item_prompt():
    item = {"item_id": "9", "title": " Toy\n Story ", "release_year": "1995", "genres": "", "content_hash": "x"}
    assert item_prompt(item, "movie") == "The movie item has the following attributes: title is Toy Story; release year is 1995."
    described = {"title": "Lamp", "description": "Bright. Warm."}
    assert item_prompt(described, "product").endswith("description is Bright. Warm.")  # no double full stop
    textless = {"item_id": "9", "title": None}
    assert item_prompt(textless, "movie") == "The movie item has the following attributes: id is 9."
    assert content_hash(textless) != content_hash(textless | {"item_id": "10"})   # the id is its whole text
    with pytest.raises(ValueError, match="no text"):
        item_prompt({"item_id": None, "title": None}, "movie")
    table = pa.table({"item_id": ["9"], "title": ["t"], "year": ["1"], "content_hash": ["h"]})
    assert prompt_columns(table) == ["title", "year"]


def test_content_hash():
    item = {"item_id": "1", "title": "Toy Story", "genres": "Animation, Comedy", "year": "1995"}
    # fixed value: the hash must not change across runs or versions, or cached embeddings go stale
    assert content_hash(item) == "b0309348892dd97d64e702cf9f125074087d2cfb7cb5aefabd3edc078fbec5db"
    assert content_hash(item | {"item_id": "2", "content_hash": "old"}) == content_hash(item)
    assert content_hash(item | {"title": " Toy  Story "}) == content_hash(item)  # same prompt, same hash
    assert content_hash(item | {"title": "Toy Story 2"}) != content_hash(item)
    assert content_hash(item | {"year": None}) != content_hash(item)
    assert content_hash({"item_id": "1", "year": "1995", "title": "Toy Story", "genres": "Animation, Comedy"}) \
        != content_hash(item)  # column order changes the prompt, so it changes the hash


# ---------------------------------------------------------------- sequences and splits


def test_user_sequences_sort_stably():
    inter = pa.table({"user_id": ["b", "a", "a", "a", "b"], "item_id": ["x", "late", "tie1", "tie2", "y"],
                      "ts": [1, 9, 5, 5, 0]}, schema=pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                                                                 ("ts", pa.int64())]))
    assert user_sequences(inter) == {"a": ["tie1", "tie2", "late"], "b": ["y", "x"]}


def test_k_core_iterates_until_stable():
    # k=2: item z has one row -> removed; then user v has one row left -> removed; then item y has one row -> removed.
    rows = [("u", "x"), ("u", "x"), ("v", "y"), ("v", "z"), ("w", "y"), ("w", "x")]
    inter = pa.table({"user_id": [u for u, _ in rows], "item_id": [i for _, i in rows], "ts": list(range(len(rows)))})
    kept = k_core(inter, 2)
    assert list(zip(kept["user_id"].to_pylist(), kept["item_id"].to_pylist())) == [("u", "x"), ("u", "x")]


def test_leave_one_out():
    split = leave_one_out({"u": ["a", "b", "c", "d"], "v": ["a", "b", "c"], "w": ["a", "b"]})
    assert split.train == {"u": ["a", "b"], "v": ["a"]}
    assert split.valid == {"u": (["a", "b"], "c"), "v": (["a"], "b")}
    assert split.test == {"u": (["a", "b", "c"], "d"), "v": (["a", "b"], "c")}


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_fast():
    start = time.perf_counter()
    one = load_catalog(DatasetConfig(name="synthetic", seed=7))
    assert time.perf_counter() - start < 1.5
    again = load_catalog(DatasetConfig(name="synthetic", seed=7))
    other = load_catalog(DatasetConfig(name="synthetic", seed=8))
    assert one.items.equals(again.items) and one.interactions.equals(again.interactions)
    assert not one.interactions.equals(other.interactions)
    assert one.name == "synthetic" and one.domain == "product" and one.quarantine.num_rows == 0
    assert one.items.num_rows == 600 and len(set(one.items["title"].to_pylist())) == 600
    lengths = Counter(one.interactions["user_id"].to_pylist()).values()
    assert len(lengths) == 1500 and min(lengths) >= 5 and max(lengths) <= 30
    _assert_well_formed(one)


def test_synthetic_text_predicts_behaviour():
    """Consecutive items share distinctive words (theme vocabulary) far more often than random pairs."""
    catalog = load_catalog(DatasetConfig(name="synthetic"))
    rows = catalog.items.to_pylist()
    words = {r["item_id"]: set(re.findall(r"[a-z][a-z-]{2,}", f"{r['title']} {r['description']}".lower())) for r in rows}
    frequency = Counter(w for ws in words.values() for w in ws)
    common = {w for w, n in frequency.items() if n > 0.2 * len(rows)}  # template words ("made", "for", ...)
    words = {i: ws - common for i, ws in words.items()}
    pairs = [p for seq in user_sequences(catalog.interactions).values() for p in zip(seq, seq[1:])]
    rng = random.Random(0)
    ids = list(words)
    random_pairs = [(rng.choice(ids), rng.choice(ids)) for _ in pairs]

    def shared(ps):
        return sum(bool(words[a] & words[b]) for a, b in ps) / len(ps)

    assert shared(pairs) > 0.5 and shared(random_pairs) < 0.15


def test_synthetic_small_sizes():
    catalog = load_catalog(DatasetConfig(name="synthetic", synthetic_items=20, synthetic_users=10, min_interactions=1))
    assert catalog.items.num_rows == 20 and len(set(catalog.interactions["user_id"].to_pylist())) == 10
