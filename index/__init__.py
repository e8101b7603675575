"""Nearest-item search: a FAISS index over a committed embeddings run, stored as versions."""
from index.faiss_index import ItemIndex
from index.versions import (
    Neighbour,
    NoIndexError,
    build_from_run,
    current_version,
    item_titles,
    list_versions,
    load_index,
    save_version,
    set_current,
    similar_items,
    version_manifest,
)

__all__ = [
    "ItemIndex", "Neighbour", "NoIndexError", "build_from_run", "current_version", "item_titles",
    "list_versions", "load_index", "save_version", "set_current", "similar_items",
    "version_manifest",
]
