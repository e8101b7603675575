"""Connect to Ray: an embedded local instance by default, or an existing cluster."""
from __future__ import annotations

import logging
import os

import ray

from cluster.config import ConfigError, RayConfig, StorageConfig

# Set by Ray's job supervisor in the environment of a submitted job's entrypoint (its runtime env and metadata,
# as JSON: ray/dashboard/modules/job/job_supervisor.py). RAY_JOB_ID is no sign: the supervisor strips it.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def init_ray(cfg: RayConfig) -> None:
    """Start or join Ray once per process; a job submitted to a cluster joins it."""
    if ray.is_initialized():
        return
    log_to_driver = cfg.verbose if cfg.log_to_driver is None else cfg.log_to_driver
    if not cfg.verbose:
        _quiet_ray_data()
    if not joins_cluster(cfg):
        # address="local" ignores a stray RAY_ADDRESS, which made a plain ray.init() hang here. The dashboard
        # serves the State API, which Ray Train's placement-group cleaner polls every second (a warning each
        # time it cannot); it listens on loopback only.
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            object_store_memory=cfg.object_store_memory_mb * 1024**2,
            logging_level=logging.WARNING,
            log_to_driver=log_to_driver,
        )
    else:
        # Inside `ray job submit` RAY_ADDRESS points at the cluster; otherwise use the configured one.
        address = os.environ.get("RAY_ADDRESS") or cfg.address
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)


def joins_cluster(cfg: RayConfig) -> bool:
    """Whether init_ray joins a running cluster (of any size) rather than starting the embedded, one-node Ray."""
    return cfg.address != "local" or bool(os.environ.get("RAY_ADDRESS"))


def under_ray_job() -> bool:
    """This process is the entrypoint of `ray job submit`, running in a temporary copy of its --working-dir."""
    return RAY_JOB_ENV in os.environ


def alive_nodes() -> int:
    return sum(node["Alive"] for node in ray.nodes())


def check_shared_storage(storage: StorageConfig, nodes: int) -> None:
    """Refuse a local store on a cluster of several nodes: each node would write its parts onto its own disk."""
    if nodes > 1 and not storage.shared and not storage.uri.startswith("s3://"):
        raise ConfigError(f"storage.uri {storage.uri!r} is a local path, but this Ray cluster has {nodes} nodes, each "
                          "of which would write its parts onto its own disk: use s3://bucket/prefix, or a filesystem "
                          "every node mounts at that path and say so with storage.shared: true")


def check_cluster_credentials(storage: StorageConfig) -> None:
    """Refuse S3 keys in the config on a cluster: they never leave this process (cluster.config.SECRET_ENV), so
    the workers on other nodes, which read their own environment, would have none."""
    if storage.uri.startswith("s3://") and (storage.s3.access_key or storage.s3.secret_key):
        raise ConfigError("storage.s3 holds keys, which stay with the job's driver, while the workers of a Ray cluster "
                          "read theirs from their own environment: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY on "
                          "every node (cluster/deploy/raycluster.yaml takes them from a Kubernetes Secret) and remove "
                          "the keys from the config")


def _quiet_ray_data() -> None:
    """Off the console: Ray Data's progress bars, its heartbeat lines every 10 s (when stdout is not a
    terminal) and its execution notes. Its warnings and errors still show; --verbose brings the rest back."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # The module that would tell us, as a warning, that we turned its bars off.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def node_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


def has_gpu() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


M_MMAP_THRESHOLD = -3   # glibc's mallopt parameter (malloc.h)


def return_freed_memory(threshold: int = 128 * 1024) -> None:
    """Give every allocation of `threshold` bytes and more (tensors) its own mapping, returned to the OS when freed.
    glibc's default raises that threshold after the first such free, up to 32 MiB: a training step's activations
    then come from the heap and stay there, fragmented, once freed (a GER step of one user grew a worker's RSS by
    0.6 GB where its tensors held 0.07). For processes that train; a no-op off glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, threshold)
