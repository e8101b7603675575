"""GPU readiness: the embedding engine (transformers in bf16; vLLM where installed), a short SRS training
and the FAISS GPU index, each on the CUDA device, one line per part with its throughput.

    python benchmarks/gpu_check.py [--model PATH] [--items 4096] [--users 20000]

Without a CUDA device it says so and exits 0. Each part imports what it needs when it runs (Ray is not
needed at all: SRS trains with the local runner), so a GPU box without FAISS or vLLM runs the other
parts and prints "skipped: <module> not installed" for those. Exit 1 if a part failed.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("waterproof", "trail", "running", "shoe", "ceramic", "pour-over", "coffee", "kettle", "organic",
         "green", "tea", "sampler", "wireless", "noise-cancelling", "headphones", "cast-iron", "skillet")


def prompts(n: int) -> list[str]:
    """n distinct item texts of about 40 tokens (the length of a catalog prompt)."""
    return [f"Title: {' '.join(WORDS[(i + j) % len(WORDS)] for j in range(6))} no. {i}. "
            f"Description: {' '.join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(18))}." for i in range(n)]


def embed_hf(args) -> str:
    from cluster.config import ModelConfig
    from llm.engines import HFEngine

    engine = HFEngine(ModelConfig(path=args.model, engine="hf", dtype="bfloat16"))
    return _embed(engine, args, args.batch_size, f"bf16, batches of {args.batch_size}")


def embed_vllm(args) -> str:
    importlib.import_module("vllm")   # VLLMEngine imports it only when it first embeds
    from cluster.config import ModelConfig
    from llm.engines import VLLMEngine

    return _embed(VLLMEngine(ModelConfig(path=args.model, engine="vllm")), args, args.items, "one call, vLLM batches")


def _embed(engine, args, batch: int, how: str) -> str:
    """Steady items/s over `batch`-sized calls after a warm-up call; the engine's load time apart."""
    texts = prompts(args.items)
    started = time.perf_counter()
    try:
        engine.embed(texts[:args.batch_size])
        loaded = time.perf_counter() - started
        t0 = time.perf_counter()
        for start in range(0, len(texts), batch):
            engine.embed(texts[start:start + batch])
        seconds = time.perf_counter() - t0
    finally:
        engine.close()
    return (f"{len(texts) / seconds:.0f} items/s ({len(texts)} prompts, {how}; dims {engine.hidden_size}; "
            f"load {loaded:.1f} s)")


def srs_train(args) -> str:
    """A short SASRec training on random-walk sequences (the local runner, on the GPU)."""
    import numpy as np

    from cluster.config import SRSConfig
    from srs import train

    rng = np.random.default_rng(0)
    n = args.srs_items
    items = [f"i{i}" for i in range(n)]
    starts, strides = rng.integers(0, n, args.users), rng.integers(1, 5, args.users)   # learnable: walks
    sequences = {f"u{u}": [items[(starts[u] + k * strides[u]) % n] for k in range(30)] for u in range(args.users)}
    cfg = SRSConfig.model_validate({"model": "sasrec", "epochs": 3, "patience": 3, "batch_size": 256})
    result = train(sequences, items, cfg, "id", runner="local")   # on the first GPU
    return (f"{args.users / result.train_seconds_per_epoch:.0f} sequences/s training ({cfg.model}, "
            f"{args.users} users x 30 items over {args.srs_items} items, "
            f"{result.train_seconds_per_epoch:.2f} s/epoch, {result.epochs} epochs)")


def faiss_gpu(args) -> str:
    import faiss
    import numpy as np

    from index.faiss_index import ItemIndex

    if faiss.get_num_gpus() == 0:
        return "skipped: faiss-gpu not installed (this faiss sees no GPU)"
    vectors = np.random.default_rng(0).standard_normal((args.vectors, 128), dtype=np.float32)
    ids = [str(i) for i in range(args.vectors)]
    t0 = time.perf_counter()
    index = ItemIndex.build(ids, vectors, "Flat", "cosine")   # searches go to its GPU copy
    built = time.perf_counter() - t0
    queries = vectors[:args.queries]
    index.search(queries[:100], 10)   # warm-up
    t0 = time.perf_counter()
    index.search(queries, 10)
    seconds = time.perf_counter() - t0
    return (f"{len(queries) / seconds:.0f} queries/s (Flat, cosine, k=10 over {args.vectors} x 128; "
            f"build {built:.1f} s)")


PARTS: list[tuple[str, Callable]] = [("embed transformers", embed_hf), ("embed vllm", embed_vllm),
                                     ("srs training", srs_train), ("faiss gpu index", faiss_gpu)]


def run_part(name: str, part: Callable, args) -> bool:
    """Print the part's line; False if it failed (a missing module is a skip, not a failure)."""
    try:
        line = part(args)
    except ModuleNotFoundError as e:
        line = f"skipped: {e.name} not installed"
    except Exception as e:  # noqa: BLE001 - one part's failure must not hide the others' figures
        print(f"{name}: failed: {type(e).__name__}: {e}", flush=True)
        return False
    print(f"{name}: {line}", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2' (packaged) or a Hugging Face checkpoint dir")
    parser.add_argument("--items", type=int, default=4096, help="prompts embedded per engine")
    parser.add_argument("--batch-size", type=int, default=128, help="prompts per transformers forward pass")
    parser.add_argument("--users", type=int, default=20000, help="SRS training sequences")
    parser.add_argument("--srs-items", type=int, default=5000)
    parser.add_argument("--vectors", type=int, default=200_000, help="FAISS index size")
    parser.add_argument("--queries", type=int, default=10_000)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (the GPU parts need one)", flush=True)
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    results = [run_part(name, part, args) for name, part in PARTS]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
