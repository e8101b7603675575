"""Trained SRS models in storage: publishing one per (lineage, source), finding and loading it back.

`publish_model` copies a run's best checkpoint to models/<lineage>/<source>/<version>/
(model.safetensors, srs.json, items.parquet), then commits the source folder's manifest naming
that version: a reader loading meanwhile reads the previous version whole, never a mix of two.
The model is rebuilt from srs.json's config and the weights alone: every source keeps the table
it derives from its frozen inputs (LLMEmb's PCA-reduced LLM embeddings, GER's attribute scores,
TSLRec's knowledge) in the weights, so loading reads no embeddings run.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load as load_safetensors

from cluster.config import SRSConfig
from cluster.layout import is_version, model_dir, models_dir, new_version
from cluster.storage import MANIFEST, StorageError, Store
from srs.data import pad_left
from srs.loop import build_model
from srs.models import SeqRecommender

FILES = ("model.safetensors", "srs.json")


class NoModelError(LookupError):
    """No trained model is published for the run; the message says what to run."""


def publish_model(store: Store, run: str, source: str, result, item_ids: list[str]) -> str:
    """Publish `result`'s best checkpoint (an SRSResult trained on embeddings run `run`) as the live
    model of (run's lineage, source). Keeps the previous version (a service may be loading it right
    now) and removes older ones. Returns the new version."""
    rel = model_dir(run, source)
    previous = store.manifest(rel).get("version") if store.is_committed(rel) else None
    version = new_version()
    for name in FILES:
        with store.fs.open_input_stream(f"{result.checkpoint}/{name}") as f:
            store.write_bytes(f"{rel}/{version}/{name}", f.read())
    store.write_parquet(f"{rel}/{version}/items.parquet", pa.table({"item_id": pa.array(item_ids, pa.string())}))
    store.commit(rel, {"version": version, "run": run, "source": source, "test": result.test, "valid": result.valid,
                       "best_epoch": result.best_epoch, "items": len(item_ids),
                       "files": [*FILES, "items.parquet"]})
    for name in store.list(rel):
        if is_version(name) and name not in (version, previous):
            store.delete_dir(f"{rel}/{name}")
    return version


def find_model(store: Store, run: str, source: str | None = None) -> str:
    """The committed model folder of `run`'s lineage for `source`; None picks the published source
    with the best validation NDCG@10 (what its training measured, recorded in its manifest)."""
    root = models_dir(run)
    published = {}
    for name in store.list(root):   # the service polls this: one read per source, no exists() first
        try:
            published[name] = store.read_json(f"{root}/{name}/{MANIFEST}")
        except StorageError:
            continue   # not committed (yet)
    if source in published:
        return f"{root}/{source}"
    if source:
        raise NoModelError(f"no trained {source!r} SRS model under {store.full_uri(root)}/ (published: "
                           f"{', '.join(published) or 'none'}): run `guidedrec train` with srs.sources including {source}")
    if not published:
        raise NoModelError(f"no trained SRS model under {store.full_uri(root)}/: run `guidedrec train`")
    best = max(sorted(published), key=lambda s: published[s].get("valid", {}).get("NDCG@10", float("-inf")))
    return f"{root}/{best}"


def stand_in_inputs(source: str, n_items: int, cfg: SRSConfig, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """build_model's input matrices as zeros of the widths that make `source` build tensors of
    the saved shapes; load_state_dict then overwrites everything derived from them."""
    def zeros(width: int) -> np.ndarray:
        return np.zeros((n_items, width), dtype=np.float32)

    if source == "ger":
        return {"attribute_scores": zeros(state["items.guided"].shape[1])}
    if source == "tslrec":   # knowledge = [PCA(LLM embeddings), one-hot of the ID model's clusters]
        return {"item_embeddings": zeros(state["items.knowledge"].shape[1] - cfg.tslrec_clusters),
                "id_item_embeddings": zeros(cfg.hidden_size)}
    llm_widths = [t.shape[1] for name, t in state.items() if name.endswith("pca.components")]
    return {"item_embeddings": zeros(llm_widths[0])} if llm_widths else {}


def load_model(store: Store, rel: str,
               version: str | None = None) -> tuple[SeqRecommender, SRSConfig, list[str], str, str]:
    """(model in eval mode, its config, its item ids, its source, its URI) of the model published at `rel`
    (its live version, or `version` while publish_model keeps it)."""
    rel = f"{rel}/{version or store.manifest(rel)['version']}"
    meta = store.read_json(f"{rel}/srs.json")
    cfg = SRSConfig.model_validate(meta["cfg"])
    state = load_safetensors(store.read_bytes(f"{rel}/model.safetensors"))
    item_ids = store.read_parquet(f"{rel}/items.parquet", columns=["item_id"]).column("item_id").to_pylist()
    model = build_model(meta["source"], len(item_ids), cfg, **stand_in_inputs(meta["source"], len(item_ids), cfg, state))
    model.load_state_dict(state)
    return model.eval(), cfg, item_ids, meta["source"], store.full_uri(rel)


@torch.no_grad()
def srs_states(model, max_len: int, histories: list[list[int]], batch: int = 1024) -> np.ndarray:
    """[n, d] float32: the SRS user vector after each history (model item indices, oldest first, non-empty)."""
    return np.concatenate([model.user_vector(torch.from_numpy(pad_left(histories[s:s + batch], max_len))).numpy()
                           for s in range(0, len(histories), batch)]).astype(np.float32)
