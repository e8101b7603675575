"""The SRS epoch loop, with no Ray in it: build a model, `fit` it with early stopping on validation
NDCG@10, evaluate it. Both runners (srs.runners: in this process; srs.ray_runner: Ray Train
workers) run this same loop; a `Worker` tells it where it runs and what to do between epochs.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from cluster.config import SRSConfig
from srs.data import Ragged, SeqTensors, TrainBatch, sample_negatives
from srs.fusion import DualView, SourceInputs, build_item_embedding
from srs.metrics import rank_cases, report, sample_candidates, tail_items
from srs.models import MODELS, SeqRecommender
from srs.state import TrainState

log = logging.getLogger(__name__)


def build_model(
    source: str,
    n_items: int,
    cfg: SRSConfig,
    item_embeddings: np.ndarray | None = None,
    attribute_scores: np.ndarray | None = None,
    id_item_embeddings: np.ndarray | None = None,
    warm: np.ndarray | None = None,
) -> SeqRecommender:
    items = build_item_embedding(source, n_items, cfg,
                                 SourceInputs(item_embeddings, attribute_scores, id_item_embeddings, warm))
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
    cold: np.ndarray | None = None,
    known_only: bool = False,
) -> dict[str, float]:
    """Overall and tail metrics of `model` on the cases: full ranking, or sampled with `candidates`.
    With `cold` (the cold-item protocol) also cold/ and warm/ ones; with `known_only` cold items are
    not candidates (validation: what the model knows while it trains)."""
    model.eval()
    score_all = model.score_all
    if known_only and cold is not None:
        unknown = torch.from_numpy(cold).to(device)
        score_all = lambda seq: model.score_all(seq).masked_fill(unknown, -torch.inf)  # noqa: E731
    return report(rank_cases(score_all, inputs, seen, targets, candidates, device), targets, tail,
                  None if known_only else cold)


@dataclass
class Worker:
    """Where one copy of the loop runs and what it does between epochs. As it stands: the only
    worker, on `device`, keeping nothing (the local runner); srs.ray_runner's workers share rank 0's
    stopping decision and checkpoint every epoch. `label` names the run in log lines."""

    device: torch.device | str = "cpu"
    rank: int = 0
    world_size: int = 1
    label: str = ""

    def agree(self, stop: bool) -> bool:
        """Rank 0's early-stopping decision, made every rank's."""
        return stop

    def checkpoint(self, state: TrainState | None) -> None:
        """Called by every rank after each epoch: rank 0 with the training state, the others with None."""


@dataclass
class Fitted:
    """What rank 0 keeps of a run: the last epoch's training state (which holds the best epoch, its
    weights and validation metrics), the best weights' test metrics and item table [n_items, d]
    (row i = item_ids[i]; what serving loads), the epoch a resumed run started after, and with semantic_boost
    "auto" each b's metrics (choose_boost)."""

    state: TrainState
    test: dict[str, float]
    items: torch.Tensor
    resumed_from: int = 0
    boost_sweep: list[dict] = field(default_factory=list)

    def metrics(self) -> dict:
        """Flat metrics, as Ray Train reports them and SRSResult.from_metrics reads them."""
        s, epochs = self.state, len(self.state.curve)
        return {
            **{f"test/{k}": v for k, v in self.test.items()},
            **{f"valid/{k}": v for k, v in s.best_valid.items()},
            "best_epoch": s.best_epoch,
            "epochs": epochs,
            "seconds_per_epoch": s.seconds / epochs,
            "train_seconds_per_epoch": s.train_seconds / epochs,
            "resumed_from": self.resumed_from,
            "valid_curve": s.curve,
            "boost_sweep": self.boost_sweep,
        }


