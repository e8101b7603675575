"""Config, storage and Ray connection: the pieces every job shares."""
from cluster.config import Config, ConfigError, load_config
from cluster.runtime import init_ray
from cluster.storage import Store, StorageError, store_from_config

__all__ = ["Config", "ConfigError", "load_config", "init_ray", "Store", "StorageError", "store_from_config"]
