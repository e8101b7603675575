"""Any catalog as a directory: items.{parquet,csv,jsonl} + interactions.{parquet,csv,jsonl} [+ catalog.json]."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from catalog.build import ItemCollector, assemble, clean_id
from catalog.readers import read_records
from catalog.schemas import Catalog

_EXTENSIONS = (".parquet", ".csv", ".jsonl", ".csv.gz", ".jsonl.gz")


def data_file(directory: Path, stem: str) -> Path:
    for ext in _EXTENSIONS:
        path = directory / f"{stem}{ext}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{directory}: no {stem} file (looked for {', '.join(stem + e for e in _EXTENSIONS)})")


def _domain(directory: Path) -> str:
    """The `domain` of catalog.json (used in the prompt), else "product"."""
    path = directory / "catalog.json"
    if not path.is_file():
        return "product"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    domain = meta.get("domain") if isinstance(meta, dict) else None
    if domain is not None and (not isinstance(domain, str) or not domain.strip()):
        raise ValueError(f"{path}: 'domain' must be a non-empty string, got {domain!r}")
    return domain.strip() if domain else "product"


def _timestamp(value: Any) -> int | None:
    """Integer seconds from a number, a numeric string or an ISO date (naive = UTC); None if unreadable."""
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp())
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        pass
    try:
        return _timestamp(datetime.fromisoformat(str(value).strip()))
    except ValueError:
        return None


def load_directory(directory: Path, k: int) -> Catalog:
    """Every non-id column of the items file is prompt text; interactions without `ts` use file order."""
    domain = _domain(directory)  # a bad catalog.json fails before any data is read
    items = ItemCollector()
    for rec in read_records(data_file(directory, "items"), ("item_id",))[1]:
        items.add_record(rec)

    columns, records = read_records(data_file(directory, "interactions"), ("user_id", "item_id"))
    users, item_ids, ts, dropped = [], [], [], 0
    for position, rec in enumerate(records):
        stamp = _timestamp(rec.fields.get("ts")) if "ts" in columns else position
        if rec.problem or stamp is None:
            dropped += 1
            continue
        users.append(clean_id(rec.fields["user_id"]))
        item_ids.append(clean_id(rec.fields["item_id"]))
        ts.append(stamp)
    return assemble(directory.resolve().name, domain, items, users, item_ids, ts, k, dropped)
