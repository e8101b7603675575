"""Nearest-item search: a FAISS index over a committed embeddings run, stored as versions,
and the HTTP query service over it (with SRS recommendations)."""
from index.faiss_index import ItemIndex, recall_at_k
from index.recommender import NoModelError, Recommender, find_model
from index.service import LiveIndex, Snapshot, create_app
from index.versions import (
    Neighbour,
    NoIndexError,
    build_from_run,
    current_version,
    item_titles,
    list_versions,
    load_index,
    prune_versions,
    save_version,
    set_current,
    similar_items,
    update_from_run,
    version_manifest,
)

__all__ = [
    "ItemIndex", "LiveIndex", "Neighbour", "NoIndexError", "NoModelError", "Recommender", "Snapshot",
    "build_from_run", "create_app", "current_version", "find_model", "item_titles", "list_versions",
    "load_index", "prune_versions", "recall_at_k", "save_version", "set_current", "similar_items",
    "update_from_run", "version_manifest",
]
