"""The SRS training state: what a finished epoch hands to the next one, or to a resumed run."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from cluster.tensorstate import flatten_optimizer, read_pair, unflatten_optimizer, write_pair

STATE = "train_state"  # train_state.safetensors + train_state.json in a checkpoint directory
TENSORS = ("model", "best_model", "optimizer", "torch_rng", "negatives_rng")  # the rest is JSON


@dataclass
class TrainState:
    """Everything `srs.loop.fit` needs to go on after `epoch` exactly as if it had never stopped:
    the weights and optimizer moments, both random generators (as uint8 tensors), the early-stopping
    bookkeeping (best epoch, its weights and validation metrics, epochs without a better one), the
    validation NDCG@10 curve and the seconds spent. `save` writes it as safetensors + JSON
    (cluster.tensorstate), so reading a checkpoint back never unpickles anything."""

    epoch: int = 0
    stopped: bool = False
    model: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)  # an optimizer's state_dict
    torch_rng: torch.Tensor | None = None
    negatives_rng: torch.Tensor | None = None
    best_ndcg: float = -1.0
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    best_model: dict[str, torch.Tensor] = field(default_factory=dict)
    bad_epochs: int = 0
    curve: list[float] = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: float = 0.0

    def save(self, folder: str | Path) -> None:
        optimizer, groups = flatten_optimizer(self.optimizer)
        tensors = {**_prefixed("model", self.model), **_prefixed("best_model", self.best_model),
                   **_prefixed("optimizer", optimizer), "torch_rng": self.torch_rng, "negatives_rng": self.negatives_rng}
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in TENSORS}
        write_pair(folder, STATE, tensors, {**meta, "optimizer_groups": groups})

    @classmethod
    def load(cls, folder: str | Path) -> TrainState | None:
        """The state saved in `folder`, or None when it holds none."""
        if not (Path(folder) / f"{STATE}.json").exists():
            return None
        tensors, meta = read_pair(folder, STATE)
        groups = meta.pop("optimizer_groups")
        return cls(**meta, model=_unprefixed("model", tensors), best_model=_unprefixed("best_model", tensors),
                   optimizer=unflatten_optimizer(_unprefixed("optimizer", tensors), groups),
                   torch_rng=tensors["torch_rng"], negatives_rng=tensors["negatives_rng"])


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")}
