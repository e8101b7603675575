"""srs.train, the one way to train an SRS, and the local runner.

`train(..., runner="ray")` runs srs.loop's epoch loop in Ray Train workers (srs.ray_runner:
checkpoints in storage, resume, DDP; imported only then, so the rest runs where Ray is not
installed); `runner="local"` runs it in this process on one device (a lone GPU box, a notebook;
no checkpoints). Same split, model, loop and metrics: on the CPU both end in the same place.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pyarrow.fs as pafs
import torch

from cluster.config import SRSConfig
from srs.data import SeqTensors, build_tensors, cold_items, similar_rows
from srs.fusion import SourceInputs, check_source, required_inputs
from srs.loop import Worker, build_model, fit
from srs.metrics import ALL_METRICS

log = logging.getLogger(__name__)

RUNNERS = ("ray", "local")


@dataclass(frozen=True)
class SRSResult:
    """Test metrics (overall, "tail/", and "cold/" and "warm/" under the cold-item protocol) of the best-validation epoch. `seconds` is the whole
    call (Ray worker start and any ID pre-training included); `seconds_per_epoch` is training
    plus validation time per epoch on rank 0, `train_seconds_per_epoch` training alone;
    `resumed_from` the last epoch a previous attempt had finished (0: a fresh run). `checkpoint` is
    the final checkpoint's directory on the storage filesystem when `storage_path` was given (None
    otherwise): model.safetensors (best weights), items.safetensors, srs.json. `valid_curve` is
    validation NDCG@10 per epoch; `item_table` the best model's item embeddings [n_items, d] (row
    i = item_ids[i]), what serving loads; `boost_sweep` each semantic_boost's validation and test
    metrics when srs.loop chose it ("auto")."""

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
    boost_sweep: list[dict] = field(default_factory=list)

    @classmethod
    def from_metrics(cls, m: Mapping, seconds: float, checkpoint: str | None, item_table: np.ndarray) -> SRSResult:
        """From the flat metrics a run reports (Fitted.metrics)."""
        return cls(
            test={k.removeprefix("test/"): v for k, v in m.items() if k.startswith("test/")},
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
            boost_sweep=list(m["boost_sweep"]),
        )


def train(
    sequences: Mapping[str, Sequence[str]],
    item_ids: Sequence[str],
    cfg: SRSConfig,
    source: str,
    *,
    runner: Literal["ray", "local"] = "ray",
    item_embeddings: np.ndarray | None = None,
    attribute_scores: np.ndarray | None = None,
    id_item_embeddings: np.ndarray | None = None,
    storage_path: str | None = None,
    storage_filesystem: pafs.FileSystem | None = None,
    device: str | None = None,
) -> SRSResult:
    """Train backbone `cfg.model` with the item embedding `source` on the leave-one-out split
    of `sequences` (user -> chronological item ids) and return its test metrics.

    Row i of every matrix belongs to item_ids[i]: `item_embeddings` the LLM embeddings
    (llm-frozen, llmemb, tslrec), `attribute_scores` [n, A] the attribute scores (ger;
    llm.runs.aligned_attributes reads them), `id_item_embeddings` [n, hidden_size] a pre-trained
    ID model's items (llmemb with align_alpha > 0, tslrec; trained here first, by the same runner,
    when not given). Inputs are checked before any training starts.

    runner "ray" (Ray connected): outputs go to `storage_path` (a local dir or URI; with
    `storage_filesystem` a path on it, as Store.fs/Store.path give) or to a temporary directory; a
    run with the same inputs in the same storage continues from its last finished epoch (a
    finished run is only re-tested). runner "local": this process, on `device` (default: the first
    GPU, else the CPU), no checkpoints."""
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}: use one of {RUNNERS}")
    if runner == "local" and storage_path is not None:
        raise ValueError("the local runner keeps no checkpoints: storage_path is for runner='ray'")
    if runner == "ray" and device is not None:
        raise ValueError("Ray Train places its workers by what the cluster has: device is for runner='local'")
    started = time.perf_counter()
    data, inputs, pretrain = prepare_run(sequences, item_ids, cfg, source,
                                         SourceInputs(item_embeddings, attribute_scores, id_item_embeddings))
    if pretrain:
        log.info("[srs %s/%s] pre-training the ID model it needs", cfg.model, source)
        pre = train(sequences, item_ids, cfg, "id", runner=runner, storage_path=storage_path,
                    storage_filesystem=storage_filesystem, device=device)
        inputs = replace(inputs, id_table=pre.item_table)
    checkpoint = None
    if runner == "local":
        metrics, item_table = run_local(data, inputs, cfg, source, device)
    else:
        from srs.ray_runner import run_ray

        name = run_key(sequences, item_ids, cfg, source) if storage_path else None
        metrics, item_table, checkpoint = run_ray(data, inputs, cfg, source, name, storage_path, storage_filesystem)
    return SRSResult.from_metrics(metrics, time.perf_counter() - started, checkpoint, item_table)


def run_local(
    data: SeqTensors, inputs: SourceInputs, cfg: SRSConfig, source: str, device: str | None = None
) -> tuple[dict, np.ndarray]:
    """The local runner: (flat metrics, item table) of the epoch loop run in this process."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(cfg.threads_per_worker)
    torch.manual_seed(cfg.seed)
    model = build_model(source, data.n_items, cfg, inputs.llm, inputs.attributes, inputs.id_table, data.warm).to(device)
    fitted = fit(model, data, cfg, Worker(device, label=f"{cfg.model}/{source}"))
    return fitted.metrics(), fitted.items.numpy()


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
    data = build_tensors(sequences, item_ids, cfg.max_len, cold_items(len(item_ids), cfg.cold_items, cfg.seed))
    if len(data.train_inputs) == 0:
        raise ValueError("no user has the 4+ items needed for a training example")
    if cfg.distill_weight:
        if "llm" not in needs:
            raise ValueError(f"srs.distill_weight: source {source!r} reads no LLM embeddings to find similar users "
                             "with (llmesr, llmemb, llm-frozen, tslrec, id with id_init llm-pca do)")
        data = replace(data, train_similar=similar_rows(data.train_inputs, inputs.llm, cfg.distill_users))
    return data, inputs, pretrain


def run_key(sequences: Mapping[str, Sequence[str]], item_ids: Sequence[str], cfg: SRSConfig, source: str) -> str:
    """Names a training run by everything it depends on, so only the same run resumes it."""
    digest = hashlib.sha256(json.dumps([cfg.model_dump(), source, list(item_ids)]).encode())
    for user in sorted(sequences):
        digest.update(f"{user}:{','.join(sequences[user])};".encode())
    return f"srs-{cfg.model}-{source}-{digest.hexdigest()[:12]}"
