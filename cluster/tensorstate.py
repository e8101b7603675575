"""Training state without pickle: tensors in safetensors, everything else in JSON.

A stored state is a pair of files in one folder, <name>.safetensors and <name>.json; an optimizer's
state_dict splits into such a pair (its per-parameter tensors, its param_groups) and back. The
fine-tuning checkpoints (finetune.state) and the SRS training state (srs.state) are written with
these. torch and safetensors are imported inside the functions: cluster loads where they are absent.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_pair(folder: str | Path, name: str, tensors: dict, meta: Any) -> None:
    """<folder>/<name>.safetensors (tensors, moved to the CPU) and <folder>/<name>.json (meta)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps(meta))


def read_pair(folder: str | Path, name: str) -> tuple[dict, Any]:
    """What write_pair wrote: (tensors on the CPU, meta)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    return load_file(folder / f"{name}.safetensors"), json.loads((folder / f"{name}.json").read_text())


def flatten_optimizer(state_dict: dict) -> tuple[dict, list]:
    """An optimizer's state_dict as (tensors named "<param index>.<key>", param_groups): a pair to write."""
    import torch

    tensors = {f"{i}.{k}": v if torch.is_tensor(v) else torch.tensor(v)
               for i, per_param in state_dict["state"].items() for k, v in per_param.items()}
    return tensors, state_dict["param_groups"]


def unflatten_optimizer(tensors: dict, param_groups: list) -> dict:
    """The state_dict flatten_optimizer split, for optimizer.load_state_dict."""
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    return {"state": state, "param_groups": param_groups}
