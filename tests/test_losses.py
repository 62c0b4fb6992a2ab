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


def test_masked_nt_xent_with_distinct_groups_is_lightlys_nt_xent():
    from simclr_ad.losses import nt_xent, nt_xent_masked

    generator = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    expected = nt_xent(temperature=0.3)(z0, z1)
    assert torch.allclose(nt_xent_masked(z0, z1, torch.arange(6), temperature=0.3), expected, atol=1e-6)


def test_masked_nt_xent_collinear_counts_only_other_groups_as_negatives():
    import math

    from simclr_ad.losses import nt_xent_masked

    z = torch.ones(6, 3)  # every projection the same: each logit equal, so loss = log(1 + #negatives)
    assert float(nt_xent_masked(z, z, torch.arange(6))) == pytest.approx(math.log(2 * 6 - 1))
    # three groups of two: each anchor loses its group-mate's two views -> 12 - 2*2 + 1 = 9 candidates
    assert float(nt_xent_masked(z, z, torch.tensor([0, 0, 1, 1, 2, 2]))) == pytest.approx(math.log(9))
    # one group: only the positive is left, the loss is 0
    assert float(nt_xent_masked(z, z, torch.zeros(6, dtype=torch.long))) == pytest.approx(0.0, abs=1e-6)


def test_masked_nt_xent_by_hand_for_two_samples_in_two_groups():
    import math

    from simclr_ad.losses import nt_xent_masked

    z0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t = 0.5
    # anchor z0[0]: positive z1[0] (cos 1), negatives z0[1] (0), z1[1] (1)
    a0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0) + math.exp(1 / t)))
    # anchor z0[1]: positive z1[1] (0), negatives z0[0] (0), z1[0] (0)
    a1 = math.log(3)
    # anchor z1[0]: positive z0[0] (1), negatives z0[1] (0), z1[1] (1)
    a2 = a0
    # anchor z1[1]: positive z0[1] (0), negatives z0[0] (1), z1[0] (1)
    a3 = -math.log(1 / (1 + 2 * math.exp(1 / t)))
    expected = (a0 + a1 + a2 + a3) / 4
    assert float(nt_xent_masked(z0, z1, torch.tensor([0, 1]), temperature=t)) == pytest.approx(expected, rel=1e-5)
