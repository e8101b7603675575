"""Serve nearest-item and next-item queries over HTTP: one FastAPI app, hosted two ways.

    guidedrec serve --config ray_config.yaml                 # uvicorn, this process
    guidedrec serve --config ray_config.yaml --ray-serve     # a Ray Serve deployment (cluster)
    serve run jobs.serve:app_builder config=ray_config.yaml  # a Serve config file's import_path (RayService)

OpenAPI at /openapi.json (docs at /docs). The app follows CURRENT in storage: a new index
version or a newly trained model is picked up within serve.poll_seconds, no restart needed.
"""
from __future__ import annotations

import os
from pathlib import Path

import faiss
import torch
import typer
import uvicorn
from fastapi import FastAPI
from ray import serve

from cluster import Config, init_ray, load_config, store_from_config
from cluster.config import TOKEN_ENV, without_secrets
from cluster.runtime import alive_nodes, check_cluster_credentials, check_shared_storage
from index import create_app
from jobs.runner import VERBOSE, job_config

REPLICA_CPUS = 1.0   # Ray then sets OMP_NUM_THREADS=1 in the replica: one thread per request, as below
DEPLOYMENT = "guidedrec"   # the name a Serve config (cluster/deploy/rayservice.yaml) sets its autoscaling by


def ray_serve_app(cfg: Config) -> serve.Application:
    """The app as a Ray Serve deployment: each replica builds it (and its storage poller) itself, from the config
    without its credentials (Ray pickles the app into its store): a replica reads the token and the S3 keys from
    its own environment, which a Ray started by `guidedrec serve` inherits (jobs.runner.job_config put them there).
    A replica that would serve without the token this side has refuses to start."""
    public = without_secrets(cfg)
    token_required = cfg.serve.token is not None or bool(os.environ.get(TOKEN_ENV))

    def build() -> FastAPI:
        if token_required and not os.environ.get(TOKEN_ENV):
            raise RuntimeError(f"the service requires a bearer token, and this Ray Serve replica has no ${TOKEN_ENV} "
                               "in its environment: set it on every Ray node (cluster/deploy/rayservice.yaml takes "
                               "it from a Kubernetes Secret)")
        return create_app(store_from_config(public), public.serve)

    deployment = serve.deployment(serve.ingress(build)(), name=DEPLOYMENT,
                                  ray_actor_options={"num_cpus": REPLICA_CPUS})
    return deployment.bind()


def app_builder(args: dict) -> serve.Application:
    """The application a Serve config names (a RayService's serveConfigV2): args["config"] is the
    ray_config.yaml to serve. Its replicas may land on any node, so the store must be one they all reach."""
    cfg = load_config(args.get("config"))
    check_shared_storage(cfg.storage, alive_nodes())
    check_cluster_credentials(cfg.storage)
    return ray_serve_app(cfg)


def main(config: Path = typer.Option(None, help="ray_config.yaml (default: built-in defaults)"),
         host: str = typer.Option(None, help="Override serve.host"),
         port: int = typer.Option(None, help="Override serve.port"),
         ray_serve: bool = typer.Option(False, "--ray-serve", help="Deploy through Ray Serve (ray.address) instead of uvicorn"),
         verbose: bool = VERBOSE) -> None:
    """Serve the CURRENT index (and its SRS model) over HTTP until interrupted."""
    overrides = {key: value for key, value in {"serve.host": host, "serve.port": port}.items() if value is not None}
    cfg = job_config(config, verbose, overrides)
    url = f"http://{cfg.serve.host}:{cfg.serve.port}"
    if ray_serve:
        init_ray(cfg.ray)
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        print(f"guidedrec serving on {url} through Ray Serve (Ctrl-C stops)", flush=True)
        serve.run(ray_serve_app(cfg), name="guidedrec", route_prefix="/", blocking=True)
    else:
        # Requests already run in parallel on the server's threads; OpenMP inside each one only
        # contends (Flat, 100k x 64, one query: 6.5 ms with 1 thread, 78 ms with 2 on a busy 2-core box).
        torch.set_num_threads(1)
        faiss.omp_set_num_threads(1)
        app = create_app(store_from_config(cfg), cfg.serve)
        print(f"guidedrec serving on {url} (OpenAPI: {url}/openapi.json)", flush=True)
        uvicorn.run(app, host=cfg.serve.host, port=cfg.serve.port)


if __name__ == "__main__":
    from jobs.runner import run_job

    run_job(main)
