"""Loaders for the three public benchmark sets in their published file layouts (see each SOURCE.md)."""
from __future__ import annotations

from pathlib import Path

from catalog.build import Interactions, ItemCollector, assemble, clean_id, timestamp
from catalog.readers import bad_utf8, open_text, read_tsv
from catalog.schemas import Catalog

# RecBole's ml-100k marks missing values with these (item 267 is "unkonwn unkonwn unknown").
_ML_PLACEHOLDERS = {"unknown", "unkonwn"}

# Every category path of the Scientific set starts with this; it anchors the split (see below).
_SCIENTIFIC_ROOT = "Industrial & Scientific"


def _ml_text(value: str) -> str | None:
    return None if value.strip().lower() in _ML_PLACEHOLDERS else value


def load_ml100k(root: Path, k: int) -> Catalog:
    """MovieLens-100K: title, genres, year; real timestamps, ties kept in file order."""
    items = ItemCollector()
    item_columns = ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]
    for rec in read_tsv(root / "ml-100k.item.gz", item_columns):
        if rec.problem:
            items.quarantine_record(rec, "item_id:token")
            continue
        f = rec.fields
        genres = ", ".join(g for g in f["class:token_seq"].split() if g.lower() not in _ML_PLACEHOLDERS)
        text = {"title": _ml_text(f["movie_title:token_seq"]), "genres": genres, "year": _ml_text(f["release_year:token"])}
        items.add(f["item_id:token"], text, rec.raw)

    interactions = Interactions()
    inter_columns = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    for rec in read_tsv(root / "ml-100k.inter.gz", inter_columns):
        user, item = clean_id(rec.fields.get("user_id:token")), clean_id(rec.fields.get("item_id:token"))
        problem = rec.problem or (None if user and item else "malformed row: no user or item id")
        if problem is None:
            try:
                interactions.add(user, item, timestamp(rec.fields["timestamp:float"]))
                continue
            except ValueError as e:
                problem = str(e)
        interactions.drop(problem, rec.raw, user, item)
    return assemble("ml-100k", "movie", items, interactions, k)


def load_beauty(root: Path, k: int) -> Catalog:
    """Amazon Beauty (S3-Rec/P5 version): item_id = ASIN, text = title; ts = position in the sequence.
    Items without a title stay (prompted by their ASIN), so the split is the literature's 22,363 users
    and 12,101 items."""
    items = ItemCollector(keep_textless=True)
    asin_of: dict[str, str] = {}  # the sequences' 1-based ids -> ASIN
    for rec in read_tsv(root / "items.tsv.gz", ["item_id", "asin", "title"]):
        if rec.problem:
            items.quarantine_record(rec, "asin")
            continue
        number, asin = rec.fields["item_id"].strip(), rec.fields["asin"]
        if number in asin_of:
            items.reject(asin, "duplicate item_id", rec.raw)
        elif items.add(asin, {"title": rec.fields["title"]}, rec.raw):
            asin_of[number] = asin.strip()

    interactions = Interactions()
    with open_text(root / "sequences.txt.gz") as f:
        for line in f:
            if not line.strip():
                continue
            user, *sequence = line.split()
            bad = bad_utf8(line)
            for position, number in enumerate(sequence):
                asin = asin_of.get(number)
                if bad:
                    interactions.drop("invalid utf-8", line.rstrip("\r\n"), user, number)
                elif asin is None:
                    interactions.drop("unknown item number", "", user, number)
                else:
                    interactions.add(user, asin, position)
    return assemble("amazon-beauty", "beauty", items, interactions, k)


def split_scientific_text(text: str) -> dict[str, str | None]:
    """UniSRec's "<title>. <categories>. <brand>. " -> title / categories / brand.

    Split from the right, anchored on the categories segment (it starts with the category root,
    or is empty) because titles *and* brands may contain ". " ("S.O.L. Survive Outdoors Longer").
    """
    body = text.strip()
    body = body[:-1] if body.endswith(".") else body
    parts = body.split(". ")
    anchors = [i for i, p in enumerate(parts) if i > 0 and p.startswith(_SCIENTIFIC_ROOT)]
    anchors = anchors or [i for i, p in enumerate(parts[:-1]) if i > 0 and not p.strip()]
    if anchors:
        at = anchors[-1]
    elif len(parts) >= 3:
        at = len(parts) - 2
    else:
        return {"title": body, "categories": None, "brand": None}
    return {"title": ". ".join(parts[:at]), "categories": parts[at], "brand": ". ".join(parts[at + 1:])}


def _index(path: Path) -> dict[str, str]:
    """A UniSRec `key \\t index` file as index -> key; unreadable rows are left out (their ids count as dropped)."""
    return {rec.fields["index"].strip(): rec.fields["key"].strip()
            for rec in read_tsv(path, ["key", "index"], header=False) if not rec.problem}


def load_scientific(root: Path, k: int) -> Catalog:
    """Amazon Scientific (UniSRec subset): item_id = ASIN; a user's full sequence = test history + target."""
    items = ItemCollector()
    for rec in read_tsv(root / "Scientific.text.gz", ["item_id:token", "text:token_seq"]):
        if rec.problem:
            items.quarantine_record(rec, "item_id:token")
            continue
        items.add(rec.fields["item_id:token"], split_scientific_text(rec.fields["text:token_seq"]), rec.raw)

    asin_of = _index(root / "Scientific.item2index.gz")
    user_of = _index(root / "Scientific.user2index.gz")
    interactions = Interactions()
    columns = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
    for rec in read_tsv(root / "Scientific.test.inter.gz", columns):
        if rec.problem:
            interactions.drop(rec.problem, rec.raw, rec.fields.get("user_id:token"))
            continue
        sequence = rec.fields["item_id_list:token_seq"].split() + [rec.fields["item_id:token"].strip()]
        user = user_of.get(rec.fields["user_id:token"].strip())
        for position, index in enumerate(sequence):
            asin = asin_of.get(index)
            if user is None or asin is None:
                interactions.drop("unknown user or item index", "", rec.fields["user_id:token"], index)
            else:
                interactions.add(user, asin, position)
    return assemble("amazon-scientific-mini", "scientific", items, interactions, k)
