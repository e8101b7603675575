import json

import numpy as np
import pytest

from llm.attributes import (DEFAULT_ATTRIBUTES, answer_tokens, attributes_for, expected_scores, most_likely_scores,
                            request_ids, score_request, value_tokens)

NAMES = ["humor", "romance"]


def test_every_domain_has_twelve_unique_attributes():
    for domain, names in DEFAULT_ATTRIBUTES.items():
        assert len(names) == 12 == len(set(names)), domain
    assert attributes_for("unknown-domain") == DEFAULT_ATTRIBUTES["product"]
    with pytest.raises(ValueError, match="unique"):
        attributes_for("movie", ["a", "a"])


def test_the_request_is_the_models_own_chat_template(hf_engine):
    """SmolLM2's template adds its own system prompt; the request is that template's text, and its token
    ids are the template's own (no second BOS or other special token added when tokenizing)."""
    tok = hf_engine.tokenizer
    item = "The movie item has the following attributes: title is Toy Story."
    request = score_request(tok, item, NAMES, hf_engine.cfg.max_prompt_tokens)
    ask = f"{item}\nRate this item from 1 (not at all) to 9 (extremely) on each attribute: humor, romance. " \
          "Answer with one JSON object."
    chat = [{"role": "user", "content": ask}]
    assert request == tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert request.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert request.endswith("<|im_start|>assistant\n")
    assert request_ids(tok, [request]) == [tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)]


def test_a_model_without_a_chat_template_cannot_score(hf_engine):
    import copy

    tok = copy.deepcopy(hf_engine.tokenizer)
    tok.chat_template = None
    with pytest.raises(ValueError, match="has none: use an instruct"):
        score_request(tok, "an item", NAMES, 16)


def test_the_fixed_answer_is_json_with_one_token_per_value(hf_engine):
    tok = hf_engine.tokenizer
    ids, positions = answer_tokens(tok, NAMES, [3, 9])
    assert json.loads(tok.decode(ids, skip_special_tokens=True)) == {"humor": 3, "romance": 9}
    assert [ids[p] for p in positions] == [value_tokens(tok)[2], value_tokens(tok)[8]]
    assert tok.decode(value_tokens(tok)) == "123456789"


def test_scores_read_from_value_distributions():
    probs = np.zeros((1, 2, 9), np.float32)
    probs[0, 0, 2] = 1                      # certain of 3
    probs[0, 1, [0, 8]] = 0.5               # torn between 1 and 9
    assert np.allclose(expected_scores(probs), [[3, 5]])
    assert most_likely_scores(probs).tolist() == [[3, 1]]


