"""Incremental update: a new catalog -> a new embeddings run and index version, embedding only what changed.

The live state is the run the CURRENT index was built from. Items are matched to its rows by
id and content hash: new and changed items are embedded (unless a row with the same content
hash can lend its vector), unchanged rows are copied byte for byte into one more part file,
deleted items are left out. The run is committed with its parent and the counts, its catalog
is published beside it, and the index is upserted (or rebuilt) into a new CURRENT version.
The input is read and validated before anything is written. A committed update run that later
lost or changed parts is mended from what it stored (repair_update_run).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from catalog.changes import load_items
from cluster.config import Config
from cluster.layout import (catalog_dir, catalog_file, current_version, damaged_parts, read_committed_run, run_dir,
                            update_run_name)
from cluster.storage import Store
from index.versions import update_from_run, version_manifest
from llm.embed import commit_run, embed_items
from llm.stages import embedding_schema

COPY_PART = "unchanged.parquet"   # beside embed_items' part-NNNNNN.parquet files


@dataclass
class Diff:
    """How the new items relate to the live run's rows (ids in the new catalog's order)."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    reused: dict[str, int] = field(default_factory=dict)   # new/changed item -> old row with its content hash

    @property
    def to_embed(self) -> list[str]:
        return [i for i in self.new + self.changed if i not in self.reused]

    def counts(self) -> dict[str, int]:
        return {"new": len(self.new), "changed": len(self.changed), "deleted": len(self.deleted),
                "unchanged": len(self.unchanged), "embedded": len(self.to_embed), "reused": len(self.reused)}


def diff_items(old: pa.Table, items: pa.Table) -> Diff:
    """Compare by content hash: a new or changed item whose text some old row already has borrows
    that row's vector (the hash covers exactly the prompt text, so the vector would be the same)."""
    old_hash = dict(zip(old["item_id"].to_pylist(), old["content_hash"].to_pylist()))
    new_hash = dict(zip(items["item_id"].to_pylist(), items["content_hash"].to_pylist()))
    row_of_hash: dict[str, int] = {}
    for row, h in enumerate(old["content_hash"].to_pylist()):
        row_of_hash.setdefault(h, row)
    d = Diff(deleted=[i for i in old_hash if i not in new_hash])
    for item, h in new_hash.items():
        if item not in old_hash:
            d.new.append(item)
        elif old_hash[item] != h:
            d.changed.append(item)
        else:
            d.unchanged.append(item)
            continue
        if h in row_of_hash:
            d.reused[item] = row_of_hash[h]
    return d


def copied_rows(old: pa.Table, d: Diff) -> pa.Table:
    """Old rows kept as they are: unchanged items, then reused rows renamed to their new item."""
    row = {item: i for i, item in enumerate(old["item_id"].to_pylist())}
    kept = old.take(pa.array([row[i] for i in d.unchanged], pa.int64()))
    reused = old.take(pa.array(list(d.reused.values()), pa.int64()))
    reused = reused.set_column(reused.schema.get_field_index("item_id"), "item_id",
                               pa.array(list(d.reused), pa.string()))
    return pa.concat_tables([kept, reused])


def update_parent(cfg: Config, store: Store) -> tuple[str, dict, str]:
    """The run an update extends: (run, its manifest, its catalog's domain) behind CURRENT; refuses
    what an update cannot extend."""
    run = version_manifest(store, current_version(store))["run"]
    manifest = store.manifest(run_dir(run))
    if manifest.get("adapters") or manifest.get("attribute_names"):
        raise ValueError(f"the live run {run} holds LoRA adapters or attribute scores: updates embed with "
                         "the base model only (run `guidedrec embed` instead)")
    if manifest["model"] != cfg.model.path:
        raise ValueError(f"the live run {run} was embedded with {manifest['model']!r}, the config names "
                         f"{cfg.model.path!r}: vectors of two models cannot share an index (run `guidedrec embed`)")
    domain = store.manifest(manifest["catalog"].rsplit("/", 1)[0])["domain"]
    return run, manifest, domain


