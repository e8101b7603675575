"""Nearest-item search: a FAISS index over a committed embeddings run, stored as versions,
and the HTTP query service over it (with SRS recommendations)."""
from cluster.layout import NoIndexError, current_version, set_current
from index.faiss_index import ItemIndex, recall_at_k
from index.recommender import Recommender
from index.service import LiveIndex, Snapshot, create_app
from index.versions import (
    Neighbour,
    build_from_run,
    item_titles,
    list_versions,
    load_index,
    prune_versions,
    save_version,
    similar_items,
    update_from_run,
    version_manifest,
)

__all__ = [
    "ItemIndex", "LiveIndex", "Neighbour", "NoIndexError", "Recommender", "Snapshot",
    "build_from_run", "create_app", "current_version", "item_titles", "list_versions",
    "load_index", "prune_versions", "recall_at_k", "save_version", "set_current", "similar_items",
    "update_from_run", "version_manifest",
]
