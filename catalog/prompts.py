"""Item text -> LLM prompt (the LLMEmb attribute template) and a content hash of exactly that text;
a user's recent items -> one text (GER's profile prompt, scored by fine-tuning and by `embed --users`).

Items are stored, prompted and hashed through the same `clean_text`, so two items with the same
hash always get the same prompt, and an embedding cache keyed by the hash stays valid across runs.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pyarrow as pa

from catalog.filtering import user_sequences
from catalog.schemas import RESERVED_COLUMNS


def clean_text(value: Any) -> str | None:
    """One-line trimmed text, or None when there is nothing to say (lists are joined with ', ', a JSON
    object is its JSON text, never a Python repr)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple)):
        parts = [p for p in (clean_text(v) for v in value) if p]
        return ", ".join(parts) or None
    if isinstance(value, dict):
        return clean_text(json.dumps(value, ensure_ascii=False, default=str)) if value else None
    return " ".join(str(value).split()) or None


def _attributes(item: dict[str, Any]) -> list[tuple[str, str]]:
    """(column, text) pairs that reach the prompt, in column order; an item with no text at all (kept
    by a benchmark loader, whose interactions name it) is described by its id alone."""
    pairs = []
    for name, value in item.items():
        text = None if name in RESERVED_COLUMNS else clean_text(value)
        if text:
            pairs.append((name, text))
    if not pairs and clean_text(item.get("item_id")):
        pairs.append(("id", clean_text(item["item_id"])))
    return pairs


def prompt_columns(items: pa.Table) -> list[str]:
    """The text columns of an items table, in the order they appear in the prompt."""
    return [c for c in items.column_names if c not in RESERVED_COLUMNS]


def item_prompt(item: dict[str, Any], domain: str) -> str:
    """`The <domain> item has the following attributes: title is X; genres is Y.` (empty fields skipped)."""
    pairs = _attributes(item)
    if not pairs:
        raise ValueError(f"item {item.get('item_id')!r} has no text to prompt with")
    clauses = "; ".join(f"{name.replace('_', ' ')} is {text}" for name, text in pairs)
    end = "" if clauses.endswith((".", "!", "?")) else "."  # a description's own full stop ends the prompt
    return f"The {domain} item has the following attributes: {clauses}{end}"


def content_hash(item: dict[str, Any]) -> str:
    """sha256 hex of the prompt-relevant (column, text) pairs; ignores item_id (so renamed ids reuse
    embeddings) unless the id is all the prompt has."""
    payload = json.dumps(_attributes(item), separators=(",", ":"))
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def item_name(row: dict) -> str:
    """What names an item in a text: its first attribute with text (usually its title), else its id."""
    texts = [clean_text(v) for k, v in row.items() if k not in RESERVED_COLUMNS]
    return next((t for t in texts if t), row["item_id"])


def history_text(rows: list[dict], domain: str) -> str:
    """A user's recent items as one text (each item's name), oldest first."""
    return f"A {domain} customer's recent items, oldest first: " + "; ".join(map(item_name, rows)) + "."


def profile_prompts(items: pa.Table, interactions: pa.Table, domain: str, history: int) -> pa.Table:
    """One row per user (user_id, prompt, reason): the profile prompt over the user's `history` most recent
    training items (leave-one-out: the validation and test items never enter it, so explanations of
    held-out items read no leak), or a null prompt and why there is none."""
    rows = {r["item_id"]: r for r in items.to_pylist()}
    users, prompts, reasons = [], [], []
    for user, seq in sorted(user_sequences(interactions).items()):
        recent = seq[:-2][-history:]
        users.append(user)
        prompts.append(history_text([rows[i] for i in recent], domain) if recent else None)
        reasons.append(None if recent else f"{len(seq)} interactions: none left for training after the "
                                           "validation and test items")
    return pa.table({"user_id": pa.array(users, pa.string()), "prompt": pa.array(prompts, pa.string()),
                     "reason": pa.array(reasons, pa.string())})
