"""Shared by every loader: validate item rows into items + quarantine, interaction rows into
interactions + dropped rows (each with its reason), then clean the interactions."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from catalog.filtering import k_core, sort_interactions
from catalog.prompts import clean_text, content_hash
from catalog.readers import Record, bad_utf8, printable
from catalog.schemas import DROPPED_SCHEMA, INTERACTIONS_SCHEMA, QUARANTINE_SCHEMA, RESERVED_COLUMNS, Catalog

_INT64 = range(-2**63, 2**63)   # the ts column's type


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

    def tables(self, source: str) -> tuple[pa.Table, pa.Table]:
        """(items, quarantine); text columns in order of first appearance, then content_hash. A source
        without one valid item (a header-only file, say) is a ValueError naming it: nothing to publish."""
        if not self._kept:
            raise ValueError(f"{source}: no valid items ({len(self._rejected)} rows quarantined): nothing published")
        columns = list(dict.fromkeys(name for text in self._kept.values() for name in text))
        rows = [{"item_id": item_id, **{c: text.get(c) for c in columns}} for item_id, text in self._kept.items()]
        for row in rows:
            row["content_hash"] = content_hash(row)
        schema = pa.schema([(c, pa.string()) for c in ["item_id", *columns, "content_hash"]])
        return pa.Table.from_pylist(rows, schema=schema), pa.Table.from_pylist(self._rejected, schema=QUARANTINE_SCHEMA)


def timestamp(value: Any) -> int:
    """Integer seconds from a number, a numeric string or an ISO date (naive = UTC). ValueError, saying
    why, when it is unreadable or outside the int64 column (99999999999999999999, 1e30)."""
    if isinstance(value, datetime):
        return timestamp((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp())
    if isinstance(value, bool) or value is None:
        raise ValueError(f"unreadable ts {value!r}")
    try:
        number = value if isinstance(value, int) else float(value)
    except (TypeError, ValueError):
        try:
            return timestamp(datetime.fromisoformat(str(value).strip()))
        except ValueError:
            raise ValueError(f"unreadable ts {value!r}") from None
    if not math.isfinite(number) or int(number) not in _INT64:
        raise ValueError(f"ts {value!r} is out of range")
    return int(number)


class Interactions:
    """The interaction rows a loader read, and the ones it dropped with their reason."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.items: list[str] = []
        self.ts: list[int] = []
        self._dropped: list[dict[str, str | None]] = []

    def add(self, user: str, item: str, ts: int) -> None:
        self.users.append(user)
        self.items.append(item)
        self.ts.append(ts)

    def drop(self, reason: str, raw: str = "", user: Any = None, item: Any = None) -> None:
        self._dropped.append(_dropped_row(reason, raw, user, item))

    def tables(self, known_items: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(rows on `known_items`, every dropped row): rows on unknown or quarantined items are dropped too."""
        table = pa.table({"user_id": self.users, "item_id": self.items, "ts": self.ts}, schema=INTERACTIONS_SCHEMA)
        known = pc.is_in(table["item_id"], value_set=known_items["item_id"].combine_chunks())
        unknown = table.filter(pc.invert(known)).to_pylist()
        dropped = self._dropped + [_dropped_row("unknown or quarantined item", "", r["user_id"], r["item_id"])
                                   for r in unknown]
        return table.filter(known), pa.Table.from_pylist(dropped, schema=DROPPED_SCHEMA)


def _dropped_row(reason: str, raw: str, user: Any, item: Any) -> dict[str, str | None]:
    """A dropped interaction row; bad bytes are escaped so the table stays valid UTF-8."""
    user, item = (None if v is None else printable(str(v)) for v in (user, item))
    return {"user_id": user, "item_id": item, "reason": reason, "raw": printable(raw)}


def assemble(name: str, domain: str, items: ItemCollector, interactions: Interactions, k: int,
             source: str | None = None) -> Catalog:
    """Build the Catalog: drop interactions on unknown/quarantined items (with the loader's own drops),
    k-core, sort. `source` names the data in errors (default: `name`)."""
    items_table, quarantine = items.tables(source or name)
    kept, dropped = interactions.tables(items_table)
    return Catalog(name, domain, items_table, sort_interactions(k_core(kept, k)), quarantine, dropped)
