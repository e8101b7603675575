"""RecInterpreter (Yang et al. 2023, "Large Language Model Can Interpret Latent Space of Sequential
Recommender"): a frozen published SRS, the frozen LLM, and between them a trainable linear adapter
that turns one SRS state into `interpret.tokens` input-token embeddings of the LLM, so the LLM can
say in words what the state holds.

Tasks (interpret.task), each trained with next-token cross-entropy on the target text only
(teacher-forced), with a short prompt around the soft tokens (llm.soft_prompt.PROMPTS):
- residual: the states before and after one interaction (two groups of soft tokens) -> the added
  item's name (catalog.item_name: its title);
- recovery: one state -> the names of its `interpret.history` most recent items, oldest first,
  joined by "; ".

Examples come from each user's training part only (leave-one-out, as the SRS was trained: the
validation and test items never appear), one per prefix. The SRS computes every prefix's state
once, on the driver. States are standardized by their training mean and std, kept in the adapter
(an affine map before a linear one is still one linear map) so its weights start on a sane scale.
"""
from __future__ import annotations

import numpy as np
import torch

from catalog import item_name, user_sequences
from cluster.config import Config
from cluster.layout import run_name
from finetune.lora import FinetuneError
from finetune.recipe import Batch, Job, Objective
from llm.soft_prompt import StateAdapter, prompt_embeddings, prompt_pieces

SEPARATOR = ";"            # between the names a recovery target lists (each name starts with a space)
SRS_FILE = "interpret_srs.json"   # the SRS model a run reads: a resumed run must read the same version


def target_tokens(names: list[list[int]], items: list[int], separator: list[int], eos: int, limit: int) -> list[int]:
    """The target's token ids: the items' names (token ids, each starting with a space) joined by the
    separator, then end-of-text; cut to `limit`."""
    ids: list[int] = []
    for k, item in enumerate(items):
        ids += (separator if k else []) + names[item]
    return (ids + [eos])[:limit]


def target_loss(model, prompt: torch.Tensor, targets: list[list[int]], pad_id: int) -> torch.Tensor:
    """Mean next-token cross-entropy over the target tokens only, each target read after its prompt."""
    n, width, device = len(targets), max(map(len, targets)), prompt.device
    ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    real = torch.zeros((n, width), dtype=torch.bool, device=device)
    for i, t in enumerate(targets):   # right padding, masked out of attention and loss
        ids[i, :len(t)] = torch.tensor(t, device=device)
        real[i, :len(t)] = True
    prompted = torch.ones(prompt.shape[:2], dtype=torch.long, device=device)
    inputs = torch.cat([prompt, model.get_input_embeddings()(ids)], 1)
    labels = torch.cat([torch.full_like(prompted, -100), ids.masked_fill(~real, -100)], 1)
    return model(inputs_embeds=inputs, attention_mask=torch.cat([prompted, real.long()], 1), labels=labels,
                 use_cache=False).loss


def published_srs(job: Job) -> tuple:
    """(model, its config, item ids, manifest fields naming it) of the SRS model the interpreter reads."""
    from srs.published import NoModelError, find_model, load_model

    cfg, store = job.cfg, job.store
    try:
        rel = find_model(store, run_name(cfg), cfg.interpret.source)
    except NoModelError as e:
        raise FinetuneError(f"the interpreter reads a published SRS: {e} (after `guidedrec ingest`; the id source "
                            "needs no embeddings run)") from None
    version = store.manifest(rel)["version"]
    if job.resume and job.out.exists(SRS_FILE) and (was := job.out.read_json(SRS_FILE)["version"]) != version:
        raise FinetuneError(f"the SRS model {store.full_uri(rel)} was published again since this run began "
                            f"(version {was}, now {version}): its states changed, start afresh with --overwrite")
    model, srs_cfg, item_ids, source, where = load_model(store, rel, version)
    srs = {"dir": rel, "version": version, "source": source, "backbone": srs_cfg.model, "uri": where}
    job.out.write_json(SRS_FILE, srs)
    return model, srs_cfg, item_ids, srs


class RecInterpreter(Objective):
    name = "interpret"
    publish_heads = True
    trains_llm = False

    def prepare(self, job: Job) -> dict:
        cfg, tokenizer = job.cfg, job.tokenizer
        task, history = cfg.interpret.task, cfg.interpret.history
        from srs.published import srs_states

        model, srs_cfg, item_ids, self.srs = published_srs(job)
        pos = {item: i for i, item in enumerate(item_ids)}
        prefixes: list[list[int]] = []   # model indices (position + 1) of each prefix's last max_len items
        groups, targets = [], []         # per example: its prefixes (states), its target items (positions)
        for _, seq in sorted(user_sequences(job.catalog.interactions).items()):
            train = [pos[i] for i in seq if i in pos][:-2]   # leave-one-out over the items the SRS knows
            first = len(prefixes)
            prefixes += [[i + 1 for i in train[max(0, t - srs_cfg.max_len):t]] for t in range(1, len(train) + 1)]
            if task == "residual":
                groups += [(first + t - 1, first + t) for t in range(1, len(train))]
                targets += [[train[t]] for t in range(1, len(train))]
            else:
                groups += [(first + t - 1,) for t in range(1, len(train) + 1)]
                targets += [train[max(0, t - history):t] for t in range(1, len(train) + 1)]
        if not groups:
            raise FinetuneError(f"no {task} examples: no user of {job.catalog.name} has enough training items")
        groups, targets = np.asarray(job.limit(groups)), job.limit(targets)
        used, groups = np.unique(groups, return_inverse=True)   # states only of the prefixes examples read
        states = srs_states(model, srs_cfg.max_len, [prefixes[r] for r in used])
        self.srs["dims"] = states.shape[1]
        rows = {r["item_id"]: r for r in job.catalog.items.to_pylist()}
        names = [item_name(rows[i]) if i in rows else i for i in item_ids]
        print(f"interpret: {len(targets)} {task} examples from the states of {self.srs['uri']}", flush=True)
        return {"n_examples": len(targets), "task": task, "states": states, "groups": groups.reshape(len(targets), -1),
                "targets": targets, "names": [tokenizer(" " + n, add_special_tokens=False)["input_ids"] for n in names],
                "separator": tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"],
                "pieces": prompt_pieces(tokenizer, task), "eos": tokenizer.eos_token_id,
                "mean": states.mean(0), "std": states.std(0) + 1e-6}

    def heads(self, hidden_size: int, data: dict, cfg: Config) -> StateAdapter:
        return StateAdapter(data["states"].shape[1], cfg.interpret.tokens, hidden_size, data["mean"], data["std"])

    def loss(self, b: Batch) -> torch.Tensor:
        d = b.data
        soft = b.heads(torch.tensor(d["states"][d["groups"][b.examples]], device=b.device))   # [B, G, T, H]
        targets = [target_tokens(d["names"], d["targets"][i], d["separator"], d["eos"], b.cfg.interpret.max_new_tokens)
                   for i in b.examples]
        return target_loss(b.model, prompt_embeddings(b.model, d["pieces"], soft), targets, b.tokenizer.pad_token_id)

    def publish(self, job: Job, outputs: dict[str, np.ndarray]) -> dict:
        """What describe checks the adapter against: task, SRS model (and version) and sizes."""
        ic = job.cfg.interpret
        return {"task": ic.task, "srs": self.srs, "tokens": ic.tokens, "history": ic.history,
                "max_new_tokens": ic.max_new_tokens}
