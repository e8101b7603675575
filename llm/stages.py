"""The embedding job's worker: one engine per actor, one input block per task.

An input block is a row group of the published items Parquet file. Each task reads its block,
builds the LLMEmb prompts, embeds them (sorted by token length so each forward pass pads
little), and writes exactly one part file named after the block (and adapter). Part names are
deterministic, so a retried or resumed block overwrites instead of duplicating, and a rerun
after a crash skips the blocks already written: the final run is the same as an uninterrupted one.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.config import ModelConfig
from cluster.storage import Store
from llm.engines import Adapter, build_engine


def embedding_schema(dims: int, n_attributes: int = 0) -> pa.Schema:
    """The embeddings-run contract (DESIGN.md): one row per item and adapter, a fixed-size float32
    vector, and with attribute scoring the raw 1-9 expected scores."""
    fields = [
        ("item_id", pa.string()),
        ("content_hash", pa.string()),
        ("embedding", pa.list_(pa.float32(), dims)),
        ("truncated", pa.bool_()),
        ("model", pa.string()),
        ("adapter", pa.string()),
    ]
    if n_attributes:
        fields.append(("attributes", pa.list_(pa.float32(), n_attributes)))
    return pa.schema(fields)


def part_name(block: int, adapter: str | None) -> str:
    return f"part-{block:06d}" + (f"-{adapter}" if adapter else "") + ".parquet"


def read_block(store: Store, items_rel: str, block: int) -> pa.Table:
    with store.fs.open_input_file(store.path(items_rel)) as f:
        return pq.ParquetFile(f).read_row_group(block)


def count_blocks(store: Store, items_rel: str) -> list[int]:
    """Rows per input block (row group) of the items file: the job's unit of work and of resume."""
    with store.fs.open_input_file(store.path(items_rel)) as f:
        meta = pq.ParquetFile(f).metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


class BlockEmbedder:
    """Holds one engine (one model load per actor); embeds and writes whole input blocks."""

    def __init__(self, model_cfg: ModelConfig, threads: int, store: Store, items_rel: str, out_rel: str,
                 domain: str, batch_size: int, adapters: dict[str, str], attributes: list[str] | None = None):
        self.engine = build_engine(model_cfg, threads)
        self.model_id = model_cfg.path
        self.store, self.items_rel, self.out_rel = store, items_rel, out_rel
        self.domain, self.batch_size = domain, batch_size
        self.adapters = {name: Adapter(name, path, i + 1) for i, (name, path) in enumerate(sorted(adapters.items()))}
        self.attributes = attributes or []

    def __call__(self, tasks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = {"block": [], "adapter": [], "rows": [], "truncated": [], "seconds": []}
        for block, adapter in zip(tasks["block"].tolist(), tasks["adapter"].tolist()):
            started = time.perf_counter()
            table = self.embed_block(int(block), adapter or None)
            self.store.write_parquet(f"{self.out_rel}/{part_name(int(block), adapter or None)}", table)
            for key, value in (("block", block), ("adapter", adapter), ("rows", table.num_rows),
                               ("truncated", int(pa.compute.sum(table["truncated"]).as_py() or 0)),
                               ("seconds", time.perf_counter() - started)):
                stats[key].append(value)
        return {k: np.asarray(v) for k, v in stats.items()}

    def embed_block(self, block: int, adapter_name: str | None) -> pa.Table:
        from catalog import item_prompt

        items = read_block(self.store, self.items_rel, block)
        prompts = [item_prompt(row, self.domain) for row in items.to_pylist()]
        tok = self.engine.tokenize(prompts)
        adapter = self.adapters[adapter_name] if adapter_name else None
        order = np.argsort([len(x) for x in tok.ids], kind="stable")
        vectors = np.zeros((len(prompts), self.engine.hidden_size), np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            vectors[rows] = self.engine.embed_ids([tok.ids[i] for i in rows], adapter)
        n, d = vectors.shape
        columns = [items["item_id"], items["content_hash"],
                   pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), d),
                   pa.array(tok.truncated, pa.bool_()), pa.array([self.model_id] * n, pa.string()),
                   pa.array([adapter_name] * n, pa.string())]
        if self.attributes:
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(self.score(prompts, adapter).reshape(-1)),
                                                             len(self.attributes)))
        return pa.Table.from_arrays(columns, schema=embedding_schema(d, len(self.attributes)))

    def score(self, prompts: list[str], adapter: Adapter | None) -> np.ndarray:
        """GER attribute scores per item [n, A]: expected values read off the fixed-form answer."""
        from llm.attributes import answer_probs, expected_scores, score_request

        limit = self.engine.cfg.max_prompt_tokens
        asks = [score_request(self.engine.tokenizer, p, self.attributes, limit) for p in prompts]
        return expected_scores(answer_probs(self.engine, asks, self.attributes, adapter))
