"""load_catalog: one entry point from the config's dataset name to a validated Catalog."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from catalog.datasets import load_beauty, load_ml100k, load_scientific
from catalog.generic import load_directory
from catalog.schemas import Catalog
from catalog.synthetic import synthetic_catalog
from cluster.config import DatasetConfig
from cluster.layout import NAMED_DATASETS

# Public sets, read from DatasetConfig.resolved_data_root() / name.
_PUBLIC: dict[str, Callable[[Path, int], Catalog]] = {
    "ml-100k": load_ml100k,
    "amazon-beauty": load_beauty,
    "amazon-scientific-mini": load_scientific,
}
KNOWN_DATASETS = NAMED_DATASETS   # "synthetic" and _PUBLIC
PUBLIC_DATASETS = tuple(_PUBLIC)


def load_catalog(cfg: DatasetConfig) -> Catalog:
    """Dispatch on cfg.name: "synthetic", a public set under the data root, or a catalog directory."""
    known = ", ".join(KNOWN_DATASETS)
    if cfg.name == "synthetic":
        return synthetic_catalog(cfg)
    if cfg.name in _PUBLIC:
        directory = cfg.resolved_data_root() / cfg.name
        if not directory.is_dir():
            raise FileNotFoundError(
                f"data set {cfg.name!r} not found at {directory} (set dataset.data_root or DATA_ROOT)")
        return _PUBLIC[cfg.name](directory, cfg.min_interactions)
    path = Path(cfg.name).expanduser()
    if path.is_dir():
        return load_directory(path, cfg.min_interactions)
    if path.is_absolute() or len(path.parts) > 1 or cfg.name.startswith((".", "~")):
        raise FileNotFoundError(f"catalog directory not found: {path} (or use one of: {known})")
    raise ValueError(f"unknown data set {cfg.name!r}: use one of {known} or a catalog directory")
