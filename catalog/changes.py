"""Read what an incremental update brings: a new items file, or a change feed plus deleted ids,
validated and hashed by the same rules as ingest before anything is written."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from catalog.build import ItemCollector, clean_id
from catalog.generic import data_file
from catalog.readers import read_records


def load_items(path: Path | None, base: pa.Table | None = None, deleted: list[str] = ()) -> tuple[pa.Table, pa.Table]:
    """(items, quarantine) of an items file, or of the items file of a catalog directory (bad,
    duplicate and empty rows go to quarantine).

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
    return collector.tables(str(path))


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
