"""srs: split, tensors, metrics by hand, LLMEmb's PCA + adapter, SASRec, and training through Ray."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.config import SRSConfig
from srs import METRICS, popularity_baseline, popularity_metrics, summarize, target_ranks, train_srs
from srs.data import BucketBatchSampler, Ragged, TrainBatch, build_tensors, sample_negatives
from srs.fusion import LLMEmbAdapter, build_item_embedding
from srs.train import build_model

N_ITEMS = 200


def cyclic_sequences(n_items: int = N_ITEMS, n_users: int = 400, noise: float = 0.2, seed: int = 0):
    """Users walk the catalog in a cycle (next = current + 1) with 20% random jumps: the next
    item is predictable from the last one, while popularity is flat."""
    rng = np.random.default_rng(seed)
    sequences = {}
    for u in range(n_users):
        cur, seq = int(rng.integers(n_items)), []
        for _ in range(int(rng.integers(6, 20))):
            seq.append(f"i{cur}")
            cur = (cur + 1) % n_items if rng.random() > noise else int(rng.integers(n_items))
        sequences[f"u{u}"] = seq
    return sequences, [f"i{i}" for i in range(n_items)]


def cycle_embeddings(n_items: int = N_ITEMS, seed: int = 1) -> np.ndarray:
    """A stand-in for LLM embeddings that encodes the items' place on the cycle (Fourier
    features) plus noise dimensions."""
    angles = 2 * np.pi * np.arange(n_items)[:, None] * np.arange(1, 9)[None] / n_items
    noise = 0.1 * np.random.default_rng(seed).normal(size=(n_items, 16))
    return np.concatenate([np.cos(angles), np.sin(angles), noise], axis=1).astype(np.float32)


SMALL = SRSConfig(hidden_size=32, num_layers=1, num_heads=1, max_len=20, dropout=0.1, pca_dim=16,
                  epochs=8, patience=3, batch_size=64, lr=2e-3)


# -- split and tensors -------------------------------------------------------------------------
def test_build_tensors_pads_left_and_shifts_targets():
    data = build_tensors({"u": ["b", "c", "a", "d", "e"], "v": ["a", "b", "c"]}, ["a", "b", "c", "d", "e"], max_len=3)
    # u: indices [2, 3, 1, 4, 5]; train seq[:-2] = [2, 3, 1]; v has one training item: no example.
    np.testing.assert_array_equal(data.train_inputs, [[0, 2, 3]])
    np.testing.assert_array_equal(data.train_targets, [[0, 3, 1]])
    np.testing.assert_array_equal(data.valid_inputs, [[2, 3, 1], [0, 0, 1]])
    np.testing.assert_array_equal(data.valid_targets, [4, 2])
    np.testing.assert_array_equal(data.test_inputs, [[3, 1, 4], [0, 1, 2]])
    np.testing.assert_array_equal(data.test_targets, [5, 3])
    np.testing.assert_array_equal(data.test_seen.padded(np.array([0, 1])), [[2, 3, 1, 4], [1, 2, 0, 0]])
    with pytest.raises(ValueError, match="not in item_ids"):
        build_tensors({"u": ["a", "zz", "b"]}, ["a", "b"], max_len=3)


def test_sample_negatives_avoid_the_users_items_and_padding():
    inputs = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    targets = torch.tensor([[0, 2, 3, 4], [6, 7, 8, 9]])
    neg = sample_negatives(inputs, targets, n_items=12, generator=torch.Generator().manual_seed(0), tries=50)
    assert neg[0, 0] == 0
    for row, seen in zip(neg, ({1, 2, 3, 4}, {5, 6, 7, 8, 9})):
        assert all(1 <= int(v) <= 12 and int(v) not in seen for v in row if v != 0)


def test_bucket_batches_cover_every_row_once_and_shard_evenly():
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    single = BucketBatchSampler(lengths, batch_size=32, seed=0)
    rows = [i for b in single for i in b]
    assert sorted(rows) == list(range(1000))
    # Grouping by length: a batch spans far less than the full range of lengths.
    assert np.mean([np.ptp(lengths[b]) for b in single]) < 10
    shards = [list(BucketBatchSampler(lengths, 32, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen))
    single.set_epoch(1)
    assert [i for b in single for i in b] != rows


# -- metrics -----------------------------------------------------------------------------------
def test_metrics_on_hand_made_scores():
    n = 30
    scores = -torch.arange(n + 1, dtype=torch.float32).repeat(4, 1)  # item i ranks i-1 among 1..n
    scores[:, 0] = 100.0  # padding must never count, however high it scores
    targets = torch.tensor([1, 8, 25, 3])
    seen = torch.tensor([[0, 0, 0], [1, 2, 2], [0, 0, 0], [3, 1, 1]])  # repeats; row 3: the target is in the history
    ranks = target_ranks(scores, targets, seen)
    assert ranks.tolist() == [0, 5, 24, 1]
    m = summarize(ranks)
    assert set(m) == set(METRICS)
    assert m["HR@5"] == pytest.approx(2 / 4)
    assert m["HR@10"] == pytest.approx(3 / 4)
    assert m["HR@20"] == pytest.approx(3 / 4)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(7) + 1 / math.log2(3)) / 4)
    assert m["MRR"] == pytest.approx((1 + 1 / 6 + 1 / 25 + 1 / 2) / 4)


def test_ties_count_against_the_target():
    ranks = target_ranks(torch.zeros(1, 11), torch.tensor([4]), torch.zeros(1, 1, dtype=torch.int64))
    assert ranks.tolist() == [9]


def test_popularity_baseline_ranks_by_training_counts():
    train = [[1, 2, 2], [2, 3, 3, 3]]  # counts: 3 -> 3, 2 -> 3 (tie: lower index first), 1 -> 1
    seen = Ragged.from_rows([[1], [4]])
    m = popularity_baseline(train, seen, np.array([3, 1]), n_items=5)
    # case 0: order 2, 3, (1 seen), 4, 5 -> target 3 at rank 1; case 1: 2, 3, 1 -> rank 2.
    assert m["MRR"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["HR@5"] == 1.0


# -- item embeddings and the model -------------------------------------------------------------
def test_llmemb_pca_shape_frozen_buffer_and_zero_padding():
    emb = np.random.default_rng(0).normal(size=(30, 50)).astype(np.float32)
    items = LLMEmbAdapter(emb, dim=16, pca_dim=128)  # capped at min(D, n_items) = 30
    assert items.reduced.shape == (30, 30)
    assert not items.reduced.requires_grad
    assert all(p.data_ptr() != items.reduced.data_ptr() for p in items.parameters())
    assert items.adapter[0].out_features == 15 and items.adapter[1].out_features == 16
    table = items.table()
    assert table.shape == (31, 16)
    assert torch.all(table[0] == 0)
    table.sum().backward()
    assert items.reduced.grad is None and items.adapter[0].weight.grad is not None
    smaller = LLMEmbAdapter(emb, dim=16, pca_dim=8)
    assert smaller.reduced.shape == (30, 8)


def test_sources_are_checked():
    with pytest.raises(ValueError, match="unknown embedding source"):
        build_item_embedding("nope", 10, SMALL)
    with pytest.raises(ValueError, match="needs item_embeddings"):
        build_item_embedding("llmemb", 10, SMALL, np.zeros((9, 4), dtype=np.float32))


def test_sasrec_verbs_shapes_and_padding_invariance():
    torch.manual_seed(0)
    model = build_model("id", 12, SMALL).eval()
    seq = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])
    assert model.score_all(seq).shape == (2, 13)
    assert model.user_vector(seq).shape == (2, SMALL.hidden_size)
    # Padding is invisible: a short row batched with a longer one (so its padding columns are
    # attended past, not trimmed) gets the same vector as alone, and extra padding changes nothing.
    torch.testing.assert_close(model.user_vector(seq)[:1], model.user_vector(torch.tensor([[3, 4]])))
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.int64), seq], dim=1)
    torch.testing.assert_close(model.user_vector(padded), model.user_vector(seq))
    targets = torch.tensor([[0, 0, 4, 5], [2, 3, 4, 5]])
    loss = model.train().loss(TrainBatch(seq, targets, torch.tensor([[0, 0, 7, 8], [9, 10, 11, 12]])))
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="divisible"):
        build_model("id", 12, SMALL.model_copy(update={"num_heads": 3}))


# -- training through Ray ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cyclic():
    sequences, item_ids = cyclic_sequences()
    return sequences, item_ids, popularity_metrics(sequences, item_ids)


def test_popularity_is_weak_on_the_cyclic_set(cyclic):
    _, _, pop = cyclic
    assert pop["HR@10"] < 0.15


def test_sasrec_id_beats_popularity(ray_local, cyclic):
    sequences, item_ids, pop = cyclic
    result = train_srs(sequences, item_ids, SMALL, "id")
    assert set(result.test) == set(METRICS) and set(result.valid) == set(METRICS)
    assert 1 <= result.best_epoch <= result.epochs <= SMALL.epochs
    assert result.test["HR@10"] > pop["HR@10"] + 0.3
    assert result.checkpoint is None
    assert result.seconds >= result.seconds_per_epoch * result.epochs > 0


def test_sasrec_llmemb_beats_popularity_and_checkpoints(ray_local, cyclic, tmp_path: Path):
    sequences, item_ids, pop = cyclic
    result = train_srs(sequences, item_ids, SMALL, "llmemb", item_embeddings=cycle_embeddings(), storage_path=str(tmp_path))
    assert result.test["HR@10"] > pop["HR@10"] + 0.3
    assert result.checkpoint is not None and (Path(result.checkpoint) / "model.safetensors").exists()


def test_train_srs_rejects_missing_embeddings_before_starting_ray(cyclic):
    sequences, item_ids, _ = cyclic
    with pytest.raises(ValueError, match="needs item_embeddings"):
        train_srs(sequences, item_ids, SMALL, "llmemb")
