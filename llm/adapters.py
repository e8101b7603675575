"""Check a peft LoRA adapter against the base model before any work starts.

A wrong adapter would otherwise fail inside every actor (peft: size mismatch; vLLM: a worker
crash), after the cluster and engines have spun up. The base model is built on the meta
device (no weights), so the check costs a fraction of a second even for large models.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from cluster.config import ModelConfig
from llm.checkpoints import resolve_model_path


class AdapterError(ValueError):
    """An adapter that cannot be used with the configured base model; the message says why."""


@lru_cache(maxsize=4)
def module_shapes(model_path: str) -> dict[str, tuple[int, int]]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    return {name: (m.in_features, m.out_features) for name, m in model.named_modules() if hasattr(m, "in_features")}


def check_adapter(path: str, model_cfg: ModelConfig, name: str = "adapter") -> None:
    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").exists():
        raise AdapterError(f"adapter {name!r}: no adapter_config.json in {path} (expected a peft LoRA directory)")
    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        raise AdapterError(f"adapter {name!r}: no adapter_model.safetensors in {path}")
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {name!r}: peft_type {config.get('peft_type')} is not LORA")
    from safetensors import safe_open

    shapes = module_shapes(str(resolve_model_path(model_cfg.path, model_cfg.cache_dir)))
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module = key.removeprefix("base_model.model.").split(".lora_")[0]
            if module not in shapes:
                raise AdapterError(f"adapter {name!r} targets {module}, which the base model {model_cfg.path} lacks: "
                                   f"it was trained for another model")
            shape = f.get_slice(key).get_shape()
            in_f, out_f = shapes[module]
            dim, expected = (shape[1], in_f) if ".lora_A." in key else (shape[0], out_f)
            if dim != expected:
                raise AdapterError(f"adapter {name!r}: {key} has size {dim} where {model_cfg.path} has {expected}: "
                                   f"it was trained for another model")


def parse_adapters(specs: list[str] | None) -> dict[str, str]:
    """`name=path` pairs (or a bare path, named after its folder) -> {name: path}, checked before any work."""
    adapters: dict[str, str] = {}
    for spec in specs or []:
        name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"adapter name {name!r} in {spec!r}: use letters, digits, '-' or '_'")
        if name in adapters:
            raise ValueError(f"adapter name {name!r} is given twice")
        adapters[name] = path
    return adapters
