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


@pytest.fixture(scope="module")
def vllm_engine():
    return VLLMEngine(ModelConfig())


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
def test_vllm_and_hf_generate_the_same_greedy_text(hf_engine, vllm_engine):
    prompt = ["<|im_start|>user\nName one primary colour.<|im_end|>\n<|im_start|>assistant\n"]
    h, v = hf_engine.generate(prompt, 6), vllm_engine.generate(prompt, 6)
    assert h[0].strip() and v[0].strip()
    assert h[0].split()[:2] == v[0].split()[:2], (h, v)  # bf16 vs fp32 may drift later in the text


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


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["hf", "vllm"])
def test_attribute_scores_are_schema_constrained(engine_name, hf_engine, vllm_engine):
    from llm.attributes import MAX_NEW_TOKENS, attributes_for, parse_scores, score_prompt, score_schema

    engine = hf_engine if engine_name == "hf" else vllm_engine
    names = attributes_for("movie")[:4]
    asks = [score_prompt(p, names) for p in PROMPTS[:2]]
    for text in engine.generate(asks, MAX_NEW_TOKENS, json_schema=score_schema(names)):
        scores, reason = parse_scores(text, names)
        assert reason is None and len(scores) == 4 and all(1 <= s <= 10 for s in scores), text


def test_a_long_item_keeps_the_scoring_instructions(hf_engine):
    """The item text is cut to max_prompt_tokens before it is wrapped in the scoring request, and
    the request itself is generated from whole: it still ends with the assistant turn."""
    from llm.attributes import attributes_for, score_request

    limit = hf_engine.cfg.max_prompt_tokens
    long_item = PROMPTS[1] + " It is described as: " + "a long lasting glossy finish, " * 80
    request = score_request(hf_engine.tokenizer, long_item, attributes_for("beauty"), limit)
    ids = hf_engine.tokenizer(request, add_special_tokens=True)["input_ids"]
    item_part = request.split("\nRate this item")[0].removeprefix("<|im_start|>user\n")
    assert len(hf_engine.tokenizer(item_part, add_special_tokens=False)["input_ids"]) <= limit + 1
    assert len(ids) > limit and request.endswith("<|im_start|>assistant\n")
    whole = hf_engine.generate_ids([ids], 6)
    assert hf_engine.generate([request], 6) == whole
    assert hf_engine.generate_ids([ids[:limit]], 6) != whole   # what cutting the request used to answer


def test_batched_generation_matches_one_prompt_at_a_time(hf_engine, monkeypatch):
    """Left-padded batches of mixed lengths give the same greedy (and schema-constrained) answers."""
    from llm.attributes import attributes_for, score_prompt, score_schema

    names = attributes_for("movie")[:3]
    asks = [score_prompt(p, names) for p in PROMPTS]
    batched = hf_engine.generate(asks, 24, json_schema=score_schema(names))
    plain = hf_engine.generate(PROMPTS, 8)
    monkeypatch.setattr(hf_engine, "generate_batch", 1)
    assert hf_engine.generate(asks, 24, json_schema=score_schema(names)) == batched
    assert hf_engine.generate(PROMPTS, 8) == plain
