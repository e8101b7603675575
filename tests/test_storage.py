"""Store behaves the same on local files and on a real S3 server (SeaweedFS)."""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from cluster.config import S3Config
from cluster.storage import MANIFEST, StorageError, Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "store"))
    return request.getfixturevalue("s3_store")


def _embeddings(n: int, d: int, start: int = 0) -> pa.Table:
    values = pa.array(np.arange(start * d, (start + n) * d, dtype=np.float32))
    return pa.table({
        "item_id": [f"i{start + i}" for i in range(n)],
        "embedding": pa.FixedSizeListArray.from_arrays(values, d),
    })


def test_bytes_round_trip_and_overwrite(store):
    store.write_bytes("a/b/blob.bin", b"\x00first")
    assert store.read_bytes("a/b/blob.bin") == b"\x00first"
    store.write_bytes("a/b/blob.bin", b"second")
    assert store.read_bytes("a/b/blob.bin") == b"second"


def test_json_round_trip(store):
    obj = {"dims": 8, "names": ["x", "y"], "nested": {"ok": True, "ratio": 0.5}}
    store.write_json("meta/info.json", obj)
    assert store.read_json("meta/info.json") == obj


def test_parquet_round_trip_keeps_fixed_size_lists(store):
    table = _embeddings(5, 4)
    store.write_parquet("t/items.parquet", table)
    back = store.read_parquet("t/items.parquet")
    assert back.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert back.equals(table)


def test_list_and_exists(store):
    store.write_bytes("d/x.bin", b"1")
    store.write_bytes("d/sub/y.bin", b"2")
    assert store.list("d") == ["sub", "x.bin"]
    assert store.list("no/such/dir") == []
    assert store.exists("d") and store.exists("d/sub") and store.exists("d/x.bin")
    assert not store.exists("d/missing.bin")


def test_sub_store_shares_the_tree(store):
    store.sub("runs/r1").write_bytes("f.bin", b"z")
    assert store.read_bytes("runs/r1/f.bin") == b"z"
    assert store.sub("runs").full_uri("r1/f.bin") == store.full_uri("runs/r1/f.bin")


def test_commit_marks_a_directory_complete(store):
    store.write_parquet("runs/r/part-00000.parquet", _embeddings(2, 3))
    assert not store.is_committed("runs/r")
    with pytest.raises(StorageError, match="never committed"):
        store.manifest("runs/r")
    store.commit("runs/r", {"rows": 2, "dims": 3})
    assert store.is_committed("runs/r")
    assert store.manifest("runs/r") == {"rows": 2, "dims": 3}
    assert MANIFEST in store.list("runs/r")


def test_read_directory_of_part_files_in_name_order(store):
    store.write_parquet("run/part-00001.parquet", _embeddings(3, 2, start=2))
    store.write_parquet("run/part-00000.parquet", _embeddings(2, 2, start=0))
    store.commit("run", {"rows": 5})
    table = store.read_parquet("run")
    assert table.column("item_id").to_pylist() == [f"i{i}" for i in range(5)]
    assert table.equals(_embeddings(5, 2))


def test_directory_without_parts_is_an_error(store):
    store.write_bytes("empty/notes.txt", b"not parquet")
    with pytest.raises(StorageError, match="no Parquet part files"):
        store.read_parquet("empty")


def test_delete_dir(store):
    store.write_bytes("gone/a.bin", b"1")
    store.delete_dir("gone")
    assert not store.exists("gone/a.bin")
    store.delete_dir("gone")   # deleting twice is fine


def test_missing_object_names_its_uri(store):
    with pytest.raises(StorageError, match=re.escape(store.full_uri("nothing/here.bin"))):
        store.read_bytes("nothing/here.bin")
    with pytest.raises(StorageError, match=re.escape(store.full_uri("nothing/here.parquet"))):
        store.read_parquet("nothing/here.parquet")


def test_wrong_s3_secret_is_refused(s3_server, s3_store):
    s3_store.write_bytes("secret.bin", b"x")
    s3 = S3Config(endpoint=s3_server.endpoint, access_key=s3_server.access_key, secret_key="not-the-secret")
    bad = Store(s3_store.uri, s3)
    # pyarrow reads with HEAD first, whose error has no body: the server answers 403 Access Denied.
    with pytest.raises(StorageError, match="ACCESS_DENIED"):
        bad.read_bytes("secret.bin")
    with pytest.raises(StorageError, match="cannot write .*ACCESS_DENIED"):
        bad.write_bytes("other.bin", b"y")
    client = s3_server.client(secret_key="not-the-secret")
    with pytest.raises(client.exceptions.ClientError, match="SignatureDoesNotMatch"):
        client.get_object(Bucket=s3_server.bucket, Key=f"{s3_store.root.split('/', 1)[1]}/secret.bin")


@pytest.mark.parametrize("uri", ["gs://bucket/prefix", "hdfs://namenode/x", "http://example.com/data"])
def test_unsupported_scheme(uri):
    with pytest.raises(StorageError, match="unsupported storage URI"):
        Store(uri)


def test_file_uri_is_local(tmp_path):
    store = Store(f"file://{tmp_path}/s")
    store.write_bytes("x.bin", b"1")
    assert store.is_local and (tmp_path / "s" / "x.bin").read_bytes() == b"1"


def test_a_job_prints_and_records_the_absolute_uri_of_a_relative_store(tmp_path, monkeypatch, capsys):
    """`storage.uri: ./store` names <cwd>/store in what the ingest job prints and in every URI the store
    hands out (manifests record those), not './store', which means another place from another directory."""
    from cluster import load_config
    from jobs.ingest import run_ingest

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, {"dataset.synthetic_items": 30, "dataset.synthetic_users": 40})
    store = Store(cfg.storage.uri)
    assert cfg.storage.uri == "./store" and store.full_uri("embeddings/r") == f"{tmp_path}/store/embeddings/r"
    assert Store(f"file://{tmp_path}/s").full_uri() == f"{tmp_path}/s"
    run_ingest(cfg, store)
    assert f"-> {tmp_path}/store/catalog/synthetic" in capsys.readouterr().out
