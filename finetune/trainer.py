"""The one fine-tuning loop: Ray Train TorchTrainer over transformers + peft, any objective.

Driver: validate everything up front (objective, steps, model, output), prepare the objective's
data, run the TorchTrainer (CPU workers here, one GPU each on a cluster) with checkpoints under
<out>/checkpoints, then publish the LoRA adapter at <out> as a peft directory, with the loss
curve, and commit it with a manifest written last. An objective that does not train the LLM
(trains_llm False: RecInterpreter) gets it frozen, without LoRA, and publishes its heads alone.

Worker: build the LoRA model (or the frozen LLM) and the objective's heads, restore the latest checkpoint (Ray
Train V2 finds it when a run of the same name exists in the same storage: that is --resume),
train step by step on the planned batches, average gradients across workers, checkpoint every
`checkpoint_every` steps and at the end.
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

from catalog import load_catalog
from cluster.config import Config, without_secrets
from cluster.runtime import has_gpu, init_ray, return_freed_memory
from cluster.storage import MANIFEST, Store, store_from_config
from llm.adapters import check_adapter
from llm.causal import frozen_lm
from finetune.ger import GER
from finetune.interpret import RecInterpreter
from finetune.lora import FinetuneError, causal_lm_path, lora_model
from finetune.recipe import Batch, Job, Objective
from finetune.scft import SCFT
from finetune.state import load_checkpoint, read_outputs, save_checkpoint, write_loss_curve
from finetune.tslrec import TSLRec

OBJECTIVES: dict[str, type[Objective]] = {"scft": SCFT, "ger": GER, "tslrec": TSLRec, "interpret": RecInterpreter}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
RUN_NAME = "checkpoints"  # Ray Train run name: checkpoints live in <out>/checkpoints/


# -- worker --------------------------------------------------------------------------------------
def _sync_gradients(params, loss, world: int) -> float:
    """Average gradients (LoRA and heads are small: one all-reduce each) and the loss across workers."""
    if world == 1:
        return loss.item()
    import torch
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world
    value = loss.detach().clone()
    dist.all_reduce(value)
    return value.item() / world


def _say(line: str) -> None:
    """A progress line from a worker, once: Ray Train's patched print() tees it to the driver twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _train_loop(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint

    return_freed_memory()
    cfg = Config.model_validate(config["cfg"])
    ft = cfg.finetune
    torch.set_num_threads(ft.threads_per_worker)
    torch.manual_seed(ft.seed)
    objective = OBJECTIVES[config["objective"]]()
    data, plan, max_steps = ray.get(config["data"]), config["plan"], config["max_steps"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    if objective.trains_llm:
        model, tokenizer = lora_model(cfg.model, ft, device)
    else:
        model, tokenizer = frozen_lm(cfg.model, device)
    lora = model if objective.trains_llm else None   # what checkpoints save and restore besides the heads
    heads = objective.heads(model.config.hidden_size, data, cfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=ft.lr, weight_decay=ft.weight_decay)
    state = {"step": 0, "losses": [], "seconds": 0.0, "resumed_from": None}
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as folder:
            state = load_checkpoint(folder, lora, heads, optimizer)
        state["resumed_from"] = state["step"]
    start = state["step"]
    if rank == 0:
        where = f"resuming at step {start}" if restored else "starting"
        _say(f"[finetune {objective.name}] {where}; {max_steps} steps, {world} worker(s), batch {len(plan[0])}")

    def metrics() -> dict:
        return {"step": state["step"], "loss": state["losses"][-1] if state["losses"] else float("nan")}

    def checkpoint(final: bool) -> None:
        if final:  # the driver's bar shows the steps done while rank 0 computes the outputs (a catalog pass: minutes)
            ray.train.report({**metrics(), "status": "computing outputs"})
        if rank != 0:
            ray.train.report(metrics(), checkpoint=None)
            return
        outputs = None
        if final:
            model.eval()
            heads.eval()
            outputs = objective.finish(model, tokenizer, heads, data, cfg, device)
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, lora, heads, optimizer, state, outputs)
            ray.train.report(metrics(), checkpoint=Checkpoint.from_directory(tmp))

    model.train(objective.trains_llm)   # a frozen LLM stays in eval mode: no dropout
    heads.train()
    run_seconds, began = state["seconds"], time.perf_counter()
    for step in range(start, max_steps):
        share = len(plan[step]) // world
        examples = plan[step][rank * share:(rank + 1) * share]
        loss = objective.loss(Batch(model, tokenizer, heads, data, examples, step, cfg, device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = _sync_gradients(params, loss, world)
        torch.nn.utils.clip_grad_norm_(params, ft.grad_clip)
        optimizer.step()
        done = step + 1
        state.update(step=done, seconds=run_seconds + time.perf_counter() - began)
        state["losses"].append(value)
        if rank == 0 and (done % ft.log_every == 0 or done in (start + 1, max_steps)):
            rate = (done - start) / (time.perf_counter() - began)
            _say(f"[finetune {objective.name}] step {done}/{max_steps} loss {value:.4f} ({rate:.2f} steps/s)")
        if done % ft.checkpoint_every == 0 or done == max_steps:
            checkpoint(final=done == max_steps)
        elif done % ft.log_every == 0:
            ray.train.report(metrics())  # every rank reports (Ray Train's rule); the driver's bar follows rank 0
    if start >= max_steps:  # already trained that far: publish the restored state again
        if rank == 0:
            _say(f"[finetune {objective.name}] the checkpoint is at step {start} >= {max_steps}: nothing to train")
        checkpoint(final=True)


# -- driver --------------------------------------------------------------------------------------
def _check_inputs(cfg: Config, objective: str, steps: int, out: Store, resume: bool, overwrite: bool) -> str:
    """Everything that can be refused before Ray, data or model load; returns the model path."""
    if objective not in OBJECTIVES:
        raise FinetuneError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    if steps < 1:
        raise FinetuneError(f"--max-steps must be at least 1, got {steps}")
    if out.is_committed(""):
        if not (resume or overwrite):
            raise FinetuneError(f"{out.uri} already holds a committed adapter: pass --overwrite to replace it "
                                f"or --resume to train it further")
        previous = out.manifest("").get("objective")
        if resume and previous != objective:
            raise FinetuneError(f"{out.uri} holds a {previous} adapter: cannot resume it as {objective}")
    return causal_lm_path(cfg.model, cfg.finetune.lora_targets if OBJECTIVES[objective].trains_llm else [])


def _uncommit(out: Store, fresh: bool) -> None:
    """Readers must not trust the directory while it changes; a fresh run also drops old checkpoints."""
    if out.is_committed(""):
        out.fs.delete_file(out.path(MANIFEST))
    if fresh:
        out.delete_dir(RUN_NAME)


def finetune(cfg: Config, objective: str, out: str, *, max_steps: int | None = None, resume: bool = False,
             overwrite: bool = False, store: Store | None = None) -> dict:
    """Train `objective` (with LoRA, unless it trains its heads only) and publish the result at `out` (a local
    path or s3:// URI): the peft adapter directory and/or the heads; returns the summary (also printed), which
    the manifest holds too."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from transformers import AutoTokenizer

    from cluster.progress import train_progress

    started = time.time()
    steps = cfg.finetune.max_steps if max_steps is None else max_steps
    out_store = Store(out, cfg.storage.s3)
    model_path = _check_inputs(cfg, objective, steps, out_store, resume, overwrite)
    catalog = load_catalog(cfg.dataset)
    init_ray(cfg.ray)
    recipe = OBJECTIVES[objective]()
    job = Job(cfg, catalog, out_store, store or store_from_config(cfg), steps, resume, cfg.finetune.num_workers,
              AutoTokenizer.from_pretrained(model_path))
    _uncommit(out_store, fresh=not resume)
    data = recipe.prepare(job)
    # The bar moves when the workers report: every finetune.log_every steps, and at each checkpoint.
    with train_progress(f"finetune {objective}", steps, key="step") as bar:
        trainer = TorchTrainer(
            _train_loop,
            # Ray records the loop's config in its run state: never with credentials (the workers need none).
            train_loop_config={"cfg": without_secrets(cfg).model_dump(), "objective": objective, "max_steps": steps,
                               "data": ray.put(data), "plan": job.plan(data["n_examples"])},
            scaling_config=ScalingConfig(num_workers=cfg.finetune.num_workers, use_gpu=has_gpu(),
                                         resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name=RUN_NAME, storage_path=out_store.path(), storage_filesystem=out_store.fs,
                                 checkpoint_config=CheckpointConfig(num_to_keep=1), callbacks=[bar]),
        )
        result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        summary = _publish(job, recipe, Path(folder), started)
    print(f"loss curve: {summary['loss_curve']}", flush=True)
    print(f"finetune {objective}: {summary['steps']} steps in {summary['seconds']} s "
          f"({summary['steps_per_s']} steps/s training), final loss {summary['final_loss']:.4f} -> {summary['uri']}",
          flush=True)
    return summary


def _publish(job: Job, recipe: Objective, folder: Path, started: float) -> dict:
    """Copy the final checkpoint's adapter (checked like the embedding job checks adapters) and/or heads to
    <out>, write the loss curve and the objective's outputs, then commit."""
    import json

    cfg, out = job.cfg, job.out
    files = {}
    if recipe.trains_llm:
        check_adapter(str(folder / "adapter"), cfg.model, recipe.name)
        files = {name: folder / "adapter" / name for name in ADAPTER_FILES}
    if recipe.publish_heads:
        files[f"{recipe.name}_heads.safetensors"] = folder / "heads.safetensors"
    checksums = {}
    for name, path in files.items():
        payload = path.read_bytes()
        out.write_bytes(name, payload)
        checksums[name] = hashlib.sha256(payload).hexdigest()
    state = json.loads((folder / "state.json").read_text())
    losses = state["losses"]
    csv_uri, png_uri = write_loss_curve(out, losses, f"{recipe.name} on {Path(cfg.dataset.name).name}")
    extra = recipe.publish(job, read_outputs(folder))
    ft = cfg.finetune
    summary = {
        "objective": recipe.name, "uri": out.uri, "model": cfg.model.path, "dataset": cfg.dataset.name,
        "steps": state["step"], "resumed_from": state.get("resumed_from"), "final_loss": losses[-1],
        "seconds": round(time.time() - started, 2), "train_seconds": round(state["seconds"], 2),
        "steps_per_s": round(state["step"] / max(state["seconds"], 1e-9), 3),
        "lora": {"r": ft.lora_r, "alpha": ft.lora_alpha, "dropout": ft.lora_dropout, "targets": list(ft.lora_targets)}
        if recipe.trains_llm else None,
        "batch_size": ft.batch_size, "workers": ft.num_workers, "loss_csv": csv_uri, "loss_curve": png_uri,
        "files": checksums, **extra,
    }
    out.commit("", summary)
    return summary