def fit(
    model: torch.nn.Module, data: SeqTensors, cfg: SRSConfig, worker: Worker | None = None, state: TrainState | None = None
) -> Fitted | None:
    """Train `model` (a SeqRecommender, or DDP around one) with early stopping on validation
    NDCG@10, continuing after `state` when given (a checkpoint of the same run; carried on in
    place, it becomes the returned Fitted.state). Rank 0 returns
    the best epoch (its weights loaded back into the model) with test metrics; other ranks None.
    Without a `worker`: the only one, on the CPU."""
    worker = worker or Worker()
    net: SeqRecommender = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    device, rank = worker.device, worker.rank
    train_inputs = torch.tensor(data.train_inputs)   # ray.get's arrays are read-only
    dataset = TensorDataset(train_inputs, torch.tensor(data.train_targets), torch.arange(len(train_inputs)))
    # Each rank's shuffled share of the rows, the same size on every rank (as DDP needs), in plain random batches:
    # batches grouped by length saved padding but lost 13% HR@10 on Beauty (benchmarks/RESULTS.md).
    # srs.batch_size is the global batch: a per-worker batch of it all would halve the steps of two workers and
    # cost 12% HR@10 on ml-100k (benchmarks/NOTEBOOK.md "Session 24").
    rows = DistributedSampler(dataset, num_replicas=worker.world_size, rank=rank, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=-(-cfg.batch_size // worker.world_size), sampler=rows)
    negatives = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    known_items = torch.arange(1, data.n_items + 1, device=device)
    if data.cold is not None:   # items training never sees: no negatives, no softmax candidates
        known_items = known_items[~torch.from_numpy(data.cold[1:]).to(device)]
        net.unseen = torch.from_numpy(np.flatnonzero(data.cold)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    tail = tail_items(data.train_seen, data.n_items)
    candidates = None
    if cfg.ranking == "sampled":
        candidates = sample_candidates(data.test_seen, data.test_targets, data.n_items)

    s = state or TrainState()
    if state is not None:
        net.load_state_dict(s.model)
        optimizer.load_state_dict(s.optimizer)
        torch.set_rng_state(s.torch_rng)
        negatives.set_state(s.negatives_rng)
        log.info("[srs %s] resuming after epoch %d", worker.label, s.epoch)
    resumed_from = s.epoch
    for epoch in range(s.epoch + 1, cfg.epochs + 1):
        if s.stopped:
            break
        t0 = time.perf_counter()
        rows.set_epoch(epoch)
        model.train()
        total, steps = 0.0, 0
        for rows_in_batch in loader:
            loss = model(batch_of(rows_in_batch, data, train_inputs, net, known_items, negatives, device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        s.train_seconds += time.perf_counter() - t0
        stop = False
        if rank == 0:
            valid = evaluate(net, data.valid_inputs, data.valid_seen, data.valid_targets, tail, device, candidates,
                             data.cold, known_only=True)
            s.curve.append(valid["NDCG@10"])
            if valid["NDCG@10"] > s.best_ndcg:
                s.best_ndcg, s.best_epoch, s.best_valid, s.bad_epochs = valid["NDCG@10"], epoch, valid, 0
                s.best_model = _weights(net)
            else:
                s.bad_epochs += 1
            stop = s.bad_epochs >= cfg.patience
            log.info("[srs %s] epoch %d loss %.4f valid NDCG@10 %.4f %.1fs",
                     worker.label, epoch, total / max(steps, 1), valid["NDCG@10"], time.perf_counter() - t0)
        s.epoch, s.stopped = epoch, worker.agree(stop)
        s.seconds += time.perf_counter() - t0
        if rank == 0:
            s.model, s.optimizer = _weights(net), optimizer.state_dict()
            s.torch_rng, s.negatives_rng = torch.get_rng_state(), negatives.get_state()
        worker.checkpoint(s if rank == 0 else None)
    if rank != 0:
        return None
    net.load_state_dict(s.best_model)
    if cfg.text_map_steps:
        # the map only learns text -> rows in the trained model's score space: no distillation there
        fit_text_map(net, loader, cfg, lambda b: batch_of(b, data, train_inputs, net, known_items, negatives, device,
                                                          distill=False), worker)
    known = np.ones(data.n_items, dtype=bool) if data.warm is None else data.warm
    net.items.after_training(torch.from_numpy(known).to(device), torch.from_numpy(tail[1:]).to(device))
    sweep = []
    if cfg.semantic_boost == "auto" and isinstance(net.items, DualView):   # other sources have no semantic view
        sweep = choose_boost(net, data, tail, device, candidates, cfg.boost_tolerance)
    s.best_model = _weights(net)   # what is published: with what the source learned after training
    # and its validation metrics, which choose the served source: a semantic boost moves them
    s.best_valid = evaluate(net, data.valid_inputs, data.valid_seen, data.valid_targets, tail, device, candidates,
                            data.cold, known_only=True)
    test = evaluate(net, data.test_inputs, data.test_seen, data.test_targets, tail, device, candidates, data.cold)
    with torch.no_grad():
        items = net.items.table()[1:].detach().cpu().clone()   # a view of the ID table would still require grad
    return Fitted(s, test, items, resumed_from, sweep)


BOOSTS = (0.0, 0.1, 0.25, 0.5, 1.0)


def choose_boost(net: SeqRecommender, data: SeqTensors, tail: np.ndarray, device, candidates: np.ndarray | None,
                 tolerance: float) -> list[dict]:
    """semantic_boost "auto": set the largest b of BOOSTS whose validation NDCG@10 is at least (1 - tolerance)
    of b = 0's (one b does not fit every backbone: 0.5 costs SASRec 0.8% of NDCG@10 on Beauty and GRU4Rec 10%
    of HR@10). Returns each b's validation and test metrics (for the record: only validation chooses) and
    whether it was chosen."""
    sweep = []
    for b in BOOSTS:
        net.items.boost(b)
        valid = evaluate(net, data.valid_inputs, data.valid_seen, data.valid_targets, tail, device, candidates,
                         data.cold, known_only=True)
        test = evaluate(net, data.test_inputs, data.test_seen, data.test_targets, tail, device, candidates, data.cold)
        sweep.append({"boost": b, **{f"valid/{k}": v for k, v in valid.items()},
                      **{f"test/{k}": v for k, v in test.items()}})
    floor = (1 - tolerance) * sweep[0]["valid/NDCG@10"]
    chosen = max(row["boost"] for row in sweep if row["valid/NDCG@10"] >= floor)
    net.items.boost(chosen)
    for row in sweep:
        row["chosen"] = row["boost"] == chosen
    log.info("[srs] semantic_boost auto: b = %g (validation NDCG@10 %s)", chosen,
             " ".join(f"{row['boost']:g}:{row['valid/NDCG@10']:.4f}" for row in sweep))
    return sweep


def batch_of(loaded: list[torch.Tensor], data: SeqTensors, train_inputs: torch.Tensor, net: SeqRecommender,
             known_items: torch.Tensor, negatives: torch.Generator, device, distill: bool = True) -> TrainBatch:
    """The TrainBatch of the loader's (inputs, targets, row indices): negatives when the loss samples
    them, each row's similar rows when the run self-distills (and `distill`)."""
    inputs, targets, rows = (x.to(device) for x in loaded)
    neg = sample_negatives(inputs, targets, known_items, negatives) if net.needs_negatives else None
    similar = None
    if distill and data.train_similar is not None:
        similar = train_inputs[torch.from_numpy(data.train_similar[rows.cpu().numpy()])].to(device)
    return TrainBatch(inputs, targets, neg, similar)


def fit_text_map(net: SeqRecommender, loader: DataLoader, cfg: SRSConfig, batch_of, worker: Worker) -> None:
    """Train only the source's text -> row map over the trained, frozen model, with text dropout, for
    srs.text_map_steps steps: the map learns rows that compete in the trained model's score space,
    while the warm items' rows and the backbone stay exactly as trained."""
    params = net.items.text_map_stage(cfg.text_dropout)
    if not params:
        return
    frozen = [p for p in net.parameters() if p.requires_grad and all(p is not q for q in params)]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    net.train()
    step, total, epoch = 0, 0.0, cfg.epochs
    while step < cfg.text_map_steps:
        epoch += 1
        loader.sampler.set_epoch(epoch)
        for loaded in itertools.islice(loader, cfg.text_map_steps - step):
            loss = net(batch_of(loaded))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step, total = step + 1, total + loss.item()
    log.info("[srs %s] text map: %d steps, mean loss %.4f", worker.label, step, total / step)
    for p in frozen:
        p.requires_grad_(True)
    net.items.text_map_stage(0.0)


def _weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights, which later steps (and loading the best epoch's back) leave alone."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
