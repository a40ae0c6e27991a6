"""Siamese identity network: loss, pair sampling, metrics, end to end, frozen-embedding API."""

from __future__ import annotations

import math

import pytest
import torch

from ppgan.data.pairs import sample_pairs
from ppgan.engine import load_frozen
from ppgan.losses.contrastive import contrastive
from ppgan.metrics.verification import rank_k, verification_metrics
from ppgan.models.siamese import EmbeddingNet, pair_distance


def test_contrastive_hand_computed():
    d = torch.tensor([0.5, 2.0, 3.0, 12.0])
    same = torch.tensor([1, 1, 0, 0])
    # same: 0.25 and 4.0; different (margin 10): (10-3)^2 = 49 and 0 (beyond the margin).
    assert float(contrastive(d, same, margin=10.0)) == pytest.approx((0.25 + 4 + 49 + 0) / 4)
    assert float(contrastive(torch.tensor([0.0]), torch.tensor([1]), 1.0)) == 0.0


def test_contrastive_gradient_directions():
    d = torch.tensor([1.0, 1.0], requires_grad=True)
    contrastive(d, torch.tensor([1, 0]), margin=2.0).backward()
    assert d.grad[0] > 0 and d.grad[1] < 0  # same pairs pulled together, different pushed apart


def test_pair_sampling_balance_labels_determinism():
    ids = torch.arange(5).repeat_interleave(4)  # 5 identities x 4 images: 30 positive pairs
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    pairs, same = sample_pairs(ids, g(0), neg_ratio=0.5)
    assert int(same.sum()) == 30 and int((same == 0).sum()) == 15
    assert bool((pairs[:, 0] != pairs[:, 1]).all())  # no self-pairs
    assert torch.equal(ids[pairs[:, 0]] == ids[pairs[:, 1]], same.bool())  # labels correct
    again, _ = sample_pairs(ids, g(0), neg_ratio=0.5)
    other, _ = sample_pairs(ids, g(1), neg_ratio=0.5)
    assert torch.equal(pairs, again) and not torch.equal(pairs, other)
    capped, same_c = sample_pairs(ids, g(0), max_positive=10, neg_ratio=1.0)
    assert int(same_c.sum()) == 10 and len(capped) == 20


def test_verification_and_rank_known_answers():
    perfect = verification_metrics(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 2.0, 3.0]))
    assert perfect == {"auc": 1.0, "eer": 0.0}
    swapped = verification_metrics(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0]))
    assert swapped["auc"] == 0.0
    dist = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.7, 0.2]])
    gallery_ids = torch.tensor([0, 1, 1])
    assert rank_k(dist, torch.tensor([0, 0]), gallery_ids, 1) == 0.5
    assert rank_k(dist, torch.tensor([0, 0]), gallery_ids, 2) == 1.0


def test_tiny_run_beats_chance_and_loads_as_frozen_embedder(run):
    metrics, out = run("task=siamese", "task.epochs=4", "task.pairs.max_positive=300")
    assert metrics["test/auc"] > 0.75  # chance: 0.5
    assert metrics["test/rank1"] > 2 * metrics["chance/rank1"]
    assert metrics["test/d_same_mean"] < metrics["test/d_diff_mean"]
    net, _ = load_frozen(out / "checkpoints" / "best.pt", expect={"in_shape": [3, 32, 32]})
    assert isinstance(net, EmbeddingNet) and not net.training
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    d = net.distance(x, x.flip(0))
    assert d.shape == (4,) and torch.allclose(d, d.flip(0))
    gallery = net(x)
    many = net.distance_to(x, gallery)
    assert many.shape == (4, 4) and torch.allclose(many.diagonal(), torch.zeros(4), atol=1e-3)
    assert torch.allclose(many[torch.arange(4), torch.arange(4).flip(0)], d, atol=1e-4)


def test_pair_distance_is_euclidean():
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    assert float(pair_distance(a, b)) == pytest.approx(5.0)
    assert math.isfinite(float(pair_distance(a, a)))
