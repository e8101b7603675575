"""GER's attribute scorer (guided embedding refinement): LoRA so the LLM's 1-9 attribute scores
both keep their fixed form and carry recommendation signal.

One example per user: the user's profile prompt (the same scoring request, over the user's
`ger_history` most recent training items) and the item that came next. The teacher is the base
model reading llm.attributes' fixed-form answer: its distribution over the values 1..9 at each
value position (computed once per prompt, cached in the output directory). For both prompts the
model reads the teacher's greedy answer, which gives
- the format loss: next-token cross-entropy on the answer's fixed text and, at each value, against
  the teacher's whole distribution (soft targets). Hard targets, the teacher's most likely value,
  made the model certain of it: SmolLM2's base answer is "1" for 99.8% of ml-100k's values, so the
  tuned scorer answered 1.0 for everything and the recommendation loss sat at chance;
- the scores as a small embedding: at each value's position, the softmax over the value tokens
  1..9 gives an expected score (differentiable), one per attribute: exactly what the embedding
  job's scorer reads;
- the recommendation loss: a linear head maps the user's expected scores to a query, which must
  pick the user's next item among the batch's next items by dot product (in-batch softmax).
Loss = format + ger_rec_weight * recommendation. The head is published beside the adapter.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from catalog import history_text, item_prompt, user_sequences
from cluster.config import Config, ModelConfig
from llm.attributes import (SCALE, answer_probs, answer_tokens, attributes_for, most_likely_scores, request_ids,
                             score_request, value_tokens)
from llm.engines import padded
from finetune.lora import backbone
from finetune.recipe import Batch, Job, Objective

TEACHER_CACHE = "ger_teacher.parquet"


class TeacherScorer:
    """A Ray actor holding one engine of the base model: its value distributions are the teacher."""

    def __init__(self, model_cfg: ModelConfig, threads: int, names: list[str]):
        from llm.engines import build_engine

        self.engine = build_engine(model_cfg, threads)
        self.names = names

    def score(self, prompts: list[str]) -> list[list[list[float]]]:
        return answer_probs(self.engine, prompts, self.names).tolist()

    def close(self) -> None:
        """Stop the engine (vLLM's engine core) before training takes its GPU; ray.kill runs no exit hooks."""
        self.engine.close()


def teacher_probs(job: Job, prompts: list[str], names: list[str], chunk: int = 16) -> dict[str, list]:
    """[A, 9] value distributions per prompt hash: read from the output directory's cache, the missing ones computed by a
    TeacherScorer actor (GPU when there is one) and added to the cache after every chunk."""
    import ray
    from tqdm import tqdm

    from cluster.runtime import has_gpu

    key = lambda p: hashlib.sha256(p.encode()).hexdigest()  # noqa: E731
    # A cache of another teacher (model, attributes, answer scale) is ignored.
    identity = json.dumps({"model": job.cfg.model.path, "names": names, "scale": SCALE.tolist(), "kind": "probs"})
    cache: dict[str, list[int]] = {}
    if job.out.exists(TEACHER_CACHE):
        table = job.out.read_parquet(TEACHER_CACHE)
        if (table.schema.metadata or {}).get(b"teacher", b"").decode() == identity:
            cache = dict(zip(table["key"].to_pylist(), table["probs"].to_pylist()))
    todo = sorted({p for p in prompts if key(p) not in cache})
    if todo:
        resources = {"num_gpus": 1} if has_gpu() else {"num_cpus": 1}
        actor = ray.remote(**resources)(TeacherScorer).remote(job.cfg.model, job.cfg.finetune.threads_per_worker, names)
        with tqdm(total=len(todo), unit="prompt", desc="ger teacher", mininterval=2) as bar:
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                cache.update(zip(map(key, part), ray.get(actor.score.remote(part))))
                table = pa.table({"key": list(cache), "probs": list(cache.values())})
                job.out.write_parquet(TEACHER_CACHE, table.replace_schema_metadata({"teacher": identity}))
                bar.update(len(part))
        ray.get(actor.close.remote())
        ray.kill(actor)
    return {p: cache[key(p)] for p in prompts}


class RecHead(torch.nn.Module):
    """The light recommendation module: user scores -> query (identity at start)."""

    def __init__(self, n_attributes: int):
        super().__init__()
        self.linear = torch.nn.Linear(n_attributes, n_attributes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(n_attributes))
            self.linear.bias.zero_()

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.linear(users)


class GER(Objective):
    name = "ger"
    publish_heads = True

    def prepare(self, job: Job) -> dict:
        cfg, cat = job.cfg, job.catalog
        names = attributes_for(cat.domain, cfg.embed.attributes)
        rows = {r["item_id"]: r for r in cat.items.to_pylist()}
        limit = cfg.model.max_prompt_tokens
        examples = []
        for user, seq in sorted(user_sequences(cat.interactions).items()):
            train = seq[:-2]  # leave-one-out: validation and test items never train
            if len(train) >= 2:
                examples.append((train[-cfg.finetune.ger_history - 1:-1], train[-1]))
        examples = job.limit(examples)
        needed = sorted({i for batch in job.plan(len(examples)) for i in batch})  # only what the steps read

        def ask(text: str) -> str:
            return score_request(job.tokenizer, text, names, limit)

        prompts = {i: (ask(history_text([rows[h] for h in examples[i][0]], cat.domain)),
                       ask(item_prompt(rows[examples[i][1]], cat.domain))) for i in needed}
        teacher = teacher_probs(job, [p for pair in prompts.values() for p in pair], names)

        def answered(prompt: str) -> tuple[list[int], int, list[int], list]:
            """(prompt + the teacher's greedy answer as token ids, where the answer starts, each value's
            position, the teacher's value distributions): what every step that reads the prompt needs."""
            prompt_ids = request_ids(job.tokenizer, [prompt])[0]
            answer, positions = answer_tokens(job.tokenizer, names, most_likely_scores(np.asarray(teacher[prompt])))
            return prompt_ids + answer, len(prompt_ids), [len(prompt_ids) + p for p in positions], teacher[prompt]

        return {"names": names, "n_examples": len(examples),
                "examples": {i: (answered(u), answered(v)) for i, (u, v) in prompts.items()}}

    def heads(self, hidden_size: int, data: dict, cfg: Config) -> RecHead:
        return RecHead(len(data["names"]))

    def loss(self, b: Batch) -> torch.Tensor:
        tok = b.tokenizer
        users = [b.data["examples"][i][0] for i in b.examples]
        items = [b.data["examples"][i][1] for i in b.examples]
        seqs, starts, score_at, teacher = zip(*(users + items))
        input_ids, mask = padded(list(seqs), tok.pad_token_id, b.device)
        hidden = backbone(b.model)(input_ids=input_ids, attention_mask=mask).last_hidden_state
        # Logits only where the answer is predicted: position t - 1 predicts token t.
        rows = [r for r, s in enumerate(seqs) for _ in range(starts[r], len(s))]
        cols = [t for r, s in enumerate(seqs) for t in range(starts[r], len(s))]
        where = {(r, t): m for m, (r, t) in enumerate(zip(rows, cols))}
        # Full-vocabulary rows for the format loss: only their log-softmax is kept, not the logits beside it.
        log_probs = b.model.get_output_embeddings()(hidden[rows, [t - 1 for t in cols]]).float().log_softmax(-1)
        token_loss = -log_probs.gather(1, input_ids[rows, cols][:, None]).squeeze(1)
        at = torch.tensor([[where[(r, t)] for t in ts] for r, ts in enumerate(score_at)], device=b.device)
        at_values = log_probs[at][..., value_tokens(tok)]                         # [2B, A, 9]
        soft = -(torch.tensor(teacher, device=b.device) * at_values).sum(-1)      # [2B, A]
        format_loss = token_loss.index_put((at.flatten(),), soft.flatten()).mean()

        probs = at_values.softmax(-1)   # the values' own distribution: softmax drops log-softmax's per-row shift
        expected = probs @ torch.from_numpy(SCALE).to(b.device)                   # [2B, A] in 1..9
        embedded = (expected - 5) / 4                                             # in [-1, 1]
        n = len(users)
        query = b.heads(embedded[:n])
        rec_loss = F.cross_entropy(query @ embedded[n:].T, torch.arange(n, device=b.device))
        return format_loss + b.cfg.finetune.ger_rec_weight * rec_loss
