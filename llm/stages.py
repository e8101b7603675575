"""The embedding job's worker: a chain of small stages in one actor, one input block per task.

An input block is a row group of the published items Parquet file. The actor (BlockEmbedder) holds
one engine, reads a task's block into columns and passes them through the chain, after Ray Data
LLM's stages: each stage declares the columns it reads and those it adds, and sees only the ones it
declares, so a missing column fails at the stage that needs it, by name.

    Prompt -> Tokenize -> Embed -> [ScoreAttributes] -> WritePart

Scoring user profiles (`embed --attributes --users`) runs the same actor over a block of the users'
profile prompts instead, through ScoreAttributes -> WritePart only.

WritePart writes exactly one part file named after the block (and adapter). Part names are
deterministic, so a retried or resumed block overwrites instead of duplicating, and a rerun after a
crash skips the blocks already written: the final run is the same as an uninterrupted one.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.config import ModelConfig
from cluster.storage import Store
from llm.engines import Adapter, Engine, build_engine


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


def profile_schema(n_attributes: int) -> pa.Schema:
    """The user-profiles contract: one row per user and adapter, the raw 1-9 expected scores of the user's
    profile prompt, null when there was nothing to profile (`reason` says why)."""
    return pa.schema([("user_id", pa.string()), ("attributes", pa.list_(pa.float32(), n_attributes)),
                      ("reason", pa.string()), ("model", pa.string()), ("adapter", pa.string())])


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


class Stage:
    """One link of the chain: reads the columns in `inputs`, returns those in `outputs` (one value per row)."""

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def __call__(self, batch: dict) -> dict:
        """`batch` with this stage's columns added (a column of the same name is replaced)."""
        if missing := [c for c in self.inputs if c not in batch]:
            raise ValueError(f"{type(self).__name__} needs the column(s) {missing}, which the batch lacks "
                             f"(it has {sorted(batch)})")
        added = self.run({c: batch[c] for c in self.inputs})
        rows = len(batch[self.inputs[0]])
        if sorted(added) != sorted(self.outputs) or any(len(v) != rows for v in added.values()):
            raise ValueError(f"{type(self).__name__} must return {rows} rows of {list(self.outputs)}, "
                             f"not {({k: len(v) for k, v in added.items()})}")
        return batch | added

    def run(self, columns: dict) -> dict:
        raise NotImplementedError


