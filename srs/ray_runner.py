"""The Ray Train runner: srs.loop's epoch loop in TorchTrainer workers, CPU or GPU by what the
cluster has. Ray must be connected; srs.train(..., runner="ray") calls it.

Each worker builds the model and trains on its shard of the users (DDP when num_workers > 1); rank
0 validates after every epoch and early-stops. Every epoch ends with a checkpoint of the whole
TrainState (srs.state: safetensors + JSON), so a run whose driver dies resumes where it stopped when
it is started again with the same inputs and storage (its Ray Train run name is derived from them)
and ends exactly as an uninterrupted run. The final checkpoint holds the best weights
(model.safetensors), the item table (items.safetensors) and srs.json, what serving loads, beside the
last TrainState (a rerun of a finished run then only re-tests).
"""
from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.collective import broadcast_from_rank_zero
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file, save_file

from cluster.config import SRSConfig
from cluster.progress import train_progress
from cluster.runtime import has_gpu
from srs.data import SeqTensors
from srs.fusion import SourceInputs
from srs.loop import Worker, build_model, fit
from srs.state import TrainState


class RayWorker(Worker):
    """A TorchTrainer worker: rank 0's stopping decision is broadcast, every epoch is reported
    (Ray Train's report is collective), rank 0's with its training state as the checkpoint."""

    def agree(self, stop: bool) -> bool:
        return broadcast_from_rank_zero(stop)

    def checkpoint(self, state: TrainState | None) -> None:
        if state is None:
            ray.train.report({}, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            state.save(tmp)
            ray.train.report({"epoch": state.epoch}, checkpoint=Checkpoint.from_directory(tmp))


def _train_loop(config: dict) -> None:
    """The per-worker loop run by TorchTrainer."""
    cfg = SRSConfig.model_validate(config["cfg"])
    torch.set_num_threads(cfg.threads_per_worker)
    torch.manual_seed(cfg.seed)
    data: SeqTensors = ray.get(config["data"])
    inputs = SourceInputs(**{k: ray.get(ref) for k, ref in config["inputs"].items()})
    context = ray.train.get_context()
    worker = RayWorker(ray.train.torch.get_device(), context.get_world_rank(), context.get_world_size(),
                       f"{cfg.model}/{config['source']}")
    model = ray.train.torch.prepare_model(
        build_model(config["source"], data.n_items, cfg, inputs.llm, inputs.attributes, inputs.id_table, data.warm),
        # Frozen tables are identical on every worker: no need to sync them every step.
        parallel_strategy_kwargs={"forward_sync_buffers": False},
    )
    fitted = fit(model, data, cfg, worker, _last_state())
    if fitted is None:
        ray.train.report({}, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fitted.state.save(tmp)
        save_file({k: v.contiguous().cpu() for k, v in fitted.state.best_model.items()}, f"{tmp}/model.safetensors")
        save_file({"items": fitted.items}, f"{tmp}/items.safetensors")
        Path(tmp, "srs.json").write_text(json.dumps({"source": config["source"], "cfg": config["cfg"], "metrics": fitted.metrics()}))
        ray.train.report(fitted.metrics(), checkpoint=Checkpoint.from_directory(tmp))


def _last_state() -> TrainState | None:
    """The training state of this run's newest checkpoint (a restarted run), if any."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as ckpt:
        return TrainState.load(ckpt)


def run_ray(
    data: SeqTensors,
    inputs: SourceInputs,
    cfg: SRSConfig,
    source: str,
    name: str | None = None,
    storage_path: str | None = None,
    storage_filesystem: pafs.FileSystem | None = None,
) -> tuple[dict, np.ndarray, str | None]:
    """(flat metrics, item table, the final checkpoint's path in storage) of the TorchTrainer run
    `name` in `storage_path` (a local dir or URI; with `storage_filesystem` a path on it), or of a
    throwaway run in a temporary directory (no checkpoint path) when no storage is given."""
    config = {
        "cfg": cfg.model_dump(),
        "source": source,
        "data": ray.put(data),
        "inputs": {k: ray.put(v) for k, v in vars(inputs).items() if v is not None},
    }
    with tempfile.TemporaryDirectory(prefix="srs-") as tmp, train_progress(f"train {cfg.model}/{source}", cfg.epochs) as bar:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=has_gpu(), resources_per_worker={"CPU": 1}),
            run_config=RunConfig(
                name=name or f"srs-{uuid.uuid4().hex[:8]}",
                storage_path=storage_path or tmp,
                storage_filesystem=storage_filesystem if storage_path else None,
                callbacks=[bar],
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as ckpt:
            item_table = load_file(f"{ckpt}/items.safetensors")["items"].numpy()
    return result.metrics, item_table, result.checkpoint.path if storage_path else None
