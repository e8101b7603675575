"""The catalog every job consumes: validated items, clean interactions, and what was rejected."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

INTERACTIONS_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("ts", pa.int64())])
QUARANTINE_SCHEMA = pa.schema([("item_id", pa.string()), ("reason", pa.string()), ("raw", pa.string())])
DROPPED_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("reason", pa.string()),
                            ("raw", pa.string())])

# Columns of `Catalog.items` that are never prompt text.
RESERVED_COLUMNS = ("item_id", "content_hash")


@dataclass
class Catalog:
    """One data set after validation, so downstream jobs never see a bad row.

    items: item_id (the source's own id), the text columns, content_hash; every valid item of the
        catalog, including ones the k-core later leaves without interactions (they still get embedded).
    interactions: user_id, item_id, ts; sorted by (user_id, ts); only items in `items`; k-core filtered.
    quarantine: rejected item rows with the reason and the raw row.
    dropped: interaction rows removed before the k-core because they were unreadable (a ts out of range,
        say) or referenced an unknown or quarantined item, with the reason and the raw row where there is one.
    """

    name: str
    domain: str
    items: pa.Table
    interactions: pa.Table
    quarantine: pa.Table
    dropped: pa.Table

    @property
    def dropped_interactions(self) -> int:
        return self.dropped.num_rows
