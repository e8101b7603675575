"""Train and evaluate an SRS through Ray Train (TorchTrainer), CPU or GPU by what the cluster has.

Each worker builds the data and model (backbone `cfg.model` over the item source), trains on its
shard of the users (DDP when num_workers > 1); rank 0 evaluates validation NDCG@10 after every
epoch (full or sampled ranking, `cfg.ranking`), early-stops with `patience`, keeps the best
weights and evaluates the test set with them. Every epoch ends with a checkpoint of the whole
training state (weights, optimizer, early-stopping bookkeeping, random generators), so a run
whose driver dies resumes where it stopped when it is started again with the same inputs and
storage (its Ray Train run name is derived from them) and ends exactly as an uninterrupted run.
The final report holds the best weights and the precomputed item table (safetensors). The epoch
loop itself (`fit`) knows nothing of Ray, so it also runs in-process.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
from torch.utils.data import DataLoader, TensorDataset

from cluster.config import SRSConfig
from cluster.runtime import has_gpu
from srs.data import BucketBatchSampler, Ragged, SeqTensors, TrainBatch, build_tensors, sample_negatives
from srs.fusion import SourceInputs, build_item_embedding, check_source, required_inputs
from srs.metrics import ALL_METRICS, popularity_baseline, rank_cases, report, sample_candidates, tail_items
from srs.models import MODELS, SeqRecommender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SRSResult:
    """Test metrics (overall and "tail/") of the best-validation epoch. `seconds` is the whole
    call (Ray worker start and any ID pre-training included); `seconds_per_epoch` is training
    plus validation time per epoch on rank 0, `train_seconds_per_epoch` training alone;
    `resumed_from` the last epoch a previous attempt had finished (0: a fresh run). `checkpoint` is the best weights' directory on
    the storage filesystem when `storage_path` was given (None when a temporary directory was
    used). `valid_curve` is validation NDCG@10 per epoch; `item_table` the best model's item
    embeddings [n_items, d] (row i = item_ids[i]), what serving loads."""

    test: dict[str, float]
    valid: dict[str, float]
    best_epoch: int
    epochs: int
    seconds: float
    seconds_per_epoch: float
    train_seconds_per_epoch: float = 0.0
    resumed_from: int = 0
    checkpoint: str | None = None
    valid_curve: list[float] = field(default_factory=list)
    item_table: np.ndarray | None = None


def build_model(
    source: str,
    n_items: int,
    cfg: SRSConfig,
    item_embeddings: np.ndarray | None = None,
    attribute_scores: np.ndarray | None = None,
    id_item_embeddings: np.ndarray | None = None,
) -> SeqRecommender:
    items = build_item_embedding(source, n_items, cfg, SourceInputs(item_embeddings, attribute_scores, id_item_embeddings))
    return MODELS[cfg.model](items, cfg)


@torch.no_grad()
def evaluate(
    model: SeqRecommender,
    inputs: np.ndarray,
    seen: Ragged,
    targets: np.ndarray,
    tail: np.ndarray,
    device: torch.device | str = "cpu",
    candidates: np.ndarray | None = None,
) -> dict[str, float]:
    """Overall and tail metrics of `model` on the cases: full ranking, or sampled with `candidates`."""
    model.eval()
    return report(rank_cases(model.score_all, inputs, seen, targets, candidates, device), targets, tail)


@dataclass
class Fitted:
    """What rank 0 keeps of a run: the best epoch's weights and metrics, and the test metrics."""

    state: dict[str, torch.Tensor]
    valid: dict[str, float]
    test: dict[str, float]
    best_epoch: int
    epochs: int
    valid_curve: list[float]
    seconds_per_epoch: float
    train_seconds_per_epoch: float
    resumed_from: int = 0


EPOCH_STATE = "epoch_state.pt"