def _by_adapter(names: list) -> dict[str | None, list[int]]:
    """Row indices per adapter name: the engine runs one adapter at a time."""
    groups: dict[str | None, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    return groups


class Prompt(Stage):
    """The LLMEmb item prompt from the catalog row's text fields."""

    inputs, outputs = ("item",), ("prompt",)

    def __init__(self, domain: str):
        self.domain = domain

    def run(self, columns: dict) -> dict:
        from catalog import item_prompt

        return {"prompt": [item_prompt(row, self.domain) for row in columns["item"]]}


class Tokenize(Stage):
    """Token ids cut to max_prompt_tokens, and which prompts were cut (the run reports them)."""

    inputs, outputs = ("prompt",), ("token_ids", "truncated")

    def __init__(self, engine: Engine):
        self.engine = engine

    def run(self, columns: dict) -> dict:
        tok = self.engine.tokenize(columns["prompt"])
        return {"token_ids": tok.ids, "truncated": tok.truncated}


class Embed(Stage):
    """Mean-pooled vectors, in row order. The rows go to the engine sorted by token length in batches of
    `batch_size`, so a batch pads only to its own longest prompt: twice the items/s of catalog order."""

    inputs, outputs = ("token_ids", "adapter"), ("embedding", "model")

    def __init__(self, engine: Engine, adapters: dict[str, Adapter], batch_size: int):
        self.engine, self.adapters, self.batch_size = engine, adapters, batch_size

    def run(self, columns: dict) -> dict:
        ids = columns["token_ids"]
        vectors = np.zeros((len(ids), self.engine.hidden_size), np.float32)
        for name, rows in _by_adapter(columns["adapter"]).items():
            rows = sorted(rows, key=lambda i: len(ids[i]))
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                vectors[chunk] = self.engine.embed_ids([ids[i] for i in chunk], self.adapters.get(name))
        return {"embedding": vectors, "model": [self.engine.cfg.path] * len(ids)}


class ScoreAttributes(Stage):
    """GER attribute scores [n, A]: the expected 1-9 values read off the fixed-form answer to each prompt's
    chat-template request (llm.attributes); NaN for a None prompt (a user with nothing to profile)."""

    inputs, outputs = ("prompt", "adapter"), ("attributes",)

    def __init__(self, engine: Engine, adapters: dict[str, Adapter], names: list[str]):
        self.engine, self.adapters, self.names = engine, adapters, names

    def run(self, columns: dict) -> dict:
        from llm.attributes import answer_probs, expected_scores, score_request

        tok, limit = self.engine.tokenizer, self.engine.cfg.max_prompt_tokens
        prompts = columns["prompt"]
        scores = np.full((len(prompts), len(self.names)), np.nan, np.float32)
        for name, rows in _by_adapter(columns["adapter"]).items():
            rows = [i for i in rows if prompts[i] is not None]
            if rows:
                requests = [score_request(tok, prompts[i], self.names, limit) for i in rows]
                scores[rows] = expected_scores(answer_probs(self.engine, requests, self.names, self.adapters.get(name)))
        return {"attributes": scores}


class WritePart(Stage):
    """Writes the rows of one block and adapter as their one part file, in the run's contract `schema`."""

    outputs = ("part",)

    def __init__(self, store: Store, out_rel: str, schema: pa.Schema):
        self.store, self.out_rel, self.schema = store, out_rel, schema
        self.inputs = ("block", *schema.names)

    def run(self, columns: dict) -> dict:
        (block,), (adapter,) = set(columns["block"]), set(columns["adapter"])  # one part per task
        table = pa.Table.from_pydict({f.name: _arrow(columns[f.name], f.type) for f in self.schema}, schema=self.schema)
        name = part_name(block, adapter)
        self.store.write_parquet(f"{self.out_rel}/{name}", table)
        return {"part": [name] * table.num_rows}


def _arrow(values, kind: pa.DataType):
    """A column for Arrow: a matrix becomes fixed-size lists, its all-NaN rows (nothing scored) nulls."""
    if not pa.types.is_fixed_size_list(kind):
        return values
    matrix = np.asarray(values, np.float32)
    unscored = np.isnan(matrix).all(axis=1)
    return pa.FixedSizeListArray.from_arrays(pa.array(np.nan_to_num(matrix).reshape(-1), pa.float32()), type=kind,
                                             mask=pa.array(unscored) if unscored.any() else None)


class BlockEmbedder:
    """The actor of the embedding job (Ray Data map_batches, one task per row): holds one engine (one model
    load per actor) and drives each task's block through the stage chain. With `users`, the blocks are
    of user profile prompts (user_id, prompt, reason), and only their attribute scores are written."""

    def __init__(self, model_cfg: ModelConfig, threads: int, store: Store, items_rel: str, out_rel: str,
                 domain: str, batch_size: int, adapters: dict[str, str], attributes: list[str] | None = None,
                 users: bool = False):
        engine = build_engine(model_cfg, threads)
        tuned = {name: Adapter(name, path, i + 1) for i, (name, path) in enumerate(sorted(adapters.items()))}
        self.store, self.items_rel, self.users, self.model = store, items_rel, users, model_cfg.path
        self.engine = engine.name
        scoring = [ScoreAttributes(engine, tuned, attributes)] if attributes else []
        if users:
            self.stages = [*scoring, WritePart(store, out_rel, profile_schema(len(attributes)))]
        else:
            self.stages = [Prompt(domain), Tokenize(engine), Embed(engine, tuned, batch_size), *scoring,
                           WritePart(store, out_rel, embedding_schema(engine.hidden_size, len(attributes or [])))]

    def __call__(self, tasks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Tasks (block, adapter; adapter '' = the base model) -> one result row each: block, adapter,
        rows, truncated, seconds, and the Ray node and engine that embedded it."""
        import ray

        results = {"block": [], "adapter": [], "rows": [], "truncated": [], "seconds": [], "node": [], "engine": []}
        node = ray.get_runtime_context().get_node_id()
        for block, adapter in zip(tasks["block"].tolist(), tasks["adapter"].tolist()):
            started = time.perf_counter()
            batch = self.read(int(block), adapter or None)
            for stage in self.stages:
                batch = stage(batch)
            truncated = sum(batch.get("truncated", []))   # profile prompts are cut inside score_request
            for key, value in (("block", block), ("adapter", adapter), ("rows", len(batch["part"])),
                               ("truncated", truncated), ("seconds", time.perf_counter() - started),
                               ("node", node), ("engine", self.engine)):
                results[key].append(value)
        return {k: np.asarray(v) for k, v in results.items()}

    def read(self, block: int, adapter: str | None) -> dict:
        """The columns the chain starts from: the block's catalog rows (or profile prompts), and which block and
        adapter they are for."""
        rows = read_block(self.store, self.items_rel, block)
        n = rows.num_rows
        where = {"block": [block] * n, "adapter": [adapter] * n}
        if self.users:
            profiles = {c: rows[c].to_pylist() for c in ("user_id", "prompt", "reason")}
            return where | profiles | {"model": [self.model] * n}
        return where | {"item_id": rows["item_id"].to_pylist(), "content_hash": rows["content_hash"].to_pylist(),
                        "item": rows.to_pylist()}
