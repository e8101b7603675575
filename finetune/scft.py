"""LLMEmb's supervised contrastive fine-tuning (SCFT; Liu et al., "LLMEmb", AAAI 2025).

Two views of each item's prompt, each made by randomly dropping a share (`drop_ratio`) of its
attribute clauses; both views are embedded the way the embedding job embeds (mean of the final
hidden states over the prompt); an in-batch InfoNCE in both directions pulls an item's two views
together and pushes the other items away. Similarity is the cosine over a trainable temperature
(log-parameterized): the paper writes an inner product, which on unnormalized LLM states gives
logits in the hundreds and saturates the softmax from the first step.

Items with a single clause (Amazon Beauty: the title only) lose a share of that clause's words
instead; a view always keeps at least one clause and one word.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from catalog.prompts import clean_text, item_prompt
from catalog.schemas import RESERVED_COLUMNS
from cluster.config import Config
from finetune.lora import mean_pool, tokenize
from finetune.recipe import Batch, Job, Objective


def clauses(row: dict) -> list[tuple[str, str]]:
    """(column, text) pairs of an item row that reach its prompt, in prompt order."""
    pairs = [(k, clean_text(v)) for k, v in row.items() if k not in RESERVED_COLUMNS]
    return [(k, t) for k, t in pairs if t]


def _keep(n: int, ratio: float, rng: random.Random) -> list[int]:
    """Sorted indices of the parts kept after dropping round(ratio * n), at least one kept."""
    keep = max(1, n - round(ratio * n))
    return sorted(rng.sample(range(n), keep))


def random_view(pairs: list[tuple[str, str]], ratio: float, rng: random.Random) -> dict[str, str]:
    """An item with a share of its clauses dropped (of its words, when it has one clause); never empty."""
    if len(pairs) > 1:
        return {pairs[i][0]: pairs[i][1] for i in _keep(len(pairs), ratio, rng)}
    name, text = pairs[0]
    words = text.split()
    return {name: " ".join(words[i] for i in _keep(len(words), ratio, rng))}


class Temperature(torch.nn.Module):
    """InfoNCE temperature, trained in log space (always positive); training state, not part of the adapter."""

    def __init__(self, initial: float):
        super().__init__()
        self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(initial)))

    def forward(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(min=1e-3)


class SCFT(Objective):
    name = "scft"

    def prepare(self, job: Job) -> dict:
        items = [pairs for pairs in (clauses(row) for row in job.catalog.items.to_pylist()) if pairs]
        items = job.limit(items)
        return {"items": items, "domain": job.catalog.domain, "n_examples": len(items)}

    def heads(self, hidden_size: int, data: dict, cfg: Config) -> Temperature:
        return Temperature(cfg.finetune.temperature)

    def loss(self, b: Batch) -> torch.Tensor:
        ft = b.cfg.finetune
        rng = random.Random(ft.seed * 1_000_003 + b.step)  # the same views when a resumed run repeats a step
        items = [b.data["items"][i] for i in b.examples]
        views = [item_prompt(random_view(pairs, ft.drop_ratio, rng), b.data["domain"]) for _ in (1, 2) for pairs in items]
        ids = tokenize(b.tokenizer, views, b.cfg.model.max_prompt_tokens)
        z = F.normalize(mean_pool(b.model, ids, b.tokenizer.pad_token_id, b.device), dim=-1)
        first, second = z[:len(items)], z[len(items):]
        logits = first @ second.T / b.heads()
        labels = torch.arange(len(items), device=logits.device)
        return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)
