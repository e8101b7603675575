"""LoRA fine-tuning (SCFT, GER, TSLRec) and the RecInterpreter's adapter over a frozen LLM: one Ray Train
loop, one recipe per objective.

A package of its own between srs and index (cluster < catalog < llm < srs < finetune < index < jobs):
the recipes need the LLM (llm), TSLRec and RecInterpreter also a SASRec (srs)."""
from finetune.lora import FinetuneError
from finetune.trainer import OBJECTIVES, finetune

__all__ = ["OBJECTIVES", "FinetuneError", "finetune"]
