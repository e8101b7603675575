"""RecInterpreter's reading side (Yang et al. 2023): a linear adapter turns SRS states into soft
input-token embeddings of a frozen causal LM, placed between short text prompts, and the LM
generates from them. finetune.interpret trains the adapter; index.describe serves it.
"""
from __future__ import annotations

import numpy as np
import torch

PROMPTS = {"residual": ("A user's state before one more item:", " and after it:", ". The item added is:"),
           "recovery": ("A user's state:", ". The user's recent items, oldest first:")}
HEADS = "interpret_heads.safetensors"   # the adapter, as the trainer publishes an objective's heads


class StateAdapter(torch.nn.Module):
    """SRS states [..., d] -> soft tokens [..., tokens, hidden]: fixed standardization, then the trained linear map."""

    def __init__(self, srs_dim: int, tokens: int, hidden_size: int, mean: np.ndarray | None = None,
                 std: np.ndarray | None = None):
        super().__init__()
        self.tokens = tokens
        self.register_buffer("mean", torch.zeros(srs_dim) if mean is None else torch.tensor(mean))
        self.register_buffer("std", torch.ones(srs_dim) if std is None else torch.tensor(std))
        self.project = torch.nn.Linear(srs_dim, tokens * hidden_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.project((states - self.mean) / self.std).unflatten(-1, (self.tokens, -1))

    @classmethod
    def from_weights(cls, weights: dict[str, torch.Tensor], tokens: int) -> StateAdapter:
        """The adapter a run published (its heads file) with `tokens` soft tokens per state."""
        out, srs_dim = weights["project.weight"].shape
        adapter = cls(srs_dim, tokens, out // tokens)
        adapter.load_state_dict(weights)
        return adapter.eval()


def prompt_pieces(tokenizer, task: str) -> list[list[int]]:
    """Token ids of the task's text pieces; the soft-token groups go between them."""
    return [tokenizer(p, add_special_tokens=k == 0)["input_ids"] for k, p in enumerate(PROMPTS[task])]


def prompt_embeddings(model, pieces: list[list[int]], soft: torch.Tensor) -> torch.Tensor:
    """[B, L, H] input embeddings: the text pieces with the soft-token groups soft [B, G, T, H] between them.
    Every prompt of a task has the same length, so a batch needs no padding."""
    embed = model.get_input_embeddings()
    n = soft.shape[0]
    text = [embed(torch.tensor(p, device=soft.device)).expand(n, -1, -1) for p in pieces]
    parts = [text[0]]
    for g in range(soft.shape[1]):
        parts += [soft[:, g].to(text[0].dtype), text[g + 1]]
    return torch.cat(parts, 1)


@torch.no_grad()
def generate(model, tokenizer, prompt: torch.Tensor, max_new_tokens: int) -> list[str]:
    """Greedy continuations of prompts [B, L, H] on one line each (whitespace runs become one space);
    decoder-only generate returns the new tokens only."""
    out = model.generate(inputs_embeds=prompt, attention_mask=torch.ones(prompt.shape[:2], dtype=torch.long,
                                                                         device=prompt.device),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return [" ".join(text.split()) for text in tokenizer.batch_decode(out, skip_special_tokens=True)]
