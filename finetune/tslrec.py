"""TSLRec's user-level SFT (Liu et al. 2024): the LLM learns each user's latent-category distribution
from a history of items it reads as SRS embeddings, then gives every item a knowledge embedding.

1. A pre-trained ID SASRec's item embeddings (a published `id` SASRec of this data set when
   there is one, otherwise trained here for `tslrec_srs_epochs`) are k-means clustered into
   K = srs.tslrec_clusters latent categories: srs.fusion.latent_categories, the same clustering
   the SRS's tslrec source uses.
2. One example per user: g_u = the user's training items counted per category, normalized.
3. The prompt is text around the user's `tslrec_history` most recent items, each item one input
   position whose embedding is its SRS embedding through a trainable linear projection into the
   token-embedding space; the final hidden state of the last position -> linear -> softmax =
   g_hat_u; loss = squared error summed over categories, averaged over users.
4. After training, the single-item pass (the prompt around one item) gives each item's knowledge
   embedding h_v and its inferred category distribution, written as an embeddings run
   (embeddings/<dataset>-<model>-tslrec in the configured store) that the SRS source reads.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import torch

from catalog import ranked_items, user_sequences
from cluster.config import Config
from finetune.lora import backbone
from finetune.recipe import Batch, Job, Objective
from cluster.layout import knowledge_run_name, read_parts, run_dir, run_name
from llm.stages import embedding_schema

ID_TABLE = "tslrec_id_items.safetensors"


def instruction(k: int) -> tuple[str, str]:
    return (f"Given the user's purchase history, predict the user's distribution among {k} purchase preferences. "
            f"History:", " Distribution:")


def _published_id_table(job: Job, item_ids: list[str]) -> np.ndarray | None:
    """Item rows of the ID SASRec `guidedrec train` published for this data set, if it covers every item."""
    from cluster.storage import StorageError
    from srs.models import SASRec
    from srs.published import find_model, load_model

    try:
        rel = find_model(job.store, run_name(job.cfg), "id")   # where `guidedrec train` publishes
        model, _, published_ids, _, _ = load_model(job.store, rel)
        if not isinstance(model, SASRec):
            return None
    except (LookupError, OSError, ValueError, StorageError):
        return None
    pos = {item: i for i, item in enumerate(published_ids)}
    if any(i not in pos for i in item_ids):
        return None
    with torch.no_grad():
        table = model.items.table()[1:].numpy()
    print(f"tslrec: using the published ID SASRec {job.store.full_uri(rel)}", flush=True)
    return table[[pos[i] for i in item_ids]]


def id_item_table(job: Job, sequences: dict, item_ids: list[str]) -> np.ndarray:
    """[n_items, d] ID SASRec item embeddings: cached in the output directory (a resumed run clusters
    the very same table), else published, else trained here through Ray Train."""
    from safetensors.numpy import load, save

    if job.resume and job.out.exists(ID_TABLE):
        table = load(job.out.read_bytes(ID_TABLE))["items"]
        if table.shape[0] == len(item_ids):
            return table
    table = _published_id_table(job, item_ids)
    if table is None:
        from srs import train

        srs_cfg = job.cfg.srs.model_copy(update={"model": "sasrec", "epochs": job.cfg.finetune.tslrec_srs_epochs})
        print(f"tslrec: training the ID SASRec ({srs_cfg.epochs} epochs) whose items are clustered", flush=True)
        result = train(sequences, item_ids, srs_cfg, "id", runner="ray", storage_path=job.out.path("srs"),
                       storage_filesystem=job.out.fs)
        table = result.item_table
    job.out.write_bytes(ID_TABLE, save({"items": np.ascontiguousarray(table, dtype=np.float32)}))
    return table.astype(np.float32)


class Heads(torch.nn.Module):
    """SRS embedding -> token-embedding space (items), last hidden state -> K categories."""

    def __init__(self, srs_dim: int, hidden_size: int, k: int):
        super().__init__()
        self.project = torch.nn.Linear(srs_dim, hidden_size)
        self.classify = torch.nn.Linear(hidden_size, k)


def user_states(model, tokenizer, heads: Heads, table: torch.Tensor, histories: list[list[int]], k: int, device):
    """[n, d] final hidden state at the last position of each prompt with its items injected."""
    before, after = instruction(k)
    embed = model.get_input_embeddings()
    prefix = embed(torch.tensor(tokenizer(before, add_special_tokens=True)["input_ids"], device=device))
    suffix = embed(torch.tensor(tokenizer(after, add_special_tokens=False)["input_ids"], device=device))
    rows = [torch.cat([prefix, heads.project(table[h]).to(prefix.dtype), suffix]) for h in histories]
    lengths = [len(r) for r in rows]
    width = max(lengths)
    inputs = torch.zeros(len(rows), width, prefix.shape[-1], dtype=prefix.dtype, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for i, r in enumerate(rows):  # right padding: the last real position sees the whole prompt
        inputs[i, :len(r)] = r
        mask[i, :len(r)] = 1
    hidden = backbone(model)(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
    return hidden[torch.arange(len(rows), device=device), torch.tensor(lengths, device=device) - 1].float()


class TSLRec(Objective):
    name = "tslrec"
    publish_heads = True

    def prepare(self, job: Job) -> dict:
        from srs.fusion import latent_categories

        cfg, cat = job.cfg, job.catalog
        k = cfg.srs.tslrec_clusters
        sequences = user_sequences(cat.interactions)
        item_ids = ranked_items(cat.items["item_id"].to_pylist(), cat.interactions)
        table = id_item_table(job, sequences, item_ids)
        categories = latent_categories(table, k, cfg.finetune.seed)
        pos = {item: i for i, item in enumerate(item_ids)}
        histories, targets = [], []
        for user, seq in sorted(sequences.items()):
            train = [pos[i] for i in seq[:-2]]  # leave-one-out: validation and test items never train
            if train:
                histories.append(train[-cfg.finetune.tslrec_history:])
                targets.append(np.bincount(categories[train], minlength=k) / len(train))
        histories, targets = job.limit(histories), job.limit(targets)
        return {"n_examples": len(histories), "histories": histories, "targets": np.asarray(targets, np.float32),
                "table": table, "k": k, "item_ids": item_ids, "categories": categories}

    def heads(self, hidden_size: int, data: dict, cfg: Config) -> Heads:
        return Heads(data["table"].shape[1], hidden_size, data["k"])

    def loss(self, b: Batch) -> torch.Tensor:
        table = torch.tensor(b.data["table"], device=b.device)  # a copy: ray.get gives read-only arrays
        states = user_states(b.model, b.tokenizer, b.heads, table, [b.data["histories"][i] for i in b.examples],
                             b.data["k"], b.device)
        predicted = b.heads.classify(states).softmax(-1)
        target = torch.tensor(b.data["targets"][b.examples], device=b.device)
        return ((predicted - target) ** 2).sum(-1).mean()

    @torch.no_grad()
    def finish(self, model, tokenizer, heads, data: dict, cfg: Config, device) -> dict[str, np.ndarray]:
        """The single-item pass over every item: knowledge embedding and inferred category distribution."""
        table = torch.tensor(data["table"], device=device)
        states, dists = [], []
        for start in range(0, len(table), 64):
            items = [[i] for i in range(start, min(start + 64, len(table)))]
            h = user_states(model, tokenizer, heads, table, items, data["k"], device)
            states.append(h.cpu())
            dists.append(heads.classify(h).softmax(-1).cpu())
        return {"embeddings": torch.cat(states).numpy(), "categories": torch.cat(dists).numpy()}

    def publish(self, job: Job, outputs: dict[str, np.ndarray]) -> dict:
        """Write the knowledge embeddings as a committed embeddings run (read by llm.runs.read_run)."""
        cfg, store = job.cfg, job.store
        run = knowledge_run_name(cfg)
        rel = run_dir(run)
        seen = set(job.catalog.interactions["item_id"].to_pylist())
        rows = [r for r in job.catalog.items.select(["item_id", "content_hash"]).to_pylist() if r["item_id"] in seen]
        vectors, dists = outputs["embeddings"], outputs["categories"]
        n, d = vectors.shape
        k = dists.shape[1]
        schema = embedding_schema(d).append(pa.field("categories", pa.list_(pa.float32(), k)))
        table = pa.Table.from_arrays([
            pa.array([r["item_id"] for r in rows], pa.string()), pa.array([r["content_hash"] for r in rows], pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), d),
            pa.array([False] * n), pa.array([cfg.model.path] * n, pa.string()), pa.array(["tslrec"] * n, pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(dists.reshape(-1), pa.float32()), k),
        ], schema=schema)
        store.delete_dir(rel)
        part = "part-000000-tslrec.parquet"
        store.write_parquet(f"{rel}/{part}", table)
        store.commit(rel, {
            "run": run, "uri": store.full_uri(rel), "model": cfg.model.path, "engine": "hf", "adapters": ["tslrec"],
            "adapter_uri": job.out.uri, "objective": "tslrec", "rows": n, "dims": d, "categories": k, "truncated": 0,
            "created": time.time(),
            "parts": read_parts(store, run)[1],
        })
        print(f"tslrec: {n} knowledge embeddings ({d} dims, {k} categories) -> {store.full_uri(rel)}", flush=True)
        return {"embeddings_run": run, "embeddings_uri": store.full_uri(rel), "categories": k}
