"""Any catalog as a directory: items.{parquet,csv,jsonl} + interactions.{parquet,csv,jsonl} [+ catalog.json]."""
from __future__ import annotations

import json
from pathlib import Path

from catalog.build import Interactions, ItemCollector, assemble, clean_id, timestamp
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


def load_directory(directory: Path, k: int) -> Catalog:
    """Every non-id column of the items file is prompt text; interactions without `ts` use file order."""
    domain = _domain(directory)  # a bad catalog.json fails before any data is read
    items = ItemCollector()
    items_file = data_file(directory, "items")
    for rec in read_records(items_file, ("item_id",))[1]:
        items.add_record(rec)

    columns, records = read_records(data_file(directory, "interactions"), ("user_id", "item_id"))
    interactions = Interactions()
    for position, rec in enumerate(records):
        user, item = rec.fields.get("user_id"), rec.fields.get("item_id")
        if rec.problem:
            interactions.drop(rec.problem, rec.raw, user, item)
            continue
        try:
            stamp = timestamp(rec.fields.get("ts")) if "ts" in columns else position
        except ValueError as e:
            interactions.drop(str(e), rec.raw, user, item)
            continue
        interactions.add(clean_id(user), clean_id(item), stamp)
    return assemble(directory.resolve().name, domain, items, interactions, k, source=str(items_file))
