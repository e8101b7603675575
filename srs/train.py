"""Train and evaluate an SRS through Ray Train (TorchTrainer), CPU or GPU by what the cluster has.

Each worker builds the data and model, trains on its shard of the users (DDP when
num_workers > 1); rank 0 evaluates validation NDCG@10 after every epoch with full ranking,
early-stops with `patience`, keeps the best weights and evaluates the test set with them. The
result is reported once, with a checkpoint holding the best weights (safetensors), because Ray
Train V2 keeps only metrics that come with a checkpoint (Result.metrics).
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.collective import broadcast_from_rank_zero
from ray.train.torch import TorchTrainer
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from cluster.config import SRSConfig
from cluster.runtime import has_gpu
from srs.data import BucketBatchSampler, Ragged, SeqTensors, TrainBatch, build_tensors, sample_negatives
from srs.fusion import build_item_embedding, check_source
from srs.metrics import METRICS, popularity_baseline, summarize, target_ranks
from srs.models.sasrec import SASRec

log = logging.getLogger(__name__)

EVAL_BATCH = 256  # a [256, n_items] score block stays in cache: ranking ran 3x faster than at 1024


@dataclass(frozen=True)
class SRSResult:
    """Test metrics of the best-validation epoch. `seconds` is the whole call (Ray worker start
    included); `seconds_per_epoch` is training plus validation time per epoch on rank 0.
    `checkpoint` is the best weights' directory on the storage filesystem when `storage_path`
    was given (None when a temporary directory was used)."""

    test: dict[str, float]
    valid: dict[str, float]
    best_epoch: int
    epochs: int
    seconds: float
    seconds_per_epoch: float
    checkpoint: str | None = None


def build_model(source: str, n_items: int, cfg: SRSConfig, item_embeddings: np.ndarray | None = None) -> SASRec:
    items = build_item_embedding(source, n_items, cfg, item_embeddings)
    return SASRec(items, cfg.max_len, cfg.num_layers, cfg.num_heads, cfg.dropout)


@torch.no_grad()
def evaluate(model: SASRec, inputs: np.ndarray, seen: Ragged, targets: np.ndarray, device: torch.device) -> dict[str, float]:
    """Full-ranking metrics of `model` on the cases, in batches of EVAL_BATCH users of similar
    history length (the metrics are means, so the order is free; short batches cost less)."""
    model.eval()
    order = np.argsort((inputs != 0).sum(1), kind="stable")
    ranks = []
    for start in range(0, len(order), EVAL_BATCH):
        rows = order[start:start + EVAL_BATCH]
        scores = model.score_all(torch.from_numpy(inputs[rows]).to(device))
        batch_targets = torch.from_numpy(targets[rows]).to(device)
        batch_seen = torch.from_numpy(seen.padded(rows)).to(device)
        ranks.append(target_ranks(scores, batch_targets, batch_seen).cpu())
    return summarize(torch.cat(ranks) if ranks else torch.empty(0))


def _train_loop(config: dict) -> None:
    """The per-worker loop run by TorchTrainer."""
    cfg = SRSConfig.model_validate(config["cfg"])
    torch.set_num_threads(cfg.threads_per_worker)
    torch.manual_seed(cfg.seed)
    data: SeqTensors = ray.get(config["data"])
    item_embeddings = ray.get(config["item_embeddings"]) if config["item_embeddings"] is not None else None
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()

    model = ray.train.torch.prepare_model(
        build_model(config["source"], data.n_items, cfg, item_embeddings),
        # The frozen LLM table is identical on every worker: no need to sync it every step.
        parallel_strategy_kwargs={"forward_sync_buffers": False},
    )
    net: SASRec = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    dataset = TensorDataset(torch.tensor(data.train_inputs), torch.tensor(data.train_targets))  # ray.get's arrays are read-only
    batches = BucketBatchSampler(
        (data.train_inputs != 0).sum(1), cfg.batch_size, cfg.seed, rank, ray.train.get_context().get_world_size()
    )
    # The sampler already shards by rank: prepare_data_loader only moves batches to the device.
    loader = ray.train.torch.prepare_data_loader(DataLoader(dataset, batch_sampler=batches), add_dist_sampler=False)
    negatives = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    best_ndcg, best_epoch, best_valid, best_state, bad_epochs = -1.0, 0, {}, {}, 0
    epoch, started = 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        batches.set_epoch(epoch)
        model.train()
        total, steps = 0.0, 0
        for inputs, targets in loader:
            batch = TrainBatch(inputs, targets, sample_negatives(inputs, targets, data.n_items, negatives))
            loss = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        stop = False
        if rank == 0:
            valid = evaluate(net, data.valid_inputs, data.valid_seen, data.valid_targets, device)
            if valid["NDCG@10"] > best_ndcg:
                best_ndcg, best_epoch, best_valid, bad_epochs = valid["NDCG@10"], epoch, valid, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad_epochs += 1
            stop = bad_epochs >= cfg.patience
            log.info(
                "[srs %s] epoch %d loss %.4f valid NDCG@10 %.4f %.1fs",
                config["source"], epoch, total / max(steps, 1), valid["NDCG@10"], time.perf_counter() - t0,
            )
        if broadcast_from_rank_zero(stop):
            break
    seconds_per_epoch = (time.perf_counter() - started) / epoch

    if rank != 0:
        ray.train.report({}, checkpoint=None)
        return
    net.load_state_dict(best_state)
    test = evaluate(net, data.test_inputs, data.test_seen, data.test_targets, device)
    metrics = {
        **{f"test/{k}": v for k, v in test.items()},
        **{f"valid/{k}": v for k, v in best_valid.items()},
        "best_epoch": best_epoch,
        "epochs": epoch,
        "seconds_per_epoch": seconds_per_epoch,
    }
    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: v.contiguous().cpu() for k, v in best_state.items()}, f"{tmp}/model.safetensors")
        Path(tmp, "srs.json").write_text(json.dumps({"source": config["source"], "cfg": config["cfg"], "metrics": metrics}))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def train_srs(
    sequences: Mapping[str, Sequence[str]],
    item_ids: Sequence[str],
    cfg: SRSConfig,
    source: str,
    item_embeddings: np.ndarray | None = None,
    storage_path: str | None = None,
    storage_filesystem: pafs.FileSystem | None = None,
) -> SRSResult:
    """Train SASRec with the item embedding `source` on the leave-one-out split of
    `sequences` (user -> chronological item ids) and return its test metrics.

    Ray must be connected. `item_embeddings` row i belongs to item_ids[i] (needed by
    'llmemb'). Run outputs go to `storage_path` (a local dir or URI; with `storage_filesystem`
    a path on it, as Store.fs/Store.path give) or to a temporary directory."""
    started = time.perf_counter()
    if item_embeddings is not None:
        item_embeddings = np.asarray(item_embeddings, dtype=np.float32)
    check_source(source, len(item_ids), item_embeddings)
    data = build_tensors(sequences, item_ids, cfg.max_len)
    if len(data.train_inputs) == 0:
        raise ValueError("no user has the 4+ items needed for a training example")
    config = {
        "cfg": cfg.model_dump(),
        "source": source,
        "data": ray.put(data),
        "item_embeddings": None if item_embeddings is None else ray.put(item_embeddings),
    }
    with tempfile.TemporaryDirectory(prefix="srs-") as tmp:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=has_gpu(), resources_per_worker={"CPU": 1}),
            run_config=RunConfig(
                name=f"srs-{source}-{uuid.uuid4().hex[:8]}",
                storage_path=storage_path or tmp,
                storage_filesystem=storage_filesystem if storage_path else None,
            ),
        )
        result = trainer.fit()
    m = result.metrics
    return SRSResult(
        test={k: m[f"test/{k}"] for k in METRICS},
        valid={k: m[f"valid/{k}"] for k in METRICS},
        best_epoch=int(m["best_epoch"]),
        epochs=int(m["epochs"]),
        seconds=time.perf_counter() - started,
        seconds_per_epoch=float(m["seconds_per_epoch"]),
        checkpoint=result.checkpoint.path if storage_path and result.checkpoint else None,
    )


def popularity_metrics(sequences: Mapping[str, Sequence[str]], item_ids: Sequence[str] | None = None) -> dict[str, float]:
    """Test metrics of the training-popularity ranking on the same split and protocol as
    train_srs. Without `item_ids` the candidates are the items that occur in `sequences`."""
    if item_ids is None:
        item_ids = sorted({v for seq in sequences.values() for v in seq})
    data = build_tensors(sequences, item_ids, max_len=1)
    return popularity_baseline(data.train_seen, data.test_seen, data.test_targets, data.n_items)
