"""Train and evaluate an SRS through Ray Train (TorchTrainer), CPU or GPU by what the cluster has.

Each worker builds the data and model (backbone `cfg.model` over the item source), trains on its
shard of the users (DDP when num_workers > 1); rank 0 evaluates validation NDCG@10 after every
epoch (full or sampled ranking, `cfg.ranking`), early-stops with `patience`, keeps the best
weights and evaluates the test set with them. Every epoch ends with a checkpoint of the whole
training state (weights, optimizer, early-stopping bookkeeping, random generators), so a run
whose driver dies resumes where it stopped when it is started again with the same inputs and
storage (its Ray Train run name is derived from them) and ends exactly as an uninterrupted run.
The final report holds the best weights and the precomputed item table (safetensors). The epoch
loop itself (srs.fit) knows nothing of Ray; srs.fit.train_local runs it in-process.

Sources that need a pre-trained ID model (LLMEmb's alignment target, TSLRec's categories) get
one from the caller (`id_item_embeddings`) or, when none is passed, from a first `train_srs`
run of source "id" with the same backbone and config, whose best item table is used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
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
from srs.fit import EPOCH_STATE, SRSResult, build_model, fit, prepare_run
from srs.fusion import SourceInputs

log = logging.getLogger(__name__)


def _train_loop(config: dict) -> None:
    """The per-worker loop run by TorchTrainer."""
    cfg = SRSConfig.model_validate(config["cfg"])
    torch.set_num_threads(cfg.threads_per_worker)
    torch.manual_seed(cfg.seed)
    data: SeqTensors = ray.get(config["data"])
    inputs = SourceInputs(**{k: ray.get(ref) for k, ref in config["inputs"].items()})
    context = ray.train.get_context()
    rank, device = context.get_world_rank(), ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(
        build_model(config["source"], data.n_items, cfg, inputs.llm, inputs.attributes, inputs.id_table),
        # Frozen tables are identical on every worker: no need to sync them every step.
        parallel_strategy_kwargs={"forward_sync_buffers": False},
    )
    resume = _last_epoch_state()
    last_state = dict(resume or {})   # goes into the final checkpoint too: a rerun then only re-tests

    def on_epoch(state: dict | None) -> None:
        last_state.update(state or {})
        _report_epoch(state)

    fitted = fit(model, data, cfg, device, rank, context.get_world_size(), broadcast_from_rank_zero,
                 f"{cfg.model}/{config['source']}", resume=resume, on_epoch=on_epoch)
    if fitted is None:
        ray.train.report({}, checkpoint=None)
        return
    net = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    with torch.no_grad():
        item_table = net.items.table()[1:].contiguous().cpu()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(last_state, f"{tmp}/{EPOCH_STATE}")
        save_file({k: v.contiguous().cpu() for k, v in fitted.state.items()}, f"{tmp}/model.safetensors")
        save_file({"items": item_table}, f"{tmp}/items.safetensors")
        Path(tmp, "srs.json").write_text(json.dumps({"source": config["source"], "cfg": config["cfg"], "metrics": fitted.metrics()}))
        ray.train.report(fitted.metrics(), checkpoint=Checkpoint.from_directory(tmp))


def _report_epoch(state: dict | None) -> None:
    """Every rank reports each epoch (Ray Train's report is collective); rank 0 with the state."""
    if state is None:
        ray.train.report({}, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, f"{tmp}/{EPOCH_STATE}")
        ray.train.report({"epoch": state["epoch"]}, checkpoint=Checkpoint.from_directory(tmp))


def _last_epoch_state() -> dict | None:
    """The training state of the newest checkpoint of this run (a restarted run), if any."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as ckpt:
        path = Path(ckpt, EPOCH_STATE)
        return torch.load(path, weights_only=True) if path.exists() else None


def run_key(sequences: Mapping[str, Sequence[str]], item_ids: Sequence[str], cfg: SRSConfig, source: str) -> str:
    """Names a training run by everything it depends on, so only the same run resumes it."""
    digest = hashlib.sha256(json.dumps([cfg.model_dump(), source, list(item_ids)]).encode())
    for user in sorted(sequences):
        digest.update(f"{user}:{','.join(sequences[user])};".encode())
    return f"srs-{cfg.model}-{source}-{digest.hexdigest()[:12]}"


def train_srs(
    sequences: Mapping[str, Sequence[str]],
    item_ids: Sequence[str],
    cfg: SRSConfig,
    source: str,
    item_embeddings: np.ndarray | None = None,
    storage_path: str | None = None,
    storage_filesystem: pafs.FileSystem | None = None,
    *,
    attribute_scores: np.ndarray | None = None,
    id_item_embeddings: np.ndarray | None = None,
) -> SRSResult:
    """Train backbone `cfg.model` with the item embedding `source` on the leave-one-out split
    of `sequences` (user -> chronological item ids) and return its test metrics.

    Ray must be connected. Row i of every matrix belongs to item_ids[i]: `item_embeddings` the
    LLM embeddings (llm-frozen, llmemb, tslrec), `attribute_scores` [n, A] the attribute scores
    (ger; llm.runs.aligned_attributes reads them), `id_item_embeddings` [n, hidden_size] a
    pre-trained ID model's items (llmemb with align_alpha > 0, tslrec; trained here first when
    not given). Run outputs go to `storage_path` (a local dir or URI; with `storage_filesystem` a
    path on it, as Store.fs/Store.path give) or to a temporary directory. A run with the same
    inputs in the same storage continues from its last finished epoch (a finished run is only
    re-tested)."""
    started = time.perf_counter()
    data, inputs, pretrain = prepare_run(sequences, item_ids, cfg, source,
                                         SourceInputs(item_embeddings, attribute_scores, id_item_embeddings))
    if pretrain:
        log.info("[srs %s/%s] pre-training the ID model it needs", cfg.model, source)
        pre = train_srs(sequences, item_ids, cfg, "id", storage_path=storage_path, storage_filesystem=storage_filesystem)
        inputs = replace(inputs, id_table=pre.item_table)
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
                name=run_key(sequences, item_ids, cfg, source) if storage_path else f"srs-{uuid.uuid4().hex[:8]}",
                storage_path=storage_path or tmp,
                storage_filesystem=storage_filesystem if storage_path else None,
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                callbacks=[bar],
            ),
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as ckpt:
            item_table = load_file(f"{ckpt}/items.safetensors")["items"].numpy()
    checkpoint = result.checkpoint.path if storage_path and result.checkpoint else None
    return SRSResult.from_metrics(result.metrics, time.perf_counter() - started, checkpoint, item_table)
