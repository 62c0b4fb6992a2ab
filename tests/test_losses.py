import math

import numpy as np
import pytest
import torch

from simclr_ad.losses import class_weights, nt_xent


def nt_xent_reference(z0: np.ndarray, z1: np.ndarray, t: float) -> float:
    """Slow NT-Xent straight from the SimCLR paper (Chen et al. 2020, Alg. 1)."""
    z = np.concatenate([z0, z1])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z0)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = np.array([z[i] @ z[k] / t for k in range(2 * n)])
        denominator = sum(math.exp(sims[k]) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(sims[j]) / denominator)
    return total / (2 * n)


def test_two_pairs_by_hand():
    # z0 = [e1, e2], z1 = [e1, e2]: positives have cos 1, negatives cos 0 (and one cos 1 duplicate).
    z0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z1 = z0.clone()
    t = 0.5
    # each row: positive exp(2); others: exp(0) twice and (for its same-view negative) exp(0)
    by_hand = -math.log(math.exp(2) / (math.exp(2) + 2 * math.exp(0)))
    assert nt_xent(t)(z0, z1).item() == pytest.approx(by_hand, rel=1e-5)


def test_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent(0.3)(z0, z1).item() == pytest.approx(nt_xent_reference(z0.numpy(), z1.numpy(), 0.3), rel=1e-5)


def test_collinear_vectors_give_log_2n_minus_1():
    z = torch.ones(4, 3)
    assert nt_xent(0.5)(z, z).item() == pytest.approx(math.log(2 * 4 - 1), rel=1e-5)


def test_bad_temperature():
    with pytest.raises(ValueError):
        nt_xent(0.0)


def test_class_weights_balanced():
    w = class_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([4 / (3 * 3), 4 / 3, 0.0])
