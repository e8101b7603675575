"""Interpretable attribute scores (GER's guided embedding): the LLM rates each item 1-10 per attribute.

Output is constrained by a JSON schema in which every score is an enum of 1..10: the model can
only write a parseable answer (an unbounded integer made the small model write digits until it
ran out of tokens). Scores are still validated; an item that fails twice is stored with a null
score and the reason, never filled in. Normalization (z-score per attribute over the catalog)
happens once the whole run is known, at commit.
"""
from __future__ import annotations

import json

import numpy as np

DEFAULT_ATTRIBUTES: dict[str, list[str]] = {
    "movie": ["action intensity", "humor", "romance", "suspense", "visual spectacle", "complexity",
              "darkness", "family friendliness", "emotional depth", "originality", "pace", "violence"],
    "beauty": ["luxury", "natural ingredients", "fragrance strength", "skin care focus", "makeup focus",
               "hair care focus", "nail care focus", "price level", "gentleness", "boldness", "professional use",
               "everyday use"],
    "games": ["action intensity", "strategy depth", "story focus", "multiplayer focus", "difficulty",
              "family friendliness", "realism", "violence", "replay value", "open world", "competitiveness", "humor"],
    "product": ["durability", "price level", "technical complexity", "professional use", "everyday use", "safety focus",
                "portability", "precision", "size", "brand prestige", "ease of use", "eco friendliness"],
}
DEFAULT_ATTRIBUTES["scientific"] = DEFAULT_ATTRIBUTES["product"]

MAX_NEW_TOKENS = 160


def attributes_for(domain: str, configured: list[str] | None = None) -> list[str]:
    names = configured or DEFAULT_ATTRIBUTES.get(domain) or DEFAULT_ATTRIBUTES["product"]
    if len(set(names)) != len(names):
        raise ValueError(f"attribute names must be unique: {names}")
    return list(names)


def score_schema(names: list[str]) -> dict:
    return {"type": "object", "additionalProperties": False, "required": names,
            "properties": {n: {"type": "integer", "enum": list(range(1, 11))} for n in names}}


def score_prompt(item_prompt: str, names: list[str]) -> str:
    """A chat-formatted request for one JSON object of scores (SmolLM2's template; fine for any chat model)."""
    ask = (f"{item_prompt}\nRate this item from 1 (not at all) to 10 (extremely) on each attribute: "
           f"{', '.join(names)}. Answer with one JSON object.")
    return f"<|im_start|>user\n{ask}<|im_end|>\n<|im_start|>assistant\n"


def score_request(tokenizer, item_prompt: str, names: list[str], limit: int) -> str:
    """The scoring request for one item: its text is cut to `limit` tokens before it is wrapped, so
    the instructions and the assistant turn always survive (generation never cuts a request)."""
    from llm.engines import truncate_text

    return score_prompt(truncate_text(tokenizer, item_prompt, limit), names)


def parse_scores(text: str, names: list[str]) -> tuple[list[float] | None, str | None]:
    """(scores in `names` order, None) or (None, the reason the answer is unusable)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"not JSON: {e.msg} at {e.pos}"
    if not isinstance(obj, dict):
        return None, f"not a JSON object: {type(obj).__name__}"
    missing = [n for n in names if n not in obj]
    if missing:
        return None, f"missing attributes: {missing}"
    scores = []
    for n in names:
        v = obj[n]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10:
            return None, f"{n}: {v!r} is not an integer from 1 to 10"
        scores.append(float(v))
    return scores, None


def raw_scores(rows: list, width: int) -> np.ndarray:
    """[n, width] float32 from a column of score lists, NaN where an item has none."""
    return np.array([r if r is not None else [np.nan] * width for r in rows], dtype=np.float32).reshape(-1, width)


def normalize(raw: np.ndarray) -> tuple[np.ndarray, list[float], list[float]]:
    """Z-score per attribute over the rows that have scores (NaN rows stay NaN)."""
    mean = np.nanmean(raw, axis=0)
    std = np.nanstd(raw, axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((raw - mean) / std).astype(np.float32), mean.tolist(), std.tolist()
