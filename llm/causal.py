"""A Hugging Face causal LM in the configured dtype with a pad token: what the fine-tuning
objectives train and what the interpreter (index.describe) reads with."""
from __future__ import annotations

from cluster.config import ModelConfig
from llm.checkpoints import resolve_model_path


def causal_lm(model_cfg: ModelConfig, device):
    """(causal LM of `model_cfg.path` on `device` in the configured dtype, its tokenizer with a pad token)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = str(resolve_model_path(model_cfg.path, model_cfg.cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    on_cpu = torch.device(device).type == "cpu"
    dtype = {"auto": torch.float32 if on_cpu else torch.bfloat16, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[model_cfg.dtype]
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device), tokenizer


def frozen_lm(model_cfg: ModelConfig, device):
    """(causal LM with no trainable weight, in eval mode, tokenizer): for objectives that train only their heads."""
    model, tokenizer = causal_lm(model_cfg, device)
    return model.requires_grad_(False).eval(), tokenizer
