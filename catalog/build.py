"""Shared by every loader: validate item rows into items + quarantine, then clean the interactions."""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from catalog.filtering import k_core, sort_interactions
from catalog.prompts import clean_text, content_hash
from catalog.readers import Record, bad_utf8, printable
from catalog.schemas import INTERACTIONS_SCHEMA, QUARANTINE_SCHEMA, RESERVED_COLUMNS, Catalog


def clean_id(value: Any) -> str | None:
    """An id as a trimmed string (None when empty); ids are never reindexed or otherwise rewritten."""
    text = "" if value is None else str(value).strip()
    return text or None


class ItemCollector:
    """Keeps the first usable row per item id; every other row goes to quarantine with its reason.
    `keep_textless` keeps items without any text (a benchmark's interactions name them, and the
    literature's split counts them); their prompt is their id."""

    def __init__(self, keep_textless: bool = False) -> None:
        self.keep_textless = keep_textless
        self._kept: dict[str, dict[str, str | None]] = {}
        self._rejected: list[dict[str, str | None]] = []

    def reject(self, item_id: Any, reason: str, raw: str) -> None:
        """Quarantine a row; bad bytes are escaped so the table stays valid UTF-8."""
        item_id = clean_id(item_id)
        self._rejected.append({
            "item_id": printable(item_id) if item_id else None, "reason": reason, "raw": printable(raw),
        })

    def add(self, item_id: Any, fields: dict[str, Any], raw: str) -> bool:
        """Validate one row (text columns in `fields`); returns whether it was kept."""
        item_id = clean_id(item_id)
        text = {name: clean_text(value) for name, value in fields.items() if name not in RESERVED_COLUMNS}
        if bad_utf8(" ".join([raw, item_id or "", *filter(None, text.values())])):
            reason = "invalid utf-8"
        elif not item_id:
            reason = "malformed row: no item_id"
        elif item_id in self._kept:
            reason = "duplicate item_id"
        elif not any(text.values()) and not self.keep_textless:
            reason = "no text"
        else:
            self._kept[item_id] = text
            return True
        self.reject(item_id, reason, raw)
        return False

    def quarantine_record(self, rec: Record, id_column: str) -> None:
        """Quarantine a record its reader found unusable, under the reader's reason."""
        self.reject(rec.fields.get(id_column), rec.problem or "malformed row", rec.raw)

    def add_record(self, rec: Record) -> bool:
        """`add` for a reader record whose columns are item_id + text columns."""
        if rec.problem:
            self.quarantine_record(rec, "item_id")
            return False
        return self.add(rec.fields["item_id"], rec.fields, rec.raw)

    def tables(self) -> tuple[pa.Table, pa.Table]:
        """(items, quarantine); text columns in order of first appearance, then content_hash."""
        columns = list(dict.fromkeys(name for text in self._kept.values() for name in text))
        rows = [{"item_id": item_id, **{c: text.get(c) for c in columns}} for item_id, text in self._kept.items()]
        for row in rows:
            row["content_hash"] = content_hash(row)
        schema = pa.schema([(c, pa.string()) for c in ["item_id", *columns, "content_hash"]])
        return pa.Table.from_pylist(rows, schema=schema), pa.Table.from_pylist(self._rejected, schema=QUARANTINE_SCHEMA)


def assemble(
    name: str,
    domain: str,
    items: ItemCollector,
    users: list[str],
    item_ids: list[str],
    ts: list[int],
    k: int,
    dropped: int = 0,
) -> Catalog:
    """Build the Catalog: drop interactions on unknown/quarantined items (counted), k-core, sort.

    `dropped` counts interaction rows the loader could not read at all.
    """
    items_table, quarantine = items.tables()
    interactions = pa.table({"user_id": users, "item_id": item_ids, "ts": ts}, schema=INTERACTIONS_SCHEMA)
    known = pc.is_in(interactions["item_id"], value_set=items_table["item_id"].combine_chunks())
    kept = interactions.filter(known)
    dropped += interactions.num_rows - kept.num_rows
    interactions = sort_interactions(k_core(kept, k))
    return Catalog(name, domain, items_table, interactions, quarantine, dropped)
