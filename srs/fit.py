"""The SRS epoch loop and everything around it that needs no Ray: build a model, fit it with early
stopping, evaluate it, and `train_local` (one run in this process on its best device).

srs.train runs the same `fit` inside Ray Train workers (checkpoints in storage, resume, DDP);
`train_local` is for a machine without Ray (a lone GPU box, a notebook): no checkpoints, no resume.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from cluster.config import SRSConfig
from srs.data import Ragged, SeqTensors, TrainBatch, build_tensors, sample_negatives
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

    @classmethod
    def from_metrics(cls, m: Mapping, seconds: float, checkpoint: str | None, item_table: np.ndarray) -> SRSResult:
        """From the flat metrics a run reports (Fitted.metrics)."""
        return cls(
            test={k: m[f"test/{k}"] for k in ALL_METRICS},
            valid={k: m[f"valid/{k}"] for k in ALL_METRICS},
            best_epoch=int(m["best_epoch"]),
            epochs=int(m["epochs"]),
            seconds=seconds,
            seconds_per_epoch=float(m["seconds_per_epoch"]),
            train_seconds_per_epoch=float(m["train_seconds_per_epoch"]),
            resumed_from=int(m["resumed_from"]),
            checkpoint=checkpoint,
            valid_curve=[float(x) for x in m["valid_curve"]],
            item_table=item_table,
        )


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

    def metrics(self) -> dict:
        """Flat metrics, as Ray Train reports them and SRSResult.from_metrics reads them."""
        return {
            **{f"test/{k}": v for k, v in self.test.items()},
            **{f"valid/{k}": v for k, v in self.valid.items()},
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "seconds_per_epoch": self.seconds_per_epoch,
            "train_seconds_per_epoch": self.train_seconds_per_epoch,
            "resumed_from": self.resumed_from,
            "valid_curve": self.valid_curve,
        }


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
    # Each rank's shuffled share of the rows, the same size on every rank (as DDP needs), in plain random batches:
    # batches grouped by length saved padding but lost 13% HR@10 on Beauty (benchmarks/RESULTS.md).
    rows = DistributedSampler(dataset, num_replicas=world_size, rank=rank, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=rows)
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
        rows.set_epoch(epoch)
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


def prepare_run(
    sequences: Mapping[str, Sequence[str]], item_ids: Sequence[str], cfg: SRSConfig, source: str, inputs: SourceInputs
) -> tuple[SeqTensors, SourceInputs, bool]:
    """Checks the source's inputs and builds the split: (tensors, inputs as float32, whether an ID
    model must be pre-trained first for the source's `id_table`)."""
    inputs = SourceInputs(*(None if x is None else np.asarray(x, dtype=np.float32) for x in
                            (inputs.llm, inputs.attributes, inputs.id_table)))
    needs = required_inputs(source, cfg)
    pretrain = "id_table" in needs and inputs.id_table is None
    check_source(source, len(item_ids), cfg, inputs, tuple(n for n in needs if not (pretrain and n == "id_table")))
    data = build_tensors(sequences, item_ids, cfg.max_len)
    if len(data.train_inputs) == 0:
        raise ValueError("no user has the 4+ items needed for a training example")
    return data, inputs, pretrain


def train_local(
    sequences: Mapping[str, Sequence[str]],
    item_ids: Sequence[str],
    cfg: SRSConfig,
    source: str,
    item_embeddings: np.ndarray | None = None,
    *,
    attribute_scores: np.ndarray | None = None,
    id_item_embeddings: np.ndarray | None = None,
    device: str | None = None,
) -> SRSResult:
    """train_srs in this process, without Ray: same split, model, loop and metrics, on `device`
    (default: the first GPU, else the CPU); single worker, no checkpoints."""
    started = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    data, inputs, pretrain = prepare_run(sequences, item_ids, cfg, source,
                                         SourceInputs(item_embeddings, attribute_scores, id_item_embeddings))
    if pretrain:
        log.info("[srs %s/%s] pre-training the ID model it needs", cfg.model, source)
        inputs = replace(inputs, id_table=train_local(sequences, item_ids, cfg, "id", device=device).item_table)
    torch.set_num_threads(cfg.threads_per_worker)
    torch.manual_seed(cfg.seed)
    model = build_model(source, data.n_items, cfg, inputs.llm, inputs.attributes, inputs.id_table).to(device)
    fitted = fit(model, data, cfg, device, name=f"{cfg.model}/{source}")
    with torch.no_grad():
        item_table = model.items.table()[1:].cpu().numpy()
    return SRSResult.from_metrics(fitted.metrics(), time.perf_counter() - started, None, item_table)


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