def update_catalog(cfg: Config, store: Store, catalog: Path | None, delta: bool = False,
                   deleted: list[str] = ()) -> dict:
    """Bring the live run and index up to the items at `catalog` (with `delta`: the live items changed by
    `catalog`'s rows and `deleted`). Returns a summary: run, version, method (None: nothing changed),
    counts, and the committed run's manifest."""
    started = time.time()
    if catalog is None and not (delta and deleted):
        raise ValueError("nothing to update: give --catalog, or --delta with --delete")
    parent, parent_manifest, domain = update_parent(cfg, store)
    base = store.read_parquet(parent_manifest["catalog"]) if delta else None
    items, quarantine = load_items(Path(catalog) if catalog else None, base, list(deleted))
    old, _ = read_committed_run(store, parent, embedding_schema(parent_manifest["dims"]).names)
    d = diff_items(old, items)
    counts = d.counts()
    if not (d.new or d.changed or d.deleted):
        return {"run": parent, "version": current_version(store), "method": None, "counts": counts}

    run = update_run_name(parent)
    timing: dict = {}   # embed_items' embedded rows, start-up and steady items/s
    if d.to_embed:
        wanted = pa.array(d.to_embed, pa.string())
        store.write_parquet(catalog_file(run, "embedded"), items.filter(pc.is_in(items["item_id"], value_set=wanted)),
                            row_group_size=cfg.embed.block_size)
        timing = embed_items(cfg, store, catalog_file(run, "embedded"), run, domain)
    copied = copied_rows(old, d)
    if copied.num_rows:
        store.write_parquet(f"{run_dir(run)}/{COPY_PART}", copied)
    store.write_parquet(catalog_file(run, "items"), items)
    store.write_parquet(catalog_file(run, "quarantine"), quarantine)
    store.commit(catalog_dir(run), {"name": run, "domain": domain, "items": items.num_rows,
                                    "quarantined": quarantine.num_rows, "source": str(catalog), "delta": delta,
                                    "deleted": list(deleted), "parent": parent_manifest["catalog"]})
    manifest = commit_run(cfg, store, run, catalog_rel=catalog_file(run, "items"), expected_rows=items.num_rows,
                          started=started, parent=parent,
                          extra={"counts": counts, "quarantined": quarantine.num_rows, "embed": timing})
    version = update_from_run(store, run, cfg.index, upserted=d.new + d.changed, deleted=d.deleted)
    return {"run": run, "parent": parent, "version": version, "method": version_manifest(store, version)["method"],
            "counts": counts, "manifest": manifest, "seconds": round(time.time() - started, 2)}


def repair_update_run(cfg: Config, store: Store, run: str) -> dict:
    """Mend a committed update run whose parts were lost or changed, back to the rows it committed: its
    embedded blocks again from its stored "embedded" catalog, its copy part again from its parent (which
    must be intact); then commit it anew. Returns (its manifest, the parts mended); an intact run is left
    as it is."""
    started = time.time()
    manifest = store.manifest(run_dir(run))   # StorageError unless committed
    parent = manifest.get("parent")
    if not parent:
        raise ValueError(f"run {run} was not written by an update (it has no parent): repair it with "
                         "`guidedrec embed --resume` and the run's options")
    if manifest["model"] != cfg.model.path:
        raise ValueError(f"run {run} was embedded with {manifest['model']!r}, the config names {cfg.model.path!r}")
    damaged = damaged_parts(store, run)
    if not damaged:
        return {"manifest": manifest, "repaired": []}
    if COPY_PART in damaged:   # read before anything is deleted: a damaged parent stops the repair here
        old, _ = read_committed_run(store, parent, embedding_schema(manifest["dims"]).names)
        copied = copied_rows(old, diff_items(old, store.read_parquet(catalog_file(run, "items"))))
    for name in damaged:
        if store.exists(f"{run_dir(run)}/{name}"):
            store.delete_file(f"{run_dir(run)}/{name}")
    timing = {}
    if any(name != COPY_PART for name in damaged):
        domain = store.manifest(catalog_dir(run))["domain"]
        timing = embed_items(cfg, store, catalog_file(run, "embedded"), run, domain, resume=True)
    if COPY_PART in damaged:
        store.write_parquet(f"{run_dir(run)}/{COPY_PART}", copied)
    kept = {k: manifest[k] for k in ("counts", "quarantined", "embed")}
    manifest = commit_run(cfg, store, run, catalog_rel=manifest["catalog"], expected_rows=manifest["rows"],
                          started=started, parent=parent,
                          extra={**kept, "repaired": {"parts": damaged, "embed": timing}})
    return {"manifest": manifest, "repaired": damaged}
