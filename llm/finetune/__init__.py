"""LoRA fine-tuning jobs (SCFT, GER, TSLRec): one Ray Train loop, one recipe per objective."""
from llm.finetune.lora import FinetuneError
from llm.finetune.trainer import OBJECTIVES, finetune

__all__ = ["OBJECTIVES", "FinetuneError", "finetune"]
