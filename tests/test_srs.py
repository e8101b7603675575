"""srs: split, tensors, metrics by hand (full, sampled, tail), item sources x backbones, per-backbone
config defaults, the training state (safetensors + JSON), training in-process (every backbone) and
through Ray (SASRec id, then LLMEmb aligned to it), resume."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.config import SRSConfig
from srs import (ALL_METRICS, METRICS, MODELS, SOURCES, TrainState, Worker, build_model, fit, popularity_baseline,
                 popularity_metrics, summarize, target_ranks, train)
from srs.data import Ragged, TrainBatch, build_tensors, cold_items, sample_negatives, similar_rows
from srs.fusion import LLMEmbAdapter, SourceInputs, build_item_embedding, latent_categories
from srs.loop import BOOSTS, choose_boost
from srs.metrics import report, sample_candidates, sampled_ranks, tail_items
from srs.models.transformer import GROUP_ROWS, TransformerEncoder
from srs.runners import prepare_run

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


def test_long_sequences_train_every_next_item_in_windows():
    ids = [chr(ord("a") + i) for i in range(9)]
    data = build_tensors({"u": ids}, ids, max_len=3)
    # u trains on items 1..7 (8 and 9 are valid and test): 6 next-item targets in windows of 3 from the end.
    np.testing.assert_array_equal(data.train_inputs, [[4, 5, 6], [1, 2, 3]])
    np.testing.assert_array_equal(data.train_targets, [[5, 6, 7], [2, 3, 4]])
    np.testing.assert_array_equal(data.valid_inputs, [[5, 6, 7]])


def test_cold_items_appear_only_as_test_targets():
    sequences, ids = cyclic_sequences(n_items=50, n_users=200)
    cold = cold_items(50, 0.2, seed=3)
    assert cold.sum() == 10 and not cold[0] and np.array_equal(cold, cold_items(50, 0.2, seed=3))
    data = build_tensors(sequences, ids, max_len=20, cold=cold)
    for part in (data.train_inputs, data.train_targets, data.valid_inputs, data.test_inputs, data.valid_targets):
        assert not cold[part].any()
    assert cold[data.test_targets].any() and (~cold[data.test_targets]).any()


@pytest.mark.parametrize("text_dropout, text_map_steps, cold_knn", [(0.0, 0, 0), (0.3, 0, 0), (0.3, 30, 0),
                                                                    (0.3, 30, 3)])
def test_cold_items_score_from_their_text_only_with_llm_sources(text_dropout, text_map_steps, cold_knn):
    """Cold items never reach training: a random ID table cannot rank them; sources whose rows come
    from the LLM embeddings can (the cycle embeddings encode where an item sits on the users' walk),
    with the text map fitted after training (ridge), trained with the model (text dropout) or alone
    over the trained model, or with the rows of their nearest known items by text."""
    sequences, ids = cyclic_sequences()
    cfg = SMALL.model_copy(update={"cold_items": 0.2, "align_alpha": 0.0, "loss": "ce", "epochs": 12,
                                   "text_dropout": text_dropout, "text_map_steps": text_map_steps,
                                   "cold_knn": cold_knn})
    id_only = train(sequences, ids, cfg, "id", runner="local")
    text = cycle_embeddings()
    dual = train(sequences, ids, cfg, "llmesr", runner="local", item_embeddings=text)
    id_pca = train(sequences, ids, cfg.model_copy(update={"id_init": "llm-pca"}), "id", runner="local",
                   item_embeddings=text)
    assert id_only.test["cold/HR@10"] < 0.05 < 0.5 < min(dual.test["cold/HR@10"], id_pca.test["cold/HR@10"])
    assert min(r.test["warm/HR@10"] for r in (id_only, dual, id_pca)) > 0.5
    assert not any(k.startswith("cold/") for k in dual.valid)   # validation never ranks cold items


def test_text_map_trained_after_the_model_leaves_warm_rows_and_backbone_as_trained():
    sequences, ids = cyclic_sequences()
    cfg = SMALL.model_copy(update={"cold_items": 0.2, "loss": "ce", "epochs": 3, "text_dropout": 0.0})
    text = cycle_embeddings()
    ridge = train(sequences, ids, cfg, "llmesr", runner="local", item_embeddings=text)
    mapped = train(sequences, ids, cfg.model_copy(update={"text_dropout": 0.3, "text_map_steps": 20}), "llmesr",
                   runner="local", item_embeddings=text)
    cold = cold_items(len(ids), cfg.cold_items, cfg.seed)[1:]
    assert ridge.valid_curve == mapped.valid_curve
    np.testing.assert_array_equal(ridge.item_table[~cold], mapped.item_table[~cold])
    assert not np.allclose(ridge.item_table[cold], mapped.item_table[cold])


def test_sample_negatives_avoid_the_users_items_and_padding():
    inputs = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    targets = torch.tensor([[0, 2, 3, 4], [6, 7, 8, 9]])
    neg = sample_negatives(inputs, targets, torch.arange(1, 13), generator=torch.Generator().manual_seed(0), tries=50)
    assert neg[0, 0] == 0
    for row, seen in zip(neg, ({1, 2, 3, 4}, {5, 6, 7, 8, 9})):
        assert all(1 <= int(v) <= 12 and int(v) not in seen for v in row if v != 0)


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


def test_sampled_ranks_count_only_the_candidates():
    scores = torch.tensor([[9.0, 1.0, 5.0, 3.0, 4.0, 2.0, 7.0]]).repeat(3, 1)  # column 0 = padding
    targets = torch.tensor([4, 4, 1])
    candidates = torch.tensor([[1, 5, 3], [2, 6, 3], [2, 3, 5]])  # above 4.0: none / 5 and 7 / all
    assert sampled_ranks(scores, targets, candidates).tolist() == [0, 2, 3]
    tied = sampled_ranks(torch.zeros(1, 5), torch.tensor([1]), torch.tensor([[2, 3]]))
    assert tied.tolist() == [2]  # ties count against the target


def test_sample_candidates_are_distinct_non_interacted_and_fixed():
    history = Ragged.from_rows([[1, 2, 3], [4, 4], list(range(1, 26))])
    targets = np.array([5, 6, 26])
    a = sample_candidates(history, targets, n_items=130, n=100)
    assert a.shape == (3, 100)
    for row, seen in zip(a, ({1, 2, 3, 5}, {4, 6}, set(range(1, 27)))):
        assert len(set(row)) == 100 and not set(row) & seen and row.min() >= 1 and row.max() <= 130
    np.testing.assert_array_equal(a, sample_candidates(history, targets, n_items=130, n=100))
    with pytest.raises(ValueError, match="non-interacted"):
        sample_candidates(history, targets, n_items=110, n=100)


def test_tail_is_the_80_percent_least_popular_and_reported_apart():
    counts = [0, 9, 8, 7, 1, 1, 0, 2, 3, 1, 1]  # items 1..10; head = top 2 = items 1, 2
    train = Ragged.from_rows([[i] * c for i, c in enumerate(counts) if c])
    tail = tail_items(train, n_items=10)
    assert not tail[0] and not tail[1] and not tail[2] and tail[3:].all()
    ranks = torch.tensor([0, 4, 30])
    m = report(ranks, np.array([1, 3, 7]), tail)
    assert set(m) == set(ALL_METRICS)
    assert m["HR@10"] == pytest.approx(2 / 3) and m["tail/HR@10"] == pytest.approx(1 / 2)
    assert math.isnan(report(ranks, np.array([1, 2, 1]), tail)["tail/MRR"])


def test_popularity_baseline_ranks_by_training_counts():
    train = [[1, 2, 2], [2, 3, 3, 3]]  # counts: 3 -> 3, 2 -> 3 (tie: lower index first), 1 -> 1
    seen = Ragged.from_rows([[1], [4]])
    m = popularity_baseline(train, seen, np.array([3, 1]), n_items=5)
    # case 0: order 2, 3, (1 seen), 4, 5 -> target 3 at rank 1; case 1: 2, 3, 1 -> rank 2.
    assert m["MRR"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["HR@5"] == 1.0
    # Sampled: case 0 against items 4, 5 (count 0) -> rank 0; case 1 against 2 (count 3) -> rank 1.
    sampled = popularity_baseline(train, seen, np.array([3, 1]), n_items=5, candidates=np.array([[4, 5], [2, 5]]))
    assert sampled["MRR"] == pytest.approx((1 + 1 / 2) / 2)


# -- item sources and backbones ---------------------------------------------------------------
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
    assert LLMEmbAdapter(emb, dim=16, pca_dim=8).reduced.shape == (30, 8)


def test_pca_whitening_reaches_both_views_of_llmesr():
    """srs.pca_whiten: every kept component of the text table carries the same variance (an LLM
    table's first components dominate it otherwise), in the ID view's init and in the semantic view."""
    rng = np.random.default_rng(0)
    emb = (rng.normal(size=(60, 40)) * np.geomspace(30, 0.1, 40)).astype(np.float32)   # anisotropic
    cfg = SMALL.model_copy(update={"hidden_size": 16, "pca_dim": 24})
    spread = {}
    for whiten in (False, True):
        items = build_item_embedding("llmesr", 60, cfg.model_copy(update={"pca_whiten": whiten}), SourceInputs(llm=emb))
        ids, semantic = items.ids, items.semantic
        std = ids.weight.weight[1:].detach().std(0)
        spread[whiten] = (float(std.max() / std.min()), float(semantic.reduced.std(0).max() / semantic.reduced.std(0).min()))
    assert spread[False][0] > 10 and spread[False][1] > 10
    assert spread[True][0] < 1.01 and spread[True][1] < 1.01


def test_llmemb_ablation_switches():
    emb = np.random.default_rng(0).normal(size=(30, 50)).astype(np.float32)
    cfg = SMALL.model_copy(update={"hidden_size": 16, "llmemb_adapter": False, "llmemb_freeze": False})
    items = build_item_embedding("llmemb", 30, cfg, SourceInputs(llm=emb))
    assert isinstance(items.reduced, torch.nn.Parameter) and items.reduced.shape == (30, 16)
    assert [n for n, _ in items.named_parameters()] == ["reduced"]  # no adapter
    frozen = build_item_embedding("llm-frozen", 30, cfg, SourceInputs(llm=emb))
    assert list(frozen.parameters()) == [] and frozen.table().shape == (31, 16)
    assert build_item_embedding("llmemb", 30, SMALL, SourceInputs(llm=emb)).aux_loss(torch.tensor([1, 2])) is None
    with pytest.raises(ValueError, match="PCA must reach"):
        build_item_embedding("llm-frozen", 30, cfg.model_copy(update={"hidden_size": 64}), SourceInputs(llm=emb))


def test_alignment_loss_decreases():
    rng = np.random.default_rng(0)
    id_table = rng.normal(size=(40, 16)).astype(np.float32)
    items = LLMEmbAdapter(rng.normal(size=(40, 24)).astype(np.float32), dim=16, pca_dim=24, id_table=id_table, alpha=1.0)
    optimizer = torch.optim.Adam(items.parameters(), lr=1e-2)
    batch = torch.tensor([[0, 1, 2, 3, 3], [4, 5, 6, 7, 8]])
    losses = []
    for _ in range(60):
        loss = items.aux_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]  # 4.1 -> 2.5; the floor at temperature 1 with 8 items is 2.35
    assert "id_table" not in items.state_dict()  # a training target only: serving does not need it


def test_latent_categories_recover_separated_clusters():
    rng = np.random.default_rng(0)
    centers = 10 * rng.normal(size=(4, 8))
    labels = np.repeat(np.arange(4), 25)
    found = latent_categories(centers[labels] + rng.normal(size=(100, 8)), k=4)
    assert all(len(set(found[labels == c])) == 1 for c in range(4)) and len(set(found)) == 4


@pytest.mark.parametrize("source, update", [("llmesr", {}), ("llmemb", {}), ("llm-frozen", {}),
                                            ("id", {"id_init": "llm-pca"})])
def test_items_added_after_training_get_the_rows_training_would_have_given_them(source, update):
    """A model built on 30 items plus `add_items` of 10 more equals a model built on all 40 with the
    10 marked cold (the PCA fitted on the 30 in both): serving and the cold-item protocol agree."""
    cfg = SMALL.model_copy(update={"align_alpha": 0.0, "hidden_size": 16, "pca_dim": 16, **update})
    llm = cycle_embeddings(40)
    warm = np.arange(40) < 30
    whole = build_item_embedding(source, 40, cfg, SourceInputs(llm=llm, warm=warm))
    grown = build_item_embedding(source, 30, cfg, SourceInputs(llm=llm[:30]))
    same_shape = {k: v for k, v in whole.state_dict().items() if v.shape == grown.state_dict()[k].shape}
    grown.load_state_dict(same_shape, strict=False)   # the random inits (adapters) as the whole model's
    grown.add_items(torch.from_numpy(llm[30:]))
    with torch.no_grad():
        torch.testing.assert_close(grown.table(), whole.table())
    assert grown.n_items == 40


def test_after_training_cold_rows_are_what_the_text_predicts():
    """The PCA-initialised ID table learns a map from text to trained rows on the items it saw and
    gives the cold ones (and, through add_items, new ones) the rows their text predicts."""
    cfg = SMALL.model_copy(update={"id_init": "llm-pca", "hidden_size": 16})
    llm = cycle_embeddings(120)
    items = build_item_embedding("id", 120, cfg, SourceInputs(llm=llm))
    target = torch.randn(17, 16, generator=torch.Generator().manual_seed(0))   # rows = [text, 1] @ target
    with torch.no_grad():
        items.weight.weight[1:] = torch.cat([items.text, torch.ones(120, 1)], 1) @ target
    truth = items.table()[1:].detach().clone()
    known = torch.from_numpy(cold_items(120, 0.2, seed=0)[1:]).logical_not()
    with torch.no_grad():
        items.weight.weight[1:][~known] = 0   # the cold rows as training left them: untrained
    items.after_training(known, torch.zeros(120, dtype=torch.bool))
    torch.testing.assert_close(items.table()[1:][~known], truth[~known], atol=0.05, rtol=0.05)
    items.add_items(torch.from_numpy(llm[:3]))
    torch.testing.assert_close(items.table()[-3:], truth[:3], atol=0.05, rtol=0.05)


def test_cold_knn_rows_are_their_nearest_known_items_rows_also_once_published():
    """With cold_knn an untrained item's row is the mean trained row of its k nearest known items by whitened
    text: after training, and through add_items in a model rebuilt from its saved weights (what serving loads)."""
    cfg = SMALL.model_copy(update={"id_init": "llm-pca", "hidden_size": 16, "cold_knn": 3})
    llm = cycle_embeddings(120)
    items = build_item_embedding("id", 120, cfg, SourceInputs(llm=llm))
    with torch.no_grad():
        items.weight.weight[1:] = torch.randn(120, 16, generator=torch.Generator().manual_seed(0))
    trained = items.weight.weight[1:].detach().clone()
    known = torch.from_numpy(cold_items(120, 0.2, seed=0)[1:]).logical_not()
    items.after_training(known, torch.zeros(120, dtype=torch.bool))
    rows = items.table()[1:].detach()
    assert torch.equal(rows[known], trained[known])
    warm, cold = np.flatnonzero(known.numpy()), np.flatnonzero(~known.numpy())
    z = items.text.numpy() / items.text.numpy()[warm].std(0, ddof=1)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    for c in cold:
        nearest = warm[np.argsort(-(z[warm] @ z[c]))[:3]]
        np.testing.assert_allclose(rows[c].numpy(), trained[nearest].mean(0).numpy(), atol=1e-5)

    loaded = build_item_embedding("id", 120, cfg, SourceInputs(llm=np.zeros_like(llm)))
    loaded.load_state_dict(items.state_dict())
    loaded.add_items(torch.from_numpy(llm[cold[:2]]))
    torch.testing.assert_close(loaded.table()[-2:].detach(), rows[cold[:2]])


def test_items_without_text_cannot_join_an_id_only_model():
    items = build_item_embedding("id", 10, SMALL)
    with pytest.raises(ValueError, match="cannot give a row to an item it never trained on"):
        items.add_items(torch.zeros(2, 16))


def source_inputs(n_items: int, cfg: SRSConfig) -> SourceInputs:
    rng = np.random.default_rng(0)
    return SourceInputs(llm=cycle_embeddings(n_items), attributes=rng.normal(size=(n_items, 6)).astype(np.float32),
                        id_table=rng.normal(size=(n_items, cfg.hidden_size)).astype(np.float32))


FROZEN = {"llm-frozen": ["reduced"], "llmemb": ["reduced"], "ger": ["guided"], "tslrec": ["knowledge"],
          "llmesr": ["semantic.reduced"]}


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_source_builds_with_every_backbone(model_name, source):
    torch.manual_seed(0)
    cfg = SMALL.model_copy(update={"model": model_name, "tslrec_clusters": 4})
    inputs = source_inputs(40, cfg)
    model = build_model(source, 40, cfg, inputs.llm, inputs.attributes, inputs.id_table)
    seq = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])
    assert model.score_all(seq).shape == (2, 41)
    views = 2 if source == "llmesr" else 1   # LLM-ESR: the ID and semantic views side by side
    assert model.user_vector(seq).shape == (2, views * cfg.hidden_size)
    assert torch.all(model.items.table()[0] == 0) and model.items.table().shape == (41, views * cfg.hidden_size)
    targets = torch.tensor([[0, 0, 4, 5], [2, 3, 4, 5]])
    model.train()(TrainBatch(seq, targets, torch.tensor([[0, 0, 7, 8], [9, 10, 11, 12]]))).backward()
    buffers = dict(model.items.named_buffers())
    for name in FROZEN.get(source, []):
        assert name in buffers and buffers[name].grad is None
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("items.") and p.requires_grad)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_view_attention_trains_every_backbone_and_never_reads_the_future(model_name):
    """LLM-ESR's cross-attention between the views: its weights learn, and in the next-item backbones
    (with positions from the first item, so a prefix encodes as if alone) a position's state does not
    depend on the items after it, which it is trained to predict."""
    torch.manual_seed(0)
    cfg = SMALL.model_copy(update={"model": model_name, "view_attention": True, "position_from": "first"})
    model = build_model("llmesr", 40, cfg, cycle_embeddings(40))
    seq = torch.tensor([[0, 0, 3, 4, 9], [1, 2, 3, 4, 5]])
    model.train()(TrainBatch(seq, torch.tensor([[0, 0, 4, 9, 6], [2, 3, 4, 5, 6]]))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.view_attention.parameters())
    model.eval()
    if model.view_attention.causal:
        states = torch.cat(model._view_states(seq, model.items.views()), -1)
        for k in range(1, 5):
            torch.testing.assert_close(states[1:, k - 1], model.user_vector(seq[1:, :k]), atol=1e-5, rtol=1e-4)
    without = build_model("llmesr", 40, cfg.model_copy(update={"view_attention": False}), cycle_embeddings(40))
    assert without.view_attention is None and not torch.allclose(model.user_vector(seq), without.eval().user_vector(seq))
    assert build_model("id", 40, cfg).view_attention is None   # one view: nothing to attend to


def test_semantic_boost_weights_rare_and_new_items_semantic_scores_once_trained():
    """llmesr with semantic_boost: training (its loss) is unchanged; once trained, a tail item's semantic-view
    score is weighted by 1 + b, a head item's and every ID-view score are not; a new item gets 1 + b; the
    weights travel with the published weights."""
    cfg = SMALL.model_copy(update={"semantic_boost": 2.0})
    seq = torch.tensor([[0, 0, 3, 4, 9], [1, 2, 3, 4, 5]])
    batch = TrainBatch(seq, torch.tensor([[0, 0, 4, 9, 6], [2, 3, 4, 5, 6]]))
    torch.manual_seed(0)
    boosted = build_model("llmesr", 40, cfg, cycle_embeddings(40))
    torch.manual_seed(0)
    plain = build_model("llmesr", 40, cfg.model_copy(update={"semantic_boost": 0.0}), cycle_embeddings(40))
    torch.manual_seed(1)
    loss = boosted.train()(batch)
    torch.manual_seed(1)
    torch.testing.assert_close(loss, plain.train()(batch))

    tail = torch.arange(40) % 5 != 0
    boosted.eval().items.after_training(torch.ones(40, dtype=torch.bool), tail)
    weight = 1 + 2.0 * tail.float()
    torch.testing.assert_close(boosted.items.semantic_weight[1:], weight)
    with torch.no_grad():
        ids, semantic = boosted.items.views()
        users = boosted._users(seq, (ids, semantic))
        expected = users[0] @ ids.T + (users[1] @ semantic.T) * torch.cat([torch.ones(1), weight])
        torch.testing.assert_close(boosted.score_all(seq), expected)

    loaded = build_model("llmesr", 40, cfg, np.zeros((40, 32), np.float32))
    loaded.load_state_dict(boosted.state_dict())
    loaded.items.add_items(torch.from_numpy(cycle_embeddings(42)[40:]))
    torch.testing.assert_close(loaded.items.semantic_weight[1:], torch.cat([weight, torch.full((2,), 3.0)]))


def test_similar_rows_are_the_rows_whose_items_read_alike():
    llm = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)   # items 1, 2 alike; 3, 4 alike
    rows = np.array([[0, 1, 2], [0, 0, 1], [3, 4, 4], [0, 0, 4], [1, 3, 0]])
    similar = similar_rows(rows, llm, k=2, chunk=2)
    assert similar.shape == (5, 2) and not (similar == np.arange(5)[:, None]).any()
    assert similar[0, 0] == 1 and similar[2, 0] == 3 and similar[3, 0] == 2
    with pytest.raises(ValueError, match="distill_users 5: only 5 training rows"):
        similar_rows(rows, llm, k=5)


def test_self_distillation_pulls_each_user_toward_its_similar_users():
    """LLM-ESR's self-distillation: after training with it, a row's user vector sits nearer the mean of its
    text-similar rows' than after the same training without it; sources without LLM embeddings refuse it."""
    sequences, ids = cyclic_sequences()
    cfg = SMALL.model_copy(update={"loss": "ce", "epochs": 3, "patience": 3, "distill_users": 3})
    text = cycle_embeddings()

    def distance(weight: float) -> float:
        run = cfg.model_copy(update={"distill_weight": weight})
        data, inputs, _ = prepare_run(sequences, ids, run.model_copy(update={"distill_weight": 1.0}), "llmesr",
                                      SourceInputs(llm=text))
        torch.manual_seed(0)
        model = build_model("llmesr", data.n_items, run, inputs.llm)
        fit(model, data if weight else replace(data, train_similar=None), run)
        with torch.no_grad():
            users = model.eval().user_vector(torch.from_numpy(data.train_inputs))
        return float(((users - users[torch.from_numpy(data.train_similar)].mean(1)) ** 2).sum(1).mean())

    assert distance(10.0) < 0.5 * distance(0.0)
    with pytest.raises(ValueError, match="reads no LLM embeddings"):
        train(sequences, ids, cfg.model_copy(update={"distill_weight": 0.1}), "id", runner="local")


def test_ger_z_scores_its_items_without_blowing_up_noise():
    raw = np.array([[1, 10, 1.0], [3, 10, 1.0000001], [5, 10, 1.0000002]], np.float32)
    guided = build_item_embedding("ger", 3, SMALL, SourceInputs(attributes=raw)).guided.numpy()
    assert np.allclose(guided[:, 0], [-1.2247, 0, 1.2247], atol=1e-4)
    assert (guided[:, 1:] == 0).all(), "a constant attribute, or one that varies by rounding noise, is 0"


def test_sources_are_checked():
    with pytest.raises(ValueError, match="unknown embedding source"):
        build_item_embedding("nope", 10, SMALL)
    with pytest.raises(ValueError, match="needs llm"):
        build_item_embedding("llmemb", 10, SMALL, SourceInputs(llm=np.zeros((9, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="needs attributes"):
        build_item_embedding("ger", 10, SMALL)
    with pytest.raises(ValueError, match="fewer attribute scores"):
        build_item_embedding("ger", 10, SMALL, SourceInputs(attributes=np.zeros((10, 40), dtype=np.float32)))
    with pytest.raises(ValueError, match="needs id_table"):
        build_item_embedding("tslrec", 10, SMALL, SourceInputs(llm=np.zeros((10, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="cloze"):
        SRSConfig(model="bert4rec", loss="bce")


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_each_backbone_takes_its_yaml_defaults_and_set_values_win(model_name):
    import yaml

    from cluster.config import load_config
    from tests.conftest import REPO

    defaults = yaml.safe_load((REPO / "srs" / "defaults" / f"{model_name}.yaml").read_text())
    assert set(defaults) == {"loss", "dropout", "epochs", "patience"}
    cfg = load_config(None, {"srs.model": model_name}).srs
    assert {k: getattr(cfg, k) for k in defaults} == defaults and cfg == SRSConfig(model=model_name)
    mine = load_config(None, {"srs.model": model_name, "srs.epochs": 3, "srs.dropout": 0.1}).srs
    assert (mine.epochs, mine.dropout, mine.patience) == (3, 0.1, defaults["patience"])
    assert SRSConfig.model_validate(mine.model_dump()) == mine   # how Ray workers and serving (srs.json) read it back


def test_backbone_defaults_differ_where_measured_and_old_configs_read_as_before():
    assert (SRSConfig().loss, SRSConfig().epochs) == ("ce", 200)
    assert SRSConfig(model="bert4rec").patience == 40 and SRSConfig(model="gru4rec").patience == 5
    # srs.json published before the defaults holds loss None: it still means what it was trained with.
    assert SRSConfig(loss=None).resolved_loss == "bce" and SRSConfig(model="bert4rec", loss=None).resolved_loss == "ce"


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("position_from", ["last", "first"])
def test_backbone_padding_invariance(model_name, position_from):
    torch.manual_seed(0)
    model = build_model("id", 12, SMALL.model_copy(update={"model": model_name, "position_from": position_from})).eval()
    seq = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])
    # A short row batched with a longer one (so its padding columns are processed, not
    # trimmed) gets the same vector as alone, and extra padding changes nothing.
    torch.testing.assert_close(model.user_vector(seq)[:1], model.user_vector(torch.tensor([[3, 4]])))
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.int64), seq], dim=1)
    torch.testing.assert_close(model.user_vector(padded), model.user_vector(seq))
    with pytest.raises(ValueError, match="divisible"):
        build_model("id", 12, SMALL.model_copy(update={"num_heads": 3, "model": "sasrec"}))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("position_from", ["last", "first"])
def test_encoder_states_do_not_depend_on_the_rows_batched_with_them(causal, position_from):
    """The encoder runs a batch in groups of similar length, each cut to its own longest row; every
    row of a batch wider than one group must still get the states it gets alone."""
    torch.manual_seed(0)
    cfg = SMALL.model_copy(update={"position_from": position_from})
    encoder = TransformerEncoder(cfg.hidden_size, cfg, causal).eval()
    lengths = torch.randint(1, cfg.max_len + 1, (3 * GROUP_ROWS + 5,))
    pad = torch.arange(cfg.max_len) < cfg.max_len - lengths[:, None]
    items = torch.randn(len(lengths), cfg.max_len, cfg.hidden_size)
    batched = encoder(items, pad)
    for r, n in enumerate(lengths.tolist()):
        alone = encoder(items[r:r + 1, -n:], pad[r:r + 1, -n:])[0]
        torch.testing.assert_close(batched[r, -n:], alone, atol=1e-5, rtol=1e-4)


def test_positions_from_the_first_item_make_a_prefix_state_independent_of_later_items():
    """With RecBole's positions every prefix of a training row is encoded (dropout aside) as if it
    were the whole history, as in RecBole's per-prefix examples; SASRec's positions (from the most
    recent item) shift as items follow, so the same prefix reads differently."""
    seq = torch.tensor([[5, 2, 9, 4]])
    for position_from, same in [("first", True), ("last", False)]:
        torch.manual_seed(0)
        model = build_model("id", 12, SMALL.model_copy(update={"model": "sasrec", "position_from": position_from})).eval()
        states = model.states(seq, model.items.table()[seq])
        for k in range(1, 4):
            alone = model.user_vector(seq[:, :k])
            assert torch.allclose(states[:, k - 1], alone, atol=1e-5) == same, (position_from, k)


# -- training ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cyclic():
    sequences, item_ids = cyclic_sequences()
    return sequences, item_ids, popularity_metrics(sequences, item_ids)


def test_popularity_is_weak_on_the_cyclic_set(cyclic):
    _, _, pop = cyclic
    assert pop["HR@10"] < 0.15
    assert set(pop) == set(ALL_METRICS)


# BERT4Rec's cloze trains about a fifth of the positions a step, so it gets twice the epochs.
@pytest.mark.parametrize("model_name, loss, epochs", [("sasrec", "ce", 8), ("gru4rec", "bce", 8), ("bert4rec", None, 16)])
def test_every_backbone_learns_in_process(cyclic, model_name, loss, epochs):
    sequences, item_ids, pop = cyclic
    cfg = SMALL.model_copy(update={"model": model_name, "loss": loss, "epochs": epochs, "lr": 1e-2, "batch_size": 32, "dropout": 0.0})
    torch.set_num_threads(1)  # what the Ray workers use; on a shared 2-core box 2 threads are slower
    torch.manual_seed(0)
    fitted = fit(build_model("id", len(item_ids), cfg), build_tensors(sequences, item_ids, cfg.max_len), cfg)
    state = fitted.state
    assert len(state.curve) == state.epoch and state.curve[state.best_epoch - 1] == state.best_valid["NDCG@10"]
    assert fitted.test["HR@10"] > pop["HR@10"] + 0.3


def test_semantic_boost_auto_takes_the_largest_b_validation_allows(cyclic):
    """semantic_boost auto scores every b on the trained model and keeps the largest whose validation NDCG@10
    stays within boost_tolerance of b = 0's; the run's validation and test metrics and published weights are that
    b's.
    A source without a semantic view trains as it would without the option."""
    sequences, item_ids, _ = cyclic
    cfg = SMALL.model_copy(update={"epochs": 4, "semantic_boost": "auto", "boost_tolerance": 0.01})
    data = build_tensors(sequences, item_ids, cfg.max_len)
    torch.manual_seed(0)
    model = build_model("llmesr", len(item_ids), cfg, cycle_embeddings())
    fitted = fit(model, data, cfg)
    sweep = fitted.boost_sweep
    assert [row["boost"] for row in sweep] == list(BOOSTS) and sum(row["chosen"] for row in sweep) == 1
    floor = 0.99 * sweep[0]["valid/NDCG@10"]
    chosen = max(row["boost"] for row in sweep if row["valid/NDCG@10"] >= floor)
    assert next(row for row in sweep if row["chosen"])["boost"] == chosen
    for split, metrics in (("test", fitted.test), ("valid", fitted.state.best_valid)):   # the published model's
        assert metrics == {k.removeprefix(f"{split}/"): v for k, v in sweep[BOOSTS.index(chosen)].items()
                           if k.startswith(f"{split}/")}
    assert len({row["test/tail/MRR"] for row in sweep}) == len(BOOSTS)   # each b ranks the tail its own way
    tail = torch.from_numpy(tail_items(data.train_seen, len(item_ids))[1:])
    torch.testing.assert_close(fitted.state.best_model["items.semantic_weight"][1:], 1 + chosen * tail.float())
    assert fitted.metrics()["boost_sweep"] == sweep

    anything = choose_boost(model, data, tail_items(data.train_seen, len(item_ids)), "cpu", None, tolerance=0.999)
    assert next(row for row in anything if row["chosen"])["boost"] == max(BOOSTS)
    torch.testing.assert_close(model.items.semantic_weight[1:], 1 + max(BOOSTS) * tail.float())

    torch.manual_seed(0)
    assert fit(build_model("id", len(item_ids), cfg), data, cfg).boost_sweep == []


@dataclass
class SavingWorker(Worker):
    """Saves every epoch's training state in <folder>/epoch-<n>, as the Ray runner's checkpoints do."""

    folder: Path = Path()

    def checkpoint(self, state: TrainState | None) -> None:
        (self.folder / f"epoch-{state.epoch}").mkdir(parents=True)
        state.save(self.folder / f"epoch-{state.epoch}")


def assert_same_state(a: TrainState, b: TrainState, skip: tuple[str, ...] = ()) -> None:
    for f in fields(TrainState):
        if f.name in skip:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "optimizer":   # JSON has no tuples: Adam's betas come back as a list, which it reads alike
            assert x["param_groups"] == json.loads(json.dumps(y["param_groups"]))
            x, y = x["state"], y["state"]
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=f.name)


def test_training_state_round_trips_without_pickle_and_resumes_exactly(cyclic, tmp_path: Path):
    """Each epoch's TrainState is a safetensors + JSON pair that loads back equal, and the loop
    continued from epoch 2's state ends exactly where the uninterrupted run ends."""
    sequences, item_ids, _ = cyclic
    cfg = SMALL.model_copy(update={"epochs": 4, "patience": 4})
    data = build_tensors(sequences, item_ids, cfg.max_len)
    torch.set_num_threads(1)  # as the runners set it (threads_per_worker): two threads' sums differ run to run

    def run(name: str, state: TrainState | None = None):
        torch.manual_seed(0)
        return fit(build_model("id", data.n_items, cfg), data, cfg, SavingWorker(folder=tmp_path / name), state)

    full = run("full")
    assert sorted(f.name for f in (tmp_path / "full" / "epoch-2").iterdir()) == ["train_state.json", "train_state.safetensors"]
    assert_same_state(TrainState.load(tmp_path / "full" / "epoch-4"), full.state)
    assert TrainState.load(tmp_path) is None
    resumed = run("resumed", TrainState.load(tmp_path / "full" / "epoch-2"))
    assert resumed.resumed_from == 2 and full.resumed_from == 0
    assert resumed.test == full.test and torch.equal(resumed.items, full.items)
    assert_same_state(resumed.state, full.state, skip=("seconds", "train_seconds"))   # wall clock


def test_sampled_ranking_is_easier_than_full(cyclic):
    sequences, item_ids, _ = cyclic
    sampled = popularity_metrics(sequences, item_ids, ranking="sampled")
    assert popularity_metrics(sequences, item_ids)["HR@10"] < sampled["HR@10"] < 0.3  # ~10/101 when flat


@pytest.fixture(scope="module")
def sasrec_id(ray_local, cyclic):
    sequences, item_ids, _ = cyclic
    return train(sequences, item_ids, SMALL, "id", runner="ray")


def test_sasrec_id_through_ray_beats_popularity(sasrec_id, cyclic):
    _, item_ids, pop = cyclic
    result = sasrec_id
    assert set(result.test) == set(ALL_METRICS) and set(result.valid) == set(ALL_METRICS)
    assert 1 <= result.best_epoch <= result.epochs <= SMALL.epochs and len(result.valid_curve) == result.epochs
    assert result.test["HR@10"] > pop["HR@10"] + 0.3
    assert result.checkpoint is None
    assert result.item_table.shape == (len(item_ids), SMALL.hidden_size)
    assert result.seconds >= result.seconds_per_epoch * result.epochs > 0


def test_local_runner_is_the_same_run_as_the_ray_runner(sasrec_id, cyclic):
    """runner "local" (no Ray) runs the same split, model and loop: on the CPU it ends exactly where
    Ray Train's single worker does."""
    sequences, item_ids, _ = cyclic
    local = train(sequences, item_ids, SMALL, "id", runner="local", device="cpu")
    assert local.valid_curve == sasrec_id.valid_curve and local.test == sasrec_id.test
    assert local.valid == sasrec_id.valid and local.best_epoch == sasrec_id.best_epoch
    assert np.array_equal(local.item_table, sasrec_id.item_table)


def srs_benchmark():
    """benchmarks/srs.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("srs_benchmark", REPO / "benchmarks" / "srs.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_runs_from_saved_inputs_where_ray_is_not_installed(cyclic, tmp_path: Path):
    """benchmarks/srs.py --save-inputs here, then --inputs --in-process in a process that cannot
    import Ray (a lone GPU box): llmemb pre-trains its ID model and trains, all in-process, printing
    each epoch as it ends, and under --cold-items reports the cold items it never trained on. A data
    set named by its path leaves its results in --out, not beside it."""
    import subprocess
    import sys

    from tests.conftest import REPO

    bench = srs_benchmark()
    sequences, item_ids, _ = cyclic
    bundle = tmp_path / "inputs.npz"
    bench.save_inputs(str(bundle), sequences, item_ids, {"item_embeddings": cycle_embeddings()})
    loaded_sequences, loaded_ids, kwargs = bench.load_inputs(str(bundle), "llmemb", SMALL)
    assert loaded_sequences == sequences and loaded_ids == item_ids
    assert np.allclose(kwargs["item_embeddings"], cycle_embeddings(), atol=1e-3)

    small = {k: getattr(SMALL, k) for k in ("hidden_size", "num_layers", "num_heads", "max_len", "dropout", "pca_dim",
                                            "epochs", "patience", "batch_size", "lr")}
    overrides = [f"--set={k}={v}" for k, v in small.items()]
    script = ("import sys, runpy; sys.modules['ray'] = None; sys.argv = ['srs.py', *sys.argv[1:]]; "
              "runpy.run_path('benchmarks/srs.py', run_name='__main__')")
    data = tmp_path / "shop" / "cyclic"
    data.mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", script, "--dataset", str(data), "--source", "llmemb", "--ranking",
                          "sampled", "--seeds", "42", "--inputs", str(bundle), "--in-process", "--cold-items", "0.2",
                          "--out", str(tmp_path / "out"), *overrides],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith(f"srs: dataset={data} model=sasrec source=llmemb ranking=sampled HR@10=")
    assert float(last.split("HR@10=")[1].split()[0]) > 0.4   # popularity: ~0.1 of 101 candidates
    assert float(last.split("coldHR@10=")[1].split()[0]) > 0.4   # cold items ranked by their text alone
    assert (tmp_path / "out" / "cyclic-sasrec-llmemb-sampled-cold0.2.csv").exists()
    assert list((tmp_path / "shop").iterdir()) == [data] and not list(data.iterdir())
    assert "[srs sasrec/id] epoch 1 loss" in out.stderr and "[srs sasrec/llmemb] epoch 1 loss" in out.stderr


def test_llmemb_aligned_to_the_id_model_through_ray(sasrec_id, cyclic, tmp_path: Path):
    sequences, item_ids, pop = cyclic
    cfg = SMALL.model_copy(update={"ranking": "sampled"})
    result = train(sequences, item_ids, cfg, "llmemb", runner="ray", item_embeddings=cycle_embeddings(),
                   storage_path=str(tmp_path), id_item_embeddings=sasrec_id.item_table)
    assert result.test["HR@10"] > popularity_metrics(sequences, item_ids, ranking="sampled")["HR@10"] + 0.3
    checkpoint = Path(result.checkpoint)
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "items.safetensors").exists()
    # Every file Ray Train stored for the run is safetensors or JSON: nothing to unpickle.
    assert {f.suffix for f in tmp_path.rglob("checkpoint_*/*")} == {".safetensors", ".json"}
    assert TrainState.load(checkpoint).curve == result.valid_curve


def test_train_rejects_missing_inputs_and_misplaced_options_before_starting_ray(cyclic):
    sequences, item_ids, _ = cyclic
    with pytest.raises(ValueError, match="needs llm"):
        train(sequences, item_ids, SMALL, "llmemb")
    with pytest.raises(ValueError, match="needs id_table"):
        train(sequences, item_ids, SMALL, "tslrec", item_embeddings=cycle_embeddings(),
              id_item_embeddings=np.zeros((N_ITEMS, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="unknown runner"):
        train(sequences, item_ids, SMALL, "id", runner="spark")
    with pytest.raises(ValueError, match="keeps no checkpoints"):
        train(sequences, item_ids, SMALL, "id", runner="local", storage_path="/tmp/x")
    with pytest.raises(ValueError, match="device is for runner='local'"):
        train(sequences, item_ids, SMALL, "id", device="cpu")


@pytest.mark.slow
def test_a_killed_training_run_resumes_to_the_same_result(ray_local, cyclic, tmp_path: Path):
    """kill -9 of the driver after a few epochs; the same call again continues from the last
    epoch checkpoint in storage and ends exactly where an uninterrupted run ends."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from srs.runners import run_key
    from tests.conftest import REPO

    sequences, item_ids, _ = cyclic
    cfg = SMALL.model_copy(update={"epochs": 14, "patience": 14})
    storage = tmp_path / "ray-train"
    run_dir = storage / run_key(sequences, item_ids, cfg, "id")
    script = (
        "import sys, ray; from cluster.config import SRSConfig; from srs import train; "
        "from tests.test_srs import cyclic_sequences; "
        f"ray.init(address={ray_local.get_runtime_context().gcs_address!r}); seqs, items = cyclic_sequences(); "
        f"train(seqs, items, SRSConfig.model_validate_json(sys.argv[1]), 'id', storage_path={str(storage)!r})"
    )
    driver = subprocess.Popen([sys.executable, "-c", script, cfg.model_dump_json()], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while len(list(run_dir.glob("checkpoint_*"))) < 3:
            assert driver.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    resumed = train(sequences, item_ids, cfg, "id", storage_path=str(storage))
    assert 1 <= resumed.resumed_from < cfg.epochs   # the newest checkpoint Ray Train had registered
    uninterrupted = train(sequences, item_ids, cfg, "id", storage_path=str(tmp_path / "fresh"))
    assert uninterrupted.resumed_from == 0
    assert resumed.valid_curve == uninterrupted.valid_curve and resumed.test == uninterrupted.test
    assert np.array_equal(resumed.item_table, uninterrupted.item_table)
    again = train(sequences, item_ids, cfg, "id", storage_path=str(storage))   # finished: only re-tested
    assert again.resumed_from == cfg.epochs and again.test == resumed.test
    assert json.loads((Path(resumed.checkpoint) / "srs.json").read_text())["source"] == "id"


def test_grid_gathers_seeds_and_reports_failed_runs(cyclic, tmp_path: Path):
    """benchmarks/srs_grid.py: two seeds of one config become one row with both seeds; a run that
    fails (ger without scores) is named, not counted."""
    import subprocess
    import sys

    from tests.conftest import REPO

    bench = srs_benchmark()
    sequences, item_ids, _ = cyclic
    bundle = tmp_path / "inputs.npz"
    bench.save_inputs(str(bundle), sequences, item_ids, {})
    small = "--set hidden_size=16 --set num_layers=1 --set num_heads=1 --set max_len=20 --set epochs=2"
    plan = tmp_path / "plan.txt"
    plan.write_text(f"# two seeds, one failure\n"
                    f"--dataset cyclic --inputs {bundle} --source id --seeds 42 --in-process {small}\n\n"
                    f"--dataset cyclic --inputs {bundle} --source id --seeds 43 --in-process {small}\n"
                    f"--dataset cyclic --inputs {bundle} --source ger --seeds 42 --in-process {small}\n")
    out = subprocess.run([sys.executable, "benchmarks/srs_grid.py", "--plan", str(plan), "--parallel", "2",
                          "--out", str(tmp_path / "grid")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "run 2 failed" in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("srs_grid: runs=2/3 seconds=")
    table = (tmp_path / "grid" / "grid.md").read_text().splitlines()
    assert len(table) == 3 and "| 42,43 |" in table[2] and "--seeds" not in table[2]
    again = subprocess.run([sys.executable, "benchmarks/srs_grid.py", "--plan", str(plan), "--parallel", "2",
                            "--out", str(tmp_path / "grid")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert "run 0 kept" in again.stdout and "run 1 kept" in again.stdout and "run 2 failed" in again.stdout
    assert (tmp_path / "grid" / "grid.md").read_text().splitlines() == table, "a rerun grid keeps finished runs"


def test_ger_controls_keep_the_values_and_drop_the_items(tmp_path: Path):
    """benchmarks/srs.py --control: "zero" empties the scores, "shuffle" gives every item some item's
    row (the same rows, seeded), and a source without scores is refused."""
    bench = srs_benchmark()
    scores = np.arange(40, dtype=np.float32).reshape(20, 2)
    kwargs = {"attribute_scores": scores, "item_embeddings": scores + 1}
    zero = bench.ablated(kwargs, "zero", 42)
    assert not zero["attribute_scores"].any() and zero["item_embeddings"] is kwargs["item_embeddings"]
    shuffled = bench.ablated(kwargs, "shuffle", 42)["attribute_scores"]
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, scores)) and not np.array_equal(shuffled, scores)
    assert np.array_equal(shuffled, bench.ablated(kwargs, "shuffle", 42)["attribute_scores"])
    bundle = tmp_path / "inputs.npz"
    bench.save_inputs(str(bundle), {"u": ["a", "b", "a"]}, ["a", "b"], {})
    with pytest.raises(SystemExit, match="--control ablates attribute scores; source 'id' reads none"):
        bench.main(["--dataset", "tiny", "--inputs", str(bundle), "--source", "id", "--control", "zero"])
