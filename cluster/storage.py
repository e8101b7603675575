"""Every output location is a URI read through pyarrow.fs: a local path or s3://bucket/prefix.
A local one is made absolute, so every URI a job prints or records names the same place wherever it is read.

A dataset directory (an embeddings run, an index version) is committed by writing its
`_manifest.json` last; readers trust only directories that have one. Local writes go to a
temporary name and are renamed into place; an S3 PUT is atomic by itself.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cluster.config import S3Config, check_storage_uri

MANIFEST = "_manifest.json"


class StorageError(RuntimeError):
    """A missing or unreadable object, named by its URI."""


class _S3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem, pickled without explicit keys: Ray sends it to its workers (Ray Train's
    storage_filesystem), which read their own environment (cluster.config.SECRET_ENV) instead."""

    def __init__(self, **options):
        super().__init__(**options)
        self._public = {k: v for k, v in options.items() if k not in ("access_key", "secret_key")}

    def __reduce__(self):
        return _S3FileSystem._rebuild, (self._public,)

    @staticmethod
    def _rebuild(options: dict) -> _S3FileSystem:
        return _S3FileSystem(**options)


def _s3_filesystem(s3: S3Config) -> pafs.S3FileSystem:
    """Each key from the config, else its environment variable; neither: pyarrow's default chain (an instance role)."""
    kwargs: dict[str, Any] = {"region": s3.region}
    access = s3.access_key.get_secret_value() if s3.access_key else os.environ.get("AWS_ACCESS_KEY_ID")
    secret = s3.secret_key.get_secret_value() if s3.secret_key else os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        kwargs.update(access_key=access, secret_key=secret)
    if s3.endpoint:
        scheme, _, host = s3.endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        kwargs.update(allow_bucket_creation=True)
    return _S3FileSystem(**kwargs)


class Store:
    """A root URI plus the filesystem that serves it; paths below it are relative, '/'-separated."""

    def __init__(self, uri: str, s3: S3Config | None = None):
        try:
            self.uri = check_storage_uri(uri).rstrip("/")
        except ValueError as e:
            raise StorageError(str(e)) from None
        self.s3 = s3 or S3Config()
        if self.uri.startswith("s3://"):
            self.fs: pafs.FileSystem = _s3_filesystem(self.s3)
            self.root = self.uri[len("s3://"):]
            self.is_local = False
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = str(Path(self.uri.removeprefix("file://")).expanduser().resolve())
            self.uri = self.root   # what jobs print and manifests record: the place itself, from any directory
            self.is_local = True

    def __reduce__(self):
        """Pickled (to a Ray worker) without the config's keys: the copy reads the worker's environment."""
        return Store, (self.uri, self.s3.model_copy(update={"access_key": None, "secret_key": None}))

    # -- paths -------------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        """The filesystem path (no scheme) of `rel`, as pyarrow and Ray Data's filesystem= take it."""
        return f"{self.root}/{rel.strip('/')}" if rel else self.root

    def full_uri(self, rel: str = "") -> str:
        return f"{self.uri}/{rel.strip('/')}" if rel else self.uri

    def sub(self, rel: str) -> "Store":
        return Store(self.full_uri(rel), self.s3)

    # -- bytes, JSON, Parquet ----------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self._io("stat", rel, self.fs.get_file_info, self.path(rel)).type != pafs.FileType.NotFound

    def list(self, rel: str = "") -> list[str]:
        """Names directly under `rel` (files and directories), sorted; [] if it does not exist."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=False)
        names = (Path(info.path).name for info in self._io("list", rel, self.fs.get_file_info, sel))
        return sorted(n for n in names if not n.startswith(".tmp-"))  # hide writes in progress

    def _io(self, verb: str, rel: str, fn, *args):
        """Run a filesystem call; an OSError (e.g. S3 ACCESS_DENIED) becomes a StorageError naming the URI."""
        try:
            return fn(*args)
        except OSError as e:
            raise StorageError(f"cannot {verb} {self.full_uri(rel)}: {e}") from None

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._io("write", rel, self._write_bytes, self.path(rel), data)

    def _write_bytes(self, target: str, data: bytes) -> None:
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if self.is_local:
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            os.replace(tmp, target)
        else:
            with self.fs.open_output_stream(target) as f:
                f.write(data)

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except (FileNotFoundError, OSError) as e:
            raise StorageError(f"cannot read {self.full_uri(rel)}: {e}") from None

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_parquet(self, rel: str, table: pa.Table, row_group_size: int | None = None) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=row_group_size)
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """A Parquet file, or every part file of a directory (sorted by name, manifest ignored)."""
        info = self._io("stat", rel, self.fs.get_file_info, self.path(rel))
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"not found: {self.full_uri(rel)}")
        if info.type == pafs.FileType.File:
            names = [rel]
        else:
            names = [f"{rel}/{n}" for n in self.list(rel) if n.endswith(".parquet")]
            if not names:
                raise StorageError(f"no Parquet part files under {self.full_uri(rel)}")
        read = lambda n: pq.read_table(self.path(n), columns=columns, filesystem=self.fs)  # noqa: E731
        tables = [self._io("read", n, read, n) for n in names]
        return pa.concat_tables(tables)

    def delete_file(self, rel: str) -> None:
        self._io("delete", rel, self.fs.delete_file, self.path(rel))

    def delete_dir(self, rel: str) -> None:
        if self.exists(rel):
            self._io("delete", rel, self.fs.delete_dir, self.path(rel))

    # -- committed directories ---------------------------------------------------------------
    def commit(self, rel_dir: str, manifest: dict) -> None:
        """Mark a directory complete: the manifest is written last and atomically."""
        self.write_json(f"{rel_dir}/{MANIFEST}", manifest)

    def is_committed(self, rel_dir: str) -> bool:
        return self.exists(f"{rel_dir}/{MANIFEST}")

    def manifest(self, rel_dir: str) -> dict:
        if not self.is_committed(rel_dir):
            raise StorageError(f"{self.full_uri(rel_dir)} has no {MANIFEST}: it was never committed")
        return self.read_json(f"{rel_dir}/{MANIFEST}")


def store_from_config(cfg) -> Store:
    """The Store named by a Config's storage section."""
    return Store(cfg.storage.uri, cfg.storage.s3)
