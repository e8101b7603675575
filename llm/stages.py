"""Ray Data stages of the embedding job: catalog rows -> prompts -> engine -> embedding rows.

Each stage is a small callable over pyarrow batches that declares the columns it produces,
after Ray Data LLM's processor stages. The engine stage is a class so Ray builds it once per
actor (one model load per actor).
"""
from __future__ import annotations

import pyarrow as pa

from cluster.config import ModelConfig
from llm.engines import Adapter, build_engine

EMBEDDING_COLUMNS = ["item_id", "content_hash", "embedding", "truncated", "model", "adapter"]


def embedding_schema(dims: int) -> pa.Schema:
    """The embeddings-run contract (DESIGN.md): one row per item, a fixed-size float32 vector."""
    return pa.schema([
        ("item_id", pa.string()),
        ("content_hash", pa.string()),
        ("embedding", pa.list_(pa.float32(), dims)),
        ("truncated", pa.bool_()),
        ("model", pa.string()),
        ("adapter", pa.string()),
    ])


class PromptStage:
    """Adds the LLMEmb item prompt ("The <domain> item has the following attributes: ...")."""

    def __init__(self, domain: str):
        self.domain = domain

    def __call__(self, batch: pa.Table) -> pa.Table:
        from catalog import item_prompt

        prompts = [item_prompt(row, self.domain) for row in batch.to_pylist()]
        return pa.table({"item_id": batch["item_id"], "content_hash": batch["content_hash"],
                         "prompt": pa.array(prompts, pa.string())})


class EmbedStage:
    """Holds one engine; embeds a batch of prompts with mean pooling, optionally through a LoRA adapter."""

    def __init__(self, model_cfg: ModelConfig, threads: int, model_id: str, adapter: Adapter | None = None):
        self.engine = build_engine(model_cfg, threads)
        self.model_id = model_id
        self.adapter = adapter

    def __call__(self, batch: pa.Table) -> pa.Table:
        tok = self.engine.tokenize(batch["prompt"].to_pylist())
        # Similar lengths together: less padding per forward pass.
        order = sorted(range(len(tok.ids)), key=lambda i: len(tok.ids[i]))
        vectors = self.engine.embed_ids([tok.ids[i] for i in order], self.adapter)
        rows = [0] * len(order)
        for pos, i in enumerate(order):
            rows[i] = pos
        vectors = vectors[rows]
        n, d = vectors.shape
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return pa.Table.from_arrays(
            [batch["item_id"], batch["content_hash"], pa.FixedSizeListArray.from_arrays(flat, d),
             pa.array(tok.truncated, pa.bool_()),
             pa.array([self.model_id] * n, pa.string()),
             pa.array([self.adapter.name if self.adapter else None] * n, pa.string())],
            schema=embedding_schema(d),
        )
