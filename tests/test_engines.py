"""Contract tests: both engines load the same checkpoint and agree on what they compute."""
import numpy as np
import pytest

from cluster.config import ModelConfig
from llm.engines import HFEngine, VLLMEngine, build_engine, pick_engine

PROMPTS = [
    "The movie item has the following attributes: title is Toy Story; genres is Animation Children's Comedy; year is 1995.",
    "The beauty item has the following attributes: title is OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce.",
    "The scientific item has the following attributes: title is Gorilla Original Gorilla Glue; brand is Gorilla.",
    "short",
]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _requests(engine, prompts: list[str], names: list[str]) -> list[str]:
    from llm.attributes import score_request

    return [score_request(engine.tokenizer, p, names, engine.cfg.max_prompt_tokens) for p in prompts]


@pytest.fixture(scope="module")
def vllm_engine():
    engine = VLLMEngine(ModelConfig())
    yield engine
    engine.close()


def test_auto_picks_hf_on_cpu(hf_engine):
    assert pick_engine(ModelConfig()) == "hf"
    assert isinstance(build_engine(ModelConfig(engine="hf")), HFEngine)


def test_embeddings_are_mean_pooled_and_batch_independent(hf_engine):
    batch = hf_engine.embed(PROMPTS)
    assert batch.shape == (len(PROMPTS), 576) and batch.dtype == np.float32
    alone = np.stack([hf_engine.embed([p])[0] for p in PROMPTS])
    assert np.allclose(batch, alone, atol=1e-3), "padding must not leak into the mean"
    assert _cosine(batch[:1], batch[1:2])[0] < 0.999, "different items give different vectors"


def test_truncation_is_applied_and_counted(hf_engine):
    long = "title is " + "very " * 500 + "long"
    tok = hf_engine.tokenize([long, "short"])
    assert tok.truncated == [True, False]
    assert len(tok.ids[0]) == hf_engine.cfg.max_prompt_tokens


@pytest.mark.slow
def test_vllm_and_hf_agree_on_embeddings(hf_engine, vllm_engine):
    h, v = hf_engine.embed(PROMPTS), vllm_engine.embed(PROMPTS)
    assert v.shape == h.shape
    assert _cosine(h, v).min() >= 0.99
    assert np.allclose(np.linalg.norm(h, axis=1), np.linalg.norm(v, axis=1), rtol=0.05), "both unnormalized"


@pytest.mark.slow
def test_vllm_and_hf_score_the_same_answers(hf_engine, vllm_engine):
    from llm.attributes import answer_probs, attributes_for, expected_scores

    names = attributes_for("movie")[:4]
    asks = _requests(hf_engine, PROMPTS[:3], names)
    h, v = answer_probs(hf_engine, asks, names), answer_probs(vllm_engine, asks, names)
    assert h.shape == v.shape == (3, 4, 9)
    assert np.allclose(v.sum(-1), 1, atol=1e-4)
    assert np.abs(h[:, 0] - v[:, 0]).max() < 0.05, "the first value's distribution: same prompt, same model"
    assert np.abs(expected_scores(h) - expected_scores(v)).max() < 0.5, (expected_scores(h), expected_scores(v))


def test_adapter_changes_embeddings_and_base_stays_intact(hf_engine, lora_adapter):
    from llm.engines import Adapter

    base = hf_engine.embed(PROMPTS)
    tuned = hf_engine.embed(PROMPTS, Adapter("tuned", str(lora_adapter)))
    assert _cosine(base, tuned).max() < 0.999
    assert np.allclose(hf_engine.embed(PROMPTS), base, atol=1e-4), "base model unchanged after loading an adapter"


@pytest.mark.slow
def test_vllm_lora_matches_peft(hf_engine, vllm_engine, lora_adapter):
    from llm.engines import Adapter

    adapter = Adapter("tuned", str(lora_adapter))
    assert _cosine(hf_engine.embed(PROMPTS, adapter), vllm_engine.embed(PROMPTS, adapter)).min() >= 0.99


def test_slot_scores_are_batch_independent_and_match_a_plain_forward(hf_engine, monkeypatch):
    """Left-padded batches with cached keys and values give the distributions that one unpadded
    forward pass over the filled-in answer gives, at every value position."""
    import torch

    from llm.attributes import answer_probs, answer_segments, attributes_for, request_ids, value_tokens

    names = attributes_for("movie")[:3]
    asks = _requests(hf_engine, PROMPTS, names)
    batched = answer_probs(hf_engine, asks, names)
    assert batched.shape == (len(PROMPTS), 3, 9) and np.allclose(batched.sum(-1), 1, atol=1e-5)
    monkeypatch.setattr(hf_engine, "slot_batch", 1)
    assert np.allclose(answer_probs(hf_engine, asks, names), batched, atol=1e-4)
    tok, values = hf_engine.tokenizer, value_tokens(hf_engine.tokenizer)
    ids = request_ids(tok, asks[1:2])[0]
    for j, segment in enumerate(answer_segments(tok, names)):
        ids += segment
        with torch.inference_mode():
            logits = hf_engine._with_adapter(None)(input_ids=torch.tensor([ids])).logits[0, -1, values]
        assert np.allclose(logits.softmax(-1).numpy(), batched[1, j], atol=1e-4)
        ids.append(values[int(batched[1, j].argmax())])


def test_a_long_item_keeps_the_scoring_instructions(hf_engine):
    """The item text is cut to max_prompt_tokens before it is wrapped in the scoring request, and
    the request itself is scored whole: it still ends with the template's generation prompt."""
    from llm.attributes import attributes_for, request_ids, score_request

    tok, limit = hf_engine.tokenizer, hf_engine.cfg.max_prompt_tokens
    long_item = PROMPTS[1] + " It is described as: " + "a long lasting glossy finish, " * 80
    request = score_request(tok, long_item, attributes_for("beauty"), limit)
    item_part = request.split("<|im_start|>user\n")[1].split("\nRate this item")[0]
    assert long_item.startswith(item_part) and len(tok(item_part, add_special_tokens=False)["input_ids"]) <= limit + 1
    assert len(request_ids(tok, [request])[0]) > limit and request.endswith("<|im_start|>assistant\n")
