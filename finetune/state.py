"""What a fine-tuning run keeps: checkpoints (recipe state) and the loss curve.

A checkpoint directory holds the LoRA weights as a peft adapter folder (adapter/; none for an
objective that trains its heads only), the
objective's own trainable modules (heads.safetensors: SCFT's temperature, GER's and TSLRec's
heads), the optimizer state (tensors in safetensors, hyperparameters in JSON, written by
cluster.tensorstate as the SRS training state is: nothing is pickled), the step and the loss
history (state.json), and on the last step the objective's outputs (outputs.safetensors).
Resuming restores all of it, so a resumed run continues the same step count, optimizer moments
and loss curve.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from cluster.storage import Store
from cluster.tensorstate import flatten_optimizer, read_pair, unflatten_optimizer, write_pair


def save_checkpoint(folder: str | Path, lora, heads, optimizer, state: dict, outputs: dict | None = None) -> None:
    """`lora`: the peft model whose adapter is saved, or None when the LLM is frozen."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    if lora is not None:
        lora.save_pretrained(folder / "adapter")
    save_file({k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}, folder / "heads.safetensors")
    write_pair(folder, "optimizer", *flatten_optimizer(optimizer.state_dict()))
    (folder / "state.json").write_text(json.dumps(state))
    if outputs:
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in outputs.items()}, folder / "outputs.safetensors")


def load_checkpoint(folder: str | Path, lora, heads, optimizer) -> dict:
    """Load a checkpoint into the (freshly built) peft model (None: a frozen LLM), heads and optimizer;
    returns state.json."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    device = next(heads.parameters()).device
    if lora is not None:
        set_peft_model_state_dict(lora, load_file(folder / "adapter" / "adapter_model.safetensors", device=str(device)))
    heads.load_state_dict(load_file(folder / "heads.safetensors", device=str(device)))
    optimizer.load_state_dict(unflatten_optimizer(*read_pair(folder, "optimizer")))
    return json.loads((folder / "state.json").read_text())


def read_outputs(folder: str | Path) -> dict[str, np.ndarray]:
    path = Path(folder) / "outputs.safetensors"
    if not path.exists():
        return {}
    from safetensors.numpy import load_file

    return load_file(path)


def write_loss_curve(store: Store, losses: list[float], title: str) -> tuple[str, str]:
    """loss.csv (step, loss) and loss_curve.png (with a moving average) in `store`; returns their URIs."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["step", "loss"])
    writer.writerows((i + 1, f"{x:.6f}") for i, x in enumerate(losses))
    store.write_bytes("loss.csv", buf.getvalue().encode())

    fig = Figure(figsize=(6, 3.5), layout="tight")
    ax = fig.subplots()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, alpha=0.6, label="loss")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1.6, label=f"mean of {window}")
        ax.legend()
    ax.set(xlabel="step", ylabel="loss", title=title)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    store.write_bytes("loss_curve.png", png.getvalue())
    return store.full_uri("loss.csv"), store.full_uri("loss_curve.png")
