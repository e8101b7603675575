"""Config, storage and Ray connection: the pieces every job shares."""
from cluster.config import Config, ConfigError, load_config
from cluster.storage import Store, StorageError, store_from_config

__all__ = ["Config", "ConfigError", "load_config", "init_ray", "Store", "StorageError", "store_from_config"]


def __getattr__(name: str):
    """init_ray imports Ray: only when asked for, so config and storage load where Ray is not installed."""
    if name == "init_ray":
        from cluster.runtime import init_ray

        return init_ray
    raise AttributeError(f"module 'cluster' has no attribute {name!r}")
