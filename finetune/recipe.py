"""What an objective is, and the context it is prepared in.

An objective (SCFT, GER, TSLRec, RecInterpreter) supplies only what differs: its training examples (built once
on the driver), its extra trainable modules, its loss on a batch of examples, and optionally
outputs computed after the last step and published with the adapter. The loop, checkpoints,
resume, loss curve and publishing are shared (finetune/trainer.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catalog import Catalog
from cluster.config import Config
from cluster.storage import Store


@dataclass
class Job:
    """The driver-side context an objective prepares its data in."""

    cfg: Config
    catalog: Catalog
    out: Store          # the adapter directory (--out): also holds checkpoints and the objective's caches
    store: Store        # the configured storage root (catalog, embeddings runs)
    max_steps: int
    resume: bool
    world: int = 1
    tokenizer: Any = None

    def limit(self, examples: list) -> list:
        """finetune.max_examples, for smoke tests and debugging."""
        n = self.cfg.finetune.max_examples
        return examples[:n] if n else examples

    def plan(self, n_examples: int) -> list[list[int]]:
        """Example indices of each step's global batch (finetune.batch_size, split evenly across the
        workers), epoch after epoch of seeded permutations: the same for every run with the same seed,
        so a resumed run (or one with more steps) repeats exactly the batches before its checkpoint."""
        if n_examples < 2 * self.world:
            raise ValueError(f"{n_examples} training examples: contrastive batches need at least {2 * self.world}")
        size = min(self.cfg.finetune.batch_size, n_examples)
        size -= size % self.world
        rng = np.random.default_rng(self.cfg.finetune.seed)
        batches: list[list[int]] = []
        while len(batches) < self.max_steps:
            order = rng.permutation(n_examples).tolist()
            batches += [order[s:s + size] for s in range(0, n_examples - size + 1, size)]
        return batches[:self.max_steps]


@dataclass
class Batch:
    """What a worker hands the objective's loss at one step (its shard of the global batch)."""

    model: Any           # the peft model (the frozen causal LM for an objective that does not train the LLM)
    tokenizer: Any
    heads: Any           # the objective's nn.Module
    data: dict
    examples: list[int]
    step: int
    cfg: Config
    device: Any = field(default="cpu")


class Objective:
    """One fine-tuning objective; subclasses override prepare, heads and loss."""

    name = "objective"
    publish_heads = False   # True: the heads are part of the result (beside the adapter), not just training state
    trains_llm = True       # False: the LLM stays frozen (no LoRA); only the heads train, and they are the result

    def prepare(self, job: Job) -> dict:
        """Driver: the data every worker gets (picklable); must hold "n_examples"."""
        raise NotImplementedError

    def heads(self, hidden_size: int, data: dict, cfg: Config):
        """The objective's trainable modules besides LoRA (an nn.Module with at least one parameter)."""
        raise NotImplementedError

    def loss(self, batch: Batch):
        raise NotImplementedError

    def finish(self, model, tokenizer, heads, data: dict, cfg: Config, device) -> dict[str, np.ndarray]:
        """Worker rank 0, after the last step: arrays saved with the final checkpoint."""
        return {}

    def publish(self, job: Job, outputs: dict[str, np.ndarray]) -> dict:
        """Driver, after training: write what the outputs become; returns manifest fields."""
        return {}
