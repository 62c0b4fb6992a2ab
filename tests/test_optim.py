import math

import pytest
import torch
from torch import nn

from simclr_ad.optim import SAM, cosine_with_warmup, frozen_bn_stats


def _quadratic_step(adaptive: bool, rho: float = 0.5, lr: float = 0.1):
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = SAM([w], torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)
    (0.5 * (w ** 2).sum()).backward()  # gradient = w
    opt.first_step()
    perturbed = w.detach().clone()
    (0.5 * (w ** 2).sum()).backward()
    opt.second_step()
    return perturbed, w.detach()


def test_sam_step_by_hand():
    perturbed, new = _quadratic_step(adaptive=False)
    # e = rho * g / ||g|| = 0.5 * [3,4] / 5 ; w + e = [3.3, 4.4]; w - lr * grad(w + e)
    assert perturbed.tolist() == pytest.approx([3.3, 4.4])
    assert new.tolist() == pytest.approx([3.0 - 0.1 * 3.3, 4.0 - 0.1 * 4.4])


def test_asam_step_by_hand():
    perturbed, new = _quadratic_step(adaptive=True)
    # T = |w| = [3,4]; ||T g|| = ||[9,16]|| = sqrt(337); e = rho * T^2 g / ||T g|| = 0.5 * [27, 64] / sqrt(337)
    e = [0.5 * 27 / math.sqrt(337), 0.5 * 64 / math.sqrt(337)]
    assert perturbed.tolist() == pytest.approx([3 + e[0], 4 + e[1]])
    assert new.tolist() == pytest.approx([3 - 0.1 * (3 + e[0]), 4 - 0.1 * (4 + e[1])])


def test_sam_state_dict_is_the_base_optimizers():
    w = nn.Parameter(torch.ones(2))
    opt = SAM([w], torch.optim.SGD, lr=0.1, momentum=0.9)
    assert opt.state_dict()["param_groups"][0]["momentum"] == 0.9
    assert opt.param_groups is opt.base_optimizer.param_groups


def test_running_stats_update_once_per_sam_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    reference = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    reference.load_state_dict(model.state_dict())
    x = torch.randn(8, 3)
    reference(x)  # one training-mode forward: the stats SAM must end with
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.0, rho=0.1)  # lr 0: weights fixed, stats visible
    model(x).pow(2).sum().backward()
    opt.first_step()
    with frozen_bn_stats(model):
        model(x).pow(2).sum().backward()
    opt.second_step()
    assert torch.allclose(model[1].running_mean, reference[1].running_mean)
    assert model[1].momentum == 0.1  # restored


def test_cosine_with_warmup():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 100, 10) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_looksam_off_step_by_hand():
    # L = 0.5 * sum(a * w^2): grad = a * w, so g_s = a * (w + e) is not parallel to g
    a = torch.tensor([1.0, 3.0], dtype=torch.float64)
    w = nn.Parameter(torch.tensor([2.0, 1.0], dtype=torch.float64))
    opt = SAM([w], torch.optim.SGD, rho=0.5, adaptive=False, every=2, alpha=0.7, lr=0.1)
    loss = lambda: (0.5 * a * w ** 2).sum()  # noqa: E731
    assert opt.perturbs_this_step
    loss().backward()
    opt.first_step()
    loss().backward()
    opt.second_step()
    assert not opt.perturbs_this_step
    loss().backward()
    opt.reuse_step()
    assert opt.perturbs_this_step and opt.steps == 2

    w0 = torch.tensor([2.0, 1.0], dtype=torch.float64)
    g = a * w0
    g_s = a * (w0 + 0.5 * g / g.norm())
    g_v = g_s - (g_s @ g) / (g @ g) * g  # the part of the SAM gradient orthogonal to g
    w1 = w0 - 0.1 * g_s
    g1 = a * w1
    w2 = w1 - 0.1 * (g1 + 0.7 * g1.norm() / g_v.norm() * g_v)
    assert w.detach().tolist() == pytest.approx(w2.tolist(), rel=1e-12)


def test_looksam_every_must_be_positive():
    with pytest.raises(ValueError, match="every must be >= 1"):
        SAM([nn.Parameter(torch.ones(2))], torch.optim.SGD, lr=0.1, every=0)


def test_full_sam_state_dict_has_no_looksam_keys():
    w = nn.Parameter(torch.ones(2))
    opt = SAM([w], torch.optim.SGD, lr=0.1, momentum=0.9)
    w.sum().backward()
    opt.first_step()
    w.sum().backward()
    opt.second_step()
    assert set(opt.state_dict()) == {"state", "param_groups"}  # checkpoints as before LookSAM existed
    assert set(opt.state_dict()["state"][0]) == {"momentum_buffer"}
