"""Incremental update: a new catalog -> a new embeddings run and index version, embedding only what changed.

    guidedrec update --catalog new_items.parquet --config ray_config.yaml      # the whole new catalog
    guidedrec update --catalog changes.jsonl --delta --delete gone.txt         # a change feed
    python -m jobs.update --catalog catalog_dir/ --config ray_config.yaml

The live state is the run the CURRENT index was built from. Items are matched to its rows by
id and content hash: new and changed items are embedded (unless a row with the same content
hash can lend its vector), unchanged rows are copied byte for byte into one more part file,
deleted items are left out. The run is committed with its parent and the counts, its catalog
is published beside it, and the index is upserted (or rebuilt) into a new CURRENT version.
The input is read and validated before anything is written.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import typer

from catalog.build import ItemCollector, clean_id
from catalog.generic import data_file
from catalog.readers import read_records
from cluster import Config, Store, load_config, store_from_config
from index import NoIndexError, current_version, update_from_run, version_manifest
from jobs.embed import commit_run, embed_items
from jobs.runner import VERBOSE
from llm.runs import run_name
from llm.stages import embedding_schema

COPY_PART = "unchanged.parquet"   # beside embed_items' part-NNNNNN.parquet files
_UPDATE_SUFFIX = re.compile(r"-u\d{8}T\d{6}\d*Z$")


def load_items(path: Path, base: pa.Table | None = None, deleted: list[str] = ()) -> tuple[pa.Table, pa.Table]:
    """(items, quarantine) of an items file, or of the items file of a catalog directory, validated
    and hashed by the same rules as ingest (bad, duplicate and empty rows go to quarantine).

    With `base` (a live catalog), the file is a change feed: its rows replace or add items, the
    `deleted` ids go, and every other base item stays as it is.
    """
    collector = ItemCollector()
    records = []
    if path is not None:
        if not path.exists():
            raise FileNotFoundError(f"catalog not found: {path}")
        records = read_records(data_file(path, "items") if path.is_dir() else path, ("item_id",))[1]
    if base is not None:
        changed = {clean_id(rec.fields.get("item_id")) for rec in records if not rec.problem} - {None}
        _check_deletions(base, deleted, changed)
        gone = changed | set(deleted)
        for row in base.drop_columns(["content_hash"]).to_pylist():
            if row["item_id"] not in gone:
                collector.add(row["item_id"], row, "")
    for rec in records:
        collector.add_record(rec)
    items, quarantine = collector.tables()
    if not items.num_rows:
        raise ValueError(f"{path}: no valid items ({quarantine.num_rows} rows quarantined)")
    return items, quarantine


def _check_deletions(base: pa.Table, deleted: list[str], changed: set[str]) -> None:
    unknown = sorted(set(deleted) - set(base["item_id"].to_pylist()))
    if unknown:
        raise ValueError(f"cannot delete {len(unknown)} item(s) the live catalog does not hold: {unknown[:5]}")
    both = sorted(changed & set(deleted))
    if both:
        raise ValueError(f"{len(both)} item(s) are both updated and deleted: {both[:5]}")


def read_deletions(path: Path | None) -> list[str]:
    """Item ids to delete, one per line (blank lines and # comments skipped)."""
    if path is None:
        return []
    if not path.exists():
        raise FileNotFoundError(f"deletions file not found: {path}")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


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


def update_run_name(parent: str) -> str:
    """<parent's base name>-u<UTC time>: updates of updates do not grow the name."""
    return f"{_UPDATE_SUFFIX.sub('', parent)}-u{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}"


def live_run(cfg: Config, store: Store) -> str:
    """The configured run, or the update of it that CURRENT serves: rebuilding the index or training
    after `guidedrec update` must start from the updated items, not the run they replaced."""
    configured = run_name(cfg)
    try:
        served = version_manifest(store, current_version(store))["run"]
    except NoIndexError:
        return configured
    return served if _UPDATE_SUFFIX.sub("", served) == configured else configured


def update_parent(cfg: Config, store: Store) -> tuple[str, dict, str]:
    """The run an update extends: (run, its manifest, its catalog's domain) behind CURRENT; refuses
    what an update cannot extend (unlike live_run, which only names the run to rebuild from)."""
    run = version_manifest(store, current_version(store))["run"]
    manifest = store.manifest(f"embeddings/{run}")
    if manifest.get("adapters") or manifest.get("attribute_names"):
        raise ValueError(f"the live run {run} holds LoRA adapters or attribute scores: updates embed with "
                         "the base model only (run `guidedrec embed` instead)")
    if manifest["model"] != cfg.model.path:
        raise ValueError(f"the live run {run} was embedded with {manifest['model']!r}, the config names "
                         f"{cfg.model.path!r}: vectors of two models cannot share an index (run `guidedrec embed`)")
    domain = store.manifest(manifest["catalog"].rsplit("/", 1)[0])["domain"]
    return run, manifest, domain


def run_update(cfg: Config, catalog: Path | None, store: Store | None = None, delta: bool = False,
               deleted: list[str] = ()) -> dict:
    """Bring the live run and index up to the items at `catalog` (with `delta`: the live items changed by
    `catalog`'s rows and `deleted`); returns the summary (also printed)."""
    started = time.time()
    store = store or store_from_config(cfg)
    if catalog is None and not (delta and deleted):
        raise ValueError("nothing to update: give --catalog, or --delta with --delete")
    parent, parent_manifest, domain = update_parent(cfg, store)
    base = store.read_parquet(parent_manifest["catalog"]) if delta else None
    items, quarantine = load_items(Path(catalog) if catalog else None, base, list(deleted))
    old = store.read_parquet(f"embeddings/{parent}").select(embedding_schema(parent_manifest["dims"]).names)
    d = diff_items(old, items)
    counts = d.counts()
    if not (d.new or d.changed or d.deleted):
        print(f"update: the catalog matches run {parent} ({counts['unchanged']} items): nothing to do", flush=True)
        return {"run": parent, "version": current_version(store), "method": None, "counts": counts}

    run = update_run_name(parent)
    cat_dir, out = f"catalog/{run}", f"embeddings/{run}"
    print(f"update {parent} -> {run}: {counts}", flush=True)
    store.write_parquet(f"{cat_dir}/items.parquet", items)
    store.write_parquet(f"{cat_dir}/quarantine.parquet", quarantine)
    timing: dict = {}   # embed_items' embedded rows, start-up and steady items/s
    if d.to_embed:
        wanted = pa.array(d.to_embed, pa.string())
        to_embed = items.filter(pc.is_in(items["item_id"], value_set=wanted))
        store.write_parquet(f"{cat_dir}/embedded.parquet", to_embed, row_group_size=cfg.embed.block_size)
        timing = embed_items(cfg, store, f"{cat_dir}/embedded.parquet", out, domain)
    copied = copied_rows(old, d)
    if copied.num_rows:
        store.write_parquet(f"{out}/{COPY_PART}", copied)
    store.commit(cat_dir, {"name": run, "domain": domain, "items": items.num_rows, "quarantined": quarantine.num_rows,
                           "source": str(catalog), "delta": delta, "deleted": list(deleted),
                           "parent": parent_manifest["catalog"]})
    summary = commit_run(cfg, store, run, catalog_rel=f"{cat_dir}/items.parquet", expected_rows=items.num_rows,
                         started=started, parent=parent,
                         extra={"counts": counts, "quarantined": quarantine.num_rows, "embed": timing})
    version = update_from_run(store, run, cfg.index, upserted=d.new + d.changed, deleted=d.deleted)
    method = version_manifest(store, version)["method"]
    seconds = round(time.time() - started, 2)
    print(f"update: run {run} committed ({summary['rows']} rows, {counts['embedded']} embedded, "
          f"{quarantine.num_rows} quarantined); index {version} ({method}) is CURRENT; {seconds} s", flush=True)
    return {"run": run, "version": version, "method": method, "counts": counts, "seconds": seconds}


def main(catalog: Path = typer.Option(None, help="The new catalog: an items file (.parquet/.csv/.jsonl) or a "
                                      "directory holding one; items missing from it are deleted (unless --delta)"),
         delta: bool = typer.Option(False, help="--catalog holds only new and changed items; the rest stay"),
         delete: Path = typer.Option(None, help="With --delta: a file of item ids to delete, one per line"),
         config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         verbose: bool = VERBOSE) -> None:
    """Re-embed only new and changed items, copy the rest, and publish a new index version."""
    if delete is not None and not delta:
        raise ValueError("--delete needs --delta (without it, items missing from --catalog are deleted)")
    cfg = load_config(config)
    cfg.ray.verbose |= verbose
    run_update(cfg, catalog, delta=delta, deleted=read_deletions(delete))


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
