"""Interpretable attribute scores (GER's guided embedding): the LLM rates each item 1-9 per attribute.

The request is one user turn in the model's own chat template (tokenizer.apply_chat_template: its
system prompt and turn markers, whatever the model family). The answer has one fixed form, the JSON
object {"<name>": <value>, ...} with the attributes in a fixed order and each value one digit (one
token on the usual tokenizers; "10" would be two). So the scorer does not generate: after the
template's generation prompt it feeds that answer's fixed text and reads, at each value's position,
the model's distribution over the nine value tokens; the next value is filled with the most likely
one (greedy, as constrained decoding would pick it). An item's score per attribute is the expected
value of that distribution: continuous, one forward step per attribute, and unable to come out
malformed. The GER fine-tuning job reads the same positions, so training and scoring agree.
Normalization (z-score per attribute over the catalog) happens once the whole run is known, at commit.
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

SCALE = np.arange(1, 10, dtype=np.float32)  # the values 1..9, one token each
MIN_STD = 1e-3  # an attribute that varies less over a population carries no signal (1-9 scale)


def attributes_for(domain: str, configured: list[str] | None = None) -> list[str]:
    names = configured or DEFAULT_ATTRIBUTES.get(domain) or DEFAULT_ATTRIBUTES["product"]
    if len(set(names)) != len(names):
        raise ValueError(f"attribute names must be unique: {names}")
    return list(names)


def score_request(tokenizer, item_prompt: str, names: list[str], limit: int) -> str:
    """The scoring request for one item: one user turn in the model's own chat template, ending with its
    generation prompt (the fixed-form answer follows). The item text is cut to `limit` tokens before it is
    wrapped, so the instructions and the assistant turn always survive (the engines never cut a request)."""
    from llm.engines import truncate_text

    if tokenizer.chat_template is None:
        raise ValueError(f"attribute scoring asks the model through its chat template, and {tokenizer.name_or_path} "
                         "has none: use an instruct (chat) model")
    ask = (f"{truncate_text(tokenizer, item_prompt, limit)}\nRate this item from 1 (not at all) to 9 (extremely) "
           f"on each attribute: {', '.join(names)}. Answer with one JSON object.")
    return tokenizer.apply_chat_template([{"role": "user", "content": ask}], tokenize=False, add_generation_prompt=True)


def request_ids(tokenizer, requests: list[str]) -> list[list[int]]:
    """Token ids of chat-templated requests: the template already wrote the special tokens (a BOS, say), so
    the tokenizer adds none."""
    return tokenizer(list(requests), add_special_tokens=False)["input_ids"]


def answer_segments(tokenizer, names: list[str]) -> list[list[int]]:
    """Token ids of the answer's fixed text before each value: '{"name": ', then ', "name": '.
    Tokenized piece by piece so every value starts a token of its own."""
    return [tokenizer(("{" if j == 0 else ", ") + json.dumps(name) + ": ", add_special_tokens=False)["input_ids"]
            for j, name in enumerate(names)]


def value_tokens(tokenizer) -> list[int]:
    """The token id of each value 1..9; a tokenizer that splits a digit cannot score this way."""
    ids = [tokenizer(str(int(v)), add_special_tokens=False)["input_ids"] for v in SCALE]
    if any(len(x) != 1 for x in ids):
        raise ValueError(f"the tokenizer does not write each of the digits 1-9 as one token: {ids}")
    return [x[0] for x in ids]


def answer_tokens(tokenizer, names: list[str], scores: list[int]) -> tuple[list[int], list[int]]:
    """Token ids of the whole answer for integer `scores` (+ end of sequence), and each value's index."""
    values = value_tokens(tokenizer)
    ids, positions = [], []
    for segment, score in zip(answer_segments(tokenizer, names), scores):
        ids += segment
        positions.append(len(ids))
        ids.append(values[int(score) - 1])
    ids += tokenizer("}", add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids, positions


def answer_probs(engine, requests: list[str], names: list[str], adapter=None) -> np.ndarray:
    """[n, A, 9]: per request and attribute, the model's distribution over the values 1..9 at that
    value's position in the answer (earlier values filled with their most likely choice)."""
    tok = engine.tokenizer
    return engine.score_slots(request_ids(tok, requests), answer_segments(tok, names), value_tokens(tok), adapter)


def expected_scores(probs: np.ndarray) -> np.ndarray:
    """The expected value (1..9) of each distribution over the values: [..., 9] -> [...]."""
    return (probs @ SCALE).astype(np.float32)


def most_likely_scores(probs: np.ndarray) -> np.ndarray:
    """The greedy answer's integer values: [..., 9] -> [...]."""
    return probs.argmax(-1) + 1


def raw_scores(rows: list, width: int) -> np.ndarray:
    """[n, width] float32 from a column of score lists."""
    return np.asarray(rows, dtype=np.float32).reshape(-1, width)


def standardize(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-attribute z-scores of `raw` [..., A] given a population's mean and std; an attribute whose std
    is below MIN_STD is 0 throughout (dividing by it would only blow rounding noise up to unit variance)."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    z = (raw - mean) / np.where(std >= MIN_STD, std, 1.0)
    return np.where(std >= MIN_STD, z, 0.0).astype(np.float32)