def fit(
    model: torch.nn.Module,
    data: SeqTensors,
    cfg: SRSConfig,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    stop_all: Callable[[bool], bool] = lambda stop: stop,
    name: str = "",
    resume: dict | None = None,
    on_epoch: Callable[[dict | None], None] = lambda state: None,
) -> Fitted | None:
    """Train `model` (a SeqRecommender, or DDP around one) with early stopping on validation
    NDCG@10; `stop_all` turns rank 0's decision into every rank's. Rank 0 returns the best
    epoch (its weights loaded back into the model) with test metrics; other ranks None.

    After every epoch each rank calls `on_epoch` (rank 0 with the whole training state, the
    others with None); passing such a state back as `resume` continues the run after it."""
    net: SeqRecommender = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    dataset = TensorDataset(torch.tensor(data.train_inputs), torch.tensor(data.train_targets))  # ray.get's arrays are read-only
    batches = BucketBatchSampler((data.train_inputs != 0).sum(1), cfg.batch_size, cfg.seed, rank, world_size)
    loader = DataLoader(dataset, batch_sampler=batches)
    negatives = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    tail = tail_items(data.train_seen, data.n_items)
    candidates = None
    if cfg.ranking == "sampled":
        candidates = sample_candidates(data.test_seen, data.test_targets, data.n_items)

    best_ndcg, best_epoch, best_valid, best_state, bad_epochs, curve = -1.0, 0, {}, {}, 0, []
    done, stopped, seconds, train_seconds = 0, False, 0.0, 0.0
    if resume is not None:
        net.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["torch_rng"])
        negatives.set_state(resume["negatives_rng"])
        best_ndcg, best_epoch, best_valid, best_state = resume["best_ndcg"], resume["best_epoch"], resume["best_valid"], resume["best_state"]
        bad_epochs, curve, done, stopped = resume["bad_epochs"], resume["curve"], resume["epoch"], resume["stopped"]
        seconds, train_seconds = resume["seconds"], resume["train_seconds"]
        log.info("[srs %s] resuming after epoch %d", name, done)
    for epoch in range(done + 1, cfg.epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        batches.set_epoch(epoch)
        model.train()
        total, steps = 0.0, 0
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            neg = sample_negatives(inputs, targets, data.n_items, negatives) if net.needs_negatives else None
            loss = model(TrainBatch(inputs, targets, neg))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        train_seconds += time.perf_counter() - t0
        stop = False
        if rank == 0:
            valid = evaluate(net, data.valid_inputs, data.valid_seen, data.valid_targets, tail, device, candidates)
            curve.append(valid["NDCG@10"])
            if valid["NDCG@10"] > best_ndcg:
                best_ndcg, best_epoch, best_valid, bad_epochs = valid["NDCG@10"], epoch, valid, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad_epochs += 1
            stop = bad_epochs >= cfg.patience
            log.info("[srs %s] epoch %d loss %.4f valid NDCG@10 %.4f %.1fs",
                     name, epoch, total / max(steps, 1), valid["NDCG@10"], time.perf_counter() - t0)
        stopped = stop_all(stop)
        seconds += time.perf_counter() - t0
        on_epoch(None if rank != 0 else {
            "epoch": epoch, "stopped": stopped, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(), "negatives_rng": negatives.get_state(), "best_ndcg": best_ndcg,
            "best_epoch": best_epoch, "best_valid": best_valid, "best_state": best_state, "bad_epochs": bad_epochs,
            "curve": curve, "seconds": seconds, "train_seconds": train_seconds})
    if rank != 0:
        return None
    epochs = len(curve)
    net.load_state_dict(best_state)
    test = evaluate(net, data.test_inputs, data.test_seen, data.test_targets, tail, device, candidates)
    return Fitted(best_state, best_valid, test, best_epoch, epochs, curve, seconds / epochs, train_seconds / epochs,
                  resume["epoch"] if resume else 0)


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
    metrics = {
        **{f"test/{k}": v for k, v in fitted.test.items()},
        **{f"valid/{k}": v for k, v in fitted.valid.items()},
        "best_epoch": fitted.best_epoch,
        "epochs": fitted.epochs,
        "seconds_per_epoch": fitted.seconds_per_epoch,
        "train_seconds_per_epoch": fitted.train_seconds_per_epoch,
        "resumed_from": fitted.resumed_from,
        "valid_curve": fitted.valid_curve,
    }
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(last_state, f"{tmp}/{EPOCH_STATE}")
        save_file({k: v.contiguous().cpu() for k, v in fitted.state.items()}, f"{tmp}/model.safetensors")
        save_file({"items": item_table}, f"{tmp}/items.safetensors")
        Path(tmp, "srs.json").write_text(json.dumps({"source": config["source"], "cfg": config["cfg"], "metrics": metrics}))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


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


def _float32(x: np.ndarray | None) -> np.ndarray | None:
    return None if x is None else np.asarray(x, dtype=np.float32)


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
    LLM embeddings (llm-frozen, llmemb, tslrec), `attribute_scores` [n, A] (ger),
    `id_item_embeddings` [n, hidden_size] a pre-trained ID model's items (llmemb with
    align_alpha > 0, tslrec; trained here first when not given). Run outputs go to
    `storage_path` (a local dir or URI; with `storage_filesystem` a path on it, as
    Store.fs/Store.path give) or to a temporary directory. A run with the same inputs in the
    same storage continues from its last finished epoch (a finished run is only re-tested)."""
    started = time.perf_counter()
    inputs = SourceInputs(_float32(item_embeddings), _float32(attribute_scores), _float32(id_item_embeddings))
    needs = required_inputs(source, cfg)
    pretrain = "id_table" in needs and inputs.id_table is None
    check_source(source, len(item_ids), cfg, inputs, tuple(n for n in needs if not (pretrain and n == "id_table")))
    data = build_tensors(sequences, item_ids, cfg.max_len)
    if len(data.train_inputs) == 0:
        raise ValueError("no user has the 4+ items needed for a training example")
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
    with tempfile.TemporaryDirectory(prefix="srs-") as tmp:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=has_gpu(), resources_per_worker={"CPU": 1}),
            run_config=RunConfig(
                name=run_key(sequences, item_ids, cfg, source) if storage_path else f"srs-{uuid.uuid4().hex[:8]}",
                storage_path=storage_path or tmp,
                storage_filesystem=storage_filesystem if storage_path else None,
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as ckpt:
            item_table = load_file(f"{ckpt}/items.safetensors")["items"].numpy()
    m = result.metrics
    return SRSResult(
        test={k: m[f"test/{k}"] for k in ALL_METRICS},
        valid={k: m[f"valid/{k}"] for k in ALL_METRICS},
        best_epoch=int(m["best_epoch"]),
        epochs=int(m["epochs"]),
        seconds=time.perf_counter() - started,
        seconds_per_epoch=float(m["seconds_per_epoch"]),
        train_seconds_per_epoch=float(m["train_seconds_per_epoch"]),
        resumed_from=int(m["resumed_from"]),
        checkpoint=result.checkpoint.path if storage_path and result.checkpoint else None,
        valid_curve=[float(x) for x in m["valid_curve"]],
        item_table=item_table,
    )


def popularity_metrics(
    sequences: Mapping[str, Sequence[str]], item_ids: Sequence[str] | None = None, ranking: str = "full"
) -> dict[str, float]:
    """Test metrics (overall and tail) of the training-popularity ranking on the same split and
    protocol as train_srs. Without `item_ids` the candidates are the items in `sequences`."""
    if item_ids is None:
        item_ids = sorted({v for seq in sequences.values() for v in seq})
    data = build_tensors(sequences, item_ids, max_len=1)
    candidates = sample_candidates(data.test_seen, data.test_targets, data.n_items) if ranking == "sampled" else None
    return popularity_baseline(data.train_seen, data.test_seen, data.test_targets, data.n_items, candidates)
