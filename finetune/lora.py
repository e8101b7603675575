"""The model side every objective shares: a Hugging Face causal LM with LoRA on the configured
projections, tokenized and padded exactly as the embedding engines do it, so what a job trains
is what the embedding job computes (mean pooling of the final hidden states)."""
from __future__ import annotations

from cluster.config import FinetuneConfig, ModelConfig
from llm.causal import causal_lm
from llm.checkpoints import resolve_model_path
from llm.engines import padded


class FinetuneError(ValueError):
    """Bad input to a fine-tuning job (objective, data set, steps, output, model); one line says why."""


def causal_lm_path(cfg: ModelConfig, targets: list[str]) -> str:
    """The checkpoint directory of `cfg.path`, refused unless it is a causal LM with the LoRA targets."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = str(resolve_model_path(cfg.path, cfg.cache_dir))  # FileNotFoundError: not a checkpoint directory
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, OSError) as e:
        raise FinetuneError(f"model {cfg.path!r}: cannot read its config ({e})") from None
    archs = config.architectures or []
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if not (any(a in causal for a in archs) if archs else config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        raise FinetuneError(f"model {cfg.path!r} is not a causal LM (architectures: {archs or config.model_type}); "
                            f"fine-tuning needs a *ForCausalLM checkpoint")
    from llm.adapters import module_shapes  # meta-device module list, cached: no weights loaded

    names = {n.rsplit(".", 1)[-1] for n in module_shapes(path)}
    missing = [t for t in targets if t not in names]
    if missing:
        raise FinetuneError(f"model {cfg.path!r} has no modules named {missing} for LoRA (finetune.lora_targets)")
    return path


def lora_model(model_cfg: ModelConfig, ft: FinetuneConfig, device):
    """(peft model with fresh LoRA weights, tokenizer): B starts at zero, so step 0 is the base model."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = causal_lm(model_cfg, device)
    model.config.use_cache = False   # training reads each sequence once: a key/value cache would only hold memory
    config = LoraConfig(r=ft.lora_r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout,
                        target_modules=list(ft.lora_targets), task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    if ft.gradient_checkpointing:
        # Non-reentrant: gradients reach the LoRA weights although the layers' inputs need none.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def tokenize(tokenizer, prompts: list[str], limit: int) -> list[list[int]]:
    """Token ids cut to `limit`, as Engine.tokenize does for the embedding job."""
    return [x[:limit] for x in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]


def backbone(model):
    """The transformer under the LM head (LoRA layers included): final hidden states without
    computing vocabulary logits for every position."""
    return model.get_base_model().base_model


def mean_pool(model, ids: list[list[int]], pad_id: int, device):
    """[n, d] mean of the final hidden states over each prompt's tokens (LLMEmb; the engines' pooling)."""
    input_ids, mask = padded(ids, pad_id, device)
    hidden = backbone(model)(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
